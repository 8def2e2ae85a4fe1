//! The JSON line format of every kurz log.
//!
//! One object a line: `ts`, `level`, `logger` (the log target), `event` (the message), `service`,
//! then the record's key-values as context fields:
//!
//! ```text
//! {"ts":"2026-01-02T03:04:05.678Z","level":"INFO","logger":"kurz_api::http","event":"request","service":"kurz-api","request_id":"…","status":200}
//! ```
//!
//! Call sites put context in key-values, not in the message, so logs can be queried by field:
//! `log::info!(request_id = rid, status = 200; "request")`.

use log::kv::{Error as KvError, Key, Value, VisitSource};
use serde_json::{Map, Value as Json};
use std::io::Write;

/// Installs the JSON logger for `service` at `level` (`error`, `warn`, `info`, `debug`, `trace`,
/// or an env_logger filter such as `info,tokio_postgres=warn`). Safe to call more than once: later
/// calls are ignored, which tests rely on.
pub fn init(service: &'static str, level: &str) {
    let _ = env_logger::Builder::new()
        .parse_filters(level)
        .format(move |buf, record| {
            let line = render(service, record);
            writeln!(buf, "{line}")
        })
        .try_init();
}

/// Whether `level` is a filter the logger accepts, so config validation can name a bad value.
pub fn is_valid_level(level: &str) -> bool {
    level.split(',').all(|part| {
        let lvl = part.rsplit('=').next().unwrap_or("").trim();
        lvl.is_empty()
            || ["off", "error", "warn", "info", "debug", "trace"]
                .iter()
                .any(|l| l.eq_ignore_ascii_case(lvl))
    })
}

/// One record as a JSON object string.
pub fn render(service: &str, record: &log::Record<'_>) -> String {
    let mut obj = Map::new();
    obj.insert(
        "ts".into(),
        Json::String(
            chrono::Utc::now()
                .format("%Y-%m-%dT%H:%M:%S%.3fZ")
                .to_string(),
        ),
    );
    obj.insert("level".into(), Json::String(record.level().to_string()));
    obj.insert("logger".into(), Json::String(record.target().to_owned()));
    obj.insert("event".into(), Json::String(record.args().to_string()));
    obj.insert("service".into(), Json::String(service.to_owned()));
    let mut fields = Fields(&mut obj);
    let _ = record.key_values().visit(&mut fields);
    Json::Object(obj).to_string()
}

struct Fields<'a>(&'a mut Map<String, Json>);

impl<'kvs> VisitSource<'kvs> for Fields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), KvError> {
        let json = if let Some(b) = value.to_bool() {
            Json::Bool(b)
        } else if let Some(i) = value.to_i64() {
            Json::from(i)
        } else if let Some(u) = value.to_u64() {
            Json::from(u)
        } else if let Some(f) = value.to_f64() {
            serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)
        } else {
            Json::String(value.to_string())
        };
        self.0.insert(key.as_str().to_owned(), json);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn level_filters_are_checked() {
        assert!(is_valid_level("info"));
        assert!(is_valid_level("warn,kurz_api=debug"));
        assert!(!is_valid_level("loud"));
    }
}
