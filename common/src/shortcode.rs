//! Short codes: generated ones (7 base62 characters from a CSPRNG) and custom aliases.

use rand::Rng;

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Length of generated codes: 62^7 is about 3.5e12, so collisions stay rare far past any load we
/// plan for, and a collision is handled by retrying the insert anyway.
pub const GENERATED_LEN: usize = 7;

/// Words that name routes (or may one day), refused as custom codes so a link can never shadow
/// an endpoint. Compared case-insensitively.
pub const RESERVED: &[&str] = &[
    "health",
    "ready",
    "metrics",
    "users",
    "urls",
    "events",
    "auth",
    "links",
    "api",
    "docs",
    "ui",
    "admin",
    "static",
    "assets",
    "favicon.ico",
    "robots.txt",
    "login",
    "logout",
    "register",
    "status",
    "stats",
    "tags",
    "openapi.json",
    "well-known",
];

/// A fresh random code. `rand::rng()` is a CSPRNG (ChaCha, reseeded from the OS).
pub fn generate() -> String {
    let mut rng = rand::rng();
    (0..GENERATED_LEN)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Why a custom code was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CodeError {
    Malformed,
    Reserved,
}

impl std::fmt::Display for CodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CodeError::Malformed => {
                f.write_str("must be 3 to 64 characters of A-Z, a-z, 0-9, _ or -")
            }
            CodeError::Reserved => f.write_str("is a reserved word"),
        }
    }
}

/// Whether `s` has the shape of a code (`[A-Za-z0-9_-]{3,64}`); says nothing of reservation.
pub fn is_code_shaped(s: &str) -> bool {
    (3..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Whether `s` is a reserved word.
pub fn is_reserved(s: &str) -> bool {
    RESERVED.iter().any(|r| r.eq_ignore_ascii_case(s))
}

/// Validates a custom alias.
pub fn validate_custom(s: &str) -> Result<(), CodeError> {
    if !is_code_shaped(s) {
        return Err(CodeError::Malformed);
    }
    if is_reserved(s) {
        return Err(CodeError::Reserved);
    }
    Ok(())
}

/// A short code that passed the rules once, where it entered: a generated code, or a custom
/// alias that is code-shaped and not a reserved word. Stores and caches take only this.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ShortCode(String);

impl ShortCode {
    /// A custom alias, or why it cannot be one.
    pub fn parse(s: &str) -> Result<Self, CodeError> {
        validate_custom(s)?;
        Ok(Self(s.to_owned()))
    }

    /// A fresh random code that is not a reserved word (a generated "Metrics" would name a
    /// route, so it could never redirect).
    pub fn generate() -> Self {
        loop {
            let code = generate();
            if !is_reserved(&code) {
                return Self(code);
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for ShortCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_code_holds_only_what_the_rules_accept() {
        assert_eq!(ShortCode::parse("my-link_1").unwrap().as_str(), "my-link_1");
        assert_eq!(ShortCode::parse("users"), Err(CodeError::Reserved));
        assert_eq!(ShortCode::parse("a b"), Err(CodeError::Malformed));
        assert_eq!(ShortCode::parse("ab"), Err(CodeError::Malformed));
        for _ in 0..100 {
            let c = ShortCode::generate();
            assert!(is_code_shaped(c.as_str()) && !is_reserved(c.as_str()));
        }
    }

    #[test]
    fn generated_codes_are_base62_of_fixed_length_and_differ() {
        let a = generate();
        assert_eq!(a.len(), GENERATED_LEN);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
        let many: std::collections::HashSet<String> = (0..1000).map(|_| generate()).collect();
        assert_eq!(many.len(), 1000);
    }

    #[test]
    fn custom_codes_follow_the_rules() {
        assert_eq!(validate_custom("my-link_1"), Ok(()));
        assert_eq!(validate_custom("ab"), Err(CodeError::Malformed));
        assert_eq!(validate_custom("has space"), Err(CodeError::Malformed));
        assert_eq!(validate_custom(&"x".repeat(65)), Err(CodeError::Malformed));
        assert_eq!(validate_custom("Users"), Err(CodeError::Reserved));
        assert_eq!(validate_custom("health"), Err(CodeError::Reserved));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// An accepted custom code is one path segment of safe characters that no route
            /// claims, so it round-trips through the store and `GET /<code>` unchanged.
            #[test]
            fn an_accepted_code_is_a_safe_unreserved_segment(raw in prop_oneof![any::<String>(), "[a-zA-Z0-9_\\-]{0,70}"]) {
                if validate_custom(&raw).is_ok() {
                    prop_assert!(is_code_shaped(&raw) && !is_reserved(&raw));
                    prop_assert!(raw.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
                    let path = format!("/{raw}");
                    prop_assert!(http::Uri::try_from(path.as_str()).is_ok());
                }
            }
        }
    }
}
