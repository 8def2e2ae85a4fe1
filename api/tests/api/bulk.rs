//! Bulk CSV imports: the seed formats, all-or-nothing, sequences, cache.

use crate::helpers::{error_of, spawn_app, wait_for_lock_waits, TestApp};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// `../shared/seed-data/` beside the checkout, when present.
fn seed_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/seed-data");
    dir.join("users.csv").exists().then_some(dir)
}

async fn import(app: &TestApp, kind: &str, csv: Vec<u8>) -> Value {
    let res = app.upload(&format!("/{kind}/bulk"), csv).await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 201, "{kind}: {body}");
    body
}

async fn import_dir(app: &TestApp, dir: &Path) -> [i64; 3] {
    let mut counts = [0; 3];
    for (i, kind) in ["users", "urls", "events"].iter().enumerate() {
        let csv = std::fs::read(dir.join(format!("{kind}.csv"))).unwrap();
        counts[i] = import(app, kind, csv).await["count"].as_i64().unwrap();
    }
    counts
}

fn line_count(path: PathBuf) -> i64 {
    std::fs::read_to_string(path).unwrap().lines().count() as i64 - 1
}

#[tokio::test]
async fn generated_sample_data_imports_completely_and_moves_sequences() {
    let app = spawn_app().await;
    let dir = std::env::temp_dir().join(format!("kurz-sample-{}", rand::random::<u64>()));
    kurz_api::sample::write(
        &dir,
        kurz_api::sample::Sizes {
            users: 300,
            urls: 20_000,
            events: 5_000,
        },
        7,
    )
    .unwrap();
    let counts = import_dir(&app, &dir).await;
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(counts, [300, 20_000, 5_000]);
    // A page asked for without per_page holds 50 (docs/API.md); without either, every row.
    let page: Vec<Value> = app.get("/users?page=2").await.json().await.unwrap();
    assert_eq!(page.len(), 50);
    let all: Vec<Value> = app.get("/users").await.json().await.unwrap();
    assert_eq!(all.len(), 300);
    let res = app.get("/urls?per_page=1").await;
    assert_eq!(res.headers()["x-total-count"], "20000");
    let first: Vec<Value> = res.json().await.unwrap();
    let code = first[0]["short_code"].as_str().unwrap();
    let redirect = app.get(&format!("/{code}")).await;
    assert!(
        redirect.status() == 302 || redirect.status() == 404,
        "inactive sample links answer 404"
    );
    // Sequences moved past the imported ids.
    assert_eq!(app.create_user("after-import").await, 301);
    assert_eq!(
        app.create_url(1, "https://example.com/after").await["id"],
        20_001
    );
}

#[tokio::test]
async fn the_seed_files_import_when_present() {
    let Some(dir) = seed_dir() else {
        eprintln!("../shared/seed-data not present; covered by the generated sample test");
        return;
    };
    let app = spawn_app().await;
    let counts = import_dir(&app, &dir).await;
    assert_eq!(
        counts,
        [
            line_count(dir.join("users.csv")),
            line_count(dir.join("urls.csv")),
            line_count(dir.join("events.csv"))
        ]
    );
    let link: Value = app.get("/urls/1").await.json().await.unwrap();
    assert_eq!(link["short_code"], "qva5vT");
    assert_eq!(link["created_at"], "2025-03-26T16:48:24");
    let res = app.get("/qva5vT").await;
    assert_eq!(res.status(), 302);
    assert_eq!(
        res.headers()["location"],
        "https://example.com/calm/valley/1"
    );
    let events: Vec<Value> = app
        .get("/events?url_id=1&event_type=created")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(events[0]["details"]["short_code"], "qva5vT");
}

#[tokio::test]
async fn a_bad_row_names_row_and_column_and_nothing_is_imported() {
    let app = spawn_app().await;
    let csv = "id,username,email,created_at\n1,ok,ok@example.com,2025-01-01 00:00:00\n2,bad,not-an-email,2025-01-01 00:00:00\n";
    let err = error_of(app.upload("/users/bulk", csv.into()).await, 400).await;
    assert_eq!(err["details"]["row"], 2);
    assert_eq!(err["details"]["column"], "email");
    let res = app.get("/users").await;
    assert_eq!(res.headers()["x-total-count"], "0");

    import(
        &app,
        "users",
        "id,username,email\n1,a,a@example.com\n".into(),
    )
    .await;
    let csv = "id,user_id,short_code,original_url,title,is_active,created_at,updated_at\n\
               1,1,abc123,https://example.com/1,T,True,2025-01-01 00:00:00,2025-01-01 00:00:00\n\
               2,99,abc124,https://example.com/2,T,True,2025-01-01 00:00:00,2025-01-01 00:00:00\n";
    let err = error_of(app.upload("/urls/bulk", csv.into()).await, 400).await;
    assert_eq!(err["details"]["column"], "user_id");
    assert_eq!(err["details"]["row"], 2);
    let csv = "id,user_id,short_code,original_url,title,is_active,created_at,updated_at\n\
               1,1,abc123,https://example.com/1,T,Maybe,2025-01-01 00:00:00,2025-01-01 00:00:00\n";
    assert_eq!(
        error_of(app.upload("/urls/bulk", csv.into()).await, 400).await["details"]["column"],
        "is_active"
    );
    let csv = "id,user_id,short_code,original_url,title,is_active,created_at,updated_at\n\
               1,1,abc123,https://example.com/1,T,True,,\n2,1,abc123,https://example.com/2,T,True,,\n";
    let err = error_of(app.upload("/urls/bulk", csv.into()).await, 400).await;
    assert_eq!(err["details"]["column"], "short_code");
    assert_eq!(app.get("/urls").await.headers()["x-total-count"], "0");

    import(
        &app,
        "urls",
        "id,user_id,short_code,original_url\n1,1,abc123,https://example.com/1\n".into(),
    )
    .await;
    let csv = "id,url_id,user_id,event_type,timestamp,details\n1,1,1,click,2025-01-01 00:00:00,\"[1,2]\"\n";
    assert_eq!(
        error_of(app.upload("/events/bulk", csv.into()).await, 400).await["details"]["column"],
        "details"
    );
    let csv =
        "id,url_id,user_id,event_type,timestamp,details\n1,5,1,click,2025-01-01 00:00:00,{}\n";
    assert_eq!(
        error_of(app.upload("/events/bulk", csv.into()).await, 400).await["details"]["column"],
        "url_id"
    );
    // A year PostgreSQL cannot store (before 4714 BC) is the row's error, not the database's.
    let csv =
        "id,url_id,user_id,event_type,timestamp,details\n1,1,1,click,-5000-01-01 00:00:00,{}\n";
    assert_eq!(
        error_of(app.upload("/events/bulk", csv.into()).await, 400).await["details"]["column"],
        "timestamp"
    );
    let csv = format!(
        "id,user_id,short_code,original_url,title\n2,1,abc126,https://example.com/2,{}\n",
        "t".repeat(513)
    );
    assert_eq!(
        error_of(app.upload("/urls/bulk", csv.into()).await, 400).await["details"]["column"],
        "title",
        "titles are held to the 512 characters of a create"
    );
    let csv = "id,user_id,short_code,original_url,created_at\n2,1,abc125,https://example.com/2,-5000-01-01\n";
    assert_eq!(
        error_of(app.upload("/urls/bulk", csv.into()).await, 400).await["details"]["column"],
        "created_at"
    );
}

#[tokio::test]
async fn rows_with_ids_are_upserted_and_conflicts_are_409() {
    let app = spawn_app().await;
    import(
        &app,
        "users",
        "id,username,email\n5,a,a@example.com\n".into(),
    )
    .await;
    import(
        &app,
        "users",
        "id,username,email\n5,renamed,a@example.com\n".into(),
    )
    .await;
    let user: Value = app.get("/users/5").await.json().await.unwrap();
    assert_eq!(user["username"], "renamed");
    let res = app
        .upload(
            "/users/bulk",
            "id,username,email\n6,other,A@example.com\n".into(),
        )
        .await;
    // The email is the identity (case-insensitive); a repeated username alone is not a conflict.
    assert_eq!(error_of(res, 409).await["error"], "conflict");
    assert_eq!(app.get("/users").await.headers()["x-total-count"], "1");
}

/// A re-import by id sets the columns its file has and leaves the others as stored: the seed
/// format (no `expires_at`, `max_visits`, `tags`…) must not reopen an expired, limited or
/// switched-off link, nor move creation dates to the import's time.
#[tokio::test]
async fn a_re_import_keeps_what_its_file_has_no_column_for() {
    let app = spawn_app().await;
    import(
        &app,
        "users",
        "id,username,email,created_at\n5,a,a@example.com,2020-01-02T03:04:05Z\n".into(),
    )
    .await;
    import(
        &app,
        "urls",
        "id,user_id,short_code,original_url,title,is_active,created_at,updated_at,expires_at,redirect_type,max_visits,imported_clicks,tags\n\
         10,5,keepme1,https://example.com/old,Old title,False,2020-01-02T03:04:05Z,2020-01-03T03:04:05Z,2040-01-01T00:00:00Z,307,3,4,a;b\n"
            .into(),
    )
    .await;
    import(
        &app,
        "users",
        "id,username,email\n5,renamed,a@example.com\n".into(),
    )
    .await;
    import(
        &app,
        "urls",
        "id,user_id,short_code,original_url\n10,5,keepme1,https://example.com/new\n".into(),
    )
    .await;
    let user: Value = app.get("/users/5").await.json().await.unwrap();
    assert_eq!(user["username"], "renamed");
    assert!(
        user["created_at"]
            .as_str()
            .unwrap()
            .starts_with("2020-01-02"),
        "{user}"
    );
    let link: Value = app.get("/urls/10").await.json().await.unwrap();
    assert_eq!(link["original_url"], "https://example.com/new");
    for (field, kept) in [
        ("title", json!("Old title")),
        ("is_active", json!(false)),
        ("redirect_type", json!(307)),
        ("max_visits", json!(3)),
        ("tags", json!(["a", "b"])),
    ] {
        assert_eq!(link[field], kept, "{field}: {link}");
    }
    for field in ["created_at", "expires_at"] {
        let year = &link[field].as_str().unwrap()[..4];
        assert!(year == "2020" || year == "2040", "{field}: {link}");
    }
    assert_eq!(
        app.get("/keepme1").await.status(),
        404,
        "still switched off"
    );
    // A file that has the columns sets them, empty cells included.
    import(
        &app,
        "urls",
        "id,user_id,short_code,original_url,title,is_active,max_visits,tags\n10,5,keepme1,https://example.com/new,,True,,\n"
            .into(),
    )
    .await;
    let link: Value = app.get("/urls/10").await.json().await.unwrap();
    assert_eq!(
        (
            &link["title"],
            &link["is_active"],
            &link["max_visits"],
            &link["tags"]
        ),
        (&json!(null), &json!(true), &json!(null), &json!([])),
        "{link}"
    );
    assert_eq!(link["redirect_type"], 307, "not in this file either");
}

/// A row naming a deleted link's id brings the link back, as a row naming a deleted user's
/// brings the user back: the import restores what it names (docs/API.md).
#[tokio::test]
async fn a_re_import_of_a_deleted_links_row_brings_it_back() {
    let app = spawn_app().await;
    import(
        &app,
        "users",
        "id,username,email\n5,a,a@example.com\n".into(),
    )
    .await;
    let row = "id,user_id,short_code,original_url,is_active\n10,5,backagain,https://example.com/back,True\n";
    import(&app, "urls", row.into()).await;
    assert_eq!(app.get("/backagain").await.status(), 302);
    assert_eq!(app.delete("/urls/10").await.status(), 204);
    assert_eq!(app.get("/backagain").await.status(), 404);
    assert_eq!(app.get("/urls/10").await.status(), 404);
    import(&app, "urls", row.into()).await;
    assert_eq!(app.get("/urls/10").await.status(), 200);
    assert_eq!(app.get("/backagain").await.status(), 302);
}

/// An imported event row that names the id of a click the sink stored replaces all of it: the
/// typed click columns (migration V21) go with the old row, so the event reads back with the
/// imported `details` alone.
#[tokio::test]
async fn an_imported_event_replaces_a_stored_click_with_the_same_id_entirely() {
    let app = spawn_app().await;
    let (user, id, code) = app.create_link("over", "https://example.com/over").await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    let clicks = app.clicks(id).await;
    assert_eq!(clicks[0]["details"]["short_code"], code, "{clicks:?}");
    let event_id = clicks[0]["id"].as_i64().unwrap();
    let db = app.sql().await;
    let click_id = |db: tokio_postgres::Client| async move {
        db.query_one("SELECT click_id FROM events WHERE id = $1", &[&event_id])
            .await
            .unwrap()
            .get::<_, Option<String>>(0)
    };
    let stored_click_id = click_id(db).await;
    assert!(stored_click_id.is_some());

    let csv = format!(
        "id,url_id,user_id,event_type,timestamp,details\n\
         {event_id},{id},{user},click,2025-01-01 00:00:00,\"{{\"\"referrer\"\": \"\"imported\"\"}}\"\n"
    );
    import(&app, "events", csv.into()).await;
    let clicks = app.clicks(id).await;
    assert_eq!(clicks.len(), 1, "{clicks:?}");
    assert_eq!(clicks[0]["id"], event_id);
    assert_eq!(clicks[0]["details"], json!({"referrer": "imported"}));
    // The stream's copy of the click is still recognised as stored by its id.
    assert_eq!(click_id(app.sql().await).await, stored_click_id);
    // The stats count the click where it is now: on its new day, from its new referrer, once.
    let stats = app.stats(id).await;
    assert_eq!(stats["clicks"], 1, "{stats}");
    // Today's day, where the sink counted it, is gone: the last click is the imported one.
    assert_eq!(stats["last_click_at"], "2025-01-01T00:00:00", "{stats}");
    assert_eq!(
        stats["top_referrers"],
        json!([{"referrer": "imported", "clicks": 1}]),
        "{stats}"
    );
    // Replaced by an event that is no click, it is counted nowhere.
    let csv = format!(
        "id,url_id,user_id,event_type,timestamp,details\n\
         {event_id},{id},{user},updated,2025-01-02 00:00:00,{{}}\n"
    );
    import(&app, "events", csv.into()).await;
    let stats = app.stats(id).await;
    assert_eq!(stats["clicks"], 0, "{stats}");
    assert_eq!(stats["last_click_at"], Value::Null, "{stats}");
    assert_eq!(stats["top_referrers"], json!([]), "{stats}");
    let link: Value = app.get(&format!("/urls/{id}")).await.json().await.unwrap();
    assert_eq!(link["visits"], 0);
}

/// The same click events imported again (by id) leave the stats as they were: a day's distinct
/// visitors are counted once, today as on a day whose per-visitor rows the hourly prune has
/// dropped (a re-import counted them again there, and emptied today's count).
#[tokio::test]
async fn a_re_import_of_the_same_clicks_leaves_the_visitors_as_they_were() {
    let app = spawn_app().await;
    let (user, id, _) = app
        .create_link("revisit", "https://example.com/revisit")
        .await;
    let today = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
    let old = (chrono::Utc::now() - chrono::Duration::days(10))
        .format("%Y-%m-%d 12:00:00")
        .to_string();
    let mut csv = String::from("id,url_id,user_id,event_type,timestamp,details\n");
    let clicks = [
        (&today, "v1"),
        (&today, "v2"),
        (&today, "v3"),
        (&old, "w1"),
        (&old, "w2"),
    ];
    for (n, (at, visitor)) in clicks.iter().enumerate() {
        csv.push_str(&format!(
            "{},{id},{user},click,{at},\"{{\"\"visitor\"\": \"\"{visitor}\"\"}}\"\n",
            9_000_001 + n
        ));
    }
    let prune = || async {
        let db = app.state.client().await.unwrap();
        kurz_api::db::events::delete_old_visitors(&db, None, 1000)
            .await
            .unwrap();
    };
    for round in 0..3 {
        import(&app, "events", csv.clone().into()).await;
        prune().await;
        let stats = app.stats(id).await;
        assert_eq!(
            (stats["clicks"].as_i64(), stats["visitors"].as_i64()),
            (Some(5), Some(5)),
            "import {round}: {stats}"
        );
    }
}

/// A referrer's host as the stats list it: an IPv6 literal whole, and a host written with the
/// root's trailing dot as the same host.
#[tokio::test]
async fn referrer_hosts_keep_ipv6_literals_whole() {
    let app = spawn_app().await;
    let (user, id, _) = app
        .create_link("refhost", "https://example.com/refhost")
        .await;
    let mut csv = String::from("id,url_id,user_id,event_type,timestamp,details\n");
    for referrer in [
        "https://[2001:DB8::1]:8443/x",
        "http://[2001:db8::1]/",
        "https://someone@[2001:db8::1]",
        "https://Example.com./a",
        "https://example.com:444/b",
    ] {
        csv.push_str(&format!(
            ",{id},{user},click,,\"{{\"\"referrer\"\": \"\"{referrer}\"\"}}\"\n"
        ));
    }
    import(&app, "events", csv.into()).await;
    let stats = app.stats(id).await;
    assert_eq!(
        stats["referrer_hosts"],
        json!([
            {"host": "[2001:db8::1]", "clicks": 3},
            {"host": "example.com", "clicks": 2}
        ]),
        "{stats}"
    );
}

#[tokio::test]
async fn imported_links_replace_stale_cache_entries() {
    let app = spawn_app().await;
    import(
        &app,
        "users",
        "id,username,email\n1,a,a@example.com\n".into(),
    )
    .await;
    error_of(app.get("/later1").await, 404).await; // cached negatively
    import(
        &app,
        "urls",
        "id,user_id,short_code,original_url\n1,1,later1,https://example.com/later\n".into(),
    )
    .await;
    assert_eq!(app.get("/later1").await.status(), 302);
    import(&app, "urls", "id,user_id,short_code,original_url,is_active\n1,1,later1,https://example.com/later,False\n".into()).await;
    error_of(app.get("/later1").await, 404).await;
}

#[tokio::test]
async fn uploads_need_multipart_with_a_file_field() {
    let app = spawn_app().await;
    let res = app
        .post_raw("/users/bulk", "id,username,email\n", "text/csv")
        .await;
    assert_eq!(error_of(res, 415).await["error"], "unsupported_media_type");
    let form = reqwest::multipart::Form::new().text("other", "x");
    let res = app
        .client
        .post(app.url("/users/bulk"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert!(error_of(res, 400).await["details"]["file"].is_string());
    let err = error_of(
        app.upload("/users/bulk", "name,mail\nx,y\n".into()).await,
        400,
    )
    .await;
    assert!(
        err["message"].as_str().unwrap().contains("username"),
        "{err}"
    );
    let _ = json!({});
}

/// Found by the OpenAPI fuzz run: a row id at the top of the id range used to pass, move the
/// id sequence to its end and make every later create a 500; and a NUL inside `details`
/// reached PostgreSQL's jsonb and failed as a 500. Both are now the row's 400.
#[tokio::test]
async fn ids_past_the_ceiling_and_nul_in_details_are_the_rows_400() {
    let app = spawn_app().await;
    let csv = "id,username,email,created_at\n9223372036854775807,big,big@example.com,\n";
    let err = error_of(app.upload("/users/bulk", csv.into()).await, 400).await;
    assert_eq!(err["details"]["column"], "id");
    // 2^53 - 1 would leave no id after it that a JavaScript client reads exactly.
    let csv = "id,username,email,created_at\n9007199254740991,top,top@example.com,\n";
    let err = error_of(app.upload("/users/bulk", csv.into()).await, 400).await;
    assert_eq!(err["details"]["column"], "id");
    let csv = "id,username,email,created_at\n4503599627370496,top,top@example.com,\n";
    assert_eq!(app.upload("/users/bulk", csv.into()).await.status(), 201);
    // Creates after the largest id allowed get ids a JavaScript number holds exactly.
    let user = app.create_user("after-top").await;
    assert_eq!(user, 4_503_599_627_370_497);

    let link = app.create_url(user, "https://example.com/nul").await;
    let csv = format!(
        "url_id,event_type,details\n{},click,\"{{\"\"a\"\":\"\"x\\u0000y\"\"}}\"\n",
        link["id"]
    );
    let err = error_of(app.upload("/events/bulk", csv.into()).await, 400).await;
    assert_eq!(err["details"]["column"], "details");
    assert!(err["message"].as_str().unwrap().contains("NUL"), "{err}");
}

/// A link the import gives to another user takes its events along, as its stats go with it:
/// the old owner no longer lists its clicks, the new one does.
#[tokio::test]
async fn a_link_given_to_another_user_takes_its_events_along() {
    let app = spawn_app().await;
    let (old, new) = (
        app.create_user("giver").await,
        app.create_user("taker").await,
    );
    let link = app.create_url(old, "https://example.com/given").await;
    let (id, code) = (
        link["id"].as_i64().unwrap(),
        link["short_code"].as_str().unwrap(),
    );
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    assert_eq!(app.clicks(id).await.len(), 1);
    let before = listed(&app, old, id).await;
    assert!(before >= 2, "the create and the click: {before}");
    let csv = format!(
        "id,user_id,short_code,original_url\n{id},{new},{code},https://example.com/given\n"
    );
    import(&app, "urls", csv.into_bytes()).await;
    assert_eq!(listed(&app, old, id).await, 0);
    assert_eq!(listed(&app, new, id).await, before);
}

/// How many events of link `id` the list shows for `user`.
async fn listed(app: &TestApp, user: i64, id: i64) -> usize {
    app.get(&format!("/events?user_id={user}&url_id={id}"))
        .await
        .json::<Vec<Value>>()
        .await
        .unwrap()
        .len()
}

/// A row naming a stored link under another code is refused, deleted link or not: the link's
/// old code would be free for anyone to take, and what was printed with it would lead to them.
#[tokio::test]
async fn a_bulk_row_cannot_change_a_links_code() {
    let app = spawn_app().await;
    let (user, id, code) = app.create_link("keeper", "https://example.com/kept").await;
    assert_eq!(app.delete(&format!("/urls/{id}")).await.status(), 204);
    let row = |code: &str| {
        format!("id,user_id,short_code,original_url\n{id},{user},{code},https://example.com/kept\n")
    };
    let err = error_of(app.upload("/urls/bulk", row("moved").into()).await, 400).await;
    assert_eq!(err["details"]["column"], "short_code", "{err}");
    assert_eq!(err["details"]["row"], 1);
    // The old code is still the deleted link's: a create asking for it is refused.
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/taker", "short_code": code}),
        )
        .await;
    assert_eq!(res.status(), 409);
    // The same code restores the link, as before.
    assert_eq!(
        import(&app, "urls", row(&code).into_bytes()).await["count"],
        1
    );
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
}

/// The check that a row keeps its link's code holds when the link is being written meanwhile:
/// a row of the same id inserted by another transaction (another import, a create that drew
/// the id) and committed while the import waits on it is not renamed by the import.
#[tokio::test]
async fn a_bulk_row_cannot_rename_a_link_written_meanwhile() {
    let app = spawn_app().await;
    let user = app.create_user("racer").await;
    let mut holder = app.sql().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO urls (id, user_id, short_code, original_url) \
         VALUES (900001, $1, 'heldcode', 'https://example.com/held')",
        &[&user],
    )
    .await
    .unwrap();
    let csv = format!(
        "id,user_id,short_code,original_url\n900001,{user},filecode,https://example.com/file\n"
    );
    let import = app.spawn_upload("/urls/bulk", csv.into_bytes());
    wait_for_lock_waits(&app, 1, "the import's upsert").await;
    tx.commit().await.unwrap();
    let res = import.await.unwrap();
    error_of(res, 409).await;
    let code: String = holder
        .query_one("SELECT short_code FROM urls WHERE id = 900001", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(code, "heldcode");
}
