//! Keeps the day's visitor salt (`kurz_common::visitors`) fresh in the background, so a
//! redirect only hashes: no Redis round trip on the hot path for it.

use async_trait::async_trait;
use kurz_common::keys::KeySchema;
use kurz_common::redis_handle::RedisHandle;
use kurz_common::visitors::VisitorSalt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// Often enough that the day's salt (fetched with tomorrow's ahead of midnight) is always
/// there; a Redis outage longer than a day leaves clicks without a visitor id, nothing worse.
const EVERY: Duration = Duration::from_secs(30);

pub struct SaltRefresh {
    pub redis: RedisHandle,
    pub keys: KeySchema,
    pub salt: Arc<VisitorSalt>,
}

#[async_trait]
impl BackgroundService for SaltRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        loop {
            if let Err(e) = self.salt.refresh(&self.redis, &self.keys).await {
                log::warn!(error = e; "visitor salt not refreshed; clicks keep the last one known");
            }
            tokio::select! {
                _ = tokio::time::sleep(EVERY) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
