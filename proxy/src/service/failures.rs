//! When an upstream fails: which requests go again and to whom, and what the client is told.

use super::routes::{connection_names, header, replay_safe};
use super::{Ctx, Edge};
use crate::metrics::METRICS;
use crate::respond;
use pingora::prelude::*;
use pingora::proxy::{FailToProxy, Session};
use pingora::upstreams::peer::HttpPeer;
use std::net::SocketAddr;

/// Most upstreams one request is sent to (the first and its retries).
const MAX_ATTEMPTS: usize = 3;

impl Edge {
    /// No byte of the request reached `peer`.
    pub(super) fn connect_failed(
        &self,
        peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let addr = peer._address.as_inet().copied();
        if let (ConnectRefused, Some(addr)) = (e.etype(), addr) {
            // Nothing listens there: take it out of rotation now rather than after `fall`
            // health checks, so the next requests do not go there first.
            self.probation.hold_now(addr);
        }
        // No byte of the request was sent: another upstream may take it, whatever the method.
        let tried = ctx.failed.len() + 1;
        if tried < self.lb.backends().get_backend().len().min(MAX_ATTEMPTS) {
            Self::mark_retry(addr, ctx, &mut e);
        }
        e
    }

    /// `peer` failed after the request (or part of it) was sent.
    pub(super) fn proxy_failed(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut Ctx,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("upstream {peer}"));
        e.set_retry(false);
        // Pingora brings the client's failures here too (it closed, or its body broke off):
        // another upstream would get the same request from a client no longer there, and the
        // upstream that had it did nothing wrong.
        if e.esource() == &ErrorSource::Downstream {
            return e;
        }
        // A read that timed out reached an upstream that has the request and is still at it: a
        // replay would run it twice and keep the client past `read_timeout_ms` twice over.
        if e.etype() == &ReadTimedout {
            return e;
        }
        // The upstream may have acted on the request: only requests that are safe to repeat
        // go again, once, and only while nothing of the answer reached the client.
        let req = session.req_header();
        // A key the client names in `Connection` is a hop-by-hop header, which Pingora does not
        // send on: the API never saw it, and a replay would create a second link.
        let key_sent =
            !header(req, "idempotency-key").is_empty() && !connection_names(req, "idempotency-key");
        let replay_safe = replay_safe(&req.method, req.uri.path(), key_sent);
        if self.settings.retry_idempotent
            && replay_safe
            && ctx.failed.is_empty()
            && session.response_written().is_none()
            && !session.as_ref().retry_buffer_truncated()
        {
            Self::mark_retry(peer._address.as_inet().copied(), ctx, &mut e);
        }
        e
    }

    /// The request failed for good: our JSON error, if nothing was sent yet.
    pub(super) async fn answer_failure(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Ctx,
    ) -> FailToProxy {
        let malformed;
        let (status, code, message) = match e.etype() {
            HTTPStatus(413) => (413, "payload_too_large", "request body is too large"),
            HTTPStatus(s) if *s == 502 => (502, "bad_gateway", "no API upstream could answer"),
            HTTPStatus(s) => (*s, "error", "request failed"),
            ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Downstream => (
                408,
                "request_timeout",
                "the request was not received in time",
            ),
            ReadTimedout | WriteTimedout => (
                504,
                "gateway_timeout",
                "the API upstream did not answer in time",
            ),
            // What Pingora refuses in a request our connection layer let through (a `Connection`
            // header naming `Host`, trailers or chunk extensions past its limits): the client is
            // there and gets our error, not a closed connection.
            t if e.esource() == &ErrorSource::Downstream && client_protocol_error(t) => {
                malformed = format!("malformed request: {}", parser_reason(e));
                (400, "bad_request", malformed.as_str())
            }
            _ => match e.esource() {
                ErrorSource::Upstream => (502, "bad_gateway", "no API upstream could answer"),
                ErrorSource::Downstream => (0, "", ""),
                _ => (500, "internal_error", "unexpected edge error"),
            },
        };
        // An interim `100 Continue` (the API's, passed on when it began to read the body) is
        // no answer: the final one after it is still ours to write.
        let unanswered = session
            .response_written()
            .is_none_or(|r| r.status.is_informational());
        if status > 0 && unanswered {
            // The connection closes after a failed request (`can_reuse_downstream` below): the
            // answer says so, or a client pooling connections sends its next request into the
            // closing socket and gets a reset.
            session.set_keepalive(None);
            if let Err(err) =
                respond::json_error(session, self.reply(ctx), status, code, message, &[]).await
            {
                log::debug!(error = err.to_string(); "error response not sent");
            }
        }
        ctx.answered = Some(status);
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    /// Marks `e` for a retry on an upstream other than those that failed this request.
    fn mark_retry(addr: Option<SocketAddr>, ctx: &mut Ctx, e: &mut Box<Error>) {
        if let Some(addr) = addr {
            ctx.failed.push(addr);
        }
        METRICS.retries.inc();
        e.set_retry(true);
    }
}

/// An error of the client's request itself, as opposed to its connection failing (reset,
/// closed, timed out): Pingora's header and chunk checks.
fn client_protocol_error(t: &ErrorType) -> bool {
    match t {
        InvalidHTTPHeader | H1Error => true,
        // pingora-core's body parser (`INVALID_CHUNK`, `INVALID_TRAILER_END`).
        Custom(name) => matches!(*name, "InvalidChunk" | "InvalidTrailerEnd"),
        _ => false,
    }
}

/// What Pingora's parser said of the request: the innermost error's own words. The outer
/// ones are ours (`proxy_failed` adds the upstream's address, which is no business of the
/// client's).
fn parser_reason(e: &Error) -> &str {
    let mut inner = e;
    // A cause wrapped by `more_context` is held as the boxed error it was.
    while let Some(cause) = inner.cause.as_ref().and_then(|c| {
        c.downcast_ref::<Box<Error>>()
            .map(|b| &**b)
            .or_else(|| c.downcast_ref::<Error>())
    }) {
        inner = cause;
    }
    match &inner.context {
        Some(c) if inner.etype() == e.etype() => c.as_str(),
        _ => "refused by the HTTP parser",
    }
}
