//! The `auth` section: mode, password hashing cost, lock-out.

use serde::{Deserialize, Serialize};

/// `open`: the evaluation contract (no token needed, `user_id` from the body). `required`: writes
/// need a token and act as its user; other users' data is for admins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Open,
    Required,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `required` (default) or `open` (`KURZ_AUTH_MODE`).
    pub mode: AuthMode,
    /// Emails of admins: they may list users, import in bulk and touch anyone's data.
    pub admins: Vec<String>,
    /// Session lifetime.
    pub session_ttl_seconds: u64,
    /// Each use of a session extends it by `session_ttl_seconds` (else it is fixed from login).
    pub sliding_sessions: bool,
    pub argon2: Argon2Config,
    /// Password hashes computed at once; more wait. Keeps a login flood from starving the
    /// runtime that serves redirects.
    pub max_concurrent_hashes: usize,
    pub lockout: LockoutConfig,
}

/// argon2id cost (OWASP's minimum: m=19 MiB, t=2, p=1).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Argon2Config {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

/// Failed-login back-off, per account and client address, per account, and per address.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LockoutConfig {
    /// Failures at one account (or link) from one address allowed in `window_seconds` before
    /// that address backs off from it.
    pub free_failures: u32,
    /// Failures at one account (or link) from all addresses together before everyone backs
    /// off from it: high, since a guesser who can lock an account for all locks its owner out.
    pub free_failures_all_addresses: u32,
    /// First back-off; doubles with each further failure.
    pub base_delay_seconds: u64,
    pub max_delay_seconds: u64,
    /// Failures are forgotten this long after the last one.
    pub window_seconds: u64,
    /// Per-address failures allowed before back-off (higher: many users may share an address).
    pub free_failures_per_ip: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Required,
            admins: vec![],
            session_ttl_seconds: 7 * 86_400,
            sliding_sessions: true,
            argon2: Argon2Config::default(),
            max_concurrent_hashes: 2,
            lockout: LockoutConfig::default(),
        }
    }
}

impl Default for Argon2Config {
    fn default() -> Self {
        Self {
            memory_kib: 19_456,
            iterations: 2,
            parallelism: 1,
        }
    }
}

impl Default for LockoutConfig {
    fn default() -> Self {
        Self {
            free_failures: 5,
            free_failures_all_addresses: 100,
            base_delay_seconds: 1,
            max_delay_seconds: 900,
            window_seconds: 900,
            free_failures_per_ip: 50,
        }
    }
}
