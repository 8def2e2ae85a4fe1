//! An edge whose Redis key schema differs from the API's answers no redirect from Redis: it
//! forwards them, so they are still answered and counted once, and says so in a metric.

use crate::harness::{Options, Stack};
use serde_json::Value;

#[tokio::test]
async fn an_edge_with_other_partitions_than_the_api_forwards_every_redirect() {
    // The APIs use 16 partitions (the default); this edge is told 8.
    let stack = Stack::start(Options {
        proxy_partitions: Some(8),
        ..Options::default()
    });
    let (id, code) = stack.link("https://example.com/keys").await;
    for _ in 0..4 {
        let res = stack.get(&format!("/{code}")).await;
        assert_eq!(res.status(), 302);
        assert_eq!(res.headers()["location"], "https://example.com/keys");
    }
    assert_eq!(
        super::api_redirects(&stack).await,
        4.0,
        "every redirect went to the API, none was answered from mismatched keys"
    );
    let clicks: Vec<Value> = stack
        .get(&format!("/events?url_id={id}&event_type=click"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(clicks.len(), 4, "each recorded once, by the API");
    let matched = stack
        .metric(stack.admin_port, "kurz_proxy_key_schema_match", &[])
        .await;
    assert_eq!(matched, 0.0);
    assert!(
        stack.proxy_log().contains("redis key schema differs"),
        "the mismatch is logged"
    );
}

#[tokio::test]
async fn an_edge_with_the_api_key_schema_answers_from_redis() {
    let stack = Stack::start(Options::default());
    let (_, code) = stack.link("https://example.com/same").await;
    assert_eq!(stack.get(&format!("/{code}")).await.status(), 302);
    assert_eq!(super::api_redirects(&stack).await, 0.0);
    let matched = stack
        .metric(stack.admin_port, "kurz_proxy_key_schema_match", &[])
        .await;
    assert_eq!(matched, 1.0);
}
