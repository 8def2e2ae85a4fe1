//! The hot path: `GET /<code>` answered at the edge from the near-cache or Redis, with the click
//! appended to the same stream the API consumes, in one Redis round trip at most.
//!
//! A Redis lookup runs the visit script (`kurz_common::visit`), which also appends the click
//! and counts the visit of a link with `max_visits`. Such links never enter the near-cache:
//! every visit must pass through that script, where two racing visitors cannot both get the
//! last visit. Nor do password-protected links, which the edge always forwards: the API asks
//! for the password.

use crate::click_log::ClickLog;
use crate::key_check::KeyGate;
use crate::metrics::HOT;
use crate::near_cache::NearCache;
use kurz_common::clicks::Click;
use kurz_common::keys::{CachedLink, KeySchema, LinkEntry, Verdict};
use kurz_common::redis_handle::RedisHandle;
use kurz_common::visit::{self, Record, Reply};
use std::sync::Arc;

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
    /// 410: its `max_visits` are used up.
    Exhausted,
    /// Not answerable here (Redis miss or Redis down): the API answers and records the click.
    Forward,
}

pub struct Redirector {
    pub redis: Arc<RedisHandle>,
    /// Private: `streams` is derived from it.
    keys: KeySchema,
    pub near: Arc<NearCache>,
    /// Open once the API's key schema is known to match ours (`key_check`).
    pub gate: Arc<KeyGate>,
    /// Near-cache hits append through it, batched with their neighbours.
    clicks: ClickLog,
    /// The click stream of each partition, named once: formatting the name per click was ~1%
    /// of the edge's CPU on the redirect path (perf).
    streams: Vec<String>,
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
            streams: keys.all_clicks(),
            keys,
            near,
            gate,
            clicks,
            script: visit::script(),
        }
    }

    /// `click` is `None` for a HEAD (answered, never counted). `sampled` says whether a GET's
    /// click is recorded (`clicks.sample_rate`); a limited link records every GET regardless,
    /// since its limit counts visits. A visit run through the script gets an id in `visit_id`,
    /// which a forward passes on (`kurz_common::visit::VISIT_ID_HEADER`).
    pub async fn resolve(
        &self,
        code: &str,
        click: Option<Click>,
        sampled: bool,
        visit_id: &mut Option<String>,
    ) -> Outcome {
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
                    self.append(link, click.filter(|_| sampled)).await
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
        let record = match (&click, durable, sampled) {
            (None, _, _) | (Some(_), true, _) => Record::Nothing,
            (Some(_), false, true) => Record::Click,
            (Some(_), false, false) => Record::IfLimited,
        };
        // Every GET gets an id, `Record::Nothing` under `redis.replica_acks` included: the API
        // counts a forwarded visit under it, so a retry on another API counts it once.
        if click.is_some() {
            *visit_id = Some(kurz_common::clicks::new_id());
        }
        let raw = match self
            .visit(
                code,
                record,
                click.as_ref(),
                now,
                visit_id.as_deref().map(visit::VisitMark::Set),
            )
            .await
        {
            Ok(raw) => raw,
            Err(()) => {
                hot.redis_error.inc();
                return Outcome::Forward;
            }
        };
        let entry = match Reply::from_raw(raw.as_deref()) {
            Reply::Entry(entry) => entry,
            // The API seeds the counter (from PostgreSQL) and counts this visit.
            Reply::Miss | Reply::Unseeded => {
                hot.redis_miss.inc();
                return Outcome::Forward;
            }
            Reply::Exhausted => {
                hot.redis_negative.inc();
                return Outcome::Exhausted;
            }
        };
        let limited = matches!(&entry, CachedLink::Found(l) if l.max_visits.is_some());
        let protected = matches!(&entry, CachedLink::Found(l) if l.protected);
        if !limited && !protected {
            self.near.fill(code, entry.clone(), epoch);
        }
        if let Some(refused) = refusal(&entry, now) {
            hot.redis_negative.inc();
            return refused;
        }
        let CachedLink::Found(link) = entry else {
            unreachable!("only a found link is not refused")
        };
        if protected {
            // The API shows the password form; the script recorded nothing.
            return Outcome::Forward;
        }
        hot.redis_hit.inc();
        if durable {
            if limited && click.is_some() {
                // Counting needs the script, and the WAIT after it: the API does both.
                return Outcome::Forward;
            }
            return self.append(link, click.filter(|_| sampled)).await;
        }
        if record == Record::Click || (record == Record::IfLimited && limited) {
            HOT.clicks_ok.inc();
        }
        Outcome::Redirect(link.target, link.redirect_type)
    }

    async fn visit(
        &self,
        code: &str,
        record: Record,
        click: Option<&Click>,
        now: i64,
        mark: Option<visit::VisitMark<'_>>,
    ) -> Result<Option<String>, ()> {
        let mut conn = self.redis.conn().await.map_err(|_| ())?;
        visit::invocation(&self.script, &self.keys, code, record, now, click, mark)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| {
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
        let stream = &self.streams[usize::from(self.keys.partition(&click.code))];
        if self.clicks.append(stream, &click).await {
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
    use kurz_common::clicks::{EntryClicks, FIELDS};

    /// The two ways a click reaches the stream — the script's flat entry on a Redis hit, Rust's
    /// packed entry on a near-cache hit — decode to the click the edge meant, and the script's
    /// fields are `clicks::FIELDS`, in order: the
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
        let clicks = ClickLog::new(vec![redis.clone()], batching, sizes);
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
                max_visits: None,
                protected: false,
                target: target.into(),
            };
            let mut set = redis::cmd("SET");
            set.arg(keys.link(&code))
                .arg(CachedLink::Found(entry).encode(1));
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
                visitor: "00ff00ff00ff00ff".into(),
            };
            let redirect = Outcome::Redirect(target.into(), status);
            // A Redis hit: the script appends. Then the near-cache holds the link: Rust appends.
            let by_script = r
                .resolve(&code, Some(click("by-script")), true, &mut None)
                .await;
            assert_eq!(by_script, redirect);
            let by_rust = r
                .resolve(&code, Some(click("by-rust")), true, &mut None)
                .await;
            assert_eq!(by_rust, redirect);
            let mut range = redis::cmd("XRANGE");
            range.arg(keys.clicks_for(&code)).arg("-").arg("+");
            type Fields = Vec<(String, Vec<u8>)>;
            let entries: Vec<(String, Fields)> = redis.query(&range).await.unwrap();
            let read: Vec<EntryClicks> = entries
                .iter()
                .map(|(_, f)| EntryClicks::from_fields(f.iter().map(|(k, v)| (k.as_str(), &v[..]))))
                .collect();
            assert!(read.iter().all(|e| !e.malformed));
            // Both codes may share a partition's stream: keep this code's clicks.
            let stored: Vec<Click> = read
                .into_iter()
                .flat_map(|e| e.clicks)
                .filter(|c| c.code == code)
                .collect();
            let meant = |id: &str| Click {
                url_id: 7,
                user_id,
                target: target.into(),
                ..click(id)
            };
            assert_eq!(stored, vec![meant("by-script"), meant("by-rust")]);
            // The script writes a flat entry whose fields are the Rust definition's, in order.
            let script_fields: Vec<Vec<&str>> = entries
                .iter()
                .map(|(_, f)| f.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
                .filter(|names| names.len() > 1)
                .collect();
            assert!(!script_fields.is_empty());
            assert!(script_fields.iter().all(|names| names[..] == FIELDS[..]));
        }
        let mut del = redis::cmd("DEL");
        del.arg(&used);
        redis.query::<()>(&del).await.unwrap();
    }
}
