//! Rolling-upgrade drill (docs/upgrading.md), the cheaper form: into a running three-node cluster
//! on etcd, write the items a newer pgdaemon (or a broken writer) would leave behind - every
//! member's heartbeat with an unknown field and a newer format, history and event items of a
//! newer coordinator, a member item of a newer agent for newer readers only, garbage, and the
//! issue's `{"name":"zz","future_field":1}` - then kill -9 the primary and check a failover still
//! happens with no acknowledged row lost, and that `pgdctl list` shows the unreadable items.

use std::process::Command;
use std::time::{Duration, Instant};

use pgdaemon_core::{keys, Role, StoreConfig, TransitionKind};
use pgdaemon_drills::writer::{self, Writer};
use pgdaemon_drills::{AgentBuild, Backend, Drill};

fn rows(d: &Drill, member: &str) -> i64 {
    d.pg.sql(member, "SELECT count(*) FROM upgrade_rows").unwrap().parse().unwrap()
}

/// What a foreign writer does: `etcdctl` straight into the cluster's keys.
fn etcd(d: &Drill, args: &[&str]) -> String {
    let StoreConfig::Etcd { endpoints, .. } = &d.store_config else { panic!("an etcd drill") };
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .args(args)
        .output()
        .expect("etcdctl");
    assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn put(d: &Drill, item: &str, value: &str) {
    etcd(d, &["put", &format!("/pgdaemon/{}/{item}", d.cluster), value]);
}

const NEWER: &str = r#"{"future_field":{"nested":[1,2]},"format_version":2,"min_reader_version":1,"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_a_newer_version_never_freeze_failover_on_etcd() {
    if !pgdaemon_testkit::postgres::postgres_available() {
        eprintln!("PostgreSQL 15 not installed: drill skipped");
        return;
    }
    let mut d = Drill::start(Backend::Etcd, "upgrade-etcd").await.expect("cluster up");
    d.pg.sql("pg-1", "CREATE TABLE upgrade_rows (id int PRIMARY KEY)").unwrap();
    d.pg.sql("pg-1", "INSERT INTO upgrade_rows SELECT generate_series(1, 100)").unwrap();

    // Every heartbeat as a newer agent writes it (readable), and the unreadable ones.
    for m in ["pg-1", "pg-2", "pg-3"] {
        let key = format!("/pgdaemon/{}/{}", d.cluster, keys::member(m));
        let current = etcd(&d, &["get", "--print-value-only", &key]);
        assert!(current.starts_with('{'), "{m}'s heartbeat: {current:?}");
        put(&d, &keys::member(m), &current.replacen('{', NEWER, 1));
    }
    put(&d, &keys::member("zz"), r#"{"name":"zz","future_field":1}"#);
    put(&d, &keys::member("zz-newer"), r#"{"min_reader_version":2,"name":"zz-newer","role":"witness"}"#);
    put(&d, &keys::member("zz-garbage"), r#"{"name": "#);
    put(
        &d,
        &keys::history(999_999),
        &format!(
            r#"{NEWER}"term":999999,"kind":"failover","new_primary":"pg-9","reason":"newer","started_ms":0,"finished_ms":0,"coordinator_version":"9.0.0"}}"#
        ),
    );
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    put(&d, &keys::event(now_ms, "newer"), r#"{"min_reader_version":2,"id":"newer","kind":"witness_joined"}"#);
    put(&d, &keys::event(now_ms, "garbage"), "[1,");

    let list = d.pgdctl(&["list"]).await.expect("pgdctl list reads around unreadable items");
    for shown in ["unreadable record", "zz-newer", "zz-garbage", "readers of record format 2"] {
        assert!(list.contains(shown), "pgdctl list must show {shown:?}:\n{list}");
    }
    d.pgdctl(&["history"]).await.expect("pgdctl history skips unreadable entries");
    d.pgdctl(&["events", "--since", "3600"]).await.expect("pgdctl events skips unreadable events");
    let v = d.view().await.unwrap();
    assert_eq!(v.unreadable.len(), 3, "{:?}", v.unreadable);

    // Acknowledged writes, replicated; then the primary's host dies.
    d.pg.sql("pg-1", "INSERT INTO upgrade_rows SELECT generate_series(101, 200)").unwrap();
    d.wait_replayed("pg-1", Duration::from_secs(30)).await.unwrap();
    d.crash("pg-1").unwrap();
    let killed = Instant::now();
    let p = loop {
        if let Ok(v) = d.view().await {
            if let Some(n) = v.healthy_primary(1).map(str::to_string).filter(|n| n != "pg-1") {
                if d.writable() == vec![n.clone()] {
                    break n;
                }
            }
        }
        assert!(killed.elapsed() < Duration::from_secs(60), "no failover within 60 s\n{}", d.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("failover with newer and unreadable records present: pg-1 -> {p} in {:.1} s", killed.elapsed().as_secs_f64());
    assert_eq!(rows(&d, &p), 200, "the failover lost acknowledged rows");
    // The coordinator records the failover with its version once it has seen the promotion.
    let recorded = format!("coordinator {})", pgdaemon_core::VERSION);
    loop {
        let history = d.pgdctl(&["history"]).await.unwrap();
        if history.contains(&recorded) {
            break;
        }
        assert!(killed.elapsed() < Duration::from_secs(90), "no history entry naming {recorded:?}:\n{history}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The release before the record contract and the authenticated agent API (docs/upgrading.md
/// "From ab631ed"): the drill's agents start on it.
const PREVIOUS_RELEASE: &str = "ab631ed18cf46b2dadcf4bcf8e69cfd9cea908ee";

async fn term(d: &Drill) -> u64 {
    d.view().await.unwrap().cluster.expect("cluster record").term
}

fn members(d: &Drill) -> Vec<(String, u16)> {
    d.pg.nodes().iter().map(|n| (n.name.clone(), n.port)).collect()
}

/// Waits until `n` heartbeats as a streaming replica from an agent of `version`.
async fn wait_replica_on(d: &Drill, n: &str, version: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(v) = d.view().await {
            let m = v.members.get(n);
            if m.is_some_and(|m| m.agent_version == version && m.role == Role::Replica && m.streaming && m.pg_running) {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{n} not streaming on agent {version} within 90 s\n{}", d.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the primary has a recorded synchronous standby for the current term: only then
/// is every acknowledged commit on a member the coordinator may promote (a degraded term is never
/// failed over automatically, docs/synchronous-mode.md).
async fn wait_synchronous(d: &Drill) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c = d.view().await.unwrap().cluster.unwrap();
        if c.sync.as_ref().is_some_and(|s| s.term == c.term && !s.degraded && !s.members.is_empty()) {
            return;
        }
        assert!(Instant::now() < deadline, "no synchronous standby recorded within 60 s: {:?}\n{}", c.sync, d.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Upgrades a replica's agent as docs/upgrading.md says, and checks it caused no failover.
async fn upgrade_replica(d: &mut Drill, n: &str, new: &AgentBuild) {
    let (before, primary) = {
        let c = d.view().await.unwrap().cluster.unwrap();
        (c.term, c.primary)
    };
    assert_ne!(primary.as_deref(), Some(n), "upgrade {n} only as a replica");
    d.replace_agent(n, new).unwrap();
    wait_replica_on(d, n, pgdaemon_core::VERSION).await;
    let c = d.view().await.unwrap().cluster.unwrap();
    assert_eq!((c.term, &c.primary), (before, &primary), "upgrading {n}'s agent changed the primary");
}

/// The drill of issue 14 on one store: three members on the previous release, synchronous mode
/// (an acknowledged commit must survive a failover), a client recording every acknowledged write.
/// One replica is upgraded, the primary's host dies while versions are mixed (the promoted member
/// may run either version), the dead host comes back on the old release, then the rest is
/// upgraded in the documented order: replicas first, then a switchover away from an old primary
/// before its agent is upgraded. Returns the failover time.
async fn rolling_upgrade(backend: Backend, name: &str, old: &AgentBuild, new: &AgentBuild) -> Duration {
    let mut d = Drill::start_with(backend, name, old, &["synchronous_mode=on"]).await.expect("cluster up on the old release");
    let v = d.view().await.unwrap();
    let old_version = v.members["pg-1"].agent_version.clone();
    assert!(
        v.members.values().all(|m| m.agent_version == old_version && old_version != pgdaemon_core::VERSION),
        "the old release must report another version: {:?}",
        v.members
    );
    let term0 = term(&d).await;
    wait_synchronous(&d).await;
    let writer = Writer::start(members(&d), "pg-1", "rolling_writes", Duration::from_secs(600)).await.unwrap();
    let mut switchovers = 0;

    upgrade_replica(&mut d, "pg-3", new).await;
    let list = d.pgdctl(&["list"]).await.unwrap();
    assert!(list.contains("WARNING: mixed agent versions"), "{list}");

    // The primary's host dies while pg-1 and pg-2 run the old agent and pg-3 the new one.
    wait_synchronous(&d).await;
    d.crash("pg-1").unwrap();
    let killed = Instant::now();
    let p = loop {
        if let Ok(v) = d.view().await {
            let c = v.cluster.unwrap();
            if let Some(p) = c.primary.filter(|p| p != "pg-1" && c.transition.is_none()) {
                if d.writable() == vec![p.clone()] {
                    break p;
                }
            }
        }
        assert!(killed.elapsed() < Duration::from_secs(90), "no failover within 90 s with mixed versions\n{}", d.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let failover = killed.elapsed();
    eprintln!("[{backend:?}] mixed versions: pg-1 died, {p} writable after {:.1} s", failover.as_secs_f64());
    // The host comes back with its old agent, which rejoins it as a replica.
    d.start_agent("pg-1").unwrap();
    wait_replica_on(&d, "pg-1", &old_version).await;

    // The rest, replicas first; an old primary is switched away from before its agent stops.
    let on_old = |v: &pgdaemon_core::ClusterView| -> Vec<String> {
        v.members.values().filter(|m| m.agent_version == old_version).map(|m| m.name.clone()).collect()
    };
    for n in on_old(&d.view().await.unwrap()).into_iter().filter(|n| *n != p) {
        upgrade_replica(&mut d, &n, new).await;
    }
    if on_old(&d.view().await.unwrap()).contains(&p) {
        d.pgdctl(&["switchover", "--timeout", "60"]).await.expect("switchover away from the old primary");
        switchovers += 1;
        d.wait_healthy(2, Duration::from_secs(60)).await.unwrap();
        upgrade_replica(&mut d, &p, new).await;
    }
    let primary = d.wait_healthy(2, Duration::from_secs(60)).await.unwrap();
    let list = d.pgdctl(&["list"]).await.unwrap();
    assert!(!list.contains("mixed agent versions"), "every member upgraded:\n{list}");

    let report = writer.stop().await.unwrap();
    let lost = writer::missing(d.pg.node(&primary).port, "rolling_writes", &report.acknowledged).await.unwrap();
    eprintln!(
        "[{backend:?}] writes acknowledged {}, failed attempts {}, longest write gap {:.1} s, lost {}",
        report.acknowledged.len(),
        report.failed,
        report.longest_gap.as_secs_f64(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    // One failover (the crash), the switchovers asked for, and nothing else.
    let history = d.store.read_history(&d.cluster).await.unwrap();
    let since: Vec<_> = history.iter().filter(|h| h.term > term0).collect();
    let failovers = since.iter().filter(|h| h.kind == TransitionKind::Failover).count();
    assert_eq!(failovers, 1, "the upgrade itself caused a failover: {since:#?}");
    assert_eq!(since.len(), 1 + switchovers, "{since:#?}");
    assert_eq!(term(&d).await, term0 + 1 + switchovers as u64, "every term change is accounted for");
    failover
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_upgrade_from_the_previous_release_on_etcd_and_dynamodb() {
    if !pgdaemon_testkit::postgres::postgres_available() {
        eprintln!("PostgreSQL 15 not installed: drill skipped");
        return;
    }
    let old = AgentBuild::from_commit(PREVIOUS_RELEASE).expect("the previous release's agent");
    let new = AgentBuild::current().unwrap();
    for (backend, name) in [(Backend::Etcd, "roll-etcd"), (Backend::Dynamodb, "roll-ddb")] {
        let t = rolling_upgrade(backend, name, &old, &new).await;
        eprintln!("[{backend:?}] rolling upgrade done; failover with mixed versions {:.1} s", t.as_secs_f64());
    }
}
