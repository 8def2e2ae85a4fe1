//! What a link answers at the edge besides 302: its own redirect status, from Redis and from the
//! near-cache, and 410 `gone` once expired (while unknown codes stay 404) — without the API; and
//! its preview page (`/<code>+`), which the API answers.

use crate::api_redirects;
use crate::harness::{Options, Stack};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_answers_each_links_status_and_410_once_expired() {
    let stack = Stack::start(Options {
        upstreams: 1,
        ..Options::default()
    });
    let (id, code) = stack.link("https://example.com/kinds").await;
    let res = stack
        .client
        .put(stack.url(&format!("/urls/{id}")))
        .json(&json!({"redirect_type": 307}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    // First from Redis (the script), then from the near-cache.
    for _ in 0..3 {
        let res = stack.get(&format!("/{code}")).await;
        assert_eq!(res.status(), 307);
        assert_eq!(res.headers()["location"], "https://example.com/kinds");
    }
    assert_eq!(api_redirects(&stack).await, 0.0, "answered at the edge");
    // A custom code that begins like a route the edge hides (`/admin…`) is a link like any.
    let user = stack
        .post(
            "/users",
            json!({"username": "adm", "email": "adm@example.com"}),
        )
        .await;
    stack
        .post(
            "/urls",
            json!({"user_id": user["id"], "original_url": "https://example.com/adm", "short_code": "admins"}),
        )
        .await;
    let res = stack.get("/admins").await;
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["location"], "https://example.com/adm");
    assert_eq!(stack.get("/admins+").await.status(), 200);
    assert_eq!(stack.get("/admin/anything").await.status(), 404);
    // The preview passes through the edge to the API: no redirect, no click.
    let res = stack.get(&format!("/{code}+")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    assert!(res
        .text()
        .await
        .unwrap()
        .contains("https://example.com/kinds"));
    // (The API counts the preview under its `/{code}` route.)
    let api_answered = api_redirects(&stack).await;

    // Expire it in the database, then any write republishes the entry (and invalidates).
    let out = std::process::Command::new("psql")
        .arg(stack.db_url())
        .args([
            "-XAtqc",
            &format!("UPDATE urls SET expires_at = now() - interval '1 minute' WHERE id = {id}"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let invalidations = || stack.metric(stack.admin_port, "kurz_proxy_invalidations_total", &[]);
    let before = invalidations().await;
    let res = stack
        .client
        .put(stack.url(&format!("/urls/{id}")))
        .json(&json!({"title": "expired now"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while invalidations().await <= before {
        assert!(Instant::now() < deadline, "the invalidation never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..2 {
        let res = stack.get(&format!("/{code}")).await;
        assert_eq!(res.status(), 410);
        assert_eq!(res.json::<Value>().await.unwrap()["error"], "gone");
    }
    assert_eq!(
        api_redirects(&stack).await,
        api_answered,
        "refused at the edge too"
    );
    // An unknown code: the API answers the first one (and caches it as missing), still 404.
    for _ in 0..2 {
        let res = stack.get("/NoSuchCode9").await;
        assert_eq!(res.status(), 404);
        assert_eq!(res.json::<Value>().await.unwrap()["error"], "not_found");
    }
    let clicks = stack.clicks_of(id).await;
    assert_eq!(clicks.len(), 3, "no click for the refusals");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privacy_store_ip_applies_at_the_edge() {
    for (setting, expected) in [("full", Some("127.0.0.1")), ("none", None)] {
        let stack = Stack::start(Options {
            upstreams: 1,
            extra_yaml: format!("privacy: {{ store_ip: {setting} }}\n"),
            ..Options::default()
        });
        let (id, code) = stack.link("https://example.com/private").await;
        for _ in 0..2 {
            // Redis (the script's append), then the near-cache (the batched append).
            assert_eq!(stack.get(&format!("/{code}")).await.status(), 302);
        }
        assert_eq!(api_redirects(&stack).await, 0.0, "recorded by the edge");
        let clicks = stack.clicks_of(id).await;
        assert_eq!(clicks.len(), 2);
        for click in &clicks {
            assert_eq!(click["details"]["ip"].as_str(), expected, "{setting}");
        }
    }
}

/// `max_visits` at the edge: visitors racing through the edge get exactly the allowed
/// redirects, the rest 410 `gone`; once the link is used up the edge refuses it without the
/// API, and exactly as many clicks are stored as redirects went out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_visitors_at_the_edge_cannot_exceed_max_visits() {
    let stack = Stack::start(Options {
        upstreams: 1,
        ..Options::default()
    });
    let (id, code) = stack.link("https://example.com/limited").await;
    let res = stack
        .client
        .put(stack.url(&format!("/urls/{id}")))
        .json(&json!({"max_visits": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let path = format!("/{code}");
    let mut statuses: Vec<u16> = futures_util::future::join_all((0..20).map(|_| stack.get(&path)))
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    statuses.sort();
    assert_eq!(
        statuses.iter().filter(|s| **s == 302).count(),
        5,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 410).count(),
        15,
        "{statuses:?}"
    );
    let api_answered = api_redirects(&stack).await;
    for _ in 0..3 {
        let res = stack.get(&path).await;
        assert_eq!(res.status(), 410);
        let err: Value = res.json().await.unwrap();
        assert_eq!(err["error"], "gone");
        assert!(err["message"].as_str().unwrap().contains("visit limit"));
    }
    assert_eq!(
        api_redirects(&stack).await,
        api_answered,
        "a used-up link is refused at the edge"
    );
    assert_eq!(crate::clicks(&stack, id).await, 5, "one click per redirect");
}

/// A link-preview fetcher is redirected at the edge like anyone, and its click is stored marked
/// as a bot, which the stats keep apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_are_redirected_at_the_edge_and_counted_apart() {
    let stack = Stack::start(Options {
        upstreams: 1,
        ..Options::default()
    });
    let (id, code) = stack.link("https://example.com/shared").await;
    for ua in [
        "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
    ] {
        let res = stack
            .client
            .get(stack.url(&format!("/{code}")))
            .header("user-agent", ua)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 302, "{ua}");
    }
    assert_eq!(api_redirects(&stack).await, 0.0, "answered at the edge");
    let stats: Value = stack
        .get(&format!("/urls/{id}/stats"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (stats["clicks"].as_i64(), stats["bots"].as_i64()),
        (Some(1), Some(1))
    );
    assert_eq!(stats["browsers"], json!([{"name": "Firefox", "clicks": 1}]));
}

/// A password-protected link through the edge: never redirected by the edge (from Redis or its
/// near-cache), the API asks for the password, and the right one gets the 303 and one click.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protected_link_is_only_opened_by_the_api_after_its_password() {
    let stack = Stack::start(Options {
        upstreams: 1,
        ..Options::default()
    });
    let (id, code) = stack.link("https://example.com/behind").await;
    // Visited before it had a password: the edge holds it in its near-cache.
    assert_eq!(stack.get(&format!("/{code}")).await.status(), 302);
    let res = stack
        .client
        .put(stack.url(&format!("/urls/{id}")))
        .json(&json!({"password": "letmein"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let before = api_redirects(&stack).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Until the invalidation lands the near-cache may still redirect; after it, never.
        let res = stack.get(&format!("/{code}")).await;
        if res.status() == 200 {
            assert!(res.text().await.unwrap().contains("type=\"password\""));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edge kept redirecting a protected link"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..3 {
        assert_eq!(stack.get(&format!("/{code}")).await.status(), 200);
    }
    assert!(
        api_redirects(&stack).await > before,
        "the API answered the form"
    );
    let clicks_before = crate::clicks(&stack, id).await;
    // As a browser posts the form: with the token of its `csrf` cookie.
    let token = "c0ffee".repeat(10) + "c0ff";
    let res = stack
        .client
        .post(stack.url(&format!("/{code}")))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", format!("csrf={token}"))
        .body(format!("password=letmein&csrf={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
    assert_eq!(res.headers()["location"], "https://example.com/behind");
    assert_eq!(crate::clicks(&stack, id).await, clicks_before + 1);
}

/// A visitor is one visitor whoever records the click: the edge (from Redis or its
/// near-cache) and the API (a request that reached it directly) hash the same address and agent
/// under the same day's salt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_edge_and_the_api_count_the_same_visitor_once() {
    let stack = Stack::start(Options {
        upstreams: 1,
        ..Options::default()
    });
    let (id, code) = stack.link("https://example.com/counted").await;
    let ua = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0";
    let visit = |url: String| {
        let req = stack.client.get(&url).header("user-agent", ua);
        async move {
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 302, "{url}");
        }
    };
    let clicks = || async {
        stack
            .get(&format!("/events?url_id={id}&event_type=click"))
            .await
            .json::<Vec<Value>>()
            .await
            .unwrap()
    };
    // Each process loads the day's salt in the background once started; until then its clicks
    // carry no visitor id. Visit through the edge until one of its clicks has one.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut through_edge = 0;
    loop {
        visit(stack.url(&format!("/{code}"))).await;
        through_edge += 1;
        if clicks()
            .await
            .iter()
            .any(|c| c["details"]["visitor"].is_string())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the edge never had the day's salt"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    visit(format!("http://{}/{code}", stack.upstreams[0].addr())).await;
    assert_eq!(
        api_redirects(&stack).await,
        1.0,
        "one answered by the API itself"
    );
    let ids: Vec<String> = clicks()
        .await
        .iter()
        .filter_map(|c| c["details"]["visitor"].as_str().map(str::to_owned))
        .collect();
    assert!(
        ids.len() >= 2,
        "the edge's and the API's clicks have ids: {ids:?}"
    );
    assert!(ids.iter().all(|v| *v == ids[0]), "one visitor: {ids:?}");
    let stats: Value = stack
        .get(&format!("/urls/{id}/stats"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (stats["clicks"].as_i64(), stats["visitors"].as_i64()),
        (Some(through_edge + 1), Some(1))
    );
}

/// What the API serves beside links passes through the edge untouched: the OpenAPI document,
/// and a link's QR code (`/<code>/qr` is two segments: no redirect).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_and_qr_codes_pass_through_the_edge() {
    let stack = Stack::start(Options {
        upstreams: 1,
        ..Options::default()
    });
    let res = stack.get("/openapi.json").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["openapi"], "3.1.0");
    let (_, code) = stack.link("https://example.com/printed").await;
    let res = stack.get(&format!("/{code}/qr?format=png")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "image/png");
}
