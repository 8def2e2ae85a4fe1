//! Group commit of click appends at the edge.
//!
//! A redirect may answer its 302 only once Redis holds its click. Sent one by one, every click
//! costs a command's encoding, a channel hop to the connection's driver, a write and a read
//! system call on both sides and a wake-up. Here clicks that arrive together share all of that:
//! each request adds its click to the open batch and waits; one task sends the batch as a
//! single pipeline and hands each request the result of the command that held its click. The
//! clicks of one stream go out as one packed entry (`kurz_common::clicks::PACKED_FIELD`): one
//! `XADD` per stream and batch, so Redis and the consumer handle one entry, not one per click.
//!
//! While a batch is in flight the next one fills, so batches grow with the load by themselves and
//! a lone click waits for no timer. `clicks.batch_window_us` can hold a batch open longer (until
//! `clicks.batch_max` clicks arrive); tokio's timer rounds such a wait up to whole milliseconds.
//!
//! Each request thread has a lane of its own: its batch, its flusher task and its Redis
//! connection. With `server.work_stealing: false` (the default) a thread runs a runtime of its
//! own, so a click, its flush and the connection's reads and writes all stay on that thread,
//! and no click needs another thread woken. One shared batch cost the edge ~20% more CPU per
//! redirect in wake-ups across threads (docs/capacity.md).
//!
//! A failed append fails the clicks of its own entry only. On a Redis Cluster a pipeline must
//! stay within one hash slot: the batch goes out as one pipeline per stream (per partition), all
//! at once, and a node that fails fails only the clicks of its own partitions.

use kurz_common::clicks::{xadd_packed, Click};
use kurz_common::redis_handle::RedisHandle;
use prometheus::Histogram;
use redis::Value;
use std::sync::atomic::{AtomicUsize, Ordering};
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
    lanes: Vec<Lane>,
}

/// One batch in the making, its flusher and its Redis connection. A thread appends to the lane
/// it was given at its first append, so with `server.work_stealing: false` (one runtime per
/// thread) a click, its flush and the connection's I/O stay on one thread: no cross-thread
/// wake-up per click.
struct Lane {
    shared: Arc<Shared>,
    /// Started by the lane's first append, on the runtime that serves that thread's requests.
    flusher: OnceLock<()>,
}

/// The lane of the calling thread: threads are numbered on their first append.
fn thread_lane(lanes: usize) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static LANE: usize = NEXT.fetch_add(1, Ordering::Relaxed);
    }
    LANE.with(|lane| *lane % lanes)
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

/// The clicks waiting for the next flush, one group per stream.
#[derive(Default)]
struct Batch {
    groups: Vec<Group>,
    /// Clicks in all groups.
    len: usize,
}

/// One stream's clicks in a batch: sent as one packed entry (`clicks::PACKED_FIELD`), so Redis
/// parses, stores, delivers and acknowledges one entry for all of them.
struct Group {
    stream: String,
    packed: Vec<u8>,
    waiters: Vec<oneshot::Sender<bool>>,
}

impl ClickLog {
    /// One lane per connection in `redis` (one per request thread, at least one).
    pub fn new(redis: Vec<Arc<RedisHandle>>, batching: Batching, sizes: Histogram) -> Self {
        assert!(!redis.is_empty(), "a click log needs a Redis connection");
        let lanes = redis
            .into_iter()
            .map(|redis| Lane {
                shared: Arc::new(Shared {
                    redis,
                    batching,
                    open: Mutex::new(Batch::default()),
                    ready: Notify::new(),
                    sizes: sizes.clone(),
                }),
                flusher: OnceLock::new(),
            })
            .collect();
        Self { lanes }
    }

    /// Appends `click` to `stream`; `true` once Redis has acknowledged it, `false` when it did
    /// not (the request then goes to the API with the same click id, which stores it once).
    pub async fn append(&self, stream: &str, click: &Click) -> bool {
        let lane = &self.lanes[thread_lane(self.lanes.len())];
        lane.flusher.get_or_init(|| {
            tokio::spawn(flush_forever(lane.shared.clone()));
        });
        let shared = &lane.shared;
        let (done, result) = oneshot::channel();
        let wake = {
            let mut open = shared.open.lock().expect("click batch lock");
            // A batch spans a few partitions at most: a scan beats a map here.
            let at = match open.groups.iter().position(|g| g.stream == stream) {
                Some(at) => at,
                None => {
                    open.groups.push(Group {
                        stream: stream.to_owned(),
                        packed: Vec::with_capacity(512),
                        waiters: Vec::new(),
                    });
                    open.groups.len() - 1
                }
            };
            let group = &mut open.groups[at];
            click.pack_into(&mut group.packed);
            group.waiters.push(done);
            open.len += 1;
            open.len == 1 || open.len == shared.batching.max
        };
        if wake {
            shared.ready.notify_one();
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
        let batch = std::mem::take(&mut *shared.open.lock().expect("click batch lock"));
        if batch.len == 0 {
            continue;
        }
        shared.sizes.observe(batch.len as f64);
        let stored = if shared.redis.is_cluster() {
            send_per_stream(&shared.redis, &batch.groups).await
        } else {
            send_together(&shared.redis, &batch.groups).await
        };
        for (group, stored) in batch.groups.into_iter().zip(stored) {
            for done in group.waiters {
                // The request may have gone already (client disconnected): nothing to tell.
                let _ = done.send(stored);
            }
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
    // Counted as the errors of a failed round trip are: a Redis out of memory or read-only
    // answers every append with an error, and `KurzRedisDown` watches this counter.
    if !replicated {
        redis.refused();
    }
    (0..n)
        .map(|i| {
            let appended = match replies.get(i) {
                Some(Value::ServerError(e)) => {
                    redis.refused_with(e);
                    false
                }
                Some(_) => true,
                None => {
                    redis.refused();
                    false
                }
            };
            replicated && appended
        })
        .collect()
}

/// The pipeline appending `groups` (one entry each), then the `WAIT` when replicas must confirm.
fn appends<'a>(redis: &RedisHandle, groups: impl Iterator<Item = &'a Group>) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    // Every entry's own result is wanted: one failed append fails only its own clicks.
    pipe.ignore_errors();
    for group in groups {
        pipe.add_command(xadd_packed(&group.stream, &group.packed));
    }
    if let Some(wait) = redis.replica_wait() {
        pipe.add_command(wait);
    }
    pipe
}

/// The batch as one pipeline: whether each group's entry was appended.
async fn send_together(redis: &RedisHandle, groups: &[Group]) -> Vec<bool> {
    let replies = redis.query(&appends(redis, groups.iter())).await.ok();
    replies_to_stored(redis, replies, groups.len())
}

/// The batch as one pipeline per stream, sent together: on a cluster each stays in one slot.
/// Whether each group's entry was appended.
async fn send_per_stream(redis: &RedisHandle, groups: &[Group]) -> Vec<bool> {
    let sent = groups.iter().map(|group| async move {
        let reply = redis
            .query::<Vec<Value>>(&appends(redis, std::iter::once(group)))
            .await
            .ok();
        replies_to_stored(redis, reply, 1)[0]
    });
    futures_util::future::join_all(sent).await
}

impl Shared {
    fn len(&self) -> usize {
        self.open.lock().expect("click batch lock").len
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::future::join_all;
    use kurz_common::clicks::EntryClicks;
    use prometheus::HistogramOpts;

    /// A handle on `url`, and its error counter.
    fn counted(url: &str) -> (Arc<RedisHandle>, prometheus::IntCounter) {
        let errors = prometheus::IntCounter::new("t_errors", "t").unwrap();
        let handle = RedisHandle::new(url, Duration::from_secs(5), errors.clone()).unwrap();
        (Arc::new(handle), errors)
    }

    fn redis(url: &str) -> Arc<RedisHandle> {
        counted(url).0
    }

    fn test_redis_url() -> String {
        std::env::var("KURZ_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
    }

    fn test_redis() -> Arc<RedisHandle> {
        redis(&test_redis_url())
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
        let log = ClickLog::new(vec![redis], Batching { window, max }, sizes.clone());
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
        type Fields = Vec<(String, Vec<u8>)>;
        let entries: Vec<(String, Fields)> = redis.query(&range).await.unwrap();
        assert_eq!(entries.len(), 1, "one entry holds the batch");
        let read =
            EntryClicks::from_fields(entries[0].1.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
        assert!(!read.malformed);
        let mut ids = read.clicks;
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
        let (redis, errors) = counted(&test_redis_url());
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
        assert_eq!(
            errors.get(),
            1,
            "the refused append is counted as a Redis error"
        );
        assert_eq!(sizes.get_sample_count(), 1);
        let len: usize = redis.query(redis::cmd("XLEN").arg(&stream)).await.unwrap();
        assert_eq!(len, 1, "a and c share their stream's entry");
        redis
            .query::<()>(redis::cmd("DEL").arg(&stream).arg(&not_a_stream))
            .await
            .unwrap();
    }

    /// A Redis demoted to a replica behind its address answers each append `READONLY`: the
    /// lane leaves its connection for a new one, which reaches the new master.
    #[tokio::test]
    async fn an_append_a_demoted_redis_refuses_drops_its_connection() {
        let private =
            kurz_common::testing::PrivateRedis::start(kurz_common::testing::Persistence::None);
        let (redis, errors) = counted(&private.url());
        let first: i64 = redis.query(redis::cmd("CLIENT").arg("ID")).await.unwrap();
        let (log, _) = click_log(redis.clone(), Duration::ZERO, 256);
        private.demote();
        assert!(!log.append("s", &click("x")).await);
        assert!(errors.get() >= 1);
        // Appends go on being refused; past the young connection's grace, one drops it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            assert!(!log.append("s", &click("x")).await);
            match redis.query::<i64>(redis::cmd("CLIENT").arg("ID")).await {
                Ok(id) if id != first => break,
                Ok(_) => assert!(
                    std::time::Instant::now() < deadline,
                    "the connection was kept"
                ),
                Err(e) => assert!(
                    std::time::Instant::now() < deadline,
                    "never reconnected: {e}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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

    /// A thread keeps to one lane: with one lane's Redis down, each thread's appends either all
    /// fail or all succeed, whatever the order of appends across threads. (Per-append choice
    /// would mix them.) Each thread runs a runtime of its own, as with `work_stealing: false`.
    #[test]
    fn each_thread_appends_through_one_lane() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = closed.local_addr().unwrap().port();
        drop(closed);
        let sizes = Histogram::with_opts(HistogramOpts::new("t_lanes", "t")).unwrap();
        let batching = Batching {
            window: Duration::ZERO,
            max: 256,
        };
        let log = Arc::new(ClickLog::new(
            vec![test_redis(), redis_at(port)],
            batching,
            sizes,
        ));
        let stream = format!("t{:016x}:clicks", rand::random::<u64>());
        // A lane's flusher runs on the runtime of the thread that appended to it first: every
        // runtime keeps running until all threads are done, as a server's threads do.
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let (log, stream, done) = (log.clone(), stream.clone(), done.clone());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async {
                        let mut stored = Vec::new();
                        for i in 0..3 {
                            stored.push(log.append(&stream, &click(&format!("t{t}c{i}"))).await);
                        }
                        done.fetch_add(1, Ordering::AcqRel);
                        while done.load(Ordering::Acquire) < 4 {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        stored
                    })
                })
            })
            .collect();
        let results: Vec<Vec<bool>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        for stored in &results {
            assert!(stored.iter().all(|s| *s == stored[0]), "{results:?}");
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let redis = test_redis();
            redis
                .query::<()>(redis::cmd("DEL").arg(&stream))
                .await
                .unwrap();
        });
    }

    fn redis_at(port: u16) -> Arc<RedisHandle> {
        redis(&format!("redis://127.0.0.1:{port}/0"))
    }
}
