//! A deadline on every request: past `limits.request_timeout_ms` (bulk imports, imports of other
//! shorteners' exports and exports: `limits.bulk_request_timeout_ms`) the request is abandoned
//! with a 503 in our error shape. (An export's answer starts with its first page; the pages
//! after it are held to the same bound by the export itself, `routes::urls::export`.)
//!
//! Without it a stuck dependency (a PostgreSQL that accepts connections but never answers, a
//! lock wait) holds the client, the edge's upstream connection and a pool slot for as long as
//! the client cares to wait. (What it does not stop: a statement already sent goes on in
//! PostgreSQL until it ends or `database.statement_timeout_ms` cuts it, and the request that is
//! given its connection next waits for that first.)

//!
//! A 503 says "retry": it must mean nothing was done. A create that a writer has already put in
//! a statement (`crate::creates`) cannot be called back, so once that statement started the
//! request is answered with its outcome, however late (the statement is bounded by
//! `database.statement_timeout_ms`): a client retrying a create it was told had failed would
//! make the link twice. Any other write's transaction is committed through [`commit`], which
//! does the same from the moment its commit starts.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Whether a request's work may still be abandoned. The work and the deadline each try to move
/// it from `OPEN`; whichever comes first decides, so a 503 is never sent for work that goes on.
#[derive(Clone, Default)]
pub struct Commitment(Arc<AtomicU8>);

const OPEN: u8 = 0;
const COMMITTED: u8 = 1;
const ABANDONED: u8 = 2;

impl Commitment {
    /// The work is about to start for good; `false` when the request was abandoned first (then
    /// leave it undone).
    pub fn commit(&self) -> bool {
        match self
            .0
            .compare_exchange(OPEN, COMMITTED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => true,
            Err(now) => now == COMMITTED,
        }
    }

    /// The work committed to turned out not to have started (see [`reopen`]).
    fn reopen(&self) {
        let _ = self
            .0
            .compare_exchange(COMMITTED, OPEN, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The deadline passed; `false` when the work was committed first (then wait for it).
    fn abandon(&self) -> bool {
        self.0
            .compare_exchange(OPEN, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

tokio::task_local! {
    static REQUEST: Commitment;
}

/// The calling request's commitment; `None` outside a request (tests, background tasks).
pub fn commitment() -> Option<Commitment> {
    REQUEST.try_with(Commitment::clone).ok()
}

/// Commits a request's transaction: from then on the request is answered with its outcome,
/// however late. Past the deadline, a 503 after the commit would have the client import its
/// events twice, or get 404 for the link it had just deleted when it retried.
pub async fn commit(tx: deadpool_postgres::Transaction<'_>) -> Result<(), ApiError> {
    // Abandoned first is not reached in a request: its work is dropped when its 503 goes out.
    committing()?;
    tx.commit().await?;
    Ok(())
}

/// Marks the request committed before a write that is one statement, not a transaction (see
/// [`commit`]): a statement still running at the deadline may yet commit.
pub fn committing() -> Result<(), ApiError> {
    if commitment().is_some_and(|c| !c.commit()) {
        return Err(ApiError::Unavailable(
            "the request was abandoned at its deadline".into(),
        ));
    }
    Ok(())
}

const FORM: &str = "application/x-www-form-urlencoded";

/// Takes back [`committing`] when what it was for did nothing after all and other work follows
/// in its place: that work may be abandoned at the deadline again. A deadline that already
/// passed while committed is waited out regardless.
pub fn reopen() {
    if let Some(c) = commitment() {
        c.reopen();
    }
}

pub async fn enforce(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let limits = &state.config.limits;
    let budget_ms = if kurz_common::http::is_bulk_route(req.uri().path()) {
        limits.bulk_request_timeout_ms
    } else {
        limits.request_timeout_ms
    };
    // A browser shows JSON as text: a page's 503 is a page (a log-in waiting for a password
    // hash in a flood of them is the likely one). So is a form post to a short code's path: the
    // protected link's password form. (Not a form post elsewhere: `curl -d` sends JSON to the
    // API's routes as a form, and its clients read the JSON.)
    let form = req.method() == axum::http::Method::POST
        && req.uri().path().strip_prefix('/').is_some_and(|code| {
            kurz_common::shortcode::is_code_shaped(code)
                && !kurz_common::shortcode::is_reserved(code)
        })
        && req
            .headers()
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|t| t.get(..FORM.len()))
            .is_some_and(|t| t.eq_ignore_ascii_case(FORM));
    let page = (form || crate::web::is_page(req.uri().path())).then(|| req.headers().clone());
    let commitment = Commitment::default();
    let run = REQUEST.scope(commitment.clone(), next.run(req));
    tokio::pin!(run);
    match tokio::time::timeout(Duration::from_millis(budget_ms), &mut run).await {
        Ok(response) => response,
        Err(_) if !commitment.abandon() => run.await,
        Err(_) => {
            let e = ApiError::Unavailable(format!(
                "the request did not complete within {budget_ms} ms; retry shortly"
            ));
            match page {
                Some(headers) => crate::web::early_problem(&headers, e),
                None => e.into_response(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use kurz_common::http::is_bulk_route as is_bulk;

    #[test]
    fn imports_and_exports_get_the_bulk_budget() {
        for path in [
            "/urls/bulk",
            "/users/bulk",
            "/events/bulk",
            "/urls/import",
            "/urls/export",
        ] {
            assert!(is_bulk(path), "{path}");
        }
        for path in ["/urls", "/urls/1", "/urls/import/x", "/events"] {
            assert!(!is_bulk(path), "{path}");
        }
    }
}
