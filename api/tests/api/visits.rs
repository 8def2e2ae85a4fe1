//! `max_visits`: a link answers 410 `gone` once its counted visits are used up — exactly, with
//! visitors racing for the last one, with sampled-out clicks, with a limit set on a link that
//! was already clicked, and with Redis down (PostgreSQL decides then).

use crate::helpers::{error_of, spawn_app, spawn_app_with, TestApp};
use futures_util::future::join_all;
use kurz_common::testing::{Persistence, PrivateRedis};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

async fn limited_link(app: &TestApp, user: i64, max: Value) -> (i64, String) {
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/limited", "max_visits": max}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let link: Value = res.json().await.unwrap();
    assert_eq!(link["max_visits"], max);
    assert_eq!(link["visits"], 0);
    (
        link["id"].as_i64().unwrap(),
        link["short_code"].as_str().unwrap().to_owned(),
    )
}

/// Fires `n` GETs at once; the statuses, sorted.
async fn race(app: &TestApp, code: &str, n: usize) -> Vec<u16> {
    let path = format!("/{code}");
    let mut statuses: Vec<u16> = join_all((0..n).map(|_| app.get(&path)))
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    statuses.sort();
    statuses
}

fn counted(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// `visits` on the link once the consumer has stored `expected` clicks.
async fn wait_visits(app: &TestApp, id: i64, expected: i64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        app.clicks(id).await; // a read of events drains the click stream first
        let link: Value = app.get(&format!("/urls/{id}")).await.json().await.unwrap();
        if link["visits"] == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "visits stayed at {}",
            link["visits"]
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn assert_exhausted(res: reqwest::Response) {
    let err = error_of(res, 410).await;
    assert_eq!(err["error"], "gone");
    assert!(
        err["message"].as_str().unwrap().contains("visit limit"),
        "{err}"
    );
}

#[tokio::test]
async fn racing_visitors_get_exactly_max_visits_redirects_then_410() {
    let app = spawn_app().await;
    let user = app.create_user("mv").await;
    let (id, code) = limited_link(&app, user, json!(3)).await;
    let statuses = race(&app, &code, 8).await;
    assert_eq!(counted(&statuses, 302), 3, "{statuses:?}");
    assert_eq!(counted(&statuses, 410), 5, "{statuses:?}");
    assert_exhausted(app.get(&format!("/{code}")).await).await;
    // A HEAD learns the link is used up, and is not a visit either way.
    let head = app
        .client
        .head(app.url(&format!("/{code}")))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 410);
    wait_visits(&app, id, 3).await;
    assert_eq!(app.clicks(id).await.len(), 3, "no click for a refusal");

    // Raising the limit lets exactly the difference through; removing it, everything.
    let res = app
        .put_json(&format!("/urls/{id}"), &json!({"max_visits": 5}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["max_visits"], 5);
    let statuses = race(&app, &code, 4).await;
    assert_eq!(statuses, [302, 302, 410, 410]);
    let res = app
        .put_json(&format!("/urls/{id}"), &json!({"max_visits": null}))
        .await;
    assert_eq!(
        res.json::<Value>().await.unwrap()["max_visits"],
        Value::Null
    );
    assert_eq!(race(&app, &code, 3).await, [302, 302, 302]);
    wait_visits(&app, id, 8).await;
    let updated: Vec<Value> = app
        .get(&format!("/events?url_id={id}&event_type=updated"))
        .await
        .json()
        .await
        .unwrap();
    let changes: Vec<&Value> = updated.iter().map(|e| &e["details"]["new_value"]).collect();
    assert!(changes.contains(&&json!(5)) && changes.contains(&&Value::Null));
}

#[tokio::test]
async fn max_visits_must_be_a_positive_integer_or_null() {
    let app = spawn_app().await;
    let user = app.create_user("mvbad").await;
    let (id, _) = limited_link(&app, user, Value::Null).await;
    for bad in [
        json!(0),
        json!(-2),
        json!("3"),
        json!(1.5),
        json!(2_147_483_648_i64),
        json!([1]),
    ] {
        let res = app
            .post_json(
                "/urls",
                &json!({"user_id": user, "original_url": "https://example.com/x", "max_visits": bad}),
            )
            .await;
        let err = error_of(res, 400).await;
        assert_eq!(
            err["details"]["max_visits"], "must be an integer from 1 to 2147483647, or null",
            "{bad}"
        );
        let res = app
            .put_json(&format!("/urls/{id}"), &json!({"max_visits": bad}))
            .await;
        error_of(res, 400).await;
    }
    let (_, _) = limited_link(&app, user, json!(2_147_483_647_i64)).await;
}

/// Visits sampled out of the click stream (`clicks.sample_rate`) still count against a limit:
/// otherwise a sampled link would never run out.
#[tokio::test]
async fn sampled_out_visits_still_count() {
    let app = spawn_app_with(|c| c.clicks.sample_rate = 0.0).await;
    let user = app.create_user("mvsample").await;
    let (id, code) = limited_link(&app, user, json!(2)).await;
    assert_eq!(race(&app, &code, 4).await, [302, 302, 410, 410]);
    wait_visits(&app, id, 2).await;
}

/// A limit set on a link that already has stored clicks counts them: the counter is seeded
/// from PostgreSQL.
#[tokio::test]
async fn a_limit_set_later_counts_the_clicks_already_stored() {
    let app = spawn_app().await;
    let user = app.create_user("mvlate").await;
    let (id, code) = limited_link(&app, user, Value::Null).await;
    assert_eq!(race(&app, &code, 3).await, [302, 302, 302]);
    wait_visits(&app, id, 3).await;
    let res = app
        .put_json(&format!("/urls/{id}"), &json!({"max_visits": 4}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(race(&app, &code, 3).await, [302, 410, 410]);
    wait_visits(&app, id, 4).await;
}

/// A bulk import that drops a link's limit drops its visit counter too: a limit set again
/// later counts the clicks stored by then, not a count left from before the import.
#[tokio::test]
async fn a_limit_dropped_by_an_import_and_set_again_counts_the_stored_clicks() {
    let app = spawn_app().await;
    let user = app.create_user("mvimport").await;
    let (id, code) = limited_link(&app, user, json!(3)).await;
    assert_eq!(race(&app, &code, 3).await, [302, 302, 302]);
    // The file's `max_visits` column, empty: a file without the column keeps the limit.
    let csv = format!(
        "id,user_id,short_code,original_url,max_visits\n{id},{user},{code},https://example.com/limited,\n"
    );
    assert_eq!(
        app.upload("/urls/bulk", csv.into_bytes()).await.status(),
        201
    );
    assert_eq!(
        race(&app, &code, 2).await,
        [302, 302],
        "no limit after the import"
    );
    wait_visits(&app, id, 5).await;
    let res = app
        .put_json(&format!("/urls/{id}"), &json!({"max_visits": 6}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(race(&app, &code, 3).await, [302, 410, 410]);
    wait_visits(&app, id, 6).await;
}

/// Visits PostgreSQL allowed while Redis did not answer (its counter surviving, as in a stall
/// or a partition) are counted once Redis answers again: the counter is raised to the stored
/// clicks, so the link does not get those visits a second time.
#[tokio::test]
async fn visits_allowed_while_redis_stalled_count_against_the_limit_after() {
    let redis = PrivateRedis::start(Persistence::None);
    let url = redis.url();
    let app = spawn_app_with(|c| c.redis.url = url).await;
    let user = app.create_user("mvstall").await;
    let (id, code) = limited_link(&app, user, json!(4)).await;
    assert_eq!(race(&app, &code, 2).await, [302, 302]);
    wait_visits(&app, id, 2).await;
    let paused = redis.paused();
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    drop(paused);
    wait_visits(&app, id, 3).await;
    // The API back on Redis (it waits a moment before reconnecting), and its outbox replayed:
    // the visits below go through the visit script and its counter.
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.state.cache.lookup(&code).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the API never reconnected to Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.wait_outbox_empty().await;
    assert_eq!(race(&app, &code, 3).await, [302, 410, 410]);
    wait_visits(&app, id, 4).await;
}

/// With Redis down the API alone answers, and PostgreSQL enforces the limit under the link's
/// row lock: racing visitors still get exactly the visits left.
#[tokio::test]
async fn with_redis_down_postgres_enforces_the_limit() {
    let mut redis = PrivateRedis::start(Persistence::None);
    let url = redis.url();
    let app = spawn_app_with(|c| c.redis.url = url).await;
    let user = app.create_user("mvdown").await;
    let (id, code) = limited_link(&app, user, json!(3)).await;
    redis.kill();
    let statuses = race(&app, &code, 7).await;
    assert_eq!(counted(&statuses, 302), 3, "{statuses:?}");
    assert_eq!(counted(&statuses, 410), 4, "{statuses:?}");
    assert_exhausted(app.get(&format!("/{code}")).await).await;
    let sql = app.sql().await;
    let stored: i64 = sql
        .query_one(
            "SELECT count(*) FROM events WHERE url_id = $1 AND event_type = 'click'",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 3);
}

/// A whole number written with a fraction (`3.0`, what Python's json writes for a float) is the
/// integer it means — JSON Schema counts it one, and so do clients generated from the OpenAPI
/// document; a real fraction is still refused.
#[tokio::test]
async fn whole_numbers_written_as_floats_are_integers() {
    let app = spawn_app().await;
    let user = app.create_user("floats").await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user as f64, "original_url": "https://example.com/f", "max_visits": 3.0, "redirect_type": 307.0}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let link: Value = res.json().await.unwrap();
    assert_eq!(
        (link["max_visits"].as_i64(), link["redirect_type"].as_i64()),
        (Some(3), Some(307))
    );
    assert_eq!(link["user_id"], user);
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/f", "max_visits": 3.5}),
        )
        .await;
    error_of(res, 400).await;
}

/// The preview and the public QR code refuse a used-up link as its redirect does (API.md: "the
/// same refusals as the redirect"), whether its last visit is stored yet or only counted.
#[tokio::test]
async fn a_used_up_link_has_no_preview_and_no_public_qr_code() {
    let app = spawn_app().await;
    let user = app.create_user("spent").await;
    let (id, code) = limited_link(&app, user, json!(1)).await;
    assert_eq!(app.get(&format!("/{code}+")).await.status(), 200);
    assert_eq!(app.get(&format!("/{code}/qr")).await.status(), 200);
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    // Counted in Redis, perhaps not stored yet.
    assert_exhausted(app.get(&format!("/{code}+")).await).await;
    assert_exhausted(app.get(&format!("/{code}/qr")).await).await;
    // Stored, and Redis has lost its count.
    wait_visits(&app, id, 1).await;
    let mut conn = app.state.redis.conn().await.unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(app.state.keys.visits(&code))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_exhausted(app.get(&format!("/{code}+")).await).await;
    assert_exhausted(app.get(&format!("/{code}/qr")).await).await;
    // The owner's QR code by id stays: the link is still theirs to see.
    assert_eq!(app.get(&format!("/urls/{id}/qr")).await.status(), 200);

    // Clicks stored past the counter (posted as events) do not use the link up while the
    // counter has room: the redirect still answers, and so do the preview and the QR code.
    let (id, code) = limited_link(&app, user, json!(2)).await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    let res = app
        .post_json("/events", &json!({"url_id": id, "event_type": "click"}))
        .await;
    assert_eq!(res.status(), 201);
    wait_visits(&app, id, 2).await;
    assert_eq!(app.get(&format!("/{code}+")).await.status(), 200);
    assert_eq!(app.get(&format!("/{code}/qr")).await.status(), 200);
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
}

/// A GET of `code` as an edge forwards a visit it ran: with its request id (the click's) and
/// its visit id.
async fn forward_as_edge(
    app: &TestApp,
    code: &str,
    visit_id: &str,
    click_id: &str,
) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/{code}")))
        .header("x-request-id", click_id)
        .header(kurz_common::visit::VISIT_ID_HEADER, visit_id)
        .send()
        .await
        .unwrap()
}

/// A GET of `code` from a trusted peer naming visit id `visit_id` (a retry, or a made-up id).
async fn get_with_visit_id(app: &TestApp, code: &str, visit_id: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/{code}")))
        .header(kurz_common::visit::VISIT_ID_HEADER, visit_id)
        .send()
        .await
        .unwrap()
}

/// What an edge's run of the visit script does for a GET of `code` under its own ids.
async fn edge_run(app: &TestApp, code: &str, visit_id: &str, click_id: &str) -> Option<String> {
    let click = kurz_common::clicks::Click {
        id: click_id.to_owned(),
        url_id: 0,
        user_id: None,
        code: code.to_owned(),
        target: String::new(),
        referrer: String::new(),
        user_agent: "edge-test".into(),
        ip: "192.0.2.0".into(),
        ts_ms: chrono::Utc::now().timestamp_millis(),
        visitor: String::new(),
    };
    let script = kurz_common::visit::script();
    let inv = kurz_common::visit::invocation(
        &script,
        &app.state.keys,
        code,
        kurz_common::visit::Record::Click,
        chrono::Utc::now().timestamp(),
        Some(&click),
        Some(kurz_common::visit::VisitMark::Set(visit_id)),
    );
    let mut conn = app.state.redis.conn().await.unwrap();
    inv.invoke_async(&mut conn).await.unwrap()
}

/// The other order: the edge's Redis call timed out before Redis ran it, the edge forwarded the
/// visit, and the API's run reached Redis first; the edge's run, still queued, comes after.
/// The visit counts once: a three-visit link still gives its third redirect.
#[tokio::test]
async fn a_forwarded_visit_counts_once_when_the_edge_run_comes_late() {
    let app = spawn_app().await;
    let user = app.create_user("late").await;
    let (id, code) = limited_link(&app, user, json!(3)).await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);

    let visit_id = kurz_common::clicks::new_id();
    let click_id = kurz_common::clicks::new_id();
    let forwarded = forward_as_edge(&app, &code, &visit_id, &click_id).await;
    assert_eq!(forwarded.status(), 302);
    // The edge's late run: its reply goes nowhere (the edge answered by forwarding).
    edge_run(&app, &code, &visit_id, &click_id).await;

    let mut conn = app.state.redis.conn().await.unwrap();
    let counted: Option<i64> = redis::cmd("GET")
        .arg(app.state.keys.visits(&code))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        counted,
        Some(2),
        "the late edge run counted the visit again"
    );
    wait_visits(&app, id, 2).await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    assert_exhausted(app.get(&format!("/{code}")).await).await;
    wait_visits(&app, id, 3).await;
}

/// The cluster client sends a script again when its connection dropped before the reply, which
/// may come after the script ran: the edge's run sent twice under one visit id counts once.
#[tokio::test]
async fn an_edge_run_sent_twice_counts_its_visit_once() {
    let app = spawn_app().await;
    let user = app.create_user("twice").await;
    let (id, code) = limited_link(&app, user, json!(3)).await;
    // The first visit seeds the counter.
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    let (visit_id, click_id) = (kurz_common::clicks::new_id(), kurz_common::clicks::new_id());
    for _ in 0..2 {
        // Each run answers the link's entry: the edge redirects.
        let reply = edge_run(&app, &code, &visit_id, &click_id).await;
        assert!(reply.as_ref().is_some_and(|v| v.len() > 1), "{reply:?}");
    }
    wait_visits(&app, id, 2).await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    assert_exhausted(app.get(&format!("/{code}")).await).await;
}

/// An edge ran a limited link's visit through the script, then forwarded the request after all
/// (its Redis call timed out after the script had run). It passes the visit's id, and the API's
/// run finds the visit counted: the link is not used up one visit early. The id is believed
/// from a trusted proxy (an edge) only, passes one retry, and one that no edge's run marked
/// passes nothing.
#[tokio::test]
async fn a_visit_an_edge_counted_before_forwarding_it_counts_once() {
    for trusted in [true, false] {
        let app = spawn_app_with(|c| {
            if !trusted {
                c.trusted_proxies = vec!["192.0.2.1".into()];
            }
        })
        .await;
        let user = app.create_user("edge").await;
        let (id, code) = limited_link(&app, user, json!(2)).await;
        // One visit through the API seeds the counter.
        assert_eq!(app.get(&format!("/{code}")).await.status(), 302);

        // The edge's run of the second visit, under its own visit id.
        let visit_id = kurz_common::clicks::new_id();
        let click_id = kurz_common::clicks::new_id();
        let raw = edge_run(&app, &code, &visit_id, &click_id).await;
        assert!(raw.is_some_and(|r| r.starts_with("5|")));

        // Its reply was lost: the request reaches the API with the edge's ids.
        let forwarded = forward_as_edge(&app, &code, &visit_id, &click_id).await;
        if trusted {
            assert_eq!(
                forwarded.status(),
                302,
                "the edge's visit was counted twice"
            );
            wait_visits(&app, id, 2).await;
            // Both visits used: the next is refused. The edge's id passes one retry more (its
            // API may have died before answering), then no more; an id a trusted peer makes up
            // finds no mark.
            assert_exhausted(app.get(&format!("/{code}")).await).await;
            let retry = get_with_visit_id(&app, &code, &visit_id).await;
            assert_eq!(retry.status(), 302, "the edge's retry of its counted visit");
            for id in [visit_id.clone(), kurz_common::clicks::new_id()] {
                let res = get_with_visit_id(&app, &code, &id).await;
                assert_exhausted(res).await;
            }
            // An edge sending a GET again (its API died before answering, maybe after its run
            // counted) on a one-visit link: the first run counts, the retry under the same id
            // passes uncounted once, and a third run counts (410).
            let (once_id, once) = limited_link(&app, user, json!(1)).await;
            let made_up = kurz_common::clicks::new_id();
            let mut statuses = Vec::new();
            for _ in 0..3 {
                let res = get_with_visit_id(&app, &once, &made_up).await;
                statuses.push(res.status().as_u16());
            }
            assert_eq!(
                statuses,
                [302, 302, 410],
                "a retried visit counted twice, or an id passed twice"
            );
            wait_visits(&app, once_id, 1).await;
        } else {
            // Not from an edge: the id is ignored, the visit counts, and two were used.
            assert_exhausted(forwarded).await;
        }
    }
}

/// Redis answering without the link's entry (a fill its partition refused, an entry expired
/// since the lookup) does not hand a limited visit to PostgreSQL, which counts only the clicks
/// it has stored: the entry goes back and the counter in Redis decides.
#[tokio::test]
async fn a_limited_visit_that_finds_no_entry_is_decided_by_the_counter() {
    let app = spawn_app().await;
    let user = app.create_user("mvmiss").await;
    let (_, code) = limited_link(&app, user, json!(2)).await;
    let client = redis::Client::open(app.state.config.redis.url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // Two visits counted whose clicks are still in the stream (none stored), and no entry.
    let _: () = redis::cmd("SET")
        .arg(app.state.keys.visits(&code))
        .arg(2)
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(app.state.keys.link(&code))
        .query_async(&mut conn)
        .await
        .unwrap();
    let db = app.state.db.get().await.unwrap();
    let link = kurz_api::db::urls::find_url_by_code(&db, &code)
        .await
        .unwrap()
        .unwrap();
    drop(db);
    let kurz_common::keys::CachedLink::Found(entry) = link.cache_entry() else {
        panic!("the link is live");
    };
    let visit = app
        .state
        .clicks
        .limited_visit(&app.state.cache, &code, &entry, None, None)
        .await
        .unwrap();
    assert_eq!(visit, kurz_api::clicks::LimitedVisit::Exhausted);
}

/// A limited link's visit whose script reached Redis (the visit counted, its click appended) is
/// answered with its redirect however late: a 503 past the deadline would have the visitor's
/// retry count the visit a second time.
#[tokio::test]
async fn a_visit_counted_past_its_deadline_is_answered_with_its_redirect() {
    let (_redis, relay, app, id, code) = visited_limited_link_behind_a_relay(20_000).await;
    let user = app.create_user("latevisit").await;
    let (_, other) = limited_link(&app, user, json!(5)).await;
    let script = kurz_common::visit::script();
    let sha = script.get_hash().as_bytes();
    relay.hold_at(sha);
    let (client, url) = (app.client.clone(), app.url(&format!("/{code}")));
    let visit = tokio::spawn(async move { client.get(url).send().await });
    relay.wait_held(sha).await;
    // A visit started after it waits on Redis too and gets its 503: the first one's deadline
    // has passed as well.
    error_of(app.get(&format!("/{other}")).await, 503).await;
    assert!(
        !visit.is_finished(),
        "the visit was answered before its count"
    );
    relay.release();
    assert_eq!(visit.await.unwrap().unwrap().status(), 302);
    wait_visits(&app, id, 2).await;
}

/// With Redis refusing, a limited link's visit is decided by PostgreSQL under the link's row
/// lock, and nothing is counted until that commits: a visit still waiting at its deadline gets
/// its 503 then (and is never counted), instead of holding the visitor for as long as the lock.
#[tokio::test]
async fn a_visit_waiting_on_postgres_at_its_deadline_gets_503_and_counts_nothing() {
    let app = crate::helpers::spawn_app_without_redis(|c| {
        crate::helpers::request_deadline(c, 1_000);
    })
    .await;
    let user = app.create_user("waitvisit").await;
    let (id, code) = limited_link(&app, user, json!(5)).await;
    let mut holder = app.sql().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM urls WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .unwrap();
    let (client, url) = (app.client.clone(), app.url(&format!("/{code}")));
    let visit = tokio::spawn(async move { client.get(url).send().await });
    crate::helpers::wait_for_lock_waits(&app, 1, "the visit").await;
    let answered = tokio::time::timeout(Duration::from_secs(20), visit).await;
    tx.rollback().await.unwrap();
    let res = answered.expect("the visit waited for the lock past its deadline");
    error_of(res.unwrap().unwrap(), 503).await;
    let link: Value = app.get(&format!("/urls/{id}")).await.json().await.unwrap();
    assert_eq!(link["visits"], 0);
}

/// A password set on a limited link between a visit's read of it and its count: the count
/// script finds the link protected and counts nothing, and the visit is not redirected (it is
/// asked for the password) rather than sent to the target uncounted and unrecorded.
#[tokio::test]
async fn a_visit_that_finds_a_password_set_since_its_read_is_not_redirected() {
    let app = spawn_app().await;
    let user = app.create_user("pwrace").await;
    let (id, code) = limited_link(&app, user, json!(5)).await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    // What the visit read: the link before its password.
    let kurz_api::cache::Lookup::Hit(kurz_common::keys::CachedLink::Found(read)) =
        app.state.cache.lookup(&code).await.unwrap()
    else {
        panic!("the link is cached after its visit")
    };
    assert!(!read.protected);
    password_set_since_stops_the_visit(&app, &code, &read).await;
    wait_visits(&app, id, 1).await;
}

/// A visit whose count script got no answer (Redis stalled) may yet be counted when Redis
/// runs it late: PostgreSQL decides it under the link's row lock, and it is answered with that
/// outcome however late, not with a 503 that the visitor's retry would count again.
#[tokio::test]
async fn a_visit_whose_script_went_unanswered_is_answered_with_its_outcome() {
    let (_redis, relay, app, id, code) = visited_limited_link_behind_a_relay(200).await;
    let script = kurz_common::visit::script();
    relay.hold_at(script.get_hash().as_bytes());
    let mut holder = app.sql().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM urls WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .unwrap();
    let visit = app.spawn_get(&format!("/{code}"));
    app.past_the_deadline_of_a_lock_wait(id, "the visit").await;
    assert!(
        !visit.is_finished(),
        "the visit was answered before PostgreSQL decided it"
    );
    tx.rollback().await.unwrap();
    relay.release();
    assert_eq!(visit.await.unwrap().unwrap().status(), 302);
}

/// A visit whose count script Redis refused (an error answer: the script did not run) goes on
/// to PostgreSQL under the link's row lock, and that wait is bounded by the request's deadline
/// again: a 503 with nothing counted, not a visitor held for as long as the lock.
#[tokio::test]
async fn a_visit_whose_script_redis_refused_is_bounded_by_its_deadline_again() {
    let redis = PrivateRedis::start(Persistence::None);
    let url = redis.url();
    let app = spawn_app_with(|c| {
        c.redis.url = url.clone();
        c.redis.cluster_nodes.clear();
        crate::helpers::request_deadline(c, 1_000);
    })
    .await;
    let user = app.create_user("refusedvisit").await;
    let (id, code) = limited_link(&app, user, json!(5)).await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    let mut admin = redis::Client::open(url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let () = redis::cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-evalsha")
        .arg("-eval")
        .query_async(&mut admin)
        .await
        .unwrap();
    let mut holder = app.sql().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM urls WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .unwrap();
    let (client, visit_url) = (app.client.clone(), app.url(&format!("/{code}")));
    let visit = tokio::spawn(async move { client.get(visit_url).send().await });
    let answered = tokio::time::timeout(Duration::from_secs(20), visit).await;
    tx.rollback().await.unwrap();
    let res = answered.expect("the visit waited for the lock past its deadline");
    error_of(res.unwrap().unwrap(), 503).await;
}

/// A visit whose script found no counter (evicted, or a flushed Redis) counted nothing: it seeds
/// the counter from the clicks PostgreSQL holds and runs the script again. While it waits on
/// Redis for the seed it holds no database connection (a Redis that hangs would drain the pool),
/// and that wait is bounded by the request's deadline again: a 503 with nothing counted.
#[tokio::test]
async fn a_visit_seeding_its_counter_holds_no_connection_and_keeps_its_deadline() {
    let (redis, relay, app, id, code) = limited_link_behind_a_relay(|c| {
        c.redis.timeout_ms = 20_000;
        // Another request's wait for the one connection gives up well inside the visit's
        // deadline, so the two outcomes cannot be confused.
        crate::helpers::request_pool(c, 1, 300);
        crate::helpers::request_deadline(c, 5_000);
    })
    .await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    wait_visits(&app, id, 1).await;
    let counter = app.state.keys.visits(&code);
    let mut direct = redis::Client::open(redis.url().as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(&counter)
        .query_async(&mut direct)
        .await
        .unwrap();
    let seed = command_on("SET", &counter);
    relay.hold_at(seed.as_bytes());
    let visit = app.spawn_get(&format!("/{code}"));
    relay.wait_held(seed.as_bytes()).await;
    assert_eq!(
        app.get(&format!("/urls/{id}")).await.status(),
        200,
        "a request got the connection while the visit waited for its seed"
    );
    let answered = tokio::time::timeout(Duration::from_secs(20), visit).await;
    relay.release();
    let res = answered.expect("the visit waited for its seed past its deadline");
    error_of(res.unwrap().unwrap(), 503).await;
    let link: Value = app.get(&format!("/urls/{id}")).await.json().await.unwrap();
    assert_eq!(link["visits"], 1);
}

/// A limited link's preview (and its public QR code, and its password form) reads the counter
/// from Redis with no database connection held: a Redis that hangs would otherwise hold the
/// pool with public requests, and every other request would wait for a connection.
#[tokio::test]
async fn a_preview_waiting_on_redis_for_the_counter_holds_no_connection() {
    let (_redis, relay, app, id, code) = limited_link_behind_a_relay(|c| {
        c.redis.timeout_ms = 20_000;
        crate::helpers::request_pool(c, 1, 300);
    })
    .await;
    let read = command_on("GET", &app.state.keys.visits(&code));
    relay.hold_at(read.as_bytes());
    let preview = app.spawn_get(&format!("/{code}+"));
    relay.wait_held(read.as_bytes()).await;
    assert_eq!(
        app.get(&format!("/urls/{id}")).await.status(),
        200,
        "a request got the connection while the preview waited on Redis"
    );
    relay.release();
    assert_eq!(preview.await.unwrap().unwrap().status(), 200);
}

/// With Redis down PostgreSQL decides a limited link's visit, and a link that expired (410), or
/// was switched off or deleted (404), since the visit read it is not redirected there, as the
/// script would answer.
#[tokio::test]
async fn a_visit_decided_by_postgres_finds_a_link_switched_off_or_deleted_since() {
    let app = crate::helpers::spawn_app_without_redis(|_| {}).await;
    let user = app.create_user("pgoffrace").await;
    let (id, code) = limited_link(&app, user, json!(5)).await;
    let read = read_before_a_change(id, user);
    let sql = app.sql().await;
    let expire = |at: &'static str| {
        let sql = &sql;
        async move {
            sql.execute(
                &format!("UPDATE urls SET expires_at = {at} WHERE id = $1"),
                &[&id],
            )
            .await
            .unwrap()
        }
    };
    expire("now() - interval '1 minute'").await;
    assert!(matches!(
        visit_as_read(&app, &code, &read).await,
        kurz_api::clicks::LimitedVisit::Changed(kurz_common::keys::Verdict::Gone)
    ));
    expire("NULL").await;
    let res = app
        .put_json(&format!("/urls/{id}"), &json!({"is_active": false}))
        .await;
    assert_eq!(res.status(), 200);
    assert!(matches!(
        visit_as_read(&app, &code, &read).await,
        kurz_api::clicks::LimitedVisit::Changed(kurz_common::keys::Verdict::NotFound)
    ));
    assert_eq!(app.delete(&format!("/urls/{id}")).await.status(), 204);
    assert!(matches!(
        visit_as_read(&app, &code, &read).await,
        kurz_api::clicks::LimitedVisit::Changed(kurz_common::keys::Verdict::NotFound)
    ));
    assert!(app.clicks(id).await.is_empty());
}

/// With Redis down PostgreSQL decides a limited link's visit, and a password set since the
/// visit read the link stops it there too: asked for the password, nothing counted.
#[tokio::test]
async fn a_visit_decided_by_postgres_finds_a_password_set_since_its_read() {
    let app = crate::helpers::spawn_app_without_redis(|_| {}).await;
    let user = app.create_user("pgpwrace").await;
    let (id, code) = limited_link(&app, user, json!(5)).await;
    let read = read_before_a_change(id, user);
    password_set_since_stops_the_visit(&app, &code, &read).await;
    assert!(app.clicks(id).await.is_empty());
}

/// The visit (a GET, with its click) of a limited link that read `read` of it.
async fn visit_as_read(
    app: &TestApp,
    code: &str,
    read: &kurz_common::keys::LinkEntry,
) -> kurz_api::clicks::LimitedVisit {
    let click = kurz_common::clicks::Click {
        id: "0123456789abcdef0123456789abcdef".into(),
        url_id: read.url_id,
        user_id: read.user_id,
        code: code.to_owned(),
        target: read.target.clone(),
        referrer: String::new(),
        user_agent: String::new(),
        ip: String::new(),
        ts_ms: 0,
        visitor: String::new(),
    };
    app.state
        .clicks
        .limited_visit(&app.state.cache, code, read, Some(click), None)
        .await
        .unwrap()
}

/// A password set on the link after the visit read `read`: the visit is asked for it.
async fn password_set_since_stops_the_visit(
    app: &TestApp,
    code: &str,
    read: &kurz_common::keys::LinkEntry,
) {
    let res = app
        .put_json(
            &format!("/urls/{}", read.url_id),
            &json!({"password": "set meanwhile"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let visit = visit_as_read(app, code, read).await;
    assert!(
        matches!(visit, kurz_api::clicks::LimitedVisit::Protected),
        "the visit went on without the password"
    );
}

/// What a visit read of a link `limited_link` made (`max_visits` 5), before a change to it.
fn read_before_a_change(id: i64, user: i64) -> kurz_common::keys::LinkEntry {
    kurz_common::keys::LinkEntry {
        url_id: id,
        user_id: Some(user),
        active: true,
        expires_at: None,
        redirect_type: 302,
        max_visits: Some(5),
        protected: false,
        target: "https://example.com/limited".into(),
    }
}

/// A limited link (`max_visits` 5) of an app on a private Redis behind a relay, with Redis's
/// `timeout_ms` and a one-second request deadline, visited once (cached and seeded: the next
/// visit's first script is its count): the Redis, the relay, the app, the link's id and code.
async fn visited_limited_link_behind_a_relay(
    redis_timeout_ms: u64,
) -> (PrivateRedis, crate::helpers::Relay, TestApp, i64, String) {
    let (redis, relay, app, id, code) = limited_link_behind_a_relay(|c| {
        c.redis.timeout_ms = redis_timeout_ms;
        crate::helpers::request_deadline(c, 1_000);
    })
    .await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    (redis, relay, app, id, code)
}

/// A limited link (`max_visits` 5), not visited, of an app `tweak`ed on a private Redis behind
/// a relay: the Redis, the relay, the app, the link's id and code.
async fn limited_link_behind_a_relay(
    tweak: impl FnOnce(&mut kurz_api::config::ApiConfig),
) -> (PrivateRedis, crate::helpers::Relay, TestApp, i64, String) {
    let redis = PrivateRedis::start(Persistence::None);
    let (relay, app) = crate::helpers::spawn_app_through_relay(redis.port, tweak).await;
    let user = app.create_user("relayed").await;
    let (id, code) = limited_link(&app, user, json!(5)).await;
    (redis, relay, app, id, code)
}

/// The start of a Redis command `name` on `key` as it crosses the wire (RESP), for a relay to
/// hold at.
fn command_on(name: &str, key: &str) -> String {
    format!("${}\r\n{name}\r\n${}\r\n{key}", name.len(), key.len())
}
