//! Failed-login back-off in Redis: per account and client address, per account, and per
//! address.
//!
//! Every attempt is admitted (or refused) by one Redis script *before* the password is checked:
//! it refuses while a lock holds, and otherwise counts the attempt as a failure up front,
//! locking once a count passes its free failures. A successful login then clears the account's
//! counts and takes back what it added to the address's: its count and a lock its own count
//! set, so that people behind one address never lock each other out by logging in. Only a
//! failure restarts a count's window ([`Lockout::failed`]). Counting before checking is what makes the limit hold under concurrency: thirty
//! simultaneous guesses cannot all pass a check that none of them has counted yet, so at most
//! `free_failures + 1` passwords from one address are checked before its lock engages, then
//! one per lock period.
//!
//! The lock that a few guesses bring on is per account *and address*: a guesser locks only
//! their own address out of an account, not its owner (anyone could otherwise keep any account
//! or protected link locked with one guess per lock period). The account's count over all
//! addresses locks everyone out only past `free_failures_all_addresses`, against guessing
//! spread over many addresses; an address's count over all accounts (`free_failures_per_ip`)
//! stops one address spraying many accounts.
//!
//! Counters are per account (the user id) when the identifier names one, so locking an account
//! by its email also locks it by its username; for an identifier that names nobody they are
//! per identifier, so the back-off tells no more than whether an email and a username belong
//! to one account (docs/security.md).

use crate::config::LockoutConfig;
use crate::redis_handle::{RedisDown, RedisHandle};
use kurz_common::keys::KeySchema;
use std::net::IpAddr;
use std::sync::Arc;

/// `KEYS`: failures and lock of the account at this address, of the account, of the address.
/// `ARGV`: window, free failures for each of the three in that order, base delay, max delay,
/// the attempt's token (what a lock it sets holds). Returns 0 when the attempt may go on, else
/// the seconds to wait.
///
/// A count gets its window when it is made (or has none); the attempt is no failure yet, and a
/// good password must not keep an address's count alive.
const ADMIT: &str = r#"
local wait = math.max(redis.call('PTTL', KEYS[2]), redis.call('PTTL', KEYS[4]), redis.call('PTTL', KEYS[6]))
if wait > 0 then return math.ceil(wait / 1000) end
for k = 1, 5, 2 do
  local n = redis.call('INCR', KEYS[k])
  if n == 1 or redis.call('TTL', KEYS[k]) < 0 then redis.call('EXPIRE', KEYS[k], ARGV[1]) end
  local free = tonumber(ARGV[2 + (k - 1) / 2])
  if n > free then
    local d = math.min(tonumber(ARGV[5]) * 2 ^ math.min(n - free - 1, 30), tonumber(ARGV[6]))
    redis.call('SET', KEYS[k + 1], ARGV[7], 'EX', d)
  end
end
return 0
"#;

/// `KEYS`: the address's failures and lock, then the account's at this address and overall.
/// `ARGV`: the attempt's token. The address's count drops by the attempt (gone at zero: a
/// `DECR` after the window ended would leave a count below zero with no expiry), and its lock
/// goes only when this attempt set it: a lock a concurrent failure set since stays.
const SUCCEEDED: &str = r#"
if redis.call('DECR', KEYS[1]) <= 0 then redis.call('DEL', KEYS[1]) end
if redis.call('GET', KEYS[2]) == ARGV[1] then redis.call('DEL', KEYS[2]) end
redis.call('DEL', KEYS[3], KEYS[4], KEYS[5], KEYS[6])
return 0
"#;

/// Whose failures an attempt counts against.
pub enum Subject<'a> {
    /// An existing account.
    Account(i64),
    /// An identifier that names no account, with its kind: `email:` folded by PostgreSQL's
    /// `lower`, `name:` as written.
    Unknown(&'a str),
    /// A password-protected link, by id: guesses at its password back off like logins, per
    /// link and per address (the address's count is shared with logins: a guesser is a
    /// guesser).
    Link(i64),
}

impl Subject<'_> {
    fn key(&self) -> String {
        match self {
            Subject::Account(id) => format!("user:{id}"),
            // Hashed: an identifier is the client's text of any length (a key as long as the
            // body), and an email address should not be readable from a key name.
            Subject::Unknown(who) => format!("id:{}", super::sessions::token_hash(who)),
            Subject::Link(id) => format!("link:{id}"),
        }
    }
}

/// Who an address is for the counters: an IPv4 address, or the /64 network of an IPv6 one.
/// One host commonly holds a whole /64 and could take a new address for every few guesses,
/// each with fresh per-address counts (the edge's rate limits group IPv6 the same way).
fn address_key(ip: IpAddr) -> String {
    kurz_common::proxies::client_key(ip, 64).to_string()
}

pub struct Lockout {
    redis: Arc<RedisHandle>,
    keys: KeySchema,
    cfg: LockoutConfig,
    admit: redis::Script,
    succeeded: redis::Script,
}

/// An admitted attempt, to settle with [`Lockout::succeeded`] or [`Lockout::failed`] once its
/// password is checked (left unsettled, it stays counted as a failure).
pub struct Admitted {
    pair: String,
    who: String,
    ip: String,
    token: String,
}

impl Lockout {
    pub fn new(redis: Arc<RedisHandle>, keys: KeySchema, cfg: LockoutConfig) -> Self {
        Self {
            redis,
            keys,
            cfg,
            admit: redis::Script::new(ADMIT),
            succeeded: redis::Script::new(SUCCEEDED),
        }
    }

    /// Admits one attempt, or `Err(seconds)` it must wait instead (nothing is checked then).
    /// An admitted attempt already counts as a failure until [`Self::succeeded`].
    pub async fn admit(
        &self,
        subject: &Subject<'_>,
        ip: IpAddr,
    ) -> Result<Result<Admitted, u64>, RedisDown> {
        let (who, ip) = (subject.key(), address_key(ip));
        let attempt = Admitted {
            pair: format!("{who}@{ip}"),
            who,
            ip,
            token: format!("{:016x}", rand::random::<u64>()),
        };
        let mut inv = self.admit.key(self.keys.login("fail-pair", &attempt.pair));
        inv.key(self.keys.login("lock-pair", &attempt.pair))
            .key(self.keys.login("fail-acct", &attempt.who))
            .key(self.keys.login("lock-acct", &attempt.who))
            .key(self.keys.login("fail-ip", &attempt.ip))
            .key(self.keys.login("lock-ip", &attempt.ip))
            .arg(self.cfg.window_seconds)
            .arg(self.cfg.free_failures)
            .arg(self.cfg.free_failures_all_addresses)
            .arg(self.cfg.free_failures_per_ip)
            .arg(self.cfg.base_delay_seconds)
            .arg(self.cfg.max_delay_seconds)
            .arg(&attempt.token);
        let wait: i64 = self.run(&inv).await?;
        Ok(if wait > 0 {
            Err(wait as u64)
        } else {
            Ok(attempt)
        })
    }

    /// A successful login clears the account's failures and locks, and takes back the count
    /// its own attempt added to the address and a lock that count set (only those: one good
    /// password must not reset a spray across many accounts, and users behind one NAT must not
    /// lock each other out by logging in).
    pub async fn succeeded(&self, attempt: &Admitted) -> Result<(), RedisDown> {
        let mut inv = self.succeeded.key(self.keys.login("fail-ip", &attempt.ip));
        inv.key(self.keys.login("lock-ip", &attempt.ip))
            .key(self.keys.login("fail-pair", &attempt.pair))
            .key(self.keys.login("lock-pair", &attempt.pair))
            .key(self.keys.login("fail-acct", &attempt.who))
            .key(self.keys.login("lock-acct", &attempt.who))
            .arg(&attempt.token);
        self.run::<i64>(&inv).await.map(drop)
    }

    /// A wrong password: its counts (already taken at admission) start their window again, so
    /// a count is forgotten a window after the last failure, not after the last attempt. Redis
    /// failing here changes no answer: the failure is counted already, only for less long
    /// (the handle counts the error).
    pub async fn failed(&self, attempt: &Admitted) {
        let mut pipe = redis::pipe();
        for (kind, who) in [
            ("fail-pair", &attempt.pair),
            ("fail-acct", &attempt.who),
            ("fail-ip", &attempt.ip),
        ] {
            pipe.cmd("EXPIRE")
                .arg(self.keys.login(kind, who))
                .arg(self.cfg.window_seconds)
                .ignore();
        }
        let _ = self.redis.query::<()>(&pipe).await;
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        inv: &redis::ScriptInvocation<'_>,
    ) -> Result<T, RedisDown> {
        let mut conn = self.redis.conn().await?;
        inv.invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.failed(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ipv6_host_is_counted_by_its_64_network() {
        let a = address_key("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = address_key("2001:db8:1:2:bbbb::9".parse().unwrap());
        let other = address_key("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, "2001:db8:1:2::");
        assert_eq!(a, b);
        assert_ne!(a, other);
        assert_eq!(address_key("203.0.113.7".parse().unwrap()), "203.0.113.7");
        assert_eq!(
            address_key("::ffff:203.0.113.7".parse().unwrap()),
            "203.0.113.7"
        );
    }
}
