//! The framework's ceiling: a bare Pingora service answering every request with a fixed 302
//! from `request_filter`, with the edge's thread settings.
//! `pingora302 ADDR [THREADS] [WORK_STEALING: true|false]`.

use async_trait::async_trait;
use pingora::http::ResponseHeader;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::{Opt, ServerConf};
use pingora::upstreams::peer::HttpPeer;

// Same allocator as the edge, so the ratio compares the code, not the allocators.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Fixed302;

#[async_trait]
impl ProxyHttp for Fixed302 {
    type CTX = ();
    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let mut resp = ResponseHeader::build(302, Some(3))?;
        resp.insert_header("location", "https://example.com/")?;
        resp.insert_header("content-length", "0")?;
        session.write_response_header(Box::new(resp), true).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Error::e_explain(InternalError, "never proxies")
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:18302".into());
    let threads = args.next().and_then(|t| t.parse().ok()).unwrap_or(2);
    let work_stealing = args.next().is_none_or(|w| w != "false");
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
    let mut svc = pingora::proxy::http_proxy_service(&server.configuration, Fixed302);
    svc.add_tcp(&addr);
    server.add_service(svc);
    server.run_forever();
}
