//! End-to-end tests of the edge: the real kurz-proxy binary in front of real kurz-api
//! processes, PostgreSQL and Redis, all on loopback.

mod browser;
mod cert_rotation;
mod cluster;
mod contract;
mod failover;
mod faults;
mod harness;
mod hostile;
mod keys;
mod link_kinds;
mod observability;
mod trust;

use harness::{curl, free_port, Options, Stack};
use serde_json::{json, Value};
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A client whose connections come from `ip` (a loopback address), redirects not followed.
fn from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Requests for `/{code}` the API pool answered, summed over upstreams.
async fn api_redirects(stack: &Stack) -> f64 {
    let mut total = 0.0;
    for up in &stack.upstreams {
        total += stack
            .metric(
                up.admin_port,
                "kurz_api_requests_total",
                &["route=\"/{code}\""],
            )
            .await;
    }
    total
}

async fn clicks(stack: &Stack, url_id: i64) -> usize {
    let res = stack
        .get(&format!("/events?url_id={url_id}&event_type=click"))
        .await;
    assert_eq!(res.status(), 200);
    res.json::<Vec<Value>>().await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_is_answered_at_the_edge_and_its_click_is_visible_at_once() {
    let stack = Stack::start(Options::default());
    let (id, code) = stack.link("https://example.com/edge").await;
    for _ in 0..3 {
        let res = stack.get(&format!("/{code}")).await;
        assert_eq!(res.status(), 302);
        assert_eq!(res.headers()["location"], "https://example.com/edge");
        assert!(res.headers().contains_key("x-request-id"));
    }
    assert_eq!(
        api_redirects(&stack).await,
        0.0,
        "no upstream saw the redirects"
    );
    assert_eq!(clicks(&stack, id).await, 3);
    let edge_302 = stack
        .counter_at(
            stack.admin_port,
            "kurz_proxy_requests_total",
            &["class=\"redirect\"", "status_class=\"3xx\""],
            3.0,
        )
        .await;
    assert_eq!(edge_302, 3.0);
    let res = stack.get("/NoSuchCode1").await;
    assert_eq!(res.status(), 404);
    assert_eq!(res.json::<Value>().await.unwrap()["error"], "not_found");
    // HEAD answers without counting a click.
    let res = stack
        .client
        .head(stack.url(&format!("/{code}")))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    assert_eq!(clicks(&stack, id).await, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deactivated_link_stops_redirecting_at_the_edge_once_its_invalidation_arrives() {
    let stack = Stack::start(Options::default());
    let (id, code) = stack.link("https://example.com/off").await;
    for _ in 0..3 {
        assert_eq!(stack.get(&format!("/{code}")).await.status(), 302); // now in the near-cache
    }
    let near_hits = stack
        .metric(
            stack.admin_port,
            "kurz_proxy_cache_lookups_total",
            &["layer=\"near\"", "result=\"hit\""],
        )
        .await;
    assert!(near_hits >= 1.0, "the near-cache served");
    let invalidations = || stack.metric(stack.admin_port, "kurz_proxy_invalidations_total", &[]);
    let before = invalidations().await;
    let res = stack
        .client
        .put(stack.url(&format!("/urls/{id}")))
        .json(&json!({"is_active": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // The PUT answered after Redis had the new state and the invalidation was published: from
    // the moment the edge applied it, not one more redirect.
    let deadline = Instant::now() + Duration::from_secs(10);
    while invalidations().await <= before {
        assert!(Instant::now() < deadline, "the invalidation never arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..5 {
        assert_eq!(stack.get(&format!("/{code}")).await.status(), 404);
    }
    assert_eq!(clicks(&stack, id).await, 3, "no click for the 404s");
}

/// `<http version> <status>` of one request over TLS (self-signed), asking for `version`
/// (`--http2` or `--http1.1`).
fn over_tls(url: &str, version: &str) -> String {
    curl(&[
        "-sk",
        version,
        "-o",
        "/dev/null",
        "-w",
        "%{http_version} %{http_code}",
        url,
    ])
}

/// HTTP/2 is off by default (its connections skip the connection layer's deadlines): a client
/// that asks for it gets HTTP/1.1 over TLS, behind that layer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_offers_http2_only_when_configured() {
    let stack = Stack::start(Options::default());
    let (_, code) = stack.link("https://example.com/tls").await;
    let url = format!("https://127.0.0.1:{}/{code}", stack.https_port);
    assert_eq!(over_tls(&url, "--http2"), "1.1 302");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http1_and_http2() {
    let stack = Stack::start(Options {
        listen_extra: ", http2: true".into(),
        ..Options::default()
    });
    let (_, code) = stack.link("https://example.com/tls").await;
    let base = format!("https://127.0.0.1:{}", stack.https_port);
    assert_eq!(over_tls(&format!("{base}/{code}"), "--http2"), "2 302");
    assert_eq!(over_tls(&format!("{base}/health"), "--http1.1"), "1.1 200");
    assert_eq!(over_tls(&format!("{base}/users"), "--http2"), "2 200");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_across_upstreams() {
    // One health check per upstream, then none for the test's life: nothing can eject an
    // upstream mid-count, however loaded the machine.
    let stack = Stack::start(Options {
        upstreams: 3,
        health_interval_ms: 600_000,
        ..Options::default()
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    for up in &stack.upstreams {
        while stack
            .metric(
                up.admin_port,
                "kurz_api_requests_total",
                &["route=\"/health/live\""],
            )
            .await
            < 1.0
        {
            assert!(Instant::now() < deadline, "an upstream was never checked");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        let healthy = stack
            .metric(
                stack.admin_port,
                "kurz_proxy_upstream_healthy",
                &[&format!("upstream=\"{}\"", up.addr())],
            )
            .await;
        assert_eq!(healthy, 1.0, "{} passed its check", up.addr());
    }
    for _ in 0..30 {
        assert_eq!(stack.get("/health").await.status(), 200);
    }
    for up in &stack.upstreams {
        let n = stack
            .metric(
                up.admin_port,
                "kurz_api_requests_total",
                &["route=\"/health\""],
            )
            .await;
        assert_eq!(n, 10.0, "each of 3 upstreams gets a third");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_an_upstream_under_traffic_fails_no_idempotent_request() {
    let mut stack = Stack::start(Options::default());
    stack.link("https://example.com/k").await;
    let stack_ref = Arc::new(std::sync::Mutex::new(()));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let stop = Instant::now() + Duration::from_secs(4);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let (client, url, ok, failed) = (
            stack.client.clone(),
            stack.url("/users?per_page=5"),
            ok.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while Instant::now() < stop {
                match client.get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let victim = stack.upstreams[0].addr();
    stack.upstreams[0].kill();
    let label = format!("upstream=\"{victim}\"");
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let healthy = stack
            .metric(stack.admin_port, "kurz_proxy_upstream_healthy", &[&label])
            .await;
        if healthy == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dead upstream was not ejected"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    drop(stack_ref);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "idempotent requests failed while an upstream died"
    );
    assert!(ok.load(Ordering::Relaxed) > 50);
    assert!(
        stack
            .metric(stack.admin_port, "kurz_proxy_upstream_retries_total", &[])
            .await
            >= 1.0
    );

    stack.start_upstream(0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while stack
        .metric(stack.admin_port, "kurz_proxy_upstream_healthy", &[&label])
        .await
        != 1.0
    {
        assert!(Instant::now() < deadline, "the upstream was not restored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..10 {
        assert_eq!(stack.get("/health").await.status(), 200);
    }
    let back = stack
        .metric(
            stack.upstreams[0].admin_port,
            "kurz_api_requests_total",
            &["route=\"/health\""],
        )
        .await;
    assert!(
        back >= 4.0,
        "the restored upstream takes traffic again ({back})"
    );
}

/// A private redis-server for the test that kills it.
fn private_redis(port: u16) -> Child {
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "private redis did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_killed_redirects_still_answer_through_the_api() {
    let port = free_port();
    let mut redis = private_redis(port);
    let stack = Stack::start(Options {
        redis_url: format!("redis://127.0.0.1:{port}/0"),
        ..Options::default()
    });
    let (id, code) = stack.link("https://example.com/r").await;
    assert_eq!(stack.get(&format!("/{code}")).await.status(), 302);
    assert_eq!(api_redirects(&stack).await, 0.0);
    assert_eq!(clicks(&stack, id).await, 1);
    redis.kill().unwrap();
    redis.wait().unwrap();
    for _ in 0..3 {
        let res = stack.get(&format!("/{code}")).await;
        assert_eq!(res.status(), 302);
        assert_eq!(res.headers()["location"], "https://example.com/r");
    }
    assert_eq!(
        api_redirects(&stack).await,
        3.0,
        "the API answered while Redis was down"
    );
    assert_eq!(clicks(&stack, id).await, 4, "each click recorded once");
    // What KurzRedisDown watches on the edge moved.
    let errors = stack
        .metric(stack.admin_port, "kurz_proxy_redis_errors_total", &[])
        .await;
    assert!(errors >= 1.0, "redis errors counted at the edge ({errors})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_apply_per_client_address_and_ignore_spoofed_headers() {
    // One token per 50 s: no refill can happen during the test however slow the machine; the
    // refill itself is unit-tested with an injected clock (rate_limit.rs).
    let limits = "{ redirect: { rate: 0.02, burst: 3 }, write: { rate: 0, burst: 1 }, auth: { rate: 0.02, burst: 1 }, read: { rate: 0, burst: 1 } }";
    let stack = Stack::start(Options {
        rate_limits: limits.into(),
        ..Options::default()
    });
    let (_, code) = stack.link("https://example.com/rl").await;
    let (a, b) = (from("127.0.0.2"), from("127.0.0.3"));
    let url = stack.url(&format!("/{code}"));
    for _ in 0..3 {
        assert_eq!(a.get(&url).send().await.unwrap().status(), 302);
    }
    let limited = a.get(&url).send().await.unwrap();
    assert_eq!(limited.status(), 429);
    let retry: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=50).contains(&retry), "Retry-After {retry}");
    assert_eq!(limited.headers()["x-ratelimit-limit"], "3");
    assert_eq!(limited.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(
        limited.json::<Value>().await.unwrap()["error"],
        "rate_limited"
    );
    // A spoofed X-Forwarded-For from an untrusted peer changes nothing.
    let spoofed = a
        .get(&url)
        .header("x-forwarded-for", "198.51.100.1")
        .header("cf-connecting-ip", "198.51.100.2")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), 429);
    // Another address is unaffected.
    assert_eq!(b.get(&url).send().await.unwrap().status(), 302);
    let counted = stack
        .metric(
            stack.admin_port,
            "kurz_proxy_rate_limited_total",
            &["class=\"redirect\""],
        )
        .await;
    assert_eq!(counted, 2.0);
    // A code with a percent-escape is the same code to the API, and to the limits: its visits
    // spend the redirect allowance (the plain code's next visit finds it used up), and a
    // password posted to it spends the log-in one.
    let c = from("127.0.0.4");
    let encoded = stack.url(&format!("/%{:02X}{}", code.as_bytes()[0], &code[1..]));
    for _ in 0..3 {
        let res = c.get(&encoded).send().await.unwrap();
        assert_eq!(res.status(), 302);
        assert_eq!(res.headers()["location"], "https://example.com/rl");
    }
    assert_eq!(c.get(&url).send().await.unwrap().status(), 429);
    let guess = c
        .post(&encoded)
        .json(&serde_json::json!({"password": "guess"}))
        .send()
        .await
        .unwrap();
    assert_ne!(guess.status(), 429);
    let login = c
        .post(stack.url("/auth/login"))
        .json(&serde_json::json!({"email": "x@example.com", "password": "guess"}))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 429, "the guess spent the log-in allowance");
}

#[test]
fn check_accepts_the_shipped_config_and_rejects_a_typo() {
    let bin = env!("CARGO_BIN_EXE_kurz-proxy");
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let ok = Command::new(bin)
        .args(["--check", "-c", "conf/proxy.yaml"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let dir = std::env::temp_dir().join(format!("kurz-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("typo.yaml");
    // `--check` on `yaml`: it must fail, and what it says on stderr.
    let refused = |yaml: &str| {
        std::fs::write(&file, yaml).unwrap();
        let out = Command::new(bin)
            .arg("--check")
            .arg("-c")
            .arg(&file)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{yaml:?} passed --check");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let bad = refused("upstreams:\n  severs: [\"127.0.0.1:8000\"]\n");
    let bad_value = refused("upstreams:\n  servers: [\"localhost\"]\n");
    // What a failed template render leaves: refused, not run (or reloaded) on the defaults.
    let empty = refused("# kurz edge\n");
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(empty.contains("holds no settings"), "{empty}");
    assert!(bad.contains("severs"), "{bad}");
    assert!(bad_value.contains("upstreams.servers"), "{bad_value}");
}

/// A public address the edge cannot have (here: one this host does not have; a port another
/// process holds is waited for 30 s first, as Pingora does) stops the edge at start with the
/// key named, instead of an edge whose admin port says ready while its public port refuses
/// every connection.
#[test]
fn a_listener_that_cannot_bind_stops_the_edge_naming_its_key() {
    let port = free_port();
    let dir = std::env::temp_dir().join(format!("kurz-bind-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("proxy.yaml");
    std::fs::write(
        &file,
        format!(
            "server: {{ upgrade_sock: {d}/upgrade.sock }}\n\
             listen: {{ http: [\"192.0.2.1:{port}\"], https: [] }}\n\
             admin: {{ listen: \"127.0.0.1:{admin}\" }}\n\
             upstreams: {{ servers: [\"127.0.0.1:{upstream}\"] }}\n\
             redis: {{ url: \"{redis}\", prefix: kurzbind{pid} }}\n",
            d = dir.display(),
            admin = free_port(),
            upstream = free_port(),
            redis = harness::default_redis_url(),
            pid = std::process::id(),
        ),
    )
    .unwrap();
    let mut edge = harness::edge_reading_stderr(&file);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = edge.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            edge.kill().unwrap();
            edge.wait().unwrap();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut edge.stderr.take().unwrap(), &mut stderr).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let status =
        status.unwrap_or_else(|| panic!("the edge kept running without its port: {stderr}"));
    assert!(!status.success());
    assert!(
        stderr.contains("listen.http") && stderr.contains(&format!("192.0.2.1:{port}")),
        "{stderr}"
    );
}

/// A redirect the edge forwards (here: its cache entry gone) is sampled once, by the edge: the
/// API records it as the edge drew, whatever its own rate, and a client cannot send a draw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarded_redirect_is_sampled_by_the_edge_only() {
    // (edge's rate, API's rate, clicks the forwarded visits leave)
    for (edge_rate, api_rate, stored) in [("1.0", "0.0", 6), ("0.0", "1.0", 0)] {
        let stack = Stack::start(Options {
            extra_yaml: format!("clicks: {{ sample_rate: {edge_rate} }}\n"),
            api_env: vec![("EVENT_LOG_SAMPLE_RATE".into(), api_rate.into())],
            ..Options::default()
        });
        let keys = kurz_common::keys::KeySchema::new(&stack.prefix, 16);
        let admin = redis::Client::open(stack.redis_url.clone()).unwrap();
        let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
        let mut total = 0;
        for i in 0..6 {
            let (id, code) = stack.link(&format!("https://example.com/drawn{i}")).await;
            let _: () = redis::cmd("DEL")
                .arg(keys.link(&code))
                .query_async(&mut conn)
                .await
                .unwrap();
            let res = stack
                .client
                .get(stack.url(&format!("/{code}")))
                .header(kurz_common::visit::CLICK_SAMPLED_HEADER, "1")
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 302);
            total += clicks(&stack, id).await;
        }
        assert_eq!(total, stored, "edge {edge_rate}, API {api_rate}");
    }
}

/// A SIGHUP that reaches the edge while it starts (here: a new process of an upgrade, waiting
/// for the sockets) is not the end of the process, nor lost: the file it signals is applied
/// once the reloader listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sighup_while_the_edge_starts_is_applied_once_it_runs() {
    let mut stack = Stack::start(Options::default());
    let (_, code) = stack.link("https://example.com/hup").await;
    let limited = Options {
        rate_limits: "{ redirect: { rate: 0.001, burst: 2 }, write: { rate: 0, burst: 1 }, auth: { rate: 0, burst: 1 }, read: { rate: 0, burst: 1 } }".into(),
        ..Options::default()
    };
    let all: Vec<usize> = (0..stack.upstreams.len()).collect();
    stack.upgrade_proxy_with(|stack, new| {
        stack.write_config(&all, &limited);
        let hup = Command::new("kill")
            .args(["-HUP", &new.to_string()])
            .status()
            .unwrap();
        assert!(hup.success());
    });
    stack.reloads_reach("ok", 1.0).await;
    let client = from("127.0.0.4");
    for _ in 0..2 {
        let res = client
            .get(stack.url(&format!("/{code}")))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 302);
    }
    let res = client
        .get(stack.url(&format!("/{code}")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        429,
        "the file signalled while starting applies"
    );
}

/// SIGINT stops the edge at once, also while clients keep connecting (Pingora's own fast
/// shutdown could leave it spinning on failed accepts, never exiting).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_the_edge_at_once_while_clients_connect() {
    let mut stack = Stack::start(Options::default());
    let port = stack.http_port;
    for round in 0..5 {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let churn = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                        let _ = std::io::Write::write_all(
                            &mut s,
                            b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
                        );
                    }
                }
            })
        };
        stack.signal_proxy("INT");
        let exited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            stack.wait_proxy_exit(Duration::from_secs(30))
        }));
        stop.store(true, Ordering::Relaxed);
        churn.join().unwrap();
        assert!(
            exited.is_ok(),
            "round {round}: SIGINT did not stop the edge"
        );
        stack.start_proxy();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_picks_up_a_new_upstream_list() {
    let opts = Options {
        proxied: Some(vec![0]),
        ..Options::default()
    };
    let stack = Stack::start(opts);
    for _ in 0..4 {
        assert_eq!(stack.get("/health").await.status(), 200);
    }
    let second = stack.upstreams[1].admin_port;
    assert_eq!(
        stack
            .metric(second, "kurz_api_requests_total", &["route=\"/health\""])
            .await,
        0.0
    );
    stack.write_config(&[1], &Options::default());
    let status = Command::new("kill")
        .args(["-HUP", &stack.proxy_pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    stack.reloads_reach("ok", 1.0).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert_eq!(
            stack.get("/health").await.status(),
            200,
            "no request dropped during the reload"
        );
        if stack
            .metric(second, "kurz_api_requests_total", &["route=\"/health\""])
            .await
            >= 1.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "the new upstream got no traffic");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_refuses_a_bad_file_and_then_applies_new_rate_limits() {
    const LIMITED: &str = "{ redirect: { rate: 0.02, burst: 3 }, write: { rate: 0, burst: 1 }, auth: { rate: 0, burst: 1 }, read: { rate: 0, burst: 1 } }";
    let stack = Stack::start(Options {
        proxied: Some(vec![0]),
        ..Options::default()
    });
    let (_, code) = stack.link("https://example.com/reload").await;
    let url = stack.url(&format!("/{code}"));
    let second = stack.upstreams[1].admin_port;
    let health_at_second = || async {
        stack
            .metric(second, "kurz_api_requests_total", &["route=\"/health\""])
            .await
    };
    let applied = || {
        stack.metric(
            stack.admin_port,
            "kurz_proxy_config_last_reload_success",
            &[],
        )
    };
    assert_eq!(applied().await, 1.0, "the file it started with runs");

    // A file with a misspelt key, which would also switch upstreams and limit redirects: none of
    // it may take effect.
    // The file with the new limits, and `extra` besides.
    let limits_and = |extra: &str| Options {
        rate_limits: LIMITED.into(),
        extra_yaml: extra.into(),
        ..Options::default()
    };
    stack.write_config(&[1], &limits_and("rate_limitz: {}\n"));
    stack.signal_proxy("HUP");
    stack.reloads_reach("error", 1.0).await;
    assert!(
        stack.proxy_log().contains("rate_limitz"),
        "the refusal names the bad key: {}",
        stack.proxy_log()
    );
    let client = from("127.0.0.2");
    for _ in 0..6 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 302);
        assert_eq!(stack.get("/health").await.status(), 200);
    }
    assert_eq!(health_at_second().await, 0.0, "the old upstream list stays");
    assert_eq!(
        stack
            .metric(
                stack.admin_port,
                "kurz_proxy_config_reloads_total",
                &["result=\"ok\""]
            )
            .await,
        0.0
    );
    assert_eq!(applied().await, 0.0, "the refused file is not running");

    // The same change without the typo is applied.
    stack.write_config(&[0], &limits_and(""));
    stack.signal_proxy("HUP");
    stack.reloads_reach("ok", 1.0).await;
    assert_eq!(applied().await, 1.0, "the fixed file runs");
    let client = from("127.0.0.3");
    for _ in 0..3 {
        assert_eq!(client.get(&url).send().await.unwrap().status(), 302);
    }
    let limited = client.get(&url).send().await.unwrap();
    assert_eq!(limited.status(), 429, "the reloaded limit applies");
    assert_eq!(limited.headers()["x-ratelimit-limit"], "3");
    let needing_restart = || async {
        stack
            .metric(
                stack.admin_port,
                "kurz_proxy_config_keys_needing_restart",
                &[],
            )
            .await
    };
    assert_eq!(needing_restart().await, 0.0);

    // A file that also changes a key only a restart applies: the rest applies, and the reload
    // says it took in part rather than "ok".
    stack.write_config(&[0], &limits_and("clicks: { batch_max: 7 }\n"));
    stack.signal_proxy("HUP");
    stack.reloads_reach("partial", 1.0).await;
    assert_eq!(needing_restart().await, 1.0);
    assert!(stack.proxy_log().contains("clicks.batch_max"));
    // Put back: nothing waits for a restart any more.
    stack.write_config(&[0], &limits_and(""));
    stack.signal_proxy("HUP");
    stack.reloads_reach("ok", 2.0).await;
    assert_eq!(needing_restart().await, 0.0);
}

/// TLS ended by a load balancer the edge trusts, plain HTTP redirected to HTTPS: a reload whose
/// file empties the trusted proxies (and turns the redirect off, which only a restart applies)
/// is refused whole. Applied, the running redirect would have no proxy left to say a request
/// came over TLS, and would send every request to HTTPS again, for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_cannot_leave_the_https_redirect_without_its_proxy() {
    let trusting = "{ trusted_proxies: [\"127.0.0.1/32\"], redirect: { rate: 0, burst: 1 }, \
                    write: { rate: 0, burst: 1 }, auth: { rate: 0, burst: 1 }, read: { rate: 0, burst: 1 } }";
    let opts = |redirect: bool, rate_limits: String| Options {
        no_https: true,
        listen_extra: format!(", redirect_http_to_https: {redirect}"),
        rate_limits,
        ..Options::default()
    };
    let stack = Stack::start(opts(true, trusting.into()));
    // From the load balancer (127.0.0.1 here), over TLS: answered, not redirected.
    let over_tls = || {
        stack
            .client
            .get(stack.url("/health"))
            .header("x-forwarded-proto", "https")
            .send()
    };
    assert_eq!(over_tls().await.unwrap().status(), 200);
    stack.write_config(&[0, 1], &opts(false, Options::default().rate_limits));
    stack.signal_proxy("HUP");
    stack.reloads_reach("error", 1.0).await;
    assert!(
        stack.proxy_log().contains("listen.redirect_http_to_https"),
        "the refusal names the key: {}",
        stack.proxy_log()
    );
    assert_eq!(
        over_tls().await.unwrap().status(),
        200,
        "the trusted proxy stays"
    );
}

/// docs/operations.md: the environment's overrides win over the file at every reload, so an
/// upstream list set in the environment stays whatever the file says after a SIGHUP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_environment_override_outlives_a_reload() {
    let mut stack = Stack::start(Options {
        proxied: Some(vec![1]),
        ..Options::default()
    });
    // The environment names upstream 0; the file names upstream 1, then is edited again.
    stack.proxy_env = vec![("KURZ_UPSTREAMS".into(), stack.upstreams[0].addr())];
    stack.signal_proxy("TERM");
    assert!(stack.wait_proxy_exit(Duration::from_secs(60)));
    stack.start_proxy();
    let health_at = |i: usize| {
        let port = stack.upstreams[i].admin_port;
        let stack = &stack;
        async move {
            stack
                .metric(port, "kurz_api_requests_total", &["route=\"/health\""])
                .await
        }
    };
    let ignored = health_at(1).await;
    for _ in 0..4 {
        assert_eq!(stack.get("/health").await.status(), 200);
    }
    assert!(
        health_at(0).await >= 4.0,
        "the environment's upstream serves"
    );
    stack.write_config(&[1], &Options::default());
    stack.signal_proxy("HUP");
    stack.reloads_reach("ok", 1.0).await;
    let before = health_at(0).await;
    for _ in 0..4 {
        assert_eq!(stack.get("/health").await.status(), 200);
    }
    assert!(
        health_at(0).await >= before + 4.0,
        "still the environment's upstream"
    );
    assert_eq!(
        health_at(1).await,
        ignored,
        "the file's upstream got nothing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn size_and_time_limits_answer_413_and_504_with_json() {
    let opts = || Options {
        extra_yaml: "limits: { max_request_body_bytes: 1024 }\n".into(),
        read_timeout_ms: 500,
        ..Options::default()
    };
    let stack = Stack::start(opts());
    let res = stack
        .client
        .post(stack.url("/users"))
        .body("x".repeat(4096))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 413);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "payload_too_large"
    );

    // An upstream that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in silent.incoming().flatten() {
            held.push(conn);
        }
    });
    stack.write_config_servers(&[silent_addr], &opts());
    let status = Command::new("kill")
        .args(["-HUP", &stack.proxy_pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    stack.reloads_reach("ok", 1.0).await;
    // POST is not retried, so the upstream's silence is the answer: 504 after read_timeout_ms.
    let res = stack
        .client
        .post(stack.url("/users"))
        .json(&json!({"username": "slow", "email": "s@example.com"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    assert_eq!(
        res.json::<Value>().await.unwrap()["error"],
        "gateway_timeout"
    );

    // An upload with `Expect: 100-continue` (curl sends one with `-F`): the upstream's
    // `100 Continue` reaches the client, then the upstream falls silent. The 504 still comes.
    let continuing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let continuing_addr = continuing.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        let mut held = Vec::new();
        for mut conn in continuing.incoming().flatten() {
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n");
            held.push(conn);
        }
    });
    stack.write_config_servers(&[continuing_addr], &opts());
    stack.signal_proxy("HUP");
    stack.reloads_reach("ok", 2.0).await;
    let answer = tokio::task::spawn_blocking({
        let port = stack.http_port;
        move || {
            use std::io::{Read, Write};
            let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(60)))
                .unwrap();
            conn.write_all(
                b"POST /users HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
                  Content-Length: 2\r\nExpect: 100-continue\r\n\r\n",
            )
            .unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.ends_with(b"\r\n\r\n") {
                let n = conn.read(&mut buf[..1]).unwrap();
                assert!(n == 1, "closed before the 100: {seen:?}");
                seen.extend_from_slice(&buf[..n]);
            }
            assert!(seen.starts_with(b"HTTP/1.1 100"), "{seen:?}");
            conn.write_all(b"{}").unwrap();
            let mut rest = Vec::new();
            let _ = conn.read_to_end(&mut rest);
            String::from_utf8_lossy(&rest).into_owned()
        }
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 504"), "{answer:?}");
    assert!(answer.contains("gateway_timeout"), "{answer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_app_is_served_through_the_edge_and_its_links_redirect_at_the_edge() {
    let stack = Stack::start(Options::default());
    let home = stack.get("/").await;
    assert_eq!(home.status(), 200);
    assert_eq!(home.headers()["content-type"], "text/html; charset=utf-8");
    assert!(home.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("frame-ancestors 'none'"));
    let cookie = home.headers()["set-cookie"].to_str().unwrap().to_owned();
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let html = home.text().await.unwrap();
    let at = html.find("/static/app.").expect("stylesheet link");
    let css = stack
        .get(&html[at..at + html[at..].find('"').unwrap()])
        .await;
    assert_eq!(css.status(), 200);
    assert_eq!(
        css.headers()["cache-control"],
        "public, max-age=31536000, immutable"
    );
    let at = html.find("name=\"csrf\" value=\"").unwrap() + 19;
    let token = &html[at..at + 64];
    let res = stack
        .client
        .post(stack.url("/ui/shorten"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "csrf={token}&original_url=https%3A%2F%2Fexample.com%2Fweb&short_code=viaedge1"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let res = stack.get("/viaedge1").await;
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["location"], "https://example.com/web");
    assert_eq!(api_redirects(&stack).await, 0.0, "answered by the edge");
    // A log-in form post is a password guess: the edge counts it in the auth class.
    let res = stack
        .client
        .post(stack.url("/login"))
        .header("cookie", &cookie)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "csrf={token}&account=nobody&password=wrong-password"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let auth = stack
        .counter_at(
            stack.admin_port,
            "kurz_proxy_requests_total",
            &["class=\"auth\""],
            1.0,
        )
        .await;
    assert_eq!(auth, 1.0);
}

/// Started with a soft open-file limit of 1024 (a container runtime's or a shell's), the edge
/// raises it to the hard limit before it accepts anything, and says what it runs with: at 1024
/// accepts fail from about a thousand connections, whatever the edge was sized for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_raises_its_open_file_limit_to_the_hard_one() {
    use kurz_common::testing::open_file_limits;
    // This process's hard limit: raising a hard limit needs privilege.
    let (_, hard) = open_file_limits("self");
    assert!(
        hard.parse::<u64>().unwrap() > 1024,
        "a hard limit above 1024: {hard}"
    );
    let stack = Stack::start(Options {
        upstreams: 1,
        proxy_nofile: Some(format!("1024:{hard}")),
        ..Options::default()
    });
    let (soft, edge_hard) = open_file_limits(&stack.proxy_pid().to_string());
    assert_eq!((&soft, &edge_hard), (&hard, &hard));
    let gauge = stack
        .metric(stack.admin_port, "kurz_proxy_open_files_limit", &[])
        .await;
    assert_eq!(gauge.to_string(), hard);
    // What it holds is counted at each scrape, every connection a descriptor.
    let open = || stack.metric(stack.admin_port, "kurz_proxy_open_files", &[]);
    let before = open().await;
    assert!(before > 0.0);
    let mut held = Vec::new();
    for _ in 0..50 {
        held.push(std::net::TcpStream::connect(("127.0.0.1", stack.http_port)).unwrap());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while open().await < before + 50.0 {
        assert!(Instant::now() < deadline, "50 connections are not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(held);
}

/// The config file and the certificate are read once, before an upgrading process takes the
/// sockets over: rewritten (a rotation half done, a full disk) while it waits for them, they do
/// not make it exit after the hand-over, when nothing else would be listening.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_runs_on_the_files_it_started_with() {
    let mut stack = Stack::start(Options::default());
    let (_, code) = stack.link("https://example.com/upgrade-file").await;
    let (config, cert) = (stack.config_path.clone(), stack.dir.join("cert.pem"));
    stack.upgrade_proxy_with(|_, _| {
        std::fs::write(&config, "").unwrap();
        std::fs::write(&cert, "-----BEGIN CERTIFICATE-----\nhalf").unwrap();
    });
    let res = stack.get(&format!("/{code}")).await;
    assert_eq!(res.status(), 302, "the new process serves");
    let https = curl(&[
        "-sk",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("https://127.0.0.1:{}/{code}", stack.https_port),
    ]);
    assert_eq!(
        https, "302",
        "and serves HTTPS with the certificate it read"
    );
}
