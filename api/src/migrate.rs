//! Schema migrations (`migrations/V<n>__<what>.sql`), embedded in the binary by refinery.

use std::time::Duration;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Advisory lock key held while migrating, so API replicas starting together take turns.
const LOCK_KEY: i64 = 0x6b75_727a; // "kurz"

/// How long a migration waits for its table's lock before it gives up and tries again later. A
/// DDL statement waiting for a lock (behind a backup's or a bulk import's transaction) makes
/// every later query of that table queue behind it: the table would stand still for as long as
/// the other transaction runs. Giving up after a second bounds that stall.
const LOCK_WAIT: &str = "1s";
/// Tries before start-up fails: about four minutes (a second's wait and a second's pause
/// each) of a table held by someone else.
const LOCK_TRIES: u32 = 120;

/// Applies pending migrations; replicas serialise on an advisory lock.
pub async fn run(client: &mut deadpool_postgres::Client) -> Result<(), String> {
    run_to(client, refinery::Target::Latest).await
}

/// Applies migrations up to `target` (tests build older schemas with it).
pub async fn run_to(
    client: &mut deadpool_postgres::Client,
    target: refinery::Target,
) -> Result<(), String> {
    run_trying(client, target, LOCK_TRIES).await
}

/// [`run_to`], giving up after `tries` waits for a held table (tests see the end of the
/// patience without four minutes of it).
pub async fn run_trying(
    client: &mut deadpool_postgres::Client,
    target: refinery::Target,
    tries: u32,
) -> Result<(), String> {
    let pg: &mut tokio_postgres::Client = client.as_mut();
    // An index build on a large table, or the wait for another replica's, may take longer than
    // `database.statement_timeout_ms`: this session runs without it, and gets it back after.
    // Nor does the wait for the advisory lock end at a `lock_timeout` the role or database sets:
    // the replica would fail to start while another migrates.
    pg.batch_execute("SET statement_timeout = 0; SET lock_timeout = 0")
        .await
        .map_err(|e| format!("migration session: {e}"))?;
    pg.execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await
        .map_err(|e| format!("migration lock: {e}"))?;
    let result = migrate_holding_the_lock(pg, target, tries).await;
    let _ = pg
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await;
    let _ = pg
        .batch_execute("RESET statement_timeout; RESET lock_timeout")
        .await;
    result
}

async fn migrate_holding_the_lock(
    pg: &mut tokio_postgres::Client,
    target: refinery::Target,
    patience: u32,
) -> Result<(), String> {
    none_skipped(pg).await?;
    // After the advisory lock: waiting for another replica's migrations is no table stall.
    pg.batch_execute(&format!("SET lock_timeout = '{LOCK_WAIT}'"))
        .await
        .map_err(|e| format!("migration session: {e}"))?;
    let mut tries = 0;
    let report = loop {
        tries += 1;
        // A later release's migrations in the table are not an error: during a rolling upgrade
        // (or a rollback) instances of the release before start on a schema a newer one
        // migrated, which keeps the old release's queries working (docs/operations.md).
        let result = embedded::migrations::runner()
            .set_abort_missing(false)
            .set_target(target)
            .run_async(pg)
            .await;
        match result {
            Err(e) if lock_not_available(&e) && tries < patience => {
                log::warn!(attempt = tries, error = e.to_string(); "a migration's table is held by another transaction; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) if lock_not_available(&e) => {
                return Err(format!(
                    "migration failed: its table stayed locked by another transaction through \
                     {patience} tries of {LOCK_WAIT} (see pg_stat_activity): {e}"
                ))
            }
            other => break other.map_err(|e| format!("migration failed: {e}"))?,
        }
    };
    for m in report.applied_migrations() {
        log::info!(version = m.version(), name = m.name(); "migration applied");
    }
    Ok(())
}

/// Refuses a shipped migration older than the newest applied one that never ran (a fix merged
/// after a later migration was applied): refinery, told to accept a later release's rows
/// (above), would skip it with a log line and leave the schema without it.
async fn none_skipped(pg: &tokio_postgres::Client) -> Result<(), String> {
    let history = pg
        .query_one(
            "SELECT to_regclass('refinery_schema_history') IS NOT NULL",
            &[],
        )
        .await
        .map_err(|e| format!("migration history: {e}"))?;
    if !history.get::<_, bool>(0) {
        return Ok(());
    }
    let applied: Vec<i32> = pg
        .query("SELECT version FROM refinery_schema_history", &[])
        .await
        .map_err(|e| format!("migration history: {e}"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let newest = applied.iter().copied().max().unwrap_or(i32::MIN);
    let runner = embedded::migrations::runner();
    // What refinery itself records for a migration it applies, for the operator to add after
    // running the file by hand: with the row, the next start goes on.
    let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let skipped: Vec<String> = runner
        .get_migrations()
        .iter()
        .filter(|m| m.version() < newest && !applied.contains(&m.version()))
        .map(|m| {
            format!(
                "V{v}__{name} (run its file, then in the same transaction: INSERT INTO \
                 refinery_schema_history (version, name, applied_on, checksum) VALUES \
                 ({v}, '{name}', '{at}', '{sum}'))",
                v = m.version(),
                name = m.name(),
                sum = m.checksum(),
            )
        })
        .collect();
    if skipped.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "migration failed: not applied, though the database already has V{newest}: {}",
            skipped.join("; ")
        ))
    }
}

/// Whether a migration failed waiting for a lock (`lock_timeout`).
fn lock_not_available(e: &refinery::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(pg) = s.downcast_ref::<tokio_postgres::Error>() {
            return pg.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE);
        }
        source = s.source();
    }
    false
}
