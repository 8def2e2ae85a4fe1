//! What a link may point to: absolute `http`/`https` URLs with a host, at most 2048 bytes, not
//! the service's own host (a redirect loop), not a private address unless allowed.
//!
//! A [`Target`] exists only after these checks and holds the URL in its normalised form (the
//! WHATWG serialisation: percent-encoded, punycode host, canonical IPv4): what is stored is what
//! the `Location` header carries, so every accepted target redirects. Input the parser would
//! silently repair in a surprising way (tabs and newlines are dropped by WHATWG parsing, `http:x`
//! gains its slashes) is refused instead, with the reason.

use std::net::IpAddr;
use url::{Host, Url};

/// A checked, normalised link target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target(String);

impl Target {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The service's rules on top of the shape checks.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    /// Hosts this service answers on: a link there would redirect to itself. Normalised.
    own_hosts: Vec<String>,
    /// Refused hosts; each also refuses its subdomains. Normalised.
    deny_hosts: Vec<String>,
    /// Whether loopback, private, link-local and unspecified addresses (and `localhost`) may
    /// be targets. Off in production: such links point users at their own network.
    allow_private: bool,
}

impl TargetPolicy {
    /// The hosts are normalised here, once: an import checks up to 100,000 targets against a
    /// deny list that may hold thousands of hosts. A host that is no host name drops out.
    pub fn new(own_hosts: &[String], deny_hosts: &[String], allow_private: bool) -> Self {
        let normal = |hosts: &[String]| hosts.iter().filter_map(|h| normal_host(h)).collect();
        Self {
            own_hosts: normal(own_hosts),
            deny_hosts: normal(deny_hosts),
            allow_private,
        }
    }

    /// Shape and policy checks together; the error is for a person.
    pub fn parse(&self, raw: &str) -> Result<Target, String> {
        let url = parse_web_url(raw)?;
        let host = match url.host() {
            Some(Host::Domain(d)) => d.to_owned(),
            Some(Host::Ipv4(ip)) => ip.to_string(),
            Some(Host::Ipv6(ip)) => ip.to_string(),
            None => return Err("must have a host".into()),
        };
        if self.own_hosts.contains(&host) {
            return Err("must not point at this service itself (redirect loop)".into());
        }
        if self.deny_hosts.iter().any(|d| {
            host.strip_suffix(d.as_str())
                .is_some_and(|sub| sub.is_empty() || sub.ends_with('.'))
        }) {
            return Err(format!("host {host:?} is not allowed as a target"));
        }
        if !self.allow_private {
            let private = match url.host() {
                Some(Host::Ipv4(ip)) => is_private(IpAddr::V4(ip)),
                Some(Host::Ipv6(ip)) => is_private(IpAddr::V6(ip)),
                Some(Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
                None => false,
            };
            if private {
                return Err("must not point at a private, loopback or link-local address".into());
            }
        }
        Ok(Target(url.into()))
    }
}

/// A host name as the URL parser normalises it (lower case, punycode), for comparisons.
fn normal_host(host: &str) -> Option<String> {
    match Host::parse(host.trim_end_matches('.')).ok()? {
        Host::Domain(d) => Some(d),
        Host::Ipv4(ip) => Some(ip.to_string()),
        Host::Ipv6(ip) => Some(ip.to_string()),
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0 // "this network": 0.x.y.z reaches the host itself on Linux
                || (a == 100 && (b & 0xc0) == 64) // 100.64/10 carrier NAT
                || (a == 198 && (b & 0xfe) == 18) // 198.18/15 benchmarking
                || a >= 240 // 240/4 reserved
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
                || embedded_v4(v6).is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

/// The IPv4 address an IPv6 one carries, by the forms that reach it: mapped (`::ffff:a.b.c.d`),
/// compatible (`::a.b.c.d`), translated (`::ffff:0:a.b.c.d`), NAT64 (`64:ff9b::a.b.c.d`) and
/// 6to4 (`2002:aabb:ccdd::`).
fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let seg = v6.segments();
    let low = |hi: u16, lo: u16| std::net::Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if let Some(v4) = v6.to_ipv4_mapped().or_else(|| v6.to_ipv4()) {
        return Some(v4);
    }
    match seg {
        [0, 0, 0, 0, 0xffff, 0, hi, lo] => Some(low(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        _ => None,
    }
}

/// Longest target we store; longer URLs break browsers and proxies anyway.
pub const MAX_LEN: usize = 2048;

/// The shape checks: an absolute http(s) URL with a host, written out in full, no control
/// characters, no credentials, no empty host labels; at most [`MAX_LEN`] once normalised.
fn parse_web_url(raw: &str) -> Result<Url, String> {
    if raw.len() > MAX_LEN {
        return Err(format!("must be at most {MAX_LEN} bytes"));
    }
    if raw.chars().any(char::is_control) {
        return Err("must not contain control characters (newlines, tabs, NUL...)".into());
    }
    if raw.trim() != raw || raw.is_empty() {
        return Err("must be an absolute http or https URL without surrounding spaces".into());
    }
    let lower = raw.get(..8).unwrap_or(raw).to_ascii_lowercase();
    if !lower.starts_with("http://") && !lower.starts_with("https://") {
        return Err(match raw.split_once(':') {
            Some((scheme, _))
                if !scheme.eq_ignore_ascii_case("http")
                    && !scheme.eq_ignore_ascii_case("https") =>
            {
                format!("scheme {scheme:?} is not allowed: use http or https")
            }
            _ => "must be an absolute http or https URL (starting with http:// or https://)".into(),
        });
    }
    let url =
        Url::parse(raw).map_err(|e| format!("must be an absolute http or https URL ({e})"))?;
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not contain a user name or password (user@host)".into());
    }
    match url.host() {
        Some(Host::Domain(d)) if d.is_empty() || d.split('.').any(str::is_empty) => {
            return Err("host must not have empty labels (`a..b`, a trailing dot)".into())
        }
        None => return Err("must have a host".into()),
        _ => {}
    }
    if url.as_str().len() > MAX_LEN {
        return Err(format!("must be at most {MAX_LEN} bytes once encoded"));
    }
    Ok(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Shape checks only: private addresses allowed, no denied hosts.
    fn validate(raw: &str, own_hosts: &[String]) -> Result<Target, String> {
        TargetPolicy::new(own_hosts, &[], true).parse(raw)
    }

    fn strict() -> TargetPolicy {
        TargetPolicy::new(
            &["kurz.example".into(), "127.0.0.1:8080".into()],
            &[],
            false,
        )
    }

    #[test]
    fn control_characters_are_refused_not_stored() {
        for bad in [
            "https://example.com/a\nb",
            "https://example.com/a\rb",
            "https://example.com/a\u{1}b",
            "https://example.com/a\u{7f}b",
            "https://example.com/a\tb",
            "https://example.com/\r\nSet-Cookie: x=1",
            "https://example.com/\0",
        ] {
            let why = validate(bad, &[]).unwrap_err();
            assert!(why.contains("control"), "{bad:?}: {why}");
        }
    }

    #[test]
    fn accepted_targets_are_stored_normalised_and_header_safe() {
        for (raw, stored) in [
            ("https://example.com/a b", "https://example.com/a%20b"),
            ("https://EXAMPLE.com", "https://example.com/"),
            (
                "https://bücher.example/ä",
                "https://xn--bcher-kva.example/%C3%A4",
            ),
            (
                "HTTPS://example.com/x?q=ü",
                "https://example.com/x?q=%C3%BC",
            ),
        ] {
            let t = validate(raw, &[]).unwrap();
            assert_eq!(t.as_str(), stored);
            assert!(http::HeaderValue::from_str(t.as_str()).is_ok());
        }
        for bad in [
            "http:example.com",
            "https://example..com/",
            "https:/example.com",
        ] {
            assert!(validate(bad, &[]).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_pentesters_private_address_list_is_refused() {
        let p = strict();
        for bad in [
            "http://LOCALHOST./",
            "http://localhost.:18080/",
            "http://localhost/",
            "http://api.localhost/",
            "http://127.1/",
            "http://0x7f000001/",
            "http://2130706433/",
            "http://017700000001/",
            "http://0/",
            "http://0.0.0.0:80/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://[::127.0.0.1]/",
            "http://[::1]/",
            "http://[::]/",
            "http://169.254.169.254/latest/meta-data",
            "http://example.com@127.0.0.1/",
            "http://user:pass@example.com/",
            "https://kurz.example/x",
            "https://KURZ.EXAMPLE:443/x",
            "https://kurz.example./x",
            "http://127.0.0.1:8080/abc",
            // The IPv4 loopback in the IPv6 forms that carry an IPv4 address.
            "http://[::ffff:0:7f00:1]/",
            "http://[64:ff9b::7f00:1]/",
            "http://[2002:7f00:1::]/",
            // Multicast, benchmarking and reserved ranges.
            "http://224.0.0.1/",
            "http://[ff02::1]/",
            "http://198.18.0.1/",
            "http://240.0.0.1/",
        ] {
            assert!(p.parse(bad).is_err(), "{bad} accepted");
        }
        // Public addresses in the same forms still pass.
        for good in [
            "http://[64:ff9b::808:808]/",
            "http://[2002:808:808::]/",
            "http://198.20.0.1/",
            "http://223.255.0.1/",
        ] {
            assert!(p.parse(good).is_ok(), "{good} refused");
        }
        // A homograph is stored as the punycode it really is, never as the host it imitates.
        let homograph = p.parse("https://kurz.exаmple/x").unwrap();
        assert!(homograph.as_str().contains("xn--"), "{homograph}");
        assert!(p.parse("https://example.com/ok").is_ok());
    }

    #[test]
    fn policy_refuses_denied_hosts_and_private_addresses() {
        let p = TargetPolicy::new(
            &[],
            &["evil.example".into(), "BÜCHER.Example.".into()],
            false,
        );
        assert!(p.parse("https://evil.example/x").is_err());
        assert!(p.parse("https://shop.xn--bcher-kva.example/x").is_err());
        assert!(p.parse("https://bücher.example/x").is_err());
        assert!(p.parse("https://xbücher.example/x").is_ok());
        assert!(p.parse("https://cdn.evil.example/x").is_err());
        assert!(p.parse("https://notevil.example/x").is_ok());
        for private in [
            "http://127.0.0.1/",
            "http://10.1.2.3/",
            "http://192.168.0.1:8080/",
            "http://169.254.169.254/latest",
            "http://[::1]/",
            "http://[fd00::1]/",
            "http://localhost:3000/",
            "http://0.0.0.0/",
            "http://[::ffff:10.0.0.1]/",
        ] {
            assert!(p.parse(private).is_err(), "{private}");
        }
        assert!(p.parse("http://8.8.8.8/").is_ok());
        let open = TargetPolicy {
            allow_private: true,
            ..p
        };
        assert!(open.parse("http://127.0.0.1/").is_ok());
    }

    #[test]
    fn accepts_plain_web_urls() {
        assert!(validate("https://example.com/a?b=c#d", &[]).is_ok());
        assert!(validate("http://127.0.0.1:8080/x", &[]).is_ok());
    }

    #[test]
    fn refuses_what_is_not_a_web_url() {
        for bad in [
            "hello",
            "example.com",
            "ftp://example.com",
            "javascript:alert(1)",
            "data:text/html,x",
            "file:///etc/passwd",
            "http://",
            " https://a.b",
            "",
        ] {
            assert!(validate(bad, &[]).is_err(), "{bad} accepted");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_LEN));
        assert!(validate(&long, &[]).unwrap_err().contains("2048"));
    }

    #[test]
    fn refuses_the_service_itself() {
        let own = vec!["kurz.example".to_owned()];
        assert!(validate("https://KURZ.example/abc", &own).is_err());
        assert!(validate("https://other.example/abc", &own).is_ok());
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Strings that look like URLs often enough to reach every branch: a scheme-ish prefix,
        /// a host-ish middle, then anything (controls, non-ASCII, spaces, `@`, dots, brackets).
        fn urlish() -> impl Strategy<Value = String> {
            (
                prop_oneof![
                    Just("http://"),
                    Just("https://"),
                    Just("HTTP://"),
                    Just("http:"),
                    Just("ftp://"),
                    Just("")
                ],
                "[a-zA-Z0-9.\\-\\[\\]:@%]{0,24}",
                any::<String>(),
            )
                .prop_map(|(a, b, c)| format!("{a}{b}{c}"))
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Any input is refused, or becomes a target that is its own normal form, fits a
            /// `Location` header and the length limit, and passes the policy again.
            #[test]
            fn a_target_is_refused_or_round_trips(raw in prop_oneof![urlish(), any::<String>()]) {
                let p = TargetPolicy::new(&["kurz.example".into()], &[], false);
                if let Ok(t) = p.parse(&raw) {
                    prop_assert!(http::HeaderValue::from_str(t.as_str()).is_ok(), "{t}");
                    prop_assert!(t.as_str().len() <= MAX_LEN);
                    prop_assert!(!t.as_str().chars().any(char::is_control));
                    prop_assert_eq!(p.parse(t.as_str()), Ok(t.clone()));
                }
            }
        }
    }
}
