//! What a request is, from its method and path: its route class and, for a redirect, its code.

use crate::rate_limit::Class;
use kurz_common::shortcode;
use pingora::http::RequestHeader;

/// Route class of a request, for rate limits and metrics.
pub(super) fn classify(method: &http::Method, path: &str) -> Class {
    if path.starts_with("/auth/") || path == "/auth" || path.starts_with("/api/auth") {
        return Class::Auth;
    }
    // The web app's log-in and sign-up forms: password guesses, limited like `/auth/*`.
    if method == http::Method::POST && (path == "/login" || path == "/register") {
        return Class::Auth;
    }
    if method == http::Method::GET || method == http::Method::HEAD {
        if redirect_code(path).is_some() {
            return Class::Redirect;
        }
        return Class::Read;
    }
    if method == http::Method::OPTIONS {
        return Class::Read;
    }
    // The password of a protected link: a guess, rate-limited like a login.
    if method == http::Method::POST && redirect_code(path).is_some() {
        return Class::Auth;
    }
    Class::Write
}

/// The path with its percent-escapes decoded, as the API's router decodes a code before it
/// matches one: `/%61bc1234` is `/abc1234`'s redirect, and a password posted to it is a guess in
/// the `auth` class, not a write. An escaped path gets the class its unescaped twin gets, never
/// a looser one than that (no class is chosen by a path with `%` in it): a GET of an escaped
/// code moves from `read` to `redirect`, as the plain code's GET is. A path with a broken
/// escape, or that decodes to bytes that are not UTF-8, is classified as it came.
pub(super) fn decoded_path(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains('%') {
        return path.into();
    }
    let hex = |b: u8| (b as char).to_digit(16);
    let raw = path.as_bytes();
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            match (
                raw.get(i + 1).and_then(|&b| hex(b)),
                raw.get(i + 2).and_then(|&b| hex(b)),
            ) {
                (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                _ => return path.into(),
            }
            i += 3;
        } else {
            out.push(raw[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_or(path.into(), Into::into)
}

/// The code of a redirect path: one code-shaped segment that is not a reserved route.
pub(super) fn redirect_code(path: &str) -> Option<&str> {
    let code = path.strip_prefix('/')?;
    (shortcode::is_code_shaped(code) && !shortcode::is_reserved(code)).then_some(code)
}

/// Whether a request that failed at its upstream after it was sent may go again: reads, a `PUT`
/// (the same body leaves the same state and answer), and a create carrying an
/// `Idempotency-Key` on the routes whose handler honours the key (the API answers a repeat with
/// the first answer). A key on any other route guards nothing there, and replaying it could
/// write twice.
///
/// A `DELETE` is idempotent in its effect, not in its answer: a replay of a delete the first
/// upstream committed answers 404, telling the client the link it just deleted never existed.
/// `PUT /auth/password` is idempotent by its method only: once an API has stored the new
/// password, the same body's `current_password` is wrong, and a replay would answer 403, count
/// a failed guess against the user, and tell them the change they made failed.
pub(super) fn replay_safe(method: &http::Method, path: &str, has_key: bool) -> bool {
    method.is_safe()
        || (method == http::Method::PUT
            && !path.starts_with("/auth/")
            && !path.starts_with("/api/auth/"))
        || (has_key && method == http::Method::POST && matches!(path, "/urls" | "/links/create"))
}

/// The host of a `Host` header without its port, for the HTTP→HTTPS redirect: a DNS name or
/// IPv4 address, or a bracketed IPv6 address; `None` for anything else (empty, a port that is
/// not digits, characters no host has), which would make a broken or foreign `Location`.
pub(super) fn https_host(host: &str) -> Option<&str> {
    let (name, port) = if host.starts_with('[') {
        let end = host.find(']')? + 1;
        let inner = &host[1..end - 1];
        if inner.is_empty()
            || !inner
                .bytes()
                .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return None;
        }
        (&host[..end], &host[end..])
    } else {
        let end = host.find(':').unwrap_or(host.len());
        let name = &host[..end];
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            return None;
        }
        (name, &host[end..])
    };
    // `port = *DIGIT` (RFC 3986): `host:` is a host with an empty port.
    let port_ok = port.is_empty()
        || port
            .strip_prefix(':')
            .is_some_and(|p| p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    port_ok.then_some(name)
}

/// Where the HTTP→HTTPS redirect sends a request: the same path and query on `host`. An
/// `OPTIONS *` has no path: `/`, not `https://host*`.
pub(super) fn https_target(host: &str, target: Option<&http::uri::PathAndQuery>) -> String {
    let path = target
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/");
    format!("https://{host}{path}")
}

pub(super) fn header<'a>(req: &'a RequestHeader, name: &str) -> &'a str {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// Whether a `Connection` header of `req` names `name` (a header the client made hop-by-hop,
/// which is not sent upstream).
pub(super) fn connection_names(req: &RequestHeader, name: &str) -> bool {
    req.headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_named_in_connection_is_found_in_any_of_them() {
        let mut req = RequestHeader::build("POST", b"/urls", None).unwrap();
        assert!(!connection_names(&req, "idempotency-key"));
        req.append_header("connection", "keep-alive").unwrap();
        req.append_header("connection", "x-a ,  Idempotency-Key")
            .unwrap();
        assert!(connection_names(&req, "idempotency-key"));
        assert!(!connection_names(&req, "idempotency"));
    }

    #[test]
    fn routes_are_classified() {
        use http::Method;
        assert_eq!(classify(&Method::GET, "/abc1234"), Class::Redirect);
        for (raw, decoded) in [
            ("/%61bc1234", "/abc1234"),
            ("/%61%62c1234", "/abc1234"),
            ("/auth%2Flogin", "/auth/login"),
            ("/urls", "/urls"),
            ("/%zz1234", "/%zz1234"),
            ("/%6", "/%6"),
            ("/%ff%fe", "/%ff%fe"),
            ("/%+1", "/%+1"),
        ] {
            assert_eq!(decoded_path(raw), decoded, "{raw}");
        }
        assert_eq!(
            classify(&Method::POST, &decoded_path("/%61bc1234")),
            Class::Auth
        );
        assert_eq!(
            classify(&Method::GET, &decoded_path("/%61bc1234")),
            Class::Redirect
        );
        assert_eq!(classify(&Method::HEAD, "/abc1234"), Class::Redirect);
        assert_eq!(classify(&Method::GET, "/users"), Class::Read);
        assert_eq!(classify(&Method::GET, "/health"), Class::Read);
        assert_eq!(classify(&Method::GET, "/urls/1"), Class::Read);
        assert_eq!(classify(&Method::POST, "/urls"), Class::Write);
        assert_eq!(classify(&Method::POST, "/auth/login"), Class::Auth);
        assert_eq!(classify(&Method::POST, "/login"), Class::Auth);
        assert_eq!(classify(&Method::POST, "/register"), Class::Auth);
        assert_eq!(classify(&Method::GET, "/login"), Class::Read);
        assert_eq!(classify(&Method::GET, "/"), Class::Read);
        assert_eq!(classify(&Method::POST, "/ui/shorten"), Class::Write);
        assert_eq!(classify(&Method::POST, "/api/auth/login"), Class::Auth);
        assert_eq!(classify(&Method::POST, "/abc1234"), Class::Auth);
        assert_eq!(classify(&Method::PUT, "/abc1234"), Class::Write);
        assert_eq!(classify(&Method::GET, "/ab"), Class::Read);
    }

    #[test]
    fn the_https_redirect_keeps_the_path_and_query_and_never_appends_a_star() {
        let target = |raw: &str| {
            let uri: http::Uri = raw.parse().unwrap();
            https_target("short.example", uri.path_and_query())
        };
        assert_eq!(target("/abc?x=1"), "https://short.example/abc?x=1");
        assert_eq!(target("*"), "https://short.example/");
        assert_eq!(target("http://other.example/p"), "https://short.example/p");
    }

    #[test]
    fn only_routes_that_honour_the_key_replay_a_keyed_post() {
        use http::Method;
        assert!(replay_safe(&Method::GET, "/urls", false));
        assert!(replay_safe(&Method::PUT, "/urls/1", false));
        assert!(!replay_safe(&Method::DELETE, "/urls/1", false));
        assert!(!replay_safe(&Method::PUT, "/auth/password", false));
        assert!(!replay_safe(&Method::PUT, "/api/auth/password", false));
        assert!(replay_safe(&Method::GET, "/auth/me", false));
        assert!(replay_safe(&Method::POST, "/urls", true));
        assert!(replay_safe(&Method::POST, "/links/create", true));
        assert!(!replay_safe(&Method::POST, "/urls", false));
        for path in [
            "/events",
            "/users",
            "/urls/bulk",
            "/auth/keys",
            "/urls/import",
        ] {
            assert!(!replay_safe(&Method::POST, path, true), "{path}");
        }
        assert!(!replay_safe(&Method::PATCH, "/urls", true));
    }

    #[test]
    fn the_https_redirect_keeps_only_a_well_formed_host() {
        assert_eq!(https_host("example.com"), Some("example.com"));
        assert_eq!(https_host("example.com:8080"), Some("example.com"));
        assert_eq!(https_host("127.0.0.1:80"), Some("127.0.0.1"));
        assert_eq!(https_host("[2001:db8::1]:80"), Some("[2001:db8::1]"));
        assert_eq!(https_host("[::1]"), Some("[::1]"));
        assert_eq!(https_host("kurz_edge:8080"), Some("kurz_edge"));
        assert_eq!(https_host("example.com:"), Some("example.com"));
        for bad in [
            "",
            ":80",
            "evil.example/@x",
            "a b",
            "example.com:8o",
            "example.com:123456",
            "[2001:db8::1",
            "[]:80",
            "[::1]x",
            "user@example.com",
        ] {
            assert_eq!(https_host(bad), None, "{bad:?}");
        }
    }
}
