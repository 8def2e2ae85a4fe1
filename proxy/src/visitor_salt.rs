//! Keeps the day's visitor salt (`kurz_common::visitors`) fresh in the background, so a
//! redirect only hashes: no Redis round trip on the hot path for it.

use async_trait::async_trait;
use kurz_common::keys::KeySchema;
use kurz_common::redis_handle::RedisHandle;
use kurz_common::visitors::VisitorSalt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;

pub struct SaltRefresh {
    pub redis: RedisHandle,
    pub keys: KeySchema,
    pub salt: Arc<VisitorSalt>,
}

#[async_trait]
impl BackgroundService for SaltRefresh {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut failing = false;
        loop {
            let (redis, keys) = (&self.redis, &self.keys);
            self.salt.refresh_logged(redis, keys, &mut failing).await;
            tokio::select! {
                _ = tokio::time::sleep(self.salt.refresh_after()) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
