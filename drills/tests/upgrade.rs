//! Rolling-upgrade drill (docs/upgrading.md), the cheaper form: into a running three-node cluster
//! on etcd, write the items a newer pgdaemon (or a broken writer) would leave behind - every
//! member's heartbeat with an unknown field and a newer format, history and event items of a
//! newer coordinator, a member item of a newer agent for newer readers only, garbage, and the
//! issue's `{"name":"zz","future_field":1}` - then kill -9 the primary and check a failover still
//! happens with no acknowledged row lost, and that `pgdctl list` shows the unreadable items.

use std::process::Command;
use std::time::{Duration, Instant};

use pgdaemon_core::{keys, StoreConfig};
use pgdaemon_drills::{Backend, Drill};

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
