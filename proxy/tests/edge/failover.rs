//! No failed request when an upstream dies or appears, or when the edge restarts: a refused
//! connection is retried on another upstream whatever the method, the refusing upstream leaves
//! the rotation at once, a reload's new upstream joins only once a check passes, and a graceful
//! upgrade or a SIGTERM under keep-alive load fails no request.

use crate::harness::{fake_upstream, free_port, paths, Behaviour, Options, Received, Stack};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn retries(stack: &Stack) -> f64 {
    stack
        .metric(stack.admin_port, "kurz_proxy_upstream_retries_total", &[])
        .await
}

async fn healthy(stack: &Stack, addr: &str) -> f64 {
    stack
        .metric(
            stack.admin_port,
            "kurz_proxy_upstream_healthy",
            &[&format!("upstream=\"{addr}\"")],
        )
        .await
}

async fn user(stack: &Stack) -> i64 {
    stack
        .post(
            "/users",
            json!({"username": "fo", "email": "fo@example.com"}),
        )
        .await["id"]
        .as_i64()
        .unwrap()
}

/// Sends one request of each method that writes, `rounds` times; returns every status.
async fn writes(stack: &Stack, user_id: i64, rounds: usize) -> Vec<(String, u16)> {
    let mut seen = Vec::new();
    for i in 0..rounds {
        let res = stack
            .client
            .post(stack.url("/urls"))
            .json(
                &json!({"user_id": user_id, "original_url": format!("https://example.com/fo/{i}")}),
            )
            .send()
            .await
            .unwrap();
        seen.push(("POST".to_owned(), res.status().as_u16()));
        let link: Value = res.json().await.unwrap();
        let path = format!("/urls/{}", link["id"]);
        let res = stack
            .client
            .put(stack.url(&path))
            .json(&json!({"title": "t"}))
            .send()
            .await
            .unwrap();
        seen.push(("PUT".to_owned(), res.status().as_u16()));
        let res = stack.client.delete(stack.url(&path)).send().await.unwrap();
        seen.push(("DELETE".to_owned(), res.status().as_u16()));
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_is_retried_for_every_method_and_its_upstream_held() {
    // Health checks far apart: what happens between them is the edge's own doing.
    let mut stack = Stack::start(Options {
        health_interval_ms: 600_000,
        ..Options::default()
    });
    let dead = stack.upstreams[1].addr();
    // Kill it only once the edge's first health check found it well: from then on, only a
    // refused connection can tell the edge it is gone.
    let admin = stack.upstreams[1].admin_port;
    let deadline = Instant::now() + Duration::from_secs(30);
    while stack
        .metric(
            admin,
            "kurz_api_requests_total",
            &["route=\"/health/live\""],
        )
        .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "no health check reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    stack.upstreams[1].kill();
    let user_id = user(&stack).await;
    let before = retries(&stack).await;
    let seen = writes(&stack, user_id, 10).await;
    let failed: Vec<_> = seen
        .iter()
        .filter(|(m, s)| {
            !matches!(
                (m.as_str(), s),
                ("POST", 201) | ("PUT", 200) | ("DELETE", 204)
            )
        })
        .collect();
    assert!(failed.is_empty(), "failed writes: {failed:?}");
    // The first request to meet the refusal was retried; the refusing upstream then left the
    // rotation, so no later request went there first.
    assert_eq!(retries(&stack).await - before, 1.0, "{}", stack.proxy_log());
    assert_eq!(healthy(&stack, &dead).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_upstream_returns_once_its_check_passes() {
    let mut stack = Stack::start(Options::default());
    let user_id = user(&stack).await;
    let addr = stack.upstreams[1].addr();
    stack.upstreams[1].kill();
    let seen = writes(&stack, user_id, 3).await;
    assert!(seen.iter().all(|(_, s)| *s < 300), "{seen:?}");
    stack.start_upstream(1);
    let admin = stack.upstreams[1].admin_port;
    let deadline = Instant::now() + Duration::from_secs(30);
    // Back in rotation: it answers a share of the requests again.
    while stack
        .metric(admin, "kurz_api_requests_total", &["route=\"/health\""])
        .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "the restarted upstream got no traffic"
        );
        assert_eq!(stack.get("/health").await.status(), 200);
    }
    assert_eq!(healthy(&stack, &addr).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_an_upstream_only_after_its_first_check_passes() {
    let opts = Options {
        proxied: Some(vec![0]),
        ..Options::default()
    };
    let stack = Stack::start(opts);
    let user_id = user(&stack).await;
    // Nothing listens at `dead`.
    let dead = format!("127.0.0.1:{}", free_port());
    stack.write_config_servers(
        &[stack.upstreams[0].addr(), dead.clone()],
        &Options::default(),
    );
    stack.signal_proxy("HUP");
    stack.reloads_reach("ok", 1.0).await;
    let before = retries(&stack).await;
    let seen = writes(&stack, user_id, 10).await;
    assert!(
        seen.iter().all(|(_, s)| *s < 300),
        "writes after the reload: {seen:?}"
    );
    assert_eq!(
        retries(&stack).await - before,
        0.0,
        "a request went to the new upstream before any check passed"
    );
    assert_eq!(healthy(&stack, &dead).await, 0.0);
}

/// Keep-alive GET load (redirects and proxied reads) on `tasks` connections until stopped;
/// counts answers by class and transport errors.
struct KeepAliveLoad {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    bad: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl KeepAliveLoad {
    fn start(stack: &Stack, code: &str, tasks: usize) -> Self {
        let load = KeepAliveLoad {
            stop: Arc::new(AtomicBool::new(false)),
            ok: Arc::new(AtomicUsize::new(0)),
            bad: Arc::default(),
            tasks: Vec::new(),
        };
        let mut handles = Vec::new();
        for t in 0..tasks {
            // One client per task: each holds its own keep-alive connection.
            let client = reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap();
            let urls = [stack.url(&format!("/{code}")), stack.url("/health")];
            let (stop, ok, bad) = (load.stop.clone(), load.ok.clone(), load.bad.clone());
            handles.push(tokio::spawn(async move {
                let started = Instant::now();
                let mut i = t;
                while !stop.load(Ordering::Acquire) && started.elapsed() < Duration::from_secs(120)
                {
                    let url = &urls[i % 2];
                    i += 1;
                    match client.get(url).send().await {
                        Ok(res) if matches!(res.status().as_u16(), 200 | 302) => {
                            let _ = res.bytes().await;
                            ok.fetch_add(1, Ordering::AcqRel);
                        }
                        Ok(res) => bad.lock().unwrap().push(format!("{url}: {}", res.status())),
                        Err(e) => bad.lock().unwrap().push(format!("{url}: {e:?}")),
                    }
                }
            }));
        }
        KeepAliveLoad {
            tasks: handles,
            ..load
        }
    }

    async fn progress(&self, n: usize) {
        let start = self.ok.load(Ordering::Acquire);
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.ok.load(Ordering::Acquire) < start + n {
            assert!(
                Instant::now() < deadline,
                "the load made no progress: {:?}",
                self.bad.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn finish(self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Release);
        for t in self.tasks {
            t.await.unwrap();
        }
        let bad = self.bad.lock().unwrap().clone();
        (self.ok.load(Ordering::Acquire), bad)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_upgrade_under_keep_alive_load_fails_no_request() {
    let mut stack = Stack::start(Options::default());
    let (_, code) = stack.link("https://example.com/upgrade").await;
    let load = KeepAliveLoad::start(&stack, &code, 8);
    load.progress(200).await;
    let old = stack.proxy_pid();
    // Runs on a blocking thread: the load keeps going on the runtime meanwhile.
    let mut stack = tokio::task::spawn_blocking(move || {
        stack.upgrade_proxy();
        stack
    })
    .await
    .unwrap();
    assert_ne!(stack.proxy_pid(), old);
    load.progress(200).await;
    let (ok, bad) = load.finish().await;
    eprintln!("upgrade under load: {ok} answers, {} failed", bad.len());
    assert!(
        bad.is_empty(),
        "failed requests across the upgrade: {bad:?}"
    );
    assert_eq!(stack.get(&format!("/{code}")).await.status(), 302);
    stack.signal_proxy("TERM");
    assert!(stack.wait_proxy_exit(Duration::from_secs(30)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_keeps_serving_through_the_grace_period_then_exits() {
    let mut stack = Stack::start(Options {
        grace_period_seconds: 4,
        ..Options::default()
    });
    let (_, code) = stack.link("https://example.com/term").await;
    let load = KeepAliveLoad::start(&stack, &code, 8);
    load.progress(200).await;
    stack.signal_proxy("TERM");
    // Draining: readiness says so, while new connections are still accepted and answered.
    let ready = format!("http://127.0.0.1:{}/health/ready", stack.admin_port);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let res = reqwest::get(&ready).await.unwrap();
        if res.status() == 503 {
            assert_eq!(res.json::<Value>().await.unwrap()["status"], "draining");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readiness never reported draining"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let fresh = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let res = fresh
        .get(stack.url(&format!("/{code}")))
        .send()
        .await
        .expect("a new connection during the grace period is served");
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["connection"], "close");
    let (ok, bad) = load.finish().await;
    eprintln!("SIGTERM under load: {ok} answers, {} failed", bad.len());
    assert!(
        bad.is_empty(),
        "failed requests during the grace period: {bad:?}"
    );
    let exited =
        tokio::task::spawn_blocking(move || stack.wait_proxy_exit(Duration::from_secs(30)))
            .await
            .unwrap();
    assert!(exited, "the proxy exits cleanly after draining");
}

/// Points the edge at `upstreams` (with `opts`) and waits until each is in rotation.
async fn switch_to(stack: &Stack, upstreams: &[String], opts: &Options) {
    stack.write_config_servers(upstreams, opts);
    stack.signal_proxy("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    for addr in upstreams {
        while healthy(stack, addr).await < 1.0 {
            assert!(Instant::now() < deadline, "{}", stack.proxy_log());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// A client that gives up on a forwarded GET is not the upstream's failure: nothing goes
/// again to another upstream, and nothing counts as a 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_is_not_retried_on_another_upstream() {
    use tokio::io::AsyncWriteExt;
    let stack = Stack::start(Options {
        upstreams: 1,
        ..Options::default()
    });
    let (a, seen_a) = fake_upstream(Behaviour::Hold);
    let (b, seen_b) = fake_upstream(Behaviour::Hold);
    switch_to(&stack, &[a, b], &Options::default()).await;
    let retried = retries(&stack).await;
    let errors = || {
        stack.metric(
            stack.admin_port,
            "kurz_proxy_requests_total",
            &["status_class=\"5xx\""],
        )
    };
    let errors_before = errors().await;

    let held = |seen: &Received| paths(seen).iter().filter(|p| *p == "/urls/held").count();
    let mut client = tokio::net::TcpStream::connect(("127.0.0.1", stack.http_port))
        .await
        .unwrap();
    client
        .write_all(b"GET /urls/held HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while held(&seen_a) + held(&seen_b) == 0 {
        assert!(Instant::now() < deadline, "the GET reached no upstream");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(20);
    while stack
        .metric(stack.admin_port, "kurz_proxy_requests_in_flight", &[])
        .await
        > 0.0
    {
        assert!(
            Instant::now() < deadline,
            "the edge kept the abandoned request"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(retries(&stack).await - retried, 0.0, "the GET went again");
    assert_eq!(held(&seen_a) + held(&seen_b), 1);
    assert_eq!(
        errors().await - errors_before,
        0.0,
        "a client's leaving counted as a 5xx"
    );
}

/// With `upstreams.retry_idempotent: false`, a GET whose upstream died mid-request is not sent
/// again: the client gets our 502, and the other upstream never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retries_off_a_request_an_upstream_dropped_is_not_sent_again() {
    let opts = || Options {
        upstreams: 1,
        upstreams_extra: ", retry_idempotent: false".into(),
        ..Options::default()
    };
    none_sent_again(opts, reqwest::Method::GET).await;
}

/// Six `method /urls/<i>` through an edge (`opts()`) over an upstream that dies mid-request and
/// one that answers: each the dying one took gets our 502, none goes to the other, and no
/// retry is counted.
async fn none_sent_again(opts: impl Fn() -> Options, method: reqwest::Method) {
    let stack = Stack::start(opts());
    let (dying, seen_dying) = fake_upstream(Behaviour::Close);
    let (good, seen_good) = fake_upstream(Behaviour::Answer);
    switch_to(&stack, &[dying, good], &opts()).await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        let res = stack
            .client
            .request(method.clone(), stack.url(&format!("/urls/{i}")))
            .send()
            .await
            .unwrap();
        statuses.push(res.status().as_u16());
    }
    let dropped = paths(&seen_dying);
    let answered = paths(&seen_good);
    assert!(
        !dropped.is_empty(),
        "round robin never chose the dying upstream"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 502).count(),
        dropped.len(),
        "{statuses:?}"
    );
    assert_eq!(
        dropped.len() + answered.len(),
        6,
        "sent again: {dropped:?} {answered:?}"
    );
    assert!(dropped.iter().all(|p| !answered.contains(p)));
    assert_eq!(retries(&stack).await, 0.0);
}

/// An upstream that takes longer than `read_timeout_ms` has the request and is still at it:
/// the client gets our 504 at once, and no other upstream runs the request a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_timed_out_is_answered_504_and_not_sent_again() {
    let opts = || Options {
        upstreams: 1,
        read_timeout_ms: 1_500,
        ..Options::default()
    };
    let stack = Stack::start(opts());
    let (a, seen_a) = fake_upstream(Behaviour::Hold);
    let (b, seen_b) = fake_upstream(Behaviour::Hold);
    switch_to(&stack, &[a, b], &opts()).await;
    let retried = retries(&stack).await;
    let res = stack.get("/urls/slow").await;
    assert_eq!(res.status(), 504);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "gateway_timeout", "{body}");
    let sent = paths(&seen_a).len() + paths(&seen_b).len();
    assert_eq!(sent, 1, "the timed-out request went again");
    assert_eq!(retries(&stack).await - retried, 0.0);
}

/// With one upstream (a Kubernetes Service address) there is no other to retry on: a timeout is
/// a 504, not a 502 for a retry that found no upstream, and a pooled connection that broke
/// under a GET is tried again on a new connection to the same address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_upstream_a_timeout_is_504_and_a_broken_get_goes_again_to_it() {
    let opts = || Options {
        upstreams: 1,
        read_timeout_ms: 1_500,
        ..Options::default()
    };
    let stack = Stack::start(opts());
    let (slow, seen_slow) = fake_upstream(Behaviour::Hold);
    switch_to(&stack, std::slice::from_ref(&slow), &opts()).await;
    let res = stack.get("/urls/slow").await;
    assert_eq!(res.status(), 504, "{}", stack.proxy_log());
    assert_eq!(paths(&seen_slow), ["/urls/slow"]);

    let (flaky, seen_flaky) = fake_upstream(Behaviour::CloseFirst);
    switch_to(&stack, std::slice::from_ref(&flaky), &opts()).await;
    let retried = retries(&stack).await;
    let res = stack.get("/urls/7").await;
    assert_eq!(res.status(), 200, "{}", stack.proxy_log());
    assert_eq!(paths(&seen_flaky), ["/urls/7", "/urls/7"]);
    // The retry's new connection is closed after its answer, never pooled for the next.
    let closes: Vec<bool> = seen_flaky
        .lock()
        .unwrap()
        .iter()
        .map(|(_, h)| h.iter().any(|(n, v)| n == "connection" && v == "close"))
        .collect();
    assert_eq!(closes, [false, true]);
    assert_eq!(retries(&stack).await - retried, 1.0);
}

/// A retried request's body is counted against `limits.max_request_body_bytes` once: the
/// retry sends what was read of it again, and counted twice a body within the limit was a 413.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_body_within_the_limit_is_not_refused_as_too_large() {
    let opts = || Options {
        upstreams: 1,
        extra_yaml: "limits: { max_request_body_bytes: 66000 }\n".into(),
        ..Options::default()
    };
    let stack = Stack::start(opts());
    let (flaky, seen) = fake_upstream(Behaviour::CloseFirst);
    switch_to(&stack, std::slice::from_ref(&flaky), &opts()).await;
    let retried = retries(&stack).await;
    // Within the limit and within the retry buffer (64 KiB), so it may go again.
    let body = format!("{{\"title\": \"{}\"}}", "x".repeat(65_000));
    let res = stack
        .client
        .put(stack.url("/urls/7"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", stack.proxy_log());
    assert_eq!(&paths(&seen)[..2], ["/urls/7", "/urls/7"]);
    assert_eq!(retries(&stack).await - retried, 1.0);
}

/// A DELETE the upstream may have committed is not replayed: the replay would answer 404 for
/// the link the client just deleted. The client gets our 502 (outcome unknown) instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delete_an_upstream_dropped_is_not_replayed() {
    let opts = || Options {
        upstreams: 1,
        ..Options::default()
    };
    none_sent_again(opts, reqwest::Method::DELETE).await;
}

/// With every API down the edge still answers the redirects Redis holds, so its readiness
/// stays 200 and says it is degraded: a load balancer that follows it keeps the edge, and
/// those redirects, in rotation. Forwarded requests get the edge's JSON error meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_api_down_the_edge_stays_ready_for_cached_redirects() {
    let mut stack = Stack::start(Options {
        health_interval_ms: 100,
        ..Options::default()
    });
    let (_, code) = stack.link("https://example.com/alone").await;
    assert_eq!(stack.get(&format!("/{code}")).await.status(), 302);
    for upstream in &mut stack.upstreams {
        upstream.kill();
    }
    let ready = format!("http://127.0.0.1:{}/health/ready", stack.admin_port);
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let res = reqwest::get(&ready).await.unwrap();
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        if body["upstreams"] == "none healthy" {
            assert_eq!(status, 200, "{body}");
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "the edge never saw its upstreams down: {body}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(body["status"], "degraded");
    let res = stack.get(&format!("/{code}")).await;
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["location"], "https://example.com/alone");
    let res = stack.get("/urls").await;
    assert_eq!(res.status(), 502);
    assert_eq!(res.headers()["content-type"], "application/json");
}
