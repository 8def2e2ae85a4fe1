//! Schema migrations (`migrations/V<n>__<what>.sql`), embedded in the binary by refinery.

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Advisory lock key held while migrating, so API replicas starting together take turns.
const LOCK_KEY: i64 = 0x6b75_727a; // "kurz"

/// Applies pending migrations; replicas serialise on an advisory lock.
pub async fn run(client: &mut deadpool_postgres::Client) -> Result<(), String> {
    let pg: &mut tokio_postgres::Client = client.as_mut();
    // An index build on a large table, or the wait for another replica's, may take longer than
    // `database.statement_timeout_ms`: this session runs without it, and gets it back after.
    pg.batch_execute("SET statement_timeout = 0")
        .await
        .map_err(|e| format!("migration session: {e}"))?;
    pg.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(|e| format!("migration lock: {e}"))?;
    // A later release's migrations in the table are not an error: during a rolling upgrade
    // (or a rollback) instances of the release before start on a schema a newer one migrated,
    // which keeps the old release's queries working (docs/operations.md).
    let result = embedded::migrations::runner()
        .set_abort_missing(false)
        .run_async(pg)
        .await;
    let _ = pg
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let _ = pg.batch_execute("RESET statement_timeout").await;
    let report = result.map_err(|e| format!("migration failed: {e}"))?;
    for m in report.applied_migrations() {
        log::info!(version = m.version(), name = m.name(); "migration applied");
    }
    Ok(())
}
