//! kurz-proxy configuration: `conf/proxy.yaml`, environment overrides for secrets and addresses,
//! and validation that names the bad key.
//!
//! Precedence: environment > file > defaults. Overrides: `REDIS_URL`, `KURZ_REDIS_PREFIX`,
//! `KURZ_PROXY_HTTP` / `KURZ_PROXY_HTTPS` (comma-separated listen addresses), `KURZ_PROXY_ADMIN`,
//! `KURZ_UPSTREAMS` (comma-separated), `KURZ_TLS_CERT`, `KURZ_TLS_KEY`, `LOG_LEVEL`.

use kurz_common::config::RedisSettings;
use kurz_common::env::EnvSource;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::Path;

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    pub server: ServerSection,
    pub listen: ListenSection,
    pub admin: AdminSection,
    pub upstreams: UpstreamsSection,
    pub limits: LimitsSection,
    pub rate_limits: RateLimitsSection,
    pub redis: RedisSettings,
    pub cache: CacheSection,
    pub clicks: ClicksSection,
    pub log: LogSection,
}

/// Pingora's own server settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Let idle threads steal work from busy ones.
    pub work_stealing: bool,
    /// On SIGTERM, keep accepting and serving this long (readiness 503, every answer closing
    /// its connection) before closing the listeners.
    pub grace_period_seconds: u64,
    /// Once the listeners are closed (after the grace period, or 5 s after an upgrade's
    /// hand-over), how long in-flight requests get to finish before the process exits.
    pub graceful_shutdown_timeout_seconds: u64,
    /// Unix socket over which a new process (`--upgrade`) takes the listening sockets. One per
    /// instance on a machine.
    pub upgrade_sock: String,
    /// Where the pid is written.
    pub pid_file: String,
    /// Idle upstream connections kept for reuse, across all upstreams.
    pub upstream_keepalive_pool_size: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ListenSection {
    /// Plain HTTP listeners (`0.0.0.0:80` in production).
    pub http: Vec<String>,
    /// TLS listeners (`0.0.0.0:443`); need `tls_cert` and `tls_key`.
    pub https: Vec<String>,
    /// PEM certificate chain.
    pub tls_cert: String,
    /// PEM private key.
    pub tls_key: String,
    /// Offer HTTP/2 via ALPN on TLS listeners.
    pub http2: bool,
    /// Answer plain HTTP with a 308 to the same URL on HTTPS.
    pub redirect_http_to_https: bool,
    /// `Strict-Transport-Security: max-age=<n>` on TLS responses; 0 sends none.
    pub hsts_max_age_seconds: u64,
    /// Read buffer each client connection holds for its whole life. Pingora's default is
    /// 64 KiB, which made 20,000 idle keep-alive connections cost 2 GB (bench `connections`);
    /// a request head fits in far less, and bodies stream through it in several reads.
    pub read_buffer_bytes: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSection {
    /// `/metrics`, `/health/live`, `/health/ready`. Never on a public interface.
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamsSection {
    /// API upstreams (`host:port`), round robin. Re-read on SIGHUP.
    pub servers: Vec<String>,
    /// TCP connect timeout to an upstream.
    pub connect_timeout_ms: u64,
    /// Longest wait for an upstream's response (504 beyond).
    pub read_timeout_ms: u64,
    /// Idle upstream connections are closed after this long.
    pub idle_timeout_ms: u64,
    /// Retry an idempotent request once on another upstream when the first fails before a
    /// response.
    pub retry_idempotent: bool,
    pub health_check: HealthCheckSection,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthCheckSection {
    /// Path answered 200 by a live upstream.
    pub path: String,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive successes to bring an upstream back.
    pub rise: usize,
    /// Consecutive failures to eject an upstream.
    pub fall: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Largest request body (413 beyond). Bulk uploads need it large.
    pub max_request_body_bytes: u64,
    /// Longest wait for the next piece of a request body from the client (408 beyond).
    pub client_body_timeout_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsSection {
    /// Peers allowed to name the client (`X-Real-IP`, `X-Forwarded-For`) and the request id:
    /// load balancers in front of the edge (addresses or CIDRs). Any other peer's headers are
    /// ignored, so clients cannot spoof their address. Reloaded by SIGHUP.
    pub trusted_proxies: Vec<String>,
    /// Cloudflare's address blocks, when the edge sits behind Cloudflare: only these peers'
    /// `CF-Connecting-IP` is believed. Reloaded by SIGHUP.
    pub cloudflare_proxies: Vec<String>,
    /// Most (client, class) buckets kept; bounds memory under a flood from many addresses.
    pub max_tracked_clients: usize,
    pub redirect: Limit,
    pub write: Limit,
    pub auth: Limit,
    pub read: Limit,
}

/// A token bucket: `rate` requests a second sustained, `burst` at once. `rate: 0` disables.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    pub rate: f64,
    pub burst: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheSection {
    /// How long a link stays in the in-process near-cache. Invalidations drop it sooner.
    pub near_ttl_ms: u64,
    /// Most links in the near-cache.
    pub near_capacity: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClicksSection {
    /// Share of clicks recorded (same meaning as the API's `EVENT_LOG_SAMPLE_RATE`).
    pub sample_rate: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSection {
    /// Log filter (`LOG_LEVEL`).
    pub level: String,
    /// Share of requests that get an access-log line (errors are always logged).
    pub access_log_sample_rate: f64,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            threads: 2,
            work_stealing: true,
            grace_period_seconds: 5,
            graceful_shutdown_timeout_seconds: 10,
            upgrade_sock: "/tmp/kurz-proxy-upgrade.sock".into(),
            pid_file: "/tmp/kurz-proxy.pid".into(),
            upstream_keepalive_pool_size: 256,
        }
    }
}

impl Default for ListenSection {
    fn default() -> Self {
        Self {
            http: vec!["0.0.0.0:80".into()],
            https: vec![],
            tls_cert: String::new(),
            tls_key: String::new(),
            http2: true,
            redirect_http_to_https: false,
            hsts_max_age_seconds: 0,
            read_buffer_bytes: 8192,
        }
    }
}

impl Default for AdminSection {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9180".into(),
        }
    }
}

impl Default for UpstreamsSection {
    fn default() -> Self {
        Self {
            servers: vec!["127.0.0.1:8000".into()],
            connect_timeout_ms: 1000,
            read_timeout_ms: 30_000,
            idle_timeout_ms: 60_000,
            retry_idempotent: true,
            health_check: HealthCheckSection::default(),
        }
    }
}

impl Default for HealthCheckSection {
    fn default() -> Self {
        Self {
            path: "/health/live".into(),
            interval_ms: 1000,
            timeout_ms: 1000,
            rise: 2,
            fall: 2,
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_request_body_bytes: 32 << 20,
            client_body_timeout_ms: 10_000,
        }
    }
}

impl Default for RateLimitsSection {
    fn default() -> Self {
        Self {
            trusted_proxies: vec![],
            cloudflare_proxies: vec![],
            max_tracked_clients: 1_000_000,
            redirect: Limit {
                rate: 200.0,
                burst: 400.0,
            },
            write: Limit {
                rate: 20.0,
                burst: 40.0,
            },
            auth: Limit {
                rate: 2.0,
                burst: 10.0,
            },
            read: Limit {
                rate: 100.0,
                burst: 200.0,
            },
        }
    }
}

impl Default for CacheSection {
    fn default() -> Self {
        Self {
            near_ttl_ms: 5_000,
            near_capacity: 100_000,
        }
    }
}

impl Default for ClicksSection {
    fn default() -> Self {
        Self { sample_rate: 1.0 }
    }
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            level: "info".into(),
            access_log_sample_rate: 1.0,
        }
    }
}

fn list(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

impl ProxyConfig {
    /// Who may name the client and the request id (see `kurz_common::proxies`).
    pub fn proxy_trust(&self) -> Result<kurz_common::proxies::ProxyTrust, String> {
        kurz_common::proxies::ProxyTrust::parse(
            &self.rate_limits.trusted_proxies,
            &self.rate_limits.cloudflare_proxies,
        )
    }

    /// File + environment, validated.
    pub fn load(path: &Path, env: &dyn EnvSource) -> Result<Self, String> {
        let mut cfg: ProxyConfig = kurz_common::config::load_yaml(path)?;
        cfg.apply_env(env);
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn apply_env(&mut self, env: &dyn EnvSource) {
        if let Some(v) = env.get("REDIS_URL") {
            self.redis.url = v;
        }
        if let Some(v) = env.get("KURZ_REDIS_PREFIX") {
            self.redis.prefix = v;
        }
        if let Some(v) = env.get("KURZ_PROXY_HTTP") {
            self.listen.http = list(&v);
        }
        if let Some(v) = env.get("KURZ_PROXY_HTTPS") {
            self.listen.https = list(&v);
        }
        if let Some(v) = env.get("KURZ_PROXY_ADMIN") {
            self.admin.listen = v;
        }
        if let Some(v) = env.get("KURZ_UPSTREAMS") {
            self.upstreams.servers = list(&v);
        }
        if let Some(v) = env.get("KURZ_TLS_CERT") {
            self.listen.tls_cert = v;
        }
        if let Some(v) = env.get("KURZ_TLS_KEY") {
            self.listen.tls_key = v;
        }
        if let Some(v) = env.get("LOG_LEVEL") {
            self.log.level = v.to_ascii_lowercase();
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let bad = |key: &str, why: &str| Err(format!("config key `{key}` {why}"));
        let addr = |key: &str, v: &str| -> Result<(), String> {
            v.parse::<SocketAddr>()
                .map(|_| ())
                .map_err(|_| format!("config key `{key}` has {v:?}, not an ip:port address"))
        };
        if self.server.threads == 0 || self.server.threads > 256 {
            return bad("server.threads", "must be 1..=256");
        }
        if self.server.upgrade_sock.is_empty() || self.server.pid_file.is_empty() {
            return bad("server.upgrade_sock/pid_file", "must be set");
        }
        if self.listen.http.is_empty() && self.listen.https.is_empty() {
            return bad("listen", "needs at least one http or https address");
        }
        if !(1024..=1 << 20).contains(&self.listen.read_buffer_bytes) {
            return bad(
                "listen.read_buffer_bytes",
                "must be between 1024 and 1048576",
            );
        }
        for a in &self.listen.http {
            addr("listen.http", a)?;
        }
        for a in &self.listen.https {
            addr("listen.https", a)?;
        }
        if !self.listen.https.is_empty() {
            for (key, path) in [
                ("listen.tls_cert", &self.listen.tls_cert),
                ("listen.tls_key", &self.listen.tls_key),
            ] {
                if path.is_empty() {
                    return bad(key, "must be set when listen.https is");
                }
                if !Path::new(path).is_file() {
                    return Err(format!("config key `{key}`: file {path:?} not found"));
                }
            }
        }
        if self.listen.redirect_http_to_https && self.listen.https.is_empty() {
            return bad("listen.redirect_http_to_https", "needs an https listener");
        }
        addr("admin.listen", &self.admin.listen)?;
        if self.upstreams.servers.is_empty() {
            return bad("upstreams.servers", "needs at least one upstream");
        }
        for s in &self.upstreams.servers {
            addr("upstreams.servers", s)?;
        }
        let u = &self.upstreams;
        if u.connect_timeout_ms == 0 || u.read_timeout_ms == 0 || u.idle_timeout_ms == 0 {
            return bad("upstreams.*_timeout_ms", "must be above 0");
        }
        let hc = &u.health_check;
        if !hc.path.starts_with('/') {
            return bad("upstreams.health_check.path", "must start with /");
        }
        if hc.interval_ms == 0 || hc.timeout_ms == 0 || hc.rise == 0 || hc.fall == 0 {
            return bad(
                "upstreams.health_check",
                "interval_ms, timeout_ms, rise and fall must be above 0",
            );
        }
        if self.limits.max_request_body_bytes == 0 || self.limits.client_body_timeout_ms == 0 {
            return bad("limits", "values must be above 0");
        }
        self.proxy_trust().map_err(|e| {
            format!("config key `rate_limits.trusted_proxies`/`cloudflare_proxies`: {e}")
        })?;
        if self.rate_limits.max_tracked_clients < 1024 {
            return bad("rate_limits.max_tracked_clients", "must be at least 1024");
        }
        for (key, l) in [
            ("rate_limits.redirect", self.rate_limits.redirect),
            ("rate_limits.write", self.rate_limits.write),
            ("rate_limits.auth", self.rate_limits.auth),
            ("rate_limits.read", self.rate_limits.read),
        ] {
            if !(l.rate >= 0.0 && l.burst >= 1.0 && l.rate.is_finite() && l.burst.is_finite()) {
                return bad(key, "needs rate >= 0 and burst >= 1");
            }
        }
        self.redis.validate("redis")?;
        if self.cache.near_capacity == 0 || self.cache.near_ttl_ms == 0 {
            return bad("cache", "near_capacity and near_ttl_ms must be above 0");
        }
        if !(0.0..=1.0).contains(&self.clicks.sample_rate) {
            return bad("clicks.sample_rate", "must be between 0.0 and 1.0");
        }
        if !(0.0..=1.0).contains(&self.log.access_log_sample_rate) {
            return bad("log.access_log_sample_rate", "must be between 0.0 and 1.0");
        }
        if !kurz_common::logging::is_valid_level(&self.log.level) {
            return bad(
                "log.level",
                "must be off, error, warn, info, debug or trace",
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn conf_path() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/proxy.yaml")
    }

    #[test]
    fn the_shipped_config_file_loads_and_validates() {
        ProxyConfig::load(&conf_path(), &HashMap::new()).expect("conf/proxy.yaml is valid");
    }

    #[test]
    fn every_key_is_documented() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let docs = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
        let yaml = std::fs::read_to_string(root.join("conf/proxy.yaml")).unwrap();
        let defaults = serde_json::to_value(ProxyConfig::default()).unwrap();
        let proxy_docs = &docs[docs.find("## kurz-proxy").expect("a kurz-proxy section")..];
        kurz_common::config::check_documented(&defaults, &yaml, proxy_docs).unwrap();
    }

    #[test]
    fn a_typo_is_named() {
        let err = kurz_common::config::parse_yaml::<ProxyConfig>("upstreams:\n  servrs: []\n")
            .unwrap_err();
        assert!(err.contains("servrs"), "{err}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let mut c = ProxyConfig::default();
        c.upstreams.servers = vec!["nowhere".into()];
        assert!(c.validate().unwrap_err().contains("upstreams.servers"));
        let mut c = ProxyConfig::default();
        c.listen.https = vec!["127.0.0.1:443".into()];
        assert!(c.validate().unwrap_err().contains("listen.tls_cert"));
        let mut c = ProxyConfig::default();
        c.rate_limits.trusted_proxies = vec!["10.0.0.0/99".into()];
        assert!(c.validate().unwrap_err().contains("trusted_proxies"));
        let mut c = ProxyConfig::default();
        c.listen.read_buffer_bytes = 100;
        assert!(c
            .validate()
            .unwrap_err()
            .contains("listen.read_buffer_bytes"));
    }

    #[test]
    fn environment_overrides_addresses() {
        let env: HashMap<String, String> = [
            ("KURZ_UPSTREAMS", "127.0.0.1:1, 127.0.0.1:2"),
            ("KURZ_PROXY_HTTP", "127.0.0.1:8080"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = ProxyConfig::load(&conf_path(), &env).unwrap();
        assert_eq!(c.upstreams.servers, vec!["127.0.0.1:1", "127.0.0.1:2"]);
        assert_eq!(c.listen.http, vec!["127.0.0.1:8080"]);
    }
}
