//! Log setup: human-readable lines by default, one JSON object per line on request
//! (`[log] format = "json"` or `--log-format json`). `RUST_LOG` overrides the configured level.

use tracing_subscriber::EnvFilter;

use serde::{Deserialize, Serialize};

/// How log lines are written: for people, or one JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// Checks a filter directive such as `info` or `pgdaemon_agent=debug,warn`.
pub fn validate_filter(directives: &str) -> Result<(), String> {
    EnvFilter::try_new(directives).map(|_| ()).map_err(|e| format!("{directives:?} is not a log filter: {e}"))
}

/// Installs the global subscriber. Call once, first thing in `main`.
pub fn init(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(&v).map_err(|e| anyhow::anyhow!("RUST_LOG={v:?}: {e}"))?,
        _ => EnvFilter::try_new(level).map_err(|e| anyhow::anyhow!("log level {level:?}: {e}"))?,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Human => builder.with_target(false).try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the log subscriber: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_checked() {
        assert!(validate_filter("info").is_ok());
        assert!(validate_filter("pgdaemon_agent=debug,warn").is_ok());
        assert!(validate_filter("info,[[[").is_err());
    }
}
