//! How the API talks to PostgreSQL: TLS as `database.url` asks for it (against a private server
//! with a certificate signed by a throwaway CA, `PrivatePg::start_with_tls`; which hosts get
//! TLS without an `sslmode` is unit-tested in `db::tls`), and a server-side statement timeout.

use crate::helpers::spawn_app_with;
use kurz_api::config::ApiConfig;
use kurz_api::startup::build_pool;
use kurz_common::testing::PrivatePg;

/// Connects through the API's pool and says whether the session is encrypted.
async fn encrypted(url: &str) -> Result<bool, String> {
    let mut config = ApiConfig::default();
    config.database.url = url.to_owned();
    let pool = build_pool(&config)?;
    let client = pool.get().await.map_err(|e| format!("{e:?}"))?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(row.get(0))
}

#[tokio::test]
async fn the_pool_speaks_tls_as_the_url_asks_and_verifies_the_server_when_told_to() {
    let (pg, ca) = PrivatePg::start_with_tls();
    let base = format!("postgres://postgres@127.0.0.1:{}/postgres", pg.port);
    let ca = ca.display().to_string();

    assert!(!encrypted(&format!("{base}?sslmode=disable")).await.unwrap());
    assert!(encrypted(&format!("{base}?sslmode=require")).await.unwrap());
    assert!(
        encrypted(&format!("{base}?sslmode=prefer")).await.unwrap(),
        "prefer uses TLS when offered"
    );
    assert!(
        !encrypted(&base).await.unwrap(),
        "no sslmode on loopback: no TLS, though the server offers it"
    );
    assert!(
        encrypted(&format!("{base}?sslmode=verify-full&sslrootcert={ca}"))
            .await
            .unwrap()
    );
    let by_name = format!("postgres://postgres@localhost:{}/postgres", pg.port);
    assert!(
        encrypted(&format!("{by_name}?sslmode=verify-full&sslrootcert={ca}"))
            .await
            .unwrap()
    );
    assert!(
        encrypted(&format!("{base}?sslmode=verify-ca&sslrootcert={ca}"))
            .await
            .unwrap()
    );

    // A CA that did not sign the server's certificate: refused, the session never opens.
    let (other, other_ca) = PrivatePg::start_with_tls();
    let err = encrypted(&format!(
        "{base}?sslmode=verify-full&sslrootcert={}",
        other_ca.display()
    ))
    .await
    .err()
    .unwrap_or_default();
    drop(other);
    assert!(
        err.to_lowercase().contains("certificate"),
        "an unknown CA must be refused by certificate: {err}"
    );

    // The start-up check reads the URL as the pool does: the verify modes pass it.
    let mut config = ApiConfig::default();
    config.database.url = format!("{by_name}?sslmode=verify-full&sslrootcert={ca}");
    config.validate().expect("a verify-full URL is valid");
    config.database.url = format!("{by_name}?sslmode=verify-full");
    let err = config.validate().unwrap_err();
    assert!(
        err.contains("database.url") && err.contains("sslrootcert"),
        "{err}"
    );

    // The verify modes without a CA file: a start-up error naming the key.
    let err = build_pool(&{
        let mut c = ApiConfig::default();
        c.database.url = format!("{base}?sslmode=verify-full");
        c
    })
    .err()
    .unwrap();
    assert!(
        err.contains("database.url") && err.contains("sslrootcert"),
        "{err}"
    );
}

#[tokio::test]
async fn postgres_cancels_a_statement_past_the_timeout() {
    let app = spawn_app_with(|c| c.database.statement_timeout_ms = 300).await;
    let client = app.state.client().await.unwrap();
    let err = client
        .query_one("SELECT pg_sleep(5)", &[])
        .await
        .expect_err("cancelled");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED),
        "{err}"
    );
    let shown: String = client
        .query_one("SHOW statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(shown, "300ms");
}
