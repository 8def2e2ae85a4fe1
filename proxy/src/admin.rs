//! The admin listener: `/metrics`, `/health/live`, `/health/ready`. Bound to loopback by
//! default and separate from the public listeners, so metrics are never public.

use crate::key_check::KeyGate;
use crate::upstreams;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::lb::selection::RoundRobin;
use pingora::lb::LoadBalancer;
use pingora::protocols::http::ServerSession;
use serde_json::Value;
use std::sync::Arc;

pub struct Admin {
    pub lb: Arc<LoadBalancer<RoundRobin>>,
    /// Ready only after the first key schema check ran, so no traffic meets a gate closed just
    /// because nobody looked yet.
    pub key_gate: Arc<KeyGate>,
}

fn reply(status: u16, content_type: &str, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("content-length", body.len())
        .body(body)
        .expect("static response")
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let json = "application/json";
        match session.req_header().uri.path() {
            "/metrics" => {
                upstreams::export_health(&self.lb);
                reply(200, "text/plain; version=0.0.4", crate::metrics::render())
            }
            "/health" | "/health/live" => reply(200, json, br#"{"status":"ok"}"#.to_vec()),
            "/health/ready" | "/ready" => {
                if crate::drain::draining() {
                    reply(503, json, br#"{"status":"draining"}"#.to_vec())
                } else if !crate::reload::listening() {
                    reply(
                        503,
                        json,
                        br#"{"status":"not_ready","reload":"SIGHUP handler not installed yet"}"#
                            .to_vec(),
                    )
                } else if !self.key_gate.attempted() {
                    reply(
                        503,
                        json,
                        br#"{"status":"not_ready","redis":"key schema not checked yet"}"#.to_vec(),
                    )
                } else if upstreams::any_healthy(&self.lb) {
                    reply(
                        200,
                        json,
                        br#"{"status":"ready","upstreams":"ok"}"#.to_vec(),
                    )
                } else {
                    // Still ready: cached redirects need no upstream, and a load balancer that
                    // took every edge out while the APIs are down would stop those too.
                    reply(
                        200,
                        json,
                        br#"{"status":"degraded","upstreams":"none healthy"}"#.to_vec(),
                    )
                }
            }
            _ => reply(
                404,
                json,
                kurz_common::http::error_body("not_found", "no such admin route", Value::Null)
                    .into_bytes(),
            ),
        }
    }
}
