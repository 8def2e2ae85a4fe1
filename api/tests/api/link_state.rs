//! A link's state reaches Redis after every write, even when Redis stalls during the write, and
//! no fill that read PostgreSQL before a write can put the old state back.

use crate::helpers::{spawn_app, spawn_app_with, TestApp};
use kurz_api::cache::Lookup;
use kurz_common::keys::{CachedLink, LinkEntry};
use kurz_common::testing::{Persistence, PrivateRedis};
use std::time::{Duration, Instant};

fn entry(target: &str) -> CachedLink {
    CachedLink::Found(LinkEntry {
        url_id: 1,
        user_id: None,
        active: true,
        expires_at: None,
        redirect_type: 302,
        max_visits: None,
        protected: false,
        target: target.into(),
    })
}

async fn generation_seen(app: &TestApp, code: &str) -> kurz_api::cache::Generation {
    match app.state.cache.lookup(code).await.unwrap() {
        Lookup::Miss(g) => g,
        Lookup::Hit(_) => panic!("{code} is cached"),
    }
}

#[tokio::test]
async fn a_fill_that_read_before_a_write_cannot_overwrite_it() {
    let app = spawn_app().await;
    let cache = &app.state.cache;
    let seen = generation_seen(&app, "fence01").await;
    // A write lands between the reader's lookup and its fill.
    cache
        .publish("fence01", &entry("https://new.example/"), 0)
        .await
        .unwrap();
    assert!(!cache
        .fill("fence01", &entry("https://old.example/"), &seen)
        .await
        .unwrap());
    match cache.lookup("fence01").await.unwrap() {
        Lookup::Hit(e) => assert_eq!(e, entry("https://new.example/")),
        Lookup::Miss(_) => panic!("the write's entry is gone"),
    }
    // Without a write in between, the fill stores.
    let seen = generation_seen(&app, "fence02").await;
    assert!(cache
        .fill("fence02", &CachedLink::Missing, &seen)
        .await
        .unwrap());
}

#[tokio::test]
async fn a_fill_that_read_before_a_bulk_import_committed_stores_nothing_after_it() {
    let app = spawn_app().await;
    let cache = &app.state.cache;
    let seen = generation_seen(&app, "bulk001").await;
    // The import commits and drops the cached entries of its codes (here none was cached yet).
    cache.forget_many(&["bulk001".to_owned()]).await.unwrap();
    assert!(
        !cache
            .fill("bulk001", &CachedLink::Missing, &seen)
            .await
            .unwrap(),
        "the pre-import row must not be cached for a day"
    );
    assert!(matches!(
        cache.lookup("bulk001").await.unwrap(),
        Lookup::Miss(_)
    ));
}

#[tokio::test]
async fn a_link_deleted_while_redis_stalls_writes_stops_redirecting_once_redis_recovers() {
    let redis = PrivateRedis::start(Persistence::None);
    let url = redis.url();
    let app = spawn_app_with(|c| c.redis.url = url).await;
    let (_, id, code) = app.create_link("stall", "https://example.com/stall").await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);

    // Writes (and PUBLISH) wait for 1.5 s; the API's 250 ms Redis timeout fires on them.
    let admin = redis::Client::open(redis.url()).unwrap();
    let mut conn = admin.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1500)
        .arg("WRITE")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(app.delete(&format!("/urls/{id}")).await.status(), 204);

    // What every edge reads: the entry in Redis (reads are not paused).
    let link_key = app.state.keys.link(&code);
    let cached = |mut conn: redis::aio::MultiplexedConnection| {
        let key = link_key.clone();
        async move {
            let raw: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .unwrap();
            match raw.as_deref().and_then(CachedLink::decode) {
                Some(CachedLink::Found(l)) => l.redirects_at(chrono::Utc::now().timestamp()),
                _ => false,
            }
        }
    };
    let reader = admin.get_multiplexed_async_connection().await.unwrap();
    assert!(
        cached(reader.clone()).await,
        "right after the 204 the stalled write has not reached Redis (the defect's setting)"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while cached(reader.clone()).await {
        assert!(
            Instant::now() < deadline,
            "the deleted link kept redirecting from Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.wait_outbox_empty().await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 404);
}

/// An import that committed and whose process died before it cleared the cache (here: the
/// import run on its own, without the route's cache step) still takes effect on the redirect:
/// its codes were queued in the import's own transaction, and the replay publishes them.
#[tokio::test]
async fn a_link_import_whose_cache_step_never_ran_still_reaches_redis() {
    let app = spawn_app().await;
    let (user, id, code) = app
        .create_link("importer", "https://example.com/before")
        .await;
    assert_eq!(app.get(&format!("/{code}")).await.status(), 302);
    let csv = format!(
        "id,user_id,short_code,original_url,is_active\n{id},{user},{code},https://example.com/after,False\n"
    );
    let mut client = app.state.db.get().await.unwrap();
    let imported = kurz_api::import::urls(&mut client, csv.as_bytes(), &app.state.targets)
        .await
        .unwrap();
    assert!(imported.codes.contains(&code));
    let deadline = Instant::now() + Duration::from_secs(20);
    while app.get(&format!("/{code}")).await.status() != 404 {
        assert!(
            Instant::now() < deadline,
            "the deactivated link kept redirecting from Redis"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    app.wait_outbox_empty().await;
}
