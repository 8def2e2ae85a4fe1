//! Unique visitors without keeping anyone's address: a click carries `visitor`, a keyed hash of
//! the client's whole address and user agent under a salt that is random, one per UTC day, and
//! shared by every edge and API through Redis (`<prefix>:visitor-salt:<day>`, created by
//! whoever needs it first with `SET NX`, gone two days later). While the salt lives the same
//! visitor hashes alike on every process, so a day's visitors can be counted; once it is gone
//! nobody, us included, can tell which address a hash came from (the address space is small
//! enough to try every address against a known salt, which is why the salt must not outlive
//! the day it counts).
//!
//! The hash is computed where the request arrives, from the address before `privacy.store_ip`
//! cuts it, and the address itself is never written anywhere by this module.

use crate::keys::KeySchema;
use crate::redis_handle::RedisHandle;
use blake2::{Blake2s256, Digest};
use chrono::{NaiveDate, Utc};
use std::net::IpAddr;
use std::sync::RwLock;

/// How long a day's salt is kept: through its day, and a day more for clicks counted late.
const SALT_TTL_SECONDS: u64 = 2 * 24 * 3600;

/// The salts of today and tomorrow, as fetched last.
#[derive(Default)]
pub struct VisitorSalt {
    known: RwLock<Vec<(NaiveDate, String)>>,
}

impl VisitorSalt {
    /// Fetches today's and tomorrow's salts, creating them if nobody has yet. Run every few
    /// seconds in the background: a day's first clicks find its salt already there.
    pub async fn refresh(&self, redis: &RedisHandle, keys: &KeySchema) -> Result<(), String> {
        let today = Utc::now().date_naive();
        let mut known = Vec::with_capacity(2);
        for day in [today, today.succ_opt().unwrap_or(today)] {
            let key = keys.visitor_salt(&day.format("%Y-%m-%d").to_string());
            let fresh = format!("{:032x}", rand::random::<u128>());
            let mut pipe = redis::pipe();
            pipe.cmd("SET")
                .arg(&key)
                .arg(&fresh)
                .arg("NX")
                .arg("EX")
                .arg(SALT_TTL_SECONDS)
                .ignore();
            pipe.cmd("GET").arg(&key);
            let (salt,): (Option<String>,) = redis.query(&pipe).await.map_err(|e| e.to_string())?;
            if let Some(salt) = salt {
                known.push((day, salt));
            }
        }
        *self.known.write().expect("visitor salt lock") = known;
        Ok(())
    }

    /// [`Self::refresh`] for the background loops of the edge and the API, its failure logged
    /// once per outage (`failing` carries that between calls): while today's salt is unknown
    /// the loops ask every second.
    pub async fn refresh_logged(&self, redis: &RedisHandle, keys: &KeySchema, failing: &mut bool) {
        match self.refresh(redis, keys).await {
            Err(e) if !*failing => {
                log::warn!(error = e; "visitor salt not refreshed; clicks keep the last one known");
                *failing = true;
            }
            Err(_) => {}
            Ok(()) => *failing = false,
        }
    }

    /// When to fetch again: soon while today's salt is unknown (Redis was down at start or
    /// since before midnight), since every click meanwhile goes without a visitor id; else at
    /// the steady pace, which keeps tomorrow's fetched well before it starts.
    pub fn refresh_after(&self) -> std::time::Duration {
        self.refresh_after_on(Utc::now().date_naive())
    }

    fn refresh_after_on(&self, day: NaiveDate) -> std::time::Duration {
        let known = self.known.read().expect("visitor salt lock");
        if known.iter().any(|(d, _)| *d == day) {
            std::time::Duration::from_secs(30)
        } else {
            std::time::Duration::from_secs(1)
        }
    }

    /// The visitor id of a request now: 16 hex digits, or empty while today's salt is unknown
    /// (Redis unreachable since before midnight): such clicks count, only not as visitors.
    pub fn visitor(&self, ip: IpAddr, user_agent: &str) -> String {
        self.visitor_on(Utc::now().date_naive(), ip, user_agent)
    }

    fn visitor_on(&self, day: NaiveDate, ip: IpAddr, user_agent: &str) -> String {
        let known = self.known.read().expect("visitor salt lock");
        let Some((_, salt)) = known.iter().find(|(d, _)| *d == day) else {
            return String::new();
        };
        // An IPv4 client reached over IPv6 is the same visitor as over IPv4.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let mut hash = Blake2s256::new();
        hash.update(salt.as_bytes());
        hash.update([0]);
        match ip {
            IpAddr::V4(v4) => hash.update(v4.octets()),
            IpAddr::V6(v6) => hash.update(v6.octets()),
        }
        hash.update([0]);
        hash.update(user_agent.as_bytes());
        // On every redirect: one allocation, no formatting machinery.
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut id = String::with_capacity(16);
        for b in &hash.finalize()[..8] {
            id.push(char::from(HEX[usize::from(b >> 4)]));
            id.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(day: NaiveDate, salt: &str) -> VisitorSalt {
        let s = VisitorSalt::default();
        *s.known.write().unwrap() = vec![(day, salt.to_owned())];
        s
    }

    #[test]
    fn the_same_visitor_hashes_alike_within_a_day_and_differently_across_days() {
        let day = NaiveDate::from_ymd_opt(2030, 1, 31).unwrap();
        let ip: IpAddr = "203.0.113.77".parse().unwrap();
        let a = with(day, "salt-one");
        let v = a.visitor_on(day, ip, "UA/1");
        assert_eq!(v.len(), 16);
        assert!(v.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!v.contains("203"));
        assert_eq!(v, a.visitor_on(day, ip, "UA/1"));
        let mapped: IpAddr = "::ffff:203.0.113.77".parse().unwrap();
        assert_eq!(v, a.visitor_on(day, mapped, "UA/1"));
        assert_ne!(v, a.visitor_on(day, ip, "UA/2"));
        assert_ne!(
            v,
            a.visitor_on(day, "203.0.113.78".parse().unwrap(), "UA/1")
        );
        // Another day's salt: unlinkable.
        assert_ne!(v, with(day, "salt-two").visitor_on(day, ip, "UA/1"));
        // No salt for the day: no visitor id.
        assert_eq!(a.visitor_on(day.succ_opt().unwrap(), ip, "UA/1"), "");
    }

    #[test]
    fn a_day_without_its_salt_asks_again_within_a_second() {
        let day = NaiveDate::from_ymd_opt(2030, 1, 31).unwrap();
        let secs = |s: &VisitorSalt, d| s.refresh_after_on(d).as_secs_f64();
        assert!(secs(&VisitorSalt::default(), day) <= 1.0);
        let a = with(day, "salt-one");
        assert!(secs(&a, day.succ_opt().unwrap()) <= 1.0);
        assert!(
            secs(&a, day) >= 10.0,
            "a known salt is not fetched in a loop"
        );
    }
}
