//! The click stream consumer: drains every partition's stream into `events`.
//!
//! Exactly-once effect, across replicas, restarts and retries: entries are read through one
//! consumer group shared by all API replicas, inserted (in statements of at most
//! `clicks.batch_size` clicks) keyed by their click id (`ON CONFLICT DO NOTHING`), and only
//! then acknowledged and deleted. A consumer dying between commit and acknowledgement leaves
//! entries pending; whoever claims them next inserts nothing for them and acknowledges.
//! Deleting acknowledged entries keeps `XLEN` equal to the backlog.
//!
//! While PostgreSQL is down the consumer holds the batch it read and retries committing it with
//! a growing pause; it reads and claims nothing more until that batch is stored. So an outage
//! costs Redis nothing but the appends themselves: the backlog waits in the streams, where
//! persistence keeps it.

use super::stream::{ClickStream, Entry, ReadError};
use crate::db::events::{insert_stream_clicks, StreamClick};
use crate::metrics::Metrics;
use crate::redis_handle::{RedisDown, RedisHandle};
use deadpool_postgres::Pool;
use kurz_common::keys::KeySchema;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

pub use super::drain::Drained;

/// Longest pause between two attempts while PostgreSQL or Redis keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// How often the backlog is sampled, for the metric and for counting clicks lost with Redis.
const BACKLOG_EVERY: Duration = Duration::from_secs(1);

/// Why a step failed.
#[derive(Debug)]
pub enum StepError {
    /// PostgreSQL refused the batch; it is held and retried.
    Db(String),
    Redis(String),
}

impl std::fmt::Display for StepError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepError::Db(e) => write!(f, "postgres: {e}"),
            StepError::Redis(e) => write!(f, "redis: {e}"),
        }
    }
}

/// What only the holder of the consumer's lock may touch.
#[derive(Default)]
pub(super) struct Work {
    /// Entries read but not yet committed (waiting for the next step, or PostgreSQL failed).
    held: Vec<Entry>,
    /// Entries committed but not yet acknowledged: the next step acknowledges them while it
    /// commits the following batch. Held again if Redis fails; a second insert of them is a
    /// no-op.
    committed: Vec<Entry>,
    /// `held` failed to be stored: it is retried alone, and nothing more is read until it is.
    stalled: bool,
    /// Per partition, where the next claim scan starts.
    cursors: Vec<String>,
    /// Partition the next claim pass starts with.
    next_claim: usize,
    /// Entries the last claim pass took over.
    claimed_last: usize,
}

pub struct Consumer {
    pub(super) stream: ClickStream,
    db: Pool,
    keys: KeySchema,
    batch_size: usize,
    claim_idle_ms: u64,
    poll_interval: Duration,
    metrics: Arc<Metrics>,
    /// Backlog at the last sample: what is lost if Redis comes back empty right after.
    last_backlog: AtomicI64,
    /// Clicks per entry in the last read (see `per_partition`).
    clicks_per_entry: AtomicUsize,
    /// The last read took less than it asked of every partition: the streams are drained.
    caught_up: AtomicBool,
    /// Pause after a step that caught up with the streams, so the next insert carries more
    /// clicks (see [`Consumer::with_linger`]); zero reads again at once.
    linger: Duration,
    /// One pass at a time in this process: readers of events wait for the running pass and
    /// then find the backlog empty, instead of all claiming the same entries.
    pub(super) work: tokio::sync::Mutex<Work>,
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
        let partitions = usize::from(keys.partitions());
        Self {
            stream: ClickStream::new(redis, keys.clone(), group, name),
            db,
            keys,
            batch_size,
            claim_idle_ms,
            poll_interval,
            metrics,
            last_backlog: AtomicI64::new(0),
            clicks_per_entry: AtomicUsize::new(1),
            caught_up: AtomicBool::new(false),
            linger: Duration::ZERO,
            work: tokio::sync::Mutex::new(Work {
                cursors: vec!["0-0".to_owned(); partitions],
                ..Work::default()
            }),
        }
    }

    /// While clicks arrive slower than the consumer stores them, each read finds a few and each
    /// insert carries a few: a statement, a commit and the rollup trigger per handful of clicks,
    /// and a pipelined read of every partition per step. Pausing `linger` after a read that
    /// caught up lets the next batch gather (`clicks.linger_ms`). Nobody waits for it: a read of
    /// events or stats stores what is waiting itself (`drain`), and under a backlog reads come
    /// back full and the consumer does not pause.
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Creates the consumer group on every partition's stream (idempotent).
    pub async fn ensure_groups(&self) -> Result<(), RedisDown> {
        self.stream.ensure_groups().await
    }

    /// See [`super::stream::ClickStream::stranded`].
    pub async fn stranded_streams(&self) -> Result<Vec<(String, i64)>, RedisDown> {
        self.stream.stranded().await
    }

    /// Entries not yet consumed, summed over partitions (unread plus pending). Also the sample
    /// of what would be lost if Redis lost its data now; if it already did, the loss is counted
    /// from the previous sample first.
    /// While Redis cannot be asked the gauge says -1 (unknown), not the last sample: a backlog
    /// shown still while the streams may be growing or gone would mislead a dashboard's reader.
    pub async fn backlog(&self) -> Result<i64, RedisDown> {
        let unknown = |d: RedisDown| {
            self.metrics.click_stream_length.set(-1);
            d
        };
        let total = match self.stream.backlog().await {
            Ok(total) => total,
            Err(ReadError::GroupLost) => {
                self.on_group_lost().await;
                match self.stream.backlog().await {
                    Ok(total) => total,
                    Err(ReadError::GroupLost) => 0,
                    Err(ReadError::Down(d)) => return Err(unknown(d)),
                }
            }
            Err(ReadError::Down(d)) => return Err(unknown(d)),
        };
        self.metrics.click_stream_length.set(total);
        self.last_backlog.store(total, Ordering::Release);
        Ok(total)
    }

    /// Entries delivered but not acknowledged, summed over partitions (consumer lag in flight).
    pub async fn pending(&self) -> Result<i64, RedisDown> {
        let total = self.stream.pending().await.inspect_err(|_| {
            self.metrics.click_stream_pending.set(-1);
        })?;
        self.metrics.click_stream_pending.set(total);
        Ok(total)
    }

    /// New entries per partition in one read, so one read returns about `batch_size` clicks:
    /// an edge's packed entry holds a batch of clicks, so the count follows the clicks per
    /// entry of the last read.
    fn per_partition(&self) -> usize {
        let per_entry = self.clicks_per_entry.load(Ordering::Relaxed).max(1);
        (self.batch_size / usize::from(self.keys.partitions()) / per_entry).max(1)
    }

    /// Whether the background loop pauses after this step: it caught up and may linger.
    fn lingers(&self) -> bool {
        !self.linger.is_zero() && self.caught_up.load(Ordering::Relaxed)
    }

    /// Notes the clicks per entry of a read, for the next read's count, and whether it caught
    /// up (no partition gave all that was asked of it).
    fn note_read(&self, entries: &[Entry], asked: usize) {
        let full = (0..self.keys.partitions())
            .any(|p| entries.iter().filter(|e| e.partition == p).count() >= asked);
        self.caught_up.store(!full, Ordering::Relaxed);
        if entries.is_empty() {
            return;
        }
        let clicks: usize = entries.iter().map(|e| e.clicks.len()).sum();
        self.clicks_per_entry
            .store(clicks.div_ceil(entries.len()), Ordering::Relaxed);
    }

    /// One log line per entry that could not be read whole, and one `clicks{path="dropped"}`
    /// at its first delivery (`new`: a read of new entries; a claim delivers again what some
    /// consumer read before): what could not be read goes with the entry, and the
    /// troubleshooting table must see it once.
    fn drop_malformed(&self, entries: &[Entry], new: bool) {
        for bad in entries.iter().filter(|e| e.malformed) {
            if new {
                self.metrics.clicks.with_label_values(&["dropped"]).inc();
            }
            log::warn!(stream_id = bad.id.as_str(), partition = bad.partition, clicks_kept = bad.clicks.len(); "malformed click entry dropped");
        }
    }

    /// Redis came back without the consumer group: every entry that was in the streams is
    /// gone. Counted as lost from the last backlog sample (at most [`BACKLOG_EVERY`] old), then
    /// the groups are recreated so consuming goes on.
    async fn on_group_lost(&self) -> StepError {
        let lost = self.last_backlog.swap(0, Ordering::AcqRel).max(0);
        self.metrics
            .clicks
            .with_label_values(&["lost"])
            .inc_by(lost as u64);
        self.metrics.click_stream_resets.inc();
        log::error!(lost_estimate = lost; "click streams lost with Redis's data (consumer group missing); clicks that were not yet stored are gone");
        match self.stream.ensure_groups().await {
            Ok(()) => StepError::Redis("click streams were reset; groups recreated".into()),
            Err(e) => StepError::Redis(e.to_string()),
        }
    }

    async fn read_error(&self, e: ReadError) -> StepError {
        match e {
            ReadError::GroupLost => self.on_group_lost().await,
            ReadError::Down(d) => StepError::Redis(d.to_string()),
        }
    }

    /// Inserts the batch in statements of at most `batch_size` clicks. A read is sized from the
    /// clicks per entry of the read before, so after a start or a change of traffic it can bring
    /// far more (an edge's entry holds up to `clicks.batch_max` clicks): in one statement such a
    /// batch could outlast `database.statement_timeout_ms` at every retry and stall the
    /// consumer for good. Statements that committed before a failed one are harmless to repeat:
    /// a stored click id is skipped, and the rollups count only what a statement inserted.
    async fn commit(&self, entries: &[Entry]) -> Result<u64, StepError> {
        let clicks: Vec<&StreamClick> = entries.iter().flat_map(|e| &e.clicks).collect();
        if clicks.is_empty() {
            return Ok(0);
        }
        let client = self
            .db
            .get()
            .await
            .map_err(|e| StepError::Db(format!("pool: {e}")))?;
        let mut inserted = 0;
        for part in clicks.chunks(self.batch_size.max(1)) {
            let timer = self.metrics.click_insert_duration.start_timer();
            let stored = insert_stream_clicks(&client, part)
                .await
                .map_err(|e| StepError::Db(e.to_string()))?;
            timer.observe_duration();
            // What it stored: a statement repeated after a later one failed stores nothing and
            // is not counted again.
            if stored > 0 {
                self.metrics.click_batch_size.observe(stored as f64);
            }
            inserted += stored;
        }
        Ok(inserted)
    }

    /// Commits and acknowledges what `work` holds. Entries stay held on any failure. Returns
    /// how many entries were acknowledged.
    async fn settle(&self, work: &mut Work) -> Result<usize, StepError> {
        if !work.held.is_empty() {
            if let Err(e) = self.commit(&work.held).await {
                self.metrics.click_commit_failures.inc();
                work.stalled = true;
                return Err(e);
            }
            let held = std::mem::take(&mut work.held);
            work.committed.extend(held);
        }
        work.stalled = false;
        let n = work.committed.len();
        self.ack_committed(work).await?;
        Ok(n)
    }

    /// Acknowledges what was stored and not yet acknowledged.
    pub(super) async fn ack_committed(&self, work: &mut Work) -> Result<(), StepError> {
        self.ack(&work.committed).await?;
        work.committed.clear();
        Ok(())
    }

    /// `XACK` and `XDEL` of entries already stored; nothing to send for none.
    async fn ack(&self, entries: &[Entry]) -> Result<(), StepError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.stream
            .ack(entries)
            .await
            .map_err(|e| StepError::Redis(e.to_string()))
    }

    async fn read_new(&self) -> Result<Vec<Entry>, StepError> {
        let asked = self.per_partition();
        let read = match self.stream.read_new(asked).await {
            // Counted as lost and the groups recreated: read again, so the caller (a read of
            // events) does not miss what was appended since Redis came back.
            Err(ReadError::GroupLost) => {
                self.on_group_lost().await;
                self.stream.read_new(asked).await
            }
            other => other,
        };
        match read {
            Ok(entries) => {
                self.drop_malformed(&entries, true);
                self.note_read(&entries, asked);
                Ok(entries)
            }
            Err(e) => Err(self.read_error(e).await),
        }
    }

    /// Stores the batch read last while reading the next one and acknowledging the one stored
    /// before, so PostgreSQL's insert and Redis's read and acknowledgement overlap instead of
    /// taking turns (one batch at a time, each side waited for the other: 35k clicks/s with
    /// neither saturated; committing while acknowledging the previous batch took another fifth
    /// off each step, docs/capacity.md). Returns how many entries moved on (stored or
    /// acknowledged); what was read meanwhile stays held for the next step. A batch that failed
    /// is retried alone, reading nothing more, so a PostgreSQL outage holds at most two batches.
    pub(super) async fn step_new(&self, work: &mut Work) -> Result<usize, StepError> {
        if work.stalled {
            return self.settle(work).await;
        }
        if work.held.is_empty() && work.committed.is_empty() {
            work.held = self.read_new().await?;
            if work.held.is_empty() {
                return Ok(0);
            }
        }
        let batch = std::mem::take(&mut work.held);
        let stored = std::mem::take(&mut work.committed);
        let (committed, next, acked) =
            tokio::join!(self.commit(&batch), self.read_new(), self.ack(&stored));
        let moved = batch.len() + stored.len();
        let mut failed = None;
        if let Err(e) = acked {
            work.committed = stored;
            failed = Some(e);
        }
        match committed {
            Ok(_) => work.committed.extend(batch),
            Err(e) => {
                self.metrics.click_commit_failures.inc();
                work.held = batch;
                work.stalled = true;
                failed = failed.or(Some(e));
            }
        }
        match next {
            Ok(next) => work.held.extend(next),
            Err(e) => failed = failed.or(Some(e)),
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(moved),
        }
    }

    /// Takes over entries pending at least `idle_ms` in the given partitions, one bounded
    /// `XAUTOCLAIM` per partition, and stores them.
    pub(super) async fn step_claim(
        &self,
        work: &mut Work,
        idle_ms: u64,
        partitions: &[u16],
    ) -> Result<usize, StepError> {
        let mut handled = self.settle(work).await?;
        work.claimed_last = 0;
        let n = partitions.len();
        for i in 0..n {
            let p = partitions[(work.next_claim + i) % n];
            let cursor = work.cursors[usize::from(p)].clone();
            let (entries, next) = match self.stream.claim(p, idle_ms, &cursor).await {
                Ok(r) => r,
                Err(e) => return Err(self.read_error(e).await),
            };
            work.cursors[usize::from(p)] = next;
            self.drop_malformed(&entries, false);
            work.claimed_last += entries.len();
            work.held = entries;
            handled += self.settle(work).await?;
        }
        work.next_claim = work.next_claim.wrapping_add(1);
        Ok(handled)
    }

    fn all_partitions(&self) -> Vec<u16> {
        (0..self.keys.partitions()).collect()
    }

    /// Test hook: read a batch and commit it without acknowledging, as a consumer that dies
    /// between commit and `XACK` would. Returns the clicks read.
    pub async fn read_and_commit_without_ack(&self) -> Result<usize, String> {
        let entries = match self.stream.read_new(self.per_partition()).await {
            Ok(e) => e,
            Err(e) => return Err(self.read_error(e).await.to_string()),
        };
        self.commit(&entries).await.map_err(|e| e.to_string())?;
        Ok(entries.iter().map(|e| e.clicks.len()).sum())
    }

    /// Test hook: read a batch and drop it, as a consumer that dies before committing would.
    /// Returns the clicks read.
    pub async fn read_without_commit(&self) -> Result<usize, String> {
        match self.stream.read_new(self.per_partition()).await {
            Ok(e) => Ok(e.iter().map(|e| e.clicks.len()).sum()),
            Err(e) => Err(self.read_error(e).await.to_string()),
        }
    }

    /// The background loop: consume new entries, and now and then take over entries a dead
    /// consumer left pending. Returns after one last flush once `shutdown` fires.
    pub async fn run(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) {
        let claim_every = Duration::from_millis((self.claim_idle_ms / 2).max(100));
        let mut last_claim = Instant::now();
        let mut last_sample = Instant::now() - BACKLOG_EVERY;
        let mut failures: u32 = 0;
        loop {
            if *shutdown.borrow() {
                break;
            }
            if last_sample.elapsed() >= BACKLOG_EVERY {
                last_sample = Instant::now();
                let _ = self.backlog().await;
            }
            let result = {
                let mut work = self.work.lock().await;
                let claim = last_claim.elapsed() >= claim_every;
                // Twice the pace: a backlog that never clears must not hold them for ever.
                let overdue = last_claim.elapsed() >= claim_every * 2;
                let mut outcome = self.step_new(&mut work).await;
                // Claims wait while there is a backlog of new entries, but not for a step that
                // moved nothing: with steady traffic every step moves something, and a dead
                // consumer's entries would wait for a lull. Nor past `overdue`: under a backlog
                // that lasts (one hot link's partition is enough) they would wait until it
                // clears, exposed to a Redis reset and marking every stats read pending.
                let quiet = match outcome {
                    Ok(0) => true,
                    Ok(_) => self.caught_up.load(Ordering::Relaxed),
                    Err(_) => false,
                };
                // Not on a failed step: Redis or PostgreSQL is down, and a claim would only try
                // the same failed commit a second time.
                if claim && (quiet || (overdue && outcome.is_ok())) {
                    let all = self.all_partitions();
                    let claimed = self.step_claim(&mut work, self.claim_idle_ms, &all).await;
                    // Keep claiming while there is something to take over.
                    if claimed.is_ok() && work.claimed_last == 0 {
                        last_claim = Instant::now();
                    }
                    outcome = match (outcome, claimed) {
                        (Ok(a), Ok(b)) => Ok(a + b),
                        (Err(e), _) | (_, Err(e)) => Err(e),
                    };
                }
                // What is stored is acknowledged before a pause, not after it: the backlog
                // never counts stored clicks for a linger, and a crash in it doubles nothing.
                if matches!(outcome, Ok(n) if n > 0) && self.lingers() {
                    if let Err(e) = self.ack_committed(&mut work).await {
                        outcome = Err(e);
                    }
                }
                outcome
            };
            let pause = match result {
                Ok(n) if n > 0 => {
                    failures = 0;
                    if !self.lingers() {
                        continue;
                    }
                    self.linger
                }
                Ok(_) => {
                    failures = 0;
                    self.poll_interval
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures % 20 == 0 {
                        log::warn!(error = e.to_string(), failures = failures; "click consumer step failed; holding the batch and retrying");
                    }
                    backoff(failures)
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                // A sender gone without a signal (its server dropped, not shut down) stops the
                // consumer, as it does every other background task; otherwise `changed` would
                // return at once forever and the loop would spin on Redis, re-creating the
                // streams of a test whose keys were already cleaned up.
                changed = shutdown.changed() => if changed.is_err() {
                    return;
                }
            }
        }
        if let Err(e) = self.flush_own().await {
            log::warn!(error = e.to_string(); "click flush at shutdown incomplete; another replica will claim the rest");
        } else {
            log::info!("click consumer stopped after flushing");
        }
    }

    /// At shutdown: store what is held, what is new, and what this process holds pending.
    async fn flush_own(&self) -> Result<(), StepError> {
        let mut work = self.work.lock().await;
        for _ in 0..1000 {
            if self.step_new(&mut work).await? == 0 {
                break;
            }
        }
        let all = self.all_partitions();
        for _ in 0..1000 {
            if self.step_claim(&mut work, 0, &all).await? == 0 {
                break;
            }
        }
        Ok(())
    }
}

/// 200 ms doubling per failure up to [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(8);
    (Duration::from_millis(200) * (1u32 << shift)).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_ceiling() {
        assert_eq!(backoff(1), Duration::from_millis(200));
        assert_eq!(backoff(2), Duration::from_millis(400));
        assert_eq!(backoff(5), Duration::from_millis(3200));
        assert_eq!(backoff(6), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }
}
