//! The click stream consumer: drains every partition's stream into `events`.
//!
//! Exactly-once effect, across replicas and restarts: entries are read through one consumer
//! group shared by all API replicas, inserted in one statement per batch keyed by their stream id
//! (`ON CONFLICT DO NOTHING`), and only then acknowledged and deleted. A consumer dying between
//! commit and acknowledgement leaves entries pending; whoever claims them next inserts nothing
//! for them and acknowledges. Deleting acknowledged entries keeps `XLEN` equal to the backlog,
//! which makes "is anything pending?" one cheap pipelined check for the read path.

use crate::clicks::click_details;
use crate::db::events::{insert_stream_clicks, StreamClick};
use crate::metrics::Metrics;
use crate::redis_handle::{RedisDown, RedisHandle};
use deadpool_postgres::Pool;
use kurz_common::clicks::Click;
use kurz_common::keys::KeySchema;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// One stream entry, parsed.
#[derive(Debug, Clone)]
pub struct Entry {
    pub partition: u16,
    pub id: String,
    /// `None` for a malformed entry: acknowledged and dropped, never retried forever.
    pub click: Option<Click>,
}

pub struct Consumer {
    redis: Arc<RedisHandle>,
    db: Pool,
    keys: KeySchema,
    group: String,
    /// Unique per process, so pending entries can be told apart in `XPENDING`.
    name: String,
    batch_size: usize,
    claim_idle_ms: u64,
    poll_interval: Duration,
    metrics: Arc<Metrics>,
    groups_ready: AtomicBool,
    /// One drain at a time in this process: concurrent readers wait for the running drain and
    /// then find the backlog empty, instead of all claiming the same entries.
    drain_lock: tokio::sync::Mutex<()>,
}

/// Where to read from in one pass.
#[derive(Clone, Copy)]
enum Source {
    /// Entries never delivered to the group (`>`).
    New,
    /// Entries pending in any consumer for at least this long (`XAUTOCLAIM`).
    Claim(u64),
}

impl Consumer {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        redis: Arc<RedisHandle>,
        db: Pool,
        keys: KeySchema,
        group: String,
        name: String,
        batch_size: usize,
        claim_idle_ms: u64,
        poll_interval: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            redis,
            db,
            keys,
            group,
            name,
            batch_size,
            claim_idle_ms,
            poll_interval,
            metrics,
            groups_ready: AtomicBool::new(false),
            drain_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// Creates the consumer group on every partition's stream (idempotent).
    pub async fn ensure_groups(&self) -> Result<(), RedisDown> {
        if self.groups_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        for key in self.keys.all_clicks() {
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("CREATE")
                .arg(&key)
                .arg(&self.group)
                .arg("0")
                .arg("MKSTREAM");
            let mut conn = self.redis.conn().await?;
            match cmd.query_async::<()>(&mut conn).await {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(self.redis.failed(e)),
            }
        }
        self.groups_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Entries not yet consumed, summed over partitions (unread plus pending).
    pub async fn backlog(&self) -> Result<i64, RedisDown> {
        let mut pipe = redis::pipe();
        for key in self.keys.all_clicks() {
            pipe.cmd("XLEN").arg(key);
        }
        let lens: Vec<i64> = self.redis.query(&pipe).await?;
        let total = lens.iter().sum();
        self.metrics.click_stream_length.set(total);
        Ok(total)
    }

    /// Entries delivered but not acknowledged, summed over partitions (consumer lag in flight).
    pub async fn pending(&self) -> Result<i64, RedisDown> {
        let mut pipe = redis::pipe();
        for key in self.keys.all_clicks() {
            pipe.cmd("XPENDING").arg(key).arg(&self.group);
        }
        let replies: Vec<Value> = self.redis.query(&pipe).await?;
        let total = replies
            .into_iter()
            .filter_map(|r| match r {
                Value::Array(items) => items
                    .into_iter()
                    .next()
                    .and_then(|c| redis::from_redis_value::<i64>(c).ok()),
                _ => None,
            })
            .sum();
        self.metrics.click_stream_pending.set(total);
        Ok(total)
    }

    async fn fetch(&self, source: Source) -> Result<Vec<Entry>, RedisDown> {
        match self.fetch_once(source).await {
            // Redis came back empty (restart without persistence) and the group went with it:
            // recreate it and read again, so the caller never sees the hiccup.
            Err(FetchError::NoGroup) => {
                self.ensure_groups().await?;
                self.fetch_once(source).await.map_err(FetchError::into_down)
            }
            other => other.map_err(FetchError::into_down),
        }
    }

    async fn fetch_once(&self, source: Source) -> Result<Vec<Entry>, FetchError> {
        self.ensure_groups().await?;
        let mut pipe = redis::pipe();
        for key in self.keys.all_clicks() {
            match source {
                Source::New => pipe
                    .cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(&self.group)
                    .arg(&self.name)
                    .arg("COUNT")
                    .arg(self.batch_size)
                    .arg("STREAMS")
                    .arg(key)
                    .arg(">"),
                Source::Claim(idle) => pipe
                    .cmd("XAUTOCLAIM")
                    .arg(key)
                    .arg(&self.group)
                    .arg(&self.name)
                    .arg(idle)
                    .arg("0-0")
                    .arg("COUNT")
                    .arg(self.batch_size),
            };
        }
        let mut conn = self.redis.conn().await?;
        let replies: Vec<Value> = match pipe.query_async(&mut conn).await {
            Ok(r) => r,
            // A pipeline reports per-command failures in one error, so match on its text.
            Err(e) if e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP") => {
                self.groups_ready.store(false, Ordering::Release);
                return Err(FetchError::NoGroup);
            }
            Err(e) => return Err(self.redis.failed(e).into()),
        };
        let mut entries = Vec::new();
        for (partition, reply) in replies.into_iter().enumerate() {
            let ids: Vec<StreamId> = match source {
                Source::New => redis::from_redis_value::<Option<StreamReadReply>>(reply)
                    .map_err(|e| RedisDown(format!("unexpected XREADGROUP reply: {e}")))?
                    .map(|r| r.keys.into_iter().flat_map(|k| k.ids).collect())
                    .unwrap_or_default(),
                Source::Claim(_) => {
                    redis::from_redis_value::<StreamAutoClaimReply>(reply)
                        .map_err(|e| RedisDown(format!("unexpected XAUTOCLAIM reply: {e}")))?
                        .claimed
                }
            };
            entries.extend(
                ids.into_iter()
                    .map(|sid| parse_entry(partition as u16, sid)),
            );
        }
        Ok(entries)
    }

    /// Inserts the batch in one transaction-sized statement.
    async fn commit(&self, entries: &[Entry]) -> Result<u64, String> {
        let clicks: Vec<StreamClick> = entries
            .iter()
            .filter_map(|e| {
                let click = e.click.as_ref()?;
                Some(StreamClick {
                    stream_id: format!("p{}-{}", e.partition, e.id),
                    url_id: click.url_id,
                    ts: chrono::DateTime::from_timestamp_millis(click.ts_ms)
                        .unwrap_or_else(chrono::Utc::now),
                    details: click_details(click),
                })
            })
            .collect();
        if clicks.is_empty() {
            return Ok(0);
        }
        let timer = self.metrics.click_insert_duration.start_timer();
        let client = self
            .db
            .get()
            .await
            .map_err(|e| format!("postgres pool: {e}"))?;
        let inserted = insert_stream_clicks(&client, &clicks)
            .await
            .map_err(|e| format!("postgres: {e}"))?;
        timer.observe_duration();
        self.metrics.click_batch_size.observe(clicks.len() as f64);
        Ok(inserted)
    }

    /// Acknowledges and deletes committed entries.
    async fn ack(&self, entries: &[Entry]) -> Result<(), RedisDown> {
        let mut pipe = redis::pipe();
        for partition in 0..self.keys.partitions() {
            let ids: Vec<&str> = entries
                .iter()
                .filter(|e| e.partition == partition)
                .map(|e| e.id.as_str())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let key = self.keys.clicks(partition);
            pipe.cmd("XACK")
                .arg(&key)
                .arg(&self.group)
                .arg(&ids)
                .ignore();
            pipe.cmd("XDEL").arg(&key).arg(&ids).ignore();
        }
        self.redis.query::<()>(&pipe).await
    }

    /// Reads from `source`, commits, acknowledges. Returns how many entries were handled.
    async fn step(&self, source: Source) -> Result<usize, String> {
        let entries = self.fetch(source).await.map_err(|e| e.to_string())?;
        if entries.is_empty() {
            return Ok(0);
        }
        for bad in entries.iter().filter(|e| e.click.is_none()) {
            log::warn!(stream_id = bad.id.as_str(), partition = bad.partition; "malformed click entry dropped");
        }
        self.commit(&entries).await?;
        self.ack(&entries).await.map_err(|e| e.to_string())?;
        Ok(entries.len())
    }

    /// Test hook: read a batch and commit it without acknowledging, as a consumer that dies
    /// between commit and `XACK` would. Returns the entries read.
    pub async fn read_and_commit_without_ack(&self) -> Result<usize, String> {
        let entries = self.fetch(Source::New).await.map_err(|e| e.to_string())?;
        self.commit(&entries).await?;
        Ok(entries.len())
    }

    /// Test hook: read a batch and drop it, as a consumer that dies before committing would.
    pub async fn read_without_commit(&self) -> Result<usize, String> {
        Ok(self
            .fetch(Source::New)
            .await
            .map_err(|e| e.to_string())?
            .len())
    }

    /// Consumes everything in the streams now, including entries pending in other consumers.
    /// Reads of events call this first, which is what makes a click visible to any read that
    /// starts after its 302. With Redis down it returns at once: clicks then went to PostgreSQL
    /// directly.
    pub async fn drain(&self) -> Result<(), String> {
        match self.backlog().await {
            Ok(0) | Err(_) => return Ok(()),
            Ok(_) => {}
        }
        let _guard = self.drain_lock.lock().await;
        loop {
            let claimed = self.step(Source::Claim(0)).await?;
            let fresh = self.step(Source::New).await?;
            if claimed == 0 && fresh == 0 {
                return Ok(());
            }
        }
    }

    /// The background loop: consume new entries, and now and then take over entries a dead
    /// consumer left pending. Returns after one last drain once `shutdown` fires.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let claim_every = Duration::from_millis((self.claim_idle_ms / 2).max(100));
        let mut last_claim = tokio::time::Instant::now();
        let mut failures: u32 = 0;
        loop {
            if *shutdown.borrow() {
                break;
            }
            let result = {
                let _guard = self.drain_lock.lock().await;
                let mut handled = 0;
                let mut outcome = Ok(());
                if last_claim.elapsed() >= claim_every {
                    last_claim = tokio::time::Instant::now();
                    match self.step(Source::Claim(self.claim_idle_ms)).await {
                        Ok(n) => handled += n,
                        Err(e) => outcome = Err(e),
                    }
                }
                if outcome.is_ok() {
                    match self.step(Source::New).await {
                        Ok(n) => handled += n,
                        Err(e) => outcome = Err(e),
                    }
                }
                outcome.map(|()| handled)
            };
            let pause = match result {
                Ok(n) if n > 0 => {
                    failures = 0;
                    continue;
                }
                Ok(_) => {
                    failures = 0;
                    self.poll_interval
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures % 50 == 0 {
                        log::warn!(error = e, failures = failures; "click consumer step failed; retrying");
                    }
                    // Own failed entries stay pending; claiming them needs them idle, so back off
                    // and let the claim pass pick them up.
                    last_claim = tokio::time::Instant::now() - claim_every;
                    Duration::from_millis(200u64.saturating_mul(u64::from(failures.min(10))))
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = shutdown.changed() => {}
            }
        }
        if let Err(e) = self.flush_own().await {
            log::warn!(error = e; "click flush at shutdown incomplete; another replica will claim the rest");
        } else {
            log::info!("click consumer stopped after flushing");
        }
    }

    /// At shutdown: consume what is new and what this process holds pending.
    async fn flush_own(&self) -> Result<(), String> {
        let _guard = self.drain_lock.lock().await;
        for _ in 0..1000 {
            if self.step(Source::New).await? == 0 {
                break;
            }
        }
        for _ in 0..1000 {
            if self.step(Source::Claim(0)).await? == 0 {
                break;
            }
        }
        Ok(())
    }
}

/// Why a read failed: the group is missing (recoverable at once) or Redis is unusable.
enum FetchError {
    NoGroup,
    Down(RedisDown),
}

impl FetchError {
    fn into_down(self) -> RedisDown {
        match self {
            FetchError::NoGroup => RedisDown("click stream consumer group is missing".into()),
            FetchError::Down(d) => d,
        }
    }
}

impl From<RedisDown> for FetchError {
    fn from(d: RedisDown) -> Self {
        FetchError::Down(d)
    }
}

fn parse_entry(partition: u16, sid: StreamId) -> Entry {
    let fields: Vec<(String, String)> = sid
        .map
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::BulkString(b) => Some((k, String::from_utf8_lossy(&b).into_owned())),
            Value::SimpleString(s) => Some((k, s)),
            _ => None,
        })
        .collect();
    let click = Click::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    Entry {
        partition,
        id: sid.id,
        click,
    }
}
