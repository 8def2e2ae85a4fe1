//! The group commit of creates (`kurz_api::creates`): a batch answers each create as its own
//! statement would, and one refused row fails only its own create.

use crate::helpers::{error_of, spawn_app, wait_for_lock_waits};
use kurz_api::creates::Creates;
use kurz_api::db::urls::{insert_urls, Inserted, NewLink};
use kurz_api::metrics::Metrics;
use kurz_common::shortcode::ShortCode;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn code(s: &str) -> ShortCode {
    ShortCode::parse(s).unwrap()
}

#[tokio::test]
async fn one_statement_gives_each_create_its_own_outcome() {
    let app = spawn_app().await;
    let user = app.create_user("batcher").await;
    let gone = app.create_user("gone").await;
    assert_eq!(app.delete(&format!("/users/{gone}")).await.status(), 204);
    let taken = app.create_url(user, "https://example.com/first").await;
    let taken = code(taken["short_code"].as_str().unwrap());
    let target = app
        .state
        .targets
        .parse("https://example.com/batch")
        .unwrap();
    let (a, c, d, e) = (
        code("batch-a"),
        code("batch-c"),
        code("batch-d"),
        code("batch-e"),
    );
    let tags = vec!["red".to_owned(), "blue".to_owned()];
    let news = [
        NewLink::new(Some(user), &a, &target, None, None).with_tags(&tags),
        NewLink::new(Some(user), &taken, &target, None, None),
        NewLink::new(Some(gone), &c, &target, None, None),
        NewLink::new(None, &d, &target, None, None),
        NewLink::new(Some(user), &e, &target, Some("E"), None).with_redirect_type(301),
    ];
    let db = app.state.db.get().await.unwrap();
    let outcomes = insert_urls(&db, &news).await.unwrap();
    let summary: Vec<String> = outcomes
        .iter()
        .map(|o| match o {
            Inserted::Link(l) => format!(
                "{} {:?} {} {:?}",
                l.short_code, l.user_id, l.redirect_type, l.tags
            ),
            Inserted::CodeTaken => "taken".into(),
            Inserted::NoOwner => "no owner".into(),
        })
        .collect();
    assert_eq!(
        summary,
        [
            format!("batch-a Some({user}) 302 [\"red\", \"blue\"]"),
            "taken".into(),
            "no owner".into(),
            "batch-d None 302 []".into(),
            format!("batch-e Some({user}) 301 []"),
        ]
    );
    let sql = app.sql().await;
    let stored: Vec<(String, Vec<String>, i64)> = sql
        .query(
            "SELECT u.short_code, \
               coalesce((SELECT array_agg(tag ORDER BY tag) FROM link_tags t WHERE t.url_id = u.id), '{}'), \
               (SELECT count(*) FROM events e WHERE e.url_id = u.id AND e.event_type = 'created') \
             FROM urls u ORDER BY u.short_code",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let mut expected = vec![
        (
            "batch-a".to_owned(),
            vec!["blue".to_owned(), "red".to_owned()],
            1,
        ),
        ("batch-d".to_owned(), vec![], 1),
        ("batch-e".to_owned(), vec![], 1),
        (taken.as_str().to_owned(), vec![], 1),
    ];
    expected.sort();
    assert_eq!(stored, expected);
}

/// Until `cond` holds, or panics after a generous deadline.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn creates_waiting_together_share_a_statement_and_a_refused_row_fails_alone() {
    let app = spawn_app().await;
    let user = app.create_user("queue").await;
    // A pool of one connection, held by the test: the writer takes the first create and waits
    // for it, so the others queue and go together as the next statement.
    let mut config = (*app.state.config).clone();
    config.database.max_connections = 1;
    config.database.acquire_timeout_ms = 60_000;
    let pool = kurz_api::startup::build_pool(&config).unwrap();
    let held = pool.get().await.unwrap();
    let metrics = Arc::new(Metrics::new());
    let creates = Creates::start(pool.clone(), 64, 1, metrics.clone());
    let target = app
        .state
        .targets
        .parse("https://example.com/queued")
        .unwrap();

    let mut tasks = Vec::new();
    for i in 0..9 {
        let queue = creates.clone();
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let code = code(&format!("queued-{i}"));
            // Redirect type 999 breaks a CHECK constraint: PostgreSQL refuses the statement.
            let status = if i == 5 { 999 } else { 302 };
            let new =
                NewLink::new(Some(user), &code, &target, None, None).with_redirect_type(status);
            queue.insert(&new).await
        }));
        // The first is with the writer before the rest are queued.
        if i == 0 {
            wait_until("the writer to wait for a connection", || {
                pool.status().waiting == 1
            })
            .await;
        }
    }
    wait_until("eight creates queued", || creates.waiting() == 8).await;
    drop(held);

    for (i, task) in tasks.into_iter().enumerate() {
        match (i, task.await.unwrap()) {
            (5, Err(e)) => assert_eq!(e.status(), 500, "{e}"),
            (5, other) => panic!("the refused row answered {other:?}"),
            (_, Ok(Inserted::Link(link))) => assert_eq!(link.short_code, format!("queued-{i}")),
            (_, other) => panic!("create {i} answered {other:?}"),
        }
    }
    // The lone first create, the refused batch of eight; then its rows one at a time.
    let batches = metrics.create_batch_size.get_sample_count();
    let created = metrics.create_batch_size.get_sample_sum();
    assert_eq!((batches, created), (2, 9.0));
    let sql = app.sql().await;
    let row = sql
        .query_one(
            "SELECT (SELECT count(*) FROM urls WHERE short_code LIKE 'queued-%'), \
                    (SELECT count(*) FROM events WHERE event_type = 'created')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (8, 8));
}

/// A create whose custom code another transaction holds uncommitted (an import's) waits a
/// second at most and answers 503 alone: the creates behind it on the same writer are made.
#[tokio::test]
async fn a_create_waiting_on_a_held_code_holds_no_other_create() {
    let app = spawn_app().await;
    let user = app.create_user("held").await;
    let mut holder = app.sql().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO urls (user_id, short_code, original_url) VALUES ($1, 'heldcode', 'https://example.com/h')",
        &[&user],
    )
    .await
    .unwrap();
    let held = {
        let (client, url) = (app.client.clone(), app.url("/urls"));
        tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"user_id": user, "original_url": "https://example.com/mine", "short_code": "heldcode"}))
                .send()
                .await
                .unwrap()
        })
    };
    // Until the create waits on the code's lock (or, its wait being bounded, was answered).
    crate::helpers::wait_for_lock_waits_unless(&app, 1, "the create", || held.is_finished()).await;
    let other = app.create_url(user, "https://example.com/other").await;
    assert!(other["short_code"].is_string());
    let held = held.await.unwrap();
    tx.rollback().await.unwrap();
    error_of(held, 503).await;
}

#[tokio::test]
async fn concurrent_creates_of_one_custom_code_make_one_link_and_409s() {
    let app = spawn_app().await;
    let user = app.create_user("racer").await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let client = app.client.clone();
        let url = app.url("/urls");
        tasks.push(tokio::spawn(async move {
            client
                .post(url)
                .json(&json!({"user_id": user, "original_url": format!("https://example.com/{i}"), "short_code": "one-prize"}))
                .send()
                .await
                .unwrap()
        }));
    }
    let mut won = 0;
    for task in tasks {
        let res = task.await.unwrap();
        if res.status() == 201 {
            let link: Value = res.json().await.unwrap();
            assert_eq!(link["short_code"], "one-prize");
            won += 1;
        } else {
            let body = error_of(res, 409).await;
            assert_eq!(body["message"], "short_code is already taken");
        }
    }
    assert_eq!(won, 1);
    let sql = app.sql().await;
    let row = sql
        .query_one(
            "SELECT (SELECT count(*) FROM urls), (SELECT count(*) FROM events WHERE event_type = 'created')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (1, 1));
}

/// Creates queued behind a statement in flight show in `kurz_api_create_queue_waiters` (a queue
/// that stays long is PostgreSQL not keeping up), and leave it once written.
#[tokio::test]
async fn creates_queued_behind_a_statement_show_in_a_gauge() {
    let app = spawn_app().await;
    let user = app.create_user("gauged").await;
    let gauge = || async {
        app.metrics_text()
            .await
            .lines()
            .find_map(|l| l.strip_prefix("kurz_api_create_queue_waiters "))
            .map(str::to_owned)
    };
    let mut holder = app.sql().await;
    let tx = holder.transaction().await.unwrap();
    // Inserts wait for this lock; reads (the owner's check) do not.
    tx.batch_execute("LOCK TABLE urls IN SHARE MODE")
        .await
        .unwrap();
    let body =
        |i: i32| json!({"user_id": user, "original_url": format!("https://example.com/q{i}")});
    let mut posts = vec![app.spawn_post("/urls", body(0))];
    wait_for_lock_waits(&app, 1, "the first create's statement").await;
    posts.extend((1..4).map(|i| app.spawn_post("/urls", body(i))));
    let deadline = Instant::now() + Duration::from_secs(20);
    while gauge().await.as_deref() != Some("3") {
        assert!(
            Instant::now() < deadline,
            "the gauge says {:?}",
            gauge().await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tx.rollback().await.unwrap();
    for post in posts {
        assert_eq!(post.await.unwrap().unwrap().status(), 201);
    }
    assert_eq!(gauge().await.as_deref(), Some("0"));
}
