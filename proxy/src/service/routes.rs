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

/// The code of a redirect path: one code-shaped segment that is not a reserved route.
pub(super) fn redirect_code(path: &str) -> Option<&str> {
    let code = path.strip_prefix('/')?;
    (shortcode::is_code_shaped(code) && !shortcode::is_reserved(code)).then_some(code)
}

pub(super) fn header<'a>(req: &'a RequestHeader, name: &str) -> &'a str {
    req.headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_classified() {
        use http::Method;
        assert_eq!(classify(&Method::GET, "/abc1234"), Class::Redirect);
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
}
