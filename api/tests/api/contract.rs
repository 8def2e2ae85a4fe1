//! The six edge cases of the evaluation contract.

use crate::helpers::{error_of, spawn_app};
use serde_json::{json, Value};

#[tokio::test]
async fn same_url_twice_makes_two_codes() {
    let app = spawn_app().await;
    let user = app.create_user("twice").await;
    let a = app.create_url(user, "https://example.com/same").await;
    let b = app.create_url(user, "https://example.com/same").await;
    assert_ne!(a["short_code"], b["short_code"]);
    assert_ne!(a["id"], b["id"]);
}

#[tokio::test]
async fn every_redirect_is_recorded() {
    let app = spawn_app().await;
    let user = app.create_user("every").await;
    let link = app.create_url(user, "https://example.com/every").await;
    let code = link["short_code"].as_str().unwrap().to_owned();
    let mut tasks = Vec::new();
    for _ in 0..25 {
        let (client, url) = (app.client.clone(), app.url(&format!("/{code}")));
        tasks.push(tokio::spawn(async move {
            client.get(url).send().await.unwrap().status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 302);
    }
    let clicks = app.clicks(link["id"].as_i64().unwrap()).await;
    assert_eq!(clicks.len(), 25);
    assert_eq!(clicks[0]["details"]["short_code"], code.as_str());
    assert_eq!(
        clicks[0]["details"]["original_url"],
        "https://example.com/every"
    );
    assert_eq!(clicks[0]["user_id"], user);
}

#[tokio::test]
async fn unknown_user_is_404() {
    let app = spawn_app().await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": 777777, "original_url": "https://example.com"}),
        )
        .await;
    error_of(res, 404).await;
}

#[tokio::test]
async fn inactive_link_neither_redirects_nor_records() {
    let app = spawn_app().await;
    let user = app.create_user("inactive").await;
    let link = app.create_url(user, "https://example.com/off").await;
    app.put_json(
        &format!("/urls/{}", link["id"]),
        &json!({"is_active": false}),
    )
    .await;
    let res = app
        .get(&format!("/{}", link["short_code"].as_str().unwrap()))
        .await;
    error_of(res, 404).await;
    assert!(app.clicks(link["id"].as_i64().unwrap()).await.is_empty());
}

#[tokio::test]
async fn invalid_url_or_non_object_details_is_400() {
    let app = spawn_app().await;
    let user = app.create_user("inv").await;
    let res = app
        .post_json(
            "/urls",
            &json!({"user_id": user, "original_url": "not a url"}),
        )
        .await;
    error_of(res, 400).await;
    let url_id = app.create_url(user, "https://example.com/ok").await["id"].clone();
    let res = app
        .post_json(
            "/events",
            &json!({"url_id": url_id, "event_type": "click", "details": "oops"}),
        )
        .await;
    error_of(res, 400).await;
}

#[tokio::test]
async fn body_that_is_not_a_json_object_is_400() {
    let app = spawn_app().await;
    for body in ["[]", "\"x\"", "nope", ""] {
        let err: Value =
            error_of(app.post_raw("/users", body, "application/json").await, 400).await;
        assert_eq!(err["error"], "bad_request");
    }
}
