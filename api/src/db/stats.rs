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

/// `{"url_id","clicks","last_click_at","daily","top_referrers"}`, from the rollups the database
/// keeps as clicks are stored (migration V9): a few rows, however many clicks the link has.
pub async fn url_stats(c: &impl GenericClient, url_id: i64) -> Result<Value, Error> {
    let totals = c
        .prepare_cached(
            "SELECT coalesce(sum(clicks), 0)::int8, max(last_click_at) FROM click_daily \
             WHERE url_id = $1",
        )
        .await?;
    let row = c.query_one(&totals, &[&url_id]).await?;
    let clicks: i64 = row.get(0);
    let last: Option<DateTime<Utc>> = row.get(1);

    let daily = c
        .prepare_cached(
            "SELECT day, clicks FROM click_daily \
             WHERE url_id = $1 AND day >= (now() AT TIME ZONE 'UTC')::date - $2::int4 \
             ORDER BY day",
        )
        .await?;
    let daily: Vec<Value> = c
        .query(&daily, &[&url_id, &DAILY_DAYS])
        .await?
        .iter()
        .map(|r| {
            let day: NaiveDate = r.get(0);
            json!({"date": day.format("%Y-%m-%d").to_string(), "clicks": r.get::<_, i64>(1)})
        })
        .collect();

    let referrers = c
        .prepare_cached(
            "SELECT referrer, clicks FROM click_referrers WHERE url_id = $1 \
             ORDER BY clicks DESC, referrer LIMIT $2",
        )
        .await?;
    let top: Vec<Value> = c
        .query(&referrers, &[&url_id, &TOP_REFERRERS])
        .await?
        .iter()
        .map(|r| json!({"referrer": r.get::<_, String>(0), "clicks": r.get::<_, i64>(1)}))
        .collect();

    Ok(json!({
        "url_id": url_id,
        "clicks": clicks,
        "last_click_at": last.map(kurz_common::time::format),
        "daily": daily,
        "top_referrers": top,
    }))
}
