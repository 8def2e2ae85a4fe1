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
//!
//! Publishes can land out of order: two replicas writing one link, or the outbox replay racing
//! a write, reach Redis in the order of their round trips, not of their commits. Every entry
//! therefore carries its state's number (`urls.version`, from one sequence) and the publish is
//! a script that stores only a state at least as new as the one there. A deleted link's
//! tombstone keeps its number for the full link TTL, and a bulk import leaves a stale marker
//! with a number instead of no entry, so a late publish of an older state finds something to
//! compare with.

use crate::redis_handle::{RedisDown, RedisHandle};
use kurz_common::keys::{lua_entry_version, stale_marker, CachedLink, KeySchema, LUA_STALE_MARKER};
use std::sync::Arc;

/// Message on the invalidation channel meaning "drop every cached link" (bulk imports).
pub const INVALIDATE_ALL: &str = "*";

/// Marks a fingerprint as published now in the set of running APIs' fingerprints
/// (`KeySchema::schemas`), by the clock of the Redis holding the set (one clock for every API),
/// and drops those older than `ARGV[2]` ms: their APIs stopped. `ARGV[1]`: the fingerprint;
/// `ARGV[3]`, when not empty: another fingerprint found in the single key, marked as published
/// `ARGV[4]` ms ago (never moved back). The set expires when no API has published for twice
/// `ARGV[2]`: APIs from before it (after a rollback) then leave only the single key.
const PUBLISH_SCHEMA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
if ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[1], 'GT', now - tonumber(ARGV[4]), ARGV[3])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]) - 1)
redis.call('PEXPIRE', KEYS[1], 2 * tonumber(ARGV[2]))
return 1
"#;

/// Publishes a link's state. `KEYS`: the entry, the partition's generation, the visit counter.
/// `ARGV`: the entry text, its TTL in seconds, its version, and the clicks stored for a limited
/// link (empty for a link without a limit, whose counter goes). The generation moves in every
/// case, so a fill that read PostgreSQL before this write cannot land after it; the rest happens
/// only when the entry there is not newer (`__VERSION_OF_CUR__` is `nil` for an entry without a
/// version). A limited link's counter is raised to the stored clicks, never lowered; a missing
/// one stays missing (the next limited visit seeds it from PostgreSQL). Returns 1 when stored,
/// 0 when a newer state is there, 2 when what refused it is a missing entry (`0|v`).
const PUBLISH: &str = r#"
redis.call('INCR', KEYS[2])
local cur = redis.call('GET', KEYS[1])
if cur then
  local v = __VERSION_OF_CUR__
  if v and tonumber(v) > tonumber(ARGV[3]) then
    if string.sub(cur, 1, 2) == '0|' then return 2 end
    return 0
  end
end
if ARGV[4] == '' then
  redis.call('UNLINK', KEYS[3])
else
  local c = redis.call('GET', KEYS[3])
  if c and tonumber(c) < tonumber(ARGV[4]) then redis.call('SET', KEYS[3], ARGV[4]) end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"#;

/// Replaces an entry with a stale marker (`ARGV[1]`, for `ARGV[2]` seconds) unless a newer
/// state is there. Same version rule as [`PUBLISH`].
const MARK_STALE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur then
  local v = __VERSION_OF_CUR__
  if v and tonumber(v) > tonumber(ARGV[3]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"#;

/// Why Redis refused a publish while it still serves the entry the publish would replace, if
/// that is why: for want of memory (`OOM`), or because the link's slot is being moved to
/// another master (`TRYAGAIN`, or an `ASK` not followed): a script naming a key the move has
/// not reached yet (a link without a limit has no visit counter) is refused until the move
/// ends, minutes for a large partition. A pipeline's error holds its commands' server errors,
/// whose codes `RedisError::code` does not give for a code it does not know.
fn refused_keeping_entry(e: &redis::RedisError) -> Option<&'static str> {
    let errors = e.clone().into_server_errors()?;
    errors.iter().find_map(|(_, e)| match e.code() {
        "OOM" => Some("Redis is out of memory"),
        "TRYAGAIN" | "ASK" => Some("the link's slot is being moved between masters"),
        _ => None,
    })
}

/// Unlinks the entry if it holds a state older than `ARGV[1]` (or one without a version): what
/// Redis out of memory still takes (`GET` and `UNLINK` are not refused then). A late publish of
/// an older state, refused, must not remove a newer state's entry (a deleted link's tombstone),
/// which would let a later older publish in; nor one of the same version, which already is the
/// refused state (where [`PUBLISH`] would rewrite it, this would only delete it). Returns 1
/// when it unlinked.
const UNLINK_OLDER: &str = r#"
local cur = redis.call('GET', KEYS[1])
if not cur then return 0 end
local v = __VERSION_OF_CUR__
if v and tonumber(v) >= tonumber(ARGV[1]) then return 0 end
return redis.call('UNLINK', KEYS[1])
"#;

fn versioned_script(source: &str) -> String {
    source.replace("__VERSION_OF_CUR__", &lua_entry_version("cur"))
}

/// Stores `ARGV[1]` for `ARGV[2]` seconds at `KEYS[1]` if the generation at `KEYS[2]` is still
/// `ARGV[3]` and no current entry is there: an entry in another format (`ARGV[4]` is the
/// current version's prefix), a stale marker included, was a miss for the lookup and is
/// replaced, instead of sending that code to PostgreSQL until its TTL ends. A code without a row
/// (`ARGV[1]` is `0`) that replaces a marker keeps the marker's version, for the link TTL
/// (`ARGV[5]`): the marker's guard against a late publish of a state from before the import
/// must outlast the visit that read PostgreSQL. Both keys share the partition's hash tag
/// (cluster-safe).
const FILL: &str = r#"
if (redis.call('GET', KEYS[2]) or '0') ~= ARGV[3] then return 0 end
local cur = redis.call('GET', KEYS[1])
if cur and (cur == '0' or string.sub(cur, 1, 2) == '0|' or string.sub(cur, 1, string.len(ARGV[4])) == ARGV[4]) then return 0 end
local marked = cur and string.match(cur, '__STALE_MARKER__')
if marked and ARGV[1] == '0' then
  redis.call('SET', KEYS[1], '0|' .. marked, 'EX', ARGV[5])
else
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
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
    /// Script sources, sent with `EVAL` when Redis lost them, and their hashes, for `EVALSHA`.
    publish: Arc<str>,
    publish_sha: Arc<str>,
    mark_stale: Arc<str>,
    unlink_older: Arc<str>,
    mark_stale_sha: Arc<str>,
    /// This process has written the schema key before: what it finds there was written since.
    schema_written: Arc<std::sync::atomic::AtomicBool>,
}

impl LinkCache {
    pub fn new(redis: Arc<RedisHandle>, keys: KeySchema, ttl: u64, negative_ttl: u64) -> Self {
        Self {
            redis,
            keys,
            ttl,
            negative_ttl,
            fill: Arc::new(redis::Script::new(
                &FILL.replace("__STALE_MARKER__", LUA_STALE_MARKER),
            )),
            publish: versioned_script(PUBLISH).into(),
            publish_sha: redis::Script::new(&versioned_script(PUBLISH))
                .get_hash()
                .into(),
            mark_stale: versioned_script(MARK_STALE).into(),
            unlink_older: versioned_script(UNLINK_OLDER).into(),
            mark_stale_sha: redis::Script::new(&versioned_script(MARK_STALE))
                .get_hash()
                .into(),
            schema_written: Arc::default(),
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

    /// A found link's entry and a missing one with a version (a deleted row's tombstone, or a
    /// code an import or the replay found without a row) last the link TTL, so a late publish
    /// of an older state finds them; a code without a version (a miss of a code that never had
    /// a row: scanners) gets the short negative TTL.
    fn ttl_of(&self, state: &LinkState) -> u64 {
        match state.entry {
            CachedLink::Missing if state.version == 0 => self.negative_ttl,
            _ => self.ttl,
        }
    }

    /// Fills after a miss; a no-op if a write came in since the lookup (see the module docs).
    /// Returns whether the entry was stored.
    pub async fn fill(
        &self,
        code: &str,
        state: &LinkState,
        seen: &Generation,
    ) -> Result<bool, RedisDown> {
        let mut conn = self.redis.conn().await?;
        let mut inv = self.fill.key(self.keys.link(code));
        inv.key(self.keys.generation_for(code))
            .arg(state.entry.encode(state.version))
            .arg(self.ttl_of(state))
            .arg(&seen.0)
            .arg(format!("{}|", kurz_common::keys::ENTRY_VERSION))
            .arg(self.ttl);
        inv.invoke_async::<i64>(&mut conn)
            .await
            .map(|stored| stored == 1)
            .map_err(|e| self.redis.failed(e))
    }

    /// After a write: move the generation, store the new state unless Redis holds a newer one,
    /// and tell every edge. A link without a visit limit (or deleted) loses its visit counter,
    /// so a limit set later counts from the clicks stored by then (`kurz_common::visit`); a
    /// limited link's counter is raised to the clicks PostgreSQL holds when it is below: visits
    /// that PostgreSQL allowed while Redis did not answer are counted, never lost from the
    /// limit.
    pub async fn publish(&self, code: &str, state: &LinkState) -> Result<Published, RedisDown> {
        let redis = self.redis.for_waits();
        let conn = redis.conn().await?;
        // By hash: the source is ~700 bytes that Redis would hash again for every create (`EVAL`
        // of it cost 7.67 µs a call in `bench/run create`, where the import's `EVALSHA` of a
        // smaller script cost 1.95). Redis that lost its scripts (a restart, a failover) answers
        // NOSCRIPT, and the publish goes again with the source, which also loads it; a publish
        // is idempotent.
        let published = match self.publish_on(&conn, code, state, false).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.publish_on(&conn, code, state, true).await
            }
            other => other,
        };
        let published = match published {
            Ok(published) => published,
            Err(e) => {
                if let Some(why) = refused_keeping_entry(&e) {
                    self.unlink_refused(code, state.version, why).await;
                }
                return Err(redis.failed(e));
            }
        };
        // With `redis.replica_acks`, a state the replicas did not confirm could be lost to a
        // failover, and the promoted replica would serve the old one for its TTL: the write is
        // not done, and stays queued for the replay (`crate::cache_sync`) until it is.
        published.ok_or_else(|| {
            RedisDown(format!(
                "the state of {code} was not confirmed by the replicas redis.replica_acks asks for"
            ))
        })
    }

    /// Redis past `maxmemory` under `noeviction` refuses the publish (it writes) but still
    /// serves the old entry, to the edges and to this API's lookups, for as long as memory stays
    /// full; a slot being moved refuses the publish's script and serves the entry from either
    /// master (`why` says which). Both take an `UNLINK` of the one key (it frees, and a move
    /// follows it to the key's node): an entry older than `version` goes and the edges drop
    /// their copies, so the code is read from PostgreSQL until the replay (the write stays
    /// queued) can publish its state. Best effort: the replay remains what makes it right.
    async fn unlink_refused(&self, code: &str, version: i64, why: &str) {
        let mut unlink = redis::cmd("EVAL");
        unlink
            .arg(&*self.unlink_older)
            .arg(1)
            .arg(self.keys.link(code))
            .arg(version);
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.keys.invalidations()).arg(code);
        // Once: the replay retries the write every few seconds while it is refused, and an entry
        // already gone needs no second message to every edge.
        let dropped = match self.redis.query::<i64>(&unlink).await {
            Ok(1) => self.redis.query::<()>(&publish).await.map(|()| true),
            Ok(_) => Ok(false),
            Err(e) => Err(e),
        };
        match dropped {
            Ok(false) => {}
            Ok(true) => {
                log::warn!(short_code = code, reason = why; "the link's entry was dropped until its state can be published")
            }
            Err(e) => {
                log::warn!(short_code = code, reason = why, error = e.to_string(); "the link's entry could not be dropped")
            }
        }
    }

    async fn publish_on(
        &self,
        conn: &crate::redis_handle::RedisConn,
        code: &str,
        state: &LinkState,
        by_source: bool,
    ) -> redis::RedisResult<Option<Published>> {
        let limited = matches!(&state.entry, CachedLink::Found(l) if l.max_visits.is_some());
        let mut pipe = redis::pipe();
        if by_source {
            pipe.cmd("EVAL").arg(&*self.publish);
        } else {
            pipe.cmd("EVALSHA").arg(&*self.publish_sha);
        }
        pipe.arg(3)
            .arg(self.keys.link(code))
            .arg(self.keys.generation_for(code))
            .arg(self.keys.visits(code))
            .arg(state.entry.encode(state.version))
            .arg(self.ttl_of(state))
            .arg(state.version)
            .arg(if limited {
                state.stored_visits.to_string()
            } else {
                String::new()
            });
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.keys.invalidations()).arg(code);
        // The replicas' WAIT right after the write, on the write's node (same pipeline).
        let waits = self
            .redis
            .replica_wait()
            .map(|wait| pipe.add_command(wait))
            .is_some();
        let mut conn = conn.clone();
        let confirmed = |replies: &[redis::Value]| -> redis::RedisResult<Option<Published>> {
            let stored = redis::from_redis_value::<i64>(replies[0].clone())?;
            let replicated = !waits || self.redis.replicated(&replies[1]);
            Ok(replicated.then(|| Published::from_script(stored)))
        };
        if self.redis.is_cluster() {
            // The cluster client routes PUBLISH by its channel as if it were a key: another
            // slot than the link's, so it cannot share the pipeline. After the write, as here.
            let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
            publish.query_async::<i64>(&mut conn).await?;
            return confirmed(&replies);
        }
        pipe.add_command(publish).ignore();
        let replies: Vec<redis::Value> = pipe.query_async(&mut conn).await?;
        confirmed(&replies)
    }

    /// Which Redis server process holds each partition (its `run_id`): a restart or a failover
    /// changes it. Read through a script on a key of the partition, so on a cluster each
    /// partition's answer comes from the node that holds it; on one Redis, one read stands for
    /// all.
    pub async fn servers(&self) -> Result<Vec<String>, RedisDown> {
        const RUN_ID: &str = "return string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')";
        let partitions = if self.redis.is_cluster() {
            self.keys.partitions()
        } else {
            1
        };
        let reads: Vec<_> = (0..partitions)
            .map(|p| {
                let mut read = redis::cmd("EVAL");
                read.arg(RUN_ID).arg(1).arg(self.keys.generation(p));
                (p, read)
            })
            .collect();
        self.redis
            .query_parts(&reads)
            .await?
            .into_iter()
            .map(|v| {
                redis::from_redis_value::<String>(v)
                    .map_err(|e| RedisDown(format!("unexpected run_id reply: {e}")))
            })
            .collect()
    }

    /// Publishes the key schema's fingerprint, which edges compare with their own before they
    /// answer redirects from Redis (see `kurz_common::keys::KeySchema::fingerprint`).
    pub async fn publish_schema(&self) -> Result<(), RedisDown> {
        let fingerprint = self.keys.fingerprint();
        // The single key is for edges from before the set. Another fingerprint found there is
        // an API from before the set (it writes only that key), and goes into the set. Written
        // since this process last wrote its own, that API runs: published now. Found by the
        // first write, it may be what a stopped release left: published long enough ago to
        // age out after two of its publishes, so one still running is seen again first (and an
        // edge opens not in between). Two commands, as the keys may be on two nodes of a
        // cluster; the set is written whatever became of the key.
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.keys.schema()).arg(&fingerprint).arg("GET");
        let before: Result<Option<String>, RedisDown> = self.redis.query(&cmd).await;
        let wrote_before = self
            .schema_written
            .swap(true, std::sync::atomic::Ordering::AcqRel);
        let other = before
            .as_ref()
            .ok()
            .and_then(Option::as_deref)
            .filter(|b| *b != fingerprint)
            .unwrap_or_default();
        let aged = if wrote_before {
            0
        } else {
            kurz_common::keys::SCHEMA_ALIVE_MS - 2 * kurz_common::keys::SCHEMA_EVERY_MS
        };
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(PUBLISH_SCHEMA)
            .arg(1)
            .arg(self.keys.schemas())
            .arg(&fingerprint)
            .arg(kurz_common::keys::SCHEMA_ALIVE_MS)
            .arg(other)
            .arg(aged);
        self.redis.query::<()>(&cmd).await?;
        before.map(|_| ())
    }

    /// After a bulk import: move every partition's generation (fills in flight from before the
    /// import's commit then store nothing), put a stale marker with `version` (a number taken
    /// after the import committed) in place of the entries of `codes` and drop their visit
    /// counters, and tell every edge to drop its whole near-cache (one message instead of one
    /// per row). The marker reads as a miss, so the next visit reads PostgreSQL and fills, and
    /// it turns away a late publish of a state from before the import. An imported row may have
    /// changed or dropped its visit limit: a limited link's next visit seeds its counter again
    /// from the clicks stored, as after any write (see `publish`).
    pub async fn forget_many(&self, codes: &[String], version: i64) -> Result<(), RedisDown> {
        let generations: Vec<_> = (0..self.keys.partitions())
            .map(|p| {
                (
                    p,
                    redis::cmd("INCR").arg(self.keys.generation(p)).to_owned(),
                )
            })
            .collect();
        self.redis.query_parts(&generations).await?;
        let marker = stale_marker(version);
        // By hash, not by source: an import may hold a million codes. Redis that lost its
        // scripts (a restart, a failover) answers NOSCRIPT, and the chunk goes again with the
        // source, which also loads it; marking is idempotent.
        let marking = |code: &String, by_source: bool| {
            let p = self.keys.partition(code);
            let mut mark = redis::cmd(if by_source { "EVAL" } else { "EVALSHA" });
            if by_source {
                mark.arg(&*self.mark_stale);
            } else {
                mark.arg(&*self.mark_stale_sha);
            }
            mark.arg(1)
                .arg(self.keys.link(code))
                .arg(&marker)
                .arg(self.ttl)
                .arg(version);
            (p, mark)
        };
        let conn = self.redis.conn().await?;
        for chunk in codes.chunks(500) {
            let by_hash: Vec<_> = chunk.iter().map(|c| marking(c, false)).collect();
            match self.redis.pipeline_parts(&conn, &by_hash).await {
                Ok(_) => {}
                Err(e)
                    if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    let by_source: Vec<_> = chunk.iter().map(|c| marking(c, true)).collect();
                    self.redis
                        .pipeline_parts(&conn, &by_source)
                        .await
                        .map_err(|e| self.redis.failed(e))?;
                }
                Err(e) => return Err(self.redis.failed(e)),
            }
            // The chunk's visit counters right after its marks (a counter seeded in between
            // would miss the clicks still in the stream): one UNLINK per partition, since on a
            // cluster a command's keys share a slot.
            let mut by_partition: Vec<Vec<String>> =
                vec![Vec::new(); usize::from(self.keys.partitions())];
            for code in chunk {
                by_partition[usize::from(self.keys.partition(code))].push(self.keys.visits(code));
            }
            let unlinks: Vec<_> = by_partition
                .iter()
                .enumerate()
                .filter(|(_, keys)| !keys.is_empty())
                .map(|(p, keys)| (p as u16, redis::cmd("UNLINK").arg(keys).to_owned()))
                .collect();
            self.redis
                .pipeline_parts(&conn, &unlinks)
                .await
                .map_err(|e| self.redis.failed(e))?;
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

/// What a publish did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    Stored,
    /// Redis holds a state with a higher number: a newer one, or an import's stale marker.
    Older,
    /// Redis holds a missing entry with a higher number: the replay published the code as
    /// having no row, with a number taken after the link's own (`crate::cache_sync`).
    OlderThanMissing,
}

impl Published {
    fn from_script(code: i64) -> Self {
        match code {
            1 => Published::Stored,
            2 => Published::OlderThanMissing,
            _ => Published::Older,
        }
    }
}

/// A link's state as PostgreSQL holds it, ready for Redis.
#[derive(Debug, Clone)]
pub struct LinkState {
    pub entry: CachedLink,
    /// `urls.version`; for a code without a row, 0 on a fill, or on a publish a number taken
    /// after the read that found no row (`db::urls::next_version`), so that it is above every
    /// state the code had.
    pub version: i64,
    /// Clicks PostgreSQL holds for the link.
    pub stored_visits: i64,
}

impl LinkState {
    /// A code without a row.
    pub fn absent(version: i64) -> Self {
        Self {
            entry: CachedLink::Missing,
            version,
            stored_visits: 0,
        }
    }
}
