//! The in-process near-cache of links: bounded, short TTL, dropped on invalidation.
//!
//! A fill races with invalidations: a request may read the old entry from Redis just before the
//! API writes the new one and publishes. So every invalidation bumps an epoch, a request notes
//! the epoch before it asks Redis, and its fill is kept only if no invalidation came in between.
//! The epoch is kept per shard (of [`SHARDS`]), not for the whole cache: a write to one link
//! then drops only the fills in flight for codes of its shard, so the hit rate does not fall as
//! write traffic grows.

use kurz_common::keys::CachedLink;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shards of the map and of the invalidation epoch.
pub const SHARDS: usize = 64;

struct Shard {
    map: Mutex<HashMap<String, (CachedLink, Instant)>>,
    /// Bumped by every invalidation of a code of this shard (and by [`NearCache::clear`]).
    epoch: AtomicU64,
}

pub struct NearCache {
    shards: Vec<Shard>,
    per_shard: usize,
    ttl: Duration,
    /// Only while subscribed to invalidations: without them an entry could outlive a change.
    enabled: AtomicBool,
}

impl NearCache {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    map: Mutex::new(HashMap::new()),
                    epoch: AtomicU64::new(0),
                })
                .collect(),
            per_shard: (capacity / SHARDS).max(1),
            ttl,
            enabled: AtomicBool::new(false),
        }
    }

    fn shard(&self, code: &str) -> &Shard {
        let h = code
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        &self.shards[h as usize % SHARDS]
    }

    /// Turns the cache on (subscribed) or off (emptied; lookups miss, fills are dropped).
    pub fn set_enabled(&self, on: bool) {
        crate::metrics::METRICS
            .near_cache_enabled
            .set(i64::from(on));
        if !on {
            self.enabled.store(false, Ordering::Release);
            self.clear();
        } else {
            self.clear();
            self.enabled.store(true, Ordering::Release);
        }
    }

    pub fn get(&self, code: &str) -> Option<CachedLink> {
        self.get_at(code, Instant::now())
    }

    /// [`Self::get`] at a given time (tests move the clock instead of sleeping).
    pub fn get_at(&self, code: &str, now: Instant) -> Option<CachedLink> {
        if !self.enabled.load(Ordering::Acquire) {
            return None;
        }
        let mut map = self.shard(code).map.lock().expect("near cache lock");
        match map.get(code) {
            Some((entry, expires)) if *expires > now => Some(entry.clone()),
            Some(_) => {
                map.remove(code);
                None
            }
            None => None,
        }
    }

    /// The epoch of `code`'s shard, to pass to [`Self::fill`].
    pub fn epoch(&self, code: &str) -> u64 {
        self.shard(code).epoch.load(Ordering::Acquire)
    }

    /// Stores `entry` unless an invalidation of a code of its shard arrived since `epoch` was
    /// read.
    pub fn fill(&self, code: &str, entry: CachedLink, epoch: u64) {
        self.fill_at(code, entry, epoch, Instant::now());
    }

    /// [`Self::fill`] at a given time.
    pub fn fill_at(&self, code: &str, entry: CachedLink, epoch: u64, now: Instant) {
        let shard = self.shard(code);
        let mut map = shard.map.lock().expect("near cache lock");
        if !self.enabled.load(Ordering::Acquire) || shard.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if map.len() >= self.per_shard && !map.contains_key(code) {
            map.retain(|_, (_, exp)| *exp > now);
            if map.len() >= self.per_shard {
                map.clear();
            }
        }
        map.insert(code.to_owned(), (entry, now + self.ttl));
    }

    /// Drops one code (an invalidation message).
    pub fn invalidate(&self, code: &str) {
        let shard = self.shard(code);
        let mut map = shard.map.lock().expect("near cache lock");
        shard.epoch.fetch_add(1, Ordering::AcqRel);
        map.remove(code);
    }

    /// Drops everything (bulk import, or the invalidation channel was lost and messages may
    /// have been missed).
    pub fn clear(&self) {
        for shard in &self.shards {
            let mut map = shard.map.lock().expect("near cache lock");
            shard.epoch.fetch_add(1, Ordering::AcqRel);
            map.clear();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.map.lock().expect("near cache lock").len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_invalidate() {
        let c = NearCache::new(100, Duration::from_millis(50));
        c.set_enabled(true);
        let t0 = Instant::now();
        c.fill_at("abc", CachedLink::Missing, c.epoch("abc"), t0);
        assert_eq!(c.get_at("abc", t0), Some(CachedLink::Missing));
        c.invalidate("abc");
        assert_eq!(c.get_at("abc", t0), None);
        c.fill_at("abc", CachedLink::Missing, c.epoch("abc"), t0);
        let just_before = t0 + Duration::from_millis(49);
        assert_eq!(c.get_at("abc", just_before), Some(CachedLink::Missing));
        assert_eq!(c.get_at("abc", t0 + Duration::from_millis(50)), None);
    }

    /// Two codes in different shards, and one sharing `abc`'s shard.
    fn neighbours(c: &NearCache) -> (String, String) {
        let same = |x: &str| std::ptr::eq(c.shard(x), c.shard("abc"));
        let other = (0..).map(|i| format!("o{i}")).find(|x| !same(x)).unwrap();
        let twin = (0..).map(|i| format!("t{i}")).find(|x| same(x)).unwrap();
        (other, twin)
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_of_its_shard_is_dropped() {
        let c = NearCache::new(100, Duration::from_secs(5));
        c.set_enabled(true);
        let (_, twin) = neighbours(&c);
        let before = c.epoch("abc");
        c.invalidate(&twin);
        c.fill("abc", CachedLink::Missing, before);
        assert_eq!(c.get("abc"), None);
        let before = c.epoch("abc");
        c.clear();
        c.fill("abc", CachedLink::Missing, before);
        assert_eq!(c.get("abc"), None, "clear drops fills in flight everywhere");
    }

    #[test]
    fn writes_to_other_shards_do_not_drop_a_fill() {
        let c = NearCache::new(100, Duration::from_secs(5));
        c.set_enabled(true);
        let (other, _) = neighbours(&c);
        let before = c.epoch("abc");
        for _ in 0..100 {
            c.invalidate(&other);
        }
        c.fill("abc", CachedLink::Missing, before);
        assert_eq!(c.get("abc"), Some(CachedLink::Missing));
    }

    #[test]
    fn a_disabled_cache_neither_serves_nor_fills() {
        let c = NearCache::new(100, Duration::from_secs(5));
        c.fill("abc", CachedLink::Missing, c.epoch("abc"));
        assert_eq!(c.get("abc"), None);
        c.set_enabled(true);
        c.fill("abc", CachedLink::Missing, c.epoch("abc"));
        c.set_enabled(false);
        assert_eq!(c.get("abc"), None);
    }

    #[test]
    fn size_is_bounded() {
        let c = NearCache::new(64, Duration::from_secs(5));
        c.set_enabled(true);
        for i in 0..10_000 {
            let code = format!("code{i}");
            c.fill(&code, CachedLink::Missing, c.epoch(&code));
        }
        assert!(c.len() <= 64, "{}", c.len());
    }
}
