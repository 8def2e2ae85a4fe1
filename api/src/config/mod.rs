//! kurz-api configuration: `conf/api.yaml`, then environment overrides, then validation.
//!
//! Precedence: environment > file > defaults. The environment accepts the seed projects'
//! variable names (`DATABASE_URL` or `DATABASE_HOST`/`_PORT`/`_NAME`/`_USER`/`_PASSWORD`,
//! `REDIS_URL`, `DB_MAX_CONNECTIONS`, `BASE_URL`, `LOG_LEVEL`, `EVENT_LOG_SAMPLE_RATE`) and
//! `KURZ_*` names for the rest (see [`ApiConfig::apply_env`]).

use kurz_common::env::{list_var, parse_var, EnvSource};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

mod auth;
mod sections;

pub use auth::{Argon2Config, AuthConfig, AuthMode, LockoutConfig};
pub use kurz_common::config::RedisSettings as RedisConfig;
pub use sections::{
    CacheConfig, ClicksConfig, DatabaseConfig, EventsConfig, LimitsConfig, LinksConfig,
};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Public listener (what the edge forwards to).
    pub listen: SocketAddr,
    /// Admin listener for `/metrics`; keep it off public interfaces.
    pub admin_listen: SocketAddr,
    /// Public base of short links: `short_url` = base_url + "/" + code. Its host is also refused
    /// as a link target, so links cannot loop.
    pub base_url: String,
    /// Log filter: `info`, `debug`, or per module (`info,tokio_postgres=warn`).
    pub log_level: String,
    /// Peers (addresses or CIDR blocks) whose `X-Real-IP`/`X-Forwarded-For` name the client:
    /// the edges. Anyone else is the client. Env `KURZ_TRUSTED_PROXIES` (comma-separated).
    pub trusted_proxies: Vec<String>,
    pub database: DatabaseConfig,
    pub redis: RedisConfig,
    pub cache: CacheConfig,
    pub clicks: ClicksConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub links: LinksConfig,
    pub privacy: kurz_common::clicks::PrivacySettings,
    pub events: EventsConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8000".parse().expect("static address"),
            admin_listen: "127.0.0.1:9100".parse().expect("static address"),
            base_url: "http://localhost:8000".into(),
            log_level: "info".into(),
            trusted_proxies: vec!["127.0.0.0/8".into(), "::1".into()],
            database: DatabaseConfig::default(),
            redis: RedisConfig::default(),
            cache: CacheConfig::default(),
            clicks: ClicksConfig::default(),
            limits: LimitsConfig::default(),
            auth: AuthConfig::default(),
            links: LinksConfig::default(),
            privacy: Default::default(),
            events: EventsConfig::default(),
        }
    }
}

/// The longest duration a `*_seconds` key takes.
const TEN_YEARS_SECONDS: u64 = 10 * 365 * 86_400;

impl ApiConfig {
    /// Who may name the client (see `kurz_common::proxies`).
    pub fn proxy_trust(&self) -> Result<kurz_common::proxies::ProxyTrust, String> {
        kurz_common::proxies::ProxyTrust::parse(&self.trusted_proxies, &[])
    }

    /// File (if given) + environment, validated. Every error names the key or variable.
    pub fn load(path: Option<&Path>, env: &dyn EnvSource) -> Result<Self, String> {
        let mut cfg: ApiConfig = match path {
            Some(p) => kurz_common::config::load_yaml(p)?,
            None => ApiConfig::default(),
        };
        cfg.apply_env(env)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Environment overrides.
    pub fn apply_env(&mut self, env: &dyn EnvSource) -> Result<(), String> {
        if let Some(url) = env.get("DATABASE_URL") {
            self.database.url = url;
        } else {
            self.database.url = with_database_parts(&self.database.url, env)?;
        }
        if let Some(n) = parse_var(env, "DB_MAX_CONNECTIONS")? {
            self.database.max_connections = n;
        }
        if let Some(url) = env.get("REDIS_URL") {
            self.redis.url = url;
        }
        if let Some(nodes) = list_var(env, "REDIS_CLUSTER_URLS") {
            self.redis.cluster_nodes = nodes;
        }
        if let Some(n) = parse_var(env, "KURZ_REDIS_REPLICA_ACKS")? {
            self.redis.replica_acks = n;
        }
        if let Some(prefix) = env.get("KURZ_REDIS_PREFIX") {
            self.redis.prefix = prefix;
        }
        if let Some(base) = env.get("BASE_URL") {
            self.base_url = base;
        }
        if let Some(level) = env.get("LOG_LEVEL") {
            self.log_level = level.to_ascii_lowercase();
        }
        if let Some(rate) = parse_var(env, "EVENT_LOG_SAMPLE_RATE")? {
            self.clicks.sample_rate = rate;
        }
        if let Some(mode) = env.get("KURZ_AUTH_MODE") {
            self.auth.mode = match mode.to_ascii_lowercase().as_str() {
                "open" => AuthMode::Open,
                "required" => AuthMode::Required,
                _ => {
                    return Err(format!(
                        "environment variable KURZ_AUTH_MODE={mode:?} must be open or required"
                    ))
                }
            };
        }
        if let Some(admins) = list_var(env, "KURZ_ADMINS") {
            self.auth.admins = admins;
        }
        if let Some(list) = list_var(env, "KURZ_TRUSTED_PROXIES") {
            self.trusted_proxies = list;
        }
        if let Some(addr) = parse_var(env, "KURZ_LISTEN")? {
            self.listen = addr;
        }
        if let Some(addr) = parse_var(env, "KURZ_ADMIN_LISTEN")? {
            self.admin_listen = addr;
        }
        Ok(())
    }

    /// Checks values serde cannot: ranges, URL shapes, names.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |key: &str, why: &str| Err(format!("config key `{key}` {why}"));
        self.proxy_trust()
            .map_err(|e| format!("config key `trusted_proxies` (KURZ_TRUSTED_PROXIES): {e}"))?;
        if !self.database.url.starts_with("postgres://")
            && !self.database.url.starts_with("postgresql://")
        {
            return bad("database.url", "must start with postgres:// (DATABASE_URL)");
        }
        // The reading the pool will make: tokio-postgres alone refuses libpq's
        // `sslmode=verify-*` and `sslrootcert`, which `db::tls` takes off first.
        crate::db::tls::parse(&self.database.url).map_err(|e| format!("{e} (DATABASE_URL)"))?;
        if !(1..=1000).contains(&self.database.max_connections) {
            return bad(
                "database.max_connections",
                "must be 1..=1000 (DB_MAX_CONNECTIONS)",
            );
        }
        if !(1..=1000).contains(&self.database.create_batch_max) {
            return bad("database.create_batch_max", "must be 1..=1000");
        }
        if !(1..=64).contains(&self.database.create_writers) {
            return bad("database.create_writers", "must be 1..=64");
        }
        if self.database.create_writers >= self.database.max_connections {
            return bad(
                "database.create_writers",
                "must be below database.max_connections (the writers would hold every connection)",
            );
        }
        // Each key by its own name: the message must point at the line to change.
        for (key, v) in [
            (
                "database.acquire_timeout_ms",
                self.database.acquire_timeout_ms,
            ),
            (
                "database.connect_timeout_ms",
                self.database.connect_timeout_ms,
            ),
            ("cache.link_ttl_seconds", self.cache.link_ttl_seconds),
            (
                "cache.negative_ttl_seconds",
                self.cache.negative_ttl_seconds,
            ),
            ("clicks.poll_interval_ms", self.clicks.poll_interval_ms),
            ("limits.request_timeout_ms", self.limits.request_timeout_ms),
            (
                "limits.bulk_request_timeout_ms",
                self.limits.bulk_request_timeout_ms,
            ),
            (
                "auth.lockout.base_delay_seconds",
                self.auth.lockout.base_delay_seconds,
            ),
            (
                "auth.lockout.window_seconds",
                self.auth.lockout.window_seconds,
            ),
        ] {
            if v == 0 {
                return bad(key, "must be above 0");
            }
        }
        self.redis.validate("redis")?;
        if !(0.0..=1.0).contains(&self.clicks.sample_rate) {
            return bad(
                "clicks.sample_rate",
                "must be between 0.0 and 1.0 (EVENT_LOG_SAMPLE_RATE)",
            );
        }
        if !(1..=10_000).contains(&self.clicks.batch_size) {
            return bad("clicks.batch_size", "must be 1..=10000");
        }
        if self.clicks.group.is_empty() {
            return bad("clicks.group", "must not be empty");
        }
        if self.clicks.claim_idle_ms < 100 {
            // At 0 every replica would take every other's entries in flight at each poll.
            return bad("clicks.claim_idle_ms", "must be at least 100");
        }
        if self.clicks.linger_ms > 1000 {
            return bad("clicks.linger_ms", "must be 0..=1000");
        }
        if !(1..=60_000).contains(&self.clicks.read_drain_budget_ms) {
            return bad("clicks.read_drain_budget_ms", "must be 1..=60000");
        }
        // A read waiting longer than its request may run would be cut off with a 503 instead of
        // answering with `X-Kurz-Clicks-Pending`.
        if self.clicks.read_drain_budget_ms >= self.limits.request_timeout_ms {
            return bad(
                "clicks.read_drain_budget_ms",
                "must be below limits.request_timeout_ms (a read past it gets 503)",
            );
        }
        if kurz_common::config::sockets_clash(&self.admin_listen, &self.listen) {
            return bad(
                "admin_listen",
                "takes the socket of `listen` (KURZ_ADMIN_LISTEN, KURZ_LISTEN)",
            );
        }

        if self.limits.list_limit < 1 {
            return bad("limits.list_limit", "must be at least 1");
        }
        for (key, v) in [
            ("limits.body_bytes", self.limits.body_bytes),
            ("limits.bulk_body_bytes", self.limits.bulk_body_bytes),
        ] {
            if v < 1024 {
                return bad(key, "must be at least 1024");
            }
        }
        match url::Url::parse(&self.base_url) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host_str().is_some() => {}
            _ => return bad("base_url", "must be an absolute http(s) URL (BASE_URL)"),
        }
        let a = &self.auth;
        // Far past any use, and a value near u64's end overflows the time arithmetic (a session
        // TTL of 2^63 s panicked at every log-in) or Redis's `EX`.
        for (key, v) in [
            ("auth.session_ttl_seconds", a.session_ttl_seconds),
            (
                "auth.lockout.base_delay_seconds",
                a.lockout.base_delay_seconds,
            ),
            (
                "auth.lockout.max_delay_seconds",
                a.lockout.max_delay_seconds,
            ),
            ("auth.lockout.window_seconds", a.lockout.window_seconds),
            ("cache.link_ttl_seconds", self.cache.link_ttl_seconds),
            (
                "cache.negative_ttl_seconds",
                self.cache.negative_ttl_seconds,
            ),
        ] {
            if v > TEN_YEARS_SECONDS {
                return bad(key, "must be at most 315360000 (ten years)");
            }
        }
        if a.session_ttl_seconds < 60 {
            return bad("auth.session_ttl_seconds", "must be at least 60");
        }
        if a.argon2.memory_kib < 8 * 1024 {
            return bad("auth.argon2.memory_kib", "must be at least 8192");
        }
        // Upper bounds too: start-up hashes once with these (a memory typo with three zeros
        // too many asked for 18 GiB and was killed; a huge iteration count never finished),
        // and every log-in holds the memory for as long as the hash runs.
        if a.argon2.memory_kib > 4 * 1024 * 1024 {
            return bad("auth.argon2.memory_kib", "must be at most 4194304 (4 GiB)");
        }
        if a.argon2.iterations == 0 || a.argon2.iterations > 100 {
            return bad("auth.argon2.iterations", "must be 1..=100");
        }
        if a.argon2.parallelism == 0 {
            return bad("auth.argon2.parallelism", "must be at least 1");
        }
        if argon2::Params::new(
            a.argon2.memory_kib,
            a.argon2.iterations,
            a.argon2.parallelism,
            None,
        )
        .is_err()
        {
            return bad("auth.argon2", "is not a valid argon2 parameter set");
        }
        // PostgreSQL refuses a statement_timeout above its int range at every connection, which
        // start-up would report as PostgreSQL not answering.
        if self.database.statement_timeout_ms > i32::MAX as u64 {
            return bad(
                "database.statement_timeout_ms",
                "must be at most 2147483647 (PostgreSQL's limit)",
            );
        }
        if self.database.idle_in_transaction_timeout_ms > i32::MAX as u64 {
            return bad(
                "database.idle_in_transaction_timeout_ms",
                "must be at most 2147483647 (PostgreSQL's limit)",
            );
        }
        // Retention takes this many days from today: past chrono's range (~96 million days) the
        // task would panic, and nothing stored is older than a few thousand years.
        if self.events.retention_days > 36_500 {
            return bad(
                "events.retention_days",
                "must be at most 36500 (a hundred years; 0 keeps every event)",
            );
        }
        if !(1..=64).contains(&a.max_concurrent_hashes) {
            return bad("auth.max_concurrent_hashes", "must be 1..=64");
        }
        // At 0 an attempt locks as it is counted, before its password is checked: every log-in,
        // good ones too, would lock (a good one lifts only its own account's locks).
        for (key, v) in [
            ("auth.lockout.free_failures", a.lockout.free_failures),
            (
                "auth.lockout.free_failures_all_addresses",
                a.lockout.free_failures_all_addresses,
            ),
            (
                "auth.lockout.free_failures_per_ip",
                a.lockout.free_failures_per_ip,
            ),
        ] {
            if v == 0 {
                return bad(key, "must be at least 1");
            }
        }
        if a.lockout.max_delay_seconds < a.lockout.base_delay_seconds {
            return bad(
                "auth.lockout.max_delay_seconds",
                "must be at least auth.lockout.base_delay_seconds",
            );
        }
        if a.admins.iter().any(|e| !e.contains('@')) {
            return bad("auth.admins", "must list email addresses");
        }
        if self
            .links
            .deny_hosts
            .iter()
            .any(|h| h.trim().is_empty() || h.contains('/'))
        {
            return bad("links.deny_hosts", "must list host names");
        }
        if !kurz_common::logging::is_valid_level(&self.log_level) {
            return bad(
                "log_level",
                "must be off, error, warn, info, debug or trace (LOG_LEVEL)",
            );
        }
        Ok(())
    }

    /// What link targets must satisfy: not this service (`base_url`'s host), not a denied
    /// host, and, unless allowed, not a private address.
    pub fn target_policy(&self) -> kurz_common::target::TargetPolicy {
        let own_hosts = url::Url::parse(&self.base_url)
            .ok()
            .and_then(|u| u.host_str().map(|h| vec![h.to_ascii_lowercase()]))
            .unwrap_or_default();
        let deny_hosts: Vec<String> = self
            .links
            .deny_hosts
            .iter()
            .map(|h| h.trim().trim_start_matches('.').to_owned())
            .collect();
        kurz_common::target::TargetPolicy::new(
            &own_hosts,
            &deny_hosts,
            self.links.allow_private_targets,
        )
    }

    /// `base_url` without a trailing slash.
    pub fn base(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }
}

/// `database.url` with what `DATABASE_HOST`, `_PORT`, `_NAME`, `_USER` and `_PASSWORD` set
/// put in place of its own parts; the rest of the URL (its `sslmode`, say) stays. Any one of
/// them alone takes effect.
fn with_database_parts(file_url: &str, env: &dyn EnvSource) -> Result<String, String> {
    const PARTS: [&str; 5] = [
        "DATABASE_HOST",
        "DATABASE_PORT",
        "DATABASE_NAME",
        "DATABASE_USER",
        "DATABASE_PASSWORD",
    ];
    // Kubernetes' service links give a Service named `database` the variable
    // `DATABASE_PORT=tcp://<ip>:<port>` in every pod of its namespace: not ours.
    let ours = |k: &str| {
        env.get(k)
            .filter(|v| !(k == "DATABASE_PORT" && v.starts_with("tcp://")))
    };
    if PARTS.iter().all(|k| ours(k).is_none()) {
        return Ok(file_url.to_owned());
    }
    let url = url::Url::parse(file_url).map_err(|_| {
        "config key `database.url` must be a postgres:// URL for DATABASE_HOST/_PORT/_NAME/_USER/_PASSWORD to change its parts".to_owned()
    })?;
    let host = match env.get("DATABASE_HOST") {
        // A Unix socket's directory goes into the URL's host percent-encoded, as libpq's URLs
        // take it; an IPv6 address in brackets.
        Some(dir) if dir.starts_with('/') => percent_encode(&dir),
        Some(ip) if ip.parse::<std::net::Ipv6Addr>().is_ok() => format!("[{ip}]"),
        Some(host) => host,
        None => url.host_str().unwrap_or("127.0.0.1").to_owned(),
    };
    let port: u16 = match ours("DATABASE_PORT") {
        Some(p) => p
            .trim()
            .parse()
            .map_err(|_| format!("DATABASE_PORT={p:?} is not a port number"))?,
        None => url.port().unwrap_or(5432),
    };
    // The URL's own parts are already percent-encoded; the variables' are encoded here.
    let name = env
        .get("DATABASE_NAME")
        .map(|n| percent_encode(&n))
        .unwrap_or_else(|| url.path().trim_start_matches('/').to_owned());
    let user = env
        .get("DATABASE_USER")
        .map(|u| percent_encode(&u))
        .unwrap_or_else(|| url.username().to_owned());
    let password = env
        .get("DATABASE_PASSWORD")
        .map(|p| percent_encode(&p))
        .or_else(|| url.password().map(str::to_owned));
    let auth = match (user.is_empty(), password) {
        (_, Some(pw)) => format!("{user}:{pw}@"),
        (false, None) => format!("{user}@"),
        (true, None) => String::new(),
    };
    let query = url.query().map(|q| format!("?{q}")).unwrap_or_default();
    Ok(format!("postgres://{auth}{host}:{port}/{name}{query}"))
}

/// Percent-encodes a user name, password or database name for the URL.
fn percent_encode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kurz_common::env::from_pairs as env;

    #[test]
    fn the_shipped_config_file_loads_and_validates() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/api.yaml");
        ApiConfig::load(Some(&path), &env(&[])).expect("conf/api.yaml is valid");
    }

    /// `KURZ_ADMINS=` over a file that lists admins leaves none: an empty list variable is how
    /// the environment says "none". Other variables set empty still count as unset.
    #[test]
    fn a_list_variable_set_empty_empties_the_files_list() {
        let mut file = ApiConfig::default();
        file.auth.admins = vec!["root@example.com".into()];
        file.redis.cluster_nodes = vec!["redis://10.0.0.1:6379".into()];
        let mut cfg = file.clone();
        cfg.apply_env(&env(&[
            ("KURZ_ADMINS", ""),
            ("KURZ_TRUSTED_PROXIES", ""),
            ("REDIS_CLUSTER_URLS", ""),
            ("REDIS_URL", ""),
        ]))
        .unwrap();
        assert!(cfg.auth.admins.is_empty());
        assert!(cfg.trusted_proxies.is_empty());
        assert!(cfg.redis.cluster_nodes.is_empty());
        assert_eq!(cfg.redis.url, file.redis.url);
        cfg.validate().expect("no admins, no trusted proxies");
        let mut cfg = file.clone();
        cfg.apply_env(&env(&[])).unwrap();
        assert_eq!(cfg.auth.admins, file.auth.admins);
        assert_eq!(cfg.trusted_proxies, file.trusted_proxies);
    }

    #[test]
    fn seed_variables_override_the_file() {
        let e = env(&[
            ("DATABASE_HOST", "db.internal"),
            ("DATABASE_NAME", "short"),
            ("DATABASE_PASSWORD", "p@ss word"),
            ("DB_MAX_CONNECTIONS", "7"),
            ("EVENT_LOG_SAMPLE_RATE", "0.5"),
            ("LOG_LEVEL", "DEBUG"),
        ]);
        let cfg = ApiConfig::load(None, &e).unwrap();
        assert_eq!(
            cfg.database.url,
            "postgres://postgres:p%40ss%20word@db.internal:5432/short"
        );
        assert_eq!(cfg.database.max_connections, 7);
        assert_eq!(cfg.clicks.sample_rate, 0.5);
        assert_eq!(cfg.log_level, "debug");
        // One part alone changes that part; the file's user, database and TLS stay.
        let mut file = ApiConfig::default();
        file.database.url = "postgres://app:s3cret@db.example:6432/links?sslmode=require".into();
        for (var, value, want) in [
            (
                "DATABASE_PASSWORD",
                "n:w",
                "postgres://app:n%3Aw@db.example:6432/links?sslmode=require",
            ),
            (
                "DATABASE_HOST",
                "db2.example",
                "postgres://app:s3cret@db2.example:6432/links?sslmode=require",
            ),
            (
                "DATABASE_PORT",
                "5433",
                "postgres://app:s3cret@db.example:5433/links?sslmode=require",
            ),
            (
                "DATABASE_USER",
                "a b",
                "postgres://a%20b:s3cret@db.example:6432/links?sslmode=require",
            ),
        ] {
            let mut cfg = file.clone();
            cfg.apply_env(&env(&[(var, value)])).unwrap();
            assert_eq!(cfg.database.url, want, "{var}");
        }
        // An IPv6 address and a Unix socket's directory as the host.
        for (value, want) in [
            (
                "::1",
                "postgres://app:s3cret@[::1]:6432/links?sslmode=require",
            ),
            (
                "/var/run/postgresql",
                "postgres://app:s3cret@%2Fvar%2Frun%2Fpostgresql:6432/links?sslmode=require",
            ),
        ] {
            let mut cfg = file.clone();
            cfg.apply_env(&env(&[("DATABASE_HOST", value)])).unwrap();
            assert_eq!(cfg.database.url, want, "{value}");
            cfg.validate().expect("a URL the driver takes");
        }
        // `DATABASE_URL` is the whole URL: the part variables do not change it.
        let mut cfg = file.clone();
        cfg.apply_env(&env(&[
            ("DATABASE_URL", "postgres://u@db3.example/other"),
            ("DATABASE_HOST", "ignored.example"),
            ("DATABASE_NAME", "ignored"),
        ]))
        .unwrap();
        assert_eq!(cfg.database.url, "postgres://u@db3.example/other");
        // A Kubernetes service link for a Service named `database` is not an override.
        let mut cfg = file.clone();
        cfg.apply_env(&env(&[("DATABASE_PORT", "tcp://10.0.0.9:5432")]))
            .unwrap();
        assert_eq!(cfg.database.url, file.database.url);
    }

    #[test]
    fn bad_values_name_their_key() {
        let err = ApiConfig::load(None, &env(&[("EVENT_LOG_SAMPLE_RATE", "2")])).unwrap_err();
        assert!(err.contains("clicks.sample_rate"), "{err}");
        let err = ApiConfig::load(None, &env(&[("DB_MAX_CONNECTIONS", "many")])).unwrap_err();
        assert!(err.contains("DB_MAX_CONNECTIONS"), "{err}");
        let err = ApiConfig::load(None, &env(&[("REDIS_URL", "http://x")])).unwrap_err();
        assert!(err.contains("redis.url"), "{err}");
        let err = ApiConfig::load(None, &env(&[("BASE_URL", "nope")])).unwrap_err();
        assert!(err.contains("base_url"), "{err}");
        let mut cfg = ApiConfig::default();
        cfg.clicks.linger_ms = 5000;
        let err = cfg.validate().unwrap_err();
        assert!(err.contains("clicks.linger_ms"), "{err}");
        // Keys checked together still each answer with their own full name.
        type Tweak = fn(&mut ApiConfig);
        let cases: [(&str, Tweak); 17] = [
            ("database.connect_timeout_ms", |c| {
                c.database.connect_timeout_ms = 0
            }),
            ("database.acquire_timeout_ms", |c| {
                c.database.acquire_timeout_ms = 0
            }),
            ("database.create_writers", |c| {
                c.database.max_connections = 4;
                c.database.create_writers = 4;
            }),
            ("cache.negative_ttl_seconds", |c| {
                c.cache.negative_ttl_seconds = 0
            }),
            ("clicks.group", |c| c.clicks.group.clear()),
            ("clicks.poll_interval_ms", |c| c.clicks.poll_interval_ms = 0),
            ("clicks.claim_idle_ms", |c| c.clicks.claim_idle_ms = 0),
            ("limits.bulk_request_timeout_ms", |c| {
                c.limits.bulk_request_timeout_ms = 0
            }),
            ("limits.bulk_body_bytes", |c| c.limits.bulk_body_bytes = 10),
            ("auth.argon2.iterations", |c| c.auth.argon2.iterations = 0),
            ("auth.lockout.window_seconds", |c| {
                c.auth.lockout.window_seconds = 0
            }),
            ("auth.lockout.max_delay_seconds", |c| {
                c.auth.lockout.base_delay_seconds = 10;
                c.auth.lockout.max_delay_seconds = 5;
            }),
            ("auth.lockout.free_failures", |c| {
                c.auth.lockout.free_failures = 0
            }),
            ("auth.lockout.free_failures_per_ip", |c| {
                c.auth.lockout.free_failures_per_ip = 0
            }),
            ("clicks.read_drain_budget_ms", |c| {
                c.limits.request_timeout_ms = 2_000;
                c.clicks.read_drain_budget_ms = 2_000;
            }),
            ("admin_listen", |c| c.admin_listen = c.listen),
            ("admin_listen", |c| {
                c.listen = "[::]:8000".parse().unwrap();
                c.admin_listen = "127.0.0.1:8000".parse().unwrap();
            }),
        ];
        for (key, tweak) in cases {
            let mut cfg = ApiConfig::default();
            tweak(&mut cfg);
            let err = cfg.validate().unwrap_err();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
        // Their neighbours pass: a budget just inside the deadline, listeners apart, and two
        // listeners on port 0 (each gets a free port of its own).
        let mut cfg = ApiConfig::default();
        cfg.auth.lockout.free_failures_per_ip = 1;
        cfg.limits.request_timeout_ms = 2_000;
        cfg.clicks.read_drain_budget_ms = 1_999;
        cfg.listen = "127.0.0.1:8000".parse().unwrap();
        cfg.admin_listen = "127.0.0.2:8000".parse().unwrap();
        cfg.validate()
            .expect("neighbours of the refused values pass");
        cfg.listen = "127.0.0.1:0".parse().unwrap();
        cfg.admin_listen = "127.0.0.1:0".parse().unwrap();
        cfg.validate().expect("port 0 twice passes");
    }

    #[test]
    fn every_key_is_documented() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let docs = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
        let yaml = std::fs::read_to_string(root.join("conf/api.yaml")).unwrap();
        let defaults = serde_json::to_value(ApiConfig::default()).unwrap();
        let api_docs = &docs[..docs.find("## kurz-proxy").unwrap_or(docs.len())];
        kurz_common::config::check_documented(&defaults, &yaml, api_docs).unwrap();
    }

    /// Every variable configuration.md names for kurz-api reaches its key, and a bad value
    /// stops start-up naming the variable.
    #[test]
    fn durations_past_ten_years_are_refused_by_name() {
        let huge = 1u64 << 63;
        type Set = fn(&mut ApiConfig, u64);
        let cases: [(&str, Set); 6] = [
            ("auth.session_ttl_seconds", |c, v| {
                c.auth.session_ttl_seconds = v
            }),
            ("auth.lockout.base_delay_seconds", |c, v| {
                c.auth.lockout.base_delay_seconds = v
            }),
            ("auth.lockout.max_delay_seconds", |c, v| {
                c.auth.lockout.max_delay_seconds = v
            }),
            ("auth.lockout.window_seconds", |c, v| {
                c.auth.lockout.window_seconds = v
            }),
            ("cache.link_ttl_seconds", |c, v| {
                c.cache.link_ttl_seconds = v
            }),
            ("cache.negative_ttl_seconds", |c, v| {
                c.cache.negative_ttl_seconds = v
            }),
        ];
        for (key, set) in cases {
            let mut c = ApiConfig::default();
            set(&mut c, huge);
            if key == "auth.lockout.base_delay_seconds" {
                c.auth.lockout.max_delay_seconds = huge;
            }
            let err = c.validate().unwrap_err();
            assert!(err.contains(key), "{key}: {err}");
            let mut c = ApiConfig::default();
            set(&mut c, TEN_YEARS_SECONDS);
            c.auth.lockout.max_delay_seconds = TEN_YEARS_SECONDS;
            c.validate()
                .unwrap_or_else(|e| panic!("{key}: ten years is allowed: {e}"));
        }
    }

    /// Values that passed validation and then killed, hung or crash-looped the API are refused
    /// at start, naming their key; the largest accepted value still passes.
    #[test]
    fn values_past_what_the_api_can_run_are_refused_by_name() {
        type Set = fn(&mut ApiConfig, u64);
        let cases: &[(&str, Set, u64)] = &[
            (
                "auth.argon2.memory_kib",
                |c, v| c.auth.argon2.memory_kib = v as u32,
                4 * 1024 * 1024,
            ),
            (
                "auth.argon2.iterations",
                |c, v| c.auth.argon2.iterations = v as u32,
                100,
            ),
            (
                "database.statement_timeout_ms",
                |c, v| c.database.statement_timeout_ms = v,
                i32::MAX as u64,
            ),
            (
                "database.idle_in_transaction_timeout_ms",
                |c, v| c.database.idle_in_transaction_timeout_ms = v,
                i32::MAX as u64,
            ),
            (
                "events.retention_days",
                |c, v| c.events.retention_days = v as u32,
                36_500,
            ),
        ];
        for (key, set, max) in cases {
            let mut c = ApiConfig::default();
            set(&mut c, *max + 1);
            let err = c.validate().unwrap_err();
            assert!(err.contains(key), "{key}: {err}");
            let mut c = ApiConfig::default();
            set(&mut c, *max);
            c.validate()
                .unwrap_or_else(|e| panic!("{key}: {max} is allowed: {e}"));
        }
    }

    #[test]
    fn every_documented_variable_reaches_its_key_and_a_bad_value_names_it() {
        type Applied = fn(&ApiConfig) -> bool;
        let cases: &[(&str, &str, Applied)] = &[
            ("KURZ_LISTEN", "127.0.0.1:8123", |c| c.listen.port() == 8123),
            ("KURZ_ADMIN_LISTEN", "127.0.0.1:9123", |c| {
                c.admin_listen.port() == 9123
            }),
            ("BASE_URL", "https://sho.rt", |c| {
                c.base_url == "https://sho.rt"
            }),
            ("LOG_LEVEL", "WARN", |c| c.log_level == "warn"),
            ("KURZ_TRUSTED_PROXIES", "10.0.0.0/8, 192.0.2.1", |c| {
                c.trusted_proxies == ["10.0.0.0/8", "192.0.2.1"]
            }),
            ("DATABASE_URL", "postgres://u@db.example/x", |c| {
                c.database.url == "postgres://u@db.example/x"
            }),
            ("DB_MAX_CONNECTIONS", "9", |c| {
                c.database.max_connections == 9
            }),
            ("REDIS_URL", "redis://cache.example:6380/2", |c| {
                c.redis.url == "redis://cache.example:6380/2"
            }),
            (
                "REDIS_CLUSTER_URLS",
                "redis://a:7000, redis://b:7001",
                |c| c.redis.cluster_nodes == ["redis://a:7000", "redis://b:7001"],
            ),
            ("KURZ_REDIS_PREFIX", "shop", |c| c.redis.prefix == "shop"),
            ("KURZ_REDIS_REPLICA_ACKS", "1", |c| {
                c.redis.replica_acks == 1
            }),
            ("EVENT_LOG_SAMPLE_RATE", "0.25", |c| {
                c.clicks.sample_rate == 0.25
            }),
            ("KURZ_AUTH_MODE", "OPEN", |c| c.auth.mode == AuthMode::Open),
            ("KURZ_ADMINS", "a@x.example, b@x.example", |c| {
                c.auth.admins == ["a@x.example", "b@x.example"]
            }),
        ];
        for (var, value, applied) in cases {
            assert!(
                !applied(&ApiConfig::default()),
                "{var}: already the default"
            );
            let cfg = ApiConfig::load(None, &env(&[(var, value)]))
                .unwrap_or_else(|e| panic!("{var}={value}: {e}"));
            assert!(applied(&cfg), "{var}={value} did not reach its key");
        }
        // The database's parts: `seed_variables_override_the_file`.
        let parts = [
            "DATABASE_HOST",
            "DATABASE_PORT",
            "DATABASE_NAME",
            "DATABASE_USER",
        ];
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let docs = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
        let api_docs = &docs[..docs.find("## kurz-proxy").unwrap_or(docs.len())];
        let documented = kurz_common::config::documented_env_vars(api_docs);
        assert!(documented.len() >= cases.len(), "{documented:?}");
        for var in &documented {
            assert!(
                cases.iter().any(|(v, _, _)| v == var) || parts.contains(&var.as_str()),
                "{var} is documented but not tested here"
            );
        }
        for (var, bad) in [
            ("KURZ_AUTH_MODE", "maybe"),
            ("KURZ_TRUSTED_PROXIES", "10.0.0.0/33"),
            ("KURZ_REDIS_REPLICA_ACKS", "one"),
            ("DB_MAX_CONNECTIONS", "0"),
            ("KURZ_LISTEN", "nowhere"),
            ("EVENT_LOG_SAMPLE_RATE", "lots"),
        ] {
            let err = ApiConfig::load(None, &env(&[(var, bad)])).unwrap_err();
            assert!(err.contains(var), "{var}={bad}: {err}");
        }
    }

    #[test]
    fn a_typo_in_the_file_is_an_error_naming_the_key() {
        let err = kurz_common::config::parse_yaml::<ApiConfig>("database:\n  max_conections: 3\n")
            .unwrap_err();
        assert!(err.contains("max_conections"), "{err}");
    }
}
