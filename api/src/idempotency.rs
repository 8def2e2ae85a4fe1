//! `Idempotency-Key` on `POST /urls`: a retried create returns the first answer for 24 hours
//! instead of making a second link.
//!
//! The key is a row in PostgreSQL written in the create's own transaction, so it exists exactly
//! when the link does. A second request with the same key blocks on the first one's row lock:
//! if the first commits, the second answers its link; if the first dies (its process killed,
//! its connection dropped), PostgreSQL rolls it back and the second creates. That is what lets
//! the edge retry a keyed create on another API when the one it sent it to died mid-request.
//! Reusing a key with a different body is a 409, never a silent replay of an unrelated answer.

use crate::db::urls::Link;
use crate::error::ApiError;
use axum::http::HeaderMap;
use deadpool_postgres::GenericClient;

/// How long an answer is replayed.
const KEEP: &str = "24 hours";
const MAX_KEY_LEN: usize = 255;

/// The header's value, checked: 1 to 255 visible ASCII characters.
pub fn key_from(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match raw.to_str() {
        Ok(k)
            if !k.is_empty()
                && k.len() <= MAX_KEY_LEN
                && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(k.to_owned()))
        }
        _ => Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
        ))),
    }
}

/// What a keyed create is compared by: the digest its row keeps, and the text it is a digest
/// of, which rows written before the digest came in keep instead (for the day such a row
/// lives: a create an older API committed, replayed on a newer one, is that create).
pub struct Fingerprint {
    pub digest: String,
    pub text: String,
}

/// Claims `key` inside the create's transaction `tx`. `None`: the caller goes on to create and
/// then calls [`bind`]. `Some(link)`: an earlier request with this key and body made `link`.
pub async fn claim(
    tx: &impl GenericClient,
    key: &str,
    fingerprint: &Fingerprint,
) -> Result<Option<Link>, ApiError> {
    // An expired key is free again; dropping it first keeps the insert below a plain claim.
    let expire = tx
        .prepare_cached(&format!(
            "DELETE FROM idempotency_keys WHERE scope_key = $1 AND created_at < now() - interval '{KEEP}'"
        ))
        .await?;
    tx.execute(&expire, &[&key]).await?;
    let insert = tx
        .prepare_cached(
            "INSERT INTO idempotency_keys (scope_key, fingerprint) VALUES ($1, $2) \
             ON CONFLICT (scope_key) DO NOTHING",
        )
        .await?;
    if tx.execute(&insert, &[&key, &fingerprint.digest]).await? == 1 {
        return Ok(None);
    }
    let stored = tx
        .prepare_cached("SELECT fingerprint, url_id FROM idempotency_keys WHERE scope_key = $1")
        .await?;
    let row = tx.query_one(&stored, &[&key]).await?;
    let stored: &str = row.get(0);
    if stored != fingerprint.digest && stored != fingerprint.text {
        return Err(ApiError::Conflict(
            "this Idempotency-Key was used with a different request body".into(),
        ));
    }
    let url_id: Option<i64> = row.get(1);
    match url_id {
        Some(id) => crate::db::urls::find_url(tx, id)
            .await?
            .map(Some)
            .ok_or_else(|| {
                ApiError::Conflict("the link this Idempotency-Key created has been deleted".into())
            }),
        None => Err(ApiError::Conflict(
            "the link this Idempotency-Key created has been deleted".into(),
        )),
    }
}

/// Records which link the claimed key made, in the same transaction.
pub async fn bind(tx: &impl GenericClient, key: &str, url_id: i64) -> Result<(), ApiError> {
    let stmt = tx
        .prepare_cached("UPDATE idempotency_keys SET url_id = $2 WHERE scope_key = $1")
        .await?;
    tx.execute(&stmt, &[&key, &url_id]).await?;
    Ok(())
}

/// Drops keys past their replay window, `batch` rows a statement, until none is left or `stop`
/// is set; returns how many went. One statement for a day's keys of a busy instance would
/// outlast `database.statement_timeout_ms` and fail every time, the table growing for good.
/// Rows another session holds (a replica pruning at the same time, a claim of an expired key
/// being taken over) are skipped, not waited for.
pub async fn prune(
    c: &impl GenericClient,
    batch: i64,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<u64, ApiError> {
    let stmt = c
        .prepare_cached(&format!(
            "DELETE FROM idempotency_keys WHERE scope_key IN ( \
               SELECT scope_key FROM idempotency_keys \
               WHERE created_at < now() - interval '{KEEP}' \
               ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)"
        ))
        .await?;
    let mut pruned = 0;
    loop {
        let n = c.execute(&stmt, &[&batch]).await?;
        pruned += n;
        if n < batch as u64 || *stop.borrow() {
            return Ok(pruned);
        }
    }
}
