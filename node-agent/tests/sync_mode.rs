//! Synchronous mode end to end (issue 9): three real PostgreSQL 15 servers, three agents (each
//! with its HTTP API and an agent-hosted coordinator, in a runtime of its own like a separate
//! host), real etcd, `synchronous_mode = on` (`PGDAEMON_SYNC_MODE=strict` for strict).
//!
//! A client writes without pause through a read-write connection to whichever node is primary,
//! each row with a unique id, and records every id whose COMMIT was acknowledged. The primary's
//! host is killed (agent and coordinator gone, postmaster SIGKILL) several times in a row, each
//! time once the primary has recorded a synchronous standby for its term; the killed node is
//! restarted (its agent rewinds it and it follows the new primary) before the next round. At the
//! end every acknowledged id must be on the final primary: lost must be 0. Prints the number of
//! acknowledged commits checked and lost, and the write-unavailability window of each failover
//! (last acknowledged commit before the kill to the first one after it).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{wait_until, Host};
use pgdaemon_core::{ClusterRecord, ClusterView, DynamicConfig, Role, Store, SyncMode};
use pgdaemon_dcs::EtcdStore;
use pgdaemon_testkit::engines::EtcdServer;
use pgdaemon_testkit::postgres::{postgres_available, PgCluster};
use tokio::runtime::Runtime;

const NODES: [&str; 3] = ["n1", "n2", "n3"];

fn sync_mode() -> SyncMode {
    match std::env::var("PGDAEMON_SYNC_MODE").as_deref() {
        Ok("strict") => SyncMode::Strict,
        _ => SyncMode::On,
    }
}

fn config() -> DynamicConfig {
    let c = DynamicConfig { synchronous_mode: sync_mode(), synchronous_node_count: 1, ..pgdaemon_testkit::short_timings() };
    c.validate().unwrap();
    c
}

/// Acknowledged commits: (id, when the COMMIT returned, port of the server that acknowledged it).
type Acks = Arc<Mutex<Vec<(i64, Instant, u16)>>>;

/// The client: one connection to whichever node accepts writes (`target_session_attrs =
/// read-write` over all three), one row per transaction, a fresh id per attempt. An attempt that
/// errors or takes over 3 s is not acknowledged and the connection is dropped.
struct Writer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Writer {
    fn start(ports: Vec<u16>, acks: Acks) -> Writer {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let mut cfg = tokio_postgres::Config::new();
                for p in &ports {
                    cfg.host("127.0.0.1").port(*p);
                }
                cfg.user("postgres")
                    .dbname("postgres")
                    .application_name("sync-writer")
                    .connect_timeout(Duration::from_secs(1))
                    .target_session_attrs(tokio_postgres::config::TargetSessionAttrs::ReadWrite);
                let mut client: Option<(tokio_postgres::Client, u16)> = None;
                let mut next_id = 0i64;
                let mut attempts = 0u64;
                // Bounded load: at most ~200 commits a second.
                while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                    if client.is_none() {
                        match tokio::time::timeout(Duration::from_secs(3), cfg.connect(tokio_postgres::NoTls)).await {
                            Ok(Ok((c, conn))) => {
                                tokio::spawn(async move {
                                    let _ = conn.await;
                                });
                                match c.query_one("SELECT inet_server_port()", &[]).await {
                                    Ok(row) => client = Some((c, row.get::<_, i32>(0) as u16)),
                                    Err(_) => continue,
                                }
                            }
                            _ => {
                                tokio::time::sleep(Duration::from_millis(20)).await;
                                continue;
                            }
                        }
                    }
                    next_id += 1;
                    attempts += 1;
                    let (c, port) = client.as_ref().unwrap();
                    let port = *port;
                    let id = next_id;
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&id];
                    let insert = c.execute("INSERT INTO acked (id) VALUES ($1)", &params);
                    match tokio::time::timeout(Duration::from_secs(3), insert).await {
                        Ok(Ok(1)) => acks.lock().unwrap().push((next_id, Instant::now(), port)),
                        _ => client = None,
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                attempts
            })
        });
        Writer { stop, thread: Some(thread) }
    }

    fn finish(&mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().map(|t| t.join().unwrap()).unwrap_or(0)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A process stopped with SIGSTOP, continued when dropped (also when the test panics).
struct Frozen(u32);

impl Frozen {
    fn new(pid: u32) -> Frozen {
        let ok = std::process::Command::new("kill").args(["-STOP", &pid.to_string()]).status().is_ok_and(|s| s.success());
        assert!(ok, "could not stop {pid}");
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
    }
}

/// The primary of the settled current term, with a recorded (non-degraded) synchronous standby,
/// every other member streaming as a replica.
fn settled_sync(v: &ClusterView) -> Option<(String, Vec<String>, u64)> {
    let r = v.cluster.as_ref()?;
    let p = r.primary.clone()?;
    let s = r.sync.as_ref()?;
    let lease_ok = v.leader.as_ref().is_some_and(|l| l.owner == p && l.term == r.term && !l.released);
    let replicas_ok =
        NODES.iter().filter(|n| **n != p).all(|n| v.members.get(*n).is_some_and(|m| m.role == Role::Replica && m.streaming));
    (r.transition.is_none() && lease_ok && replicas_ok && s.term == r.term && !s.degraded && !s.members.is_empty())
        .then(|| (p, s.members.clone(), r.term))
}

#[test]
fn acknowledged_commits_survive_repeated_primary_kills_in_synchronous_mode() {
    if !postgres_available() {
        eprintln!("skipped: PostgreSQL binaries not found");
        return;
    }
    let rounds: usize = std::env::var("PGDAEMON_SYNC_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3).clamp(1, 10);
    let started = Instant::now();
    let etcd = EtcdServer::start().expect("etcd");
    let cluster = format!("sync-{}", std::process::id());
    let mut pg = PgCluster::new().unwrap();
    pg.init_primary("n1").unwrap();
    pg.sql("n1", "CREATE TABLE acked (id bigint PRIMARY KEY)").unwrap();
    pg.add_replica("n2", "n1").unwrap();
    pg.add_replica("n3", "n1").unwrap();
    let main = Runtime::new().unwrap();
    let store = main.block_on(EtcdStore::connect(&[etcd.endpoint()], "/pgdaemon")).unwrap();
    main.block_on(store.write_cluster(&cluster, None, &ClusterRecord::bootstrap("n1", config()))).unwrap();
    let mut hosts: Vec<Option<Host>> =
        NODES.iter().map(|n| Some(Host::start(&pg, pg.node(n), &etcd.endpoint(), &cluster, config(), "sync-e2e"))).collect();
    // A read may fail for a moment on a loaded machine (an etcd connection reset): retry, bounded.
    let view = || {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            match main.block_on(store.read_view(&cluster)) {
                Ok(v) => return v,
                Err(e) if Instant::now() < deadline => eprintln!("read view (retrying): {e}"),
                Err(e) => panic!("read view: {e}"),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };

    let acks: Acks = Arc::new(Mutex::new(Vec::new()));
    let ports: Vec<u16> = NODES.iter().map(|n| pg.node(n).port).collect();
    let mut writer = Writer::start(ports, acks.clone());
    let acked_count = || acks.lock().unwrap().len();

    let mut windows = Vec::new();
    for round in 1..=rounds {
        let mut settled = None;
        wait_until(
            &format!("round {round}: a primary with a recorded synchronous standby, all replicas streaming"),
            Duration::from_secs(60),
            || {
                settled = settled_sync(&view());
                settled.is_some()
            },
        );
        let (primary, sync_set, term) = settled.unwrap();
        let setting = pg.sql(&primary, "SHOW synchronous_standby_names").unwrap();
        assert!(
            sync_set.iter().all(|s| setting.contains(&format!("\"{s}\""))),
            "recorded {sync_set:?} but Postgres lists {setting}"
        );
        // Commits flow synchronously, and every coordinator has watched the heartbeats beat.
        let before = acked_count();
        wait_until("commits acknowledged under the synchronous setting", Duration::from_secs(20), || {
            acked_count() >= before + 50
        });
        if round == 1 {
            // Commits are synchronous: with the synchronous standby's WAL receiver frozen, nothing
            // is acknowledged (one commit may already have been confirmed when it stopped).
            let pid: u32 = pg.sql(&sync_set[0], "SELECT pid FROM pg_stat_wal_receiver").unwrap().parse().unwrap();
            let frozen = Frozen::new(pid);
            let at_stop = acked_count();
            // A fixed window: nothing may be acknowledged in it.
            std::thread::sleep(Duration::from_secs(2));
            let during = acked_count() - at_stop;
            drop(frozen);
            eprintln!("{} WAL receiver frozen 2 s: {during} commit(s) acknowledged meanwhile", sync_set[0]);
            assert!(during <= 1, "{during} commits acknowledged while the synchronous standby could not confirm them");
            let resumed = acked_count();
            wait_until("commits resume once the standby is back", Duration::from_secs(10), || acked_count() > resumed + 10);
        }
        let beats = view();
        wait_until("every member beats twice more (coordinators see fresh heartbeats)", Duration::from_secs(20), || {
            common::beat_twice_since(&beats, &view())
        });

        let idx = NODES.iter().position(|n| *n == primary).unwrap();
        hosts[idx] = None;
        let killed = Instant::now();
        pg.kill9(&primary).unwrap();
        // A COMMIT already waiting for the standby may still be acknowledged by a backend of the
        // killed postmaster (backends exit only once they notice): the window runs from the old
        // primary's last acknowledgement to the first one by another server.
        let old_port = pg.node(&primary).port;
        let mut first_after = None;
        wait_until(
            &format!("round {round}: a commit acknowledged by another server after killing {primary}"),
            Duration::from_secs(90),
            || {
                first_after =
                    acks.lock().unwrap().iter().find(|(_, at, port)| *at > killed && *port != old_port).map(|(_, at, _)| *at);
                first_after.is_some()
            },
        );
        let first_after = first_after.unwrap();
        let last_before = acks.lock().unwrap().iter().rev().find(|(_, _, port)| *port == old_port).map(|(_, at, _)| *at).unwrap();
        let v = view();
        let new_primary = v.cluster.as_ref().and_then(|c| c.primary.clone()).unwrap_or_default();
        let window = first_after - last_before;
        eprintln!(
            "round {round}: killed {primary} (term {term}, synchronous standby {sync_set:?}, '{setting}'); new primary {new_primary}; \
             unavailable {:.2} s (kill -> first ack on {new_primary} {:.2} s)",
            window.as_secs_f64(),
            (first_after - killed).as_secs_f64()
        );
        assert!(sync_set.contains(&new_primary), "promoted {new_primary}, not the synchronous standby {sync_set:?}");
        windows.push(window);
        // The killed node comes back: its agent rewinds it and it follows the new primary.
        hosts[idx] = Some(Host::start(&pg, pg.node(&primary), &etcd.endpoint(), &cluster, config(), "sync-e2e"));
    }
    wait_until("the last failover settled (synchronous standby recorded, everyone streaming)", Duration::from_secs(60), || {
        settled_sync(&view()).is_some()
    });
    let attempts = writer.finish();
    let final_primary = view().cluster.and_then(|c| c.primary).unwrap();
    let acked: Vec<i64> = acks.lock().unwrap().iter().map(|(id, _, _)| *id).collect();
    let present: std::collections::HashSet<i64> =
        pg.sql(&final_primary, "SELECT id FROM acked").unwrap().lines().filter_map(|l| l.trim().parse().ok()).collect();
    let lost: Vec<i64> = acked.iter().copied().filter(|id| !present.contains(id)).collect();
    let mut sorted = windows.clone();
    sorted.sort();
    eprintln!(
        "synchronous_mode {:?}: {} failovers; acknowledged commits checked {}, lost {} (of {} attempts, {} rows on {final_primary}); \
         unavailability per failover {:?} (median {:.2} s); test took {:.0} s",
        sync_mode(),
        rounds,
        acked.len(),
        lost.len(),
        attempts,
        present.len(),
        windows.iter().map(|w| format!("{:.2}s", w.as_secs_f64())).collect::<Vec<_>>(),
        sorted[sorted.len() / 2].as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    assert!(acked.len() > 100 * rounds, "too few commits to mean anything: {}", acked.len());
    assert!(lost.is_empty(), "acknowledged commits lost: {} (first {:?})", lost.len(), &lost[..lost.len().min(10)]);
    drop(hosts);
}
