//! Environment lookups behind a trait, so config overrides can be tested with a plain map instead
//! of mutating the process environment (which races between parallel tests).

use std::collections::HashMap;

/// Where configuration overrides come from.
pub trait EnvSource {
    /// The value of `name`, if set and not empty.
    fn get(&self, name: &str) -> Option<String>;
}

/// The real process environment.
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn get(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

impl EnvSource for HashMap<String, String> {
    fn get(&self, name: &str) -> Option<String> {
        HashMap::get(self, name).filter(|v| !v.is_empty()).cloned()
    }
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
