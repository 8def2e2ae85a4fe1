//! The raw redirect driver: keep-alive HTTP/1.1 over plain tokio sockets, for scenarios made of
//! redirects only. A full HTTP client spends more CPU per request than the edge it measures
//! (the `reqwest` path tops out near 11k req/s here); this one writes pre-built request bytes,
//! reads into one reused buffer per connection and parses only the status line and
//! `Content-Length`, so the server, not the driver, is what runs out of CPU.
//!
//! Open loop: every connection owns every `connections`-th slot of the global schedule and
//! measures each request from its slot's time, so a stalled server shows up as latency instead
//! of as requests that were never sent (no coordinated omission).

use crate::keys::Codes;
use crate::load::Stats;
use crate::scenario::Load;
use rand::rngs::StdRng;
use rand::SeedableRng;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
        let _ = self.latency_us.record((elapsed.as_micros() as u64).max(1));
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
    let start = tokio::time::Instant::now();
    let deadline = start + duration;
    // Slot spacing per connection: connection c sends at start + (k * connections + c) * gap.
    let gap = match *load {
        Load::Open { rate } => Some(Duration::from_secs_f64(1.0 / rate.max(1) as f64)),
        Load::Closed { .. } => None,
    };
    let mut tasks = Vec::with_capacity(connections);
    for c in 0..connections {
        let (requests, total) = (requests.clone(), total.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::new();
            let mut rng = StdRng::seed_from_u64(seed + c as u64);
            let mut conn: Option<Conn> = None;
            for k in 0u64.. {
                let intended = match gap {
                    Some(gap) => {
                        let at = start + gap.mul_f64((k * connections as u64 + c as u64) as f64);
                        if at >= deadline {
                            break;
                        }
                        tokio::time::sleep_until(at).await;
                        at.into_std()
                    }
                    None => {
                        let now = tokio::time::Instant::now();
                        if now >= deadline {
                            break;
                        }
                        now.into_std()
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
    for t in tasks {
        let _ = t.await;
    }
    Stats::collected(total)
}

#[derive(Debug)]
enum Failure {
    NotConnected,
    /// Closed by the server before any byte of the response.
    Closed,
    Transport,
    Malformed,
}

impl Failure {
    fn label(&self) -> &'static str {
        match self {
            Failure::NotConnected | Failure::Transport => "transport",
            Failure::Closed => "closed",
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
        let mut first_read = true;
        loop {
            if let Some((status, head_len, body_len, close)) = parse_head(&self.buf[..self.filled])?
            {
                let total = head_len + body_len;
                if total > self.buf.len() {
                    self.buf.resize(total, 0);
                }
                while self.filled < total {
                    self.read_more().await?;
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
                Err(Failure::Closed) if first_read => return Err(Failure::Closed),
                Err(e) => return Err(e),
                Ok(()) => first_read = false,
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

    /// Against a tiny server on loopback that closes each connection after three answers: the
    /// driver reconnects and counts every answer, with no error.
    #[tokio::test]
    async fn connections_closed_by_the_server_are_reopened() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    let mut served = 0;
                    while served < 3 {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        let asked = buf[..n].windows(4).filter(|w| *w == b"\r\n\r\n").count();
                        for _ in 0..asked {
                            served += 1;
                            let body = "moved";
                            let reply = format!(
                                "HTTP/1.1 302 Found\r\nLocation: /x\r\nContent-Length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            let _ = s.write_all(reply.as_bytes()).await;
                        }
                    }
                    // Closes after three answers: the driver must reconnect.
                });
            }
        });
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
}
