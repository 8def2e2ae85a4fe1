//! `GET /openapi.json`: the OpenAPI 3.1 document of this API (`api/openapi/`), compiled in.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

const DOCUMENT: &str = include_str!("../../openapi/openapi.json");

pub async fn document() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=300"),
            ),
        ],
        DOCUMENT,
    )
        .into_response()
}
