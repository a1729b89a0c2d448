//! A new cluster's database (automatic bootstrap, `[bootstrap]`, docs/bootstrap.md): initdb,
//! the access rules, the replication and rewind roles. The decision to do it and the lock that
//! makes one member at a time do it live in `pgdaemon_core::agent::bootstrap`.

use std::path::PathBuf;
use std::time::Duration;

use pgdaemon_core::backup::RestoreSource;
use pgdaemon_core::pg::{DataDirState, PgError};
use serde::{Deserialize, Serialize};

use super::text::{io_err, query_err, sql_quote};
use super::LocalPostgres;

/// `[bootstrap]`: whether the agents initialise a cluster that has no record, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootstrapConfig {
    /// Initialise a new cluster when there is no cluster record and no member has a database.
    #[serde(default)]
    pub enabled: bool,
    /// Seconds the winner has to initialise; a winner that dies is replaced after this long.
    #[serde(default = "default_lock_s")]
    pub lock_s: u64,
    #[serde(default = "default_encoding")]
    pub encoding: String,
    #[serde(default = "default_locale")]
    pub locale: String,
    #[serde(default = "default_true")]
    pub data_checksums: bool,
    /// Networks (CIDR) of the members: pg_hba lets the replication and rewind roles in from them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peer_networks: Vec<String>,
    /// Networks (CIDR) of the applications: pg_hba lets every role in from them, with a password.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_networks: Vec<String>,
}

fn default_lock_s() -> u64 {
    pgdaemon_core::agent::DEFAULT_BOOTSTRAP_LOCK.as_secs()
}
fn default_encoding() -> String {
    "UTF8".into()
}
fn default_locale() -> String {
    "C.UTF-8".into()
}
fn default_true() -> bool {
    true
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig {
            enabled: false,
            lock_s: default_lock_s(),
            encoding: default_encoding(),
            locale: default_locale(),
            data_checksums: true,
            peer_networks: Vec::new(),
            client_networks: Vec::new(),
        }
    }
}

impl BootstrapConfig {
    /// Value checks; names the key at fault (without the `bootstrap.` prefix).
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if self.lock_s < 10 {
            return Err(("lock_s", format!("{} s is too short for initdb; use 10 or more", self.lock_s)));
        }
        for (key, v) in [("encoding", &self.encoding), ("locale", &self.locale)] {
            if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c)) {
                return Err((key, format!("{v:?} is not an encoding or locale name")));
            }
        }
        for (key, nets) in [("peer_networks", &self.peer_networks), ("client_networks", &self.client_networks)] {
            if let Some(bad) = nets.iter().find(|n| n.parse::<ipnet::IpNet>().is_err()) {
                return Err((key, format!("{bad:?} is not a CIDR such as 10.0.0.0/16")));
            }
        }
        Ok(())
    }
}

/// A role name as an SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Written beside the data directory before initdb, removed once the cluster record exists: a
/// directory with it is an interrupted bootstrap of this node, safe to start over.
pub(super) fn marker_path(data_dir: &std::path::Path) -> PathBuf {
    let mut name = data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "pgdata".into());
    name.push(".pgdaemon-initializing");
    data_dir.with_file_name(name)
}

impl LocalPostgres {
    /// The whole of [`pgdaemon_core::pg::PgControl::initialize`], within `budget`; Postgres is
    /// stopped on every way out.
    pub(super) async fn initialize_within(&self, budget: Duration, restore: Option<&RestoreSource>) -> Result<(), PgError> {
        let result = match tokio::time::timeout(budget, self.initialize_steps(restore)).await {
            Ok(r) => r,
            Err(_) => Err(PgError::Timeout(format!("initialisation did not finish within {budget:?}"))),
        };
        if self.postmaster_running().await.unwrap_or(true) {
            if let Err(e) = self.stop_inner(pgdaemon_core::pg::StopMode::Fast).await {
                tracing::warn!(error = %e, "could not stop the postgres being initialised");
            }
        }
        result
    }

    async fn initialize_steps(&self, restore: Option<&RestoreSource>) -> Result<(), PgError> {
        let s = &self.settings;
        let marker = marker_path(&s.data_dir);
        if self.postmaster_running().await? {
            return Err(PgError::WrongState("postgres runs on this data directory; not initialising over it".into()));
        }
        match self.data_state() {
            DataDirState::Empty => {}
            _ if marker.exists() => tracing::info!("starting over an interrupted bootstrap of this node"),
            _ => return Err(PgError::WrongState("the data directory holds a database; not initialising over it".into())),
        }
        std::fs::write(&marker, format!("{}\n", s.member)).map_err(io_err)?;
        if let Some(restore) = restore {
            return self.restore_steps(restore).await;
        }
        self.clear_data_dir().await?;
        let b = &s.bootstrap;
        let mut cmd = self.command("initdb");
        cmd.arg("-D")
            .arg(self.data())
            .args(["-U", &s.superuser, "-E", &b.encoding])
            .arg(format!("--locale={}", b.locale))
            .args(["--auth-local=peer", "--auth-host=scram-sha-256", "--no-instructions"]);
        if b.data_checksums {
            cmd.arg("--data-checksums");
        }
        self.run("initdb", cmd, Duration::from_secs(300)).await?;
        self.write_access_files()?;
        // Reachable only where the agent connects: the socket directory, or a loopback address.
        let listen = if s.connect_host.starts_with('/') { String::new() } else { s.connect_host.clone() };
        self.start_with(&[("listen_addresses", listen)]).await?;
        self.create_roles().await?;
        self.stop_inner(pgdaemon_core::pg::StopMode::Fast).await?;
        tracing::info!(encoding = %b.encoding, locale = %b.locale, checksums = b.data_checksums, "initialised a new database");
        Ok(())
    }

    /// This cluster's pg_hba.conf and pg_ident.conf (also over a restored backup's, which name
    /// the source cluster's networks).
    pub(super) fn write_access_files(&self) -> Result<(), PgError> {
        for (file, text) in [("pg_hba.conf", self.hba()), ("pg_ident.conf", self.ident())] {
            let path = self.data().join(file);
            std::fs::write(&path, text).map_err(io_err)?;
            self.own(&path)?;
        }
        Ok(())
    }

    /// Removes the bootstrap marker.
    pub(super) fn remove_marker(&self) -> Result<(), PgError> {
        match std::fs::remove_file(marker_path(&self.settings.data_dir)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(e)),
            _ => Ok(()),
        }
    }

    /// Roles with SCRAM verifiers computed here: no password in any statement the server sees.
    /// A role that exists (a database restored from another cluster's backup) gets this
    /// cluster's password instead.
    pub(super) async fn create_roles(&self) -> Result<(), PgError> {
        let s = &self.settings;
        let client = self.connect().await?;
        let existing: Vec<String> =
            client.query("SELECT rolname::text FROM pg_roles", &[]).await.map_err(query_err)?.iter().map(|r| r.get(0)).collect();
        let create = |name: &str, attributes: &str| {
            if existing.iter().any(|e| e == name) {
                format!("ALTER ROLE {} WITH {attributes}", ident(name))
            } else {
                format!("CREATE ROLE {} WITH {attributes}", ident(name))
            }
        };
        let verifier = |p: &crate::secrets::Secret| postgres_protocol::password::scram_sha_256(p.expose().as_bytes());
        let mut sql = Vec::new();
        let repl = &s.peers.replication_user;
        if repl != &s.superuser {
            let mut stmt = create(repl, "LOGIN REPLICATION");
            if let Some(p) = &s.peers.replication_password {
                stmt.push_str(&format!(" PASSWORD {}", sql_quote(&verifier(p))));
            }
            sql.push(stmt);
        }
        if let Some(rewind) = s.peers.rewind_user.as_deref().filter(|r| *r != s.superuser) {
            let mut stmt = create(rewind, "LOGIN");
            if let Some(p) = &s.peers.rewind_password {
                stmt.push_str(&format!(" PASSWORD {}", sql_quote(&verifier(p))));
            }
            sql.push(stmt);
            // What pg_rewind and the CHECKPOINT before it need (PostgreSQL 15).
            for function in [
                "pg_ls_dir(text, boolean, boolean)",
                "pg_stat_file(text, boolean)",
                "pg_read_binary_file(text)",
                "pg_read_binary_file(text, bigint, bigint, boolean)",
            ] {
                sql.push(format!("GRANT EXECUTE ON FUNCTION pg_catalog.{function} TO {}", ident(rewind)));
            }
            sql.push(format!("GRANT pg_checkpoint TO {}", ident(rewind)));
        }
        for stmt in sql {
            client.batch_execute(&stmt).await.map_err(query_err)?;
        }
        Ok(())
    }

    /// pg_hba.conf: the agent on the socket (peer, through the `pgdaemon` map), the peers' roles
    /// and the applications from their networks with SCRAM, over TLS when the server has it.
    fn hba(&self) -> String {
        let s = &self.settings;
        let ssl = s.server_options.iter().any(|(k, v)| k == "ssl" && matches!(v.as_str(), "on" | "true" | "1"));
        let host = if ssl { "hostssl" } else { "host" };
        let mut lines = vec![
            "# Written by pgdaemon's automatic bootstrap (docs/bootstrap.md); pg_basebackup copies it to".to_string(),
            "# every member. First match wins; anything without a line is refused.".to_string(),
            format!("local all {} peer map=pgdaemon", s.superuser),
            "local all all peer".to_string(),
        ];
        if !s.connect_host.starts_with('/') {
            // The agent's own connection over TCP ([postgres] connect_host): this host only.
            let address = match s.connect_host.parse::<std::net::IpAddr>() {
                Ok(ip) if ip.is_ipv4() => format!("{ip}/32"),
                Ok(ip) => format!("{ip}/128"),
                Err(_) => "samehost".into(),
            };
            lines.push(format!("host all {} {address} trust", s.superuser));
        }
        for net in &s.bootstrap.peer_networks {
            lines.push(format!("{host} replication {} {net} scram-sha-256", s.peers.replication_user));
            // Never the superuser from the network: without a rewind role, rejoins use basebackup.
            if let Some(rewind) = s.peers.rewind_user.as_deref().filter(|r| *r != s.superuser) {
                lines.push(format!("{host} all {rewind} {net} scram-sha-256"));
            }
        }
        for net in &s.bootstrap.client_networks {
            lines.push(format!("{host} all all {net} scram-sha-256"));
        }
        lines.join("\n") + "\n"
    }

    /// pg_ident.conf: the OS users the agent and the tools run as may connect as the superuser.
    fn ident(&self) -> String {
        let s = &self.settings;
        let mut users = vec!["root".to_string(), s.superuser.clone()];
        users.extend(s.run_as.clone());
        users.extend(crate::process::current_user());
        users.sort();
        users.dedup();
        let mut text =
            String::from("# Written by pgdaemon's automatic bootstrap: who may connect as the superuser on the socket.\n");
        for u in users {
            text.push_str(&format!("pgdaemon {u} {}\n", s.superuser));
        }
        text
    }
}
