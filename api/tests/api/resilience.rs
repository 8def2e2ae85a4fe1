//! Degradation: Redis down (from the start, or killed mid-run) and PostgreSQL gone.

use crate::helpers::{closed_port, error_of, spawn_app, spawn_app_with};
use kurz_api::config::ApiConfig;
use kurz_api::startup::Application;
use kurz_common::testing::{Persistence, PrivateRedis};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// An API started while PostgreSQL does not answer serves its metrics meanwhile, saying so:
/// monitoring sees the database down (`KurzPostgresDown`), not only a process refusing scrapes.
#[tokio::test]
async fn an_api_waiting_for_postgres_at_start_exports_it_down() {
    let admin = closed_port();
    let mut config = ApiConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: format!("127.0.0.1:{admin}").parse().unwrap(),
        ..ApiConfig::default()
    };
    config.database.url = format!("postgres://postgres@127.0.0.1:{}/kurz", closed_port());
    config.log_level = "warn".into();
    config.validate().expect("test config is valid");
    let starting = tokio::spawn(Application::build(config));
    let url = format!("http://127.0.0.1:{admin}/metrics");
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        if let Ok(res) = reqwest::get(&url).await {
            break res.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "no metrics while waiting");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        text.lines().any(|l| l == "kurz_api_database_up 0"),
        "{text}"
    );
    assert!(!starting.is_finished(), "the start gave up already");
    starting.abort();
}

#[tokio::test]
async fn with_redis_down_from_the_start_everything_still_works() {
    let port = closed_port();
    let app = spawn_app_with(|c| c.redis.url = format!("redis://127.0.0.1:{port}/0")).await;
    let ready: Value = app.get("/ready").await.json().await.unwrap();
    assert_eq!(
        ready,
        json!({"status": "degraded", "db": "ok", "cache": "down"})
    );
    let user = app.create_user("nored").await;
    let link = app.create_url(user, "https://example.com/nored").await;
    let code = link["short_code"].as_str().unwrap();
    for _ in 0..3 {
        let res = app.get(&format!("/{code}")).await;
        assert_eq!(res.status(), 302);
        assert_eq!(res.headers()["location"], "https://example.com/nored");
    }
    assert_eq!(
        app.clicks(link["id"].as_i64().unwrap()).await.len(),
        3,
        "clicks inserted directly"
    );
    let res = app
        .put_json(
            &format!("/urls/{}", link["id"]),
            &json!({"is_active": false}),
        )
        .await;
    assert_eq!(res.status(), 200);
    error_of(app.get(&format!("/{code}")).await, 404).await;
    // Idempotency keys live in PostgreSQL: a retried create still replays with Redis down.
    let keyed = || {
        app.client
            .post(app.url("/urls"))
            .header("idempotency-key", "k")
            .json(&json!({"user_id": user, "original_url": "https://example.com/i"}))
            .send()
    };
    let first = keyed().await.unwrap();
    assert_eq!(first.status(), 201);
    let again = keyed().await.unwrap();
    assert_eq!(again.status(), 201);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
}

#[tokio::test]
async fn redis_killed_mid_run_then_restarted() {
    let mut redis = PrivateRedis::start(Persistence::None);
    let url = redis.url();
    let app = spawn_app_with(|c| c.redis.url = url).await;
    let (user, id, code) = app.create_link("kill", "https://example.com/kill").await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    assert_eq!(app.clicks(id).await.len(), 1);

    redis.kill();
    for _ in 0..3 {
        assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    }
    assert_eq!(app.clicks(id).await.len(), 4);
    let other = app.create_url(user, "https://example.com/while-down").await;
    assert_eq!(
        app.get(&format!("/{}", other["short_code"].as_str().unwrap()))
            .await
            .status(),
        302
    );

    // Redis comes back empty (no persistence): streams and the group are recreated.
    redis.restart();
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ready: Value = app.get("/ready").await.json().await.unwrap();
        if ready["cache"] == "ok" {
            ok = true;
            break;
        }
    }
    assert!(ok, "API reconnects to Redis");
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    assert_eq!(app.clicks(id).await.len(), 5);
}

#[tokio::test]
async fn with_postgres_gone_requests_get_503_json_not_500() {
    let app = spawn_app().await;
    app.create_user("pg").await;
    let (admin, conn) =
        tokio_postgres::connect(&crate::helpers::admin_db_url(), tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("DROP DATABASE {} WITH (FORCE)", app.db_name))
        .await
        .unwrap();
    let res = app.get("/ready").await;
    assert_eq!(res.status(), 503);
    assert_eq!(res.headers()["retry-after"], "2");
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "not_ready");
    let res = app
        .post_json(
            "/users",
            &json!({"username": "x", "email": "x@example.com"}),
        )
        .await;
    assert_eq!(error_of(res, 503).await["error"], "service_unavailable");
    let res = app.get("/users").await;
    assert_eq!(error_of(res, 503).await["error"], "service_unavailable");
}
