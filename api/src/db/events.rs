//! `events` table.

use super::Filter;
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::{json, Value};
use tokio_postgres::{Error, Row};

/// The columns an [`Event`] is read from: a click the sink stored keeps its fields in columns of
/// their own (migration V21), every other event in `details`.
const COLUMNS: &str = "id, url_id, user_id, event_type, occurred_at, details, \
                       code, target, referrer, user_agent, is_bot, browser, os, device, visitor, ip";

/// The event types the contract knows.
pub const TYPES: &[&str] = &["created", "updated", "deleted", "click"];

/// The longest `browser`, `os`, `device` or `visitor` a click event given to the API may carry.
/// The rollups key on them (`roll_up_clicks`, migrations V16 and V19), with the referrer, and
/// a key PostgreSQL cannot index fails the whole statement.
pub const MAX_CLICK_DIMENSION: usize = 128;

/// The most a `details` object written through the API (`POST /events`, the events import) may
/// hold: values, nested ones counted, objects among them, and bytes as JSON text. A value costs
/// more memory than its text, an object most (`{"a":0}`, 8 bytes, is a ~600-byte map), and an
/// unpaginated listing reads up to `limits.list_limit` events (10,000 by default) at once:
/// unbounded, a few events of tiny nested objects made one `GET /events` hold gigabytes. Within
/// these an event's details take a few times their text (at most ~16 KiB). The details kurz
/// writes itself are well inside: a click's have 13 values, no object, and about 4 KiB.
pub const MAX_DETAILS_VALUES: usize = 64;
pub const MAX_DETAILS_OBJECTS: usize = 8;
pub const MAX_DETAILS_BYTES: usize = 8 * 1024;

/// Checks `details` against [`MAX_DETAILS_VALUES`], [`MAX_DETAILS_OBJECTS`] and
/// [`MAX_DETAILS_BYTES`]; what is wrong.
pub fn check_details_size(details: &serde_json::Map<String, Value>) -> Result<(), String> {
    /// What is left to hold: values, and objects among them.
    struct Left(usize, usize);
    fn within(v: &Value, left: &mut Left) -> Result<(), String> {
        left.0 = left.0.checked_sub(1).ok_or_else(|| {
            format!("must hold at most {MAX_DETAILS_VALUES} values, nested ones counted")
        })?;
        match v {
            Value::Object(m) => {
                left.1 = left.1.checked_sub(1).ok_or_else(|| {
                    format!("must hold at most {MAX_DETAILS_OBJECTS} objects, nested ones counted")
                })?;
                m.values().try_for_each(|v| within(v, left))
            }
            Value::Array(a) => a.iter().try_for_each(|v| within(v, left)),
            _ => Ok(()),
        }
    }
    let mut left = Left(MAX_DETAILS_VALUES, MAX_DETAILS_OBJECTS);
    details.values().try_for_each(|v| within(v, &mut left))?;
    let text = serde_json::to_string(details).map_err(|e| e.to_string())?;
    if text.len() > MAX_DETAILS_BYTES {
        return Err(format!("must be at most {MAX_DETAILS_BYTES} bytes as JSON"));
    }
    Ok(())
}

/// Checks the `details` of a click event written through the API (`POST /events`, the events
/// import) before PostgreSQL's rollup trigger reads them: a value it cannot cast (`is_bot`) or
/// index (a very long referrer) would fail the statement, and the request with a 500. The
/// referrer is cut to `kurz_common::clicks::MAX_HEADER_LEN` bytes, as a live click's is; the
/// other values are refused. Returns the field's path and what is wrong with it.
pub fn check_click_details(
    details: &mut serde_json::Map<String, Value>,
) -> Result<(), (String, String)> {
    let wrong = |key: &str, why: String| Err((format!("details.{key}"), why));
    match details.get("is_bot") {
        None | Some(Value::Null | Value::Bool(_)) => {}
        Some(_) => return wrong("is_bot", "must be true, false or null".into()),
    }
    match details.get_mut("referrer") {
        None | Some(Value::Null) => {}
        Some(Value::String(referrer)) => {
            if referrer.len() > kurz_common::clicks::MAX_HEADER_LEN {
                *referrer = kurz_common::clicks::clip(referrer);
            }
        }
        Some(_) => return wrong("referrer", "must be a string or null".into()),
    }
    for key in ["browser", "os", "device", "visitor"] {
        match details.get_mut(key) {
            None | Some(Value::Null) => {}
            // Nothing named: unknown, as a click without the field is (the stats list no `""`).
            Some(v @ Value::String(_)) if v.as_str().is_some_and(|s| s.trim().is_empty()) => {
                *v = Value::Null
            }
            Some(Value::String(v)) if v.len() <= MAX_CLICK_DIMENSION => {}
            Some(Value::String(_)) => {
                return wrong(key, format!("must be at most {MAX_CLICK_DIMENSION} bytes"))
            }
            Some(_) => return wrong(key, "must be a string or null".into()),
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct Event {
    pub id: i64,
    pub url_id: i64,
    pub user_id: Option<i64>,
    pub event_type: String,
    pub timestamp: DateTime<Utc>,
    pub details: Value,
}

impl Event {
    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            url_id: row.get(1),
            user_id: row.get(2),
            event_type: row.get(3),
            timestamp: row.get(4),
            details: match row.get::<_, Option<bool>>(10) {
                Some(is_bot) => ClickColumns {
                    code: row.get::<_, Option<String>>(6).unwrap_or_default(),
                    target: row.get::<_, Option<String>>(7).unwrap_or_default(),
                    referrer: row.get::<_, Option<String>>(8).unwrap_or_default(),
                    user_agent: row.get::<_, Option<String>>(9).unwrap_or_default(),
                    is_bot,
                    browser: row.get::<_, Option<String>>(11).unwrap_or_default(),
                    os: row.get::<_, Option<String>>(12).unwrap_or_default(),
                    device: row.get::<_, Option<String>>(13).unwrap_or_default(),
                    visitor: row.get(14),
                    ip: row.get(15),
                }
                .details(),
                None => row.get(5),
            },
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "url_id": self.url_id,
            "user_id": self.user_id,
            "event_type": self.event_type,
            "timestamp": kurz_common::time::format(self.timestamp),
            "details": self.details,
        })
    }
}

pub async fn insert_event(
    c: &impl GenericClient,
    url_id: i64,
    user_id: Option<i64>,
    event_type: &str,
    details: &Value,
) -> Result<Event, Error> {
    let stmt = c
        .prepare_cached(&format!(
            "INSERT INTO events (url_id, user_id, event_type, details) VALUES ($1, $2, $3, $4) RETURNING {COLUMNS}"
        ))
        .await?;
    Ok(Event::from_row(
        &c.query_one(&stmt, &[&url_id, &user_id, &event_type, details])
            .await?,
    ))
}

/// List filters.
#[derive(Default)]
pub struct EventFilter {
    pub url_id: Option<i64>,
    pub user_id: Option<i64>,
    /// One of [`TYPES`]: it goes into the SQL as a literal (see `Filter::eq_literal`).
    pub event_type: Option<&'static str>,
    /// Only events with a greater id (`after_id`).
    pub after_id: Option<i64>,
}

impl EventFilter {
    fn filter(&self) -> Filter<'_> {
        let mut f = Filter::new(&[]);
        f.eq("url_id", &self.url_id);
        f.eq("user_id", &self.user_id);
        if let Some(after) = &self.after_id {
            f.param("id > {}", after);
        }
        // A literal, not a parameter: `events_type_idx` covers only the non-click types, and a
        // generic plan could not prove that `$n` is one of them.
        f.eq_literal("event_type", self.event_type);
        f
    }
}

pub async fn list_events(
    c: &impl GenericClient,
    filter: &EventFilter,
    limit: i64,
    offset: i64,
) -> Result<Vec<Event>, Error> {
    let rows = filter
        .filter()
        .page(c, &format!("SELECT {COLUMNS} FROM events"), limit, offset)
        .await?;
    Ok(rows.iter().map(Event::from_row).collect())
}

pub async fn count_events(c: &impl GenericClient, filter: &EventFilter) -> Result<i64, Error> {
    filter.filter().count(c, "events").await
}

/// A click's fields as `events` keeps them, in typed columns (migration V21): PostgreSQL parses
/// no JSON on the way in and the rollup trigger reads columns. The API shows them as the click
/// event's `details` object ([`ClickColumns::details`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClickColumns {
    /// The link's short code and target when the click happened.
    pub code: String,
    pub target: String,
    pub referrer: String,
    pub user_agent: String,
    /// What the user agent says (`crate::clicks::agent`), decided when the click is stored.
    pub is_bot: bool,
    pub browser: String,
    pub os: String,
    pub device: String,
    /// The day's visitor id, when the click has one (`kurz_common::visitors`).
    pub visitor: Option<String>,
    /// The address as `privacy.store_ip` keeps it; `None` under `none`, which leaves no `ip`
    /// key at all rather than an empty one.
    pub ip: Option<String>,
}

impl ClickColumns {
    /// The click event's `details`, as the API contract shows them.
    pub fn details(&self) -> Value {
        let mut details = json!({
            "short_code": self.code,
            "original_url": self.target,
            "referrer": self.referrer,
            "user_agent": self.user_agent,
            "is_bot": self.is_bot,
            "browser": self.browser,
            "os": self.os,
            "device": self.device,
        });
        if let Some(visitor) = &self.visitor {
            details["visitor"] = json!(visitor);
        }
        if let Some(ip) = &self.ip {
            details["ip"] = json!(ip);
        }
        details
    }
}

/// A click to insert from the stream.
#[derive(Debug, Clone)]
pub struct StreamClick {
    /// The click's identity (`kurz_common::clicks`), unique in `events.click_id`.
    pub click_id: String,
    pub url_id: i64,
    pub ts: DateTime<Utc>,
    pub fields: ClickColumns,
}

/// Inserts a batch of stream clicks. Clicks already stored (same `click_id`, whichever path
/// stored them, or twice in this batch) are skipped, which makes replays after a crash and
/// doubled appends harmless; clicks of a link that does not exist are dropped by the join rather
/// than failing the whole batch forever. The event's `user_id` is the link owner's. Returns the
/// number of rows inserted.
///
/// Nearly every batch holds only new clicks, so it goes in as a plain insert first: `ON CONFLICT`
/// costs every row a speculative insertion (a probe of `click_id`'s index before the insert and a
/// WAL record confirming it after; bench/sink-cost). A batch with a stored click fails as a
/// whole on `events_click_id_key`, leaving nothing behind, and goes in again skipping those.
pub async fn insert_stream_clicks(
    c: &impl GenericClient,
    clicks: &[&StreamClick],
) -> Result<u64, Error> {
    match insert_clicks(c, clicks, "").await {
        Err(e) if super::unique_violation(&e) == Some("events_click_id_key") => {
            insert_clicks(c, clicks, "ON CONFLICT (click_id) DO NOTHING").await
        }
        done => done,
    }
}

async fn insert_clicks(
    c: &impl GenericClient,
    clicks: &[&StreamClick],
    on_conflict: &str,
) -> Result<u64, Error> {
    // One array per column: `UNNEST` of arrays is the cheapest many-row insert a prepared
    // statement has (bench/consumer, docs/capacity.md).
    fn col<'a, T>(clicks: &[&'a StreamClick], f: impl Fn(&'a StreamClick) -> T) -> Vec<T> {
        clicks.iter().map(|c| f(c)).collect()
    }
    let stmt = c
        .prepare_cached(&format!(
            "INSERT INTO events (url_id, user_id, event_type, occurred_at, click_id, \
                                 code, target, referrer, user_agent, is_bot, browser, os, device, visitor, ip) \
             SELECT u.id, u.user_id, 'click', t.ts, t.cid, \
                    t.code, t.target, t.referrer, t.user_agent, t.is_bot, t.browser, t.os, t.device, t.visitor, t.ip \
             FROM UNNEST($1::text[], $2::int8[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], \
                         $7::text[], $8::bool[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[]) \
                  AS t(cid, url_id, ts, code, target, referrer, user_agent, is_bot, browser, os, device, visitor, ip) \
             JOIN urls u ON u.id = t.url_id {on_conflict}"
        ))
        .await?;
    c.execute(
        &stmt,
        &[
            &col(clicks, |c| c.click_id.as_str()),
            &col(clicks, |c| c.url_id),
            &col(clicks, |c| c.ts),
            &col(clicks, |c| c.fields.code.as_str()),
            &col(clicks, |c| c.fields.target.as_str()),
            &col(clicks, |c| c.fields.referrer.as_str()),
            &col(clicks, |c| c.fields.user_agent.as_str()),
            &col(clicks, |c| c.fields.is_bot),
            &col(clicks, |c| c.fields.browser.as_str()),
            &col(clicks, |c| c.fields.os.as_str()),
            &col(clicks, |c| c.fields.device.as_str()),
            &col(clicks, |c| c.fields.visitor.as_deref()),
            &col(clicks, |c| c.fields.ip.as_deref()),
        ],
    )
    .await
}

/// Where a prune of per-visitor rows has got to: the last row it deleted, in key order.
pub type VisitorKey = (i64, chrono::NaiveDate, String);

/// Deletes up to `limit` per-visitor rows of days before yesterday, after `from` (from the
/// start when `None`) in the primary key's order: each batch starts where the last ended,
/// within a link too, instead of walking again past the rows already deleted. Returns how
/// many went and the last of them.
pub async fn delete_old_visitors(
    c: &impl GenericClient,
    from: Option<&VisitorKey>,
    limit: i64,
) -> Result<(i64, Option<VisitorKey>), Error> {
    const OLD: &str = "day < (now() AT TIME ZONE 'UTC')::date - 1";
    let pick = match from {
        None => format!("WHERE {OLD} ORDER BY url_id, day, visitor LIMIT $1"),
        Some(_) => format!(
            "WHERE (url_id, day, visitor) > ($2, $3, $4) AND {OLD} \
             ORDER BY url_id, day, visitor LIMIT $1"
        ),
    };
    let stmt = c
        .prepare_cached(&format!(
            "WITH gone AS (DELETE FROM click_day_visitors WHERE ctid IN ( \
               SELECT ctid FROM click_day_visitors {pick}) RETURNING url_id, day, visitor) \
             SELECT count(*) OVER (), url_id, day, visitor FROM gone \
             ORDER BY url_id DESC, day DESC, visitor DESC LIMIT 1"
        ))
        .await?;
    let rows = match from {
        None => c.query(&stmt, &[&limit]).await?,
        Some((url, day, visitor)) => c.query(&stmt, &[&limit, url, day, visitor]).await?,
    };
    Ok(match rows.first() {
        None => (0, None),
        Some(r) => (r.get(0), Some((r.get(1), r.get(2), r.get(3)))),
    })
}

/// What one retention statement saw in its window of events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionWindow {
    /// Click events that occurred before the cutoff, deleted.
    pub deleted: u64,
    /// Events the window held, of any type (0: past the last event).
    pub read: u64,
    /// Its last id: where the next window starts.
    pub last: Option<i64>,
    /// Its first click at or after the cutoff, if any.
    pub first_kept_click: Option<i64>,
}

/// Deletes the click events that occurred before `cutoff` among the `limit` events after id
/// `after`, in id order. The window is walked on the primary key from `after`, so a pass reads
/// each event once, never the rows an earlier statement deleted or kept again.
pub async fn delete_clicks_in_window(
    c: &impl GenericClient,
    after: i64,
    limit: i64,
    cutoff: DateTime<Utc>,
) -> Result<RetentionWindow, Error> {
    let stmt = c
        .prepare_cached(
            "WITH win AS ( \
               SELECT id, event_type = 'click' AND occurred_at < $3 AS old, \
                      event_type = 'click' AND occurred_at >= $3 AS kept \
               FROM events WHERE id > $1 ORDER BY id LIMIT $2), \
             gone AS (DELETE FROM events WHERE id IN (SELECT id FROM win WHERE old) RETURNING 1) \
             SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM win), \
                    (SELECT max(id) FROM win), (SELECT min(id) FROM win WHERE kept)",
        )
        .await?;
    let row = c.query_one(&stmt, &[&after, &limit, &cutoff]).await?;
    Ok(RetentionWindow {
        deleted: row.get::<_, i64>(0) as u64,
        read: row.get::<_, i64>(1) as u64,
        last: row.get(2),
        first_kept_click: row.get(3),
    })
}
