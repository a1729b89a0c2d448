//! Store writes an idle, healthy cluster makes, counted at the store (not by the agents' own
//! counters, which see neither heartbeats nor the coordinator's lock): etcd's revision, which
//! every successful write transaction raises by one (a failed compare-and-set does not), and on
//! moto's DynamoDB its request recorder, counting write requests by `X-Amz-Target` (a failed
//! conditional write is counted: DynamoDB bills it). The agents' lease-renewal counters are read
//! beside them.

use std::time::Duration;

use anyhow::{Context, Result};
use pgdaemon_core::StoreConfig;

use super::{host_port, http};

#[derive(Debug, Clone, serde::Serialize)]
pub struct IdleWrites {
    pub seconds: f64,
    pub nodes: usize,
    /// Store writes in the window (see the module doc for what counts).
    pub store_writes: u64,
    pub per_node_minute: f64,
    /// DynamoDB only: write requests by operation.
    pub by_operation: std::collections::BTreeMap<String, u64>,
    /// Leader-lease renewals the agents counted in the window (`pgdaemon_lease_renewals_total`).
    pub lease_renewals: u64,
    pub counted_by: String,
}

const WRITE_OPS: [&str; 5] = ["PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"];

/// etcd's current revision through its JSON gateway.
async fn etcd_revision(addr: &str) -> Result<u64> {
    let (_, body) = http(addr, "POST", "/v3/kv/range", r#"{"key":"AA==","limit":1}"#).await?;
    let v: serde_json::Value = serde_json::from_str(&body).with_context(|| format!("etcd answered {body}"))?;
    let rev = &v["header"]["revision"];
    rev.as_str().and_then(|s| s.parse().ok()).or_else(|| rev.as_u64()).context("no revision in etcd's answer")
}

/// Counts write requests in a moto recording (one JSON object per line).
pub fn count_dynamodb_writes(recording: &str) -> std::collections::BTreeMap<String, u64> {
    let mut by = std::collections::BTreeMap::new();
    for line in recording.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        let Some(headers) = v["headers"].as_object() else { continue };
        let target = headers.iter().find(|(k, _)| k.eq_ignore_ascii_case("x-amz-target")).and_then(|(_, v)| v.as_str());
        let op = target.and_then(|t| t.rsplit('.').next()).unwrap_or("");
        if WRITE_OPS.contains(&op) {
            *by.entry(op.to_string()).or_insert(0) += 1;
        }
    }
    by
}

/// Sum of `pgdaemon_lease_renewals_total` over the agents' `/metrics`.
async fn lease_renewals(api_ports: &[u16]) -> u64 {
    let mut total = 0;
    for port in api_ports {
        if let Ok((200, body)) = http(&format!("127.0.0.1:{port}"), "GET", "/metrics", "").await {
            for line in body.lines().filter(|l| l.starts_with("pgdaemon_lease_renewals_total")) {
                total += line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
            }
        }
    }
    total
}

/// Counts the store writes of `window` with nothing but the agents running.
pub async fn measure(store: &StoreConfig, api_ports: &[u16], window: Duration) -> Result<IdleWrites> {
    let renewals_before = lease_renewals(api_ports).await;
    let (store_writes, by_operation, counted_by) = match store {
        StoreConfig::Etcd { endpoints, .. } => {
            let addr = host_port(&endpoints[0]).to_string();
            let before = etcd_revision(&addr).await?;
            tokio::time::sleep(window).await;
            let after = etcd_revision(&addr).await?;
            (after - before, Default::default(), "etcd revision delta (successful write transactions)".to_string())
        }
        StoreConfig::Dynamodb { endpoint_url: Some(url), .. } => {
            let addr = host_port(url).to_string();
            http(&addr, "POST", "/moto-api/recorder/stop-recording", "").await?;
            http(&addr, "POST", "/moto-api/recorder/reset-recording", "").await?;
            http(&addr, "POST", "/moto-api/recorder/start-recording", "").await?;
            tokio::time::sleep(window).await;
            http(&addr, "POST", "/moto-api/recorder/stop-recording", "").await?;
            let (_, recording) = http(&addr, "GET", "/moto-api/recorder/download-recording", "").await?;
            let by = count_dynamodb_writes(&recording);
            (by.values().sum(), by, "moto request recorder: DynamoDB write requests incl. failed conditions".to_string())
        }
        _ => anyhow::bail!("idle writes are counted on etcd or moto only"),
    };
    let lease_renewals = lease_renewals(api_ports).await.saturating_sub(renewals_before);
    let nodes = api_ports.len();
    let minutes = window.as_secs_f64() / 60.0;
    Ok(IdleWrites {
        seconds: window.as_secs_f64(),
        nodes,
        store_writes,
        per_node_minute: store_writes as f64 / nodes.max(1) as f64 / minutes,
        by_operation,
        lease_renewals,
        counted_by,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn counts_only_write_operations() {
        let rec = concat!(
            r#"{"headers": {"X-Amz-Target": "DynamoDB_20120810.PutItem"}, "method": "POST"}"#,
            "\n",
            r#"{"headers": {"x-amz-target": "DynamoDB_20120810.UpdateItem"}}"#,
            "\n",
            r#"{"headers": {"X-Amz-Target": "DynamoDB_20120810.Query"}}"#,
            "\n",
            r#"{"headers": {"X-Amz-Target": "DynamoDB_20120810.PutItem"}}"#,
            "\nnot json\n"
        );
        let by = super::count_dynamodb_writes(rec);
        assert_eq!(by.get("PutItem"), Some(&2));
        assert_eq!(by.get("UpdateItem"), Some(&1));
        assert_eq!(by.values().sum::<u64>(), 3);
    }
}
