//! Text in and out of Postgres for [`super::LocalPostgres`]: configuration lines, `pg_controldata`
//! and conninfo parsing, quoting, and error texts.

use pgdaemon_core::pg::{PgError, UpstreamConfig};
use pgdaemon_core::Lsn;

/// `conf` (postgresql.conf syntax) with each of `settings` set once, at the end, replacing
/// earlier lines for the same names; every other line is kept as it is.
pub(super) fn with_settings(conf: &str, settings: &[(&str, String)]) -> String {
    let names: Vec<&str> = settings.iter().map(|(k, _)| *k).collect();
    let mut lines: Vec<String> = conf
        .lines()
        .filter(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            !names.iter().any(|n| key.eq_ignore_ascii_case(n))
        })
        .map(str::to_string)
        .collect();
    for (k, v) in settings {
        lines.push(format!("{k} = {}", conf_quote(v)));
    }
    lines.join("\n") + "\n"
}

/// The final WAL position from `pg_controldata` output (C locale): "Latest checkpoint location"
/// when "Database cluster state" is `shut down` (a clean stop of a primary; its last checkpoint
/// is the shutdown checkpoint, written after every other record). Any other state (`in
/// production` after a crash or an immediate stop, `shut down in recovery` for a standby, whose
/// checkpoint is a restartpoint) or an unparseable value: `None`.
pub fn final_position_from_controldata(text: &str) -> Option<Lsn> {
    let field = |label: &str| {
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == label).then(|| v.trim())
        })
    };
    if field("Database cluster state")? != "shut down" {
        return None;
    }
    field("Latest checkpoint location")?.parse().ok()
}

pub(super) fn lsn(text: Option<String>) -> Option<Lsn> {
    text.and_then(|t| t.parse().ok())
}

pub(super) fn pg_err(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.severity(), db.message()),
        None => e.to_string(),
    }
}

pub(super) fn query_err(e: tokio_postgres::Error) -> PgError {
    PgError::Query(pg_err(&e))
}

pub(super) fn io_err(e: std::io::Error) -> PgError {
    PgError::Io(e.to_string())
}

/// The last few lines of a tool's output.
pub(super) fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(6)..].join(" | ")
}

/// A libpq connection-string value.
pub(super) fn conn_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// A SQL string literal (standard_conforming_strings on).
pub(super) fn sql_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// A postgresql.conf string value.
pub(super) fn conf_quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"))
}

/// A word for the shell pg_ctl passes `-o` through.
pub(super) fn shell_quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "'\\''"))
}

/// Parses a libpq `key=value` connection string (values optionally single-quoted).
pub fn parse_conninfo(s: &str) -> UpstreamConfig {
    let mut out = UpstreamConfig::default();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            break;
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut value = String::new();
        if chars.peek() == Some(&'\'') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                if c == '\\' {
                    chars.next();
                    value.extend(chars.next());
                    continue;
                }
                value.push(c);
                chars.next();
            }
        }
        match key.as_str() {
            "host" => out.host = Some(value),
            "port" => out.port = value.parse().ok(),
            "application_name" => out.application_name = Some(value),
            _ => {}
        }
    }
    out
}
