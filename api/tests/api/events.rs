use crate::helpers::{error_of, spawn_app, spawn_app_with};
use serde_json::{json, Value};

#[tokio::test]
async fn create_event_and_list_with_filters() {
    let app = spawn_app().await;
    let user = app.create_user("ev").await;
    let link = app.create_url(user, "https://example.com/ev").await;
    let url_id = link["id"].as_i64().unwrap();
    let res = app
        .post_json("/events", &json!({"url_id": url_id, "user_id": user, "event_type": "click", "details": {"referrer": "x"}}))
        .await;
    assert_eq!(res.status(), 201);
    let ev: Value = res.json().await.unwrap();
    for key in [
        "id",
        "url_id",
        "user_id",
        "event_type",
        "timestamp",
        "details",
    ] {
        assert!(ev.get(key).is_some(), "{key}");
    }
    assert_eq!(ev["details"], json!({"referrer": "x"}));
    let created: Vec<Value> = app
        .get(&format!("/events?url_id={url_id}&event_type=created"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["details"]["short_code"], link["short_code"]);
    let mine: Vec<Value> = app
        .get(&format!("/events?user_id={user}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(mine.len(), 2);
    assert!(
        mine[0]["id"].as_i64() < mine[1]["id"].as_i64(),
        "newest last"
    );
    let res = app.get("/events?per_page=1&page=2").await;
    assert_eq!(res.headers()["x-total-count"], "2");
}

#[tokio::test]
async fn event_errors_are_explicit() {
    let app = spawn_app().await;
    let user = app.create_user("ee").await;
    let url_id = app.create_url(user, "https://example.com/ee").await["id"]
        .as_i64()
        .unwrap();
    let res = app
        .post_json("/events", &json!({"url_id": 99999, "event_type": "click"}))
        .await;
    error_of(res, 404).await;
    let res = app
        .post_json(
            "/events",
            &json!({"url_id": url_id, "user_id": 99999, "event_type": "click"}),
        )
        .await;
    error_of(res, 404).await;
    for details in [json!("text"), json!([1]), json!(3)] {
        let res = app
            .post_json(
                "/events",
                &json!({"url_id": url_id, "event_type": "click", "details": details}),
            )
            .await;
        assert!(error_of(res, 400).await["details"]["details"].is_string());
    }
    let res = app
        .post_json(
            "/events",
            &json!({"url_id": url_id, "event_type": "exploded"}),
        )
        .await;
    assert!(error_of(res, 400).await["details"]["event_type"].is_string());
    let res = app
        .post_json("/events", &json!({"event_type": "click"}))
        .await;
    assert!(error_of(res, 400).await["details"]["url_id"].is_string());
    error_of(app.get("/events?event_type=exploded").await, 400).await;
    error_of(app.get("/events?url_id=x").await, 400).await;
}

/// A listing reads up to `limits.list_limit` events at once and a JSON value takes more memory
/// than its text, an object most: `details` given to the API are bounded in values and objects
/// (nested ones counted) and in bytes, on `POST /events` and in an events import, and refused
/// by name past any bound.
#[tokio::test]
async fn event_details_are_bounded_in_values_and_bytes() {
    let app = spawn_app().await;
    let user = app.create_user("bounded").await;
    let url_id = app.create_url(user, "https://example.com/bounded").await["id"]
        .as_i64()
        .unwrap();
    let flat = |n: usize| -> Value { (0..n).map(|i| (format!("k{i}"), json!(i))).collect() };
    let post = async |details: Value| {
        app.post_json(
            "/events",
            &json!({"url_id": url_id, "event_type": "updated", "details": details}),
        )
        .await
    };
    assert_eq!(post(flat(64)).await.status(), 201);
    for (details, why) in [
        (flat(65), "values"),
        // 71 values: the array and its 70 numbers.
        (json!({"x": vec![0; 70]}), "values"),
        // 19 values, 9 of them objects.
        (json!({"x": vec![json!({"a": 0}); 9]}), "objects"),
        (json!({"note": "n".repeat(8 * 1024)}), "bytes"),
    ] {
        let err = error_of(post(details).await, 400).await;
        let reason = err["details"]["details"].as_str().unwrap_or_default();
        assert!(reason.contains(why), "{err}");
    }
    assert_eq!(
        post(json!({"x": vec![json!({"a": 0}); 8]})).await.status(),
        201
    );
    // The same in an import, by row and column, and a cell far past the bound is not parsed.
    let cell = |details: &Value| details.to_string().replace('"', "\"\"");
    for (details, reason) in [
        (cell(&flat(65)), "values"),
        (
            format!("{{\"\"a\"\":\"\"{}\"\"}}", "z".repeat(70_000)),
            "65536 bytes",
        ),
    ] {
        let csv = format!(
            "id,url_id,user_id,event_type,timestamp,details\n\
             900002,{url_id},,updated,2025-01-01 00:00:00,\"{details}\"\n"
        );
        let err = error_of(app.upload("/events/bulk", csv.into()).await, 400).await;
        assert_eq!(err["details"]["column"], "details", "{err}");
        assert!(
            err["details"]["reason"].as_str().unwrap().contains(reason),
            "{err}"
        );
    }
}

/// A click's details feed the rollups, which cast `is_bot` and index the referrer and the
/// dimensions: values PostgreSQL cannot take are refused by name, and a referrer longer than a
/// live click keeps is cut as a live click's is, not a 500.
#[tokio::test]
async fn click_details_the_rollups_cannot_take_are_refused_by_name() {
    let app = spawn_app().await;
    let user = app.create_user("cd").await;
    let url_id = app.create_url(user, "https://example.com/cd").await["id"]
        .as_i64()
        .unwrap();
    let long = "r".repeat(4000);
    for (details, field) in [
        (json!({"is_bot": "maybe"}), "details.is_bot"),
        (json!({"is_bot": 2}), "details.is_bot"),
        (json!({"referrer": {"a": 1}}), "details.referrer"),
        (json!({"browser": long.clone()}), "details.browser"),
        (json!({"os": ["x"]}), "details.os"),
        (json!({"visitor": "v".repeat(129)}), "details.visitor"),
    ] {
        let res = app
            .post_json(
                "/events",
                &json!({"url_id": url_id, "event_type": "click", "details": details}),
            )
            .await;
        let err = error_of(res, 400).await;
        assert!(err["details"][field].is_string(), "{details}: {err}");
    }
    // Not a click: nothing reads them, and they are kept as given.
    let res = app
        .post_json(
            "/events",
            &json!({"url_id": url_id, "event_type": "updated", "details": {"is_bot": "maybe"}}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let res = app
        .post_json(
            "/events",
            &json!({"url_id": url_id, "event_type": "click",
                    "details": {"referrer": format!("https://a.example/{long}"), "is_bot": false,
                                "browser": "Firefox", "visitor": "v".repeat(128)}}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let ev: Value = res.json().await.unwrap();
    let stored = ev["details"]["referrer"].as_str().unwrap();
    assert_eq!(stored.len(), kurz_common::clicks::MAX_HEADER_LEN);
    let stats = app.stats(url_id).await;
    assert_eq!(stats["clicks"], 1);
    assert_eq!(stats["top_referrers"][0]["referrer"], stored);

    // The same rows in an events import: the row and the column are named.
    let csv = format!(
        "id,url_id,user_id,event_type,timestamp,details\n\
         900001,{url_id},,click,2025-01-01 00:00:00,\"{{\"\"is_bot\"\": \"\"maybe\"\"}}\"\n"
    );
    let err = error_of(app.upload("/events/bulk", csv.into()).await, 400).await;
    assert_eq!(err["details"]["column"], "details.is_bot", "{err}");
    let csv = format!(
        "id,url_id,user_id,event_type,timestamp,details\n\
         900002,{url_id},,click,2025-01-01 00:00:00,\"{{\"\"referrer\"\": \"\"{long}\"\"}}\"\n"
    );
    let res = app.upload("/events/bulk", csv.into()).await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let stats = app.stats(url_id).await;
    assert_eq!(stats["clicks"], 2);

    // A dimension named by nothing is unknown, as one not given at all: never a `""` row.
    let res = app
        .post_json(
            "/events",
            &json!({"url_id": url_id, "event_type": "click",
                    "details": {"browser": "", "os": " ", "device": ""}}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let stats = app.stats(url_id).await;
    for dimension in ["browsers", "operating_systems", "devices"] {
        let names: Vec<&Value> = stats[dimension]
            .as_array()
            .unwrap_or_else(|| panic!("{dimension}: {stats}"))
            .iter()
            .map(|row| &row["name"])
            .collect();
        assert!(
            names
                .iter()
                .all(|n| n.as_str().is_some_and(|n| !n.trim().is_empty())),
            "{dimension}: {names:?}"
        );
    }
}

#[tokio::test]
async fn stats_count_clicks_by_day_and_referrer() {
    let app = spawn_app().await;
    let user = app.create_user("st").await;
    let link = app.create_url(user, "https://example.com/st").await;
    let code = link["short_code"].as_str().unwrap();
    for referrer in [
        "https://a.example",
        "https://a.example",
        "https://b.example",
    ] {
        let res = app
            .client
            .get(app.url(&format!("/{code}")))
            .header("referer", referrer)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 302);
    }
    let stats: Value = app
        .get(&format!("/urls/{}/stats", link["id"]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats["url_id"], link["id"]);
    assert_eq!(stats["clicks"], 3);
    assert!(stats["last_click_at"].is_string());
    // One day, or two if the clicks straddled midnight UTC: what holds is the sum.
    let daily = stats["daily"].as_array().unwrap();
    assert!((1..=2).contains(&daily.len()), "{daily:?}");
    let per_day: i64 = daily.iter().map(|d| d["clicks"].as_i64().unwrap()).sum();
    assert_eq!(per_day, 3);
    assert_eq!(
        stats["top_referrers"][0],
        json!({"referrer": "https://a.example", "clicks": 2})
    );
    error_of(app.get("/urls/98765/stats").await, 404).await;
}

/// Clicks are not in `events_type_idx` (V11), which covers only the rare write types. Listing
/// one of those must use it in every plan the server caches for the statement: after five runs
/// PostgreSQL may switch to a generic plan, which could not use the index if the type were a
/// parameter, and would then walk every click. Generic plans are forced here from the start.
#[tokio::test]
async fn listing_a_write_event_type_uses_the_partial_index_in_every_plan() {
    let app = spawn_app_with(|c| {
        let mut url = url::Url::parse(&c.database.url).unwrap();
        url.query_pairs_mut()
            .append_pair("options", "-cplan_cache_mode=force_generic_plan");
        c.database.url = url.to_string();
    })
    .await;
    let user = app.create_user("ix").await;
    let link = app.create_url(user, "https://example.com/ix").await;
    let url_id = link["id"].as_i64().unwrap();
    let db = app.sql().await;
    db.batch_execute(&format!(
        "INSERT INTO events (url_id, user_id, event_type, click_id) \
         SELECT {url_id}, {user}, 'click', 'ix-' || g FROM generate_series(1, 20000) g; \
         ANALYZE events"
    ))
    .await
    .unwrap();
    let before = scans(&db).await;
    const REQUESTS: i64 = 10;
    for _ in 0..REQUESTS {
        let res = app.get("/events?event_type=created").await;
        assert_eq!(res.status(), 200);
        let created: Vec<Value> = res.json().await.unwrap();
        assert_eq!(created.len(), 1);
        assert_eq!(created[0]["url_id"], url_id);
    }
    // Each request counts and lists: two scans. Statistics reach the view within a second or so.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let used = scans(&db).await - before;
        if used >= 2 * REQUESTS {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "events_type_idx used {used} times for {REQUESTS} listings of a write type"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

async fn scans(db: &tokio_postgres::Client) -> i64 {
    db.query_one(
        "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'events_type_idx'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// An imported event without a `user_id` is its link owner's, as a recorded click is: the
/// owner lists it (in `required` mode by that) and the stats count it.
#[tokio::test]
async fn an_imported_event_without_a_user_is_its_links_owners() {
    let app = spawn_app().await;
    let owner = app.create_user("eventowner").await;
    let link = app.create_url(owner, "https://example.com/owned").await;
    let id = link["id"].as_i64().unwrap();
    let csv = format!(
        "url_id,user_id,event_type,timestamp,details\n{id},,click,2025-01-02T03:04:05,{{}}\n"
    );
    assert_eq!(
        app.upload("/events/bulk", csv.into_bytes()).await.status(),
        201
    );
    let clicks = app.clicks(id).await;
    assert_eq!(clicks.len(), 1);
    assert_eq!(clicks[0]["user_id"], owner, "{clicks:?}");
    let listed: Vec<serde_json::Value> = app
        .get(&format!("/events?user_id={owner}&event_type=click"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(app.stats(id).await["clicks"], 1);
}

/// An event posted without a `user_id` is its link owner's, whoever posts it (here an admin in
/// `required` mode, and anyone in `open` mode).
#[tokio::test]
async fn a_posted_event_without_a_user_is_its_links_owners() {
    let app = spawn_app().await;
    let owner = app.create_user("postowner").await;
    let link = app.create_url(owner, "https://example.com/posted").await;
    let res = app
        .post_json(
            "/events",
            &json!({"url_id": link["id"], "event_type": "click"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.json::<Value>().await.unwrap()["user_id"], owner);

    let app = spawn_app_with(|c| {
        c.auth.mode = kurz_api::config::AuthMode::Required;
        c.auth.admins = vec!["boss@example.com".into()];
    })
    .await;
    let admin = token_of(
        &app,
        json!({"username": "boss", "email": "boss@example.com", "password": "boss-secret-1"}),
    )
    .await;
    let user = token_of(
        &app,
        json!({"username": "own", "email": "own@example.com", "password": "own-secret-12"}),
    )
    .await;
    let res = app
        .client
        .post(app.url("/urls"))
        .bearer_auth(&user)
        .json(&json!({"original_url": "https://example.com/owned"}))
        .send()
        .await
        .unwrap();
    let link: Value = res.json().await.unwrap();
    let res = app
        .client
        .post(app.url("/events"))
        .bearer_auth(&admin)
        .json(&json!({"url_id": link["id"], "event_type": "click"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(
        res.json::<Value>().await.unwrap()["user_id"],
        link["user_id"]
    );
}

/// Registers `body`'s account: its session token.
async fn token_of(app: &crate::helpers::TestApp, body: Value) -> String {
    let res = app.post_json("/auth/register", &body).await;
    assert_eq!(res.status(), 201);
    res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}
