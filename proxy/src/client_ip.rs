//! Who the client is: the socket peer, unless the peer is a trusted proxy, in which case the
//! proxy's `CF-Connecting-IP` or the right-most untrusted `X-Forwarded-For` entry.
//!
//! Anything else would let a client pick its own rate-limit bucket by sending a header.

use http::HeaderMap;
use std::net::IpAddr;

/// An address block such as `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `a.b.c.d/n`, `v6/n`, or a bare address (a /32 or /128).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (addr, prefix) = match raw.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (raw, None),
        };
        let net: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{raw:?} is not an address or CIDR"))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{raw:?} has a bad prefix length"))?,
        };
        Ok(Self { net, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn trusted(ip: IpAddr, proxies: &[Cidr]) -> bool {
    proxies.iter().any(|c| c.contains(ip))
}

/// The client address for rate limiting and logs.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, proxies: &[Cidr]) -> IpAddr {
    if !trusted(peer, proxies) {
        return peer;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ip) = header("cf-connecting-ip").and_then(|v| v.trim().parse().ok()) {
        return ip;
    }
    if let Some(xff) = header("x-forwarded-for") {
        // Walk from the right: each hop appended the address it saw; the first one not ours is
        // the client as far as we can trust the chain.
        let hops: Vec<IpAddr> = xff
            .split(',')
            .filter_map(|h| h.trim().parse().ok())
            .collect();
        if let Some(ip) = hops.iter().rev().find(|ip| !trusted(**ip, proxies)) {
            return *ip;
        }
        if let Some(first) = hops.first() {
            return *first;
        }
    }
    peer
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cidrs_match_their_block_only() {
        let c = Cidr::parse("10.1.0.0/16").unwrap();
        assert!(c.contains("10.1.200.3".parse().unwrap()));
        assert!(!c.contains("10.2.0.1".parse().unwrap()));
        assert!(Cidr::parse("::1").unwrap().contains("::1".parse().unwrap()));
        assert!(Cidr::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Cidr::parse("10.0.0.0/33").is_err());
        assert!(Cidr::parse("nope").is_err());
    }

    #[test]
    fn untrusted_peers_cannot_spoof_their_address() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("cf-connecting-ip", "5.6.7.8"),
        ]);
        assert_eq!(
            client_ip(peer, &h, &[Cidr::parse("10.0.0.0/8").unwrap()]),
            peer
        );
    }

    #[test]
    fn trusted_peers_name_the_client() {
        let proxies = [Cidr::parse("10.0.0.0/8").unwrap()];
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let h = headers(&[("x-forwarded-for", "9.9.9.9, 198.51.100.7, 10.0.0.5")]);
        assert_eq!(
            client_ip(peer, &h, &proxies),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        let h = headers(&[("cf-connecting-ip", "198.51.100.8")]);
        assert_eq!(
            client_ip(peer, &h, &proxies),
            "198.51.100.8".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(peer, &HeaderMap::new(), &proxies), peer);
    }
}
