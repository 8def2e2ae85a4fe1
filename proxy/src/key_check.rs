//! Checks that this edge and the API agree on the Redis key schema.
//!
//! If the edge's `redis.prefix` or `redis.partitions` differ from the API's, every lookup misses
//! what the API cached and every click the edge appends goes to a stream no consumer reads. The
//! API publishes its fingerprint (`kurz_common::keys::KeySchema::fingerprint`); until this edge
//! has read a matching one it answers no redirect from Redis and forwards them to the API, which
//! answers and records them correctly. While APIs of two releases run (a rolling upgrade that
//! changes the fingerprint), the gate stays closed until the old release's have stopped: every
//! running API's fingerprint must match, not only the last one written. The mismatch is logged and exported as
//! `kurz_proxy_key_schema_match` (0; -1 until a first read, 1 once matched), which the
//! `KurzKeySchemaMismatch` alert watches.

use crate::metrics::METRICS;
use async_trait::async_trait;
use kurz_common::keys::KeySchema;
use kurz_common::redis_handle::RedisHandle;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the fingerprint is read again once it matched (an API with another config may be
/// deployed at any time), and while it does not.
const RECHECK_MATCHED: Duration = Duration::from_secs(10);
const RECHECK_UNMATCHED: Duration = Duration::from_secs(1);

// 0: not known to match yet.
const MATCHED: u8 = 1;
const MISMATCHED: u8 = 2;

/// Whether redirects may be answered from Redis; shared by the checker and the redirector.
#[derive(Default)]
pub struct KeyGate {
    state: AtomicU8,
    /// A first check ran to its end (Redis may have been down for it).
    attempted: AtomicBool,
}

impl KeyGate {
    /// Only once a matching fingerprint was read.
    pub fn open(&self) -> bool {
        self.state.load(Ordering::Acquire) == MATCHED
    }

    /// Whether the first check has run: the edge reports ready only then, so traffic does not
    /// meet a gate that is closed merely because nobody looked yet.
    pub fn attempted(&self) -> bool {
        self.attempted.load(Ordering::Acquire)
    }

    /// Records a result; returns whether it changed.
    pub(crate) fn set(&self, matched: bool) -> bool {
        let new = if matched { MATCHED } else { MISMATCHED };
        METRICS.key_schema_match.set(i64::from(matched));
        self.state.swap(new, Ordering::AcqRel) != new
    }
}

pub struct KeySchemaCheck {
    /// Its own connection: Pingora runs each service on its own runtime.
    pub redis: RedisHandle,
    pub keys: KeySchema,
    pub gate: Arc<KeyGate>,
}

impl KeySchemaCheck {
    /// The fingerprints of the APIs that run (`kurz_common::keys::running_fingerprints`).
    async fn published(&self) -> Result<Vec<String>, kurz_common::redis_handle::RedisDown> {
        let mut cmd = redis::cmd("ZRANGE");
        cmd.arg(self.keys.schemas())
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES");
        let scored: Vec<(String, f64)> = self.redis.query(&cmd).await?;
        let single: Option<String> = self
            .redis
            .query(redis::cmd("GET").arg(self.keys.schema()))
            .await?;
        Ok(
            kurz_common::keys::running_fingerprints(&scored, single.as_deref())
                .into_iter()
                .map(str::to_owned)
                .collect(),
        )
    }

    /// One check. Redis being down decides nothing: redirects then go to the API anyway.
    async fn check(&self) {
        let Ok(published) = self.published().await else {
            self.gate.attempted.store(true, Ordering::Release);
            return;
        };
        let expected = self.keys.fingerprint();
        // Every running API's, not only one: an API of another release still reads the
        // click streams, and would drop what this edge appends.
        let matched = published == [expected.as_str()];
        let published = published.join(" | ");
        let changed = self.gate.set(matched);
        self.gate.attempted.store(true, Ordering::Release);
        if !changed {
            return;
        }
        if matched {
            log::info!(fingerprint = expected.as_str(); "redis key schema matches the API's; answering redirects from redis");
        } else {
            log::error!(
                key = self.keys.schema().as_str(), expected = expected.as_str(),
                published = if published.is_empty() { "(none: no API uses this prefix)" } else { published.as_str() };
                "redis key schema differs from the API's (redis.prefix / redis.partitions, or APIs of another release running); forwarding every redirect to the API"
            );
        }
    }
}

#[async_trait]
impl BackgroundService for KeySchemaCheck {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            self.check().await;
            let pause = if self.gate.open() {
                RECHECK_MATCHED
            } else {
                RECHECK_UNMATCHED
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
