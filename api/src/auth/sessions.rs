//! Sessions in Redis: a 256-bit random token goes to the client; Redis keeps only its hash, the
//! user id and a TTL (sliding or fixed). Revocation deletes the key, so it takes effect at once.

use crate::redis_handle::{RedisDown, RedisHandle};
use blake2::{Blake2b, Digest};
use kurz_common::keys::KeySchema;
use std::sync::Arc;

/// Session tokens start with this, API keys with [`API_KEY_PREFIX`], so one header carries
/// either and the server knows where to look.
pub const SESSION_PREFIX: &str = "kzs_";
pub const API_KEY_PREFIX: &str = "kzk_";

/// Sessions one user may hold at once. Each log-in adds one and nothing else bounds them: a
/// loop of log-ins would grow the user's set until reading it (every log-in, every password
/// change) outlasts `redis.timeout_ms`, and the owner could no longer change the password.
pub const MAX_LIVE_SESSIONS: usize = 100;

/// A new random token with `prefix`: 32 bytes from the CSPRNG, hex.
pub fn new_token(prefix: &str) -> String {
    let bytes: [u8; 32] = rand::random();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

/// BLAKE2b-256 of a token, hex. Tokens carry 256 random bits, so a fast hash is enough: nobody
/// can brute-force the preimage, and a leaked Redis or database holds no usable token.
pub fn token_hash(token: &str) -> String {
    let digest = Blake2b::<blake2::digest::consts::U32>::digest(token.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

pub struct Sessions {
    redis: Arc<RedisHandle>,
    keys: KeySchema,
    ttl: u64,
    sliding: bool,
}

impl Sessions {
    pub fn new(redis: Arc<RedisHandle>, keys: KeySchema, ttl: u64, sliding: bool) -> Self {
        Self {
            redis,
            keys,
            ttl,
            sliding,
        }
    }

    pub fn ttl(&self) -> u64 {
        self.ttl
    }

    /// Whether each use extends a session to the full TTL again.
    pub fn sliding(&self) -> bool {
        self.sliding
    }

    /// Whether sessions can be made now (checked before an account is created). Asked of the
    /// node that holds them: on a cluster a `PING` goes to every master and fails with any one,
    /// and a master down until its failover refused every sign-up though sessions live on one.
    pub async fn available(&self) -> bool {
        // No user has id 0: a read of a key in the sessions' slot that touches nothing.
        self.redis
            .query::<bool>(redis::cmd("EXISTS").arg(self.keys.user_sessions(0)))
            .await
            .is_ok()
    }

    /// A new session for `user_id`: the token (given to the client once).
    ///
    /// The user's set of session hashes has no TTL: sliding sessions live as long as they are
    /// used, and a set that expired before them would let a password change miss them. It stays
    /// small because each new session first drops the hashes whose sessions have expired, and
    /// ends the sessions nearest their end past [`MAX_LIVE_SESSIONS`].
    pub async fn create(&self, user_id: i64) -> Result<String, RedisDown> {
        let token = new_token(SESSION_PREFIX);
        let hash = token_hash(&token);
        let set = self.keys.user_sessions(user_id);
        self.prune(&set, MAX_LIVE_SESSIONS - 1).await?;
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.keys.session(&hash))
            .arg(user_id)
            .arg("EX")
            .arg(self.ttl)
            .ignore();
        pipe.cmd("SADD").arg(&set).arg(&hash).ignore();
        pipe.cmd("PERSIST").arg(&set).ignore();
        self.redis.query::<()>(&pipe).await?;
        Ok(token)
    }

    /// Drops the hashes of expired sessions from a user's set, and ends the sessions nearest
    /// their end (the least recently used, when sessions slide) past `keep`.
    async fn prune(&self, set: &str, keep: usize) -> Result<(), RedisDown> {
        let hashes: Vec<String> = self.redis.query(redis::cmd("SMEMBERS").arg(set)).await?;
        if hashes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for h in &hashes {
            pipe.cmd("PTTL").arg(self.keys.session(h));
        }
        let ttls: Vec<i64> = self.redis.query(&pipe).await?;
        // -2: gone. Every session is made with a TTL, so -1 is none of ours; it sorts first.
        let (mut alive, mut ended) = (Vec::new(), Vec::new());
        for (ttl, h) in ttls.into_iter().zip(&hashes) {
            if ttl == -2 {
                ended.push(h);
            } else {
                alive.push((ttl, h));
            }
        }
        if alive.len() > keep {
            alive.sort_unstable();
            ended.extend(alive[..alive.len() - keep].iter().map(|(_, h)| *h));
        }
        if ended.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for h in &ended {
            pipe.cmd("DEL").arg(self.keys.session(h)).ignore();
        }
        pipe.cmd("SREM").arg(set).arg(ended).ignore();
        self.redis.query::<()>(&pipe).await
    }

    /// The user of a session token, extending it when sessions slide.
    pub async fn user_of(&self, token: &str) -> Result<Option<i64>, RedisDown> {
        let key = self.keys.session(&token_hash(token));
        let mut cmd = if self.sliding {
            redis::cmd("GETEX")
        } else {
            redis::cmd("GET")
        };
        cmd.arg(&key);
        if self.sliding {
            cmd.arg("EX").arg(self.ttl);
        }
        let raw: Option<String> = self.redis.query(&cmd).await?;
        Ok(raw.and_then(|v| v.parse().ok()))
    }

    /// Ends one session.
    pub async fn revoke(&self, token: &str, user_id: i64) -> Result<(), RedisDown> {
        let hash = token_hash(token);
        let mut pipe = redis::pipe();
        pipe.cmd("DEL").arg(self.keys.session(&hash)).ignore();
        pipe.cmd("SREM")
            .arg(self.keys.user_sessions(user_id))
            .arg(&hash)
            .ignore();
        self.ended(pipe, user_id).await
    }

    /// Ends every session of a user (password change).
    ///
    /// Only the hashes read are taken out of the set: a session made between the read and
    /// the deletes (a log-in with the old password during the change) stays listed, for the
    /// change's second pass, or the next one, to find. Deleting the whole set lost it, and it
    /// lived on, sliding, past every later password change.
    pub async fn revoke_all(&self, user_id: i64) -> Result<(), RedisDown> {
        let set = self.keys.user_sessions(user_id);
        let hashes: Vec<String> = self.redis.query(redis::cmd("SMEMBERS").arg(&set)).await?;
        if hashes.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for h in &hashes {
            pipe.cmd("DEL").arg(self.keys.session(h)).ignore();
        }
        pipe.cmd("SREM").arg(&set).arg(&hashes).ignore();
        self.ended(pipe, user_id).await
    }

    /// Sends the deletes that end sessions (`pipe`, replies ignored). With `redis.replica_acks`,
    /// answered once the replicas have them (`WAIT`): a failover to a replica that had not got
    /// the deletes would bring the sessions back after a log-out or a password change said
    /// they were over. A replica that does not confirm in time is logged and counted, not
    /// refused: the master has deleted them, and refusing would leave a shard without its
    /// replica unable to change a password (whose change is what ends a stolen session). The
    /// log names the user whose sessions a failover now could bring back.
    async fn ended(&self, mut pipe: redis::Pipeline, user_id: i64) -> Result<(), RedisDown> {
        let redis = self.redis.for_waits();
        let Some(wait) = redis.replica_wait() else {
            return redis.query::<()>(&pipe).await;
        };
        pipe.add_command(wait);
        let (acked,): (redis::Value,) = redis.query(&pipe).await?;
        if !redis.replicated(&acked) {
            redis.refused();
            log::warn!(user_id = user_id; "sessions ended on the Redis master were not confirmed by the replicas redis.replica_acks asks for: a failover now could bring them back");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_hash_stably() {
        let a = new_token(SESSION_PREFIX);
        assert!(a.starts_with(SESSION_PREFIX));
        assert_eq!(a.len(), SESSION_PREFIX.len() + 64);
        assert_ne!(a, new_token(SESSION_PREFIX));
        assert_eq!(token_hash(&a), token_hash(&a));
        assert_eq!(token_hash(&a).len(), 64);
        assert_ne!(token_hash(&a), token_hash(&new_token(SESSION_PREFIX)));
    }
}
