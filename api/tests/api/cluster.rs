//! The API on a real Redis Cluster (three masters, three replicas, private to the test): links,
//! redirects, clicks stored exactly once, read-your-writes, cache invalidation, sessions and the
//! login lock-out, whose keys span several hash slots and partitions.

use crate::helpers::{error_of, spawn_app_with, TestApp};
use kurz_common::testing::RedisCluster;
use serde_json::{json, Value};

/// Signs up `name` (`<name>@example.com`, password `correct horse`): its session token.
async fn registered(app: &TestApp, name: &str) -> String {
    let body = json!({"username": name, "email": format!("{name}@example.com"), "password": "correct horse"});
    let res = app.post_json("/auth/register", &body).await;
    assert_eq!(res.status(), 201, "register {name}");
    res.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The status of `GET /auth/me` with `token`.
async fn me(app: &TestApp, token: &str) -> reqwest::StatusCode {
    let res = app.client.get(app.url("/auth/me")).bearer_auth(token);
    res.send().await.unwrap().status()
}

#[tokio::test]
async fn the_api_works_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let app = spawn_app_with(|c| {
        c.redis.cluster_nodes = cluster.seeds();
        // Enough partitions that the streams land on every master.
        c.redis.partitions = 16;
        c.auth.lockout.free_failures = 2;
        c.auth.lockout.base_delay_seconds = 60;
    })
    .await;

    // Links and their clicks, spread over partitions (and so over masters).
    let user = app.create_user("clu").await;
    let mut links = Vec::new();
    for i in 0..6 {
        links.push(
            app.create_url(user, &format!("https://example.com/clu/{i}"))
                .await,
        );
    }
    for (i, link) in links.iter().enumerate() {
        let code = link["short_code"].as_str().unwrap();
        for _ in 0..=i {
            let res = app.get(&format!("/{code}")).await;
            assert_eq!(res.status(), 302);
            assert_eq!(
                res.headers()["location"],
                format!("https://example.com/clu/{i}").as_str()
            );
        }
    }
    // Read-your-writes drains every partition's stream before answering.
    for (i, link) in links.iter().enumerate() {
        let id = link["id"].as_i64().unwrap();
        assert_eq!(app.clicks(id).await.len(), i + 1, "clicks of link {i}");
        let stats = app.stats(id).await;
        assert_eq!(stats["clicks"], i as i64 + 1);
    }

    // A changed link is served changed, a deleted one stops.
    let (id0, code0) = (
        links[0]["id"].as_i64().unwrap(),
        links[0]["short_code"].as_str().unwrap().to_owned(),
    );
    let res = app
        .put_json(
            &format!("/urls/{id0}"),
            &json!({"original_url": "https://example.com/moved"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let res = app.get(&format!("/{code0}")).await;
    assert_eq!(res.headers()["location"], "https://example.com/moved");
    assert_eq!(app.delete(&format!("/urls/{id0}")).await.status(), 204);
    error_of(app.get(&format!("/{code0}")).await, 404).await;

    // Sessions: register, use, log out.
    let token = registered(&app, "clus").await;
    assert_eq!(me(&app, &token).await, 200);
    let res = app
        .client
        .post(app.url("/auth/logout"))
        .header("authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(me(&app, &token).await, 401);

    // The lock-out script reads account and address keys together.
    for _ in 0..3 {
        let res = app
            .post_json(
                "/auth/login",
                &json!({"email": "clus@example.com", "password": "wrong"}),
            )
            .await;
        assert_eq!(res.status(), 401);
    }
    let res = app
        .post_json(
            "/auth/login",
            &json!({"email": "clus@example.com", "password": "correct horse"}),
        )
        .await;
    assert_eq!(
        res.status(),
        429,
        "past the free failures even the right password waits"
    );
}

/// With `redis.replica_acks: 1` a visit to a limited link waits for a replica of its own
/// shard. Another shard that lost its replica leaves it alone: its click goes through the
/// stream, and its link is not queued for the replay.
#[tokio::test]
async fn with_replica_acks_a_limited_visit_waits_for_its_own_shard_only() {
    let mut cluster = RedisCluster::start();
    let app = spawn_app_with(|c| {
        c.redis.cluster_nodes = cluster.seeds();
        c.redis.partitions = 16;
        c.redis.replica_acks = 1;
        // Replicas that lag on a loaded machine still confirm within the WAIT (half of this).
        c.redis.timeout_ms = 5000;
    })
    .await;
    let user = app.create_user("own").await;
    let limited = |i: usize| {
        let app = &app;
        async move {
            let res = app
                .post_json(
                    "/urls",
                    &json!({"user_id": user, "original_url": format!("https://example.com/own/{i}"), "max_visits": 10}),
                )
                .await;
            assert_eq!(res.status(), 201);
            res.json::<Value>().await.unwrap()["short_code"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    // Two limited links whose partitions live on different masters.
    let first = limited(0).await;
    let first_master = cluster.master_of(&app.state.keys.link(&first));
    let mut other = None;
    for i in 1..64 {
        let code = limited(i).await;
        if cluster.master_of(&app.state.keys.link(&code)) != first_master {
            other = Some(code);
            break;
        }
    }
    let other = other.expect("a link on another master");
    // A create whose publish a lagging replica did not confirm in time is queued and replayed:
    // let that settle first.
    app.wait_outbox_empty().await;
    cluster.kill(cluster.replica_of(first_master));

    let via_stream = || {
        app.state
            .metrics
            .clicks
            .with_label_values(&["stream"])
            .get()
    };
    let before = via_stream();
    assert_eq!(app.get(&format!("/{other}")).await.status(), 302);
    assert_eq!(
        via_stream(),
        before + 1,
        "a replica of the link's own shard confirmed the visit"
    );
    let queued = app
        .sql()
        .await
        .query_opt("SELECT 1 FROM link_outbox WHERE short_code = $1", &[&other])
        .await
        .unwrap();
    assert!(queued.is_none(), "a confirmed visit queued its link");
}

/// docs/operations.md's step after restoring PostgreSQL from a backup, on a cluster: the loop
/// run against each primary drops every cached state (one hash slot per `UNLINK`), and each
/// link is read back from PostgreSQL, here a row the restore changed.
#[tokio::test]
async fn the_documented_cache_drop_after_a_restore_works_on_a_redis_cluster() {
    let cluster = RedisCluster::start();
    let partitions = 16;
    let app = spawn_app_with(|c| {
        c.redis.cluster_nodes = cluster.seeds();
        c.redis.partitions = partitions;
    })
    .await;
    let user = app.create_user("restore").await;
    let mut codes = Vec::new();
    for i in 0..8 {
        let link = app
            .create_url(user, &format!("https://example.com/restore/{i}"))
            .await;
        let code = link["short_code"].as_str().unwrap().to_owned();
        assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
        codes.push(code);
    }
    let cached = |code: &str| {
        let (app, key) = (&app, app.state.keys.link(code));
        async move {
            app.state
                .redis
                .query::<i64>(redis::cmd("EXISTS").arg(key))
                .await
                .unwrap()
        }
    };
    assert_eq!(cached(&codes[0]).await, 1);
    // The restored row differs from the state Redis holds.
    app.sql()
        .await
        .execute(
            "UPDATE urls SET original_url = 'https://example.com/restored' WHERE short_code = $1",
            &[&codes[0]],
        )
        .await
        .unwrap();

    let primaries: std::collections::BTreeSet<u16> = (0..partitions)
        .map(|p| cluster.master_of(&format!("x{{p{p}}}")))
        .collect();
    for port in primaries {
        // As docs/operations.md has it, with its placeholders filled in.
        let script = format!(
            r#"for p in $(seq 0 $(({partitions} - 1))); do
  redis-cli -h 127.0.0.1 -p {port} --scan --pattern "{prefix}:{{p$p}}:link:*" |
    xargs -r -n 500 redis-cli -h 127.0.0.1 -p {port} unlink
done"#,
            prefix = app.state.keys.prefix()
        );
        crate::helpers::sh(&script);
    }
    for code in &codes {
        assert_eq!(cached(code).await, 0, "{code} is still cached");
    }
    let res = app.get(&format!("/{}", codes[0])).await;
    assert_eq!(res.headers()["location"], "https://example.com/restored");
}

/// A sign-up needs the master that holds sessions, not every master: with another one hung
/// (until its failover) an account is still made, with its session.
#[tokio::test]
async fn a_sign_up_needs_only_the_master_holding_sessions() {
    let cluster = RedisCluster::start();
    let app = spawn_app_with(|c| {
        c.redis.cluster_nodes = cluster.seeds();
        c.redis.timeout_ms = 500;
    })
    .await;
    let needed = [
        cluster.master_of(&app.state.keys.user_sessions(0)),
        cluster.master_of(&app.state.keys.login("account", "x")),
    ];
    let other = (0..)
        .map(|i| cluster.master_of(&format!("t{i}")))
        .find(|m| !needed.contains(m))
        .expect("a master holding neither sessions nor log-in failures");
    let _hung = cluster.paused(other);
    let token = registered(&app, "onemaster").await;
    assert_eq!(me(&app, &token).await, 200);
}

/// A master that came back empty (its partitions' consumer group gone) while the others' hold
/// clicks: the read reports the loss, so the consumer counts it and recreates the group,
/// rather than taking the others' entries and letting the group be recreated unnoticed.
#[tokio::test]
async fn a_group_lost_on_one_master_is_reported_though_others_answer() {
    use kurz_api::clicks::stream::{ClickStream, ReadError};
    let cluster = RedisCluster::start();
    let errors = prometheus::IntCounter::new("t_errors", "t").unwrap();
    let redis = std::sync::Arc::new(
        kurz_api::redis_handle::RedisHandle::cluster(
            &cluster.seeds(),
            std::time::Duration::from_secs(5),
            errors,
        )
        .unwrap(),
    );
    let keys = kurz_common::keys::KeySchema::new("grouplost", 16);
    let stream = ClickStream::new(redis.clone(), keys.clone(), "g".into(), "c".into());
    assert!(stream.read_new(10).await.is_ok(), "the groups are made");
    let first = keys.clicks(0);
    let other = (1..16)
        .map(|p| keys.clicks(p))
        .find(|k| cluster.master_of(k) != cluster.master_of(&first))
        .expect("a partition on another master");
    for key in [&first, &other] {
        let _: String = redis
            .query(redis::cmd("XADD").arg(key).arg("*").arg("f").arg("v"))
            .await
            .unwrap();
    }
    let _: i64 = redis
        .query(redis::cmd("XGROUP").arg("DESTROY").arg(&first).arg("g"))
        .await
        .unwrap();
    assert!(matches!(
        stream.read_new(10).await,
        Err(ReadError::GroupLost)
    ));
}

/// While a partition's slot moves to another master (resharding), Redis refuses a script that
/// names a key the move has not reached, as the publish of a link without a visit counter
/// does, but serves the link's entry from where it is: a link deleted meanwhile must stop
/// redirecting all the same, and its state is published once the move is over.
#[tokio::test]
async fn a_link_deleted_while_its_slot_moves_stops_redirecting() {
    let cluster = RedisCluster::start();
    let app = spawn_app_with(|c| c.redis.cluster_nodes = cluster.seeds()).await;
    let (_, id, code) = app.create_link("mover", "https://example.com/moving").await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    let moving = cluster.migrating(&app.state.keys.link(&code));
    assert_eq!(app.delete(&format!("/urls/{id}")).await.status(), 204);
    assert!(
        app.outbox_len().await >= 1,
        "the refused publish left the queue"
    );
    assert_eq!(app.get(&format!("/{code}")).await.status(), 404);
    drop(moving);
    app.wait_outbox_empty().await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 404);
}
