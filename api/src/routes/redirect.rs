//! `GET /<code>`: the redirect, answered from the Redis link cache, PostgreSQL on a miss; and
//! `POST /<code>`, the password of a protected link.

use super::link_password::{self, Attempt};
use crate::auth::lockout::Subject;
use crate::cache::{LinkState, Lookup};
use crate::clicks::LimitedVisit;
use crate::db;
use crate::error::{ApiError, ApiResult};
use crate::extract::{PathText, RawBody};
use crate::http_log::RequestId;
use crate::state::AppState;
use crate::web::FormToken;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use kurz_common::clicks::{clip, Click};
use kurz_common::keys::{CachedLink, LinkEntry, Verdict, GONE_EXHAUSTED, GONE_EXPIRED};
use kurz_common::shortcode;
use kurz_common::visit::{CLICK_SAMPLED_HEADER, VISIT_ID_HEADER};
use std::net::SocketAddr;

pub async fn redirect(
    State(state): State<AppState>,
    method: Method,
    PathText(code): PathText,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if let Some(base) = code.strip_suffix('+') {
        if shortcode::is_code_shaped(base) && !shortcode::is_reserved(base) {
            return super::preview::preview(&state, base, &headers).await;
        }
        return Err(not_found(&code));
    }
    let (entry, status) = redirecting(&state, &code).await?;
    if entry.protected {
        refuse_used_up(&state, &code, &entry).await?;
        let token = FormToken::for_page(&state, peer, &headers);
        return Ok(link_password::ask(&headers, &code, Attempt::First, &token));
    }
    // A HEAD is a probe (link checkers, previews), not a visit: it is answered but not counted.
    let visit = Visit {
        request_id: &request_id,
        peer,
        headers: &headers,
        counted: method == Method::GET,
    };
    visit_and_redirect(&state, &code, &entry, visit, status).await
}

/// `POST /<code>` with the password of a protected link: the redirect, as a 303.
pub async fn unlock(
    State(state): State<AppState>,
    PathText(code): PathText,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> ApiResult<Response> {
    let (entry, _) = redirecting(&state, &code).await?;
    if !entry.protected {
        // A 405 names what the path takes (RFC 9110 §15.5.6): axum adds `Allow` only for a
        // method no route takes, and this route takes POST for protected links.
        let mut refused = ApiError::MethodNotAllowed.into_response();
        refused
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET,HEAD"));
        return Ok(refused);
    }
    refuse_used_up(&state, &code, &entry).await?;
    let submitted = link_password::password_of(&headers, &body)?;
    let token = FormToken::for_post(&state, peer, &headers);
    let ask = |attempt| link_password::ask(&headers, &code, attempt, &token);
    // Before the lock-out's count: a post another site made counts against nobody.
    if submitted
        .form_token
        .as_deref()
        .is_some_and(|field| !token.matches(field))
    {
        return Ok(ask(Attempt::Expired));
    }
    let password = submitted.password;
    let ip = state.proxies.client_ip(peer.ip(), &headers);
    let subject = Subject::Link(entry.url_id);
    let lockout = &state.auth.lockout;
    let down = |_| ApiError::Unavailable("password checks are unavailable; retry shortly".into());
    let attempt = match lockout.admit(&subject, ip).await.map_err(down)? {
        Ok(attempt) => attempt,
        // A person at the form gets the form again, saying so; a client, the JSON 429.
        Err(wait) => return Ok(ask(Attempt::Locked(wait))),
    };
    let stored = db::urls::password_hash(&state.client().await?, entry.url_id).await?;
    if !state.auth.passwords.verify(password, stored).await? {
        lockout.failed(&attempt).await;
        return Ok(ask(Attempt::Wrong));
    }
    lockout.succeeded(&attempt).await.map_err(down)?;
    let visit = Visit {
        request_id: &request_id,
        peer,
        headers: &headers,
        counted: true,
    };
    visit_and_redirect(&state, &code, &entry, visit, 303).await
}

fn not_found(code: &str) -> ApiError {
    ApiError::NotFound(format!("short code {code:?} not found"))
}

fn gone(code: &str, why: &str) -> ApiError {
    ApiError::Gone(format!("short code {code:?} {why}"))
}

/// The link of `code` and its status, if it redirects now (else its 404 or 410).
async fn redirecting(state: &AppState, code: &str) -> ApiResult<(LinkEntry, u16)> {
    if !shortcode::is_code_shaped(code) || shortcode::is_reserved(code) {
        return Err(not_found(code));
    }
    match resolve(state, code).await? {
        CachedLink::Found(entry) => match entry.verdict_at(chrono::Utc::now().timestamp()) {
            Verdict::Redirect(status) => Ok((entry, status)),
            Verdict::NotFound => Err(not_found(code)),
            Verdict::Gone => Err(gone(code, GONE_EXPIRED)),
        },
        CachedLink::Missing => Err(not_found(code)),
    }
}

/// A protected link whose visits are used up is gone before its password is asked for or
/// checked: neither the edge's visit script nor the cache entry looks at the counter of a link
/// that asks for a password first, and a wrong password for a dead link would count against the
/// visitor's lock-out. Its preview and QR code answer 410 the same way.
async fn refuse_used_up(state: &AppState, code: &str, entry: &LinkEntry) -> ApiResult<()> {
    if entry.max_visits.is_some() {
        super::preview::redirecting_link(state, code).await?;
    }
    Ok(())
}

/// The request a visit comes from.
struct Visit<'a> {
    request_id: &'a str,
    peer: SocketAddr,
    headers: &'a HeaderMap,
    /// A GET (or a POST with the password): a click; a HEAD is not.
    counted: bool,
}

/// Counts and records the visit (against `max_visits` when the link has one), then redirects
/// with `status`.
async fn visit_and_redirect(
    state: &AppState,
    code: &str,
    entry: &LinkEntry,
    visit: Visit<'_>,
    status: u16,
) -> ApiResult<Response> {
    let click = visit.counted.then(|| {
        click_of(
            state,
            visit.request_id,
            code,
            entry,
            visit.peer,
            visit.headers,
        )
    });
    if entry.max_visits.is_some() {
        // An edge's id for a visit it may have counted already: believed from an edge only.
        let visit_id = visit
            .headers
            .get(VISIT_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .filter(|id| {
                id.len() == 32
                    && id.bytes().all(|b| b.is_ascii_hexdigit())
                    && state.proxies.trusts(visit.peer.ip())
            });
        match state
            .clicks
            .limited_visit(&state.cache, code, entry, click, visit_id)
            .await?
        {
            LimitedVisit::Allowed => {}
            LimitedVisit::Exhausted => return Err(gone(code, GONE_EXHAUSTED)),
            LimitedVisit::Changed(Verdict::Gone) => return Err(gone(code, GONE_EXPIRED)),
            LimitedVisit::Changed(_) => return Err(not_found(code)),
            LimitedVisit::Protected => {
                let token = FormToken::for_page(state, visit.peer, visit.headers);
                return Ok(link_password::ask(
                    visit.headers,
                    code,
                    Attempt::First,
                    &token,
                ));
            }
        }
    } else if let Some(click) = click {
        // The edge's draw for a visit it forwards: sampled once, by whoever saw it first.
        let drawn = visit
            .headers
            .get(CLICK_SAMPLED_HEADER)
            .filter(|_| state.proxies.trusts(visit.peer.ip()))
            .and_then(|v| match v.as_bytes() {
                b"1" => Some(true),
                b"0" => Some(false),
                _ => None,
            });
        state.clicks.record(click, drawn).await;
    }
    let location = HeaderValue::from_str(&entry.target).map_err(|_| {
        ApiError::Internal(format!(
            "stored target of {code} is not a valid header value"
        ))
    })?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND);
    Ok((
        status,
        [
            (header::LOCATION, location),
            (
                header::CACHE_CONTROL,
                HeaderValue::from_static("private, no-store"),
            ),
        ],
    )
        .into_response())
}

/// The link for `code`: cache first; on a miss PostgreSQL, then fill the cache (also with a
/// negative entry for unknown codes). With Redis down, PostgreSQL alone.
async fn resolve(state: &AppState, code: &str) -> ApiResult<CachedLink> {
    let lookups = &state.metrics.cache_lookups;
    let seen = match state.cache.lookup(code).await {
        Ok(Lookup::Hit(entry)) => {
            let result = if entry == CachedLink::Missing {
                "negative"
            } else {
                "hit"
            };
            lookups.with_label_values(&[result]).inc();
            return Ok(entry);
        }
        Ok(Lookup::Miss(generation)) => {
            lookups.with_label_values(&["miss"]).inc();
            Some(generation)
        }
        Err(_) => {
            lookups.with_label_values(&["error"]).inc();
            None
        }
    };
    // A code without a row is filled without a version: a fill stores only where nothing is.
    // The connection goes back before the fill waits on Redis: a miss is any scanner's request.
    let link_state = db::urls::find_url_by_code(&state.client().await?, code)
        .await?
        .map_or_else(|| LinkState::absent(0), |link| link.cache_state());
    if let Some(seen) = seen {
        if let Err(e) = state.cache.fill(code, &link_state, &seen).await {
            log::debug!(error = e.to_string(); "cache fill skipped");
        }
    }
    Ok(link_state.entry)
}

/// The click of this request. Its id is the request id, so a request the edge forwarded after
/// its own append may have applied is still stored once.
fn click_of(
    state: &AppState,
    request_id: &str,
    code: &str,
    entry: &LinkEntry,
    peer: SocketAddr,
    headers: &HeaderMap,
) -> Click {
    let header = |name: header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(clip)
            .unwrap_or_default()
    };
    let ip = state.proxies.client_ip(peer.ip(), headers);
    let user_agent = header(header::USER_AGENT);
    Click {
        id: request_id.to_owned(),
        url_id: entry.url_id,
        user_id: entry.user_id,
        code: code.to_owned(),
        target: entry.target.clone(),
        referrer: header(header::REFERER),
        // The clipped agent, as the edge hashes it: one visitor whoever records the click.
        visitor: state.visitors.visitor(ip, &user_agent),
        user_agent,
        ip: state.config.privacy.store_ip.apply(ip),
        ts_ms: chrono::Utc::now().timestamp_millis(),
    }
}
