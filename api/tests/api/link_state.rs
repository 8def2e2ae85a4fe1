//! A link's state reaches Redis after every write, even when Redis stalls during the write; no
//! fill that read PostgreSQL before a write can put the old state back, and no publish of an
//! older state can replace a newer one.

use crate::helpers::{
    blocked_clients, cached, replica_of, row_now, spawn_app, spawn_app_waiting_for_a_replica,
    spawn_app_with, TestApp,
};
use kurz_api::cache::{LinkState, Lookup, Published};
use kurz_api::db;
use kurz_common::keys::{CachedLink, LinkEntry};
use kurz_common::testing::{Persistence, PrivateRedis};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

fn entry(target: &str) -> CachedLink {
    CachedLink::Found(LinkEntry {
        url_id: 1,
        user_id: None,
        active: true,
        expires_at: None,
        redirect_type: 302,
        max_visits: None,
        protected: false,
        target: target.into(),
    })
}

fn state(target: &str, version: i64) -> LinkState {
    LinkState {
        entry: entry(target),
        version,
        stored_visits: 0,
    }
}

async fn generation_seen(app: &TestApp, code: &str) -> kurz_api::cache::Generation {
    match app.state.cache.lookup(code).await.unwrap() {
        Lookup::Miss(g) => g,
        Lookup::Hit(_) => panic!("{code} is cached"),
    }
}

#[tokio::test]
async fn a_fill_that_read_before_a_write_cannot_overwrite_it() {
    let app = spawn_app().await;
    let cache = &app.state.cache;
    let seen = generation_seen(&app, "fence01").await;
    // A write lands between the reader's lookup and its fill.
    assert!(
        cache
            .publish("fence01", &state("https://new.example/", 2))
            .await
            .unwrap()
            == Published::Stored
    );
    assert!(!cache
        .fill("fence01", &state("https://old.example/", 1), &seen)
        .await
        .unwrap());
    match cache.lookup("fence01").await.unwrap() {
        Lookup::Hit(e) => assert_eq!(e, entry("https://new.example/")),
        Lookup::Miss(_) => panic!("the write's entry is gone"),
    }
    // Without a write in between, the fill stores.
    let seen = generation_seen(&app, "fence02").await;
    assert!(cache
        .fill("fence02", &LinkState::absent(0), &seen)
        .await
        .unwrap());
}

#[tokio::test]
async fn a_fill_that_read_before_a_bulk_import_committed_stores_nothing_after_it() {
    let app = spawn_app().await;
    let cache = &app.state.cache;
    let seen = generation_seen(&app, "bulk001").await;
    // The import commits and drops the cached entries of its codes (here none was cached yet).
    cache
        .forget_many(&["bulk001".to_owned()], 10)
        .await
        .unwrap();
    assert!(
        !cache
            .fill("bulk001", &LinkState::absent(0), &seen)
            .await
            .unwrap(),
        "the pre-import row must not be cached for a day"
    );
    assert!(matches!(
        cache.lookup("bulk001").await.unwrap(),
        Lookup::Miss(_)
    ));
}

#[tokio::test]
async fn a_link_deleted_while_redis_stalls_writes_stops_redirecting_once_redis_recovers() {
    let redis = PrivateRedis::start(Persistence::None);
    let url = redis.url();
    let app = spawn_app_with(|c| c.redis.url = url).await;
    let (_, id, code) = app.create_link("stall", "https://example.com/stall").await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);

    // Writes (and PUBLISH) wait for 1.5 s; the API's 250 ms Redis timeout fires on them.
    let admin = redis::Client::open(redis.url()).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("WRITE")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(app.delete(&format!("/urls/{id}")).await.status(), 204);

    // What every edge reads: the entry in Redis (reads are not paused).
    let link_key = app.state.keys.link(&code);
    let cached = |mut conn: redis::aio::MultiplexedConnection| {
        let key = link_key.clone();
        async move {
            let raw: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            match raw.as_deref().and_then(CachedLink::decode) {
                Some(CachedLink::Found(l)) => l.redirects_at(chrono::Utc::now().timestamp()),
                _ => false,
            }
        }
    };
    let reader = admin.get_multiplexed_async_connection().await.unwrap();
    assert!(
        cached(reader.clone()).await,
        "right after the 204 the stalled write has not reached Redis (the defect's setting)"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while cached(reader.clone()).await {
        assert!(
            Instant::now() < deadline,
            "the deleted link kept redirecting from Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.wait_outbox_empty().await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 404);
}

/// An import that committed and whose process died before it cleared the cache (here: the
/// import run on its own, without the route's cache step) still takes effect on the redirect:
/// its codes were queued in the import's own transaction, and the replay publishes them.
#[tokio::test]
async fn a_link_import_whose_cache_step_never_ran_still_reaches_redis() {
    let app = spawn_app().await;
    let (user, id, code) = app
        .create_link("importer", "https://example.com/before")
        .await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    let csv = format!(
        "id,user_id,short_code,original_url,is_active\n{id},{user},{code},https://example.com/after,False\n"
    );
    let mut client = app.state.db.get().await.unwrap();
    let turn = app.state.imports.clone().acquire_owned().await.unwrap();
    let imported = kurz_api::import::urls(&mut client, csv.as_bytes(), &app.state.targets, turn)
        .await
        .unwrap();
    assert!(imported.codes.contains(&code));
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.get(&format!("/{code}")).await.status() != 404 {
        assert!(
            Instant::now() < deadline,
            "the deactivated link kept redirecting from Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.wait_outbox_empty().await;
}

/// Publishes land in the order of their round trips, not of their commits: a replica's publish
/// of an edit that stalled, or the outbox replay that read the row just before a write, can
/// reach Redis after the publish of a later write. Such a late publish is refused, so an edit
/// cannot be undone and a deleted link cannot come back for the link TTL.
#[tokio::test]
async fn a_late_publish_of_an_older_state_cannot_undo_an_edit_or_a_delete() {
    let app = spawn_app().await;
    let (_, id, code) = app.create_link("late", "https://example.com/first").await;
    let first = row_now(&app, &code).await;
    let res = app
        .put_json(
            &format!("/urls/{id}"),
            &json!({"original_url": "https://example.com/second"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let second = row_now(&app, &code).await;
    assert!(second.version > first.version);

    assert!(
        app.state
            .cache
            .publish(&code, &first.cache_state())
            .await
            .unwrap()
            != Published::Stored
    );
    let res = app.get(&format!("/{code}")).await;
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["location"], "https://example.com/second");

    assert_eq!(app.delete(&format!("/urls/{id}")).await.status(), 204);
    for late in [&first, &second] {
        assert!(
            app.state
                .cache
                .publish(&code, &late.cache_state())
                .await
                .unwrap()
                != Published::Stored
        );
        assert_eq!(app.get(&format!("/{code}")).await.status(), 404);
    }
    // The tombstone outlives the negative TTL: a publish held up longer still finds it.
    let mut ttl = redis::cmd("TTL");
    ttl.arg(app.state.keys.link(&code));
    let left: i64 = app.state.redis.query(&ttl).await.unwrap();
    assert!(
        left > i64::try_from(app.state.config.cache.negative_ttl_seconds).unwrap(),
        "the deleted link's tombstone expires in {left} s"
    );
    // Publishing the same state again (a replay) is not refused.
    let deleted = row_now(&app, &code).await;
    assert!(
        app.state
            .cache
            .publish(&code, &deleted.cache_state())
            .await
            .unwrap()
            == Published::Stored
    );
}

/// A bulk import leaves a stale marker rather than no entry: the next visit reads PostgreSQL,
/// and a late publish of a state from before the import is refused. (A row cannot give a link
/// another code: `bulk::a_bulk_row_cannot_change_a_links_code`.)
#[tokio::test]
async fn a_late_publish_from_before_an_import_cannot_undo_it() {
    let app = spawn_app().await;
    let (user, id, code) = app
        .create_link("importer", "https://example.com/before")
        .await;
    let before = row_now(&app, &code).await;
    let csv = format!(
        "id,user_id,short_code,original_url\n{id},{user},{code},https://example.com/after\n"
    );
    // The bulk import's two steps, as its route runs them.
    let mut client = app.state.db.get().await.unwrap();
    let turn = app.state.imports.clone().acquire_owned().await.unwrap();
    let imported = kurz_api::import::urls(&mut client, csv.as_bytes(), &app.state.targets, turn)
        .await
        .unwrap();
    kurz_api::cache_sync::after_import(&app.state, &client, &imported).await;
    app.wait_outbox_empty().await;
    let marker = cached(&app, &code)
        .await
        .expect("an imported code keeps a marker");
    assert_eq!(
        CachedLink::decode(&marker),
        None,
        "a marker is read as a miss"
    );
    let late = || async {
        app.state
            .cache
            .publish(&code, &before.cache_state())
            .await
            .unwrap()
    };
    assert!(late().await != Published::Stored);
    let res = app.get(&format!("/{code}")).await;
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["location"], "https://example.com/after");
    // The visit filled the entry over the marker; an old publish is still refused.
    assert!(matches!(
        app.state.cache.lookup(&code).await.unwrap(),
        Lookup::Hit(CachedLink::Found(_))
    ));
    assert!(late().await != Published::Stored);
}

/// A write publishes its link's state by script hash; a Redis that lost its scripts (a
/// restart, a failover) gets the source and the new state all the same, at once.
#[tokio::test]
async fn a_write_reaches_a_redis_that_lost_its_scripts() {
    let redis = PrivateRedis::start(Persistence::None);
    let url = redis.url();
    let app = spawn_app_with(|c| c.redis.url = url).await;
    let (_, id, code) = app
        .create_link("flushed", "https://example.com/before")
        .await;
    let res = app.get(&format!("/{code}")).await;
    assert_eq!(res.headers()["location"], "https://example.com/before");
    let mut flush = redis::cmd("SCRIPT");
    flush.arg("FLUSH");
    app.state.redis.query::<()>(&flush).await.unwrap();

    let res = app
        .put_json(
            &format!("/urls/{id}"),
            &json!({"original_url": "https://example.com/after"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let cached = match app.state.cache.lookup(&code).await.unwrap() {
        Lookup::Hit(CachedLink::Found(link)) => link.target,
        _ => panic!("no entry for {code}"),
    };
    assert_eq!(
        cached, "https://example.com/after",
        "the publish did not land"
    );
    let res = app.get(&format!("/{code}")).await;
    assert_eq!(res.headers()["location"], "https://example.com/after");
}

/// A marker goes only where no newer state is: a write that committed after the import and
/// published before the import's cache step reached its code keeps its entry. The markers go
/// by script hash; a Redis that lost its scripts (restarted) still gets them.
#[tokio::test]
async fn an_import_marks_only_older_entries_even_after_redis_lost_its_scripts() {
    let redis = PrivateRedis::start(Persistence::None);
    let url = redis.url();
    let app = spawn_app_with(|c| c.redis.url = url).await;
    let (_, _, other) = app.create_link("marks2", "https://example.com/older").await;
    let (_, _, code) = app.create_link("marks", "https://example.com/newer").await;
    let newer = row_now(&app, &code).await;
    let mut flush = redis::cmd("SCRIPT");
    flush.arg("FLUSH");
    app.state.redis.query::<()>(&flush).await.unwrap();

    app.state
        .cache
        .forget_many(&[code.clone(), other.clone()], newer.version - 1)
        .await
        .unwrap();
    let kept = cached(&app, &code).await.unwrap();
    assert!(matches!(
        CachedLink::decode(&kept),
        Some(CachedLink::Found(_))
    ));
    let marked = cached(&app, &other).await.unwrap();
    assert_eq!(CachedLink::decode(&marked), None, "{marked}");
    let res = app.get(&format!("/{other}")).await;
    assert_eq!(res.headers()["location"], "https://example.com/older");
}

/// The replay publishes a code it found without a row as missing, with a number taken after
/// that read. A link created with that code meanwhile took a lower number: its own publish is
/// refused, so the write gives the row a new number and publishes again, instead of the new
/// link answering 404 for the link TTL.
#[tokio::test]
async fn a_new_link_is_not_kept_out_by_a_missing_entry_with_a_higher_number() {
    let app = spawn_app().await;
    let (_, _, code) = app.create_link("racer", "https://example.com/new").await;
    let created = row_now(&app, &code).await;
    let client = app.state.db.get().await.unwrap();
    let later = db::urls::next_version(&client).await.unwrap();
    assert!(
        app.state
            .cache
            .publish(&code, &LinkState::absent(later))
            .await
            .unwrap()
            == Published::Stored
    );
    assert_eq!(app.get(&format!("/{code}")).await.status(), 404);

    // The create's own publish, arriving after the replay's.
    kurz_api::cache_sync::after_write(&app.state, &created, None).await;
    let res = app.get(&format!("/{code}")).await;
    assert_eq!(res.status(), 302);
    assert_eq!(res.headers()["location"], "https://example.com/new");
    assert!(row_now(&app, &code).await.version > later);
    app.wait_outbox_empty().await;
}

/// With `redis.replica_acks`, a link's new state is done only once a replica confirmed it: a
/// failover could otherwise promote a replica that still serves the old one. Without a replica
/// the write stays queued, and the replay finishes it once one is there.
#[tokio::test]
async fn with_replica_acks_a_link_state_stays_queued_until_a_replica_has_it() {
    let (master, app) = spawn_app_waiting_for_a_replica(|_| {}).await;
    let (_, id, _) = app.create_link("acks", "https://example.com/acks").await;
    let res = app
        .put_json(&format!("/urls/{id}"), &json!({"title": "unconfirmed"}))
        .await;
    assert_eq!(res.status(), 200);
    assert!(
        app.outbox_len().await >= 1,
        "a state no replica confirmed left the queue"
    );
    assert!(kurz_api::cache_sync::replay_once(&app.state).await.is_err());

    let _replica = replica_of(&master).await;
    app.wait_outbox_empty().await;
}

/// With `redis.replica_acks`, Redis holds the connection of a write in `WAIT` until a replica
/// answers, and every command sent on it after the write: half of `redis.timeout_ms` while a
/// shard has lost its replica. What does not wait (a session check) must not queue behind it.
#[tokio::test]
async fn a_write_waiting_for_a_replica_holds_up_no_session_check() {
    // Each WAIT here lasts 30 s: far longer than the check below takes on any machine.
    let (master, app) = spawn_app_waiting_for_a_replica(|c| c.redis.timeout_ms = 60_000).await;
    let res = app
        .post_json(
            "/auth/register",
            &json!({"username": "waiter", "email": "waiter@example.com", "password": "pw-waiter-secret"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let signed_up: Value = res.json().await.unwrap();
    let token = signed_up["token"].as_str().unwrap().to_owned();
    let create = {
        let (client, url) = (app.client.clone(), app.url("/urls"));
        let body = json!({"user_id": signed_up["user"]["id"], "original_url": "https://example.com/waits"});
        tokio::spawn(async move { client.post(url).json(&body).send().await })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while blocked_clients(&master).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the create's publish never waited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let me = app
        .client
        .get(app.url("/auth/me"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200, "{:?}", me.text().await);
    assert_eq!(
        blocked_clients(&master).await,
        1,
        "the check was answered after the wait ended, not beside it"
    );
    create.abort();
}

/// With `redis.replica_acks`, a limited visit whose count no replica confirmed queues its link:
/// a replica promoted without that count would let the visit through again, and the link's
/// next publish raises the counter to the stored clicks.
#[tokio::test]
async fn with_replica_acks_an_unconfirmed_visit_count_queues_its_link() {
    let (_master, app) = spawn_app_waiting_for_a_replica(|_| {}).await;
    let user = app.create_user("unconfirmed").await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/limited", "max_visits": 5}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let code = res.json::<Value>().await.unwrap()["short_code"]
        .as_str()
        .unwrap()
        .to_owned();
    let db = app.sql().await;
    let before: chrono::DateTime<chrono::Utc> = db
        .query_one("SELECT clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    let queued: Option<chrono::DateTime<chrono::Utc>> = db
        .query_opt(
            "SELECT queued_at FROM link_outbox WHERE short_code = $1",
            &[&code],
        )
        .await
        .unwrap()
        .map(|r| r.get(0));
    assert!(
        queued.is_some_and(|at| at >= before),
        "the visit's unconfirmed count did not queue its link: {queued:?} before {before}"
    );
}

/// A link deleted in PostgreSQL whose cached state still redirects, queued for the replay
/// after whatever is queued already.
async fn deleted_behind_the_queue(app: &TestApp, name: &str) -> String {
    let (_, id, code) = app
        .create_link(name, &format!("https://example.com/{name}"))
        .await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    let db = app.sql().await;
    db.execute("UPDATE urls SET deleted_at = now() WHERE id = $1", &[&id])
        .await
        .unwrap();
    let client = app.state.db.get().await.unwrap();
    db::outbox::enqueue(&client, &code).await.unwrap();
    code
}

/// Codes whose publish Redis refuses (on a cluster: a shard without the replica
/// `redis.replica_acks` asks for refuses all of its own) wait for a later round: a delete queued
/// after a hundred of them still reaches Redis in the same round, instead of its link
/// redirecting for the link TTL, and the refused codes stay queued until Redis takes them.
#[tokio::test]
async fn codes_redis_refuses_do_not_hold_up_the_codes_queued_after_them() {
    let mut app = spawn_app().await;
    let (_, stuck_id, stuck) = app.create_link("stuck", "https://example.com/stuck").await;
    let (_, behind_id, behind) = app
        .create_link("behind", "https://example.com/behind")
        .await;
    assert_eq!(app.get(&format!("/{behind}")).await.status(), 302);
    // The app's own rounds, every half second, would take some of the codes queued below
    // before the test's round (seen on a loaded machine): the test runs the only rounds.
    app.stop().await;
    // Entries of a type the publish script cannot read: Redis answers their publish with an
    // error. One edited link, and a hundred codes queued without rows (published as missing).
    let refused: Vec<String> = std::iter::once(stuck.clone())
        .chain((0..100).map(|i| format!("refused{i}")))
        .collect();
    for code in &refused {
        let key = app.state.keys.link(code);
        app.state
            .redis
            .query::<()>(redis::cmd("DEL").arg(&key))
            .await
            .unwrap();
        app.state
            .redis
            .query::<()>(redis::cmd("LPUSH").arg(&key).arg("not a link"))
            .await
            .unwrap();
    }
    let db = app.sql().await;
    db.execute(
        "UPDATE urls SET title = 'edited' WHERE id = $1",
        &[&stuck_id],
    )
    .await
    .unwrap();
    let client = app.state.db.get().await.unwrap();
    for code in &refused {
        db::outbox::enqueue(&client, code).await.unwrap();
    }
    // A delete queued behind them.
    db.execute(
        "UPDATE urls SET deleted_at = now() WHERE id = $1",
        &[&behind_id],
    )
    .await
    .unwrap();
    db::outbox::enqueue(&client, &behind).await.unwrap();
    drop(client);

    let failed = kurz_api::cache_sync::replay_once(&app.state)
        .await
        .expect_err("the refused codes are not published");
    assert!(failed.contains("101 queued link states"), "{failed}");
    assert!(
        !matches!(
            app.state.cache.lookup(&behind).await.unwrap(),
            Lookup::Hit(CachedLink::Found(_))
        ),
        "the delete queued behind the refused codes did not reach Redis"
    );
    let mut queued: Vec<String> = db
        .query("SELECT short_code FROM link_outbox", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    queued.sort();
    let mut expected = refused.clone();
    expected.sort();
    assert_eq!(queued, expected);

    for code in &refused {
        app.state
            .redis
            .query::<()>(redis::cmd("DEL").arg(app.state.keys.link(code)))
            .await
            .unwrap();
    }
    // Refused codes wait REPLAY_RETRY_AFTER before a round takes them again.
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.outbox_len().await > 0 {
        assert!(Instant::now() < deadline, "the outbox never drained");
        let _ = kurz_api::cache_sync::replay_once(&app.state).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A round replays every code queued when it began, in batches: a delete queued behind a
/// backlog larger than one batch (an import during a Redis outage queues all its codes) is
/// published in the same round, not hundreds of rounds later.
#[tokio::test]
async fn one_replay_round_reaches_a_delete_queued_behind_more_than_a_batch() {
    let mut app = spawn_app().await;
    let db = app.sql().await;
    // Codes without rows: each goes out as missing.
    db.execute(
        "INSERT INTO link_outbox (short_code, queued_at) \
         SELECT 'backlog' || g, clock_timestamp() - interval '1 hour' + g * interval '1 millisecond' \
         FROM generate_series(1, 5000) g",
        &[],
    )
    .await
    .unwrap();
    let deleted = deleted_behind_the_queue(&app, "late").await;
    // The app's own rounds stop (finishing one under way): the round below is the only one.
    app.stop().await;
    kurz_api::cache_sync::replay_once(&app.state).await.unwrap();
    assert!(
        !matches!(
            app.state.cache.lookup(&deleted).await.unwrap(),
            Lookup::Hit(CachedLink::Found(_))
        ),
        "the delete behind the backlog did not reach Redis in the round"
    );
    assert_eq!(app.outbox_len().await, 0);
}

/// While Redis does not answer, the replay's rounds fail; the gauge of queued link states
/// (`kurz_api_link_outbox`, which `KurzLinkStatesNotPublished` alerts on) still shows what
/// waits, instead of the 0 of its last good round.
#[tokio::test]
async fn the_outbox_gauge_counts_queued_states_while_redis_fails() {
    let redis = PrivateRedis::start(Persistence::None);
    let url = redis.url();
    let app = spawn_app_with(|c| c.redis.url = url).await;
    let (_, id, code) = app.create_link("gauge", "https://example.com/gauge").await;
    kurz_api::cache_sync::replay_once(&app.state).await.unwrap();
    assert_eq!(app.state.metrics.link_outbox.get(), 0);
    {
        let _stopped = redis.paused();
        assert_eq!(app.delete(&format!("/urls/{id}")).await.status(), 204);
        assert!(kurz_api::cache_sync::replay_once(&app.state).await.is_err());
        assert_eq!(app.state.metrics.link_outbox.get(), 1);
    }
    app.wait_outbox_empty().await;
    kurz_api::cache_sync::replay_once(&app.state).await.unwrap();
    assert_eq!(app.state.metrics.link_outbox.get(), 0);
    assert_eq!(app.get(&format!("/{code}")).await.status(), 404);
}

/// The replay read a code without a row and publishes it as missing, with a number taken
/// after that read; a create of the code that committed just after the read, and whose own
/// publish landed first, would be replaced by the missing entry for the link TTL. The replay
/// looks for the row again after storing, and puts the link back.
#[tokio::test]
async fn a_link_created_while_the_replay_publishes_its_code_as_missing_still_redirects() {
    let app = spawn_app().await;
    // The create committed and published after the replay's read found nothing.
    let (_, _, code) = app
        .create_link("after", "https://example.com/created")
        .await;
    let client = app.state.db.get().await.unwrap();
    kurz_api::cache_sync::publish_missing(&app.state, &client, &code)
        .await
        .unwrap();
    let res = app.get(&format!("/{code}")).await;
    assert_eq!(
        res.status(),
        302,
        "the new link is kept out by a missing entry"
    );
    assert_eq!(res.headers()["location"], "https://example.com/created");
}

/// docs/operations.md's step after restoring PostgreSQL from a backup: the sequence jumps far
/// above anything Redis holds. Numbers that large still compare exactly in the scripts, so new
/// states are stored and older ones refused as before.
#[tokio::test]
async fn numbers_after_the_documented_jump_are_still_ordered() {
    let app = spawn_app().await;
    let (_, id, code) = app.create_link("jump", "https://example.com/before").await;
    let before = row_now(&app, &code).await;
    app.sql()
        .await
        .execute(
            "SELECT setval('link_versions', nextval('link_versions') + 1000000000000)",
            &[],
        )
        .await
        .unwrap();
    for n in 1..=2 {
        let target = format!("https://example.com/after{n}");
        let res = app
            .put_json(&format!("/urls/{id}"), &json!({ "original_url": target }))
            .await;
        assert_eq!(res.status(), 200);
        assert!(row_now(&app, &code).await.version > 1_000_000_000_000);
        let res = app.get(&format!("/{code}")).await;
        assert_eq!(res.headers()["location"], target.as_str());
    }
    let after = row_now(&app, &code).await;
    // A small old number (more digits do not make a number larger as text) and one just below.
    let mut one_older = after.cache_state();
    one_older.version -= 1;
    for late in [before.cache_state(), one_older] {
        assert!(app.state.cache.publish(&code, &late).await.unwrap() != Published::Stored);
    }
    let res = app.get(&format!("/{code}")).await;
    assert_eq!(res.headers()["location"], "https://example.com/after2");
}

/// docs/operations.md's step after a restore (of PostgreSQL, or of a Redis that lost writes it
/// had acknowledged), on a single Redis: every cached state of the prefix goes, and the next
/// visit reads PostgreSQL, here a row that differs from what Redis held.
#[tokio::test]
async fn the_documented_cache_drop_makes_visits_read_postgres_again() {
    let app = spawn_app().await;
    let (_, id, code) = app
        .create_link("dropped", "https://example.com/cached")
        .await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    app.sql()
        .await
        .execute(
            "UPDATE urls SET original_url = 'https://example.com/restored' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let res = app.get(&format!("/{code}")).await;
    assert_eq!(res.headers()["location"], "https://example.com/cached");

    // A link password's lock-out, whose key also holds `:link:`: the flush leaves it.
    let lock = app.state.keys.login("lock-acct", "link:1");
    let _: () = app
        .state
        .redis
        .query(redis::cmd("SET").arg(&lock).arg(1))
        .await
        .unwrap();
    // As docs/operations.md has it, with the prefix filled in and this test's Redis named.
    let script = format!(
        "redis-cli -u {url} --scan --pattern '{prefix}:{{p*}}:link:*' | xargs -r -n 500 redis-cli -u {url} unlink",
        url = crate::helpers::redis_url(),
        prefix = app.state.keys.prefix()
    );
    crate::helpers::sh(&script);
    assert_eq!(cached(&app, &code).await, None);
    let kept: i64 = app
        .state
        .redis
        .query(redis::cmd("EXISTS").arg(&lock))
        .await
        .unwrap();
    assert_eq!(kept, 1, "the flush took a log-in lock-out");
    let res = app.get(&format!("/{code}")).await;
    assert_eq!(res.headers()["location"], "https://example.com/restored");
}

/// The replay reads its oldest queued codes through an index, not by sorting the whole queue:
/// after a long Redis outage the queue holds every code written meanwhile, and each batch
/// would sort all of it on every replica.
#[tokio::test]
async fn the_replay_finds_its_oldest_codes_without_sorting_the_queue() {
    let app = spawn_app().await;
    let db = app.sql().await;
    // Queued a day ahead: this replay leaves them alone.
    db.batch_execute(
        "INSERT INTO link_outbox (short_code, queued_at) \
         SELECT 'q' || n, clock_timestamp() + interval '1 day' + n * interval '1 ms' \
         FROM generate_series(1, 20000) AS n; \
         ANALYZE link_outbox",
    )
    .await
    .unwrap();
    let plan: Vec<String> = db
        .query(
            "EXPLAIN SELECT short_code, queued_at FROM link_outbox \
             WHERE queued_at <= clock_timestamp() + interval '2 days' ORDER BY queued_at LIMIT 500",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("Index Scan using link_outbox_queued_at"),
        "{plan}"
    );
    assert!(!plan.contains("Sort"), "{plan}");
}

/// What an API finds in the single schema key, written there by an API from before the set of
/// fingerprints since its own last write, goes into the set as a running API's; what its first
/// write finds is what a stopped release left, and does not.
#[tokio::test]
async fn another_releases_fingerprint_in_the_single_key_joins_the_set_once_rewritten() {
    let app = spawn_app().await;
    // Keys of their own (under the app's prefix, so cleaned with it): the app's own publishes
    // every 5 s must not see what the test writes.
    let keys = kurz_common::keys::KeySchema::new(&format!("{}:other", app.state.keys.prefix()), 16);
    let fresh = kurz_api::cache::LinkCache::new(app.state.redis.clone(), keys.clone(), 60, 5);
    let client = redis::Client::open(app.state.config.redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let old = "kurz-keys/1 partitions=16 link-entry=4 click-fields=3";
    // Its first publish may find what a stopped release left: in the set, but as published
    // two of its publishes before the end of its life. The next finds what one still running
    // wrote since: published now.
    let alive = kurz_common::keys::SCHEMA_ALIVE_MS as f64;
    let every = kurz_common::keys::SCHEMA_EVERY_MS as f64;
    for (age, why) in [
        (alive - 2.0 * every, "left by a stopped release, or not"),
        (0.0, "written since: running"),
    ] {
        let _: () = redis::cmd("SET")
            .arg(keys.schema())
            .arg(old)
            .query_async(&mut conn)
            .await
            .unwrap();
        fresh.publish_schema().await.unwrap();
        let score: Option<f64> = redis::cmd("ZSCORE")
            .arg(keys.schemas())
            .arg(old)
            .query_async(&mut conn)
            .await
            .unwrap();
        let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
        let published_ago = (secs * 1000 + micros / 1000) as f64 - score.expect(why);
        // Less than two publishes apart, to tell the two apart on a slow machine too.
        assert!(
            (age..age + 2.0 * every).contains(&published_ago),
            "{why}: published {published_ago} ms ago"
        );
    }
    let ttl: i64 = redis::cmd("PTTL")
        .arg(keys.schemas())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0, "the set goes when no API that knows it publishes");
}
