//! Usernames and email addresses, checked once where they enter (JSON bodies, bulk rows); the
//! store takes only these types, so no path can write an unchecked one.

/// Longest username accepted.
const MAX_USERNAME: usize = 64;
/// RFC 5321's limit on a forward path.
const MAX_EMAIL: usize = 254;

/// A username: at most 64 characters, no spaces or control characters. Not unique by itself:
/// imports keep real exports' repeats, API writes check under a lock (`routes::users`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            Err("must not be empty".into())
        } else if name.chars().count() > MAX_USERNAME {
            Err(format!("must be at most {MAX_USERNAME} characters"))
        } else if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
            Err("must not contain spaces or control characters".into())
        } else {
            Ok(Self(name.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address of the usual `local@domain.tld` shape; the user's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(email: &str) -> Result<Self, String> {
        let valid = email.len() <= MAX_EMAIL
            && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            && match email.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && !domain.contains('@')
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                        && !domain.contains("..")
                }
                None => false,
            };
        if valid {
            Ok(Self(email.to_owned()))
        } else {
            Err("must be an email address such as name@example.com".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A body's required `username` and `email`, each checked; a missing or bad one is rejected in
/// `f` by name (and comes back `None`).
pub fn required(f: &mut crate::extract::Fields) -> (Option<Username>, Option<Email>) {
    let username = f
        .string("username")
        .and_then(|u| f.check("username", Username::parse(&u)));
    let email = f
        .string("email")
        .and_then(|e| f.check("email", Email::parse(&e)));
    (username, email)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_and_emails_hold_only_what_the_rules_accept() {
        assert_eq!(Username::parse("ada").unwrap().as_str(), "ada");
        for bad in ["", "sp ace", "tab\t", "nul\0", &"x".repeat(65)] {
            assert!(Username::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(Email::parse("a@b.co").unwrap().as_str(), "a@b.co");
        for bad in [
            "", "a", "a@b", "@b.co", "a@b.co.", "a@.b.co", "a@@b.co", "a b@c.co", "a@b..co",
            "a\0@b.co",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }
}
