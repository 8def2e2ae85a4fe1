//! Getting a link's new state to Redis and every edge after a write, even when Redis fails.
//!
//! A write enqueues its code in `link_outbox` inside its own transaction (see
//! `db::outbox`), then publishes. A publish that fails or times out leaves the row; the
//! replayer here publishes the link's current row until Redis takes it. So once a write has
//! answered 2xx, its state reaches every edge within the outage plus one replay interval, instead
//! of the old entry redirecting until its TTL (24 h) ran out.

use crate::db;
use crate::db::urls::Link;
use crate::state::AppState;
use chrono::{DateTime, Utc};
use kurz_common::keys::CachedLink;
use std::time::Duration;

/// How often queued codes are published again.
pub const REPLAY_EVERY: Duration = Duration::from_millis(500);

/// Codes replayed per round.
const REPLAY_BATCH: i64 = 500;

/// After a committed write of `link`. `queued` is the outbox stamp the write's transaction got;
/// `None` for writes that enqueue only on failure (creates: a new code has no stale entry to
/// outlive, at most a short negative one).
pub async fn after_write(state: &AppState, link: &Link, queued: Option<DateTime<Utc>>) {
    let code = link.short_code.as_str();
    match state
        .cache
        .publish(code, &link.cache_entry(), link.visits)
        .await
    {
        Ok(()) => {
            if let Some(stamp) = queued {
                if let Ok(client) = state.db.get().await {
                    // Best effort: a row left behind is replayed once more, harmlessly.
                    let _ = db::outbox::done(&client, code, stamp).await;
                }
            }
        }
        Err(e) => {
            log::warn!(error = e.to_string(), short_code = code; "cache update failed; queued for replay");
            if queued.is_none() {
                if let Ok(client) = state.db.get().await {
                    let _ = db::outbox::enqueue(&client, code).await;
                }
            }
        }
    }
}

/// After a link import committed (its codes queued with it): clears their cache entries and
/// unqueues them; if Redis fails, they stay queued and the replay clears them.
pub async fn after_import(
    state: &AppState,
    client: &deadpool_postgres::Client,
    imported: &crate::import::ImportedUrls,
) {
    if let Err(e) = state.cache.forget_many(&imported.codes).await {
        log::warn!(error = e.to_string(), codes = imported.codes.len(); "cache not cleared after link import; queued for replay");
        return;
    }
    if let Some(stamp) = imported.queued {
        if let Err(e) = db::outbox::done_many(client, &imported.codes, stamp).await {
            log::warn!(error = e.to_string(); "imported links stay queued; the replay will clear them again");
        }
    }
}

/// One replay round: publishes the current state of the oldest queued codes. Returns how many
/// were published.
pub async fn replay_once(state: &AppState) -> Result<usize, String> {
    let client = state.db.get().await.map_err(|e| e.to_string())?;
    let queued = db::outbox::oldest(&client, REPLAY_BATCH)
        .await
        .map_err(|e| e.to_string())?;
    let mut published = 0;
    for (code, stamp) in &queued {
        let link = db::urls::find_url_by_code(&client, code)
            .await
            .map_err(|e| e.to_string())?;
        let entry = link
            .as_ref()
            .map_or(CachedLink::Missing, |link| link.cache_entry());
        let stored_visits = link.as_ref().map_or(0, |link| link.visits);
        state
            .cache
            .publish(code, &entry, stored_visits)
            .await
            .map_err(|e| e.to_string())?;
        db::outbox::done(&client, code, *stamp)
            .await
            .map_err(|e| e.to_string())?;
        published += 1;
    }
    if let Ok(left) = db::outbox::count(&client).await {
        state.metrics.link_outbox.set(left);
    }
    Ok(published)
}

/// The replayer: a round every [`REPLAY_EVERY`] until `stop`.
pub async fn run(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut failing = false;
    loop {
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
