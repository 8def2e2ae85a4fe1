//! Liveness and readiness.

use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// `GET /health`, `/health/live`: the process answers; no dependency is checked, so an
/// orchestrator never restarts the API because PostgreSQL hiccuped.
pub async fn live() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

/// `GET /ready`, `/health/ready`: PostgreSQL is required (503 without it); Redis only degrades.
/// Asked as `kurz_api_database_up` asks: a pool with no connection to spare is not PostgreSQL
/// down (it read as `"db":"down"`, and took every busy API out of rotation at once).
pub async fn ready(State(state): State<AppState>) -> Response {
    let db_ok = crate::startup::database_answers(&state).await;
    let cache_ok = state
        .redis
        .query::<String>(&redis::cmd("PING"))
        .await
        .is_ok();
    let (status, word) = match (db_ok, cache_ok) {
        (false, _) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
        (true, true) => (StatusCode::OK, "ready"),
        (true, false) => (StatusCode::OK, "degraded"),
    };
    let up = |ok: bool| if ok { "ok" } else { "down" };
    let mut response = (
        status,
        Json(json!({"status": word, "db": up(db_ok), "cache": up(cache_ok)})),
    )
        .into_response();
    // As every 503 of the API's says when to retry.
    if !db_ok {
        response.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            axum::http::HeaderValue::from(crate::error::RETRY_AFTER_SECONDS),
        );
    }
    response
}
