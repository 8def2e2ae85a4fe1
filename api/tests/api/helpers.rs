//! Test harness: every test gets its own PostgreSQL database, its own Redis key prefix and an
//! app on port 0, and leaves nothing behind.
//!
//! `KURZ_TEST_DATABASE_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`) names the
//! server and a database to connect to for creating and dropping the per-test ones;
//! `KURZ_TEST_REDIS_URL` (default `redis://127.0.0.1:6379/0`) the Redis.

use kurz_api::config::ApiConfig;
use kurz_api::startup::Application;
use kurz_api::state::AppState;
use kurz_common::testing::{Persistence, PrivateRedis};
use reqwest::{Client, Response};
use serde_json::Value;
use std::time::Duration;

pub fn admin_db_url() -> String {
    std::env::var("KURZ_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn redis_url() -> String {
    std::env::var("KURZ_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// `KURZ_TEST_REDIS_CLUSTER_URLS` (comma-separated seeds): run every app on that Redis Cluster
/// instead (`deploy/dev test` runs the contract suite this way).
pub fn redis_cluster_urls() -> Vec<String> {
    std::env::var("KURZ_TEST_REDIS_CLUSTER_URLS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().to_owned())
        .collect()
}

/// `admin_db_url` pointed at another database.
pub fn db_url(name: &str) -> String {
    let mut url = url::Url::parse(&admin_db_url()).expect("KURZ_TEST_DATABASE_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

pub struct TestApp {
    /// `http://127.0.0.1:<port>`
    pub base: String,
    pub admin: String,
    pub client: Client,
    pub state: AppState,
    pub db_name: String,
    pub prefix: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<Result<(), String>>>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// A fresh database and prefix, config adjusted by `tweak`, the app serving on port 0.
/// An app for a lock-out test: its locks last a minute (none ends while a test runs, however
/// slow the machine), the rest of `auth.lockout` as `tweak` sets it.
pub async fn spawn_app_with_lockout(
    tweak: impl FnOnce(&mut kurz_api::config::LockoutConfig),
) -> TestApp {
    spawn_app_with(|c| {
        c.auth.lockout.base_delay_seconds = 60;
        tweak(&mut c.auth.lockout);
    })
    .await
}

pub async fn spawn_app_with(tweak: impl FnOnce(&mut ApiConfig)) -> TestApp {
    let suffix = format!("{:016x}", rand::random::<u64>());
    let db_name = format!("kurz_test_{suffix}");
    let (admin, conn) = tokio_postgres::connect(&admin_db_url(), tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL for tests (KURZ_TEST_DATABASE_URL) must answer");
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE DATABASE {db_name}"))
        .await
        .expect("create test database");

    let mut config = ApiConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        ..ApiConfig::default()
    };
    config.database.url = db_url(&db_name);
    config.database.max_connections = 8;
    config.redis.url = redis_url();
    config.redis.cluster_nodes = redis_cluster_urls();
    config.redis.prefix = format!("kurztest{suffix}");
    config.redis.partitions = 4;
    config.base_url = "http://kurz.test".into();
    config.log_level = "warn".into();
    // The evaluation contract's mode; auth tests switch to `required`. Cheap hashes keep the
    // suite fast; one test uses the production cost on purpose.
    config.auth.mode = kurz_api::config::AuthMode::Open;
    config.auth.argon2.memory_kib = 8192;
    config.auth.argon2.iterations = 1;
    tweak(&mut config);
    config.validate().expect("test config is valid");
    let prefix = config.redis.prefix.clone();

    let app = Application::build(config).await.expect("app builds");
    let base = format!("http://{}", app.addr());
    let admin_addr = format!("http://{}", app.admin_addr());
    let state = app.state.clone();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = rx.await;
    }));
    let client = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    TestApp {
        base,
        admin: admin_addr,
        client,
        state,
        db_name,
        prefix,
        shutdown: Some(tx),
        server: Some(server),
    }
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// POST with a raw body (for malformed-body tests).
    pub async fn post_raw(&self, path: &str, body: &str, content_type: &str) -> Response {
        self.client
            .post(self.url(path))
            .header("content-type", content_type)
            .body(body.to_owned())
            .send()
            .await
            .expect("request")
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> Response {
        self.client
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.client
            .delete(self.url(path))
            .send()
            .await
            .expect("request")
    }

    /// Uploads `csv` as multipart field `file`.
    pub async fn upload(&self, path: &str, csv: Vec<u8>) -> Response {
        self.client
            .post(self.url(path))
            .multipart(csv_form(csv))
            .send()
            .await
            .expect("request")
    }

    /// [`TestApp::upload`] from a task of its own, for a test that holds a lock the import
    /// waits on meanwhile.
    pub fn spawn_upload(&self, path: &str, csv: Vec<u8>) -> tokio::task::JoinHandle<Response> {
        let (client, url) = (self.client.clone(), self.url(path));
        tokio::spawn(async move {
            let sent = client.post(url).multipart(csv_form(csv)).send().await;
            sent.expect("request")
        })
    }

    /// Creates a user and returns its id.
    pub async fn create_user(&self, name: &str) -> i64 {
        let body = serde_json::json!({"username": name, "email": format!("{name}@example.com")});
        let res = self.post_json("/users", &body).await;
        assert_eq!(res.status(), 201, "create user");
        res.json::<Value>().await.unwrap()["id"].as_i64().unwrap()
    }

    /// Creates a link and returns its JSON.
    pub async fn create_url(&self, user_id: i64, target: &str) -> Value {
        let res = self
            .post_json(
                "/urls",
                &serde_json::json!({"user_id": user_id, "original_url": target}),
            )
            .await;
        assert_eq!(res.status(), 201, "create url");
        res.json().await.unwrap()
    }

    /// Creates user `name` and a link of theirs to `target`: the user's id, the link's id and
    /// its short code.
    pub async fn create_link(&self, name: &str, target: &str) -> (i64, i64, String) {
        let user = self.create_user(name).await;
        let link = self.create_url(user, target).await;
        let code = link["short_code"].as_str().unwrap().to_owned();
        (user, link["id"].as_i64().unwrap(), code)
    }

    /// Click events of a link, through the public API.
    pub async fn clicks(&self, url_id: i64) -> Vec<Value> {
        let res = self
            .get(&format!("/events?url_id={url_id}&event_type=click"))
            .await;
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        serde_json::from_value(body).unwrap()
    }

    /// A link's stats (`GET /urls/<id>/stats`), which must answer 200.
    pub async fn stats(&self, url_id: i64) -> Value {
        let res = self.get(&format!("/urls/{url_id}/stats")).await;
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Stops the server gracefully and waits for it (consumer flush included).
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("server task")
                .expect("server stopped cleanly");
        }
    }

    /// Waits (with a deadline) until `link_outbox` is empty: every queued link state reached
    /// Redis.
    /// Link states queued for the replay (`link_outbox`).
    pub async fn outbox_len(&self) -> i64 {
        self.sql()
            .await
            .query_one("SELECT count(*) FROM link_outbox", &[])
            .await
            .unwrap()
            .get(0)
    }

    pub async fn wait_outbox_empty(&self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if self.outbox_len().await == 0 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the outbox never drained"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// The admin listener's `/metrics` page.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Sends `PUT /urls/<id>` with `body` from a task of its own, for a test that holds the row
    /// meanwhile (or drops the caller).
    pub fn spawn_put(
        &self,
        id: i64,
        body: Value,
    ) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
        let (client, url) = (self.client.clone(), self.url(&format!("/urls/{id}")));
        tokio::spawn(async move { client.put(url).json(&body).send().await })
    }

    /// Sends `GET <path>` from a task of its own, for a test that holds what the request waits
    /// on meanwhile.
    pub fn spawn_get(
        &self,
        path: &str,
    ) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
        let (client, url) = (self.client.clone(), self.url(path));
        tokio::spawn(async move { client.get(url).send().await })
    }

    /// Waits until a request waits on a lock (`what` it is, for the failure message), then shows
    /// its deadline has passed: an update of link `id` started after it waits on the same lock
    /// (the row, or the events its `updated` event goes to) and gets its 503.
    pub async fn past_the_deadline_of_a_lock_wait(&self, id: i64, what: &str) {
        wait_for_lock_waits(self, 1, what).await;
        let res = self
            .put_json(&format!("/urls/{id}"), &serde_json::json!({"title": "x"}))
            .await;
        error_of(res, 503).await;
    }

    /// Sends `POST <path>` with the JSON `body` from a task of its own, for a test that holds a
    /// lock the request waits on meanwhile.
    pub fn spawn_post(
        &self,
        path: &str,
        body: Value,
    ) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
        let (client, url) = (self.client.clone(), self.url(path));
        tokio::spawn(async move { client.post(url).json(&body).send().await })
    }

    /// A direct PostgreSQL connection to this test's database.
    pub async fn sql(&self) -> tokio_postgres::Client {
        let (client, conn) = tokio_postgres::connect(&db_url(&self.db_name), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
    }
}

/// Runs `script` with `sh -c`, as an operator would run a documented command, and asserts it
/// succeeded.
pub fn sh(script: &str) {
    let out = std::process::Command::new("sh")
        .args(["-c", script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
}

/// `csv` as multipart field `file`, as the upload endpoints take it.
fn csv_form(csv: Vec<u8>) -> reqwest::multipart::Form {
    let part = reqwest::multipart::Part::bytes(csv)
        .file_name("data.csv")
        .mime_str("text/csv")
        .unwrap();
    reqwest::multipart::Form::new().part("file", part)
}

/// Reads a JSON error body and checks its shape.
pub async fn error_of(res: Response, status: u16) -> Value {
    assert_eq!(res.status(), status, "status");
    assert_eq!(res.headers()["content-type"], "application/json");
    let body: Value = res.json().await.expect("error body is JSON");
    assert!(
        body["error"].is_string() && body["message"].is_string(),
        "error shape: {body}"
    );
    body
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
        let (db_name, prefix) = (self.db_name.clone(), self.prefix.clone());
        // Cleanup needs async clients, and Drop may run inside a runtime: use a thread with its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok((admin, conn)) =
                    tokio_postgres::connect(&admin_db_url(), tokio_postgres::NoTls).await
                {
                    tokio::spawn(conn);
                    let _ = admin
                        .batch_execute(&format!("DROP DATABASE IF EXISTS {db_name} WITH (FORCE)"))
                        .await;
                }
                // On a cluster each master holds some of the keys: scan every node (replicas
                // refuse the deletes, harmlessly).
                let mut nodes = redis_cluster_urls();
                if nodes.is_empty() {
                    nodes.push(redis_url());
                }
                for node in nodes {
                    if let Ok(client) = redis::Client::open(node) {
                        if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                            delete_prefix(&mut conn, &prefix).await;
                        }
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Deletes every key under `prefix:`.
pub async fn delete_prefix(conn: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}:*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .unwrap_or((0, vec![]));
        if !keys.is_empty() {
            // One key per DEL: a cluster node refuses a DEL whose keys span slots.
            let mut pipe = redis::pipe();
            for key in &keys {
                pipe.cmd("DEL").arg(key).ignore();
            }
            let _: Result<(), _> = pipe.query_async(conn).await;
        }
        if next == 0 {
            break;
        }
        cursor = next;
    }
}

/// Waits until `n` statements of `app`'s database wait on a lock (`what` names them for the
/// panic).
pub async fn wait_for_lock_waits(app: &TestApp, n: i64, what: &str) {
    wait_for_lock_waits_unless(app, n, what, || false).await;
}

/// [`wait_for_lock_waits`], or until `over` holds (a wait that is bounded may end before it is
/// seen).
pub async fn wait_for_lock_waits_unless(
    app: &TestApp,
    n: i64,
    what: &str,
    over: impl Fn() -> bool,
) {
    let watcher = app.sql().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !over() && lock_waits(&watcher).await < n {
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never waited on the lock"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How many statements of the database `c` is connected to wait on a lock now.
pub async fn lock_waits(c: &tokio_postgres::Client) -> i64 {
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND wait_event_type = 'Lock'",
        &[],
    )
    .await
    .unwrap()
    .get(0)
}

/// Gives requests a pool of `connections` (one more goes to the create writer), each waited
/// for at most `acquire_timeout_ms`: the tests of what a request does with the pool's last
/// connections.
pub fn request_pool(c: &mut ApiConfig, connections: usize, acquire_timeout_ms: u64) {
    c.database.create_writers = 1;
    c.database.max_connections = connections + 1;
    c.database.acquire_timeout_ms = acquire_timeout_ms;
}

/// The row as a reader saw it at this point (the outbox replay, another replica's write).
/// Puts link `id`'s expiry a minute in the past in PostgreSQL, behind the API's back (what
/// Redis holds is not told).
pub async fn expire_behind_the_api(app: &TestApp, id: i64) {
    app.sql()
        .await
        .execute(
            "UPDATE urls SET expires_at = now() - interval '1 minute' WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap();
}

pub async fn row_now(app: &TestApp, code: &str) -> kurz_api::db::urls::Link {
    let client = app.state.db.get().await.unwrap();
    kurz_api::db::urls::find_url_by_code(&client, code)
        .await
        .unwrap()
        .expect("the link has a row")
}

/// The link entry Redis holds for `code`, as stored.
pub async fn cached(app: &TestApp, code: &str) -> Option<String> {
    let mut get = redis::cmd("GET");
    get.arg(app.state.keys.link(code));
    app.state.redis.query(&get).await.unwrap()
}

/// Abandons a request at `ms` (`limits.request_timeout_ms`), with the read-your-writes drain
/// kept below it, as the config requires.
pub fn request_deadline(c: &mut ApiConfig, ms: u64) {
    c.limits.request_timeout_ms = ms;
    c.clicks.read_drain_budget_ms = 100;
}

/// A loopback port nothing listens on (bound, then let go): a Redis that refuses connections.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An app whose Redis refuses every connection, then `tweak`ed.
pub async fn spawn_app_without_redis(tweak: impl FnOnce(&mut ApiConfig)) -> TestApp {
    let port = closed_port();
    spawn_app_with(|c| {
        c.redis.url = format!("redis://127.0.0.1:{port}/0");
        c.redis.cluster_nodes.clear();
        tweak(c);
    })
    .await
}

/// An app on the private Redis listening on `redis_port` through a [`Relay`] (its traffic can
/// be held), then `tweak`ed: the relay and the app.
pub async fn spawn_app_through_relay(
    redis_port: u16,
    tweak: impl FnOnce(&mut ApiConfig),
) -> (Relay, TestApp) {
    let relay = Relay::start(redis_port).await;
    let url = format!("redis://127.0.0.1:{}/0", relay.port);
    let app = spawn_app_with(|c| {
        c.redis.url = url;
        c.redis.cluster_nodes.clear();
        tweak(c);
    })
    .await;
    (relay, app)
}

/// A TCP relay in front of a server whose client-to-server direction can be held: while held,
/// what clients send is kept back (and can be looked for), as a server that has stopped reading
/// would leave it; released, it is passed on and the relay carries on.
pub struct Relay {
    pub port: u16,
    holding: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    /// Bytes that start the hold when a read holds them ([`Relay::hold_at`]).
    trigger: std::sync::Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    kept: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl Relay {
    pub async fn start(target: u16) -> Self {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let holding = std::sync::Arc::new(tokio::sync::watch::channel(false).0);
        let trigger = std::sync::Arc::new(std::sync::Mutex::new(None::<Vec<u8>>));
        let kept = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (hold, trig, seen) = (holding.clone(), trigger.clone(), kept.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", target)).await else {
                    continue;
                };
                let (mut from_client, mut to_client) = client.into_split();
                let (mut from_server, mut to_server) = server.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
                });
                let (hold, trig, seen) = (hold.clone(), trig.clone(), seen.clone());
                let mut held = hold.subscribe();
                tokio::spawn(async move {
                    let (mut buf, mut back) = (vec![0u8; 64 * 1024], Vec::new());
                    // The end of what came before, for a trigger split across two reads.
                    let mut tail: Vec<u8> = Vec::new();
                    loop {
                        if !*held.borrow_and_update() && !back.is_empty() {
                            if to_server.write_all(&back).await.is_err() {
                                return;
                            }
                            back.clear();
                        }
                        tokio::select! {
                            read = from_client.read(&mut buf) => {
                                let n = match read {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => n,
                                };
                                let chunk = &buf[..n];
                                // A match must end in this read: the earlier bytes it may start
                                // in are fewer than the needle.
                                let triggered = trig
                                    .lock()
                                    .unwrap()
                                    .take_if(|needle| {
                                        let from =
                                            tail.len().saturating_sub(needle.len().max(1) - 1);
                                        holds(&[&tail[from..], chunk].concat(), needle)
                                    })
                                    .map(|needle| {
                                        // Its start, if an earlier read held it, is looked for
                                        // among the kept bytes too.
                                        let from =
                                            tail.len().saturating_sub(needle.len().max(1) - 1);
                                        seen.lock().unwrap().extend_from_slice(&tail[from..]);
                                    })
                                    .is_some();
                                tail.extend_from_slice(chunk);
                                tail.drain(..tail.len().saturating_sub(1024));
                                if triggered {
                                    hold.send_replace(true);
                                }
                                let holding = *held.borrow() || triggered;
                                if holding {
                                    seen.lock().unwrap().extend_from_slice(chunk);
                                }
                                // Behind bytes still kept back (just released), in order.
                                if holding || !back.is_empty() {
                                    back.extend_from_slice(chunk);
                                } else if to_server.write_all(chunk).await.is_err() {
                                    return;
                                }
                            }
                            changed = held.changed() => if changed.is_err() { return },
                        }
                    }
                });
            }
        });
        Self {
            port,
            holding,
            trigger,
            kept,
            task,
        }
    }

    /// From now on, what clients send is kept back.
    pub fn hold(&self) {
        self.holding.send_replace(true);
    }

    /// What clients send is kept back from the first read that holds `needle` on (that read
    /// included).
    pub fn hold_at(&self, needle: &[u8]) {
        *self.trigger.lock().unwrap() = Some(needle.to_vec());
    }

    /// Waits (20 s at most) until the bytes kept back hold `needle`.
    pub async fn wait_held(&self, needle: &[u8]) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while !holds(&self.kept.lock().unwrap(), needle) {
            assert!(
                std::time::Instant::now() < deadline,
                "nothing sent through the relay held {:?}",
                String::from_utf8_lossy(needle)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Passes on what was kept back and stops holding.
    pub fn release(&self) {
        self.holding.send_replace(false);
        self.kept.lock().unwrap().clear();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An app whose writes wait for one replica (`redis.replica_acks: 1`, the rest as `tweak` sets
/// it), on a Redis of its own that has none yet: every such write waits half of
/// `redis.timeout_ms` and stays unconfirmed until [`replica_of`] gives it one.
pub async fn spawn_app_waiting_for_a_replica(
    tweak: impl FnOnce(&mut ApiConfig),
) -> (PrivateRedis, TestApp) {
    let master = PrivateRedis::start(Persistence::None);
    let url = master.url();
    let app = spawn_app_with(|c| {
        c.redis.url = url;
        c.redis.replica_acks = 1;
        tweak(c);
    })
    .await;
    (master, app)
}

/// A new Redis replicating `master`.
pub async fn replica_of(master: &PrivateRedis) -> PrivateRedis {
    let replica = PrivateRedis::start(Persistence::None);
    // redis://127.0.0.1:<port>/0
    let url = master.url();
    let port = url.rsplit(':').next().unwrap().split('/').next().unwrap();
    let mut conn = private_conn(&replica).await;
    let _: () = redis::cmd("REPLICAOF")
        .arg("127.0.0.1")
        .arg(port)
        .query_async(&mut conn)
        .await
        .unwrap();
    replica
}

/// The clients `redis` holds blocked (in `WAIT`, say), from `INFO clients`.
pub async fn blocked_clients(redis: &PrivateRedis) -> i64 {
    info_line(redis, "clients", "blocked_clients:")
        .await
        .and_then(|n| n.trim().parse().ok())
        .expect("INFO clients has blocked_clients")
}

/// The `WAIT`s `redis` has run, from `INFO commandstats`.
pub async fn waits_sent(redis: &PrivateRedis) -> u64 {
    info_line(redis, "commandstats", "cmdstat_wait:calls=")
        .await
        .map_or(0, |rest| rest.split(',').next().unwrap().parse().unwrap())
}

/// What follows `prefix` on its line of `INFO <section>` of `redis`.
async fn info_line(redis: &PrivateRedis, section: &str, prefix: &str) -> Option<String> {
    let info: String = redis::cmd("INFO")
        .arg(section)
        .query_async(&mut private_conn(redis).await)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix(prefix))
        .map(str::to_owned)
}

async fn private_conn(redis: &PrivateRedis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}
