//! `/events`: list (after draining the click stream) and create.

use crate::auth::Caller;
use crate::clicks::consumer::Drained;
use crate::db::{self, events::EventFilter, events::TYPES};
use crate::error::{ApiError, ApiResult};
use crate::extract::{Fields, JsonObject, Patch, Query};
use crate::pagination::Page;
use crate::state::AppState;
use axum::extract::{OriginalUri, RawQuery, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::Value;
use std::time::Duration;

/// Header on a read that may miss recent clicks: how many stream entries were still waiting
/// (`unknown` when Redis could not tell). An entry holds one click or, packed by the edge, a
/// batch: the clicks missing are at least that many.
pub const CLICKS_PENDING: &str = "x-kurz-clicks-pending";

/// Stores the clicks recorded before this read began, within `clicks.read_drain_budget_ms`,
/// so the read sees every click answered before it started. Returns the value of
/// [`CLICKS_PENDING`] when that did not fully happen: the read then answers from what is stored
/// rather than make its caller wait on a backlog.
pub async fn drain_clicks(state: &AppState) -> Option<HeaderValue> {
    let budget = Duration::from_millis(state.config.clicks.read_drain_budget_ms);
    match state.consumer.drain(budget).await {
        Drained::Complete => None,
        Drained::Partial(left) => {
            let value = left.map_or_else(|| "unknown".to_owned(), |n| n.to_string());
            HeaderValue::from_str(&value).ok()
        }
    }
}

/// Adds [`CLICKS_PENDING`] to a read's response when its drain was partial.
pub fn mark_pending(mut response: Response, pending: Option<HeaderValue>) -> Response {
    if let Some(v) = pending {
        response.headers_mut().insert(CLICKS_PENDING, v);
    }
    response
}

fn event_type_param(q: &Query) -> ApiResult<Option<&'static str>> {
    match q.get("event_type") {
        None => Ok(None),
        Some(t) => match TYPES.iter().find(|known| **known == t) {
            Some(known) => Ok(Some(known)),
            None => Err(ApiError::BadRequest(format!(
                "query parameter event_type={t:?} must be one of {}",
                TYPES.join(", ")
            ))),
        },
    }
}

/// `GET /events`: by id (the order they were stored, not their timestamps), filters `url_id`, `user_id`, `event_type`.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    RawQuery(raw): RawQuery,
    OriginalUri(uri): OriginalUri,
) -> ApiResult<Response> {
    let q = Query::list(
        raw.as_deref(),
        &["url_id", "user_id", "event_type", "after_id"],
    )?;
    let page = Page::from_query(&q, state.config.limits.list_limit)?;
    let filter = EventFilter {
        url_id: q.id("url_id")?,
        user_id: caller.scope_user_filter(q.id("user_id")?)?,
        event_type: event_type_param(&q)?,
        after_id: page.after,
    };
    let pending = drain_clicks(&state).await;
    let (total, events) = db::total_and_page(
        &mut state.client().await?,
        async |tx| db::events::count_events(tx, &filter).await,
        async |tx| db::events::list_events(tx, &filter, page.limit, page.offset).await,
    )
    .await?;
    let response = page.respond(
        events.iter().map(|e| e.to_json()).collect(),
        total,
        uri.path(),
        &q,
    );
    Ok(mark_pending(response, pending))
}

/// `POST /events`.
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    body: JsonObject,
) -> ApiResult<Response> {
    let mut f = Fields::new(body);
    let url_id = f.id("url_id");
    let user_id = f.opt_id("user_id");
    let event_type = f.string("event_type");
    let mut details = f.opt_object("details");
    if let Some(t) = &event_type {
        if !TYPES.contains(&t.as_str()) {
            f.reject("event_type", format!("must be one of {}", TYPES.join(", ")));
        }
    }
    if let (Some("click"), Patch::Set(map)) = (event_type.as_deref(), &mut details) {
        if let Err((field, why)) = db::events::check_click_details(map) {
            f.reject(&field, why);
        }
    }
    // After the click's check, which cuts a long referrer as a live click's is.
    if let Patch::Set(map) = &details {
        if let Err(why) = db::events::check_details_size(map) {
            f.reject("details", why);
        }
    }
    f.finish()?;
    let (url_id, event_type) = (url_id.unwrap_or_default(), event_type.unwrap_or_default());
    let named = match user_id {
        Patch::Set(id) => caller.owner_for_write(Some(id))?,
        _ => None,
    };
    let details = match details {
        Patch::Set(map) => Value::Object(map),
        _ => Value::Object(Default::default()),
    };
    let client = state.client().await?;
    let link = db::urls::find_url(&client, url_id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("url {url_id} not found")))?;
    caller.require_owner_or_admin(link.user_id)?;
    // An event without a user is its link owner's, as a recorded click is: in `required` mode
    // the owner lists events by that (an admin's event would have been the admin's).
    let user_id = named.or(link.user_id);
    if let Some(uid) = named {
        if !db::users::user_exists(&client, uid).await? {
            return Err(ApiError::NotFound(format!("user {uid} not found")));
        }
    }
    crate::deadline::committing()?;
    let event = db::events::insert_event(&client, url_id, user_id, &event_type, &details).await?;
    Ok((StatusCode::CREATED, Json(event.to_json())).into_response())
}
