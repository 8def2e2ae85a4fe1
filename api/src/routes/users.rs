//! `/users`: create, list, read, update, soft-delete, and a user's links.

use crate::auth::Caller;
use crate::db::{self, conflict_or, urls::UrlFilter};
use crate::error::{ApiError, ApiResult};
use crate::extract::{path_id, Fields, JsonObject, Patch, PathText, Query};
use crate::identity::{Email, Username};
use crate::pagination::Page;
use crate::state::AppState;
use axum::extract::{OriginalUri, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// 409 when another live user has `username`; holds the name's lock until `tx` ends, so the
/// write that follows cannot race another writer of the same name.
pub(crate) async fn refuse_taken(
    tx: &impl deadpool_postgres::GenericClient,
    username: &Username,
    except: Option<i64>,
) -> ApiResult<()> {
    if db::users::lock_username(tx, username, except).await? {
        return Err(ApiError::Conflict("username is already taken".into()));
    }
    Ok(())
}

pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonObject,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let mut f = Fields::new(body);
    let (username, email) = crate::identity::required(&mut f);
    f.finish()?;
    let (Some(username), Some(email)) = (username, email) else {
        return Err(ApiError::BadRequest(
            "username and email are required".into(),
        ));
    };
    let mut client = state.client().await?;
    let tx = client.transaction().await?;
    refuse_taken(&tx, &username, None).await?;
    let user = db::users::insert_user(&tx, &username, &email)
        .await
        .map_err(conflict_or)?;
    crate::deadline::commit(tx).await?;
    Ok((StatusCode::CREATED, Json(user.to_json())).into_response())
}

pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let q = Query::list(raw.as_deref(), &["after_id"])?;
    let page = Page::from_query(&q, state.config.limits.list_limit)?;
    let after = page.after.unwrap_or(0);
    let (total, users) = db::total_and_page(
        &mut state.client().await?,
        async |tx| db::users::count_users(tx, after).await,
        async |tx| db::users::list_users(tx, after, page.limit, page.offset).await,
    )
    .await?;
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
    // A name or email stored before a rule that now refuses it (invisible characters) is still
    // the account's: sent back unchanged, as a client sends back what it read, it is kept.
    let set = |p: Patch<String>| match p {
        Patch::Set(v) => Some(v),
        _ => None,
    };
    let username = set(username).map(|u| (Username::parse(&u), u));
    let email = set(email).map(|e| (Email::parse(&e), e));
    let stored = if username.as_ref().is_some_and(|(parsed, _)| parsed.is_err())
        || email.as_ref().is_some_and(|(parsed, _)| parsed.is_err())
    {
        db::users::find_user(&state.client().await?, id).await?
    } else {
        None
    };
    let username = username.and_then(|(parsed, sent)| {
        let kept = stored.as_ref().is_some_and(|s| s.username == sent);
        (!kept).then(|| f.check("username", parsed)).flatten()
    });
    let email = email.and_then(|(parsed, sent)| {
        let kept = stored.as_ref().is_some_and(|s| s.email == sent);
        (!kept).then(|| f.check("email", parsed)).flatten()
    });
    f.finish()?;
    // An admin's email makes its holder an admin (`auth.admins`): only an admin gives it.
    if email
        .as_ref()
        .is_some_and(|e| state.auth.is_admin_email(e.as_str()))
        && !caller.is_admin()
    {
        return Err(ApiError::Forbidden(
            "this email is an administrator's (auth.admins); only an admin may give it to an account"
                .into(),
        ));
    }
    let mut client = state.client().await?;
    let tx = client.transaction().await?;
    // First: a user that is not there is a 404, whatever the body asks for (its username check
    // would otherwise answer 409 for a name someone holds). Unlocked: one deleted meanwhile is
    // found missing by the update below.
    if !db::users::is_live(&tx, id).await? {
        return Err(ApiError::NotFound(format!("user {id} not found")));
    }
    if let Some(name) = &username {
        refuse_taken(&tx, name, Some(id)).await?;
    }
    let user = db::users::update_user(&tx, id, username.as_ref(), email.as_ref())
        .await
        .map_err(conflict_or)?
        .ok_or_else(|| ApiError::NotFound(format!("user {id} not found")))?;
    crate::deadline::commit(tx).await?;
    Ok(Json(user.to_json()).into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    PathText(id): PathText,
) -> ApiResult<Response> {
    let id = path_id(&id, "user")?;
    caller.require_self_or_admin(id)?;
    let mut client = state.client().await?;
    let tx = client.transaction().await?;
    if !db::users::delete_user(&tx, id).await? {
        return Err(ApiError::NotFound(format!("user {id} not found")));
    }
    // A deleted account's credentials go with it: a bulk import that brings the row back
    // (`deleted_at` cleared) must not bring back its keys and sessions too.
    db::api_keys::revoke_all(&tx, id).await?;
    crate::deadline::commit(tx).await?;
    if state.auth.sessions.revoke_all(id).await.is_err() {
        // Refused anyway while the account is deleted (every request looks the user up);
        // only a later re-import would find them, until they expire.
        log::warn!(user_id = id; "sessions of a deleted user not revoked: Redis unavailable");
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
    let q = Query::list(raw.as_deref(), &["is_active", "tag", "after_id"])?;
    let page = Page::from_query(&q, state.config.limits.list_limit)?;
    let filter = UrlFilter {
        user_id: Some(id),
        is_active: q.bool("is_active")?,
        tags: super::urls::tag_filter(&q)?,
        search: Vec::new(),
        after_id: page.after,
    };
    let mut client = state.client().await?;
    let tx = db::snapshot(&mut client).await?;
    if !db::users::user_exists(&tx, id).await? {
        return Err(ApiError::NotFound(format!("user {id} not found")));
    }
    let total = db::urls::count_urls(&tx, &filter).await?;
    let links = db::urls::list_urls(&tx, &filter, page.limit, page.offset).await?;
    tx.commit().await?;
    let base = state.config.base();
    Ok(page.respond(
        links.iter().map(|l| l.to_json(base)).collect(),
        total,
        uri.path(),
        &q,
    ))
}
