//! Group commit of click appends at the edge.
//!
//! A redirect may answer its 302 only once Redis holds its click. Sent one by one, every click
//! costs a command's encoding, a channel hop to the connection's driver, a write and a read
//! system call on both sides and a wake-up. Here clicks that arrive together share all of that:
//! each request adds its `XADD` to the open batch and waits; one task sends the batch as a
//! single pipeline and hands each request the result of its own command.
//!
//! While a batch is in flight the next one fills, so batches grow with the load by themselves and
//! a lone click waits for no timer. `clicks.batch_window_us` can hold a batch open longer (until
//! `clicks.batch_max` clicks arrive); tokio's timer rounds such a wait up to whole milliseconds.
//!
//! On a Redis Cluster a pipeline must stay within one hash slot: the batch goes out as one
//! pipeline per stream (per partition), all at once, and a node that fails fails only the
//! clicks of its own partitions.

use kurz_common::clicks::Click;
use kurz_common::redis_handle::RedisHandle;
use prometheus::Histogram;
use redis::Value;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::{oneshot, Notify};

/// How the batches are cut.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Longest a batch stays open after its first click; zero sends it as soon as the previous
    /// batch is acknowledged.
    pub window: Duration,
    /// A batch this full is sent without waiting out the window.
    pub max: usize,
}

pub struct ClickLog {
    shared: Arc<Shared>,
    /// Started by the first append, on the runtime that serves requests.
    flusher: OnceLock<()>,
}

struct Shared {
    redis: Arc<RedisHandle>,
    batching: Batching,
    open: Mutex<Batch>,
    /// Signalled by a batch's first click and by a batch becoming full.
    ready: Notify,
    /// Clicks per pipeline sent.
    sizes: Histogram,
}

#[derive(Default)]
struct Batch {
    pipe: redis::Pipeline,
    waiters: Vec<oneshot::Sender<bool>>,
    /// Each command's stream, kept on a cluster only (to split the batch per slot).
    streams: Vec<String>,
}

impl ClickLog {
    pub fn new(redis: Arc<RedisHandle>, batching: Batching, sizes: Histogram) -> Self {
        let mut pipe = redis::pipe();
        // Every command's own result is wanted: one failed append fails only its own request.
        pipe.ignore_errors();
        Self {
            shared: Arc::new(Shared {
                redis,
                batching,
                open: Mutex::new(Batch {
                    pipe,
                    waiters: Vec::new(),
                    streams: Vec::new(),
                }),
                ready: Notify::new(),
                sizes,
            }),
            flusher: OnceLock::new(),
        }
    }

    /// Appends `click` to `stream`; `true` once Redis has acknowledged it, `false` when it did
    /// not (the request then goes to the API with the same click id, which stores it once).
    pub async fn append(&self, stream: &str, click: &Click) -> bool {
        self.flusher.get_or_init(|| {
            tokio::spawn(flush_forever(self.shared.clone()));
        });
        let (done, result) = oneshot::channel();
        let wake = {
            let mut open = self.shared.open.lock().expect("click batch lock");
            open.pipe.add_command(click.xadd(stream));
            open.waiters.push(done);
            if self.shared.redis.is_cluster() {
                open.streams.push(stream.to_owned());
            }
            let n = open.waiters.len();
            n == 1 || n == self.shared.batching.max
        };
        if wake {
            self.shared.ready.notify_one();
        }
        result.await.unwrap_or(false)
    }
}

async fn flush_forever(shared: Arc<Shared>) {
    loop {
        shared.ready.notified().await;
        let window = shared.batching.window;
        if !window.is_zero() {
            let deadline = tokio::time::Instant::now() + window;
            // A stale signal only ends the wait early; a full batch ends it at once.
            while shared.len() < shared.batching.max
                && tokio::time::timeout_at(deadline, shared.ready.notified())
                    .await
                    .is_ok()
            {}
        }
        let batch = {
            let mut open = shared.open.lock().expect("click batch lock");
            let mut next = redis::pipe();
            next.ignore_errors();
            Batch {
                pipe: std::mem::replace(&mut open.pipe, next),
                waiters: std::mem::take(&mut open.waiters),
                streams: std::mem::take(&mut open.streams),
            }
        };
        if batch.waiters.is_empty() {
            continue;
        }
        shared.sizes.observe(batch.waiters.len() as f64);
        let stored = if batch.streams.is_empty() {
            let mut pipe = batch.pipe;
            let n = batch.waiters.len();
            if let Some(wait) = shared.redis.replica_wait() {
                pipe.add_command(wait);
            }
            let results: Option<Vec<Value>> = shared.redis.query(&pipe).await.ok();
            replies_to_stored(&shared.redis, results, n)
        } else {
            send_per_stream(&shared.redis, &batch.pipe, &batch.streams).await
        };
        for (done, stored) in batch.waiters.into_iter().zip(stored) {
            // The request may have gone already (client disconnected): nothing to tell.
            let _ = done.send(stored);
        }
    }
}

/// Whether each of `n` appends is stored, from a pipeline's replies: its own reply is not an
/// error and, when `redis.replica_acks` asks for replicas, the `WAIT` after them confirmed it.
fn replies_to_stored(redis: &RedisHandle, replies: Option<Vec<Value>>, n: usize) -> Vec<bool> {
    let Some(replies) = replies else {
        return vec![false; n];
    };
    let replicated =
        !redis.waits_for_replicas() || replies.get(n).is_some_and(|w| redis.replicated(w));
    (0..n)
        .map(|i| {
            replicated
                && replies
                    .get(i)
                    .is_some_and(|v| !matches!(v, Value::ServerError(_)))
        })
        .collect()
}

/// The batch as one pipeline per stream, sent together: on a cluster each stays in one slot.
/// Whether each click was appended, in batch order.
async fn send_per_stream(
    redis: &RedisHandle,
    batch: &redis::Pipeline,
    streams: &[String],
) -> Vec<bool> {
    let mut groups: Vec<(&str, Vec<usize>)> = Vec::new();
    for (i, stream) in streams.iter().enumerate() {
        match groups.iter_mut().find(|(s, _)| *s == stream.as_str()) {
            Some((_, members)) => members.push(i),
            None => groups.push((stream.as_str(), vec![i])),
        }
    }
    let cmds: Vec<&redis::Cmd> = batch.cmd_iter().collect();
    let sent = groups.iter().map(|(_, members)| {
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        for &i in members {
            pipe.add_command(cmds[i].clone());
        }
        if let Some(wait) = redis.replica_wait() {
            pipe.add_command(wait);
        }
        async move { redis.query::<Vec<Value>>(&pipe).await.ok() }
    });
    let replies = futures_util::future::join_all(sent).await;
    let mut stored = vec![false; streams.len()];
    for ((_, members), reply) in groups.iter().zip(replies) {
        for (&i, ok) in members
            .iter()
            .zip(replies_to_stored(redis, reply, members.len()))
        {
            stored[i] = ok;
        }
    }
    stored
}

impl Shared {
    fn len(&self) -> usize {
        self.open.lock().expect("click batch lock").waiters.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::join_all;
    use prometheus::HistogramOpts;

    fn redis(url: &str) -> Arc<RedisHandle> {
        let errors = prometheus::IntCounter::new("t_errors", "t").unwrap();
        Arc::new(RedisHandle::new(url, Duration::from_secs(5), errors).unwrap())
    }

    fn test_redis() -> Arc<RedisHandle> {
        redis(
            &std::env::var("KURZ_TEST_REDIS_URL")
                .unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into()),
        )
    }

    fn click(id: &str) -> Click {
        Click {
            id: id.into(),
            url_id: 3,
            user_id: Some(5),
            code: "abc".into(),
            target: "https://example.com/".into(),
            referrer: String::new(),
            user_agent: "t".into(),
            ip: "192.0.2.0".into(),
            ts_ms: 1_700_000_000_000,
            visitor: String::new(),
        }
    }

    fn click_log(redis: Arc<RedisHandle>, window: Duration, max: usize) -> (ClickLog, Histogram) {
        let sizes = Histogram::with_opts(HistogramOpts::new("t_sizes", "t")).unwrap();
        let log = ClickLog::new(redis, Batching { window, max }, sizes.clone());
        (log, sizes)
    }

    /// Clicks that arrive within the window go out as one pipeline, and every request learns
    /// that its own click is in the stream.
    #[tokio::test]
    async fn concurrent_clicks_share_one_pipeline() {
        let redis = test_redis();
        let stream = format!("t{:016x}:clicks", rand::random::<u64>());
        // A window no test outlives: only a full batch can end it.
        let (log, sizes) = click_log(redis.clone(), Duration::from_secs(3600), 8);
        let clicks: Vec<Click> = (0..8).map(|i| click(&format!("c{i}"))).collect();
        let stored = join_all(clicks.iter().map(|c| log.append(&stream, c))).await;
        assert_eq!(stored, vec![true; 8]);
        assert_eq!(sizes.get_sample_count(), 1, "one pipeline");
        assert_eq!(sizes.get_sample_sum(), 8.0);
        let mut range = redis::cmd("XRANGE");
        range.arg(&stream).arg("-").arg("+");
        let entries: Vec<(String, Vec<(String, String)>)> = redis.query(&range).await.unwrap();
        let mut ids: Vec<Click> = entries
            .iter()
            .map(|(_, f)| Click::from_fields(f.iter().map(|(k, v)| (k.as_str(), v.as_str()))))
            .map(Option::unwrap)
            .collect();
        ids.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(ids, clicks);
        redis
            .query::<()>(redis::cmd("DEL").arg(&stream))
            .await
            .unwrap();
    }

    /// One command failing in a batch fails only its own request: the others' clicks are in
    /// the stream and their 302s go out.
    #[tokio::test]
    async fn a_failed_append_fails_only_its_own_request() {
        let redis = test_redis();
        let prefix = format!("t{:016x}", rand::random::<u64>());
        let (stream, not_a_stream) = (format!("{prefix}:clicks"), format!("{prefix}:string"));
        redis
            .query::<()>(redis::cmd("SET").arg(&not_a_stream).arg("x"))
            .await
            .unwrap();
        let (log, sizes) = click_log(redis.clone(), Duration::from_secs(3600), 3);
        let (a, b, c) = (click("a"), click("b"), click("c"));
        let stored = join_all([
            log.append(&stream, &a),
            log.append(&not_a_stream, &b),
            log.append(&stream, &c),
        ])
        .await;
        assert_eq!(stored, vec![true, false, true]);
        assert_eq!(sizes.get_sample_count(), 1);
        let len: usize = redis.query(redis::cmd("XLEN").arg(&stream)).await.unwrap();
        assert_eq!(len, 2);
        redis
            .query::<()>(redis::cmd("DEL").arg(&stream).arg(&not_a_stream))
            .await
            .unwrap();
    }

    /// Without a window, a lone click is sent at once, and with Redis unreachable it is
    /// reported as not stored (the request then goes to the API).
    #[tokio::test]
    async fn a_lone_click_waits_for_no_window_and_an_unreachable_redis_fails_it() {
        let redis = test_redis();
        let stream = format!("t{:016x}:clicks", rand::random::<u64>());
        let (log, sizes) = click_log(redis.clone(), Duration::ZERO, 256);
        for i in 0..3 {
            assert!(log.append(&stream, &click(&format!("c{i}"))).await);
        }
        assert_eq!(sizes.get_sample_count(), 3, "each awaited click went alone");
        redis
            .query::<()>(redis::cmd("DEL").arg(&stream))
            .await
            .unwrap();

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let (down, _) = click_log(redis_at(port), Duration::ZERO, 256);
        assert!(!down.append("s", &click("x")).await);
    }

    fn redis_at(port: u16) -> Arc<RedisHandle> {
        redis(&format!("redis://127.0.0.1:{port}/0"))
    }
}
