//! Responses the edge writes itself: redirects and the contract's JSON errors.

use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::Session;

/// What every response the edge writes itself carries besides its own headers.
///
/// Pingora runs `response_filter` only on proxied responses, so the headers it adds there must
/// be added here too for the redirects and errors the edge answers without the API.
#[derive(Clone, Copy)]
pub struct Reply<'a> {
    /// The request's id (`x-request-id`).
    pub rid: &'a str,
    /// `strict-transport-security`: set on TLS connections when `listen.hsts_max_age_seconds`
    /// is.
    pub hsts: Option<&'a http::HeaderValue>,
}

/// Writes a complete response carrying the request id. HEAD requests get the head only.
///
/// Header names are static: Pingora keeps a `&'static str` name as it is, where a `String`
/// would be allocated and copied on every redirect.
pub async fn send(
    session: &mut Session,
    to: Reply<'_>,
    status: u16,
    headers: &[(&'static str, &str)],
    body: Option<Bytes>,
) -> Result<()> {
    let len = body.as_ref().map_or(0, |b| b.len());
    let mut resp = ResponseHeader::build(status, Some(headers.len() + 4))?;
    resp.insert_header("x-request-id", to.rid)?;
    if let Some(hsts) = to.hsts {
        // A clone of a `HeaderValue` shares its bytes: no copy per response.
        resp.insert_header("strict-transport-security", hsts.clone())?;
    }
    for &(k, v) in headers {
        resp.insert_header(k, v)?;
    }
    // `HeaderValue::from(usize)` writes the digits itself, without the formatting machinery.
    resp.insert_header("content-length", http::HeaderValue::from(len))?;
    let head_only = session.req_header().method == http::Method::HEAD || body.is_none();
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session.write_response_body(body, true).await?;
    }
    Ok(())
}

/// `{"error", "message", "details": null}` with `status`.
pub async fn json_error(
    session: &mut Session,
    to: Reply<'_>,
    status: u16,
    code: &str,
    message: &str,
    extra: &[(&'static str, &str)],
) -> Result<()> {
    let body = kurz_common::http::error_body(code, message, serde_json::Value::Null);
    let mut headers = vec![
        ("content-type", "application/json"),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
    ];
    headers.extend_from_slice(extra);
    send(session, to, status, &headers, Some(Bytes::from(body))).await
}

/// A redirect with the link's status (301, 302, 307 or 308).
pub async fn redirect(
    session: &mut Session,
    to: Reply<'_>,
    status: u16,
    location: &str,
) -> Result<()> {
    send(
        session,
        to,
        status,
        &[
            ("location", location),
            ("cache-control", "private, no-store"),
        ],
        None,
    )
    .await
}
