//! Several API instances starting together on an empty database: each runs the migrations under
//! one advisory lock, so they take turns, all succeed, and every migration is applied once.

use crate::helpers::{admin_db_url, db_url};
use std::process::{Command, Stdio};

/// A new empty database: the admin connection (to drop it after), its name and its URL.
async fn empty_database() -> (tokio_postgres::Client, String, String) {
    let name = format!("kurz_test_{:016x}", rand::random::<u64>());
    let (admin, conn) = tokio_postgres::connect(&admin_db_url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    let url = db_url(&name);
    (admin, name, url)
}

/// `kurz-api migrate` against `url`, with nothing of the test's environment; its errors piped.
fn migrate(url: &str) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kurz-api"));
    cmd.arg("migrate")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", url)
        .env("LOG_LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

#[tokio::test]
async fn instances_migrating_the_same_database_at_once_take_turns() {
    let (admin, name, url) = empty_database().await;
    let migrators: Vec<_> = (0..4)
        .map(|_| migrate(&url).spawn().expect("kurz-api starts"))
        .collect();
    let outcomes: Vec<_> = migrators
        .into_iter()
        .map(|m| m.wait_with_output().unwrap())
        .collect();
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let applied: Vec<(i32, i64)> = db
        .query(
            "SELECT version, count(*) FROM refinery_schema_history GROUP BY 1 ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let shipped = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
        .unwrap()
        .count();
    drop(db);
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    for out in &outcomes {
        assert!(
            out.status.success(),
            "a concurrent migrate failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        applied.len(),
        shipped,
        "every migration applied: {applied:?}"
    );
    assert!(
        applied.iter().all(|(_, n)| *n == 1),
        "each applied once: {applied:?}"
    );
}

/// An instance of the release before starts on a schema the next release migrated (a rolling
/// upgrade, or a rollback): a migration it does not know, applied already, is no error.
#[tokio::test]
async fn an_older_release_starts_on_a_schema_a_newer_one_migrated() {
    let (admin, name, url) = empty_database().await;
    let first = migrate(&url).output().expect("kurz-api starts");
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    // What the next release's migrate leaves behind.
    db.batch_execute(
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum) \
         SELECT 9999, 'a_later_release', applied_on, '0' FROM refinery_schema_history \
         ORDER BY version DESC LIMIT 1",
    )
    .await
    .unwrap();
    let again = migrate(&url).output().expect("kurz-api starts");
    drop(db);
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        again.status.success(),
        "the older release refused the newer schema: {}",
        String::from_utf8_lossy(&again.stderr)
    );
}
