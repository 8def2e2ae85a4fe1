//! Per-client token buckets for each route class, in bounded memory.
//!
//! A client is its address, or for IPv6 its `/ipv6_prefix_len` network (64 by default): one
//! host holds a whole /64, so limiting single IPv6 addresses would limit nobody. Each class
//! keeps its own sharded maps, each shard at most `max_tracked_clients / (4 * SHARDS)` buckets.
//! A full shard first forgets buckets that have refilled (they would start full anyway, so
//! nothing is lost), then the least recently used eighth. A flood of fresh addresses therefore
//! evicts only the flood's own idle buckets in its class: a client that keeps sending keeps
//! its bucket (and its debt), and the other classes are untouched.

use crate::config::{Limit, RateLimitsSection};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Instant;

const SHARDS: usize = 16;
/// Route classes, each with its own limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Redirect,
    Write,
    Auth,
    Read,
}

impl Class {
    pub const ALL: [Class; 4] = [Class::Redirect, Class::Write, Class::Auth, Class::Read];

    /// Position in [`Class::ALL`].
    pub fn index(self) -> usize {
        match self {
            Class::Redirect => 0,
            Class::Write => 1,
            Class::Auth => 2,
            Class::Read => 3,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Redirect => "redirect",
            Class::Write => "write",
            Class::Auth => "auth",
            Class::Read => "read",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// What the limiter decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// `limit` is the burst, `remaining` whole tokens left.
    Allow { limit: u64, remaining: u64 },
    /// Come back in `retry_after` seconds (rounded up).
    Deny { limit: u64, retry_after: u64 },
    /// The class has no limit.
    Unlimited,
}

pub use kurz_common::proxies::client_key;

type Shard = Mutex<HashMap<IpAddr, Bucket>>;

pub struct RateLimiter {
    limits: RwLock<[Limit; 4]>,
    /// `classes[class.index()]`: that class's shards.
    classes: [Vec<Shard>; 4],
    per_shard: usize,
    ipv6_prefix_len: AtomicU8,
}

impl RateLimiter {
    pub fn new(cfg: &RateLimitsSection) -> Self {
        let shards = || (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect();
        Self {
            limits: RwLock::new([cfg.redirect, cfg.write, cfg.auth, cfg.read]),
            classes: [shards(), shards(), shards(), shards()],
            per_shard: (cfg.max_tracked_clients / (4 * SHARDS)).max(16),
            ipv6_prefix_len: AtomicU8::new(cfg.ipv6_prefix_len),
        }
    }

    /// New limits (SIGHUP); buckets keep their tokens. A new IPv6 prefix applies to buckets
    /// made from then on.
    pub fn set_limits(&self, cfg: &RateLimitsSection) {
        *self.limits.write().expect("limits lock") = [cfg.redirect, cfg.write, cfg.auth, cfg.read];
        self.ipv6_prefix_len
            .store(cfg.ipv6_prefix_len, Ordering::Relaxed);
    }

    /// Bits of an IPv6 address that name a client.
    pub fn ipv6_prefix_len(&self) -> u8 {
        self.ipv6_prefix_len.load(Ordering::Relaxed)
    }

    /// Buckets currently tracked in `class`.
    pub fn tracked(&self, class: Class) -> usize {
        self.classes[class.index()]
            .iter()
            .map(|s| s.lock().expect("shard lock").len())
            .sum()
    }

    pub fn check(&self, class: Class, ip: IpAddr) -> Decision {
        self.check_at(class, ip, Instant::now())
    }

    fn check_at(&self, class: Class, ip: IpAddr, now: Instant) -> Decision {
        let limit = self.limits.read().expect("limits lock")[class.index()];
        if limit.rate <= 0.0 {
            return Decision::Unlimited;
        }
        let key = client_key(ip, self.ipv6_prefix_len());
        let shard = &self.classes[class.index()][shard_of(key)];
        let mut map = shard.lock().expect("shard lock");
        if map.len() >= self.per_shard && !map.contains_key(&key) {
            evict(&mut map, limit, now);
        }
        let bucket = map.entry(key).or_insert(Bucket {
            tokens: limit.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * limit.rate).min(limit.burst);
        bucket.last = now;
        let burst = limit.burst as u64;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Decision::Allow {
                limit: burst,
                remaining: bucket.tokens as u64,
            }
        } else {
            let wait = (1.0 - bucket.tokens) / limit.rate;
            Decision::Deny {
                limit: burst,
                retry_after: wait.ceil().max(1.0) as u64,
            }
        }
    }
}

/// Makes room in a full shard: buckets that refilled go first (lossless), then, if the shard
/// is still over seven eighths full, the least recently used eighth. Evicting by eighths keeps
/// the cost of a flood amortised O(1) per new client.
fn evict(map: &mut HashMap<IpAddr, Bucket>, limit: Limit, now: Instant) {
    let full_after = limit.burst / limit.rate;
    let len = map.len();
    map.retain(|_, b| now.saturating_duration_since(b.last).as_secs_f64() < full_after);
    if map.len() * 8 < len * 7 {
        return;
    }
    let mut seen: Vec<Instant> = map.values().map(|b| b.last).collect();
    let nth = seen.len() / 8;
    let (_, cutoff, _) = seen.select_nth_unstable(nth);
    let cutoff = *cutoff;
    map.retain(|_, b| b.last > cutoff);
}

fn shard_of(key: IpAddr) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limiter(rate: f64, burst: f64, max: usize) -> RateLimiter {
        let l = Limit { rate, burst };
        RateLimiter::new(&RateLimitsSection {
            max_tracked_clients: max,
            redirect: l,
            write: l,
            auth: l,
            read: Limit {
                rate: 0.0,
                burst: 1.0,
            },
            ..RateLimitsSection::default()
        })
    }

    fn allowed(d: Decision) -> bool {
        matches!(d, Decision::Allow { .. })
    }

    #[test]
    fn allows_the_burst_then_the_rate() {
        let rl = limiter(10.0, 5.0, 1024);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(allowed(rl.check_at(Class::Redirect, ip, t0)));
        }
        assert!(matches!(
            rl.check_at(Class::Redirect, ip, t0),
            Decision::Deny { retry_after: 1, .. }
        ));
        // 100 ms at 10/s refills one token.
        assert!(allowed(rl.check_at(
            Class::Redirect,
            ip,
            t0 + Duration::from_millis(100)
        )));
        // Another client and another class are unaffected.
        assert!(allowed(rl.check_at(
            Class::Redirect,
            "192.0.2.2".parse().unwrap(),
            t0
        )));
        assert!(allowed(rl.check_at(Class::Write, ip, t0)));
        assert_eq!(rl.check_at(Class::Read, ip, t0), Decision::Unlimited);
    }

    #[test]
    fn ipv6_clients_are_limited_by_their_64() {
        let rl = limiter(0.001, 2.0, 1024);
        let t0 = Instant::now();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff:1:2:3".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(allowed(rl.check_at(Class::Write, a, t0)));
        assert!(allowed(rl.check_at(Class::Write, b, t0)));
        // Same /64: the bucket is shared, so a third address of it is denied.
        assert!(!allowed(rl.check_at(
            Class::Write,
            "2001:db8:1:2::99".parse().unwrap(),
            t0
        )));
        assert!(allowed(rl.check_at(Class::Write, other, t0)));
        assert_eq!(
            client_key("::ffff:192.0.2.7".parse().unwrap(), 64),
            "192.0.2.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_key(a, 48), "2001:db8:1::".parse::<IpAddr>().unwrap());
        assert_eq!(client_key(a, 128), a);
    }

    #[test]
    fn a_flood_of_fresh_addresses_neither_grows_memory_nor_frees_an_active_client() {
        // No refill within the test's simulated 0.2 s: a denied client stays denied unless
        // its bucket is forgotten.
        let rl = limiter(0.001, 3.0, 4096);
        let t0 = Instant::now();
        let abuser: IpAddr = "198.51.100.7".parse().unwrap();
        let writer: IpAddr = "198.51.100.8".parse().unwrap();
        for _ in 0..3 {
            assert!(allowed(rl.check_at(Class::Redirect, abuser, t0)));
        }
        assert!(allowed(rl.check_at(Class::Write, writer, t0)));
        for i in 0..200_000u32 {
            let now = t0 + Duration::from_micros(u64::from(i) + 1);
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            rl.check_at(Class::Redirect, ip, now);
            if i % 64 == 0 {
                assert!(
                    !allowed(rl.check_at(Class::Redirect, abuser, now)),
                    "the active client was handed a fresh burst after {i} fresh addresses"
                );
            }
        }
        let bound = 4096 / 4 + SHARDS;
        assert!(
            rl.tracked(Class::Redirect) <= bound,
            "{}",
            rl.tracked(Class::Redirect)
        );
        // The write class's buckets were not touched by the redirect flood.
        assert_eq!(rl.tracked(Class::Write), 1);
        let later = t0 + Duration::from_millis(300);
        assert!(allowed(rl.check_at(Class::Write, writer, later)));
        assert!(allowed(rl.check_at(Class::Write, writer, later)));
        assert!(!allowed(rl.check_at(Class::Write, writer, later)));
    }
}
