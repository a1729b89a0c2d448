//! `pgdaemon-sim`: run the deterministic cluster simulation over many seeds, or one seed with its
//! trace.

use anyhow::{bail, Result};
use clap::{Parser, ValueEnum};
use pgdaemon_core::coordinator::FencingPolicy;
use pgdaemon_core::SyncMode;
use pgdaemon_sim::{run, run_seeds, Broken, Options};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum BrokenArg {
    None,
    FenceLies,
    SlowAgentClock,
    SkipLeaseCheck,
    FailsafeLies,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum FencingArg {
    Seeded,
    Required,
    Off,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OffOnRandom {
    Off,
    On,
    Random,
}

impl OffOnRandom {
    /// The option's value (`None`: drawn per seed).
    fn pick(self) -> Option<bool> {
        match self {
            OffOnRandom::Off => Some(false),
            OffOnRandom::On => Some(true),
            OffOnRandom::Random => None,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SyncArg {
    Off,
    On,
    Strict,
}

/// Deterministic simulation of a pgdaemon cluster running the real agent and coordinator code.
#[derive(Debug, Parser)]
#[command(name = "pgdaemon-sim", version)]
struct Cli {
    /// Number of seeds to run.
    #[arg(long, default_value_t = 1000)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Run only this seed and print its trace.
    #[arg(long, conflicts_with_all = ["seeds", "first_seed"])]
    seed: Option<u64>,
    /// Worker threads (default: available cores).
    #[arg(long)]
    jobs: Option<usize>,
    /// Break a safety rule on purpose (to see the checker catch it).
    #[arg(long, value_enum, default_value = "none")]
    broken: BrokenArg,
    /// Fencing policy (seeded: drawn per seed, mostly required).
    #[arg(long, value_enum, default_value = "seeded")]
    fencing: FencingArg,
    /// Synchronous replication mode of the cluster.
    #[arg(long, value_enum, default_value = "off")]
    sync: SyncArg,
    /// Failsafe mode (docs/failsafe.md) in the dynamic configuration (random: drawn per seed).
    #[arg(long, value_enum, default_value = "off")]
    failsafe: OffOnRandom,
    /// Start from empty data directories without a cluster record: the agents bootstrap the
    /// cluster (random: drawn per seed).
    #[arg(long, value_enum, default_value = "off")]
    bootstrap: OffOnRandom,
    /// Cluster size (default: drawn per seed, 2 to 5).
    #[arg(long, value_parser = clap::value_parser!(u64).range(2..=9))]
    nodes: Option<u64>,
    /// Agents are woken right after designation and promotion (docs/design.md section 4); off
    /// to compare with the agents waiting for their next tick.
    #[arg(long, value_enum, default_value = "on")]
    wake: OnOff,
    /// The coordinator also runs every second, as the agent-hosted one (random: drawn per seed).
    #[arg(long, value_enum, default_value = "random")]
    hosted: OffOnRandom,
    /// The fence chain is http, command, ec2 instead of http, ec2 (random: drawn per seed).
    #[arg(long, value_enum, default_value = "random")]
    command_fencer: OffOnRandom,
    /// Print the trace of the first failing seed.
    #[arg(long)]
    show_trace: bool,
}

fn options(cli: &Cli) -> Options {
    let mut o = Options::new(0);
    o.broken = match cli.broken {
        BrokenArg::None => Broken::None,
        BrokenArg::FenceLies => Broken::FenceLies,
        BrokenArg::SlowAgentClock => Broken::SlowAgentClock,
        BrokenArg::SkipLeaseCheck => Broken::SkipLeaseCheck,
        BrokenArg::FailsafeLies => Broken::FailsafeLies,
    };
    o.fencing = match cli.fencing {
        FencingArg::Seeded => None,
        FencingArg::Required => Some(FencingPolicy::Required),
        FencingArg::Off => Some(FencingPolicy::Off),
    };
    o.sync_mode = match cli.sync {
        SyncArg::Off => SyncMode::Off,
        SyncArg::On => SyncMode::On,
        SyncArg::Strict => SyncMode::Strict,
    };
    o.failsafe = cli.failsafe.pick();
    o.bootstrap = cli.bootstrap.pick();
    o.hosted = cli.hosted.pick();
    o.command_fencer = cli.command_fencer.pick();
    o.nodes = cli.nodes.map(|n| n as usize);
    o.wake = matches!(cli.wake, OnOff::On);
    o
}

fn main() {
    if let Err(e) = real_main() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn real_main() -> Result<()> {
    let cli = Cli::parse();
    let template = options(&cli);
    if let Some(seed) = cli.seed {
        let mut o = template;
        o.seed = seed;
        let r = run(&o);
        print!("{}", r.trace);
        match (&r.violation, &r.sim_error) {
            (Some(v), _) => bail!("seed {seed}: invariant violated: {v}"),
            (_, Some(e)) => bail!("seed {seed}: simulation error: {e}"),
            _ => {
                println!("seed {seed}: ok ({:.0} s simulated, {} events)", r.sim_time as f64 / 1e6, r.counters.events);
                return Ok(());
            }
        }
    }
    if cli.seeds == 0 {
        bail!("--seeds must be at least 1");
    }
    let jobs = cli.jobs.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let started = std::time::Instant::now();
    let summary = run_seeds(&template, cli.first_seed, cli.seeds, jobs);
    print!("{}", summary.render());
    println!("wall time:            {:.1} s on {jobs} threads", started.elapsed().as_secs_f64());
    if let Some(first) = summary.failures.first() {
        if cli.show_trace {
            println!("\ntrace of seed {}:\n{}", first.seed, first.trace);
        } else {
            println!(
                "replay one: pgdaemon-sim --seed {} (add the same --broken/--fencing/--sync/--failsafe/--bootstrap/--nodes/--hosted/--command-fencer)",
                first.seed
            );
        }
        bail!("{} seed(s) violated an invariant", summary.violations());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
        assert!(Cli::try_parse_from(["x", "--nodes", "1"]).is_err());
        assert!(Cli::try_parse_from(["x", "--seed", "3", "--seeds", "4"]).is_err());
    }
}
