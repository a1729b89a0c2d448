//! Cluster-wide PostgreSQL parameters (`pgdctl edit-config --set postgresql.parameters.NAME=VALUE`)
//! and what each agent reports back about them.
//!
//! The parameters are their own item ([`crate::keys::PARAMETERS`]), not a field of the cluster
//! record: every release's coordinator rewrites the cluster record through its own typed struct,
//! so a field an older coordinator does not know would be dropped by the first failover it runs
//! during a rolling upgrade. Releases that predate these items skip them (`read_view` keeps only
//! the items it knows), so neither item changes what an older agent or coordinator does.
//!
//! Each agent writes the parameters into [`CLUSTER_CONF_FILE`] in its data directory, included
//! at the end of `postgresql.conf`: they override that file, while `postgresql.auto.conf` (the
//! agent's own replication settings) and a node's `[postgres.parameters]` (given on the server's
//! command line) still win, as a node's local configuration wins in Patroni.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The file each agent writes the cluster-wide parameters into, beside `postgresql.conf`.
pub const CLUSTER_CONF_FILE: &str = "pgdaemon.cluster.conf";

/// The line that makes `postgresql.conf` read [`CLUSTER_CONF_FILE`] (last, so it overrides the
/// lines before it).
pub const INCLUDE_LINE: &str = "include_if_exists = 'pgdaemon.cluster.conf'";

/// The `config#postgresql` item: cluster-wide parameters by name, as `postgresql.conf` values.
/// Both fields are required when read: an item missing them is unreadable, never "no
/// parameters" (which would make every agent drop what its node runs with).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ClusterParameters {
    pub parameters: BTreeMap<String, String>,
    /// Stamped by the store on every write (compare-and-set, like the cluster record's).
    pub version: u64,
}

/// The `state#<member>` item: what one agent reports beside its heartbeat, written only when it
/// changes (so it costs no store writes while nothing happens).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct MemberState {
    pub name: String,
    /// The [`ClusterParameters::version`] this member's files hold (0: none applied yet).
    #[serde(default)]
    pub parameters_version: u64,
    /// Settings whose new value takes effect only after a restart (`pg_settings.pending_restart`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_restart: Vec<String>,
    /// Values Postgres refused when it read the parameters file (`pg_file_settings.error`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parameter_errors: Vec<String>,
    /// A long Postgres operation in progress, with how far it got, e.g. "basebackup from pg-1:
    /// 412 MB copied in 35 s" (`pgdctl list` shows it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activity: Option<String>,
    /// The running server's `server_version` as last seen (kept while it is down).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres_version: Option<String>,
    /// This member's WAL archiving and newest backup, when it archives (`[archive]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<crate::backup::ArchiveStatus>,
}

/// How a setting takes effect (`pg_settings.context`, PostgreSQL 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Context {
    /// Only at server start: a change is pending until a restart.
    Postmaster,
    /// On reload.
    Sighup,
    /// Per session (`user`, `superuser`, `backend`, ...): a reload sets the default for new ones.
    Session,
    /// Read-only (`internal`): never settable.
    Internal,
    /// An extension's parameter (`prefix.name`): not known here.
    Custom,
}

/// One PostgreSQL 15 setting from the catalogue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub name: &'static str,
    pub context: Context,
    vartype: &'static str,
    enumvals: Vec<&'static str>,
}

/// PostgreSQL 15.18's `pg_settings` (generated: see the file's first line).
const CATALOGUE: &str = include_str!("postgres15_settings.txt");

/// Settings the agents manage on every node themselves: a cluster-wide value would fight them.
pub const MANAGED: &[(&str, &str)] = &[
    ("primary_conninfo", "the agent points each replica at the primary"),
    ("primary_slot_name", "the agent names each replica's slot"),
    ("synchronous_standby_names", "synchronous_mode and synchronous_node_count set it"),
    ("hot_standby", "replicas must accept the agent's read-only probe"),
    ("wal_log_hints", "pg_rewind needs it on"),
    ("wal_keep_size", "set it in each node's [postgres.parameters] (the agent writes it into postgresql.auto.conf)"),
    ("max_slot_wal_keep_size", "set it in each node's [postgres.parameters] (the agent writes it into postgresql.auto.conf)"),
    ("port", "each node's [postgres] port"),
    ("listen_addresses", "each node's own configuration"),
    ("unix_socket_directories", "the agent connects through it"),
    ("data_directory", "each node's [postgres] data_dir"),
    ("config_file", "each node's own configuration"),
    ("hba_file", "each node's own configuration"),
    ("ident_file", "each node's own configuration"),
    ("external_pid_file", "each node's own configuration"),
];

/// The catalogue entry for `name` (case-insensitive, as Postgres reads names).
pub fn lookup(name: &str) -> Option<Setting> {
    CATALOGUE.lines().filter(|l| !l.starts_with('#')).find_map(|line| {
        let mut f = line.split('|');
        let (n, ctx, vartype, enums) = (f.next()?, f.next()?, f.next()?, f.next().unwrap_or(""));
        if !n.eq_ignore_ascii_case(name) {
            return None;
        }
        let context = match ctx {
            "postmaster" => Context::Postmaster,
            "sighup" => Context::Sighup,
            "internal" => Context::Internal,
            _ => Context::Session,
        };
        let enumvals = enums.split(',').filter(|e| !e.is_empty()).collect();
        Some(Setting { name: n, context, vartype, enumvals })
    })
}

/// Checks one `name = value` and returns the name as Postgres spells it and how it takes effect.
/// Refused: names PostgreSQL 15 does not know (an extension's `prefix.name` is accepted as a
/// string), read-only settings, [`MANAGED`] ones, and values of the wrong type (a boolean, an
/// enum's values, a number with an optional unit). Postgres still has the last word: a value it
/// refuses on reload is reported in [`MemberState::parameter_errors`].
pub fn validate(name: &str, value: &str) -> Result<(String, Context), String> {
    if value.chars().any(|c| c.is_control()) {
        return Err(format!("{name}: the value may not contain control characters (newlines included)"));
    }
    if let Some((_, why)) = MANAGED.iter().find(|(m, _)| m.eq_ignore_ascii_case(name)) {
        return Err(format!("{name} is managed by pgdaemon on each node ({why}); it cannot be set cluster-wide"));
    }
    if name.contains('.') {
        let ok = name.split('.').all(|part| {
            part.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        });
        return if ok {
            Ok((name.to_ascii_lowercase(), Context::Custom))
        } else {
            Err(format!("{name:?} is not a parameter name"))
        };
    }
    let setting = lookup(name).ok_or_else(|| format!("{name} is not a PostgreSQL 15 parameter"))?;
    if setting.context == Context::Internal {
        return Err(format!("{} is read-only (fixed when the cluster was initialised)", setting.name));
    }
    check_value(&setting, value).map_err(|why| format!("{} = {value:?}: {why}", setting.name))?;
    Ok((setting.name.to_string(), setting.context))
}

fn check_value(setting: &Setting, value: &str) -> Result<(), String> {
    let v = value.trim();
    match setting.vartype {
        "bool" => {
            let lower = v.to_ascii_lowercase();
            let words = ["on", "off", "true", "false", "yes", "no", "1", "0"];
            // Postgres also takes any unambiguous prefix of true/false/yes/no ("t", "ye").
            let prefix = !lower.is_empty() && ["true", "false", "yes", "no"].iter().any(|w| w.starts_with(lower.as_str()));
            if words.contains(&lower.as_str()) || prefix {
                Ok(())
            } else {
                Err("expected on or off".into())
            }
        }
        "enum" => {
            if setting.enumvals.iter().any(|e| e.eq_ignore_ascii_case(v)) {
                Ok(())
            } else {
                Err(format!("expected one of {}", setting.enumvals.join(", ")))
            }
        }
        "integer" | "real" => {
            let digits_end =
                v.find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '-' | '+' | 'e' | 'E'))).unwrap_or(v.len());
            let (number, unit) = v.split_at(digits_end);
            let unit = unit.trim();
            let number_ok = if setting.vartype == "integer" {
                number.parse::<i64>().is_ok()
            } else {
                number.parse::<f64>().is_ok_and(f64::is_finite)
            };
            const UNITS: [&str; 11] = ["B", "kB", "MB", "GB", "TB", "us", "ms", "s", "min", "h", "d"];
            if number_ok && (unit.is_empty() || UNITS.contains(&unit)) {
                Ok(())
            } else {
                Err(format!("expected a number with an optional unit ({})", UNITS.join(", ")))
            }
        }
        _ => Ok(()),
    }
}

/// The contents of [`CLUSTER_CONF_FILE`] for `params`: every value quoted as a postgresql.conf
/// string (a quote doubled, a backslash escaped), which Postgres accepts for settings of any type.
pub fn render_conf(params: &ClusterParameters) -> String {
    let mut out = format!(
        "# Written by pgdaemon from the cluster-wide parameters (version {}); edit them with\n\
         # `pgdctl edit-config --set postgresql.parameters.NAME=VALUE`, not here: the agent rewrites this file.\n",
        params.version
    );
    for (name, value) in &params.parameters {
        out.push_str(&format!("{name} = '{}'\n", value.replace('\\', "\\\\").replace('\'', "''")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_catalogue_knows_postgres_15() {
        assert_eq!(lookup("work_mem").unwrap().context, Context::Session);
        assert_eq!(lookup("shared_buffers").unwrap().context, Context::Postmaster);
        assert_eq!(lookup("DATESTYLE").unwrap().name, "DateStyle");
        assert!(lookup("no_such_thing").is_none());
        assert!(CATALOGUE.lines().count() > 300);
    }

    #[test]
    fn values_are_checked_by_type() {
        assert_eq!(validate("work_mem", "64MB").unwrap(), ("work_mem".into(), Context::Session));
        assert_eq!(validate("max_connections", "200").unwrap().1, Context::Postmaster);
        assert!(validate("log_checkpoints", "on").is_ok());
        assert!(validate("log_checkpoints", "maybe").is_err());
        assert!(validate("wal_level", "logical").is_ok());
        let e = validate("wal_level", "verbose").unwrap_err();
        assert!(e.contains("replica") && e.contains("logical"), "{e}");
        assert!(validate("work_mem", "lots").is_err());
        assert!(validate("work_mem", "64 parsecs").is_err());
        assert!(validate("checkpoint_completion_target", "0.9").is_ok());
        assert!(validate("statement_timeout", "30s").is_ok());
        assert!(validate("application_name", "it's fine").is_ok());
        assert!(validate("application_name", "two\nlines").is_err());
    }

    #[test]
    fn unknown_read_only_and_managed_names_are_refused() {
        assert!(validate("work_mme", "1").unwrap_err().contains("not a PostgreSQL 15 parameter"));
        assert!(validate("block_size", "16384").unwrap_err().contains("read-only"));
        assert!(validate("primary_conninfo", "host=x").unwrap_err().contains("managed by pgdaemon"));
        assert!(validate("Port", "5433").unwrap_err().contains("managed by pgdaemon"));
        assert_eq!(validate("pg_stat_statements.track", "all").unwrap().1, Context::Custom);
        assert!(validate("bad..name", "1").is_err());
    }

    #[test]
    fn the_file_quotes_every_value() {
        let mut p = ClusterParameters { version: 3, ..Default::default() };
        p.parameters.insert("work_mem".into(), "64MB".into());
        p.parameters.insert("application_name".into(), r"it's a\b".into());
        let text = render_conf(&p);
        assert!(text.contains("version 3"));
        assert!(text.contains("work_mem = '64MB'\n"));
        assert!(text.contains(r"application_name = 'it''s a\\b'"), "{text}");
    }
}
