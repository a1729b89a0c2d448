//! Monitor-only mode against real Postgres servers it does not manage: the `pgdaemon-agent
//! monitor` binary with its event log in a real etcd and a webhook to a local server. Stopping
//! and starting the watched primary is recorded as one `member_down` and one `member_up`; the
//! replica is recognised as one; the monitor writes nothing but events.

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::Router;
use pgdaemon_agent::monitor::{probe, tls_connector, ProbeResult};
use pgdaemon_core::events::{Event, EventKind};
use pgdaemon_core::{Role, Store};
use pgdaemon_dcs::EtcdStore;
use pgdaemon_testkit::engines::EtcdServer;
use pgdaemon_testkit::postgres::{postgres_available, PgCluster};

const PREFIX: &str = "/pgdaemon-monitor-test";

/// The monitor process, killed (by its PID) when the test ends however it ends.
struct MonitorProcess(Child);

impl Drop for MonitorProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn dsn(port: u16) -> String {
    format!("host=127.0.0.1 port={port} user=postgres dbname=postgres")
}

/// Polls the event log until `until` holds, at most `within`.
async fn wait_events(store: &EtcdStore, cluster: &str, within: Duration, until: impl Fn(&[Event]) -> bool) -> Vec<Event> {
    let deadline = Instant::now() + within;
    loop {
        let events = store.read_events(cluster, 0).await.unwrap_or_default();
        if until(&events) || Instant::now() > deadline {
            return events;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn of(events: &[Event], member: &str) -> Vec<EventKind> {
    events.iter().filter(|e| e.member.as_deref() == Some(member)).map(|e| e.kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_records_down_and_up_of_an_unmanaged_postgres() {
    if !postgres_available() {
        eprintln!("skipped: PostgreSQL binaries not found (set PGDAEMON_PG_BIN)");
        return;
    }
    let (pg, etcd) = tokio::task::spawn_blocking(|| {
        let mut pg = PgCluster::new().unwrap();
        pg.init_primary("db").unwrap();
        pg.add_replica("db-replica", "db").unwrap();
        (pg, EtcdServer::shared())
    })
    .await
    .unwrap();
    let (db, replica) = (pg.node("db").port, pg.node("db-replica").port);

    // The probe itself, directly: roles and a refused connection.
    let config = |port: u16| dsn(port).parse::<tokio_postgres::Config>().unwrap();
    let tls = tls_connector(None).unwrap();
    assert_eq!(probe(&config(db), tls.clone(), Duration::from_secs(5)).await, ProbeResult::Up(Role::Primary));
    assert_eq!(probe(&config(replica), tls.clone(), Duration::from_secs(5)).await, ProbeResult::Up(Role::Replica));
    let closed = pgdaemon_testkit::ports::free_port();
    assert!(matches!(probe(&config(closed), tls, Duration::from_secs(5)).await, ProbeResult::Down(_)));

    // A webhook receiver on loopback gets the same events.
    let hooked: Arc<Mutex<Vec<Event>>> = Arc::default();
    let app = Router::new()
        .route(
            "/h",
            post(|State(h): State<Arc<Mutex<Vec<Event>>>>, body: String| async move {
                h.lock().unwrap().push(serde_json::from_str(&body).unwrap())
            }),
        )
        .with_state(hooked.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook_url = format!("http://{}/h", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let cluster = format!("monitor-{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("monitor.toml");
    std::fs::write(
        &file,
        format!(
            "cluster = \"{cluster}\"\n\
             [store]\nbackend = \"etcd\"\nendpoints = [\"{}\"]\nprefix = \"{PREFIX}\"\n\
             [monitor]\ninterval_ms = 300\nconnect_timeout_ms = 2000\n\
             [[monitor.targets]]\nname = \"db\"\ndsn = \"{}\"\n\
             [[monitor.targets]]\nname = \"db-replica\"\ndsn = \"{}\"\n\
             [events]\nwebhook_url = \"{hook_url}\"\n",
            etcd.endpoint(),
            dsn(db),
            dsn(replica)
        ),
    )
    .unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_pgdaemon-agent"))
        .args(["monitor", "-c"])
        .arg(&file)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the monitor");
    let _monitor = MonitorProcess(child);
    let store = EtcdStore::connect(&[etcd.endpoint()], PREFIX).await.unwrap();

    let events =
        wait_events(&store, &cluster, Duration::from_secs(30), |e| of(e, "db").len() == 1 && of(e, "db-replica").len() == 1)
            .await;
    assert_eq!(of(&events, "db"), [EventKind::MemberUp], "{events:#?}");
    assert_eq!(of(&events, "db-replica"), [EventKind::MemberUp], "{events:#?}");
    let first_replica = events.iter().find(|e| e.member.as_deref() == Some("db-replica")).unwrap();
    assert!(first_replica.detail.contains("replica"), "{first_replica:?}");
    assert!(events.iter().all(|e| e.source == "monitor" && e.cluster == cluster));

    // Stop the watched primary: one member_down.
    let stopped_at = Instant::now();
    // (Blocking for the few seconds of pg_ctl is fine: the monitor is another process.)
    pg.stop("db").unwrap();
    let events = wait_events(&store, &cluster, Duration::from_secs(30), |e| of(e, "db").len() >= 2).await;
    assert_eq!(of(&events, "db"), [EventKind::MemberUp, EventKind::MemberDown], "{events:#?}");
    let down_after = stopped_at.elapsed();

    // Start it again: one member_up.
    pg.start("db").unwrap();
    let events = wait_events(&store, &cluster, Duration::from_secs(30), |e| of(e, "db").len() >= 3).await;
    assert_eq!(of(&events, "db"), [EventKind::MemberUp, EventKind::MemberDown, EventKind::MemberUp], "{events:#?}");
    // A few more rounds with nothing changing add nothing.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let events = store.read_events(&cluster, 0).await.unwrap();
    assert_eq!(of(&events, "db"), [EventKind::MemberUp, EventKind::MemberDown, EventKind::MemberUp], "{events:#?}");
    assert_eq!(of(&events, "db-replica").len(), 1, "{events:#?}");
    eprintln!("monitor: member_down logged {down_after:?} after the stop; {} events", events.len());

    // The webhook got the same events (each once), and nothing but events was written.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hooked.lock().unwrap().len() < events.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut hook_ids: Vec<String> = hooked.lock().unwrap().iter().map(|e| e.id.clone()).collect();
    let mut log_ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    hook_ids.sort();
    log_ids.sort();
    assert_eq!(hook_ids, log_ids);
    let view = store.read_view(&cluster).await.unwrap();
    assert!(view.cluster.is_none() && view.leader.is_none() && view.members.is_empty(), "the monitor wrote state: {view:?}");
    assert!(store.read_history(&cluster).await.unwrap().is_empty());
    drop(pg);
}

/// A server that requires TLS (as RDS with `rds.force_ssl`): probed with `sslmode=require`, it is
/// up when its certificate chains to `ca_file`, and down (certificate refused) against the
/// system's roots, so the probe really verifies what it talks to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_verified_against_the_ca_file() {
    if !postgres_available() {
        eprintln!("skipped: PostgreSQL binaries not found (set PGDAEMON_PG_BIN)");
        return;
    }
    let (pg, cert) = tokio::task::spawn_blocking(|| {
        let mut pg = PgCluster::new().unwrap();
        let node = pg.init_primary("tls").unwrap();
        let (cert, key) = (node.data_dir.join("server.crt"), node.data_dir.join("server.key"));
        // A test CA, and a server certificate for 127.0.0.1 signed by it.
        let dir = pg.dir().to_path_buf();
        let (ca, ca_key, csr, ext) = (dir.join("ca.crt"), dir.join("ca.key"), dir.join("server.csr"), dir.join("server.ext"));
        std::fs::write(&ext, "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n").unwrap();
        let openssl = |args: Vec<&std::ffi::OsStr>| {
            let ok = Command::new("openssl").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().unwrap();
            assert!(ok.success(), "openssl failed");
        };
        let s = |t: &'static str| std::ffi::OsStr::new(t);
        openssl(vec![
            s("req"),
            s("-x509"),
            s("-newkey"),
            s("rsa:2048"),
            s("-nodes"),
            s("-days"),
            s("1"),
            s("-subj"),
            s("/CN=pgdaemon-test-ca"),
            s("-keyout"),
            ca_key.as_os_str(),
            s("-out"),
            ca.as_os_str(),
        ]);
        openssl(vec![
            s("req"),
            s("-newkey"),
            s("rsa:2048"),
            s("-nodes"),
            s("-subj"),
            s("/CN=localhost"),
            s("-keyout"),
            key.as_os_str(),
            s("-out"),
            csr.as_os_str(),
        ]);
        openssl(vec![
            s("x509"),
            s("-req"),
            s("-in"),
            csr.as_os_str(),
            s("-CA"),
            ca.as_os_str(),
            s("-CAkey"),
            ca_key.as_os_str(),
            s("-CAcreateserial"),
            s("-days"),
            s("1"),
            s("-extfile"),
            ext.as_os_str(),
            s("-out"),
            cert.as_os_str(),
        ]);
        if let Some(user) = pg.run_as() {
            assert!(Command::new("chown").arg(format!("{user}:")).arg(&cert).arg(&key).status().unwrap().success());
        }
        assert!(Command::new("chmod").arg("600").arg(&key).status().unwrap().success());
        // TLS on, and plaintext TCP refused (hostnossl reject), as a server that forces SSL.
        let conf = node.data_dir.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\n");
        std::fs::write(&conf, text).unwrap();
        let hba = node.data_dir.join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).unwrap();
        std::fs::write(&hba, format!("hostnossl all all 127.0.0.1/32 reject\n{text}")).unwrap();
        pg.stop("tls").unwrap();
        pg.start("tls").unwrap();
        (pg, ca)
    })
    .await
    .unwrap();
    let port = pg.node("tls").port;
    let timeout = Duration::from_secs(5);
    let config = |mode: &str| format!("{} sslmode={mode}", dsn(port)).parse::<tokio_postgres::Config>().unwrap();

    let trusted = tls_connector(Some(&cert)).unwrap();
    assert_eq!(probe(&config("require"), trusted.clone(), timeout).await, ProbeResult::Up(Role::Primary));
    assert_eq!(probe(&config("prefer"), trusted, timeout).await, ProbeResult::Up(Role::Primary));
    let system = tls_connector(None).unwrap();
    match probe(&config("require"), system.clone(), timeout).await {
        ProbeResult::Down(why) => assert!(why.to_lowercase().contains("certificate"), "{why}"),
        up => panic!("an unknown certificate was accepted: {up:?}"),
    }
    // Without TLS the server refuses the connection.
    assert!(matches!(probe(&config("disable"), system, timeout).await, ProbeResult::Down(_)));
    // A CA file that holds no certificate is a configuration error.
    let empty = tempfile::NamedTempFile::new().unwrap();
    assert!(tls_connector(Some(empty.path())).is_err());
    drop(pg);
}
