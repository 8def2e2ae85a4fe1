//! `api_keys` table: hashed machine credentials.

use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::{json, Value};
use tokio_postgres::{Error, Row};

const COLUMNS: &str = "id, user_id, name, prefix, created_at, last_used_at";

#[derive(Debug, Clone)]
pub struct ApiKey {
    pub id: i64,
    pub user_id: i64,
    pub name: String,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ApiKey {
    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            user_id: row.get(1),
            name: row.get(2),
            prefix: row.get(3),
            created_at: row.get(4),
            last_used_at: row.get(5),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "name": self.name,
            "prefix": self.prefix,
            "created_at": kurz_common::time::format(self.created_at),
            "last_used_at": self.last_used_at.map(kurz_common::time::format),
        })
    }
}

/// Most live keys one user holds: every one is listed on the keys page, and a script making
/// keys in a loop should stop with an answer, not fill a table.
pub const MAX_LIVE_KEYS: i64 = 100;

/// The user's key lock, until the end of the transaction: key makers and a delete of the user
/// take turns on it.
async fn lock_user_keys(c: &impl GenericClient, user_id: i64) -> Result<(), Error> {
    let lock = c
        .prepare_cached(
            "SELECT pg_advisory_xact_lock(hashtextextended('kurz.api_keys:' || $1::int8::text, 0))",
        )
        .await?;
    c.execute(&lock, &[&user_id]).await.map(|_| ())
}

/// What [`insert_key`] did.
pub enum NewKey {
    Stored(ApiKey),
    /// The user holds [`MAX_LIVE_KEYS`] live keys already.
    TooMany,
    /// The user was deleted, or an import gave the account another email (before this, or
    /// while this waited for that to commit): the caller no longer holds the account.
    UserGone,
}

/// Stores a new key. In a transaction, under the user's key lock ([`lock_user_keys`]), which
/// concurrent makers wait on while the user's keys are counted, and which a delete of the user
/// takes before it revokes them: a maker that comes second sees the user deleted and makes
/// nothing; one that comes first has its key revoked by the delete. Without it a key made while
/// the user was deleted outlived the delete: a re-import of the user would bring it back.
///
/// `email` is the account's email as the caller was authenticated with it: an import that gave
/// the id another email revokes its keys under the same lock, and a key made after must not
/// act as the new email.
pub async fn insert_key(
    c: &impl GenericClient,
    user_id: i64,
    email: &str,
    name: &str,
    prefix: &str,
    hash: &str,
) -> Result<NewKey, Error> {
    lock_user_keys(c, user_id).await?;
    // After the lock: a delete or an import that held it has committed, and this sees it.
    let live = c
        .prepare_cached(
            "SELECT 1 FROM users WHERE id = $1 AND deleted_at IS NULL AND lower(email) = lower($2)",
        )
        .await?;
    if c.query_opt(&live, &[&user_id, &email]).await?.is_none() {
        return Ok(NewKey::UserGone);
    }
    let stmt = c
        .prepare_cached(&format!(
            "INSERT INTO api_keys (user_id, name, prefix, key_hash) SELECT $1, $2, $3, $4 \
             WHERE (SELECT count(*) FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL) < $5 \
             RETURNING {COLUMNS}"
        ))
        .await?;
    Ok(
        match c
            .query_opt(&stmt, &[&user_id, &name, &prefix, &hash, &MAX_LIVE_KEYS])
            .await?
        {
            Some(row) => NewKey::Stored(ApiKey::from_row(&row)),
            None => NewKey::TooMany,
        },
    )
}

/// A live key of a live user by hash, marking it used at most once a minute.
///
/// Read first, written only when the mark is stale: an `UPDATE` that sets the same value still
/// writes a row version and WAL and takes the row's lock, so every request with one key queued
/// behind the last one's commit, and a read-only database refused even reads.
pub async fn find_active(c: &impl GenericClient, hash: &str) -> Result<Option<ApiKey>, Error> {
    let find = c
        .prepare_cached(
            "SELECT k.id, k.user_id, k.name, k.prefix, k.created_at, k.last_used_at, \
               k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute' \
             FROM api_keys k JOIN users u ON u.id = k.user_id \
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL AND u.deleted_at IS NULL",
        )
        .await?;
    let Some(row) = c.query_opt(&find, &[&hash]).await? else {
        return Ok(None);
    };
    let mut key = ApiKey::from_row(&row);
    if row.get::<_, bool>(6) {
        let mark = c
            .prepare_cached(
                "UPDATE api_keys SET last_used_at = now() WHERE id = $1 \
                 AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute') \
                 RETURNING last_used_at",
            )
            .await?;
        // A mark that cannot be written (a read-only database, a failover under way) costs the
        // request nothing: the key is as valid as it was a minute ago.
        match c.query_opt(&mark, &[&key.id]).await {
            Ok(Some(marked)) => key.last_used_at = marked.get(0),
            Ok(None) => {}
            Err(e) => log::warn!(key_id = key.id, error = e.to_string(); "API key use not marked"),
        }
    }
    Ok(Some(key))
}

pub async fn list_keys(c: &impl GenericClient, user_id: i64) -> Result<Vec<ApiKey>, Error> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM api_keys WHERE user_id = $1 AND revoked_at IS NULL ORDER BY id"
        ))
        .await?;
    Ok(c.query(&stmt, &[&user_id])
        .await?
        .iter()
        .map(ApiKey::from_row)
        .collect())
}

/// Revokes a user's key; `false` when they have no such live key.
pub async fn revoke_key(c: &impl GenericClient, user_id: i64, id: i64) -> Result<bool, Error> {
    let stmt = c
        .prepare_cached("UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL")
        .await?;
    Ok(c.execute(&stmt, &[&id, &user_id]).await? == 1)
}

/// Whether the user's key `id` exists and is revoked.
pub async fn is_revoked(c: &impl GenericClient, user_id: i64, id: i64) -> Result<bool, Error> {
    let stmt = c
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = $1 AND user_id = $2 AND revoked_at IS NOT NULL)")
        .await?;
    Ok(c.query_one(&stmt, &[&id, &user_id]).await?.get(0))
}

/// Revokes every active key of a user (the account was deleted).
pub async fn revoke_all(c: &impl GenericClient, user_id: i64) -> Result<u64, Error> {
    // A key being made now is waited for and revoked; one made later sees the user deleted
    // (`insert_key`), when this runs in the delete's transaction.
    lock_user_keys(c, user_id).await?;
    let stmt = c
        .prepare_cached(
            "UPDATE api_keys SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
        )
        .await?;
    c.execute(&stmt, &[&user_id]).await
}
