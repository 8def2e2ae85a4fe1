//! Usernames and email addresses, checked once where they enter (JSON bodies, bulk rows); the
//! store takes only these types, so no path can write an unchecked one.

/// Longest username accepted.
const MAX_USERNAME: usize = 64;
/// RFC 5321's limit on a forward path.
const MAX_EMAIL: usize = 254;

/// Code points a text renderer shows as nothing (Unicode's `Default_Ignorable_Code_Point`,
/// 15.1): zero-width spaces, direction marks and overrides, the soft hyphen, variation
/// selectors, tags. In a name they make `admin` and `admin\u{200b}` two accounts that read the
/// same, or a name that reads as nothing. Less the zero-width non-joiner and joiner (U+200C,
/// U+200D), which Persian and several Indic scripts write in ordinary names.
fn invisible(c: char) -> bool {
    matches!(c as u32,
        0xAD | 0x34F | 0x61C | 0x115F..=0x1160 | 0x17B4..=0x17B5 | 0x180B..=0x180F
        | 0x200B | 0x200E..=0x200F | 0x202A..=0x202E | 0x2060..=0x206F | 0x3164 | 0xFE00..=0xFE0F
        | 0xFEFF | 0xFFA0 | 0xFFF0..=0xFFF8 | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A
        | 0xE0000..=0xE0FFF)
}

/// A username: at most 64 characters, no spaces, control or invisible characters. Not unique by itself:
/// imports keep real exports' repeats, API writes check under a lock (`routes::users`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username(String);

impl Username {
    pub fn parse(name: &str) -> Result<Self, String> {
        if name.is_empty() {
            Err("must not be empty".into())
        } else if name.chars().count() > MAX_USERNAME {
            Err(format!("must be at most {MAX_USERNAME} characters"))
        } else if name
            .chars()
            .any(|c| c.is_control() || c.is_whitespace() || invisible(c))
        {
            Err("must not contain spaces, control characters or invisible ones (zero-width, direction marks)".into())
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
            && !email
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || invisible(c))
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
        // What reads as another name, or as none.
        for bad in [
            "admin\u{200b}",
            "\u{200b}",
            "ad\u{ad}min",
            "\u{202e}nimda",
            "admin\u{2060}",
            "\u{feff}admin",
            "admin\u{fe0f}",
            "admin\u{e0041}",
        ] {
            assert!(Username::parse(bad).is_err(), "{bad:?}");
            assert!(Email::parse(&format!("{bad}@b.co")).is_err(), "{bad:?}");
        }
        // Letters of any script, and marks on them, are names.
        for good in [
            "José",
            "Jose\u{301}",
            "ł",
            "李",
            "مريم",
            "dév_1.x",
            "نی\u{200c}لوفر",
        ] {
            assert!(Username::parse(good).is_ok(), "{good:?}");
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
