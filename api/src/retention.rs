//! `events.retention_days`: click events older than that are deleted, a batch at a time, by one
//! API replica at a time (an advisory lock), a minute after start and every hour after. The same
//! job drops the per-visitor rows of past days ([`prune_visitors`]), in batches too, one replica
//! at a time (a lock of its own). The per-link rollups are kept: a link's total and its daily
//! history outlive the raw clicks they were counted from.

use crate::state::AppState;
use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use std::time::Duration;

/// Advisory lock key of the retention job ("kurzret").
pub const LOCK_KEY: i64 = 0x006b_7572_7a72_6574;
/// Advisory lock key of the visitor-row prune ("kurzvis"): its own, so a long first pass of
/// click retention on one replica does not hold every replica's prune for hours.
pub const VISITORS_LOCK_KEY: i64 = 0x006b_7572_7a76_6973;
/// Rows per delete statement: short transactions, no long lock on `events`. For click
/// retention, the events one statement reads (at most this many are deleted).
pub const BATCH: i64 = 10_000;
const EVERY: Duration = Duration::from_secs(3600);
/// The first pass: soon after start, so replicas that restart more often than hourly (rolling
/// deploys) still run it, but not in the start-up's own rush.
const FIRST_AFTER: Duration = Duration::from_secs(60);

/// The job's connection, holding its advisory lock; `None` when another replica holds it.
async fn lock(db: &Pool, key: i64) -> Result<Option<deadpool_postgres::Client>, String> {
    let client = db.get().await.map_err(|e| e.to_string())?;
    let locked: bool = client
        .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
        .await
        .map_err(|e| e.to_string())?
        .get(0);
    Ok(locked.then_some(client))
}

async fn unlock(client: &deadpool_postgres::Client, key: i64) {
    let _ = client
        .execute("SELECT pg_advisory_unlock($1)", &[&key])
        .await;
}

/// What a pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pass {
    pub deleted: u64,
    /// Events read, of every type: kept clicks and other events included.
    pub read: u64,
    /// Just before the first click kept: every click read before it was deleted, so the next
    /// pass may start there.
    pub resume: Option<i64>,
}

/// Most time between two walks from the first id.
const FULL_WALK_EVERY: Duration = Duration::from_secs(24 * 3600);

/// Where each pass of this process starts.
///
/// Events are stored in about time order, so the clicks that expire are at the front of the
/// id order. A pass walks windows of ids and stops at the first window that holds clicks to
/// keep and none to delete: what follows is newer. It starts where the last one kept its first
/// click, so it reads what expired since and one window: not the front of the table again,
/// whose deleted rows' index entries stay until a vacuum and would be stepped through by every
/// pass. A pass walks from the first id instead when none has in a day (the first pass after
/// start, too; one that could not run, another replica holding the job, or that failed, is
/// made up by the next): a click stored below where a pass got (an events import keeps its
/// file's ids; a click batch that committed its lower ids after a later one) goes within a day
/// and an hour. (A query for old rows by time alone
/// rescanned the front of the table at every statement — a BRIN summary is never narrowed by
/// deletes — passed `database.statement_timeout_ms` once the backlog was large, and retention
/// then failed every hour for good.)
#[derive(Debug, Default)]
pub struct Walk {
    resume: i64,
    /// When the last walk from the first id that ran to its end began.
    walked: Option<std::time::Instant>,
}

impl Walk {
    /// The id a pass starting `now` starts after.
    pub fn start(&self, now: std::time::Instant) -> i64 {
        match self.walked {
            Some(at) if now.saturating_duration_since(at) < FULL_WALK_EVERY => self.resume,
            _ => 0,
        }
    }

    /// A pass that began at `began` after id `from` ran: with a click kept in sight, the next
    /// starts before it; a walk from the first id that was not cut short by a shutdown counts
    /// as the day's.
    pub fn ended(&mut self, began: std::time::Instant, from: i64, pass: &Pass, stopped: bool) {
        if let Some(resume) = pass.resume {
            self.resume = resume;
        }
        if from == 0 && !stopped {
            self.walked = Some(began);
        }
    }
}

/// Deletes click events that occurred before `cutoff` among the events after id `after`,
/// reading `batch` a statement (see [`Walk`]). `None` when another replica holds the job.
/// Stops between statements once `stop` is set: a first pass over a large backlog must not hold
/// a shutdown past its grace period (the next pass goes on).
pub async fn run_once(
    db: &Pool,
    cutoff: DateTime<Utc>,
    batch: i64,
    mut after: i64,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Option<Pass>, String> {
    let Some(client) = lock(db, LOCK_KEY).await? else {
        return Ok(None);
    };
    let mut pass = Pass::default();
    let result = loop {
        match crate::db::events::delete_clicks_in_window(&client, after, batch, cutoff).await {
            Ok(w) => {
                pass.deleted += w.deleted;
                pass.read += w.read;
                if pass.resume.is_none() {
                    pass.resume = w.first_kept_click.map(|id| id - 1);
                }
                let Some(last) = w.last else {
                    break Ok(Some(pass));
                };
                after = last;
                let newer_from_here = w.deleted == 0 && w.first_kept_click.is_some();
                if newer_from_here || *stop.borrow() {
                    break Ok(Some(pass));
                }
            }
            Err(e) => break Err(e.to_string()),
        }
    };
    unlock(&client, LOCK_KEY).await;
    result
}

/// Drops the per-visitor rows of days before yesterday: their days' counts are final, and the
/// rows would only grow (`click_day_visitors`, migration V19). Returns how many went; `None`
/// when another replica is pruning. In batches, as [`run_once`]: a day's rows of a busy
/// instance are millions, and one statement for them would outlast
/// `database.statement_timeout_ms`, fail every hour and leave the table growing for good.
pub async fn prune_visitors(
    db: &Pool,
    stop: &tokio::sync::watch::Receiver<bool>,
) -> Result<Option<u64>, String> {
    let Some(client) = lock(db, VISITORS_LOCK_KEY).await? else {
        return Ok(None);
    };
    let (mut deleted, mut from) = (0, None);
    let result = loop {
        match crate::db::events::delete_old_visitors(&client, from.as_ref(), BATCH).await {
            Ok((n, last)) => {
                deleted += n as u64;
                from = last;
                if n < BATCH || *stop.borrow() {
                    break Ok(Some(deleted));
                }
            }
            Err(e) => break Err(e.to_string()),
        }
    };
    unlock(&client, VISITORS_LOCK_KEY).await;
    result
}

/// The background job: visitor rows always, click events when `events.retention_days` is set.
pub async fn run(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let days = state.config.events.retention_days;
    let mut wait = FIRST_AFTER;
    let mut walk = Walk::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        wait = EVERY;
        if let Err(e) = prune_visitors(&state.db, &stop).await {
            log::warn!(error = e; "old visitor rows not pruned");
        }
        if days == 0 {
            continue;
        }
        let cutoff = Utc::now() - chrono::Duration::days(i64::from(days));
        let began = std::time::Instant::now();
        let from = walk.start(began);
        match run_once(&state.db, cutoff, BATCH, from, &stop).await {
            Ok(Some(pass)) => {
                walk.ended(began, from, &pass, *stop.borrow());
                if pass.deleted > 0 {
                    log::info!(deleted = pass.deleted, read = pass.read, retention_days = days; "old click events deleted");
                }
            }
            Ok(None) => {}
            Err(e) => log::warn!(error = e; "click retention failed; next run in an hour"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// A walk from the first id comes when none ran to its end for a day: an attempt that did
    /// not run (another replica held the job, or it failed) leaves the next one due.
    #[test]
    fn the_walk_from_the_first_id_is_made_up_until_one_runs() {
        let hour = Duration::from_secs(3600);
        let t0 = Instant::now();
        let mut walk = Walk::default();
        let kept = Pass {
            resume: Some(499),
            ..Pass::default()
        };
        assert_eq!(walk.start(t0), 0, "the first pass after start");
        walk.ended(t0, 0, &kept, false);
        assert_eq!(walk.start(t0 + hour), 499);
        assert_eq!(walk.start(t0 + 23 * hour), 499);
        // A day on: due. This attempt does not run (no `ended`), nor does one that fails.
        assert_eq!(walk.start(t0 + 24 * hour), 0);
        assert_eq!(walk.start(t0 + 25 * hour), 0);
        // One cut short by a shutdown does not count either.
        walk.ended(t0 + 25 * hour, 0, &Pass::default(), true);
        assert_eq!(walk.start(t0 + 26 * hour), 0);
        walk.ended(t0 + 26 * hour, 0, &kept, false);
        assert_eq!(walk.start(t0 + 27 * hour), 499);
        // An ordinary pass that saw no kept click keeps the resume point.
        walk.ended(t0 + 27 * hour, 499, &Pass::default(), false);
        assert_eq!(walk.start(t0 + 28 * hour), 499);
    }
}
