//! Failed-login back-off, per account identifier and per client address, in Redis.
//!
//! Counters are keyed by the identifier as typed (lower-cased), whether or not such an account
//! exists, so the back-off itself reveals nothing. Past `free_failures` in the window, each
//! further failure locks the key for `base * 2^(n - free - 1)` seconds, capped.

use crate::config::LockoutConfig;
use crate::redis_handle::{RedisDown, RedisHandle};
use kurz_common::keys::KeySchema;
use std::net::IpAddr;
use std::sync::Arc;

pub struct Lockout {
    redis: Arc<RedisHandle>,
    keys: KeySchema,
    cfg: LockoutConfig,
}

impl Lockout {
    pub fn new(redis: Arc<RedisHandle>, keys: KeySchema, cfg: LockoutConfig) -> Self {
        Self { redis, keys, cfg }
    }

    /// Seconds until `who` / `ip` may try again, if locked.
    pub async fn locked_for(&self, who: &str, ip: IpAddr) -> Result<Option<u64>, RedisDown> {
        let mut pipe = redis::pipe();
        pipe.cmd("TTL").arg(self.keys.login("lock-acct", who));
        pipe.cmd("TTL")
            .arg(self.keys.login("lock-ip", &ip.to_string()));
        let (a, i): (i64, i64) = self.redis.query(&pipe).await?;
        let wait = a.max(i);
        Ok((wait > 0).then_some(wait as u64))
    }

    fn delay(&self, failures: u32, free: u32) -> Option<u64> {
        let over = failures.checked_sub(free)?.checked_sub(1)?;
        let factor = 1u64.checked_shl(over.min(30)).unwrap_or(u64::MAX);
        Some(
            self.cfg
                .base_delay_seconds
                .saturating_mul(factor)
                .min(self.cfg.max_delay_seconds),
        )
    }

    /// Counts a failure; returns the back-off now in force, if any.
    pub async fn failed(&self, who: &str, ip: IpAddr) -> Result<Option<u64>, RedisDown> {
        let ip = ip.to_string();
        let (fail_acct, fail_ip) = (
            self.keys.login("fail-acct", who),
            self.keys.login("fail-ip", &ip),
        );
        let mut pipe = redis::pipe();
        pipe.cmd("INCR").arg(&fail_acct);
        pipe.cmd("EXPIRE")
            .arg(&fail_acct)
            .arg(self.cfg.window_seconds)
            .ignore();
        pipe.cmd("INCR").arg(&fail_ip);
        pipe.cmd("EXPIRE")
            .arg(&fail_ip)
            .arg(self.cfg.window_seconds)
            .ignore();
        let (acct, by_ip): (u32, u32) = self.redis.query(&pipe).await?;
        let mut locks = redis::pipe();
        let mut wait = None;
        if let Some(d) = self.delay(acct, self.cfg.free_failures) {
            locks
                .cmd("SET")
                .arg(self.keys.login("lock-acct", who))
                .arg(1)
                .arg("EX")
                .arg(d)
                .ignore();
            wait = Some(d);
        }
        if let Some(d) = self.delay(by_ip, self.cfg.free_failures_per_ip) {
            locks
                .cmd("SET")
                .arg(self.keys.login("lock-ip", &ip))
                .arg(1)
                .arg("EX")
                .arg(d)
                .ignore();
            wait = Some(wait.map_or(d, |w: u64| w.max(d)));
        }
        if wait.is_some() {
            self.redis.query::<()>(&locks).await?;
        }
        Ok(wait)
    }

    /// A successful login clears the account's failures (not the address's: one good password
    /// must not reset a spray across many accounts).
    pub async fn succeeded(&self, who: &str) -> Result<(), RedisDown> {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(self.keys.login("fail-acct", who))
            .ignore();
        pipe.cmd("DEL")
            .arg(self.keys.login("lock-acct", who))
            .ignore();
        self.redis.query::<()>(&pipe).await
    }
}
