//! The hot path: `GET /<code>` answered at the edge from the near-cache or Redis, with the click
//! appended to the same stream the API consumes, in one Redis round trip at most.

use crate::click_log::ClickLog;
use crate::key_check::KeyGate;
use crate::metrics::HOT;
use crate::near_cache::NearCache;
use kurz_common::clicks::{Click, FIELDS};
use kurz_common::keys::{CachedLink, KeySchema, LinkEntry, Verdict};
use kurz_common::redis_handle::RedisHandle;
use std::sync::Arc;

/// Looks the link up and, when it redirects and `ARGV[1]` is `1`, appends the click: one round
/// trip, atomic, and cluster-safe because both keys share the `{p<N>}` hash tag. The entry
/// format is `kurz_common::keys::CachedLink`; the expiry check uses the edge's clock (`ARGV[2]`)
/// so the script and the edge agree on whether the click happened. `ARGV[3..]` are the click's
/// values in `clicks::FIELDS` order; the XADD line is generated from that list
/// ([`lookup_and_record_script`]), taking the link's own fields from the cached entry.
const LOOKUP_AND_RECORD: &str = r#"
local v = redis.call('GET', KEYS[1])
if (not v) or ARGV[1] ~= '1' then return v end
local _, e, url_id, user_id, active, exp = string.find(v, '^__VERSION__|(%d+)|(%d*)|([01])|(%d*)|%d+|')
if not e or active ~= '1' then return v end
if exp ~= '' and tonumber(exp) <= tonumber(ARGV[2]) then return v end
redis.call('XADD', KEYS[2], '*', __FIELDS__)
return v
"#;

/// The script with its XADD arguments derived from [`FIELDS`]: a field added to the click
/// without a value here stops the edge at start-up (and fails the unit tests), instead of
/// writing entries the consumer cannot read.
fn lookup_and_record_script() -> String {
    let pairs: Vec<String> = FIELDS
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let value = match *field {
                // The link's own fields come from the entry the script just read.
                "url_id" => "url_id".to_owned(),
                "user_id" => "user_id".to_owned(),
                "target" => "string.sub(v, e + 1)".to_owned(),
                "id" | "code" | "referrer" | "user_agent" | "ip" | "ts_ms" => {
                    format!("ARGV[{}]", i + 3)
                }
                other => panic!("click field {other:?} has no value in the edge's Lua script"),
            };
            format!("'{field}', {value}")
        })
        .collect();
    LOOKUP_AND_RECORD
        .replace("__FIELDS__", &pairs.join(", "))
        .replace("__VERSION__", kurz_common::keys::ENTRY_VERSION)
}

/// The answer for an entry that must not redirect at `now` (404 or 410), `None` for one that
/// redirects.
fn refusal(entry: &CachedLink, now: i64) -> Option<Outcome> {
    match entry {
        CachedLink::Missing => Some(Outcome::NotFound),
        CachedLink::Found(link) => match link.verdict_at(now) {
            Verdict::Redirect(_) => None,
            Verdict::NotFound => Some(Outcome::NotFound),
            Verdict::Gone => Some(Outcome::Gone),
        },
    }
}

/// What the edge does with a redirect request.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// A redirect to this target with this status (the click, if wanted, is recorded).
    Redirect(String, u16),
    /// 404: unknown, inactive or deleted.
    NotFound,
    /// 410: expired.
    Gone,
    /// Not answerable here (Redis miss or Redis down): the API answers and records the click.
    Forward,
}

pub struct Redirector {
    pub redis: Arc<RedisHandle>,
    pub keys: KeySchema,
    pub near: Arc<NearCache>,
    /// Open once the API's key schema is known to match ours (`key_check`).
    pub gate: Arc<KeyGate>,
    /// Near-cache hits append through it, batched with their neighbours.
    clicks: ClickLog,
    script: redis::Script,
}

impl Redirector {
    pub fn new(
        redis: Arc<RedisHandle>,
        keys: KeySchema,
        near: Arc<NearCache>,
        gate: Arc<KeyGate>,
        clicks: ClickLog,
    ) -> Self {
        Self {
            redis,
            keys,
            near,
            gate,
            clicks,
            script: redis::Script::new(&lookup_and_record_script()),
        }
    }

    /// `click` is `None` when no click should be recorded (HEAD, or sampled out).
    pub async fn resolve(&self, code: &str, click: Option<Click>) -> Outcome {
        let now = chrono::Utc::now().timestamp();
        let hot = &*HOT;
        if !self.gate.open() {
            hot.redis_schema_mismatch.inc();
            return Outcome::Forward;
        }
        if let Some(entry) = self.near.get(code) {
            return match refusal(&entry, now) {
                None => {
                    hot.near_hit.inc();
                    let CachedLink::Found(link) = entry else {
                        unreachable!("only a found link is not refused")
                    };
                    self.append(link, click).await
                }
                Some(refused) => {
                    hot.near_negative.inc();
                    refused
                }
            };
        }
        hot.near_miss.inc();
        let epoch = self.near.epoch(code);
        // With `redis.replica_acks`, a click must also be confirmed by replicas (`WAIT` after
        // the append, in the same pipeline): the script only looks up, and the click goes
        // through the batched append that waits.
        let durable = self.redis.waits_for_replicas();
        let recorded = click.is_some() && !durable;
        let in_script = if durable { None } else { click.as_ref() };
        let raw = match self.lookup_and_record(code, in_script, now).await {
            Ok(raw) => raw,
            Err(()) => {
                hot.redis_error.inc();
                return Outcome::Forward;
            }
        };
        let Some(entry) = raw.as_deref().and_then(CachedLink::decode) else {
            hot.redis_miss.inc();
            return Outcome::Forward;
        };
        self.near.fill(code, entry.clone(), epoch);
        if let Some(refused) = refusal(&entry, now) {
            hot.redis_negative.inc();
            return refused;
        }
        let CachedLink::Found(link) = entry else {
            unreachable!("only a found link is not refused")
        };
        hot.redis_hit.inc();
        if durable {
            return self.append(link, click).await;
        }
        if recorded {
            HOT.clicks_ok.inc();
        }
        Outcome::Redirect(link.target, link.redirect_type)
    }

    async fn lookup_and_record(
        &self,
        code: &str,
        click: Option<&Click>,
        now: i64,
    ) -> Result<Option<String>, ()> {
        let mut conn = self.redis.conn().await.map_err(|_| ())?;
        let mut inv = self.script.key(self.keys.link(code));
        inv.key(self.keys.clicks_for(code));
        match click {
            Some(c) => {
                inv.arg("1").arg(now);
                for value in c.values() {
                    inv.arg(value);
                }
            }
            None => {
                inv.arg("0").arg(now);
            }
        };
        inv.invoke_async(&mut conn).await.map_err(|e| {
            self.redis.failed(e);
        })
    }

    /// A near-cache hit still needs its click in the stream; if that fails the API takes the
    /// request, so the click is recorded exactly once, by the API.
    async fn append(&self, link: LinkEntry, click: Option<Click>) -> Outcome {
        let status = link.redirect_type;
        let Some(mut click) = click else {
            return Outcome::Redirect(link.target, status);
        };
        click.url_id = link.url_id;
        click.user_id = link.user_id;
        click.target = link.target;
        if self
            .clicks
            .append(&self.keys.clicks_for(&click.code), &click)
            .await
        {
            HOT.clicks_ok.inc();
            Outcome::Redirect(click.target, status)
        } else {
            HOT.clicks_failed.inc();
            Outcome::Forward
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The generated script appends exactly the click's fields, in their order.
    #[test]
    fn the_script_appends_every_field_of_a_click() {
        let script = lookup_and_record_script();
        let start = script.find("'XADD'").unwrap();
        let end = start + script[start..].find("\nreturn").unwrap();
        // Every single-quoted word of the XADD call: the command, the id, then field names.
        let names: Vec<&str> = script[start..end]
            .split('\'')
            .skip(1)
            .step_by(2)
            .filter(|t| !matches!(*t, "XADD" | "*"))
            .collect();
        assert_eq!(names, FIELDS);
        assert!(!script.contains("__FIELDS__"));
    }

    /// The two ways a click reaches the stream — the script on a Redis hit, Rust's `XADD` on a
    /// near-cache hit — write the same entry, and it decodes to the click the edge meant: the
    /// script's parse of the cached entry (`CachedLink::encode`) cannot drift from Rust's either.
    /// Against the test Redis, under a key prefix of its own.
    #[tokio::test]
    async fn both_append_paths_store_the_same_click() {
        let url = std::env::var("KURZ_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into());
        let errors = prometheus::IntCounter::new("test_redis_errors", "test").unwrap();
        let redis =
            Arc::new(RedisHandle::new(&url, std::time::Duration::from_secs(5), errors).unwrap());
        let keys = KeySchema::new(&format!("t{:016x}", rand::random::<u64>()), 4);
        let near = Arc::new(NearCache::new(100, std::time::Duration::from_secs(600)));
        near.set_enabled(true);
        let gate = Arc::new(KeyGate::default());
        gate.set(true);
        let sizes =
            prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t")).unwrap();
        let batching = crate::click_log::Batching {
            window: std::time::Duration::ZERO,
            max: 64,
        };
        let clicks = ClickLog::new(redis.clone(), batching, sizes);
        let r = Redirector::new(redis.clone(), keys.clone(), near, gate, clicks);
        let mut used = Vec::new();
        for (user_id, target, status) in [
            (Some(42), "https://example.com/a%7Cb|c?q=x#f", 307),
            (None, "https://xn--caf-dma.example/", 302),
        ] {
            let code = format!("c{:08x}", rand::random::<u32>());
            let entry = LinkEntry {
                url_id: 7,
                user_id,
                active: true,
                expires_at: Some(4_000_000_000),
                redirect_type: status,
                target: target.into(),
            };
            let mut set = redis::cmd("SET");
            set.arg(keys.link(&code))
                .arg(CachedLink::Found(entry).encode());
            redis.query::<()>(&set).await.unwrap();
            used.push(keys.link(&code));
            used.push(keys.clicks_for(&code));
            let click = |id: &str| Click {
                id: id.into(),
                url_id: 0,
                user_id: None,
                code: code.clone(),
                target: String::new(),
                referrer: "https://news.example/a b".into(),
                user_agent: "UA/1.0 \"quoted\" ü".into(),
                ip: "192.0.2.0".into(),
                ts_ms: 1_700_000_000_123,
            };
            let redirect = Outcome::Redirect(target.into(), status);
            // A Redis hit: the script appends. Then the near-cache holds the link: Rust appends.
            assert_eq!(r.resolve(&code, Some(click("by-script"))).await, redirect);
            assert_eq!(r.resolve(&code, Some(click("by-rust"))).await, redirect);
            let mut range = redis::cmd("XRANGE");
            range.arg(keys.clicks_for(&code)).arg("-").arg("+");
            let entries: Vec<(String, Vec<(String, String)>)> = redis.query(&range).await.unwrap();
            // Both codes may share a partition's stream: keep this code's entries.
            let entries: Vec<_> = entries
                .into_iter()
                .filter(|(_, f)| f.iter().any(|(k, v)| k == "code" && *v == code))
                .collect();
            let stored: Vec<Click> = entries
                .iter()
                .map(|(_, f)| {
                    Click::from_fields(f.iter().map(|(k, v)| (k.as_str(), v.as_str()))).unwrap()
                })
                .collect();
            let meant = |id: &str| Click {
                url_id: 7,
                user_id,
                target: target.into(),
                ..click(id)
            };
            assert_eq!(stored, vec![meant("by-script"), meant("by-rust")]);
            let names = |i: usize| {
                entries[i]
                    .1
                    .iter()
                    .map(|(k, _)| k.clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(names(0), names(1), "same fields in the same order");
        }
        let mut del = redis::cmd("DEL");
        del.arg(&used);
        redis.query::<()>(&del).await.unwrap();
    }
}
