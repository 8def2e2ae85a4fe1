//! The binary itself: configuration checks fail fast and name the bad key.

use std::process::Command;

fn kurz_api() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kurz-api"));
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    for var in [
        "DATABASE_URL",
        "REDIS_URL",
        "EVENT_LOG_SAMPLE_RATE",
        "DB_MAX_CONNECTIONS",
        "KURZ_API_CONFIG",
        "BASE_URL",
        "LOG_LEVEL",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

#[test]
fn check_accepts_the_shipped_config() {
    let out = kurz_api()
        .args(["check", "--config", "conf/api.yaml"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bad_environment_value_stops_start_up_naming_it() {
    let out = kurz_api()
        .arg("check")
        .env("EVENT_LOG_SAMPLE_RATE", "5")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("EVENT_LOG_SAMPLE_RATE"));
    let out = kurz_api()
        .arg("serve")
        .env("DB_MAX_CONNECTIONS", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("DB_MAX_CONNECTIONS"));
}

#[test]
fn a_typo_in_the_config_file_is_named() {
    let dir = std::env::temp_dir().join(format!("kurz-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("api.yaml");
    std::fs::write(&file, "lisen: 0.0.0.0:8000\n").unwrap();
    let out = kurz_api()
        .arg("check")
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lisen"));
}
