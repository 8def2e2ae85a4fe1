//! The `kurz-api` binary as an init system or a container runtime starts it: a stop signal
//! while it waits for PostgreSQL, and the open-file limit it is handed.

use crate::helpers::{closed_port, redis_url};
use kurz_common::testing::open_file_limits;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The binary waiting for a PostgreSQL nothing answers for, killed on the way out.
struct Waiting {
    child: Child,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Waiting {
    /// Starts it (under `prlimit --nofile=<nofile>` when given) and returns once its admin
    /// listener answers `/metrics`, which it serves during the wait: it is past every check of
    /// its start-up and inside the wait.
    async fn start(nofile: Option<&str>) -> Self {
        let admin = closed_port();
        let mut cmd = match nofile {
            Some(limit) => {
                let mut cmd = Command::new("prlimit");
                cmd.arg(format!("--nofile={limit}"))
                    .arg("--")
                    .arg(env!("CARGO_BIN_EXE_kurz-api"));
                cmd
            }
            None => Command::new(env!("CARGO_BIN_EXE_kurz-api")),
        };
        let child = cmd
            .arg("serve")
            .current_dir(std::env::temp_dir())
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KURZ_LISTEN", format!("127.0.0.1:{}", closed_port()))
            .env("KURZ_ADMIN_LISTEN", format!("127.0.0.1:{admin}"))
            .env(
                "DATABASE_URL",
                format!("postgres://postgres@127.0.0.1:{}/kurz", closed_port()),
            )
            .env("REDIS_URL", redis_url())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("kurz-api starts");
        let mut waiting = Self { child };
        let url = format!("http://127.0.0.1:{admin}/metrics");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(res) = reqwest::get(&url).await {
                let text = res.text().await.unwrap();
                assert!(text.contains("kurz_api_database_up 0"), "{text}");
                return waiting;
            }
            if let Some(status) = waiting.child.try_wait().unwrap() {
                panic!("kurz-api exited during its start: {status}");
            }
            assert!(Instant::now() < deadline, "no metrics while waiting");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(sent.success());
    }

    async fn exit_status(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "kurz-api did not stop");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// SIGTERM while the API waits for PostgreSQL stops it cleanly (exit status 0). Before, the
/// handler was installed only once it served: the signal's default action killed a process
/// started by a shell, and PID 1 in a container has none, so a pod deleted during the wait
/// ignored it for its whole grace period.
#[tokio::test]
async fn a_stop_signal_while_waiting_for_postgres_stops_the_api() {
    for signal in ["TERM", "INT"] {
        let mut api = Waiting::start(None).await;
        api.signal(signal);
        let status = api.exit_status().await;
        assert!(status.success(), "SIG{signal}: {status}");
    }
}

/// Started with a soft open-file limit of 1024 (a container runtime's default), the API
/// raises it to the hard limit before anything else: every client, PostgreSQL and Redis
/// connection is a descriptor, and 1024 refuses accepts from about a thousand connections.
#[tokio::test]
async fn the_api_raises_its_open_file_limit_to_the_hard_one() {
    let (_, hard) = open_file_limits("self");
    assert!(
        hard.parse::<u64>().unwrap() > 1024,
        "a hard limit above 1024: {hard}"
    );
    let api = Waiting::start(Some(&format!("1024:{hard}"))).await;
    let (soft, api_hard) = open_file_limits(&api.child.id().to_string());
    assert_eq!((&soft, &api_hard), (&hard, &hard));
}
