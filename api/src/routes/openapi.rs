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

/// Each documented operation as the request metrics label it: route template and method.
pub fn operations() -> Vec<(String, &'static str)> {
    let doc: serde_json::Value =
        serde_json::from_str(DOCUMENT).expect("the compiled-in OpenAPI document is JSON");
    let mut ops = Vec::new();
    // `/{code}+` documents the preview, which the `/{code}` route serves: no route of its own.
    let paths = doc["paths"].as_object().into_iter().flatten();
    for (route, item) in paths.filter(|(route, _)| !route.contains('+')) {
        for (method, label) in [
            ("get", "GET"),
            ("post", "POST"),
            ("put", "PUT"),
            ("patch", "PATCH"),
            ("delete", "DELETE"),
        ] {
            if item.get(method).is_some() {
                ops.push((route.clone(), label));
            }
        }
    }
    ops
}
