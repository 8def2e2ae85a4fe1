//! `HeadGuard`: a client stream that hands Pingora only complete, checked request heads.
//!
//! Pingora's HTTP/1 reader times out each read separately (60 s), so a head trickled a byte at a
//! time is never timed out, and a head it cannot parse gets an empty 400. Here every head on the
//! connection is held back until its blank line, within `limits.header_timeout_ms` (from accept
//! for the first head, from its first byte for later ones) and `MAX_HEAD_BYTES`, then checked;
//! bodies pass through unbuffered, counted by their framing so the next head is found, within
//! `limits.body_total_timeout_ms`. A refused request gets our JSON error written here and the
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

enum Phase {
    /// Collecting a head in `head`.
    Head,
    /// This many body bytes still to pass.
    Body(u64),
    Chunked(Chunked),
    /// Framing we stopped following (broken chunking): Pingora's parser has the last word.
    Tunnel,
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
        }
    }

    fn set_deadline(&mut self, after: Duration) {
        let at = tokio::time::Instant::now() + after;
        match self.deadline.as_mut() {
            Some(d) => d.as_mut().reset(at),
            None => self.deadline = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    fn refuse(&mut self, r: Refusal) {
        METRICS.heads_rejected.with_label_values(&[r.reason]).inc();
        log::debug!(status = r.status, reason = r.reason, message = r.message.as_str(); "request refused by the connection layer");
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
    }

    /// Passes body bytes from the start of `data`; returns how many belong to the body.
    fn take_body(&mut self, data: &[u8]) -> usize {
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
                    Chunked::Broken => {
                        self.phase = Phase::Tunnel;
                        self.deadline = None;
                        return data.len();
                    }
                    _ => {}
                }
                n
            }
            _ => 0,
        }
    }

    /// Looks for the end of the head collected so far and checks it when it is there.
    fn examine_head(&mut self) {
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
        self.start_request(framing);
        if !self.head.is_empty() && !matches!(self.phase, Phase::Head) {
            let rest = std::mem::take(&mut self.head);
            let n = self.take_body(&rest);
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
                // Bytes past this request (pipelined) wait for the next read, checked then.
                self.head.extend_from_slice(&rest[body..]);
                Some(end + body)
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
                Phase::Tunnel => return Pin::new(&mut this.inner).poll_read(cx, buf),
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
        let n = ready!(Pin::new(&mut this.inner).poll_write(cx, data))?;
        this.answered |= n > 0;
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
        let n = ready!(Pin::new(&mut this.inner).poll_write_vectored(cx, bufs))?;
        this.answered |= n > 0;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeadGuard {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
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
