//! A deadline on every request: past `limits.request_timeout_ms` (bulk imports, imports of other
//! shorteners' exports and exports: `limits.bulk_request_timeout_ms`) the request is abandoned
//! with a 503 in our error shape.
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
    let budget_ms = if kurz_common::http::is_bulk_route(req.uri().path()) {
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

#[cfg(test)]
mod tests {
    use kurz_common::http::is_bulk_route as is_bulk;

    #[test]
    fn imports_and_exports_get_the_bulk_budget() {
        for path in [
            "/urls/bulk",
            "/users/bulk",
            "/events/bulk",
            "/urls/import",
            "/urls/export",
        ] {
            assert!(is_bulk(path), "{path}");
        }
        for path in ["/urls", "/urls/1", "/urls/import/x", "/events"] {
            assert!(!is_bulk(path), "{path}");
        }
    }
}
