//! For tests only (feature `testing`): servers a fault test owns — a private redis-server and a
//! private PostgreSQL cluster on free loopback ports — so killing, stalling or stopping them
//! never touches the shared services. The API's and the edge's test suites both use them.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free port below the ephemeral range (32768+), so no client socket takes it while the
/// server restarts.
fn free_port() -> u16 {
    loop {
        let p = 20_000 + (rand::random::<u16>() % 12_000);
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

    /// Starts again on the same port and directory: empty without persistence, from the AOF
    /// with it.
    pub fn restart(&mut self) {
        self.child = spawn_redis(self.port, &self.dir, self.persistence);
        wait_port(self.port, "private redis-server");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn spawn_redis(port: u16, dir: &std::path::Path, persistence: Persistence) -> Child {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/redis/redis.conf");
    let (conf, aof): (&[&str], &[&str]) = match persistence {
        Persistence::None => (&[], &["--appendonly", "no"]),
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
    pub fn start() -> Self {
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
        pg.up();
        pg
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
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off",
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
