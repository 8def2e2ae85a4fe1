//! `GET /<code>+`: where a short link leads, without going there — the usual defence against a
//! short link that hides a phishing site. Nothing is redirected and no click is counted. HTML for
//! people, JSON for clients that ask for it (`Accept: application/json`).

use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::state::AppState;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kurz_common::keys::{CachedLink, Verdict, GONE_EXHAUSTED, GONE_EXPIRED};
use serde_json::json;

/// The link of `code` if it redirects now, read from PostgreSQL; else the redirect's own 404 or
/// 410. What the preview and the public QR code show: a link that would not redirect has
/// nothing to show. Its connection goes back before a limited link's counter is read from
/// Redis: a Redis that hangs would otherwise hold the pool with public requests.
pub(crate) async fn redirecting_link(state: &AppState, code: &str) -> ApiResult<db::urls::Link> {
    let not_found = || ApiError::NotFound(format!("short code {code:?} not found"));
    let link = {
        let client = state.client().await?;
        db::urls::find_url_by_code(&client, code).await?
    }
    .ok_or_else(not_found)?;
    let CachedLink::Found(entry) = link.cache_entry() else {
        return Err(not_found());
    };
    match entry.verdict_at(chrono::Utc::now().timestamp()) {
        Verdict::Redirect(_) => {}
        Verdict::NotFound => return Err(not_found()),
        Verdict::Gone => {
            return Err(ApiError::Gone(format!(
                "short code {code:?} {GONE_EXPIRED}"
            )))
        }
    }
    if let Some(max) = link.max_visits {
        // As the redirect counts: the counter in Redis (ahead of the clicks stored, by the
        // stream between them); without one, or without Redis, the clicks stored.
        let counted = state
            .redis
            .query::<Option<i64>>(redis::cmd("GET").arg(state.keys.visits(code)))
            .await
            .ok()
            .flatten()
            .unwrap_or(link.visits);
        if counted >= i64::from(max) {
            return Err(ApiError::Gone(format!(
                "short code {code:?} {GONE_EXHAUSTED}"
            )));
        }
    }
    Ok(link)
}

pub async fn preview(state: &AppState, code: &str, headers: &HeaderMap) -> ApiResult<Response> {
    let link = redirecting_link(state, code).await?;
    let clicks = db::stats::total_clicks(&state.client().await?, link.id).await?;
    let short_url = format!("{}/{}", state.config.base(), link.short_code);
    // Behind a password, where it leads is part of the secret.
    let (target, title) = if link.has_password {
        (None, None)
    } else {
        (Some(link.original_url.as_str()), link.title.as_deref())
    };
    if wants_json(headers) {
        let body = json!({
            "short_code": link.short_code,
            "short_url": short_url,
            "original_url": target,
            "title": title,
            "clicks": clicks,
            "redirect_type": link.redirect_type,
            "has_password": link.has_password,
        });
        return Ok((no_store(), Json(body)).into_response());
    }
    let title = title
        .map(|t| format!("<p class=\"title\">{}</p>", escape(t)))
        .unwrap_or_default();
    let target = match target {
        Some(t) => format!(
            "<a href=\"{t}\" rel=\"noopener noreferrer nofollow\">{t}</a>",
            t = escape(t)
        ),
        None => "a page behind a password, which it names only to those who have it".to_owned(),
    };
    let page = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <meta name=\"robots\" content=\"noindex\">\
         <title>Where {short} leads</title>\
         <style>body{{font:16px/1.5 system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em}}\
         .target{{word-break:break-all;font-size:1.2em}}</style></head>\
         <body><main><h1>{short} leads to</h1>\
         <p class=\"target\">{target}</p>\
         {title}<p>Followed {clicks} times so far. Check the address before you go there.</p>\
         </main></body></html>\n",
        short = escape(&short_url),
    );
    // Nothing on the page runs or loads: inline style only. Framed on another site, the page
    // that says where a link leads could be shown in that site's words.
    Ok(html_page(
        StatusCode::OK,
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        page,
    ))
}

/// A page kurz writes itself: never cached, never sniffed, never framed (for browsers that
/// predate `frame-ancestors`), sent with no referrer, under `csp`.
pub(crate) fn html_page(status: StatusCode, csp: &'static str, page: String) -> Response {
    let mut response = (status, no_store(), page).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    response
}

pub(crate) fn no_store() -> [(header::HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

/// JSON when the client lists it before HTML (or without HTML at all).
pub(crate) fn wants_json(headers: &HeaderMap) -> bool {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    match (accept.find("application/json"), accept.find("text/html")) {
        (Some(j), Some(h)) => j < h,
        (Some(_), None) => true,
        _ => false,
    }
}

/// Text for HTML, in element content and in quoted attributes.
pub(crate) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_leaves_no_markup() {
        assert_eq!(
            escape(r#"<a href="x">'&'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    #[test]
    fn json_only_when_asked_before_html() {
        let h = |v: &str| {
            let mut m = HeaderMap::new();
            m.insert(header::ACCEPT, HeaderValue::from_str(v).unwrap());
            m
        };
        assert!(wants_json(&h("application/json")));
        assert!(wants_json(&h("application/json, text/html;q=0.5")));
        assert!(!wants_json(&h("text/html,application/xhtml+xml,*/*")));
        assert!(!wants_json(&HeaderMap::new()));
    }
}
