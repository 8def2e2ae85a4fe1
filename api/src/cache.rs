//! The link cache in Redis (cache-aside) and the invalidation channel.
//!
//! A fill after a miss must never put a row read before a write back over that write. Reads
//! note the write generation of the code's partition together with the lookup; every write
//! bumps it before it stores the new entry (or unlinks entries, for bulk imports); a fill is a
//! script that stores only while the generation is unchanged, and only where no entry is. So a
//! read that fetched the old row from PostgreSQL just before a write committed finds the
//! generation moved and fills nothing, whether the write overwrote the entry or deleted it.
//! Every write also publishes the code on the invalidation channel, so the edges drop their
//! near-cache copies.

use crate::redis_handle::{RedisDown, RedisHandle};
use kurz_common::keys::{CachedLink, KeySchema};
use std::sync::Arc;

/// Message on the invalidation channel meaning "drop every cached link" (bulk imports).
pub const INVALIDATE_ALL: &str = "*";

/// Raises a visit counter that exists to at least `ARGV[1]`; a missing one stays missing (the
/// next limited visit seeds it from PostgreSQL).
const RAISE_VISITS: &str = "local c = redis.call('GET', KEYS[1]) \
if c and tonumber(c) < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end \
return 0";

/// Stores `ARGV[1]` for `ARGV[2]` seconds at `KEYS[1]` if the generation at `KEYS[2]` is still
/// `ARGV[3]` and no current entry is there: an entry in another format (`ARGV[4]` is the
/// current version's prefix) was a miss for the lookup and is replaced, instead of sending that
/// code to PostgreSQL until its TTL ends. Both keys share the partition's hash tag
/// (cluster-safe).
const FILL: &str = r#"
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[3] then return 0 end
local cur = redis.call('GET', KEYS[1])
if cur and (cur == '0' or string.sub(cur, 1, string.len(ARGV[4])) == ARGV[4]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"#;

/// What a lookup found.
pub enum Lookup {
    Hit(CachedLink),
    /// No entry; a fill must carry this generation.
    Miss(Generation),
}

/// A partition's write generation as a lookup saw it.
#[derive(Debug, Clone)]
pub struct Generation(String);

#[derive(Clone)]
pub struct LinkCache {
    redis: Arc<RedisHandle>,
    keys: KeySchema,
    ttl: u64,
    negative_ttl: u64,
    fill: Arc<redis::Script>,
}

impl LinkCache {
    pub fn new(redis: Arc<RedisHandle>, keys: KeySchema, ttl: u64, negative_ttl: u64) -> Self {
        Self {
            redis,
            keys,
            ttl,
            negative_ttl,
            fill: Arc::new(redis::Script::new(FILL)),
        }
    }

    /// The entry and the generation in one round trip.
    pub async fn lookup(&self, code: &str) -> Result<Lookup, RedisDown> {
        let mut pipe = redis::pipe();
        pipe.cmd("GET").arg(self.keys.link(code));
        pipe.cmd("GET").arg(self.keys.generation_for(code));
        let (raw, generation): (Option<String>, Option<String>) = self.redis.query(&pipe).await?;
        Ok(match raw.as_deref().and_then(CachedLink::decode) {
            Some(entry) => Lookup::Hit(entry),
            None => Lookup::Miss(Generation(generation.unwrap_or_else(|| "0".into()))),
        })
    }

    fn ttl_of(&self, entry: &CachedLink) -> u64 {
        match entry {
            CachedLink::Missing => self.negative_ttl,
            CachedLink::Found(_) => self.ttl,
        }
    }

    /// Fills after a miss; a no-op if a write came in since the lookup (see the module docs).
    /// Returns whether the entry was stored.
    pub async fn fill(
        &self,
        code: &str,
        entry: &CachedLink,
        seen: &Generation,
    ) -> Result<bool, RedisDown> {
        let mut conn = self.redis.conn().await?;
        let mut inv = self.fill.key(self.keys.link(code));
        inv.key(self.keys.generation_for(code))
            .arg(entry.encode())
            .arg(self.ttl_of(entry))
            .arg(&seen.0)
            .arg(format!("{}|", kurz_common::keys::ENTRY_VERSION));
        inv.invoke_async::<i64>(&mut conn)
            .await
            .map(|stored| stored == 1)
            .map_err(|e| self.redis.failed(e))
    }

    /// After a write: move the generation, store the new entry and tell every edge. A link
    /// without a visit limit (or deleted) loses its visit counter, so a limit set later counts
    /// from the clicks stored by then (`kurz_common::visit`); a limited link's counter is
    /// raised to `stored_visits` (the clicks PostgreSQL holds) when it is below: visits that
    /// PostgreSQL allowed while Redis did not answer are counted, never lost from the limit.
    pub async fn publish(
        &self,
        code: &str,
        entry: &CachedLink,
        stored_visits: i64,
    ) -> Result<(), RedisDown> {
        let mut pipe = redis::pipe();
        pipe.cmd("INCR")
            .arg(self.keys.generation_for(code))
            .ignore();
        if matches!(entry, CachedLink::Found(l) if l.max_visits.is_some()) {
            pipe.cmd("EVAL")
                .arg(RAISE_VISITS)
                .arg(1)
                .arg(self.keys.visits(code))
                .arg(stored_visits)
                .ignore();
        } else {
            pipe.cmd("UNLINK").arg(self.keys.visits(code)).ignore();
        }
        pipe.cmd("SET")
            .arg(self.keys.link(code))
            .arg(entry.encode())
            .arg("EX")
            .arg(self.ttl_of(entry))
            .ignore();
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.keys.invalidations()).arg(code);
        if self.redis.is_cluster() {
            // The cluster client routes PUBLISH by its channel as if it were a key: another
            // slot than the link's, so it cannot share the pipeline. After the write, as here.
            self.redis.query::<()>(&pipe).await?;
            return self.redis.query::<i64>(&publish).await.map(|_| ());
        }
        pipe.add_command(publish).ignore();
        self.redis.query::<()>(&pipe).await
    }

    /// Publishes the key schema's fingerprint, which edges compare with their own before they
    /// answer redirects from Redis (see `kurz_common::keys::KeySchema::fingerprint`).
    pub async fn publish_schema(&self) -> Result<(), RedisDown> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.schema()).arg(self.keys.fingerprint());
        self.redis.query::<()>(&cmd).await
    }

    /// After a bulk import: move every partition's generation (fills in flight from before the
    /// import's commit then store nothing), drop the entries and visit counters of `codes`, and
    /// tell every edge to drop its whole near-cache (one message instead of one per row). An
    /// imported row may have changed or dropped its visit limit: a limited link's next visit
    /// seeds its counter again from the clicks stored, as after any write (see `publish`).
    pub async fn forget_many(&self, codes: &[String]) -> Result<(), RedisDown> {
        let generations: Vec<_> = (0..self.keys.partitions())
            .map(|p| {
                (
                    p,
                    redis::cmd("INCR").arg(self.keys.generation(p)).to_owned(),
                )
            })
            .collect();
        self.redis.query_parts(&generations).await?;
        // One UNLINK per partition and chunk: on a cluster a command's keys share a slot.
        let mut by_partition: Vec<Vec<String>> =
            vec![Vec::new(); usize::from(self.keys.partitions())];
        for code in codes {
            let keys = &mut by_partition[usize::from(self.keys.partition(code))];
            keys.push(self.keys.link(code));
            keys.push(self.keys.visits(code));
        }
        let mut unlinks = Vec::new();
        for (p, links) in by_partition.iter().enumerate() {
            for chunk in links.chunks(1000) {
                unlinks.push((p as u16, redis::cmd("UNLINK").arg(chunk).to_owned()));
            }
        }
        for batch in unlinks.chunks(64) {
            self.redis.query_parts(batch).await?;
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
