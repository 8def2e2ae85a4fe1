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

    /// WCAG 2.1 contrast ratio of two `#rrggbb` (or `#rgb`) colours.
    fn contrast(a: &str, b: &str) -> f64 {
        let luminance = |hex: &str| {
            let hex: String = match hex.len() {
                4 => hex.chars().flat_map(|c| [c, c]).skip(1).collect(),
                _ => hex.to_owned(),
            };
            let channel = |i: usize| {
                let c = f64::from(u8::from_str_radix(&hex[i..i + 2], 16).unwrap()) / 255.0;
                if c <= 0.03928 {
                    c / 12.92
                } else {
                    ((c + 0.055) / 1.055).powf(2.4)
                }
            };
            0.2126 * channel(1) + 0.7152 * channel(3) + 0.0722 * channel(5)
        };
        let (l1, l2) = (luminance(a), luminance(b));
        (l1.max(l2) + 0.05) / (l1.min(l2) + 0.05)
    }

    /// Form fields' borders and the focus ring stand out from the page by 3:1 at least (WCAG
    /// 1.4.11): the light grey they had (1.4:1, 1.7:1) hid where the fields and the focus were.
    #[test]
    fn fields_and_focus_are_visible_against_the_page() {
        let css = include_str!("app.css");
        let var = |name: &str| {
            let at = css.find(&format!("--{name}: ")).unwrap() + name.len() + 4;
            &css[at..at + css[at..].find(';').unwrap()]
        };
        let rule = |selector: &str| {
            let at = css.find(selector).unwrap();
            &css[at..at + css[at..].find('}').unwrap()]
        };
        let page = var("bg");
        for (selector, property) in [
            ("input[type=url]", "border: 1px solid var(--"),
            ("select, input[type=search]", "border: 1px solid var(--"),
            ("input:focus", "outline: 3px solid var(--"),
        ] {
            let rule = rule(selector);
            let at = rule
                .find(property)
                .unwrap_or_else(|| panic!("{selector}: {rule}"));
            let name = &rule[at + property.len()..];
            let colour = var(&name[..name.find(')').unwrap()]);
            let ratio = contrast(colour, page);
            assert!(
                ratio >= 3.0,
                "{selector}: {colour} on {page} is {ratio:.2}:1"
            );
        }
    }
}
