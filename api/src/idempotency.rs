//! `Idempotency-Key` on `POST /urls`: a retried create returns the first answer for 24 hours
//! instead of making a second link.
//!
//! The key is reserved with `SET NX` before the work starts, so two concurrent requests with the
//! same key cannot both create; the finished answer replaces the reservation. A failed request
//! releases the key, so the client may retry it. Reusing a key with a different body is a 409,
//! never a silent replay of an unrelated answer. With Redis down the request proceeds without
//! the guarantee (logged): refusing creates would be worse.

use crate::error::ApiError;
use crate::state::AppState;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// How long an answer is replayed.
const KEEP_SECONDS: u64 = 24 * 3600;
/// How long a reservation holds if the process dies mid-request.
const RESERVE_SECONDS: u64 = 60;
const PENDING: &str = "pending";
const MAX_KEY_LEN: usize = 255;

/// The header's value, checked: 1 to 255 visible ASCII characters.
pub fn key_from(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    match raw.to_str() {
        Ok(k)
            if !k.is_empty()
                && k.len() <= MAX_KEY_LEN
                && k.bytes().all(|b| b.is_ascii_graphic()) =>
        {
            Ok(Some(k.to_owned()))
        }
        _ => Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters"
        ))),
    }
}

/// Reserves the key, or returns the stored answer of an earlier identical request.
pub async fn begin(
    state: &AppState,
    key: &str,
    fingerprint: &str,
) -> Result<Option<Response>, ApiError> {
    let redis_key = state.keys.idempotency(key);
    let mut reserve = redis::cmd("SET");
    reserve
        .arg(&redis_key)
        .arg(PENDING)
        .arg("NX")
        .arg("EX")
        .arg(RESERVE_SECONDS);
    let reserved: Option<String> = match state.redis.query(&reserve).await {
        Ok(r) => r,
        Err(e) => {
            log::warn!(error = e.to_string(); "idempotency unavailable; creating without it");
            return Ok(None);
        }
    };
    if reserved.is_some() {
        return Ok(None);
    }
    let stored: Option<String> = state
        .redis
        .query(redis::cmd("GET").arg(&redis_key))
        .await
        .unwrap_or(None);
    let Some(stored) = stored else {
        // Expired between the two commands: treat as new (best effort).
        return Ok(None);
    };
    if stored == PENDING {
        return Err(ApiError::Conflict(
            "a request with this Idempotency-Key is still in progress".into(),
        ));
    }
    let stored: Value = serde_json::from_str(&stored).unwrap_or(Value::Null);
    if stored["fingerprint"].as_str() != Some(fingerprint) {
        return Err(ApiError::Conflict(
            "this Idempotency-Key was used with a different request body".into(),
        ));
    }
    let mut response = (StatusCode::CREATED, axum::Json(stored["body"].clone())).into_response();
    response.headers_mut().insert(
        "idempotent-replayed",
        "true".parse().expect("static header"),
    );
    Ok(Some(response))
}

/// Stores the answer (`Some`) or releases the key after a failure (`None`).
pub async fn finish(state: &AppState, key: &str, fingerprint: &str, body: Option<&Value>) {
    let redis_key = state.keys.idempotency(key);
    let result = match body {
        Some(body) => {
            let stored = json!({"fingerprint": fingerprint, "body": body}).to_string();
            let mut cmd = redis::cmd("SET");
            cmd.arg(&redis_key).arg(stored).arg("EX").arg(KEEP_SECONDS);
            state.redis.query::<()>(&cmd).await
        }
        None => {
            state
                .redis
                .query::<()>(redis::cmd("DEL").arg(&redis_key))
                .await
        }
    };
    if let Err(e) = result {
        log::warn!(error = e.to_string(); "idempotency record not stored");
    }
}
