//! `/users`: create, list, read, update, soft-delete, and a user's links.

use crate::auth::Caller;
use crate::db::{self, conflict_or, urls::UrlFilter};
use crate::error::{ApiError, ApiResult};
use crate::extract::{path_id, Fields, JsonObject, Patch, PathText, Query};
use crate::pagination::Page;
use crate::state::AppState;
use axum::extract::{OriginalUri, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// Longest username accepted.
const MAX_USERNAME: usize = 64;
/// RFC 5321's limit on a forward path.
const MAX_EMAIL: usize = 254;

/// 409 when another live user has `username`; holds the name's lock until `tx` ends, so the
/// write that follows cannot race another writer of the same name.
pub(crate) async fn refuse_taken(
    tx: &impl deadpool_postgres::GenericClient,
    username: &str,
    except: Option<i64>,
) -> ApiResult<()> {
    if db::users::lock_username(tx, username, except).await? {
        return Err(ApiError::Conflict("username is already taken".into()));
    }
    Ok(())
}

/// Why `name` cannot be a username, if it cannot; the one rule for single writes and imports.
pub(crate) fn username_problem(name: &str) -> Option<String> {
    if name.chars().count() > MAX_USERNAME {
        Some(format!("must be at most {MAX_USERNAME} characters"))
    } else if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("must not contain spaces or control characters".into())
    } else {
        None
    }
}

/// Why `email` cannot be an email address, if it cannot; the one rule for writes and imports.
pub(crate) fn email_problem(email: &str) -> Option<String> {
    let valid = email.len() <= MAX_EMAIL
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && match email.split_once('@') {
            Some((local, domain)) => {
                !local.is_empty()
                    && !domain.contains('@')
                    && domain.contains('.')
                    && !domain.starts_with('.')
                    && !domain.ends_with('.')
            }
            None => false,
        };
    (!valid).then(|| "must be an email address such as name@example.com".into())
}

pub(crate) fn check_username(fields: &mut Fields, name: &str) {
    if let Some(why) = username_problem(name) {
        fields.reject("username", why);
    }
}

pub(crate) fn check_email(fields: &mut Fields, email: &str) {
    if let Some(why) = email_problem(email) {
        fields.reject("email", why);
    }
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonObject,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let mut f = Fields::new(body);
    let username = f.string("username");
    let email = f.string("email");
    if let Some(u) = &username {
        check_username(&mut f, u);
    }
    if let Some(e) = &email {
        check_email(&mut f, e);
    }
    f.finish()?;
    let (username, email) = (username.unwrap_or_default(), email.unwrap_or_default());
    let mut client = state.client().await?;
    let tx = client.transaction().await?;
    refuse_taken(&tx, &username, None).await?;
    let user = db::users::insert_user(&tx, &username, &email)
        .await
        .map_err(conflict_or)?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(user.to_json())).into_response())
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let q = Query::parse(raw.as_deref());
    let page = Page::from_query(&q, state.config.limits.list_limit)?;
    let client = state.client().await?;
    let total = db::users::count_users(&client).await?;
    let users = db::users::list_users(&client, page.limit, page.offset).await?;
    Ok(page.respond(
        users.iter().map(|u| u.to_json()).collect(),
        total,
        uri.path(),
        &q,
    ))
}

pub async fn get(
    State(state): State<AppState>,
    caller: Caller,
    PathText(id): PathText,
) -> ApiResult<Response> {
    let id = path_id(&id, "user")?;
    caller.require_self_or_admin(id)?;
    let client = state.client().await?;
    let user = db::users::find_user(&client, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("user {id} not found")))?;
    Ok(Json(user.to_json()).into_response())
}

pub async fn update(
    State(state): State<AppState>,
    caller: Caller,
    PathText(id): PathText,
    body: JsonObject,
) -> ApiResult<Response> {
    let id = path_id(&id, "user")?;
    caller.require_self_or_admin(id)?;
    let mut f = Fields::new(body);
    let username = f.opt_string("username");
    let email = f.opt_string("email");
    for (name, patch) in [("username", &username), ("email", &email)] {
        if matches!(patch, Patch::Null) {
            f.reject(name, "must not be null");
        }
    }
    if let Patch::Set(u) = &username {
        check_username(&mut f, u);
    }
    if let Patch::Set(e) = &email {
        check_email(&mut f, e);
    }
    f.finish()?;
    let set = |p: &Patch<String>| match p {
        Patch::Set(v) => Some(v.clone()),
        _ => None,
    };
    let mut client = state.client().await?;
    let tx = client.transaction().await?;
    if let Patch::Set(name) = &username {
        refuse_taken(&tx, name, Some(id)).await?;
    }
    let user = db::users::update_user(&tx, id, set(&username).as_deref(), set(&email).as_deref())
        .await
        .map_err(conflict_or)?
        .ok_or_else(|| ApiError::NotFound(format!("user {id} not found")))?;
    tx.commit().await?;
    Ok(Json(user.to_json()).into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    PathText(id): PathText,
) -> ApiResult<Response> {
    let id = path_id(&id, "user")?;
    caller.require_self_or_admin(id)?;
    let client = state.client().await?;
    if !db::users::delete_user(&client, id).await? {
        return Err(ApiError::NotFound(format!("user {id} not found")));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /users/<id>/urls`: the user's live links, paginated like `/urls`.
pub async fn urls(
    State(state): State<AppState>,
    caller: Caller,
    PathText(id): PathText,
    RawQuery(raw): RawQuery,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Response> {
    let id = path_id(&id, "user")?;
    caller.require_self_or_admin(id)?;
    let q = Query::parse(raw.as_deref());
    let page = Page::from_query(&q, state.config.limits.list_limit)?;
    let filter = UrlFilter {
        user_id: Some(id),
        is_active: q.bool("is_active")?,
    };
    let client = state.client().await?;
    if !db::users::user_exists(&client, id).await? {
        return Err(ApiError::NotFound(format!("user {id} not found")));
    }
    let total = db::urls::count_urls(&client, &filter).await?;
    let links = db::urls::list_urls(&client, &filter, page.limit, page.offset).await?;
    let base = state.config.base();
    Ok(page.respond(
        links.iter().map(|l| l.to_json(base)).collect(),
        total,
        uri.path(),
        &q,
    ))
}
