//! The connection layer in front of Pingora's HTTP/1 handling: a cap on connections per client
//! and a guard on every request head and body (see `guard`), so slow or malformed clients cost
//! bounded time and memory and get our JSON errors, never Pingora's empty ones.
//!
//! HTTP/2 connections (TLS with ALPN `h2`) pass unguarded: their frames are read by the h2
//! crate, which bounds header lists itself.

mod guard;
pub mod head;

use crate::rate_limit::client_key;
use crate::service::SharedTrust;
use async_trait::async_trait;
use guard::HeadGuard;
use head::Refusal;
use pingora::apps::ServerApp;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Labels of `kurz_proxy_request_heads_rejected_total`.
pub const REJECT_REASONS: [&str; 5] = [
    "too_large",
    "malformed",
    "method",
    "head_timeout",
    "body_timeout",
];

/// The bounds, and who holds how many connections.
pub struct ConnLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    pub max_per_client: usize,
    pub ipv6_prefix_len: u8,
    pub trust: SharedTrust,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl ConnLimits {
    pub fn new(
        header_timeout: Duration,
        body_timeout: Duration,
        max_per_client: usize,
        ipv6_prefix_len: u8,
        trust: SharedTrust,
    ) -> Self {
        Self {
            header_timeout,
            body_timeout,
            max_per_client,
            ipv6_prefix_len,
            trust,
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A slot for a new connection from `peer`, or `None` when that client holds its share.
    /// Trusted proxies carry many clients' connections and are not capped.
    fn admit(self: &Arc<Self>, peer: Option<IpAddr>) -> Option<Slot> {
        let key = peer
            .filter(|ip| !self.trust.read().expect("trust lock").trusts(*ip))
            .map(|ip| client_key(ip, self.ipv6_prefix_len));
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
}

#[async_trait]
impl<A: ServerApp + Send + Sync + 'static> ServerApp for Guarded<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let peer = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let Some(_slot) = self.limits.admit(peer) else {
            crate::metrics::METRICS.connections_refused.inc();
            let reply = Refusal::new(
                429,
                "too_many_connections",
                "too many open connections from your address",
                "",
            )
            .reply(&[("retry-after", "1")]);
            // A few hundred bytes fit the socket's send buffer; a client that reads nothing
            // still cannot hold this task.
            let send = async {
                stream.write_all(&reply).await?;
                stream.flush().await
            };
            let _ = tokio::time::timeout(Duration::from_secs(1), send).await;
            pingora::protocols::Shutdown::shutdown(&mut *stream).await;
            return None;
        };
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.inner.process_new(stream, shutdown).await;
        }
        let guarded: Stream = Box::new(HeadGuard::new(stream, self.limits.clone()));
        self.inner.process_new(guarded, shutdown).await
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await
    }
}
