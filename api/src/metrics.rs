//! Prometheus metrics of kurz-api, on their own registry (so tests running several apps in one
//! process do not collide), served on the admin listener.
//!
//! Names follow `kurz_api_<what>_<unit>`; labels come from small fixed sets (route templates,
//! status classes, results), never from codes or raw paths.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    pub registry: Registry,
    /// By matched route template, method and status class (`2xx` …).
    pub requests: IntCounterVec,
    /// By matched route template.
    pub request_duration: HistogramVec,
    pub in_flight: IntGauge,
    /// Link cache lookups by result: `hit`, `negative`, `miss`, `error`.
    pub cache_lookups: IntCounterVec,
    /// Clicks by path: `stream` (appended), `direct` (inserted, Redis down), `sampled_out`,
    /// `lost` (neither Redis nor PostgreSQL took it, or the streams holding it were lost with
    /// Redis's data: then the backlog last sampled, an estimate), `dropped` (stream entries the
    /// consumer could not read whole: one per entry, however many clicks its damaged part held).
    pub clicks: IntCounterVec,
    /// Clicks stored per insert statement (a consumer's read goes in statements of at most
    /// `clicks.batch_size` clicks).
    pub click_batch_size: Histogram,
    pub click_insert_duration: Histogram,
    /// Creates per statement of the create writers (`crate::creates`).
    pub create_batch_size: Histogram,
    /// Stream entries not yet deleted (unread or pending), refreshed at each scrape.
    pub click_stream_length: IntGauge,
    /// Times the consumer found its group gone: Redis lost the click streams (restarted without
    /// persistence, or flushed). The entries lost then are added to `clicks{path="lost"}`.
    pub click_stream_resets: IntCounter,
    /// Click batches PostgreSQL refused; the consumer holds the batch and retries it.
    pub click_commit_failures: IntCounter,
    /// Links whose new state has not reached Redis yet (`link_outbox` rows), at the last replay.
    pub link_outbox: IntGauge,
    /// Times the Redis server holding the links changed (a restart, a failover): the link
    /// states changed shortly before were queued to be published again (`cache_sync`).
    pub redis_server_changes: IntCounter,
    pub redis_errors: IntCounter,
    /// Entries delivered to a consumer but not yet acknowledged, refreshed at each scrape.
    pub click_stream_pending: IntGauge,
    pub db_pool_size: IntGauge,
    pub db_pool_available: IntGauge,
    pub db_pool_in_use: IntGauge,
    pub db_pool_waiting: IntGauge,
    pub creates_waiting: IntGauge,
    /// 1 when PostgreSQL answered this process at the last scrape (through the pool, or on a
    /// connection of its own when the pool is busy): the alert on PostgreSQL needs no exporter
    /// beside it (the Kubernetes and compose files ship none).
    pub database_up: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new("kurz_api_requests_total", "HTTP requests answered"),
            &["route", "method", "status_class"],
        )
        .expect("metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new("kurz_api_request_duration_seconds", "HTTP request latency")
                .buckets(vec![
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                ]),
            &["route"],
        )
        .expect("metric");
        let in_flight =
            IntGauge::new("kurz_api_requests_in_flight", "Requests being handled").expect("metric");
        let cache_lookups = IntCounterVec::new(
            Opts::new(
                "kurz_api_cache_lookups_total",
                "Link cache lookups by result",
            ),
            &["result"],
        )
        .expect("metric");
        let clicks = IntCounterVec::new(
            Opts::new("kurz_api_clicks_total", "Clicks by recording path"),
            &["path"],
        )
        .expect("metric");
        let click_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "kurz_api_click_batch_size",
                "Clicks stored per insert statement",
            )
            .buckets(vec![
                1.0, 5.0, 10.0, 50.0, 100.0, 500.0, 1000.0, 2000.0, 4000.0, 10000.0,
            ]),
        )
        .expect("metric");
        let click_insert_duration = Histogram::with_opts(
            HistogramOpts::new(
                "kurz_api_click_insert_duration_seconds",
                "Time of one click insert statement (at most clicks.batch_size clicks)",
            )
            .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0]),
        )
        .expect("metric");
        let create_batch_size = Histogram::with_opts(
            HistogramOpts::new(
                "kurz_api_create_batch_size",
                "Link creates committed per statement",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
        )
        .expect("metric");
        let click_stream_length = IntGauge::new(
            "kurz_api_click_stream_length",
            "Click stream entries not yet consumed; -1 while Redis cannot be asked",
        )
        .expect("metric");
        let click_stream_resets = IntCounter::new(
            "kurz_api_click_stream_resets_total",
            "Times the click streams were found lost with Redis's data",
        )
        .expect("metric");
        let click_commit_failures = IntCounter::new(
            "kurz_api_click_commit_failures_total",
            "Click batches PostgreSQL refused (held and retried)",
        )
        .expect("metric");
        let link_outbox = IntGauge::new(
            "kurz_api_link_outbox_pending",
            "Link writes whose new state has not reached Redis yet",
        )
        .expect("metric");
        let redis_server_changes = IntCounter::new(
            "kurz_api_redis_server_changes_total",
            "Restarts or failovers of Redis seen; recent link states were published again",
        )
        .expect("metric");
        let redis_errors = IntCounter::new(
            "kurz_api_redis_errors_total",
            "Failed Redis commands and connects",
        )
        .expect("metric");
        let db_pool_size = IntGauge::new(
            "kurz_api_db_pool_connections",
            "PostgreSQL connections open",
        )
        .expect("metric");
        let db_pool_available = IntGauge::new(
            "kurz_api_db_pool_idle_connections",
            "PostgreSQL connections idle",
        )
        .expect("metric");
        let click_stream_pending = IntGauge::new(
            "kurz_api_click_stream_pending",
            "Click entries delivered but not yet acknowledged; -1 while Redis cannot be asked",
        )
        .expect("metric");
        let db_pool_in_use = IntGauge::new(
            "kurz_api_db_pool_in_use_connections",
            "PostgreSQL connections serving a request",
        )
        .expect("metric");
        let db_pool_waiting = IntGauge::new(
            "kurz_api_db_pool_waiters",
            "Requests waiting for a PostgreSQL connection",
        )
        .expect("metric");
        let creates_waiting = IntGauge::new(
            "kurz_api_create_queue_waiters",
            "Link creates queued for the create writers, not yet in a statement",
        )
        .expect("metric");
        let database_up = IntGauge::new(
            "kurz_api_database_up",
            "1 when a PostgreSQL connection answered at this scrape, else 0",
        )
        .expect("metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(request_duration.clone()),
            Box::new(in_flight.clone()),
            Box::new(cache_lookups.clone()),
            Box::new(clicks.clone()),
            Box::new(click_batch_size.clone()),
            Box::new(click_insert_duration.clone()),
            Box::new(create_batch_size.clone()),
            Box::new(click_stream_length.clone()),
            Box::new(click_stream_resets.clone()),
            Box::new(click_commit_failures.clone()),
            Box::new(link_outbox.clone()),
            Box::new(redis_server_changes.clone()),
            Box::new(redis_errors.clone()),
            Box::new(click_stream_pending.clone()),
            Box::new(db_pool_in_use.clone()),
            Box::new(db_pool_size.clone()),
            Box::new(db_pool_available.clone()),
            Box::new(db_pool_waiting.clone()),
            Box::new(creates_waiting.clone()),
            Box::new(database_up.clone()),
        ] {
            registry.register(c).expect("unique metric");
        }
        let build = IntGauge::with_opts(
            Opts::new("kurz_api_build_info", "Build of this process")
                .const_label("version", env!("CARGO_PKG_VERSION"))
                .const_label("git_sha", kurz_common::GIT_SHA),
        )
        .expect("metric");
        build.set(1);
        registry.register(Box::new(build)).expect("unique metric");
        let metrics = Self {
            registry,
            requests,
            request_duration,
            in_flight,
            cache_lookups,
            clicks,
            click_batch_size,
            click_insert_duration,
            create_batch_size,
            click_stream_length,
            click_stream_resets,
            click_commit_failures,
            link_outbox,
            redis_server_changes,
            redis_errors,
            click_stream_pending,
            db_pool_size,
            db_pool_available,
            db_pool_in_use,
            db_pool_waiting,
            creates_waiting,
            database_up,
        };
        metrics.init_series();
        metrics
    }

    /// Creates the series of every known label value at zero, so rates and alerts work from
    /// the first scrape instead of appearing with the first event.
    pub fn init_series(&self) {
        for result in ["hit", "negative", "miss", "error"] {
            self.cache_lookups.with_label_values(&[result]);
        }
        for path in ["stream", "direct", "sampled_out", "lost", "dropped"] {
            self.clicks.with_label_values(&[path]);
        }
        // A series born at 1 has no sample before it, and `rate()` never counts that first
        // step: on a quiet deployment (or a new pod) the first 5xx of each route was lost to
        // `KurzApi5xxRatio`. Each documented operation's 5xx starts at zero (the web app's
        // pages are not documented operations: theirs still start at their first answer).
        for (route, method) in crate::routes::openapi::operations() {
            self.requests.with_label_values(&[&route, method, "5xx"]);
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub use kurz_common::http::status_class;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_operations_5xx_is_exposed_from_the_start() {
        let text = Metrics::new().render();
        for series in [
            r#"kurz_api_requests_total{method="POST",route="/urls",status_class="5xx"} 0"#,
            r#"kurz_api_requests_total{method="GET",route="/urls/{id}/stats",status_class="5xx"} 0"#,
        ] {
            assert!(text.contains(series), "{series} missing");
        }
    }
}
