//! A planned switchover is lossless because the demoted primary reports its final WAL position:
//! two real PostgreSQL 15 servers, two agents with their HTTP API and hosted coordinators (the
//! HTTP fencer POSTs `/demote`), real etcd. A client keeps committing on the primary while the
//! switchover runs; every acknowledged row must be on the new primary, the transition must have
//! waited for the position the agent read with pg_controldata (not the last heartbeat's), and the
//! switchover must not have been turned into a failover.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{wait_until, Host};
use pgdaemon_core::{ClusterRecord, DynamicConfig, Lsn, ManualRequest, RequestAction, Role, Store, TransitionKind};
use pgdaemon_dcs::EtcdStore;
use pgdaemon_testkit::engines::EtcdServer;
use pgdaemon_testkit::postgres::{postgres_available, PgCluster};
use tokio::runtime::Runtime;

fn config() -> DynamicConfig {
    pgdaemon_testkit::short_timings()
}

#[test]
fn switchover_waits_for_the_demoted_primarys_reported_final_lsn_and_loses_no_write() {
    if !postgres_available() {
        eprintln!("skipped: PostgreSQL binaries not found");
        return;
    }
    let etcd = EtcdServer::start().expect("etcd");
    let cluster = format!("final-lsn-{}", std::process::id());
    let mut pg = PgCluster::new().unwrap();
    let n1 = pg.init_primary("n1").unwrap();
    let n2 = pg.add_replica("n2", "n1").unwrap();
    let main = Runtime::new().unwrap();
    let store = main.block_on(EtcdStore::connect(&[etcd.endpoint()], "/pgdaemon")).unwrap();
    main.block_on(store.write_cluster(&cluster, None, &ClusterRecord::bootstrap("n1", config()))).unwrap();
    let hosts: Vec<Host> =
        [&n1, &n2].iter().map(|n| Host::start(&pg, n, &etcd.endpoint(), &cluster, config(), "final-lsn")).collect();
    let view = |store: &EtcdStore| main.block_on(store.read_view(&cluster)).unwrap();
    wait_until("n1 holds the lease; n2 streams from it", Duration::from_secs(60), || {
        let v = view(&store);
        v.leader.as_ref().is_some_and(|l| l.owner == "n1" && l.term == 1 && !l.released)
            && v.members.get("n2").is_some_and(|m| m.role == Role::Replica && m.streaming)
            && v.coordinator.as_ref().is_some_and(|c| !c.released)
    });
    pg.sql("n1", "CREATE TABLE t (i int PRIMARY KEY)").unwrap();
    // Fresh heartbeats of both before the request (the candidate must be eligible).
    let before = view(&store);
    wait_until("n1 and n2 beat twice more (the coordinator sees fresh heartbeats)", Duration::from_secs(20), || {
        common::beat_twice_since(&before, &view(&store))
    });

    // The client: one autocommitted row per statement until the primary stops taking writes;
    // `acked` rows 1..=acked were acknowledged, `last_lsn` is the WAL end seen after the last.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (pg_port, bin) = (n1.port, pg.bin_dir().to_path_buf());
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut acked = 0u32;
            let mut last_lsn = None;
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let out = std::process::Command::new(bin.join("psql"))
                    .arg(format!("host=127.0.0.1 port={pg_port} user=postgres dbname=postgres connect_timeout=3"))
                    .args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-c"])
                    .arg(format!("INSERT INTO t VALUES ({})", acked + 1))
                    // A second `-c` runs after the first committed: the WAL end includes its commit.
                    .args(["-c", "SELECT pg_current_wal_insert_lsn()"])
                    .stdin(std::process::Stdio::null())
                    .output()
                    .unwrap();
                if !out.status.success() {
                    break;
                }
                acked += 1;
                last_lsn = Some(String::from_utf8_lossy(&out.stdout).trim().parse::<Lsn>().unwrap());
            }
            (acked, last_lsn)
        })
    };
    wait_until("the client committed some rows", Duration::from_secs(20), || {
        pg.try_sql("n1", "SELECT count(*) FROM t").is_ok_and(|c| c.parse::<u32>().unwrap_or(0) >= 50)
    });

    let started = Instant::now();
    let mut record = view(&store).cluster.unwrap();
    let expected = record.version;
    record.request = Some(ManualRequest {
        id: "switchover-1".into(),
        action: RequestAction::Switchover,
        candidate: Some("n2".into()),
        force: false,
        requested_ms: 0,
    });
    main.block_on(store.write_cluster(&cluster, Some(expected), &record)).unwrap();

    // While the transition runs, note the final LSN it waits for.
    let mut seen_final = None;
    wait_until("the switchover to n2 is recorded in history", Duration::from_secs(60), || {
        let v = view(&store);
        if let Some(l) = v.cluster.as_ref().and_then(|c| c.transition.as_ref()).and_then(|t| t.final_lsn) {
            seen_final = Some(l);
        }
        main.block_on(store.read_history(&cluster)).unwrap().iter().any(|h| h.term >= 2)
    });
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    let (acked, last_lsn) = writer.join().unwrap();
    let last_lsn = last_lsn.expect("the client committed nothing");

    let history = main.block_on(store.read_history(&cluster)).unwrap();
    let h = history.iter().find(|h| h.term >= 2).unwrap();
    eprintln!("switchover took {took:?}; {acked} rows acknowledged, last at {last_lsn}; history: {h:#?}");
    assert_eq!(
        (h.kind, h.old_primary.as_deref(), h.new_primary.as_str()),
        (TransitionKind::Switchover, Some("n1"), "n2"),
        "{h:#?}"
    );
    // The agent's reported position (not the heartbeat fallback) is what the switchover waited for.
    let marker = " (reported)";
    let at = h.reason.find(marker).unwrap_or_else(|| panic!("no reported final LSN in the history: {}", h.reason));
    let reported: Lsn = h.reason[..at].rsplit(' ').next().unwrap().parse().unwrap();
    if let Some(seen) = seen_final {
        assert_eq!(seen, reported, "the transition waited for another position");
    }
    // The shutdown checkpoint follows every acknowledged commit.
    assert!(reported >= last_lsn, "final LSN {reported} precedes the last acknowledged write at {last_lsn}");

    // Every acknowledged row is on the new primary, which takes writes.
    wait_until("n2 takes writes", Duration::from_secs(30), || pg.try_sql("n2", "INSERT INTO t VALUES (-1)").is_ok());
    let have: u32 = pg.sql("n2", &format!("SELECT count(*) FROM t WHERE i BETWEEN 1 AND {acked}")).unwrap().parse().unwrap();
    assert_eq!(have, acked, "acknowledged rows missing on the new primary");
    // And the new primary's WAL went past the reported position (it replayed up to it).
    let n2_lsn: Lsn = pg.sql("n2", "SELECT pg_current_wal_lsn()").unwrap().parse().unwrap();
    assert!(n2_lsn > reported, "{n2_lsn} <= {reported}");
    drop(hosts);
    drop(main);
}

/// `LocalPostgres::final_position` on PG15: the shutdown checkpoint of a fast stop (after every
/// acknowledged write; a streaming standby replays past it), nothing while running, after an
/// immediate stop or for a standby.
#[test]
fn final_position_is_the_shutdown_checkpoint_that_a_standby_replays_past() {
    use pgdaemon_agent::postgres::LocalPostgres;
    use pgdaemon_core::pg::{PgControl, StopMode};
    if !postgres_available() {
        eprintln!("skipped: PostgreSQL binaries not found");
        return;
    }
    let mut pg = PgCluster::new().unwrap();
    let n1 = pg.init_primary("n1").unwrap();
    let n2 = pg.add_replica("n2", "n1").unwrap();
    let rt = Runtime::new().unwrap();
    let primary = LocalPostgres::new(common::pg_settings(&pg, &n1));
    let standby = LocalPostgres::new(common::pg_settings(&pg, &n2));
    assert_eq!(rt.block_on(primary.final_position()), None, "running");
    pg.sql("n1", "CREATE TABLE t AS SELECT generate_series(1, 5000) i").unwrap();
    let written: Lsn = pg.sql("n1", "SELECT pg_current_wal_insert_lsn()").unwrap().parse().unwrap();
    rt.block_on(primary.demote()).unwrap();
    let fin = rt.block_on(primary.final_position()).expect("a fast stop reports its final position");
    assert!(fin >= written, "final {fin} < last write {written}");
    let replica_at = |f: &str| pg.sql("n2", &format!("SELECT {f}()")).unwrap().parse::<Lsn>().unwrap();
    wait_until("the standby replays past the final position", Duration::from_secs(10), || {
        replica_at("pg_last_wal_replay_lsn") > fin
    });
    let (received, replayed) = (replica_at("pg_last_wal_receive_lsn"), replica_at("pg_last_wal_replay_lsn"));
    eprintln!("wrote up to {written}; final position {fin}; standby received {received}, replayed {replayed}");
    assert_eq!(pg.sql("n2", "SELECT count(*) FROM t").unwrap(), "5000");

    rt.block_on(standby.stop(StopMode::Fast)).unwrap();
    assert_eq!(rt.block_on(standby.final_position()), None, "a standby's checkpoint is a restartpoint");
    rt.block_on(primary.start()).unwrap();
    rt.block_on(primary.stop(StopMode::Immediate)).unwrap();
    assert_eq!(rt.block_on(primary.final_position()), None, "an immediate stop has no shutdown checkpoint");
}
