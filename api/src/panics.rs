//! A panic in a handler is a bug; without this layer hyper drops the connection and the client
//! sees a reset. With it the client gets the contract's JSON 500 (with its request id) and the
//! request logger records the panic's message as the cause.

use crate::error::ApiError;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::FutureExt;
use std::panic::AssertUnwindSafe;

pub async fn catch(req: Request, next: Next) -> Response {
    // The request's state is dropped with the panicking future; nothing of it is reused, so
    // unwind safety holds.
    match AssertUnwindSafe(next.run(req)).catch_unwind().await {
        Ok(response) => response,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic without a message".to_owned());
            ApiError::Internal(format!("handler panicked: {what}")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::routing::get;
    use axum::Router;

    async fn boom() -> &'static str {
        panic!("boom")
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_json_500_and_the_server_goes_on() {
        let app = Router::new()
            .route("/boom", get(boom))
            .route("/ok", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn(super::catch));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = reqwest::Client::new();
        let res = client
            .get(format!("http://{addr}/boom"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 500);
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"], "internal_error");
        assert!(!body["message"].as_str().unwrap().contains("boom"));
        let res = client
            .get(format!("http://{addr}/ok"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
    }
}
