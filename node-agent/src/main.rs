//! `pgdaemon-agent`: parse arguments, load the configuration, set up logging, hand over to the
//! library's `run::start`. Everything else lives in the library (thin binary).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use pgdaemon_agent::config::{self, AgentConfig, LogFormat};
use pgdaemon_agent::{logging, run};
use pgdaemon_core::coordinator::FencingPolicy;

#[derive(Debug, Parser)]
#[command(name = "pgdaemon-agent", version, about = "pgdaemon node agent: one per PostgreSQL host")]
struct Cli {
    /// Configuration file (TOML). `PGDAEMON_<SECTION>__<KEY>` environment variables override it.
    #[arg(long, short = 'c', global = true, default_value_os_t = config::default_config_path())]
    config: PathBuf,
    /// Log format (overrides `[log] format`).
    #[arg(long, global = true, value_enum)]
    log_format: Option<CliLogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum CliLogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Validate the configuration (values and paths) and print it; the password is never printed.
    CheckConfig {
        /// Also read the replication password (file or SSM) to prove it is reachable.
        #[arg(long)]
        fetch_secrets: bool,
    },
    /// Monitor-only mode: probe the Postgres endpoints listed in the file's `[monitor]` section
    /// (not managed by pgdaemon) and report their health changes as events; never fences or
    /// promotes. The file is a monitor configuration, not an agent one (see node-agent/README.md).
    Monitor,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgdaemon-agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    let env = config::process_env();
    // The monitor reads a configuration of its own, not an agent's.
    if matches!(cli.command, Some(Command::Monitor)) {
        return monitor_main(&cli.config, cli.log_format, &env);
    }
    let cfg = AgentConfig::load(&cli.config, &env)?;
    let format = match cli.log_format {
        Some(CliLogFormat::Human) => LogFormat::Human,
        Some(CliLogFormat::Json) => LogFormat::Json,
        None => cfg.log.format,
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("tokio runtime")?;
    match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig { fetch_secrets } => rt.block_on(check_config(&cli.config, &cfg, &env, fetch_secrets)),
        Command::Run => {
            logging::init(format, &cfg.log.level)?;
            for var in config::ignored_env_vars(&env) {
                tracing::warn!(%var, "environment variable ignored: it names no configuration section");
            }
            rt.block_on(run::start(cfg)).map(|_| ())
        }
        Command::Monitor => monitor_main(&cli.config, cli.log_format, &env),
    }
}

fn monitor_main(path: &std::path::Path, log_format: Option<CliLogFormat>, env: &[(String, String)]) -> anyhow::Result<()> {
    let cfg = pgdaemon_agent::monitor::MonitorConfig::load(path, env)?;
    let format = match log_format {
        Some(CliLogFormat::Human) => LogFormat::Human,
        Some(CliLogFormat::Json) => LogFormat::Json,
        None => cfg.log.format,
    };
    logging::init(format, &cfg.log.level)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().context("tokio runtime")?;
    rt.block_on(pgdaemon_agent::monitor::start(cfg, run::shutdown_signal()))
}

async fn check_config(path: &std::path::Path, cfg: &AgentConfig, env: &[(String, String)], fetch: bool) -> anyhow::Result<()> {
    // The start-time rule too: an unauthenticated API on a non-loopback address would not start.
    let listen = cfg.node.listen_addr()?;
    cfg.api.check_listen(listen).map_err(|e| anyhow::anyhow!("config: {e}"))?;
    println!("# {}: valid", path.display());
    for var in config::ignored_env_vars(env) {
        println!("# note: {var} is not applied (it names no configuration section)");
    }
    let source = match (&cfg.postgres.password_file, &cfg.postgres.ssm_parameter) {
        (Some(f), _) => format!("file {}", f.display()),
        (None, Some(p)) => format!("SSM parameter {p}"),
        (None, None) => "none (trust or certificate authentication)".to_string(),
    };
    if fetch || cfg.postgres.password_file.is_some() {
        // Reading proves the source works; the value itself is never printed.
        let secret = cfg.postgres.replication_password().await?;
        println!("# replication password: {source}: {}", if secret.is_some() { "read (redacted)" } else { "not used" });
    } else {
        println!("# replication password: {source} (not fetched; --fetch-secrets reads it)");
    }
    if let Some(name) = &cfg.api.token_ssm_parameter {
        if fetch {
            // Proves the parameter is readable (and the token usable); never printed.
            pgdaemon_agent::api_security::ApiSecurity::load(&cfg.api).await.context("[api] credentials")?;
            println!("# api token: SSM parameter {name}: read (redacted)");
        } else {
            println!("# api token: SSM parameter {name} (not fetched; --fetch-secrets reads it)");
        }
    }
    if cfg.coordinator.enabled {
        // Builds the hosted coordinator's fencers as the start does (names, command, `http` TLS).
        let (policy, chain) = pgdaemon_agent::coordinator_mode::fencing(cfg, None)?;
        let fencers = if policy == FencingPolicy::Off { "off".to_string() } else { chain.names().join(", ") };
        println!("# hosted coordinator fencers: {fencers}");
    }
    print!("{}", cfg.to_toml());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_subcommands_and_flags() {
        let cli = Cli::try_parse_from(["pgdaemon-agent", "--config", "/x.toml", "--log-format", "json"]).unwrap();
        assert_eq!(cli.config, PathBuf::from("/x.toml"));
        assert!(matches!(cli.log_format, Some(CliLogFormat::Json)));
        assert!(cli.command.is_none());
        let cli = Cli::try_parse_from(["pgdaemon-agent", "check-config", "-c", "/y.toml", "--fetch-secrets"]).unwrap();
        assert!(matches!(cli.command, Some(Command::CheckConfig { fetch_secrets: true })));
        assert!(Cli::try_parse_from(["pgdaemon-agent", "--log-format", "xml"]).is_err());
        let cli = Cli::try_parse_from(["pgdaemon-agent", "monitor", "-c", "/m.toml"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Monitor)));
    }
}
