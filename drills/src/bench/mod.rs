//! `make bench-failover`: failover drills at default timings with recording clients (direct and
//! through HAProxy), a writability monitor, idle store-write counting and a timeline chart per
//! drill. The binary is `src/bin/bench-failover.rs`; this module holds its parts.

pub mod chart;
pub mod client;
pub mod haproxy;
pub mod idle;
pub mod run;
pub mod stats;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Unix epoch milliseconds: the clock the coordinator's history uses, so both line up.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// One plain HTTP/1.0 request to a loopback `host:port` (etcd's gateway, moto's API, an agent's
/// API); returns the status and the body. Bounded by a 5 s timeout.
pub async fn http(addr: &str, method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let exchange = async {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        anyhow::Ok(String::from_utf8_lossy(&buf).to_string())
    };
    let text = tokio::time::timeout(Duration::from_secs(5), exchange).await.context("HTTP request timed out")??;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok());
    match status {
        Some(code) => Ok((code, body.to_string())),
        None => bail!("no HTTP status from {addr}{path}"),
    }
}

/// `host:port` of an `http://host:port[/...]` endpoint.
pub fn host_port(endpoint: &str) -> &str {
    let rest = endpoint.split_once("://").map_or(endpoint, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_port_strips_scheme_and_path() {
        assert_eq!(super::host_port("http://127.0.0.1:2379"), "127.0.0.1:2379");
        assert_eq!(super::host_port("http://127.0.0.1:5000/x/y"), "127.0.0.1:5000");
        assert_eq!(super::host_port("127.0.0.1:1"), "127.0.0.1:1");
    }
}
