//! The Redis side of the click consumer: the consumer group on every partition's stream, reads,
//! claims, acknowledgements and the backlog.
//!
//! Every call here is bounded in the work it asks of Redis (a `COUNT` on each read, one
//! `XAUTOCLAIM` per command rather than a pipeline of them), because Redis is shared with the
//! redirect path: a consumer that keeps Redis busy for tens of milliseconds makes edges time out
//! on appends that did apply.

use crate::redis_handle::{RedisDown, RedisHandle};
use kurz_common::clicks::Click;
use kurz_common::keys::KeySchema;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Most entries one `XAUTOCLAIM` may take; Redis scans up to ten times as many pending entries
/// for it, so this bounds the command's cost.
pub const CLAIM_COUNT: usize = 100;

/// One stream entry, parsed.
#[derive(Debug, Clone)]
pub struct Entry {
    pub partition: u16,
    pub id: String,
    /// `None` for a malformed entry: acknowledged and dropped, never retried forever.
    pub click: Option<Click>,
}

/// Why a read failed.
pub enum ReadError {
    /// The consumer group is gone although it existed: Redis lost its data (restarted without
    /// persistence, or flushed). Recoverable by recreating the group; what was unread is lost.
    GroupLost,
    Down(RedisDown),
}

impl From<RedisDown> for ReadError {
    fn from(d: RedisDown) -> Self {
        ReadError::Down(d)
    }
}

pub struct ClickStream {
    redis: Arc<RedisHandle>,
    keys: KeySchema,
    group: String,
    /// Unique per process, so pending entries can be told apart in `XPENDING`.
    name: String,
    groups_ready: AtomicBool,
}

impl ClickStream {
    pub fn new(redis: Arc<RedisHandle>, keys: KeySchema, group: String, name: String) -> Self {
        Self {
            redis,
            keys,
            group,
            name,
            groups_ready: AtomicBool::new(false),
        }
    }

    pub fn keys(&self) -> &KeySchema {
        &self.keys
    }

    /// Creates the consumer group on every partition's stream (idempotent).
    pub async fn ensure_groups(&self) -> Result<(), RedisDown> {
        if self.groups_ready.load(Ordering::Acquire) {
            return Ok(());
        }
        for key in self.keys.all_clicks() {
            let mut cmd = redis::cmd("XGROUP");
            cmd.arg("CREATE")
                .arg(&key)
                .arg(&self.group)
                .arg("0")
                .arg("MKSTREAM");
            let mut conn = self.redis.conn().await?;
            match cmd.query_async::<()>(&mut conn).await {
                Ok(()) => {}
                Err(e) if e.code() == Some("BUSYGROUP") => {}
                Err(e) => return Err(self.redis.failed(e)),
            }
        }
        self.groups_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Entries not yet consumed, summed over partitions (unread plus pending): acknowledged
    /// entries are deleted, so `XLEN` is the backlog. Reports [`ReadError::GroupLost`] instead
    /// when a group this process created is gone, so a sample taken after Redis lost its data
    /// never passes for the backlog that was lost.
    pub async fn backlog(&self) -> Result<i64, ReadError> {
        let mut cmds = Vec::new();
        for (p, key) in self.partition_keys() {
            cmds.push((p, redis::cmd("XLEN").arg(&key).to_owned()));
            cmds.push((p, redis::cmd("XINFO").arg("GROUPS").arg(&key).to_owned()));
        }
        let replies: Vec<Value> = match self.redis.query_parts(&cmds).await {
            Ok(r) => r,
            // XINFO on a stream that does not exist fails the pipeline: Redis came back empty.
            Err(_) if self.groups_ready.load(Ordering::Acquire) && self.lost_stream().await? => {
                self.groups_ready.store(false, Ordering::Release);
                return Err(ReadError::GroupLost);
            }
            Err(e) => return Err(e.into()),
        };
        let mut total = 0;
        for chunk in replies.chunks(2) {
            let len = redis::from_redis_value::<i64>(chunk[0].clone()).unwrap_or(0);
            if self.groups_ready.load(Ordering::Acquire) && !self.has_group(&chunk[1]) {
                self.groups_ready.store(false, Ordering::Release);
                return Err(ReadError::GroupLost);
            }
            total += len;
        }
        Ok(total)
    }

    /// Whether some partition's stream is missing altogether.
    async fn lost_stream(&self) -> Result<bool, RedisDown> {
        let cmds: Vec<_> = self
            .partition_keys()
            .map(|(p, key)| (p, redis::cmd("EXISTS").arg(key).to_owned()))
            .collect();
        let exists = self.redis.query_parts(&cmds).await?;
        Ok(exists.iter().any(|v| matches!(v, Value::Int(0))))
    }

    /// Whether an `XINFO GROUPS` reply lists our group.
    fn has_group(&self, reply: &Value) -> bool {
        let Value::Array(groups) = reply else {
            return false;
        };
        groups.iter().any(|g| {
            let fields: Vec<String> = match g {
                Value::Array(f) => f
                    .iter()
                    .map(|v| redis::from_redis_value::<String>(v.clone()).unwrap_or_default())
                    .collect(),
                Value::Map(m) => m
                    .iter()
                    .flat_map(|(k, v)| [k.clone(), v.clone()])
                    .map(|v| redis::from_redis_value::<String>(v).unwrap_or_default())
                    .collect(),
                _ => Vec::new(),
            };
            fields
                .chunks(2)
                .any(|kv| kv.len() == 2 && kv[0] == "name" && kv[1] == self.group)
        })
    }

    /// Entries delivered but not yet acknowledged, summed over partitions.
    pub async fn pending(&self) -> Result<i64, RedisDown> {
        let cmds: Vec<_> = self
            .partition_keys()
            .map(|(p, key)| {
                (
                    p,
                    redis::cmd("XPENDING").arg(key).arg(&self.group).to_owned(),
                )
            })
            .collect();
        let replies = self.redis.query_parts(&cmds).await?;
        Ok(replies
            .into_iter()
            .filter_map(|r| match r {
                Value::Array(items) => items
                    .into_iter()
                    .next()
                    .and_then(|c| redis::from_redis_value::<i64>(c).ok()),
                _ => None,
            })
            .sum())
    }

    /// The newest entry id of each partition's stream (`None`: empty): where a read-your-writes
    /// drain stops, so it never chases clicks that arrive while it runs.
    pub async fn heads(&self) -> Result<Vec<Option<String>>, RedisDown> {
        let cmds: Vec<_> = self
            .partition_keys()
            .map(|(p, key)| {
                let mut cmd = redis::cmd("XREVRANGE");
                cmd.arg(key).arg("+").arg("-").arg("COUNT").arg(1);
                (p, cmd)
            })
            .collect();
        let replies: Vec<Vec<(String, Value)>> =
            self.decode(self.redis.query_parts(&cmds).await?)?;
        Ok(replies
            .into_iter()
            .map(|r| r.into_iter().next().map(|(id, _)| id))
            .collect())
    }

    /// Partitions that still hold an entry at or before their bound in `heads`.
    pub async fn unconsumed_up_to(&self, heads: &[Option<String>]) -> Result<Vec<u16>, RedisDown> {
        let bounded: Vec<(u16, &str)> = heads
            .iter()
            .enumerate()
            .filter_map(|(p, h)| h.as_deref().map(|h| (p as u16, h)))
            .collect();
        if bounded.is_empty() {
            return Ok(Vec::new());
        }
        let cmds: Vec<_> = bounded
            .iter()
            .map(|(p, head)| {
                let mut cmd = redis::cmd("XRANGE");
                cmd.arg(self.keys.clicks(*p))
                    .arg("-")
                    .arg(*head)
                    .arg("COUNT")
                    .arg(1);
                (*p, cmd)
            })
            .collect();
        let replies: Vec<Vec<(String, Value)>> =
            self.decode(self.redis.query_parts(&cmds).await?)?;
        Ok(bounded
            .into_iter()
            .zip(replies)
            .filter(|(_, r)| !r.is_empty())
            .map(|((p, _), _)| p)
            .collect())
    }

    /// Entries never delivered to the group, at most `per_partition` from each partition.
    pub async fn read_new(&self, per_partition: usize) -> Result<Vec<Entry>, ReadError> {
        self.ensure_groups().await?;
        let cmds: Vec<_> = self
            .partition_keys()
            .map(|(p, key)| {
                let mut cmd = redis::cmd("XREADGROUP");
                cmd.arg("GROUP")
                    .arg(&self.group)
                    .arg(&self.name)
                    .arg("COUNT")
                    .arg(per_partition)
                    .arg("STREAMS")
                    .arg(key)
                    .arg(">");
                (p, cmd)
            })
            .collect();
        let conn = self.redis.conn().await?;
        let replies = self.classify(self.redis.pipeline_parts(&conn, &cmds).await)?;
        let mut entries = Vec::new();
        for (partition, reply) in replies.into_iter().enumerate() {
            let read = redis::from_redis_value::<Option<StreamReadReply>>(reply)
                .map_err(|e| RedisDown(format!("unexpected XREADGROUP reply: {e}")))?;
            let ids = read.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
            entries.extend(ids.map(|sid| parse_entry(partition as u16, sid)));
        }
        Ok(entries)
    }

    /// Takes over up to [`CLAIM_COUNT`] entries of one partition pending for at least `idle_ms`
    /// in any consumer, scanning from `cursor`. Returns them and the cursor to continue from
    /// (`0-0` once the scan wrapped around).
    pub async fn claim(
        &self,
        partition: u16,
        idle_ms: u64,
        cursor: &str,
    ) -> Result<(Vec<Entry>, String), ReadError> {
        self.ensure_groups().await?;
        let mut cmd = redis::cmd("XAUTOCLAIM");
        cmd.arg(self.keys.clicks(partition))
            .arg(&self.group)
            .arg(&self.name)
            .arg(idle_ms)
            .arg(cursor)
            .arg("COUNT")
            .arg(CLAIM_COUNT);
        let mut conn = self.redis.conn().await?;
        let reply: Value = self.classify(cmd.query_async(&mut conn).await)?;
        let reply = redis::from_redis_value::<StreamAutoClaimReply>(reply)
            .map_err(|e| RedisDown(format!("unexpected XAUTOCLAIM reply: {e}")))?;
        let entries = reply
            .claimed
            .into_iter()
            .map(|sid| parse_entry(partition, sid))
            .collect();
        Ok((entries, reply.next_stream_id))
    }

    /// Acknowledges and deletes committed entries.
    pub async fn ack(&self, entries: &[Entry]) -> Result<(), RedisDown> {
        let mut cmds = Vec::new();
        for partition in 0..self.keys.partitions() {
            let ids: Vec<&str> = entries
                .iter()
                .filter(|e| e.partition == partition)
                .map(|e| e.id.as_str())
                .collect();
            if ids.is_empty() {
                continue;
            }
            let key = self.keys.clicks(partition);
            cmds.push((
                partition,
                redis::cmd("XACK")
                    .arg(&key)
                    .arg(&self.group)
                    .arg(&ids)
                    .to_owned(),
            ));
            cmds.push((partition, redis::cmd("XDEL").arg(&key).arg(&ids).to_owned()));
        }
        self.redis.query_parts(&cmds).await.map(|_| ())
    }

    /// Each partition with its stream's key.
    fn partition_keys(&self) -> impl Iterator<Item = (u16, String)> + '_ {
        (0..self.keys.partitions()).map(|p| (p, self.keys.clicks(p)))
    }

    /// Typed replies of [`RedisHandle::query_parts`].
    fn decode<T: redis::FromRedisValue>(&self, replies: Vec<Value>) -> Result<Vec<T>, RedisDown> {
        replies
            .into_iter()
            .map(|v| {
                redis::from_redis_value(v)
                    .map_err(|e| RedisDown(format!("unexpected stream reply: {e}")))
            })
            .collect()
    }

    /// The outcome of a group read; a missing group after it was created means Redis lost its
    /// data.
    fn classify<T>(&self, result: redis::RedisResult<T>) -> Result<T, ReadError> {
        match result {
            Ok(v) => Ok(v),
            // A pipeline reports per-command failures in one error, so match on its text too.
            Err(e) if e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP") => {
                self.groups_ready.store(false, Ordering::Release);
                Err(ReadError::GroupLost)
            }
            Err(e) => Err(self.redis.failed(e).into()),
        }
    }
}

fn parse_entry(partition: u16, sid: StreamId) -> Entry {
    let fields: Vec<(String, String)> = sid
        .map
        .into_iter()
        .filter_map(|(k, v)| match v {
            Value::BulkString(b) => Some((k, String::from_utf8_lossy(&b).into_owned())),
            Value::SimpleString(s) => Some((k, s)),
            _ => None,
        })
        .collect();
    let click = Click::from_fields(fields.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    Entry {
        partition,
        id: sid.id,
        click,
    }
}
