//! Automatic bootstrap with real agent processes (docs/bootstrap.md): three members with empty
//! data directories and no cluster record, agents started at the same moment with `[bootstrap]`
//! on. Nothing else prepares the cluster: no initdb, no role, no pg_hba, no `pgdctl bootstrap`.
//!
//! - on etcd and on DynamoDB (moto): exactly one initdb, one primary, two streaming replicas;
//! - the winner killed during initdb, and after initdb (its Postgres up on the socket) before the
//!   record: another member takes the initialize lock once it has been unchanged for its 10 s,
//!   initialises, and the killed member, restarted, rejoins by basebackup over its leftover.

use std::time::{Duration, Instant};

use pgdaemon_core::LeaseName;
use pgdaemon_drills::{Backend, Drill};
use pgdaemon_testkit::postgres::postgres_available;

const INITIALISED: &str = "initialised a new database";

fn initdb_count(d: &Drill) -> usize {
    ["pg-1", "pg-2", "pg-3"].iter().map(|n| d.agent_log(n).matches(INITIALISED).count()).sum()
}

async fn three_empty_members_become_a_cluster(backend: Backend, name: &str) {
    let started = Instant::now();
    let d = Drill::start_empty(backend, name).await.unwrap();
    let primary = d.wait_healthy(2, Duration::from_secs(90)).await.unwrap();
    eprintln!("{backend:?}: three empty members to a healthy cluster (primary {primary}) in {:?}", started.elapsed());
    assert_eq!(initdb_count(&d), 1, "exactly one initdb\n{}", d.logs());
    assert_eq!(d.writable(), vec![primary.clone()], "one writable member");
    let record = d.view().await.unwrap().cluster.unwrap();
    assert_eq!((record.term, record.primary.as_deref()), (1, Some(primary.as_str())));
    // The roles and pg_hba the bootstrap wrote: replicas stream as `replicator` with its password.
    let users = d.pg.sql(&primary, "SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_replication").unwrap();
    assert_eq!(users, "replicator");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_empty_members_become_a_cluster_on_etcd() {
    if postgres_available() {
        three_empty_members_become_a_cluster(Backend::Etcd, "boot-etcd").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_empty_members_become_a_cluster_on_dynamodb() {
    if postgres_available() {
        three_empty_members_become_a_cluster(Backend::Dynamodb, "boot-ddb").await;
    }
}

/// Where the winner is killed.
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    /// As soon as it holds the initialize lock: initdb runs (and goes on, orphaned).
    DuringInitdb,
    /// Once its new Postgres runs on the socket (roles being created), before the record.
    BeforeRecord,
}

async fn winner_killed(point: KillPoint, name: &str) {
    let mut d = Drill::start_empty(Backend::Etcd, name).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let winner = loop {
        assert!(Instant::now() < deadline, "nobody took the initialize lock\n{}", d.logs());
        if let Ok(Some(lock)) = d.store.read_lease(&d.cluster, LeaseName::Initialize).await {
            break lock.owner;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    match point {
        KillPoint::DuringInitdb => d.kill_agent(&winner),
        KillPoint::BeforeRecord => {
            // A postmaster, not initdb's standalone backend (whose lock file holds a negated PID).
            while d.pg.pid(&winner).is_none() {
                assert!(Instant::now() < deadline, "{winner} never started its new postgres\n{}", d.logs());
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            d.crash(&winner).unwrap();
        }
    }
    let record = d.view().await.unwrap().cluster;
    assert!(record.is_none(), "{point:?}: the record was written before {winner} was killed: {record:?}");

    // Another member takes over the lock after 10 s unchanged and initialises.
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(60);
    let primary = loop {
        if let Some(p) = d.view().await.ok().and_then(|v| v.cluster).and_then(|c| c.primary) {
            break p;
        }
        assert!(Instant::now() < deadline, "{point:?}: no cluster record after the winner died\n{}", d.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_ne!(primary, winner);
    eprintln!("{point:?}: {primary} initialised {:?} after {winner} was killed", started.elapsed());

    // The killed member comes back over its leftover directory and is rebuilt as a replica.
    d.start_agent(&winner).unwrap();
    let healthy = d.wait_healthy(2, Duration::from_secs(90)).await.unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    assert_eq!(healthy, primary);
    assert_eq!(d.writable(), vec![primary.clone()]);
    assert_eq!(d.view().await.unwrap().cluster.unwrap().term, 1, "no failover: the record was made once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_winner_killed_during_initdb_is_replaced() {
    if postgres_available() {
        winner_killed(KillPoint::DuringInitdb, "boot-kill-initdb").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bootstrap_winner_killed_before_the_record_is_replaced() {
    if postgres_available() {
        winner_killed(KillPoint::BeforeRecord, "boot-kill-record").await;
    }
}
