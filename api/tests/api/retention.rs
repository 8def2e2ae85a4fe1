//! `events.retention_days`: old click events are deleted; newer clicks, other events and the
//! stats rollups stay.

use crate::helpers::spawn_app;
use kurz_api::retention::{Walk, BATCH};

/// A retention pass's stop signal, not set (a receiver keeps the last value it was sent).
fn running() -> tokio::sync::watch::Receiver<bool> {
    tokio::sync::watch::channel(false).1
}

/// A pass over a backlog larger than one batch stops after the statement in hand once the
/// process is stopping, instead of holding the shutdown until the backlog is gone; the next
/// pass goes on from there.
#[tokio::test]
async fn a_stopping_process_ends_its_retention_pass_after_one_batch() {
    let app = spawn_app().await;
    let user = app.create_user("retstop").await;
    let id = app.create_url(user, "https://example.com/retstop").await["id"]
        .as_i64()
        .unwrap();
    let db = app.sql().await;
    let old = 2 * kurz_api::retention::BATCH + 5;
    db.batch_execute(&format!(
        "INSERT INTO events (url_id, user_id, event_type, occurred_at, click_id) \
         SELECT {id}, {user}, 'click', now() - interval '40 days', 'old-' || n \
         FROM generate_series(1, {old}) AS n"
    ))
    .await
    .unwrap();
    let cutoff = chrono::Utc::now() - chrono::Duration::days(30);
    let (tx, stopping) = tokio::sync::watch::channel(true);
    let batch = kurz_api::retention::BATCH;
    let first = kurz_api::retention::run_once(&app.state.db, cutoff, batch, 0, &stopping)
        .await
        .unwrap()
        .unwrap();
    // One window: the link's `created` event and the clicks after it.
    assert_eq!(first.read, batch as u64);
    assert_eq!(first.deleted, batch as u64 - 1);
    drop(tx);
    let rest = kurz_api::retention::run_once(&app.state.db, cutoff, batch, 0, &running())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.deleted + rest.deleted, old as u64);
}

/// A pass reads what expired since the last one and a window past it, not the table: each
/// statement walks the next window of ids, and the pass stops at the first window that holds
/// clicks to keep and none to delete. A pass starts where the last kept its first click; the
/// first after start and one a day start at the first id, so a click stored below ids
/// already walked (an events import keeps a file's ids) is found within a day. (Reading
/// old rows by time alone rescanned the front of the table at every statement and, over a
/// large backlog, failed at the statement timeout every hour.)
#[tokio::test]
async fn a_retention_pass_reads_what_expired_not_the_whole_table() {
    let app = spawn_app().await;
    let user = app.create_user("retwin").await;
    let id = app.create_url(user, "https://example.com/retwin").await["id"]
        .as_i64()
        .unwrap();
    let db = app.sql().await;
    let insert = |n: i64, age: &str, tag: &str| {
        format!(
            "INSERT INTO events (url_id, user_id, event_type, occurred_at, click_id) \
             SELECT {id}, {user}, 'click', now() - interval '{age}', '{tag}-' || n \
             FROM generate_series(1, {n}) AS n"
        )
    };
    // In storage order: 299 old events of other kinds (which never expire), 250 clicks 40
    // days old, 2,000 of yesterday.
    db.batch_execute(&format!(
        "INSERT INTO events (url_id, user_id, event_type, occurred_at) \
         SELECT {id}, {user}, 'created', now() - interval '90 days' FROM generate_series(1, 299)"
    ))
    .await
    .unwrap();
    db.batch_execute(&insert(250, "40 days", "old"))
        .await
        .unwrap();
    db.batch_execute(&insert(2000, "1 day", "new"))
        .await
        .unwrap();
    let cutoff = chrono::Utc::now() - chrono::Duration::days(30);
    let mut walk = Walk::default();
    let pass_from = |cutoff, from: i64| {
        let db = app.state.db.clone();
        async move {
            kurz_api::retention::run_once(&db, cutoff, 100, from, &running())
                .await
                .unwrap()
                .unwrap()
        }
    };
    // The walk's clock is the test's: an hour between passes.
    let t0 = std::time::Instant::now();
    let hour = std::time::Duration::from_secs(3600);
    let from = walk.start(t0);
    assert_eq!(
        from, 0,
        "the first pass after start walks from the first id"
    );
    let pass = pass_from(cutoff, from).await;
    walk.ended(t0, from, &pass, false);
    assert_eq!(pass.deleted, 250);
    // The 300 other events, the old clicks (the last window with the first new clicks), then
    // one window of new clicks only.
    assert_eq!(pass.read, 700, "{pass:?}");
    // An hour later nothing new expired: one window, from the first click kept; neither the
    // other events before it again nor the 2,000.
    let again = pass_from(cutoff, walk.start(t0 + hour)).await;
    assert_eq!((again.deleted, again.read), (0, 100));
    // An old click stored with an id among those walked already (an import keeps its file's
    // ids): a pass from where the last stopped misses it, the day's walk from the first id
    // finds it.
    db.batch_execute(&format!(
        "INSERT INTO events (id, url_id, user_id, event_type, occurred_at, click_id) \
         VALUES (305, {id}, {user}, 'click', now() - interval '40 days', 'imported')"
    ))
    .await
    .unwrap();
    assert_eq!(
        pass_from(cutoff, walk.start(t0 + 2 * hour)).await.deleted,
        0
    );
    let day = walk.start(t0 + 24 * hour);
    assert_eq!(day, 0, "a day on, the walk from the first id");
    assert_eq!(pass_from(cutoff, day).await.deleted, 1);
    // The day the new clicks expire, they all go: the walk goes on while windows delete.
    let later = chrono::Utc::now();
    let pass = pass_from(later, 0).await;
    assert_eq!(pass.deleted, 2000);
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM events WHERE event_type = 'click'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn old_clicks_go_and_everything_else_stays() {
    let app = spawn_app().await;
    let user = app.create_user("ret").await;
    let link = app.create_url(user, "https://example.com/ret").await;
    let id = link["id"].as_i64().unwrap();
    let db = app.sql().await;
    db.batch_execute(&format!(
        "INSERT INTO events (url_id, user_id, event_type, occurred_at, click_id) \
         SELECT {id}, {user}, 'click', now() - make_interval(days => d), 'ret-' || d \
         FROM unnest(ARRAY[40, 35, 31, 2, 0]) AS d; \
         UPDATE events SET occurred_at = now() - interval '90 days' WHERE event_type = 'created'"
    ))
    .await
    .unwrap();
    let stats_before = app.stats(id).await;
    assert_eq!(stats_before["clicks"], 5);

    let cutoff = chrono::Utc::now() - chrono::Duration::days(30);
    // Another replica holding the job: this one leaves it.
    let other = app.sql().await;
    other
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&kurz_api::retention::LOCK_KEY],
        )
        .await
        .unwrap();
    assert_eq!(
        kurz_api::retention::run_once(&app.state.db, cutoff, BATCH, 0, &running())
            .await
            .unwrap(),
        None
    );
    other
        .execute(
            "SELECT pg_advisory_unlock($1)",
            &[&kurz_api::retention::LOCK_KEY],
        )
        .await
        .unwrap();
    let deleted = kurz_api::retention::run_once(&app.state.db, cutoff, BATCH, 0, &running())
        .await
        .unwrap()
        .map(|p| p.deleted);
    assert_eq!(deleted, Some(3), "the three clicks older than 30 days");
    let count = |sql: &'static str| {
        let db = &db;
        async move { db.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    assert_eq!(
        count("SELECT count(*) FROM events WHERE event_type = 'click'").await,
        2
    );
    assert_eq!(
        count("SELECT count(*) FROM events WHERE event_type = 'created'").await,
        1,
        "only clicks expire"
    );
    let stats_after = app.stats(id).await;
    assert_eq!(stats_after["clicks"], 5, "the rollups keep counting them");
    assert_eq!(
        kurz_api::retention::run_once(&app.state.db, cutoff, BATCH, 0, &running())
            .await
            .unwrap()
            .map(|p| p.deleted),
        Some(0)
    );
}

/// Past days' visitor rows go in batches, by one replica at a time: a busy instance has
/// millions a day, more than one statement may delete within its timeout. Rows of yesterday
/// and today stay (their days still get clicks).
#[tokio::test]
async fn old_visitor_rows_go_in_batches_by_one_replica_at_a_time() {
    let app = spawn_app().await;
    let db = app.sql().await;
    let old = 2 * kurz_api::retention::BATCH + 7;
    // Over many links, so batches end and start inside the key's order.
    db.batch_execute(&format!(
        "INSERT INTO click_day_visitors (url_id, day, visitor) \
         SELECT n % 500, (now() AT TIME ZONE 'UTC')::date - 2 - (n % 3), 'v' || n \
         FROM generate_series(1, {old}) AS n; \
         INSERT INTO click_day_visitors (url_id, day, visitor) \
         SELECT n, (now() AT TIME ZONE 'UTC')::date - (n % 2), 'kept' FROM generate_series(1, 40) AS n"
    ))
    .await
    .unwrap();

    // Another replica's pass holds the job: this one leaves the rows alone.
    let other = app.sql().await;
    other
        .execute(
            "SELECT pg_advisory_lock($1)",
            &[&kurz_api::retention::VISITORS_LOCK_KEY],
        )
        .await
        .unwrap();
    assert_eq!(
        kurz_api::retention::prune_visitors(&app.state.db, &running())
            .await
            .unwrap(),
        None
    );
    drop(other);

    let (tx, stopping) = tokio::sync::watch::channel(true);
    let pruned = loop {
        // The lock dies with the other session, which the server may not have ended yet.
        if let Some(n) = kurz_api::retention::prune_visitors(&app.state.db, &stopping)
            .await
            .unwrap()
        {
            break n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        pruned,
        kurz_api::retention::BATCH as u64,
        "one batch, then it stops"
    );
    drop(tx);
    assert_eq!(
        kurz_api::retention::prune_visitors(&app.state.db, &running())
            .await
            .unwrap(),
        Some(kurz_api::retention::BATCH as u64 + 7)
    );
    let left: Vec<(i64, String)> = db
        .query(
            "SELECT count(*), min(visitor) FROM click_day_visitors \
             WHERE day < (now() AT TIME ZONE 'UTC')::date - 1 \
             UNION ALL SELECT count(*), min(visitor) FROM click_day_visitors",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get::<_, Option<String>>(1).unwrap_or_default()))
        .collect();
    assert_eq!(left, [(0, String::new()), (40, "kept".to_owned())]);
}
