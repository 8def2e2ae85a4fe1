//! The edge's `ProxyHttp`: each phase is short and hands off to the module that owns the
//! concern (rate limits, redirects, upstreams, responses).

mod failures;
mod routes;
mod settings;

pub use settings::{EdgeSettings, SharedTrust};

use routes::{classify, decoded_path, header, https_host, https_target, redirect_code};

use crate::metrics::{HOT, METRICS};
use crate::rate_limit::{Class, Decision, RateLimiter};
use crate::redirect::{Outcome, Redirector};
use crate::respond;
use async_trait::async_trait;
use kurz_common::clicks::{clip, is_valid_id, new_id, Click};
use kurz_common::keys::{GONE_EXHAUSTED, GONE_EXPIRED};
use kurz_common::proxies::ProxyTrust;
use kurz_common::visit::{CLICK_SAMPLED_HEADER, VISIT_ID_HEADER};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::upstreams::peer::HttpPeer;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

pub struct Edge {
    pub lb: Arc<LoadBalancer<RoundRobin>>,
    pub probation: crate::upstreams::Probation,
    pub trust: SharedTrust,
    pub limiter: Arc<RateLimiter>,
    pub redirector: Redirector,
    pub settings: EdgeSettings,
    /// Today's visitor salt, refreshed in the background.
    pub visitors: Arc<kurz_common::visitors::VisitorSalt>,
}

/// Per-request state.
pub struct Ctx {
    request_id: String,
    client: IpAddr,
    class: Class,
    started: Instant,
    /// The client came over HTTPS: to the edge itself, or (in a trusted proxy's word, one
    /// `X-Forwarded-Proto: https`) to a load balancer that ended TLS in front of it.
    https: bool,
    /// Status the edge answered itself (redirects, 404s, 429s…); `None` when proxied.
    answered: Option<u16>,
    /// Upstreams that failed this request, skipped on retry.
    failed: Vec<SocketAddr>,
    /// This attempt goes back to an upstream that failed it (the only one left).
    again_to_failed: bool,
    body_bytes: u64,
    /// The id of a visit the edge ran through the visit script, passed on if the request is
    /// forwarded after all: the API's run then does not count it again.
    visit_id: Option<String>,
    /// This `GET`'s click-sampling draw, passed on if the request is forwarded.
    click_sampled: Option<bool>,
}

impl Edge {
    /// The request id is also the click's identity (stored once per id), so only a trusted
    /// proxy may choose it (`ProxyTrust::names_request`): a client's own id could collide with
    /// another click and erase it.
    fn new_request_id(req: &RequestHeader, from_trusted: bool) -> String {
        let given = header(req, "x-request-id");
        if from_trusted && is_valid_id(given) {
            given.to_owned()
        } else {
            new_id()
        }
    }

    /// What a response the edge writes itself carries: the request id, and HSTS on TLS.
    fn reply<'a>(&'a self, ctx: &'a Ctx) -> respond::Reply<'a> {
        respond::Reply {
            rid: &ctx.request_id,
            hsts: self.settings.hsts.as_ref().filter(|_| ctx.https),
        }
    }

    fn trust(&self) -> Arc<ProxyTrust> {
        self.trust.read().expect("trust lock").clone()
    }

    async fn answer_redirect(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        code: &str,
    ) -> Result<bool> {
        let req = session.req_header();
        let get = req.method == http::Method::GET;
        let sampled = get
            && (self.settings.click_sample_rate >= 1.0
                || rand::random::<f64>() < self.settings.click_sample_rate);
        // Built for every GET: a link with `max_visits` counts the visits sampled out too.
        let click = get.then(|| {
            let user_agent = clip(header(req, "user-agent"));
            Click {
                // The request id travels on to the API if this request is forwarded, so the click
                // keeps one identity whichever process ends up recording it.
                id: ctx.request_id.clone(),
                url_id: 0,
                user_id: None,
                code: code.to_owned(),
                target: String::new(),
                referrer: clip(header(req, "referer")),
                // The clipped agent, as the API hashes it: one visitor whoever records the click.
                visitor: self.visitors.visitor(ctx.client, &user_agent),
                user_agent,
                ip: self.settings.store_ip.apply(ctx.client),
                ts_ms: chrono::Utc::now().timestamp_millis(),
            }
        });
        if get && !sampled {
            HOT.clicks_sampled_out.inc();
        }
        ctx.click_sampled = get.then_some(sampled);
        let outcome = self
            .redirector
            .resolve(code, click, sampled, &mut ctx.visit_id)
            .await;
        let why_gone = if outcome == Outcome::Exhausted {
            GONE_EXHAUSTED
        } else {
            GONE_EXPIRED
        };
        match outcome {
            Outcome::Redirect(target, status) => {
                respond::redirect(session, self.reply(ctx), status, &target).await?;
                ctx.answered = Some(status);
                Ok(true)
            }
            Outcome::NotFound => {
                let msg = format!("short code {code:?} not found");
                respond::json_error(session, self.reply(ctx), 404, "not_found", &msg, &[]).await?;
                ctx.answered = Some(404);
                Ok(true)
            }
            Outcome::Gone | Outcome::Exhausted => {
                let msg = format!("short code {code:?} {why_gone}");
                respond::json_error(session, self.reply(ctx), 410, "gone", &msg, &[]).await?;
                ctx.answered = Some(410);
                Ok(true)
            }
            Outcome::Forward => Ok(false),
        }
    }
}

#[async_trait]
impl ProxyHttp for Edge {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx {
            request_id: String::new(),
            client: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            class: Class::Read,
            started: Instant::now(),
            https: false,
            answered: None,
            failed: Vec::new(),
            again_to_failed: false,
            body_bytes: 0,
            visit_id: None,
            click_sampled: None,
        }
    }

    /// No modules. Pingora's default adds a response compression module, switched off, that
    /// still takes an allocation and two filter calls per request; the edge compresses nothing
    /// (a redirect has no body, and the API's answers pass through as they are).
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn early_request_filter(&self, session: &mut Session, _ctx: &mut Ctx) -> Result<()> {
        session.set_read_timeout(Some(self.settings.client_body_timeout));
        // Pingora waits on a client that takes no bytes for ever.
        session.set_write_timeout(Some(self.settings.client_send_timeout));
        if crate::drain::draining() {
            // Answer, then close: the client's next request opens a connection to a process
            // that stays (the upgraded one, or another edge), instead of racing our exit.
            session.set_keepalive(None);
        }
        Ok(())
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        METRICS.in_flight.inc();
        ctx.started = Instant::now();
        let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |a| a.ip());
        let req = session.req_header();
        let trust = self.trust();
        let trusted = trust.trusts(peer);
        // Behind a load balancer that ends TLS the edge itself sees plain HTTP: without its
        // word, a redirect to HTTPS would come back as plain HTTP again, for ever.
        ctx.https = tls || (trusted && forwarded_https(&req.headers));
        ctx.request_id = Self::new_request_id(req, trust.names_request(peer));
        ctx.client = trust.client_ip(peer, &req.headers);
        let path = decoded_path(req.uri.path()).into_owned();
        ctx.class = classify(&req.method, &path);

        // Before the move to HTTPS: plain HTTP is no way around a class's rate.
        match self.limiter.check(ctx.class, ctx.client) {
            Decision::Deny { limit, retry_after } => {
                METRICS
                    .rate_limited
                    .with_label_values(&[ctx.class.as_str()])
                    .inc();
                let (limit, retry) = (limit.to_string(), retry_after.to_string());
                let headers = [
                    ("retry-after", retry.as_str()),
                    ("x-ratelimit-limit", limit.as_str()),
                    ("x-ratelimit-remaining", "0"),
                ];
                respond::json_error(
                    session,
                    self.reply(ctx),
                    429,
                    "rate_limited",
                    "too many requests; retry later",
                    &headers,
                )
                .await?;
                ctx.answered = Some(429);
                return Ok(true);
            }
            Decision::Allow { .. } | Decision::Unlimited => {}
        }
        if self.settings.redirect_http_to_https && !ctx.https {
            // HTTP/1.0 may name the host only in an absolute-form target.
            // Parsed only when there is no Host: nearly every request has one.
            let from_target;
            let named = match header(req, "host") {
                "" => {
                    from_target = std::str::from_utf8(req.raw_path())
                        .ok()
                        .and_then(|t| t.parse::<http::Uri>().ok())
                        .and_then(|t| t.authority().map(|a| a.as_str().to_owned()))
                        .unwrap_or_default();
                    from_target.as_str()
                }
                host => host,
            };
            let Some(host) = https_host(named) else {
                respond::json_error(
                    session,
                    self.reply(ctx),
                    400,
                    "bad_request",
                    "a Host header naming a host is required",
                    &[],
                )
                .await?;
                ctx.answered = Some(400);
                return Ok(true);
            };
            let target = https_target(host, req.uri.path_and_query());
            respond::send(
                session,
                self.reply(ctx),
                308,
                &[("location", &target)],
                None,
            )
            .await?;
            ctx.answered = Some(308);
            return Ok(true);
        }
        // The id reaches the API through `upstream_request_filter`; writing it into the
        // downstream request here too cost ~2% of the redirect path's CPU (perf) for nothing.

        // Whole segments: `/admins` may be a link's code (only `admin` itself is reserved).
        if path == "/metrics"
            || path.starts_with("/metrics/")
            || path == "/admin"
            || path.starts_with("/admin/")
        {
            respond::json_error(
                session,
                self.reply(ctx),
                404,
                "not_found",
                "no such route",
                &[],
            )
            .await?;
            ctx.answered = Some(404);
            return Ok(true);
        }
        let declared = header(session.req_header(), "content-length")
            .parse::<u64>()
            .unwrap_or(0);
        if declared > self.settings.max_body {
            respond::json_error(
                session,
                self.reply(ctx),
                413,
                "payload_too_large",
                "request body is too large",
                &[],
            )
            .await?;
            ctx.answered = Some(413);
            return Ok(true);
        }
        if ctx.class == Class::Redirect {
            if let Some(code) = redirect_code(&path) {
                let code = code.to_owned();
                return self.answer_redirect(session, ctx, &code).await;
            }
        }
        Ok(false)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(chunk) = body {
            ctx.body_bytes += chunk.len() as u64;
            if ctx.body_bytes > self.settings.max_body {
                return Error::e_explain(HTTPStatus(413), "request body over the limit");
            }
        }
        Ok(())
    }

    async fn upstream_peer(&self, session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        // Each attempt counts the body from its start: a retry sends the body read so far again
        // through `request_body_filter` (it is all in the retry buffer, or there is no retry),
        // and counted twice it would make a body within the limit a 413.
        ctx.body_bytes = 0;
        let failed = &ctx.failed;
        let backend = self
            .lb
            .select_with(b"", 256, |b, healthy| {
                healthy && !b.addr.as_inet().is_some_and(|a| failed.contains(a))
            })
            // Every healthy upstream failed or none is healthy: try any other one rather than
            // fail outright (health checks lag reality by an interval).
            .or_else(|| {
                self.lb.select_with(b"", 256, |b, _| {
                    !b.addr.as_inet().is_some_and(|a| failed.contains(a))
                })
            })
            // A retry with no other upstream left goes to the one that failed, on a new
            // connection: with one upstream (a Kubernetes Service address, whose next connection
            // may reach another pod) a reset pooled connection would otherwise be a 502.
            .or_else(|| {
                (!failed.is_empty())
                    .then(|| self.lb.select_with(b"", 256, |_, _| true))
                    .flatten()
            })
            .ok_or_else(|| Error::explain(HTTPStatus(502), "no upstream available"))?;
        let mut peer = HttpPeer::new(backend, false, String::new());
        // Back to an upstream that failed this request: another of its pooled connections may be
        // as stale as the one that broke (the pod behind a Service address restarted). A group
        // key of its own keeps the connection pool from handing one out: a new connection. It
        // asks to be closed after its answer (`upstream_request_filter`), so it is not pooled
        // under that key for the next such retry to take.
        ctx.again_to_failed = peer
            ._address
            .as_inet()
            .is_some_and(|a| ctx.failed.contains(a));
        if ctx.again_to_failed {
            peer.group_key = 1;
        }
        peer.options.connection_timeout = Some(self.settings.connect_timeout);
        // An import answers when it has committed: a read timeout shorter than the API's own
        // budget would answer 504 for an import that then succeeds.
        let budget = if kurz_common::http::is_bulk_route(session.req_header().uri.path()) {
            self.settings.bulk_read_timeout
        } else {
            self.settings.read_timeout
        };
        peer.options.read_timeout = Some(budget);
        // The same bound on each write of the request body: while one waits on an upstream that
        // stopped reading (frozen, or its host gone), Pingora reads neither its answer (where
        // the read timeout would fire) nor more of the client's body (where the body deadline
        // would), and the request would hang until the kernel gave up, minutes later.
        peer.options.write_timeout = Some(budget);
        peer.options.idle_timeout = Some(self.settings.idle_timeout);
        Ok(Box::new(peer))
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let trusted_peer = peer.is_some_and(|ip| self.trust().trusts(ip));
        let peer = peer.map(|ip| ip.to_string()).unwrap_or_default();
        // Every line of the header, in order: one list, as the client address was read.
        let xff = if trusted_peer {
            let mut xff = String::new();
            for line in upstream.headers.get_all("x-forwarded-for").iter() {
                match line.to_str().map(str::trim) {
                    Ok("") | Err(_) => {}
                    Ok(line) => {
                        xff.push_str(line);
                        xff.push_str(", ");
                    }
                }
            }
            xff.push_str(&peer);
            xff
        } else {
            peer
        };
        upstream.insert_header("x-forwarded-for", xff)?;
        // A trusted proxy's word that the client came over HTTPS is kept (`ctx.https`), so the
        // API still marks its cookies `Secure`. Anyone else gets what the edge saw.
        upstream.insert_header(
            "x-forwarded-proto",
            if ctx.https { "https" } else { "http" },
        )?;
        upstream.insert_header("x-real-ip", ctx.client.to_string())?;
        upstream.insert_header("x-request-id", &ctx.request_id)?;
        if ctx.again_to_failed {
            upstream.insert_header("connection", "close")?;
        }
        // Only an edge names a visit: a client's own id could pass a used-up link uncounted.
        upstream.remove_header(VISIT_ID_HEADER);
        if let Some(id) = &ctx.visit_id {
            upstream.insert_header(VISIT_ID_HEADER, id)?;
        }
        upstream.remove_header(CLICK_SAMPLED_HEADER);
        if let Some(sampled) = ctx.click_sampled {
            upstream.insert_header(CLICK_SAMPLED_HEADER, if sampled { "1" } else { "0" })?;
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        let reply = self.reply(ctx);
        resp.insert_header("x-request-id", reply.rid)?;
        if let Some(hsts) = reply.hsts {
            resp.insert_header("strict-transport-security", hsts.clone())?;
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        e: Box<Error>,
    ) -> Box<Error> {
        self.connect_failed(peer, ctx, e)
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
        _reused: bool,
    ) -> Box<Error> {
        self.proxy_failed(peer, session, e, ctx)
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        self.answer_failure(session, e, ctx).await
    }

    /// The access line of `logging` records every failed request with its id and error: Pingora's
    /// own line would repeat it as free text without the id (at ERROR even for a client that
    /// left), written synchronously on the request's thread.
    fn suppress_error_log(&self, _session: &Session, _ctx: &Ctx, _error: &Error) -> bool {
        true
    }

    /// A failure that will be retried on another upstream, logged under the request's id in
    /// place of Pingora's line, which carries none.
    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &Ctx,
        error: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        log::warn!(
            request_id = ctx.request_id.as_str(), error = error.to_string();
            "upstream failed; the request is retried"
        );
        true
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        METRICS.in_flight.dec();
        let status = ctx
            .answered
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0);
        let elapsed = ctx.started.elapsed();
        let class = ctx.class.as_str();
        HOT.request(ctx.class, status, elapsed.as_secs_f64());
        let rate = self.settings.access_log_sample_rate;
        let sampled = rate >= 1.0 || (rate > 0.0 && rand::random::<f64>() < rate);
        if !sampled && e.is_none() && status < 500 {
            return;
        }
        let req = session.req_header();
        let duration_ms = (elapsed.as_secs_f64() * 1_000_000.0).round() / 1000.0;
        let error = e.map(|e| e.to_string()).unwrap_or_default();
        // A request that failed on our side stays visible at `warn` (Pingora's own error line for
        // it is suppressed); one whose client left is routine.
        let level = if status >= 500 {
            log::Level::Warn
        } else {
            log::Level::Info
        };
        log::log!(
            target: "kurz_proxy::access",
            level,
            request_id = ctx.request_id.as_str(), method = req.method.as_str(), path = req.uri.path(),
            class = class, status = status, duration_ms = duration_ms, client = ctx.client.to_string(),
            edge = ctx.answered.is_some(), error = error.as_str();
            "request"
        );
    }
}

/// Whether the request's one `X-Forwarded-Proto` says `https` (repeated, it says nothing).
fn forwarded_https(headers: &http::HeaderMap) -> bool {
    let mut values = headers.get_all("x-forwarded-proto").iter();
    match (values.next(), values.next()) {
        (Some(v), None) => v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"https"),
        _ => false,
    }
}
