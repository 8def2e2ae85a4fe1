//! What a link may point to: absolute `http`/`https` URLs with a host, at most 2048 bytes, not
//! the service's own host (a redirect loop).

use std::net::IpAddr;
use url::{Host, Url};

/// The service's rules on top of [`validate`]'s shape checks.
#[derive(Debug, Clone, Default)]
pub struct TargetPolicy {
    /// Hosts this service answers on: a link there would redirect to itself.
    pub own_hosts: Vec<String>,
    /// Refused hosts; each also refuses its subdomains.
    pub deny_hosts: Vec<String>,
    /// Whether loopback, private, link-local and unspecified addresses (and `localhost`) may
    /// be targets. Off in production: such links point users at their own network.
    pub allow_private: bool,
}

impl TargetPolicy {
    /// Shape and policy checks together; the error is for a person.
    pub fn check(&self, raw: &str) -> Result<(), String> {
        validate(raw, &self.own_hosts)?;
        let url =
            Url::parse(raw).map_err(|_| "must be an absolute http or https URL".to_owned())?;
        let host = url.host_str().unwrap_or("").to_ascii_lowercase();
        if self
            .deny_hosts
            .iter()
            .any(|d| host == *d || host.ends_with(&format!(".{d}")))
        {
            return Err(format!("host {host:?} is not allowed as a target"));
        }
        if !self.allow_private {
            let private = match url.host() {
                Some(Host::Ipv4(ip)) => is_private(IpAddr::V4(ip)),
                Some(Host::Ipv6(ip)) => is_private(IpAddr::V6(ip)),
                Some(Host::Domain(d)) => {
                    d.eq_ignore_ascii_case("localhost")
                        || d.to_ascii_lowercase().ends_with(".localhost")
                }
                None => false,
            };
            if private {
                return Err("must not point at a private, loopback or link-local address".into());
            }
        }
        Ok(())
    }
}

fn is_private(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || (v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64) // 100.64/10 carrier NAT
        }
        IpAddr::V6(v6) => {
            let seg = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || (seg[0] & 0xfe00) == 0xfc00
                || (seg[0] & 0xffc0) == 0xfe80
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4| is_private(IpAddr::V4(v4)))
        }
    }
}

/// Longest target we store; longer URLs break browsers and proxies anyway.
pub const MAX_LEN: usize = 2048;

/// Checks a target, returning the reason a person can act on.
///
/// `own_hosts` are the hosts this service answers on (from `BASE_URL`); a link to one of them
/// would redirect to kurz itself.
pub fn validate(raw: &str, own_hosts: &[String]) -> Result<(), String> {
    if raw.len() > MAX_LEN {
        return Err(format!("must be at most {MAX_LEN} bytes"));
    }
    if raw.trim() != raw || raw.is_empty() {
        return Err("must be an absolute http or https URL without surrounding spaces".into());
    }
    let url = Url::parse(raw).map_err(|_| "must be an absolute http or https URL".to_owned())?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(format!(
            "scheme {:?} is not allowed: use http or https",
            url.scheme()
        ));
    }
    let host = match url.host_str() {
        Some(h) if !h.is_empty() => h.to_ascii_lowercase(),
        _ => return Err("must have a host".into()),
    };
    if own_hosts.iter().any(|own| own.eq_ignore_ascii_case(&host)) {
        return Err("must not point at this service itself (redirect loop)".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_refuses_denied_hosts_and_private_addresses() {
        let p = TargetPolicy {
            own_hosts: vec![],
            deny_hosts: vec!["evil.example".into()],
            allow_private: false,
        };
        assert!(p.check("https://evil.example/x").is_err());
        assert!(p.check("https://cdn.evil.example/x").is_err());
        assert!(p.check("https://notevil.example/x").is_ok());
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
            assert!(p.check(private).is_err(), "{private}");
        }
        assert!(p.check("http://8.8.8.8/").is_ok());
        let open = TargetPolicy {
            allow_private: true,
            ..p
        };
        assert!(open.check("http://127.0.0.1/").is_ok());
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
}
