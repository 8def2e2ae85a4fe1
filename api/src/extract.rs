//! Request parsing at the boundary: JSON object bodies, typed fields with per-field errors, list
//! query parameters and path ids. Every rejection is an [`ApiError`], so clients never see
//! axum's plain-text rejections.

use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

/// A route's one path parameter, as text. A segment that does not percent-decode to UTF-8
/// (`/%FF%FE`) is our 400 instead of axum's plain-text rejection.
pub struct PathText(pub String);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for PathText {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(s)| PathText(s))
            .map_err(|rejection| {
                ApiError::BadRequest(format!("bad path: {}", rejection.body_text()))
            })
    }
}

/// A body as bytes, for the handlers that read forms or passwords themselves: over the body
/// limit it is our JSON 413, not the framework's plain-text one.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(body_rejection)
    }
}

fn body_rejection(rejection: axum::extract::rejection::BytesRejection) -> ApiError {
    if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::PayloadTooLarge("request body is too large".into())
    } else {
        ApiError::BadRequest(format!("cannot read request body: {rejection}"))
    }
}

/// A body that must be a JSON object. Anything else (empty, plain text, truncated JSON, a string,
/// an array) is a 400 `bad_request`; over the body limit a 413. The Content-Type is not
/// required: many clients omit it, and the body speaks for itself.
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(body_rejection)?;
        let bytes = without_bom(&bytes);
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::BadRequest(
                "request body is empty; send a JSON object".into(),
            ));
        }
        match serde_json::from_slice::<Value>(bytes) {
            Ok(Value::Object(map)) => match nul_at(&map, "") {
                // PostgreSQL cannot store NUL in text or JSON: refuse it here, by name.
                Some(field) => Err(ApiError::field(
                    &field,
                    "must not contain the NUL character (\\u0000)",
                )),
                None => Ok(JsonObject(map)),
            },
            Ok(other) => Err(ApiError::BadRequest(format!(
                "request body must be a JSON object, not {}",
                kind(&other)
            ))),
            Err(e) => Err(ApiError::BadRequest(format!(
                "request body is not valid JSON: {e}"
            ))),
        }
    }
}

/// A JSON text without the byte-order mark some Windows tools write first (RFC 8259 §8.1 lets
/// a reader ignore it; serde_json would call the body invalid at line 1 column 1).
pub fn without_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

/// Refuses a body another site's page could have made a visitor's browser send: one a form or
/// a `no-cors` fetch can carry (any type but JSON, none at all included) from a page of
/// another site. Such a post needs no preflight, so without this a page anywhere could make
/// its visitors fail logins in someone's name from their own addresses (locking the account
/// out there) or spend the password-hash permits. JSON from another site needs a preflight
/// that kurz never grants; clients that are not browsers name no origin.
pub fn refuse_cross_site_form(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_ascii_lowercase())
    };
    let json = text("content-type").is_some_and(|t| {
        let media = t.split(';').next().unwrap_or_default().trim();
        media == "application/json" || media.ends_with("+json")
    });
    let cross_site = match text("sec-fetch-site") {
        Some(site) => site == "cross-site" || site == "same-site",
        // Browsers without Fetch Metadata still name the origin of every post.
        None => headers.contains_key("origin"),
    };
    if cross_site && !json {
        return Err(ApiError::UnsupportedMediaType(
            "a browser's post from another site must be Content-Type: application/json".into(),
        ));
    }
    Ok(())
}

/// [`refuse_cross_site_form`] as an extractor placed before the body's: the body of such a
/// post (a form) is not JSON, and read first it answered 400 instead of this 415.
pub struct NotCrossSiteForm;

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for NotCrossSiteForm {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        refuse_cross_site_form(&parts.headers).map(|()| NotCrossSiteForm)
    }
}

/// The path (`details.key`, `tags[2]`) of the first key or string holding a NUL character.
pub(crate) fn nul_at(map: &Map<String, Value>, prefix: &str) -> Option<String> {
    fn walk(v: &Value, path: String) -> Option<String> {
        match v {
            Value::String(s) if s.contains('\0') => Some(path),
            Value::Object(m) => nul_at(m, &path),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .find_map(|(i, item)| walk(item, format!("{path}[{i}]"))),
            _ => None,
        }
    }
    map.iter().find_map(|(k, v)| {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if k.contains('\0') {
            Some(path)
        } else {
            walk(v, path)
        }
    })
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An integer sent as a JSON number, including a whole one written with a fraction (`7.0`, as
/// Python's `json.dumps(7.0)` writes it: JSON Schema counts it an integer, so clients generated
/// from our OpenAPI document may send it). `None` for anything else.
pub fn integer(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| {
        // Beyond 2^53 a float no longer holds every integer: such a value is not taken as one.
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0)
            .map(|f| f as i64)
    })
}

/// A field that may be absent, explicitly null, or set.
#[derive(Debug, Clone, PartialEq)]
pub enum Patch<T> {
    Absent,
    Null,
    Set(T),
}

impl<T> Patch<T> {
    pub fn is_absent(&self) -> bool {
        matches!(self, Patch::Absent)
    }
}

/// Pulls typed fields out of a JSON object, collecting every problem so one 400 names them all.
pub struct Fields {
    map: Map<String, Value>,
    errors: Vec<(String, String)>,
}

impl Fields {
    pub fn new(JsonObject(map): JsonObject) -> Self {
        Self {
            map,
            errors: Vec::new(),
        }
    }

    fn fail(&mut self, name: &str, why: &str) {
        self.reject(name, why);
    }

    /// A non-empty string, required.
    pub fn string(&mut self, name: &str) -> Option<String> {
        match self.opt_string(name) {
            Patch::Set(s) => Some(s),
            Patch::Absent | Patch::Null => {
                if !self.errors.iter().any(|(f, _)| f == name) {
                    self.fail(name, "is required");
                }
                None
            }
        }
    }

    /// The value as sent, unchecked (`None` when absent).
    pub fn raw(&mut self, name: &str) -> Option<Value> {
        self.map.remove(name)
    }

    /// An optional string; an empty or blank string counts as a value error.
    pub fn opt_string(&mut self, name: &str) -> Patch<String> {
        match self.map.remove(name) {
            None => Patch::Absent,
            Some(Value::Null) => Patch::Null,
            Some(Value::String(s)) if s.trim().is_empty() => {
                self.fail(name, "must not be empty");
                Patch::Absent
            }
            Some(Value::String(s)) => Patch::Set(s),
            Some(_) => {
                self.fail(name, "must be a string");
                Patch::Absent
            }
        }
    }

    /// A positive integer id, required.
    pub fn id(&mut self, name: &str) -> Option<i64> {
        match self.opt_id(name) {
            Patch::Set(v) => Some(v),
            _ => {
                if !self.errors.iter().any(|(f, _)| f == name) {
                    self.fail(name, "is required");
                }
                None
            }
        }
    }

    /// An optional positive integer id. Integers sent as strings (`"7"`) are refused: the
    /// contract types ids as numbers.
    pub fn opt_id(&mut self, name: &str) -> Patch<i64> {
        match self.map.remove(name) {
            None => Patch::Absent,
            Some(Value::Null) => Patch::Null,
            Some(Value::Number(n)) => match integer(&n) {
                Some(v) if v > 0 => Patch::Set(v),
                _ => {
                    self.fail(name, "must be a positive integer");
                    Patch::Absent
                }
            },
            Some(_) => {
                self.fail(name, "must be an integer");
                Patch::Absent
            }
        }
    }

    /// An optional count: an integer from 1 to 2^31-1, or `null`.
    pub fn opt_count(&mut self, name: &str) -> Patch<i32> {
        match self.map.remove(name) {
            None => Patch::Absent,
            Some(Value::Null) => Patch::Null,
            Some(Value::Number(n)) => match integer(&n).and_then(|v| i32::try_from(v).ok()) {
                Some(v) if v >= 1 => Patch::Set(v),
                _ => {
                    self.fail(name, "must be an integer from 1 to 2147483647, or null");
                    Patch::Absent
                }
            },
            Some(_) => {
                self.fail(name, "must be an integer from 1 to 2147483647, or null");
                Patch::Absent
            }
        }
    }

    /// A list of strings; `null` is the empty list.
    pub fn opt_string_list(&mut self, name: &str) -> Option<Vec<String>> {
        match self.map.remove(name) {
            None => None,
            Some(Value::Null) => Some(Vec::new()),
            Some(Value::Array(items)) => {
                let strings: Option<Vec<String>> = items
                    .into_iter()
                    .map(|v| match v {
                        Value::String(s) => Some(s),
                        _ => None,
                    })
                    .collect();
                if strings.is_none() {
                    self.fail(name, "must be an array of strings");
                }
                strings
            }
            Some(_) => {
                self.fail(name, "must be an array of strings");
                None
            }
        }
    }

    /// An integer from a fixed list (`null` is refused too: the field has a default).
    pub fn opt_choice(&mut self, name: &str, allowed: &[u16]) -> Option<u16> {
        let list = || {
            let names: Vec<String> = allowed.iter().map(|a| a.to_string()).collect();
            format!("must be one of {}", names.join(", "))
        };
        match self.map.remove(name) {
            None => None,
            Some(Value::Number(n)) => match integer(&n).and_then(|v| u16::try_from(v).ok()) {
                Some(v) if allowed.contains(&v) => Some(v),
                _ => {
                    self.fail(name, &list());
                    None
                }
            },
            Some(_) => {
                self.fail(name, &list());
                None
            }
        }
    }

    pub fn opt_bool(&mut self, name: &str) -> Patch<bool> {
        match self.map.remove(name) {
            None => Patch::Absent,
            Some(Value::Null) => Patch::Null,
            Some(Value::Bool(b)) => Patch::Set(b),
            Some(_) => {
                self.fail(name, "must be a boolean");
                Patch::Absent
            }
        }
    }

    /// An optional timestamp (ISO 8601; without a zone it is UTC).
    pub fn opt_timestamp(&mut self, name: &str) -> Patch<DateTime<Utc>> {
        match self.opt_string(name) {
            Patch::Set(s) => match kurz_common::time::parse(&s) {
                Some(ts) => Patch::Set(ts),
                None => {
                    self.fail(
                        name,
                        "must be an ISO 8601 timestamp such as 2030-01-31T12:00:00",
                    );
                    Patch::Absent
                }
            },
            Patch::Null => Patch::Null,
            Patch::Absent => Patch::Absent,
        }
    }

    /// An optional JSON object.
    pub fn opt_object(&mut self, name: &str) -> Patch<Map<String, Value>> {
        match self.map.remove(name) {
            None => Patch::Absent,
            Some(Value::Null) => Patch::Null,
            Some(Value::Object(m)) => Patch::Set(m),
            Some(_) => {
                self.fail(name, "must be a JSON object");
                Patch::Absent
            }
        }
    }

    /// Adds a value-level problem found by the caller.
    /// Records why `name` is refused; the first reason per field wins, so a field that is
    /// malformed is not also reported as missing.
    /// The checked value, or `None` with `name` rejected for the reason the check gave.
    pub fn check<T, E: std::fmt::Display>(
        &mut self,
        name: &str,
        checked: Result<T, E>,
    ) -> Option<T> {
        checked
            .map_err(|why| self.reject(name, why.to_string()))
            .ok()
    }

    pub fn reject(&mut self, name: &str, why: impl Into<String>) {
        if !self.errors.iter().any(|(f, _)| f == name) {
            self.errors.push((name.to_owned(), why.into()));
        }
    }

    /// `Err(Validation)` naming every field that failed.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.errors))
        }
    }
}

/// An id from the path. A non-numeric id cannot name a resource, so it is a 404 like any other
/// unknown id.
pub fn path_id(raw: &str, what: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| ApiError::NotFound(format!("{what} {raw:?} not found")))
}

/// Query parameters of a request.
pub struct Query {
    pairs: Vec<(String, String)>,
}

/// What every paginated list takes besides its own filters.
const PAGE_PARAMS: [&str; 2] = ["page", "per_page"];

/// The one parameter that may be given more than once: `tag=a&tag=b` asks for links carrying both.
const REPEATABLE: [&str; 1] = ["tag"];

impl Query {
    /// The query of an endpoint that takes the parameters `accepted` and no other. A misspelt
    /// or unknown name (`tags=`, `limit=`, `after=`) would widen a list the client meant to
    /// narrow and answer 200, and a name given twice would leave the client guessing which
    /// value counted: both are a 400 that names the parameter.
    pub fn parse(raw: Option<&str>, accepted: &[&str]) -> Result<Self, ApiError> {
        let pairs: Vec<(String, String)> = raw
            .map(|q| {
                url::form_urlencoded::parse(q.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        // By position in `accepted`: one pass, however many pairs a long query holds.
        let mut seen = vec![false; accepted.len()];
        for (name, _) in &pairs {
            let Some(at) = accepted.iter().position(|a| a == name) else {
                let takes = if accepted.is_empty() {
                    "it takes none".to_owned()
                } else {
                    format!("it takes {}", accepted.join(", "))
                };
                return Err(ApiError::BadRequest(format!(
                    "query parameter {} is not one this endpoint takes ({takes})",
                    crate::import::bounds::shown(name)
                )));
            };
            if std::mem::replace(&mut seen[at], true) && !REPEATABLE.contains(&name.as_str()) {
                return Err(ApiError::BadRequest(format!(
                    "query parameter {name} is given more than once"
                )));
            }
        }
        Ok(Self { pairs })
    }

    /// [`Query::parse`] for a paginated list: `accepted` and `page`, `per_page`.
    pub fn list(raw: Option<&str>, accepted: &[&str]) -> Result<Self, ApiError> {
        let all: Vec<&str> = accepted.iter().chain(&PAGE_PARAMS).copied().collect();
        Self::parse(raw, &all)
    }

    /// Every parameter in order.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// An optional positive integer parameter (`user_id=7`).
    /// An empty value (`?user_id=`) is refused like any other non-number: a filter that
    /// silently vanished would widen a query the client meant to narrow.
    pub fn id(&self, name: &str) -> Result<Option<i64>, ApiError> {
        self.integer_from(name, 1, "a positive integer")
    }

    /// An optional integer parameter of at least `min`; `what` names the range in the 400.
    pub fn integer_from(&self, name: &str, min: i64, what: &str) -> Result<Option<i64>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= min)
                .map(Some)
                .ok_or_else(|| {
                    ApiError::BadRequest(format!("query parameter {name}={v:?} must be {what}"))
                }),
        }
    }

    /// An optional boolean parameter: `true`/`false`/`1`/`0`, any case.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        match self.get(name).map(str::to_ascii_lowercase).as_deref() {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(v) => Err(ApiError::BadRequest(format!(
                "query parameter {name}={v:?} must be true or false"
            ))),
        }
    }
}
