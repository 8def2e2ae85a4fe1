//! `/auth/*` (and `/api/auth/*`): register, login, logout, me, password change, API keys.
//! Every answer carries `Cache-Control: no-store` (set by the request middleware).

use crate::auth::lockout::Subject;
use crate::auth::sessions::{new_token, token_hash, API_KEY_PREFIX};
use crate::auth::{Caller, Credential};
use crate::db::{self, conflict_or, users::User};
use crate::error::{ApiError, ApiResult};
use crate::extract::{path_id, Fields, JsonObject, Patch, PathText};
use crate::state::AppState;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::net::SocketAddr;

const MIN_PASSWORD: usize = 8;
/// Long enough for any passphrase, short enough that hashing cannot be abused with megabytes.
const MAX_PASSWORD: usize = 1024;

fn check_password(f: &mut Fields, name: &str, pw: &str) {
    let n = pw.chars().count();
    if n < MIN_PASSWORD {
        f.reject(name, format!("must be at least {MIN_PASSWORD} characters"));
    } else if n > MAX_PASSWORD {
        f.reject(name, format!("must be at most {MAX_PASSWORD} characters"));
    }
}

fn sessions_down() -> ApiError {
    ApiError::Unavailable(
        "sessions are unavailable right now (Redis is down); retry shortly".into(),
    )
}

/// A new session of `user`: its token.
pub(crate) async fn new_session(state: &AppState, user: &User) -> ApiResult<String> {
    state
        .auth
        .sessions
        .create(user.id)
        .await
        .map_err(|_| sessions_down())
}

/// `{"token","expires_at","user"}` for a new session of `user`.
async fn session_answer(state: &AppState, user: &User, status: StatusCode) -> ApiResult<Response> {
    let token = new_session(state, user).await?;
    Ok((status, Json(session_body(state, user, &token))).into_response())
}

/// `{"token","expires_at","user"}` for the session `token` of `user`, made just now.
fn session_body(state: &AppState, user: &User, token: &str) -> Value {
    let expires = chrono::Utc::now() + chrono::Duration::seconds(state.auth.sessions.ttl() as i64);
    json!({"token": token, "expires_at": kurz_common::time::format(expires), "user": user.to_json()})
}

/// `POST /auth/register`.
pub async fn register(
    State(state): State<AppState>,
    _: crate::extract::NotCrossSiteForm,
    body: JsonObject,
) -> ApiResult<Response> {
    let user = register_account(&state, body).await?;
    session_answer(&state, &user, StatusCode::CREATED)
        .await
        .map_err(registered_without_session)
}

/// The account exists once registered: a session that cannot be started after that is no
/// failed registration, and the "retry" of a plain 503 would only be answered 409 for the name
/// just taken.
pub(crate) fn registered_without_session(e: ApiError) -> ApiError {
    done_without_session(
        e,
        "the account was created",
        "log in shortly instead of registering again",
    )
}

/// Says what was `done` (stored, for good) when the session that should follow cannot start,
/// and what to do `then` instead of the retry a plain 503 asks for.
fn done_without_session(e: ApiError, done: &str, then: &str) -> ApiError {
    match e {
        ApiError::Unavailable(_) => ApiError::Unavailable(format!(
            "{done}, but no session could be started (Redis is down): {then}"
        )),
        other => other,
    }
}

/// Validates and creates an account (`username`, `email`, `password`); the JSON endpoint and
/// the web page both come here.
pub(crate) async fn register_account(state: &AppState, body: JsonObject) -> ApiResult<User> {
    let mut f = Fields::new(body);
    let (username, email) = crate::identity::required(&mut f);
    let password = f.string("password");
    if let Some(p) = &password {
        check_password(&mut f, "password", p);
    }
    f.finish()?;
    let (Some(username), Some(email), Some(password)) = (username, email, password) else {
        return Err(ApiError::BadRequest(
            "username, email and password are required".into(),
        ));
    };
    // Without Redis the new account could not get its session: refuse before creating it.
    if !state.auth.sessions.available().await {
        return Err(sessions_down());
    }
    // A taken name or email is refused before the hash: its permits are shared with every
    // log-in, and repeating a taken name must not cost one (checked again below, locked).
    // The connection goes back before the hash: a queue of hashes must not hold the pool.
    let taken = {
        let client = state.client().await?;
        db::users::identity_taken(&client, &username, &email).await?
    };
    match taken {
        Some("username") => return Err(ApiError::Conflict("username is already taken".into())),
        Some(_) => return Err(ApiError::Conflict("email is already registered".into())),
        None => {}
    }
    let hash = state.auth.passwords.hash(password).await?;
    let mut client = state.client().await?;
    let tx = client.transaction().await?;
    crate::routes::users::refuse_taken(&tx, &username, None).await?;
    // An admin's email (`auth.admins`) makes whoever holds it an admin, and addresses are not
    // verified: while an account holds it, a deleted one included, nobody registers it again.
    // (An address an account changed away from is in no row: configuration.md says to take it
    // out of the list.)
    if state.auth.is_admin_email(email.as_str())
        && db::users::email_ever_used(&tx, email.as_str()).await?
    {
        return Err(ApiError::Conflict(
            "this email is an administrator's and has been registered before".into(),
        ));
    }
    let user = db::users::insert_account(&tx, &username, &email, &hash)
        .await
        .map_err(conflict_or)?;
    crate::deadline::commit(tx).await?;
    Ok(user)
}

/// `POST /auth/login`: the same 401 for an unknown account and a wrong password, after the same
/// amount of hashing work.
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    _: crate::extract::NotCrossSiteForm,
    body: JsonObject,
) -> ApiResult<Response> {
    let ip = state.proxies.client_ip(peer.ip(), &headers);
    let (user, token) = log_in(&state, ip, body).await?;
    Ok((StatusCode::OK, Json(session_body(&state, &user, &token))).into_response())
}

/// Checks the credentials the body names and starts a session: the account and its token. The
/// JSON endpoint and the web page both come here.
///
/// A password change commits, then ends every session it finds. A log-in that read the old
/// hash before that commit and made its session after the change looked would keep a session
/// the change was meant to end. So the session is made first and the hash read again after:
/// either the change's last pass finds the session, or this finds the new hash and ends it.
pub(crate) async fn log_in(
    state: &AppState,
    ip: std::net::IpAddr,
    body: JsonObject,
) -> ApiResult<(User, String)> {
    let (user, checked) = check_login(state, ip, body).await?;
    let token = new_session(state, &user).await?;
    let current = match state.client().await {
        Ok(c) => db::users::password_hash(&c, user.id)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match current {
        Ok(current) if current == checked => Ok((user, token)),
        other => {
            // The token never leaves this process: a failed revocation leaves a session nobody
            // holds, which expires.
            if let Err(e) = state.auth.sessions.revoke(&token, user.id).await {
                log::warn!(user_id = user.id, error = e.to_string(); "a session made during a password change was not revoked");
            }
            Err(match other {
                Err(e) => e,
                Ok(_) => ApiError::Unauthorized("invalid credentials".into()),
            })
        }
    }
}

/// The account whose `email` or `username` and `password` the body names, through the
/// lock-out, and the hash the password was checked against.
async fn check_login(
    state: &AppState,
    ip: std::net::IpAddr,
    body: JsonObject,
) -> ApiResult<(User, Option<String>)> {
    let mut f = Fields::new(body);
    let email = f.opt_string("email");
    let username = f.opt_string("username");
    let password = f.string("password");
    let (email, username) = match (email, username) {
        (Patch::Set(e), _) => (Some(e), None),
        (_, Patch::Set(u)) => (None, Some(u)),
        _ => {
            f.reject("email", "email or username is required");
            (None, None)
        }
    };
    f.finish()?;
    let password = password.unwrap_or_default();
    // The connection goes back before the hash: a queue of log-ins waiting for the hash
    // permits must not hold the pool (every other request got 503 during a login flood).
    let (found, who) = {
        let client = state.client().await?;
        let found = db::users::find_login(&client, email.as_deref(), username.as_deref()).await?;
        // What names nobody is counted as the lookup would match it, or the answer for one
        // spelling after locking out another would tell whether an account exists (429 when
        // both count as nobody, 401 when one names an account, counted apart). An email
        // matches in any case, folded by PostgreSQL's `lower` (Rust's folds some letters
        // otherwise); a username as written, and so does an identifier sent as `email` that
        // cannot be one (no '@'): it is only ever tried as a username. The kind is part of the
        // count: `bob@x` locked out as a username says nothing of the email `bob@x`.
        //
        // Folded whether an account has the email or not: a lookup of nobody that ran one more
        // statement than a lookup of someone would tell them apart by the answer's time.
        let folded = match &email {
            Some(e) if e.contains('@') => {
                let fold = client.prepare_cached("SELECT lower($1::text)").await?;
                Some(client.query_one(&fold, &[e]).await?.get::<_, String>(0))
            }
            _ => None,
        };
        let who = match (&email, &username, &found, folded) {
            (_, _, Some(_), _) => String::new(),
            (_, _, None, Some(folded)) => format!("email:{folded}"),
            (Some(name), _, None, None) | (None, Some(name), None, None) => format!("name:{name}"),
            (None, None, None, None) => String::new(),
        };
        (found, who)
    };
    let (user, stored) = match found {
        Some((user, hash)) => (Some(user), hash),
        None => (None, None),
    };
    // Admitted (and counted) before the password is checked: see `auth::lockout`.
    let subject = match &user {
        Some(u) => Subject::Account(u.id),
        None => Subject::Unknown(&who),
    };
    let lockout = &state.auth.lockout;
    let attempt = match lockout
        .admit(&subject, ip)
        .await
        .map_err(|_| sessions_down())?
    {
        Ok(attempt) => attempt,
        Err(wait) => {
            return Err(ApiError::TooManyRequests {
                message: "too many failed logins; retry later".into(),
                retry_after: wait,
            })
        }
    };
    let ok = state
        .auth
        .passwords
        .verify(password, stored.clone())
        .await?;
    match user {
        Some(user) if ok => {
            lockout
                .succeeded(&attempt)
                .await
                .map_err(|_| sessions_down())?;
            Ok((user, stored))
        }
        _ => {
            lockout.failed(&attempt).await;
            Err(ApiError::Unauthorized("invalid credentials".into()))
        }
    }
}

/// `POST /auth/logout`: revokes the session at once.
pub async fn logout(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let me = caller.authenticated()?;
    match &me.credential {
        Credential::Session(token) => {
            state
                .auth
                .sessions
                .revoke(token, me.user.id)
                .await
                .map_err(|_| sessions_down())?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Credential::ApiKey(_) => Err(ApiError::BadRequest(
            "API keys are revoked with DELETE /auth/keys/<id>".into(),
        )),
    }
}

/// `GET /auth/me`.
pub async fn me(caller: Caller) -> ApiResult<Response> {
    let me = caller.authenticated()?;
    let mut body = me.user.to_json();
    body["is_admin"] = json!(me.admin);
    Ok(Json(body).into_response())
}

/// `PUT /auth/password`: needs the current password; ends every session of the user and
/// answers with a fresh one.
pub async fn change_password(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    caller: Caller,
    body: JsonObject,
) -> ApiResult<Response> {
    let me = caller.authenticated()?.user.clone();
    let mut f = Fields::new(body);
    let current = f.string("current_password");
    let new = f.string("new_password");
    if let Some(p) = &new {
        check_password(&mut f, "new_password", p);
    }
    f.finish()?;
    // The connection goes back before the hashes: a queue of them must not hold the pool.
    let stored = db::users::password_hash(&state.client().await?, me.id).await?;
    let ip = state.proxies.client_ip(peer.ip(), &headers);
    let subject = Subject::Account(me.id);
    let lockout = &state.auth.lockout;
    let attempt = match lockout
        .admit(&subject, ip)
        .await
        .map_err(|_| sessions_down())?
    {
        Ok(attempt) => attempt,
        Err(wait) => {
            return Err(ApiError::TooManyRequests {
                message: "too many failed attempts; retry later".into(),
                retry_after: wait,
            })
        }
    };
    if !state
        .auth
        .passwords
        .verify(current.unwrap_or_default(), stored.clone())
        .await?
    {
        lockout.failed(&attempt).await;
        return Err(ApiError::Forbidden("current_password is wrong".into()));
    }
    lockout
        .succeeded(&attempt)
        .await
        .map_err(|_| sessions_down())?;
    let hash = state.auth.passwords.hash(new.unwrap_or_default()).await?;
    let mut client = state.client().await?;
    let tx = client.transaction().await?;
    // Under the user's row lock, and only over the hash the current password was checked
    // against: of two changes made at once with the same current password, the second must
    // neither replace the first's password nor end the session the first just answered with.
    let changed =
        || ApiError::Conflict("the password was changed meanwhile; log in with the new one".into());
    if db::users::password_hash_for_update(&tx, me.id).await? != stored {
        return Err(changed());
    }
    // Sessions first: with Redis failing after the new password was stored, a stolen session
    // would outlive the change it was meant to end. This way a failure leaves the old password
    // and no sessions, and the user logs in again and retries.
    state
        .auth
        .sessions
        .revoke_all(me.id)
        .await
        .map_err(|_| sessions_down())?;
    if !db::users::set_password(&tx, me.id, stored.as_deref(), &hash).await? {
        return Err(changed());
    }
    crate::deadline::commit(tx).await?;
    drop(client);
    // And again: a log-in with the old password in between made a session the first round did
    // not see (one that reads the hash after this sees the new one: `log_in`). The new password
    // is stored by now, so a failure here is logged, not answered as if the change had not
    // happened.
    if let Err(e) = state.auth.sessions.revoke_all(me.id).await {
        log::warn!(user_id = me.id, error = e.to_string(); "sessions not revoked again after a password change");
    }
    // Changed for good by now: a retry with the old password would be a wrong one.
    session_answer(&state, &me, StatusCode::OK)
        .await
        .map_err(|e| {
            done_without_session(
                e,
                "the password was changed",
                "log in with the new one shortly",
            )
        })
}

/// `POST /auth/keys`: the key is in this answer only.
pub async fn create_key(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonObject,
) -> ApiResult<Response> {
    let me = caller.authenticated()?;
    let mut f = Fields::new(body);
    let name = f.string("name");
    f.finish()?;
    let (stored, key) = issue_key(&state, &me.user, &name.unwrap_or_default()).await?;
    let mut body = stored.to_json();
    body["key"] = json!(key);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// A new API key of `user_id`: what is stored of it, and the key itself (shown once, never
/// stored). The JSON endpoint and the web app's keys page both come here.
pub(crate) async fn issue_key(
    state: &AppState,
    user: &db::users::User,
    name: &str,
) -> ApiResult<(db::api_keys::ApiKey, String)> {
    // Here, not only in the JSON body's checks: the keys page sends what was typed, and a
    // nameless key is a blank row nobody can tell from the others.
    if name.trim().is_empty() {
        return Err(ApiError::field("name", "must not be empty"));
    }
    if name.chars().count() > 100 {
        return Err(ApiError::field("name", "must be at most 100 characters"));
    }
    let key = new_token(API_KEY_PREFIX);
    let prefix = key[..API_KEY_PREFIX.len() + 8].to_owned();
    let mut client = state.client().await?;
    let tx = client.transaction().await?;
    let hash = token_hash(&key);
    let stored =
        match db::api_keys::insert_key(&tx, user.id, &user.email, name, &prefix, &hash).await? {
            db::api_keys::NewKey::Stored(stored) => stored,
            db::api_keys::NewKey::TooMany => {
                return Err(ApiError::Conflict(format!(
                    "at most {} live API keys per user: revoke one first",
                    db::api_keys::MAX_LIVE_KEYS
                )))
            }
            db::api_keys::NewKey::UserGone => {
                return Err(ApiError::Unauthorized(
                    "the account was deleted or given to another email".into(),
                ))
            }
        };
    crate::deadline::commit(tx).await?;
    Ok((stored, key))
}

/// `GET /auth/keys`: the caller's live keys, without the secrets.
pub async fn list_keys(State(state): State<AppState>, caller: Caller) -> ApiResult<Response> {
    let me = caller.authenticated()?;
    let client = state.client().await?;
    let keys = db::api_keys::list_keys(&client, me.user.id).await?;
    Ok(Json(keys.iter().map(|k| k.to_json()).collect::<Vec<_>>()).into_response())
}

/// `DELETE /auth/keys/<id>`.
pub async fn delete_key(
    State(state): State<AppState>,
    caller: Caller,
    PathText(id): PathText,
) -> ApiResult<Response> {
    let me = caller.authenticated()?;
    let id = path_id(&id, "key")?;
    let client = state.client().await?;
    crate::deadline::committing()?;
    if !db::api_keys::revoke_key(&client, me.user.id, id).await? {
        return Err(ApiError::NotFound(format!("key {id} not found")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
