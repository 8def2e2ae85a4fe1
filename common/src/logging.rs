//! The JSON line format of every kurz log, and the writer that keeps it off the request path.
//!
//! One object a line: `ts`, `level`, `logger` (the log target), `event` (the message), `service`,
//! then the record's key-values as context fields, in the order the call site gives them:
//!
//! ```text
//! {"ts":"2026-01-02T03:04:05.678Z","level":"INFO","logger":"kurz_api::http","event":"request","service":"kurz-api","request_id":"…","status":200}
//! ```
//!
//! Call sites put context in key-values, not in the message, so logs can be queried by field:
//! `log::info!(request_id = rid, status = 200; "request")`.
//!
//! The edge logs every request by default (`log.access_log_sample_rate: 1.0`), so a line must
//! cost the request little: it is rendered straight into a reused buffer (no map of fields, no
//! allocation per field) and handed to a [`LineSink`], whose own thread writes the lines out in
//! batches, one system call a millisecond or so under load instead of one a request. No line is
//! dropped: when the output stalls, loggers wait for room, as they waited on a full pipe before.
//! Warnings and errors are written out before the call returns, together with every line logged
//! before them, so a process that exits or aborts right after one still leaves it (and what led
//! to it) behind; [`flush`] does the same for the rest, and both binaries call it on their way out.
//! Access lines are not, whatever their level (see [`urgent`]).

use log::kv::{Error as KvError, Key, Value, VisitSource};
use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once, PoisonError};
use std::time::Duration;

/// How long the writer thread lets lines gather after writing a batch.
const GATHER: Duration = Duration::from_millis(1);
/// Bytes waiting for the writer before loggers wait for room: ~4,000 lines per megabyte.
const SINK_CAP: usize = 4 << 20;

/// Installs the JSON logger for `service` at `level` (`error`, `warn`, `info`, `debug`, `trace`,
/// or a filter such as `info,tokio_postgres=warn`), writing to stderr. Safe to call more than
/// once: later calls are ignored, which tests rely on.
pub fn init(service: &'static str, level: &str) {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = env_filter::Builder::new().parse(level).build();
        let max = filter.filter();
        let sink = LineSink::start(Box::new(std::io::stderr()), SINK_CAP);
        let logger = JsonLogger {
            service,
            filter,
            sink,
        };
        if log::set_boxed_logger(Box::new(logger)).is_ok() {
            log::set_max_level(max);
            std::panic::set_hook(Box::new(|info| {
                log_panic(log::logger(), info.payload(), info.location());
            }));
        }
    });
}

/// Logs a panic as one JSON line like every other (the default hook writes plain text over
/// several lines): its message, where it happened, the thread, and the backtrace when
/// `RUST_BACKTRACE` asks for one. The API still answers the request 500 and logs it; this is
/// the record of the panic itself, and for the edge, the only one.
fn log_panic(
    logger: &dyn log::Log,
    payload: &(dyn std::any::Any + Send),
    location: Option<&std::panic::Location<'_>>,
) {
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned());
    let location = location
        .map(|l| format!("{}:{}", l.file(), l.line()))
        .unwrap_or_default();
    let thread = std::thread::current();
    let backtrace = std::backtrace::Backtrace::capture();
    let backtrace = match backtrace.status() {
        std::backtrace::BacktraceStatus::Captured => backtrace.to_string(),
        _ => String::new(),
    };
    let kvs: &[(&str, Value<'_>)] = &[
        ("message", Value::from(message.as_str())),
        ("location", Value::from(location.as_str())),
        ("thread", Value::from(thread.name().unwrap_or("unnamed"))),
        ("backtrace", Value::from(backtrace.as_str())),
    ];
    logger.log(
        &log::Record::builder()
            .args(format_args!("panic"))
            .level(log::Level::Error)
            .target("panic")
            .key_values(&kvs)
            .build(),
    );
    logger.flush();
}

/// Writes out every line logged so far. Call before the process exits.
pub fn flush() {
    log::logger().flush();
}

/// Whether `level` is a filter the logger accepts, so config validation can name a bad value.
pub fn is_valid_level(level: &str) -> bool {
    // No directive at all (`""`, `","`) gives the filter no rule, and it would log errors only
    // without a word.
    let mut parts = level
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .peekable();
    parts.peek().is_some()
        && parts.all(|part| {
            let lvl = part.rsplit('=').next().unwrap_or("").trim();
            lvl.is_empty()
                || ["off", "error", "warn", "info", "debug", "trace"]
                    .iter()
                    .any(|l| l.eq_ignore_ascii_case(lvl))
        })
}

struct JsonLogger {
    service: &'static str,
    filter: env_filter::Filter,
    sink: Arc<LineSink>,
}

impl log::Log for JsonLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.filter.matches(record) {
            return;
        }
        thread_local! {
            static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
        }
        let urgent = urgent(record.level(), record.target());
        LINE.with(|cell| {
            // A value whose `Display` logs would find the buffer taken: it gets one of its own.
            let mut own = Vec::new();
            let mut held = cell.try_borrow_mut();
            let line = match held.as_deref_mut() {
                Ok(buf) => buf,
                Err(_) => &mut own,
            };
            line.clear();
            render_into(line, self.service, record);
            line.push(b'\n');
            self.sink.push(line, urgent);
            // A rare huge line should not pin its size in every thread for good.
            if line.capacity() > 64 << 10 {
                *line = Vec::new();
            }
        });
    }

    fn flush(&self) {
        self.sink.flush();
    }
}

/// Loggers whose lines are one per request: the edge's and the API's access lines.
const PER_REQUEST: [&str; 2] = ["kurz_proxy::access", "kurz_api::http"];

/// Whether a line is written by the thread that logs it: warnings and errors, but not a
/// request's access line at those levels (a 5xx). In an outage every request logs one, and a
/// synchronous write each, on the threads serving the requests, would slow them as the incident
/// goes on; the writer thread takes them at once.
fn urgent(level: log::Level, target: &str) -> bool {
    level <= log::Level::Warn && !PER_REQUEST.contains(&target)
}

fn render_into(out: &mut Vec<u8>, service: &str, record: &log::Record<'_>) {
    use chrono::{Datelike, Timelike};
    let now = chrono::Utc::now();
    let _ = write!(
        out,
        "{{\"ts\":\"{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z\",\"level\":\"{}\",\"logger\":",
        now.year(),
        now.month(),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.timestamp_subsec_millis() % 1000,
        record.level()
    );
    string(out, record.target());
    out.extend_from_slice(b",\"event\":");
    match record.args().as_str() {
        Some(s) => string(out, s),
        None => string(out, &record.args().to_string()),
    }
    out.extend_from_slice(b",\"service\":");
    string(out, service);
    let _ = record.key_values().visit(&mut Fields(out));
    out.push(b'}');
}

/// Longest text of one field, in bytes: a request's path or method can be tens of KiB, and
/// Docker's and containerd's log drivers split a line past 16 KiB into pieces that are no
/// longer one JSON object each.
const MAX_FIELD_BYTES: usize = 2048;

/// `s` as a JSON string, quoted and escaped; past [`MAX_FIELD_BYTES`] cut at a character
/// boundary, saying how much was left out.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.len() <= MAX_FIELD_BYTES {
        let _ = serde_json::to_writer(&mut *out, s);
        return;
    }
    let mut end = MAX_FIELD_BYTES;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let cut = format!("{}…[{} more bytes]", &s[..end], s.len() - end);
    let _ = serde_json::to_writer(&mut *out, &cut);
}

/// The fields every line starts with.
const OWN_FIELDS: [&str; 5] = ["ts", "level", "logger", "event", "service"];

struct Fields<'a>(&'a mut Vec<u8>);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), KvError> {
        let out = &mut *self.0;
        out.push(b',');
        let key = key.as_str();
        if OWN_FIELDS.contains(&key) {
            // A line has each key once, and the line's own field keeps its meaning: the
            // context's value stays, under a name of its own.
            string(out, &format!("{key}_"));
        } else {
            string(out, key);
        }
        out.push(b':');
        if let Some(b) = value.to_bool() {
            out.extend_from_slice(if b { b"true" } else { b"false" });
        } else if let Some(i) = value.to_i64() {
            let _ = write!(out, "{i}");
        } else if let Some(u) = value.to_u64() {
            let _ = write!(out, "{u}");
        } else if let Some(f) = value.to_f64() {
            if f.is_finite() {
                let _ = serde_json::to_writer(&mut *out, &f);
            } else {
                out.extend_from_slice(b"null");
            }
        } else if let Some(s) = value.to_borrowed_str() {
            string(out, s);
        } else {
            string(out, &value.to_string());
        }
        Ok(())
    }
}

/// Lines waiting for the writer thread.
struct Pending {
    buf: Vec<u8>,
    /// The writer thread is asleep on `LineSink::wake`, so the next line must wake it.
    idle: bool,
    /// The writer thread has stopped (tests only): lines are written by their caller.
    closed: bool,
}

/// A buffer of whole lines and the thread that writes it out.
///
/// Lock order: `out` before `pending`, so batches reach the output in the order they were taken.
pub struct LineSink {
    pending: Mutex<Pending>,
    /// The writer thread waits here for lines.
    wake: Condvar,
    /// Loggers wait here for room when `cap` bytes are pending.
    room: Condvar,
    out: Mutex<Box<dyn Write + Send>>,
    cap: usize,
}

impl LineSink {
    /// A sink writing to `out`, and its writer thread.
    pub fn start(out: Box<dyn Write + Send>, cap: usize) -> Arc<Self> {
        let sink = Arc::new(Self {
            pending: Mutex::new(Pending {
                buf: Vec::new(),
                idle: false,
                closed: false,
            }),
            wake: Condvar::new(),
            room: Condvar::new(),
            out: Mutex::new(out),
            cap,
        });
        let writer = sink.clone();
        std::thread::Builder::new()
            .name("kurz-log".into())
            .spawn(move || writer.write_loop())
            .expect("start the log writer thread");
        sink
    }

    /// Queues whole lines; with `urgent`, writes them and everything before them out first.
    pub fn push(&self, lines: &[u8], urgent: bool) {
        let mut p = self.pending();
        while p.buf.len() >= self.cap && !p.closed {
            p = self.room.wait(p).unwrap_or_else(PoisonError::into_inner);
        }
        p.buf.extend_from_slice(lines);
        let urgent = urgent || p.closed;
        // Waking the writer is a system call: once per idle spell, by the first line after it.
        let wake = !urgent && std::mem::replace(&mut p.idle, false);
        drop(p);
        if urgent {
            self.flush();
        } else if wake {
            self.wake.notify_one();
        }
    }

    /// Writes out every line queued so far before it returns.
    pub fn flush(&self) {
        self.write_out(&mut Vec::new());
    }

    /// Stops the writer thread once it has written what is queued; later lines are written by
    /// their callers.
    pub fn close(&self) {
        self.pending().closed = true;
        self.wake.notify_one();
        self.flush();
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_loop(&self) {
        let mut spare = Vec::new();
        loop {
            {
                let mut p = self.pending();
                while p.buf.is_empty() {
                    if p.closed {
                        return;
                    }
                    p.idle = true;
                    p = self.wake.wait(p).unwrap_or_else(PoisonError::into_inner);
                }
                p.idle = false;
            }
            self.write_out(&mut spare);
            // Lines gather meanwhile: a busy process writes a batch per system call.
            std::thread::sleep(GATHER);
        }
    }

    /// Takes what is pending (leaving `spare`'s allocation in its place) and writes it.
    fn write_out(&self, spare: &mut Vec<u8>) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        spare.clear();
        std::mem::swap(&mut self.pending().buf, spare);
        self.room.notify_all();
        if !spare.is_empty() {
            // Nowhere is left to report a failed write to: the lines are lost, as they were
            // when stderr itself failed.
            let _ = out.write_all(spare);
            let _ = out.flush();
        }
        if spare.capacity() > self.cap * 2 {
            *spare = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value as Json;
    use std::time::Instant;

    /// A level with no directive would leave the logger at errors only, silently: refused, as
    /// a misspelt level is.
    #[test]
    fn a_level_needs_a_directive_and_known_levels() {
        for ok in ["info", "WARN", "warn,kurz_api=debug", "info,"] {
            assert!(is_valid_level(ok), "{ok:?}");
        }
        for bad in ["", " ", ",", "loud", "info,kurz_api=loud"] {
            assert!(!is_valid_level(bad), "{bad:?}");
        }
    }

    /// A panic is one JSON line, at ERROR, with its message and where it happened.
    #[test]
    fn a_panic_is_logged_as_one_json_line() {
        let out = Shared::default();
        let logger = JsonLogger {
            service: "kurz-test",
            filter: env_filter::Builder::new().parse("warn").build(),
            sink: LineSink::start(Box::new(out.clone()), 1 << 20),
        };
        let payload = String::from("index 3 out of range");
        log_panic(&logger, &payload, Some(std::panic::Location::caller()));
        let text = out.text();
        assert_eq!(text.lines().count(), 1, "{text}");
        let v: Json = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["event"], "panic");
        assert_eq!(v["service"], "kurz-test");
        assert_eq!(v["message"], "index 3 out of range");
        assert!(
            v["location"].as_str().unwrap().contains("logging.rs:"),
            "{v}"
        );
    }

    /// An output the test reads back.
    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Shared {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// One record as the logger writes it, without the newline.
    fn render(service: &str, record: &log::Record<'_>) -> String {
        let mut line = Vec::new();
        render_into(&mut line, service, record);
        String::from_utf8(line).expect("JSON text is UTF-8")
    }

    fn eventually(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn renders_one_json_object_with_context_fields() {
        let kvs: &[(&str, Value<'_>)] =
            &[("status", Value::from(404u16)), ("path", Value::from("/x"))];
        let record = log::Record::builder()
            .args(format_args!("request"))
            .level(log::Level::Info)
            .target("kurz_api::http")
            .key_values(&kvs)
            .build();
        let line = render("kurz-api", &record);
        let v: Json = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "request");
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["logger"], "kurz_api::http");
        assert_eq!(v["service"], "kurz-api");
        assert_eq!(v["status"], 404);
        assert_eq!(v["path"], "/x");
        let ts = v["ts"].as_str().unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(ts).is_ok() && ts.len() == 24 && ts.ends_with('Z'),
            "{ts}"
        );
    }

    /// The line's own fields first, then the context in the call's order; every kind of value
    /// typed as JSON, strings escaped, and a context key that names one of the line's own fields
    /// kept under its own name rather than written twice.
    /// A field of 100 KiB (a request's path or method) is cut, the line stays one JSON object
    /// well under the 16 KiB at which log drivers split lines, and says how much was cut.
    #[test]
    fn a_huge_field_is_cut_and_the_line_stays_whole() {
        let path = format!("/{}é", "a".repeat(100 << 10));
        let kvs: &[(&str, Value<'_>)] = &[("path", Value::from(path.as_str()))];
        let record = log::Record::builder()
            .args(format_args!("request"))
            .level(log::Level::Info)
            .target("kurz_proxy::access")
            .key_values(&kvs)
            .build();
        let line = render("kurz-proxy", &record);
        assert!(line.len() < 4096, "{} bytes", line.len());
        let v: Json = serde_json::from_str(&line).unwrap();
        let logged = v["path"].as_str().unwrap();
        assert!(path.starts_with(logged.split('…').next().unwrap()));
        let left_out = path.len() - logged.split('…').next().unwrap().len();
        assert!(
            logged.ends_with(&format!("…[{left_out} more bytes]")),
            "{logged:.40}"
        );
    }

    /// Warnings and errors are written at once, except a request's access line (a 5xx), which
    /// every request makes in an outage.
    #[test]
    fn access_lines_of_failed_requests_are_not_written_by_their_request() {
        use log::Level::*;
        assert!(urgent(Error, "kurz_api::clicks"));
        assert!(urgent(Warn, "kurz_proxy::reload"));
        assert!(!urgent(Info, "kurz_api::clicks"));
        assert!(!urgent(Warn, "kurz_proxy::access"));
        assert!(!urgent(Error, "kurz_api::http"));
    }

    #[test]
    fn fields_keep_their_order_types_and_escapes() {
        let kvs: &[(&str, Value<'_>)] = &[
            ("status", Value::from(404u16)),
            ("path", Value::from("/a\"b\\c\u{1}\n")),
            ("edge", Value::from(true)),
            ("duration_ms", Value::from(1.5f64)),
            ("ratio", Value::from(f64::NAN)),
            ("delta", Value::from(-3i64)),
            ("event", Value::from("clash")),
        ];
        let args = format!("moved {}", 2);
        let line = render(
            "kurz-proxy",
            &log::Record::builder()
                .args(format_args!("{args}"))
                .level(log::Level::Warn)
                .target("kurz_proxy::access")
                .key_values(&kvs)
                .build(),
        );
        assert!(!line.contains('\n'), "{line}");
        let v: Json = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "moved 2");
        assert_eq!(v["level"], "WARN");
        assert_eq!(v["path"], "/a\"b\\c\u{1}\n");
        assert_eq!(v["edge"], true);
        assert_eq!(v["duration_ms"], 1.5);
        assert_eq!(v["ratio"], Json::Null);
        assert_eq!(v["delta"], -3);
        assert_eq!(v["event_"], "clash");
        assert_eq!(v.as_object().unwrap().len(), 12);
        let keys = [
            "ts",
            "level",
            "logger",
            "event",
            "service",
            "status",
            "path",
            "edge",
            "duration_ms",
            "ratio",
            "delta",
            "event_",
        ];
        let at: Vec<usize> = keys
            .iter()
            .map(|k| line.find(&format!("\"{k}\":")).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{line}");
    }

    /// Four threads log 5,000 lines each through a sink that holds at most a few lines: every
    /// line comes out once, whole, and each thread's lines in the order it logged them.
    #[test]
    fn every_line_arrives_once_whole_and_in_order() {
        let out = Shared::default();
        let sink = LineSink::start(Box::new(out.clone()), 256);
        std::thread::scope(|s| {
            for t in 0..4 {
                let sink = &sink;
                s.spawn(move || {
                    for i in 0..5000 {
                        sink.push(format!("{t} {i}\n").as_bytes(), i % 1000 == 999);
                    }
                });
            }
        });
        sink.flush();
        let mut next = [0; 4];
        for line in out.text().lines() {
            let (t, i) = line.split_once(' ').unwrap();
            let (t, i): (usize, usize) = (t.parse().unwrap(), i.parse().unwrap());
            assert_eq!(i, next[t], "thread {t}'s lines out of order");
            next[t] += 1;
        }
        assert_eq!(next, [5000; 4]);
        sink.close();
    }

    /// Lines reach the output on their own; a warning reaches it before `push` returns, after
    /// every line queued before it.
    #[test]
    fn lines_are_written_without_a_flush_and_urgent_ones_at_once() {
        let out = Shared::default();
        let sink = LineSink::start(Box::new(out.clone()), 1 << 20);
        sink.push(b"one\n", false);
        eventually("the writer thread", || out.text() == "one\n");
        sink.push(b"two\n", false);
        sink.push(b"three\n", true);
        assert_eq!(out.text(), "one\ntwo\nthree\n");
        sink.close();
        sink.push(b"four\n", false);
        assert_eq!(out.text(), "one\ntwo\nthree\nfour\n");
    }

    /// An output that blocks until the test opens it, as a pipe nobody reads.
    struct Stalled {
        open: Arc<(Mutex<bool>, Condvar)>,
        entered: Arc<Mutex<bool>>,
        into: Shared,
    }

    impl Write for Stalled {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            *self.entered.lock().unwrap() = true;
            let (open, cv) = &*self.open;
            let mut o = open.lock().unwrap();
            while !*o {
                o = cv.wait(o).unwrap();
            }
            self.into.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// While the output is stalled, a logger that has filled the sink waits instead of dropping
    /// lines or growing the buffer; once it drains, every line is there, in order.
    #[test]
    fn a_stalled_output_holds_loggers_back_and_loses_nothing() {
        let open = Arc::new((Mutex::new(false), Condvar::new()));
        let entered = Arc::new(Mutex::new(false));
        let out = Shared::default();
        let stalled = Stalled {
            open: open.clone(),
            entered: entered.clone(),
            into: out.clone(),
        };
        let cap = 64;
        let sink = LineSink::start(Box::new(stalled), cap);
        let logger = {
            let sink = sink.clone();
            std::thread::spawn(move || {
                for i in 0..100 {
                    sink.push(format!("line {i:04}\n").as_bytes(), false);
                }
            })
        };
        eventually("the writer to block on the output", || {
            *entered.lock().unwrap()
        });
        eventually("the sink to fill", || sink.pending().buf.len() >= cap);
        // 1,000 bytes cannot fit in one batch in the output plus a full sink: the logger waits.
        assert!(!logger.is_finished());
        assert!(sink.pending().buf.len() < cap + 10);
        *open.0.lock().unwrap() = true;
        open.1.notify_all();
        logger.join().unwrap();
        sink.flush();
        let want: String = (0..100).map(|i| format!("line {i:04}\n")).collect();
        assert_eq!(out.text(), want);
        sink.close();
    }
}
