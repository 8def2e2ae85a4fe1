//! The web app's static files, compiled into the binary and served under a name that carries a
//! hash of their content, so browsers may keep them for a year and a new release is fetched at
//! once.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use blake2::{Blake2s256, Digest};
use std::sync::LazyLock;

struct Asset {
    /// `<stem>.<first 12 hex digits of BLAKE2s(content)>.<ext>`.
    name: String,
    content_type: &'static str,
    body: &'static str,
}

impl Asset {
    fn new(stem: &str, ext: &str, content_type: &'static str, body: &'static str) -> Self {
        let digest = Blake2s256::digest(body.as_bytes());
        let hex: String = digest[..6].iter().map(|b| format!("{b:02x}")).collect();
        Asset {
            name: format!("{stem}.{hex}.{ext}"),
            content_type,
            body,
        }
    }
}

static CSS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "app",
        "css",
        "text/css; charset=utf-8",
        include_str!("app.css"),
    )
});
static JS: LazyLock<Asset> = LazyLock::new(|| {
    Asset::new(
        "app",
        "js",
        "text/javascript; charset=utf-8",
        include_str!("app.js"),
    )
});

/// The stylesheet's path, for the pages' `<link>`.
pub fn stylesheet() -> String {
    format!("/static/{}", CSS.name)
}

/// The script's path, for the pages' `<script src>`.
pub fn script() -> String {
    format!("/static/{}", JS.name)
}

pub fn serve(file: &str) -> Response {
    let Some(asset) = [&*CSS, &*JS].into_iter().find(|a| a.name == file) else {
        return crate::error::ApiError::NotFound(format!("no static file {file:?}"))
            .into_response();
    };
    (
        StatusCode::OK,
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
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
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_served_under_their_hash_only() {
        for path in [stylesheet(), script()] {
            let name = path.strip_prefix("/static/").unwrap();
            let (stem, ext) = (name.split('.').next(), name.rsplit('.').next());
            assert_eq!(stem, Some("app"));
            assert_eq!(name.len(), "app..".len() + 12 + ext.unwrap().len());
            assert_eq!(serve(name).status(), StatusCode::OK);
        }
        assert_eq!(serve("app.css").status(), StatusCode::NOT_FOUND);
        assert_eq!(serve("app.js").status(), StatusCode::NOT_FOUND);
        assert_ne!(stylesheet(), script());
    }
}
