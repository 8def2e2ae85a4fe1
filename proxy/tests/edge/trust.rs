//! Who names the client, the request id and the client's scheme: only trusted proxies, as
//! configured, and a SIGHUP changes who that is.

use crate::harness::{upstream_alone, Behaviour, Options, Received, Stack};
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
        let clicks = stack.clicks_of(id).await;
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
    stack.reloads_reach("ok", 1.0).await;
    let (rid, ip) = click_as(&stack, id, &code, 2).await;
    assert_eq!(rid, "forged-2", "a trusted proxy's request id is kept");
    assert_eq!(ip, "198.51.100.0", "a trusted proxy names the client");
    assert!(
        cookie_is_secure(&stack).await,
        "a trusted load balancer's HTTPS was lost at the edge"
    );

    // Cloudflare names the client, but passes a client's own request id through.
    let behind_cloudflare = Options {
        rate_limits: format!("{{ cloudflare_proxies: [\"127.0.0.0/8\"], {NO_LIMITS} }}"),
        ..Options::default()
    };
    stack.write_config(&[0, 1], &behind_cloudflare);
    stack.signal_proxy("HUP");
    stack.reloads_reach("ok", 2.0).await;
    let (rid, ip) = click_as(&stack, id, &code, 3).await;
    assert_ne!(
        rid, "forged-3",
        "a client chose its request id through Cloudflare"
    );
    assert_eq!(ip, "198.51.100.0", "Cloudflare names the client");
}

/// The values of `name` among `headers`, in order.
fn values(headers: &[(String, String)], name: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_forwards_only_the_visit_id_it_minted_and_the_chain_it_trusts() {
    let opts = || Options {
        upstreams: 1,
        rate_limits: format!("{{ {NO_LIMITS} }}"),
        ..Options::default()
    };
    let stack = Stack::start(opts());
    let (addr, seen) = upstream_alone(&stack, &opts(), Behaviour::Answer).await;

    let forged = "0123456789abcdef0123456789abcdef";
    let with_forged = |path: &str| {
        stack
            .client
            .get(stack.url(path))
            .header("x-kurz-visit-id", forged)
            .header("x-forwarded-for", "198.51.100.9")
            .send()
    };
    // A code Redis does not hold: the edge ran its visit script, then forwards the visit.
    assert_eq!(with_forged("/nosuch1").await.unwrap().status(), 200);
    assert_eq!(with_forged("/urls?limit=1").await.unwrap().status(), 200);

    let seen_log = seen.clone();
    let seen = seen.lock().unwrap().clone();
    let visit = seen
        .iter()
        .find(|(path, _)| path == "/nosuch1")
        .expect("the visit was forwarded");
    let ids = values(&visit.1, "x-kurz-visit-id");
    let [id] = ids.as_slice() else {
        panic!("a forwarded visit carries one id, the edge's: {ids:?}");
    };
    assert_ne!(id, forged, "the client's id was passed on");
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "the edge's id is 32 hex digits: {id}"
    );
    let other = seen
        .iter()
        .find(|(path, _)| path.starts_with("/urls"))
        .expect("the API request was forwarded");
    assert!(
        values(&other.1, "x-kurz-visit-id").is_empty(),
        "a request that is no visit carries no id: {:?}",
        other.1
    );
    // The client's own X-Forwarded-For is dropped: the API hears of the edge's peer alone.
    assert_eq!(values(&other.1, "x-forwarded-for"), ["127.0.0.1"]);

    // A trusted peer's chain is kept, every line of it in order, and the peer goes last.
    let trusting = Options {
        upstreams: 1,
        rate_limits: format!("{{ trusted_proxies: [\"127.0.0.0/8\"], {NO_LIMITS} }}"),
        ..Options::default()
    };
    stack.write_config_servers(std::slice::from_ref(&addr), &trusting);
    stack.signal_proxy("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let path = "/urls?limit=2";
        let res = stack
            .client
            .get(stack.url(path))
            .header("x-forwarded-for", "198.51.100.9")
            .header("x-forwarded-for", "203.0.113.5")
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let got = seen_after(&seen_log, path);
        if got == ["198.51.100.9, 203.0.113.5, 127.0.0.1"] {
            break;
        }
        assert_eq!(got, ["127.0.0.1"], "before the reload, or after it");
        assert!(Instant::now() < deadline, "the reload was not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `x-forwarded-for` values of the last request for `path` the upstream received.
fn seen_after(seen: &Received, path: &str) -> Vec<String> {
    let seen = seen.lock().unwrap();
    let (_, headers) = seen.iter().rev().find(|(p, _)| p == path).unwrap();
    values(headers, "x-forwarded-for")
}

/// Under `redis.replica_acks` the edge forwards the visits it cannot confirm (a limited link's
/// always): each still carries an id of the edge's, so the API that counts it marks it, and a
/// retry on another API after the first died counts it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_replica_acks_a_forwarded_visit_carries_the_edges_id_too() {
    let opts = || Options {
        upstreams: 1,
        replica_acks: 1,
        rate_limits: format!("{{ {NO_LIMITS} }}"),
        ..Options::default()
    };
    let stack = Stack::start(opts());
    let (_, seen) = upstream_alone(&stack, &opts(), Behaviour::Answer).await;
    assert_eq!(stack.get("/nosuch2").await.status(), 200);
    let seen = seen.lock().unwrap().clone();
    let visit = seen
        .iter()
        .find(|(path, _)| path == "/nosuch2")
        .expect("the visit was forwarded");
    let ids = values(&visit.1, "x-kurz-visit-id");
    assert!(
        ids.len() == 1 && ids[0].len() == 32,
        "a forwarded visit carries the edge's id: {ids:?}"
    );
}

/// Headers about the client's connection stay at the edge (Pingora strips them, and those a
/// `Connection` line names): a client's `Connection: close` would otherwise make the API close
/// the edge's pooled connection after every request, and its `Proxy-Authorization`
/// (credentials for a proxy) would reach the API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded_to_the_api() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let opts = || Options {
        upstreams: 1,
        rate_limits: format!("{{ {NO_LIMITS} }}"),
        ..Options::default()
    };
    let stack = Stack::start(opts());
    let (_, seen) = upstream_alone(&stack, &opts(), Behaviour::Answer).await;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", stack.http_port))
        .await
        .unwrap();
    conn.write_all(
        b"GET /urls/hop HTTP/1.1\r\nHost: a\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\n\
          Keep-Alive: timeout=5\r\nProxy-Authorization: Basic eDp5\r\nTE: trailers\r\n\
          X-Kept: 2\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = seen.lock().unwrap().clone();
    let (_, headers) = seen
        .iter()
        .find(|(path, _)| path == "/urls/hop")
        .expect("the request was forwarded");
    for name in ["x-secret", "keep-alive", "proxy-authorization", "te"] {
        assert!(
            values(headers, name).is_empty(),
            "{name} forwarded: {headers:?}"
        );
    }
    assert!(
        values(headers, "connection")
            .iter()
            .all(|v| !v.contains("close")),
        "{headers:?}"
    );
    assert_eq!(values(headers, "x-kept"), ["2"]);
}
