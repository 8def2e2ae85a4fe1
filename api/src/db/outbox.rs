//! `link_outbox`: codes whose new state must still reach Redis (see the migration's comment).

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use tokio_postgres::Error;

/// Queues `code`; returns the stamp [`done`] needs. Call inside the write's transaction.
pub async fn enqueue(c: &impl GenericClient, code: &str) -> Result<DateTime<Utc>, Error> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO link_outbox (short_code) VALUES ($1) \
             ON CONFLICT (short_code) DO UPDATE SET queued_at = clock_timestamp() \
             RETURNING queued_at",
        )
        .await?;
    Ok(c.query_one(&stmt, &[&code]).await?.get(0))
}

/// Queues many codes at once (a bulk import, inside its transaction); returns the latest stamp
/// given, which [`done_many`] needs (`None` for no codes).
pub async fn enqueue_many(
    c: &impl GenericClient,
    codes: &[String],
) -> Result<Option<DateTime<Utc>>, Error> {
    let stmt = c
        .prepare_cached(
            "WITH q AS (INSERT INTO link_outbox (short_code) SELECT DISTINCT UNNEST($1::text[]) \
             ON CONFLICT (short_code) DO UPDATE SET queued_at = clock_timestamp() \
             RETURNING queued_at) SELECT max(queued_at) FROM q",
        )
        .await?;
    Ok(c.query_one(&stmt, &[&codes]).await?.get(0))
}

/// Removes `codes` queued by [`enqueue_many`] (stamps up to `stamp`), unless a later write
/// queued one again.
pub async fn done_many(
    c: &impl GenericClient,
    codes: &[String],
    stamp: DateTime<Utc>,
) -> Result<u64, Error> {
    let stmt = c
        .prepare_cached("DELETE FROM link_outbox WHERE short_code = ANY($1) AND queued_at <= $2")
        .await?;
    c.execute(&stmt, &[&codes, &stamp]).await
}

/// Removes `code` unless a later write queued it again.
pub async fn done(c: &impl GenericClient, code: &str, stamp: DateTime<Utc>) -> Result<(), Error> {
    let stmt = c
        .prepare_cached("DELETE FROM link_outbox WHERE short_code = $1 AND queued_at = $2")
        .await?;
    c.execute(&stmt, &[&code, &stamp]).await.map(|_| ())
}

/// The oldest queued codes, up to those queued at `upto`.
pub async fn oldest(
    c: &impl GenericClient,
    limit: i64,
    upto: DateTime<Utc>,
) -> Result<Vec<(String, DateTime<Utc>)>, Error> {
    let stmt = c
        .prepare_cached(
            "SELECT short_code, queued_at FROM link_outbox WHERE queued_at <= $2 \
             ORDER BY queued_at LIMIT $1",
        )
        .await?;
    Ok(c.query(&stmt, &[&limit, &upto])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// PostgreSQL's clock, which stamps the queue.
pub async fn now(c: &impl GenericClient) -> Result<DateTime<Utc>, Error> {
    let stmt = c.prepare_cached("SELECT clock_timestamp()").await?;
    Ok(c.query_one(&stmt, &[]).await?.get(0))
}

/// Puts `code`, queued at `stamp`, out of the replay's reach for `after` (unless a later write
/// queued it again meanwhile, which makes it due at once).
pub async fn retry_later(
    c: &impl GenericClient,
    code: &str,
    stamp: DateTime<Utc>,
    after: std::time::Duration,
) -> Result<(), Error> {
    let stmt = c
        .prepare_cached(
            "UPDATE link_outbox SET queued_at = clock_timestamp() + $3::float8 * interval '1 second' \
             WHERE short_code = $1 AND queued_at = $2",
        )
        .await?;
    c.execute(&stmt, &[&code, &stamp, &after.as_secs_f64()])
        .await
        .map(|_| ())
}

pub async fn count(c: &impl GenericClient) -> Result<i64, Error> {
    let stmt = c.prepare_cached("SELECT count(*) FROM link_outbox").await?;
    Ok(c.query_one(&stmt, &[]).await?.get(0))
}

/// The last link version handed out (`link_versions`): every state written later has a higher
/// one.
pub async fn last_version(c: &impl GenericClient) -> Result<i64, Error> {
    let stmt = c
        .prepare_cached(
            "SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM link_versions",
        )
        .await?;
    Ok(c.query_one(&stmt, &[]).await?.get(0))
}

/// Queues every code whose link state was written after `version` (deleted links included:
/// their rows stay); returns how many. A scan of `urls`, for the rare event that needs it.
pub async fn enqueue_written_after(c: &impl GenericClient, version: i64) -> Result<u64, Error> {
    let stmt = c
        .prepare_cached(
            "INSERT INTO link_outbox (short_code) \
             SELECT DISTINCT short_code FROM urls WHERE version > $1 \
             ON CONFLICT (short_code) DO UPDATE SET queued_at = clock_timestamp()",
        )
        .await?;
    c.execute(&stmt, &[&version]).await
}
