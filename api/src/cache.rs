//! The link cache in Redis (cache-aside) and the invalidation channel.
//!
//! Reads fill entries with `SET NX`, writes overwrite them with `SET`: a read that fetched a row
//! just before a concurrent write cannot put the old row back over the new one. Every write also
//! publishes the code on the invalidation channel, so the edges drop their near-cache copies.

use crate::redis_handle::{RedisDown, RedisHandle};
use kurz_common::keys::{CachedLink, KeySchema};
use std::sync::Arc;

/// Message on the invalidation channel meaning "drop every cached link" (bulk imports).
pub const INVALIDATE_ALL: &str = "*";

/// What a lookup found.
pub enum Lookup {
    Hit(CachedLink),
    Miss,
}

#[derive(Clone)]
pub struct LinkCache {
    redis: Arc<RedisHandle>,
    keys: KeySchema,
    ttl: u64,
    negative_ttl: u64,
}

impl LinkCache {
    pub fn new(redis: Arc<RedisHandle>, keys: KeySchema, ttl: u64, negative_ttl: u64) -> Self {
        Self {
            redis,
            keys,
            ttl,
            negative_ttl,
        }
    }

    pub async fn lookup(&self, code: &str) -> Result<Lookup, RedisDown> {
        let raw: Option<String> = self
            .redis
            .query(redis::cmd("GET").arg(self.keys.link(code)))
            .await?;
        Ok(match raw.as_deref().and_then(CachedLink::decode) {
            Some(entry) => Lookup::Hit(entry),
            None => Lookup::Miss,
        })
    }

    fn ttl_of(&self, entry: &CachedLink) -> u64 {
        match entry {
            CachedLink::Missing => self.negative_ttl,
            CachedLink::Found(_) => self.ttl,
        }
    }

    /// Fills after a miss; never overwrites a fresher entry a write put there meanwhile.
    pub async fn fill(&self, code: &str, entry: &CachedLink) -> Result<(), RedisDown> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.link(code))
            .arg(entry.encode())
            .arg("EX")
            .arg(self.ttl_of(entry))
            .arg("NX");
        self.redis.query::<Option<String>>(&cmd).await.map(|_| ())
    }

    /// After a write: store the new entry and tell every edge.
    pub async fn publish(&self, code: &str, entry: &CachedLink) -> Result<(), RedisDown> {
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.link(code))
            .arg(entry.encode())
            .arg("EX")
            .arg(self.ttl_of(entry))
            .ignore();
        pipe.cmd("PUBLISH")
            .arg(self.keys.invalidations())
            .arg(code)
            .ignore();
        self.redis.query::<()>(&pipe).await
    }

    /// Publishes the key schema's fingerprint, which edges compare with their own before they
    /// answer redirects from Redis (see `kurz_common::keys::KeySchema::fingerprint`).
    pub async fn publish_schema(&self) -> Result<(), RedisDown> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.schema()).arg(self.keys.fingerprint());
        self.redis.query::<()>(&cmd).await
    }

    /// After a bulk import: drop the entries of `codes` and tell every edge to drop its whole
    /// near-cache (one message instead of one per row).
    pub async fn forget_many(&self, codes: &[String]) -> Result<(), RedisDown> {
        for chunk in codes.chunks(1000) {
            let mut cmd = redis::cmd("UNLINK");
            for code in chunk {
                cmd.arg(self.keys.link(code));
            }
            self.redis.query::<i64>(&cmd).await?;
        }
        self.redis
            .query::<i64>(
                redis::cmd("PUBLISH")
                    .arg(self.keys.invalidations())
                    .arg(INVALIDATE_ALL),
            )
            .await
            .map(|_| ())
    }
}
