//! The store and traffic sections: `database`, `cache`, `clicks`, `limits`, `links`.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LinksConfig {
    /// Hosts refused as targets; an entry also refuses its subdomains.
    pub deny_hosts: Vec<String>,
    /// Allow targets on loopback, private, link-local addresses and `localhost`.
    pub allow_private_targets: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// libpq-style URL, e.g. `postgres://postgres@127.0.0.1:5432/kurz`.
    pub url: String,
    /// Pool size. Each API process holds at most this many PostgreSQL connections.
    pub max_connections: usize,
    /// How long a request waits for a pooled connection before answering 503.
    pub acquire_timeout_ms: u64,
    /// Connect timeout to PostgreSQL; also bounds how long a down database stalls a request.
    pub connect_timeout_ms: u64,
    /// PostgreSQL cancels any statement running longer (its `statement_timeout`); 0: none.
    /// Migrations run without it.
    pub statement_timeout_ms: u64,
    /// PostgreSQL ends a session that sits this long inside a transaction without sending a
    /// statement (its `idle_in_transaction_session_timeout`); 0: never. An API host that died
    /// or was cut off mid-transaction sends no FIN, and its locks (a claimed Idempotency-Key, a
    /// custom code) would be held until TCP keepalive noticed, about two hours.
    pub idle_in_transaction_timeout_ms: u64,
    /// Most link creates committed in one statement (`POST /urls` arriving together share it);
    /// 1 gives every create its own.
    pub create_batch_max: usize,
    /// Statements of creates in flight at once per process, each on its own connection. One
    /// is the cheapest: creates then wait in bigger groups, and PostgreSQL's cost is mostly per
    /// statement and commit (docs/capacity.md).
    pub create_writers: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct CacheConfig {
    /// TTL of a cached link. Writes update the entry at once; the TTL only bounds memory.
    pub link_ttl_seconds: u64,
    /// TTL of a negative entry (unknown code), short so a new custom code works soon after a
    /// miss was cached... though creating a link overwrites its entry anyway.
    pub negative_ttl_seconds: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClicksConfig {
    /// Share of clicks recorded, 0.0..=1.0 (`EVENT_LOG_SAMPLE_RATE`). Other events are never
    /// sampled.
    pub sample_rate: f64,
    /// Most stream entries inserted in one transaction.
    pub batch_size: usize,
    /// How often the background consumer polls the streams when they were empty.
    pub poll_interval_ms: u64,
    /// Pause of the background consumer after a read that caught up with the streams, so the
    /// next insert carries more clicks; 0 reads again at once. Reads of events and stats do
    /// not wait for it (they store what is waiting first).
    pub linger_ms: u64,
    /// Entries pending this long in another consumer are taken over (that consumer is presumed
    /// dead). Replays are harmless: events are de-duplicated by click id.
    pub claim_idle_ms: u64,
    /// Consumer group name shared by all API replicas.
    pub group: String,
    /// A read of events or stats first stores the clicks recorded before it began, for at most
    /// this long; past it the read answers from what is stored, with `X-Kurz-Clicks-Pending`.
    pub read_drain_budget_ms: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Rows a list returns when no `page`/`per_page` is given.
    pub list_limit: i64,
    /// Largest JSON body accepted (413 beyond).
    pub body_bytes: usize,
    /// Largest bulk CSV upload accepted (413 beyond).
    pub bulk_body_bytes: usize,
    /// A request still unanswered after this long gets 503 `timeout`, so a stuck dependency
    /// cannot hold connections and the edge's retry budget for ever.
    pub request_timeout_ms: u64,
    /// The same for bulk imports, which legitimately take longer (1M links: ~30 s).
    pub bulk_request_timeout_ms: u64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "postgres://postgres@127.0.0.1:5432/kurz".into(),
            max_connections: 16,
            acquire_timeout_ms: 2000,
            connect_timeout_ms: 2000,
            statement_timeout_ms: 30_000,
            idle_in_transaction_timeout_ms: 60_000,
            create_batch_max: 64,
            create_writers: 1,
        }
    }
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            link_ttl_seconds: 86_400,
            negative_ttl_seconds: 30,
        }
    }
}

impl Default for ClicksConfig {
    fn default() -> Self {
        Self {
            sample_rate: 1.0,
            batch_size: 4000,
            poll_interval_ms: 100,
            linger_ms: 20,
            claim_idle_ms: 30_000,
            group: "kurz-api".into(),
            read_drain_budget_ms: 1000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            list_limit: 10_000,
            body_bytes: 1 << 20,
            bulk_body_bytes: 32 << 20,
            request_timeout_ms: 10_000,
            bulk_request_timeout_ms: 300_000,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Click events older than this many days are deleted (hourly); 0 keeps them all. The
    /// per-link rollups (stats) are kept.
    pub retention_days: u32,
}
