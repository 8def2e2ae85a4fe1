//! kurz-proxy configuration: `conf/proxy.yaml`, environment overrides for secrets and addresses,
//! and validation that names the bad key.
//!
//! Precedence: environment > file > defaults. Overrides: `REDIS_URL`, `REDIS_CLUSTER_URLS`,
//! `KURZ_REDIS_REPLICA_ACKS`, `KURZ_REDIS_PREFIX`,
//! `KURZ_PROXY_HTTP` / `KURZ_PROXY_HTTPS` (comma-separated listen addresses), `KURZ_PROXY_ADMIN`,
//! `KURZ_UPSTREAMS` (comma-separated), `KURZ_TLS_CERT`, `KURZ_TLS_KEY`, `LOG_LEVEL`.

mod sections;

pub use sections::*;

use kurz_common::config::RedisSettings;
use kurz_common::env::{list_var, EnvSource};
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
    pub privacy: kurz_common::clicks::PrivacySettings,
    pub log: LogSection,
}

impl ProxyConfig {
    /// Who may name the client and the request id (see `kurz_common::proxies`).
    pub fn proxy_trust(&self) -> Result<kurz_common::proxies::ProxyTrust, String> {
        kurz_common::proxies::ProxyTrust::parse(
            &self.rate_limits.trusted_proxies,
            &self.rate_limits.cloudflare_proxies,
        )
        .map(|t| t.with_real_ip(self.rate_limits.real_ip_header))
    }

    /// The keys whose value differs between `self` (what runs) and `next` (a reloaded file)
    /// that a SIGHUP cannot apply: they keep `self`'s until a restart or a graceful upgrade.
    pub fn changes_needing_restart(&self, next: &ProxyConfig) -> Vec<String> {
        use kurz_common::config::{at, leaf_keys};
        let running = serde_json::to_value(self).expect("the config serializes");
        let next = serde_json::to_value(next).expect("the config serializes");
        leaf_keys(&running)
            .into_iter()
            .filter(|k| !reloaded(k) && at(&running, k) != at(&next, k))
            .collect()
    }

    /// The keys the file changed (from `file_then`, the YAML alone at start, to `file_now`) to
    /// a value other than what runs (`self`, the file with the environment over it): an
    /// environment variable sets them, so the edit changes nothing, now or after a restart
    /// (a key no reload applies included: [`Self::changes_needing_restart`] compares file and
    /// environment with file and environment, and would not see it). A key the environment
    /// sets and the file leaves alone is not named: Kubernetes and compose give the upstreams
    /// by environment, and every reload would warn.
    pub fn edits_the_environment_overrides(
        &self,
        file_then: &ProxyConfig,
        file_now: &ProxyConfig,
    ) -> Vec<String> {
        use kurz_common::config::{at, leaf_keys};
        let running = serde_json::to_value(self).expect("the config serializes");
        let then = serde_json::to_value(file_then).expect("the config serializes");
        let now = serde_json::to_value(file_now).expect("the config serializes");
        leaf_keys(&running)
            .into_iter()
            .filter(|k| at(&now, k) != at(&then, k) && at(&running, k) != at(&now, k))
            .collect()
    }

    /// File + environment, validated.
    pub fn load(path: &Path, env: &dyn EnvSource) -> Result<Self, String> {
        Self::load_with_file(path, env).map(|(cfg, _)| cfg)
    }

    /// File + environment, validated, and the file alone: one read, so the two agree.
    pub fn load_with_file(path: &Path, env: &dyn EnvSource) -> Result<(Self, Self), String> {
        let file: ProxyConfig = kurz_common::config::load_yaml(path)?;
        let mut cfg = file.clone();
        cfg.apply_env(env)?;
        cfg.validate()?;
        Ok((cfg, file))
    }

    pub fn apply_env(&mut self, env: &dyn EnvSource) -> Result<(), String> {
        if let Some(n) = kurz_common::env::parse_var(env, "KURZ_REDIS_REPLICA_ACKS")? {
            self.redis.replica_acks = n;
        }
        if let Some(v) = env.get("REDIS_URL") {
            self.redis.url = v;
        }
        if let Some(v) = list_var(env, "REDIS_CLUSTER_URLS") {
            self.redis.cluster_nodes = v;
        }
        if let Some(v) = env.get("KURZ_REDIS_PREFIX") {
            self.redis.prefix = v;
        }
        if let Some(v) = list_var(env, "KURZ_PROXY_HTTP") {
            self.listen.http = v;
        }
        if let Some(v) = list_var(env, "KURZ_PROXY_HTTPS") {
            self.listen.https = v;
        }
        if let Some(v) = env.get("KURZ_PROXY_ADMIN") {
            self.admin.listen = v;
        }
        if let Some(v) = list_var(env, "KURZ_UPSTREAMS") {
            self.upstreams.servers = v;
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
        Ok(())
    }

    /// Without a TLS listener of its own, only a load balancer's `X-Forwarded-Proto: https`
    /// can tell a redirected request from a plain one: without a proxy it trusts, every
    /// request would be redirected again, for ever. `listen` is the listeners' section to
    /// check this file's proxies against: its own at start, the running one on a reload (the
    /// redirect and the listeners change only at a restart, the proxies at a reload).
    pub fn https_redirect_can_end(&self, listen: &ListenSection) -> Result<(), String> {
        let rl = &self.rate_limits;
        if listen.redirect_http_to_https
            && listen.https.is_empty()
            && rl.trusted_proxies.is_empty()
            && rl.cloudflare_proxies.is_empty()
        {
            return Err(
                "config key `listen.redirect_http_to_https` needs an https listener, or \
                 the proxy that ends TLS in rate_limits.trusted_proxies"
                    .into(),
            );
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), String> {
        let bad = |key: &str, why: &str| Err(format!("config key `{key}` {why}"));
        let addr = |key: &str, v: &str| -> Result<SocketAddr, String> {
            v.parse::<SocketAddr>()
                .map_err(|_| format!("config key `{key}` has {v:?}, not an ip:port address"))
        };
        // Port 0 binds a port the kernel picks: no client, probe or load balancer could find
        // it, and an HTTPS listener on it would take its handshakes for plain HTTP (TLS is
        // told apart by the configured port).
        let listener = |key: &str, v: &str| -> Result<(), String> {
            match addr(key, v)?.port() {
                0 => Err(format!(
                    "config key `{key}` has {v:?}: port 0 is no known port"
                )),
                _ => Ok(()),
            }
        };
        if self.server.threads == 0 || self.server.threads > 256 {
            return bad("server.threads", "must be 1..=256");
        }
        if self.server.upgrade_sock.is_empty() {
            return bad("server.upgrade_sock", "must be set");
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
            listener("listen.http", a)?;
        }
        for a in &self.listen.https {
            listener("listen.https", a)?;
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
        self.https_redirect_can_end(&self.listen)?;
        let rl = &self.rate_limits;
        listener("admin.listen", &self.admin.listen)?;
        listeners_apart(self)?;
        if self.upstreams.servers.is_empty() {
            return bad("upstreams.servers", "needs at least one upstream");
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.upstreams.servers {
            let a = addr("upstreams.servers", s)?;
            if a.port() == 0 {
                return bad(
                    "upstreams.servers",
                    &format!("has {s:?}: port 0 is no port to connect to"),
                );
            }
            // The list is a set: a second entry would not weigh an upstream twice, as an
            // operator writing it might expect.
            if !seen.insert(a) {
                return bad("upstreams.servers", &format!("lists {s:?} twice"));
            }
        }
        let u = &self.upstreams;
        let hc = &u.health_check;
        // Parsed as the health check will parse it: a path it cannot send would otherwise fail
        // at start naming another key, and pass a reload unnoticed.
        if !hc.path.starts_with('/') || hc.path.parse::<http::Uri>().is_err() {
            return bad(
                "upstreams.health_check.path",
                "must be a URL path starting with / (no spaces)",
            );
        }
        // Each key by its own name: the message must point at the line to change.
        for (key, v) in [
            ("upstreams.connect_timeout_ms", u.connect_timeout_ms),
            ("upstreams.read_timeout_ms", u.read_timeout_ms),
            ("upstreams.bulk_read_timeout_ms", u.bulk_read_timeout_ms),
            ("upstreams.idle_timeout_ms", u.idle_timeout_ms),
            ("upstreams.health_check.interval_ms", hc.interval_ms),
            ("upstreams.health_check.timeout_ms", hc.timeout_ms),
            ("upstreams.health_check.rise", hc.rise as u64),
            ("upstreams.health_check.fall", hc.fall as u64),
            ("cache.near_capacity", self.cache.near_capacity as u64),
            ("cache.near_ttl_ms", self.cache.near_ttl_ms),
            (
                "server.upstream_keepalive_pool_size",
                self.server.upstream_keepalive_pool_size as u64,
            ),
        ] {
            if v == 0 {
                return bad(key, "must be above 0");
            }
        }
        let l = &self.limits;
        for (key, v) in [
            ("limits.max_request_body_bytes", l.max_request_body_bytes),
            ("limits.client_body_timeout_ms", l.client_body_timeout_ms),
            ("limits.header_timeout_ms", l.header_timeout_ms),
            ("limits.body_total_timeout_ms", l.body_total_timeout_ms),
            ("limits.client_send_timeout_ms", l.client_send_timeout_ms),
            (
                "limits.max_connections_per_client",
                l.max_connections_per_client as u64,
            ),
        ] {
            if v == 0 {
                return bad(key, "must be above 0");
            }
        }
        for (key, list) in [
            ("rate_limits.trusted_proxies", &rl.trusted_proxies),
            ("rate_limits.cloudflare_proxies", &rl.cloudflare_proxies),
        ] {
            kurz_common::proxies::ProxyTrust::parse(list, &[])
                .map_err(|e| format!("config key `{key}`: {e}"))?;
        }
        if self.rate_limits.max_tracked_clients < 1024 {
            return bad("rate_limits.max_tracked_clients", "must be at least 1024");
        }
        if !(16..=128).contains(&self.rate_limits.ipv6_prefix_len) {
            return bad("rate_limits.ipv6_prefix_len", "must be between 16 and 128");
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

        if !(0.0..=1.0).contains(&self.clicks.sample_rate) {
            return bad("clicks.sample_rate", "must be between 0.0 and 1.0");
        }
        if self.clicks.batch_window_us > 100_000 {
            return bad("clicks.batch_window_us", "must be at most 100000 (0.1 s)");
        }
        if !(1..=10_000).contains(&self.clicks.batch_max) {
            return bad("clicks.batch_max", "must be 1..=10000");
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

/// What a SIGHUP applies (docs/configuration.md says the same): the upstream list, the rate
/// limits but for the limiter's size, and the certificate files.
fn reloaded(key: &str) -> bool {
    matches!(
        key,
        "upstreams.servers" | "listen.tls_cert" | "listen.tls_key"
    ) || (key.starts_with("rate_limits.") && key != "rate_limits.max_tracked_clients")
}

/// No two listeners bind the same socket. Pingora would retry the second bind for 30 s and then
/// lose that service (the process stays up, `/health/ready` answers 200), or, for two equal
/// strings, share one socket between two services (plain HTTP handlers on a TLS port, public
/// clients on the admin listener).
fn listeners_apart(c: &ProxyConfig) -> Result<(), String> {
    let mut all: Vec<(&str, SocketAddr)> = Vec::new();
    let keyed = [
        ("listen.http", &c.listen.http),
        ("listen.https", &c.listen.https),
    ];
    for (key, list) in keyed {
        for a in list {
            all.push((key, a.parse().expect("checked above")));
        }
    }
    all.push((
        "admin.listen",
        c.admin.listen.parse().expect("checked above"),
    ));
    for (i, (key, a)) in all.iter().enumerate() {
        for (other, b) in &all[..i] {
            if kurz_common::config::sockets_clash(a, b) {
                return Err(format!(
                    "config key `{key}` has {a}, which takes the socket of {b} in `{other}`"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn shipped() -> ProxyConfig {
        ProxyConfig::load(&conf_path(), &HashMap::new()).unwrap()
    }

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// A reload checks the file's proxies against the redirect that keeps running (it changes
    /// only at a restart): a file that turns the redirect off and empties the trusted proxies
    /// is fine alone, but the running redirect would then loop.
    #[test]
    fn a_reload_cannot_leave_the_running_https_redirect_without_its_proxy() {
        let mut started = ProxyConfig::default();
        started.listen.redirect_http_to_https = true;
        started.rate_limits.trusted_proxies = strings(&["10.0.0.0/8"]);
        started.validate().unwrap();
        let mut next = started.clone();
        next.listen.redirect_http_to_https = false;
        next.rate_limits.trusted_proxies.clear();
        next.validate().expect("alone, the file is fine");
        let err = next.https_redirect_can_end(&started.listen).unwrap_err();
        assert!(err.contains("`listen.redirect_http_to_https`"), "{err}");
        next.rate_limits.cloudflare_proxies = strings(&["cloudflare"]);
        next.https_redirect_can_end(&started.listen).unwrap();
    }

    /// Listeners that would bind one socket twice are refused at start and on reload, naming
    /// the key; distinct addresses on one port are fine.
    #[test]
    fn listeners_that_share_a_socket_are_refused() {
        for (http, admin, key) in [
            (
                &["0.0.0.0:8080", "127.0.0.1:8080"][..],
                "127.0.0.1:9180",
                "listen.http",
            ),
            (
                &["127.0.0.1:8080", "127.0.0.1:8080"][..],
                "127.0.0.1:9180",
                "listen.http",
            ),
            (
                &["[::]:8080", "127.0.0.1:8080"][..],
                "127.0.0.1:9180",
                "listen.http",
            ),
            (&["0.0.0.0:9180"][..], "127.0.0.1:9180", "admin.listen"),
        ] {
            let mut c = shipped();
            c.listen.http = strings(http);
            c.admin.listen = admin.into();
            let err = c.validate().unwrap_err();
            assert!(
                err.contains(key) && err.contains("takes the socket"),
                "{http:?} {admin}: {err}"
            );
        }
        for http in [
            &["127.0.0.1:8080", "127.0.0.2:8080"][..],
            &["0.0.0.0:8080", "[::1]:8080"][..],
        ] {
            let mut c = shipped();
            c.listen.http = strings(http);
            c.validate().unwrap_or_else(|e| panic!("{http:?}: {e}"));
        }
    }

    #[test]
    fn a_health_check_path_that_is_no_url_path_is_refused() {
        for path in ["/health live", "/health\n", "/health\u{7f}"] {
            let mut c = shipped();
            c.upstreams.health_check.path = path.into();
            let err = c.validate().unwrap_err();
            assert!(err.contains("upstreams.health_check.path"), "{path}: {err}");
        }
    }

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

    /// Every variable configuration.md names for kurz-proxy reaches its key, and a bad value
    /// stops start-up naming the key it set.
    #[test]
    fn every_documented_variable_reaches_its_key_and_a_bad_value_names_it() {
        type Applied = fn(&ProxyConfig) -> bool;
        // Any file will do for the TLS pair here: start-up checks they exist, loading reads them.
        let file = conf_path().to_string_lossy().into_owned();
        let cases: Vec<(Vec<(&str, &str)>, Applied)> = vec![
            (
                vec![("KURZ_PROXY_HTTP", "127.0.0.1:8080, 127.0.0.1:8081")],
                |c| c.listen.http == ["127.0.0.1:8080", "127.0.0.1:8081"],
            ),
            (
                vec![
                    ("KURZ_PROXY_HTTPS", "127.0.0.1:8443"),
                    ("KURZ_TLS_CERT", &file),
                    ("KURZ_TLS_KEY", &file),
                ],
                |c| {
                    c.listen.https == ["127.0.0.1:8443"]
                        && c.listen.tls_cert.ends_with("proxy.yaml")
                        && c.listen.tls_key.ends_with("proxy.yaml")
                },
            ),
            (vec![("KURZ_PROXY_ADMIN", "127.0.0.1:9999")], |c| {
                c.admin.listen == "127.0.0.1:9999"
            }),
            (vec![("KURZ_UPSTREAMS", "127.0.0.1:1,127.0.0.1:2")], |c| {
                c.upstreams.servers == ["127.0.0.1:1", "127.0.0.1:2"]
            }),
            (vec![("REDIS_URL", "redis://cache.example:6380/2")], |c| {
                c.redis.url == "redis://cache.example:6380/2"
            }),
            (vec![("REDIS_CLUSTER_URLS", "redis://a:7000")], |c| {
                c.redis.cluster_nodes == ["redis://a:7000"]
            }),
            (vec![("KURZ_REDIS_PREFIX", "shop")], |c| {
                c.redis.prefix == "shop"
            }),
            (vec![("KURZ_REDIS_REPLICA_ACKS", "1")], |c| {
                c.redis.replica_acks == 1
            }),
            (vec![("LOG_LEVEL", "WARN")], |c| c.log.level == "warn"),
        ];
        let shipped = ProxyConfig::load(&conf_path(), &HashMap::new()).unwrap();
        for (vars, applied) in &cases {
            assert!(!applied(&shipped), "{vars:?}: already the shipped value");
            let env: HashMap<String, String> = vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let c =
                ProxyConfig::load(&conf_path(), &env).unwrap_or_else(|e| panic!("{vars:?}: {e}"));
            assert!(applied(&c), "{vars:?} did not reach its key");
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let docs = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
        let proxy_docs = &docs[docs.find("## kurz-proxy").expect("a kurz-proxy section")..];
        let documented = kurz_common::config::documented_env_vars(proxy_docs);
        assert!(documented.len() >= cases.len(), "{documented:?}");
        for var in &documented {
            assert!(
                cases
                    .iter()
                    .any(|(vars, _)| vars.iter().any(|(v, _)| v == var)),
                "{var} is documented but not tested here"
            );
        }
        for (var, bad, key) in [
            ("KURZ_PROXY_HTTP", "nowhere", "listen.http"),
            ("KURZ_PROXY_ADMIN", "nowhere", "admin.listen"),
            ("KURZ_UPSTREAMS", "nowhere", "upstreams.servers"),
            ("KURZ_REDIS_REPLICA_ACKS", "one", "KURZ_REDIS_REPLICA_ACKS"),
            ("KURZ_PROXY_HTTPS", "127.0.0.1:8443", "listen.tls_cert"),
        ] {
            let env: HashMap<String, String> = [(var.to_string(), bad.to_string())].into();
            let err = ProxyConfig::load(&conf_path(), &env).unwrap_err();
            assert!(err.contains(key), "{var}={bad}: {err}");
        }
    }

    #[test]
    fn a_typo_is_named() {
        let err = kurz_common::config::parse_yaml::<ProxyConfig>("upstreams:\n  servrs: []\n")
            .unwrap_err();
        assert!(err.contains("servrs"), "{err}");
        let err = kurz_common::config::parse_yaml::<ProxyConfig>(
            "rate_limits:\n  redirect:\n    rat: 5\n",
        )
        .unwrap_err();
        assert!(err.contains("rat"), "{err}");
    }

    /// A reload names what it could not apply: every other changed key, and none it applied.
    #[test]
    fn a_reload_names_the_changed_keys_it_cannot_apply() {
        let running = ProxyConfig::default();
        let mut next = running.clone();
        assert!(running.changes_needing_restart(&next).is_empty());
        next.rate_limits.redirect.rate = 1.0;
        next.rate_limits.trusted_proxies = vec!["10.0.0.0/8".into()];
        next.upstreams.servers = vec!["127.0.0.1:9".into()];
        next.listen.tls_cert = "/etc/kurz/new.pem".into();
        assert!(running.changes_needing_restart(&next).is_empty());
        next.clicks.batch_max = 7;
        next.listen.http = vec!["127.0.0.1:81".into()];
        next.rate_limits.max_tracked_clients = 4096;
        let mut stale = running.changes_needing_restart(&next);
        stale.sort();
        assert_eq!(
            stale,
            [
                "clicks.batch_max",
                "listen.http",
                "rate_limits.max_tracked_clients"
            ]
        );
    }

    /// A key the file changed while an environment variable sets it is named, whether a reload
    /// applies it or not (the reload then warns that the edit is not used); one the
    /// environment sets and the file leaves alone, or one the file changed to what runs, is not.
    #[test]
    fn edits_of_keys_the_environment_sets_are_named() {
        let env: HashMap<String, String> = [
            ("KURZ_UPSTREAMS", "10.0.0.1:8000,10.0.0.2:8000"),
            ("KURZ_TLS_KEY", "/run/secrets/key.pem"),
            ("REDIS_URL", "redis://10.0.0.9:6379"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        // What a reload runs: the file now, the environment over it.
        let running = |file: &ProxyConfig| {
            let mut c = file.clone();
            c.apply_env(&env).unwrap();
            c
        };
        let then = ProxyConfig::default();
        // Nothing edited: nothing named, though the environment sets three keys.
        assert!(running(&then)
            .edits_the_environment_overrides(&then, &then)
            .is_empty());
        let mut now = then.clone();
        now.upstreams.servers = vec!["10.0.0.3:8000".into()];
        now.redis.url = "redis://10.0.0.8:6379".into();
        now.rate_limits.redirect.rate = 7.0;
        let mut named = running(&now).edits_the_environment_overrides(&then, &now);
        named.sort();
        assert_eq!(named, ["redis.url", "upstreams.servers"]);
        // Edited to what the environment says: nothing is lost.
        now.upstreams.servers = running(&then).upstreams.servers;
        now.redis.url = running(&then).redis.url;
        assert!(running(&now)
            .edits_the_environment_overrides(&then, &now)
            .is_empty());
    }

    /// Every key of a rate-limit class is documented with a default: one given alone keeps the
    /// other's.
    #[test]
    fn a_rate_limit_class_takes_one_key_alone() {
        let c = kurz_common::config::parse_yaml::<ProxyConfig>(
            "rate_limits:\n  redirect:\n    rate: 500\n  auth:\n    burst: 3\n",
        )
        .expect("one key of a class");
        let d = RateLimitsSection::default();
        let r = &c.rate_limits;
        assert_eq!(
            (r.redirect.rate, r.redirect.burst),
            (500.0, d.redirect.burst)
        );
        assert_eq!((r.auth.rate, r.auth.burst), (d.auth.rate, 3.0));
        assert_eq!(r.write, d.write);
        assert_eq!(r.read, d.read);
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
        assert!(c
            .validate()
            .unwrap_err()
            .contains("`rate_limits.trusted_proxies`"));
        // The list holding the bad entry, not both.
        let mut c = ProxyConfig::default();
        c.rate_limits.trusted_proxies = vec!["10.0.0.0/8".into()];
        c.rate_limits.cloudflare_proxies = vec!["cloudflare".into()];
        let err = c.validate().unwrap_err();
        assert!(err.contains("`rate_limits.cloudflare_proxies`"), "{err}");
        assert!(!err.contains("trusted_proxies"), "{err}");
        // Redirecting to HTTPS needs a TLS listener or a load balancer's word for it…
        let mut c = ProxyConfig::default();
        c.listen.redirect_http_to_https = true;
        assert!(c
            .validate()
            .unwrap_err()
            .contains("`listen.redirect_http_to_https`"));
        // …which a trusted proxy that ends TLS gives.
        c.rate_limits.trusted_proxies = vec!["10.0.0.0/8".into()];
        c.validate()
            .expect("a load balancer ending TLS is enough for the redirect");
        // No pid file is ever written: an empty one is no error.
        let mut c = ProxyConfig::default();
        c.server.pid_file.clear();
        c.validate().expect("an empty pid_file");
        c.server.upgrade_sock.clear();
        assert!(c.validate().unwrap_err().contains("`server.upgrade_sock`"));
        let mut c = ProxyConfig::default();
        c.listen.read_buffer_bytes = 100;
        assert!(c
            .validate()
            .unwrap_err()
            .contains("listen.read_buffer_bytes"));
        // Keys checked together still each answer with their own full name.
        type Tweak = fn(&mut ProxyConfig);
        let cases: [(&str, Tweak); 4] = [
            ("upstreams.bulk_read_timeout_ms", |c| {
                c.upstreams.bulk_read_timeout_ms = 0
            }),
            ("upstreams.health_check.fall", |c| {
                c.upstreams.health_check.fall = 0
            }),
            ("cache.near_ttl_ms", |c| c.cache.near_ttl_ms = 0),
            ("cache.near_capacity", |c| c.cache.near_capacity = 0),
        ];
        for (key, tweak) in cases {
            let mut c = ProxyConfig::default();
            tweak(&mut c);
            let err = c.validate().unwrap_err();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
    }

    /// Addresses that would start an edge nobody can reach, or a pool that is not what it says.
    #[test]
    fn unreachable_addresses_and_repeated_upstreams_are_refused() {
        type Tweak = fn(&mut ProxyConfig);
        let cases: [(&str, Tweak); 6] = [
            ("listen.http", |c| {
                c.listen.http = vec!["127.0.0.1:0".into()]
            }),
            ("admin.listen", |c| c.admin.listen = "127.0.0.1:0".into()),
            ("upstreams.servers", |c| {
                c.upstreams.servers = vec!["10.0.0.1:0".into()]
            }),
            ("upstreams.servers", |c| {
                c.upstreams.servers = vec!["10.0.0.1:8000".into(), "10.0.0.1:8000".into()]
            }),
            ("server.upstream_keepalive_pool_size", |c| {
                c.server.upstream_keepalive_pool_size = 0
            }),
            // Checked before the certificate files, which this case lacks.
            ("listen.https", |c| {
                c.listen.https = vec!["127.0.0.1:0".into()]
            }),
        ];
        for (key, tweak) in cases {
            let mut c = ProxyConfig::default();
            tweak(&mut c);
            let err = c.validate().unwrap_err();
            assert!(err.contains(&format!("`{key}`")), "{key}: {err}");
        }
        let mut c = ProxyConfig::default();
        c.upstreams.servers = vec!["10.0.0.1:8000".into(), "10.0.0.2:8000".into()];
        c.validate().expect("two upstreams");
        // A wildcard address reaches this host (Linux connects it to the loopback).
        c.upstreams.servers = vec!["0.0.0.0:8000".into()];
        c.validate().expect("a wildcard upstream");
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

    #[test]
    fn the_environment_switches_redis_cluster_mode_on_and_names_a_bad_value() {
        let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let c = ProxyConfig::load(
            &conf_path(),
            &env(&[
                (
                    "REDIS_CLUSTER_URLS",
                    "redis://10.0.0.1:6379, redis://10.0.0.2:6379",
                ),
                ("KURZ_REDIS_REPLICA_ACKS", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(
            c.redis.cluster_nodes,
            vec!["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]
        );
        assert_eq!(c.redis.replica_acks, 1);
        let err =
            ProxyConfig::load(&conf_path(), &env(&[("KURZ_REDIS_REPLICA_ACKS", "9")])).unwrap_err();
        assert!(err.contains("redis.replica_acks"), "{err}");
        let err = ProxyConfig::load(
            &conf_path(),
            &env(&[("REDIS_CLUSTER_URLS", "redis://10.0.0.1:6379/3")]),
        )
        .unwrap_err();
        assert!(err.contains("redis.cluster_nodes"), "{err}");
    }
}
