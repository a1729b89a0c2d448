//! pgdctl: parses the command line and hands over to [`pgdaemon_ctl::run`]. Exit codes are
//! documented in the library (0 ok, 1 refused, 2 usage, 3 store unavailable, 4 timed out).

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    // clap exits with 2 on usage errors and 0 for --help/--version.
    let cmd = pgdaemon_ctl::Cmd::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("PGDAEMON_LOG").unwrap_or_else(|_| "warn".into()))
        .init();
    match pgdaemon_ctl::run(cmd, &mut std::io::stdout()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgdctl: {e:#}");
            ExitCode::from(e.exit_code())
        }
    }
}
