//! Per-client token buckets for each route class, in bounded memory.
//!
//! Buckets live in sharded maps keyed by (class, client address). Each shard holds at most
//! `max_tracked_clients / SHARDS` buckets; a full shard first forgets buckets that have refilled
//! (idle clients, which would start full anyway), and if the flood is made of fresh addresses,
//! forgets the whole shard. Forgetting a bucket only ever hands a client a fresh burst, so a
//! flood from millions of addresses costs bounded memory and never blocks a legitimate client.

use crate::config::{Limit, RateLimitsSection};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, RwLock};
use std::time::Instant;

const SHARDS: usize = 64;

/// Route classes, each with its own limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Redirect,
    Write,
    Auth,
    Read,
}

impl Class {
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

pub struct RateLimiter {
    limits: RwLock<[Limit; 4]>,
    shards: Vec<Mutex<HashMap<(Class, IpAddr), Bucket>>>,
    per_shard: usize,
}

fn index(class: Class) -> usize {
    match class {
        Class::Redirect => 0,
        Class::Write => 1,
        Class::Auth => 2,
        Class::Read => 3,
    }
}

impl RateLimiter {
    pub fn new(cfg: &RateLimitsSection) -> Self {
        Self {
            limits: RwLock::new([cfg.redirect, cfg.write, cfg.auth, cfg.read]),
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: (cfg.max_tracked_clients / SHARDS).max(16),
        }
    }

    /// New limits (SIGHUP); buckets keep their tokens.
    pub fn set_limits(&self, cfg: &RateLimitsSection) {
        *self.limits.write().expect("limits lock") = [cfg.redirect, cfg.write, cfg.auth, cfg.read];
    }

    /// Buckets currently tracked (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().expect("shard lock").len())
            .sum()
    }

    pub fn check(&self, class: Class, ip: IpAddr) -> Decision {
        self.check_at(class, ip, Instant::now())
    }

    fn check_at(&self, class: Class, ip: IpAddr, now: Instant) -> Decision {
        let limit = self.limits.read().expect("limits lock")[index(class)];
        if limit.rate <= 0.0 {
            return Decision::Unlimited;
        }
        let shard = &self.shards[shard_of(class, ip)];
        let mut map = shard.lock().expect("shard lock");
        if map.len() >= self.per_shard && !map.contains_key(&(class, ip)) {
            let full_after = limit.burst / limit.rate;
            map.retain(|_, b| now.duration_since(b.last).as_secs_f64() < full_after);
            if map.len() >= self.per_shard {
                map.clear();
            }
        }
        let bucket = map.entry((class, ip)).or_insert(Bucket {
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

fn shard_of(class: Class, ip: IpAddr) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (class, ip).hash(&mut h);
    (h.finish() as usize) % SHARDS
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limiter(rate: f64, burst: f64, max: usize) -> RateLimiter {
        let l = Limit { rate, burst };
        RateLimiter::new(&RateLimitsSection {
            trusted_proxies: vec![],
            cloudflare_proxies: vec![],
            max_tracked_clients: max,
            redirect: l,
            write: l,
            auth: l,
            read: Limit {
                rate: 0.0,
                burst: 1.0,
            },
        })
    }

    #[test]
    fn allows_the_burst_then_the_rate() {
        let rl = limiter(10.0, 5.0, 1024);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..5 {
            assert!(matches!(
                rl.check_at(Class::Redirect, ip, t0),
                Decision::Allow { .. }
            ));
        }
        assert!(matches!(
            rl.check_at(Class::Redirect, ip, t0),
            Decision::Deny { retry_after: 1, .. }
        ));
        // 100 ms at 10/s refills one token.
        assert!(matches!(
            rl.check_at(Class::Redirect, ip, t0 + Duration::from_millis(100)),
            Decision::Allow { .. }
        ));
        // Another client and another class are unaffected.
        assert!(matches!(
            rl.check_at(Class::Redirect, "192.0.2.2".parse().unwrap(), t0),
            Decision::Allow { .. }
        ));
        assert!(matches!(
            rl.check_at(Class::Write, ip, t0),
            Decision::Allow { .. }
        ));
        assert_eq!(rl.check_at(Class::Read, ip, t0), Decision::Unlimited);
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_addresses() {
        let rl = limiter(1.0, 1.0, 1024);
        let t0 = Instant::now();
        for i in 0..200_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(i));
            rl.check_at(Class::Redirect, ip, t0);
        }
        assert!(rl.tracked() <= 1024 + SHARDS * 16, "{}", rl.tracked());
    }
}
