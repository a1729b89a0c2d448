//! A client that writes all through a drill and remembers every write Postgres acknowledged, so
//! a drill can check afterwards that none was lost. It writes one row per transaction to
//! whichever member accepts writes, and moves on to another member when its connection breaks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio_postgres::NoTls;

/// What the writer saw.
#[derive(Debug, Default)]
pub struct WriterReport {
    /// Ids whose `INSERT` (autocommit) returned success, in order.
    pub acknowledged: Vec<i64>,
    /// Attempts that failed or timed out (their rows may or may not exist: never counted).
    pub failed: u64,
    /// The longest time between two acknowledged writes (the write outage).
    pub longest_gap: Duration,
}

/// A running writer; [`Writer::stop`] ends it and returns its report.
pub struct Writer {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<WriterReport>,
}

/// A commit waiting longer than this is abandoned (not acknowledged) and the connection dropped.
/// Never `statement_timeout`: cancelling a commit that waits for a synchronous standby leaves it
/// committed locally and reports success.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

impl Writer {
    /// Creates `table (id bigint primary key)` on `primary` and starts writing to it; the writer
    /// stops by itself after `limit`.
    pub async fn start(members: Vec<(String, u16)>, primary: &str, table: &str, limit: Duration) -> Result<Writer> {
        let port = members.iter().find(|(n, _)| n == primary).context("no such member")?.1;
        let client = connect(port).await?;
        client.batch_execute(&format!("CREATE TABLE {table} (id bigint PRIMARY KEY)")).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let insert = format!("INSERT INTO {table} VALUES ($1)");
        let task = tokio::spawn(write_until(members, insert, stop.clone(), Instant::now() + limit));
        Ok(Writer { stop, task })
    }

    pub async fn stop(self) -> Result<WriterReport> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.context("writer task")
    }
}

async fn connect(port: u16) -> Result<tokio_postgres::Client> {
    let conninfo = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2");
    let (client, connection) = tokio_postgres::connect(&conninfo, NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

/// A connection to a member that is not in recovery, trying each member once.
async fn writable(members: &[(String, u16)]) -> Option<tokio_postgres::Client> {
    for (_, port) in members {
        let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(3), connect(*port)).await else { continue };
        if let Ok(Ok(row)) =
            tokio::time::timeout(Duration::from_secs(2), client.query_one("SELECT pg_is_in_recovery()", &[])).await
        {
            if !row.get::<_, bool>(0) {
                return Some(client);
            }
        }
    }
    None
}

async fn write_until(members: Vec<(String, u16)>, insert: String, stop: Arc<AtomicBool>, deadline: Instant) -> WriterReport {
    let mut report = WriterReport::default();
    let mut client = None;
    let mut last_ack = Instant::now();
    let mut next_id = 1i64;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let Some(c) = client.as_ref() else {
            client = writable(&members).await;
            if client.is_none() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            continue;
        };
        let id = next_id;
        // Every id is tried once: an attempt with an unknown outcome is never reused.
        next_id += 1;
        match tokio::time::timeout(WRITE_TIMEOUT, c.execute(&insert, &[&id])).await {
            Ok(Ok(_)) => {
                report.longest_gap = report.longest_gap.max(last_ack.elapsed());
                last_ack = Instant::now();
                report.acknowledged.push(id);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            _ => {
                report.failed += 1;
                client = None;
            }
        }
    }
    report
}

/// Acknowledged ids missing from `table` on the member at `port`.
pub async fn missing(port: u16, table: &str, acknowledged: &[i64]) -> Result<Vec<i64>> {
    if acknowledged.is_empty() {
        bail!("the writer had no write acknowledged: nothing was checked");
    }
    let client = connect(port).await?;
    let rows = client.query(&format!("SELECT id FROM {table}"), &[]).await?;
    let present: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    Ok(acknowledged.iter().copied().filter(|id| !present.contains(id)).collect())
}
