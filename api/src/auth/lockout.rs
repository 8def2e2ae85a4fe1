//! Failed-login back-off in Redis: per account and client address, per account, and per
//! address.
//!
//! Every attempt is admitted (or refused) by one Redis script *before* the password is checked:
//! it refuses while a lock holds, and otherwise counts the attempt as a failure up front,
//! locking once a count passes its free failures. A successful login then clears the account's
//! counts. Counting before checking is what makes the limit hold under concurrency: thirty
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
//! per identifier, so the back-off itself reveals nothing about who exists.

use crate::config::LockoutConfig;
use crate::redis_handle::{RedisDown, RedisHandle};
use kurz_common::keys::KeySchema;
use std::net::IpAddr;
use std::sync::Arc;

/// `KEYS`: failures and lock of the account at this address, of the account, of the address.
/// `ARGV`: window, free failures for each of the three in that order, base delay, max delay.
/// Returns 0 when the attempt may go on, else the seconds to wait.
const ADMIT: &str = r#"
local wait = math.max(redis.call('PTTL', KEYS[2]), redis.call('PTTL', KEYS[4]), redis.call('PTTL', KEYS[6]))
if wait > 0 then return math.ceil(wait / 1000) end
for k = 1, 5, 2 do
  local n = redis.call('INCR', KEYS[k])
  redis.call('EXPIRE', KEYS[k], ARGV[1])
  local free = tonumber(ARGV[2 + (k - 1) / 2])
  if n > free then
    local d = math.min(tonumber(ARGV[5]) * 2 ^ math.min(n - free - 1, 30), tonumber(ARGV[6]))
    redis.call('SET', KEYS[k + 1], 1, 'EX', d)
  end
end
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
}

impl Lockout {
    pub fn new(redis: Arc<RedisHandle>, keys: KeySchema, cfg: LockoutConfig) -> Self {
        Self {
            redis,
            keys,
            cfg,
            admit: redis::Script::new(ADMIT),
        }
    }

    /// Admits one attempt: `Some(seconds)` when it must wait instead (nothing is checked then).
    /// An admitted attempt already counts as a failure until [`Self::succeeded`].
    pub async fn admit(&self, subject: &Subject<'_>, ip: IpAddr) -> Result<Option<u64>, RedisDown> {
        let (who, ip) = (subject.key(), address_key(ip));
        let pair = format!("{who}@{ip}");
        let mut inv = self.admit.key(self.keys.login("fail-pair", &pair));
        inv.key(self.keys.login("lock-pair", &pair))
            .key(self.keys.login("fail-acct", &who))
            .key(self.keys.login("lock-acct", &who))
            .key(self.keys.login("fail-ip", &ip))
            .key(self.keys.login("lock-ip", &ip))
            .arg(self.cfg.window_seconds)
            .arg(self.cfg.free_failures)
            .arg(self.cfg.free_failures_all_addresses)
            .arg(self.cfg.free_failures_per_ip)
            .arg(self.cfg.base_delay_seconds)
            .arg(self.cfg.max_delay_seconds);
        let mut conn = self.redis.conn().await?;
        let wait: i64 = inv
            .invoke_async(&mut conn)
            .await
            .map_err(|e| self.redis.failed(e))?;
        Ok((wait > 0).then_some(wait as u64))
    }

    /// A successful login clears the account's failures and lock, and takes back the count
    /// its own attempt added to the address (only that: one good password must not reset a
    /// spray across many accounts, and users behind one NAT must not lock each other out by
    /// logging in).
    pub async fn succeeded(&self, subject: &Subject<'_>, ip: IpAddr) -> Result<(), RedisDown> {
        let (who, ip) = (subject.key(), address_key(ip));
        let pair = format!("{who}@{ip}");
        let mut pipe = redis::pipe();
        pipe.cmd("DECR")
            .arg(self.keys.login("fail-ip", &ip))
            .ignore();
        pipe.cmd("DEL")
            .arg(self.keys.login("fail-pair", &pair))
            .arg(self.keys.login("lock-pair", &pair))
            .ignore();
        pipe.cmd("DEL")
            .arg(self.keys.login("fail-acct", &who))
            .ignore();
        pipe.cmd("DEL")
            .arg(self.keys.login("lock-acct", &who))
            .ignore();
        self.redis.query::<()>(&pipe).await
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
