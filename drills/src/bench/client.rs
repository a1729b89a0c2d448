//! The bench's recording clients: one writes directly (libpq-style `target_session_attrs=read-write`
//! over all three members), one through HAProxy; both remember every attempt with its time, its
//! outcome and the server that took it, so the bench can say when writes resumed, on which member,
//! and whether an acknowledged write was lost. A monitor samples which members accept writes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use super::now_ms;

/// One write attempt (or one failed connection attempt, `id` 0).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Attempt {
    pub id: i64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub ok: bool,
    /// The Postgres port that served the connection (`inet_server_port()`), when connected.
    pub server_port: Option<u16>,
    /// When the connection used was established.
    pub conn_ms: Option<u64>,
}

/// The pause between two writes (the client writes every 50 ms).
pub const INTERVAL: Duration = Duration::from_millis(50);
/// An attempt (connect or write) taking longer is abandoned and counted as failed.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// A running recording client; its attempts so far are readable while it runs.
pub struct Recorder {
    pub attempts: Arc<Mutex<Vec<Attempt>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    /// Writes one row per autocommit `INSERT` into `table` through `conninfo` until stopped or
    /// `limit` passed (a bounded loop).
    pub fn start(conninfo: String, table: &str, limit: Duration) -> Recorder {
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let insert = format!("INSERT INTO {table} VALUES ($1)");
        let task = tokio::spawn(record(conninfo, insert, attempts.clone(), stop.clone(), Instant::now() + limit));
        Recorder { attempts, stop, task }
    }

    pub fn snapshot(&self) -> Vec<Attempt> {
        self.attempts.lock().expect("attempts").clone()
    }

    pub async fn stop(self) -> Vec<Attempt> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        self.attempts.lock().expect("attempts").clone()
    }
}

/// Connects and asks which port served it.
pub async fn connect(conninfo: &str) -> Option<(tokio_postgres::Client, u16)> {
    let (client, connection) =
        tokio::time::timeout(ATTEMPT_TIMEOUT, tokio_postgres::connect(conninfo, NoTls)).await.ok()?.ok()?;
    tokio::spawn(connection);
    let row = tokio::time::timeout(ATTEMPT_TIMEOUT, client.query_one("SELECT inet_server_port()", &[])).await.ok()?.ok()?;
    let port: i32 = row.get(0);
    Some((client, port as u16))
}

async fn record(conninfo: String, insert: String, out: Arc<Mutex<Vec<Attempt>>>, stop: Arc<AtomicBool>, deadline: Instant) {
    let mut conn: Option<(tokio_postgres::Client, u16, u64)> = None;
    let mut next_id = 1i64;
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let start_ms = now_ms();
        let Some((client, port, since)) = conn.as_ref() else {
            match connect(&conninfo).await {
                Some((c, port)) => conn = Some((c, port, now_ms())),
                None => {
                    let a = Attempt { id: 0, start_ms, end_ms: now_ms(), ok: false, server_port: None, conn_ms: None };
                    out.lock().expect("attempts").push(a);
                    tokio::time::sleep(INTERVAL).await;
                }
            }
            continue;
        };
        let id = next_id;
        // Every id is tried once: an attempt with an unknown outcome is never reused.
        next_id += 1;
        let ok = matches!(tokio::time::timeout(ATTEMPT_TIMEOUT, client.execute(&insert, &[&id])).await, Ok(Ok(_)));
        let a = Attempt { id, start_ms, end_ms: now_ms(), ok, server_port: Some(*port), conn_ms: Some(*since) };
        out.lock().expect("attempts").push(a);
        if !ok {
            conn = None;
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// The first acknowledged write of the new primary: started after the kill, on a connection made
/// after the kill, and on another member than the victim unless the victim is the primary again
/// (restarted in place).
pub fn first_write_after(
    attempts: &[Attempt],
    kill_ms: u64,
    victim_port: u16,
    victim_is_primary_again: bool,
) -> Option<&Attempt> {
    attempts.iter().find(|a| {
        a.ok && a.start_ms >= kill_ms
            && a.conn_ms.is_some_and(|c| c >= kill_ms)
            && (victim_is_primary_again || a.server_port != Some(victim_port))
    })
}

/// Writability samples: (epoch ms, one flag per member).
pub type Samples = Arc<Mutex<Vec<(u64, Vec<bool>)>>>;

/// Samples every member's writability (read-write and not in recovery) every 100 ms.
pub struct Monitor {
    pub samples: Samples,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Monitor {
    pub fn start(ports: Vec<u16>, limit: Duration) -> Monitor {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(monitor(ports, samples.clone(), stop.clone(), Instant::now() + limit));
        Monitor { samples, stop, task }
    }

    pub async fn stop(self) -> Vec<(u64, Vec<bool>)> {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        self.samples.lock().expect("samples").clone()
    }
}

async fn monitor(ports: Vec<u16>, out: Samples, stop: Arc<AtomicBool>, deadline: Instant) {
    let mut clients: Vec<Option<tokio_postgres::Client>> = ports.iter().map(|_| None).collect();
    let q = "SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'";
    while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
        let t = now_ms();
        let mut flags = Vec::with_capacity(ports.len());
        for (i, port) in ports.iter().enumerate() {
            if clients[i].is_none() {
                let conninfo = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=1");
                clients[i] = connect(&conninfo).await.map(|(c, _)| c);
            }
            let writable = match clients[i].as_ref() {
                Some(c) => match tokio::time::timeout(Duration::from_millis(500), c.query_one(q, &[])).await {
                    Ok(Ok(row)) => row.get::<_, bool>(0),
                    _ => {
                        clients[i] = None;
                        false
                    }
                },
                None => false,
            };
            flags.push(writable);
        }
        out.lock().expect("samples").push((t, flags));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Acknowledged ids of `attempts` missing from `table` on the member at `port`.
pub async fn lost(port: u16, table: &str, attempts: &[Attempt]) -> anyhow::Result<Vec<i64>> {
    let conninfo = format!("host=127.0.0.1 port={port} user=postgres dbname=postgres connect_timeout=2");
    let (client, _) = connect(&conninfo).await.ok_or_else(|| anyhow::anyhow!("cannot connect to port {port}"))?;
    let rows = client.query(&format!("SELECT id FROM {table}"), &[]).await?;
    let present: std::collections::HashSet<i64> = rows.iter().map(|r| r.get(0)).collect();
    Ok(attempts.iter().filter(|a| a.ok && !present.contains(&a.id)).map(|a| a.id).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(id: i64, start_ms: u64, ok: bool, port: u16, conn_ms: u64) -> Attempt {
        Attempt { id, start_ms, end_ms: start_ms + 5, ok, server_port: Some(port), conn_ms: Some(conn_ms) }
    }

    #[test]
    fn first_write_is_on_a_new_connection_to_another_member_after_the_kill() {
        let xs = vec![
            a(1, 900, true, 5001, 0),     // before the kill
            a(2, 1100, true, 5001, 0),    // old connection, old primary still alive (agent-only kill)
            a(3, 1200, false, 5001, 0),   // fenced
            a(4, 1500, true, 5001, 1400), // reconnected to the old primary (not the new one)
            a(5, 1800, true, 5002, 1700),
        ];
        assert_eq!(first_write_after(&xs, 1000, 5001, false).map(|a| a.id), Some(5));
        // Restarted in place: the old member after reconnecting counts.
        assert_eq!(first_write_after(&xs, 1000, 5001, true).map(|a| a.id), Some(4));
        assert!(first_write_after(&xs, 2000, 5001, false).is_none());
    }
}
