//! `users` table.

use crate::identity::{Email, Username};
use chrono::{DateTime, Utc};
use deadpool_postgres::GenericClient;
use serde_json::{json, Value};
use tokio_postgres::{Error, Row};

const COLUMNS: &str = "id, username, email, created_at";

#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub email: String,
    pub created_at: DateTime<Utc>,
}

impl User {
    fn from_row(row: &Row) -> Self {
        Self {
            id: row.get(0),
            username: row.get(1),
            email: row.get(2),
            created_at: row.get(3),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "username": self.username,
            "email": self.email,
            "created_at": kurz_common::time::format(self.created_at),
        })
    }
}

/// Takes `username`'s write lock until the end of transaction `tx`, then says whether a live
/// user other than `except` has it, unless `except` has it already (keeping one's own name is
/// no claim on it, though an import gave someone else the same). The table allows repeats
/// (imports keep real exports as they are); API writes keep usernames unique by checking under
/// this lock.
pub async fn lock_username(
    tx: &impl GenericClient,
    username: &Username,
    except: Option<i64>,
) -> Result<bool, Error> {
    let username = username.as_str();
    let lock = tx
        .prepare_cached("SELECT pg_advisory_xact_lock(hashtextextended('kurz.username:' || $1, 0))")
        .await?;
    tx.execute(&lock, &[&username]).await?;
    let taken = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM users WHERE username = $1 AND deleted_at IS NULL \
             AND id IS DISTINCT FROM $2) \
             AND NOT EXISTS (SELECT 1 FROM users WHERE id = $2 AND username = $1)",
        )
        .await?;
    Ok(tx.query_one(&taken, &[&username, &except]).await?.get(0))
}

pub async fn insert_user(
    c: &impl GenericClient,
    username: &Username,
    email: &Email,
) -> Result<User, Error> {
    let (username, email) = (username.as_str(), email.as_str());
    let stmt = c
        .prepare_cached(&format!(
            "INSERT INTO users (username, email) VALUES ($1, $2) RETURNING {COLUMNS}"
        ))
        .await?;
    Ok(User::from_row(
        &c.query_one(&stmt, &[&username, &email]).await?,
    ))
}

pub async fn find_user(c: &impl GenericClient, id: i64) -> Result<Option<User>, Error> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM users WHERE id = $1 AND deleted_at IS NULL"
        ))
        .await?;
    Ok(c.query_opt(&stmt, &[&id])
        .await?
        .as_ref()
        .map(User::from_row))
}

pub async fn user_exists(c: &impl GenericClient, id: i64) -> Result<bool, Error> {
    Ok(find_user(c, id).await?.is_some())
}

/// Live users with an id above `after` (ids start at 1: 0 is all of them), in id order.
pub async fn list_users(
    c: &impl GenericClient,
    after: i64,
    limit: i64,
    offset: i64,
) -> Result<Vec<User>, Error> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM users WHERE deleted_at IS NULL AND id > $1 \
             ORDER BY id LIMIT $2 OFFSET $3"
        ))
        .await?;
    Ok(c.query(&stmt, &[&after, &limit, &offset])
        .await?
        .iter()
        .map(User::from_row)
        .collect())
}

/// How many users [`list_users`] lists after `after`.
pub async fn count_users(c: &impl GenericClient, after: i64) -> Result<i64, Error> {
    let stmt = c
        .prepare_cached("SELECT count(*) FROM users WHERE deleted_at IS NULL AND id > $1")
        .await?;
    Ok(c.query_one(&stmt, &[&after]).await?.get(0))
}

/// Sets the given fields; `None` keeps the current value.
pub async fn update_user(
    c: &impl GenericClient,
    id: i64,
    username: Option<&Username>,
    email: Option<&Email>,
) -> Result<Option<User>, Error> {
    let (username, email) = (username.map(Username::as_str), email.map(Email::as_str));
    let stmt = c
        .prepare_cached(&format!(
            "UPDATE users SET username = COALESCE($2, username), email = COALESCE($3, email) \
             WHERE id = $1 AND deleted_at IS NULL RETURNING {COLUMNS}"
        ))
        .await?;
    Ok(c.query_opt(&stmt, &[&id, &username, &email])
        .await?
        .as_ref()
        .map(User::from_row))
}

/// Whether user `id` exists and is not deleted.
pub async fn is_live(c: &impl GenericClient, id: i64) -> Result<bool, Error> {
    let stmt = c
        .prepare_cached("SELECT 1 FROM users WHERE id = $1 AND deleted_at IS NULL")
        .await?;
    Ok(c.query_opt(&stmt, &[&id]).await?.is_some())
}

/// Soft delete; `false` when there was no such live user.
pub async fn delete_user(c: &impl GenericClient, id: i64) -> Result<bool, Error> {
    let stmt = c
        .prepare_cached("UPDATE users SET deleted_at = now() WHERE id = $1 AND deleted_at IS NULL")
        .await?;
    Ok(c.execute(&stmt, &[&id]).await? == 1)
}

/// Which of `username` and `email` a live account holds (`"username"` or `"email"`, the
/// email compared as the unique index does), without taking a lock: a cheap early refusal.
pub async fn identity_taken(
    c: &impl GenericClient,
    username: &Username,
    email: &Email,
) -> Result<Option<&'static str>, Error> {
    let stmt = c
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM users WHERE username = $1 AND deleted_at IS NULL), \
                    EXISTS (SELECT 1 FROM users WHERE lower(email) = lower($2) AND deleted_at IS NULL)",
        )
        .await?;
    let row = c
        .query_one(&stmt, &[&username.as_str(), &email.as_str()])
        .await?;
    Ok(if row.get(0) {
        Some("username")
    } else if row.get(1) {
        Some("email")
    } else {
        None
    })
}

/// Whether any account, a deleted one included, holds `email` (case-insensitively, as the
/// unique index compares). An address an account changed away from is in no row.
pub async fn email_ever_used(c: &impl GenericClient, email: &str) -> Result<bool, Error> {
    let stmt = c
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE lower(email) = lower($1))")
        .await?;
    Ok(c.query_one(&stmt, &[&email]).await?.get(0))
}

/// A new account with a password.
pub async fn insert_account(
    c: &impl GenericClient,
    username: &Username,
    email: &Email,
    password_hash: &str,
) -> Result<User, Error> {
    let (username, email) = (username.as_str(), email.as_str());
    let stmt = c
        .prepare_cached(&format!(
            "INSERT INTO users (username, email, password_hash) VALUES ($1, $2, $3) RETURNING {COLUMNS}"
        ))
        .await?;
    Ok(User::from_row(
        &c.query_one(&stmt, &[&username, &email, &password_hash])
            .await?,
    ))
}

/// A live user by email (case-insensitive) or username, with their password hash if any. A
/// username several users share names nobody: `None`, as for an unknown one.
pub async fn find_login(
    c: &impl GenericClient,
    email: Option<&str>,
    username: Option<&str>,
) -> Result<Option<(User, Option<String>)>, Error> {
    // A username may hold an '@' too: an identifier given as an email that no account has is
    // tried as a username (the web form cannot tell the two apart).
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {COLUMNS}, password_hash, $1::text IS NOT NULL AND lower(email) = lower($1) \
             FROM users WHERE deleted_at IS NULL \
             AND (lower(email) = lower($1) OR username = coalesce($1, $2))"
        ))
        .await?;
    let rows = c.query(&stmt, &[&email, &username]).await?;
    let by_email: Vec<&Row> = rows.iter().filter(|r| r.get::<_, bool>(5)).collect();
    let chosen: &[&Row] = if by_email.is_empty() {
        &rows.iter().collect::<Vec<_>>()
    } else {
        &by_email
    };
    Ok(match chosen {
        [r] => Some((User::from_row(r), r.get(4))),
        _ => None,
    })
}

pub async fn password_hash(c: &impl GenericClient, id: i64) -> Result<Option<String>, Error> {
    let stmt = c
        .prepare_cached("SELECT password_hash FROM users WHERE id = $1 AND deleted_at IS NULL")
        .await?;
    Ok(c.query_opt(&stmt, &[&id]).await?.and_then(|r| r.get(0)))
}

/// The user's password hash, locking the row until the end of transaction `tx` (a password
/// change's check and write happen under it). `NO KEY`: inserts that reference the user (links,
/// events, keys of every writer batch) check it with a key-share lock, which this one leaves
/// them, while it is held across the change's Redis calls.
pub async fn password_hash_for_update(
    tx: &impl GenericClient,
    id: i64,
) -> Result<Option<String>, Error> {
    let stmt = tx
        .prepare_cached(
            "SELECT password_hash FROM users WHERE id = $1 AND deleted_at IS NULL FOR NO KEY UPDATE",
        )
        .await?;
    Ok(tx.query_opt(&stmt, &[&id]).await?.and_then(|r| r.get(0)))
}

/// Replaces the password hash `checked` (the one the current password was verified against);
/// `false` when the stored one is no longer it (another change came first) or the user is gone.
pub async fn set_password(
    c: &impl GenericClient,
    id: i64,
    checked: Option<&str>,
    password_hash: &str,
) -> Result<bool, Error> {
    let stmt = c
        .prepare_cached(
            "UPDATE users SET password_hash = $3 \
             WHERE id = $1 AND deleted_at IS NULL AND password_hash IS NOT DISTINCT FROM $2",
        )
        .await?;
    Ok(c.execute(&stmt, &[&id, &checked, &password_hash]).await? == 1)
}
