//! A renewed certificate is served after SIGHUP, without a restart and without failing a
//! handshake or a request of the TLS traffic running meanwhile.

use crate::harness::{Options, Stack};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The subject CN of the certificate the edge serves now.
fn served_cn(port: u16) -> String {
    let hello = Command::new("openssl")
        .args(["s_client", "-connect", &format!("127.0.0.1:{port}")])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("openssl must be installed");
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-subject"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    x509.stdin.take().unwrap().write_all(&hello.stdout).unwrap();
    let out = x509.wait_with_output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A new self-signed pair for `localhost` and 127.0.0.1, valid 90 days, named `cn`.
fn new_pair(cert: &std::path::Path, key: &std::path::Path, cn: &str) {
    let status = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "90",
        ])
        .args(["-subj", &format!("/CN={cn}")])
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_serves_a_renewed_certificate_without_failing_a_handshake() {
    let stack = Stack::start(Options::default());
    assert!(served_cn(stack.https_port).contains("localhost"));
    let expiry = || {
        stack.metric(
            stack.admin_port,
            "kurz_proxy_tls_cert_expiry_timestamp_seconds",
            &[],
        )
    };
    let before = expiry().await;

    // TLS load: every request a new connection, so every one is a handshake.
    let (ok, failed, stop) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicBool::new(false)),
    );
    let url = format!("https://127.0.0.1:{}/health/live", stack.https_port);
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (ok, failed, stop, url) = (ok.clone(), failed.clone(), stop.clone(), url.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let out = Command::new("curl")
                        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", &url])
                        .output()
                        .unwrap();
                    if out.stdout == b"200" {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();

    // The renewed pair, written beside the served one and moved over it.
    let (cert, key) = (stack.dir.join("cert.pem"), stack.dir.join("key.pem"));
    let (new_cert, new_key) = (
        stack.dir.join("new-cert.pem"),
        stack.dir.join("new-key.pem"),
    );
    new_pair(&new_cert, &new_key, "rotated");
    let wait_load = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while ok.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "the TLS load stalled");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_load(20);
    std::fs::rename(&new_key, &key).unwrap();
    std::fs::rename(&new_cert, &cert).unwrap();
    let reloads = || {
        stack.metric(
            stack.admin_port,
            "kurz_proxy_config_reloads_total",
            &["result=\"ok\""],
        )
    };
    let reloaded = reloads().await;
    stack.signal_proxy("HUP");
    let deadline = Instant::now() + Duration::from_secs(10);
    while reloads().await <= reloaded {
        assert!(
            Instant::now() < deadline,
            "no reload: {}",
            stack.proxy_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after_reload = ok.load(Ordering::Relaxed);
    wait_load(after_reload + 20);
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }

    assert!(
        served_cn(stack.https_port).contains("rotated"),
        "the renewed certificate is served"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "a handshake or request failed during the swap"
    );
    let days = (expiry().await - before) / 86_400.0;
    assert!(
        (87.0..=89.0).contains(&days),
        "the expiry metric follows the new certificate: +{days} days"
    );
}

/// Sends SIGHUP and waits for the reload to count as failed; the pair the stack started with
/// (`localhost`) is still served.
async fn reload_refused_keeping_the_served_pair(stack: &Stack) {
    stack.signal_proxy("HUP");
    let errors = || {
        stack.metric(
            stack.admin_port,
            "kurz_proxy_config_reloads_total",
            &["result=\"error\""],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while errors().await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the reload was not refused: {}",
            stack.proxy_log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        served_cn(stack.https_port).contains("localhost"),
        "the running pair is still served"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_keeps_serving_the_old_pair_when_the_new_one_does_not_match() {
    let stack = Stack::start(Options::default());
    let metric = |name: &'static str, labels: &'static [&'static str]| {
        stack.metric(stack.admin_port, name, labels)
    };
    let expiry = metric("kurz_proxy_tls_cert_expiry_timestamp_seconds", &[]).await;

    // A renewed certificate copied over the served one without its new key.
    let (new_cert, new_key) = (
        stack.dir.join("new-cert.pem"),
        stack.dir.join("new-key.pem"),
    );
    new_pair(&new_cert, &new_key, "mismatched");
    std::fs::rename(&new_cert, stack.dir.join("cert.pem")).unwrap();
    reload_refused_keeping_the_served_pair(&stack).await;
    let url = format!("https://127.0.0.1:{}/health/live", stack.https_port);
    let out = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", &url])
        .output()
        .unwrap();
    assert_eq!(out.stdout, b"200", "TLS requests still succeed");
    assert_eq!(
        metric("kurz_proxy_tls_cert_expiry_timestamp_seconds", &[]).await,
        expiry,
        "the expiry metric still follows the served certificate"
    );
    assert_eq!(
        metric("kurz_proxy_config_reloads_total", &["result=\"ok\""]).await,
        0.0
    );
}

/// A pair that expired, put back in place of the served one (a renewal that copied an old
/// file): not swapped in, the reload counted as failed, the served pair still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_keeps_serving_the_old_pair_when_the_new_one_expired() {
    let stack = Stack::start(Options::default());
    let metric = |name: &'static str, labels: &'static [&'static str]| {
        stack.metric(stack.admin_port, name, labels)
    };
    let expiry = metric("kurz_proxy_tls_cert_expiry_timestamp_seconds", &[]).await;
    let old = stack.dir.join("old");
    std::fs::create_dir_all(&old).unwrap();
    kurz_common::testing::dated_pair(&old, "expired", "20200101000000Z", "20200102000000Z");
    std::fs::rename(old.join("expired.key"), stack.dir.join("key.pem")).unwrap();
    std::fs::rename(old.join("expired.pem"), stack.dir.join("cert.pem")).unwrap();
    // The same file changes a key only a restart applies: the rest is applied, and the
    // restart it waits for is counted although the reload failed on its pair.
    let restart_only = Options {
        extra_yaml: "clicks: { batch_max: 7 }\n".into(),
        ..Options::default()
    };
    stack.write_config(&[0, 1], &restart_only);
    reload_refused_keeping_the_served_pair(&stack).await;
    assert_eq!(
        metric("kurz_proxy_tls_cert_expiry_timestamp_seconds", &[]).await,
        expiry
    );
    assert!(stack
        .proxy_log()
        .contains("the rest of the file was applied"));
    assert_eq!(
        metric("kurz_proxy_config_keys_needing_restart", &[]).await,
        1.0
    );
}

/// An expired pair: `--check` refuses it, as a reload would; a start serves it all the same with
/// a warning (an edge that did not start would stop plain HTTP too, and the systemd unit starts
/// without `--check` for that reason), and a reload then takes the renewed pair.
#[test]
fn an_expired_pair_fails_the_check_and_is_served_at_start_with_a_warning() {
    let dir = std::env::temp_dir().join(format!("kurz-expired-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    kurz_common::testing::dated_pair(&dir, "expired", "20200101000000Z", "20200102000000Z");
    let https = crate::harness::free_port();
    let prefix = format!("kurzexpired{}", std::process::id());
    let file = dir.join("proxy.yaml");
    std::fs::write(
        &file,
        format!(
            "server: {{ upgrade_sock: {d}/upgrade.sock }}\n\
             listen: {{ http: [\"127.0.0.1:{http}\"], https: [\"127.0.0.1:{https}\"], tls_cert: {d}/expired.pem, tls_key: {d}/expired.key }}\n\
             admin: {{ listen: \"127.0.0.1:{admin}\" }}\n\
             upstreams: {{ servers: [\"127.0.0.1:{upstream}\"] }}\n\
             redis: {{ url: \"{redis}\", prefix: {prefix} }}\n",
            d = dir.display(),
            http = crate::harness::free_port(),
            admin = crate::harness::free_port(),
            upstream = crate::harness::free_port(),
            redis = crate::harness::default_redis_url(),
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_kurz-proxy");
    let check = Command::new(bin)
        .arg("--check")
        .arg("-c")
        .arg(&file)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stderr).into_owned();
    assert!(!check.status.success(), "--check passed an expired pair");
    assert!(said.contains("listen.tls_cert"), "{said}");

    let mut edge = crate::harness::edge_reading_stderr(&file);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut served = false;
    while Instant::now() < deadline && edge.try_wait().unwrap().is_none() {
        // The pair's subject is `CN = t`; nothing listening gives no subject.
        if served_cn(https).contains("CN") {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = edge.kill();
    edge.wait().unwrap();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut edge.stderr.take().unwrap(), &mut stderr).unwrap();
    let client = redis::Client::open(crate::harness::default_redis_url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut conn)
        .unwrap();
    for key in keys {
        let _: i64 = redis::cmd("DEL").arg(key).query(&mut conn).unwrap();
    }
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(served, "the expired pair was not served: {stderr}");
    assert!(
        stderr.starts_with("kurz-proxy: warning: config key `listen.tls_cert`"),
        "{stderr}"
    );
}
