//! SQL as small functions over `&impl GenericClient` (a pooled client or a transaction), one file
//! per table. Statements go through `prepare_cached`, so each is parsed once per connection.

pub mod api_keys;
pub mod events;
pub mod outbox;
pub mod stats;
pub mod tls;
pub mod urls;
pub mod users;

use crate::error::ApiError;
use deadpool_postgres::GenericClient;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

/// A read-only transaction at repeatable read: the statements of one answer (a count and its
/// page, a link's totals and its days) then see one snapshot, whatever commits meanwhile.
pub async fn snapshot(
    c: &mut deadpool_postgres::Client,
) -> Result<deadpool_postgres::Transaction<'_>, tokio_postgres::Error> {
    c.build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
}

/// A list's total and one page of it, read in one [`snapshot`]: `X-Total-Count` counts the rows
/// shown, whatever commits between the two reads.
pub async fn total_and_page<T>(
    c: &mut deadpool_postgres::Client,
    total: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> Result<i64, tokio_postgres::Error>,
    page: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> Result<Vec<T>, tokio_postgres::Error>,
) -> Result<(i64, Vec<T>), tokio_postgres::Error> {
    let tx = snapshot(c).await?;
    let total = total(&tx).await?;
    let rows = page(&tx).await?;
    tx.commit().await?;
    Ok((total, rows))
}

/// Placeholder list builder for queries whose WHERE clause depends on the filters given.
pub struct Filter<'a> {
    clauses: Vec<String>,
    params: Vec<&'a (dyn ToSql + Sync)>,
}

impl<'a> Filter<'a> {
    /// Starts with fixed clauses that take no parameter (`deleted_at IS NULL`).
    pub fn new(fixed: &[&str]) -> Self {
        Self {
            clauses: fixed.iter().map(|s| s.to_string()).collect(),
            params: Vec::new(),
        }
    }

    /// Adds `<column> = $n` when `value` is set.
    pub fn eq<T: ToSql + Sync>(&mut self, column: &str, value: &'a Option<T>) {
        if let Some(v) = value {
            self.params.push(v);
            self.clauses
                .push(format!("{column} = ${}", self.params.len()));
        }
    }

    /// Adds `clause` with its `{}` replaced by the next parameter, bound to `value`.
    pub fn param(&mut self, clause: &str, value: &'a (dyn ToSql + Sync)) {
        self.params.push(value);
        self.clauses
            .push(clause.replace("{}", &format!("${}", self.params.len())));
    }

    /// Adds `<column> = '<value>'` when `value` is set. For values from a fixed list in the code
    /// that the planner must see (a partial index's predicate); never for caller input.
    pub fn eq_literal(&mut self, column: &str, value: Option<&'static str>) {
        if let Some(v) = value {
            self.clauses
                .push(format!("{column} = '{}'", v.replace('\'', "''")));
        }
    }

    /// ` WHERE a AND b`, or nothing.
    pub fn where_sql(&self) -> String {
        if self.clauses.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", self.clauses.join(" AND "))
        }
    }

    /// One page of `select` (`SELECT <columns> FROM <table>`) under this filter, in id order.
    pub async fn page(
        &self,
        c: &impl GenericClient,
        select: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        self.page_by(c, select, "id", limit, offset).await
    }

    /// One page in the order of `order_by` (SQL written in the code, never caller input).
    pub async fn page_by(
        &self,
        c: &impl GenericClient,
        select: &str,
        order_by: &str,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        let n = self.params.len() + 1;
        let sql = format!(
            "{select}{} ORDER BY {order_by} LIMIT ${n} OFFSET ${}",
            self.where_sql(),
            n + 1
        );
        let mut params: Vec<&(dyn ToSql + Sync)> = self.params.clone();
        params.push(&limit);
        params.push(&offset);
        let stmt = c.prepare_cached(&sql).await?;
        c.query(&stmt, &params).await
    }

    /// Rows of `table` under this filter.
    pub async fn count(
        &self,
        c: &impl GenericClient,
        table: &str,
    ) -> Result<i64, tokio_postgres::Error> {
        let stmt = c
            .prepare_cached(&format!("SELECT count(*) FROM {table}{}", self.where_sql()))
            .await?;
        Ok(c.query_one(&stmt, &self.params).await?.get(0))
    }
}

/// Name of the unique constraint a statement violated, if that is why it failed.
pub fn unique_violation(e: &tokio_postgres::Error) -> Option<&str> {
    let db = e.as_db_error()?;
    (db.code() == &SqlState::UNIQUE_VIOLATION).then(|| db.constraint().unwrap_or(""))
}

/// Maps a unique violation to the 409 the contract wants, anything else to the generic mapping.
pub fn conflict_or(e: tokio_postgres::Error) -> ApiError {
    match unique_violation(&e) {
        Some("users_username_key") => ApiError::Conflict("username is already taken".into()),
        Some("users_email_key") => ApiError::Conflict("email is already registered".into()),
        Some("urls_short_code_key") => ApiError::Conflict("short_code is already taken".into()),
        Some(other) => ApiError::Conflict(format!("duplicate value ({other})")),
        None => e.into(),
    }
}
