//! What the request phases read on every request: settings fixed at start-up, and the
//! trusted-proxy rule that a reload replaces.

use crate::config::ProxyConfig;
use kurz_common::proxies::ProxyTrust;
use std::sync::Arc;
use std::time::Duration;

/// The trusted-proxy rule, replaced by a reload (SIGHUP).
pub type SharedTrust = Arc<std::sync::RwLock<Arc<ProxyTrust>>>;

/// Settings the phases read on every request, fixed at start-up.
pub struct EdgeSettings {
    pub max_body: u64,
    pub client_body_timeout: Duration,
    pub client_send_timeout: Duration,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    pub bulk_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub retry_idempotent: bool,
    pub redirect_http_to_https: bool,
    /// Built once: a `&str` would be copied into a new header value on every TLS redirect.
    pub hsts: Option<http::HeaderValue>,
    pub click_sample_rate: f64,
    pub store_ip: kurz_common::clicks::StoreIp,
    pub access_log_sample_rate: f64,
}

impl EdgeSettings {
    pub fn from_config(cfg: &ProxyConfig) -> Self {
        let u = &cfg.upstreams;
        Self {
            max_body: cfg.limits.max_request_body_bytes,
            client_body_timeout: Duration::from_millis(cfg.limits.client_body_timeout_ms),
            client_send_timeout: Duration::from_millis(cfg.limits.client_send_timeout_ms),
            connect_timeout: Duration::from_millis(u.connect_timeout_ms),
            read_timeout: Duration::from_millis(u.read_timeout_ms),
            bulk_read_timeout: Duration::from_millis(u.bulk_read_timeout_ms),
            idle_timeout: Duration::from_millis(u.idle_timeout_ms),
            retry_idempotent: u.retry_idempotent,
            redirect_http_to_https: cfg.listen.redirect_http_to_https,
            hsts: (cfg.listen.hsts_max_age_seconds > 0).then(|| {
                let text = format!("max-age={}", cfg.listen.hsts_max_age_seconds);
                http::HeaderValue::try_from(text).expect("digits make a header value")
            }),
            click_sample_rate: cfg.clicks.sample_rate,
            store_ip: cfg.privacy.store_ip,
            access_log_sample_rate: cfg.log.access_log_sample_rate,
        }
    }
}
