//! Several API instances starting together on an empty database: each runs the migrations under
//! one advisory lock, so they take turns, all succeed, and every migration is applied once.

use crate::helpers::{admin_db_url, db_url, lock_waits};
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

/// One pooled connection to `url`, as the API migrates with.
async fn pooled(url: &str) -> deadpool_postgres::Client {
    let cfg = deadpool_postgres::Config {
        url: Some(url.to_owned()),
        ..Default::default()
    };
    cfg.create_pool(
        Some(deadpool_postgres::Runtime::Tokio1),
        tokio_postgres::NoTls,
    )
    .unwrap()
    .get()
    .await
    .unwrap()
}

/// The database at `url` migrated to V21, and a transaction holding `urls` (which V22 alters)
/// until it ends: the holder's `COMMIT` releases it.
async fn at_v21_with_urls_held(url: &str) -> (deadpool_postgres::Client, tokio_postgres::Client) {
    let mut client = pooled(url).await;
    kurz_api::migrate::run_to(&mut client, refinery::Target::Version(21))
        .await
        .unwrap();
    let holder = connect(url).await;
    holder
        .batch_execute("BEGIN; SELECT 1 FROM urls LIMIT 1")
        .await
        .unwrap();
    (client, holder)
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

/// A migration whose table another transaction holds (a backup, a long import) waits for it a
/// second at a time: the table's readers queue behind the waiting migration for no longer than
/// that, instead of for as long as the other transaction runs. The migration is applied once
/// the table is free.
#[tokio::test]
async fn a_migration_waiting_for_a_held_table_does_not_stall_its_readers() {
    let (admin, name, url) = empty_database().await;
    let (mut client, holder) = at_v21_with_urls_held(&url).await;
    let migrating = tokio::spawn(async move { kurz_api::migrate::run(&mut client).await });
    let reader = connect(&url).await;
    reader
        .batch_execute("SET statement_timeout = '10s'")
        .await
        .unwrap();
    for _ in 0..6 {
        if let Err(e) = reader.query("SELECT id FROM urls WHERE id = 1", &[]).await {
            admin
                .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
                .await
                .unwrap();
            panic!("a reader of urls stood behind the waiting migration: {e}");
        }
        // Spread over several of the migration's tries (a wait, not a bound asserted).
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    assert!(!migrating.is_finished(), "migrated through a held table");
    holder.batch_execute("COMMIT").await.unwrap();
    let migrated = migrating.await.unwrap();
    let has_version = reader
        .query_one(
            "SELECT count(*) FROM information_schema.columns \
             WHERE table_name = 'urls' AND column_name = 'version'",
            &[],
        )
        .await
        .unwrap()
        .get::<_, i64>(0);
    drop((holder, reader));
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    migrated.unwrap();
    assert_eq!(has_version, 1);
}

/// A migration whose table stays held past its tries stops the start naming the cause, and
/// leaves nothing half done: its transaction is rolled back whole, and the next start runs it
/// from its beginning.
#[tokio::test]
async fn a_migration_that_gives_up_on_a_held_table_leaves_nothing_half_done() {
    let (admin, name, url) = empty_database().await;
    let (mut client, holder) = at_v21_with_urls_held(&url).await;
    let gave_up =
        kurz_api::migrate::run_trying(&mut client, refinery::Target::Version(22), 2).await;
    let reader = connect(&url).await;
    let state = |sql: &'static str| {
        let reader = &reader;
        async move { reader.query_one(sql, &[]).await.unwrap().get::<_, i64>(0) }
    };
    let columns = "SELECT count(*) FROM information_schema.columns \
                   WHERE table_name = 'urls' AND column_name = 'version'";
    let newest = "SELECT max(version)::bigint FROM refinery_schema_history";
    let (half_column, half_newest) = (state(columns).await, state(newest).await);
    holder.batch_execute("COMMIT").await.unwrap();
    let again = kurz_api::migrate::run_to(&mut client, refinery::Target::Version(22)).await;
    let (column, newest) = (state(columns).await, state(newest).await);
    drop((holder, reader, client));
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    let why = gave_up.expect_err("migrated through a held table");
    assert!(
        why.contains("stayed locked by another transaction through 2 tries"),
        "{why}"
    );
    assert_eq!((half_column, half_newest), (0, 21), "nothing of V22 stayed");
    again.unwrap();
    assert_eq!((column, newest), (1, 22));
}

/// A replica waiting for another's migrations waits for as long as they take, whatever
/// `lock_timeout` the database or the role sets for everyone else.
#[tokio::test]
async fn the_wait_for_another_replicas_migrations_outlasts_a_lock_timeout() {
    let (admin, name, url) = empty_database().await;
    admin
        .batch_execute(&format!("ALTER DATABASE {name} SET lock_timeout = '100ms'"))
        .await
        .unwrap();
    // Another replica migrating: it holds the migrations' advisory lock.
    let other = connect(&url).await;
    other
        .batch_execute("SELECT pg_advisory_lock(1802859130)") // 0x6b75727a, "kurz"
        .await
        .unwrap();
    let mut client = pooled(&url).await;
    let migrating = tokio::spawn(async move { kurz_api::migrate::run(&mut client).await });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let waiting: i64 = other
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
                 AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 1 || migrating.is_finished() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the migration never waited"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // Ten lock timeouts (a wait, not a bound asserted: a slower machine only waits longer).
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let gave_up = migrating.is_finished();
    other
        .batch_execute("SELECT pg_advisory_unlock_all()")
        .await
        .unwrap();
    let migrated = migrating.await.unwrap();
    drop(other);
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    assert!(!gave_up, "the replica gave up waiting: {migrated:?}");
    migrated.unwrap();
}

/// A shipped migration older than the newest applied one that never ran (a fix merged after a
/// later migration went out) stops start-up naming it, rather than being skipped; the history
/// row the message gives lets the next start go on once the file was run by hand.
#[tokio::test]
async fn a_migration_left_behind_a_later_one_stops_start_up_naming_it() {
    let (admin, name, url) = empty_database().await;
    let first = migrate(&url).output().expect("kurz-api starts");
    let db = connect(&url).await;
    db.batch_execute("DELETE FROM refinery_schema_history WHERE version = 21")
        .await
        .unwrap();
    let again = migrate(&url).output().expect("kurz-api starts");
    let stderr = String::from_utf8_lossy(&again.stderr).into_owned();
    // The file's changes are in place here (only its row went): the row the message gives.
    let insert = stderr
        .find("INSERT INTO")
        .and_then(|at| stderr[at..].find("))").map(|end| &stderr[at..at + end + 1]))
        .map(str::to_owned);
    let recorded = match &insert {
        Some(sql) => db.batch_execute(sql).await.map_err(|e| e.to_string()),
        None => Err("no INSERT in the message".into()),
    };
    let third = migrate(&url).output().expect("kurz-api starts");
    drop(db);
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    assert!(first.status.success());
    assert!(!again.status.success(), "V21 was skipped");
    assert!(stderr.contains("V21__click_columns"), "{stderr}");
    recorded.unwrap_or_else(|e| panic!("{e}: {stderr}"));
    assert!(
        third.status.success(),
        "the recorded row was refused: {}",
        String::from_utf8_lossy(&third.stderr)
    );
}

/// A migration Job stopped while it waits for another replica's migrations (the advisory
/// lock) ends at once and says the migrations did not finish: as PID 1 in a container, an
/// uncaught SIGTERM did nothing and the pod waited out its grace period.
#[tokio::test]
async fn a_migrate_stopped_while_it_waits_says_so_and_exits() {
    let (admin, name, url) = empty_database().await;
    let holder = connect(&url).await;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&0x6b75_727a_i64])
        .await
        .unwrap();
    let waiting = || lock_waits(&holder);
    let migrator = migrate(&url).spawn().expect("kurz-api starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting = waiting().await;
        if waiting > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "migrate never waited");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let sent = Command::new("kill")
        .args(["-TERM", &migrator.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    // Waited for with a deadline: a process that swallowed the signal would never exit.
    let mut migrator = migrator;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while migrator.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = migrator.kill();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let out = migrator.wait_with_output().unwrap();
    // Its statement is cancelled on the server too: a backend left waiting (or holding a
    // table's lock mid-migration) until it noticed its client gone would go on blocking.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut left_waiting = waiting().await;
    while left_waiting > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        left_waiting = waiting().await;
    }
    drop(holder);
    admin
        .batch_execute(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .await
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "an exit, not a kill: {}",
        out.status
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("before the migrations finished"),
        "{stderr}"
    );
    assert_eq!(
        left_waiting, 0,
        "the stopped migration still waits on the server"
    );
}
