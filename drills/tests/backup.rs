//! Backups, the WAL archive and point-in-time recovery (docs/backups.md) on real Postgres, real
//! agent processes, etcd, and barman-cloud against moto server's S3, under a client that records
//! every acknowledged commit: three base backups around two failovers with retention keeping two,
//! a replica re-cloned from the newest backup, a new cluster restored to the end of the archive
//! (every acknowledged commit present, the timelines continued), another restored to a recorded
//! time (exactly the commits before it), then the bucket made unreachable: archiving fails loudly
//! (member state, `pgdctl list`, event, metric) while the primary keeps writing and a third
//! failover completes, and archiving recovers once the bucket answers again.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use pgdaemon_core::events::EventKind;
use pgdaemon_drills::writer::Writer;
use pgdaemon_drills::{AgentBuild, Backend, Drill};
use pgdaemon_testkit::engines::MotoServer;

const BUCKET: &str = "pgd-drill-backups";

/// One plain HTTP/1.1 request on loopback; the status line and body.
fn http(port: u16, method: &str, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

async fn wait_for(what: &str, secs: u64, logs: impl Fn() -> String, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check().await {
        assert!(Instant::now() < deadline, "{what}: not within {secs} s\n{}", logs());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn sql(d: &Drill, member: &str, q: &str) -> String {
    d.pg.sql(member, q).unwrap_or_else(|e| panic!("{member}: {q}: {e}")).trim().to_string()
}

async fn pgdctl(d: &Drill, args: &[&str]) -> String {
    let token = d.api_token_file().display().to_string();
    let mut all = vec!["--api-token-file", token.as_str()];
    all.extend_from_slice(args);
    d.pgdctl(&all).await.unwrap_or_else(|e| panic!("pgdctl {args:?}: {e}\n{}", d.logs()))
}

/// Kills the primary's host (agent and postmaster), waits for another member to lead, and
/// brings the old one back as a replica.
async fn fail_over(d: &mut Drill, primary: &str) -> String {
    let t = Instant::now();
    d.crash(primary).unwrap();
    let new = loop {
        if let Ok(v) = d.view().await {
            if let Some(p) = v.healthy_primary(1).filter(|p| *p != primary) {
                break p.to_string();
            }
        }
        assert!(t.elapsed() < Duration::from_secs(60), "no failover from {primary}\n{}", d.logs());
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("failover {primary} -> {new}: {:.1} s", t.elapsed().as_secs_f64());
    d.start_agent(primary).unwrap();
    d.wait_healthy(2, Duration::from_secs(120)).await.unwrap();
    new
}

fn backup_ids(list: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(list).unwrap_or_else(|e| panic!("{e}: {list}"));
    v.as_array().unwrap().iter().map(|b| b["backup_id"].as_str().unwrap().to_string()).collect()
}

/// A new cluster restored from `source`'s archive (`pgdctl restore`), with `members` started.
/// `lock_s` bounds the restore ([bootstrap] lock_s).
async fn restored(name: &str, archive: &str, source: &str, target: &[&str], members: &[&str], lock_s: u64) -> Drill {
    let mut d = Drill::prepare_empty(Backend::Etcd, name, archive, lock_s).await.unwrap();
    let mut args = vec!["restore", "--from", source];
    args.extend_from_slice(target);
    let out = pgdctl(&d, &args).await;
    assert!(out.contains(&format!("will be restored from {source}")), "{out}");
    for m in members {
        d.start_agent(m).unwrap();
    }
    d
}

/// A moto S3 server with the drills' bucket, and the `[archive]` section pointing at it
/// (`extra`: more keys of that section).
fn s3_archive(extra: &str) -> (MotoServer, String) {
    assert!(
        std::process::Command::new("barman-cloud-backup").arg("--version").output().is_ok_and(|o| o.status.success()),
        "barman-cloud is not installed (Debian's barman-cli-cloud): run scripts/setup"
    );
    // The agents (and the barman-cloud they run) inherit these; moto takes any credentials.
    for (k, v) in [("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_DEFAULT_REGION", "us-east-1")] {
        std::env::set_var(k, v);
    }
    let s3 = MotoServer::start().unwrap();
    let port: u16 = s3.endpoint().rsplit(':').next().unwrap().parse().unwrap();
    assert!(http(port, "PUT", &format!("/{BUCKET}")).starts_with("HTTP/1.1 200"), "bucket created");
    let archive = format!(
        "[archive]\ndestination = \"s3://{BUCKET}/pg\"\nendpoint_url = \"{}\"\n\
         create_replica_methods = [\"backup\", \"basebackup\"]\ncheck_interval_s = 1\n{extra}",
        s3.endpoint()
    );
    (s3, archive)
}

/// A drill whose members archive; pg-1, started before its agent, restarted to archive too.
async fn archiving_drill(name: &str, archive: &str) -> (Drill, String) {
    let d = Drill::start_configured(Backend::Etcd, name, &AgentBuild::current().unwrap(), &[], archive).await.unwrap();
    // pg-1 was started before its agent (Drill::start): the archive settings apply from its
    // next start, and until then its agent says archiving is off there.
    wait_for(
        "archiving reported inactive on pg-1",
        30,
        || d.logs(),
        async || d.view().await.is_ok_and(|v| v.states.get("pg-1").and_then(|s| s.archive.as_ref()).is_some_and(|a| a.inactive)),
    )
    .await;
    pgdctl(&d, &["restart", "pg-1", "--in-place", "--force"]).await;
    assert_eq!(sql(&d, "pg-1", "SHOW archive_mode"), "always");
    let primary = d.wait_healthy(2, Duration::from_secs(60)).await.unwrap();
    (d, primary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backups_failovers_and_point_in_time_restores() {
    if !pgdaemon_testkit::postgres::postgres_available() {
        eprintln!("PostgreSQL 15 not installed: drill skipped");
        return;
    }
    // Short bounds: the unreachable bucket below fails each archive command within 5 s.
    let (s3, archive) = s3_archive("command_timeout_s = 5\narchive_timeout_s = 10\n");
    let (mut d, mut primary) = archiving_drill("backup", &archive).await;
    let source = d.cluster.clone();
    let w = Writer::start(d.members(), &primary, "bk_writes", Duration::from_secs(600)).await.unwrap();

    // Bad input changes nothing.
    for bad in [vec!["backup-policy", "--schedule-interval-s", "5"], vec!["restore", "--from", &source]] {
        let e = d.pgdctl(&bad).await.unwrap_err();
        assert!(matches!(e.exit_code(), 1 | 2), "{bad:?}: {e}");
    }
    assert!(d.view().await.unwrap().backup.is_none(), "nothing written");
    pgdctl(&d, &["backup-policy", "--retention-count", "2"]).await;

    // Backup A, from a replica.
    let out = pgdctl(&d, &["backup"]).await;
    eprintln!("{out}");
    assert!(out.starts_with("ok: backup") && !out.contains(&format!("taken on {primary} ")), "from a replica: {out}");
    primary = fail_over(&mut d, &primary).await;
    pgdctl(&d, &["backup"]).await; // B

    // Commits 1..=20, the recorded time, then 21..=40.
    sql(&d, &primary, "CREATE TABLE pitr (id int PRIMARY KEY)");
    for i in 1..=20 {
        sql(&d, &primary, &format!("INSERT INTO pitr VALUES ({i})"));
    }
    let target = sql(&d, &primary, "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for i in 21..=40 {
        sql(&d, &primary, &format!("INSERT INTO pitr VALUES ({i})"));
    }
    primary = fail_over(&mut d, &primary).await;

    // Backup C: retention (2) deletes A and the WAL only it needed.
    let before = backup_ids(&pgdctl(&d, &["backups", "--format", "json"]).await);
    assert_eq!(before.len(), 2, "{before:?}");
    pgdctl(&d, &["backup"]).await;
    let after = backup_ids(&pgdctl(&d, &["backups", "--format", "json"]).await);
    assert_eq!(after.len(), 2, "retention keeps two: {after:?}");
    assert!(!after.contains(&before[0]) && after.contains(&before[1]), "the oldest went: {before:?} -> {after:?}");
    let listing = pgdctl(&d, &["backups"]).await;
    assert!(listing.contains("BACKUP ID") && listing.contains("DONE"), "{listing}");
    // From here a backup is due a minute after the newest: checked at the end.
    pgdctl(&d, &["backup-policy", "--schedule-interval-s", "60"]).await;

    // A replica re-cloned from the newest backup and the archive streams again.
    let v = d.view().await.unwrap();
    let replica = v.members.keys().find(|m| **m != primary).unwrap().clone();
    pgdctl(&d, &["reinit", &replica, "--force", "--timeout", "120"]).await;
    assert!(d.agent_log(&replica).contains("cloned from the newest base backup"), "{}", d.agent_log(&replica));
    // ... and runs without the archive: a restore_command would put S3 on its promotion's path.
    assert_eq!(sql(&d, &replica, "SHOW restore_command"), "");

    // Every acknowledged commit is in an archived segment.
    let report = w.stop().await.unwrap();
    let segment = sql(&d, &primary, "SELECT pg_walfile_name(pg_switch_wal())");
    wait_for(
        "the last segment archived",
        60,
        || d.logs(),
        async || sql(&d, &primary, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver") >= segment,
    )
    .await;
    let timeline: u32 = sql(&d, &primary, "SELECT timeline_id FROM pg_control_checkpoint()").parse().unwrap();
    assert!(timeline >= 3, "two failovers: timeline {timeline}");

    // Restored to the end of the archive: every acknowledged write, the next timeline.
    let t = Instant::now();
    let latest = restored("latest", &archive, &source, &[], &["pg-1", "pg-2", "pg-3"], 180).await;
    let new_primary = latest.wait_healthy(2, Duration::from_secs(240)).await.unwrap();
    eprintln!("restore to the end of the archive, 3 members healthy: {:.1} s", t.elapsed().as_secs_f64());
    // Exactly the source's rows (the restored cluster's pg_hba lets the superuser in on the
    // socket only): the archive lost nothing the cluster kept. The crash failovers themselves may
    // lose the last acknowledged writes (asynchronous replication); that count is printed.
    let ids = |d: &Drill, m: &str| -> BTreeSet<i64> {
        sql(d, m, "SELECT id FROM bk_writes").lines().map(|l| l.trim().parse().unwrap()).collect()
    };
    let (kept, restored_ids) = (ids(&d, &primary), ids(&latest, &new_primary));
    assert!(kept.len() > 100, "the writer wrote through the drill: {}", kept.len());
    assert_eq!(kept.difference(&restored_ids).count(), 0, "rows of the source missing after the restore");
    assert_eq!(restored_ids.difference(&kept).count(), 0, "rows the source does not have");
    let lost_in_failovers = report.acknowledged.iter().filter(|id| !kept.contains(id)).count();
    eprintln!("writer: {} acknowledged, {lost_in_failovers} lost by the two crash failovers", report.acknowledged.len());
    assert_eq!(sql(&latest, &new_primary, "SELECT count(*) FROM pitr"), "40");
    let restored_tl: u32 = sql(&latest, &new_primary, "SELECT timeline_id FROM pg_control_checkpoint()").parse().unwrap();
    assert_eq!(restored_tl, timeline + 1, "the restore continues the source's timelines");
    drop(latest);

    // Restored to the recorded time: exactly the commits before it (from backup B, which
    // retention kept with the WAL after it).
    let t = Instant::now();
    let pitr = restored("pitr", &archive, &source, &["--time", &target], &["pg-1"], 180).await;
    let p = pitr.wait_healthy(0, Duration::from_secs(240)).await.unwrap();
    eprintln!("point-in-time restore, 1 member: {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(sql(&pitr, &p, "SELECT count(*) || ' ' || max(id) FROM pitr"), "20 20");
    drop(pitr);

    // The bucket stops answering: archiving fails loudly, writes and a failover go on.
    s3.freeze();
    for _ in 0..2 {
        sql(
            &d,
            &primary,
            "INSERT INTO pitr VALUES (1000 + (random() * 1e6)::int) ON CONFLICT DO NOTHING; SELECT pg_switch_wal()",
        );
    }
    wait_for(
        "archiving reported failing",
        60,
        || d.logs(),
        async || d.view().await.is_ok_and(|v| v.states.get(&primary).and_then(|s| s.archive.as_ref()).is_some_and(|a| a.failing)),
    )
    .await;
    let list = pgdctl(&d, &["list"]).await;
    assert!(list.contains(&format!("WARNING: {primary}: WAL archiving is failing")), "{list}");
    // /metrics shows what the agent's last loop read back from the store.
    let port = d.api_port(&primary).unwrap();
    wait_for(
        "pgdaemon_archive_failing 1",
        10,
        || d.logs(),
        async || http(port, "GET", "/metrics").lines().any(|l| l.starts_with("pgdaemon_archive_failing{") && l.ends_with(" 1")),
    )
    .await;
    let events = d.store.read_events(&d.cluster, 0).await.unwrap();
    assert!(events.iter().any(|e| e.kind == EventKind::ArchiveFailing && e.member.as_deref() == Some(&primary)));
    assert!(events.iter().filter(|e| e.kind == EventKind::BackupFinished && e.detail.contains("MB")).count() >= 3);
    sql(&d, &primary, "INSERT INTO pitr VALUES (999)");
    let before_failover = primary.clone();
    primary = fail_over(&mut d, &primary).await;
    assert_ne!(primary, before_failover);
    s3.thaw();
    sql(&d, &primary, "SELECT pg_switch_wal()");
    wait_for(
        "archiving recovered",
        90,
        || d.logs(),
        async || d.view().await.is_ok_and(|v| v.states.values().all(|s| s.archive.as_ref().is_none_or(|a| !a.failing))),
    )
    .await;
    let events = d.store.read_events(&d.cluster, 0).await.unwrap();
    assert!(events.iter().any(|e| e.kind == EventKind::ArchiveRecovered));

    // The schedule took a backup by itself (from a replica), once the newest was a minute old.
    wait_for(
        "a scheduled backup",
        120,
        || d.logs(),
        async || {
            let events = d.store.read_events(&d.cluster, 0).await.unwrap_or_default();
            let scheduled = events.iter().find(|e| e.kind == EventKind::BackupStarted && e.detail.contains("(scheduled)"));
            scheduled.is_some_and(|s| {
                events.iter().any(|e| e.kind == EventKind::BackupFinished && e.time_ms >= s.time_ms && e.member == s.member)
            })
        },
    )
    .await;
}

/// `make bench-backup` (not in `make test`): a pgbench database of `BENCH_SCALE` (default 10,
/// about 150 MB), default archive settings, then the time of `pgdctl backup` from a replica, the archive's lag at the
/// default `archive_timeout` (60 s) and with a switch, and a restore to one new member.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn bench_backup_and_restore_of_a_sized_database() {
    let scale: u32 = std::env::var("BENCH_SCALE").ok().and_then(|s| s.parse().ok()).unwrap_or(10);
    let (_s3, archive) = s3_archive("");
    let (d, primary) = archiving_drill("bench", &archive).await;
    let port = d.pg.node(&primary).port.to_string();
    let t = Instant::now();
    let out = std::process::Command::new(d.pg.bin_dir().join("pgbench"))
        .args(["-i", "-q", "-s", &scale.to_string(), "-h", "127.0.0.1", "-p", &port, "-U", "postgres", "postgres"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let size_mb: u64 = sql(&d, &primary, "SELECT pg_database_size('postgres') / 1048576").parse().unwrap();
    eprintln!("pgbench -i -s {scale}: {size_mb} MB in {:.1} s", t.elapsed().as_secs_f64());
    d.wait_replayed(&primary, Duration::from_secs(120)).await.unwrap();

    let t = Instant::now();
    let out = pgdctl(&d, &["backup", "--timeout", "1800"]).await;
    let backup_s = t.elapsed().as_secs_f64();
    eprintln!("{out}");

    // Archive lag: a commit, then until the segment holding it is archived by the primary,
    // first left to archive_timeout, then with a switch (the upload alone).
    let archived = async |segment: &str| {
        wait_for(
            "segment archived",
            300,
            || d.logs(),
            async || sql(&d, &primary, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").as_str() >= segment,
        )
        .await
    };
    sql(&d, &primary, "CREATE TABLE lag_probe (at timestamptz)");
    let t = Instant::now();
    let segment = sql(&d, &primary, "INSERT INTO lag_probe VALUES (now()); SELECT pg_walfile_name(pg_current_wal_lsn())");
    archived(&segment).await;
    let timeout_lag = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let segment = sql(&d, &primary, "INSERT INTO lag_probe VALUES (now()); SELECT pg_walfile_name(pg_switch_wal())");
    archived(&segment).await;
    let switch_lag = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let restored = restored("bench-restored", &archive, &d.cluster, &[], &["pg-1"], 3600).await;
    let p = restored.wait_healthy(0, Duration::from_secs(3600)).await.unwrap();
    let restore_s = t.elapsed().as_secs_f64();
    let rows = sql(&restored, &p, "SELECT count(*) FROM pgbench_accounts");
    assert_eq!(rows, (u64::from(scale) * 100_000).to_string());
    eprintln!(
        "| database | backup (replica, pgdctl backup) | restore to 1 member (request -> primary) | archive lag at archive_timeout 60 s | with a switch |\n\
         |---|---|---|---|---|\n| {size_mb} MB (pgbench -s {scale}) | {backup_s:.1} s | {restore_s:.1} s | {timeout_lag:.1} s | {switch_lag:.1} s |"
    );
}
