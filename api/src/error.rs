//! The one error type of kurz-api and its HTTP mapping.
//!
//! Every failure a handler can meet becomes an [`ApiError`]; its `IntoResponse` writes the
//! contract's body `{"error", "message", "details"}`. Unexpected failures answer an opaque 500;
//! their cause travels in a response extension to the request logger, which logs it with the
//! request id, so nothing internal leaks to clients.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Body or query not usable at all (not JSON, not an object, `page=abc`).
    #[error("{0}")]
    BadRequest(String),
    /// Fields with wrong types or values: `(field, reason)` pairs.
    #[error("invalid fields")]
    Validation(Vec<(String, String)>),
    /// A bulk upload row that cannot be imported; nothing of the upload was.
    #[error("row {row} (line {line}), column {column}: {reason}")]
    BadRow {
        row: usize,
        line: u64,
        column: String,
        reason: String,
    },
    /// No valid credentials where they are needed.
    #[error("{0}")]
    Unauthorized(String),
    /// A password-protected link without (or with the wrong) password: 401 without a
    /// `WWW-Authenticate` challenge, since no HTTP scheme applies (the form or a JSON POST does).
    #[error("{0}")]
    PasswordRequired(String),
    /// Authenticated, but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// Too many attempts; retry after this many seconds.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    #[error("{0}")]
    NotFound(String),
    /// It existed and no longer does (an expired link): 410.
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A dependency (PostgreSQL) is down or saturated; the message is the client's.
    #[error("{0}")]
    Unavailable(String),
    /// PostgreSQL cannot be reached, is shutting down or refuses connections. The cause (driver
    /// text) is logged, never sent.
    #[error("the database is unavailable; retry shortly")]
    StoreDown(String),
    /// A bug or an unexpected dependency answer; the text is logged, never sent.
    #[error("{0}")]
    Internal(String),
}

/// The logged cause of a 500, attached to the response for the request logger.
#[derive(Clone, Debug)]
pub struct ErrorCause(pub String);

impl ApiError {
    /// One field failing validation.
    pub fn field(name: &str, reason: impl Into<String>) -> Self {
        ApiError::Validation(vec![(name.to_owned(), reason.into())])
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest(_) | ApiError::Validation(_) | ApiError::BadRow { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::Unauthorized(_) | ApiError::PasswordRequired(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Gone(_) => StatusCode::GONE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) | ApiError::StoreDown(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Validation(_) | ApiError::BadRow { .. } => "validation_error",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::PasswordRequired(_) => "password_required",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::NotFound(_) => "not_found",
            ApiError::Gone(_) => "gone",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unavailable(_) | ApiError::StoreDown(_) => "service_unavailable",
            ApiError::Internal(_) => "internal_error",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (message, details) = match &self {
            ApiError::Validation(fields) => {
                let details: Map<String, Value> = fields
                    .iter()
                    .map(|(f, why)| (f.clone(), Value::String(why.clone())))
                    .collect();
                let names: Vec<&str> = fields.iter().map(|(f, _)| f.as_str()).collect();
                (
                    format!("invalid fields: {}", names.join(", ")),
                    Value::Object(details),
                )
            }
            ApiError::BadRow {
                row,
                line,
                column,
                reason,
            } => (
                self.to_string(),
                json!({"row": row, "line": line, "column": column, "reason": reason}),
            ),
            ApiError::Internal(_) => (
                "an unexpected error occurred; quote the X-Request-Id header when reporting it"
                    .to_owned(),
                Value::Null,
            ),
            other => (other.to_string(), Value::Null),
        };
        let body = kurz_common::http::error_body(self.code(), &message, details);
        let mut response =
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response();
        self.mark(&mut response);
        response
    }
}

impl ApiError {
    /// What a response that answers this error carries besides its body: the cause of a 500 for
    /// the request log (never sent), `Retry-After` on a 503 or 429, `WWW-Authenticate` on a 401.
    /// The web app's pages answer errors with HTML of their own, and carry the same.
    /// What went wrong, for the log: the cause behind a 500 or 503 (which the body withholds),
    /// else the message.
    pub fn cause(&self) -> String {
        match self {
            ApiError::Internal(cause) | ApiError::StoreDown(cause) => cause.clone(),
            other => other.to_string(),
        }
    }

    pub fn mark(&self, response: &mut Response) {
        let headers = response.headers_mut();
        match self {
            ApiError::StoreDown(_) | ApiError::Unavailable(_) => {
                headers.insert(
                    header::RETRY_AFTER,
                    header::HeaderValue::from(RETRY_AFTER_SECONDS),
                );
            }
            ApiError::Unauthorized(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            ApiError::TooManyRequests { retry_after, .. } => {
                headers.insert(header::RETRY_AFTER, header::HeaderValue::from(*retry_after));
            }
            _ => {}
        }
        // Every 5xx is logged with its cause, at the level the 5xx runbook searches: a 503 at a
        // request's deadline or with a queue full (a slow PostgreSQL, no `KurzPostgresDown`) was
        // logged as a plain request, and the outage left no line saying why.
        if let ApiError::Internal(cause)
        | ApiError::StoreDown(cause)
        | ApiError::Unavailable(cause) = self
        {
            response.extensions_mut().insert(ErrorCause(cause.clone()));
        }
    }
}

/// What a 503 tells the client to wait before retrying.
pub(crate) const RETRY_AFTER_SECONDS: u64 = 2;

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        // No connection within the pool's wait, or none could be made: the store is down or
        // saturated either way.
        ApiError::StoreDown(format!("postgres pool: {e}"))
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The driver's Display of a server error is just "db error": the log needs the
        // SQLSTATE and the server's message to tell one 500 from another.
        let text = match e.as_db_error() {
            Some(db) => format!("postgres: {} (SQLSTATE {})", db.message(), db.code().code()),
            None => format!("postgres: {e}"),
        };
        if store_down(&e) {
            return ApiError::StoreDown(text);
        }
        ApiError::Internal(text)
    }
}

/// Whether `e` says the database cannot do the work now rather than that our query is wrong:
/// the connection closed or failed (no server answer at all), or the server said it is
/// shutting down, starting, out of connections or resources (SQLSTATE classes 08, 53, 57P),
/// cancelled a statement that ran past `statement_timeout` (57014), is a read-only standby or
/// a demoted primary after a failover (25006), or gave up on a lock or a serialization
/// conflict (55P03, 40P01, 40001). A retry can succeed for all of them: 503, not 500.
pub fn store_down(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(code) => {
            let code = code.code();
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || matches!(code, "57014" | "25006" | "55P03" | "40P01" | "40001")
        }
        // No server answer: the connection closed, failed, or timed out (the driver exposes
        // its error kind only through the I/O source and its text).
        None => {
            let text = e.to_string();
            e.is_closed()
                || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
                || text.starts_with("error connecting")
                || text.starts_with("error communicating")
                || text.starts_with("timeout")
        }
    }
}

/// Whether `e` is a conflict with other transactions (a deadlock, a serialization failure, a
/// lock not granted): the same work done again, or in smaller pieces, can succeed at once.
pub fn conflicted(e: &tokio_postgres::Error) -> bool {
    e.code()
        .is_some_and(|c| matches!(c.code(), "40P01" | "40001" | "55P03"))
}

/// Handlers return this.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::ApiError;

    /// A line logged after the answer (an export cut short) names what failed, which the
    /// client's body withholds for a 500 or a 503.
    #[test]
    fn the_cause_behind_a_withheld_message_is_for_the_log() {
        let down = ApiError::StoreDown("db error: connection refused".into());
        assert_eq!(down.cause(), "db error: connection refused");
        assert!(
            !down.to_string().contains("refused"),
            "the body withholds it"
        );
        let bad = ApiError::BadRequest("format must be csv".into());
        assert_eq!(bad.cause(), bad.to_string());
    }

    /// What the request log reads to write a 5xx as `request failed` with its cause: every
    /// 5xx carries it, a 4xx none.
    #[test]
    fn every_5xx_carries_its_cause_for_the_log() {
        let cause_of = |e: ApiError| {
            let mut response = axum::response::IntoResponse::into_response(());
            e.mark(&mut response);
            response
                .extensions()
                .get::<super::ErrorCause>()
                .map(|c| c.0.clone())
        };
        let late = "the request did not complete within 50 ms";
        assert_eq!(
            cause_of(ApiError::Unavailable(late.into())).as_deref(),
            Some(late)
        );
        assert!(cause_of(ApiError::StoreDown("refused".into())).is_some());
        assert!(cause_of(ApiError::Internal("bug".into())).is_some());
        assert!(cause_of(ApiError::NotFound("no link".into())).is_none());
    }
}
