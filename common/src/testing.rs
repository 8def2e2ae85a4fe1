//! For tests only (feature `testing`): servers a fault test owns — a private redis-server and a
//! private PostgreSQL cluster on free loopback ports — so killing, stalling or stopping them
//! never touches the shared services. The API's and the edge's test suites both use them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Where the tests' servers listen: below the ephemeral range (32768+), so no client socket
/// takes a port while its server restarts, and above the cluster nodes' bus ports
/// ([`RedisCluster`]), which a node opens at its port + 10000 only when it starts: a port picked
/// here and not yet bound by its server could otherwise be taken by a cluster starting in a
/// parallel test, or take the port of its bus.
pub const FREE_PORTS: std::ops::Range<u16> = 26_000..32_000;

/// A free port in [`FREE_PORTS`].
fn free_port() -> u16 {
    loop {
        let p = FREE_PORTS.start + (rand::random::<u16>() % FREE_PORTS.len() as u16);
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

fn wait_port(port: u16, what: &str) {
    for _ in 0..500 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{what} did not start on port {port}");
}

/// How a private Redis keeps its data.
#[derive(Clone, Copy, PartialEq)]
pub enum Persistence {
    /// Nothing on disk: a restart comes back empty.
    None,
    /// An append-only file fsynced on every write: a restart comes back with every write.
    AofAlways,
    /// No append-only file: a restart comes back as of the test's last `SAVE` (empty without
    /// one), as Redis does after losing its last writes or being restored from a backup.
    Snapshot,
    /// The shipped `deploy/redis/redis.conf` (append-only file), with `appendfsync always` so
    /// a test's kill loses nothing it could assert on; the shipped `everysec` may lose the last
    /// second, which production counts as lost clicks.
    Shipped,
}

/// A private redis-server, killed (`SIGKILL`) on drop.
pub struct PrivateRedis {
    child: Child,
    pub port: u16,
    dir: PathBuf,
    persistence: Persistence,
}

impl PrivateRedis {
    pub fn start(persistence: Persistence) -> Self {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("kurz-redis-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = spawn_redis(port, &dir, persistence);
        wait_port(port, "private redis-server");
        Self {
            child,
            port,
            dir,
            persistence,
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `kill -9`: a crash, no chance to write anything more.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `SIGSTOP`: the server goes silent with every connection left open, as a partitioned or
    /// hung node does, until the returned guard is dropped (`SIGCONT`) — however the test ends,
    /// since its clean-up talks to this Redis.
    pub fn paused(&self) -> Paused<'_> {
        signal(self.child.id(), "-STOP");
        Paused(self)
    }

    /// Makes this Redis a replica (of a port nothing listens on), as a failover demotes a
    /// master: it keeps its data and connections and answers writes `READONLY`.
    pub fn demote(&self) {
        let closed = free_port();
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "REPLICAOF", "127.0.0.1"])
            .arg(closed.to_string())
            .output()
            .expect("redis-cli");
        assert!(
            String::from_utf8_lossy(&out.stdout).starts_with("OK"),
            "REPLICAOF: {out:?}"
        );
    }

    /// Starts again on the same port and directory: empty without persistence, from the AOF
    /// with it.
    pub fn restart(&mut self) {
        self.child = spawn_redis(self.port, &self.dir, self.persistence);
        wait_port(self.port, "private redis-server");
    }
}

/// A slot [`RedisCluster::migrating`] put in the middle of a move; left where it was on drop.
pub struct SlotMoving<'a> {
    cluster: &'a RedisCluster,
    slot: String,
    nodes: [u16; 2],
}

impl Drop for SlotMoving<'_> {
    fn drop(&mut self) {
        for port in self.nodes {
            self.cluster
                .cli(port, &["CLUSTER", "SETSLOT", &self.slot, "STABLE"]);
        }
    }
}

/// A [`PrivateRedis`] stopped by [`PrivateRedis::paused`]; resumed on drop.
pub struct Paused<'a>(&'a PrivateRedis);

impl Drop for Paused<'_> {
    fn drop(&mut self) {
        signal(self.0.child.id(), "-CONT");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn signal(pid: u32, which: &str) {
    let ok = Command::new("kill")
        .args([which, &pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill {which} {pid}");
}

fn spawn_redis(port: u16, dir: &std::path::Path, persistence: Persistence) -> Child {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/redis/redis.conf");
    let (conf, aof): (&[&str], &[&str]) = match persistence {
        Persistence::None | Persistence::Snapshot => (&[], &["--appendonly", "no"]),
        Persistence::AofAlways => (&[], &["--appendonly", "yes", "--appendfsync", "always"]),
        Persistence::Shipped => (&[shipped], &["--appendfsync", "always"]),
    };
    Command::new("redis-server")
        .args(conf)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
        ])
        .args(aof)
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be installed for the Redis failure tests")
}

/// A private PostgreSQL cluster (initdb in a temporary directory, `fsync=off`), stopped and
/// removed on drop. initdb and postgres refuse to run as root, so as root they run as the
/// `postgres` user.
pub struct PrivatePg {
    pub port: u16,
    dir: PathBuf,
    bin: PathBuf,
}

impl PrivatePg {
    /// A fresh cluster, initialised, not started.
    fn init() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries (/usr/lib/postgresql/*/bin) for the outage tests")
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .max()
            .expect("an initdb under /usr/lib/postgresql/*/bin");
        let dir = std::env::temp_dir().join(format!("kurz-pg-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        let pg = Self {
            port: free_port(),
            dir,
            bin,
        };
        if is_root() {
            let ok = Command::new("chown")
                .arg("postgres")
                .arg(&pg.dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown postgres {}", pg.dir.display());
        }
        pg.run(
            "initdb",
            &["-D", &pg.data(), "-A", "trust", "-U", "postgres"],
        );
        pg
    }

    pub fn start() -> Self {
        let pg = Self::init();
        pg.up();
        pg
    }

    /// A private server that also speaks TLS, with a certificate for `localhost` and
    /// `127.0.0.1` signed by a throwaway CA. Returns the server and the CA's PEM file.
    pub fn start_with_tls() -> (Self, PathBuf) {
        let pg = Self::init();
        let dir = &pg.dir;
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(dir)
                .output()
                .expect("openssl must be installed");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=kurz-test-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            dir.join("ext.cnf"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.crt",
        ]);
        let data = PathBuf::from(pg.data());
        std::fs::copy(dir.join("server.crt"), data.join("server.crt")).unwrap();
        std::fs::copy(dir.join("server.key"), data.join("server.key")).unwrap();
        if is_root() {
            for f in ["server.crt", "server.key"] {
                let ok = Command::new("chown")
                    .arg("postgres")
                    .arg(data.join(f))
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "chown postgres {f}");
            }
        }
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        use std::io::Write;
        writeln!(conf, "ssl = on").unwrap();
        pg.up();
        let ca = pg.dir.join("ca.pem");
        (pg, ca)
    }

    fn data(&self) -> String {
        self.dir.join("data").display().to_string()
    }

    fn tool(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let out = self
            .tool(tool)
            .args(args)
            .output()
            .expect("run a PostgreSQL tool");
        assert!(
            out.status.success(),
            "{tool} {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts the server and waits until it accepts connections.
    pub fn up(&self) {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_prepared_transactions=4",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("pg.log").display().to_string();
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-o", &opts, "-l", &log, "-w", "start"],
        );
    }

    /// A clean, fast stop: an outage as an operator's restart causes it.
    pub fn down(&self) {
        self.run("pg_ctl", &["-D", &self.data(), "-m", "fast", "-w", "stop"]);
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.data();
        let _ = self
            .tool("pg_ctl")
            .args(["-D", &data, "-m", "immediate", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

/// A private Redis Cluster on free loopback ports: three masters with one replica each, every
/// node writing an fsynced append-only file, all killed on drop.
pub struct RedisCluster {
    nodes: Vec<(u16, Option<Child>)>,
    /// Nodes stopped by [`RedisCluster::paused`]: the helpers ask the others.
    paused: std::sync::Mutex<Vec<u16>>,
    dir: PathBuf,
}

impl RedisCluster {
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("kurz-cluster-{:016x}", rand::random::<u64>()));
        // Each node also listens on port + 10000 (the cluster bus): nodes in 10000..16000,
        // buses in 20000..26000, both below [`FREE_PORTS`], where the other servers listen.
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 6 {
            let p = 10_000 + (rand::random::<u16>() % 6_000);
            let clash = ports
                .iter()
                .any(|&q| q == p || q + 10_000 == p || p + 10_000 == q);
            if !clash
                && std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
            {
                ports.push(p);
            }
        }
        let mut cluster = Self {
            nodes: Vec::new(),
            paused: std::sync::Mutex::new(Vec::new()),
            dir,
        };
        for &port in &ports {
            let child = cluster.spawn_node(port);
            cluster.nodes.push((port, Some(child)));
        }
        for &port in &ports {
            wait_port(port, "cluster redis-server");
        }
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(ports.iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli must be installed for the cluster tests");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        cluster.wait_ok();
        cluster.wait_replicas_synced();
        cluster
    }

    /// Waits until every replica has finished its first sync: before that it cannot take over
    /// (it would have no data), and killing its master would leave the slots without one.
    fn wait_replicas_synced(&self) {
        for _ in 0..1500 {
            let synced = self.nodes.iter().all(|(p, _)| {
                let info = self.cli(*p, &["INFO", "replication"]);
                info.contains("role:master") || info.contains("master_link_status:up")
            });
            if synced {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the cluster's replicas did not finish their first sync");
    }

    fn spawn_node(&self, port: u16) -> Child {
        let dir = self.dir.join(port.to_string());
        std::fs::create_dir_all(&dir).unwrap();
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            // A dead master is replaced within about a second.
            .args(["--cluster-node-timeout", "1000"])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the cluster tests")
    }

    /// `redis://127.0.0.1:<port>` of every node, the seeds a client is given.
    pub fn seeds(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|(p, _)| format!("redis://127.0.0.1:{p}"))
            .collect()
    }

    fn cli(&self, port: u16, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn live_port(&self) -> u16 {
        let paused = self.paused.lock().unwrap();
        self.nodes
            .iter()
            .find(|(p, c)| c.is_some() && !paused.contains(p))
            .map(|(p, _)| *p)
            .expect("a live cluster node")
    }

    /// Waits until every live node reports `cluster_state:ok` and every slot has a live
    /// master.
    pub fn wait_ok(&self) {
        for _ in 0..1500 {
            let paused = self.paused.lock().unwrap().clone();
            let ok = self
                .nodes
                .iter()
                .filter(|(p, c)| c.is_some() && !paused.contains(p))
                .all(|(p, _)| {
                    self.cli(*p, &["CLUSTER", "INFO"])
                        .contains("cluster_state:ok")
                });
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the private Redis Cluster did not reach cluster_state:ok");
    }

    /// The port of the master that serves `key` now.
    pub fn master_of(&self, key: &str) -> u16 {
        self.serving(key).expect("a master serves the key")
    }

    /// The live master serving `key`, if one does (none between a master's failure and its
    /// replica's promotion).
    fn serving(&self, key: &str) -> Option<u16> {
        let port = self.live_port();
        let slot: u16 = self
            .cli(port, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT reply");
        for line in self.cli(port, &["CLUSTER", "NODES"]).lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => {
                    a.parse::<u16>().is_ok_and(|a| a <= slot)
                        && b.parse::<u16>().is_ok_and(|b| slot <= b)
                }
                None => range.parse::<u16>() == Ok(slot),
            });
            if serves {
                // A node listed without its address (`:0@0`) serves nobody: seen once right
                // after a master's kill, for over a minute, with every client sent there by
                // `MOVED <slot> :0`. Not a takeover until the owner has an address.
                let addr = f[1].split('@').next().unwrap_or_default();
                return addr.rsplit(':').next()?.parse().ok().filter(|p| *p != 0);
            }
        }
        None
    }

    /// Waits until a master other than `old` serves `key` (its replica was promoted) and the
    /// cluster is ok again.
    pub fn wait_failover(&self, key: &str, old: u16) {
        for _ in 0..1500 {
            if self.serving(key).is_some_and(|p| p != old) {
                self.wait_ok();
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "no replica took over from the master on port {old}:\n{}",
            self.cli(self.live_port(), &["CLUSTER", "NODES"])
        );
    }

    /// The port of a replica of the master on `master`.
    pub fn replica_of(&self, master: u16) -> u16 {
        let nodes = self.cli(self.live_port(), &["CLUSTER", "NODES"]);
        let port_of = |addr: &str| -> Option<u16> {
            addr.split('@').next()?.rsplit(':').next()?.parse().ok()
        };
        let id = nodes
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 2 && port_of(f[1]) == Some(master))
            .map(|f| f[0].to_owned())
            .expect("the master is listed");
        nodes
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .find(|f| f.len() > 3 && f[2].contains("slave") && f[3] == id)
            .and_then(|f| port_of(f[1]))
            .expect("the master has a replica")
    }

    /// The slot of `key` in the middle of a move (resharding) to another master: `MIGRATING`
    /// on its master, `IMPORTING` on the other, no key moved yet, until the returned guard is
    /// dropped (both nodes `STABLE` again, the slot where it was).
    pub fn migrating(&self, key: &str) -> SlotMoving<'_> {
        let from = self.master_of(key);
        let slot = self
            .cli(from, &["CLUSTER", "KEYSLOT", key])
            .trim()
            .to_owned();
        let id_of = |port: u16| self.cli(port, &["CLUSTER", "MYID"]).trim().to_owned();
        let to = self
            .nodes
            .iter()
            .map(|(p, _)| *p)
            .find(|p| *p != from && self.cli(*p, &["ROLE"]).starts_with("master"))
            .expect("another master");
        let (from_id, to_id) = (id_of(from), id_of(to));
        for (port, how, other) in [(to, "IMPORTING", &from_id), (from, "MIGRATING", &to_id)] {
            let said = self.cli(port, &["CLUSTER", "SETSLOT", &slot, how, other]);
            assert!(said.starts_with("OK"), "SETSLOT {how}: {said}");
        }
        SlotMoving {
            cluster: self,
            slot,
            nodes: [from, to],
        }
    }

    /// `SIGSTOP` of one node: it goes silent with its connections open, as a hung or
    /// partitioned master does, until the returned guard is dropped (`SIGCONT`).
    pub fn paused(&self, port: u16) -> NodePaused<'_> {
        let pid = self
            .nodes
            .iter()
            .find(|(p, _)| *p == port)
            .and_then(|(_, child)| child.as_ref())
            .map(Child::id)
            .expect("a live node on that port");
        signal(pid, "-STOP");
        self.paused.lock().unwrap().push(port);
        NodePaused {
            cluster: self,
            port,
            pid,
        }
    }

    /// `kill -9` of one node.
    pub fn kill(&mut self, port: u16) {
        if let Some((_, child)) = self.nodes.iter_mut().find(|(p, _)| *p == port) {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A node stopped by [`RedisCluster::paused`]; resumed on drop.
pub struct NodePaused<'a> {
    cluster: &'a RedisCluster,
    port: u16,
    pid: u32,
}

impl Drop for NodePaused<'_> {
    fn drop(&mut self) {
        signal(self.pid, "-CONT");
        self.cluster
            .paused
            .lock()
            .unwrap()
            .retain(|p| *p != self.port);
    }
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for (_, child) in &mut self.nodes {
            if let Some(mut c) = child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A pair valid from `start` to `end` (`YYYYMMDDHHMMSSZ`): `openssl req` only issues
/// from now on, `openssl ca` takes both dates (with an extension, so the certificate is a
/// version 3 one, the only version rustls takes).
pub fn dated_pair(dir: &std::path::Path, name: &str, start: &str, end: &str) {
    std::fs::write(dir.join("index.txt"), "").unwrap();
    std::fs::write(dir.join("serial"), "01\n").unwrap();
    let conf = "[ca]\ndefault_ca = here\n[here]\ndatabase = index.txt\nnew_certs_dir = .\n\
                serial = serial\ndefault_md = sha256\npolicy = any\nx509_extensions = v3\n\
                [any]\ncommonName = supplied\n[v3]\nbasicConstraints = CA:FALSE\nsubjectAltName = DNS:localhost,IP:127.0.0.1\n";
    std::fs::write(dir.join("ca.cnf"), conf).unwrap();
    let run = |args: &[&str]| {
        let status = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl must be installed");
        assert!(status.success(), "openssl {args:?}");
    };
    let (key, csr, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.pem"),
    );
    run(&[
        "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=t", "-keyout", &key, "-out",
        &csr,
    ]);
    run(&[
        "ca",
        "-config",
        "ca.cnf",
        "-selfsign",
        "-keyfile",
        &key,
        "-in",
        &csr,
        "-out",
        &pem,
        "-startdate",
        start,
        "-enddate",
        end,
        "-batch",
        "-notext",
    ]);
}

/// (soft, hard) of a process's "Max open files", as `/proc/<pid>/limits` prints them
/// (`pid` may be `self`).
pub fn open_file_limits(pid: &str) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut numbers = line.split_whitespace().skip(3);
    let mut next = || numbers.next().unwrap().to_owned();
    (next(), next())
}
