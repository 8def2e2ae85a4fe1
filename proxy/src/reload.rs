//! SIGHUP: re-read the config file and apply what can change without a restart — the upstream
//! list, the rate limits, the trusted proxies and the TLS certificate and key (read again from
//! their files, so a renewed certificate is served without a restart). Listeners and Redis need
//! a graceful upgrade instead.

use crate::config::ProxyConfig;
use crate::metrics::METRICS;
use crate::rate_limit::RateLimiter;
use crate::upstreams::Probation;
use async_trait::async_trait;
use kurz_common::env::ProcessEnv;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::path::PathBuf;
use std::sync::Arc;

/// Whether SIGHUP reaches the reloader yet. Readiness waits for this: until then a SIGHUP is
/// only noted ([`note_early_hangups`]), and a deploy script that reloads right after the edge
/// reported ready expects the reload to happen.
static LISTENING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A SIGHUP came before the reloader listened.
static EARLY_HANGUP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn early_hangup(_: libc::c_int) {
    EARLY_HANGUP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// SIGHUP's default action ends the process, and the reloader installs its handler only once
/// the server runs (up to 5 s later under `--upgrade`, waiting for the sockets): a `systemctl
/// reload` or a certificate hook in that window stopped the edge. From the first line of `main`
/// a SIGHUP is noted instead, and the reloader reloads once as it starts, so a file changed and
/// signalled in that window is applied rather than lost. The reloader's handler then takes
/// over (tokio's registry keeps calling this one too, which only sets the flag again).
pub fn note_early_hangups() {
    // SAFETY: called before any other thread exists; the handler only stores to an atomic,
    // which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGHUP,
            early_hangup as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

pub fn listening() -> bool {
    LISTENING.load(std::sync::atomic::Ordering::Acquire)
}

pub struct Reloader {
    pub path: PathBuf,
    /// What the TLS listeners serve; `None` without HTTPS listeners.
    pub cert: Option<Arc<crate::tls_cert::ServedCert>>,
    pub probation: Probation,
    pub lb: Arc<LoadBalancer<RoundRobin>>,
    pub limiter: Arc<RateLimiter>,
    pub trust: crate::service::SharedTrust,
    /// The configuration the process started with: what keys a reload cannot apply still hold.
    pub started: ProxyConfig,
    /// The file alone as it was at start, without the environment.
    pub started_file: ProxyConfig,
}

impl Reloader {
    /// The keys of the file that differ from the running process and need a restart: a reload
    /// that applied the rest.
    async fn reload(&self) -> Result<Vec<String>, String> {
        let kept = |e: String| format!("{e}; the running configuration stays");
        let (cfg, file) = ProxyConfig::load_with_file(&self.path, &ProcessEnv).map_err(kept)?;
        // The file passed alone; its proxies must also end the redirect that keeps running:
        // a file turning the redirect off and emptying the trusted proxies would leave it on,
        // with nothing to say a request came in over TLS, and every request redirected.
        cfg.https_redirect_can_end(&self.started.listen)
            .map_err(|e| {
                kept(format!(
                    "{e} (the running listeners and redirect change only at a restart)"
                ))
            })?;
        // The environment wins over the file at every reload: an operator who edited the
        // upstream list in the file and sent SIGHUP must read why nothing changed.
        let unused = cfg.edits_the_environment_overrides(&self.started_file, &file);
        if !unused.is_empty() {
            log::warn!(keys = unused.join(","); "the file changed keys that environment variables set; the edits are not used (docs/operations.md)");
        }
        // Loaded before anything changes: a pair that does not load fails the whole reload.
        let (cert, refused) =
            match next_cert(self.cert.is_some(), &cfg, chrono::Utc::now().timestamp())
                .map_err(kept)?
            {
                Next::Serve(pair) => (Some(pair), None),
                Next::Keep => (None, None),
                Next::Refuse(why) => (None, Some(why)),
            };
        let list = self.probation.list();
        let added = list
            .set(&cfg.upstreams.servers)
            .map_err(|e| e.to_string())?;
        // New upstreams join disabled and enter rotation once a check of their own passes.
        for addr in &added {
            self.probation.hold_new(*addr);
        }
        self.lb.update().await.map_err(|e| e.to_string())?;
        for addr in added {
            self.probation.watch(addr);
        }
        self.limiter.set_limits(&cfg.rate_limits);
        *self.trust.write().expect("trust lock") = Arc::new(cfg.proxy_trust()?);
        if let (Some(served), Some(next)) = (&self.cert, cert) {
            served.replace(next);
            match served.expiry() {
                Some(t) => METRICS.tls_cert_expiry.set(t),
                // As at start: said, since the gauge still shows the replaced one's date.
                None => log::warn!(
                    "cannot read the new certificate's expiry; the expiry gauge keeps the old one's"
                ),
            }
        }
        let upstreams: Vec<String> = list.addrs().iter().map(|a| a.to_string()).collect();
        log::info!(upstreams = upstreams.join(","); "configuration reloaded");
        // Applied in part is not applied: an operator who changed `clicks.batch_max` must not
        // read "reloaded" alone and believe it runs.
        let stale = self.started.changes_needing_restart(&cfg);
        if !stale.is_empty() {
            log::warn!(keys = stale.join(","); "configuration keys changed that need a restart; they keep their running values");
        }
        // Set here, not by the caller: a reload that fails on its certificate below has applied
        // this file all the same, and `KurzConfigNeedsRestart` must see its restart-only keys.
        METRICS.config_keys_needing_restart.set(stale.len() as i64);
        // A failed reload all the same (counted, alerted on): what was meant to be served is
        // not, though the rest of the file is live.
        if let Some(why) = refused {
            return Err(format!(
                "{why}: the served certificate stays; the rest of the file was applied"
            ));
        }
        Ok(stale)
    }
}

/// What a reload does with the certificate pair.
enum Next {
    Serve(crate::tls_cert::Loaded),
    /// No TLS listener runs, or the file no longer has one (TLS moved to a load balancer:
    /// `listen.https` needs a restart, named as such, and the pair served until then stays;
    /// loading the emptied paths failed every later reload).
    Keep,
    /// Expired or not yet valid at the reload: every handshake would fail with it, so the
    /// served pair stays. The rest of the file still applies (failing it all would block
    /// upstream changes for as long as no renewal lands), and the reload counts as failed.
    Refuse(String),
}

/// The pair a reload serves next; an error for a pair that does not load.
fn next_cert(serving: bool, cfg: &ProxyConfig, now: i64) -> Result<Next, String> {
    if !serving || cfg.listen.https.is_empty() {
        return Ok(Next::Keep);
    }
    let loaded = crate::tls_cert::load(&cfg.listen.tls_cert, &cfg.listen.tls_key)?;
    Ok(match loaded.in_force(now) {
        Ok(()) => Next::Serve(loaded),
        Err(why) => Next::Refuse(why),
    })
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                log::error!(error = e.to_string(); "cannot listen for SIGHUP; reloads disabled");
                return;
            }
        };
        LISTENING.store(true, std::sync::atomic::Ordering::Release);
        if EARLY_HANGUP.swap(false, std::sync::atomic::Ordering::AcqRel) {
            log::info!("SIGHUP received while starting; reloading now");
            self.apply().await;
        }
        loop {
            tokio::select! {
                _ = hup.recv() => self.apply().await,
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl Reloader {
    /// One reload, counted and logged.
    async fn apply(&self) {
        match self.reload().await {
            Ok(stale) => {
                let result = if stale.is_empty() { "ok" } else { "partial" };
                METRICS.reloads.with_label_values(&[result]).inc();
                METRICS.config_applied.set(1);
            }
            Err(e) => {
                METRICS.reloads.with_label_values(&["error"]).inc();
                METRICS.config_applied.set(0);
                log::error!(error = e; "configuration reload failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_without_https_reloads_without_a_pair() {
        let mut cfg = ProxyConfig::default();
        cfg.listen.https.clear();
        cfg.listen.tls_cert.clear();
        cfg.listen.tls_key.clear();
        let now = chrono::Utc::now().timestamp();
        // An edge that serves TLS, reloaded with TLS taken out of the file: nothing to load.
        assert!(matches!(next_cert(true, &cfg, now), Ok(Next::Keep)));
        assert!(matches!(next_cert(false, &cfg, now), Ok(Next::Keep)));
        // Still served by the file: its pair must load, or the reload fails naming the keys.
        cfg.listen.https = vec!["127.0.0.1:8443".into()];
        cfg.listen.tls_cert = "/nonexistent/cert.pem".into();
        let err = next_cert(true, &cfg, now)
            .err()
            .expect("a missing pair fails");
        assert!(err.contains("listen.tls_cert"), "{err}");
    }

    /// An expired pair in the files is not swapped in, yet loads: the served pair stays and
    /// the rest of the file applies. A valid pair is swapped in.
    #[test]
    fn an_expired_pair_is_kept_out_and_the_reload_goes_on() {
        let dir = std::env::temp_dir().join(format!("kurz-reload-{:016x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).unwrap();
        kurz_common::testing::dated_pair(&dir, "old", "20200101000000Z", "20200102000000Z");
        kurz_common::testing::dated_pair(&dir, "new", "20200101000000Z", "20991231000000Z");
        let mut cfg = ProxyConfig::default();
        cfg.listen.https = vec!["127.0.0.1:8443".into()];
        let now = chrono::Utc::now().timestamp();
        for (name, swapped) in [("old", false), ("new", true)] {
            cfg.listen.tls_cert = dir.join(format!("{name}.pem")).to_string_lossy().into();
            cfg.listen.tls_key = dir.join(format!("{name}.key")).to_string_lossy().into();
            let next = next_cert(true, &cfg, now).expect("the reload goes on");
            match next {
                Next::Serve(_) => assert!(swapped, "{name} served"),
                Next::Refuse(why) => {
                    assert!(!swapped && why.contains("expired"), "{name}: {why}")
                }
                Next::Keep => panic!("{name}: kept"),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
