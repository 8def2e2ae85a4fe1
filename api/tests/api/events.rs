use crate::helpers::{error_of, spawn_app};
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
