//! pgdctl's commands. `main` only parses and sets up logging; everything else is here, so tests
//! call [`run`] (or the binary) directly.

use std::io::Write;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use pgdaemon_dcs::dynamodb::client_from_env;
use pgdaemon_dcs::{create_table, TableOutcome};

/// Operate pgdaemon clusters.
#[derive(Debug, Parser)]
#[command(name = "pgdctl", version, about)]
pub struct Cmd {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the DynamoDB table pgdaemon keeps its state in (on-demand billing, TTL on
    /// `expire_at`). Succeeds without change when the table exists.
    CreateTable(CreateTableArgs),
}

#[derive(Debug, Args)]
pub struct CreateTableArgs {
    /// Table name.
    #[arg(long, default_value = "pgdaemon")]
    pub table: String,
    /// DynamoDB endpoint (LocalStack, moto). Defaults to `AWS_ENDPOINT_URL`, else AWS itself.
    #[arg(long)]
    pub endpoint_url: Option<String>,
    /// AWS region. Defaults to the SDK's chain (`AWS_REGION`, profile).
    #[arg(long)]
    pub region: Option<String>,
}

/// Runs one command, writing its human-readable result to `out`.
pub async fn run(cmd: Cmd, out: &mut impl Write) -> anyhow::Result<()> {
    match cmd.command {
        Command::CreateTable(args) => create_table_cmd(args, out).await,
    }
}

async fn create_table_cmd(args: CreateTableArgs, out: &mut impl Write) -> anyhow::Result<()> {
    validate_table_name(&args.table)?;
    let client = client_from_env(args.region.as_deref(), args.endpoint_url.as_deref()).await;
    let outcome =
        create_table(&client, &args.table).await.with_context(|| format!("creating table {:?}", args.table))?;
    match outcome {
        TableOutcome::Created => writeln!(out, "created table {} (TTL on expire_at)", args.table)?,
        TableOutcome::AlreadyExisted => writeln!(out, "table {} already exists; nothing to do", args.table)?,
    }
    Ok(())
}

/// DynamoDB's naming rule, checked before any request (bad input changes nothing).
fn validate_table_name(name: &str) -> anyhow::Result<()> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !(3..=255).contains(&name.len()) || !ok_chars {
        anyhow::bail!("table name {name:?} must be 3 to 255 characters of letters, digits, '_', '-' and '.'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cmd::command().debug_assert();
    }

    #[test]
    fn create_table_defaults() {
        let cmd = Cmd::try_parse_from(["pgdctl", "create-table"]).unwrap();
        let Command::CreateTable(args) = cmd.command;
        assert_eq!(args.table, "pgdaemon");
        assert_eq!(args.endpoint_url, None);
    }

    #[tokio::test]
    async fn bad_table_name_is_refused_before_any_request() {
        let cmd =
            Cmd::try_parse_from(["pgdctl", "create-table", "--table", "a/b", "--endpoint-url", "http://127.0.0.1:1"])
                .unwrap();
        let err = run(cmd, &mut Vec::new()).await.unwrap_err();
        assert!(err.to_string().contains("table name"), "{err:#}");
    }
}
