//! Automatic bootstrap with bad settings, against a real PostgreSQL 15 `initdb` and the
//! in-memory store: each gives a clear error and leaves no cluster record and no half-made
//! database behind. (Bootstraps that succeed, and winners killed mid-way, run as real agent
//! processes in drills/tests/bootstrap.rs.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::pg_settings;
use pgdaemon_agent::config::AgentConfig;
use pgdaemon_agent::postgres::LocalPostgres;
use pgdaemon_core::agent::{AgentIdentity, AgentRuntime, BootstrapPolicy};
use pgdaemon_core::pg::{DataDirState, PgControl};
use pgdaemon_core::{LeaseName, MemoryStore, Store, SystemClock};

use pgdaemon_testkit::postgres::{postgres_available, PgCluster};

fn identity(member: &str) -> AgentIdentity {
    AgentIdentity {
        cluster: "boot".into(),
        member: member.into(),
        pg_host: "127.0.0.1".into(),
        pg_port: 5432,
        api_url: "http://127.0.0.1:1".into(),
        instance_id: None,
        availability_zone: None,
        tags: Default::default(),
        agent_version: "test".into(),
    }
}

#[tokio::test]
async fn an_unknown_locale_fails_clearly_and_leaves_nothing() {
    if !postgres_available() {
        eprintln!("skipped: PostgreSQL 15 is not installed");
        return;
    }
    let mut pg = PgCluster::new().unwrap();
    let node = pg.add_empty("n1").unwrap();
    let mut settings = pg_settings(&pg, &node);
    settings.bootstrap.locale = "xx_XX.UTF-8".into();
    let local = LocalPostgres::new(settings);
    let store = std::sync::Arc::new(MemoryStore::new());
    let policy = BootstrapPolicy { enabled: true, lock: Duration::from_secs(20) };
    let mut rt =
        AgentRuntime::new(store.clone(), local.clone(), SystemClock::new(), identity("n1"), pgdaemon_testkit::short_timings())
            .with_bootstrap(policy);

    let report = rt.tick().await;
    let init = report.outcomes.iter().find(|o| o.action.name() == "initialize").expect("an initialize action");
    let error = init.error.clone().expect("initialisation must fail");
    assert!(error.contains("invalid locale name") && error.contains("xx_XX.UTF-8"), "{error}");
    assert_eq!(store.read_cluster("boot").await.unwrap(), None, "no cluster record");
    let lock = store.read_lease("boot", LeaseName::Initialize).await.unwrap().unwrap();
    assert!(lock.released, "the lock is handed back: {lock:?}");
    let probe = local.probe().await;
    assert!(!probe.running, "{probe:?}");
    assert!(probe.data == DataDirState::Empty || probe.bootstrap_leftover, "a half-made database is marked: {probe:?}");

    // The next loop does not run initdb again at once.
    let report = rt.tick().await;
    let again = report.outcomes.iter().find(|o| o.action.name() == "initialize").and_then(|o| o.error.clone()).unwrap();
    assert!(again.contains("trying again in"), "{again}");
}

#[tokio::test]
async fn an_unreadable_replication_secret_stops_the_agent_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("replication-password");
    std::fs::write(&secret, "s3cret\n").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let data = dir.path().join("data");
    let cfg = AgentConfig::parse(
        &format!(
            "cluster = \"boot\"\n[node]\nname = \"n1\"\nlisten = \"127.0.0.1:0\"\npg_host = \"127.0.0.1\"\nimds = false\n\
             [postgres]\nbin_dir = \"/usr/lib/postgresql/15/bin\"\ndata_dir = \"{}\"\npassword_file = \"{}\"\n\
             [store]\nbackend = \"memory\"\n[bootstrap]\nenabled = true\npeer_networks = [\"127.0.0.0/8\"]\n",
            data.display(),
            secret.display()
        ),
        &[],
    )
    .unwrap();
    let err = format!("{:#}", pgdaemon_agent::run::start(cfg).await.unwrap_err());
    assert!(err.contains("replication password") && err.contains("replication-password"), "{err}");
    assert!(!err.contains("s3cret"), "{err}");
    assert!(!data.exists(), "nothing was initialised");
}
