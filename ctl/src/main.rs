//! pgdctl: parses the command line and hands over to [`pgdaemon_ctl::run`].

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cmd = pgdaemon_ctl::Cmd::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PGDAEMON_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    pgdaemon_ctl::run(cmd, &mut std::io::stdout()).await
}
