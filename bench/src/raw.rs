//! The raw redirect driver: keep-alive HTTP/1.1 over plain tokio sockets, for scenarios made of
//! redirects only. A full HTTP client spends more CPU per request than the edge it measures
//! (the `reqwest` path tops out near 11k req/s here); this one writes pre-built request bytes,
//! reads into one reused buffer per connection and parses only the status line and
//! `Content-Length`, so the server, not the driver, is what runs out of CPU.
//!
//! Open loop: every connection owns every `connections`-th slot of the global schedule and
//! measures each request from its slot's time, so a stalled server shows up as latency instead
//! of as requests that were never sent (no coordinated omission). The slots are timed by a
//! thread of their own ([`pace`]), not by tokio's timer.

use crate::keys::Codes;
use crate::load::Stats;
use crate::scenario::Load;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// Requests to send: each one's bytes and the status it must get.
pub struct Requests {
    requests: Vec<(Vec<u8>, u16)>,
    codes: Option<Arc<Codes>>,
}

impl Requests {
    /// Every code of the data set, picked as the scenario's key distribution says.
    pub fn from_codes(codes: Arc<Codes>) -> Self {
        let requests = codes
            .codes
            .iter()
            .map(|(code, status)| (request(&format!("/{code}")), *status))
            .collect();
        Self {
            requests,
            codes: Some(codes),
        }
    }

    /// One path, always answered `status` (the side-by-side runs against nginx, a bare
    /// Pingora and the edge use one hot code).
    pub fn one(path: &str, status: u16) -> Self {
        Self {
            requests: vec![(request(path), status)],
            codes: None,
        }
    }

    fn pick(&self, rng: &mut StdRng) -> &(Vec<u8>, u16) {
        match &self.codes {
            Some(codes) => &self.requests[codes.pick_index(rng)],
            None => &self.requests[0],
        }
    }
}

fn request(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\nUser-Agent: kurz-bench\r\n\r\n").into_bytes()
}

/// What one connection saw, counted without allocating per request.
struct Tally {
    latency_us: hdrhistogram::Histogram<u64>,
    ok: u64,
    wrong: u64,
    statuses: std::collections::BTreeMap<u16, u64>,
    failures: std::collections::BTreeMap<&'static str, u64>,
}

impl Tally {
    fn new() -> Self {
        Self {
            latency_us: hdrhistogram::Histogram::new_with_bounds(1, 120_000_000, 3)
                .expect("histogram bounds"),
            ok: 0,
            wrong: 0,
            statuses: Default::default(),
            failures: Default::default(),
        }
    }

    fn record(&mut self, answer: Result<u16, &'static str>, expected: u16, elapsed: Duration) {
        // Clamped, not dropped: a sample past the bound still counts in the tail.
        self.latency_us
            .saturating_record((elapsed.as_micros() as u64).max(1));
        match answer {
            Ok(status) => {
                *self.statuses.entry(status).or_default() += 1;
                if status == expected {
                    self.ok += 1;
                } else {
                    self.wrong += 1;
                }
            }
            Err(label) => {
                *self.failures.entry(label).or_default() += 1;
                self.wrong += 1;
            }
        }
    }

    fn into_stats(self) -> Stats {
        let mut stats = Stats::new();
        let _ = stats.latency_us.add(&self.latency_us);
        stats.requests = self.ok + self.wrong;
        stats.errors = self.wrong;
        stats
            .by_kind
            .insert("redirect".into(), (stats.requests, stats.errors));
        for (status, n) in self.statuses {
            stats.statuses.insert(status.to_string(), n);
        }
        for (label, n) in self.failures {
            stats.statuses.insert(label.to_owned(), n);
        }
        stats
    }
}

/// Runs `load` against `addr` for `duration` over `connections` keep-alive connections.
pub async fn run(
    addr: SocketAddr,
    requests: Arc<Requests>,
    load: &Load,
    duration: Duration,
    connections: usize,
    seed: u64,
) -> Stats {
    let connections = connections.max(1);
    let total = Arc::new(Mutex::new(Stats::new()));
    let start = Instant::now();
    let deadline = start + duration;
    // Open loop: slot k goes to connection k % connections, at start + k / rate.
    let mut slots = Vec::new();
    let mut tasks = Vec::with_capacity(connections);
    for c in 0..connections {
        let (requests, total) = (requests.clone(), total.clone());
        let mut slot = match *load {
            Load::Open { .. } => {
                let (tx, rx) = mpsc::unbounded_channel::<Instant>();
                slots.push(tx);
                Some(rx)
            }
            Load::Closed { .. } => None,
        };
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            let mut rng = StdRng::seed_from_u64(seed + c as u64);
            let mut conn: Option<Conn> = None;
            loop {
                let intended = match slot.as_mut() {
                    // Ends when the pacer has handed out the last slot before the deadline
                    // and this connection has sent all of its own.
                    Some(slot) => match slot.recv().await {
                        Some(at) => at,
                        None => break,
                    },
                    None => {
                        let now = Instant::now();
                        if now >= deadline {
                            break;
                        }
                        now
                    }
                };
                let (bytes, expected) = requests.pick(&mut rng);
                let status = match conn.as_mut() {
                    Some(open) => open.exchange(bytes).await,
                    None => Err(Failure::NotConnected),
                };
                let status = match status {
                    // A server may close a keep-alive connection between requests: one retry
                    // on a new connection, which is what any HTTP client does.
                    Err(Failure::NotConnected | Failure::Closed) => match Conn::open(addr).await {
                        Ok(mut fresh) => {
                            let s = fresh.exchange(bytes).await;
                            conn = Some(fresh);
                            s
                        }
                        Err(_) => Err(Failure::Transport),
                    },
                    other => other,
                };
                if status.is_err() {
                    conn = None;
                }
                tally.record(status.map_err(|f| f.label()), *expected, intended.elapsed());
            }
            total.lock().expect("stats lock").merge(&tally.into_stats());
        }));
    }
    if let Load::Open { rate } = *load {
        let gap = 1.0 / rate.max(1) as f64;
        std::thread::spawn(move || pace(start, gap, deadline, slots));
    }
    for t in tasks {
        let _ = t.await;
    }
    Stats::collected(total)
}

/// Hands slot k, due at `start + k * gap` seconds, to connection k % n, until `deadline`.
///
/// Why a thread: tokio's timer has 1 ms ticks, so a request asked for at t left at the next
/// tick, up to a millisecond late, and that lateness was measured as the server's latency
/// (nginx `return 302`, open loop at 14,700/s: p50 1.24 ms, p99 2.44 ms). A plain thread's sleep
/// uses the kernel's high-resolution timers. It wakes at most every [`PACE_TICK`] and hands out
/// every slot due by then, each still measured from its own time.
fn pace(start: Instant, gap: f64, deadline: Instant, slots: Vec<mpsc::UnboundedSender<Instant>>) {
    let slot_at = |k: u64| start + Duration::from_secs_f64(gap * k as f64);
    let mut k = 0u64;
    loop {
        let now = Instant::now();
        while slot_at(k) <= now {
            if slot_at(k) >= deadline {
                return;
            }
            // Fails only once the connection's task is gone, and then nothing waits for it.
            let _ = slots[(k % slots.len() as u64) as usize].send(slot_at(k));
            k += 1;
        }
        if slot_at(k) >= deadline {
            return;
        }
        std::thread::sleep((slot_at(k) - now).max(PACE_TICK));
    }
}

/// The open loop's clock resolution: a request leaves at most this late (plus the kernel's timer
/// slack), and that counts as latency. Against nginx at 14,700/s: p50 0.33 ms, p99 1.1–1.3 ms,
/// the driver at 0.42 cores; a wake-up per slot (68 µs apart) cost 0.6 cores, more than the
/// server it measured, and the 1 ms of tokio's timer 0.26 cores for p50 1.24 ms.
const PACE_TICK: Duration = Duration::from_micros(250);

#[derive(Debug)]
enum Failure {
    NotConnected,
    /// Closed by the server before any byte of the response.
    Closed,
    /// Closed by the server part-way through the response: it took the request (a redirect
    /// has recorded its click), so it is counted as an error, never sent again.
    Truncated,
    Transport,
    Malformed,
}

impl Failure {
    fn label(&self) -> &'static str {
        match self {
            Failure::NotConnected | Failure::Transport => "transport",
            Failure::Closed => "closed",
            Failure::Truncated => "truncated",
            Failure::Malformed => "malformed",
        }
    }
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Bytes of `buf` holding data not yet consumed.
    filled: usize,
}

impl Conn {
    async fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: vec![0; 16 * 1024],
            filled: 0,
        })
    }

    /// Sends one request and reads its whole response; the status code.
    async fn exchange(&mut self, request: &[u8]) -> Result<u16, Failure> {
        if self.stream.write_all(request).await.is_err() {
            return Err(Failure::Closed);
        }
        loop {
            if let Some((status, head_len, body_len, close)) = parse_head(&self.buf[..self.filled])?
            {
                let total = head_len + body_len;
                if total > self.buf.len() {
                    self.buf.resize(total, 0);
                }
                while self.filled < total {
                    self.read_more().await.map_err(|f| match f {
                        Failure::Closed => Failure::Truncated,
                        other => other,
                    })?;
                }
                self.buf.copy_within(total..self.filled, 0);
                self.filled -= total;
                if close {
                    // Answered, but the next request needs a new connection.
                    self.filled = 0;
                    let _ = self.stream.shutdown().await;
                }
                return Ok(status);
            }
            match self.read_more().await {
                Err(Failure::Closed) if self.filled > 0 => return Err(Failure::Truncated),
                Err(e) => return Err(e),
                Ok(()) => {}
            }
        }
    }

    async fn read_more(&mut self) -> Result<(), Failure> {
        if self.filled == self.buf.len() {
            if self.buf.len() >= 1 << 20 {
                return Err(Failure::Malformed);
            }
            self.buf.resize(self.buf.len() * 2, 0);
        }
        match self.stream.read(&mut self.buf[self.filled..]).await {
            Ok(0) => Err(Failure::Closed),
            Ok(n) => {
                self.filled += n;
                Ok(())
            }
            Err(_) => Err(Failure::Transport),
        }
    }
}

/// `(status, head length, body length, connection: close)` once `data` holds a whole response
/// head; `None` while it does not. Bodies must be framed by `Content-Length` (what every
/// server here sends for a redirect or an error).
fn parse_head(data: &[u8]) -> Result<Option<(u16, usize, usize, bool)>, Failure> {
    let Some(end) = data.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = &data[..end];
    if head.len() < 12 || !head.starts_with(b"HTTP/1.") {
        return Err(Failure::Malformed);
    }
    let status = std::str::from_utf8(&head[9..12])
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(Failure::Malformed)?;
    let (mut body, mut close, mut chunked) = (0usize, false, false);
    for line in head.split(|b| *b == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if name.eq_ignore_ascii_case(b"content-length") {
            body = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or(Failure::Malformed)?;
        } else if name.eq_ignore_ascii_case(b"connection") {
            close = value.eq_ignore_ascii_case(b"close");
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            chunked = true;
        }
    }
    if chunked {
        return Err(Failure::Malformed);
    }
    Ok(Some((status, end + 4, body, close)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_latency_past_the_histograms_bound_counts_in_the_tail() {
        let mut tally = Tally::new();
        tally.record(Ok(302), 302, Duration::from_millis(2));
        tally.record(Ok(302), 302, Duration::from_secs(200));
        assert_eq!(tally.latency_us.len(), 2);
        assert!(tally.latency_us.max() >= 119_000_000);
    }

    #[test]
    fn heads_are_framed_by_content_length() {
        let r = b"HTTP/1.1 302 Found\r\nLocation: x\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_head(r).unwrap(), Some((302, r.len() - 5, 5, false)));
        assert_eq!(parse_head(b"HTTP/1.1 302 Found\r\nLoc").unwrap(), None);
        let close = b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(
            parse_head(close).unwrap(),
            Some((404, close.len(), 0, true))
        );
        assert!(parse_head(b"SMTP nonsense\r\n\r\n").is_err());
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
    }

    /// A tiny server on loopback answering every request with a 302 (with a body, so framing
    /// is exercised): each connection holds its first answer for `first_delay` and is closed
    /// after `answers` answers when given.
    async fn serve_302s(answers: Option<usize>, first_delay: Duration) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 65536];
                    let (mut served, mut first) = (0, true);
                    while answers.is_none_or(|most| served < most) {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        if first {
                            tokio::time::sleep(first_delay).await;
                            first = false;
                        }
                        let asked = buf[..n].windows(4).filter(|w| *w == b"\r\n\r\n").count();
                        let mut replies = String::new();
                        for _ in 0..asked {
                            served += 1;
                            // The last answer says so, as a server closing a kept-alive
                            // connection does: otherwise the next request can cross the close
                            // and meet a reset (a flaky error on a loaded machine).
                            let last = answers.is_some_and(|most| served >= most);
                            replies.push_str(if last {
                                "HTTP/1.1 302 Found\r\nLocation: /x\r\nConnection: close\r\nContent-Length: 5\r\n\r\nmoved"
                            } else {
                                "HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 5\r\n\r\nmoved"
                            });
                        }
                        if s.write_all(replies.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    /// Against a server that closes each connection after three answers: the driver
    /// reconnects and counts every answer, with no error.
    #[tokio::test]
    async fn connections_closed_by_the_server_are_reopened() {
        let addr = serve_302s(Some(3), Duration::ZERO).await;
        let stats = run(
            addr,
            Arc::new(Requests::one("/abc", 302)),
            &Load::Closed { concurrency: 1 },
            Duration::from_millis(300),
            2,
            1,
        )
        .await;
        assert!(stats.requests > 6, "{}", stats.requests);
        assert_eq!(stats.errors, 0);
    }

    /// A response cut short after its first bytes is an error of its own, and the request is
    /// not sent again: the server took it (a redirect has recorded its click), so a retry would
    /// double what the clicks check counts.
    #[tokio::test]
    async fn a_response_cut_short_is_an_error_and_never_sent_again() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(AtomicU64::new(0));
        let counted = seen.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let counted = counted.clone();
                // Each connection's first answer whole, its second cut short, so the cut falls
                // on a kept-alive connection (where a closed one is retried).
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let head = "HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: 5\r\n\r\n";
                    for body in ["moved", "mo"] {
                        if !matches!(s.read(&mut buf).await, Ok(n) if n > 0) {
                            return;
                        }
                        counted.fetch_add(1, Ordering::SeqCst);
                        let _ = s.write_all(format!("{head}{body}").as_bytes()).await;
                    }
                });
            }
        });
        let stats = run(
            addr,
            Arc::new(Requests::one("/abc", 302)),
            &Load::Closed { concurrency: 1 },
            Duration::from_millis(200),
            1,
            1,
        )
        .await;
        assert!(
            stats.errors > 0 && stats.errors < stats.requests,
            "{} errors of {}",
            stats.errors,
            stats.requests
        );
        assert_eq!(
            seen.load(Ordering::SeqCst),
            stats.requests,
            "none sent twice"
        );
    }

    /// Open loop: every slot before the deadline is sent, on time or late, and a server that
    /// holds its first answer for 100 ms shows it as the latency of every request scheduled
    /// behind it (measured from its slot, not from when it could be sent).
    #[tokio::test]
    async fn open_loop_sends_every_slot_and_counts_a_stall_as_latency() {
        let addr = serve_302s(None, Duration::from_millis(100)).await;
        // 1,000/s for 310.5 ms on one connection: slots at 0, 1, … 310 ms.
        let stats = run(
            addr,
            Arc::new(Requests::one("/abc", 302)),
            &Load::Open { rate: 1000 },
            Duration::from_micros(310_500),
            1,
            1,
        )
        .await;
        assert_eq!(stats.requests, 311);
        assert_eq!(stats.errors, 0);
        // Slots 0–59 ms waited for the answer held until 100 ms (or later): at least 40 ms each.
        let stalled = stats.latency_us.count_between(40_000, 120_000_000);
        assert!(stalled >= 60, "{stalled} of {} requests", stats.requests);
    }
}
