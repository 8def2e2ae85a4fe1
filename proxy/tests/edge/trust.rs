//! Who names the client, the request id and the client's scheme: only trusted proxies, as
//! configured, and a SIGHUP changes who that is.

use crate::harness::{Options, Stack};
use serde_json::Value;
use std::time::{Duration, Instant};

const NO_LIMITS: &str = "redirect: { rate: 0, burst: 1 }, write: { rate: 0, burst: 1 }, auth: { rate: 0, burst: 1 }, read: { rate: 0, burst: 1 }";

/// Whether the web app's cookie for a request that says it came over HTTPS (as a load balancer
/// ending TLS in front of the edge does) is marked `Secure`.
async fn cookie_is_secure(stack: &Stack) -> bool {
    let res = stack
        .client
        .get(stack.url("/"))
        .header("x-forwarded-proto", "https")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let cookie = res.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("csrf="), "{cookie}");
    cookie.contains("; Secure")
}

/// Redirects once with a forged client address and request id; returns the id the edge used
/// and the (truncated) address the click was stored with.
async fn click_as(stack: &Stack, id: i64, code: &str, n: usize) -> (String, String) {
    let res = stack
        .client
        .get(stack.url(&format!("/{code}")))
        .header("x-forwarded-for", "198.51.100.7")
        .header("x-request-id", format!("forged-{n}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    let rid = res.headers()["x-request-id"].to_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let clicks: Vec<Value> = stack
            .get(&format!("/events?url_id={id}&event_type=click"))
            .await
            .json()
            .await
            .unwrap();
        if clicks.len() == n {
            let ip = clicks[n - 1]["details"]["ip"].as_str().unwrap().to_owned();
            return (rid, ip);
        }
        assert!(Instant::now() < deadline, "click {n} not stored");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_trusted_proxies_name_the_client_the_request_id_and_https_and_sighup_changes_them() {
    let untrusting = Options {
        rate_limits: format!("{{ {NO_LIMITS} }}"),
        ..Options::default()
    };
    let stack = Stack::start(untrusting);
    let (id, code) = stack.link("https://example.com/trust").await;
    let (rid, ip) = click_as(&stack, id, &code, 1).await;
    assert_ne!(
        rid, "forged-1",
        "a client chose its request id (its click's identity)"
    );
    assert_eq!(ip, "127.0.0.0", "a client chose its address");
    assert!(
        !cookie_is_secure(&stack).await,
        "a client's X-Forwarded-Proto reached the API"
    );

    let trusting = Options {
        rate_limits: format!("{{ trusted_proxies: [\"127.0.0.0/8\"], {NO_LIMITS} }}"),
        ..Options::default()
    };
    stack.write_config(&[0, 1], &trusting);
    stack.signal_proxy("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack
        .metric(
            stack.admin_port,
            "kurz_proxy_config_reloads_total",
            &["result=\"ok\""],
        )
        .await
        < 1.0
    {
        assert!(
            Instant::now() < deadline,
            "no reload: {}",
            stack.proxy_log()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let (rid, ip) = click_as(&stack, id, &code, 2).await;
    assert_eq!(rid, "forged-2", "a trusted proxy's request id is kept");
    assert_eq!(ip, "198.51.100.0", "a trusted proxy names the client");
    assert!(
        cookie_is_secure(&stack).await,
        "a trusted load balancer's HTTPS was lost at the edge"
    );
}
