//! A deadline on every request: past `limits.request_timeout_ms` (bulk imports:
//! `limits.bulk_request_timeout_ms`) the request is abandoned with a 503 in our error shape.
//!
//! Without it a stuck dependency (a PostgreSQL that accepts connections but never answers, a
//! lock wait) holds the client, the edge's upstream connection and a pool slot for as long as
//! the client cares to wait.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;

pub async fn enforce(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limits = &state.config.limits;
    let budget_ms = if req.uri().path().ends_with("/bulk") {
        limits.bulk_request_timeout_ms
    } else {
        limits.request_timeout_ms
    };
    match tokio::time::timeout(Duration::from_millis(budget_ms), next.run(req)).await {
        Ok(response) => response,
        Err(_) => ApiError::Unavailable(format!(
            "the request did not complete within {budget_ms} ms; retry shortly"
        ))
        .into_response(),
    }
}
