//! Whose word on the client's address we take: one rule for the edge and the API.
//!
//! A request's client is its socket peer, unless that peer is a proxy we trust; then it is the
//! address the proxy vouches for. Trusting anyone else's header would let a client pick its own
//! rate-limit and lock-out bucket. `CF-Connecting-IP` is taken only from peers listed as
//! Cloudflare's: any other proxy would pass a client's forged one through.

use http::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

/// Who a client is for rate limits and lock-outs: its IPv4 address, or its IPv6 address cut
/// to `prefix_len` bits (one host commonly holds a whole /64; v4-mapped IPv6 addresses count
/// as IPv4).
pub fn client_key(ip: IpAddr, prefix_len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u32::from(prefix_len.min(128));
                let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
                IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & mask))
            }
        },
    }
}

/// Trusted proxies (`trusted_proxies` in both configs) and, among them, Cloudflare's.
#[derive(Debug, Clone)]
pub struct ProxyTrust {
    /// The configured trusted proxies, then Cloudflare's (`named` of them configured).
    proxies: Vec<IpNet>,
    named: usize,
    cloudflare: Vec<IpNet>,
    /// Whether the trusted proxies set `X-Real-IP` themselves. One that only appends
    /// `X-Forwarded-For` (AWS ALB, HAProxy's `option forwardfor`) passes a client's own
    /// `X-Real-IP` through, which must not then name the client.
    real_ip: bool,
}

impl Default for ProxyTrust {
    fn default() -> Self {
        Self {
            proxies: Vec::new(),
            named: 0,
            cloudflare: Vec::new(),
            real_ip: true,
        }
    }
}

/// `a.b.c.d/n`, `v6/n`, or a bare address (a /32 or /128).
pub fn parse_net(raw: &str) -> Result<IpNet, String> {
    let raw = raw.trim();
    raw.parse::<IpNet>()
        .or_else(|_| raw.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{raw:?} is not an address or CIDR block"))
}

impl ProxyTrust {
    /// `cloudflare` entries are trusted proxies too.
    pub fn parse(proxies: &[String], cloudflare: &[String]) -> Result<Self, String> {
        let cloudflare = cloudflare
            .iter()
            .map(|c| parse_net(c))
            .collect::<Result<Vec<_>, _>>()?;
        let mut proxies = proxies
            .iter()
            .map(|c| parse_net(c))
            .collect::<Result<Vec<_>, _>>()?;
        let named = proxies.len();
        proxies.extend(cloudflare.iter().copied());
        Ok(Self {
            proxies,
            named,
            cloudflare,
            real_ip: true,
        })
    }

    /// The same trust, with `X-Real-IP` believed (`true`, the default) or ignored.
    pub fn with_real_ip(self, real_ip: bool) -> Self {
        Self { real_ip, ..self }
    }

    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.proxies.iter().any(|n| n.contains(&canonical(ip)))
    }

    /// Whether `ip`'s `X-Request-Id` names the request: a configured trusted proxy's, never one
    /// that is trusted only as Cloudflare's. Cloudflare passes a client's own `X-Request-Id`
    /// through, and the edge's request id is also the click's identity, stored once: a client
    /// repeating one id would have its redirects counted, and its clicks stored, once.
    pub fn names_request(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        // Cloudflare's ranges pasted into `trusted_proxies` too are still Cloudflare's.
        self.proxies[..self.named].iter().any(|n| n.contains(&ip))
            && !self.cloudflare.iter().any(|n| n.contains(&ip))
    }

    /// The client's address: the peer's, or, from a trusted peer, `CF-Connecting-IP` (Cloudflare
    /// peers only), `X-Real-IP`, or the right-most `X-Forwarded-For` hop that is not a trusted
    /// proxy.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<IpAddr>().ok())
                .map(canonical)
        };
        if self.cloudflare.iter().any(|n| n.contains(&peer)) {
            if let Some(ip) = header("cf-connecting-ip") {
                return ip;
            }
        }
        // One line only: a proxy that appends its own after a client's is no single word.
        if self.real_ip && headers.get_all("x-real-ip").iter().count() == 1 {
            if let Some(ip) = header("x-real-ip") {
                return ip;
            }
        }
        // Each hop appended the address it saw: walking from the right, the first one that is
        // not ours is the client as far as the chain can be trusted. A proxy may append a
        // header line of its own instead of extending the client's: the lines are one list, in
        // order (RFC 9110, 5.3), or the client's own line would be read as the chain. A hop
        // that is no address (`unknown`, an obfuscated name) ends the walk at the last address
        // known to be ours: skipping it would hand the choice to whatever the client wrote to
        // its left.
        let mut nearest = peer;
        for line in headers.get_all("x-forwarded-for").iter().rev() {
            let Ok(line) = line.to_str() else {
                return nearest;
            };
            for hop in line.rsplit(',').map(str::trim).filter(|h| !h.is_empty()) {
                let Some(ip) = hop_address(hop) else {
                    return nearest;
                };
                if !self.trusts(ip) {
                    return ip;
                }
                nearest = ip;
            }
        }
        nearest
    }
}

/// One `X-Forwarded-For` hop's address: bare, or with the port some balancers append
/// (`192.0.2.1:4711`, `[2001:db8::1]:4711`).
fn hop_address(hop: &str) -> Option<IpAddr> {
    let ip = match hop.parse::<IpAddr>() {
        Ok(ip) => ip,
        Err(_) => match hop.parse::<std::net::SocketAddr>() {
            Ok(addr) => addr.ip(),
            Err(_) => hop.strip_prefix('[')?.strip_suffix(']')?.parse().ok()?,
        },
    };
    Some(canonical(ip))
}

/// An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, as dual-stack sockets report IPv4 peers) as
/// the IPv4 address it is, so one rule covers both spellings.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
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

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn blocks_and_bare_addresses_parse_and_match() {
        let t = ProxyTrust::parse(&["10.1.0.0/16".into(), "::1".into()], &[]).unwrap();
        assert!(t.trusts(ip("10.1.200.3")));
        assert!(!t.trusts(ip("10.2.0.1")));
        assert!(t.trusts(ip("::1")));
        assert!(
            t.trusts(ip("::ffff:10.1.0.9")),
            "mapped IPv4 is the IPv4 address"
        );
        assert!(ProxyTrust::parse(&["10.0.0.0/33".into()], &[]).is_err());
        assert!(ProxyTrust::parse(&["nope".into()], &[]).is_err());
    }

    #[test]
    fn untrusted_peers_cannot_name_another_client() {
        let t = ProxyTrust::parse(&["10.0.0.0/8".into()], &[]).unwrap();
        let h = headers(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("x-real-ip", "1.2.3.5"),
            ("cf-connecting-ip", "5.6.7.8"),
        ]);
        // A private peer is not trusted for being private: only the list counts.
        for peer in ["203.0.113.9", "192.168.1.1", "127.0.0.1"] {
            assert_eq!(t.client_ip(ip(peer), &h), ip(peer));
        }
    }

    #[test]
    fn trusted_peers_name_the_client() {
        let t = ProxyTrust::parse(&["10.0.0.0/8".into()], &[]).unwrap();
        let peer = ip("10.0.0.2");
        let h = headers(&[("x-forwarded-for", "9.9.9.9, 198.51.100.7, 10.0.0.5")]);
        assert_eq!(t.client_ip(peer, &h), ip("198.51.100.7"));
        let h = headers(&[
            ("x-real-ip", "198.51.100.9"),
            ("x-forwarded-for", "9.9.9.9"),
        ]);
        assert_eq!(t.client_ip(peer, &h), ip("198.51.100.9"));
        assert_eq!(t.client_ip(peer, &HeaderMap::new()), peer);
    }

    #[test]
    fn x_real_ip_is_ignored_when_the_proxies_do_not_set_it_or_it_is_repeated() {
        let h = headers(&[
            ("x-real-ip", "6.6.6.6"),
            ("x-forwarded-for", "6.6.6.6, 198.51.100.7"),
        ]);
        let trust = ProxyTrust::parse(&["10.0.0.0/8".into()], &[]).unwrap();
        assert_eq!(trust.client_ip(ip("10.0.0.1"), &h), ip("6.6.6.6"));
        let trust = trust.with_real_ip(false);
        assert_eq!(trust.client_ip(ip("10.0.0.1"), &h), ip("198.51.100.7"));
        let trust = trust.with_real_ip(true);
        let mut h = h;
        h.append("x-real-ip", "198.51.100.7".parse().unwrap());
        assert_eq!(trust.client_ip(ip("10.0.0.1"), &h), ip("198.51.100.7"));
    }

    #[test]
    fn forwarded_for_lines_are_one_list() {
        let trust = ProxyTrust::parse(&["10.0.0.0/8".into()], &[]).unwrap();
        let mut h = HeaderMap::new();
        // The client's forged line first, then the line its trusted proxy added.
        h.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.append("x-forwarded-for", "198.51.100.7, 10.0.0.5".parse().unwrap());
        assert_eq!(trust.client_ip(ip("10.0.0.1"), &h), ip("198.51.100.7"));
    }

    #[test]
    fn a_hop_with_a_port_counts_and_one_that_is_no_address_ends_the_walk() {
        let trust = ProxyTrust::parse(&["10.0.0.0/8".into()], &[]).unwrap();
        let peer = ip("10.0.0.1");
        // Balancers that append the client's port: the address still counts.
        for chain in [
            "6.6.6.6, 198.51.100.7:4711",
            "6.6.6.6, [2001:db8::7]:4711",
            "6.6.6.6, [2001:db8::7]",
        ] {
            let want = if chain.contains("2001") {
                ip("2001:db8::7")
            } else {
                ip("198.51.100.7")
            };
            let h = headers(&[("x-forwarded-for", chain)]);
            assert_eq!(trust.client_ip(peer, &h), want, "{chain}");
        }
        // A hop our proxy could not name: what the client wrote to its left is not believed;
        // the nearest proxy of ours stands for the client.
        let h = headers(&[("x-forwarded-for", "6.6.6.6, unknown")]);
        assert_eq!(trust.client_ip(peer, &h), peer);
        let h = headers(&[("x-forwarded-for", "6.6.6.6, unknown, 10.0.0.5")]);
        assert_eq!(trust.client_ip(peer, &h), ip("10.0.0.5"));
        // An empty item carries nothing: skipped, not an end.
        let h = headers(&[("x-forwarded-for", "198.51.100.7, ")]);
        assert_eq!(trust.client_ip(peer, &h), ip("198.51.100.7"));
    }

    #[test]
    fn cf_connecting_ip_counts_from_cloudflare_peers_only() {
        let t = ProxyTrust::parse(&["10.0.0.0/8".into()], &["173.245.48.0/20".into()]).unwrap();
        let h = headers(&[
            ("cf-connecting-ip", "198.51.100.8"),
            ("x-forwarded-for", "203.0.113.1"),
        ]);
        assert_eq!(t.client_ip(ip("173.245.48.5"), &h), ip("198.51.100.8"));
        // An internal proxy passes a client's forged header through: not believed.
        assert_eq!(t.client_ip(ip("10.0.0.2"), &h), ip("203.0.113.1"));
    }

    #[test]
    fn a_request_id_is_believed_from_configured_proxies_not_from_cloudflare() {
        let t = ProxyTrust::parse(&["10.0.0.0/8".into()], &["173.245.48.0/20".into()]).unwrap();
        assert!(t.names_request(ip("10.1.2.3")));
        assert!(t.trusts(ip("173.245.48.5")));
        assert!(!t.names_request(ip("173.245.48.5")));
        assert!(!t.names_request(ip("198.51.100.1")));
        assert!(!ProxyTrust::default().names_request(ip("127.0.0.1")));
        let both = ProxyTrust::parse(
            &["10.0.0.0/8".into(), "173.245.48.0/20".into()],
            &["173.245.48.0/20".into()],
        )
        .unwrap();
        assert!(!both.names_request(ip("173.245.48.5")));
        assert!(both.names_request(ip("10.1.2.3")));
    }
}
