//! HTTP conventions both binaries answer with: the error body and the status classes of
//! metrics labels. Defined once so the edge's own answers and the API's look the same.

use serde_json::{json, Value};

/// Every value [`status_class`] returns, for pre-creating metric series.
pub const STATUS_CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// The metrics label of a status: `2xx`, `4xx`, …; `none` when no response was sent at all
/// (status 0: the client went away, or the connection failed before an answer), which is
/// neither a success nor a server error.
pub fn status_class(status: u16) -> &'static str {
    match status {
        0 => "none",
        1..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Routes whose work grows with the data they carry or read (an upload up to the bulk body
/// limit, or every link of an account): the API gives them `limits.bulk_request_timeout_ms`
/// and the edge `upstreams.bulk_read_timeout_ms` instead of the ordinary budgets.
pub fn is_bulk_route(path: &str) -> bool {
    path.ends_with("/bulk") || matches!(path, "/urls/import" | "/urls/export")
}

/// The contract's error body: `{"error": <snake_case code>, "message": <for a person>,
/// "details": <per-field reasons or null>}`.
pub fn error_body(code: &str, message: &str, details: Value) -> String {
    json!({"error": code, "message": message, "details": details}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_cover_every_status_once() {
        assert_eq!(status_class(0), "none");
        assert_eq!(status_class(101), "1xx");
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(302), "3xx");
        assert_eq!(status_class(429), "4xx");
        assert_eq!(status_class(503), "5xx");
        assert_eq!(status_class(999), "5xx");
        assert!((0..1000).all(|s| STATUS_CLASSES.contains(&status_class(s))));
    }

    #[test]
    fn error_bodies_have_the_contract_shape() {
        let v: Value =
            serde_json::from_str(&error_body("not_found", "no such route", Value::Null)).unwrap();
        assert_eq!(
            v,
            json!({"error": "not_found", "message": "no such route", "details": null})
        );
    }
}
