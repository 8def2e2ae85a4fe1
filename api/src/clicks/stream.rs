//! The Redis side of the click consumer: the consumer group on every partition's stream, reads,
//! claims, acknowledgements and the backlog.
//!
//! Every call here is bounded in the work it asks of Redis (a `COUNT` on each read, one
//! `XAUTOCLAIM` per command rather than a pipeline of them), because Redis is shared with the
//! redirect path: a consumer that keeps Redis busy for tens of milliseconds makes edges time out
//! on appends that did apply.

use crate::db::events::StreamClick;
use crate::redis_handle::{RedisDown, RedisHandle};
use kurz_common::clicks::EntryClicks;
use kurz_common::keys::KeySchema;
use redis::streams::{StreamAutoClaimReply, StreamId};
use redis::Value;
use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Most entries one `XAUTOCLAIM` may take; Redis scans up to ten times as many pending entries
/// for it, so this bounds the command's cost.
pub const CLAIM_COUNT: usize = 100;

/// One stream entry, parsed into the rows it becomes: a packed entry from the edge holds a
/// batch of clicks, a flat one (the edge's script, the API) one click. The rows are built when
/// the entry is read, so the consumer does that work while PostgreSQL stores the batch before
/// (building them just before the insert left PostgreSQL idle for it, a quarter of each step).
#[derive(Debug, Clone)]
pub struct Entry {
    pub partition: u16,
    pub id: String,
    pub clicks: Vec<StreamClick>,
    /// Some or all of the entry could not be read: what could not is acknowledged and dropped
    /// with the rest, never retried forever.
    pub malformed: bool,
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

    /// Streams of partitions at or above the configured count that hold entries, with their
    /// lengths: what a count lowered while clicks were waiting left behind. Nothing reads them,
    /// so their clicks would never be stored.
    pub async fn stranded(&self) -> Result<Vec<(String, i64)>, RedisDown> {
        let cmds: Vec<(u16, redis::Cmd)> = (self.keys.partitions()
            ..kurz_common::config::MAX_PARTITIONS)
            .map(|p| {
                let mut cmd = redis::cmd("XLEN");
                cmd.arg(self.keys.clicks(p));
                (p, cmd)
            })
            .collect();
        let lengths = self.redis.query_parts(&cmds).await?;
        Ok(cmds
            .iter()
            .zip(lengths)
            .filter_map(|((p, _), len)| match len {
                Value::Int(n) if n > 0 => Some((self.keys.clicks(*p), n)),
                _ => None,
            })
            .collect())
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

    /// Deletes the entries of `partition` up to `head` that the group has delivered and no
    /// consumer holds pending: acknowledged, with their `XDEL` lost (a failover or a cut AOF
    /// that kept the `XACK` only). Nothing else would remove them, and every read's drain
    /// would wait its whole budget on them. At most [`CLAIM_COUNT`] per call; how many went.
    pub async fn delete_acknowledged(
        &self,
        partition: u16,
        head: &str,
    ) -> Result<usize, RedisDown> {
        let key = self.keys.clicks(partition);
        let groups: Value = self
            .redis
            .query(redis::cmd("XINFO").arg("GROUPS").arg(&key))
            .await?;
        let Some(delivered) = last_delivered(&groups, &self.group) else {
            return Ok(0);
        };
        let listed: Vec<(String, Value)> = self
            .redis
            .query(
                redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg(head)
                    .arg("COUNT")
                    .arg(CLAIM_COUNT),
            )
            .await?;
        let (Some((first, _)), Some((last, _))) = (listed.first(), listed.last()) else {
            return Ok(0);
        };
        let pending: Vec<(String, String, u64, u64)> = self
            .redis
            .query(
                redis::cmd("XPENDING")
                    .arg(&key)
                    .arg(&self.group)
                    .arg(first)
                    .arg(last)
                    .arg(CLAIM_COUNT),
            )
            .await?;
        // A full page of pending ids may leave out later ones (ids of entries deleted while
        // pending count too): only ids up to the page's last are known not to be pending.
        let known = match pending.last() {
            Some(last) if pending.len() >= CLAIM_COUNT => stream_id(&last.0),
            _ => delivered,
        };
        let orphans: Vec<&str> = listed
            .iter()
            .map(|(id, _)| id.as_str())
            .filter(|id| {
                let at = stream_id(id);
                at <= delivered && at <= known && !pending.iter().any(|p| p.0 == *id)
            })
            .collect();
        if orphans.is_empty() {
            return Ok(0);
        }
        let _: i64 = self
            .redis
            .query(redis::cmd("XDEL").arg(&key).arg(&orphans))
            .await?;
        Ok(orphans.len())
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
        let replies = self.redis.pipeline_parts_each(&conn, &cmds).await;
        let mut entries = Vec::new();
        let (mut failed, mut lost) = (None, false);
        for (partition, reply) in replies.into_iter().enumerate() {
            match reply {
                Ok(reply) => read_reply_entries(partition as u16, reply, &mut entries)
                    .map_err(|e| RedisDown(format!("unexpected XREADGROUP reply: {e}")))?,
                // On a cluster, a master that fails or hangs holds up only its own partitions
                // until its failover: the entries the others handed over are stored now, not
                // left pending for a claim (`clicks.claim_idle_ms`) because one read failed.
                // A master that came back empty: its loss is counted and reported by the
                // caller (`GroupLost`), even if it means reading the others' entries again
                // after `clicks.claim_idle_ms`.
                Err(e) if no_group(&e) => lost = true,
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if lost {
            self.groups_ready.store(false, Ordering::Release);
            return Err(ReadError::GroupLost);
        }
        // One read failed once, however many partitions its failure spans: counted once.
        match failed.map(|e| self.redis.failed(e)) {
            Some(e) if entries.is_empty() => Err(e.into()),
            _ => Ok(entries),
        }
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
            Err(e) if no_group(&e) => {
                self.groups_ready.store(false, Ordering::Release);
                Err(ReadError::GroupLost)
            }
            Err(e) => Err(self.redis.failed(e).into()),
        }
    }
}

/// The consumer group is missing. A pipeline reports per-command failures in one error, so
/// its text is looked at too.
fn no_group(e: &redis::RedisError) -> bool {
    e.code() == Some("NOGROUP") || e.to_string().contains("NOGROUP")
}

fn parse_entry(partition: u16, sid: StreamId) -> Entry {
    let fields: Vec<(&str, &[u8])> = sid
        .map
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), bytes(v)?)))
        .collect();
    Entry::new(partition, sid.id, fields)
}

impl Entry {
    fn new(partition: u16, id: String, fields: Vec<(&str, &[u8])>) -> Self {
        let read = EntryClicks::from_fields(fields);
        Entry {
            partition,
            clicks: read
                .clicks
                .iter()
                .map(|c| StreamClick::from_click(c, partition, &id))
                .collect(),
            malformed: read.malformed,
            id,
        }
    }
}

/// A field's value; stream values are always strings, anything else is skipped.
fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// An entry id as text.
fn text(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b)),
        Value::SimpleString(s) => Some(Cow::Borrowed(s)),
        _ => None,
    }
}

/// Appends the entries of one key's `XREADGROUP` reply to `out`, walking the reply in place
/// (the crate's typed reply builds a map per entry and copies every value: a fifth of the
/// consumer's CPU). RESP2 answers `[[key, [[id, [field, value, …]], …]]]` or nil; RESP3 a map
/// from key to the same entry list. An entry whose fields are nil (deleted while pending) is
/// kept as malformed, so it is acknowledged and dropped.
fn read_reply_entries(partition: u16, reply: Value, out: &mut Vec<Entry>) -> Result<(), String> {
    let lists: Vec<Value> = match reply {
        Value::Nil => return Ok(()),
        Value::Array(streams) => streams
            .into_iter()
            .map(|s| match s {
                Value::Array(mut kv) if kv.len() == 2 => Ok(kv.pop().expect("two items")),
                other => Err(format!("stream item {other:?}")),
            })
            .collect::<Result<_, _>>()?,
        Value::Map(streams) => streams.into_iter().map(|(_, v)| v).collect(),
        other => return Err(format!("reply {other:?}")),
    };
    for list in lists {
        let Value::Array(items) = list else {
            return Err(format!("entry list {list:?}"));
        };
        out.reserve(items.len());
        for item in items {
            let Value::Array(parts) = item else {
                return Err(format!("entry {item:?}"));
            };
            let mut parts = parts.into_iter();
            let id = match parts.next().as_ref().and_then(text) {
                Some(id) => id.into_owned(),
                None => return Err("entry without an id".into()),
            };
            let fields = match parts.next() {
                Some(Value::Array(fields)) => fields,
                Some(Value::Map(pairs)) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
                _ => Vec::new(),
            };
            let pairs = fields
                .chunks_exact(2)
                .filter_map(|kv| Some((text_str(&kv[0])?, bytes(&kv[1])?)))
                .collect();
            out.push(Entry::new(partition, id, pairs));
        }
    }
    Ok(())
}

/// A field name: one of the click's known names, so anything not valid UTF-8 is unknown.
fn text_str(v: &Value) -> Option<&str> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok(),
        Value::SimpleString(s) => Some(s),
        _ => None,
    }
}

/// A stream id's two parts, ordered as Redis orders them (`0-0` for what does not parse).
fn stream_id(id: &str) -> (u64, u64) {
    id.split_once('-')
        .and_then(|(ms, seq)| Some((ms.parse().ok()?, seq.parse().ok()?)))
        .unwrap_or((0, 0))
}

/// The group's `last-delivered-id` in an `XINFO GROUPS` reply.
fn last_delivered(reply: &Value, group: &str) -> Option<(u64, u64)> {
    let Value::Array(groups) = reply else {
        return None;
    };
    groups.iter().find_map(|g| {
        let fields: Vec<(String, Value)> = match g {
            Value::Array(flat) => flat
                .chunks(2)
                .filter_map(|kv| {
                    Some((
                        redis::from_redis_value(kv.first()?.clone()).ok()?,
                        kv.get(1)?.clone(),
                    ))
                })
                .collect(),
            Value::Map(pairs) => pairs
                .iter()
                .filter_map(|(k, v)| Some((redis::from_redis_value(k.clone()).ok()?, v.clone())))
                .collect(),
            _ => return None,
        };
        let field = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| redis::from_redis_value::<String>(v.clone()).ok())
        };
        (field("name")? == group).then(|| field("last-delivered-id").map(|id| stream_id(&id)))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn fields(id: &str) -> Vec<Value> {
        [
            ("id", id),
            ("url_id", "7"),
            ("code", "abc"),
            ("user_agent", "curl/8"),
            ("ts_ms", "1700000000000"),
        ]
        .iter()
        .flat_map(|(k, v)| [bulk(k), bulk(v)])
        .collect()
    }

    fn entry(sid: &str, fields: Value) -> Value {
        Value::Array(vec![bulk(sid), fields])
    }

    #[test]
    fn a_resp2_read_reply_becomes_rows_and_a_deleted_entry_is_malformed() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("kurz:{p3}:clicks"),
            Value::Array(vec![
                entry("1-0", Value::Array(fields("click-a"))),
                entry("2-0", Value::Nil),
            ]),
        ])]);
        let mut out = Vec::new();
        read_reply_entries(3, reply, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].partition, out[0].id.as_str()), (3, "1-0"));
        assert_eq!(out[0].clicks.len(), 1);
        let row = &out[0].clicks[0];
        assert_eq!((row.click_id.as_str(), row.url_id), ("click-a", 7));
        assert_eq!(row.ts.timestamp_millis(), 1_700_000_000_000);
        assert!(out[1].malformed, "fields gone: dropped, not retried");
        assert!(out[1].clicks.is_empty());
    }

    #[test]
    fn a_packed_entry_becomes_one_row_per_click() {
        let click = |id: &str| kurz_common::clicks::Click {
            id: id.into(),
            url_id: 7,
            user_id: None,
            code: "abc".into(),
            target: "https://example.com/".into(),
            referrer: String::new(),
            user_agent: "curl/8".into(),
            ip: String::new(),
            ts_ms: 1_700_000_000_000,
            visitor: String::new(),
        };
        let mut packed = Vec::new();
        click("x1").pack_into(&mut packed);
        click("x2").pack_into(&mut packed);
        let fields = vec![
            bulk(kurz_common::clicks::PACKED_FIELD),
            Value::BulkString(packed),
        ];
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("k"),
            Value::Array(vec![entry("3-0", Value::Array(fields))]),
        ])]);
        let mut out = Vec::new();
        read_reply_entries(1, reply, &mut out).unwrap();
        assert_eq!(out.len(), 1, "one entry");
        assert!(!out[0].malformed);
        let ids: Vec<&str> = out[0].clicks.iter().map(|r| r.click_id.as_str()).collect();
        assert_eq!(ids, ["x1", "x2"]);
    }

    #[test]
    fn a_resp3_map_reply_and_an_empty_read_are_understood() {
        let reply = Value::Map(vec![(
            bulk("kurz:{p0}:clicks"),
            Value::Array(vec![entry("5-1", Value::Array(fields("click-b")))]),
        )]);
        let mut out = Vec::new();
        read_reply_entries(0, reply, &mut out).unwrap();
        read_reply_entries(1, Value::Nil, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].clicks[0].click_id, "click-b");
    }

    #[test]
    fn an_unexpected_reply_is_an_error_not_a_lost_batch() {
        let mut out = Vec::new();
        assert!(read_reply_entries(0, Value::Int(3), &mut out).is_err());
        let no_id = Value::Array(vec![Value::Array(vec![
            bulk("k"),
            Value::Array(vec![Value::Array(vec![Value::Nil])]),
        ])]);
        assert!(read_reply_entries(0, no_id, &mut out).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn a_row_keeps_the_entry_position_as_id_when_the_click_has_none() {
        let mut f = fields("x");
        f.drain(0..2);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("k"),
            Value::Array(vec![entry("9-2", Value::Array(f))]),
        ])]);
        let mut out = Vec::new();
        read_reply_entries(4, reply, &mut out).unwrap();
        assert_eq!(out[0].clicks[0].click_id, "p4-9-2");
    }
}
