//! `make bench-failover` (scripts/bench-failover runs this): for each scenario and store, N
//! failover drills at default timings with a direct and an HAProxy recording client; prints
//! kill -> first write (median, p95), acknowledged writes lost, the most writable members at once
//! and the idle store writes per node-minute; writes the JSON and one SVG timeline per drill.
//!
//! Environment: N (drills per scenario and store, default 3), STORES ("etcd dynamodb"),
//! SCENARIOS (default all: whole-node agent-only postgres-only coordinator-host), IDLE_S (quiet
//! window for counting idle writes, default 60; 0 skips), BENCH_OUT (the JSON file; charts go
//! into the directory of the same name without `.json`), PGDAEMON_AGENT_BIN (the agent binary;
//! default: built as the drills build it).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use pgdaemon_drills::bench::run::{self, backend_name, DrillResult, Scenario};
use pgdaemon_drills::bench::{now_ms, stats};
use pgdaemon_drills::{AgentBuild, Backend};

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).ok().filter(|v| !v.trim().is_empty()).unwrap_or_else(|| default.to_string())
}

fn fmt_s(x: Option<f64>) -> String {
    x.map_or("-".into(), |v| format!("{:.2}", v / 1000.0))
}

#[tokio::main]
async fn main() -> Result<()> {
    let n: usize = env_or("N", "3").parse().context("N must be a number")?;
    let idle_s: u64 = env_or("IDLE_S", "60").parse().context("IDLE_S must be a number of seconds")?;
    let stores: Vec<Backend> = env_or("STORES", "etcd dynamodb")
        .split_whitespace()
        .map(|s| match s {
            "etcd" => Ok(Backend::Etcd),
            "dynamodb" => Ok(Backend::Dynamodb),
            other => anyhow::bail!("unknown store {other} (etcd, dynamodb)"),
        })
        .collect::<Result<_>>()?;
    let scenarios: Vec<Scenario> = env_or("SCENARIOS", "whole-node agent-only postgres-only coordinator-host")
        .split_whitespace()
        .map(|s| Scenario::parse(s).with_context(|| format!("unknown scenario {s}")))
        .collect::<Result<_>>()?;
    let out = PathBuf::from(env_or("BENCH_OUT", &format!("bench-results/failover-{}.json", now_ms() / 1000)));
    let chart_dir = out.with_extension("");
    std::fs::create_dir_all(&chart_dir)?;
    let build = match std::env::var_os("PGDAEMON_AGENT_BIN") {
        Some(b) => AgentBuild { binary: PathBuf::from(b), api_credentials: true },
        None => AgentBuild::current()?,
    };

    let mut results: Vec<DrillResult> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    for &store in &stores {
        let mut idle_done = idle_s == 0;
        for &scenario in &scenarios {
            for i in 1..=n {
                let idle = (!idle_done).then(|| Duration::from_secs(idle_s));
                eprintln!(
                    "== {} {} drill {i} of {n}{}",
                    backend_name(store),
                    scenario.name(),
                    if idle.is_some() { " (after an idle window)" } else { "" }
                );
                match run::drill(store, scenario, i, &build, &chart_dir, idle).await {
                    Ok(r) => {
                        idle_done |= r.idle.is_some();
                        eprintln!(
                            "   victim {} -> {:?}: first write direct {} s, HAProxy {} s, lost {}/{}, writable at once {}; chart {}",
                            r.victim,
                            r.new_primary.as_deref().unwrap_or("?"),
                            fmt_s(r.first_write_direct_ms.map(|v| v as f64)),
                            fmt_s(r.first_write_haproxy_ms.map(|v| v as f64)),
                            r.lost_direct.len(),
                            r.lost_haproxy.len(),
                            r.most_writable_at_once,
                            r.chart
                        );
                        results.push(r);
                    }
                    Err(e) => {
                        eprintln!("   FAILED: {e:#}");
                        failures.push(format!("{} {} drill {i}: {e:#}", backend_name(store), scenario.name()));
                    }
                }
            }
        }
    }

    let table = table(&results, &stores, &scenarios);
    println!("{table}");
    for f in &failures {
        println!("failed: {}", f.lines().next().unwrap_or(""));
    }
    let json = serde_json::json!({
        "timings": run::default_sets(),
        "n": n,
        "runs": results,
        "failures": failures,
        "table": table,
    });
    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
    println!("written to {} (charts in {}/)", out.display(), chart_dir.display());
    if !failures.is_empty() {
        std::process::exit(1);
    }
    Ok(())
}

/// The printed summary: one line per scenario and store.
fn table(results: &[DrillResult], stores: &[Backend], scenarios: &[Scenario]) -> String {
    let mut s = String::new();
    s.push_str(
        "kill -> first write on the new primary, seconds (median / p95); lost = acknowledged writes lost (direct + HAProxy)\n",
    );
    s.push_str(&format!(
        "{:<18}{:<10}{:>3}  {:>15}  {:>15}  {:>6}  {:>10}\n",
        "scenario", "store", "n", "direct", "via HAProxy", "lost", "writable<=",
    ));
    for &store in stores {
        for &sc in scenarios {
            let rs: Vec<&DrillResult> = results.iter().filter(|r| r.scenario == sc && r.store == backend_name(store)).collect();
            if rs.is_empty() {
                continue;
            }
            let col = |f: &dyn Fn(&DrillResult) -> Option<u64>| {
                let xs: Vec<f64> = rs.iter().filter_map(|r| f(r)).map(|v| v as f64).collect();
                match stats::summarize(&xs) {
                    Some(x) => format!("{} / {}", fmt_s(Some(x.median)), fmt_s(Some(x.p95))),
                    None => "-".into(),
                }
            };
            let lost: usize = rs.iter().map(|r| r.lost_direct.len() + r.lost_haproxy.len()).sum();
            let most = rs.iter().map(|r| r.most_writable_at_once).max().unwrap_or(0);
            s.push_str(&format!(
                "{:<18}{:<10}{:>3}  {:>15}  {:>15}  {:>6}  {:>10}\n",
                sc.name(),
                backend_name(store),
                rs.len(),
                col(&|r| r.first_write_direct_ms),
                col(&|r| r.first_write_haproxy_ms),
                lost,
                most
            ));
        }
    }
    for r in results.iter().filter_map(|r| r.idle.as_ref().map(|i| (r.store, i))) {
        let (store, i) = r;
        s.push_str(&format!(
            "idle store writes, {store}: {:.1} per node-minute ({} writes, {} nodes, {:.0} s; {}; agents' lease renewals {})\n",
            i.per_node_minute, i.store_writes, i.nodes, i.seconds, i.counted_by, i.lease_renewals
        ));
        if !i.by_operation.is_empty() {
            s.push_str(&format!("  by operation: {:?}\n", i.by_operation));
        }
    }
    s
}
