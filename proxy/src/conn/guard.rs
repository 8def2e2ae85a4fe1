//! `HeadGuard`: a client stream that hands Pingora only complete, checked request heads.
//!
//! Pingora's HTTP/1 reader times out each read separately (60 s), so a head trickled a byte at a
//! time is never timed out, and a head it cannot parse gets an empty 400. Here every head on the
//! connection is held back until its blank line, within `limits.header_timeout_ms` (from accept
//! for the first head, from its first byte for later ones) and `MAX_HEAD_BYTES`, then checked;
//! bodies pass through unbuffered, counted by their framing so the next head is found, within
//! `limits.body_total_timeout_ms` and a second more for every [`BODY_BYTES_PER_SECOND`] that
//! arrived. A refused request gets our JSON error written here and the
//! stream then reads as closed, so Pingora closes it without a word of its own.

use super::head::{self, Chunked, Framing, Refusal, MAX_HEAD_BYTES};
use super::ConnLimits;
use crate::metrics::METRICS;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::{SslDigest, TlsRef};
use pingora::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl, Stream,
    TimingDigest, UniqueID, UniqueIDType, ALPN,
};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// A body that keeps arriving at least this fast (512 kbit/s) is never cut by the body's
/// deadline: each such many bytes move it a second on. The deadline alone cut a 32 MiB bulk
/// upload at 60 s on any uplink under 4.5 Mbit/s, bytes flowing all along; a trickle still
/// ends at about `limits.body_total_timeout_ms`.
pub const BODY_BYTES_PER_SECOND: u64 = 64 * 1024;

enum Phase {
    /// Collecting a head in `head`.
    Head,
    /// This many body bytes still to pass.
    Body(u64),
    Chunked(Chunked),
    /// Writing our own answer; then the stream reads as closed.
    Refusing {
        reply: Bytes,
        sent: usize,
    },
    Closed,
}

pub struct HeadGuard {
    inner: Stream,
    limits: Arc<ConnLimits>,
    phase: Phase,
    /// Bytes of the next head, not handed on yet.
    head: BytesMut,
    /// How far `head` has been searched for its end.
    scanned: usize,
    /// A checked head (and body bytes that came with it), handed on before anything else.
    ready: BytesMut,
    deadline: Option<Pin<Box<Sleep>>>,
    /// Whether any of the answer to the current request was written: after that, we can no
    /// longer answer with our own error.
    answered: bool,
    /// Set by [`Self::pace`]: the connection's next request waits for
    /// [`Self::poll_next_request`].
    paced: bool,
    /// The current request was handed on whole, and [`Self::poll_next_request`] has not been
    /// called since: bytes read now are the next request's.
    request_done: bool,
    /// Armed while a write to the client waits (`ConnLimits::send_timeout`), dropped at any
    /// progress.
    write_stall: Option<Pin<Box<Sleep>>>,
}

impl std::fmt::Debug for HeadGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeadGuard")
            .field("inner", &self.inner)
            .field("held", &self.head.len())
            .finish()
    }
}

impl HeadGuard {
    pub fn new(inner: Stream, limits: Arc<ConnLimits>) -> Self {
        let first = limits.header_timeout;
        Self {
            inner,
            limits,
            phase: Phase::Head,
            head: BytesMut::new(),
            scanned: 0,
            ready: BytesMut::new(),
            deadline: Some(Box::pin(tokio::time::sleep(first))),
            answered: false,
            paced: false,
            request_done: false,
            write_stall: None,
        }
    }

    /// For a keep-alive loop that calls [`Self::poll_next_request`] before each request: bytes
    /// that arrive after a request's end are then kept for the next one, not handed to the
    /// session still answering. Pingora reads the client while it waits for the upstream (to
    /// see a close), and with pipelining off it takes any byte of a next request for an error:
    /// the first request's answer was lost.
    pub fn pace(&mut self) {
        self.paced = true;
    }

    /// Whether a refusal (or the end of the connection) has taken over from the request.
    fn stopped(&self) -> bool {
        matches!(self.phase, Phase::Refusing { .. } | Phase::Closed)
    }

    fn set_deadline(&mut self, after: Duration) {
        let at = tokio::time::Instant::now() + after;
        match self.deadline.as_mut() {
            Some(d) => d.as_mut().reset(at),
            None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// A write's or flush's poll, bounded: Pingora times out body writes only (not a head, not
    /// the final flush), and a client that reads nothing would hold its connection there for
    /// ever. Any progress starts the wait again, so a slow reader is not cut, a stopped one is.
    fn bounded<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.write_stall = None;
            return polled;
        }
        let timeout = self.limits.send_timeout;
        let stall = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stall.as_mut().poll(cx).is_ready() {
            self.write_stall = None;
            self.phase = Phase::Closed;
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no bytes within limits.client_send_timeout_ms",
            )));
        }
        Poll::Pending
    }

    fn refuse(&mut self, r: Refusal) {
        METRICS.heads_rejected.with_label_values(&[r.reason]).inc();
        // At the access log's level: the id the client holds must be found in the log
        // (docs/troubleshooting.md), as for any answer.
        log::info!(
            target: "kurz_proxy::access",
            request_id = r.id.as_str(), status = r.status, reason = r.reason,
            message = r.message.as_str(), edge = true;
            "request refused by the connection layer"
        );
        self.head = BytesMut::new();
        self.ready = BytesMut::new();
        self.deadline = None;
        self.phase = Phase::Refusing {
            reply: r.reply(&[]),
            sent: 0,
        };
    }

    /// The request's body ended: what follows is the next head.
    fn end_of_request(&mut self) {
        self.phase = Phase::Head;
        self.scanned = 0;
        self.deadline = None;
        self.request_done = true;
    }

    /// Passes body bytes from the start of `data`; returns how many belong to the body (none
    /// when its framing broke: the request is then refused, see [`Self::stopped`]).
    fn take_body(&mut self, data: &[u8]) -> usize {
        let n = self.pass_body(data);
        // Still in the body (its end clears the deadline): what arrived buys it time.
        if let (Some(d), Phase::Body(_) | Phase::Chunked(_)) = (self.deadline.as_mut(), &self.phase)
        {
            let credit = Duration::from_secs_f64(n as f64 / BODY_BYTES_PER_SECOND as f64);
            let at = d.deadline() + credit;
            d.as_mut().reset(at);
        }
        n
    }

    fn pass_body(&mut self, data: &[u8]) -> usize {
        match &mut self.phase {
            Phase::Body(left) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                if *left == 0 {
                    self.end_of_request();
                }
                n as usize
            }
            Phase::Chunked(c) => {
                let n = c.feed(data);
                match *c {
                    Chunked::Done => self.end_of_request(),
                    // Framing we cannot follow is framing Pingora may read otherwise (see
                    // `Chunked`): handing on what follows could pass a head unchecked.
                    Chunked::Broken if self.answered => {
                        self.deadline = None;
                        self.phase = Phase::Closed;
                        return 0;
                    }
                    Chunked::Broken => {
                        self.refuse(Refusal::malformed(
                            "the chunked body's framing is malformed",
                        ));
                        return 0;
                    }
                    _ => {}
                }
                n
            }
            _ => 0,
        }
    }

    /// Drops empty lines before a head: RFC 9112 (2.2) has a server ignore a CRLF a client
    /// sends after a body. Held, it started the head deadline (a 408 nobody asked for on a
    /// connection idle past it) or made the head that followed "incomplete" (400).
    fn drop_blank_lines(&mut self) {
        let blank = self
            .head
            .iter()
            .take_while(|b| matches!(b, b'\r' | b'\n'))
            .count();
        if blank > 0 {
            let _ = self.head.split_to(blank);
            self.scanned = self.scanned.saturating_sub(blank);
            if self.head.is_empty() {
                self.head = BytesMut::new();
            }
        }
    }

    /// Looks for the end of the head collected so far and checks it when it is there.
    fn examine_head(&mut self) {
        self.drop_blank_lines();
        let Some(end) = head::head_end(&self.head, self.scanned.saturating_sub(2)) else {
            self.scanned = self.head.len();
            if self.deadline.is_none() && !self.head.is_empty() {
                // A later head's clock starts with its first byte; idle time between requests
                // is Pingora's keep-alive timeout.
                self.set_deadline(self.limits.header_timeout);
            }
            if self.head.len() > MAX_HEAD_BYTES {
                self.refuse(too_large());
            }
            return;
        };
        if end > MAX_HEAD_BYTES {
            return self.refuse(too_large());
        }
        let framing = match head::check(&self.head[..end]) {
            Ok(f) => f,
            Err(r) => return self.refuse(r),
        };
        self.ready = self.head.split_to(end);
        if self.head.is_empty() {
            // `head` would keep the rest of the allocation `ready` came from, held for as long
            // as the connection then stays idle.
            self.head = BytesMut::new();
        }
        self.start_request(framing);
        if !self.head.is_empty() && !matches!(self.phase, Phase::Head) {
            let rest = std::mem::take(&mut self.head);
            let n = self.take_body(&rest);
            if self.stopped() {
                return;
            }
            self.ready.extend_from_slice(&rest[..n]);
            self.head.extend_from_slice(&rest[n..]);
        }
    }

    /// A checked head was handed on: what follows is its body, framed as it said.
    fn start_request(&mut self, framing: Framing) {
        self.scanned = 0;
        self.answered = false;
        match framing {
            Framing::None => self.end_of_request(),
            Framing::Length(n) => {
                self.phase = Phase::Body(n);
                self.set_deadline(self.limits.body_timeout);
            }
            Framing::Chunked => {
                self.phase = Phase::Chunked(Chunked::new());
                self.set_deadline(self.limits.body_timeout);
            }
        }
    }

    /// The common case, without a copy: a read that starts a head and holds all of it (and
    /// maybe part of its body) is checked where it landed, in the caller's buffer. Returns how
    /// many of the read bytes to hand on, or `None` when the slow path must collect the head.
    fn check_in_place(&mut self, data: &[u8]) -> Option<usize> {
        if data.first().is_some_and(|b| matches!(b, b'\r' | b'\n')) {
            return None;
        }
        let end = head::head_end(data, 0).filter(|end| *end <= MAX_HEAD_BYTES)?;
        match head::check(&data[..end]) {
            Err(r) => {
                self.refuse(r);
                Some(0)
            }
            Ok(framing) => {
                self.start_request(framing);
                let rest = &data[end..];
                let body = if matches!(self.phase, Phase::Head) {
                    0
                } else {
                    self.take_body(rest)
                };
                if self.stopped() {
                    return Some(0);
                }
                // Bytes past this request (pipelined) wait for the next read, checked then.
                self.head.extend_from_slice(&rest[body..]);
                Some(end + body)
            }
        }
    }

    /// Waits, without a buffer of its own, until bytes of the next request are here; `false`
    /// when the client closed the connection or the first head's deadline passed first.
    ///
    /// Pingora allocates its whole per-request state (the session and the proxy's request
    /// future, tens of KiB) before it reads a request, so a keep-alive connection waiting there
    /// costs that much while idle. Waiting here first keeps an idle connection down to this
    /// guard and its socket's buffers. The bytes read go where a pipelined head goes, and are
    /// checked on the next read.
    pub fn poll_next_request(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        self.request_done = false;
        if matches!(self.phase, Phase::Head) {
            self.drop_blank_lines();
        }
        if !self.ready.is_empty() || !self.head.is_empty() || !matches!(self.phase, Phase::Head) {
            return Poll::Ready(Ok(true));
        }
        if let Some(d) = self.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                self.expire();
                return Poll::Ready(Ok(false));
            }
        }
        loop {
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ_BYTES];
            let mut buf = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut buf))?;
            if buf.filled().is_empty() {
                self.phase = Phase::Closed;
                return Poll::Ready(Ok(false));
            }
            self.head.extend_from_slice(buf.filled());
            self.scanned = 0;
            self.drop_blank_lines();
            if !self.head.is_empty() {
                return Poll::Ready(Ok(true));
            }
        }
    }

    fn expire(&mut self) {
        self.deadline = None;
        match self.phase {
            // An idle connection that never sent a byte: just close it.
            Phase::Head if self.head.is_empty() => self.phase = Phase::Closed,
            Phase::Head => self.refuse(Refusal::new(
                408,
                "request_timeout",
                "the request head was not received in time",
                "head_timeout",
            )),
            Phase::Body(_) | Phase::Chunked(_) if !self.answered => self.refuse(Refusal::new(
                408,
                "request_timeout",
                "the request body was not received in time",
                "body_timeout",
            )),
            _ => self.phase = Phase::Closed,
        }
    }

    /// Writes our answer out; the stream then reads as closed.
    fn poll_refusal(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if let Phase::Refusing { reply, sent } = &mut self.phase {
            while *sent < reply.len() {
                match ready!(Pin::new(&mut self.inner).poll_write(cx, &reply[*sent..])) {
                    Ok(n) if n > 0 => *sent += n,
                    _ => {
                        self.phase = Phase::Closed;
                        return Poll::Ready(());
                    }
                }
            }
            let _ = ready!(Pin::new(&mut self.inner).poll_flush(cx));
            let _ = ready!(Pin::new(&mut self.inner).poll_shutdown(cx));
            self.phase = Phase::Closed;
        }
        Poll::Ready(())
    }
}

impl HeadGuard {
    /// A read between the end of a request and the next [`Self::poll_next_request`]: bytes go
    /// where a pipelined head goes, and the read ends only with the connection (a close the
    /// session should see). Past `MAX_HEAD_BYTES` held, it stops reading; the head is refused
    /// as too large when its session reads it.
    fn hold_next_request(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.head.len() <= MAX_HEAD_BYTES {
            let mut chunk = [std::mem::MaybeUninit::<u8>::uninit(); FIRST_READ_BYTES];
            let mut buf = ReadBuf::uninit(&mut chunk);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut buf))?;
            if buf.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            self.head.extend_from_slice(buf.filled());
        }
        // Nothing is registered to wake this read: the session ends by its other work.
        Poll::Pending
    }
}

/// The most one read takes while waiting for a request: a typical head and a small body in one
/// read, on the stack rather than held by the idle connection.
const FIRST_READ_BYTES: usize = 4096;

fn too_large() -> Refusal {
    Refusal::new(
        431,
        "request_header_fields_too_large",
        format!("the request head is over {MAX_HEAD_BYTES} bytes"),
        "too_large",
    )
}

impl AsyncRead for HeadGuard {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = this.ready.len().min(buf.remaining());
                buf.put_slice(&this.ready.split_to(n));
                if this.ready.is_empty() {
                    // Give the allocation back: idle connections should cost little.
                    this.ready = BytesMut::new();
                }
                return Poll::Ready(Ok(()));
            }
            match this.phase {
                Phase::Closed => return Poll::Ready(Ok(())),
                Phase::Refusing { .. } => {
                    ready!(this.poll_refusal(cx));
                    return Poll::Ready(Ok(()));
                }
                Phase::Head if this.paced && this.request_done => {
                    return this.hold_next_request(cx);
                }
                Phase::Head if this.scanned < this.head.len() => {
                    // A pipelined head that came with the previous body.
                    this.examine_head();
                    continue;
                }
                _ => {}
            }
            if let Some(d) = this.deadline.as_mut() {
                if d.as_mut().poll(cx).is_ready() {
                    this.expire();
                    continue;
                }
            }
            let before = buf.filled().len();
            ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
            let got = buf.filled().len() - before;
            if got == 0 {
                return Poll::Ready(Ok(()));
            }
            if let Phase::Head = this.phase {
                if this.head.is_empty() {
                    if let Some(keep) = this.check_in_place(&buf.filled()[before..]) {
                        buf.set_filled(before + keep);
                        if keep > 0 {
                            return Poll::Ready(Ok(()));
                        }
                        continue;
                    }
                }
                this.head.extend_from_slice(&buf.filled()[before..]);
                buf.set_filled(before);
                this.examine_head();
                continue;
            }
            let taken = this.take_body(&buf.filled()[before..]);
            if this.stopped() {
                buf.set_filled(before);
                continue;
            }
            if taken < got {
                this.head.extend_from_slice(&buf.filled()[before + taken..]);
                buf.set_filled(before + taken);
            }
            if taken > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// Whether a write is an interim answer (`HTTP/1.1 100 Continue`, which Pingora passes on from
/// the API when it begins to read the body): after one, a body that stalls still gets our 408.
/// Pingora writes each head whole, so its status is in the write's first bytes.
fn interim(data: &[u8]) -> bool {
    data.len() > 9 && data.starts_with(b"HTTP/1.") && data[9] == b'1'
}

impl AsyncWrite for HeadGuard {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if matches!(this.phase, Phase::Closed | Phase::Refusing { .. }) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        let n = ready!(this.bounded(cx, polled))?;
        this.answered |= n > 0 && !interim(data);
        Poll::Ready(Ok(n))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if matches!(this.phase, Phase::Closed | Phase::Refusing { .. }) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        let n = ready!(this.bounded(cx, polled))?;
        this.answered |= n > 0 && !bufs.first().is_some_and(|b| interim(b));
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.bounded(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.bounded(cx, polled)
    }
}

#[async_trait]
impl Shutdown for HeadGuard {
    /// Bounded as a write is: on TLS the close_notify waits for the socket like any write, and
    /// Pingora awaits this without a deadline when a connection is not kept alive.
    async fn shutdown(&mut self) {
        let _ = tokio::time::timeout(self.limits.send_timeout, self.inner.shutdown()).await;
    }
}

impl UniqueID for HeadGuard {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadGuard {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadGuard {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadGuard {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest)
    }
}

impl GetSocketDigest for HeadGuard {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest)
    }
}

// Peeking would read past the held head; Pingora only peeks for an h2c preface, which we do
// not enable, and is told peeking is unsupported.
impl Peek for HeadGuard {}

#[cfg(test)]
mod tests {
    use super::*;
    use kurz_common::proxies::ProxyTrust;
    use std::future::poll_fn;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    fn guarded() -> (HeadGuard, DuplexStream) {
        guarded_with(Duration::from_secs(60))
    }

    fn guarded_with(header_timeout: Duration) -> (HeadGuard, DuplexStream) {
        let (ours, client) = tokio::io::duplex(64 * 1024);
        let limits = limits(
            header_timeout,
            Duration::from_secs(60),
            Duration::from_secs(60),
        );
        (HeadGuard::new(Box::new(ours), limits), client)
    }

    /// The connection layer's limits with these deadlines, 100 connections a client, no
    /// trusted proxy.
    fn limits(header: Duration, body: Duration, send: Duration) -> Arc<ConnLimits> {
        let trust = Arc::new(std::sync::RwLock::new(Arc::new(
            ProxyTrust::parse(&[], &[]).unwrap(),
        )));
        let limits = ConnLimits::new(
            header,
            body,
            100,
            Arc::new(crate::rate_limit::RateLimiter::new(
                &crate::config::ProxyConfig::default().rate_limits,
            )),
            trust,
        );
        Arc::new(limits.with_send_timeout(send))
    }

    /// Whether waiting for the next request is still pending after everything runnable ran.
    async fn still_waiting(guard: &mut HeadGuard) -> bool {
        let mut polled = None;
        poll_fn(|cx| {
            polled = Some(guard.poll_next_request(cx).is_pending());
            Poll::Ready(())
        })
        .await;
        polled.unwrap()
    }

    async fn read_n(guard: &mut HeadGuard, n: usize) -> Vec<u8> {
        let mut out = vec![0; n];
        guard.read_exact(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn waiting_for_a_request_holds_no_buffer_and_loses_no_byte() {
        let (mut guard, mut client) = guarded();
        assert!(still_waiting(&mut guard).await, "nothing sent yet");

        let body = b"{\"original_url\": \"https://example.com/\"}";
        let first = format!(
            "POST /urls HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        client.write_all(first.as_bytes()).await.unwrap();
        client.write_all(body).await.unwrap();
        assert!(poll_fn(|cx| guard.poll_next_request(cx)).await.unwrap());
        // Every byte the wait took reaches the reader, head then body, in order.
        assert_eq!(read_n(&mut guard, first.len()).await, first.as_bytes());
        assert_eq!(read_n(&mut guard, body.len()).await, body);

        // Between requests the guard keeps no buffer, whatever the last request left.
        assert_eq!(guard.head.capacity(), 0);
        assert_eq!(guard.ready.capacity(), 0);
        assert!(
            still_waiting(&mut guard).await,
            "the next request has not come"
        );

        let second = b"GET /abc HTTP/1.1\r\nHost: a\r\n\r\n";
        client.write_all(second).await.unwrap();
        assert!(poll_fn(|cx| guard.poll_next_request(cx)).await.unwrap());
        assert_eq!(read_n(&mut guard, second.len()).await, second);
        assert_eq!(guard.head.capacity(), 0);
    }

    #[tokio::test]
    async fn a_head_that_comes_in_pieces_while_waiting_is_still_checked() {
        let (mut guard, mut client) = guarded();
        client.write_all(b"GET /abc HTTP/1.1\r\n").await.unwrap();
        assert!(poll_fn(|cx| guard.poll_next_request(cx)).await.unwrap());
        client.write_all(b"Host: a\r\n").await.unwrap();
        let mut scratch = [0u8; 64];
        let mut buf = ReadBuf::new(&mut scratch);
        let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut guard).poll_read(cx, &mut buf))).await;
        assert!(polled.is_pending(), "the head is not complete yet");
        client.write_all(b"\r\n").await.unwrap();
        let whole = b"GET /abc HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(read_n(&mut guard, whole.len()).await, whole);
        // The head grew in pieces, so its buffer had room to spare; none of it is kept.
        assert_eq!(guard.head.capacity(), 0);

        // A bad head that arrives while waiting is refused like any other: our JSON error,
        // then the stream reads as closed.
        client
            .write_all(b"GET /abc HTTP/1.1\r\nContent-Length: -1\r\n\r\n")
            .await
            .unwrap();
        assert!(poll_fn(|cx| guard.poll_next_request(cx)).await.unwrap());
        let mut rest = Vec::new();
        guard.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "nothing of the bad request is handed on");
        let mut reply = vec![0; 12];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"HTTP/1.1 400");
    }

    /// `Expect: 100-continue`: the API's `100 Continue` goes out, then the body stalls. The 100
    /// answered nothing, so the body deadline still answers 408 after it.
    #[tokio::test]
    async fn a_body_that_stalls_after_100_continue_still_gets_its_408() {
        let (ours, mut client) = tokio::io::duplex(64 * 1024);
        let limits = limits(
            Duration::from_secs(60),
            Duration::from_millis(300),
            Duration::from_secs(60),
        );
        let mut guard = HeadGuard::new(Box::new(ours), limits);
        let head = b"POST /urls/bulk HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n";
        client.write_all(head).await.unwrap();
        assert_eq!(read_n(&mut guard, head.len()).await, head);
        guard
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .unwrap();
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), guard.read_to_end(&mut rest))
            .await
            .expect("the body deadline ends the request")
            .unwrap();
        drop(guard);
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }

    /// A large upload over a slow uplink keeps going past the body's deadline while it arrives
    /// faster than [`BODY_BYTES_PER_SECOND`]; one slower is still cut with a 408.
    #[tokio::test]
    async fn a_body_that_keeps_arriving_outlives_the_body_deadline() {
        let guard_of = |ours: DuplexStream| {
            let limits = limits(
                Duration::from_secs(60),
                Duration::from_millis(300),
                Duration::from_secs(60),
            );
            HeadGuard::new(Box::new(ours), limits)
        };
        let piece = BODY_BYTES_PER_SECOND as usize;
        // Ten pieces at five times the rate: about 2 s, well past the 300 ms deadline.
        let (ours, mut client) = tokio::io::duplex(4 * piece);
        let mut guard = guard_of(ours);
        let head = format!(
            "POST /urls/bulk HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            10 * piece
        );
        let sender = tokio::spawn(async move {
            client.write_all(head.as_bytes()).await.unwrap();
            for _ in 0..10 {
                client.write_all(&vec![b'x'; piece]).await.unwrap();
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            client
        });
        let mut got = Vec::new();
        let mut buf = vec![0; 64 * 1024];
        while got.len() < 10 * piece {
            let n = tokio::time::timeout(Duration::from_secs(30), guard.read(&mut buf))
                .await
                .expect("the guard reads on")
                .unwrap();
            assert!(n > 0, "the body was cut after {} bytes", got.len());
            got.extend_from_slice(&buf[..n]);
        }
        assert!(got.ends_with(&vec![b'x'; piece]), "the whole body passed");
        drop(sender.await.unwrap());

        // A byte every 100 ms buys 1.5 ms each: cut near the deadline, a 408.
        let (ours, mut client) = tokio::io::duplex(4 * piece);
        let mut guard = guard_of(ours);
        let trickle = tokio::spawn(async move {
            client
                .write_all(b"POST /urls HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
                .await
                .unwrap();
            for _ in 0..100 {
                if client.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            client
        });
        let mut rest = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), guard.read_to_end(&mut rest))
            .await
            .expect("the body deadline ends the request")
            .unwrap();
        assert!(rest.len() < 100, "the trickle was cut");
        drop(guard);
        let mut client = trickle.await.unwrap();
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.unwrap();
        assert!(
            answer.starts_with(b"HTTP/1.1 408"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }

    /// A write to a client that takes nothing fails at the send timeout, a head and a flush
    /// included (Pingora bounds only its body writes); a client that reads slowly, a little at
    /// a time, is not cut however long the whole answer takes.
    #[tokio::test]
    async fn a_write_to_a_client_that_reads_nothing_fails_at_the_send_timeout() {
        let guard_of = |ours: DuplexStream| {
            let limits = limits(
                Duration::from_secs(60),
                Duration::from_secs(60),
                Duration::from_millis(300),
            );
            HeadGuard::new(Box::new(ours), limits)
        };
        let (ours, client) = tokio::io::duplex(1024);
        let mut guard = guard_of(ours);
        let stuck = tokio::time::timeout(Duration::from_secs(30), guard.write_all(&[b'x'; 8192]))
            .await
            .expect("the write ends at the send timeout");
        assert_eq!(stuck.unwrap_err().kind(), io::ErrorKind::TimedOut);
        drop(client);

        let (ours, mut client) = tokio::io::duplex(1024);
        let mut guard = guard_of(ours);
        let reader = tokio::spawn(async move {
            let mut got = 0;
            let mut buf = [0u8; 512];
            while got < 8192 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                got += client.read(&mut buf).await.unwrap();
            }
        });
        // 16 reads 100 ms apart: 1.6 s in all, past the timeout, progress at every read.
        tokio::time::timeout(Duration::from_secs(30), guard.write_all(&[b'x'; 8192]))
            .await
            .expect("the slow reader takes it all")
            .unwrap();
        guard.flush().await.unwrap();
        reader.await.unwrap();
    }

    /// A stream that takes nothing: every write, flush and close waits for ever (a TLS
    /// close_notify to a client that reads nothing).
    #[derive(Debug)]
    struct Stuck;

    impl AsyncRead for Stuck {
        fn poll_read(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    impl AsyncWrite for Stuck {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            _: &[u8],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Pending
        }
    }

    #[async_trait]
    impl Shutdown for Stuck {
        async fn shutdown(&mut self) {
            std::future::pending::<()>().await
        }
    }
    impl UniqueID for Stuck {
        fn id(&self) -> UniqueIDType {
            0
        }
    }
    impl Ssl for Stuck {}
    impl GetTimingDigest for Stuck {
        fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
            vec![]
        }
    }
    impl GetProxyDigest for Stuck {
        fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
            None
        }
    }
    impl GetSocketDigest for Stuck {
        fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
            None
        }
    }
    impl Peek for Stuck {}

    /// Closing a connection whose client takes nothing ends at the send timeout too, by
    /// Pingora's `shutdown` and by a writer's `poll_shutdown`.
    #[tokio::test]
    async fn closing_on_a_client_that_takes_nothing_ends_at_the_send_timeout() {
        let limits = limits(
            Duration::from_secs(60),
            Duration::from_secs(60),
            Duration::from_millis(300),
        );
        let mut guard = HeadGuard::new(Box::new(Stuck), limits.clone());
        tokio::time::timeout(Duration::from_secs(30), Shutdown::shutdown(&mut guard))
            .await
            .expect("Pingora's shutdown ends");
        let mut guard = HeadGuard::new(Box::new(Stuck), limits);
        let closed =
            tokio::time::timeout(Duration::from_secs(30), AsyncWriteExt::shutdown(&mut guard))
                .await
                .expect("a writer's shutdown ends");
        assert_eq!(closed.unwrap_err().kind(), io::ErrorKind::TimedOut);
    }

    /// A CRLF after a request (some clients send one after a body) is no next request: the
    /// connection stays idle, without a head deadline, and a head after blank lines is taken.
    #[tokio::test]
    async fn blank_lines_between_requests_are_ignored() {
        let (mut guard, mut client) = guarded_with(Duration::from_millis(200));
        let first = b"GET /abc HTTP/1.1\r\nHost: a\r\n\r\n";
        client.write_all(first).await.unwrap();
        assert!(poll_fn(|cx| guard.poll_next_request(cx)).await.unwrap());
        assert_eq!(read_n(&mut guard, first.len()).await, first);
        client.write_all(b"\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(
            still_waiting(&mut guard).await,
            "a blank line is no request"
        );
        let second = b"GET /def HTTP/1.1\r\nHost: a\r\n\r\n";
        client.write_all(b"\r\n\r\n").await.unwrap();
        client.write_all(second).await.unwrap();
        assert!(poll_fn(|cx| guard.poll_next_request(cx)).await.unwrap());
        assert_eq!(read_n(&mut guard, second.len()).await, second);
        // Read without the wait first (a connection that is not paced): the same.
        let (mut guard, mut client) = guarded();
        client.write_all(b"\r\n\r\n").await.unwrap();
        client.write_all(second).await.unwrap();
        assert_eq!(read_n(&mut guard, second.len()).await, second);
    }

    #[tokio::test]
    async fn a_client_that_closes_while_idle_ends_the_wait() {
        let (mut guard, client) = guarded();
        drop(client);
        assert!(!poll_fn(|cx| guard.poll_next_request(cx)).await.unwrap());
        assert!(matches!(guard.phase, Phase::Closed));
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_ends_at_the_first_head_deadline() {
        let (mut guard, _client) = guarded_with(Duration::from_millis(300));
        let ended = tokio::time::timeout(
            Duration::from_secs(30),
            poll_fn(|cx| guard.poll_next_request(cx)),
        )
        .await
        .expect("the head deadline ends the wait");
        assert!(!ended.unwrap());
        assert!(matches!(guard.phase, Phase::Closed));
    }

    /// A read that finds nothing to return, after everything runnable ran.
    async fn read_is_pending(guard: &mut HeadGuard) -> bool {
        let mut scratch = [0u8; 64];
        let mut buf = ReadBuf::new(&mut scratch);
        poll_fn(|cx| Poll::Ready(Pin::new(&mut *guard).poll_read(cx, &mut buf)))
            .await
            .is_pending()
    }

    #[tokio::test]
    async fn a_chunked_body_framed_otherwise_than_pingora_reads_it_is_refused() {
        // Pingora takes an empty chunk size for 0 (and what follows for the next request),
        // 17 digits for an error, and bare LFs for errors or for part of a line. The guard
        // refuses each, so what comes after cannot pass unchecked.
        for body in [
            "\r\n\r\nGET /next HTTP/1.1\r\n\r\n",
            "00000000000000005\r\nhello\r\n0\r\n\r\n",
            "5\nhello\r\n0\r\n\r\n",
            "0\r\nX-Trailer: 1\n\nGET /next HTTP/1.1\r\n\r\n",
        ] {
            let (mut guard, mut client) = guarded();
            let head = "POST /urls HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n";
            client.write_all(head.as_bytes()).await.unwrap();
            assert!(poll_fn(|cx| guard.poll_next_request(cx)).await.unwrap());
            assert_eq!(read_n(&mut guard, head.len()).await, head.as_bytes());
            client.write_all(body.as_bytes()).await.unwrap();
            let mut rest = Vec::new();
            guard.read_to_end(&mut rest).await.unwrap();
            assert!(
                rest.is_empty(),
                "{body:?}: {:?}",
                String::from_utf8_lossy(&rest)
            );
            let mut reply = vec![0; 12];
            client.read_exact(&mut reply).await.unwrap();
            assert_eq!(&reply, b"HTTP/1.1 400", "{body:?}");
        }
        // Sixteen digits, and a bare LF inside an extension, are read as Pingora reads them.
        for body in [
            &b"0000000000000005\r\nhello\r\n0\r\n\r\nGET"[..],
            b"5;x\nhello\r\nabcde\r\n0\r\n\r\nGET",
        ] {
            let mut c = Chunked::new();
            assert_eq!(c.feed(body), body.len() - 3);
            assert_eq!(c, Chunked::Done);
        }
    }

    #[tokio::test]
    async fn a_pipelined_request_waits_until_the_one_before_is_answered() {
        let (mut guard, mut client) = guarded();
        guard.pace();
        let first = b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n";
        let second = b"GET /urls HTTP/1.1\r\nHost: a\r\n\r\n";
        client
            .write_all(&[&first[..], &second[..]].concat())
            .await
            .unwrap();
        assert!(poll_fn(|cx| guard.poll_next_request(cx)).await.unwrap());
        assert_eq!(read_n(&mut guard, first.len()).await, first);
        // Pingora reads while the first request is answered, to see a close: the second
        // request's bytes are not its to take yet, nor are bytes that come now.
        assert!(read_is_pending(&mut guard).await);
        client.write_all(b"GET /t").await.unwrap();
        assert!(read_is_pending(&mut guard).await);
        // The next session gets both requests, each checked.
        assert!(poll_fn(|cx| guard.poll_next_request(cx)).await.unwrap());
        assert_eq!(read_n(&mut guard, second.len()).await, second);
        client
            .write_all(b"hird HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        assert!(read_is_pending(&mut guard).await);
        assert!(poll_fn(|cx| guard.poll_next_request(cx)).await.unwrap());
        let third = b"GET /third HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(read_n(&mut guard, third.len()).await, third);
        // A close while a request is answered still reads as one.
        drop(client);
        let mut rest = Vec::new();
        guard.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty());
    }
}
