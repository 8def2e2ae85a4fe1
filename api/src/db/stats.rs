//! Click statistics of one link.

use chrono::{DateTime, NaiveDate, Utc};
use deadpool_postgres::GenericClient;
use serde_json::{json, Value};
use tokio_postgres::Error;

/// Days shown in `daily`, newest last.
const DAILY_DAYS: i32 = 90;
/// Referrers shown in `top_referrers`.
const TOP_REFERRERS: i64 = 10;

/// Clicks stored for a link, from the daily rollup (one row per day).
pub async fn total_clicks(c: &impl GenericClient, url_id: i64) -> Result<i64, Error> {
    let stmt = c
        .prepare_cached("SELECT coalesce(sum(clicks), 0)::int8 FROM click_daily WHERE url_id = $1")
        .await?;
    Ok(c.query_one(&stmt, &[&url_id]).await?.get(0))
}

/// Which clicks a stats read covers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Range {
    /// First day (UTC), inclusive; `None`: from the first click (and `daily` from 90 days ago).
    pub from: Option<NaiveDate>,
    /// Last day (UTC), inclusive; `None`: up to now.
    pub to: Option<NaiveDate>,
    /// Count bots' clicks in `clicks` and the breakdowns (they are always reported as `bots`).
    pub include_bots: bool,
}

/// Values shown per breakdown, most clicks first.
const TOP_VALUES: i64 = TOP_REFERRERS;

/// A link's stats from the rollups the database keeps as clicks are stored (migrations V9 and
/// V16): a few rows per day, however many clicks the link has, and one more per distinct
/// referrer and agent of the day's clicks.
pub async fn url_stats(c: &impl GenericClient, url_id: i64, range: Range) -> Result<Value, Error> {
    let (from, to, bots) = (range.from, range.to, range.include_bots);
    let totals = c
        .prepare_cached(
            "SELECT coalesce(sum(clicks), 0)::int8, coalesce(sum(bots), 0)::int8, max(last_click_at), \
                    coalesce(sum(visitors), 0)::int8 \
             FROM click_daily WHERE url_id = $1 \
             AND ($2::date IS NULL OR day >= $2) AND ($3::date IS NULL OR day <= $3)",
        )
        .await?;
    let row = c.query_one(&totals, &[&url_id, &from, &to]).await?;
    let (all, bot_clicks): (i64, i64) = (row.get(0), row.get(1));
    let last: Option<DateTime<Utc>> = row.get(2);
    let visitors: i64 = row.get(3);
    let counted = |clicks: i64, bot_clicks: i64| if bots { clicks } else { clicks - bot_clicks };

    // `daily` alone defaults to the last `DAILY_DAYS` without a range, today the last of them;
    // `to` alone reaches back as far as the totals do.
    let daily = c
        .prepare_cached(
            "SELECT day, clicks, bots, visitors FROM click_daily \
             WHERE url_id = $1 \
             AND day >= coalesce($2::date, \
                 CASE WHEN $3::date IS NULL THEN (now() AT TIME ZONE 'UTC')::date - ($4::int4 - 1) END, \
                 '-infinity'::date) \
             AND ($3::date IS NULL OR day <= $3) \
             ORDER BY day",
        )
        .await?;
    let daily: Vec<Value> = c
        .query(&daily, &[&url_id, &from, &to, &DAILY_DAYS])
        .await?
        .iter()
        .map(|r| {
            let day: NaiveDate = r.get(0);
            json!({
                "date": day.format("%Y-%m-%d").to_string(),
                "clicks": counted(r.get(1), r.get(2)),
                "bots": r.get::<_, i64>(2),
                "visitors": r.get::<_, i64>(3),
            })
        })
        .collect();

    // The top values of every breakdown in one statement, from the per-day sources rollup: the
    // days' rows summed once per referrer and once per agent, and the referrer host (a regular
    // expression) taken of each distinct referrer, not of every day's row.
    let dims = c
        .prepare_cached(
            "WITH s AS ( \
               SELECT referrer, browser, os, device, clicks, bots FROM click_day_sources \
               WHERE url_id = $1 \
               AND ($2::date IS NULL OR day >= $2) AND ($3::date IS NULL OR day <= $3) \
             ), ref AS ( \
               SELECT referrer, sum(clicks) AS clicks, sum(bots) AS bots FROM s GROUP BY 1 \
             ), agent AS ( \
               SELECT browser, os, device, sum(clicks) AS clicks, sum(bots) AS bots FROM s GROUP BY 1, 2, 3 \
             ), hosts AS ( \
               SELECT referrer_host(referrer) AS host, clicks, bots FROM ref \
             ), totals AS ( \
               SELECT 'referrer' AS dimension, referrer AS value, clicks, bots FROM ref WHERE referrer <> '' \
               UNION ALL SELECT 'referrer_host', host, sum(clicks), sum(bots) FROM hosts \
                 WHERE host IS NOT NULL GROUP BY 2 \
               UNION ALL SELECT 'browser', browser, sum(clicks), sum(bots) FROM agent GROUP BY 2 \
               UNION ALL SELECT 'os', os, sum(clicks), sum(bots) FROM agent GROUP BY 2 \
               UNION ALL SELECT 'device', device, sum(clicks), sum(bots) FROM agent GROUP BY 2 \
             ) \
             SELECT dimension, value, n FROM ( \
               SELECT dimension, value, n, \
                      row_number() OVER (PARTITION BY dimension ORDER BY n DESC, value) AS rank \
               FROM ( \
                 SELECT dimension, value, \
                        (clicks - CASE WHEN $4 THEN 0 ELSE bots END)::int8 AS n FROM totals \
               ) AS counted WHERE n > 0 \
             ) AS ranked WHERE rank <= $5 ORDER BY dimension, rank",
        )
        .await?;
    let mut top: std::collections::HashMap<String, Vec<Value>> = Default::default();
    for r in c
        .query(&dims, &[&url_id, &from, &to, &bots, &TOP_VALUES])
        .await?
    {
        let (dimension, value, n): (String, String, i64) = (r.get(0), r.get(1), r.get(2));
        let key = match dimension.as_str() {
            "referrer" => "referrer",
            "referrer_host" => "host",
            _ => "name",
        };
        top.entry(dimension)
            .or_default()
            .push(json!({key: value, "clicks": n}));
    }
    let mut take = |dimension: &str| Value::Array(top.remove(dimension).unwrap_or_default());

    Ok(json!({
        "url_id": url_id,
        "clicks": counted(all, bot_clicks),
        "bots": bot_clicks,
        "visitors": visitors,
        "include_bots": bots,
        "from": from.map(|d| d.format("%Y-%m-%d").to_string()),
        "to": to.map(|d| d.format("%Y-%m-%d").to_string()),
        "last_click_at": last.map(kurz_common::time::format),
        "daily": daily,
        "top_referrers": take("referrer"),
        "referrer_hosts": take("referrer_host"),
        "browsers": take("browser"),
        "operating_systems": take("os"),
        "devices": take("device"),
    }))
}
