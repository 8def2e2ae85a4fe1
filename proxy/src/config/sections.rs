//! The sections of `conf/proxy.yaml`, each with its defaults; `super` loads and validates them.

use serde::{Deserialize, Deserializer, Serialize};

/// Pingora's own server settings.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSection {
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Let idle threads steal work from busy ones. Off by default: each thread then keeps its
    /// connections, its click batches and their Redis connection (`click_log`) to itself.
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
    /// Offer HTTP/2 via ALPN on TLS listeners. Off by default: h2 connections bypass the
    /// connection layer (`crate::conn`), so its deadlines do not hold for them.
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
    /// The same for bulk imports, imports and exports (`kurz_common::http::is_bulk_route`),
    /// which the API gives `limits.bulk_request_timeout_ms`.
    pub bulk_read_timeout_ms: u64,
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
    /// Longest time to receive a request head: from accept for a connection's first request,
    /// from the first byte for later ones (408 beyond). Defeats heads trickled a byte at a time.
    pub header_timeout_ms: u64,
    /// Longest time to receive a whole request body, however steadily it trickles (408 beyond),
    /// plus a second per `conn::guard::BODY_BYTES_PER_SECOND` received.
    pub body_total_timeout_ms: u64,
    /// Longest wait for the client to take the next piece of a response; the connection is
    /// closed beyond. A client that stops reading would otherwise hold its connection, the
    /// upstream connection behind it and the API's answer in memory for ever.
    pub client_send_timeout_ms: u64,
    /// Open connections one client (address, or IPv6 network per `rate_limits.ipv6_prefix_len`)
    /// may hold; more are answered 429 and closed. Trusted proxies are exempt.
    pub max_connections_per_client: usize,
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
    /// Whether the trusted proxies set `X-Real-IP` themselves (nginx's `proxy_set_header`);
    /// false behind one that only appends `X-Forwarded-For` (AWS ALB, HAProxy's `option
    /// forwardfor`), which would pass a client's own `X-Real-IP` through. Reloaded by SIGHUP.
    pub real_ip_header: bool,
    /// Most (client, class) buckets kept; bounds memory under a flood from many addresses.
    pub max_tracked_clients: usize,
    /// IPv6 clients are limited by network of this many leading bits (a host holds a /64).
    pub ipv6_prefix_len: u8,
    #[serde(deserialize_with = "redirect_limit")]
    pub redirect: Limit,
    #[serde(deserialize_with = "write_limit")]
    pub write: Limit,
    #[serde(deserialize_with = "auth_limit")]
    pub auth: Limit,
    #[serde(deserialize_with = "read_limit")]
    pub read: Limit,
}

/// A class as the file gives it: `rate` or `burst` alone keeps the other's default, as the
/// documented defaults of both keys promise.
fn limit_or<'de, D: Deserializer<'de>>(d: D, default: Limit) -> Result<Limit, D::Error> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Given {
        rate: Option<f64>,
        burst: Option<f64>,
    }
    let given = Given::deserialize(d)?;
    Ok(Limit {
        rate: given.rate.unwrap_or(default.rate),
        burst: given.burst.unwrap_or(default.burst),
    })
}

fn redirect_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Limit, D::Error> {
    limit_or(d, RateLimitsSection::default().redirect)
}

fn write_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Limit, D::Error> {
    limit_or(d, RateLimitsSection::default().write)
}

fn auth_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Limit, D::Error> {
    limit_or(d, RateLimitsSection::default().auth)
}

fn read_limit<'de, D: Deserializer<'de>>(d: D) -> Result<Limit, D::Error> {
    limit_or(d, RateLimitsSection::default().read)
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
    /// Longest a batch of click appends stays open after its first click (`click_log`); 0
    /// sends each batch as soon as the previous one is acknowledged.
    pub batch_window_us: u64,
    /// A batch this full is sent at once.
    pub batch_max: usize,
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
            work_stealing: false,
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
            http2: false,
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
            bulk_read_timeout_ms: 300_000,
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
            header_timeout_ms: 10_000,
            body_total_timeout_ms: 60_000,
            client_send_timeout_ms: 60_000,
            max_connections_per_client: 256,
        }
    }
}

impl Default for RateLimitsSection {
    fn default() -> Self {
        Self {
            trusted_proxies: vec![],
            cloudflare_proxies: vec![],
            real_ip_header: true,
            max_tracked_clients: 1_000_000,
            ipv6_prefix_len: 64,
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
        Self {
            sample_rate: 1.0,
            batch_window_us: 0,
            batch_max: 256,
        }
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
