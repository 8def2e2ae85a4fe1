//! The connection layer in front of Pingora's HTTP/1 handling: a cap on connections per client
//! and a guard on every request head and body (see `guard`), so slow or malformed clients cost
//! bounded time and memory and get our JSON errors, never Pingora's empty ones.
//!
//! HTTP/2 connections (TLS with ALPN `h2`) pass unguarded: their frames are read by the h2
//! crate, which bounds header lists itself.

mod guard;
pub mod head;
mod tls;

pub use tls::TlsListeners;

use crate::rate_limit::{client_key, RateLimiter};
use crate::service::SharedTrust;
use async_trait::async_trait;
use guard::HeadGuard;
use head::Refusal;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::future::poll_fn;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Labels of `kurz_proxy_request_heads_rejected_total`.
pub const REJECT_REASONS: [&str; 6] = [
    "too_large",
    "malformed",
    "method",
    "head_timeout",
    "body_timeout",
    "tls_handshake",
];

/// The bounds, and who holds how many connections.
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// Longest a write to the client may wait without progress (`limits.client_send_timeout_ms`).
    pub send_timeout: Duration,
    pub max_per_client: usize,
    /// Read for its IPv6 prefix length, which SIGHUP changes: the connection cap and the rate
    /// limits must agree on who one client is.
    pub limiter: Arc<RateLimiter>,
    pub trust: SharedTrust,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnLimits {
    pub fn new(
        header_timeout: Duration,
        body_timeout: Duration,
        max_per_client: usize,
        limiter: Arc<RateLimiter>,
        trust: SharedTrust,
    ) -> Self {
        Self {
            header_timeout,
            body_timeout,
            send_timeout: Duration::from_secs(60),
            max_per_client,
            limiter,
            trust,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// With `limits.client_send_timeout_ms`.
    pub fn with_send_timeout(mut self, send_timeout: Duration) -> Self {
        self.send_timeout = send_timeout;
        self
    }

    /// A slot for a new connection from `peer`, or `None` when that client holds its share.
    /// Trusted proxies carry many clients' connections and are not capped.
    fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Option<Slot> {
        let key = peer
            .filter(|ip| !self.trust.read().expect("trust lock").trusts(*ip))
            .map(|ip| client_key(ip, self.limiter.ipv6_prefix_len()));
        if let Some(key) = key {
            let mut open = self.open.lock().expect("open lock");
            let n = open.entry(key).or_insert(0);
            if *n >= self.max_per_client {
                return None;
            }
            *n += 1;
        }
        crate::metrics::METRICS.client_connections.inc();
        Some(Slot {
            limits: self.clone(),
            key,
        })
    }
}

struct Slot {
    limits: Arc<ConnLimits>,
    key: Option<IpAddr>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        crate::metrics::METRICS.client_connections.dec();
        if let Some(key) = self.key {
            let mut open = self.limits.open.lock().expect("open lock");
            if let Some(n) = open.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    open.remove(&key);
                }
            }
        }
    }
}

/// Pingora's HTTP application behind the connection layer.
pub struct Guarded<A> {
    pub inner: Arc<A>,
    pub limits: Arc<ConnLimits>,
    /// The HTTPS listeners, whose handshake runs here (see `tls`).
    pub tls: Option<TlsListeners>,
}

/// How long a keep-alive connection may sit idle between requests: Pingora's own default.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(60);

impl<A: HttpServerApp + Send + Sync + 'static> Guarded<A> {
    /// Pingora's HTTP/1 keep-alive loop (`ServerApp::process_new` for an `HttpServerApp`), with
    /// one change: between requests the connection waits in its guard, not inside a
    /// session. Pingora builds a request's whole state before reading it, so an idle
    /// connection there costs tens of KiB; here it costs the guard and the socket's buffers.
    async fn serve_http1(self: &Arc<Self>, mut guard: Box<HeadGuard>, shutdown: &ShutdownWatch) {
        let mut settings: Option<HttpPersistentSettings> = None;
        let mut first = true;
        // One wait on the shutdown watch for the connection's life. Made anew for each request,
        // it joined and left one of the watch's waiter lists (shared by the connections of every
        // thread) under its lock each time; kept, it takes that lock once per request to refresh
        // its waker (with the rest, ~1% of the redirect path's CPU, perf).
        let mut stop = std::pin::pin!(stopping(shutdown.clone()));
        loop {
            // Idle time before a request is Pingora's keep-alive timeout, as when it waits; the
            // guard's head deadline (from accept for the first head) may end it sooner.
            let wait =
                tokio::time::timeout(KEEPALIVE_IDLE, poll_fn(|cx| guard.poll_next_request(cx)));
            let arrived = tokio::select! {
                biased;
                r = wait => r.unwrap_or(Ok(false)),
                // Stopping closes idle connections, as Pingora does with those waiting in it.
                _ = &mut stop => return,
            };
            if !matches!(arrived, Ok(true)) {
                return;
            }
            let mut session = ServerSession::new_http1(guard);
            match settings.take() {
                Some(s) => s.apply_to_session(&mut session),
                None if first => {
                    let keepalive = (!*shutdown.borrow()).then_some(KEEPALIVE_IDLE.as_secs());
                    session.set_keepalive(keepalive);
                    session.set_keepalive_reuses_remaining(
                        self.inner
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
                None => {}
            }
            first = false;
            let Some(reused) = self.inner.process_new_http(session, shutdown).await else {
                return;
            };
            let (stream, next) = reused.consume();
            settings = next;
            // Pingora's HTTP/1 session hands back the stream it was given.
            let Ok(next_guard) = stream.into_any().downcast::<HeadGuard>() else {
                log::warn!("the HTTP session handed back a stream other than its own; closing it");
                return;
            };
            guard = next_guard;
        }
    }
}

/// Resolves once the server is stopping (never, should the server's watch be gone).
async fn stopping(mut shutdown: ShutdownWatch) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let tls = self.tls.as_ref().filter(|t| t.serves(&stream));
        let Some(slot) = self.limits.admit(peer) else {
            crate::metrics::METRICS.connections_refused.inc();
            let refusal = Refusal::new(
                429,
                "too_many_connections",
                "too many open connections from your address",
                "",
            );
            log::info!(
                target: "kurz_proxy::access",
                request_id = refusal.id.as_str(), status = 429u16,
                client = peer.map(|p| p.to_string()).unwrap_or_default(), edge = true;
                "connection refused: too many open connections from the address"
            );
            // A client waiting for a TLS handshake could not read a plain answer: it is closed.
            if tls.is_none() {
                let reply = refusal.reply(&[("retry-after", "1")]);
                // A few hundred bytes fit the socket's send buffer; a client that reads
                // nothing still cannot hold this task.
                let send = async {
                    stream.write_all(&reply).await?;
                    stream.flush().await
                };
                let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
            }
            pingora::protocols::Shutdown::shutdown(&mut *stream).await;
            return None;
        };
        // Counted (`slot`) from accept, and within the head deadline, like a first head.
        let stream = match tls {
            None => stream,
            Some(tls) => tls.handshake(stream, self.limits.header_timeout).await?,
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.inner.process_new(stream, shutdown).await;
        }
        let custom = self
            .inner
            .server_options()
            .is_some_and(|o| o.h2c || o.force_custom)
            || matches!(stream.selected_alpn_proto(), Some(ALPN::Custom(_)));
        let guard = Box::new(HeadGuard::new(stream, self.limits.clone()));
        if custom {
            return self.inner.process_new(guard, shutdown).await;
        }
        let mut guard = guard;
        guard.pace();
        // The connection moves to a task of its own. Pingora's per-connection task is sized for
        // its largest state, the handshake (8.6 KiB measured), and would hold that for as long as the
        // connection stays open; this one is sized for what it waits on.
        let (app, shutdown) = (self.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _slot = slot;
            app.serve_http1(guard, &shutdown).await;
        });
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kurz_common::proxies::ProxyTrust;

    /// A reload's `rate_limits.ipv6_prefix_len` reaches the connection cap too, not only the
    /// rate limits; connections already counted give back the place they took.
    #[test]
    fn the_connection_cap_follows_a_reloaded_ipv6_prefix() {
        let mut cfg = crate::config::ProxyConfig::default().rate_limits;
        cfg.ipv6_prefix_len = 64;
        let limiter = Arc::new(RateLimiter::new(&cfg));
        let trust = Arc::new(std::sync::RwLock::new(Arc::new(
            ProxyTrust::parse(&[], &[]).unwrap(),
        )));
        let limits = Arc::new(ConnLimits::new(
            Duration::from_secs(1),
            Duration::from_secs(1),
            1,
            limiter.clone(),
            trust,
        ));
        let a: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let b: IpAddr = "2001:db8:0:2::1".parse().unwrap();
        let first = limits.admit(Some(a)).expect("one per /64");
        let second = limits
            .admit(Some(b))
            .expect("another /64 is another client");
        cfg.ipv6_prefix_len = 48;
        limiter.set_limits(&cfg);
        // Counted from the reload on: both addresses are in one /48, one client.
        let third = limits.admit(Some(a)).expect("the /48's first connection");
        assert!(
            limits.admit(Some(b)).is_none(),
            "one /48 is one client now, and it holds its connection"
        );
        drop(third);
        assert!(limits.admit(Some(b)).is_some(), "its place given back");
        // Connections counted under the old prefix give back their own places.
        drop(first);
        drop(second);
        assert!(limits.open.lock().unwrap().is_empty());
    }
}
