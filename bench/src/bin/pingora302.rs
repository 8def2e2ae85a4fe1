//! The framework's ceiling: a bare Pingora service answering every request with a fixed 302
//! from `request_filter`, with the edge's thread settings.
//! `pingora302 ADDR [THREADS] [WORK_STEALING: true|false]`.
//!
//! With `REDIS_URL PREFIX CODE URL_ID USER_ID` after those, it is the contract's floor instead:
//! each request first appends a click of `CODE` to that link's stream through the edge's own
//! group commit (`kurz_proxy::click_log`, one lane per thread) and answers its 302 only once
//! Redis holds it, as the edge must. Nothing else of the edge runs (no near-cache, rate limit,
//! visitor id, metrics or access log), so the edge's rate can be read against the most any edge
//! keeping "durable before the 302" reaches on the same machine. `USER_ID` may be empty.

use async_trait::async_trait;
use kurz_common::clicks::Click;
use kurz_common::keys::KeySchema;
use kurz_common::redis_handle::RedisHandle;
use kurz_proxy::click_log::{Batching, ClickLog};
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::upstreams::peer::HttpPeer;
use std::sync::Arc;
use std::time::Duration;

// Same allocator as the edge, so the ratio compares the code, not the allocators.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const TARGET: &str = "https://example.com/";

/// What the floor appends: one link's clicks to its stream.
struct Appends {
    log: ClickLog,
    stream: String,
    code: String,
    url_id: i64,
    user_id: Option<i64>,
}

struct Fixed302 {
    appends: Option<Appends>,
}

fn header<'a>(session: &'a Session, name: &str) -> &'a str {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[async_trait]
impl ProxyHttp for Fixed302 {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let mut status = 302;
        if let Some(a) = &self.appends {
            let click = Click {
                id: kurz_common::clicks::new_id(),
                url_id: a.url_id,
                user_id: a.user_id,
                code: a.code.clone(),
                target: TARGET.into(),
                referrer: header(session, "referer").into(),
                user_agent: header(session, "user-agent").into(),
                ip: String::new(),
                ts_ms: chrono::Utc::now().timestamp_millis(),
                visitor: String::new(),
            };
            if !a.log.append(&a.stream, &click).await {
                // The driver counts it as an error: no 302 without its click.
                status = 503;
            }
        }
        let mut resp = ResponseHeader::build(status, Some(3))?;
        if status == 302 {
            resp.insert_header("location", TARGET)?;
        }
        resp.insert_header("content-length", "0")?;
        session.write_response_header(Box::new(resp), true).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Error::e_explain(InternalError, "never proxies")
    }
}

/// The floor's appends from `REDIS_URL PREFIX CODE URL_ID USER_ID`, with the edge's defaults
/// (`clicks.batch_window_us: 0`, `clicks.batch_max: 256`, 16 partitions).
fn appends(args: &[String], threads: usize) -> Appends {
    let [url, prefix, code, url_id, user_id] = args else {
        panic!("append mode takes REDIS_URL PREFIX CODE URL_ID USER_ID, got {args:?}");
    };
    let defaults = kurz_common::config::RedisSettings::default();
    let errors = prometheus::IntCounter::new("floor_redis_errors", "failed Redis commands")
        .expect("counter");
    let lanes = (0..threads.max(1))
        .map(|_| {
            // Longer than the edge's `redis.timeout_ms`: the floor has no API to hand a click
            // to, and an append that timed out after Redis took it would be a stored click
            // without a counted 302 (the clicks-persisted check).
            RedisHandle::new(url, Duration::from_secs(5), errors.clone())
                .map(Arc::new)
                .expect("REDIS_URL")
        })
        .collect();
    let sizes = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new(
        "floor_batch",
        "clicks per pipeline",
    ))
    .expect("histogram");
    let batching = Batching {
        window: Duration::ZERO,
        max: kurz_proxy::config::ClicksSection::default().batch_max,
    };
    Appends {
        log: ClickLog::new(lanes, batching, sizes),
        stream: KeySchema::new(prefix, defaults.partitions).clicks_for(code),
        code: code.clone(),
        url_id: url_id.parse().expect("URL_ID"),
        user_id: (!user_id.is_empty()).then(|| user_id.parse().expect("USER_ID")),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let addr = args
        .first()
        .cloned()
        .unwrap_or_else(|| "127.0.0.1:18302".into());
    let threads = args.get(1).and_then(|t| t.parse().ok()).unwrap_or(2);
    let work_stealing = args.get(2).is_none_or(|w| w != "false");
    let appends = (args.len() > 3).then(|| appends(&args[3..], threads));
    let conf = ServerConf {
        threads,
        work_stealing,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        upgrade_sock: format!("/tmp/pingora302-{}.sock", std::process::id()),
        pid_file: format!("/tmp/pingora302-{}.pid", std::process::id()),
        ..ServerConf::default()
    };
    let opt = Opt {
        upgrade: false,
        daemon: false,
        nocapture: false,
        test: false,
        conf: None,
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    server.bootstrap();
    let mut svc = pingora::proxy::http_proxy_service(&server.configuration, Fixed302 { appends });
    svc.add_tcp(&addr);
    server.add_service(svc);
    server.run_forever();
}
