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

/// A rolling upgrade that changes the fingerprint: while an API of the other release still
/// runs (and reads the click streams), the edge forwards every redirect, though the APIs of its
/// own release keep publishing theirs; once the other release is gone, it answers again.
#[tokio::test]
async fn an_api_of_another_release_still_running_keeps_the_edge_forwarding() {
    let stack = Stack::start(Options {
        redis_cluster: Vec::new(),
        ..Options::default()
    });
    let (id, code) = stack.link("https://example.com/rolling").await;
    assert_eq!(stack.get(&format!("/{code}")).await.status(), 302);
    assert_eq!(super::api_redirects(&stack).await, 0.0);

    // An API of the other release: it publishes its own fingerprint as often as ours do.
    let set = format!("{}:schemas", stack.prefix);
    let client = redis::Client::open(stack.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let other =
        "kurz-keys/1 partitions=16 partition-hash=fnv1a32 link-entry=4 click-fields=3 visits=1";
    let publish_other = {
        let (set, mut conn) = (set.clone(), conn.clone());
        tokio::spawn(async move {
            loop {
                let (secs, micros): (i64, i64) =
                    redis::cmd("TIME").query_async(&mut conn).await.unwrap();
                let now_ms = secs * 1000 + micros / 1000;
                let _: () = redis::cmd("ZADD")
                    .arg(&set)
                    .arg(now_ms)
                    .arg(other)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
    };
    let matched = || stack.metric(stack.admin_port, "kurz_proxy_key_schema_match", &[]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while matched().await != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            stack.proxy_log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    for _ in 0..3 {
        assert_eq!(stack.get(&format!("/{code}")).await.status(), 302);
    }
    assert_eq!(
        super::api_redirects(&stack).await,
        3.0,
        "forwarded to the API"
    );
    assert!(
        stack.proxy_log().contains("link-entry=4"),
        "the other release is named"
    );

    // The other release has stopped and aged out: answered from Redis again.
    publish_other.abort();
    let _ = publish_other.await;
    let _: () = redis::cmd("ZREM")
        .arg(&set)
        .arg(other)
        .query_async(&mut conn)
        .await
        .unwrap();
    while matched().await != 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}",
            stack.proxy_log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(stack.get(&format!("/{code}")).await.status(), 302);
    assert_eq!(super::api_redirects(&stack).await, 3.0);
    let clicks: Vec<Value> = stack
        .get(&format!("/events?url_id={id}&event_type=click"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(clicks.len(), 5, "each recorded once");
}
