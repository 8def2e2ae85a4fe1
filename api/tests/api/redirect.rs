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
    let err = error_of(app.get("/NoSuchCode").await, 404).await;
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
            404 => break,
            other => panic!("expiring link answered {other}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the link never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    error_of(app.get(&format!("/{code}")).await, 404).await;
    assert_eq!(
        app.clicks(link["id"].as_i64().unwrap()).await.len(),
        redirected,
        "one click per redirect, none for the refusals"
    );
}
