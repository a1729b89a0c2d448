//! Connections between members over TLS with passwords, against real PostgreSQL 15 servers that
//! accept nothing else: `ssl = on`, pg_hba with `hostssl ... scram-sha-256 clientcert=verify-ca`
//! for the replication and rewind roles, certificates made in the test (testkit::tls).
//!
//! One test, in order: a basebackup as `replicator` (while a scanner reads every process's
//! `/proc/<pid>/cmdline`), streaming over TLS, a promotion and a pg_rewind of the old primary as
//! the dedicated `rewinder` role (its CHECKPOINT too), and the departed-slot path: a member that
//! stopped keeps its slot, which holds WAL until the slot is dropped. All along, every agent log
//! line at TRACE level is captured: neither password appears in a log, a command line or
//! `postgresql.auto.conf`. The only connection without TLS is the agent's local superuser
//! connection on loopback (in production: the Unix socket with peer authentication).

mod common;

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::pg_settings;
use pgdaemon_agent::postgres::{LocalPostgres, PeerAuth, PeerTls};
use pgdaemon_agent::secrets::Secret;
use pgdaemon_core::agent::DepartedSlots;
use pgdaemon_core::pg::{PgControl, PrimaryTarget};
use pgdaemon_testkit::postgres::{postgres_available, PgCluster};
use pgdaemon_testkit::tls::TestPki;

const REPLICATION_SECRET: &str = "rep-Secret-7f3a9";
const REWIND_SECRET: &str = "rew-Secret-c21e4";

/// Every log line of the agent code, at TRACE level.
#[derive(Clone, Default)]
struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl Write for CapturedLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl CapturedLog {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Reads every process's command line until stopped; returns the lines holding a secret and
/// whether a `pg_basebackup` was seen at all (the scan ran while it did).
fn scan_cmdlines(stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(Vec<String>, bool)> {
    std::thread::spawn(move || {
        let mut leaks = Vec::new();
        let mut saw_basebackup = false;
        while !stop.load(Ordering::SeqCst) {
            for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
                let line = String::from_utf8_lossy(&raw).replace('\0', " ");
                saw_basebackup |= line.contains("pg_basebackup");
                if line.contains(REPLICATION_SECRET) || line.contains(REWIND_SECRET) || line.contains("password=") {
                    leaks.push(line);
                }
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (leaks, saw_basebackup)
    })
}

fn chown_to(path: &Path, user: Option<&str>) {
    if let Some(user) = user {
        let status = std::process::Command::new("chown").arg("-R").arg(format!("{user}:")).arg(path).status().unwrap();
        assert!(status.success(), "chown {}", path.display());
    }
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool, details: impl Fn() -> String) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}\n{}", details());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn replication_and_rewind_over_tls_with_passwords_that_never_leak() {
    if !postgres_available() {
        eprintln!("skipped: PostgreSQL 15 is not installed (scripts/setup installs it)");
        return;
    }
    let log = CapturedLog::default();
    let writer = log.clone();
    tracing_subscriber::fmt().with_max_level(tracing::Level::TRACE).with_writer(move || writer.clone()).with_ansi(false).init();

    let mut pg = PgCluster::new().unwrap();
    let pki_dir = pg.dir().join("pki");
    let pki = TestPki::new(&pki_dir).unwrap();
    let server = pki.issue("server", &["127.0.0.1", "localhost"]).unwrap();
    let client = pki.issue("pgdaemon-node", &[]).unwrap();
    chown_to(&pki_dir, pg.run_as());

    pg.init_primary("p1").unwrap();
    let conf = format!(
        "\nssl = on\nssl_cert_file = '{}'\nssl_key_file = '{}'\nssl_ca_file = '{}'\npassword_encryption = 'scram-sha-256'\n\
         log_connections = on\n",
        server.cert.display(),
        server.key.display(),
        pki.ca_file().display()
    );
    let p1_dir = pg.node("p1").data_dir.clone();
    let mut text = std::fs::read_to_string(p1_dir.join("postgresql.conf")).unwrap();
    text.push_str(&conf);
    std::fs::write(p1_dir.join("postgresql.conf"), text).unwrap();
    // First match wins: the peers' roles only over TLS with a password and a client certificate;
    // anything else from the network has no line and is refused.
    std::fs::write(
        p1_dir.join("pg_hba.conf"),
        "local all all trust\n\
         hostssl replication replicator 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n\
         hostssl all rewinder 127.0.0.1/32 scram-sha-256 clientcert=verify-ca\n\
         host all postgres 127.0.0.1/32 trust\n",
    )
    .unwrap();
    pg.stop("p1").unwrap();
    pg.start("p1").unwrap();
    pg.sql(
        "p1",
        &format!(
            "CREATE ROLE replicator LOGIN REPLICATION PASSWORD '{REPLICATION_SECRET}';
             CREATE ROLE rewinder LOGIN PASSWORD '{REWIND_SECRET}';
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO rewinder;
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO rewinder;
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO rewinder;
             GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO rewinder;
             GRANT pg_checkpoint TO rewinder;
             CREATE TABLE t (v int); INSERT INTO t VALUES (1);"
        ),
    )
    .unwrap();
    assert_eq!(pg.sql("p1", "SELECT rolpassword LIKE 'SCRAM-SHA-256$%' FROM pg_authid WHERE rolname = 'rewinder'").unwrap(), "t");

    // Without TLS, the rewind role is refused even with the right password.
    let plain = std::process::Command::new(pg.bin_dir().join("psql"))
        .arg(format!("host=127.0.0.1 port={} user=rewinder dbname=postgres sslmode=disable", pg.node("p1").port))
        .args(["-X", "-c", "SELECT 1"])
        .env("PGPASSWORD", REWIND_SECRET)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(!plain.status.success() && err.contains("no pg_hba.conf entry"), "{err}");

    let peers = PeerAuth {
        replication_user: "replicator".into(),
        replication_password: Some(Secret::new(REPLICATION_SECRET)),
        rewind_user: Some("rewinder".into()),
        rewind_password: Some(Secret::new(REWIND_SECRET)),
        tls: PeerTls {
            sslmode: Some("verify-full".into()),
            sslrootcert: Some(pki.ca_file()),
            sslcert: Some(client.cert.clone()),
            sslkey: Some(client.key.clone()),
        },
        passfile: None,
    };
    pg.add_empty("p2").unwrap();
    let agent = |name: &str| {
        let mut s = pg_settings(&pg, pg.node(name));
        s.peers = peers.clone();
        // No WAL kept beyond what slots hold, so the slot's hold on WAL shows (below).
        s.server_options.push(("wal_keep_size".into(), "0".into()));
        LocalPostgres::new(s)
    };
    let target = |name: &str| PrimaryTarget { name: name.into(), host: "127.0.0.1".into(), port: pg.node(name).port };
    let rt = tokio::runtime::Runtime::new().unwrap();

    // 1. Basebackup p2 from p1 as `replicator`, over TLS, the scanner watching.
    let (p1, p2) = (agent("p1"), agent("p2"));
    rt.block_on(p1.ensure_slots(&["p2".into()])).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let scanner = scan_cmdlines(stop.clone());
    let copied = rt.block_on(p2.basebackup(&target("p1")));
    stop.store(true, Ordering::SeqCst);
    let (leaks, saw_basebackup) = scanner.join().unwrap();
    copied.unwrap_or_else(|e| panic!("basebackup: {e}\n{}", pg.log("p1")));
    assert!(saw_basebackup, "the scan never saw pg_basebackup run");
    assert!(leaks.is_empty(), "a password on a command line: {leaks:?}");

    wait_until(
        "p2 streaming from p1 over TLS as replicator",
        Duration::from_secs(20),
        || {
            pg.sql("p1", "SELECT r.usename || ' ' || s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)").unwrap()
                == "replicator true"
        },
        || format!("p1: {:?}\np2's log:\n{}", pg.try_sql("p1", "SELECT * FROM pg_stat_replication"), pg.log("p2")),
    );
    let passfile = pg.dir().join("p2.pgpass");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&passfile).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "{}", passfile.display());
    let auto = std::fs::read_to_string(pg.node("p2").data_dir.join("postgresql.auto.conf")).unwrap();
    assert!(auto.contains("passfile=") && auto.contains("sslmode=''verify-full''"), "{auto}");
    assert!(!auto.contains(REPLICATION_SECRET) && !auto.contains("password"), "{auto}");

    // 2. Promote p2, let p1 diverge, rewind p1 from p2 as `rewinder` (CHECKPOINT included).
    rt.block_on(p2.promote()).unwrap();
    rt.block_on(p2.ensure_slots(&["p1".into()])).unwrap();
    pg.sql("p1", "INSERT INTO t VALUES (2)").unwrap();
    pg.sql("p2", "INSERT INTO t VALUES (3)").unwrap();
    rt.block_on(p1.rewind(&target("p2"))).unwrap_or_else(|e| panic!("rewind: {e}\n{}", pg.log("p2")));
    wait_until(
        "p1 streaming from p2",
        Duration::from_secs(20),
        || pg.sql("p2", "SELECT usename FROM pg_stat_replication").unwrap() == "replicator",
        || pg.log("p1"),
    );
    wait_until(
        "p1 replays p2's history",
        Duration::from_secs(20),
        || pg.try_sql("p1", "SELECT string_agg(v::text, ',' ORDER BY v) FROM t").as_deref() == Ok("1,3"),
        || pg.log("p1"),
    );
    let p2_log = pg.log("p2");
    assert!(
        p2_log.lines().any(|l| l.contains("connection authorized: user=rewinder") && l.contains("SSL enabled")),
        "no TLS connection of rewinder in p2's log:\n{p2_log}"
    );

    // 3. p1 departs: its slot on p2 holds WAL until the slot is dropped.
    pg.stop("p1").unwrap();
    let slot_probe = || rt.block_on(p2.probe());
    let mut departed = DepartedSlots::new(Duration::from_millis(300));
    let members = vec!["p2".to_string()];
    let start = Instant::now();
    let mut due = Vec::new();
    while due.is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "p1's slot never came due: {:?}", slot_probe());
        due = departed.observe(start.elapsed(), &slot_probe(), "p2", Some(&members));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(due, vec!["p1".to_string()]);
    let held_from = pg.sql("p2", "SELECT pg_walfile_name(restart_lsn) FROM pg_replication_slots WHERE slot_name = 'p1'").unwrap();
    let oldest = "SELECT min(name) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$'";
    let churn = "INSERT INTO t VALUES (4); SELECT pg_switch_wal(); INSERT INTO t VALUES (5); SELECT pg_switch_wal(); CHECKPOINT;";
    pg.sql("p2", churn).unwrap();
    assert!(pg.sql("p2", oldest).unwrap() <= held_from, "the slot holds WAL from {held_from}");
    rt.block_on(p2.drop_slots(&due)).unwrap();
    assert!(!slot_probe().slots.contains(&"p1".to_string()));
    pg.sql("p2", churn).unwrap();
    let after = pg.sql("p2", oldest).unwrap();
    assert!(after > held_from, "WAL from {held_from} still kept ({after}) after the slot was dropped");

    let agent_log = log.text();
    assert!(agent_log.contains("pg_basebackup") && agent_log.contains("pg_rewind"), "nothing captured:\n{agent_log}");
    for secret in [REPLICATION_SECRET, REWIND_SECRET] {
        assert!(!agent_log.contains(secret), "a password in the agent's log:\n{agent_log}");
    }
}
