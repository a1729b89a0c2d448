//! docs/operations.md section 7 A, run end to end: moving a cluster's data into a new cluster by
//! logical replication (the path for a PostgreSQL major upgrade). Only PostgreSQL 15 can be
//! installed on this machine, so both clusters run 15: what is tested is every pgdaemon step of
//! the runbook (`wal_level=logical` cluster-wide, the rolling restart that applies it, a second
//! cluster beside the first, the cut-over) and the PostgreSQL commands it gives, under a client
//! writing to the old cluster until the cut-over. One store (etcd): the runbook does nothing
//! store-specific.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgdaemon_drills::writer::{self, Writer};
use pgdaemon_drills::{Backend, Drill};

/// Runs `sql` on `member` of `d`, panicking with the error.
fn sql(d: &Drill, member: &str, sql: &str) -> String {
    d.pg.sql(member, sql).unwrap_or_else(|e| panic!("{e}\n{}", d.logs()))
}

async fn ctl(d: &Drill, args: &[&str]) -> String {
    let token = d.api_token_file().display().to_string();
    let mut all = vec!["--api-token-file", token.as_str()];
    all.extend_from_slice(args);
    d.pgdctl(&all).await.unwrap_or_else(|e| panic!("pgdctl {args:?}: {e}\n{}", d.logs()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_moves_into_a_new_cluster_by_logical_replication() {
    if !pgdaemon_testkit::postgres::postgres_available() {
        eprintln!("PostgreSQL 15 not installed: drill skipped");
        return;
    }
    let started = Instant::now();
    let a = Drill::start(Backend::Etcd, "upgrade-a").await.expect("old cluster up");
    // Step 2: wal_level=logical on the old cluster, applied by a rolling restart.
    ctl(&a, &["edit-config", "--set", "postgresql.parameters.wal_level=logical"]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.view().await.unwrap().states.values().filter(|s| s.pending_restart.iter().any(|p| p == "wal_level")).count() != 3 {
        assert!(Instant::now() < deadline, "wal_level not pending on every member\n{}", a.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ctl(&a, &["restart", "--all", "--pending", "--force"]).await;
    let old = a.wait_healthy(2, Duration::from_secs(60)).await.unwrap();
    assert_eq!(sql(&a, &old, "SHOW wal_level"), "logical");

    // The application writes to the old cluster throughout steps 3-5.
    let w = Writer::start(a.members(), &old, "orders", Duration::from_secs(300)).await.unwrap();
    let b = Drill::start(Backend::Etcd, "upgrade-b").await.expect("new cluster up");
    let new = b.wait_healthy(2, Duration::from_secs(60)).await.unwrap();
    // Step 3: the schema, with the old cluster's own tools.
    let bin = a.pg.bin_dir().to_path_buf();
    let (old_port, new_port) = (a.pg.node(&old).port, b.pg.node(&new).port);
    let dump = Command::new(bin.join("pg_dump"))
        .args(["--schema-only", "-h", "127.0.0.1", "-p", &old_port.to_string(), "-U", "postgres", "-t", "orders", "postgres"])
        .output()
        .unwrap();
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    // Through psql's standard input, as `pg_dump | psql`: the dump holds psql meta-commands.
    let mut psql = Command::new(bin.join("psql"))
        .args([
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &new_port.to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    psql.stdin.take().unwrap().write_all(&dump.stdout).unwrap();
    let restore = psql.wait_with_output().unwrap();
    assert!(restore.status.success(), "{}", String::from_utf8_lossy(&restore.stderr));
    // Step 4: publication on the old primary, subscription on the new one.
    sql(&a, &old, "CREATE PUBLICATION upgrade FOR ALL TABLES");
    sql(
        &b,
        &new,
        &format!(
            "CREATE SUBSCRIPTION upgrade CONNECTION 'host=127.0.0.1 port={old_port} dbname=postgres user=postgres' \
             PUBLICATION upgrade"
        ),
    );
    // Step 5: the initial copy is done.
    let deadline = Instant::now() + Duration::from_secs(60);
    while sql(&b, &new, "SELECT count(*) FILTER (WHERE srsubstate <> 'r') + (count(*) = 0)::int FROM pg_subscription_rel") != "0"
    {
        assert!(Instant::now() < deadline, "initial copy not done\n{}", b.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Step 6: cut over. Writes stop, the slot catches up, the subscription goes.
    let report = w.stop().await.unwrap();
    let cut = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    while sql(
        &a,
        &old,
        "SELECT confirmed_flush_lsn >= pg_current_wal_lsn() FROM pg_replication_slots WHERE slot_name = 'upgrade'",
    ) != "t"
    {
        assert!(Instant::now() < deadline, "the subscription did not catch up\n{}", b.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sql(&b, &new, "DROP SUBSCRIPTION upgrade");
    let cut_over = cut.elapsed();
    // Every acknowledged write is on the new primary and, by streaming, on its replicas.
    let lost = writer::missing(new_port, "orders", &report.acknowledged).await.unwrap();
    assert!(lost.is_empty(), "acknowledged writes missing in the new cluster: {lost:?}");
    b.wait_replayed(&new, Duration::from_secs(30)).await.unwrap();
    let replica = b.pg.nodes().iter().map(|n| n.name.clone()).find(|n| *n != new).unwrap();
    assert_eq!(sql(&b, &replica, "SELECT count(*) FROM orders"), report.acknowledged.len().to_string());
    assert_eq!(
        sql(&a, &old, "SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'"),
        "0",
        "the slot went with the subscription"
    );
    eprintln!(
        "logical move: {} writes acknowledged on the old cluster, 0 lost; cut-over (writes stopped -> subscription dropped) {:.2} s; whole drill {:.1} s",
        report.acknowledged.len(),
        cut_over.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
