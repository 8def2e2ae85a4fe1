//! The fault suite: the real edge and APIs under a redirect + create load while one thing
//! breaks — PostgreSQL stops, Redis is killed and restarts from its append-only file, Redis
//! stalls writes while a link is deleted, an API is killed. After each, every request id that
//! got a 302 is matched against the click events stored: none lost, none doubled, no phantom
//! (a stored click whose request got no 302); no request failed but the documented 503s of
//! writes while PostgreSQL is down; a deleted link stops within its stated bound.
//!
//! Every server broken here is the test's own; every load loop is bounded in count and time
//! and waits on progress, never on a clock.

use crate::harness::{Options, Stack};
use kurz_common::testing::{Persistence, PrivatePg, PrivateRedis};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Most requests one load task sends, and the longest it runs.
const TASK_MAX_REQUESTS: usize = 20_000;
const TASK_MAX_TIME: Duration = Duration::from_secs(120);

#[derive(Default)]
struct Record {
    /// Request id → status of each redirect answered.
    redirects: Vec<(String, u16)>,
    /// Status of each create (0: no answer at all).
    creates: Vec<u16>,
    /// Redirects that got no answer at all.
    redirect_transport_errors: usize,
}

/// Redirect and create traffic through the edge until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    redirects_done: Arc<AtomicUsize>,
    creates_done: Arc<AtomicUsize>,
    record: Arc<Mutex<Record>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(stack: &Stack, codes: &[String], user_id: i64) -> Load {
        let load = Load {
            stop: Arc::new(AtomicBool::new(false)),
            redirects_done: Arc::new(AtomicUsize::new(0)),
            creates_done: Arc::new(AtomicUsize::new(0)),
            record: Arc::new(Mutex::new(Record::default())),
            tasks: Vec::new(),
        };
        let mut tasks = Vec::new();
        for t in 0..3 {
            let (client, base) = (stack.client.clone(), stack.url(""));
            let codes = codes.to_vec();
            let (stop, done, record) = (
                load.stop.clone(),
                load.redirects_done.clone(),
                load.record.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                for i in 0..TASK_MAX_REQUESTS {
                    if stop.load(Ordering::Acquire) || started.elapsed() > TASK_MAX_TIME {
                        break;
                    }
                    let code = &codes[(i + t) % codes.len()];
                    match client.get(format!("{base}/{code}")).send().await {
                        Ok(res) => {
                            let id = res
                                .headers()
                                .get("x-request-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_owned();
                            let status = res.status().as_u16();
                            record.lock().unwrap().redirects.push((id, status));
                        }
                        Err(_) => record.lock().unwrap().redirect_transport_errors += 1,
                    }
                    done.fetch_add(1, Ordering::AcqRel);
                }
            }));
        }
        let (client, base) = (stack.client.clone(), stack.url(""));
        let (stop, done, record) = (
            load.stop.clone(),
            load.creates_done.clone(),
            load.record.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            for i in 0..TASK_MAX_REQUESTS {
                if stop.load(Ordering::Acquire) || started.elapsed() > TASK_MAX_TIME {
                    break;
                }
                let body = json!({"user_id": user_id, "original_url": format!("https://example.com/load/{i}")});
                // Keyed, as a client that must not create twice sends them: a create in flight
                // on an API that dies is then retried by the edge on another.
                let status = match client
                    .post(format!("{base}/urls"))
                    .header("idempotency-key", format!("load-{i}"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(res) => res.status().as_u16(),
                    Err(_) => 0,
                };
                record.lock().unwrap().creates.push(status);
                done.fetch_add(1, Ordering::AcqRel);
            }
        }));
        Load { tasks, ..load }
    }

    /// Waits until `n` more redirects and `m` more creates were answered than now.
    async fn progress(&self, n: usize, m: usize) {
        let (r0, c0) = (
            self.redirects_done.load(Ordering::Acquire),
            self.creates_done.load(Ordering::Acquire),
        );
        let deadline = Instant::now() + Duration::from_secs(90);
        while self.redirects_done.load(Ordering::Acquire) < r0 + n
            || self.creates_done.load(Ordering::Acquire) < c0 + m
        {
            assert!(
                Instant::now() < deadline,
                "the load stopped making progress"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> Record {
        self.stop.store(true, Ordering::Release);
        for t in self.tasks {
            t.await.unwrap();
        }
        Arc::try_unwrap(self.record)
            .ok()
            .expect("load tasks ended")
            .into_inner()
            .unwrap()
    }
}

/// Waits until a read of click events through the edge stored everything recorded before it
/// (no `X-Kurz-Clicks-Pending`).
async fn drain(stack: &Stack) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let res = stack.get("/events?event_type=click&per_page=1").await;
        if res.status() == 200 && res.headers().get("x-kurz-clicks-pending").is_none() {
            return;
        }
        assert!(Instant::now() < deadline, "clicks never drained");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Stored click events per click id.
fn stored_clicks(stack: &Stack) -> HashMap<String, usize> {
    let out = Command::new("psql")
        .arg(stack.db_url())
        .args([
            "-XAtc",
            "SELECT click_id, count(*) FROM events WHERE event_type = 'click' GROUP BY click_id",
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let (id, n) = l.rsplit_once('|')?;
            Some((id.to_owned(), n.parse().ok()?))
        })
        .collect()
}

/// What a run must show: every 302 has exactly one click, no click lacks a 302.
struct Ledger {
    redirected: HashSet<String>,
}

impl Ledger {
    fn new() -> Self {
        Ledger {
            redirected: HashSet::new(),
        }
    }

    fn add(&mut self, record: &Record) {
        for (id, status) in &record.redirects {
            if *status == 302 {
                assert!(!id.is_empty(), "a 302 without a request id");
                assert!(
                    self.redirected.insert(id.clone()),
                    "request id {id} seen twice"
                );
            }
        }
    }

    async fn check(&self, stack: &Stack) {
        drain(stack).await;
        let stored = stored_clicks(stack);
        let lost: Vec<&String> = self
            .redirected
            .iter()
            .filter(|id| !stored.contains_key(*id))
            .collect();
        let doubled: Vec<(&String, &usize)> = stored.iter().filter(|(_, n)| **n > 1).collect();
        let phantom: Vec<&String> = stored
            .keys()
            .filter(|id| !self.redirected.contains(*id))
            .collect();
        eprintln!(
            "fault suite: {} redirects answered 302, {} clicks stored; lost {}, doubled {}, phantom {}",
            self.redirected.len(),
            stored.len(),
            lost.len(),
            doubled.len(),
            phantom.len()
        );
        assert!(lost.is_empty(), "lost clicks: {lost:?}");
        assert!(doubled.is_empty(), "doubled clicks: {doubled:?}");
        assert!(phantom.is_empty(), "phantom clicks: {phantom:?}");
    }
}

/// A user and `n` links through the edge, each redirected once (their clicks join the ledger).
async fn links(stack: &Stack, n: usize, ledger: &mut Ledger) -> (i64, Vec<String>) {
    let user = stack
        .post(
            "/users",
            json!({"username": "load", "email": "load@example.com"}),
        )
        .await;
    let user_id = user["id"].as_i64().unwrap();
    let mut codes = Vec::new();
    for i in 0..n {
        let link = stack
            .post(
                "/urls",
                json!({"user_id": user_id, "original_url": format!("https://example.com/{i}")}),
            )
            .await;
        let code = link["short_code"].as_str().unwrap().to_owned();
        let res = stack.get(&format!("/{code}")).await;
        assert_eq!(res.status(), 302);
        let mut warm = Record::default();
        let id = res.headers()["x-request-id"].to_str().unwrap().to_owned();
        warm.redirects.push((id, 302));
        ledger.add(&warm);
        codes.push(code);
    }
    (user_id, codes)
}

fn assert_all(statuses: &[u16], allowed: &[u16], what: &str) {
    let bad: Vec<&u16> = statuses.iter().filter(|s| !allowed.contains(s)).collect();
    assert!(
        bad.is_empty(),
        "{what}: {} of {} answered outside {allowed:?}: {:?}",
        bad.len(),
        statuses.len(),
        &bad[..bad.len().min(20)]
    );
}

#[tokio::test]
async fn postgres_stopped_under_load_loses_doubles_and_invents_no_click() {
    let pg = PrivatePg::start();
    let stack = Stack::start(Options {
        pg_admin_url: Some(pg.url()),
        ..Options::default()
    });
    let mut ledger = Ledger::new();
    let (user, codes) = links(&stack, 8, &mut ledger).await;
    let load = Load::start(&stack, &codes, user);
    load.progress(300, 5).await;
    pg.down();
    // The outage lasts as long as the edge takes to answer this many redirects from Redis.
    load.progress(1500, 0).await;
    pg.up();
    load.progress(300, 10).await;
    let record = load.finish().await;
    assert_eq!(record.redirect_transport_errors, 0);
    assert_all(
        &record.redirects.iter().map(|r| r.1).collect::<Vec<_>>(),
        &[302],
        "cached redirects while PostgreSQL is down",
    );
    assert_all(&record.creates, &[201, 503], "creates");
    assert_eq!(
        record.creates.last(),
        Some(&201),
        "creates work again after the outage"
    );
    ledger.add(&record);
    ledger.check(&stack).await;
}

#[tokio::test]
async fn redis_killed_and_restarted_from_its_aof_under_load_loses_no_click() {
    let mut redis = PrivateRedis::start(Persistence::Shipped);
    let stack = Stack::start(Options {
        redis_url: redis.url(),
        ..Options::default()
    });
    let mut ledger = Ledger::new();
    let (user, codes) = links(&stack, 8, &mut ledger).await;
    let load = Load::start(&stack, &codes, user);
    load.progress(300, 5).await;
    redis.kill();
    load.progress(500, 5).await;
    redis.restart();
    load.progress(500, 5).await;
    let record = load.finish().await;
    assert_eq!(record.redirect_transport_errors, 0);
    assert_all(
        &record.redirects.iter().map(|r| r.1).collect::<Vec<_>>(),
        &[302],
        "redirects while Redis is down and back",
    );
    assert_all(&record.creates, &[201], "creates");
    ledger.add(&record);
    ledger.check(&stack).await;
}

#[tokio::test]
async fn a_link_deleted_while_redis_stalls_writes_stops_at_the_edge_and_clicks_stay_exact() {
    let redis = PrivateRedis::start(Persistence::AofAlways);
    let stack = Stack::start(Options {
        redis_url: redis.url(),
        ..Options::default()
    });
    let mut ledger = Ledger::new();
    let (user, codes) = links(&stack, 8, &mut ledger).await;
    let doomed = stack
        .post(
            "/urls",
            json!({"user_id": user, "original_url": "https://example.com/doomed"}),
        )
        .await;
    let doomed_code = doomed["short_code"].as_str().unwrap().to_owned();
    let doomed_res = stack.get(&format!("/{doomed_code}")).await;
    assert_eq!(doomed_res.status(), 302);
    let mut warm = Record::default();
    warm.redirects.push((
        doomed_res.headers()["x-request-id"]
            .to_str()
            .unwrap()
            .to_owned(),
        302,
    ));
    ledger.add(&warm);

    let load = Load::start(&stack, &codes, user);
    load.progress(300, 5).await;
    let admin = redis::Client::open(redis.url()).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("WRITE")
        .query_async(&mut conn)
        .await
        .unwrap();
    let res = stack
        .client
        .delete(stack.url(&format!("/urls/{}", doomed["id"])))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    // The stated bound: the stall, plus one outbox replay (0.5 s), plus the edge's Redis
    // timeout; polled against a generous deadline, then the link must stay stopped.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let res = stack.get(&format!("/{doomed_code}")).await;
        match res.status().as_u16() {
            404 => break,
            302 => {
                let mut r = Record::default();
                r.redirects.push((
                    res.headers()["x-request-id"].to_str().unwrap().to_owned(),
                    302,
                ));
                ledger.add(&r);
            }
            other => panic!("deleted link answered {other}"),
        }
        assert!(
            Instant::now() < deadline,
            "the deleted link kept redirecting"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A first 404 may come from an API that read PostgreSQL because Redis did not answer; the
    // state is settled once no API has a link state left to publish.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = Command::new("psql")
            .arg(stack.db_url())
            .args(["-XAtc", "SELECT count(*) FROM link_outbox"])
            .output()
            .expect("psql");
        if String::from_utf8_lossy(&out.stdout).trim() == "0" {
            break;
        }
        assert!(Instant::now() < deadline, "link states never published");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    load.progress(300, 5).await;
    for _ in 0..20 {
        assert_eq!(
            stack.get(&format!("/{doomed_code}")).await.status(),
            404,
            "a deleted link stays stopped"
        );
    }
    let record = load.finish().await;
    assert_eq!(record.redirect_transport_errors, 0);
    assert_all(
        &record.redirects.iter().map(|r| r.1).collect::<Vec<_>>(),
        &[302],
        "redirects while Redis stalls",
    );
    assert_all(&record.creates, &[201], "creates while Redis stalls");
    ledger.add(&record);
    ledger.check(&stack).await;
}

#[tokio::test]
async fn an_api_killed_under_load_fails_no_request_of_any_method() {
    let mut stack = Stack::start(Options::default());
    let mut ledger = Ledger::new();
    let (user, codes) = links(&stack, 8, &mut ledger).await;
    let load = Load::start(&stack, &codes, user);
    load.progress(300, 10).await;
    stack.upstreams[0].kill();
    load.progress(300, 30).await;
    stack.start_upstream(0);
    load.progress(300, 10).await;
    let record = load.finish().await;
    assert_eq!(record.redirect_transport_errors, 0);
    assert_all(
        &record.redirects.iter().map(|r| r.1).collect::<Vec<_>>(),
        &[302],
        "redirects",
    );
    assert_all(&record.creates, &[201], "creates");
    // Retried creates made one link each: the idempotency key held across the two APIs.
    let out = Command::new("psql")
        .arg(stack.db_url())
        .args([
            "-XAtc",
            "SELECT count(*), count(DISTINCT original_url) FROM urls \
             WHERE original_url LIKE 'https://example.com/load/%'",
        ])
        .output()
        .expect("psql");
    let counts = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        counts,
        format!("{0}|{0}", record.creates.len()),
        "links made (rows|distinct) against creates answered"
    );
    ledger.add(&record);
    ledger.check(&stack).await;
    let _: Value = stack.get("/health").await.json().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_reload_and_upgrade_under_load_fail_no_request_and_lose_no_click() {
    let stack = Stack::start(Options::default());
    let mut ledger = Ledger::new();
    let (user, codes) = links(&stack, 8, &mut ledger).await;
    let load = Load::start(&stack, &codes, user);
    load.progress(300, 10).await;
    stack.signal_proxy("HUP");
    load.progress(300, 10).await;
    let stack = tokio::task::spawn_blocking(move || {
        let mut stack = stack;
        stack.upgrade_proxy();
        stack
    })
    .await
    .unwrap();
    load.progress(300, 10).await;
    let record = load.finish().await;
    assert_eq!(record.redirect_transport_errors, 0);
    assert_all(
        &record.redirects.iter().map(|r| r.1).collect::<Vec<_>>(),
        &[302],
        "redirects across the reload and the upgrade",
    );
    assert_all(
        &record.creates,
        &[201],
        "creates across the reload and the upgrade",
    );
    ledger.add(&record);
    ledger.check(&stack).await;
}

/// Where a click is right now: in its stream (appended, not yet consumed) or stored in
/// PostgreSQL. Checked in that order, so a click the consumer moves in between is still found.
async fn click_is_durable(stack: &Stack, redis_url: &str, code: &str, click_id: &str) -> bool {
    let keys = kurz_common::keys::KeySchema::new(&stack.prefix, 16);
    let client = redis::Client::open(redis_url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    type Fields = Vec<(String, Vec<u8>)>;
    let entries: Vec<(String, Fields)> = redis::cmd("XRANGE")
        .arg(keys.clicks_for(code))
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    // Flat entries (the script's) and packed ones (the edge's batches) alike.
    if entries.iter().any(|(_, f)| {
        kurz_common::clicks::EntryClicks::from_fields(f.iter().map(|(k, v)| (k.as_str(), &v[..])))
            .clicks
            .iter()
            .any(|c| c.id == click_id)
    }) {
        return true;
    }
    stored_clicks(stack).contains_key(click_id)
}

#[tokio::test]
async fn a_302_is_sent_only_after_its_click_is_appended_even_when_redis_stalls() {
    let redis = PrivateRedis::start(Persistence::None);
    let stack = Stack::start(Options {
        redis_url: redis.url(),
        upstreams: 1,
        ..Options::default()
    });
    let (user, warm) = stack.link("https://example.com/ordered").await;
    // The warm link is then in the edge's near-cache (Rust appends the click); a fresh link is
    // only in Redis (the script appends it): both paths meet the stall below.
    assert_eq!(stack.get(&format!("/{warm}")).await.status(), 302);
    let admin = redis::Client::open(redis.url()).unwrap();
    // The write below is meant to wait out the stall, which outlasts the client's default
    // 500 ms response timeout.
    let mut conn = admin
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await
        .unwrap();
    // Writes stalled shorter than the edge's Redis timeout (1 s here): the edge waits for its
    // append; and longer: the edge gives up and the API records the click.
    for pause_ms in [600u64, 1500] {
        for path in ["near-cache", "script"] {
            let code = if path == "near-cache" {
                warm.clone()
            } else {
                let link = stack
                    .post(
                        "/urls",
                        json!({"user_id": user, "original_url": "https://example.com/fresh"}),
                    )
                    .await;
                link["short_code"].as_str().unwrap().to_owned()
            };
            let before_pause = Instant::now();
            let _: () = redis::cmd("CLIENT")
                .arg("PAUSE")
                .arg(pause_ms)
                .arg("WRITE")
                .query_async(&mut conn)
                .await
                .unwrap();
            // Several near-cache clicks at once share one batch (group commit): each 302 still
            // waits for its own click.
            let n = if path == "near-cache" { 4 } else { 1 };
            let path_of_code = format!("/{code}");
            let responses =
                futures_util::future::join_all((0..n).map(|_| stack.get(&path_of_code))).await;
            let answered_after = before_pause.elapsed();
            for res in responses {
                assert_eq!(res.status(), 302);
                let rid = res.headers()["x-request-id"].to_str().unwrap().to_owned();
                // At the moment the 302 is in hand, its click is already durable somewhere.
                assert!(
                    click_is_durable(&stack, &redis.url(), &code, &rid).await,
                    "{path}: 302 for {rid} answered before its click was appended or stored (pause {pause_ms} ms)"
                );
            }
            if pause_ms == 600 {
                // The append could not complete before the stall ended, and the 302 waited for
                // it: a lower bound, so a slow machine cannot fail it.
                assert!(
                    answered_after >= Duration::from_millis(pause_ms),
                    "{path}: 302 after {answered_after:?}, inside a {pause_ms} ms write stall"
                );
            }
            // A write returns only once the stall is over: the next round starts after it.
            let _: () = redis::cmd("DEL")
                .arg(format!("{}:stall-probe", stack.prefix))
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    }
    // One warm-up click and ten stalled ones, each stored exactly once in the end.
    drain(&stack).await;
    let stored = stored_clicks(&stack);
    assert_eq!(stored.len(), 11, "{stored:?}");
    assert!(stored.values().all(|n| *n == 1), "{stored:?}");
}

/// A Redis that goes silent without closing the invalidation subscription (a stopped or
/// partitioned node) is noticed by the subscription's ping: the near-cache goes off, since
/// invalidations may be missed, and comes back once a new subscription answers.
#[tokio::test]
async fn a_silent_invalidation_subscription_turns_the_near_cache_off_until_it_answers() {
    let redis = PrivateRedis::start(Persistence::None);
    let stack = Stack::start(Options {
        redis_url: redis.url(),
        upstreams: 1,
        ..Options::default()
    });
    let near_cache_on = || async {
        stack
            .metric(stack.admin_port, "kurz_proxy_near_cache_enabled", &[])
            .await
            == 1.0
    };
    let wait = |on: bool, what: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while near_cache_on().await != on {
            assert!(Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait(true, "the near-cache never came on").await;
    let paused = redis.paused();
    wait(false, "a silent subscription kept the near-cache on").await;
    drop(paused);
    wait(true, "the near-cache stayed off after Redis answered again").await;
}
