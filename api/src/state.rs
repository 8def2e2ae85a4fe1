//! What every handler shares.

use crate::cache::LinkCache;
use crate::clicks::consumer::Consumer;
use crate::clicks::ClickRecorder;
use crate::config::ApiConfig;
use crate::metrics::Metrics;
use crate::redis_handle::RedisHandle;
use deadpool_postgres::Pool;
use kurz_common::keys::KeySchema;
use std::sync::Arc;

#[derive(Clone)]
pub struct AppState {
    pub db: Pool,
    pub redis: Arc<RedisHandle>,
    pub keys: KeySchema,
    pub cache: LinkCache,
    pub clicks: ClickRecorder,
    /// Where `POST /urls` inserts: concurrent creates share a statement.
    pub creates: crate::creates::Creates,
    pub consumer: Arc<Consumer>,
    pub config: Arc<ApiConfig>,
    pub metrics: Arc<Metrics>,
    /// Who may name the client's address.
    pub proxies: Arc<kurz_common::proxies::ProxyTrust>,
    /// Today's visitor salt (`kurz_common::visitors`), refreshed in the background.
    pub visitors: Arc<kurz_common::visitors::VisitorSalt>,
    /// Rules link targets must meet.
    pub targets: Arc<kurz_common::target::TargetPolicy>,
    /// Passwords, sessions, API keys.
    pub auth: Arc<crate::auth::Auth>,
    /// Bulk uploads held, and imports running, at once, and the client addresses with an upload
    /// under way (`routes::bulk`).
    pub uploads: Arc<tokio::sync::Semaphore>,
    pub imports: Arc<tokio::sync::Semaphore>,
    pub uploading: Arc<std::sync::Mutex<std::collections::HashSet<std::net::IpAddr>>>,
    /// QR codes drawn at once (`routes::qr`).
    pub drawing: Arc<tokio::sync::Semaphore>,
    /// The last answer of PostgreSQL to a connection of its own (`startup::database_answers`
    /// with the pool full), and when: one probe at a time, reused for a second.
    pub direct_probe: Arc<tokio::sync::Mutex<Option<(std::time::Instant, bool)>>>,
}

impl AppState {
    /// A pooled PostgreSQL connection, or 503 when none comes in time.
    pub async fn client(&self) -> Result<deadpool_postgres::Client, crate::error::ApiError> {
        Ok(self.db.get().await?)
    }
}

/// For extractors that need only part of the state (`auth::Caller`), so their modules need not
/// know `AppState`.
impl axum::extract::FromRef<AppState> for Arc<crate::auth::Auth> {
    fn from_ref(state: &AppState) -> Self {
        state.auth.clone()
    }
}

impl axum::extract::FromRef<AppState> for Pool {
    fn from_ref(state: &AppState) -> Self {
        state.db.clone()
    }
}

/// A turn among `turns`, waited for up to `wait`: past it, a 503 saying `busy`.
pub async fn turn(
    turns: &Arc<tokio::sync::Semaphore>,
    wait: std::time::Duration,
    busy: &str,
) -> Result<tokio::sync::OwnedSemaphorePermit, crate::error::ApiError> {
    match tokio::time::timeout(wait, turns.clone().acquire_owned()).await {
        Ok(Ok(turn)) => Ok(turn),
        _ => Err(crate::error::ApiError::Unavailable(format!(
            "{busy}; retry shortly"
        ))),
    }
}
