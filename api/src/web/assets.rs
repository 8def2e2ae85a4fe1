//! The web app's static files, compiled into the binary and served under a name that carries a
//! hash of their content, so browsers may keep them for a year and a new release is fetched at
//! once.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use blake2::{Blake2s256, Digest};
use std::sync::LazyLock;

const CSS: &str = include_str!("app.css");

/// `app.<first 12 hex digits of BLAKE2s(content)>.css`.
static CSS_NAME: LazyLock<String> = LazyLock::new(|| {
    let digest = Blake2s256::digest(CSS.as_bytes());
    let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
    format!("app.{hex}.css")
});

/// The stylesheet's path, for the pages' `<link>`.
pub fn stylesheet() -> String {
    format!("/static/{}", *CSS_NAME)
}

pub fn serve(file: &str) -> Response {
    if file != CSS_NAME.as_str() {
        return crate::error::ApiError::NotFound(format!("no static file {file:?}"))
            .into_response();
    }
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/css; charset=utf-8"),
            ),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("public, max-age=31536000, immutable"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        CSS,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stylesheet_is_served_under_its_hash_only() {
        let path = stylesheet();
        let name = path.strip_prefix("/static/").unwrap();
        assert_eq!(name.len(), "app..css".len() + 12);
        assert_eq!(serve(name).status(), StatusCode::OK);
        assert_eq!(serve("app.css").status(), StatusCode::NOT_FOUND);
    }
}
