//! `events` table.

use super::Filter;
use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::{json, Value};
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Error, Row};

const COLUMNS: &str = "id, url_id, user_id, event_type, occurred_at, details";

/// The event types the contract knows.
pub const TYPES: &[&str] = &["created", "updated", "deleted", "click"];

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
            details: row.get(5),
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
}

impl EventFilter {
    fn filter(&self) -> Filter<'_> {
        let mut f = Filter::new(&[]);
        f.eq("url_id", &self.url_id);
        f.eq("user_id", &self.user_id);
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

/// A click to insert from the stream.
#[derive(Debug, Clone)]
pub struct StreamClick {
    /// The click's identity (`kurz_common::clicks`), unique in `events.click_id`.
    pub click_id: String,
    pub url_id: i64,
    pub ts: DateTime<Utc>,
    pub details: JsonbText,
}

/// A `jsonb` parameter already serialized: the consumer builds it while the batch before is
/// being stored, so the insert does not wait for the encoding.
#[derive(Debug, Clone)]
pub struct JsonbText(String);

impl JsonbText {
    pub fn new(value: &Value) -> Self {
        Self(value.to_string())
    }
}

impl ToSql for JsonbText {
    fn to_sql(
        &self,
        _ty: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        // jsonb's binary form: format version 1, then the JSON text.
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// Inserts a batch of stream clicks in one statement. Clicks already stored (same `click_id`,
/// whichever path stored them, or twice in this batch) are skipped, which makes replays after a
/// crash and doubled appends harmless; clicks of a link that
/// does not exist are dropped by the join rather than failing the whole batch forever. The
/// event's `user_id` is the link owner's. Returns the number of rows inserted.
pub async fn insert_stream_clicks(
    c: &impl GenericClient,
    clicks: &[&StreamClick],
) -> Result<u64, Error> {
    let ids: Vec<&str> = clicks.iter().map(|c| c.click_id.as_str()).collect();
    let url_ids: Vec<i64> = clicks.iter().map(|c| c.url_id).collect();
    let ts: Vec<DateTime<Utc>> = clicks.iter().map(|c| c.ts).collect();
    let details: Vec<&JsonbText> = clicks.iter().map(|c| &c.details).collect();
    let stmt = c
        .prepare_cached(
            "INSERT INTO events (url_id, user_id, event_type, occurred_at, details, click_id) \
             SELECT u.id, u.user_id, 'click', t.ts, t.details, t.cid \
             FROM UNNEST($1::text[], $2::int8[], $3::timestamptz[], $4::jsonb[]) AS t(cid, url_id, ts, details) \
             JOIN urls u ON u.id = t.url_id \
             ON CONFLICT (click_id) DO NOTHING",
        )
        .await?;
    c.execute(&stmt, &[&ids, &url_ids, &ts, &details]).await
}

/// Deletes at most `limit` click events that occurred before `cutoff`; returns how many.
pub async fn delete_clicks_before(
    c: &impl GenericClient,
    cutoff: DateTime<Utc>,
    limit: i64,
) -> Result<u64, Error> {
    let stmt = c
        .prepare_cached(
            "DELETE FROM events WHERE ctid IN ( \
               SELECT ctid FROM events WHERE event_type = 'click' AND occurred_at < $1 LIMIT $2)",
        )
        .await?;
    c.execute(&stmt, &[&cutoff, &limit]).await
}
