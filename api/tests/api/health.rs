use crate::helpers::spawn_app;
use serde_json::Value;

#[tokio::test]
async fn liveness_answers_ok_on_both_paths() {
    let app = spawn_app().await;
    for path in ["/health", "/health/live"] {
        let res = app.get(path).await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.json::<Value>().await.unwrap(),
            serde_json::json!({"status": "ok"})
        );
    }
}

#[tokio::test]
async fn readiness_reports_database_and_cache() {
    let app = spawn_app().await;
    for path in ["/ready", "/health/ready"] {
        let res = app.get(path).await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.json::<Value>().await.unwrap(),
            serde_json::json!({"status": "ready", "db": "ok", "cache": "ok"})
        );
    }
}

#[tokio::test]
async fn metrics_are_on_the_admin_listener_only() {
    let app = spawn_app().await;
    app.get("/health").await;
    let text = app.metrics_text().await;
    assert!(
        text.contains(
            "kurz_api_requests_total{method=\"GET\",route=\"/health\",status_class=\"2xx\"} 1"
        ),
        "{text}"
    );
    assert!(text.contains("kurz_api_db_pool_connections"));
    assert!(text.contains("kurz_api_build_info"));
    let public = app.get("/metrics").await;
    assert_eq!(public.status(), 404);
}

#[tokio::test]
async fn request_id_is_echoed_or_generated() {
    let app = spawn_app().await;
    let res = app
        .client
        .get(app.url("/health"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-me-42");
    let res = app.get("/health").await;
    assert_eq!(res.headers()["x-request-id"].len(), 32);
}
