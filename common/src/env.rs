//! Environment lookups behind a trait, so config overrides can be tested with a plain map instead
//! of mutating the process environment (which races between parallel tests).

use std::collections::HashMap;

/// Where configuration overrides come from.
pub trait EnvSource {
    /// The value of `name` as set, empty included.
    fn raw(&self, name: &str) -> Option<String>;

    /// The value of `name`, if set and not empty: an empty value counts as unset.
    fn get(&self, name: &str) -> Option<String> {
        self.raw(name).filter(|v| !v.is_empty())
    }
}

/// The real process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn raw(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn raw(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).cloned()
    }
}

/// An environment from `(name, value)` pairs, for tests of the overrides.
pub fn from_pairs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// A comma-separated list override. Set to an empty value it empties the list: that is the only
/// way to say "none" (no admins, no trusted proxies) over a file that lists some.
pub fn list_var(env: &dyn EnvSource, name: &str) -> Option<Vec<String>> {
    env.raw(name).map(|raw| {
        raw.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    })
}

/// Parses an override, naming the variable when the value does not parse.
pub fn parse_var<T: std::str::FromStr>(env: &dyn EnvSource, name: &str) -> Result<Option<T>, String>
where
    T::Err: std::fmt::Display,
{
    match env.get(name) {
        None => Ok(None),
        Some(raw) => raw
            .trim()
            .parse::<T>()
            .map(Some)
            .map_err(|e| format!("environment variable {name}={raw:?} is invalid: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_set_empty_is_empty_and_any_other_empty_value_is_unset() {
        let e = from_pairs(&[("LIST", ""), ("SOME", " a, ,b ,"), ("ONE", "")]);
        assert_eq!(list_var(&e, "LIST"), Some(vec![]));
        assert_eq!(list_var(&e, "SOME"), Some(vec!["a".into(), "b".into()]));
        assert_eq!(list_var(&e, "UNSET"), None);
        assert_eq!(EnvSource::get(&e, "ONE"), None);
        assert_eq!(parse_var::<u32>(&e, "ONE"), Ok(None));
    }
}
