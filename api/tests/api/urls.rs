use crate::helpers::{error_of, spawn_app, spawn_app_with, wait_for_lock_waits, TestApp};
use serde_json::{json, Value};
use std::collections::HashSet;

#[tokio::test]
async fn create_url_returns_the_contract_shape() {
    let app = spawn_app().await;
    let user = app.create_user("u").await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/a", "title": "A"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let link: Value = res.json().await.unwrap();
    for key in [
        "id",
        "user_id",
        "short_code",
        "original_url",
        "title",
        "is_active",
        "created_at",
        "updated_at",
        "short_url",
    ] {
        assert!(link.get(key).is_some(), "missing {key}: {link}");
    }
    assert_eq!(link["is_active"], true);
    let code = link["short_code"].as_str().unwrap();
    assert_eq!(code.len(), 7);
    assert!(code.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_eq!(link["short_url"], format!("http://kurz.test/{code}"));
    assert!(link.get("expires_at").is_none());
}

#[tokio::test]
async fn create_url_returns_404_for_unknown_user() {
    let app = spawn_app().await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": 424242, "original_url": "https://example.com"}),
        )
        .await;
    assert_eq!(error_of(res, 404).await["error"], "not_found");
    // A deleted owner is no owner either, with a custom code or a generated one, and nothing
    // of the refused link is stored (the insert checks the owner itself).
    let gone = app.create_user("gone").await;
    assert_eq!(app.delete(&format!("/users/{gone}")).await.status(), 204);
    for body in [
        json!({"user_id": gone, "original_url": "https://example.com/a"}),
        json!({"user_id": gone, "original_url": "https://example.com/b", "short_code": "gone-link"}),
    ] {
        let res = app.post_json("/urls", &body).await;
        let err = error_of(res, 404).await;
        assert!(
            err["message"].as_str().unwrap().contains(&gone.to_string()),
            "{err}"
        );
    }
    let links: Vec<serde_json::Value> = app.get("/urls").await.json().await.unwrap();
    assert!(links.is_empty(), "{links:?}");
    let events: Vec<serde_json::Value> = app.get("/events").await.json().await.unwrap();
    assert!(events.is_empty(), "{events:?}");
}

#[tokio::test]
async fn invalid_targets_are_400_naming_original_url() {
    let app = spawn_app().await;
    let user = app.create_user("v").await;
    let long = format!("https://example.com/{}", "a".repeat(2048));
    for bad in [
        "hello",
        "example.com/x",
        "ftp://example.com/f",
        "javascript:alert(1)",
        "data:text/html,hi",
        long.as_str(),
        "http://kurz.test/loop",
    ] {
        let res = app
            .post_json("/urls", &json!({"user_id": user, "original_url": bad}))
            .await;
        let err = error_of(res, 400).await;
        assert_eq!(err["error"], "validation_error");
        assert!(err["details"]["original_url"].is_string(), "{bad}: {err}");
    }
    let res = app
        .post_json("/urls", &json!({"user_id": user, "original_url": 5}))
        .await;
    assert!(error_of(res, 400).await["details"]["original_url"].is_string());
    let res = app.post_json("/urls", &json!({"user_id": user})).await;
    assert!(error_of(res, 400).await["details"]["original_url"].is_string());
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": "1", "original_url": "https://e.com"}),
        )
        .await;
    assert!(error_of(res, 400).await["details"]["user_id"].is_string());
}

#[tokio::test]
async fn custom_codes_conflict_reserved_and_malformed() {
    let app = spawn_app().await;
    let user = app.create_user("w").await;
    let body =
        json!({"user_id": user, "original_url": "https://example.com", "short_code": "my-promo"});
    let link: Value = app.post_json("/urls", &body).await.json().await.unwrap();
    assert_eq!(link["short_code"], "my-promo");
    assert_eq!(
        error_of(app.post_json("/urls", &body).await, 409).await["error"],
        "conflict"
    );
    for bad in ["users", "Health", "ab", "has space", "semi;colon"] {
        let res = app
            .post_json(
                "/urls",
                &json!({"user_id": user, "original_url": "https://e.com", "short_code": bad}),
            )
            .await;
        assert!(
            error_of(res, 400).await["details"]["short_code"].is_string(),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn two_hundred_concurrent_creates_get_distinct_codes_and_no_5xx() {
    let app = spawn_app().await;
    let user = app.create_user("many").await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = app.client.clone();
        let url = app.url("/urls");
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(url)
                .json(&json!({"user_id": user, "original_url": format!("https://example.com/same/{}", i % 3)}))
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }));
    }
    let mut codes = HashSet::new();
    for t in tasks {
        let (status, body) = t.await.unwrap();
        assert_eq!(status, 201, "{body}");
        codes.insert(body["short_code"].as_str().unwrap().to_owned());
    }
    assert_eq!(codes.len(), 200);
}

#[tokio::test]
async fn list_urls_filters_by_user_and_active() {
    let app = spawn_app().await;
    let a = app.create_user("fa").await;
    let b = app.create_user("fb").await;
    let l1 = app.create_url(a, "https://example.com/1").await;
    app.create_url(a, "https://example.com/2").await;
    app.create_url(b, "https://example.com/3").await;
    app.put_json(&format!("/urls/{}", l1["id"]), &json!({"is_active": false}))
        .await;
    let all: Vec<Value> = app.get("/urls").await.json().await.unwrap();
    assert_eq!(all.len(), 3);
    let res = app.get(&format!("/urls?user_id={a}&is_active=true")).await;
    assert_eq!(res.headers()["x-total-count"], "1");
    let inactive: Vec<Value> = app.get("/urls?is_active=false").await.json().await.unwrap();
    assert_eq!(inactive.len(), 1);
    assert_eq!(inactive[0]["id"], l1["id"]);
    error_of(app.get("/urls?user_id=abc").await, 400).await;
    error_of(app.get("/urls?is_active=maybe").await, 400).await;
}

/// A misspelt filter used to be ignored: `tags=` or `limit=` answered 200 with every link, the
/// wider list the client meant to narrow. An unknown name, or a filter given twice, is a 400
/// naming it; `tag`, the one filter meant to repeat, still does.
#[tokio::test]
async fn an_unknown_or_repeated_query_parameter_is_refused_naming_it() {
    let app = spawn_app().await;
    let user = app.create_user("qp").await;
    let link = app.create_url(user, "https://example.com/qp").await;
    let id = link["id"].as_i64().unwrap();
    for (path, named) in [
        ("/urls?tags=launch".to_owned(), "tags"),
        ("/urls?limit=10".to_owned(), "limit"),
        ("/urls?per_page=5&after=3".to_owned(), "after"),
        ("/events?url=1".to_owned(), "url"),
        ("/users?is_active=true".to_owned(), "is_active"),
        (format!("/users/{user}/urls?user_id=7"), "user_id"),
        (format!("/urls/{id}/stats?form=2030-01-01"), "form"),
        ("/urls/export?format=csv&tag=x".to_owned(), "tag"),
        ("/tags?tag=x".to_owned(), "tag"),
        (format!("/urls/{id}/qr?sizes=512"), "sizes"),
        (format!("/urls?user_id={user}&user_id=99"), "user_id"),
        ("/urls?page=1&page=2".to_owned(), "page"),
        (
            "/events?event_type=click&event_type=created".to_owned(),
            "event_type",
        ),
    ] {
        let err = error_of(app.get(&path).await, 400).await;
        let message = err["message"].as_str().unwrap();
        assert!(message.contains(named), "{path}: {err}");
    }
    let err = error_of(app.get("/urls?lmit=5").await, 400).await;
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("user_id, is_active, tag, after_id, page, per_page"),
        "the answer lists what the endpoint takes: {err}"
    );
    // A name is quoted cut short, as a value is.
    let long = "x".repeat(5_000);
    let err = error_of(app.get(&format!("/urls?{long}=1")).await, 400).await;
    assert!(err["message"].as_str().unwrap().len() < 300, "{err}");

    let res = app.get("/urls?tag=a&tag=b&per_page=5&page=1").await;
    assert_eq!(res.status(), 200, "tag repeats");
    let many: String = (0..21).map(|i| format!("tag=t{i}&")).collect();
    let err = error_of(app.get(&format!("/urls?{many}")).await, 400).await;
    assert!(
        err["message"].as_str().unwrap().contains("at most 20"),
        "{err}"
    );
    let res = app
        .get(&format!("/urls/{id}/stats?from=2020-01-01&include_bots=1"))
        .await;
    assert_eq!(res.status(), 200);
}

/// A new user with `n` links; their ids in order.
async fn user_with_links(app: &TestApp, name: &str, n: usize) -> (i64, Vec<i64>) {
    let user = app.create_user(name).await;
    let mut ids = Vec::new();
    for i in 0..n {
        let link = app
            .create_url(user, &format!("https://example.com/{name}/{i}"))
            .await;
        ids.push(link["id"].as_i64().unwrap());
    }
    (user, ids)
}

/// Pages after an id: a link deleted from a page already read shifts nothing, where `page=2`
/// would then skip the first link of the next page. The `next` link goes on after the page's
/// last id; `X-Total-Count` counts what is after the cursor.
#[tokio::test]
async fn pages_after_an_id_skip_nothing_when_links_go() {
    let app = spawn_app().await;
    let (user, ids) = user_with_links(&app, "keyset", 5).await;
    let page = |path: String| {
        let app = &app;
        async move {
            let res = app.get(&path).await;
            assert_eq!(res.status(), 200, "{path}");
            let total = res.headers()["x-total-count"].to_str().unwrap().to_owned();
            let next = res
                .headers()
                .get("link")
                .map(|l| l.to_str().unwrap().to_owned());
            let links: Vec<Value> = res.json().await.unwrap();
            let got: Vec<i64> = links.iter().map(|l| l["id"].as_i64().unwrap()).collect();
            (got, total, next)
        }
    };
    let (first, total, next) = page(format!("/urls?user_id={user}&after_id=0&per_page=2")).await;
    assert_eq!((first, total.as_str()), (ids[..2].to_vec(), "5"));
    let next = next.expect("a next link");
    assert_eq!(
        next,
        format!(
            "</urls?user_id={user}&after_id={}&per_page=2>; rel=\"next\"",
            ids[1]
        )
    );
    assert_eq!(app.delete(&format!("/urls/{}", ids[0])).await.status(), 204);
    let path = next.trim_start_matches('<').split('>').next().unwrap();
    let (second, total, next) = page(path.to_owned()).await;
    assert_eq!((second, total.as_str()), (ids[2..4].to_vec(), "3"));
    let path = next.expect("a next link");
    let path = path.trim_start_matches('<').split('>').next().unwrap();
    let (last, total, next) = page(path.to_owned()).await;
    assert_eq!((last, total.as_str(), next), (ids[4..].to_vec(), "1", None));
    // The same on a user's links and on events.
    let (mine, _, _) = page(format!("/users/{user}/urls?after_id={}", ids[2])).await;
    assert_eq!(mine, ids[3..].to_vec());
    let (users, total, _) = page(format!("/users?after_id={}", user - 1)).await;
    assert_eq!((users, total.as_str()), (vec![user], "1"));
    let (users, total, _) = page(format!("/users?after_id={user}")).await;
    assert_eq!((users, total.as_str()), (vec![], "0"));
    let res = app
        .get(&format!("/events?url_id={}&after_id=0&per_page=1", ids[1]))
        .await;
    assert_eq!(res.headers()["x-total-count"], "1", "its created event");

    let err = error_of(app.get("/urls?after_id=3&page=2").await, 400).await;
    assert!(
        err["message"].as_str().unwrap().contains("after_id"),
        "{err}"
    );
    error_of(app.get("/urls?after_id=-1").await, 400).await;
    error_of(app.get("/urls?after_id=").await, 400).await;
    error_of(app.get("/tags?after_id=0").await, 400).await;
}

/// An export bigger than one import takes is cut into files: `limit` links each, the next
/// file starting after the last id of the one before; together they hold every link once.
#[tokio::test]
async fn an_export_is_cut_into_files_by_after_id_and_limit() {
    let app = spawn_app().await;
    let (user, ids) = user_with_links(&app, "split", 5).await;
    let file = |after: i64| {
        let app = &app;
        async move {
            let res = app
                .get(&format!(
                    "/urls/export?user_id={user}&after_id={after}&limit=2"
                ))
                .await;
            assert_eq!(res.status(), 200);
            let text = res.text().await.unwrap();
            let mut rows = csv::Reader::from_reader(text.as_bytes());
            rows.records()
                .map(|r| r.unwrap()[0].parse::<i64>().unwrap())
                .collect::<Vec<i64>>()
        }
    };
    let mut seen: Vec<i64> = Vec::new();
    let mut after = 0;
    loop {
        let got = file(after).await;
        assert!(got.len() <= 2, "{got:?}");
        seen.extend(&got);
        match got.last() {
            Some(last) if got.len() == 2 => after = *last,
            _ => break,
        }
    }
    assert_eq!(seen, ids);
    error_of(app.get("/urls/export?limit=0").await, 400).await;
}

/// A PUT that waited for another writer's lock on the link sees the tags that writer stored:
/// it read them as they were when its statement started, so setting them back looked like no
/// change, was dropped, and answered 200 with tags nothing had stored.
#[tokio::test]
async fn a_put_that_waited_for_another_writer_sees_its_tags() {
    let app = spawn_app().await;
    let user = app.create_user("tagrace").await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/tr", "tags": ["a"]}),
        )
        .await;
    let id = res.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    // The other writer: tags `x`, and the link's row held until it commits.
    let mut other = app.sql().await;
    let tx = other.transaction().await.unwrap();
    tx.batch_execute(&format!(
        "UPDATE urls SET updated_at = now() WHERE id = {id}; \
         DELETE FROM link_tags WHERE url_id = {id}; INSERT INTO link_tags VALUES ({id}, 'x')"
    ))
    .await
    .unwrap();
    let put = app.spawn_put(id, json!({"tags": ["a"]}));
    wait_for_lock_waits(&app, 1, "the PUT").await;
    tx.commit().await.unwrap();
    let res = put.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["tags"], json!(["a"]));
    let stored: Value = app.get(&format!("/urls/{id}")).await.json().await.unwrap();
    assert_eq!(
        stored["tags"],
        json!(["a"]),
        "the last write is the one stored"
    );
}

/// `user_id` sent back as read is ignored, written as a whole number with a fraction (`3.0`,
/// as Python's `json` writes a float) too: the contract takes those for integers.
#[tokio::test]
async fn a_put_sending_the_owner_back_as_a_float_is_taken() {
    let app = spawn_app().await;
    let user = app.create_user("floaty").await;
    let link = app.create_url(user, "https://example.com/float").await;
    let res = app
        .put_json(
            &format!("/urls/{}", link["id"]),
            &json!({"user_id": user as f64, "title": "kept"}),
        )
        .await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let other = error_of(
        app.put_json(
            &format!("/urls/{}", link["id"]),
            &json!({"user_id": (user + 1) as f64}),
        )
        .await,
        400,
    )
    .await;
    assert!(other["details"]["user_id"].is_string(), "{other}");
}

#[tokio::test]
async fn update_changes_fields_moves_updated_at_and_logs_one_event_per_field() {
    let app = spawn_app().await;
    let user = app.create_user("up").await;
    let link = app.create_url(user, "https://example.com/old").await;
    let id = link["id"].as_i64().unwrap();
    let res = app
        .put_json(
            &format!("/urls/{id}"),
            &json!({"title": "New", "original_url": "https://example.com/new", "is_active": true}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let updated: Value = res.json().await.unwrap();
    assert_eq!(updated["title"], "New");
    assert_eq!(updated["original_url"], "https://example.com/new");
    assert!(updated["updated_at"].as_str().unwrap() > link["updated_at"].as_str().unwrap());
    let events: Vec<Value> = app
        .get(&format!("/events?url_id={id}&event_type=updated"))
        .await
        .json()
        .await
        .unwrap();
    let fields: HashSet<&str> = events
        .iter()
        .map(|e| e["details"]["field"].as_str().unwrap())
        .collect();
    // is_active did not change, so it has no event.
    assert_eq!(fields, HashSet::from(["title", "original_url"]));
    let title_event = events
        .iter()
        .find(|e| e["details"]["field"] == "title")
        .unwrap();
    assert_eq!(title_event["details"]["new_value"], "New");

    let err = error_of(
        app.put_json(&format!("/urls/{id}"), &json!({"is_active": "no"}))
            .await,
        400,
    )
    .await;
    assert!(err["details"]["is_active"].is_string());
    error_of(
        app.put_json(&format!("/urls/{id}"), &json!({"original_url": "nope"}))
            .await,
        400,
    )
    .await;
    error_of(
        app.put_json("/urls/987654", &json!({"title": "x"})).await,
        404,
    )
    .await;

    // The link read back whole and sent again: its own code and owner are no change, and no
    // change writes no event and leaves updated_at (docs/API.md).
    let res = app.put_json(&format!("/urls/{id}"), &updated).await;
    assert_eq!(res.status(), 200);
    let unchanged: Value = res.json().await.unwrap();
    assert_eq!(unchanged["updated_at"], updated["updated_at"]);
    let after: Vec<Value> = app
        .get(&format!("/events?url_id={id}&event_type=updated"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(after.len(), events.len(), "{after:?}");
    // Another code or owner is refused by name, not answered 200 with nothing changed.
    let other = app.create_user("up2").await;
    for (field, value) in [("short_code", json!("renamed1")), ("user_id", json!(other))] {
        let err = error_of(
            app.put_json(
                &format!("/urls/{id}"),
                &json!({field: value, "title": "Newer"}),
            )
            .await,
            400,
        )
        .await;
        assert!(err["details"][field].is_string(), "{err}");
    }
    let now: Value = app.get(&format!("/urls/{id}")).await.json().await.unwrap();
    assert_eq!(
        (&now["short_code"], &now["user_id"], &now["title"]),
        (&link["short_code"], &json!(user), &json!("New"))
    );
}

#[tokio::test]
async fn delete_hides_the_link_and_writes_a_deleted_event() {
    let app = spawn_app().await;
    let user = app.create_user("del").await;
    let link = app.create_url(user, "https://example.com/bye").await;
    let id = link["id"].as_i64().unwrap();
    assert_eq!(app.delete(&format!("/urls/{id}")).await.status(), 204);
    error_of(app.get(&format!("/urls/{id}")).await, 404).await;
    error_of(app.delete(&format!("/urls/{id}")).await, 404).await;
    let list: Vec<Value> = app.get("/urls").await.json().await.unwrap();
    assert!(list.is_empty());
    let code = link["short_code"].as_str().unwrap();
    error_of(app.get(&format!("/{code}")).await, 404).await;
    let events: Vec<Value> = app
        .get(&format!("/events?url_id={id}&event_type=deleted"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["details"], json!({"reason": "user_requested"}));
}

#[tokio::test]
async fn links_aliases_create_and_read() {
    let app = spawn_app().await;
    let user = app.create_user("alias").await;
    let res = app
        .post_json(
            "/links/create",
            &json!({"user_id": user, "original_url": "https://example.com/alias"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let link: Value = res.json().await.unwrap();
    let read: Value = app
        .get(&format!("/links/{}", link["id"]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(read["short_code"], link["short_code"]);
}

/// A create whose API vanished inside its transaction (no FIN: here a pooled session that
/// stops sending after claiming the key) holds its Idempotency-Key only until PostgreSQL's
/// idle-in-transaction timeout: the retry then creates, rather than waiting until TCP
/// keepalive notices, hours later.
#[tokio::test]
async fn a_key_a_silent_session_holds_is_freed_by_the_idle_timeout() {
    let app = spawn_app_with(|c| c.database.idle_in_transaction_timeout_ms = 500).await;
    let user = app.create_user("silent").await;
    let silent = app.state.db.get().await.unwrap();
    silent
        .batch_execute(
            "BEGIN; INSERT INTO idempotency_keys (scope_key, fingerprint) VALUES ('0:k-silent', 'x')",
        )
        .await
        .unwrap();
    let res = app
        .client
        .post(app.url("/urls"))
        .header("idempotency-key", "k-silent")
        .json(&json!({"user_id": user, "original_url": "https://example.com/silent"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    assert!(silent.is_closed() || silent.batch_execute("SELECT 1").await.is_err());
}

#[tokio::test]
async fn idempotency_key_replays_the_first_answer() {
    let app = spawn_app().await;
    let user = app.create_user("idem").await;
    let body = json!({"user_id": user, "original_url": "https://example.com/once"});
    let send = |b: Value| {
        app.client
            .post(app.url("/urls"))
            .header("idempotency-key", "k-1")
            .json(&b)
            .send()
    };
    let first: Value = send(body.clone()).await.unwrap().json().await.unwrap();
    let res = send(body.clone()).await.unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    let second: Value = res.json().await.unwrap();
    assert_eq!(first["id"], second["id"]);
    let list: Vec<Value> = app.get("/urls").await.json().await.unwrap();
    assert_eq!(list.len(), 1);
    // A first try that ended between its commit and its publish, after a lookup of the code
    // had cached it as missing: the replay publishes the link.
    let code = first["short_code"].as_str().unwrap();
    let _: () = app
        .state
        .redis
        .query(redis::cmd("SET").arg(app.state.keys.link(code)).arg("0"))
        .await
        .unwrap();
    assert_eq!(app.get(&format!("/{code}")).await.status(), 404);
    assert_eq!(send(body.clone()).await.unwrap().status(), 201);
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    let other = json!({"user_id": user, "original_url": "https://example.com/other"});
    error_of(send(other.clone()).await.unwrap(), 409).await;

    // A day later the key is free again: the same key makes a new link, with any body.
    let db = app.sql().await;
    db.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '24 hours 1 second'",
        &[],
    )
    .await
    .unwrap();
    let res = send(other).await.unwrap();
    assert_eq!(res.status(), 201);
    assert!(res.headers().get("idempotent-replayed").is_none());
    let third: Value = res.json().await.unwrap();
    assert_ne!(third["id"], first["id"]);
    assert_eq!(third["original_url"], "https://example.com/other");
    // And that new answer is what the key replays now.
    db.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '23 hours 59 minutes'",
        &[],
    )
    .await
    .unwrap();
    let res = send(body).await.unwrap();
    assert_eq!(
        res.status(),
        409,
        "a day not yet over: the key is the new link's"
    );
}

/// A keyed retry is answered with the link its first try made, however late: an expiry that has
/// passed since (the first answer was lost, the client retried later) is no reason to refuse it.
/// A new key with that expiry is refused.
#[tokio::test]
async fn a_keyed_retry_after_its_expiry_passed_gets_the_link() {
    let app = spawn_app().await;
    let user = app.create_user("idemexp").await;
    // Far enough ahead for the first try on a loaded machine, near enough to wait out.
    let expires = chrono::Utc::now() + chrono::Duration::seconds(5);
    let at = kurz_common::time::format(expires);
    let body =
        json!({"user_id": user, "original_url": "https://example.com/soon", "expires_at": at});
    let send = |key: &'static str| {
        app.client
            .post(app.url("/urls"))
            .header("idempotency-key", key)
            .json(&body)
            .send()
    };
    let first = send("k-exp").await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let past = kurz_common::time::parse(&at).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while chrono::Utc::now() <= past {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let res = send("k-exp").await.unwrap();
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(res.json::<Value>().await.unwrap()["id"], first["id"]);
    let err = error_of(send("k-new").await.unwrap(), 400).await;
    assert_eq!(err["details"]["expires_at"], "must be in the future");
}

/// The key's row lasts a day: a protected link's password must not be in it, in clear.
#[tokio::test]
async fn an_idempotency_key_keeps_no_password_in_clear() {
    let app = spawn_app().await;
    let user = app.create_user("idemp").await;
    let body =
        json!({"user_id": user, "original_url": "https://example.com/p", "password": "s3cret-Pw!"});
    let send = |b: Value| {
        app.client
            .post(app.url("/urls"))
            .header("idempotency-key", "k-p")
            .json(&b)
            .send()
    };
    let first = send(body.clone()).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let db = app.sql().await;
    let rows = db
        .query("SELECT fingerprint FROM idempotency_keys", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    let stored: String = rows[0].get(0);
    assert!(!stored.contains("s3cret"), "{stored}");
    let res = send(body.clone()).await.unwrap();
    assert_eq!(res.headers()["idempotent-replayed"], "true");
    assert_eq!(res.json::<Value>().await.unwrap()["id"], first["id"]);
    // Without the password it is another request.
    let open = json!({"user_id": user, "original_url": "https://example.com/p"});
    error_of(send(open).await.unwrap(), 409).await;
}

/// A keyed create keeps a digest of its body for the day, whatever the body carries: a body
/// padded with fields the create ignores must not make each key cost a megabyte of storage.
/// The pad still counts: another pad is another request.
#[tokio::test]
async fn an_idempotency_key_keeps_a_digest_of_any_body_not_the_body() {
    let app = spawn_app().await;
    let user = app.create_user("idempad").await;
    let pad = "x".repeat(512 * 1024);
    let body = json!({"user_id": user, "original_url": "https://example.com/pad", "pad": pad});
    let send = |b: &Value| {
        app.client
            .post(app.url("/urls"))
            .header("idempotency-key", "k-pad")
            .json(b)
            .send()
    };
    let first = send(&body).await.unwrap();
    assert_eq!(first.status(), 201);
    let first: Value = first.json().await.unwrap();
    let stored: i32 = app
        .sql()
        .await
        .query_one(
            "SELECT octet_length(fingerprint) FROM idempotency_keys",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(stored <= 64, "{stored} bytes kept for one key");
    let again = send(&body).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
    let other = json!({"user_id": user, "original_url": "https://example.com/pad", "pad": "y"});
    error_of(send(&other).await.unwrap(), 409).await;

    // A row an API before the digest wrote holds the body's text: its retry is still that
    // create, and another body still is not.
    let legacy = json!({"user_id": user, "original_url": "https://example.com/pad"});
    app.sql()
        .await
        .execute(
            "UPDATE idempotency_keys SET fingerprint = $1",
            &[&legacy.to_string()],
        )
        .await
        .unwrap();
    let again = send(&legacy).await.unwrap();
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.json::<Value>().await.unwrap()["id"], first["id"]);
    error_of(send(&other).await.unwrap(), 409).await;
}

#[tokio::test]
async fn concurrent_creates_with_one_key_make_one_link_and_all_answer_it() {
    let app = spawn_app().await;
    let user = app.create_user("idemc").await;
    let body = json!({"user_id": user, "original_url": "https://example.com/race"});
    let sends = (0..8).map(|_| {
        app.client
            .post(app.url("/urls"))
            .header("idempotency-key", "race-1")
            .json(&body)
            .send()
    });
    let mut ids = Vec::new();
    for res in futures_util::future::join_all(sends).await {
        let res = res.unwrap();
        // The ones that met a running first attempt waited for it rather than failing.
        assert_eq!(res.status(), 201);
        let link: Value = res.json().await.unwrap();
        ids.push(link["id"].clone());
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    let list: Vec<Value> = app.get("/urls").await.json().await.unwrap();
    assert_eq!(list.len(), 1);
}

#[tokio::test]
async fn expires_at_is_accepted_shown_and_validated() {
    let app = spawn_app().await;
    let user = app.create_user("exp").await;
    let res = app
        .post_json("/urls", &json!({"user_id": user, "original_url": "https://example.com/e", "expires_at": "2099-01-02T03:04:05"}))
        .await;
    let link: Value = res.json().await.unwrap();
    assert_eq!(link["expires_at"], "2099-01-02T03:04:05");
    for bad in [json!("soon"), json!("2001-01-01T00:00:00"), json!(5)] {
        let res = app.post_json("/urls", &json!({"user_id": user, "original_url": "https://example.com/e", "expires_at": bad})).await;
        assert!(error_of(res, 400).await["details"]["expires_at"].is_string());
    }

    // The link has expired since: read, changed and written back whole, its past expiry is no
    // change and no error; a past expiry it did not have is still refused.
    let id = link["id"].as_i64().unwrap();
    app.sql()
        .await
        .execute(
            "UPDATE urls SET expires_at = '2001-01-01T00:00:00.25Z' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let mut whole: Value = app.get(&format!("/urls/{id}")).await.json().await.unwrap();
    assert_eq!(whole["expires_at"], "2001-01-01T00:00:00");
    whole["title"] = json!("renamed after it expired");
    let put = |body: Value| {
        app.client
            .put(app.url(&format!("/urls/{id}")))
            .json(&body)
            .send()
    };
    let res = put(whole.clone()).await.unwrap();
    assert_eq!(res.status(), 200);
    let saved: Value = res.json().await.unwrap();
    assert_eq!(saved["title"], "renamed after it expired");
    assert_eq!(saved["expires_at"], "2001-01-01T00:00:00");
    whole["expires_at"] = json!("2002-02-02T00:00:00");
    let res = app.put_json(&format!("/urls/{id}"), &whole).await;
    assert!(error_of(res, 400).await["details"]["expires_at"].is_string());
}

#[tokio::test]
async fn tags_are_normalised_edited_filtered_and_counted() {
    let app = spawn_app().await;
    let user = app.create_user("tg").await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/1", "tags": [" Launch", "launch", "Q3"]}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let a: Value = res.json().await.unwrap();
    assert_eq!(a["tags"], json!(["launch", "q3"]));
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/2", "tags": ["launch"]}),
        )
        .await;
    let b: Value = res.json().await.unwrap();
    let plain = app.create_url(user, "https://example.com/3").await;
    assert_eq!(plain["tags"], json!([]));
    let (a_id, b_id) = (a["id"].as_i64().unwrap(), b["id"].as_i64().unwrap());
    let got: Value = app
        .get(&format!("/urls/{a_id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["tags"], json!(["launch", "q3"]), "read back");

    let ids = |v: Vec<Value>| -> Vec<i64> { v.iter().map(|l| l["id"].as_i64().unwrap()).collect() };
    let launch: Vec<Value> = app.get("/urls?tag=Launch").await.json().await.unwrap();
    assert_eq!(ids(launch), vec![a_id, b_id]);
    let both: Vec<Value> = app
        .get("/urls?tag=launch&tag=q3")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ids(both), vec![a_id], "every tag must match");
    let none: Vec<Value> = app.get("/urls?tag=nothing").await.json().await.unwrap();
    assert!(none.is_empty());
    error_of(app.get("/urls?tag=a%2Cb").await, 400).await;

    let res = app
        .put_json(&format!("/urls/{b_id}"), &json!({"tags": ["q3", "Q4"]}))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.json::<Value>().await.unwrap()["tags"],
        json!(["q3", "q4"])
    );
    let updated: Vec<Value> = app
        .get(&format!("/events?url_id={b_id}&event_type=updated"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        updated[0]["details"],
        json!({"field": "tags", "new_value": ["q3", "q4"]})
    );
    // Edits that keep some tags: one dropped, then one added beside the kept one.
    for (tags, want) in [
        (json!(["Q4"]), json!(["q4"])),
        (json!(["q4", "q3"]), json!(["q3", "q4"])),
    ] {
        let res = app
            .put_json(&format!("/urls/{b_id}"), &json!({ "tags": tags }))
            .await;
        assert_eq!(res.status(), 200, "{tags}");
        assert_eq!(res.json::<Value>().await.unwrap()["tags"], want);
    }

    let counts: Value = app.get("/tags").await.json().await.unwrap();
    assert_eq!(
        counts,
        json!([{"tag": "launch", "links": 1}, {"tag": "q3", "links": 2}, {"tag": "q4", "links": 1}])
    );
    assert_eq!(app.delete(&format!("/urls/{a_id}")).await.status(), 204);
    let counts: Value = app.get("/tags").await.json().await.unwrap();
    assert_eq!(
        counts,
        json!([{"tag": "q3", "links": 1}, {"tag": "q4", "links": 1}]),
        "deleted links drop out"
    );

    for bad in [json!("launch"), json!([1]), json!([""]), json!(["a,b"])] {
        let res = app
            .post_json(
                "/urls",
                &json!({"user_id": user, "original_url": "https://example.com/x", "tags": bad}),
            )
            .await;
        assert!(
            error_of(res, 400).await["details"]["tags"].is_string(),
            "{bad}"
        );
    }
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/x", "short_code": "tags"}),
        )
        .await;
    error_of(res, 400).await;
}

#[tokio::test]
async fn a_protected_link_comes_back_from_its_export_switched_off() {
    let app = spawn_app().await;
    let user = app.create_user("prot").await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/hidden", "short_code": "locked2", "password": "open sesame"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let locked: Value = res.json().await.unwrap();
    app.create_url(user, "https://example.com/open").await;
    let body = app
        .get(&format!("/urls/export?user_id={user}"))
        .await
        .bytes()
        .await
        .unwrap()
        .to_vec();

    // Elsewhere there is no password to keep: switched off, and named.
    let fresh = spawn_app().await;
    fresh.create_user("prot").await;
    let res = fresh.upload("/urls/bulk", body.clone()).await;
    assert_eq!(res.status(), 201);
    let report: Value = res.json().await.unwrap();
    assert_eq!(report["needs_password"], json!(["locked2"]), "{report}");
    let links: Vec<Value> = fresh.get("/urls").await.json().await.unwrap();
    assert_eq!(
        links
            .iter()
            .map(|l| l["is_active"].clone())
            .collect::<Vec<_>>(),
        [json!(false), json!(true)]
    );
    error_of(fresh.get("/locked2").await, 404).await;

    // Over the same rows the stored password stays, and so does the link.
    let res = app.upload("/urls/bulk", body).await;
    assert_eq!(res.status(), 201);
    assert_eq!(
        res.json::<Value>().await.unwrap()["needs_password"],
        json!([])
    );
    let kept: Value = app
        .get(&format!("/urls/{}", locked["id"]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (&kept["is_active"], &kept["has_password"]),
        (&json!(true), &json!(true))
    );
}

/// Links the export tests read: ~1 KiB a row, so `n` of them make a file several times what
/// the kernel buffers between the server and a client with a small receive buffer that has
/// stopped reading (ids 1..=n, codes `ex000001`…).
async fn wide_links(app: &TestApp, user: i64, n: i64) {
    use std::fmt::Write as _;
    let pad = "p".repeat(1000);
    let mut csv = String::from("id,user_id,short_code,original_url\n");
    for i in 1..=n {
        writeln!(csv, "{i},{user},ex{i:06},https://example.com/{pad}/{i}").unwrap();
    }
    let res = app.upload("/urls/bulk", csv.into_bytes()).await;
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
}

/// Starts `GET <path>` on a connection with a 16 KiB receive buffer and reads until the answer's
/// head is in: the bytes read so far, and the connection, to read the rest at the test's pace.
async fn start_export(app: &TestApp, path: &str) -> (tokio::net::TcpStream, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let addr = app.base.trim_start_matches("http://").parse().unwrap();
    let mut conn = socket.connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: kurz\r\nConnection: close\r\n\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await.unwrap();
        assert!(n > 0, "the export closed before its head");
        raw.extend_from_slice(&buf[..n]);
    }
    (conn, raw)
}

/// The head (lower-cased) and the body of a whole HTTP/1.1 answer to an export, the body
/// `None` when its chunked message never ended (the server cut it short).
fn export_answer(raw: &[u8]) -> (String, Option<Vec<u8>>) {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&raw[..head_end]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"), "{head}");
    (head, dechunk(&raw[head_end..]))
}

/// An export is sent as it is read, a page at a time, each page after the last id written:
/// an admin's export of millions of links holds a page in memory, not the file, and a link
/// deleted or created meanwhile shifts no page.
#[tokio::test]
async fn an_export_is_sent_as_it_is_read_and_writes_every_surviving_link_once() {
    use tokio::io::AsyncReadExt;
    let app = spawn_app().await;
    let user = app.create_user("exp").await;
    const LINKS: i64 = 12_000;
    wide_links(&app, user, LINKS).await;
    let (mut conn, mut raw) = start_export(&app, &format!("/urls/export?user_id={user}")).await;
    // The head is here, so the first page was read; the last pages cannot have been.
    let (first_page_link, last_page_link) = (5, LINKS - 10);
    for id in [first_page_link, last_page_link] {
        assert_eq!(app.delete(&format!("/urls/{id}")).await.status(), 204);
    }
    let created = app.create_url(user, "https://example.com/during").await["id"]
        .as_i64()
        .unwrap();
    conn.read_to_end(&mut raw).await.unwrap();

    let body = export_answer(&raw).1.expect("the whole chunked message");
    let mut reader = csv::Reader::from_reader(body.as_slice());
    let ids: Vec<i64> = reader
        .records()
        .map(|r| r.unwrap()[0].parse().unwrap())
        .collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "in id order, each once"
    );
    let mut expected: Vec<i64> = (1..=LINKS).filter(|&id| id != last_page_link).collect();
    expected.push(created);
    assert_eq!(
        ids, expected,
        "the link deleted once its page was sent is in, the one deleted before is not, the new one is"
    );
}

/// The pages after the first are held to `limits.bulk_request_timeout_ms` too: a client that
/// reads slowly gets a body cut short there (a chunked message that never ends), and cannot
/// hold a stopping process past the grace period sized for that bound.
#[tokio::test]
async fn an_export_read_past_its_deadline_is_cut_short() {
    use tokio::io::AsyncReadExt;
    let app = crate::helpers::spawn_app_with(|c| c.limits.bulk_request_timeout_ms = 3_000).await;
    let user = app.create_user("slow").await;
    // Written by SQL: an upload of them is held to the same 3 s deadline, which a loaded
    // machine can miss.
    app.sql()
        .await
        .execute(
            "INSERT INTO urls (user_id, short_code, original_url) \
             SELECT $1, 'ex' || lpad(i::text, 6, '0'), \
                    'https://example.com/' || repeat('p', 1000) || '/' || i \
             FROM generate_series(1, 12000) i",
            &[&user],
        )
        .await
        .unwrap();
    let (mut conn, mut raw) = start_export(&app, &format!("/urls/export?user_id={user}")).await;
    // Past the deadline, counted from the request, before reading on.
    tokio::time::sleep(std::time::Duration::from_millis(3_500)).await;
    // However the server ends it (a close, or a reset), the message must not be whole.
    let _ = conn.read_to_end(&mut raw).await;
    let (_, body) = export_answer(&raw);
    assert!(body.is_none(), "a cut export must not read as a whole file");
}

/// The body of a complete `Transfer-Encoding: chunked` message; `None` when it stops before
/// its last chunk.
fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line = raw.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&raw[..line]).unwrap();
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        raw = &raw[line + 2..];
        if size == 0 {
            return Some(body);
        }
        if raw.len() < size + 2 {
            return None;
        }
        body.extend_from_slice(&raw[..size]);
        assert_eq!(&raw[size..size + 2], b"\r\n", "a chunk ends its line");
        raw = &raw[size + 2..];
    }
}

#[tokio::test]
async fn the_export_lists_what_a_user_owns_and_imports_back() {
    let app = spawn_app().await;
    let user = app.create_user("exp").await;
    let other = app.create_user("other").await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/e1", "title": "Say \"hi\", then go", "tags": ["b", "a"], "redirect_type": 307, "max_visits": 40}),
        )
        .await;
    let first: Value = res.json().await.unwrap();
    let second = app.create_url(user, "https://example.com/e2").await;
    app.create_url(other, "https://example.com/not-mine").await;
    let gone = app.create_url(user, "https://example.com/deleted").await;
    assert_eq!(
        app.delete(&format!("/urls/{}", gone["id"])).await.status(),
        204
    );
    let code = first["short_code"].as_str().unwrap();
    assert_eq!(app.get(&format!("/{code}")).await.status(), 307);
    app.clicks(first["id"].as_i64().unwrap()).await;

    let res = app
        .get(&format!("/urls/export?format=csv&user_id={user}"))
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/csv; charset=utf-8");
    let body = res.bytes().await.unwrap().to_vec();
    let mut reader = csv::Reader::from_reader(body.as_slice());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header[..4], ["id", "user_id", "short_code", "original_url"]);
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2, "live links of that user only");
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(&rows[0][col("short_code")], code);
    assert_eq!(&rows[0][col("title")], "Say \"hi\", then go");
    assert_eq!(&rows[0][col("tags")], "a;b");
    assert_eq!(&rows[0][col("redirect_type")], "307");
    assert_eq!(&rows[0][col("max_visits")], "40");
    assert_eq!(&rows[1][col("max_visits")], "");
    assert_eq!(&rows[0][col("clicks")], "1");
    assert_eq!(
        &rows[1][col("short_code")],
        second["short_code"].as_str().unwrap()
    );
    error_of(app.get("/urls/export?format=xlsx").await, 400).await;

    // Into a fresh instance through the bulk import: same codes, targets, titles.
    let fresh = spawn_app().await;
    let owner = fresh.create_user("exp").await;
    assert_eq!(owner, user, "fresh databases number users alike");
    let res = fresh.upload("/urls/bulk", body).await;
    assert!(res.status().is_success(), "{}", res.text().await.unwrap());
    let links: Vec<Value> = fresh.get("/urls").await.json().await.unwrap();
    let codes: Vec<&str> = links
        .iter()
        .map(|l| l["short_code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, vec![code, second["short_code"].as_str().unwrap()]);
    assert_eq!(links[0]["title"], "Say \"hi\", then go");
    assert_eq!(links[0]["original_url"], "https://example.com/e1");
    assert_eq!(links[0]["redirect_type"], 307);
    assert_eq!(links[0]["max_visits"], 40);
    assert_eq!(links[1]["max_visits"], Value::Null);
    assert_eq!(links[0]["tags"], json!(["a", "b"]));
    assert_eq!(links[1]["tags"], json!([]));
    assert_eq!(fresh.get(&format!("/{code}")).await.status(), 307);
    // A bad status or tag in a file names its row and column.
    let bad = "user_id,short_code,original_url,redirect_type\n1,badrt1,https://example.com/b,303\n";
    let err = error_of(fresh.upload("/urls/bulk", bad.into()).await, 400).await;
    assert_eq!(err["details"]["column"], "redirect_type");
    let bad = "user_id,short_code,original_url,tags\n1,badtg1,https://example.com/b,ok;a|b\n";
    let err = error_of(fresh.upload("/urls/bulk", bad.into()).await, 400).await;
    assert_eq!(err["details"]["column"], "tags");
    let bad = "user_id,short_code,original_url,max_visits\n1,badmv1,https://example.com/b,0\n";
    let err = error_of(fresh.upload("/urls/bulk", bad.into()).await, 400).await;
    assert_eq!(err["details"]["column"], "max_visits");
}

/// Expired idempotency keys go in batches until none is left, fresh ones stay, and a row
/// another session holds is skipped rather than waited for: two replicas pruning at once, or
/// a prune beside a claim, never queue behind each other.
#[tokio::test]
async fn expired_idempotency_keys_are_pruned_in_batches_skipping_held_rows() {
    let app = spawn_app().await;
    let db = app.sql().await;
    db.execute(
        "INSERT INTO idempotency_keys (scope_key, fingerprint, created_at) \
         SELECT 'old' || i, 'f', now() - interval '25 hours' FROM generate_series(1, 250) i",
        &[],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO idempotency_keys (scope_key, fingerprint) VALUES ('fresh', 'f')",
        &[],
    )
    .await
    .unwrap();
    // Another session holds one expired row.
    let mut holder = app.sql().await;
    let held = holder.transaction().await.unwrap();
    held.execute(
        "SELECT 1 FROM idempotency_keys WHERE scope_key = 'old7' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let (_tx, stop) = tokio::sync::watch::channel(false);
    let pooled = app.state.db.get().await.unwrap();
    let pruned = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        kurz_api::idempotency::prune(&pooled, 100, &stop),
    )
    .await
    .expect("the prune waited on a held row")
    .unwrap();
    assert_eq!(pruned, 249);
    let left: Vec<String> = db
        .query("SELECT scope_key FROM idempotency_keys ORDER BY 1", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["fresh", "old7"]);
    held.rollback().await.unwrap();
    assert_eq!(
        kurz_api::idempotency::prune(&pooled, 100, &stop)
            .await
            .unwrap(),
        1
    );
}

/// An account may carry millions of tags (20 a link, links without a cap): `GET /tags` is a list
/// like the others, cut at `limits.list_limit` unless paginated, with its total and links.
#[tokio::test]
async fn tags_are_listed_in_pages_and_stop_at_the_list_limit() {
    let app = spawn_app_with(|c| c.limits.list_limit = 2).await;
    let user = app.create_user("tagpages").await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "https://example.com/t", "tags": ["c", "a", "b"]}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let res = app.get("/tags").await;
    assert_eq!(res.headers()["x-total-count"], "3");
    assert!(res.headers()["link"]
        .to_str()
        .unwrap()
        .contains("rel=\"next\""));
    let first: Value = res.json().await.unwrap();
    assert_eq!(
        first,
        json!([{"tag": "a", "links": 1}, {"tag": "b", "links": 1}])
    );
    let res = app.get("/tags?page=2&per_page=2").await;
    assert_eq!(res.headers()["x-total-count"], "3");
    let second: Value = res.json().await.unwrap();
    assert_eq!(second, json!([{"tag": "c", "links": 1}]));
    error_of(app.get("/tags?per_page=0").await, 400).await;
}
