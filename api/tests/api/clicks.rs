//! The click pipeline: stream, consumer group, read-your-writes, exactly-once.

use crate::helpers::{spawn_app, spawn_app_with, TestApp};
use kurz_api::clicks::consumer::{Consumer, Drained};
use std::sync::Arc;
use std::time::Duration;

/// A second consumer in the app's group, as another replica (or a crashing one) would be.
fn replica(app: &TestApp, name: &str) -> Consumer {
    let c = &app.state.config.clicks;
    consumer(app, name, c.batch_size, c.claim_idle_ms)
}

/// A consumer in the app's group with its own read size and claim delay.
fn consumer(app: &TestApp, name: &str, batch_size: usize, claim_idle_ms: u64) -> Consumer {
    let s = &app.state;
    Consumer::new(
        s.redis.clone(),
        s.db.clone(),
        s.keys.clone(),
        s.config.clicks.group.clone(),
        name.to_owned(),
        batch_size,
        claim_idle_ms,
        Duration::from_millis(50),
        Arc::new(kurz_api::metrics::Metrics::new()),
    )
}

/// An app whose background consumer effectively never polls, so tests decide who consumes.
async fn idle_consumer_app() -> TestApp {
    spawn_app_with(|c| c.clicks.poll_interval_ms = 3_600_000).await
}

async fn clicks_in_db(app: &TestApp, url_id: i64) -> i64 {
    app.sql()
        .await
        .query_one(
            "SELECT count(*) FROM events WHERE url_id = $1 AND event_type = 'click'",
            &[&url_id],
        )
        .await
        .unwrap()
        .get(0)
}

async fn redirect_n(app: &TestApp, code: &str, n: usize) {
    for _ in 0..n {
        assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    }
}

#[tokio::test]
async fn a_click_is_visible_to_the_next_read_without_waiting() {
    let app = idle_consumer_app().await;
    let user = app.create_user("ryw").await;
    let link = app.create_url(user, "https://example.com/ryw").await;
    let id = link["id"].as_i64().unwrap();
    redirect_n(&app, link["short_code"].as_str().unwrap(), 1).await;
    assert_eq!(
        clicks_in_db(&app, id).await,
        0,
        "still in the stream: the consumer is idle"
    );
    assert_eq!(
        app.clicks(id).await.len(),
        1,
        "GET /events drained it first"
    );
    redirect_n(&app, link["short_code"].as_str().unwrap(), 1).await;
    let stats: serde_json::Value = app
        .get(&format!("/urls/{id}/stats"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats["clicks"], 2);
}

/// The stats read drains the stream through the request pool: with one connection left for
/// requests, a read that held it while waiting starved the drain and answered without the
/// click (`X-Kurz-Clicks-Pending`) every time.
#[tokio::test]
async fn a_stats_read_drains_on_the_pools_last_connection() {
    let app = spawn_app_with(|c| {
        c.clicks.poll_interval_ms = 3_600_000;
        crate::helpers::request_pool(c, 1, 300);
    })
    .await;
    let user = app.create_user("lastconn").await;
    let link = app.create_url(user, "https://example.com/lastconn").await;
    let id = link["id"].as_i64().unwrap();
    redirect_n(&app, link["short_code"].as_str().unwrap(), 1).await;
    let res = app.get(&format!("/urls/{id}/stats")).await;
    assert!(
        res.headers().get("x-kurz-clicks-pending").is_none(),
        "{:?}",
        res.headers()
    );
    let stats: serde_json::Value = res.json().await.unwrap();
    assert_eq!(stats["clicks"], 1);
}

#[tokio::test]
async fn the_background_consumer_drains_the_stream() {
    let app = spawn_app_with(|c| c.clicks.poll_interval_ms = 20).await;
    let user = app.create_user("bg").await;
    let link = app.create_url(user, "https://example.com/bg").await;
    let id = link["id"].as_i64().unwrap();
    redirect_n(&app, link["short_code"].as_str().unwrap(), 5).await;
    for _ in 0..100 {
        if clicks_in_db(&app, id).await == 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(clicks_in_db(&app, id).await, 5);
    // Acknowledged (and deleted) just after the commit that stored them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while app.state.consumer.backlog().await.unwrap() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "acknowledged entries are deleted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn no_click_is_lost_or_doubled_when_consumers_die_mid_batch() {
    let app = idle_consumer_app().await;
    let (_, id, code) = app.create_link("crash", "https://example.com/crash").await;

    // Replica A commits a batch of 10 and dies before XACK.
    redirect_n(&app, &code, 10).await;
    let a = replica(&app, "replica-a");
    assert_eq!(a.read_and_commit_without_ack().await.unwrap(), 10);
    assert_eq!(clicks_in_db(&app, id).await, 10);
    drop(a);

    // Replica B reads the next 5 and dies before committing.
    redirect_n(&app, &code, 5).await;
    let b = replica(&app, "replica-b");
    assert_eq!(b.read_without_commit().await.unwrap(), 5);
    drop(b);

    // Both batches sit pending in dead consumers; the next read claims them: 15, not 25 or 10.
    assert_eq!(app.clicks(id).await.len(), 15);
    assert_eq!(clicks_in_db(&app, id).await, 15);
    assert_eq!(app.state.consumer.backlog().await.unwrap(), 0);

    // A restarted replica claiming idle entries finds nothing left to double.
    let c = replica(&app, "replica-c");
    assert_eq!(c.drain(Duration::from_secs(30)).await, Drained::Complete);
    assert_eq!(clicks_in_db(&app, id).await, 15);
}

/// Entries acknowledged whose `XDEL` was lost (a failover or a cut AOF keeps the `XACK` only)
/// are neither new nor pending: a read's drain deletes them instead of waiting its budget on
/// them at every read, and stores nothing twice.
#[tokio::test]
async fn entries_acknowledged_but_left_in_the_streams_do_not_hold_reads() {
    let app = spawn_app_with(|c| {
        c.clicks.poll_interval_ms = 3_600_000;
        c.clicks.read_drain_budget_ms = 5_000;
    })
    .await;
    let (_, id, code) = app
        .create_link("orphan", "https://example.com/orphan")
        .await;
    redirect_n(&app, &code, 6).await;
    let a = replica(&app, "replica-a");
    assert_eq!(a.read_and_commit_without_ack().await.unwrap(), 6);
    let group = &app.state.config.clicks.group;
    let mut acked = 0;
    for key in app.state.keys.all_clicks() {
        let listed: Vec<(String, redis::Value)> = app
            .state
            .redis
            .query(redis::cmd("XRANGE").arg(&key).arg("-").arg("+"))
            .await
            .unwrap();
        let ids: Vec<&str> = listed.iter().map(|(id, _)| id.as_str()).collect();
        if !ids.is_empty() {
            let n: i64 = app
                .state
                .redis
                .query(redis::cmd("XACK").arg(&key).arg(group).arg(&ids))
                .await
                .unwrap();
            acked += n;
        }
    }
    assert!(acked > 0);
    let res = app.get(&format!("/urls/{id}/stats")).await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers().get("x-kurz-clicks-pending").is_none(),
        "the read waited on acknowledged entries: {:?}",
        res.headers().get("x-kurz-clicks-pending")
    );
    assert_eq!(res.json::<serde_json::Value>().await.unwrap()["clicks"], 6);
    assert_eq!(app.state.consumer.backlog().await.unwrap(), 0);
    assert_eq!(clicks_in_db(&app, id).await, 6);
}

/// A link's stats are read in one snapshot: with clicks stored while they are read, the total
/// and the visitors are still the sums of the days' (docs/API.md). So are a page of events and
/// its count.
#[tokio::test]
async fn stats_read_while_clicks_are_stored_add_up() {
    let app = spawn_app().await;
    let (user, id, _) = app
        .create_link("snapshot", "https://example.com/snapshot")
        .await;
    let writer = {
        let db = app.sql().await;
        tokio::spawn(async move {
            for n in 0..900 {
                db.execute(
                    "INSERT INTO events (url_id, user_id, event_type, click_id, visitor) \
                     VALUES ($1, $2, 'click', $3, $3)",
                    &[&id, &user, &format!("snap-{n}")],
                )
                .await
                .unwrap();
            }
        })
    };
    let mut reads = 0;
    while !writer.is_finished() || reads == 0 {
        let stats = app.stats(id).await;
        let days = stats["daily"].as_array().unwrap();
        let sum = |field: &str| days.iter().map(|d| d[field].as_i64().unwrap()).sum::<i64>();
        assert_eq!(stats["clicks"].as_i64().unwrap(), sum("clicks"), "{stats}");
        assert_eq!(
            stats["visitors"].as_i64().unwrap(),
            sum("visitors"),
            "{stats}"
        );
        // And a page of events with its count: `X-Total-Count` counts the rows it holds.
        let res = app
            .get(&format!(
                "/events?url_id={id}&event_type=click&per_page=1000"
            ))
            .await;
        let total: usize = res.headers()["x-total-count"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        let rows = res.json::<Vec<serde_json::Value>>().await.unwrap().len();
        assert_eq!(rows, total.min(1000));
        reads += 1;
    }
    writer.await.unwrap();
    assert_eq!(app.stats(id).await["clicks"], 900);
}

/// docs/API.md: each breakdown lists its 10 largest values, most clicks first.
#[tokio::test]
async fn a_breakdown_lists_its_ten_largest_values() {
    let app = spawn_app().await;
    let (_, id, code) = app.create_link("top", "https://example.com/top").await;
    // Twelve sites, the n-th sending n visits.
    for n in 1..=12 {
        for _ in 0..n {
            let res = app
                .client
                .get(app.url(&format!("/{code}")))
                .header("referer", format!("https://site{n}.example/page"))
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 302);
        }
    }
    let stats = app.stats(id).await;
    assert_eq!(stats["clicks"], 78);
    for (list, name) in [("top_referrers", "referrer"), ("referrer_hosts", "host")] {
        let shown: Vec<(String, i64)> = stats[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r[name].as_str().unwrap().to_owned(),
                    r["clicks"].as_i64().unwrap(),
                )
            })
            .collect();
        let counts: Vec<i64> = shown.iter().map(|(_, c)| *c).collect();
        assert_eq!(
            counts,
            (3..=12).rev().collect::<Vec<i64>>(),
            "{list}: {shown:?}"
        );
        assert!(shown[0].0.contains("site12.example"), "{list}: {shown:?}");
    }
}

/// Only entries known not to be pending are taken for acknowledged ones: a full page of
/// pending ids (here crowded by entries deleted while pending) leaves the later ones unknown,
/// and those stay, though the page does not list them.
#[tokio::test]
async fn entries_beyond_a_full_page_of_pending_ids_are_not_taken_for_acknowledged() {
    let app = idle_consumer_app().await;
    let s = &app.state;
    // Streams of their own: the app's consumer would drop these entries, which are no clicks.
    let prefix = format!("{}probe", app.prefix);
    let keys = kurz_common::keys::KeySchema::new(&prefix, 1);
    let group = "probe-group";
    let stream = kurz_api::clicks::stream::ClickStream::new(
        s.redis.clone(),
        keys.clone(),
        group.into(),
        "probe".into(),
    );
    let key = keys.clicks(0);
    let q = |cmd: &mut redis::Cmd| {
        let cmd = cmd.clone();
        async move { s.redis.query::<redis::Value>(&cmd).await.unwrap() }
    };
    q(redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg(group)
        .arg("$")
        .arg("MKSTREAM"))
    .await;
    let mut ids = Vec::new();
    for _ in 0..300 {
        let id: String = s
            .redis
            .query(redis::cmd("XADD").arg(&key).arg("*").arg("f").arg("v"))
            .await
            .unwrap();
        ids.push(id);
    }
    // All delivered to a consumer that is still at it; the 2nd to the 200th deleted while
    // pending.
    q(redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("busy")
        .arg("COUNT")
        .arg(300)
        .arg("STREAMS")
        .arg(&key)
        .arg(">"))
    .await;
    q(redis::cmd("XDEL").arg(&key).arg(&ids[1..200])).await;
    let deleted = stream.delete_acknowledged(0, &ids[299]).await.unwrap();
    let left: i64 = s.redis.query(redis::cmd("XLEN").arg(&key)).await.unwrap();
    q(redis::cmd("DEL").arg(&key)).await;
    assert_eq!(deleted, 0);
    assert_eq!(left, 101, "pending entries were deleted");
}

#[tokio::test]
async fn graceful_shutdown_flushes_pending_clicks() {
    let mut app = idle_consumer_app().await;
    let user = app.create_user("flush").await;
    let link = app.create_url(user, "https://example.com/flush").await;
    let id = link["id"].as_i64().unwrap();
    redirect_n(&app, link["short_code"].as_str().unwrap(), 7).await;
    assert_eq!(clicks_in_db(&app, id).await, 0);
    app.stop().await;
    assert_eq!(clicks_in_db(&app, id).await, 7);
}

#[tokio::test]
async fn sample_rate_zero_records_no_clicks_but_still_redirects() {
    let app = spawn_app_with(|c| c.clicks.sample_rate = 0.0).await;
    let user = app.create_user("sample").await;
    let link = app.create_url(user, "https://example.com/s").await;
    redirect_n(&app, link["short_code"].as_str().unwrap(), 3).await;
    assert!(app.clicks(link["id"].as_i64().unwrap()).await.is_empty());
    let created: Vec<serde_json::Value> = app
        .get(&format!("/events?url_id={}&event_type=created", link["id"]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(created.len(), 1, "only clicks are sampled");
}

#[tokio::test]
async fn click_details_keep_only_a_truncated_address() {
    let app = spawn_app().await;
    let user = app.create_user("ip").await;
    let link = app.create_url(user, "https://example.com/ip").await;
    let res = app
        .client
        .get(app.url(&format!("/{}", link["short_code"].as_str().unwrap())))
        .header("x-real-ip", "203.0.113.77")
        .header("user-agent", "kurz-test/1")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    let clicks = app.clicks(link["id"].as_i64().unwrap()).await;
    assert_eq!(clicks[0]["details"]["ip"], "203.0.113.0");
    assert_eq!(clicks[0]["details"]["user_agent"], "kurz-test/1");
}

/// Stats come from rollups the database keeps as clicks are stored (migration V9). A batch
/// stored twice (a consumer that died before `XACK` replays it), a click stored directly and
/// then again from the stream, and a click twice in one batch each count once, and the rollups
/// agree with the raw events.
#[tokio::test]
async fn stats_rollups_count_each_stored_click_once_whatever_path_stored_it() {
    use kurz_api::db::events::{insert_stream_clicks, ClickColumns, StreamClick};
    let app = idle_consumer_app().await;
    let user = app.create_user("rollup").await;
    let link = app.create_url(user, "https://example.com/rollup").await;
    let id = link["id"].as_i64().unwrap();
    let today = chrono::Utc::now();
    let yesterday = today - chrono::Duration::days(1);
    let click = |cid: &str, referrer: &str, ts| StreamClick {
        click_id: cid.into(),
        url_id: id,
        ts,
        fields: ClickColumns {
            referrer: referrer.into(),
            browser: "unknown".into(),
            os: "unknown".into(),
            device: "other".into(),
            ..Default::default()
        },
    };
    let batch = [
        click("r-a", "https://r.example", yesterday),
        click("r-b", "", today),
        click("r-c", "https://r.example", today),
        click("r-d", "https://s.example", today),
    ];
    let db = app.state.db.get().await.unwrap();
    assert_eq!(
        insert_stream_clicks(&db, &batch.iter().collect::<Vec<_>>())
            .await
            .unwrap(),
        4
    );
    assert_eq!(
        insert_stream_clicks(&db, &batch.iter().collect::<Vec<_>>())
            .await
            .unwrap(),
        0,
        "replay"
    );
    // A click the API stored directly (same id as one already stored) and one new.
    let direct = [
        click("r-d", "https://s.example", today),
        click("r-e", "", today),
    ];
    assert_eq!(
        insert_stream_clicks(&db, &direct.iter().collect::<Vec<_>>())
            .await
            .unwrap(),
        1
    );
    // A click appended twice in one batch (the edge's append acknowledged too late, so the
    // API recorded it as well) is stored once.
    let doubled = [click("r-f", "", today), click("r-f", "", today)];
    assert_eq!(
        insert_stream_clicks(&db, &doubled.iter().collect::<Vec<_>>())
            .await
            .unwrap(),
        1
    );

    let stats: serde_json::Value = app
        .get(&format!("/urls/{id}/stats"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats["clicks"], 6);
    assert_eq!(clicks_in_db(&app, id).await, 6);
    let day = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d").to_string();
    assert_eq!(
        stats["daily"],
        serde_json::json!([
            {"date": day(yesterday), "clicks": 1, "bots": 0, "visitors": 0},
            {"date": day(today), "clicks": 5, "bots": 0, "visitors": 0},
        ])
    );
    assert_eq!(
        stats["top_referrers"],
        serde_json::json!([
            {"referrer": "https://r.example", "clicks": 2},
            {"referrer": "https://s.example", "clicks": 1},
        ])
    );
    assert_eq!(stats["last_click_at"], kurz_common::time::format(today));
}

/// Bots and link-preview fetchers are redirected, marked `is_bot`, and left out of the stats
/// unless `include_bots=true`; the stats break clicks down by referrer host, browser, OS and
/// device class, over a range of days.
#[tokio::test]
async fn bots_are_marked_and_kept_apart_and_stats_break_clicks_down() {
    let app = crate::helpers::spawn_app().await;
    let user = app.create_user("bots").await;
    let link = app.create_url(user, "https://example.com/bots").await;
    let id = link["id"].as_i64().unwrap();
    let code = link["short_code"].as_str().unwrap();
    let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";
    let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
    let visits = [
        (chrome, "https://News.Example.com/a?x=1"),
        (chrome, "https://news.example.com/b"),
        (iphone, ""),
        (
            "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
            "https://news.example.com/b",
        ),
        ("facebookexternalhit/1.1", ""),
    ];
    for (ua, referrer) in visits {
        let mut req = app
            .client
            .get(app.url(&format!("/{code}")))
            .header("user-agent", ua);
        if !referrer.is_empty() {
            req = req.header("referer", referrer);
        }
        assert_eq!(
            req.send().await.unwrap().status(),
            302,
            "bots are redirected too"
        );
    }
    let clicks = app.clicks(id).await;
    assert_eq!(clicks.len(), 5);
    for click in &clicks {
        let d = &click["details"];
        let ua = d["user_agent"].as_str().unwrap();
        let expected = (
            ua != chrome && ua != iphone,
            if ua == chrome {
                "Chrome"
            } else if ua == iphone {
                "Safari"
            } else {
                d["browser"].as_str().unwrap()
            },
        );
        assert_eq!(
            (
                d["is_bot"].as_bool().unwrap(),
                d["browser"].as_str().unwrap()
            ),
            expected,
            "{ua}"
        );
        if ua == iphone {
            assert_eq!(d["device"], "mobile");
        }
    }

    let stats = |query: &str| {
        let path = format!("/urls/{id}/stats{query}");
        let app = &app;
        async move {
            let res = app.get(&path).await;
            assert_eq!(res.status(), 200, "{path}");
            res.json::<serde_json::Value>().await.unwrap()
        }
    };
    let people = stats("").await;
    assert_eq!(people["clicks"], 3);
    assert_eq!(people["bots"], 2);
    assert_eq!(people["include_bots"], false);
    assert_eq!(people["daily"][0]["clicks"], 3);
    assert_eq!(people["daily"][0]["bots"], 2);
    assert_eq!(
        people["referrer_hosts"],
        serde_json::json!([{"host": "news.example.com", "clicks": 2}])
    );
    assert_eq!(
        people["browsers"],
        serde_json::json!([{"name": "Chrome", "clicks": 2}, {"name": "Safari", "clicks": 1}])
    );
    assert_eq!(
        people["devices"],
        serde_json::json!([{"name": "desktop", "clicks": 2}, {"name": "mobile", "clicks": 1}])
    );
    assert_eq!(people["operating_systems"][0]["clicks"], 2);
    let everyone = stats("?include_bots=true").await;
    assert_eq!(everyone["clicks"], 5);
    assert_eq!(
        everyone["devices"][0],
        serde_json::json!({"name": "bot", "clicks": 2})
    );
    assert_eq!(
        everyone["referrer_hosts"],
        serde_json::json!([{"host": "news.example.com", "clicks": 3}])
    );

    // Ranges are UTC days, inclusive.
    let today = chrono::Utc::now().date_naive();
    let day = |d: chrono::NaiveDate| d.format("%Y-%m-%d").to_string();
    let tomorrow = day(today + chrono::Duration::days(1));
    let later = stats(&format!("?from={tomorrow}")).await;
    assert_eq!(
        (later["clicks"].as_i64(), later["bots"].as_i64()),
        (Some(0), Some(0))
    );
    assert_eq!(later["daily"], serde_json::json!([]));
    assert_eq!(later["browsers"], serde_json::json!([]));
    assert_eq!(later["from"], tomorrow.as_str());
    let just_today = stats(&format!("?from={}&to={}", day(today), day(today))).await;
    assert_eq!(just_today["clicks"], 3);
    // `to` alone: everything up to it, `daily` too, however far back; without a range,
    // `daily` still shows the last 90 days only.
    let old = day(today - chrono::Duration::days(200));
    let csv = format!("url_id,event_type,timestamp,details\n{id},click,{old}T12:00:00Z,{{}}\n");
    assert_eq!(
        app.upload("/events/bulk", csv.into_bytes()).await.status(),
        201
    );
    let until_old = stats(&format!("?to={old}")).await;
    assert_eq!(until_old["clicks"], 1);
    let days: Vec<&serde_json::Value> = until_old["daily"].as_array().unwrap().iter().collect();
    assert_eq!(days.len(), 1, "{until_old}");
    assert_eq!(
        (&days[0]["date"], &days[0]["clicks"]),
        (&serde_json::json!(old), &serde_json::json!(1))
    );
    let all_time = stats("").await;
    assert_eq!(all_time["clicks"], 4);
    assert!(all_time["daily"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["date"] != old.as_str()));
    for bad in [
        "?from=yesterday".to_owned(),
        "?to=2030-02-30".to_owned(),
        "?from=-5000-01-01".to_owned(),
        "?to=10000-01-01".to_owned(),
        format!("?from={tomorrow}&to={}", day(today)),
        "?include_bots=maybe".to_owned(),
    ] {
        crate::helpers::error_of(app.get(&format!("/urls/{id}/stats{bad}")).await, 400).await;
    }
    // The spellings docs/API.md gives besides `true`/`false`.
    for (given, read) in [("1", true), ("TRUE", true), ("0", false), ("False", false)] {
        let res = app
            .get(&format!("/urls/{id}/stats?include_bots={given}"))
            .await;
        assert_eq!(res.status(), 200, "{given}");
        assert_eq!(
            res.json::<serde_json::Value>().await.unwrap()["include_bots"],
            read
        );
    }
}

/// Unique visitors per day: the same address and agent count once a day, another agent is
/// another visitor, bots are none; the click keeps only a salted hash, and the day's salt
/// lives in Redis for two days.
#[tokio::test]
async fn unique_visitors_are_counted_from_a_daily_salted_hash() {
    let app = crate::helpers::spawn_app().await;
    let user = app.create_user("uniq").await;
    let link = app.create_url(user, "https://example.com/uniq").await;
    let id = link["id"].as_i64().unwrap();
    let code = link["short_code"].as_str().unwrap();
    for (ua, ip) in [
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
            "198.51.100.7",
        ),
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
            "198.51.100.7",
        ),
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0",
            "198.51.100.8",
        ),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/120.0.0.0 Safari/537.36",
            "198.51.100.7",
        ),
        ("Twitterbot/1.0", "198.51.100.9"),
    ] {
        let res = app
            .client
            .get(app.url(&format!("/{code}")))
            .header("user-agent", ua)
            .header("x-forwarded-for", ip)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 302);
    }
    let clicks = app.clicks(id).await;
    for click in &clicks {
        let v = click["details"]["visitor"].as_str().unwrap();
        assert!(
            v.len() == 16 && v.bytes().all(|b| b.is_ascii_hexdigit()),
            "{v}"
        );
        assert!(
            !click["details"].to_string().contains("198.51.100.7"),
            "no whole address"
        );
    }
    let stats: serde_json::Value = app
        .get(&format!("/urls/{id}/stats"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats["visitors"], 3,
        "two addresses with one agent, one with another"
    );
    assert_eq!(stats["daily"][0]["visitors"], 3);
    assert_eq!(stats["clicks"], 4);

    let day = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let key = app.state.keys.visitor_salt(&day);
    let client = redis::Client::open(crate::helpers::redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 2 * 24 * 3600, "the salt expires: {ttl}");

    // Past days' visitor rows go; their counts stay.
    let sql = app.sql().await;
    sql.execute(
        "INSERT INTO click_day_visitors VALUES ($1, (now() AT TIME ZONE 'UTC')::date - 3, 'old')",
        &[&id],
    )
    .await
    .unwrap();
    assert_eq!(
        kurz_api::retention::prune_visitors(&app.state.db, &tokio::sync::watch::channel(false).1)
            .await
            .unwrap(),
        Some(1)
    );
    let kept: i64 = sql
        .query_one(
            "SELECT count(*) FROM click_day_visitors WHERE url_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 3, "today's rows stay");
}

async fn clicked_ip(store_ip: kurz_common::clicks::StoreIp) -> Option<String> {
    let app = crate::helpers::spawn_app_with(|c| c.privacy.store_ip = store_ip).await;
    let user = app.create_user("ip").await;
    let link = app.create_url(user, "https://example.com/ip").await;
    let res = app
        .get(&format!("/{}", link["short_code"].as_str().unwrap()))
        .await;
    assert_eq!(res.status(), 302);
    let clicks = app.clicks(link["id"].as_i64().unwrap()).await;
    assert_eq!(clicks.len(), 1);
    clicks[0]["details"]["ip"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn store_ip_keeps_the_whole_address_the_network_or_nothing() {
    use kurz_common::clicks::StoreIp;
    assert_eq!(
        clicked_ip(StoreIp::Full).await.as_deref(),
        Some("127.0.0.1")
    );
    assert_eq!(
        clicked_ip(StoreIp::Anonymized).await.as_deref(),
        Some("127.0.0.0")
    );
    assert_eq!(clicked_ip(StoreIp::None).await, None, "no ip key at all");
}

/// A click as the edge packs it, for link `url_id` of `code`.
fn edge_click(id: &str, url_id: i64, code: &str) -> kurz_common::clicks::Click {
    kurz_common::clicks::Click {
        id: id.into(),
        url_id,
        user_id: None,
        code: code.into(),
        target: "https://example.com/packed".into(),
        referrer: "https://ref.example/".into(),
        user_agent: "edge-test/1".into(),
        ip: "192.0.2.0".into(),
        ts_ms: 1_764_900_000_000,
        visitor: String::new(),
    }
}

/// Appends one packed entry holding `clicks` (and `tail` after them) to `code`'s stream.
async fn append_packed(
    app: &TestApp,
    code: &str,
    clicks: &[kurz_common::clicks::Click],
    tail: &[u8],
) {
    let mut packed = Vec::new();
    for c in clicks {
        c.pack_into(&mut packed);
    }
    packed.extend_from_slice(tail);
    let stream = app.state.keys.clicks_for(code);
    let cmd = kurz_common::clicks::xadd_packed(&stream, &packed);
    app.state.redis.query::<String>(&cmd).await.unwrap();
}

/// The edge appends a batch of clicks as one packed entry: each click becomes its own event,
/// once, whether the entry is read by a consumer that dies before acknowledging it and then
/// claimed, or arrives again holding clicks already stored; a damaged tail costs only itself.
#[tokio::test]
async fn a_packed_entry_stores_each_of_its_clicks_once() {
    let app = idle_consumer_app().await;
    let (_, id, code) = app
        .create_link("packed", "https://example.com/packed")
        .await;
    let clicks: Vec<_> = (0..5)
        .map(|i| edge_click(&format!("packed-{i}"), id, &code))
        .collect();
    append_packed(&app, &code, &clicks[..3], b"").await;
    let a = replica(&app, "replica-a");
    assert_eq!(a.read_and_commit_without_ack().await.unwrap(), 3);
    drop(a);
    // The same clicks again (an edge retrying), two new ones, and a frame cut short.
    append_packed(&app, &code, &clicks[1..], b"17:cut-").await;
    assert_eq!(
        app.clicks(id).await.len(),
        5,
        "the read drained both entries"
    );
    let stored: Vec<String> = app
        .sql()
        .await
        .query(
            "SELECT click_id FROM events WHERE url_id = $1 AND event_type = 'click' ORDER BY click_id",
            &[&id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let meant: Vec<String> = clicks.iter().map(|c| c.id.clone()).collect();
    assert_eq!(stored, meant, "each click once");
    let dropped = app.metrics_text().await.lines().find_map(|l| {
        l.strip_prefix("kurz_api_clicks_total{path=\"dropped\"} ")?
            .parse()
            .ok()
    });
    assert_eq!(
        dropped,
        Some(1.0),
        "the cut frame is counted, not only logged"
    );
    assert_eq!(
        app.state.consumer.backlog().await.unwrap(),
        0,
        "all acknowledged"
    );
}

/// A read sized from small entries can bring big ones (an edge's packed entry holds up to
/// `clicks.batch_max` clicks): it is stored in statements of at most `clicks.batch_size` clicks,
/// never one statement that could outlast the statement timeout at every retry.
#[tokio::test]
async fn a_read_past_the_batch_size_is_stored_in_statements_of_that_size() {
    let app = idle_consumer_app().await;
    let (_, id, code) = app.create_link("chunked", "https://example.com/c").await;
    let db = app.sql().await;
    db.batch_execute(
        "CREATE TABLE insert_sizes (n int NOT NULL);
         CREATE FUNCTION note_insert_size() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO insert_sizes SELECT count(*) FROM new_rows; RETURN NULL; END $$;
         CREATE TRIGGER note_insert_size AFTER INSERT ON events
           REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION note_insert_size();",
    )
    .await
    .unwrap();
    let clicks: Vec<_> = (0..100)
        .map(|i| edge_click(&format!("chunked-{i:03}"), id, &code))
        .collect();
    append_packed(&app, &code, &clicks, b"").await;
    // A read of about 16 clicks, which brings the one entry whole: 100 clicks.
    let c = consumer(&app, "chunking", 16, app.state.config.clicks.claim_idle_ms);
    assert_eq!(c.read_and_commit_without_ack().await.unwrap(), 100);
    let sizes: Vec<i32> = db
        .query("SELECT n FROM insert_sizes", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(sizes.iter().sum::<i32>(), 100, "{sizes:?}");
    assert!(sizes.iter().all(|&n| n <= 16), "{sizes:?}");
    assert_eq!(clicks_in_db(&app, id).await, 100);
}

/// The background consumer pauses (`clicks.linger_ms`) only once it has caught up: a backlog
/// is stored read after read without pausing, and while it pauses a read of events still sees
/// every click, as it stores what is waiting itself.
#[tokio::test]
async fn the_consumer_lingers_only_when_caught_up_and_reads_never_wait_for_it() {
    let app = idle_consumer_app().await;
    let (_, id, code) = app
        .create_link("linger", "https://example.com/linger")
        .await;
    redirect_n(&app, &code, 30).await;
    // One entry per partition per read: the backlog takes thirty reads.
    let partitions = usize::from(app.state.keys.partitions());
    let claim_idle_ms = app.state.config.clicks.claim_idle_ms;
    let consumer = Arc::new(
        consumer(&app, "lingering", partitions, claim_idle_ms)
            // Longer than any test: once it lingers, it stores nothing more by itself.
            .with_linger(Duration::from_secs(3600)),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(consumer.clone().run(stopped));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while clicks_in_db(&app, id).await < 30 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backlog was not stored without pausing: {} of 30",
            clicks_in_db(&app, id).await
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    redirect_n(&app, &code, 5).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(clicks_in_db(&app, id).await, 30, "caught up: it lingers");
    assert_eq!(app.clicks(id).await.len(), 35, "a read stores what waits");
    stop.send(true).unwrap();
    running.await.unwrap();
}

/// Entries `consumer` holds pending, over every partition (`XPENDING` summary).
async fn pending_in(app: &TestApp, consumer: &str) -> i64 {
    let mut total = 0;
    for key in app.state.keys.all_clicks() {
        let mut cmd = redis::cmd("XPENDING");
        cmd.arg(&key).arg(&app.state.config.clicks.group);
        let reply: redis::Value = app.state.redis.query(&cmd).await.unwrap();
        let redis::Value::Array(summary) = reply else {
            continue;
        };
        let Some(redis::Value::Array(consumers)) = summary.get(3) else {
            continue;
        };
        for c in consumers {
            let (name, n): (String, i64) = redis::from_redis_value(c.clone()).unwrap();
            if name == consumer {
                total += n;
            }
        }
    }
    total
}

/// A consumer that died holding entries has them taken over by the background consumer while
/// redirects keep arriving: with the consumer lingering, every step finds some new click, so
/// claims cannot wait for a step that finds none.
#[tokio::test]
async fn a_dead_consumers_clicks_are_taken_over_under_steady_traffic() {
    let app = idle_consumer_app().await;
    let (_, id, code) = app
        .create_link("takeover", "https://example.com/takeover")
        .await;
    redirect_n(&app, &code, 5).await;
    assert_eq!(
        replica(&app, "dead").read_without_commit().await.unwrap(),
        5
    );
    assert_eq!(pending_in(&app, "dead").await, 5);
    let batch_size = app.state.config.clicks.batch_size;
    let consumer = Arc::new(
        consumer(&app, "survivor", batch_size, 300).with_linger(Duration::from_millis(20)),
    );
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(consumer.clone().run(stopped));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut sent = 5;
    while pending_in(&app, "dead").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead consumer's clicks were never taken over"
        );
        redirect_n(&app, &code, 1).await;
        sent += 1;
    }
    stop.send(true).unwrap();
    running.await.unwrap();
    assert_eq!(clicks_in_db(&app, id).await, sent, "each click once");
}

/// A dead consumer's clicks are taken over while a backlog lasts: a partition that gives a
/// full read at every step (one hot link) must not hold them until it clears.
#[tokio::test]
async fn a_dead_consumers_clicks_are_taken_over_under_a_backlog() {
    let app = idle_consumer_app().await;
    let (_, id, code) = app
        .create_link("backlog", "https://example.com/backlog")
        .await;
    redirect_n(&app, &code, 5).await;
    assert_eq!(
        replica(&app, "dead").read_without_commit().await.unwrap(),
        5
    );
    // A backlog on the link's partition that a consumer reading one entry a step takes
    // thousands of steps to clear.
    const BACKLOG: i64 = 5_000;
    let stream = app.state.keys.clicks(app.state.keys.partition(&code));
    let mut pipe = redis::pipe();
    for n in 0..BACKLOG {
        let click = kurz_common::clicks::Click {
            id: kurz_common::clicks::new_id(),
            url_id: id,
            user_id: None,
            code: code.clone(),
            target: "https://example.com/backlog".into(),
            referrer: String::new(),
            user_agent: "backlog".into(),
            ip: String::new(),
            ts_ms: 1_700_000_000_000 + n,
            visitor: String::new(),
        };
        pipe.add_command(click.xadd(&stream)).ignore();
    }
    app.state.redis.query::<()>(&pipe).await.unwrap();

    let consumer = Arc::new(consumer(&app, "survivor", 1, 300));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(consumer.clone().run(stopped));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while pending_in(&app, "dead").await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the dead consumer's clicks were never taken over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stored = clicks_in_db(&app, id).await;
    stop.send(true).unwrap();
    running.await.unwrap();
    assert!(
        stored < BACKLOG,
        "taken over only once the backlog had cleared ({stored} stored)"
    );
}

/// The sink stores a click's fields in typed columns (migration V21), and the API shows them as
/// the same `details` object as before: every key, no extra one. A click event posted with its
/// own `details` keeps them as given, and both feed the rollups (the trigger reads a column and
/// falls back to `details`).
#[tokio::test]
async fn a_stored_click_reads_back_as_the_contracts_details_and_posted_clicks_still_count() {
    let app = spawn_app().await;
    let (user, id, code) = app.create_link("typed", "https://example.com/typed").await;
    let firefox = "Mozilla/5.0 (X11; Linux x86_64; rv:120.0) Gecko/20100101 Firefox/120.0";
    let res = app
        .client
        .get(app.url(&format!("/{code}")))
        .header("user-agent", firefox)
        .header("referer", "https://news.example/a")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 302);
    let posted = app
        .post_json(
            "/events",
            &serde_json::json!({"url_id": id, "user_id": user, "event_type": "click",
                                "details": {"referrer": "https://posted.example/", "note": "kept"}}),
        )
        .await;
    assert_eq!(posted.status(), 201);

    let clicks = app.clicks(id).await;
    assert_eq!(clicks.len(), 2, "{clicks:?}");
    let stored = clicks
        .iter()
        .find(|c| c["details"]["user_agent"] == firefox)
        .expect("the redirect's click")["details"]
        .clone();
    let mut keys: Vec<&str> = stored
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    let mut expected = vec![
        "browser",
        "device",
        "ip",
        "is_bot",
        "original_url",
        "os",
        "referrer",
        "short_code",
        "user_agent",
    ];
    // A visitor id is kept when the day's salt is there; it is never empty.
    if let Some(v) = stored.get("visitor") {
        assert!(!v.as_str().unwrap().is_empty(), "{stored}");
        expected.push("visitor");
        expected.sort_unstable();
    }
    assert_eq!(keys, expected, "{stored}");
    assert_eq!(stored["short_code"], code.as_str());
    assert_eq!(stored["original_url"], "https://example.com/typed");
    assert_eq!(stored["referrer"], "https://news.example/a");
    assert_eq!(stored["is_bot"], false);
    assert_eq!(stored["browser"], "Firefox");
    assert_eq!(stored["os"], "Linux");
    assert_eq!(stored["device"], "desktop");
    assert_eq!(stored["ip"], "127.0.0.0");
    let other = clicks
        .iter()
        .find(|c| c["details"]["note"] == "kept")
        .expect("the posted click");
    assert_eq!(
        other["details"],
        serde_json::json!({"referrer": "https://posted.example/", "note": "kept"})
    );

    let stats: serde_json::Value = app
        .get(&format!("/urls/{id}/stats"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats["clicks"], 2, "{stats}");
    let mut referrers: Vec<&str> = stats["top_referrers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["referrer"].as_str().unwrap())
        .collect();
    referrers.sort_unstable();
    assert_eq!(
        referrers,
        ["https://news.example/a", "https://posted.example/"],
        "{stats}"
    );
    // The posted click says no browser: the trigger's default for a missing one.
    let mut browsers = stats["browsers"].as_array().unwrap().clone();
    browsers.sort_by_key(|b| b["name"].as_str().unwrap().to_owned());
    assert_eq!(
        browsers,
        [
            serde_json::json!({"clicks": 1, "name": "Firefox"}),
            serde_json::json!({"clicks": 1, "name": "unknown"})
        ],
        "{stats}"
    );
}

/// A consumer whose shutdown sender is dropped without a signal (its server aborted) stops,
/// as the other background tasks do, instead of looping on Redis with no pause: that loop
/// re-created the streams of tests whose keys were already cleaned up.
#[tokio::test]
async fn a_consumer_stops_when_its_shutdown_sender_is_gone() {
    let app = idle_consumer_app().await;
    let c = Arc::new(consumer(&app, "orphaned", 100, 30_000));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(c.run(rx));
    drop(tx);
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the consumer returns once nothing can stop it any more")
        .unwrap();
}

/// Without a range, `daily` is the last 90 UTC days, today the last of them: a click 89 days
/// ago is in it, one 90 days ago is not (both are in the totals).
#[tokio::test]
async fn daily_without_a_range_is_the_last_ninety_days() {
    let app = spawn_app().await;
    let user = app.create_user("ninety").await;
    let link = app.create_url(user, "https://example.com/ninety").await;
    let id = link["id"].as_i64().unwrap();
    // The database's day, which the stats read takes "today" from.
    let today: chrono::NaiveDate = app
        .sql()
        .await
        .query_one("SELECT (now() AT TIME ZONE 'UTC')::date", &[])
        .await
        .unwrap()
        .get(0);
    let (in_range, out) = (today - chrono::Days::new(89), today - chrono::Days::new(90));
    let csv = format!(
        "url_id,user_id,event_type,timestamp,details\n\
         {id},{user},click,{in_range}T12:00:00,{{}}\n{id},{user},click,{out}T12:00:00,{{}}\n"
    );
    assert_eq!(
        app.upload("/events/bulk", csv.into_bytes()).await.status(),
        201
    );
    let stats = app.stats(id).await;
    assert_eq!(stats["clicks"], 2);
    let days: Vec<&str> = stats["daily"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["date"].as_str().unwrap())
        .collect();
    assert_eq!(days, [in_range.to_string()]);
}

/// A `redis.partitions` lowered while clicks wait in the streams above the new count: nothing
/// would read those again, so the API refuses to start, naming the key and a stream, rather
/// than leave the clicks unstored for good.
#[tokio::test]
async fn a_partition_count_lowered_below_waiting_clicks_refuses_to_start() {
    let app = spawn_app().await;
    let config = (*app.state.config).clone();
    let above = kurz_common::keys::KeySchema::new(&app.prefix, 8).clicks(6);
    let mut redis = redis::Client::open(config.redis.url.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let _: String = redis::cmd("XADD")
        .arg(&above)
        .arg("*")
        .arg("c")
        .arg("x")
        .query_async(&mut redis)
        .await
        .unwrap();
    let refused = kurz_api::startup::Application::build(config).await;
    let _: i64 = redis::cmd("DEL")
        .arg(&above)
        .query_async(&mut redis)
        .await
        .unwrap();
    let Err(e) = refused else {
        panic!("the API started with clicks in {above} unread")
    };
    assert!(
        e.contains("`redis.partitions` is 4") && e.contains(&above),
        "{e}"
    );
}
