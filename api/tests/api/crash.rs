//! The real `kurz-api` process killed while its click consumer's insert is inside PostgreSQL:
//! whether the server then rolls the batch back or commits it with nobody left to acknowledge
//! it, a restarted API stores every click exactly once, in `events` and in the rollups.
//!
//! The insert is caught mid-statement without racing a timer: the test holds a lock on
//! `click_daily`, so the consumer's statement has written its `events` rows and waits inside
//! the rollup trigger until the test lets go.

use crate::helpers::{db_url, redis_url, spawn_app, TestApp};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CLICKS: i64 = 300;

/// Kills the child on the way out, so a failed assertion leaves no process behind.
struct Api(Child);

impl Drop for Api {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A config file for the binary on the test's database and prefix, in a directory of its own.
fn write_config(app: &TestApp, port: u16, log_level: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("kurz-crash-{}", app.prefix));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("api.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{}\nlog_level: {log_level}\n\
             database:\n  url: {}\n  max_connections: 4\n\
             redis:\n  url: {}\n  prefix: {}\n  partitions: 4\n\
             clicks:\n  batch_size: 1000\n  claim_idle_ms: 500\n\
             auth:\n  mode: open\n",
            free_port(),
            db_url(&app.db_name),
            redis_url(),
            app.prefix
        ),
    )
    .unwrap();
    config
}

/// Starts the binary with `config`, and waits until it answers.
async fn start_api(app: &TestApp, config: &std::path::Path, port: u16, stderr: Stdio) -> Api {
    let child = Command::new(env!("CARGO_BIN_EXE_kurz-api"))
        .args(["serve", "--config"])
        .arg(config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("kurz-api starts");
    let api = Api(child);
    let health = format!("http://127.0.0.1:{port}/health");
    wait_for("the API to answer", || async {
        app.client.get(&health).send().await.is_ok()
    })
    .await;
    api
}

async fn wait_for<F, Fut>(what: &str, mut ok: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ok().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

async fn crash_mid_insert(terminate_backend: bool) {
    // The in-process app only creates the database, the prefix and the link; it is stopped
    // before any click, and its Drop removes both at the end.
    let mut app = spawn_app().await;
    let user = app.create_user("crash").await;
    let link = app.create_url(user, "https://example.com/crash").await;
    let code = link["short_code"].as_str().unwrap().to_owned();
    app.stop().await;

    let port = free_port();
    let config = write_config(&app, port, "warn");
    let dir = config.parent().unwrap().to_owned();

    let (mut locker, conn) = tokio_postgres::connect(&db_url(&app.db_name), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let db = app.sql().await;
    let lock = locker.transaction().await.unwrap();
    lock.batch_execute("LOCK TABLE click_daily IN EXCLUSIVE MODE")
        .await
        .unwrap();

    let api = start_api(&app, &config, port, Stdio::null()).await;
    for i in 0..CLICKS {
        let res = app
            .client
            .get(format!("http://127.0.0.1:{port}/{code}"))
            .header("referer", format!("https://r{}.example/", i % 3))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 302);
    }
    // The consumer's statement has inserted its rows and waits on the lock in the trigger.
    let stuck = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO events%'";
    let deadline = Instant::now() + Duration::from_secs(60);
    let backend: i32 = loop {
        if let Some(row) = db.query_opt(stuck, &[]).await.unwrap() {
            break row.get(0);
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for the consumer's insert to wait inside PostgreSQL"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    drop(api); // SIGKILL, mid-statement

    if terminate_backend {
        db.execute("SELECT pg_terminate_backend($1)", &[&backend])
            .await
            .unwrap();
    }
    lock.rollback().await.unwrap();
    wait_for("the killed API's backend to finish", || async {
        db.query_opt("SELECT 1 FROM pg_stat_activity WHERE pid = $1", &[&backend])
            .await
            .unwrap()
            .is_none()
    })
    .await;
    let orphaned = count(
        &db,
        "SELECT count(*) FROM events WHERE event_type = 'click'",
    )
    .await;
    if terminate_backend {
        assert_eq!(orphaned, 0, "a terminated insert is rolled back");
    } else {
        // The statement ran to its end and committed; nothing acknowledged those entries.
        assert!(orphaned > 0, "the orphaned insert committed");
    }

    let _api = start_api(&app, &config, port, Stdio::null()).await;
    let mut redis = redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut backlog = 0;
        for p in 0..4 {
            let len: i64 = redis::cmd("XLEN")
                .arg(format!("{}:{{p{p}}}:clicks", app.prefix))
                .query_async(&mut redis)
                .await
                .unwrap();
            backlog += len;
        }
        let stored = count(
            &db,
            "SELECT count(*) FROM events WHERE event_type = 'click'",
        )
        .await;
        if backlog == 0 && stored >= CLICKS {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "timed out: backlog {backlog}, {stored} of {CLICKS} clicks stored"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM events WHERE event_type = 'click'"
        )
        .await,
        CLICKS
    );
    assert_eq!(
        count(
            &db,
            "SELECT coalesce(sum(clicks), 0)::int8 FROM click_daily"
        )
        .await,
        CLICKS,
        "daily rollup counts each click once"
    );
    assert_eq!(
        count(
            &db,
            "SELECT coalesce(sum(clicks), 0)::int8 FROM click_day_sources WHERE referrer <> ''"
        )
        .await,
        CLICKS,
        "referrer rollup counts each click once"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn api_killed_mid_insert_and_the_server_rolls_back_loses_nothing() {
    crash_mid_insert(true).await;
}

#[tokio::test]
async fn api_killed_mid_insert_and_the_server_commits_anyway_doubles_nothing() {
    crash_mid_insert(false).await;
}

/// The log is written by a thread of its own: a stopped API has still written every line, up to
/// its last one.
#[tokio::test]
async fn a_stopped_api_has_written_its_last_log_line() {
    let mut app = spawn_app().await;
    app.stop().await;
    let port = free_port();
    let config = write_config(&app, port, "info");
    let log_path = config.with_file_name("api.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut api = start_api(&app, &config, port, Stdio::from(log)).await;
    let stopped = Command::new("kill")
        .args(["-TERM", &api.0.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while api.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "kurz-api did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = std::fs::read_to_string(&log_path).unwrap();
    let events: Vec<String> = text
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("one JSON object a line");
            v["event"].as_str().unwrap_or_default().to_owned()
        })
        .collect();
    assert!(events.iter().any(|e| e == "kurz-api listening"), "{text}");
    assert_eq!(
        events.last().map(String::as_str),
        Some("kurz-api stopped"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(config.parent().unwrap());
}

/// SIGTERM lets a request already inside the API finish (docs/operations.md, "Stopping"). The
/// request is held in flight without a timer: the test keeps a lock on the link's row, so the
/// update waits inside PostgreSQL until the API has logged that it is draining.
#[tokio::test]
async fn sigterm_lets_an_in_flight_request_finish() {
    let mut app = spawn_app().await;
    let user = app.create_user("drain").await;
    let link = app.create_url(user, "https://example.com/drain").await;
    let id = link["id"].as_i64().unwrap();
    app.stop().await;
    let port = free_port();
    let config = write_config(&app, port, "info");
    // The held request must not meet the request deadline however slow the machine.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("limits:\n  request_timeout_ms: 600000\n");
    std::fs::write(&config, text).unwrap();
    let log_path = config.with_file_name("api.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut api = start_api(&app, &config, port, Stdio::from(log)).await;

    let mut holder = app.sql().await;
    let tx = holder.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM urls WHERE id = $1 FOR UPDATE", &[&id])
        .await
        .unwrap();
    let client = app.client.clone();
    let update = tokio::spawn(async move {
        client
            .put(format!("http://127.0.0.1:{port}/urls/{id}"))
            .json(&serde_json::json!({"title": "finished while draining"}))
            .send()
            .await
    });
    let watcher = app.sql().await;
    wait_for("the update to wait on the row lock", || async {
        count(
            &watcher,
            "SELECT count(*) FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
        )
        .await
            >= 1
    })
    .await;

    let stopped = Command::new("kill")
        .args(["-TERM", &api.0.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    wait_for("the API to start draining", || async {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .contains("draining in-flight requests")
    })
    .await;
    tx.commit().await.unwrap();

    let res = update
        .await
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!(res.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = api.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "kurz-api did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "a drained stop exits 0: {status}");
    let title: Option<String> = watcher
        .query_one("SELECT title FROM urls WHERE id = $1", &[&id])
        .await
        .unwrap()
        .get(0);
    assert_eq!(title.as_deref(), Some("finished while draining"));
    let _ = std::fs::remove_dir_all(config.parent().unwrap());
}
