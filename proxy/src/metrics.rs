//! Prometheus metrics of the edge, in the default registry (Pingora's own metrics live there
//! too), served by the admin listener. Names `kurz_proxy_<what>_<unit>`; labels from fixed sets.

use crate::rate_limit::Class;
use prometheus::Histogram;
use prometheus::{
    register_histogram_vec, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Encoder, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, TextEncoder,
};
use std::sync::LazyLock;

pub struct Metrics {
    /// By route class and status class.
    pub requests: IntCounterVec,
    /// By route class.
    pub duration: HistogramVec,
    pub in_flight: IntGauge,
    /// Link lookups by layer (`near`, `redis`) and result (`hit`, `negative`, `miss`, `error`;
    /// `schema_mismatch`: not asked, see `key_check`).
    pub cache_lookups: IntCounterVec,
    /// 1 healthy, 0 ejected, per configured upstream.
    pub upstream_healthy: IntGaugeVec,
    pub retries: IntCounter,
    /// By route class.
    pub rate_limited: IntCounterVec,
    /// Click-stream appends by result (`ok`, `failed`, `sampled_out`).
    pub clicks: IntCounterVec,
    /// SIGHUP reloads by result (`ok`, `error`).
    pub reloads: IntCounterVec,
    /// 0 after a refused reload, 1 after a start or a reload that took (in part too: see
    /// `config_keys_needing_restart`): what an alert can hold until the file is fixed.
    pub config_applied: IntGauge,
    /// Keys of the file the latest SIGHUP read that differ from the running process and only a
    /// restart applies: a reload that took in part still leaves work to do.
    pub config_keys_needing_restart: IntGauge,
    /// Invalidation messages received.
    pub invalidations: IntCounter,
    /// `notAfter` of the served certificate, unix seconds.
    pub tls_cert_expiry: IntGauge,
    /// 1 when the API's published Redis key schema matches this edge's, else 0 (redirects are
    /// then all forwarded to the API).
    pub key_schema_match: IntGauge,
    /// 1 while the near-cache serves (its invalidation subscription is up and answering), else 0.
    pub near_cache_enabled: IntGauge,
    /// Client connections open now.
    pub client_connections: IntGauge,
    /// The open-file limit the process runs with (`open_files`).
    pub open_files_limit: IntGauge,
    /// Descriptors open at the last scrape: client and upstream connections, Redis, files.
    pub open_files: IntGauge,
    /// Connections refused at accept for the per-client cap.
    pub connections_refused: IntCounter,
    /// Requests answered by the connection layer before Pingora saw them, by reason.
    pub heads_rejected: IntCounterVec,
    /// Clicks per pipeline sent by the group commit (`click_log`).
    pub click_batch_size: Histogram,
}

pub static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let m = Metrics {
        requests: register_int_counter_vec!(
            "kurz_proxy_requests_total",
            "Requests answered",
            &["class", "status_class"]
        )
        .expect("metric"),
        duration: register_histogram_vec!(
            "kurz_proxy_request_duration_seconds",
            "Request latency at the edge",
            &["class"],
            vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0
            ]
        )
        .expect("metric"),
        in_flight: register_int_gauge!("kurz_proxy_requests_in_flight", "Requests being handled")
            .expect("metric"),
        cache_lookups: register_int_counter_vec!(
            "kurz_proxy_cache_lookups_total",
            "Link lookups by layer and result",
            &["layer", "result"]
        )
        .expect("metric"),
        upstream_healthy: register_int_gauge_vec!(
            "kurz_proxy_upstream_healthy",
            "Upstream health (1 healthy, 0 ejected)",
            &["upstream"]
        )
        .expect("metric"),
        retries: register_int_counter!(
            "kurz_proxy_upstream_retries_total",
            "Requests retried on another upstream"
        )
        .expect("metric"),
        rate_limited: register_int_counter_vec!(
            "kurz_proxy_rate_limited_total",
            "Requests answered 429",
            &["class"]
        )
        .expect("metric"),
        clicks: register_int_counter_vec!(
            "kurz_proxy_click_appends_total",
            "Click-stream appends by result",
            &["result"]
        )
        .expect("metric"),
        reloads: register_int_counter_vec!(
            "kurz_proxy_config_reloads_total",
            "Config reloads by result",
            &["result"]
        )
        .expect("metric"),
        config_applied: register_int_gauge!(
            "kurz_proxy_config_last_reload_success",
            "0 after a refused reload; 1 after a start or a reload that took (keys it could not apply: kurz_proxy_config_keys_needing_restart)"
        )
        .expect("metric"),
        config_keys_needing_restart: register_int_gauge!(
            "kurz_proxy_config_keys_needing_restart",
            "Keys the latest reloaded config file changes that only a restart applies"
        )
        .expect("metric"),
        invalidations: register_int_counter!(
            "kurz_proxy_invalidations_total",
            "Near-cache invalidation messages received"
        )
        .expect("metric"),
        tls_cert_expiry: register_int_gauge!(
            "kurz_proxy_tls_cert_expiry_timestamp_seconds",
            "notAfter of the served TLS certificate (0: no TLS listener)"
        )
        .expect("metric"),
        key_schema_match: {
            let g = register_int_gauge!(
                "kurz_proxy_key_schema_match",
                "1 when the API's Redis key schema matches this edge's; 0: it differs, redirects are forwarded; -1: not read yet (Redis unreachable)"
            )
            .expect("metric");
            // Not 0 before the first read: an edge started while Redis was unreachable has
            // seen no mismatch, and the alert on 0 must not say it has.
            g.set(-1);
            g
        },
        near_cache_enabled: register_int_gauge!(
            "kurz_proxy_near_cache_enabled",
            "1 while the near-cache serves (its invalidation subscription answers); 0: off"
        )
        .expect("metric"),
        client_connections: register_int_gauge!(
            "kurz_proxy_client_connections",
            "Client connections open now"
        )
        .expect("metric"),
        open_files_limit: register_int_gauge!(
            "kurz_proxy_open_files_limit",
            "Descriptors the process may hold (soft RLIMIT_NOFILE, raised to the hard limit at start): each client and upstream connection takes one"
        )
        .expect("metric"),
        open_files: register_int_gauge!(
            "kurz_proxy_open_files",
            "Descriptors open at this scrape: client and upstream connections, Redis, files"
        )
        .expect("metric"),
        connections_refused: register_int_counter!(
            "kurz_proxy_connections_refused_total",
            "Connections refused because their client already held limits.max_connections_per_client"
        )
        .expect("metric"),
        heads_rejected: register_int_counter_vec!(
            "kurz_proxy_request_heads_rejected_total",
            "Requests refused before parsing finished: too large, malformed, method, head or body timeout, TLS handshake failed or late",
            &["reason"]
        )
        .expect("metric"),
        click_batch_size: prometheus::register_histogram!(
            "kurz_proxy_click_batch_size_clicks",
            "Clicks per pipeline the group commit sent to Redis",
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0]
        )
        .expect("metric"),
    };
    let build = register_int_gauge_vec!(
        "kurz_proxy_build_info",
        "Build of this process",
        &["version", "git_sha"]
    )
    .expect("metric");
    build
        .with_label_values(&[env!("CARGO_PKG_VERSION"), kurz_common::GIT_SHA])
        .set(1);
    // Every known label value from the start, so rates and alerts see zeros, not absent series.
    for class in ["redirect", "write", "auth", "read"] {
        m.rate_limited.with_label_values(&[class]);
        for status in kurz_common::http::STATUS_CLASSES {
            m.requests.with_label_values(&[class, status]);
        }
    }
    for layer in ["near", "redis"] {
        for result in ["hit", "negative", "miss", "error"] {
            m.cache_lookups.with_label_values(&[layer, result]);
        }
    }
    m.cache_lookups
        .with_label_values(&["redis", "schema_mismatch"]);
    for result in ["ok", "failed", "sampled_out"] {
        m.clicks.with_label_values(&[result]);
    }
    for result in ["ok", "partial", "error"] {
        m.reloads.with_label_values(&[result]);
    }
    // The process runs the file it started with.
    m.config_applied.set(1);
    for reason in crate::conn::REJECT_REASONS {
        m.heads_rejected.with_label_values(&[reason]);
    }
    m
});

pub use kurz_common::http::status_class;

/// The series every redirect touches, resolved once: a label lookup hashes the label values and
/// takes the vector's lock, several times per request.
pub struct Hot {
    /// `[class][status class]`, classes in `Class::ALL` order, status classes in
    /// `STATUS_CLASSES` order.
    pub requests: Vec<Vec<IntCounter>>,
    pub duration: Vec<Histogram>,
    pub near_hit: IntCounter,
    pub near_negative: IntCounter,
    pub near_miss: IntCounter,
    pub redis_hit: IntCounter,
    pub redis_negative: IntCounter,
    pub redis_miss: IntCounter,
    pub redis_error: IntCounter,
    pub redis_schema_mismatch: IntCounter,
    pub clicks_ok: IntCounter,
    pub clicks_failed: IntCounter,
    pub clicks_sampled_out: IntCounter,
}

pub static HOT: LazyLock<Hot> = LazyLock::new(|| {
    let m = &*METRICS;
    let lookup = |layer: &str, result: &str| m.cache_lookups.with_label_values(&[layer, result]);
    Hot {
        requests: Class::ALL
            .iter()
            .map(|c| {
                kurz_common::http::STATUS_CLASSES
                    .iter()
                    .map(|s| m.requests.with_label_values(&[c.as_str(), s]))
                    .collect()
            })
            .collect(),
        duration: Class::ALL
            .iter()
            .map(|c| m.duration.with_label_values(&[c.as_str()]))
            .collect(),
        near_hit: lookup("near", "hit"),
        near_negative: lookup("near", "negative"),
        near_miss: lookup("near", "miss"),
        redis_hit: lookup("redis", "hit"),
        redis_negative: lookup("redis", "negative"),
        redis_miss: lookup("redis", "miss"),
        redis_error: lookup("redis", "error"),
        redis_schema_mismatch: lookup("redis", "schema_mismatch"),
        clicks_ok: m.clicks.with_label_values(&["ok"]),
        clicks_failed: m.clicks.with_label_values(&["failed"]),
        clicks_sampled_out: m.clicks.with_label_values(&["sampled_out"]),
    }
});

impl Hot {
    /// Counts a finished request and its duration.
    pub fn request(&self, class: Class, status: u16, seconds: f64) {
        let s = kurz_common::http::STATUS_CLASSES
            .iter()
            .position(|c| *c == status_class(status))
            .unwrap_or(0);
        self.requests[class.index()][s].inc();
        self.duration[class.index()].observe(seconds);
    }
}

/// The text exposition of the default registry.
pub fn render() -> Vec<u8> {
    if let Some(n) = kurz_common::open_files::open_now() {
        METRICS.open_files.set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    let mut buf = Vec::new();
    TextEncoder::new()
        .encode(&prometheus::gather(), &mut buf)
        .expect("text encoding cannot fail");
    buf
}
