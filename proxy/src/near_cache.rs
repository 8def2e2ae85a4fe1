//! The in-process near-cache of links: bounded, short TTL, dropped on invalidation.
//!
//! A fill races with invalidations: a request may read the old entry from Redis just before the
//! API writes the new one and publishes. So every invalidation bumps an epoch, a request notes
//! the epoch before it asks Redis, and its fill is kept only if no invalidation came in between.

use kurz_common::keys::CachedLink;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 32;

pub struct NearCache {
    shards: Vec<Mutex<HashMap<String, (CachedLink, Instant)>>>,
    per_shard: usize,
    ttl: Duration,
    epoch: AtomicU64,
    /// Only while subscribed to invalidations: without them an entry could outlive a change.
    enabled: AtomicBool,
}

impl NearCache {
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (capacity / SHARDS).max(1),
            ttl,
            epoch: AtomicU64::new(0),
            enabled: AtomicBool::new(false),
        }
    }

    fn shard(&self, code: &str) -> &Mutex<HashMap<String, (CachedLink, Instant)>> {
        let h = code
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        &self.shards[h as usize % SHARDS]
    }

    /// Turns the cache on (subscribed) or off (emptied; lookups miss, fills are dropped).
    pub fn set_enabled(&self, on: bool) {
        if !on {
            self.enabled.store(false, Ordering::Release);
            self.clear();
        } else {
            self.clear();
            self.enabled.store(true, Ordering::Release);
        }
    }

    pub fn get(&self, code: &str) -> Option<CachedLink> {
        if !self.enabled.load(Ordering::Acquire) {
            return None;
        }
        let mut map = self.shard(code).lock().expect("near cache lock");
        match map.get(code) {
            Some((entry, expires)) if *expires > Instant::now() => Some(entry.clone()),
            Some(_) => {
                map.remove(code);
                None
            }
            None => None,
        }
    }

    /// The epoch to pass to [`Self::fill`].
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Stores `entry` unless an invalidation arrived since `epoch` was read.
    pub fn fill(&self, code: &str, entry: CachedLink, epoch: u64) {
        let mut map = self.shard(code).lock().expect("near cache lock");
        if !self.enabled.load(Ordering::Acquire) || self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if map.len() >= self.per_shard && !map.contains_key(code) {
            let now = Instant::now();
            map.retain(|_, (_, exp)| *exp > now);
            if map.len() >= self.per_shard {
                map.clear();
            }
        }
        map.insert(code.to_owned(), (entry, Instant::now() + self.ttl));
    }

    /// Drops one code (an invalidation message).
    pub fn invalidate(&self, code: &str) {
        let mut map = self.shard(code).lock().expect("near cache lock");
        self.epoch.fetch_add(1, Ordering::AcqRel);
        map.remove(code);
    }

    /// Drops everything (bulk import, or the invalidation channel was lost and messages may
    /// have been missed).
    pub fn clear(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for shard in &self.shards {
            shard.lock().expect("near cache lock").clear();
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("near cache lock").len())
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
        c.fill("abc", CachedLink::Missing, c.epoch());
        assert_eq!(c.get("abc"), Some(CachedLink::Missing));
        c.invalidate("abc");
        assert_eq!(c.get("abc"), None);
        c.fill("abc", CachedLink::Missing, c.epoch());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(c.get("abc"), None);
    }

    #[test]
    fn a_fill_that_raced_an_invalidation_is_dropped() {
        let c = NearCache::new(100, Duration::from_secs(5));
        c.set_enabled(true);
        let before = c.epoch();
        c.invalidate("other");
        c.fill("abc", CachedLink::Missing, before);
        assert_eq!(c.get("abc"), None);
    }

    #[test]
    fn a_disabled_cache_neither_serves_nor_fills() {
        let c = NearCache::new(100, Duration::from_secs(5));
        c.fill("abc", CachedLink::Missing, c.epoch());
        assert_eq!(c.get("abc"), None);
        c.set_enabled(true);
        c.fill("abc", CachedLink::Missing, c.epoch());
        c.set_enabled(false);
        assert_eq!(c.get("abc"), None);
    }

    #[test]
    fn size_is_bounded() {
        let c = NearCache::new(64, Duration::from_secs(5));
        c.set_enabled(true);
        for i in 0..10_000 {
            c.fill(&format!("code{i}"), CachedLink::Missing, c.epoch());
        }
        assert!(c.len() <= 64, "{}", c.len());
    }
}
