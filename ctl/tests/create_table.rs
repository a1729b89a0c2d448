//! `pgdctl create-table` end to end against moto server: creates, then finds it existing.

use std::process::Command;

use pgdaemon_testkit::engines::MotoServer;

fn pgdctl(moto: &MotoServer, table: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_pgdctl"))
        .args(["create-table", "--table", table, "--endpoint-url", &moto.endpoint(), "--region", MotoServer::REGION])
        // Credentials for the child only (moto accepts any); no profile or instance metadata lookups.
        .env("AWS_ACCESS_KEY_ID", MotoServer::ACCESS_KEY_ID)
        .env("AWS_SECRET_ACCESS_KEY", MotoServer::SECRET_ACCESS_KEY)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env_remove("AWS_PROFILE")
        .output()
        .expect("run pgdctl")
}

#[test]
fn create_table_is_idempotent() {
    let moto = MotoServer::start().unwrap_or_else(|e| panic!("cannot start moto server: {e:#}"));
    let first = pgdctl(&moto, "pgd-ctl-test");
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    assert!(String::from_utf8_lossy(&first.stdout).contains("created table pgd-ctl-test"));
    let second = pgdctl(&moto, "pgd-ctl-test");
    assert!(second.status.success(), "{}", String::from_utf8_lossy(&second.stderr));
    assert!(String::from_utf8_lossy(&second.stdout).contains("already exists"), "{}", String::from_utf8_lossy(&second.stdout));
}

#[test]
fn unreachable_endpoint_fails_quickly_with_a_clear_error() {
    let port = pgdaemon_testkit::ports::free_port(); // nothing listens there
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_pgdctl"))
        .args(["create-table", "--endpoint-url", &format!("http://127.0.0.1:{port}"), "--region", "us-east-1"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("run pgdctl");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("store unavailable"), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());
}
