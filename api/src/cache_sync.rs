//! Getting a link's new state to Redis and every edge after a write, even when Redis fails.
//!
//! A write enqueues its code in `link_outbox` inside its own transaction (see
//! `db::outbox`), then publishes. A publish that fails or times out leaves the row; the
//! replayer here publishes the link's current row until Redis takes it. So once a write has
//! answered 2xx, its state reaches every edge within the outage plus one replay round, instead
//! of the old entry redirecting until its TTL (24 h) ran out.

use crate::cache::{LinkState, Published};
use crate::db;
use crate::db::urls::Link;
use crate::state::AppState;
use chrono::{DateTime, Utc};
use futures_util::stream::{self, StreamExt};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// How often queued codes are published again.
pub const REPLAY_EVERY: Duration = Duration::from_millis(500);

/// Codes read from the queue at once.
const REPLAY_BATCH: i64 = 500;

/// Codes replayed at once: their reads are pipelined on one PostgreSQL connection, their
/// publishes on the Redis connection. A backlog of 100,000 codes (an import during a Redis
/// outage) then goes out in seconds, not one round trip after another.
const REPLAY_CONCURRENCY: usize = 32;

/// Batches in one round at most (200,000 codes): a write committed during the round with a
/// stamp from before it started (its transaction's clock) still falls in the round's range.
const REPLAY_MAX_BATCHES: usize = 400;

/// How long a code that failed waits before a round takes it again: the codes queued behind it
/// go first, however many fail (a shard without its replica refuses all of its own).
pub const REPLAY_RETRY_AFTER: Duration = Duration::from_secs(2);

/// After a committed write of `link`. `queued` is the outbox stamp the write's transaction got;
/// `None` for writes that enqueue only on failure (creates: a new code has no stale entry to
/// outlive, at most a short negative one).
pub async fn after_write(state: &AppState, link: &Link, queued: Option<DateTime<Utc>>) {
    let code = link.short_code.as_str();
    let published = match state.cache.publish(code, &link.cache_state()).await {
        Ok(Published::Stored | Published::Older) => Ok(()),
        Ok(Published::OlderThanMissing) => republish(state, code).await,
        Err(e) => Err(e.to_string()),
    };
    match published {
        Ok(()) => {
            if let Some(stamp) = queued {
                if let Ok(client) = state.db.get().await {
                    // Best effort: a row left behind is replayed once more, harmlessly.
                    let _ = db::outbox::done(&client, code, stamp).await;
                }
            }
        }
        Err(e) => {
            let in_queue = match queued {
                Some(_) => true,
                None => match state.db.get().await {
                    Ok(client) => db::outbox::enqueue(&client, code).await.is_ok(),
                    Err(_) => false,
                },
            };
            // Said after the fact: a create whose queueing failed too (Redis and PostgreSQL
            // both failing) is not replayed, and its short code may answer a cached "missing"
            // until that entry's TTL ends.
            if in_queue {
                log::warn!(error = e, short_code = code; "cache update failed; queued for replay");
            } else {
                log::error!(error = e, short_code = code; "cache update failed and could not be queued for replay");
            }
        }
    }
}

/// When Redis holds `code` as missing with a higher number than its row's state, or the replay
/// stored the code as missing while a row for it was being created: a number the replay took
/// for the code while the row was still uncommitted, which no state of the new row would ever
/// beat. So the row gets a new number under its lock and its current state goes out again.
/// (A refusal by a newer state of the row, or by an import's marker, needs nothing: that state
/// or the PostgreSQL read the marker sends visits to is already right.)
async fn republish(state: &AppState, code: &str) -> Result<(), String> {
    let client = state.db.get().await.map_err(|e| e.to_string())?;
    if let Some(link) = db::urls::renumber(&client, code)
        .await
        .map_err(|e| e.to_string())?
    {
        state
            .cache
            .publish(code, &link.cache_state())
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// After a link import committed (its codes queued with it): clears their cache entries and
/// unqueues them; if Redis fails, they stay queued and the replay clears them.
pub async fn after_import(
    state: &AppState,
    client: &deadpool_postgres::Client,
    imported: &crate::import::ImportedUrls,
) {
    // Above every state the imported codes had, the import's own included.
    let version = match db::urls::next_version(client).await {
        Ok(version) => version,
        Err(e) => {
            log::warn!(error = e.to_string(); "cache not cleared after link import; queued for replay");
            return;
        }
    };
    if let Err(e) = state.cache.forget_many(&imported.codes, version).await {
        log::warn!(error = e.to_string(), codes = imported.codes.len(); "cache not cleared after link import; queued for replay");
        return;
    }
    if let Some(stamp) = imported.queued {
        if let Err(e) = db::outbox::done_many(client, &imported.codes, stamp).await {
            log::warn!(error = e.to_string(); "imported links stay queued; the replay will clear them again");
        }
    }
}

/// Publishes `code`, which a read found without a row, as missing: with a number taken after
/// that read, above every state the code had before it. A create of the code that committed
/// after the read may have published first, and the missing entry has just replaced it; so the
/// row is looked for again, and one found goes out again with a number above the missing one.
pub async fn publish_missing(
    state: &AppState,
    client: &deadpool_postgres::Client,
    code: &str,
) -> Result<(), String> {
    let version = db::urls::next_version(client)
        .await
        .map_err(|e| e.to_string())?;
    let published = state
        .cache
        .publish(code, &LinkState::absent(version))
        .await
        .map_err(|e| e.to_string())?;
    if published == Published::Stored
        && db::urls::find_url_by_code(client, code)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
    {
        republish(state, code).await?;
    }
    Ok(())
}

/// One replay round: publishes the current state of every code queued when it began, oldest
/// first, in batches whose codes are replayed concurrently. A code that fails (its Redis node
/// refuses it, say a shard without the replica `redis.replica_acks` asks for) waits
/// [`REPLAY_RETRY_AFTER`] instead of holding up the codes queued after it; a batch in which
/// nothing succeeds (Redis or PostgreSQL down) ends the round. Returns how many were
/// published, or what failed.
pub async fn replay_once(state: &AppState) -> Result<usize, String> {
    let client = state.db.get().await.map_err(|e| e.to_string())?;
    // Before publishing: a round that Redis fails ends early, and the gauge must still show
    // what waits (the alert on it is for exactly that).
    if let Ok(waiting) = db::outbox::count(&client).await {
        state.metrics.link_outbox.set(waiting);
    }
    // Codes queued during the round, and failed codes waiting to be retried, are after this.
    let upto = db::outbox::now(&client).await.map_err(|e| e.to_string())?;
    let (mut published, mut failed, mut first_error) = (0, 0, None);
    for _ in 0..REPLAY_MAX_BATCHES {
        let queued = db::outbox::oldest(&client, REPLAY_BATCH, upto)
            .await
            .map_err(|e| e.to_string())?;
        let full = queued.len() as i64 == REPLAY_BATCH;
        let (done, errors) = replay_batch(state, &client, queued).await?;
        published += done;
        failed += errors.len();
        first_error = first_error.or(errors.into_iter().next());
        if !full || done == 0 {
            break;
        }
    }
    if let Ok(left) = db::outbox::count(&client).await {
        state.metrics.link_outbox.set(left);
    }
    match first_error {
        None => Ok(published),
        Some(e) => Err(format!(
            "{failed} queued link states not published ({published} were); first: {e}"
        )),
    }
}

/// Replays `queued`, [`REPLAY_CONCURRENCY`] at a time; a code that fails waits
/// [`REPLAY_RETRY_AFTER`]. Returns how many were published and the failures; an error when a
/// failed code could not be put back (PostgreSQL is gone).
async fn replay_batch(
    state: &AppState,
    client: &deadpool_postgres::Client,
    queued: Vec<(String, DateTime<Utc>)>,
) -> Result<(usize, Vec<String>), String> {
    // Every code is tried, however many fail before it: a failure that waits out a timeout
    // costs the batch a timeout per wave of REPLAY_CONCURRENCY codes, a few seconds at most,
    // and a Redis that is down fails fast once its handle knows (`RedisHandle::conn`).
    let outcomes: Vec<_> = stream::iter(queued)
        .map(|(code, stamp)| async move {
            let outcome = replay_code(state, client, &code, stamp).await;
            (code, stamp, outcome)
        })
        .buffer_unordered(REPLAY_CONCURRENCY)
        .collect()
        .await;
    let (mut published, mut errors) = (0, Vec::new());
    for (code, stamp, outcome) in outcomes {
        match outcome {
            Ok(()) => published += 1,
            Err(e) => {
                db::outbox::retry_later(client, &code, stamp, REPLAY_RETRY_AFTER)
                    .await
                    .map_err(|e| e.to_string())?;
                errors.push(format!("{code}: {e}"));
            }
        }
    }
    Ok((published, errors))
}

/// Publishes the current row of `code`, queued at `stamp`, and unqueues it.
async fn replay_code(
    state: &AppState,
    client: &deadpool_postgres::Client,
    code: &str,
    stamp: DateTime<Utc>,
) -> Result<(), String> {
    let link = db::urls::find_url_by_code(client, code)
        .await
        .map_err(|e| e.to_string())?;
    match link {
        Some(link) => {
            let published = state
                .cache
                .publish(code, &link.cache_state())
                .await
                .map_err(|e| e.to_string())?;
            if published == Published::OlderThanMissing {
                republish(state, code).await?;
            }
        }
        None => publish_missing(state, client, code).await?,
    }
    db::outbox::done(client, code, stamp)
        .await
        .map_err(|e| e.to_string())
}

/// How far back a restart or failover of Redis may have lost link states: those written in
/// this span before Redis was last seen unchanged are published again when it changes. The
/// shipped `appendfsync everysec` loses at most the last second or two; a promoted replica what
/// it had not received yet; a restore from a backup more than this (docs/operations.md). At
/// least: a state's version is taken when its statement runs, and a bulk write can commit
/// (and publish) up to `limits.bulk_request_timeout_ms` later, so the span covers that too.
pub const REPUBLISH_WINDOW: Duration = Duration::from_secs(300);

fn republish_window(state: &AppState) -> Duration {
    let bulk = Duration::from_millis(state.config.limits.bulk_request_timeout_ms);
    REPUBLISH_WINDOW.max(bulk + Duration::from_secs(60))
}

/// Notices that the Redis server holding the links changed (its `run_id`: a restart, a
/// failover) and queues every link state written in the span before (`REPUBLISH_WINDOW`, or
/// longer for long bulk writes) for the replay. Redis that comes back from its append-only file
/// without its last second, or a replica promoted without the master's last writes, still holds
/// older entries: a link deleted then would redirect again until the entry's TTL (a day) ran
/// out. Publishing is idempotent (a state never replaces a newer one), so publishing too much
/// costs only time.
#[derive(Default)]
pub struct RestartWatch {
    servers: Option<Vec<String>>,
    /// (when, the last link version handed out then), one a second at most, kept while Redis
    /// is seen unchanged: the front is the newest mark at least the span old.
    marks: VecDeque<(Instant, i64)>,
}

impl RestartWatch {
    /// One look at Redis; returns how many codes were queued (0 when nothing changed).
    pub async fn check(&mut self, state: &AppState) -> Result<u64, String> {
        let servers = state.cache.servers().await.map_err(|e| e.to_string())?;
        let client = state.db.get().await.map_err(|e| e.to_string())?;
        let now = Instant::now();
        let changed = self.servers.as_ref().is_some_and(|seen| *seen != servers);
        let mut queued = 0;
        if changed {
            let since = self.marks.front().map_or(0, |m| m.1);
            queued = db::outbox::enqueue_written_after(&client, since)
                .await
                .map_err(|e| e.to_string())?;
            state.metrics.redis_server_changes.inc();
            log::warn!(queued = queued, since_version = since;
                "the Redis server holding the links changed (a restart or a failover): link states written shortly before are published again");
            // Seen, whatever fails below: the next look must not count this change again. From
            // `since` still: what was just queued goes to the new server now, and a server that
            // loses it again (a crash loop, a second failover) needs it again.
            self.servers = Some(servers.clone());
            self.marks = VecDeque::from([(now, since)]);
        }
        if changed
            || self
                .marks
                .back()
                .is_none_or(|m| now - m.0 >= Duration::from_secs(1))
        {
            let version = db::outbox::last_version(&client)
                .await
                .map_err(|e| e.to_string())?;
            self.marks.push_back((now, version));
        }
        let window = republish_window(state);
        while self.marks.len() > 1 && now - self.marks[1].0 >= window {
            self.marks.pop_front();
        }
        self.servers = Some(servers);
        Ok(queued)
    }
}

/// The replayer: a round every [`REPLAY_EVERY`] until `stop`.
pub async fn run(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut failing = false;
    let mut watch = RestartWatch::default();
    let mut watch_failing = false;
    loop {
        // Before the round, so what a restart lost goes out in it. A failure (Redis or
        // PostgreSQL down) keeps what was seen: the change is noticed once both answer.
        match watch.check(&state).await {
            Ok(_) => watch_failing = false,
            Err(e) => {
                if !watch_failing {
                    log::warn!(error = e; "cannot tell whether the Redis server changed; retrying");
                }
                watch_failing = true;
            }
        }
        match replay_once(&state).await {
            Ok(n) => {
                if n > 0 || failing {
                    log::info!(published = n; "queued link states published");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    log::warn!(error = e; "queued link states not published yet; retrying");
                }
                failing = true;
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(REPLAY_EVERY) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
