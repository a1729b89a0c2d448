//! What a replica reports after a change of timeline, on real PostgreSQL 15 servers: a replica
//! that followed a switchover must go on reporting the new timeline once the new primary is
//! gone (the coordinator rules out candidates "behind" the current timeline, so reporting the
//! old one blocks exactly the failover that is needed), and the settings pg_rewind's
//! single-user pass needs are in the node's own files.

mod common;

use std::time::{Duration, Instant};

use common::pg_settings;
use pgdaemon_agent::postgres::LocalPostgres;
use pgdaemon_core::pg::{PgControl, PgProbe, PrimaryTarget};
use pgdaemon_core::Role;
use pgdaemon_testkit::postgres::{postgres_available, PgCluster, PgNode};

fn target(node: &PgNode) -> PrimaryTarget {
    PrimaryTarget { name: node.name.clone(), host: "127.0.0.1".into(), port: node.port }
}

/// Probes `pg` until `ok` holds (bounded).
async fn probe_until(pg: &LocalPostgres, what: &str, timeout: Duration, ok: impl Fn(&PgProbe) -> bool) -> PgProbe {
    let deadline = Instant::now() + timeout;
    loop {
        let p = pg.probe().await;
        if ok(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "{what} not reached within {timeout:?}: {p:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_keeps_reporting_the_new_timeline_after_the_new_primary_dies() {
    if !postgres_available() {
        eprintln!("PostgreSQL 15 not installed: test skipped");
        return;
    }
    let mut pg = PgCluster::new().unwrap();
    let n1 = pg.init_primary("pg-1").unwrap();
    let n2 = pg.add_empty("pg-2").unwrap();
    let n3 = pg.add_empty("pg-3").unwrap();
    let (p1, p2, p3) = (
        LocalPostgres::new(pg_settings(&pg, &n1)),
        LocalPostgres::new(pg_settings(&pg, &n2)),
        LocalPostgres::new(pg_settings(&pg, &n3)),
    );
    let members: Vec<String> = ["pg-1", "pg-2", "pg-3"].map(String::from).to_vec();
    p1.ensure_slots(&members).await.unwrap();
    p2.basebackup(&target(&n1)).await.unwrap();
    p3.basebackup(&target(&n1)).await.unwrap();
    pg.sql("pg-1", "CREATE TABLE t (x int); INSERT INTO t VALUES (1)").unwrap();

    // Switchover: the old primary stops cleanly (its standbys get all of its WAL), pg-2 is
    // promoted onto timeline 2 and pg-3 follows it.
    let end = p1.probe().await.write_lsn.unwrap();
    for p in [&p2, &p3] {
        probe_until(p, "replay of the old primary's WAL", Duration::from_secs(30), |s| s.replay_lsn.is_some_and(|l| l >= end))
            .await;
    }
    p1.demote().await.unwrap();
    let r2 = p2.probe().await.receive_lsn;
    probe_until(&p3, "the same WAL end as pg-2", Duration::from_secs(30), |s| s.receive_lsn >= r2).await;
    p2.promote().await.unwrap();
    p2.ensure_slots(&members).await.unwrap();
    pg.sql("pg-2", "INSERT INTO t VALUES (2)").unwrap();
    p3.follow(&target(&n2)).await.unwrap();
    let s =
        probe_until(&p3, "streaming from pg-2 on timeline 2", Duration::from_secs(60), |s| s.streaming && s.timeline == 2).await;
    assert_eq!(s.role, Role::Replica);

    // The new primary dies: the walreceiver's row goes, the last restartpoint is still on
    // timeline 1, but the replica has received timeline 2 and must say so.
    pg.kill9("pg-2").unwrap();
    let s = probe_until(&p3, "the walreceiver noticing", Duration::from_secs(30), |s| s.running && !s.streaming).await;
    assert_eq!(s.timeline, 2, "a replica that reached timeline 2 reported {}: {s:?}", s.timeline);
    let checkpoint_tli = pg.sql("pg-3", "SELECT timeline_id FROM pg_control_checkpoint()").unwrap();
    eprintln!("pg-3: reported timeline {}, last restartpoint on timeline {checkpoint_tli}", s.timeline);

    // The agent put the settings pg_rewind's single-user pass needs into postgresql.auto.conf.
    let persisted = pg
        .sql(
            "pg-3",
            "SELECT string_agg(name || '=' || setting, ',' ORDER BY name) FROM pg_file_settings \
             WHERE sourcefile LIKE '%postgresql.auto.conf' AND name IN ('wal_log_hints', 'wal_keep_size') AND error IS NULL",
        )
        .unwrap();
    assert_eq!(persisted, "wal_keep_size=256MB,wal_log_hints=on");
}
