//! Clicks under faults: each click stored exactly once whatever path it takes, the consumer
//! quiet while PostgreSQL is down, Redis losing its data counted, and reads that do not wait on
//! a backlog. Every server broken here is private to the test (`private.rs`).

use crate::helpers::{cached, row_now, spawn_app_with, TestApp};
use kurz_common::testing::{Persistence, PrivatePg, PrivateRedis};
use serde_json::Value;
use std::time::{Duration, Instant};

/// Polls `ok` every 50 ms until it holds or `limit` passes.
async fn wait_for<F, Fut>(what: &str, limit: Duration, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !ok().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.metrics_text().await;
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no series {series}"))
}

/// An app on a PostgreSQL of the test's own, which it stops: waits and connects that give up
/// soon, so an outage is answered (or seen) at once.
fn on_private_pg(c: &mut kurz_api::config::ApiConfig, pg: &PrivatePg) {
    c.database.url = pg.url();
    c.database.acquire_timeout_ms = 300;
    c.database.connect_timeout_ms = 300;
}

async fn redirect_with_id(app: &TestApp, code: &str, request_id: &str) -> u16 {
    app.client
        .get(app.url(&format!("/{code}")))
        .header("x-request-id", request_id)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn clicks_stored(app: &TestApp, url_id: i64) -> i64 {
    clicks_stored_in(&app.state.config.database.url, url_id).await
}

async fn clicks_stored_in(db_url: &str, url_id: i64) -> i64 {
    let (client, conn) = tokio_postgres::connect(db_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query_one(
            "SELECT count(*) FROM events WHERE url_id = $1 AND event_type = 'click'",
            &[&url_id],
        )
        .await
        .unwrap()
        .get(0)
}

async fn wait_cache_up(app: &TestApp) {
    wait_for(
        "the API to reconnect to Redis",
        Duration::from_secs(20),
        || async {
            let ready: Value = app.get("/ready").await.json().await.unwrap();
            ready["cache"] == "ok"
        },
    )
    .await;
}

fn link_of(v: &Value) -> (i64, String) {
    (
        v["id"].as_i64().unwrap(),
        v["short_code"].as_str().unwrap().to_owned(),
    )
}

#[tokio::test]
async fn a_click_retried_with_the_same_request_id_is_stored_once() {
    let app = spawn_app_with(|c| c.clicks.poll_interval_ms = 3_600_000).await;
    let user = app.create_user("retry").await;
    let (id, code) = link_of(&app.create_url(user, "https://example.com/retry").await);
    // An edge whose append timed out after it applied forwards the request with the same id.
    assert_eq!(redirect_with_id(&app, &code, "req-retry-1").await, 302);
    assert_eq!(redirect_with_id(&app, &code, "req-retry-1").await, 302);
    assert_eq!(redirect_with_id(&app, &code, "req-retry-2").await, 302);
    let clicks = app.clicks(id).await;
    assert_eq!(clicks.len(), 2, "one per request id: {clicks:?}");
}

#[tokio::test]
async fn a_click_stored_directly_while_redis_was_down_is_not_doubled_by_its_stream_copy() {
    let mut redis = PrivateRedis::start(Persistence::AofAlways);
    let url = redis.url();
    let app = spawn_app_with(|c| {
        c.redis.url = url;
        c.clicks.poll_interval_ms = 3_600_000;
    })
    .await;
    let user = app.create_user("paths").await;
    let (id, code) = link_of(&app.create_url(user, "https://example.com/paths").await);
    assert_eq!(redirect_with_id(&app, &code, "req-paths-1").await, 302);
    redis.kill();
    // The same request again, now through the direct insert: stored at once.
    assert_eq!(redirect_with_id(&app, &code, "req-paths-1").await, 302);
    assert_eq!(clicks_stored(&app, id).await, 1);
    // Redis comes back from its AOF with the first copy still in the stream.
    redis.restart();
    wait_cache_up(&app).await;
    assert_eq!(app.clicks(id).await.len(), 1);
    assert_eq!(
        app.state.consumer.backlog().await.unwrap(),
        0,
        "stream copy consumed"
    );
    assert_eq!(clicks_stored(&app, id).await, 1);
}

#[tokio::test]
async fn redis_restarted_with_the_shipped_persistence_keeps_every_unconsumed_click() {
    let mut redis = PrivateRedis::start(Persistence::Shipped);
    let url = redis.url();
    let app = spawn_app_with(|c| {
        c.redis.url = url;
        c.clicks.poll_interval_ms = 3_600_000;
    })
    .await;
    let user = app.create_user("aof").await;
    let (id, code) = link_of(&app.create_url(user, "https://example.com/aof").await);
    for i in 0..5 {
        assert_eq!(
            redirect_with_id(&app, &code, &format!("req-aof-{i}")).await,
            302
        );
    }
    redis.kill();
    redis.restart();
    wait_cache_up(&app).await;
    // A read drains within a budget (and not while Redis is still loading its AOF): poll until
    // the stream's five clicks are stored, then check none was doubled.
    wait_for(
        "the five clicks to be stored",
        Duration::from_secs(30),
        || async { app.clicks(id).await.len() >= 5 },
    )
    .await;
    assert_eq!(app.clicks(id).await.len(), 5);
    assert_eq!(
        metric(&app, "kurz_api_clicks_total{path=\"lost\"}").await,
        0.0
    );
    assert_eq!(
        metric(&app, "kurz_api_click_stream_resets_total").await,
        0.0
    );
}

#[tokio::test]
async fn redis_restarted_empty_counts_the_clicks_it_lost() {
    let mut redis = PrivateRedis::start(Persistence::None);
    let url = redis.url();
    let app = spawn_app_with(|c| {
        c.redis.url = url;
        c.clicks.poll_interval_ms = 3_600_000;
    })
    .await;
    let user = app.create_user("lost").await;
    let (id, code) = link_of(&app.create_url(user, "https://example.com/lost").await);
    for i in 0..5 {
        assert_eq!(
            redirect_with_id(&app, &code, &format!("req-lost-{i}")).await,
            302
        );
    }
    // The consumer's periodic sample, taken here so the test decides when.
    assert_eq!(app.state.consumer.backlog().await.unwrap(), 5);
    redis.kill();
    // Unknown while Redis cannot be asked, not the 5 of the last sample.
    assert_eq!(metric(&app, "kurz_api_click_stream_length").await, -1.0);
    assert_eq!(metric(&app, "kurz_api_click_stream_pending").await, -1.0);
    redis.restart();
    wait_cache_up(&app).await;
    // The next read finds the group gone, counts the loss and goes on with a new group.
    assert_eq!(redirect_with_id(&app, &code, "req-lost-after").await, 302);
    assert_eq!(app.clicks(id).await.len(), 1);
    assert_eq!(
        metric(&app, "kurz_api_clicks_total{path=\"lost\"}").await,
        5.0
    );
    assert_eq!(
        metric(&app, "kurz_api_click_stream_resets_total").await,
        1.0
    );
    // Consuming goes on with the recreated group.
    assert_eq!(redirect_with_id(&app, &code, "req-lost-after").await, 302);
    assert_eq!(app.clicks(id).await.len(), 1);
}

/// Per stream entry pending in the group: how many times it was delivered.
async fn delivery_counts(app: &TestApp) -> Vec<i64> {
    let client = redis::Client::open(app.state.config.redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut counts = Vec::new();
    for key in app.state.keys.all_clicks() {
        let rows: Vec<(String, String, i64, i64)> = redis::cmd("XPENDING")
            .arg(&key)
            .arg(&app.state.config.clicks.group)
            .arg("-")
            .arg("+")
            .arg(10_000)
            .query_async(&mut conn)
            .await
            .unwrap();
        counts.extend(rows.into_iter().map(|(_, _, _, delivered)| delivered));
    }
    counts
}

#[tokio::test]
async fn during_a_postgres_outage_clicks_wait_in_redis_read_once_and_are_stored_once() {
    let pg = PrivatePg::start();
    let app = spawn_app_with(|c| {
        on_private_pg(c, &pg);
        c.clicks.poll_interval_ms = 20;
        // Claims would re-deliver entries idle this long: keep it well inside the outage.
        c.clicks.claim_idle_ms = 200;
    })
    .await;
    let user = app.create_user("outage").await;
    let (id, code) = link_of(&app.create_url(user, "https://example.com/outage").await);
    assert_eq!(redirect_with_id(&app, &code, "req-outage-warm").await, 302);
    wait_for("the warm-up click", Duration::from_secs(20), || async {
        clicks_stored(&app, id).await == 1
    })
    .await;

    assert_eq!(metric(&app, "kurz_api_database_up").await, 1.0);
    pg.down();
    for i in 0..40 {
        assert_eq!(
            redirect_with_id(&app, &code, &format!("req-outage-{i}")).await,
            302,
            "cached links keep redirecting while PostgreSQL is down"
        );
    }
    wait_for(
        "the consumer to fail a few times",
        Duration::from_secs(30),
        || async { metric(&app, "kurz_api_click_commit_failures_total").await >= 3.0 },
    )
    .await;
    assert_eq!(
        app.state.consumer.backlog().await.unwrap(),
        40,
        "every click waits in the stream"
    );
    assert_eq!(
        metric(&app, "kurz_api_database_up").await,
        0.0,
        "the alert's word without an exporter"
    );
    let counts = delivery_counts(&app).await;
    assert!(!counts.is_empty(), "the consumer holds a batch");
    assert!(
        counts.iter().all(|&n| n == 1),
        "held, not re-read or re-claimed while PostgreSQL is down: {counts:?}"
    );

    pg.up();
    wait_for(
        "the held batch to be stored",
        Duration::from_secs(30),
        || async { app.state.consumer.backlog().await.unwrap_or(-1) == 0 },
    )
    .await;
    assert_eq!(clicks_stored(&app, id).await, 41, "none lost, none doubled");
    assert_eq!(metric(&app, "kurz_api_database_up").await, 1.0);
}

/// A pool with every connection in use is not a database outage: `kurz_api_database_up` (which
/// pages as `KurzPostgresDown`) keeps its word while the scrape cannot get a connection, and
/// `/ready` says the API is ready rather than `"db":"down"`.
#[tokio::test]
async fn a_busy_pool_is_not_reported_as_postgres_down() {
    let app = spawn_app_with(|c| crate::helpers::request_pool(c, 1, 300)).await;
    assert_eq!(metric(&app, "kurz_api_database_up").await, 1.0);
    let held = app.state.db.get().await.unwrap();
    assert_eq!(
        metric(&app, "kurz_api_database_up").await,
        1.0,
        "no connection to spare is not PostgreSQL down"
    );
    let ready = app.get("/ready").await;
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(
        (body["status"].as_str(), body["db"].as_str()),
        (Some("ready"), Some("ok"))
    );
    // `/ready` is public: a burst of it opens a connection of its own once, not once per
    // request, while PostgreSQL is the busy one. Counted by PostgreSQL: the sessions opened
    // on the test's database (each probe's, flushed by its first transaction).
    let watcher = app.sql().await;
    let sessions = || async {
        let row = watcher
            .query_one(
                "SELECT sessions FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .unwrap();
        row.get::<_, i64>(0)
    };
    let before = sessions().await;
    let answers = futures_util::future::join_all((0..30).map(|_| app.get("/ready"))).await;
    assert!(answers.iter().all(|r| r.status() == 200));
    // Settled: the same count twice, a quarter second apart.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut opened = sessions().await - before;
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = sessions().await - before;
        if now == opened {
            break;
        }
        assert!(Instant::now() < deadline, "sessions still opening: {now}");
        opened = now;
    }
    assert!(opened <= 3, "{opened} connections for 30 readiness checks");
    drop(held);
    assert_eq!(metric(&app, "kurz_api_database_up").await, 1.0);
}

/// A PostgreSQL that takes connections and never answers (a frozen host, a proxy before a dead
/// server) reads as down too, not as "no word": its connects time out rather than fail.
#[tokio::test]
async fn a_postgres_that_never_answers_is_reported_down() {
    let pg = PrivatePg::start();
    let app = spawn_app_with(|c| on_private_pg(c, &pg)).await;
    assert_eq!(metric(&app, "kurz_api_database_up").await, 1.0);
    pg.down();
    // Its port taken by a listener that never accepts: connects complete, nothing answers.
    let _silent = std::net::TcpListener::bind(("127.0.0.1", pg.port)).unwrap();
    assert_eq!(metric(&app, "kurz_api_database_up").await, 0.0);
}

#[tokio::test]
async fn a_read_does_not_wait_on_a_backlog_beyond_its_budget() {
    let app = spawn_app_with(|c| {
        c.clicks.poll_interval_ms = 3_600_000;
        c.clicks.read_drain_budget_ms = 1;
        c.clicks.batch_size = 10;
    })
    .await;
    let user = app.create_user("budget").await;
    let (id, code) = link_of(&app.create_url(user, "https://example.com/budget").await);
    for i in 0..300 {
        assert_eq!(
            redirect_with_id(&app, &code, &format!("req-budget-{i}")).await,
            302
        );
    }
    let res = app
        .get(&format!("/events?url_id={id}&event_type=click"))
        .await;
    assert_eq!(res.status(), 200);
    let pending: i64 = res.headers()["x-kurz-clicks-pending"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let shown = res.json::<Vec<Value>>().await.unwrap().len() as i64;
    assert!(pending > 0, "the answer says clicks are missing");
    assert_eq!(
        shown + pending,
        300,
        "what is shown plus what is pending is everything"
    );
}

#[tokio::test]
async fn a_request_stuck_on_the_database_is_answered_503_at_its_deadline() {
    let app = spawn_app_with(|c| {
        c.limits.request_timeout_ms = 300;
        c.clicks.read_drain_budget_ms = 100;
    })
    .await;
    let user = app.create_user("stuck").await;
    let (id, code) = link_of(&app.create_url(user, "https://example.com/stuck").await);
    // Another transaction holds the row: the update waits on its lock until we let go.
    let mut holder = app.sql().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM urls WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .unwrap();
    // A bulk import of the same row waits on the lock too, under its own, longer deadline
    // (`limits.bulk_request_timeout_ms`): it must outlive the update's.
    let csv = format!(
        "id,user_id,short_code,original_url\n{id},{user},{code},https://example.com/bulk\n"
    );
    let import = app.spawn_upload("/urls/bulk", csv.into_bytes());
    crate::helpers::wait_for_lock_waits(&app, 1, "the import").await;
    let res = app
        .put_json(
            &format!("/urls/{id}"),
            &serde_json::json!({"title": "late"}),
        )
        .await;
    let body = crate::helpers::error_of(res, 503).await;
    assert_eq!(body["error"], "service_unavailable");
    assert!(!import.is_finished(), "the import gave up with the update");
    tx.rollback().await.unwrap();
    assert_eq!(
        import.await.unwrap().status(),
        201,
        "the import, past the update's deadline"
    );
    // The abandoned update changed nothing; the import landed.
    let link: Value = app.get(&format!("/urls/{id}")).await.json().await.unwrap();
    assert!(link["title"].is_null(), "{link}");
    assert_eq!(link["original_url"], "https://example.com/bulk");
}

/// A write whose transaction committed is answered with its outcome even when what follows
/// the commit (publishing the link's new state to a Redis that stalls) outlasts the deadline:
/// a 503 says "retry", and a retried delete answers 404, a retried import 409.
#[tokio::test]
async fn a_write_that_committed_is_answered_not_503_past_its_deadline() {
    let redis = PrivateRedis::start(Persistence::None);
    let url = redis.url();
    let app = spawn_app_with(|c| {
        c.redis.url = url;
        c.redis.timeout_ms = 8_000;
        c.limits.request_timeout_ms = 2_000;
        c.limits.bulk_request_timeout_ms = 2_000;
    })
    .await;
    let user = app.create_user("committed").await;
    let (id, _) = link_of(&app.create_url(user, "https://example.com/gone").await);
    let stalled = redis.paused();
    let res = app.delete(&format!("/urls/{id}")).await;
    assert_eq!(res.status(), 204, "{}", res.text().await.unwrap());
    let csv =
        format!("user_id,short_code,original_url\n{user},bulkone1,https://example.com/bulk\n");
    let res = app.upload("/urls/bulk", csv.into_bytes()).await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    drop(stalled);
    assert_eq!(app.get(&format!("/urls/{id}")).await.status(), 404);
    let links: Value = app
        .get(&format!("/urls?user_id={user}"))
        .await
        .json()
        .await
        .unwrap();
    let codes: Vec<&str> = links
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l["short_code"].as_str())
        .collect();
    assert_eq!(codes, ["bulkone1"]);
}

/// An update or a delete gives its connection back before the cache update, which takes one
/// of its own from the same pool: with the pool's last connection, holding it waited for a
/// second that never came free (here for as long as the pool lets a caller wait, two minutes).
#[tokio::test]
async fn a_write_on_the_pools_last_connection_finishes() {
    let app = spawn_app_with(|c| crate::helpers::request_pool(c, 1, 120_000)).await;
    let user = app.create_user("lastone").await;
    let (id, code) = link_of(&app.create_url(user, "https://example.com/last").await);
    let res = app
        .put_json(
            &format!("/urls/{id}"),
            &serde_json::json!({"original_url": "https://example.com/next"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        app.get(&format!("/{code}")).await.headers()["location"],
        "https://example.com/next"
    );
    assert_eq!(app.delete(&format!("/urls/{id}")).await.status(), 204);
    assert_eq!(app.get(&format!("/{code}")).await.status(), 404);
}

/// A write of one statement (here `POST /events`) still running at its deadline may yet
/// commit: it is answered with its outcome, not a 503 that a retry would answer with a second
/// event.
#[tokio::test]
async fn an_event_posted_past_its_deadline_is_answered_with_it() {
    let app = spawn_app_with(|c| {
        crate::helpers::request_deadline(c, 1_000);
    })
    .await;
    let user = app.create_user("lateevent").await;
    let (id, _) = link_of(&app.create_url(user, "https://example.com/lateevent").await);
    let mut holder = app.sql().await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE events IN SHARE MODE")
        .await
        .unwrap();
    let post = app.spawn_post(
        "/events",
        serde_json::json!({"url_id": id, "user_id": user, "event_type": "click"}),
    );
    crate::helpers::wait_for_lock_waits(&app, 1, "the event").await;
    // An update started after it waits on the same lock (its `updated` event) and gets its 503:
    // the post's deadline has passed too.
    let res = app
        .put_json(&format!("/urls/{id}"), &serde_json::json!({"title": "x"}))
        .await;
    crate::helpers::error_of(res, 503).await;
    assert!(
        !post.is_finished(),
        "the post was answered before its statement ended"
    );
    tx.rollback().await.unwrap();
    assert_eq!(post.await.unwrap().unwrap().status(), 201);
    let events: Vec<Value> = app
        .get(&format!("/events?url_id={id}&event_type=click"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
}

/// A click the API inserts directly (Redis down) whose insert is still waiting at the
/// request's deadline may yet be stored: the redirect is answered with it, not a 503 that the
/// visitor's retry would answer with a second click.
#[tokio::test]
async fn a_click_stored_past_its_deadline_is_answered_with_its_redirect() {
    let app = crate::helpers::spawn_app_without_redis(|c| {
        crate::helpers::request_deadline(c, 1_000);
    })
    .await;
    let user = app.create_user("lateclick").await;
    let (id, code) = link_of(&app.create_url(user, "https://example.com/lateclick").await);
    let mut holder = app.sql().await;
    let tx = holder.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE events IN SHARE MODE")
        .await
        .unwrap();
    let visit = app.spawn_get(&format!("/{code}"));
    app.past_the_deadline_of_a_lock_wait(id, "the click").await;
    assert!(
        !visit.is_finished(),
        "the visit was answered before its click's insert ended"
    );
    tx.rollback().await.unwrap();
    assert_eq!(visit.await.unwrap().unwrap().status(), 302);
    let clicks: i64 = app
        .sql()
        .await
        .query_one(
            "SELECT count(*) FROM events WHERE url_id = $1 AND event_type = 'click'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(clicks, 1);
}

/// A create whose statement has started is answered with its outcome, however late: a 503
/// tells the client to retry, and a retry of a create that was made makes the link twice.
#[tokio::test]
async fn a_create_past_its_deadline_but_in_a_statement_is_answered_not_503() {
    let app = spawn_app_with(|c| {
        c.limits.request_timeout_ms = 300;
        c.clicks.read_drain_budget_ms = 100;
    })
    .await;
    let user = app.create_user("late").await;
    let (other, _) = link_of(&app.create_url(user, "https://example.com/other").await);
    let mut holder = app.sql().await;
    let tx = holder.transaction().await.unwrap();
    // Inserts wait on this lock; reads do not.
    tx.batch_execute("LOCK TABLE urls IN SHARE MODE")
        .await
        .unwrap();
    let create = app.spawn_post(
        "/urls",
        serde_json::json!({"user_id": user, "original_url": "https://example.com/late", "short_code": "lateone1"}),
    );
    crate::helpers::wait_for_lock_waits(&app, 1, "the create").await;
    let watcher = app.sql().await;
    // An update started after it waits on the same lock and gets its 503: the create's
    // deadline has passed too.
    let res = app
        .put_json(
            &format!("/urls/{other}"),
            &serde_json::json!({"title": "x"}),
        )
        .await;
    crate::helpers::error_of(res, 503).await;
    assert!(
        !create.is_finished(),
        "the create was answered before its statement ended"
    );
    tx.rollback().await.unwrap();
    let res = create.await.unwrap().unwrap();
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 201, "{body}");
    let made: i64 = watcher
        .query_one(
            "SELECT count(*) FROM urls WHERE short_code = 'lateone1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(made, 1);
}

/// A 503 as the contract promises it for a store outage: our JSON, a `Retry-After`, and nothing
/// of the driver's text.
async fn assert_clean_503(res: reqwest::Response, what: &str) {
    assert_eq!(res.status(), 503, "{what}");
    assert!(
        res.headers().contains_key("retry-after"),
        "{what}: no Retry-After"
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"], "service_unavailable", "{what}: {body}");
    let message = body["message"].as_str().unwrap_or_default().to_lowercase();
    for leak in [
        "error occurred",
        "connecting",
        "postgres",
        "server",
        "os error",
        "57p",
    ] {
        assert!(
            !message.contains(leak),
            "{what}: driver text leaked: {body}"
        );
    }
}

#[tokio::test]
async fn postgres_stopping_answers_503_with_retry_after_never_500_or_driver_text() {
    let pg = PrivatePg::start();
    let pg_url = pg.url();
    let app = spawn_app_with(|c| on_private_pg(c, &pg)).await;
    let user = app.create_user("stopping").await;
    let (id, _) = link_of(&app.create_url(user, "https://example.com/stopping").await);

    // A request in flight when the server shuts down: its query is blocked on a row lock held
    // here, so it is certainly running when the shutdown terminates its backend (57P01). The
    // lock is a prepared transaction's: a session's would go with its backend, and the shutdown
    // could end this one first and let the update commit before its own turn came.
    let (holder, conn) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    holder
        .batch_execute(&format!(
            "BEGIN; SELECT 1 FROM urls WHERE id = {id} FOR UPDATE; PREPARE TRANSACTION 'kurz_hold'"
        ))
        .await
        .unwrap();
    let in_flight = app.spawn_put(id, serde_json::json!({"title": "during shutdown"}));
    wait_for(
        "the update to wait on the lock",
        Duration::from_secs(20),
        || async {
            let (c, conn) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let row = c
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap();
            row.get::<_, i64>(0) == 1
        },
    )
    .await;
    // The lock outlives the fast shutdown, which ends the update's session.
    let pg = tokio::task::spawn_blocking(move || {
        pg.down();
        pg
    })
    .await
    .unwrap();
    assert_clean_503(
        in_flight.await.unwrap().unwrap(),
        "a query cut by the shutdown",
    )
    .await;

    // While it is down: reads and writes alike.
    assert_clean_503(app.get("/users").await, "a read while down").await;
    assert_clean_503(
        app.post_json(
            "/users",
            &serde_json::json!({"username": "late", "email": "late@example.com"}),
        )
        .await,
        "a write while down",
    )
    .await;

    let pg = tokio::task::spawn_blocking(move || {
        pg.up();
        pg
    })
    .await
    .unwrap();
    let (admin, conn) = tokio_postgres::connect(&pg_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute("ROLLBACK PREPARED 'kurz_hold'")
        .await
        .unwrap();
    wait_for("reads to work again", Duration::from_secs(30), || async {
        app.get("/users").await.status() == 200
    })
    .await;
    drop(pg);
}

/// A database that turned read-only under the API (a primary demoted by a failover, the pool
/// reconnecting to it) is a 503 the client may retry, never a 500.
#[tokio::test]
async fn a_database_turned_read_only_is_a_503_not_a_500() {
    let app = spawn_app_with(|_| {}).await;
    let user = app.create_user("readonly").await;
    let sql = app.sql().await;
    sql.batch_execute(&format!(
        "ALTER DATABASE {} SET default_transaction_read_only = on",
        app.db_name
    ))
    .await
    .unwrap();
    // The pool's sessions predate the setting: end them, so its next ones are read-only.
    sql.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
        &[],
    )
    .await
    .unwrap();
    for n in 0..5 {
        let res = app
            .post_json(
                "/urls",
                &serde_json::json!({"user_id": user, "original_url": format!("https://example.com/ro{n}")}),
            )
            .await;
        assert_eq!(res.status(), 503, "attempt {n}");
        assert!(res.headers().contains_key("retry-after"), "attempt {n}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["error"], "service_unavailable", "{body}");
    }
    sql.batch_execute(&format!(
        "ALTER DATABASE {} RESET default_transaction_read_only",
        app.db_name
    ))
    .await
    .unwrap();
}

/// A caller that hangs up while its request waits (the edge gave up on it: its client left, a
/// timeout) leaves the books straight: the request leaves `kurz_api_requests_in_flight` and is
/// counted as a 4xx (logged as 499), instead of the gauge climbing for good; its time is in the
/// latency histogram, where the slowest requests belong.
#[tokio::test]
async fn a_request_whose_caller_hangs_up_leaves_the_in_flight_gauge() {
    let app = spawn_app_with(|_| {}).await;
    let user = app.create_user("gone").await;
    let (id, _) = link_of(&app.create_url(user, "https://example.com/gone").await);
    let mut holder = app.sql().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM urls WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .unwrap();
    let put = app.spawn_put(id, serde_json::json!({"title": "never"}));
    crate::helpers::wait_for_lock_waits(&app, 1, "the update").await;
    let in_flight = "kurz_api_requests_in_flight ";
    assert_eq!(metric(&app, in_flight).await, 1.0);
    // The caller goes; the update still waits on the lock.
    put.abort();
    wait_for(
        "the abandoned request to leave the gauge",
        Duration::from_secs(20),
        || async { metric(&app, in_flight).await == 0.0 },
    )
    .await;
    assert_eq!(
        metric(
            &app,
            "kurz_api_requests_total{method=\"PUT\",route=\"/urls/{id}\",status_class=\"4xx\"} "
        )
        .await,
        1.0
    );
    assert_eq!(
        metric(
            &app,
            "kurz_api_request_duration_seconds_count{route=\"/urls/{id}\"} "
        )
        .await,
        1.0
    );
    tx.rollback().await.unwrap();
}

/// A method a client invents is counted as `other`: one series, however many it invents.
#[tokio::test]
async fn invented_methods_share_one_metric_label() {
    let app = spawn_app_with(|_| {}).await;
    for m in ["FOO1", "FOO2", "FOO3"] {
        let method = reqwest::Method::from_bytes(m.as_bytes()).unwrap();
        app.client
            .request(method, app.url("/urls"))
            .send()
            .await
            .unwrap();
    }
    let text = app.metrics_text().await;
    assert!(!text.contains("FOO"), "{text}");
    assert!(
        text.lines().any(
            |l| l.starts_with("kurz_api_requests_total{method=\"other\"") && l.ends_with(" 3")
        ),
        "{text}"
    );
}

/// Redis past `maxmemory` (policy `noeviction`) refuses the publish of a deleted link's state
/// but would go on serving its entry: the entry is dropped instead (`UNLINK` frees, so Redis
/// takes it), the code is answered from PostgreSQL, and the state is published once Redis
/// takes writes again.
#[tokio::test]
async fn a_link_deleted_while_redis_is_out_of_memory_stops_redirecting() {
    let redis = PrivateRedis::start(Persistence::None);
    let url = redis.url();
    let app = spawn_app_with(|c| {
        c.redis.url = url;
        c.clicks.poll_interval_ms = 3_600_000;
    })
    .await;
    let user = app.create_user("oom").await;
    let (id, code) = link_of(&app.create_url(user, "https://example.com/oom").await);
    assert_eq!(redirect_with_id(&app, &code, "req-oom-1").await, 302);
    assert!(
        cached(&app, &code).await.is_some(),
        "the link is cached before the delete"
    );
    let before = row_now(&app, &code).await;
    set_maxmemory(&app, "1").await;
    assert_eq!(app.delete(&format!("/urls/{id}")).await.status(), 204);
    assert_eq!(
        cached(&app, &code).await,
        None,
        "the refused publish dropped the entry"
    );
    assert_eq!(app.outbox_len().await, 1, "the state waits for the replay");
    assert_eq!(redirect_with_id(&app, &code, "req-oom-2").await, 404);
    set_maxmemory(&app, "0").await;
    app.wait_outbox_empty().await;
    assert_eq!(redirect_with_id(&app, &code, "req-oom-3").await, 404);
    // A late publish of the state from before the delete, refused for memory again, leaves the
    // delete's newer entry alone: dropping it would let that older state in once memory frees.
    let tombstone = cached(&app, &code).await;
    assert!(tombstone.is_some());
    set_maxmemory(&app, "1").await;
    let publish = |link: kurz_api::db::urls::Link| {
        let app = &app;
        let code = &code;
        async move { app.state.cache.publish(code, &link.cache_state()).await }
    };
    assert!(publish(before).await.is_err());
    // Nor does the delete's own state published again (its replay), which the entry already is.
    assert!(publish(row_now(&app, &code).await).await.is_err());
    assert_eq!(cached(&app, &code).await, tombstone);
    set_maxmemory(&app, "0").await;
}

/// `CONFIG SET maxmemory` on the app's Redis, with the policy that refuses writes past it.
async fn set_maxmemory(app: &TestApp, bytes: &str) {
    let mut cmd = redis::cmd("CONFIG");
    cmd.arg("SET")
        .arg("maxmemory")
        .arg(bytes)
        .arg("maxmemory-policy")
        .arg("noeviction");
    app.state.redis.query::<()>(&cmd).await.unwrap();
}

/// Redis that comes back without its last writes (here from a snapshot taken before the
/// delete: the AOF's last second, a replica promoted without them) holds the link's earlier
/// entry again. Each API notices the new server and publishes the recent states again: the
/// deleted link stops redirecting within a replay round, not when the entry's TTL ends.
#[tokio::test]
async fn a_link_deleted_just_before_redis_lost_its_last_writes_stays_deleted() {
    let mut redis = PrivateRedis::start(Persistence::Snapshot);
    let url = redis.url();
    let app = spawn_app_with(|c| c.redis.url = url).await;
    let user = app.create_user("rollback").await;
    let (id, code) = link_of(&app.create_url(user, "https://example.com/rollback").await);
    assert_eq!(redirect_with_id(&app, &code, "req-rollback-1").await, 302);
    // A watch of the test's own, as the replayer runs one: it has seen this server.
    let mut watch = kurz_api::cache_sync::RestartWatch::default();
    assert_eq!(watch.check(&app.state).await.unwrap(), 0);
    app.state
        .redis
        .query::<()>(&redis::cmd("SAVE"))
        .await
        .unwrap();
    assert_eq!(app.delete(&format!("/urls/{id}")).await.status(), 204);
    assert_eq!(redirect_with_id(&app, &code, "req-rollback-2").await, 404);
    redis.kill();
    redis.restart();
    wait_cache_up(&app).await;
    assert!(
        watch.check(&app.state).await.unwrap() >= 1,
        "the delete is queued again"
    );
    wait_for(
        "the deleted link to stop redirecting again",
        Duration::from_secs(20),
        || async { redirect_with_id(&app, &code, "req-rollback-3").await == 404 },
    )
    .await;
    // Back once more from the same snapshot (a crash loop): what the first change published
    // again was lost again, and goes out again.
    redis.kill();
    redis.restart();
    wait_cache_up(&app).await;
    assert!(watch.check(&app.state).await.unwrap() >= 1, "queued again");
    wait_for(
        "the deleted link to stop redirecting after the second restart",
        Duration::from_secs(20),
        || async { redirect_with_id(&app, &code, "req-rollback-4").await == 404 },
    )
    .await;
    assert!(metric(&app, "kurz_api_redis_server_changes_total").await >= 2.0);
}

/// One failed read of the click streams is one Redis error, however many partitions it
/// spans: `KurzRedisDown` fires on the rate of the counter, and a read split per partition
/// counted each of the sixteen.
#[tokio::test]
async fn a_failed_read_of_every_stream_counts_one_redis_error() {
    use kurz_api::clicks::stream::{ClickStream, ReadError};
    let redis = PrivateRedis::start(Persistence::None);
    let errors = prometheus::IntCounter::new("t_errors", "t").unwrap();
    let handle = std::sync::Arc::new(
        kurz_api::redis_handle::RedisHandle::new(
            &redis.url(),
            Duration::from_millis(300),
            errors.clone(),
        )
        .unwrap(),
    );
    let keys = kurz_common::keys::KeySchema::new("onecount", 16);
    let stream = ClickStream::new(handle, keys, "g".into(), "c".into());
    assert!(stream.read_new(10).await.is_ok(), "the groups are made");
    let _paused = redis.paused();
    assert!(matches!(stream.read_new(10).await, Err(ReadError::Down(_))));
    assert_eq!(errors.get(), 1);
}
