use crate::helpers::{error_of, spawn_app};
use serde_json::{json, Value};

#[tokio::test]
async fn create_user_returns_201_with_the_contract_shape() {
    let app = spawn_app().await;
    let res = app
        .post_json(
            "/users",
            &json!({"username": "alice", "email": "alice@example.com"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let user: Value = res.json().await.unwrap();
    assert!(user["id"].as_i64().unwrap() > 0);
    assert_eq!(user["username"], "alice");
    assert_eq!(user["email"], "alice@example.com");
    let ts = user["created_at"].as_str().unwrap();
    assert_eq!(ts.len(), 19, "ISO 8601 to the second without zone: {ts}");
    assert_eq!(&ts[10..11], "T");
}

#[tokio::test]
async fn duplicate_username_or_email_is_409() {
    let app = spawn_app().await;
    app.create_user("bob").await;
    let res = app
        .post_json(
            "/users",
            &json!({"username": "bob", "email": "other@example.com"}),
        )
        .await;
    assert_eq!(error_of(res, 409).await["error"], "conflict");
    let res = app
        .post_json(
            "/users",
            &json!({"username": "bobby", "email": "BOB@example.com"}),
        )
        .await;
    assert_eq!(error_of(res, 409).await["error"], "conflict");
}

#[tokio::test]
async fn wrong_types_missing_fields_and_bad_emails_are_400_naming_each_field() {
    let app = spawn_app().await;
    let res = app
        .post_json("/users", &json!({"username": 42, "email": "x@example.com"}))
        .await;
    let err = error_of(res, 400).await;
    assert_eq!(err["error"], "validation_error");
    assert!(err["details"]["username"].is_string());
    let err = error_of(app.post_json("/users", &json!({})).await, 400).await;
    assert!(
        err["details"]["username"].is_string() && err["details"]["email"].is_string(),
        "{err}"
    );
    for bad in ["not-an-email", "a@b", "a b@example.com", "@example.com"] {
        let err = error_of(
            app.post_json("/users", &json!({"username": "c", "email": bad}))
                .await,
            400,
        )
        .await;
        assert!(err["details"]["email"].is_string(), "{bad}: {err}");
    }
}

#[tokio::test]
async fn get_list_update_and_delete_a_user() {
    let app = spawn_app().await;
    let id = app.create_user("carol").await;
    let res = app.get(&format!("/users/{id}")).await;
    assert_eq!(res.json::<Value>().await.unwrap()["username"], "carol");

    let res = app
        .put_json(
            &format!("/users/{id}"),
            &json!({"email": "carol@new.example"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let user: Value = res.json().await.unwrap();
    assert_eq!(user["email"], "carol@new.example");
    assert_eq!(user["username"], "carol");

    let other = app.create_user("dave").await;
    let res = app
        .put_json(&format!("/users/{other}"), &json!({"username": "carol"}))
        .await;
    error_of(res, 409).await;
    let res = app
        .put_json(&format!("/users/{other}"), &json!({"username": null}))
        .await;
    error_of(res, 400).await;

    let list: Vec<Value> = app.get("/users").await.json().await.unwrap();
    assert_eq!(list.len(), 2);
    assert!(list[0]["id"].as_i64() < list[1]["id"].as_i64());

    assert_eq!(app.delete(&format!("/users/{id}")).await.status(), 204);
    error_of(app.get(&format!("/users/{id}")).await, 404).await;
    error_of(app.delete(&format!("/users/{id}")).await, 404).await;
    let list: Vec<Value> = app.get("/users").await.json().await.unwrap();
    assert_eq!(list.len(), 1);
}

#[tokio::test]
async fn unknown_or_non_numeric_user_ids_are_404() {
    let app = spawn_app().await;
    for path in [
        "/users/999999",
        "/users/abc",
        "/users/0",
        "/users/999999/urls",
    ] {
        assert_eq!(
            error_of(app.get(path).await, 404).await["error"],
            "not_found",
            "{path}"
        );
    }
    error_of(
        app.put_json("/users/999999", &json!({"username": "x"}))
            .await,
        404,
    )
    .await;
    // A name someone holds changes nothing: the user in the path is not there.
    app.create_user("held").await;
    let gone = app.create_user("gone").await;
    assert_eq!(app.delete(&format!("/users/{gone}")).await.status(), 204);
    for path in ["/users/999999".to_owned(), format!("/users/{gone}")] {
        error_of(app.put_json(&path, &json!({"username": "held"})).await, 404).await;
    }
}

#[tokio::test]
async fn deleting_a_user_keeps_their_links_with_user_id() {
    let app = spawn_app().await;
    let id = app.create_user("erin").await;
    let link = app.create_url(id, "https://example.com/keep").await;
    assert_eq!(app.delete(&format!("/users/{id}")).await.status(), 204);
    let kept: Value = app
        .get(&format!("/urls/{}", link["id"]))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(kept["user_id"], id);
}

#[tokio::test]
async fn a_users_links_are_listed() {
    let app = spawn_app().await;
    let a = app.create_user("fay").await;
    let b = app.create_user("gus").await;
    app.create_url(a, "https://example.com/1").await;
    app.create_url(a, "https://example.com/2").await;
    app.create_url(b, "https://example.com/3").await;
    let res = app.get(&format!("/users/{a}/urls")).await;
    assert_eq!(res.headers()["x-total-count"], "2");
    let links: Vec<Value> = res.json().await.unwrap();
    assert!(links.iter().all(|l| l["user_id"] == a));
    // The `tag` filter of `GET /urls` holds here too: never dropped without a word.
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": a, "original_url": "https://example.com/4", "tags": ["launch"]}),
        )
        .await;
    assert_eq!(res.status(), 201);
    let res = app.get(&format!("/users/{a}/urls?tag=Launch")).await;
    assert_eq!(res.headers()["x-total-count"], "1");
    let links: Vec<Value> = res.json().await.unwrap();
    assert_eq!(links[0]["original_url"], "https://example.com/4");
    error_of(app.get(&format!("/users/{a}/urls?tag=%20")).await, 400).await;
}

#[tokio::test]
async fn pagination_sets_total_and_link_headers_and_refuses_bad_parameters() {
    let app = spawn_app().await;
    for i in 0..5 {
        app.create_user(&format!("p{i}")).await;
    }
    let res = app.get("/users?page=2&per_page=2").await;
    assert_eq!(res.headers()["x-total-count"], "5");
    let link = res.headers()["link"].to_str().unwrap().to_owned();
    assert!(link.contains("page=3&per_page=2>; rel=\"next\""), "{link}");
    assert!(link.contains("page=1&per_page=2>; rel=\"prev\""), "{link}");
    let page: Vec<Value> = res.json().await.unwrap();
    assert_eq!(page.len(), 2);
    let last: Vec<Value> = app
        .get("/users?page=3&per_page=2")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(last.len(), 1);
    let only_page: Vec<Value> = app.get("/users?page=1").await.json().await.unwrap();
    assert_eq!(only_page.len(), 5);
    for bad in [
        "page=abc",
        "per_page=0",
        "page=0",
        "per_page=1001",
        "page=-1",
        "per_page=x",
    ] {
        let err = error_of(app.get(&format!("/users?{bad}")).await, 400).await;
        assert_eq!(err["error"], "bad_request", "{bad}");
    }
}

#[tokio::test]
async fn unpaginated_lists_stop_at_the_list_limit() {
    let app = crate::helpers::spawn_app_with(|c| c.limits.list_limit = 3).await;
    for i in 0..4 {
        app.create_user(&format!("l{i}")).await;
    }
    let res = app.get("/users").await;
    assert_eq!(res.headers()["x-total-count"], "4");
    assert_eq!(res.json::<Vec<Value>>().await.unwrap().len(), 3);
}

/// A username or email stored before invisible characters were refused stays the account's:
/// sent back unchanged in a PUT (a client sends back what it read), it is kept, not refused;
/// another such value is still refused.
#[tokio::test]
async fn a_name_stored_before_a_rule_refused_it_can_be_sent_back() {
    let app = spawn_app().await;
    let id = app.create_user("legacy").await;
    let legacy = "leg\u{200b}acy";
    app.sql()
        .await
        .execute(
            "UPDATE users SET username = $1 WHERE id = $2",
            &[&legacy, &id],
        )
        .await
        .unwrap();
    let res = app
        .put_json(
            &format!("/users/{id}"),
            &json!({"username": legacy, "email": "moved@example.com"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let user: Value = res.json().await.unwrap();
    assert_eq!(
        (user["username"].as_str(), user["email"].as_str()),
        (Some(legacy), Some("moved@example.com"))
    );
    let err = error_of(
        app.put_json(
            &format!("/users/{id}"),
            &json!({"username": "new\u{200b}one"}),
        )
        .await,
        400,
    )
    .await;
    assert!(err["details"]["username"].is_string(), "{err}");
}
