//! `--format table|json|yaml` (and `--json`, the same as `--format json`) on the read verbs.

use std::io::Write;

use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::CtlError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// For people (the default).
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Clone, Args)]
pub struct FormatArgs {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Short for `--format json`.
    #[arg(long, conflicts_with = "format")]
    pub json: bool,
}

impl FormatArgs {
    pub fn format(&self) -> Format {
        if self.json {
            Format::Json
        } else {
            self.format
        }
    }
}

/// Writes `value` as JSON or YAML, or `table()` for [`Format::Table`].
pub fn emit<T: Serialize>(
    out: &mut impl Write,
    format: Format,
    value: &T,
    table: impl FnOnce() -> Result<String, CtlError>,
) -> Result<(), CtlError> {
    match format {
        Format::Table => write!(out, "{}", table()?)?,
        Format::Json => writeln!(out, "{}", serde_json::to_string_pretty(value).map_err(anyhow::Error::from)?)?,
        Format::Yaml => write!(out, "{}", serde_norway::to_string(value).map_err(anyhow::Error::from)?)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_format_writes_the_same_value() {
        let value = serde_json::json!({"cluster": "c", "term": 3});
        let mut json = Vec::new();
        emit(&mut json, Format::Json, &value, || unreachable!()).unwrap();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&json).unwrap(), value);
        let mut yaml = Vec::new();
        emit(&mut yaml, Format::Yaml, &value, || unreachable!()).unwrap();
        assert_eq!(String::from_utf8(yaml).unwrap(), "cluster: c\nterm: 3\n");
        let mut table = Vec::new();
        emit(&mut table, Format::Table, &value, || Ok("c 3\n".into())).unwrap();
        assert_eq!(table, b"c 3\n");
    }
}
