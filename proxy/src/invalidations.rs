//! Listens on the API's invalidation channel and drops near-cache entries as links change.
//!
//! On a Redis Cluster a `PUBLISH` reaches the subscribers of every node, so one subscription to
//! any node is enough; when that node goes away the next attempt tries the next seed.
//!
//! A subscription sends nothing, so a connection whose peer went silent without closing it (a
//! moved address, a network partition, a node that stopped) would look like a quiet channel
//! forever while invalidations are missed. It is pinged every [`PING_EVERY`]; a ping unanswered
//! within [`ANSWER_WITHIN`] counts as a lost subscription, and the near-cache is off until a
//! new one is up.

use crate::metrics::METRICS;
use crate::near_cache::NearCache;
use async_trait::async_trait;
use futures_util::StreamExt;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;
use std::time::Duration;

/// How often the subscription is checked.
pub const PING_EVERY: Duration = Duration::from_secs(1);
/// How long a ping, or subscribing, may take before the connection counts as lost.
pub const ANSWER_WITHIN: Duration = Duration::from_secs(2);

pub struct InvalidationListener {
    /// The Redis, or the cluster's seed nodes, tried in turn.
    pub redis_urls: Vec<String>,
    pub attempts: std::sync::atomic::AtomicUsize,
    pub channel: String,
    pub near: Arc<NearCache>,
}

impl InvalidationListener {
    /// Listens until the subscription is lost; `was_up` says whether it was ever up.
    async fn listen(&self, was_up: &mut bool) -> Result<(), String> {
        let n = self
            .attempts
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let url = &self.redis_urls[n % self.redis_urls.len().max(1)];
        let client = redis::Client::open(url.as_str()).map_err(|e| e.to_string())?;
        // A silent server would hold the connection or the subscription forever.
        let subscribed = tokio::time::timeout(ANSWER_WITHIN, async {
            let (mut sink, stream) = client.get_async_pubsub().await?.split();
            sink.subscribe(&self.channel).await?;
            Ok::<_, redis::RedisError>((sink, stream))
        })
        .await
        .map_err(|_| "no answer while subscribing".to_owned())?;
        let (mut sink, mut messages) = subscribed.map_err(|e| e.to_string())?;
        // Messages may have been missed while not subscribed: start clean.
        self.near.set_enabled(true);
        *was_up = true;
        log::info!(channel = self.channel.as_str(); "listening for link invalidations");
        let mut pings = tokio::time::interval(PING_EVERY);
        pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        pings.tick().await;
        loop {
            tokio::select! {
                msg = messages.next() => {
                    let Some(msg) = msg else {
                        return Err("invalidation subscription closed".into());
                    };
                    let code: String = msg.get_payload().unwrap_or_default();
                    if code == "*" {
                        self.near.clear();
                    } else {
                        self.near.invalidate(&code);
                    }
                    // Counted once applied: a test (or an operator) that sees the count move
                    // knows the near-cache already dropped the code.
                    METRICS.invalidations.inc();
                }
                _ = pings.tick() => {
                    match tokio::time::timeout(ANSWER_WITHIN, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => return Err(format!("subscription ping failed: {e}")),
                        Err(_) => return Err("subscription ping unanswered".into()),
                    }
                }
            }
        }
    }
}

/// Whether a failed attempt is logged, given how long ago the last line of this outage was
/// (`None`: none yet): the first, then one a minute. Retried every half second, a Redis down
/// for an hour wrote 7,200 warnings per edge, each written synchronously on the way.
fn worth_a_line(since_last: Option<Duration>) -> bool {
    since_last.is_none_or(|d| d >= Duration::from_secs(60))
}

#[async_trait]
impl BackgroundService for InvalidationListener {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        // Attempts that failed since the last subscription, and when one was last logged.
        let mut failed = 0u64;
        let mut logged: Option<std::time::Instant> = None;
        loop {
            let mut was_up = false;
            tokio::select! {
                result = self.listen(&mut was_up) => {
                    // Without the channel the near-cache could serve stale links: empty it and
                    // keep it empty until subscribed again (fills need the epoch unchanged).
                    self.near.set_enabled(false);
                    if was_up {
                        (failed, logged) = (0, None);
                    }
                    failed += 1;
                    match result {
                        Err(e) if worth_a_line(logged.map(|at| at.elapsed())) => {
                            logged = Some(std::time::Instant::now());
                            log::warn!(error = e, attempts = failed; "invalidation listener lost; retrying");
                        }
                        _ => {}
                    }
                }
                _ = shutdown.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::worth_a_line;
    use std::time::Duration;

    /// An hour of attempts half a second apart (each failing at once, or after a 2 s timeout
    /// against a silent Redis): the first line, then one a minute, whatever the pace.
    #[test]
    fn a_lasting_outage_is_logged_once_a_minute() {
        for step in [Duration::from_millis(500), Duration::from_millis(2_500)] {
            let (mut now, mut last, mut lines) = (Duration::ZERO, None::<Duration>, 0);
            while now < Duration::from_secs(3_600) {
                if worth_a_line(last.map(|at| now - at)) {
                    (last, lines) = (Some(now), lines + 1);
                }
                now += step;
            }
            assert_eq!(lines, 60, "{step:?}");
        }
    }
}
