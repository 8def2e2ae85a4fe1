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
    /// Authenticated, but not allowed to do this.
    #[error("{0}")]
    Forbidden(String),
    /// Too many attempts; retry after this many seconds.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A dependency (PostgreSQL) is down or saturated.
    #[error("{0}")]
    Unavailable(String),
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
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::BadRequest(_) => "bad_request",
            ApiError::Validation(_) | ApiError::BadRow { .. } => "validation_error",
            ApiError::Unauthorized(_) => "unauthorized",
            ApiError::Forbidden(_) => "forbidden",
            ApiError::TooManyRequests { .. } => "rate_limited",
            ApiError::NotFound(_) => "not_found",
            ApiError::Conflict(_) => "conflict",
            ApiError::PayloadTooLarge(_) => "payload_too_large",
            ApiError::UnsupportedMediaType(_) => "unsupported_media_type",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::Unavailable(_) => "service_unavailable",
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
        let body = json!({"error": self.code(), "message": message, "details": details});
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        match self {
            ApiError::Internal(cause) => {
                response.extensions_mut().insert(ErrorCause(cause));
            }
            ApiError::Unauthorized(_) => {
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    header::HeaderValue::from_static("Bearer"),
                );
            }
            ApiError::TooManyRequests { retry_after, .. } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, header::HeaderValue::from(retry_after));
            }
            _ => {}
        }
        response
    }
}

impl From<deadpool_postgres::PoolError> for ApiError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        ApiError::Unavailable(format!("database unavailable: {e}"))
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        // A closed connection or an I/O failure means the database went away mid-request: that
        // is a 503 the client may retry, not a bug.
        if e.is_closed()
            || e.as_db_error().is_none() && e.to_string().contains("error communicating")
        {
            return ApiError::Unavailable("database unavailable".into());
        }
        ApiError::Internal(format!("postgres: {e}"))
    }
}

/// Handlers return this.
pub type ApiResult<T> = Result<T, ApiError>;
