//! Hostile clients at the edge: malformed heads, slow heads and bodies, connection floods. Every
//! answer is our JSON with a request id; slow clients are cut at the configured deadlines; one
//! client cannot hold more than its share of connections.

use crate::harness::{paths, upstream_alone, Behaviour, Options, Stack, FLOOD_ENDED};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Reads everything until the edge closes the connection (or `within` passes).
async fn read_to_close(conn: &mut TcpStream, within: Duration) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(within, conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one response with a `content-length` body; returns (status, head, body).
async fn read_response(conn: &mut TcpStream) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    let read = async {
        while !buf.ends_with(b"\r\n\r\n") {
            if conn.read(&mut byte).await.unwrap() == 0 {
                panic!("closed mid-head: {}", String::from_utf8_lossy(&buf));
            }
            buf.push(byte[0]);
        }
        let head = String::from_utf8(buf.clone()).unwrap();
        let len = head
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse::<usize>().unwrap())
            })
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        conn.read_exact(&mut body).await.unwrap();
        (head, String::from_utf8(body).unwrap())
    };
    let (head, body) = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("a response within 20 s");
    (status_of(&head), head, body)
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {response:?}"))
}

/// Asserts `response` is our error JSON with `status` and a request id; returns the body.
fn assert_our_error(response: &str, status: u16, what: &str) -> Value {
    assert_eq!(status_of(response), status, "{what}: {response}");
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{what}: no head end in {response:?}"));
    let head = head.to_ascii_lowercase();
    assert!(head.contains("\r\nx-request-id: "), "{what}: {head}");
    assert!(
        head.contains("\r\ncontent-type: application/json"),
        "{what}: {head}"
    );
    assert!(
        head.contains("\r\nx-content-type-options: nosniff"),
        "{what}: {head}"
    );
    let v: Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{what}: body {body:?}: {e}"));
    assert!(
        v["error"].is_string() && v["message"].is_string(),
        "{what}: {v}"
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_our_json_error_with_a_request_id_never_an_empty_400() {
    let stack = Stack::start(Options {
        upstreams: 1,
        // The shipped level, at which the access log is written.
        log_level: "info",
        ..Options::default()
    });
    let many: String = (0..1000).map(|i| format!("x-h{i}: v\r\n")).collect();
    let some: String = (0..119).map(|i| format!("x-h{i}: v\r\n")).collect();
    let one_past: String = (0..93).map(|i| format!("x-h{i}: v\r\n")).collect();
    let huge = format!("x-big: {}\r\n", "a".repeat(70 * 1024));
    let cases: Vec<(String, u16, &str)> = vec![
        (format!("GET /abc HTTP/1.1\r\nHost: a\r\n{many}\r\n"), 431, "1000 headers"),
        // More than the API's server takes with the edge's own added: ours, not its empty 431.
        (format!("GET /health HTTP/1.1\r\nHost: a\r\n{some}\r\n"), 431, "120 headers"),
        (format!("GET /abc HTTP/1.1\r\nHost: a\r\n{one_past}\r\n"), 431, "94 headers"),
        (format!("GET /abc HTTP/1.1\r\nHost: a\r\n{huge}\r\n"), 431, "a 70 KiB head"),
        ("GET /abc HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n".into(), 400, "NUL in a header"),
        ("POST /urls HTTP/1.1\r\nHost: a\r\nContent-Length: 1x\r\n\r\n".into(), 400, "bad Content-Length"),
        (
            "POST /urls HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}".into(),
            400,
            "Content-Length twice",
        ),
        ("POST /urls HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\n{}".into(), 400, "Content-Length: 2, 2"),
        (
            "POST /urls HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775808\r\n\r\n".into(),
            400,
            "Content-Length past i64",
        ),
        (
            "POST /urls HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
            400,
            "Content-Length and chunked",
        ),
        ("GET /%FF%FE HTTP/1.1\r\nHost: a\r\n\r\n".into(), 400, "a path that is not UTF-8"),
        ("CONNECT example.com:443 HTTP/1.1\r\nHost: a\r\n\r\n".into(), 405, "CONNECT"),
        ("GET / HTTP/1.1\r\n\r\n".into(), 400, "no Host"),
    ];
    let mut ids = Vec::new();
    for (raw, status, what) in &cases {
        let mut conn = TcpStream::connect(("127.0.0.1", stack.http_port))
            .await
            .unwrap();
        conn.write_all(raw.as_bytes()).await.unwrap();
        let response = read_to_close(&mut conn, Duration::from_secs(20)).await;
        assert_our_error(&response, *status, what);
        let id = response
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("x-request-id: ")
                    .map(str::to_owned)
            })
            .unwrap();
        ids.push((id, *what));
    }
    // The id a refused client holds is in the edge's log, as for any answer
    // (docs/troubleshooting.md: grep it).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    for (id, what) in &ids {
        while !stack.proxy_log().contains(id.as_str()) {
            assert!(
                std::time::Instant::now() < deadline,
                "{what}: its request id {id} is not in the edge's log"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // On a kept-alive connection, after a good request, a bad one is answered the same way.
    let mut conn = TcpStream::connect(("127.0.0.1", stack.http_port))
        .await
        .unwrap();
    conn.write_all(b"GET /NoSuchCode1 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let (status, head, _) = read_response(&mut conn).await;
    assert_eq!(status, 404);
    // As many fields as the edge takes reach the API and are answered by it, the edge's own
    // added (a redirect it forwards carries the visit id too): the two limits meet.
    let most: String = (0..92).map(|i| format!("x-h{i}: v\r\n")).collect();
    let request = format!("GET /NoSuchCode2 HTTP/1.1\r\nHost: a\r\n{most}\r\n");
    conn.write_all(request.as_bytes()).await.unwrap();
    let (status, _, body) = read_response(&mut conn).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"],
        "not_found"
    );
    // The edge's own JSON errors carry what the API's do.
    assert!(
        head.to_ascii_lowercase()
            .contains("\r\nx-content-type-options: nosniff\r\n"),
        "{head}"
    );
    conn.write_all(b"GET /abc HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n")
        .await
        .unwrap();
    let response = read_to_close(&mut conn, Duration::from_secs(20)).await;
    assert_our_error(&response, 400, "a bad second request");

    // Every reason but an unfinished TLS handshake, which the harness's readiness probe of the
    // HTTPS port may add at any moment.
    let mut rejected = 0.0;
    for reason in [
        "too_large",
        "malformed",
        "method",
        "head_timeout",
        "body_timeout",
    ] {
        let label = format!("reason=\"{reason}\"");
        rejected += stack
            .metric(
                stack.admin_port,
                "kurz_proxy_request_heads_rejected_total",
                &[label.as_str()],
            )
            .await;
    }
    assert_eq!(rejected, cases.len() as f64 + 1.0);
}

/// A body declared over the limit is answered 413 and its connection closed at once: kept open,
/// the edge would go on reading and throwing away whatever the client sent of it. (The body's
/// own deadline, a minute here, is not what closes it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_declared_too_large_is_refused_and_its_connection_closed() {
    let stack = Stack::start(Options {
        extra_yaml: "limits: { max_request_body_bytes: 1024, client_body_timeout_ms: 60000 }\n"
            .into(),
        ..Options::default()
    });
    let mut conn = TcpStream::connect(("127.0.0.1", stack.http_port))
        .await
        .unwrap();
    conn.write_all(
        b"POST /users HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
          Content-Length: 9000000000\r\n\r\n",
    )
    .await
    .unwrap();
    // No body is sent: bytes left unread when the edge closes would make it reset the
    // connection, and the reset could take the answer with it.
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut out)).await;
    let response = String::from_utf8_lossy(&out).into_owned();
    assert_our_error(&response, 413, "a body declared too large");
    assert!(
        response
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{response}"
    );
    assert!(closed.is_ok(), "the connection stays open: {response}");
}

/// What Pingora itself refuses in a request the connection layer passed: our 400 JSON naming
/// why, not a connection closed without a byte (which a client reports as a network failure).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_pingora_refuses_past_the_guard_gets_our_400() {
    let stack = Stack::start(Options {
        upstreams: 1,
        ..Options::default()
    });
    let trailer = format!("x-t: {}\r\n", "a".repeat(70 * 1024));
    let cases = [
        (
            "GET /urls HTTP/1.1\r\nHost: a\r\nConnection: X-Forwarded-For\r\n\r\n".to_owned(),
            "Connection header",
        ),
        (
            "GET /urls HTTP/1.1\r\nHost: a\r\nConnection: \"close\"\r\n\r\n".to_owned(),
            "Connection header",
        ),
        (
            format!(
                "POST /urls HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
                 Transfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n{trailer}\r\n"
            ),
            "Trailer size",
        ),
    ];
    // `what`: the parser's reason, which the answer gives.
    for (raw, what) in &cases {
        let mut conn = TcpStream::connect(("127.0.0.1", stack.http_port))
            .await
            .unwrap();
        conn.write_all(raw.as_bytes()).await.unwrap();
        let response = read_to_close(&mut conn, Duration::from_secs(20)).await;
        let v = assert_our_error(&response, 400, what);
        let message = v["message"].as_str().unwrap();
        assert!(
            message.starts_with("malformed request") && message.contains(what),
            "{what}: {v}"
        );
        // Nothing of the edge's own: the upstream it was sending to stays unnamed.
        assert!(
            !message.contains("upstream") && !message.contains("127.0.0.1"),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_and_sized_bodies_in_pieces_pass_the_guard_on_one_connection() {
    let stack = Stack::start(Options {
        upstreams: 1,
        ..Options::default()
    });
    let (_, code) = stack.link("https://example.com/pipelined").await;
    let user = stack
        .post(
            "/users",
            serde_json::json!({"username": "piper", "email": "piper@example.com"}),
        )
        .await;
    let body = format!(
        "{{\"user_id\": {}, \"original_url\": \"https://example.com/chunked\"}}",
        user["id"]
    );
    let (first, rest) = body.split_at(10);
    let chunked = format!(
        "POST /urls HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{first}\r\n{:x};ext=1\r\n{rest}\r\n0\r\n\r\n",
        first.len(),
        rest.len()
    );
    let sized = format!(
        "POST /urls HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let redirect = format!("GET /{code} HTTP/1.1\r\nHost: a\r\n\r\n");
    let not_found = "GET /NoSuchCode1 HTTP/1.1\r\nHost: a\r\n\r\n".to_owned();
    // One kept-alive connection; each request split into small writes, so heads and bodies
    // arrive in pieces and the guard must follow each body's framing to find the next head.
    let mut conn = TcpStream::connect(("127.0.0.1", stack.http_port))
        .await
        .unwrap();
    let mut statuses = Vec::new();
    for req in [&redirect, &chunked, &sized, &redirect, &not_found] {
        for piece in req.as_bytes().chunks(7) {
            conn.write_all(piece).await.unwrap();
            conn.flush().await.unwrap();
        }
        statuses.push(read_response(&mut conn).await.0);
    }
    assert_eq!(statuses, vec![302, 201, 201, 302, 404]);
}

/// Requests sent back to back without waiting (pipelined) are each answered, in order, the
/// forwarded ones included; a chunked body whose framing Pingora would read otherwise than the
/// guard is refused, and what follows it is never answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_odd_chunking_is_refused() {
    let stack = Stack::start(Options {
        upstreams: 1,
        ..Options::default()
    });
    let (_, code) = stack.link("https://example.com/piped").await;
    let mut conn = TcpStream::connect(("127.0.0.1", stack.http_port))
        .await
        .unwrap();
    let health = "GET /health HTTP/1.1\r\nHost: a\r\n\r\n";
    let redirect = format!("GET /{code} HTTP/1.1\r\nHost: a\r\n\r\n");
    let all = format!("{health}{health}{redirect}{health}");
    conn.write_all(all.as_bytes()).await.unwrap();
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(read_response(&mut conn).await.0);
    }
    assert_eq!(statuses, vec![200, 200, 302, 200]);

    // An empty chunk size: Pingora would read it as the last chunk, then take the next line
    // for a request head this guard never checked.
    let mut conn = TcpStream::connect(("127.0.0.1", stack.http_port))
        .await
        .unwrap();
    conn.write_all(
        b"POST /urls HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n\
          Transfer-Encoding: chunked\r\n\r\n\r\n\r\nGET /health HTTP/1.1\r\nHost: a\r\n\r\n",
    )
    .await
    .unwrap();
    let response = read_to_close(&mut conn, Duration::from_secs(20)).await;
    let v = assert_our_error(&response, 400, "an empty chunk size");
    assert!(v["message"].as_str().unwrap().contains("chunked"), "{v}");
    assert_eq!(
        response.matches("HTTP/1.1 ").count(),
        1,
        "the request after it was answered: {response}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_head_or_body_is_cut_at_its_deadline_with_a_408() {
    let stack = Stack::start(Options {
        upstreams: 1,
        extra_yaml: "limits: { header_timeout_ms: 1500, body_total_timeout_ms: 2000 }\n".into(),
        ..Options::default()
    });
    // A byte every 200 ms: each read arrives well within every per-read timeout, so only a
    // deadline on the whole head or body ends it.
    async fn trickle(stack: &Stack, start: &[u8], drip: &'static [u8]) -> String {
        let conn = TcpStream::connect(("127.0.0.1", stack.http_port))
            .await
            .unwrap();
        let (mut rd, mut wr) = conn.into_split();
        wr.write_all(start).await.unwrap();
        let writer = tokio::spawn(async move {
            for b in drip.iter().cycle() {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if wr.write_all(&[*b]).await.is_err() {
                    return;
                }
            }
        });
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), rd.read_to_end(&mut out)).await;
        writer.abort();
        String::from_utf8_lossy(&out).into_owned()
    }
    let head = trickle(
        &stack,
        b"GET /abc HTTP/1.1\r\nHost: a\r\n",
        b"X-Slow: yes\r\n",
    )
    .await;
    let v = assert_our_error(&head, 408, "trickled head");
    assert!(v["message"].as_str().unwrap().contains("head"), "{v}");
    let body = trickle(
        &stack,
        b"POST /urls HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n{",
        b" ",
    )
    .await;
    let v = assert_our_error(&body, 408, "trickled body");
    assert!(v["message"].as_str().unwrap().contains("body"), "{v}");
    for reason in ["head_timeout", "body_timeout"] {
        let n = stack
            .metric(
                stack.admin_port,
                "kurz_proxy_request_heads_rejected_total",
                &[&format!("reason=\"{reason}\"")],
            )
            .await;
        assert_eq!(n, 1.0, "{reason}");
    }
}

/// A body that stops arriving is cut after `limits.client_body_timeout_ms` without a piece,
/// long before the whole body's deadline: a 408, and the request is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stops_arriving_gets_a_408_after_the_per_read_timeout() {
    let stack = Stack::start(Options {
        upstreams: 1,
        extra_yaml: "limits: { client_body_timeout_ms: 1000, body_total_timeout_ms: 600000 }\n"
            .into(),
        ..Options::default()
    });
    let mut conn = TcpStream::connect(("127.0.0.1", stack.http_port))
        .await
        .unwrap();
    conn.write_all(
        b"POST /urls HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    // Held open, silent: only the per-read timeout can end this within the read below.
    let response = read_to_close(&mut conn, Duration::from_secs(30)).await;
    let v = assert_our_error(&response, 408, "a stalled body");
    assert_eq!(v["error"], "request_timeout");
    let retries = stack
        .metric(stack.admin_port, "kurz_proxy_upstream_retries_total", &[])
        .await;
    assert_eq!(retries, 0.0);
}

/// A client that asks for a large answer and never reads it is cut off at
/// `limits.client_send_timeout_ms`, and the upstream connection with it: the upstream's write
/// fails instead of waiting for ever with the answer in its memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_with_its_upstream() {
    let opts = || Options {
        upstreams: 1,
        extra_yaml: "limits: { client_send_timeout_ms: 500 }\n".into(),
        ..Options::default()
    };
    let stack = Stack::start(opts());
    let (_, seen) = upstream_alone(&stack, &opts(), Behaviour::Flood).await;
    // A small receive window, and nothing read: the edge's writes stall at once.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut conn = socket
        .connect(([127, 0, 0, 1], stack.http_port).into())
        .await
        .unwrap();
    conn.write_all(b"GET /urls/export HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !seen.lock().unwrap().iter().any(|(p, _)| p == FLOOD_ENDED) {
        assert!(
            std::time::Instant::now() < deadline,
            "the upstream is still writing an answer nobody reads"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The client's connection ends too (after what the buffers held).
    let mut sink = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), conn.read_to_end(&mut sink)).await;
    assert!(ended.is_ok(), "the client's connection is still open");
    assert!(sink.len() < 1 << 30, "the whole answer was never taken");
}

/// An upload to an upstream that stops reading it (frozen, or its host gone) ends in a 504
/// once a write waited `upstreams.read_timeout_ms` (and the answer as long again), instead of
/// hanging: while the edge waits to write the body it reads neither the answer nor more of the
/// client's body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_to_an_upstream_that_stops_reading_it_gets_504() {
    let opts = || Options {
        upstreams: 1,
        read_timeout_ms: 1_000,
        ..Options::default()
    };
    let stack = Stack::start(opts());
    let (_, seen) = upstream_alone(&stack, &opts(), Behaviour::Deaf).await;
    // More than the socket buffers between the edge and the upstream take.
    let size = 16 << 20;
    let conn = TcpStream::connect(("127.0.0.1", stack.http_port))
        .await
        .unwrap();
    let (mut from_edge, mut to_edge) = conn.into_split();
    let upload = tokio::spawn(async move {
        let head = format!(
            "PUT /urls/1 HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        );
        to_edge.write_all(head.as_bytes()).await?;
        to_edge.write_all(&vec![b' '; size]).await
    });
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            match from_edge.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer while the upstream reads nothing");
    let head = String::from_utf8_lossy(&answer);
    assert!(head.starts_with("HTTP/1.1 504"), "{head}");
    assert_eq!(paths(&seen), ["/urls/1"]);
    upload.abort();
}

/// An edge holding each client to `cap` connections, a first head due within
/// `header_timeout_ms` of accept.
fn capped_edge(cap: usize, header_timeout_ms: u64) -> Stack {
    Stack::start(Options {
        upstreams: 1,
        extra_yaml: format!(
            "limits: {{ header_timeout_ms: {header_timeout_ms}, max_connections_per_client: {cap} }}\n"
        ),
        ..Options::default()
    })
}

/// `n` connections to the edge's `port` from 127.0.0.2 (a client other than the harness's),
/// the `k`th sent `first(k)` and left there.
async fn open_from_another_client(
    port: u16,
    n: usize,
    first: impl Fn(usize) -> &'static [u8],
) -> Vec<TcpStream> {
    let edge = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut conns = Vec::new();
    for k in 0..n {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut conn = socket.connect(edge).await.unwrap();
        let _ = conn.write_all(first(k)).await;
        conns.push(conn);
    }
    conns
}

/// Waits until the edge has refused `n` connections for their client's cap, and checks it
/// refused no more.
async fn refused_exactly(stack: &Stack, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let refused = stack
            .metric(
                stack.admin_port,
                "kurz_proxy_connections_refused_total",
                &[],
            )
            .await;
        if refused >= n as f64 {
            assert_eq!(refused, n as f64);
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{refused} of {n} refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_from_one_address_holds_only_its_share_and_others_are_served() {
    const CAP: usize = 50;
    const ATTEMPTS: usize = 300;
    let stack = capped_edge(CAP, 120_000);
    // Half a head each, never finished.
    let mut conns = open_from_another_client(stack.http_port, ATTEMPTS, |_| {
        b"GET /abc HTTP/1.1\r\nHost: a\r\n"
    })
    .await;
    refused_exactly(&stack, ATTEMPTS - CAP).await;
    // Every refusal is written by now; a held connection gets nothing (its head deadline is
    // two minutes away).
    let answers = futures_util::future::join_all(
        conns
            .iter_mut()
            .map(|c| read_to_close(c, Duration::from_secs(5))),
    )
    .await;
    let mut held = 0;
    for answer in &answers {
        if answer.is_empty() {
            held += 1;
        } else {
            let v = assert_our_error(answer, 429, "a connection over the cap");
            assert_eq!(v["error"], "too_many_connections");
        }
    }
    assert_eq!(held, CAP, "the edge holds exactly the cap");
    // Another client is served while the slowloris is held.
    let res = stack.get("/NoSuchCode1").await;
    assert_eq!(res.status(), 404);
    let open = stack
        .metric(stack.admin_port, "kurz_proxy_client_connections", &[])
        .await;
    assert!(open <= (CAP + 3) as f64, "{open} connections open");
    drop(conns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_new_connection_is_closed_at_the_head_deadline_but_a_kept_alive_one_waits() {
    let stack = Stack::start(Options {
        upstreams: 1,
        extra_yaml: "limits: { header_timeout_ms: 1000 }\n".into(),
        ..Options::default()
    });
    let counted = || stack.metric(stack.admin_port, "kurz_proxy_client_connections", &[]);
    let counts = |want: f64| async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let open = counted().await;
            if open == want {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{open} counted, not {want}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // The harness's readiness probes connected and left without a word: wait until the edge
    // has counted them out, rather than take a moment's count as the baseline.
    counts(0.0).await;
    let mut silent = TcpStream::connect(("127.0.0.1", stack.http_port))
        .await
        .unwrap();
    let mut kept = TcpStream::connect(("127.0.0.1", stack.http_port))
        .await
        .unwrap();
    kept.write_all(b"GET /NoSuchCode1 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut kept).await.0, 404);

    // The silent one is closed without a word once its first head is late. (Not counted while
    // open: on a loaded machine its 1 s may be up before a count is read.)
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), silent.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "the silent connection was never closed");
    assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
    counts(1.0).await;

    // The kept-alive one idles well past the head deadline too; between requests only the 60 s
    // keep-alive timeout applies, so it still serves its next request.
    tokio::time::sleep(Duration::from_secs(2)).await;
    kept.write_all(b"GET /NoSuchCode2 HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut kept).await.0, 404);

    // Closed connections give back their place in the count.
    drop(kept);
    counts(0.0).await;
}

/// On the TLS port too a client holds at most its share of connections, counted from accept,
/// and one that never finishes its handshake (silent, or half a ClientHello) is closed at the
/// head deadline, not after Pingora's minute; others still get through the handshake.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_tls_the_cap_and_the_head_deadline_hold_from_accept() {
    const CAP: usize = 5;
    const ATTEMPTS: usize = 20;
    let stack = capped_edge(CAP, 5_000);
    // Half of them send the start of a ClientHello's record, never finished; the rest nothing.
    let mut conns = open_from_another_client(stack.https_port, ATTEMPTS, |n| {
        if n % 2 == 0 {
            &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]
        } else {
            b""
        }
    })
    .await;
    refused_exactly(&stack, ATTEMPTS - CAP).await;
    // Every one of them is closed by now or at its head deadline (Pingora alone: 60 s).
    for conn in &mut conns {
        let mut out = Vec::new();
        let closed =
            tokio::time::timeout(Duration::from_secs(20), conn.read_to_end(&mut out)).await;
        assert!(
            closed.is_ok(),
            "a connection stuck in its handshake was never closed"
        );
        assert!(out.is_empty(), "a plain answer on the TLS port: {out:?}");
    }
    // The ones let in were cut at the deadline, each counted (just after its close: waited
    // for). At least: the harness's readiness probe may have left a connection unshaken too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let cut = stack
            .metric(
                stack.admin_port,
                "kurz_proxy_request_heads_rejected_total",
                &["reason=\"tls_handshake\""],
            )
            .await;
        if cut >= CAP as f64 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{cut} handshakes counted as cut"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A real client from elsewhere shakes hands and is served.
    let head = crate::harness::curl(&[
        "-sk",
        "-o",
        "/dev/null",
        "-D",
        "-",
        &format!("https://127.0.0.1:{}/health", stack.https_port),
    ]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

/// Plain HTTP sent on to HTTPS spends the class's tokens like any request: a flood on port 80
/// is held to the same rate as one on 443, not answered with a 308 each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_sent_on_to_https_is_rate_limited_like_any_request() {
    let stack = Stack::start(Options {
        listen_extra: ", redirect_http_to_https: true".into(),
        rate_limits: "{ redirect: { rate: 0.02, burst: 2 }, write: { rate: 0, burst: 1 }, auth: { rate: 0, burst: 1 }, read: { rate: 0, burst: 1 } }".into(),
        ..Options::default()
    });
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let mut conn = TcpStream::connect(("127.0.0.1", stack.http_port))
            .await
            .unwrap();
        conn.write_all(b"GET /abcdef HTTP/1.1\r\nHost: short.example\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut conn, Duration::from_secs(20)).await;
        statuses.push(status_of(&answer));
        if statuses.len() == 3 {
            assert!(
                answer.to_ascii_lowercase().contains("\r\nretry-after: "),
                "{answer}"
            );
        }
    }
    assert_eq!(statuses, [308, 308, 429]);
}

/// With `listen.hsts_max_age_seconds` every TLS answer carries HSTS, the redirects and errors
/// the edge writes itself as well as the API's; with `listen.redirect_http_to_https` plain HTTP
/// gets a 308 to the same host (port dropped, IPv6 kept whole) and a Host that names no host a
/// 400, never a `Location` built from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_answers_carry_hsts_and_plain_http_goes_to_https_for_a_well_formed_host_only() {
    let stack = Stack::start(Options {
        listen_extra: ", hsts_max_age_seconds: 600, redirect_http_to_https: true".into(),
        // Loopback is a load balancer that ends TLS in front of the edge (below).
        rate_limits: "{ trusted_proxies: [\"127.0.0.0/8\"], redirect: { rate: 0, burst: 1 }, write: { rate: 0, burst: 1 }, auth: { rate: 0, burst: 1 }, read: { rate: 0, burst: 1 } }".into(),
        ..Options::default()
    });
    // Plain HTTP to the edge is redirected now: the link is made at an API directly.
    let api = format!("http://{}", stack.upstreams[0].addr());
    let post = |path: &str, body: Value| {
        let req = stack.client.post(format!("{api}{path}")).json(&body);
        async move {
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 201);
            res.json::<Value>().await.unwrap()
        }
    };
    let user = post(
        "/users",
        json!({"username": "hsts", "email": "hsts@example.com"}),
    )
    .await;
    let link = post(
        "/urls",
        json!({"user_id": user["id"], "original_url": "https://example.com/hsts"}),
    )
    .await;
    let code = link["short_code"].as_str().unwrap();
    let base = format!("https://127.0.0.1:{}", stack.https_port);
    for (path, status) in [
        (format!("/{code}"), "302"),
        ("/zzzzzzz".to_owned(), "404"),
        ("/metrics".to_owned(), "404"),
        ("/admin/anything".to_owned(), "404"),
        ("/health".to_owned(), "200"),
    ] {
        let head = crate::harness::curl(&[
            "-sk",
            "-o",
            "/dev/null",
            "-D",
            "-",
            &format!("{base}{path}"),
        ])
        .to_ascii_lowercase();
        assert_eq!(head.split(' ').nth(1), Some(status), "{path}: {head}");
        assert!(
            head.contains("\r\nstrict-transport-security: max-age=600\r\n"),
            "{path}: {head}"
        );
        if status == "302" {
            // A redirect is the visitor's own: no shared cache may keep it (and skip the click).
            assert!(
                head.contains("\r\ncache-control: private, no-store\r\n"),
                "{head}"
            );
        }
    }

    let ask = |request: String| {
        let port = stack.http_port;
        async move {
            let mut conn = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            conn.write_all(request.as_bytes()).await.unwrap();
            read_to_close(&mut conn, Duration::from_secs(20)).await
        }
    };
    let answer = ask("GET http://abs.example/x?a=1 HTTP/1.0\r\n\r\n".to_owned()).await;
    assert_eq!(status_of(&answer), 308, "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nlocation: https://abs.example/x?a=1\r\n"),
        "{answer}"
    );
    for (host, location) in [
        ("short.example:80", "https://short.example/x?a=1"),
        ("[2001:db8::1]:8080", "https://[2001:db8::1]/x?a=1"),
    ] {
        let answer = ask(format!(
            "GET /x?a=1 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        ))
        .await;
        assert_eq!(status_of(&answer), 308, "{host}: {answer}");
        let head = answer.to_ascii_lowercase();
        assert!(
            head.contains(&format!("\r\nlocation: {location}\r\n")),
            "{host}: {answer}"
        );
        assert!(
            !head.contains("strict-transport-security"),
            "{host}: {answer}"
        );
    }
    // The load balancer's word that the client came over HTTPS: no redirect (it would come
    // back as plain HTTP for ever), and the answer carries HSTS as a TLS one does.
    let answer = ask(
        "GET /health HTTP/1.1\r\nHost: short.example\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n"
            .to_owned(),
    )
    .await;
    assert_eq!(status_of(&answer), 200, "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("\r\nstrict-transport-security: max-age=600\r\n"),
        "{answer}"
    );
    for request in [
        "GET /x HTTP/1.1\r\nHost: evil.example/@x\r\nConnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: evil.example/x\r\nConnection: close\r\n\r\n",
        "GET /x HTTP/1.1\r\nHost: :80\r\nConnection: close\r\n\r\n",
        "GET /x HTTP/1.0\r\n\r\n",
    ] {
        let answer = ask(request.to_owned()).await;
        assert_our_error(&answer, 400, request);
        assert!(
            !answer.to_ascii_lowercase().contains("\r\nlocation:"),
            "{answer}"
        );
    }
}
