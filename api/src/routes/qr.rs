//! `GET /urls/<id>/qr` and `GET /<code>/qr`: the QR code of a link's short URL (`?format=svg|png`,
//! default `svg`; `?size=N` pixels, 64–2048, default 256), with an `ETag` so a client that has
//! it gets a 304.

use crate::auth::Caller;
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::extract::{path_id, PathText, Query};
use crate::qr::{self, Format};
use crate::state::AppState;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use kurz_common::shortcode;

/// The owner's view, by id (the same access as `GET /urls/<id>`).
pub async fn by_id(
    State(state): State<AppState>,
    caller: Caller,
    PathText(id): PathText,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (format, size) = options(raw.as_deref())?;
    let id = path_id(&id, "url")?;
    // The connection goes back before the wait for a drawing turn (`image`).
    let link = {
        let client = state.client().await?;
        db::urls::find_url(&client, id)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("url {id} not found")))?
    };
    caller.require_owner_or_admin(link.user_id)?;
    let cache = "private, max-age=86400";
    image(&state, &link.short_code, format, size, &headers, cache).await
}

/// Anyone's, by code: for a link that redirects (a printed code of a dead link helps nobody).
pub async fn by_code(
    State(state): State<AppState>,
    PathText(code): PathText,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if !shortcode::is_code_shaped(&code) || shortcode::is_reserved(&code) {
        return Err(ApiError::NotFound(format!("short code {code:?} not found")));
    }
    let (format, size) = options(raw.as_deref())?;
    // Its connection goes back before the wait for a drawing turn (`redirecting_link`): held
    // through it, a burst of public QR codes would hold the pool while they queue, and every
    // other request of this process would wait for a connection.
    let link = super::preview::redirecting_link(&state, &code).await?;
    let cache = "public, max-age=86400";
    image(&state, &link.short_code, format, size, &headers, cache).await
}

pub(crate) fn options(raw: Option<&str>) -> ApiResult<(Format, u32)> {
    let q = Query::parse(raw, &["format", "size"])?;
    let format = match q.get("format") {
        None => Format::Svg,
        Some(f) => Format::parse(f).ok_or_else(|| {
            ApiError::BadRequest(format!("query parameter format={f:?} must be svg or png"))
        })?,
    };
    let size = match q.get("size") {
        None => 256,
        Some(s) => s
            .parse::<u32>()
            .ok()
            .filter(|n| (qr::MIN_SIZE..=qr::MAX_SIZE).contains(n))
            .ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "query parameter size={s:?} must be an integer from {} to {}",
                    qr::MIN_SIZE,
                    qr::MAX_SIZE
                ))
            })?,
    };
    Ok((format, size))
}

/// QR codes drawn at once by one API process (`AppState::drawing`), and how long one waits for
/// its turn.
pub const MAX_CONCURRENT_DRAWINGS: usize = 2;
pub const DRAWING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The QR code of `code`'s short URL.
pub(crate) async fn image(
    state: &AppState,
    code: &str,
    format: Format,
    size: u32,
    headers: &HeaderMap,
    cache: &'static str,
) -> ApiResult<Response> {
    let text = format!("{}/{}", state.config.base(), code);
    let etag = qr::etag(&text, format, size);
    let tag = HeaderValue::from_str(&etag).map_err(|e| ApiError::Internal(e.to_string()))?;
    let common = [
        (header::ETAG, tag),
        (header::CACHE_CONTROL, HeaderValue::from_static(cache)),
    ];
    let seen = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        // Weak comparison (RFC 9110 §13.1.2): a cache that recompressed the image may send it
        // back as `W/"…"`.
        .is_some_and(|v| {
            v.split(',')
                .map(|t| t.trim())
                .any(|t| t.strip_prefix("W/").unwrap_or(t) == etag || t == "*")
        });
    if seen {
        return Ok((StatusCode::NOT_MODIFIED, common).into_response());
    }
    // A 2048-pixel PNG is millions of pixels and a deflate: on a request worker it would
    // stall every request scheduled there, and the public route takes ~100 a second per address.
    // A few at a time: the blocking pool also runs the password hashes and the imports' parses.
    let busy = "too many QR codes are being drawn";
    let turn = crate::state::turn(&state.drawing, DRAWING_WAIT, busy).await?;
    let body = tokio::task::spawn_blocking(move || {
        let _turn = turn;
        qr::render(&text, format, size)
    })
    .await
    .map_err(|e| ApiError::Internal(format!("QR drawing task: {e}")))?
    .map_err(ApiError::Internal)?;
    let mut response = (StatusCode::OK, common, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(format.content_type()),
    );
    Ok(response)
}
