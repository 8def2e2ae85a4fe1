//! Clicks: recorded at redirect time into the Redis click stream, drained into `events` by a
//! consumer group (see [`consumer`]).
//!
//! Why a stream and not an INSERT per click: the redirect stays one Redis round trip, PostgreSQL
//! gets batched inserts, and clicks survive a PostgreSQL outage in the stream. Read-your-writes
//! holds because every read of events drains the streams first.

pub mod agent;
pub mod consumer;
pub mod drain;
pub mod stream;

use crate::db::events::{ClickColumns, StreamClick};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::redis_handle::{RedisDown, RedisHandle};
use deadpool_postgres::GenericClient;
use deadpool_postgres::Pool;
use kurz_common::clicks::Click;
use kurz_common::keys::{CachedLink, KeySchema, LinkEntry, Verdict};
use kurz_common::visit::{self, Record, Reply};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// What `events` stores of a click, with what its user agent says (`agent`).
pub fn click_columns(click: &Click) -> ClickColumns {
    let agent = agent::classify(&click.user_agent);
    // Empty means absent in the stream's entry: no visitor id, or `privacy.store_ip: none`.
    let present = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    ClickColumns {
        code: click.code.clone(),
        target: click.target.clone(),
        referrer: click.referrer.clone(),
        user_agent: click.user_agent.clone(),
        is_bot: agent.is_bot,
        browser: agent.browser,
        os: agent.os,
        device: agent.device.to_owned(),
        visitor: present(&click.visitor),
        ip: present(&click.ip),
    }
}

impl StreamClick {
    /// The row of a click read from entry `id` of `partition`'s stream.
    pub fn from_click(click: &Click, partition: u16, id: &str) -> Self {
        StreamClick {
            // Entries from before click ids existed: their stream position is as stable.
            click_id: if click.id.is_empty() {
                format!("p{partition}-{id}")
            } else {
                click.id.clone()
            },
            url_id: click.url_id,
            ts: chrono::DateTime::from_timestamp_millis(click.ts_ms)
                .unwrap_or_else(chrono::Utc::now),
            fields: click_columns(click),
        }
    }
}

/// What a visit of a link with `max_visits` got.
#[derive(Debug, PartialEq)]
pub enum LimitedVisit {
    /// Counted (and its click recorded, for a GET): redirect.
    Allowed,
    /// Its visits are used up: 410.
    Exhausted,
    /// A write changed the link since it was read: answer this instead.
    Changed(Verdict),
    /// A password was set on the link since it was read: nothing was counted; ask for it.
    Protected,
}

#[derive(Clone)]
pub struct ClickRecorder {
    redis: Arc<RedisHandle>,
    db: Pool,
    keys: KeySchema,
    sample_rate: f64,
    metrics: Arc<Metrics>,
    visit: Arc<redis::Script>,
}

impl ClickRecorder {
    pub fn new(
        redis: Arc<RedisHandle>,
        db: Pool,
        keys: KeySchema,
        sample_rate: f64,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            redis,
            db,
            keys,
            sample_rate,
            metrics,
            visit: Arc::new(visit::script()),
        }
    }

    /// A visit of a link with a visit limit (`link.max_visits`): counted and, for a GET
    /// (`click` given), recorded in one step by the visit script, whatever `clicks.sample_rate`
    /// says. A missing counter is seeded from the clicks PostgreSQL has stored. With Redis down,
    /// PostgreSQL decides under the link's row lock, counting the clicks it has stored (clicks
    /// still queued in Redis are not among them: docs/API.md says so).
    /// `visit_id` is the id an edge ran this visit under before it forwarded the request
    /// (`kurz_common::visit`): a visit the edge's script already counted is not counted again.
    pub async fn limited_visit(
        &self,
        cache: &crate::cache::LinkCache,
        code: &str,
        link: &LinkEntry,
        click: Option<Click>,
        visit_id: Option<&str>,
    ) -> Result<LimitedVisit, ApiError> {
        let max = link.max_visits.unwrap_or(i64::MAX);
        let now = chrono::Utc::now().timestamp();
        // Only the API answers a protected link, past its password: its visit counts here.
        let record = match (&click, link.protected) {
            (None, _) => Record::Nothing,
            (Some(_), true) => Record::Unlocked,
            (Some(_), false) => Record::Click,
        };
        for attempt in 0..2 {
            let inv = visit::invocation(
                &self.visit,
                &self.keys,
                code,
                record,
                now,
                click.as_ref(),
                visit_id.map(visit::VisitMark::Take),
            );
            let reply = self
                .run_visit(&inv, click.is_some())
                .await
                .map(|(raw, confirmed)| (Reply::from_raw(raw.as_deref()), confirmed));
            // The script found no entry, or no counter, and counted nothing: what follows (a
            // fill, a seed, PostgreSQL) may be abandoned at the deadline again.
            if let Ok((Reply::Miss | Reply::Unseeded, _)) = &reply {
                crate::deadline::reopen();
            }
            match reply {
                Ok((Reply::Exhausted, _)) => return Ok(LimitedVisit::Exhausted),
                Ok((Reply::Entry(CachedLink::Found(now_cached)), confirmed)) => {
                    // (A link that lost its limit since: the script recorded it like any click.)
                    if let refused @ (Verdict::NotFound | Verdict::Gone) =
                        now_cached.verdict_at(now)
                    {
                        return Ok(LimitedVisit::Changed(refused));
                    }
                    // The script counts a protected link's visit only once its password was
                    // checked: this one it only looked up.
                    if now_cached.protected && record != Record::Unlocked {
                        return Ok(LimitedVisit::Protected);
                    }
                    if let Some(click) = &click {
                        if confirmed {
                            self.metrics.clicks.with_label_values(&["stream"]).inc();
                        } else {
                            // The script's count is no better confirmed than the click: a
                            // replica promoted without it would let this visit through again.
                            // Queued, the link's next publish raises the counter to the stored
                            // clicks, this one included.
                            self.direct_or_lost(click, true).await;
                        }
                    }
                    return Ok(LimitedVisit::Allowed);
                }
                Ok((Reply::Entry(CachedLink::Missing), _)) => {
                    return Ok(LimitedVisit::Changed(Verdict::NotFound))
                }
                Ok((Reply::Unseeded, _)) if attempt == 0 => {
                    // The connection goes back before Redis is waited on.
                    let stored = {
                        let client = self.db.get().await?;
                        crate::db::stats::total_clicks(&client, link.url_id).await?
                    };
                    if self
                        .redis
                        .query::<Option<String>>(&visit::seed(&self.keys, code, stored))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                // Redis answers and holds no entry: the fill after the lookup was refused (a
                // write elsewhere in the code's partition moved its generation), or the entry
                // expired since. PostgreSQL alone would count only the clicks it has stored,
                // not those still in the stream, and let visits past the limit: the entry is
                // filled again (as a lookup's miss is: no generation moved, no edge told) and
                // the script runs once more.
                Ok((Reply::Miss, _)) if attempt == 0 => {
                    let seen = match cache.lookup(code).await {
                        Ok(crate::cache::Lookup::Miss(seen)) => seen,
                        // Filled meanwhile: the script reads it.
                        Ok(crate::cache::Lookup::Hit(_)) => continue,
                        Err(_) => break,
                    };
                    let client = self.db.get().await?;
                    let row = crate::db::urls::find_url_by_code(&client, code).await?;
                    drop(client);
                    // Gone, or the code moved to another link (an import) since the lookup.
                    let Some(row) = row.filter(|r| r.id == link.url_id) else {
                        return Ok(LimitedVisit::Changed(Verdict::NotFound));
                    };
                    if cache.fill(code, &row.cache_state(), &seen).await.is_err() {
                        break;
                    }
                }
                // Still no entry, or Redis down.
                _ => break,
            }
        }
        self.limited_visit_in_postgres(code, link, max, click.as_ref())
            .await
    }

    /// Runs the visit script. With `redis.replica_acks` and a click to record, the replicas'
    /// `WAIT` goes in the same pipeline: on a cluster a `WAIT` sent alone asks every master and
    /// keeps the smallest answer (one shard without its replica would fail every shard's
    /// visits), and after a reconnect it would ask about a connection that wrote nothing.
    /// Returns the script's reply and whether the replicas confirmed its writes (`true` when
    /// none are asked for).
    async fn run_visit(
        &self,
        inv: &redis::ScriptInvocation<'_>,
        records: bool,
    ) -> Result<(Option<String>, bool), RedisDown> {
        let redis = if records {
            self.redis.for_waits()
        } else {
            &self.redis
        };
        let mut conn = redis.conn().await?;
        // The script counts the visit and appends its click: from here on the request is
        // answered with its outcome however late (`crate::deadline`), or the visitor's retry of
        // a 503 would count and record the visit a second time. (Not before: with Redis
        // refusing, what follows is bounded by the request's deadline again. And never
        // refused: an abandoned request's work is dropped with its 503.)
        let _ = crate::deadline::committing();
        let wait = redis.replica_wait().filter(|_| records);
        let Some(wait) = wait else {
            return inv
                .invoke_async(&mut conn)
                .await
                .map(|reply| (reply, true))
                .map_err(|e| {
                    // Redis answered with an error: the script did not run, and what follows
                    // (PostgreSQL decides the visit) may be abandoned at the deadline again. A
                    // reply that never came is no such proof: the script may yet run.
                    if !kurz_common::redis_handle::is_transport(&e) {
                        crate::deadline::reopen();
                    }
                    redis.failed(e)
                });
        };
        let mut pipe = redis::pipe();
        pipe.invoke_script(inv).add_command(wait);
        let replies = match pipe.query_async(&mut conn).await {
            // Redis lost its scripts (a restart, a failover): load it and go again.
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                inv.load_async(&mut conn)
                    .await
                    .map_err(|e| redis.failed(e))?;
                pipe.query_async(&mut conn).await
            }
            other => other,
        };
        let (reply, acked): (Option<String>, redis::Value) =
            replies.map_err(|e| redis.failed(e))?;
        Ok((reply, redis.replicated(&acked)))
    }

    async fn limited_visit_in_postgres(
        &self,
        code: &str,
        link: &LinkEntry,
        max: i64,
        click: Option<&Click>,
    ) -> Result<LimitedVisit, ApiError> {
        let url_id = link.url_id;
        let mut client = self.db.get().await?;
        let tx = client.transaction().await?;
        // What changed since the visit read the link, as the script's answer would tell it: a
        // delete or a switch-off, an expiry, a password set (only a visit read as protected has
        // had its password checked).
        let lock = tx
            .prepare_cached(
                "SELECT deleted_at IS NULL AND is_active, \
                        coalesce(expires_at <= now(), false), password_hash IS NOT NULL \
                 FROM urls WHERE id = $1 FOR UPDATE",
            )
            .await?;
        let Some(row) = tx.query_opt(&lock, &[&url_id]).await? else {
            return Ok(LimitedVisit::Changed(Verdict::NotFound));
        };
        let (live, expired, protected): (bool, bool, bool) = (row.get(0), row.get(1), row.get(2));
        if !live {
            return Ok(LimitedVisit::Changed(Verdict::NotFound));
        }
        if expired {
            return Ok(LimitedVisit::Changed(Verdict::Gone));
        }
        if protected && !link.protected {
            return Ok(LimitedVisit::Protected);
        }
        if crate::db::stats::total_clicks(&tx, url_id).await? >= max {
            return Ok(LimitedVisit::Exhausted);
        }
        if let Some(click) = click {
            insert_click(&tx, click).await?;
            // Redis's counter (if it survived whatever sent this visit here) did not count it:
            // the outbox replay raises it to the stored clicks once Redis answers again.
            crate::db::outbox::enqueue(&tx, code).await?;
        }
        // The visit counts once committed: its request is answered with it, however late, or
        // a retry of the redirect would count a second visit against the limit.
        crate::deadline::commit(tx).await?;
        if click.is_some() {
            self.metrics.clicks.with_label_values(&["direct"]).inc();
        }
        Ok(LimitedVisit::Allowed)
    }

    /// Records one click before the redirect is answered: appended to its partition's stream,
    /// or inserted directly when Redis is down. A click neither can take is counted as lost; the
    /// redirect still answers, because a visitor must not pay for our bookkeeping. `drawn` is
    /// the sampling draw an edge made for it already (and counted, when out).
    pub async fn record(&self, click: Click, drawn: Option<bool>) {
        match drawn {
            Some(false) => return,
            Some(true) => {}
            None if self.sample_rate < 1.0 && rand::random::<f64>() >= self.sample_rate => {
                self.metrics
                    .clicks
                    .with_label_values(&["sampled_out"])
                    .inc();
                return;
            }
            None => {}
        }
        // From the append on, the request is answered with the click however late: a 503 for
        // a click that is stored (in the stream, or by the direct insert a lock held past the
        // deadline) would have the visitor's retry store a second one (`crate::deadline`).
        if crate::deadline::committing().is_err() {
            return;
        }
        let append = click.xadd(&self.keys.clicks_for(&click.code));
        let appended = match self.redis.replica_wait() {
            None => self.redis.query::<String>(&append).await.map(|_| true),
            Some(wait) => {
                let mut pipe = redis::pipe();
                pipe.add_command(append).add_command(wait);
                self.redis
                    .for_waits()
                    .query::<(String, redis::Value)>(&pipe)
                    .await
                    .map(|(_, acked)| self.redis.replicated(&acked))
            }
        };
        let why = match appended {
            Ok(true) => {
                self.metrics.clicks.with_label_values(&["stream"]).inc();
                return;
            }
            // In the stream, but a failover could still lose it: PostgreSQL gets it too, and the
            // consumer's insert of the stream copy finds its click id taken.
            Ok(false) => "click not confirmed by redis.replica_acks replicas".to_owned(),
            Err(down) => down.to_string(),
        };
        if let Some(since) = DIRECT_LINES.admit(unix_seconds()) {
            log::warn!(error = why, url_id = click.url_id, clicks_since_last_line = since; "click stream unavailable, inserting directly");
        }
        self.direct_or_lost(&click, false).await;
    }

    /// Stores `click` in PostgreSQL; with `queue_link`, also queues its link in `link_outbox`
    /// (in the same transaction) for a publish that raises its visit counter.
    async fn direct_or_lost(&self, click: &Click, queue_link: bool) {
        let inserted = match self.db.get().await {
            Ok(mut client) if queue_link => async {
                let tx = client.transaction().await?;
                insert_click(&tx, click).await?;
                crate::db::outbox::enqueue(&tx, &click.code).await?;
                tx.commit().await
            }
            .await
            .map_err(|e| e.to_string()),
            Ok(client) => insert_click(&client, click)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match inserted {
            Ok(()) => self.metrics.clicks.with_label_values(&["direct"]).inc(),
            Err(e) => {
                self.metrics.clicks.with_label_values(&["lost"]).inc();
                if let Some(since) = LOST_LINES.admit(unix_seconds()) {
                    log::error!(error = e, url_id = click.url_id, clicks_since_last_line = since; "click lost: redis and postgres both failed");
                }
            }
        }
    }
}

/// At most one log line a second for a kind of event every click may cause. In an outage
/// every click goes the direct way (or is lost), and a warning each was a synchronous write per
/// click on the request threads during the very incident; the metric counts every click, the
/// line says how many went since the one before.
struct Throttle {
    second: AtomicU64,
    since: AtomicU64,
}

static DIRECT_LINES: Throttle = Throttle::new();
static LOST_LINES: Throttle = Throttle::new();

impl Throttle {
    const fn new() -> Self {
        Self {
            second: AtomicU64::new(0),
            since: AtomicU64::new(0),
        }
    }

    /// Whether an event at `now` (seconds) gets a line: the first of its second does, with
    /// the events since the last line, itself included.
    fn admit(&self, now: u64) -> Option<u64> {
        let since = self.since.fetch_add(1, Ordering::Relaxed) + 1;
        if self.second.swap(now, Ordering::Relaxed) == now {
            return None;
        }
        self.since.fetch_sub(since, Ordering::Relaxed);
        Some(since)
    }
}

fn unix_seconds() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Stores one click in `events` (once: its id is unique there), in the columns the sink uses.
async fn insert_click(c: &impl GenericClient, click: &Click) -> Result<(), tokio_postgres::Error> {
    let ts = chrono::DateTime::from_timestamp_millis(click.ts_ms).unwrap_or_else(chrono::Utc::now);
    let f = click_columns(click);
    let stmt = c
        .prepare_cached(
            "INSERT INTO events (url_id, user_id, event_type, occurred_at, click_id, \
                                 code, target, referrer, user_agent, is_bot, browser, os, device, visitor, ip) \
             VALUES ($1, $2, 'click', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14) \
             ON CONFLICT (click_id) DO NOTHING",
        )
        .await?;
    c.execute(
        &stmt,
        &[
            &click.url_id,
            &click.user_id,
            &ts,
            &click.id,
            &f.code,
            &f.target,
            &f.referrer,
            &f.user_agent,
            &f.is_bot,
            &f.browser,
            &f.os,
            &f.device,
            &f.visitor,
            &f.ip,
        ],
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::Throttle;

    /// A thousand clicks in one second make one line; the next second's first makes the next,
    /// and says how many went between.
    #[test]
    fn a_click_outage_writes_a_line_a_second_counting_the_rest() {
        let throttle = Throttle::new();
        let lines: Vec<u64> = (0..1000).filter_map(|_| throttle.admit(100)).collect();
        assert_eq!(lines, [1]);
        assert_eq!(throttle.admit(100), None);
        assert_eq!(throttle.admit(101), Some(1001));
        assert_eq!(throttle.admit(101), None);
        assert_eq!(throttle.admit(105), Some(2));
    }
}
