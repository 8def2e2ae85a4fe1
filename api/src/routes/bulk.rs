//! `POST /users/bulk`, `/urls/bulk`, `/events/bulk`: multipart field `file` holding a CSV.

use crate::auth::Caller;
use crate::error::{ApiError, ApiResult};
use crate::import;
use crate::state::AppState;
use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// The bytes of the `file` field.
async fn upload(state: &AppState, req: Request) -> ApiResult<Bytes> {
    let mut multipart = Multipart::from_request(req, state)
        .await
        .map_err(|r| match r {
            MultipartRejection::InvalidBoundary(_) => ApiError::UnsupportedMediaType(
                "upload must be multipart/form-data with the CSV in a field named `file`".into(),
            ),
            other => ApiError::BadRequest(other.body_text()),
        })?;
    loop {
        let field = multipart.next_field().await.map_err(too_large_or_bad)?;
        let Some(field) = field else {
            return Err(ApiError::field(
                "file",
                "is required: send the CSV as multipart field `file`",
            ));
        };
        if field.name() == Some("file") {
            return field.bytes().await.map_err(too_large_or_bad);
        }
    }
}

fn too_large_or_bad(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("upload is too large".into())
    } else {
        ApiError::BadRequest(format!("malformed multipart body: {}", e.body_text()))
    }
}

fn created(count: usize) -> Response {
    (StatusCode::CREATED, Json(json!({"count": count}))).into_response()
}

pub async fn users(
    State(state): State<AppState>,
    caller: Caller,
    req: Request,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let bytes = upload(&state, req).await?;
    let mut client = state.client().await?;
    Ok(created(import::users(&mut client, &bytes).await?))
}

pub async fn urls(
    State(state): State<AppState>,
    caller: Caller,
    req: Request,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let bytes = upload(&state, req).await?;
    let mut client = state.client().await?;
    let imported = import::urls(&mut client, &bytes, &state.targets).await?;
    if let Err(e) = state.cache.forget_many(&imported.codes).await {
        log::warn!(error = e.to_string(), codes = imported.codes.len(); "cache not cleared after link import; queued for replay");
        crate::cache_sync::after_failed_import(&state, &imported.codes).await;
    }
    Ok(created(imported.count))
}

pub async fn events(
    State(state): State<AppState>,
    caller: Caller,
    req: Request,
) -> ApiResult<Response> {
    caller.require_admin()?;
    let bytes = upload(&state, req).await?;
    let mut client = state.client().await?;
    Ok(created(import::events(&mut client, &bytes).await?))
}
