//! An edge whose Redis key schema differs from the API's answers no redirect from Redis: it
//! forwards them, so they are still answered and counted once, and says so in a metric.

use crate::harness::{Options, Stack};

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
    let clicks = stack.clicks_of(id).await;
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

/// Waits (bounded) until the edge's gate says `want` (1 open, 0 closed).
async fn gate_reaches(stack: &Stack, want: f64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stack
        .metric(stack.admin_port, "kurz_proxy_key_schema_match", &[])
        .await
        != want
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the gate never reached {want}: {}",
            stack.proxy_log()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// An API of another release, publishing as often as ours do: into the set with Redis's clock
/// (a release that knows the set), or only into the single key (one from before the set).
fn other_release_publishing(
    mut conn: redis::aio::MultiplexedConnection,
    prefix: &str,
    knows_the_set: bool,
) -> tokio::task::JoinHandle<()> {
    let (set, key) = (format!("{prefix}:schemas"), format!("{prefix}:schema"));
    tokio::spawn(async move {
        loop {
            if knows_the_set {
                let (secs, micros): (i64, i64) =
                    redis::cmd("TIME").query_async(&mut conn).await.unwrap();
                let _: () = redis::cmd("ZADD")
                    .arg(&set)
                    .arg(secs * 1000 + micros / 1000)
                    .arg(OTHER)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            } else {
                let _: () = redis::cmd("SET")
                    .arg(&key)
                    .arg(OTHER)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
}

const OTHER: &str =
    "kurz-keys/1 partitions=16 partition-hash=fnv1a32 link-entry=4 click-fields=3 visits=1";

/// A rolling upgrade that changes the fingerprint: while an API of the other release still
/// runs (and reads the click streams), the edge forwards every redirect, though the APIs of its
/// own release keep publishing theirs; once the other release is gone, it answers again. The
/// other release may know the set of fingerprints or be from before it (it then writes only
/// the single key, and the APIs that know the set put what they find there into it).
#[tokio::test]
async fn an_api_of_another_release_still_running_keeps_the_edge_forwarding() {
    let stack = Stack::start(Options {
        redis_cluster: Vec::new(),
        ..Options::default()
    });
    let (id, code) = stack.link("https://example.com/rolling").await;
    assert_eq!(stack.get(&format!("/{code}")).await.status(), 302);
    assert_eq!(super::api_redirects(&stack).await, 0.0);
    let (set, key) = (
        format!("{}:schemas", stack.prefix),
        format!("{}:schema", stack.prefix),
    );
    let client = redis::Client::open(stack.redis_url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ours = kurz_common::keys::KeySchema::new(&stack.prefix, 16).fingerprint();

    let mut forwarded = 0.0;
    for knows_the_set in [true, false] {
        let other = other_release_publishing(conn.clone(), &stack.prefix, knows_the_set);
        gate_reaches(&stack, 0.0).await;
        if !knows_the_set {
            // Not only the flip of the single key: our APIs saw it and put it in the set.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            loop {
                let score: Option<f64> = redis::cmd("ZSCORE")
                    .arg(&set)
                    .arg(OTHER)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if score.is_some() {
                    break;
                }
                assert!(std::time::Instant::now() < deadline, "not in the set");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
        for _ in 0..2 {
            assert_eq!(stack.get(&format!("/{code}")).await.status(), 302);
        }
        forwarded += 2.0;
        assert_eq!(
            super::api_redirects(&stack).await,
            forwarded,
            "forwarded to the API"
        );
        assert!(
            stack.proxy_log().contains("link-entry=4"),
            "the other release is named"
        );

        // The other release has stopped and aged out: answered from Redis again.
        other.abort();
        let _ = other.await;
        let _: () = redis::cmd("SET")
            .arg(&key)
            .arg(&ours)
            .query_async(&mut conn)
            .await
            .unwrap();
        let _: () = redis::cmd("ZREM")
            .arg(&set)
            .arg(OTHER)
            .query_async(&mut conn)
            .await
            .unwrap();
        gate_reaches(&stack, 1.0).await;
        assert_eq!(stack.get(&format!("/{code}")).await.status(), 302);
        assert_eq!(super::api_redirects(&stack).await, forwarded);
    }
    let clicks = stack.clicks_of(id).await;
    assert_eq!(clicks.len(), 7, "each recorded once");
}
