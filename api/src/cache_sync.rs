//! Getting a link's new state to Redis and every edge after a write, even when Redis fails.
//!
//! A write enqueues its code in `link_outbox` inside its own transaction (see
//! `db::outbox`), then publishes. A publish that fails or times out leaves the row; the
//! replayer here publishes the link's current row until Redis takes it. So once a write has
//! answered 2xx, its state reaches every edge within the outage plus one replay interval, instead
//! of the old entry redirecting until its TTL (24 h) ran out.

use crate::cache::{LinkState, Published};
use crate::db;
use crate::db::urls::Link;
use crate::state::AppState;
use chrono::{DateTime, Utc};
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
            log::warn!(error = e, short_code = code; "cache update failed; queued for replay");
            if queued.is_none() {
                if let Ok(client) = state.db.get().await {
                    let _ = db::outbox::enqueue(&client, code).await;
                }
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

/// One replay round: publishes the current state of the oldest queued codes. Returns how many
/// were published.
pub async fn replay_once(state: &AppState) -> Result<usize, String> {
    let client = state.db.get().await.map_err(|e| e.to_string())?;
    // Before publishing: a round that Redis fails ends early, and the gauge must still show
    // what waits (the alert on it is for exactly that).
    if let Ok(waiting) = db::outbox::count(&client).await {
        state.metrics.link_outbox.set(waiting);
    }
    let queued = db::outbox::oldest(&client, REPLAY_BATCH)
        .await
        .map_err(|e| e.to_string())?;
    let mut published = 0;
    for (code, stamp) in &queued {
        let link = db::urls::find_url_by_code(&client, code)
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
            None => publish_missing(state, &client, code).await?,
        }
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
