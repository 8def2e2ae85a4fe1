//! Accounts and access: who is calling ([`Caller`]) and what they may do.
//!
//! Tokens travel as `Authorization: Bearer <token>`: session tokens (`kzs_…`, in Redis) from
//! register/login, API keys (`kzk_…`, hashed in PostgreSQL) for machines. With
//! `auth.mode: open` no token is needed and the evaluation contract holds; with `required`,
//! writes act as the token's user, other users' data is for admins, and a link's public fields
//! and the redirect stay open.

pub mod lockout;
pub mod password;
pub mod sessions;

use crate::config::{AuthConfig, AuthMode};
use crate::db;
use crate::db::users::User;
use crate::error::ApiError;
use crate::redis_handle::RedisHandle;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use kurz_common::keys::KeySchema;
use std::sync::Arc;

pub struct Auth {
    pub mode: AuthMode,
    /// Admin emails, lower-cased.
    admins: Vec<String>,
    pub passwords: password::Passwords,
    pub sessions: sessions::Sessions,
    pub lockout: lockout::Lockout,
}

impl Auth {
    pub fn new(cfg: &AuthConfig, redis: Arc<RedisHandle>, keys: KeySchema) -> Result<Self, String> {
        Ok(Self {
            mode: cfg.mode,
            admins: cfg
                .admins
                .iter()
                .map(|a| a.trim().to_ascii_lowercase())
                .collect(),
            passwords: password::Passwords::new(cfg)?,
            sessions: sessions::Sessions::new(
                redis.clone(),
                keys.clone(),
                cfg.session_ttl_seconds,
                cfg.sliding_sessions,
            ),
            lockout: lockout::Lockout::new(redis, keys, cfg.lockout.clone()),
        })
    }

    pub fn is_admin(&self, user: &User) -> bool {
        self.is_admin_email(&user.email)
    }

    /// Whether `email` is one `auth.admins` lists. ASCII case only, as PostgreSQL's `lower()`
    /// folds it in a C-locale database: a full Unicode fold would take the Kelvin sign (U+212A)
    /// for a `k`, and `boss\u{212a}@…`, an address the unique index does not see as taken,
    /// for an admin's.
    pub fn is_admin_email(&self, email: &str) -> bool {
        self.admins.iter().any(|a| a.eq_ignore_ascii_case(email))
    }
}

/// How a caller proved who they are.
#[derive(Debug, Clone)]
pub enum Credential {
    /// The session token itself (needed to log it out).
    Session(String),
    ApiKey(i64),
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user: User,
    pub admin: bool,
    pub credential: Credential,
}

/// Who is calling, and under which mode.
#[derive(Debug, Clone)]
pub struct Caller {
    pub mode: AuthMode,
    pub user: Option<AuthUser>,
}

/// The token of an `Authorization: Bearer <token>` header. A header of another scheme is not
/// ours (`Basic` for a proxy in front): no token. One that carries a kurz token in another shape
/// (`Token kzk_…`, the bare token, `Bearer` with nothing after it) is an empty token, which no
/// session or key matches: its sender meant to authenticate, and must hear that it did not,
/// rather than act anonymously (a link created without an owner).
fn bearer(parts: &Parts) -> Option<&str> {
    let raw = parts.headers.get(axum::http::header::AUTHORIZATION)?;
    let meant_ours = |value: &str| {
        value.contains(sessions::SESSION_PREFIX)
            || value.contains(sessions::API_KEY_PREFIX)
            || value.eq_ignore_ascii_case("bearer")
    };
    let Ok(value) = raw.to_str() else {
        // Bytes no token holds (a non-breaking space pasted along with it): still a token
        // meant, and refused, when it is one of ours or sent as `Bearer`.
        let lossy = String::from_utf8_lossy(raw.as_bytes());
        let scheme = lossy.trim_start().get(..6).unwrap_or("");
        return (meant_ours(&lossy) || scheme.eq_ignore_ascii_case("bearer")).then_some("");
    };
    let value = value.trim();
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Some(token.trim()),
        _ if meant_ours(value) => Some(""),
        _ => None,
    }
}

/// Generic over the state (anything that yields the auth settings and the pool), so this
/// module does not depend on `state`, which depends on it.
impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Arc<Auth>: FromRef<S>,
    deadpool_postgres::Pool: FromRef<S>,
{
    type Rejection = ApiError;

    /// No header: anonymous. A header with a bad, expired or revoked token: 401, in either mode
    /// (a client that sends a token wants to know it is not accepted). Redis down while a
    /// session must be checked: 503, never a silent pass.
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let auth = Arc::<Auth>::from_ref(state);
        let mode = auth.mode;
        let Some(token) = bearer(parts) else {
            return Ok(Caller { mode, user: None });
        };
        if token.is_empty() {
            return Err(ApiError::Unauthorized(
                "the Authorization header must be `Bearer <token>`".into(),
            ));
        }
        let invalid = || ApiError::Unauthorized("the token is invalid, expired or revoked".into());
        let pool = deadpool_postgres::Pool::from_ref(state);
        // A session is looked up in Redis before a connection is taken: a Redis that hangs
        // must not hold the pool's connections for its timeout, from requests with keys too.
        let (client, user_id, credential) = if token.starts_with(sessions::API_KEY_PREFIX) {
            let client = pool.get().await?;
            let key = db::api_keys::find_active(&client, &sessions::token_hash(token))
                .await?
                .ok_or_else(invalid)?;
            (client, key.user_id, Credential::ApiKey(key.id))
        } else {
            let uid = auth
                .sessions
                .user_of(token)
                .await
                .map_err(|_| {
                    ApiError::Unavailable(
                        "sessions are unavailable right now; retry shortly".into(),
                    )
                })?
                .ok_or_else(invalid)?;
            (
                pool.get().await?,
                uid,
                Credential::Session(token.to_owned()),
            )
        };
        let user = db::users::find_user(&client, user_id)
            .await?
            .ok_or_else(invalid)?;
        let admin = auth.is_admin(&user);
        Ok(Caller {
            mode,
            user: Some(AuthUser {
                user,
                admin,
                credential,
            }),
        })
    }
}

impl Caller {
    fn required(&self) -> bool {
        self.mode == AuthMode::Required
    }

    fn must_log_in() -> ApiError {
        ApiError::Unauthorized("this needs a token: Authorization: Bearer <token>".into())
    }

    /// The authenticated user, or 401 (in both modes: for the `/auth/*` routes).
    pub fn authenticated(&self) -> Result<&AuthUser, ApiError> {
        self.user.as_ref().ok_or_else(Self::must_log_in)
    }

    /// Who a write acts as: the token's user in required mode (401 without one); in open mode
    /// the token's user if any, else nobody (the body says).
    pub fn acting(&self) -> Result<Option<&AuthUser>, ApiError> {
        match (&self.user, self.required()) {
            (Some(u), _) => Ok(Some(u)),
            (None, true) => Err(Self::must_log_in()),
            (None, false) => Ok(None),
        }
    }

    /// Whether the caller may act as an admin: anyone in open mode, an admin in required mode.
    pub fn is_admin(&self) -> bool {
        !self.required() || matches!(self.acting(), Ok(Some(u)) if u.admin)
    }

    /// Admin-only in required mode.
    pub fn require_admin(&self) -> Result<(), ApiError> {
        if !self.required() {
            return Ok(());
        }
        match self.acting()? {
            Some(u) if u.admin => Ok(()),
            _ => Err(ApiError::Forbidden("only admins may do this".into())),
        }
    }

    /// The user themself or an admin, in required mode.
    pub fn require_self_or_admin(&self, user_id: i64) -> Result<(), ApiError> {
        self.require_owner_or_admin(Some(user_id))
    }

    /// The owner of a resource or an admin, in required mode.
    pub fn require_owner_or_admin(&self, owner: Option<i64>) -> Result<(), ApiError> {
        if !self.required() {
            return Ok(());
        }
        match self.acting()? {
            Some(u) if u.admin || owner == Some(u.user.id) => Ok(()),
            _ => Err(ApiError::Forbidden("this belongs to another user".into())),
        }
    }

    /// The owner of a new resource: in required mode the caller, or (admins only) the
    /// `user_id` the body names; in open mode the body's `user_id`. `None`: the body must name
    /// one and did not.
    pub fn owner_for_write(&self, from_body: Option<i64>) -> Result<Option<i64>, ApiError> {
        if !self.required() {
            return Ok(from_body);
        }
        let me = self.acting()?.expect("required mode has a user");
        match from_body {
            Some(other) if other != me.user.id && !me.admin => {
                Err(ApiError::Forbidden("user_id must be your own".into()))
            }
            Some(id) => Ok(Some(id)),
            None => Ok(Some(me.user.id)),
        }
    }

    /// An id for scoping per-user state (idempotency keys): the caller's, or 0 when anonymous.
    pub fn scope_id(&self) -> i64 {
        self.user.as_ref().map_or(0, |u| u.user.id)
    }

    /// In required mode, the user whose data a non-admin list may show: their own. A filter
    /// naming someone else is a 403. Admins and open mode: the filter as given.
    pub fn scope_user_filter(&self, requested: Option<i64>) -> Result<Option<i64>, ApiError> {
        if !self.required() {
            return Ok(requested);
        }
        let me = self.acting()?.expect("required mode has a user");
        if me.admin {
            return Ok(requested);
        }
        match requested {
            Some(other) if other != me.user.id => Err(ApiError::Forbidden(
                "only admins may list other users' data".into(),
            )),
            _ => Ok(Some(me.user.id)),
        }
    }
}
