//! Day-2 operations on real Postgres with real agent processes, once on etcd and once on DynamoDB
//! (moto), on one cluster each: cluster-wide parameters (a reloadable one applies everywhere, a
//! restart-only one shows as pending), a rolling `restart --all --pending` under a recording
//! client (no acknowledged write lost, exactly the one planned switchover), `reload`, bad
//! arguments refused with nothing changed, the primary's agent restarted while paused (same
//! primary, no write refused), `reinit` of a replica, and `remove` of a stopped member (heartbeat, state and
//! replication slot gone).

use std::time::{Duration, Instant};

use pgdaemon_drills::writer::{self, Writer};
use pgdaemon_drills::{Backend, Drill};

fn setting(d: &Drill, member: &str, name: &str) -> String {
    d.pg.try_sql(member, &format!("SHOW {name}")).unwrap_or_default().trim().to_string()
}

/// Waits up to `secs` for `check` to hold, polling every 200 ms.
async fn wait_for(d: &Drill, secs: u64, what: &str, mut check: impl AsyncFnMut(&Drill) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check(d).await {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s\n{}", d.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn day2(backend: Backend, name: &str) {
    if !pgdaemon_testkit::postgres::postgres_available() {
        eprintln!("PostgreSQL 15 not installed: drill skipped");
        return;
    }
    let mut d = Drill::start(backend, name).await.expect("cluster up");
    let token = d.api_token_file().display().to_string();
    let ctl = |args: &[&str]| {
        let mut all = vec!["--api-token-file", token.as_str()];
        all.extend_from_slice(args);
        all.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let run = async |d: &Drill, args: &[&str]| {
        let args = ctl(args);
        d.pgdctl(&args.iter().map(String::as_str).collect::<Vec<_>>()).await
    };
    let members = ["pg-1", "pg-2", "pg-3"];

    // Bad input is refused with a usage error and changes nothing.
    for bad in [
        vec!["edit-config", "--set", "postgresql.parameters.work_mme=1MB"],
        vec!["edit-config", "--set", "postgresql.parameters.primary_conninfo=host=x"],
        vec!["restart", "pg-9", "--force"],
        vec!["remove", "pg-9", "--force"],
    ] {
        let e = run(&d, &bad).await.unwrap_err();
        assert_eq!(e.exit_code(), 2, "{bad:?}: {e}");
    }
    assert!(d.view().await.unwrap().parameters.is_none(), "nothing written");
    let e = run(&d, &["remove", "pg-1", "--force"]).await.unwrap_err();
    assert!(e.exit_code() == 1 && e.to_string().contains("primary"), "{e}");

    // A reloadable and a restart-only parameter, cluster-wide.
    let out = run(
        &d,
        &[
            "edit-config",
            "--set",
            "postgresql.parameters.log_min_duration_statement=250",
            "--set",
            "postgresql.parameters.max_locks_per_transaction=128",
        ],
    )
    .await
    .unwrap();
    assert!(out.contains("max_locks_per_transaction: - -> 128 (takes effect after a restart"), "{out}");
    let t = Instant::now();
    wait_for(&d, 30, "reloadable parameter on every member", async |d| {
        members.iter().all(|m| setting(d, m, "log_min_duration_statement") == "250ms")
    })
    .await;
    eprintln!("[{backend:?}] edit-config -> applied on every member: {:.1} s", t.elapsed().as_secs_f64());
    wait_for(&d, 30, "pending restart reported by every member", async |d| {
        let v = d.view().await.unwrap();
        members.iter().all(|m| v.states.get(*m).is_some_and(|s| s.pending_restart == ["max_locks_per_transaction"]))
    })
    .await;
    let list = run(&d, &["list"]).await.unwrap();
    assert!(list.contains("pending restart (max_locks_per_transaction)"), "{list}");
    assert_eq!(setting(&d, "pg-2", "max_locks_per_transaction"), "64");

    // A rolling restart of the pending members under writes.
    let primary = d.wait_healthy(2, Duration::from_secs(30)).await.unwrap();
    let terms_before = d.store.read_history(&d.cluster).await.unwrap().len();
    let w = Writer::start(d.members(), &primary, "day2_writes", Duration::from_secs(300)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    let out = run(&d, &["restart", "--all", "--pending", "--force", "--timeout", "90"])
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    let took = t.elapsed();
    let new_primary = d.wait_healthy(2, Duration::from_secs(60)).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = w.stop().await.unwrap();
    eprintln!(
        "[{backend:?}] rolling restart of 3 members: {:.1} s; writes acknowledged {}, failed {}, longest gap {:.2} s\n{out}",
        took.as_secs_f64(),
        report.acknowledged.len(),
        report.failed,
        report.longest_gap.as_secs_f64()
    );
    assert_ne!(new_primary, primary, "the primary restarted through a switchover");
    assert_eq!(d.store.read_history(&d.cluster).await.unwrap().len(), terms_before + 1, "exactly one planned switchover");
    let lost = writer::missing(d.pg.node(&new_primary).port, "day2_writes", &report.acknowledged).await.unwrap();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
    for m in members {
        assert_eq!(setting(&d, m, "max_locks_per_transaction"), "128", "{m}");
    }
    wait_for(&d, 30, "pending restarts cleared", async |d| {
        let v = d.view().await.unwrap();
        members.iter().all(|m| v.states.get(*m).is_some_and(|s| s.pending_restart.is_empty()))
    })
    .await;

    // The primary restarted in place: same primary and term, writes stop only meanwhile.
    let w = Writer::start(d.members(), &new_primary, "in_place_writes", Duration::from_secs(120)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let term = d.view().await.unwrap().cluster.unwrap().term;
    let out = run(&d, &["restart", &new_primary, "--in-place", "--force"]).await.unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let report = w.stop().await.unwrap();
    eprintln!("[{backend:?}] in-place restart of the primary: {out}longest write gap {:.2} s", report.longest_gap.as_secs_f64());
    let record = d.view().await.unwrap().cluster.unwrap();
    assert_eq!((record.primary.as_deref(), record.term), (Some(new_primary.as_str()), term), "no failover");
    assert!(d.pg.try_sql(&new_primary, "INSERT INTO in_place_writes VALUES (-1)").is_ok(), "writable again");

    // Paused, the primary's agent restarts with its Postgres left running: same primary, same
    // term, no write refused.
    run(&d, &["pause"]).await.unwrap();
    let term = d.view().await.unwrap().cluster.unwrap().term;
    let w = Writer::start(d.members(), &new_primary, "paused_writes", Duration::from_secs(120)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    d.stop_agent(&new_primary).unwrap();
    assert_eq!(d.writable(), std::slice::from_ref(&new_primary), "still the one writable member with its agent stopped");
    tokio::time::sleep(Duration::from_secs(1)).await;
    d.start_agent(&new_primary).unwrap();
    wait_for(&d, 30, "the restarted agent holds the lease again", async |d| {
        let v = d.view().await.unwrap();
        v.leader.as_ref().is_some_and(|l| l.owner == new_primary && !l.released && l.term == term)
            && v.members.get(&new_primary).is_some_and(|m| m.seq > 0 && m.pg_running)
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = w.stop().await.unwrap();
    assert_eq!(report.failed, 0, "no write refused while paused (longest gap {:?})", report.longest_gap);
    let v = d.view().await.unwrap();
    let record = v.cluster.unwrap();
    assert_eq!((record.primary.as_deref(), record.term), (Some(new_primary.as_str()), term), "no failover");
    run(&d, &["resume"]).await.unwrap();
    assert_eq!(d.wait_healthy(2, Duration::from_secs(30)).await.unwrap(), new_primary);

    // Reload everywhere; the read-only verbs.
    let out = run(&d, &["reload"]).await.unwrap();
    assert_eq!(out.matches("reloaded").count(), 3, "{out}");
    let topology = run(&d, &["topology"]).await.unwrap();
    assert!(topology.starts_with(&format!("{new_primary} (primary")) && topology.matches("streaming").count() == 2, "{topology}");
    let nodes: serde_json::Value = serde_json::from_str(&run(&d, &["topology", "--format", "json"]).await.unwrap()).unwrap();
    assert_eq!(nodes.as_array().unwrap().iter().filter(|n| n["upstream"] == new_primary.as_str()).count(), 2, "{nodes}");
    let yaml = run(&d, &["list", "--format", "yaml"]).await.unwrap();
    assert!(yaml.contains("members:") && !yaml.contains("pending_restart"), "nothing pending: {yaml}");
    let versions = run(&d, &["version"]).await.unwrap();
    assert!(versions.lines().count() == 4 && versions.contains("pg-3: pgdaemon-agent"), "{versions}");
    assert_eq!(versions.matches("PostgreSQL 15.").count(), 3, "{versions}");

    // Reinit: refused on the primary; a replica's data directory is replaced and it streams.
    let gone = members.iter().find(|m| **m != new_primary).unwrap().to_string();
    let e = run(&d, &["reinit", &new_primary, "--force"]).await.unwrap_err();
    assert!(e.exit_code() == 1 && e.to_string().contains("primary"), "{e}");
    let marker = d.pg.node(&gone).data_dir.join("left-before-reinit");
    std::fs::write(&marker, "x").unwrap();
    let t = Instant::now();
    let out = run(&d, &["reinit", &gone, "--force"]).await.unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    eprintln!("[{backend:?}] reinit of {gone}: {:.1} s", t.elapsed().as_secs_f64());
    assert!(out.contains("re-cloned and streaming") && !marker.exists(), "{out}");
    assert_eq!(setting(&d, &gone, "max_locks_per_transaction"), "128", "the copy keeps the cluster-wide parameters");

    // Remove a replica: refused while its agent runs; once stopped, its items and slot go.
    let e = run(&d, &["remove", &gone, "--force"]).await.unwrap_err();
    assert!(e.exit_code() == 1 && e.to_string().contains("still beating"), "{e}");
    d.kill_agent(&gone);
    d.pg.stop(&gone).unwrap();
    let out = run(&d, &["remove", &gone, "--force"]).await.unwrap_or_else(|e| panic!("{e}\n{}", d.logs()));
    assert!(out.contains("ok: dropped slot"), "{out}");
    let v = d.view().await.unwrap();
    assert!(!v.members.contains_key(&gone) && !v.states.contains_key(&gone));
    let slots = d.pg.sql(&new_primary, "SELECT string_agg(slot_name, ',') FROM pg_replication_slots").unwrap();
    assert!(!slots.contains(&gone.replace('-', "_")), "slot dropped: {slots}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn day2_operations_on_etcd() {
    day2(Backend::Etcd, "day2-etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn day2_operations_on_dynamodb() {
    day2(Backend::Dynamodb, "day2-ddb").await;
}
