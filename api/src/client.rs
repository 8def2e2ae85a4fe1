//! Who the client is, as far as the API can tell.

use axum::http::HeaderMap;
use std::net::{IpAddr, SocketAddr};

/// Behind the edge the socket peer is the edge itself, so a loopback or private peer's
/// `X-Real-IP` (which the edge sets) names the client; anyone else's header is ignored.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap) -> IpAddr {
    let forwarded = headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok());
    let trusted_peer = match peer.ip() {
        IpAddr::V4(v4) => v4.is_loopback() || v4.is_private(),
        IpAddr::V6(v6) => v6.is_loopback(),
    };
    match forwarded {
        Some(ip) if trusted_peer => ip,
        _ => peer.ip(),
    }
}
