//! Stopping and upgrading without failing a request.
//!
//! Pingora, on SIGTERM, closes its listeners at once and drops every idle keep-alive connection;
//! a client that sends on such a connection at that moment gets a socket error. So the edge
//! intercepts the signals: on SIGTERM it first *drains* for `server.grace_period_seconds` —
//! still accepting and serving, readiness answering 503 so load balancers move away, and every
//! response closing its connection so clients reconnect elsewhere — and only then lets Pingora
//! stop. On SIGQUIT (graceful upgrade) it drains the same way while Pingora hands the listening
//! sockets to the new process and keeps serving for its fixed hand-over time.

use async_trait::async_trait;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

static DRAINING: AtomicBool = AtomicBool::new(false);

/// Whether this process is on its way out: answers should close their connections.
pub fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// The signal watch handed to Pingora in place of its own.
pub struct DrainingSignals {
    /// How long SIGTERM keeps serving before the listeners close.
    pub grace: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainingSignals {
    async fn recv(&self) -> ShutdownSignal {
        let mut quit = signal(SignalKind::quit()).expect("SIGQUIT handler");
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = quit.recv() => {
                DRAINING.store(true, Ordering::Relaxed);
                log::info!("SIGQUIT: handing the listeners over; draining connections");
                ShutdownSignal::GracefulUpgrade
            }
            _ = term.recv() => {
                DRAINING.store(true, Ordering::Relaxed);
                log::info!(grace_seconds = self.grace.as_secs(); "SIGTERM: draining; still serving until the grace period ends");
                tokio::select! {
                    _ = tokio::time::sleep(self.grace) => {}
                    _ = int.recv() => stop_now(),
                }
                log::info!("grace period over; closing the listeners");
                ShutdownSignal::GracefulTerminate
            }
            _ = int.recv() => stop_now(),
        }
    }
}

/// SIGINT: stop at once. Not through Pingora's fast shutdown, which shuts its runtimes down
/// without first telling the accept loops: an accept that fails because its runtime is going
/// away is retried at once, forever, and the edge hung with a core busy writing "Accept()
/// failed" to the log (seen under test). In-flight requests end here as they would there; a
/// 302 was sent only after its click was appended, so no answered click is lost.
fn stop_now() -> ! {
    log::info!("SIGINT: stopping at once");
    kurz_common::logging::flush();
    std::process::exit(0)
}
