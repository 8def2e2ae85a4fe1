//! The API-keys page (list, make one and see it once, revoke) and the admins' list of users.

use super::links::logged_in;
use super::{account_pages, field, messages, problem, Visit};
use crate::error::ApiError;
use crate::extract::{PathText, RawBody};
use crate::state::AppState;
use axum::extract::{ConnectInfo, OriginalUri, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use std::net::SocketAddr;

/// Users per page of the admins' list.
pub const USERS_PER_PAGE: i64 = 50;

/// How long a sent form's token is remembered: far past any double click or reload.
const ONCE_SECONDS: u64 = 3600;

/// The keys page, with a key just made (shown this once), or what went wrong and the name the
/// refused make came with.
async fn keys_page(
    state: &AppState,
    visit: &Visit,
    made: Option<&str>,
    typed: &str,
    problems: &[String],
    status: StatusCode,
) -> Response {
    let user = visit.user.as_ref().expect("logged in");
    let listed = async {
        let client = state.client().await?;
        Ok::<_, ApiError>(crate::db::api_keys::list_keys(&client, user.id).await?)
    }
    .await;
    match (listed, made) {
        (Ok(keys), _) => {
            let html = account_pages::keys(&visit.page(state), Some(&keys), made, typed, problems)
                .into_string();
            visit.respond(status, html)
        }
        // The key exists and this answer is the only time it is shown: a list that could not
        // be read must not take it with it.
        (Err(e), Some(_)) => {
            log::warn!(error = e.to_string(); "a key was made but the keys could not be listed");
            let html =
                account_pages::keys(&visit.page(state), None, made, typed, problems).into_string();
            visit.respond(status, html)
        }
        (Err(e), None) => problem(visit, state, &e),
    }
}

/// `GET /ui/keys`.
pub async fn keys(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
) -> Response {
    match logged_in(&state, peer, &headers, &uri).await {
        Ok(visit) => keys_page(&state, &visit, None, "", &[], StatusCode::OK).await,
        Err(r) => r,
    }
}

/// `POST /ui/keys`: a new key, shown on the answer and never again.
pub async fn make_key(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let (visit, fields) = match super::links::checked_post(&state, peer, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let user = visit.user.as_ref().expect("logged in");
    let name = field(&fields, "name").trim();
    if sent_before(&state, user.id, field(&fields, super::FORM_ID_FIELD)).await {
        // The key the first sending made was shown on its answer, and is never shown again.
        let e = ApiError::Conflict(
            "this form was sent already: the key it made was shown on the answer to the first \
             sending and cannot be shown again; revoke it below if it was not copied"
                .into(),
        );
        return super::marked(
            keys_page(&state, &visit, None, "", &messages(&e), e.status()).await,
            &e,
        );
    }
    match crate::routes::auth::issue_key(&state, user, name).await {
        Ok((_, key)) => keys_page(&state, &visit, Some(&key), "", &[], StatusCode::CREATED).await,
        Err(e) => {
            // Nothing was made: the same form sent again (after a 503, say) may make its key.
            let sent = state
                .keys
                .form_sent(user.id, field(&fields, super::FORM_ID_FIELD));
            let _: Result<(), _> = state.redis.query(redis::cmd("DEL").arg(sent)).await;
            super::marked(
                keys_page(&state, &visit, None, name, &messages(&e), e.status()).await,
                &e,
            )
        }
    }
}

/// Whether a form carrying the one-time `token` was sent before by `user_id` (a double click
/// makes two keys otherwise, the first of them never seen). Without a token (a form of an
/// older page), or with Redis unavailable, the form is taken as new: one key too many beats
/// no key.
async fn sent_before(state: &AppState, user_id: i64, token: &str) -> bool {
    if token.is_empty() || token.len() > 64 {
        return false;
    }
    let mut set = redis::cmd("SET");
    set.arg(state.keys.form_sent(user_id, token))
        .arg(1)
        .arg("NX")
        .arg("EX")
        .arg(ONCE_SECONDS);
    matches!(state.redis.query::<Option<String>>(&set).await, Ok(None))
}

/// `GET /ui/keys/<id>/revoke`: are you sure? A revoked key cannot be brought back, and every
/// program sending it is refused from then on: one click on a list was too little for that.
pub async fn confirm_revoke(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    PathText(id): PathText,
) -> Response {
    let visit = match logged_in(&state, peer, &headers, &uri).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let user_id = visit.user.as_ref().expect("logged in").id;
    let found = async {
        let id: i64 = id
            .parse()
            .map_err(|_| ApiError::NotFound(format!("no key {id:?}")))?;
        let client = state.client().await?;
        let keys = crate::db::api_keys::list_keys(&client, user_id).await?;
        match keys.into_iter().find(|k| k.id == id) {
            Some(key) => Ok(Some(key)),
            // Revoked already (the page opened again after its form was sent): done.
            None if crate::db::api_keys::is_revoked(&client, user_id, id).await? => Ok(None),
            None => Err(ApiError::NotFound(format!("no key {id}"))),
        }
    }
    .await;
    match found {
        Ok(Some(key)) => {
            let html = account_pages::confirm_revoke(&visit.page(&state), &key).into_string();
            visit.respond(StatusCode::OK, html)
        }
        Ok(None) => visit.see_other_to("/ui/keys"),
        Err(e) => problem(&visit, &state, &e),
    }
}

/// `POST /ui/keys/<id>/revoke`.
pub async fn revoke_key(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    PathText(id): PathText,
    RawBody(body): RawBody,
) -> Response {
    let (visit, _) = match super::links::checked_post(&state, peer, &headers, &body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let user_id = visit.user.as_ref().expect("logged in").id;
    let revoked = async {
        let id: i64 = id
            .parse()
            .map_err(|_| ApiError::NotFound(format!("no key {id:?}")))?;
        let client = state.client().await?;
        crate::deadline::committing()?;
        // Revoked already (the same form sent twice, or from two tabs): what was asked is done.
        if crate::db::api_keys::revoke_key(&client, user_id, id).await?
            || crate::db::api_keys::is_revoked(&client, user_id, id).await?
        {
            Ok(())
        } else {
            Err(ApiError::NotFound(format!("no key {id}")))
        }
    }
    .await;
    match revoked {
        Ok(()) => visit.see_other_to("/ui/keys"),
        Err(e) => problem(&visit, &state, &e),
    }
}

/// `GET /ui/users`: every user, for admins; a 404 for anyone else, as if there were no page.
pub async fn users(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    RawQuery(raw): RawQuery,
) -> Response {
    let visit = match logged_in(&state, peer, &headers, &uri).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    if !state.auth.is_admin(visit.user.as_ref().expect("logged in")) {
        return problem(&visit, &state, &ApiError::NotFound("no such page".into()));
    }
    let page: i64 = url::form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes())
        .find(|(k, _)| k == "page")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(1)
        .clamp(1, 1_000_000);
    let listed = async {
        let mut client = state.client().await?;
        let client = crate::db::snapshot(&mut client).await?;
        let total = crate::db::users::count_users(&client, 0).await?;
        // Past the last page: the last page, as the links list does.
        let last = ((total + USERS_PER_PAGE - 1) / USERS_PER_PAGE).max(1);
        if page > last {
            return Ok(Err(last));
        }
        let users =
            crate::db::users::list_users(&client, 0, USERS_PER_PAGE, (page - 1) * USERS_PER_PAGE)
                .await?;
        Ok::<_, ApiError>(Ok((total, users)))
    }
    .await;
    match listed {
        Ok(Err(last)) => visit.see_other_to(&format!("/ui/users?page={last}")),
        Ok(Ok((total, users))) => {
            let html = account_pages::users(&visit.page(&state), &users, total, page).into_string();
            visit.respond(StatusCode::OK, html)
        }
        Err(e) => problem(&visit, &state, &e),
    }
}
