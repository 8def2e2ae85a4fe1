//! The HTTPS listeners' TLS handshake, run by the connection layer instead of Pingora's
//! listener. Pingora shakes hands before `process_new`, under a fixed 60 s and outside the
//! per-client connection cap: one address could hold any number of silent connections to the
//! TLS port for a minute each. Here the connection is counted from accept, and its handshake
//! must finish within `limits.header_timeout_ms`.

use crate::metrics::METRICS;
use pingora::listeners::tls::{Acceptor, TlsSettings};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The addresses that speak TLS and how to shake hands on them.
pub struct TlsListeners {
    acceptor: Acceptor,
    addrs: Vec<SocketAddr>,
}

impl TlsListeners {
    /// `addrs` are `listen.https`, checked as `ip:port` by the config's validation.
    pub fn new(settings: TlsSettings, addrs: &[String]) -> Result<Self, String> {
        let addrs = addrs
            .iter()
            .map(|a| {
                a.parse()
                    .map_err(|_| format!("config key `listen.https` has {a:?}, not an ip:port"))
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            acceptor: settings.build(),
            addrs,
        })
    }

    /// Whether `stream` came in on an HTTPS listener.
    pub fn serves(&self, stream: &Stream) -> bool {
        stream
            .get_socket_digest()
            .and_then(|d| d.local_addr().and_then(|a| a.as_inet()).copied())
            .is_some_and(|local| listens_on(&self.addrs, local))
    }

    /// The TLS stream over `stream`, or `None` when the handshake failed or took longer than
    /// `within`.
    pub async fn handshake(&self, stream: Stream, within: Duration) -> Option<Stream> {
        let shaken = tokio::time::timeout(within, self.acceptor.tls_handshake(Plain(stream))).await;
        if let Ok(Ok(tls)) = shaken {
            return Some(Box::new(tls));
        }
        // Counted, so a flood of unfinished handshakes shows beside the other refusals.
        METRICS
            .heads_rejected
            .with_label_values(&["tls_handshake"])
            .inc();
        if let Ok(Err(e)) = shaken {
            // A client that gave up, or does not trust the certificate: not ours to log loud.
            log::debug!(error = e.to_string(); "TLS handshake failed");
        }
        None
    }
}

/// Whether a connection to `local` came through one of the HTTPS listeners. A wildcard
/// listener takes its own family's addresses, and an IPv6 one IPv4's too (as v4-mapped
/// addresses); an IPv4 wildcard never takes IPv6, which the config's overlap check lets
/// an HTTP listener have on the same port.
fn listens_on(addrs: &[SocketAddr], local: SocketAddr) -> bool {
    let v4 = match local.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some(),
        std::net::IpAddr::V4(_) => true,
    };
    addrs.iter().any(|l| {
        l.port() == local.port()
            && (l.ip() == local.ip() || (l.ip().is_unspecified() && (l.is_ipv6() || v4)))
    })
}

/// A boxed stream as the concrete stream type the TLS acceptor takes.
#[derive(Debug)]
struct Plain(Stream);

impl AsyncRead for Plain {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Plain {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[async_trait::async_trait]
impl Shutdown for Plain {
    async fn shutdown(&mut self) {
        self.0.shutdown().await
    }
}

impl UniqueID for Plain {
    fn id(&self) -> UniqueIDType {
        self.0.id()
    }
}

impl Ssl for Plain {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.0.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.0.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.0.selected_alpn_proto()
    }
}

impl GetTimingDigest for Plain {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.0.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.0.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.0.get_write_pending_time()
    }
}

impl GetProxyDigest for Plain {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.0.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.0.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for Plain {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.0.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.0.set_socket_digest(digest)
    }
}

// The handshake reads the ClientHello itself; nothing peeks.
impl Peek for Plain {}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether listeners on `addrs` take a connection to `local` as TLS.
    fn tls(addrs: &[&str], local: &str) -> bool {
        let addrs: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
        listens_on(&addrs, local.parse().unwrap())
    }

    #[test]
    fn a_connection_is_tls_only_on_an_https_listeners_address_and_family() {
        let v4_any = ["0.0.0.0:8443"];
        assert!(tls(&v4_any, "10.0.0.5:8443"));
        assert!(!tls(&v4_any, "10.0.0.5:8080"));
        // An HTTP listener on [::1]:8443 beside it: plain HTTP, no handshake.
        assert!(!tls(&v4_any, "[::1]:8443"));
        let v6_any = ["[::]:8443"];
        assert!(tls(&v6_any, "[::1]:8443"));
        assert!(tls(&v6_any, "[::ffff:10.0.0.5]:8443"));
        let one = ["127.0.0.1:8443"];
        assert!(tls(&one, "127.0.0.1:8443"));
        assert!(!tls(&one, "127.0.0.2:8443"));
    }
}
