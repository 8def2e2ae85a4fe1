//! Request heads and bodies as bytes: where a head ends, whether it is one we accept, how its
//! body is framed, and the JSON answer for one we refuse.

use bytes::Bytes;

/// Largest request head (request line and headers) accepted: 431 beyond.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Header fields accepted: more is our 431. The API's HTTP server (hyper) takes at most 100,
/// and answers more with an empty 431 of its own; the edge adds up to seven to a forwarded
/// request (`x-forwarded-for`, `-proto`, `x-real-ip`, `x-request-id`, the visit id and the
/// sampling draw of a forwarded redirect, and `connection: close` on a retry to the upstream
/// that failed it).
const MAX_HEADERS: usize = 93;

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A request refused before Pingora sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Label of `kurz_proxy_request_heads_rejected_total`.
    pub reason: &'static str,
    /// The `x-request-id` of the answer, which the log line of the refusal carries too.
    pub id: String,
}

impl Refusal {
    pub fn new(
        status: u16,
        code: &'static str,
        message: impl Into<String>,
        reason: &'static str,
    ) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            reason,
            id: kurz_common::clicks::new_id(),
        }
    }

    pub(super) fn malformed(message: impl Into<String>) -> Self {
        Self::new(400, "bad_request", message, "malformed")
    }

    /// The whole HTTP/1.1 answer: our error JSON, a fresh request id, and `connection: close`
    /// (after a refused head the rest of the stream cannot be trusted to be framed). `date`
    /// as on every answer Pingora writes: RFC 9110 §6.6.1 asks it of a 4xx.
    pub fn reply(&self, extra: &[(&str, &str)]) -> Bytes {
        let body = kurz_common::http::error_body(self.code, &self.message, serde_json::Value::Null);
        let reason = http::StatusCode::from_u16(self.status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\ndate: {}\r\ncontent-type: application/json\r\n\
             cache-control: no-store\r\nx-content-type-options: nosniff\r\nx-request-id: {}\r\n\
             content-length: {}\r\nconnection: close\r\n",
            self.status,
            pingora::protocols::http::date::get_cached_date()
                .to_str()
                .unwrap_or_default(),
            self.id,
            body.len()
        );
        for (k, v) in extra {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        out.push_str(&body);
        Bytes::from(out)
    }
}

/// The length of the head at the start of `buf` (through its blank line), searching from
/// `from`. Bare-LF line ends count, as they do for Pingora's parser.
pub fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while let Some(off) = buf.get(i..)?.iter().position(|&b| b == b'\n') {
        let lf = i + off;
        match buf.get(lf + 1..lf + 3) {
            Some([b'\n', _]) => return Some(lf + 2),
            Some([b'\r', b'\n']) => return Some(lf + 3),
            None if buf.get(lf + 1) == Some(&b'\n') => return Some(lf + 2),
            _ => {}
        }
        i = lf + 1;
    }
    None
}

/// Checks a complete head and says how its body is framed.
pub fn check(head: &[u8]) -> Result<Framing, Refusal> {
    // Uninitialised slots: filling 256 empty headers per request cost more than parsing one.
    let mut headers =
        [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(head, &mut headers) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(Refusal::malformed("incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::new(
                431,
                "request_header_fields_too_large",
                format!("more than {MAX_HEADERS} header fields"),
                "too_large",
            ))
        }
        Err(e) => return Err(Refusal::malformed(format!("malformed request head: {e}"))),
    }
    let method = req.method.unwrap_or("");
    if method.eq_ignore_ascii_case("CONNECT") {
        return Err(Refusal::new(
            405,
            "method_not_allowed",
            "CONNECT is not supported",
            "method",
        ));
    }
    let target = req.path.unwrap_or("");
    // `*` (asterisk-form) names the server itself, for OPTIONS only (RFC 9112 3.2.4).
    let asterisk = target == "*" && method.eq_ignore_ascii_case("OPTIONS");
    if target.parse::<http::Uri>().is_err()
        || !(target.starts_with('/') || target.contains("://") || asterisk)
    {
        return Err(Refusal::malformed("the request target is not a valid URI"));
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    if !decodes_to_utf8(path.as_bytes()) {
        return Err(Refusal::malformed(
            "the path is not valid UTF-8 once percent-decoded",
        ));
    }
    let http11 = req.version == Some(1);
    let (mut hosts, mut length, mut chunked) = (0, None::<u64>, None::<bool>);
    let mut host: Option<&[u8]> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = Some(h.value);
        } else if h.name.eq_ignore_ascii_case("content-length") {
            // One value, in one line, that fits Pingora's i64: RFC 9112 lets a server take
            // `5, 5` or a repeated equal line as 5, but Pingora refuses both (and a length past
            // i64::MAX) with a bare 400 of its own, so they are refused here, with our answer.
            let text = std::str::from_utf8(h.value).unwrap_or("x");
            let text = text.trim_matches([' ', '\t']);
            let n = (!text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()))
                .then(|| text.parse::<i64>().ok())
                .flatten();
            match (n, length) {
                (Some(n), None) => length = Some(n as u64),
                (Some(_), Some(_)) => {
                    return Err(Refusal::malformed("Content-Length is given more than once"))
                }
                _ => return Err(Refusal::malformed("invalid Content-Length")),
            }
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            let text = std::str::from_utf8(h.value).unwrap_or("");
            for coding in text.split(',').map(|c| c.trim_matches([' ', '\t'])) {
                // Only one coding, `chunked`, last: anything else we cannot frame.
                let ok = coding.eq_ignore_ascii_case("chunked") && chunked.is_none();
                if !ok {
                    return Err(Refusal::new(
                        501,
                        "not_implemented",
                        "only `Transfer-Encoding: chunked` is supported",
                        "malformed",
                    ));
                }
                chunked = Some(true);
            }
        }
    }
    if hosts > 1 || (http11 && hosts == 0) {
        return Err(Refusal::malformed(
            "a request needs exactly one Host header",
        ));
    }
    // Pingora refuses these too, with an empty 400: refused here, they get our answer.
    if host.is_some_and(|h| h.contains(&b'@')) {
        return Err(Refusal::malformed(
            "the Host header must not carry userinfo",
        ));
    }
    // Only the absolute form (`GET http://host/path`) has an authority; the origin form, nearly
    // every request, is not parsed again.
    let absolute = !target.starts_with('/');
    if let Some(authority) = absolute
        .then(|| target.parse::<http::Uri>().ok())
        .flatten()
        .and_then(|u| u.authority().cloned())
    {
        if authority.as_str().contains('@') {
            return Err(Refusal::malformed(
                "the request target must not carry userinfo",
            ));
        }
        // Byte for byte, as Pingora compares them (`Example.com` and `example.com:80` differ
        // there too, though RFC 9110 makes them one server): refused here, with our answer.
        if host.is_some_and(|h| h != authority.as_str().as_bytes()) {
            return Err(Refusal::malformed(
                "the Host header differs from the request target's authority",
            ));
        }
    }
    match (chunked, length) {
        // Two framings disagreeing is how requests are smuggled past a proxy.
        (Some(_), Some(_)) => Err(Refusal::malformed(
            "both Content-Length and Transfer-Encoding",
        )),
        (Some(_), None) if !http11 => Err(Refusal::malformed("Transfer-Encoding needs HTTP/1.1")),
        (Some(_), None) => Ok(Framing::Chunked),
        (None, Some(n)) if n > 0 => Ok(Framing::Length(n)),
        _ => Ok(Framing::None),
    }
}

/// Whether `path`, percent-decoded, is UTF-8. Our routes and codes are text: a path that is
/// not can match nothing, and the frameworks behind us would answer it in plain text.
fn decodes_to_utf8(path: &[u8]) -> bool {
    if !path.contains(&b'%') {
        return true;
    }
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(path.len());
    let mut i = 0;
    while i < path.len() {
        match (
            path[i],
            path.get(i + 1).and_then(|&b| hex(b)),
            path.get(i + 2).and_then(|&b| hex(b)),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&out).is_ok()
}

/// Where a chunked body is: enough to know where it ends, so the next request's head is
/// checked too. The grammar is Pingora's (httparse's chunk sizes: 1 to 16 hex digits, optional
/// whitespace, `;` extensions up to CRLF) or stricter (a size needs a digit, every line ends in
/// CRLF): where the two read a body differently, the bytes one takes for a body the other would
/// take for a head, so framing we cannot follow is `Broken` and the request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chunked {
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size: only more of it, an extension or the line's end may follow.
    SizeSpace {
        size: u64,
    },
    Extension {
        size: u64,
    },
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    Trailer {
        line_start: bool,
    },
    TrailerLf {
        empty: bool,
    },
    Done,
    Broken,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::Size { size: 0, digits: 0 }
    }
}

impl Chunked {
    pub fn new() -> Self {
        Self::default()
    }

    fn after_size(size: u64) -> Self {
        if size == 0 {
            Chunked::Trailer { line_start: true }
        } else {
            Chunked::Data(size)
        }
    }

    /// Consumes the body's bytes from the start of `data`; returns how many belong to it
    /// (all of them unless the body ends inside `data`).
    pub fn feed(&mut self, data: &[u8]) -> usize {
        use Chunked::*;
        let mut i = 0;
        while i < data.len() {
            match *self {
                Done | Broken => return i,
                Data(n) => {
                    let k = n.min((data.len() - i) as u64);
                    i += k as usize;
                    *self = if k == n { DataCr } else { Data(n - k) };
                    continue;
                }
                _ => {}
            }
            let b = data[i];
            i += 1;
            *self = match *self {
                Size { size, digits } => match ((b as char).to_digit(16), b) {
                    // 16 digits fill a u64: httparse's limit too.
                    (Some(v), _) if digits < 16 => Size {
                        size: size << 4 | u64::from(v),
                        digits: digits + 1,
                    },
                    (Some(_), _) => Broken,
                    // httparse takes an empty size for 0; RFC 9112 wants a digit.
                    (None, _) if digits == 0 => Broken,
                    (None, b';') => Extension { size },
                    (None, b' ' | b'\t') => SizeSpace { size },
                    (None, b'\r') => SizeLf { size },
                    (None, _) => Broken,
                },
                SizeSpace { size } => match b {
                    b' ' | b'\t' => SizeSpace { size },
                    b';' => Extension { size },
                    b'\r' => SizeLf { size },
                    _ => Broken,
                },
                // Any byte but CR, a bare LF included, is the extension's for httparse.
                Extension { size } => match b {
                    b'\r' => SizeLf { size },
                    _ => Extension { size },
                },
                SizeLf { size } if b == b'\n' => Self::after_size(size),
                DataCr if b == b'\r' => DataLf,
                DataLf if b == b'\n' => Self::new(),
                Trailer { line_start } => match b {
                    b'\r' => TrailerLf { empty: line_start },
                    b'\n' => Broken,
                    _ => Trailer { line_start: false },
                },
                TrailerLf { empty } if b == b'\n' => {
                    if empty {
                        Done
                    } else {
                        Trailer { line_start: true }
                    }
                }
                _ => Broken,
            };
        }
        i
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(head: &str) -> Result<Framing, Refusal> {
        check(head.as_bytes())
    }

    #[test]
    fn heads_end_at_their_blank_line() {
        assert_eq!(
            head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nrest", 0),
            Some(27)
        );
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: a\n\nrest", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r", 0), None);
        let buf = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
        assert_eq!(head_end(buf, 20), Some(27));
    }

    #[test]
    fn good_heads_are_framed() {
        assert_eq!(
            req("GET /abc HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Framing::None)
        );
        assert_eq!(req("GET /abc HTTP/1.0\r\n\r\n"), Ok(Framing::None));
        assert_eq!(
            req("POST /urls HTTP/1.1\r\nHost: a\r\nContent-Length: 12\r\n\r\n"),
            Ok(Framing::Length(12))
        );
        assert_eq!(
            req("POST /urls HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n"),
            Ok(Framing::Chunked)
        );
        assert_eq!(
            req("GET /caf%C3%A9?q=%FF HTTP/1.1\r\nHost: a\r\n\r\n"),
            Ok(Framing::None)
        );
    }

    #[test]
    fn hostile_heads_are_refused_with_the_right_status() {
        let status = |h: &str| req(h).unwrap_err().status;
        let many: String = (0..1000).map(|i| format!("x-h{i}: v\r\n")).collect();
        assert_eq!(
            status(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            431
        );
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n"), 400);
        assert_eq!(status("GET * HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert!(req("OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\n"),
            400
        );
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n"),
            400
        );
        // Pingora refuses repeats and lengths past i64 itself, with a bare 400: ours comes first.
        for length in [
            "5\r\nContent-Length: 6",
            "5\r\nContent-Length: 5",
            "5, 5",
            "9223372036854775808",
        ] {
            assert_eq!(
                status(&format!(
                    "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: {length}\r\n\r\n"
                )),
                400,
                "{length}"
            );
        }
        assert_eq!(
            req("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 9223372036854775807\r\n\r\n"),
            Ok(Framing::Length(i64::MAX as u64))
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n"),
            501
        );
        assert_eq!(status("GET /%FF%FE HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        assert_eq!(
            status("GET / HTTP/1.1\r\nHost: evil.example/@x\r\n\r\n"),
            400
        );
        assert_eq!(status("GET http://u@a/ HTTP/1.1\r\nHost: u@a\r\n\r\n"), 400);
        assert_eq!(status("GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET http://a/ HTTP/1.1\r\nHost: b\r\n\r\n"), 400);
        assert!(req("GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n").is_ok());
        assert_eq!(status("CONNECT a:443 HTTP/1.1\r\nHost: a\r\n\r\n"), 405);
        assert_eq!(status("GET / HTTP/2.0\r\nHost: a\r\n\r\n"), 400);
        assert_eq!(status("GET nopath HTTP/1.1\r\nHost: a\r\n\r\n"), 400);
    }

    #[test]
    fn the_reply_is_our_json_and_closes() {
        let r = Refusal::new(
            431,
            "request_header_fields_too_large",
            "too many",
            "too_large",
        )
        .reply(&[]);
        let text = std::str::from_utf8(&r).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nconnection: close\r\n"));
        assert!(text.contains("\r\nx-request-id: "));
        // An IMF-fixdate, `Mon, 07 Dec 2026 17:34:38 GMT`.
        let date = text
            .split("\r\n")
            .find_map(|l| l.strip_prefix("date: "))
            .expect("a date header");
        assert!(date.len() == 29 && date.ends_with(" GMT"), "{date}");
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"], "request_header_fields_too_large");
        assert!(text.contains(&format!("content-length: {}\r\n", body.len())));
    }

    #[test]
    fn a_chunked_body_ends_where_its_last_chunk_and_trailers_do() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nGET /next";
        let mut c = Chunked::new();
        let n = c.feed(body);
        assert_eq!(c, Chunked::Done);
        assert_eq!(&body[n..], b"GET /next");
        // Byte by byte, the same.
        let mut c = Chunked::new();
        let mut used = 0;
        for b in body.iter() {
            used += c.feed(std::slice::from_ref(b));
            if c == Chunked::Done {
                break;
            }
        }
        assert_eq!(used, n);
        let mut c = Chunked::new();
        assert_eq!(c.feed(b"0\r\n\r\n"), 5);
        assert_eq!(c, Chunked::Done);
        let mut c = Chunked::new();
        c.feed(b"zz\r\n");
        assert_eq!(c, Chunked::Broken);
        let mut c = Chunked::new();
        c.feed(b"3\r\nabcX");
        assert_eq!(c, Chunked::Broken);
    }
}
