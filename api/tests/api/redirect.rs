use crate::helpers::{error_of, spawn_app};
use kurz_common::keys::{CachedLink, KeySchema};
use serde_json::{json, Value};
use std::time::Duration;

fn keys(app: &crate::helpers::TestApp) -> KeySchema {
    app.state.keys.clone()
}

async fn redis_get(key: &str) -> Option<String> {
    let client = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn redirect_answers_302_with_location_and_no_store() {
    let app = spawn_app().await;
    let user = app.create_user("r").await;
    let link = app.create_url(user, "https://example.com/target?q=1").await;
    let res = app
        .get(&format!("/{}", link["short_code"].as_str().unwrap()))
        .await;
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["location"], "https://example.com/target?q=1");
    assert!(res.headers()["cache-control"]
        .to_str()
        .unwrap()
        .contains("no-store"));
}

#[tokio::test]
async fn head_redirects_without_counting_a_click() {
    let app = spawn_app().await;
    let user = app.create_user("h").await;
    let link = app.create_url(user, "https://example.com/head").await;
    let res = app
        .client
        .head(app.url(&format!("/{}", link["short_code"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    assert!(app.clicks(link["id"].as_i64().unwrap()).await.is_empty());
}

#[tokio::test]
async fn unknown_codes_are_404_and_cached_negatively() {
    let app = spawn_app().await;
    let res = app.get("/NoSuchCode").await;
    // Kept by no cache: the code may be made a moment later.
    assert_eq!(res.headers()["cache-control"], "no-store");
    let err = error_of(res, 404).await;
    assert_eq!(err["error"], "not_found");
    assert_eq!(
        redis_get(&keys(&app).link("NoSuchCode")).await.as_deref(),
        Some("0")
    );
    error_of(app.get("/x").await, 404).await;
}

#[tokio::test]
async fn redirects_are_served_from_the_cache_after_the_first() {
    let app = spawn_app().await;
    let user = app.create_user("c").await;
    let link = app.create_url(user, "https://example.com/cached").await;
    let code = link["short_code"].as_str().unwrap();
    let cached = redis_get(&keys(&app).link(code))
        .await
        .expect("create fills the cache");
    assert!(matches!(
        CachedLink::decode(&cached),
        Some(CachedLink::Found(_))
    ));
    // Change PostgreSQL behind the API's back: the cached target keeps answering.
    app.sql()
        .await
        .execute(
            "UPDATE urls SET original_url = 'https://example.com/db' WHERE short_code = $1",
            &[&code],
        )
        .await
        .unwrap();
    let res = app.get(&format!("/{code}")).await;
    assert_eq!(res.headers()["location"], "https://example.com/cached");
    // A miss reads PostgreSQL and fills the cache.
    app.state
        .redis
        .query::<i64>(redis::cmd("DEL").arg(keys(&app).link(code)))
        .await
        .unwrap();
    let res = app.get(&format!("/{code}")).await;
    assert_eq!(res.headers()["location"], "https://example.com/db");
    assert!(redis_get(&keys(&app).link(code)).await.is_some());
}

#[tokio::test]
async fn deactivating_stops_the_redirect_at_once_and_publishes_an_invalidation() {
    let app = spawn_app().await;
    let user = app.create_user("d").await;
    let link = app.create_url(user, "https://example.com/d").await;
    let code = link["short_code"].as_str().unwrap().to_owned();
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);

    let client = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut pubsub = client.get_async_pubsub().await.unwrap();
    pubsub.subscribe(keys(&app).invalidations()).await.unwrap();

    let res = app
        .put_json(
            &format!("/urls/{}", link["id"]),
            &json!({"is_active": false}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let msg = tokio::time::timeout(Duration::from_secs(5), futures_next(&mut pubsub))
        .await
        .expect("invalidation published");
    assert_eq!(msg, code);

    error_of(app.get(&format!("/{code}")).await, 404).await;
    assert_eq!(
        app.clicks(link["id"].as_i64().unwrap()).await.len(),
        1,
        "the 404 recorded no click"
    );
    app.put_json(
        &format!("/urls/{}", link["id"]),
        &json!({"is_active": true}),
    )
    .await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
}

async fn futures_next(pubsub: &mut redis::aio::PubSub) -> String {
    use futures_util::StreamExt;
    let msg = pubsub.on_message().next().await.expect("a message");
    msg.get_payload::<String>().unwrap()
}

#[tokio::test]
async fn expired_links_stop_redirecting() {
    let app = spawn_app().await;
    let user = app.create_user("x").await;
    // The link must be seen alive once: a stalled machine may pass a short expiry before the
    // first request, so the window widens until it is.
    let mut window = 3;
    let (link, code) = loop {
        let soon = (chrono::Utc::now() + chrono::Duration::seconds(window))
            .format("%Y-%m-%dT%H:%M:%S")
            .to_string();
        let res = app
            .post_json(
                "/urls",
                &json!({"user_id": user, "original_url": "https://example.com/x", "expires_at": soon}),
            )
            .await;
        let link: Value = res.json().await.unwrap();
        let code = link["short_code"].as_str().unwrap().to_owned();
        if app.get(&format!("/{code}")).await.status() == 302 {
            break (link, code);
        }
        assert!(window < 60, "never saw a link alive before its expiry");
        window *= 4;
    };
    // Then it stops on its own, with no write: poll against a deadline, count what redirected.
    let mut redirected = 1;
    let deadline = std::time::Instant::now() + Duration::from_secs(window as u64 + 30);
    loop {
        let res = app.get(&format!("/{code}")).await;
        match res.status().as_u16() {
            302 => redirected += 1,
            410 => break,
            other => panic!("expiring link answered {other}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the link never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Expired is not unknown: 410 `gone`, while inactive and unknown codes stay 404.
    let res = app.get(&format!("/{code}")).await;
    assert_eq!(res.headers()["cache-control"], "no-store");
    assert_eq!(error_of(res, 410).await["error"], "gone");
    assert_eq!(
        app.clicks(link["id"].as_i64().unwrap()).await.len(),
        redirected,
        "one click per redirect, none for the refusals"
    );
}

#[tokio::test]
async fn each_link_redirects_with_its_own_status_and_bad_ones_are_refused() {
    let app = spawn_app().await;
    let user = app.create_user("rt").await;
    let plain = app.create_url(user, "https://example.com/plain").await;
    assert_eq!(plain["redirect_type"], 302, "302 unless asked");
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/moved", "redirect_type": 301}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let moved: Value = res.json().await.unwrap();
    assert_eq!(moved["redirect_type"], 301);
    let code = moved["short_code"].as_str().unwrap().to_owned();
    for _ in 0..2 {
        // The second answer comes from the link cache: the status is in the entry too.
        let res = app.get(&format!("/{code}")).await;
        assert_eq!(res.status(), 301);
        assert_eq!(res.headers()["location"], "https://example.com/moved");
    }
    let id = moved["id"].as_i64().unwrap();
    let res = app
        .put_json(&format!("/urls/{id}"), &json!({"redirect_type": 308}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["redirect_type"], 308);
    assert_eq!(app.get(&format!("/{code}")).await.status(), 308);
    let updated: Vec<Value> = app
        .get(&format!("/events?url_id={id}&event_type=updated"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        updated[0]["details"],
        json!({"field": "redirect_type", "new_value": 308})
    );
    for bad in [
        json!(303),
        json!("302"),
        json!(null),
        json!(302.5),
        json!(-1),
    ] {
        let res = app
            .post_json(
                "/urls",
                &json!({"user_id": user, "original_url": "https://example.com/x", "redirect_type": bad}),
            )
            .await;
        let err = error_of(res, 400).await;
        assert_eq!(
            err["details"]["redirect_type"], "must be one of 301, 302, 307, 308",
            "{bad}"
        );
        let res = app
            .put_json(&format!("/urls/{id}"), &json!({"redirect_type": bad}))
            .await;
        error_of(res, 400).await;
    }
}

/// An entry written by the previous version (no link version) reads as a miss: the redirect is
/// answered from PostgreSQL, and the fill replaces the entry instead of leaving it until its TTL.
#[tokio::test]
async fn a_cache_entry_of_the_previous_format_is_replaced_on_the_next_redirect() {
    let app = spawn_app().await;
    let user = app.create_user("v1").await;
    let link = app.create_url(user, "https://example.com/v1").await;
    let code = link["short_code"].as_str().unwrap();
    let key = keys(&app).link(code);
    // Format 4, the one before link versions.
    let old = format!(
        "4|{}|{user}|1||302||0|https://example.com/stale",
        link["id"]
    );
    let client = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SET")
        .arg(&key)
        .arg(&old)
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let res = app.get(&format!("/{code}")).await;
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["location"], "https://example.com/v1");
    let now = redis_get(&key).await.unwrap();
    assert!(
        matches!(CachedLink::decode(&now), Some(CachedLink::Found(_))),
        "replaced by a current entry: {now}"
    );
}

#[tokio::test]
async fn the_preview_names_the_target_without_redirecting_or_counting() {
    let app = spawn_app().await;
    let user = app.create_user("pv").await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/a?b=1&c=<2>", "title": "<script>alert(1)</script> & co"}),
        )
        .await;
    let link: Value = res.json().await.unwrap();
    let (id, code) = (
        link["id"].as_i64().unwrap(),
        link["short_code"].as_str().unwrap().to_owned(),
    );
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    // A link-preview fetcher's: the preview counts it, the stats leave it out by default.
    let bot = app
        .client
        .get(app.url(&format!("/{code}")))
        .header(
            "user-agent",
            "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(bot.status(), 302);
    app.clicks(id).await; // stored, so the rollup counts them
    assert_eq!(app.stats(id).await["clicks"], 1);

    let res = app.get(&format!("/{code}+")).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("location").is_none());
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    let csp = res.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(res.headers()["x-frame-options"], "DENY");
    let page = res.text().await.unwrap();
    // The stored target is normalised (`<2>` percent-encoded); the page escapes its `&`.
    assert_eq!(link["original_url"], "https://example.com/a?b=1&c=%3C2%3E");
    assert!(
        page.contains("href=\"https://example.com/a?b=1&amp;c=%3C2%3E\""),
        "{page}"
    );
    assert!(
        page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; co"),
        "{page}"
    );
    assert!(!page.contains("<script>"), "the title is escaped");
    assert!(page.contains("Followed 2 times"), "{page}");

    let res = app
        .client
        .get(app.url(&format!("/{code}+")))
        .header("accept", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["original_url"], link["original_url"]);
    assert_eq!(v["short_code"], code.as_str());
    assert_eq!(v["clicks"], 2);
    assert_eq!(v["short_url"], format!("http://kurz.test/{code}"));

    assert_eq!(app.clicks(id).await.len(), 2, "previews count no click");
    assert_eq!(
        error_of(app.get("/NoSuchCode+").await, 404).await["error"],
        "not_found"
    );
    error_of(app.get("/ab+").await, 404).await;
    let res = app
        .put_json(&format!("/urls/{id}"), &json!({"is_active": false}))
        .await;
    assert_eq!(res.status(), 200);
    error_of(app.get(&format!("/{code}+")).await, 404).await;
}
