//! `make bench-fleet`: the fleet benchmark (drills/src/fleet). For each store, CLUSTERS
//! registered three-member clusters (default 1000) with DEAD dead primaries (default 5) in a
//! private engine (etcd, DynamoDB on moto server), default timings and the Lambda's default
//! settings; prints the steady run and the failover run (time, store reads and writes, failover
//! times) and writes bench-results/fleet-<date>.json (BENCH_OUT overrides).
//!
//! Environment: CLUSTERS, DEAD, STORES ("etcd dynamodb"), and any `PGDAEMON_*` Lambda setting
//! (e.g. PGDAEMON_CONCURRENCY) passed on to the handler.

use anyhow::{Context, Result};
use pgdaemon_core::DynamicConfig;
use pgdaemon_drills::fleet::{self, FleetSpec};

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_string())
}

#[tokio::main]
async fn main() -> Result<()> {
    let clusters: usize = env_or("CLUSTERS", "1000").parse().context("CLUSTERS must be a number")?;
    let dead: usize = env_or("DEAD", "5").parse().context("DEAD must be a number")?;
    let config = DynamicConfig::default();
    let mut lambda_env: Vec<(String, String)> =
        std::env::vars().filter(|(k, _)| k.starts_with("PGDAEMON_") && k != "PGDAEMON_VENV").collect();
    if !lambda_env.iter().any(|(k, _)| k == "PGDAEMON_RUN_BUDGET_MS") {
        lambda_env.push(("PGDAEMON_RUN_BUDGET_MS".into(), fleet::run_budget(&config).as_millis().to_string()));
    }
    let spec = FleetSpec { clusters, dead, config, lambda_env };
    let mut reports = Vec::new();
    for backend in env_or("STORES", "etcd dynamodb").split_whitespace() {
        let (_engine, store) = fleet::start_store(backend).await?;
        eprintln!("bench-fleet: {backend}: {clusters} clusters, {dead} dead primaries");
        let r = fleet::run(store, &spec).await.with_context(|| format!("{backend} fleet run"))?;
        println!("{}", fleet::summary(&r));
        reports.push(r);
    }
    let out = std::env::var("BENCH_OUT").unwrap_or_else(|_| {
        let stamp = pgdaemon_ctl::table::now_ms() / 1000;
        format!("bench-results/fleet-{stamp}.json")
    });
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&out, serde_json::to_string_pretty(&reports)?)?;
    eprintln!("bench-fleet: wrote {out}");
    Ok(())
}
