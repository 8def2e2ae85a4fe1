//! CSRF tokens for the pages' forms: a random token in a cookie, repeated in a hidden field of
//! every form, compared on every post ("double submit"). Another site can make a browser post
//! to kurz, but it can neither read the cookie nor set it (`HttpOnly`, and `SameSite=Lax` keeps
//! it off cross-site posts), so it cannot put the matching value in its form. A sibling
//! subdomain, or anyone on a plain-HTTP path, can set it: the token is replaced whenever the
//! session changes (log-in, log-out), so one planted before does not reach a logged-in form.
//!
//! `Lax` rather than `Strict`: a `Strict` cookie is also withheld when a person follows a link
//! to kurz from another site, and the token made for that request replaced theirs, so every
//! form left open in another tab answered "expired". For the same reason a cross-site post (a
//! forged one: its cookie is withheld) gets no new token ([`Token::posted`]).
//!
//! `Lax` still sends the cookie with a post from a sibling subdomain (same-site), which can
//! also set the cookie: to a visitor without a token of their own it could plant one and post
//! a log-in to the planter's account, or password guesses from the visitor's address. So a
//! post the browser says another site made (`Sec-Fetch-Site` `same-site` or `cross-site`)
//! matches no token at all, as the JSON API refuses such posts
//! (`extract::refuse_cross_site_form`). Unlike the JSON API, a post with an `Origin` and no
//! `Sec-Fetch-Site` (an older browser) is not refused for it: the pages' own posts carry an
//! `Origin` too, and such a post is checked by its token alone.

use axum::http::{HeaderMap, HeaderValue};

/// The cookie, and the form field, that carry the token.
pub const FIELD: &str = "csrf";

/// A year: the token says nothing about who the visitor is, and a form left open for a day
/// should still post.
const MAX_AGE: u64 = 365 * 24 * 3600;

/// The visitor's token: the one their cookie holds, or a new one to set.
pub struct Token {
    value: String,
    new: bool,
    /// A new token is not to be set (see [`Token::posted`]).
    keep: bool,
    /// Another site made the post: nothing matches.
    foreign: bool,
}

impl Token {
    pub fn of(headers: &HeaderMap) -> Self {
        match super::cookie(headers, FIELD).filter(|v| is_token(v)) {
            Some(v) => Token {
                value: v.to_owned(),
                new: false,
                keep: false,
                foreign: false,
            },
            None => Token {
                value: crate::auth::sessions::new_token(""),
                new: true,
                keep: false,
                foreign: false,
            },
        }
    }

    pub fn value(&self) -> &str {
        &self.value
    }

    /// A new token to set in place of the visitor's (at log-in and log-out): a token someone
    /// else planted in the visitor's browser (a sibling subdomain can write cookies for the
    /// host, so can anyone on a plain-HTTP path) does not outlive the session it was planted
    /// before.
    pub fn fresh_cookie(https: bool) -> HeaderValue {
        let value = crate::auth::sessions::new_token("");
        super::cookie_header(FIELD, &value, "Lax", MAX_AGE, https)
    }

    /// `Set-Cookie` when the token is new (and may be set).
    pub fn set_cookie(&self, https: bool) -> Option<HeaderValue> {
        (self.new && !self.keep)
            .then(|| super::cookie_header(FIELD, &self.value, "Lax", MAX_AGE, https))
    }

    /// For a post: one another site made (the browser says so in `Sec-Fetch-Site`) matches
    /// nothing, and its answer sets no new token, so a forged post cannot replace the
    /// visitor's and expire the forms they have open.
    pub fn posted(&mut self, headers: &HeaderMap) {
        let site = headers.get("sec-fetch-site").map(|v| v.as_bytes());
        self.foreign = site.is_some_and(|v| {
            v.eq_ignore_ascii_case(b"cross-site") || v.eq_ignore_ascii_case(b"same-site")
        });
        self.keep = self.foreign;
    }

    /// Whether a form's field equals the cookie (a token only just made matches nothing: the
    /// request had no cookie). Compared in constant time.
    pub fn matches(&self, field: &str) -> bool {
        !self.new && !self.foreign && field.len() == self.value.len() && {
            let diff = field
                .bytes()
                .zip(self.value.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            diff == 0
        }
    }
}

/// 64 hex digits, as made here: anything else in the cookie is replaced.
fn is_token(v: &str) -> bool {
    v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_cookie(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("cookie", HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn a_form_posts_only_with_the_token_its_cookie_holds() {
        let t = "ab".repeat(32);
        let token = Token::of(&with_cookie(&format!("other=1; csrf={t}")));
        assert!(token.set_cookie(false).is_none());
        assert!(token.matches(&t));
        assert!(!token.matches(&"ac".repeat(32)));
        assert!(!token.matches(""));
        assert!(!token.matches(&t[..63]));
    }

    /// A sibling subdomain can set the cookie and post with the same value (same-site): the
    /// browser's word that another site posted outweighs a matching pair.
    #[test]
    fn a_post_another_site_made_matches_nothing() {
        let t = "ab".repeat(32);
        for (site, refused) in [
            ("same-site", true),
            ("Cross-Site", true),
            ("same-origin", false),
            ("none", false),
        ] {
            let mut headers = with_cookie(&format!("csrf={t}"));
            headers.insert("sec-fetch-site", HeaderValue::from_static(site));
            let mut token = Token::of(&headers);
            token.posted(&headers);
            assert_eq!(token.matches(&t), !refused, "{site}");
        }
        let mut token = Token::of(&with_cookie(&format!("csrf={t}")));
        token.posted(&HeaderMap::new());
        assert!(
            token.matches(&t),
            "browsers without Fetch Metadata post as before"
        );
    }

    #[test]
    fn without_a_cookie_nothing_matches_and_a_new_token_is_set() {
        let token = Token::of(&HeaderMap::new());
        assert!(
            !token.matches(token.value()),
            "a post without the cookie is refused"
        );
        let set = token.set_cookie(true).unwrap();
        let set = set.to_str().unwrap();
        assert!(set.starts_with(&format!("csrf={}", token.value())));
        for flag in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/"] {
            assert!(set.contains(flag), "{set}");
        }
        let mut forged = Token::of(&HeaderMap::new());
        let mut cross = HeaderMap::new();
        cross.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        forged.posted(&cross);
        assert!(forged.set_cookie(true).is_none());
        let odd = Token::of(&with_cookie("csrf=<script>"));
        assert!(
            odd.set_cookie(false).is_some(),
            "a malformed cookie is replaced"
        );
    }
}
