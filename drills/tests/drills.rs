//! Failure drills on real Postgres with real agent processes, once on etcd and once on DynamoDB
//! (moto). Each test runs its drills in sequence on one cluster (setting up a cluster is the
//! expensive part): replica loss and return, planned switchover with zero lost rows, pause ->
//! kill primary -> no failover -> resume -> failover, rejoin through pg_rewind, unplanned
//! failover (kill -9 of the primary's postmaster and agent), and kill -9 of the primary's agent
//! alone (fencing must stop its Postgres: never two writable primaries), kill -9 of the primary's
//! postmaster alone (restart in place), and of an unrestartable one (hand-over). Each drill
//! prints how long it took.

use std::time::{Duration, Instant};

use pgdaemon_core::LeaseName;
use pgdaemon_drills::{Backend, Drill};

/// Prints how long the drill that began at `*since` took and starts the next one's clock.
fn lap(backend: Backend, what: &str, since: &mut Instant) {
    eprintln!("[{backend:?}] {what}: {:.1} s", since.elapsed().as_secs_f64());
    *since = Instant::now();
}

fn rows(d: &Drill, member: &str) -> i64 {
    d.pg.sql(member, "SELECT count(*) FROM drill_rows").unwrap().parse().unwrap()
}

/// Waits up to 60 s for a healthy primary (other than `not`) that is the only member accepting
/// writes, asserting at every poll that no two members accept writes.
async fn sole_writable(d: &Drill, not: Option<&str>, after: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let w = d.writable();
        assert!(w.len() <= 1, "two writable primaries: {w:?}\n{}", d.logs());
        if let Ok(v) = d.view().await {
            if let Some(n) = v.healthy_primary(1).filter(|n| Some(*n) != not) {
                if w == [n] {
                    return n.to_string();
                }
            }
        }
        assert!(Instant::now() < deadline, "no sole writable primary within 60 s of {after}\n{}", d.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn drills(backend: Backend, name: &str) {
    if !pgdaemon_testkit::postgres::postgres_available() {
        eprintln!("PostgreSQL 15 not installed: drill skipped");
        return;
    }
    let mut t = Instant::now();
    let mut d = Drill::start(backend, name).await.expect("cluster up");
    lap(backend, "cluster up (3 nodes streaming)", &mut t);
    // The hosted coordinators' lock lease is the cluster record's lease_ms (3 s here), not the
    // agents' local default (10 s).
    let lock =
        d.store.read_lease(&d.cluster, LeaseName::Coordinator).await.unwrap().expect("a hosted coordinator holds the lock");
    assert_eq!(lock.lease_ms, 3000, "coordinator lock: {lock:?}");
    d.pg.sql("pg-1", "CREATE TABLE drill_rows (id int PRIMARY KEY)").unwrap();
    d.pg.sql("pg-1", "INSERT INTO drill_rows SELECT generate_series(1, 100)").unwrap();

    // 1. Replica loss and return: the primary stays; the replica rejoins by itself.
    d.crash("pg-2").unwrap();
    // A fixed window, longer than a 3 s lease, in which no failover may happen.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let v = d.view().await.unwrap();
    assert_eq!(v.cluster.as_ref().unwrap().primary.as_deref(), Some("pg-1"), "losing a replica must not fail over");
    d.pg.sql("pg-1", "INSERT INTO drill_rows SELECT generate_series(101, 200)").unwrap();
    d.start_agent("pg-2").unwrap();
    assert_eq!(d.wait_healthy(2, Duration::from_secs(60)).await.unwrap(), "pg-1");
    lap(backend, "1 replica loss and return", &mut t);

    // 2. Planned switchover under writes: zero lost rows.
    // A member just restarted may look stale (or still report Postgres down from its first
    // loop) to the coordinator for a beat on a loaded machine: the refusal says so, and a retry
    // is what an operator would do.
    let mut out = d.pgdctl(&["switchover", "--candidate", "pg-2", "--timeout", "60"]).await;
    for _ in 0..5 {
        match &out {
            Err(e) if e.exit_code() == 1 && ["stale", "not running"].iter().any(|m| e.to_string().contains(m)) => {
                tokio::time::sleep(Duration::from_secs(2)).await;
                out = d.pgdctl(&["switchover", "--candidate", "pg-2", "--timeout", "60"]).await;
            }
            _ => break,
        }
    }
    assert!(out.is_ok(), "switchover: {out:?}\n{}", d.logs());
    assert_eq!(d.wait_healthy(1, Duration::from_secs(60)).await.unwrap(), "pg-2");
    assert_eq!(rows(&d, "pg-2"), 200, "switchover lost rows");
    assert_eq!(d.writable(), vec!["pg-2".to_string()]);
    d.wait_healthy(2, Duration::from_secs(60)).await.unwrap();
    lap(backend, "2 planned switchover", &mut t);

    // 3. Pause -> kill the primary -> no automatic failover -> resume -> failover.
    let out = d.pgdctl(&["pause", "--timeout", "30"]).await;
    assert!(out.is_ok(), "pause: {out:?}");
    d.crash("pg-2").unwrap();
    // A fixed window, more than two 3 s leases, in which the paused cluster must not fail over.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let v = d.view().await.unwrap();
    let r = v.cluster.as_ref().unwrap();
    assert!(r.paused && r.primary.as_deref() == Some("pg-2") && r.transition.is_none(), "paused cluster failed over: {r:?}");
    let out = d.pgdctl(&["resume", "--timeout", "30"]).await;
    assert!(out.is_ok(), "resume: {out:?}");
    let p = d.wait_healthy(1, Duration::from_secs(60)).await.unwrap();
    assert_ne!(p, "pg-2");
    assert_eq!(rows(&d, &p), 200, "failover lost rows that were replicated");
    lap(backend, "3 pause, kill primary, resume, failover", &mut t);

    // 4. The old primary rejoins through pg_rewind once its agent is back.
    d.start_agent("pg-2").unwrap();
    let p = d.wait_healthy(2, Duration::from_secs(90)).await.unwrap();
    lap(backend, "4 old primary rejoins (pg_rewind)", &mut t);

    // 5. Unplanned failover: kill -9 of the primary's postmaster and agent (a host crash). A
    // replica takes over with every row it had; the old node then rejoins.
    d.pg.sql(&p, "INSERT INTO drill_rows SELECT generate_series(201, 250)").unwrap();
    let old = p.clone();
    d.wait_replayed(&old, Duration::from_secs(30)).await.unwrap();
    d.crash(&old).unwrap();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(60);
    let p = loop {
        if let Ok(v) = d.view().await {
            if let Some(n) = v.healthy_primary(1).map(str::to_string).filter(|n| *n != old) {
                if d.writable() == vec![n.clone()] {
                    break n;
                }
            }
        }
        assert!(Instant::now() < deadline, "no failover within 60 s of the crash\n{}", d.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("[{backend:?}] unplanned failover: {old} -> {p}, writable after {:.1} s", killed.elapsed().as_secs_f64());
    assert_eq!(rows(&d, &p), 250, "unplanned failover lost replicated rows");
    d.start_agent(&old).unwrap();
    let p = d.wait_healthy(2, Duration::from_secs(90)).await.unwrap();
    lap(backend, "5 unplanned failover and rejoin", &mut t);

    // 6. kill -9 of the primary's agent only: its Postgres keeps running until fenced; at no
    // moment may two members accept writes.
    d.pg.sql(&p, "INSERT INTO drill_rows SELECT generate_series(251, 300)").unwrap();
    d.wait_replayed(&p, Duration::from_secs(30)).await.unwrap();
    d.kill_agent(&p);
    let new = sole_writable(&d, Some(&p), "the agent kill").await;
    assert!(d.pg.pid(&p).is_none(), "the old primary's Postgres must have been fenced (stopped)");
    assert_eq!(rows(&d, &new), 300);
    let history = d.pgdctl(&["history"]).await.unwrap();
    assert!(history.lines().count() >= 5, "{history}");
    lap(backend, "6 agent-only kill, fencing, failover", &mut t);

    // 7. kill -9 of the primary's postmaster only (its agent lives): the agent restarts it in
    // place, or hands its lease over when it cannot (docs/design.md section 4); either way a
    // writable primary soon, never two, every replicated row.
    d.start_agent(&p).unwrap();
    d.wait_healthy(2, Duration::from_secs(90)).await.unwrap();
    d.pg.sql(&new, "INSERT INTO drill_rows SELECT generate_series(301, 350)").unwrap();
    d.wait_replayed(&new, Duration::from_secs(30)).await.unwrap();
    let term = d.view().await.unwrap().cluster.unwrap().term;
    d.pg.kill9(&new).unwrap();
    let killed = Instant::now();
    let serving = sole_writable(&d, None, "the postmaster kill").await;
    let after = d.view().await.unwrap().cluster.unwrap().term;
    let how = if serving == new && after == term { "restarted in place" } else { "handed over" };
    eprintln!(
        "[{backend:?}] postmaster-only kill of {new}: {how}, {serving} writable after {:.1} s",
        killed.elapsed().as_secs_f64()
    );
    assert_eq!(rows(&d, &serving), 350);
    lap(backend, "7 postmaster-only kill", &mut t);

    // 8. The same, but Postgres cannot start again (its pg_control unreadable): the agent stops
    // renewing its lease and a replica is promoted once it runs out; the node rejoins when fixed.
    d.wait_healthy(2, Duration::from_secs(90)).await.unwrap();
    d.pg.sql(&serving, "INSERT INTO drill_rows SELECT generate_series(351, 400)").unwrap();
    d.wait_replayed(&serving, Duration::from_secs(30)).await.unwrap();
    let control = d.pg.node(&serving).data_dir.join("global/pg_control");
    let chmod = |mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&control, std::fs::Permissions::from_mode(mode))
            .unwrap_or_else(|e| panic!("chmod {mode:o} {}: {e}\n{}", control.display(), d.logs()))
    };
    chmod(0o000);
    d.pg.kill9(&serving).unwrap();
    let killed = Instant::now();
    let successor = sole_writable(&d, Some(&serving), "the kill of an unrestartable primary").await;
    eprintln!("[{backend:?}] unrestartable {serving}: {successor} writable after {:.1} s", killed.elapsed().as_secs_f64());
    assert_eq!(rows(&d, &successor), 400);
    // Repaired, unless its agent already re-cloned it (pg_rewind cannot read the damaged
    // pg_control either, so the rejoin may fall back to a basebackup that replaces the file).
    use std::os::unix::fs::PermissionsExt;
    if std::fs::metadata(&control).is_ok_and(|m| m.permissions().mode() & 0o777 == 0) {
        chmod(0o600);
    }
    d.wait_healthy(2, Duration::from_secs(90)).await.unwrap();
    lap(backend, "8 unrestartable primary hands over", &mut t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_on_etcd() {
    drills(Backend::Etcd, "drill-etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_on_dynamodb() {
    drills(Backend::Dynamodb, "drill-ddb").await;
}
