//! Per-request bookkeeping: the request id, one JSON log line, and the HTTP metrics.
//!
//! The id comes from `X-Request-Id` (the edge sets it) or is generated, is echoed in the response
//! and logged, so one request can be followed from the edge through the API.

use crate::error::ErrorCause;
use crate::metrics::{status_class, Metrics};
use crate::state::AppState;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use kurz_common::clicks;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// The request id, for handlers that want to log it.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// The id the edge gave the request, or a fresh one. It is also the identity of the click a
/// redirect records (`kurz_common::clicks`), which is why the rule is shared with the edge, and
/// why only a trusted proxy may choose it: a client's own id could collide with another click.
fn request_id(req: &Request, state: &AppState) -> String {
    let from_proxy = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .is_some_and(|ConnectInfo(peer)| state.proxies.trusts(peer.ip()));
    req.headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| from_proxy && clicks::is_valid_id(v))
        .map(str::to_owned)
        .unwrap_or_else(clicks::new_id)
}

/// The method as a metric label: the standard ones by name, any other as `other`, so a client
/// inventing methods cannot grow the label set (the access log keeps the real one).
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::TRACE => "TRACE",
        Method::CONNECT => "CONNECT",
        _ => "other",
    }
}

/// Milliseconds to the microsecond, as the log lines give durations.
fn millis(d: std::time::Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1000.0
}

/// A request in the books until its answer is counted and logged. When the caller hangs up
/// mid-request (the edge gave up: its client left, a timeout, a health check's deadline), hyper
/// drops the handler and nothing after its await runs: the drop then takes the request out of
/// the in-flight gauge and logs it as 499, as nginx does for a request its client closed. Its
/// time goes into the latency histogram too: the requests the edge gives up on at its timeout
/// are the slowest ones, and a histogram without them would show a p99 nobody waited.
struct Pending {
    metrics: Arc<Metrics>,
    id: String,
    method: Method,
    route: String,
    path: String,
    started: Instant,
    answered: bool,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.answered {
            self.abandoned();
        }
        // Last: whoever sees the gauge fall (a scrape, a test) sees the request counted.
        self.metrics.in_flight.dec();
    }
}

impl Pending {
    fn abandoned(&self) {
        self.metrics
            .requests
            .with_label_values(&[&self.route, method_label(&self.method), status_class(499)])
            .inc();
        let elapsed = self.started.elapsed();
        self.metrics
            .request_duration
            .with_label_values(&[&self.route])
            .observe(elapsed.as_secs_f64());
        let duration_ms = millis(elapsed);
        log::info!(
            target: "kurz_api::http",
            request_id = self.id.as_str(), method = self.method.as_str(), route = self.route.as_str(),
            path = self.path.as_str(), status = 499u16, duration_ms = duration_ms;
            "request abandoned by the client"
        );
    }
}

pub async fn track(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let id = request_id(&req, &state);
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    // Unmatched paths share one label so scanners cannot blow up the label set.
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    req.extensions_mut().insert(RequestId(id.clone()));
    state.metrics.in_flight.inc();
    let mut pending = Pending {
        metrics: state.metrics.clone(),
        id,
        method,
        route,
        path,
        started,
        answered: false,
    };
    let mut response = next.run(req).await;
    pending.answered = true;
    let Pending {
        id,
        method,
        route,
        path,
        ..
    } = &pending;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    state
        .metrics
        .requests
        .with_label_values(&[route, method_label(method), status_class(status)])
        .inc();
    state
        .metrics
        .request_duration
        .with_label_values(&[route])
        .observe(elapsed.as_secs_f64());
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(id) {
        headers.insert("x-request-id", v);
    }
    headers.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    // An error is no answer to keep: a shared cache that kept a short code's 404 (caches may
    // keep a 404 without being told) would answer it after the link is made. The edge's own
    // errors say the same.
    if ["/auth", "/api/auth"].iter().any(|p| under(path, p))
        || (status >= 400 && !headers.contains_key(axum::http::header::CACHE_CONTROL))
    {
        headers.insert("cache-control", HeaderValue::from_static("no-store"));
    }
    let duration_ms = millis(elapsed);
    if let Some(ErrorCause(cause)) = response.extensions().get::<ErrorCause>() {
        log::error!(
            target: "kurz_api::http",
            request_id = id.as_str(), method = method.as_str(), route = route.as_str(), path = path.as_str(),
            status = status, duration_ms = duration_ms, error = cause.as_str();
            "request failed"
        );
    } else {
        log::info!(
            target: "kurz_api::http",
            request_id = id.as_str(), method = method.as_str(), route = route.as_str(), path = path.as_str(),
            status = status, duration_ms = duration_ms;
            "request"
        );
    }
    response
}

/// `path` is `prefix` or below it: `/auth/me`, not a link coded `authors`.
fn under(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}
