//! End-to-end harness: a fresh database and Redis prefix, real `kurz-api` processes as the
//! upstream pool, and the real `kurz-proxy` binary in front, all on free loopback ports.
//!
//! `KURZ_TEST_DATABASE_URL` and `KURZ_TEST_REDIS_URL` name the servers (defaults: the local
//! ones), as for the API's tests.

use reqwest::Client;
use serde_json::Value;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn admin_db_url() -> String {
    std::env::var("KURZ_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub fn default_redis_url() -> String {
    std::env::var("KURZ_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379/0".into())
}

/// A free loopback port below Linux's ephemeral range (32768+), so that no outgoing connection
/// can take it while a test restarts the process that listens on it. Ports come from one
/// counter (random start), so tests running in parallel never pick the same one.
/// `KURZ_TEST_REDIS_CLUSTER_URLS` (comma-separated seeds): stacks run on that Redis Cluster by
/// default (`deploy/dev test` runs the contract suite this way).
pub fn default_redis_cluster() -> Vec<String> {
    std::env::var("KURZ_TEST_REDIS_CLUSTER_URLS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| s.trim().to_owned())
        .collect()
}

/// The edge on config `file`, alone (no stack), its stderr piped for the test to read.
pub fn edge_reading_stderr(file: &std::path::Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kurz-proxy"))
        .arg("-c")
        .arg(file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// A free port in the range the tests' servers share (clear of the Redis cluster's buses).
pub fn free_port() -> u16 {
    use kurz_common::testing::FREE_PORTS;
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        FREE_PORTS.start + rand::random::<u16>() % FREE_PORTS.len() as u16,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::SeqCst);
        let port = FREE_PORTS.start + (port - FREE_PORTS.start) % FREE_PORTS.len() as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The binary of the same build as this test: the proxy's from Cargo; the API's (another
/// package) built now for this test binary's profile, since a `kurz-api` left in the target
/// directory by an earlier build may be stale. A no-op build when it is fresh.
fn binary(name: &str) -> PathBuf {
    if name == "kurz-proxy" {
        return PathBuf::from(env!("CARGO_BIN_EXE_kurz-proxy"));
    }
    static BUILT: std::sync::Once = std::sync::Once::new();
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    BUILT.call_once(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--quiet", "-p", name, "--bin", name]);
        if dir.file_name().is_some_and(|p| p == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().unwrap();
        assert!(status.success(), "building {name} for the end-to-end tests");
    });
    dir.join(name)
}

fn psql(admin: &str, sql: &str) {
    let out = Command::new("psql")
        .arg(admin)
        .args(["-XAtqc", sql])
        .output()
        .expect("psql must be installed");
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("timed out waiting for {what}");
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
}

/// One API upstream process.
pub struct Upstream {
    pub port: u16,
    pub admin_port: u16,
    child: Option<Child>,
}

impl Upstream {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no draining, like a crash.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What to vary between tests.
pub struct Options {
    pub upstreams: usize,
    /// Upstreams the proxy is configured with at start (indexes); all when `None`.
    pub proxied: Option<Vec<usize>>,
    pub redis_url: String,
    /// Seed nodes of a Redis Cluster for the proxy and the APIs; `redis_url` is then unused.
    pub redis_cluster: Vec<String>,
    /// `redis.replica_acks` of the proxy and the APIs.
    pub replica_acks: u8,
    /// Extra YAML appended to the proxy config (sections not otherwise written).
    pub extra_yaml: String,
    /// Extra keys of the `listen` section, each as `, key: value`.
    pub listen_extra: String,
    /// Appended inside `upstreams: { … }`, e.g. `, retry_idempotent: false`.
    pub upstreams_extra: String,
    pub rate_limits: String,
    pub read_timeout_ms: u64,
    /// The PostgreSQL server (a URL to its maintenance database) the stack's database lives on;
    /// a fault test passes its private one. Default: `KURZ_TEST_DATABASE_URL`.
    pub pg_admin_url: Option<String>,
    /// `redis.partitions` of the proxy only (the APIs keep the default), to make them disagree.
    pub proxy_partitions: Option<u16>,
    /// Extra environment for the API processes.
    pub api_env: Vec<(String, String)>,
    /// Extra environment for the proxy (overrides of its config file).
    pub proxy_env: Vec<(String, String)>,
    /// `upstreams.health_check.interval_ms`; long, to see what the edge does between checks.
    pub health_interval_ms: u64,
    /// `server.grace_period_seconds`.
    pub grace_period_seconds: u64,
    /// `log.level` of the proxy.
    pub log_level: &'static str,
    /// The proxy's open-file limit at start (`soft:hard`, as `prlimit --nofile` takes it).
    pub proxy_nofile: Option<String>,
    /// Plain HTTP only: no `listen.https` (TLS ended by a load balancer in front).
    pub no_https: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            upstreams: 2,
            proxied: None,
            redis_url: default_redis_url(),
            redis_cluster: default_redis_cluster(),
            replica_acks: 0,
            extra_yaml: String::new(),
            upstreams_extra: String::new(),
            listen_extra: String::new(),
            read_timeout_ms: 30_000,
            pg_admin_url: None,
            proxy_partitions: None,
            api_env: Vec::new(),
            proxy_env: Vec::new(),
            health_interval_ms: 200,
            grace_period_seconds: 0,
            log_level: "warn",
            proxy_nofile: None,
            no_https: false,
            rate_limits: "{ redirect: { rate: 0, burst: 1 }, write: { rate: 0, burst: 1 }, auth: { rate: 0, burst: 1 }, read: { rate: 0, burst: 1 } }".into(),
        }
    }
}

pub struct Stack {
    pub dir: PathBuf,
    /// URL of the PostgreSQL maintenance database the stack's database was created from.
    pub pg_admin: String,
    pub db: String,
    pub prefix: String,
    pub redis_url: String,
    pub redis_cluster: Vec<String>,
    replica_acks: u8,
    pub upstreams: Vec<Upstream>,
    pub http_port: u16,
    pub https_port: u16,
    pub admin_port: u16,
    pub config_path: PathBuf,
    proxy: Option<Child>,
    pub client: Client,
    api_env: Vec<(String, String)>,
    /// The proxy's extra environment, for its next start.
    pub proxy_env: Vec<(String, String)>,
    proxy_nofile: Option<String>,
    /// Whether the proxy serves TLS (`listen.https`).
    serves_https: bool,
}

impl Stack {
    pub fn start(opts: Options) -> Stack {
        let id = format!("{:016x}", rand::random::<u64>());
        let dir = std::env::temp_dir().join(format!("kurz-edge-{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let db = format!("kurz_test_{id}");
        let pg_admin = opts.pg_admin_url.clone().unwrap_or_else(admin_db_url);
        psql(&pg_admin, &format!("CREATE DATABASE {db}"));
        let prefix = format!("kurztest{id}");
        let mut stack = Stack {
            dir: dir.clone(),
            pg_admin,
            db,
            api_env: opts.api_env.clone(),
            proxy_env: opts.proxy_env.clone(),
            proxy_nofile: opts.proxy_nofile.clone(),
            prefix,
            redis_url: opts.redis_url.clone(),
            redis_cluster: opts.redis_cluster.clone(),
            replica_acks: opts.replica_acks,
            serves_https: !opts.no_https,
            upstreams: Vec::new(),
            http_port: free_port(),
            https_port: free_port(),
            admin_port: free_port(),
            config_path: dir.join("proxy.yaml"),
            proxy: None,
            client: Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(20))
                .build()
                .unwrap(),
        };
        for _ in 0..opts.upstreams {
            let up = Upstream {
                port: free_port(),
                admin_port: free_port(),
                child: None,
            };
            stack.upstreams.push(up);
        }
        for i in 0..opts.upstreams {
            stack.start_upstream(i);
        }
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
            ])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl must be installed");
        assert!(status.success());
        let proxied: Vec<usize> = opts
            .proxied
            .clone()
            .unwrap_or_else(|| (0..opts.upstreams).collect());
        stack.write_config(&proxied, &opts);
        stack.start_proxy();
        stack
    }

    pub fn start_upstream(&mut self, i: usize) {
        let db_url = self.db_url();
        let up = &mut self.upstreams[i];
        let log = std::fs::File::create(self.dir.join(format!("api{i}.log"))).unwrap();
        let child = Command::new(binary("kurz-api"))
            .arg("serve")
            .current_dir(&self.dir)
            .env("DATABASE_URL", db_url.as_str())
            .env("REDIS_URL", &self.redis_url)
            .env("KURZ_REDIS_PREFIX", &self.prefix)
            .env("KURZ_LISTEN", format!("127.0.0.1:{}", up.port))
            .env("KURZ_ADMIN_LISTEN", format!("127.0.0.1:{}", up.admin_port))
            .env("LOG_LEVEL", "warn")
            .env("KURZ_AUTH_MODE", "open")
            .env("REDIS_CLUSTER_URLS", self.redis_cluster.join(","))
            .env("KURZ_REDIS_REPLICA_ACKS", self.replica_acks.to_string())
            .env_remove("KURZ_API_CONFIG")
            .envs(self.api_env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        up.child = Some(child);
        let port = up.port;
        wait_until("the API upstream", Duration::from_secs(30), || {
            port_open(port)
        });
    }

    /// The URL of the stack's own database.
    pub fn db_url(&self) -> String {
        let mut db_url = url::Url::parse(&self.pg_admin).unwrap();
        db_url.set_path(&format!("/{}", self.db));
        db_url.to_string()
    }

    pub fn write_config(&self, proxied: &[usize], opts: &Options) {
        let servers: Vec<String> = proxied.iter().map(|i| self.upstreams[*i].addr()).collect();
        self.write_config_servers(&servers, opts);
    }

    /// Writes the proxy config with these upstream addresses.
    pub fn write_config_servers(&self, servers: &[String], opts: &Options) {
        let servers: Vec<String> = servers.iter().map(|a| format!("\"{a}\"")).collect();
        let d = self.dir.display();
        let yaml = format!(
            "server: {{ threads: 2, grace_period_seconds: {}, graceful_shutdown_timeout_seconds: 1, upgrade_sock: {d}/upgrade.sock, pid_file: {d}/proxy.pid }}\n\
             listen: {{ http: [\"127.0.0.1:{}\"]{}{} }}\n\
             admin: {{ listen: \"127.0.0.1:{}\" }}\n\
             upstreams: {{ servers: [{}], connect_timeout_ms: 500, read_timeout_ms: {}, health_check: {{ interval_ms: {}, timeout_ms: 500, rise: 1, fall: 1 }}{} }}\n\
             redis: {{ url: \"{}\", cluster_nodes: [{}], prefix: {}, timeout_ms: 1000, replica_acks: {}{} }}\n\
             rate_limits: {}\n\
             log: {{ level: {} }}\n{}",
            opts.grace_period_seconds,
            self.http_port,
            if opts.no_https {
                String::new()
            } else {
                format!(
                    ", https: [\"127.0.0.1:{}\"], tls_cert: {d}/cert.pem, tls_key: {d}/key.pem",
                    self.https_port
                )
            },
            opts.listen_extra,
            self.admin_port,
            servers.join(", "),
            opts.read_timeout_ms,
            opts.health_interval_ms,
            opts.upstreams_extra,
            self.redis_url,
            self.redis_cluster
                .iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", "),
            self.prefix,
            self.replica_acks,
            opts.proxy_partitions
                .map(|p| format!(", partitions: {p}"))
                .unwrap_or_default(),
            opts.rate_limits,
            opts.log_level,
            opts.extra_yaml
        );
        std::fs::write(&self.config_path, yaml).unwrap();
    }

    /// Starts the proxy (after it exited) and waits until it is ready.
    pub fn start_proxy(&mut self) {
        self.proxy = Some(self.spawn_proxy(false));
        self.wait_ready();
    }

    fn spawn_proxy(&self, upgrade: bool) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("proxy.log"))
            .unwrap();
        let mut cmd = match &self.proxy_nofile {
            // prlimit sets the limit on itself, then runs the proxy in its place (same pid).
            Some(nofile) => {
                let mut cmd = Command::new("prlimit");
                cmd.arg(format!("--nofile={nofile}"))
                    .arg("--")
                    .arg(binary("kurz-proxy"));
                cmd
            }
            None => Command::new(binary("kurz-proxy")),
        };
        // The config file says which Redis; an operator's environment must not switch it.
        cmd.env_remove("REDIS_CLUSTER_URLS")
            .env_remove("KURZ_REDIS_REPLICA_ACKS")
            .env_remove("REDIS_URL")
            .envs(self.proxy_env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd.arg("-c").arg(&self.config_path);
        if upgrade {
            cmd.arg("--upgrade");
        }
        cmd.current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// Sends `signal` (a `kill -s` name) to the running proxy.
    pub fn signal_proxy(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.proxy_pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits (bounded) for the running proxy to exit; returns whether it exited cleanly.
    pub fn wait_proxy_exit(&mut self, timeout: Duration) -> bool {
        let child = self.proxy.as_mut().unwrap();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.proxy = None;
                return status.success();
            }
            assert!(Instant::now() < deadline, "the proxy did not exit");
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// A graceful upgrade as docs/operations.md describes it: a new process started with
    /// `--upgrade`, then SIGQUIT to the old one. Returns once the old one exited (cleanly).
    pub fn upgrade_proxy(&mut self) {
        self.upgrade_proxy_with(|_, _| {});
    }

    /// [`Self::upgrade_proxy`], running `meanwhile` with the new process's pid while it waits
    /// for the sockets (before the old one is told to hand them over).
    pub fn upgrade_proxy_with(&mut self, meanwhile: impl FnOnce(&Self, u32)) {
        let new = self.spawn_proxy(true);
        // The new process waits on the upgrade socket; the old one sends to it.
        let sock = self.dir.join("upgrade.sock");
        wait_until(
            "the new proxy's upgrade socket",
            Duration::from_secs(30),
            || sock.exists(),
        );
        meanwhile(self, new.id());
        self.signal_proxy("QUIT");
        let mut old = self.proxy.replace(new).unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = old.try_wait().unwrap() {
                assert!(status.success(), "the old proxy exited with {status}");
                break;
            }
            assert!(Instant::now() < deadline, "the old proxy did not exit");
            std::thread::sleep(Duration::from_millis(25));
        }
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let admin = self.admin_port;
        wait_until(
            "the proxy to see a healthy upstream",
            Duration::from_secs(30),
            || {
                let out = Command::new("curl")
                    .args(["-s", "-f"])
                    .arg(format!("http://127.0.0.1:{admin}/health/ready"))
                    .output();
                out.is_ok_and(|o| o.stdout.ends_with(br#""upstreams":"ok"}"#))
            },
        );
        // Each Pingora service binds its listeners on its own thread: the admin listener
        // answering says nothing about the public ones.
        let https = self.serves_https.then_some(self.https_port);
        for port in std::iter::once(self.http_port).chain(https) {
            wait_until("the proxy's listeners", Duration::from_secs(30), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
        }
    }

    /// A second edge on the same config (same Redis, prefix and API pool) with its own ports,
    /// killed on drop.
    pub fn second_edge(&self) -> SecondEdge {
        let (http, https, admin) = (free_port(), free_port(), free_port());
        let d = self.dir.display().to_string();
        let yaml = std::fs::read_to_string(&self.config_path)
            .unwrap()
            .replace(
                &format!("127.0.0.1:{}", self.http_port),
                &format!("127.0.0.1:{http}"),
            )
            .replace(
                &format!("127.0.0.1:{}", self.https_port),
                &format!("127.0.0.1:{https}"),
            )
            .replace(
                &format!("127.0.0.1:{}", self.admin_port),
                &format!("127.0.0.1:{admin}"),
            )
            .replace(&format!("{d}/upgrade.sock"), &format!("{d}/upgrade-b.sock"))
            .replace(&format!("{d}/proxy.pid"), &format!("{d}/proxy-b.pid"));
        let config = self.dir.join("proxy-b.yaml");
        std::fs::write(&config, yaml).unwrap();
        let log = std::fs::File::create(self.dir.join("proxy-b.log")).unwrap();
        let child = Command::new(binary("kurz-proxy"))
            .env_remove("REDIS_CLUSTER_URLS")
            .env_remove("KURZ_REDIS_REPLICA_ACKS")
            .env_remove("REDIS_URL")
            .arg("-c")
            .arg(&config)
            .current_dir(&self.dir)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let edge = SecondEdge {
            child,
            http_port: http,
            admin_port: admin,
        };
        wait_until("the second edge", Duration::from_secs(30), || {
            let out = Command::new("curl")
                .args(["-s", "-f"])
                .arg(format!("http://127.0.0.1:{admin}/health/ready"))
                .output();
            out.is_ok_and(|o| o.stdout.ends_with(br#""upstreams":"ok"}"#))
                && std::net::TcpStream::connect(("127.0.0.1", http)).is_ok()
        });
        edge
    }

    pub fn proxy_pid(&self) -> u32 {
        self.proxy.as_ref().unwrap().id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }

    /// Link `id`'s stored clicks, through the edge and the API (`GET /events`).
    pub async fn clicks_of(&self, id: i64) -> Vec<serde_json::Value> {
        self.get(&format!("/events?url_id={id}&event_type=click"))
            .await
            .json()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let res = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "POST {path}: {}", res.status());
        res.json().await.unwrap()
    }

    /// A user and a link through the edge; returns (url id, code).
    pub async fn link(&self, target: &str) -> (i64, String) {
        let name = format!("u{:08x}", rand::random::<u32>());
        let user = self
            .post(
                "/users",
                serde_json::json!({"username": name, "email": format!("{name}@example.com")}),
            )
            .await;
        let link = self
            .post(
                "/urls",
                serde_json::json!({"user_id": user["id"], "original_url": target}),
            )
            .await;
        (
            link["id"].as_i64().unwrap(),
            link["short_code"].as_str().unwrap().to_owned(),
        )
    }

    /// A metric's value summed over the series whose labels contain every `labels` pair.
    pub async fn metric(&self, admin_port: u16, name: &str, labels: &[&str]) -> f64 {
        let text = self
            .client
            .get(format!("http://127.0.0.1:{admin_port}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| {
                l.starts_with(name)
                    && (l.as_bytes().get(name.len()) == Some(&b'{')
                        || l.as_bytes().get(name.len()) == Some(&b' '))
            })
            .filter(|l| labels.iter().all(|lab| l.contains(lab)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Waits (bounded) until `kurz_proxy_config_reloads_total{result}` reaches `want`.
    pub async fn reloads_reach(&self, result: &str, want: f64) {
        let label = format!("result=\"{result}\"");
        let deadline = Instant::now() + Duration::from_secs(10);
        while self
            .metric(
                self.admin_port,
                "kurz_proxy_config_reloads_total",
                &[&label],
            )
            .await
            < want
        {
            assert!(
                Instant::now() < deadline,
                "no {result} reload: {}",
                self.proxy_log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A counter the edge moves after the response has gone out (`kurz_proxy_requests_total`
    /// is counted in Pingora's logging phase): read once it reaches `want`, or after a deadline,
    /// so the caller can assert the exact value without racing the edge.
    pub async fn counter_at(&self, admin_port: u16, name: &str, labels: &[&str], want: f64) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let value = self.metric(admin_port, name, labels).await;
            if value >= want || Instant::now() >= deadline {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub fn proxy_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("proxy.log")).unwrap_or_default()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(mut p) = self.proxy.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
        for up in &mut self.upstreams {
            up.kill();
        }
        psql(
            &self.pg_admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db),
        );
        // On a cluster every node holds some keys; one key per DEL (a node refuses cross-slot
        // DELs, a replica any: harmless).
        let mut nodes = self.redis_cluster.clone();
        nodes.push(self.redis_url.clone());
        for node in nodes {
            if let Ok(client) = redis::Client::open(node.as_str()) {
                if let Ok(mut conn) = client.get_connection() {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("{}:*", self.prefix))
                        .query(&mut conn)
                        .unwrap_or_default();
                    for key in keys {
                        let _: Result<i64, _> = redis::cmd("DEL").arg(key).query(&mut conn);
                    }
                }
            }
        }
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        } else {
            eprintln!("logs kept in {}", self.dir.display());
        }
    }
}

/// Another kurz-proxy sharing a [`Stack`]'s Redis and API pool.
pub struct SecondEdge {
    child: Child,
    pub http_port: u16,
    pub admin_port: u16,
}

impl SecondEdge {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http_port)
    }
}

impl Drop for SecondEdge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn curl(args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(args)
        .output()
        .expect("curl must be installed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What a [`fake_upstream`] does with a request other than a health check.
#[derive(Clone, Copy, PartialEq)]
pub enum Behaviour {
    /// Leaves it unanswered until the edge lets go of the connection.
    Hold,
    /// Closes the connection without a word: it died mid-request.
    Close,
    /// `200 {}`.
    Answer,
    /// Closes the connection of the first such request it receives, answers the others.
    CloseFirst,
    /// `200` with a gigabyte body, written until the edge takes no more; the write's failure
    /// is then recorded as a request for [`FLOOD_ENDED`].
    Flood,
    /// Reads the head and nothing more, the connection left open: a frozen API (stopped, its
    /// host gone) under an upload.
    Deaf,
}

/// What a [`Behaviour::Flood`] upstream records once the edge let go of its answer.
pub const FLOOD_ENDED: &str = "<flood ended>";

/// Each request's path and its headers (names lower-cased), as an upstream received them.
pub type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, Vec<(String, String)>)>>>;

/// The paths `seen` holds, in order.
pub fn paths(seen: &Received) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(p, _)| p.clone())
        .collect()
}

/// An upstream on a free port that answers its health checks (`/health…`) `200 {}` and treats
/// every other request as `behaviour` says, keeping what it received. Bodiless requests only
/// (GETs and health checks): it reads no body.
pub fn fake_upstream(behaviour: Behaviour) -> (String, Received) {
    use std::io::{BufRead, BufReader, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen: Received = Default::default();
    let log = seen.clone();
    let closed_one = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let log = log.clone();
            let closed_one = closed_one.clone();
            std::thread::spawn(move || {
                let mut out = conn.try_clone().unwrap();
                let mut reader = BufReader::new(conn);
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
                    let mut headers = Vec::new();
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        let header = header.trim_end();
                        if header.is_empty() {
                            break;
                        }
                        if let Some((name, value)) = header.split_once(':') {
                            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
                        }
                    }
                    if !path.starts_with("/health") {
                        log.lock().unwrap().push((path, headers));
                        if behaviour == Behaviour::Flood {
                            let head = "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: 1073741824\r\n\r\n";
                            let chunk = vec![0u8; 64 << 10];
                            let _ = out.write_all(head.as_bytes());
                            while out.write_all(&chunk).is_ok() {}
                            log.lock().unwrap().push((FLOOD_ENDED.into(), Vec::new()));
                            return;
                        }
                        match behaviour {
                            // The next read ends when the edge closes the connection.
                            Behaviour::Hold => continue,
                            Behaviour::Deaf => {
                                std::thread::sleep(Duration::from_secs(300));
                                return;
                            }
                            Behaviour::Close => return,
                            Behaviour::CloseFirst
                                if !closed_one.swap(true, std::sync::atomic::Ordering::SeqCst) =>
                            {
                                return
                            }
                            Behaviour::Answer | Behaviour::CloseFirst | Behaviour::Flood => {}
                        }
                    }
                    let reply = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if out.write_all(reply.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A [`fake_upstream`] that does `behaviour`, made the stack's only one (a reload with `opts`);
/// returns once it is in rotation, its health check passed and it alone answers.
pub async fn upstream_alone(
    stack: &Stack,
    opts: &Options,
    behaviour: Behaviour,
) -> (String, Received) {
    let (addr, seen) = fake_upstream(behaviour);
    stack.write_config_servers(std::slice::from_ref(&addr), opts);
    stack.signal_proxy("HUP");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let res = stack.get("/health").await;
        if res.status() == 200 && res.text().await.unwrap() == "{}" {
            return (addr, seen);
        }
        assert!(
            Instant::now() < deadline,
            "the fake upstream got no traffic"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
