//! How this node reaches its peers' Postgres: streaming (`primary_conninfo`), `pg_basebackup`,
//! and `pg_rewind` with the CHECKPOINT before it. Every one is a libpq connection string with the
//! same TLS settings, and none holds a password: passwords live in a passfile (mode 0600, owned by
//! the user the Postgres tools and the WAL receiver run as) that the strings name with libpq's
//! `passfile` keyword. So no password is on a command line (`/proc/<pid>/cmdline`), in
//! `postgresql.auto.conf` (copied to every member by pg_basebackup) or in a log line.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use pgdaemon_core::pg::{PgError, PrimaryTarget};
use serde::{Deserialize, Serialize};

use super::text::{conn_quote, io_err};
use crate::secrets::Secret;

/// libpq's TLS settings for connections to peers (`[postgres.tls]`), passed as they are.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTls {
    /// `disable`, `allow`, `prefer` (libpq's default), `require`, `verify-ca` or `verify-full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslmode: Option<String>,
    /// CA certificate(s) that verify the peers' server certificates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate and key, for servers that require one (`clientcert=verify-ca`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslcert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sslkey: Option<PathBuf>,
}

pub const SSL_MODES: [&str; 6] = ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"];

impl PeerTls {
    /// Checks the mode and that certificate and key come together; names the key at fault.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(mode) = &self.sslmode {
            if !SSL_MODES.contains(&mode.as_str()) {
                return Err(("sslmode", format!("{mode:?} is not one of {}", SSL_MODES.join(", "))));
            }
        }
        if self.sslcert.is_some() != self.sslkey.is_some() {
            return Err(("sslcert", "sslcert and sslkey go together".into()));
        }
        let verifies = matches!(self.sslmode.as_deref(), Some("verify-ca" | "verify-full"));
        if verifies && self.sslrootcert.is_none() {
            return Err(("sslrootcert", "verify-ca and verify-full need the CA that signed the peers' certificates".into()));
        }
        Ok(())
    }

    fn params(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some(m) = &self.sslmode {
            p.push(format!("sslmode={}", conn_quote(m)));
        }
        for (key, path) in [("sslrootcert", &self.sslrootcert), ("sslcert", &self.sslcert), ("sslkey", &self.sslkey)] {
            if let Some(path) = path {
                p.push(format!("{key}={}", conn_quote(&path.to_string_lossy())));
            }
        }
        p
    }
}

/// Roles, passwords and TLS for connections to peers.
#[derive(Debug, Clone)]
pub struct PeerAuth {
    /// Streaming and pg_basebackup.
    pub replication_user: String,
    pub replication_password: Option<Secret>,
    /// pg_rewind and its CHECKPOINT (`None`: the superuser, as before rewind roles existed). A
    /// dedicated role needs the grants listed in docs/security.md.
    pub rewind_user: Option<String>,
    pub rewind_password: Option<Secret>,
    pub tls: PeerTls,
    /// Where the passfile is written; `None`: `<data_dir>.pgpass` beside the data directory.
    pub passfile: Option<PathBuf>,
}

impl Default for PeerAuth {
    fn default() -> Self {
        PeerAuth {
            replication_user: "replicator".into(),
            replication_password: None,
            rewind_user: None,
            rewind_password: None,
            tls: PeerTls::default(),
            passfile: None,
        }
    }
}

/// What a connection to a peer is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Streaming or pg_basebackup, as `application_name` = this member.
    Replication,
    /// pg_rewind's source and the CHECKPOINT before it.
    Rewind,
}

/// One `.pgpass` field: `\` and `:` escaped.
fn pgpass_field(v: &str) -> String {
    v.replace('\\', "\\\\").replace(':', "\\:")
}

impl PeerAuth {
    fn has_passwords(&self) -> bool {
        self.replication_password.is_some() || self.rewind_password.is_some()
    }

    /// The passfile's path for a data directory.
    pub fn passfile_path(&self, data_dir: &Path) -> PathBuf {
        self.passfile.clone().unwrap_or_else(|| {
            let mut name = data_dir.file_name().map(|n| n.to_os_string()).unwrap_or_else(|| "pgdata".into());
            name.push(".pgpass");
            data_dir.with_file_name(name)
        })
    }

    /// The passfile's lines; `None` when no password is configured (no file needed).
    fn passfile_text(&self, superuser: &str) -> Option<String> {
        if !self.has_passwords() {
            return None;
        }
        let mut text = String::new();
        if let Some(p) = &self.replication_password {
            // `replication` is the database name libpq matches for streaming connections.
            text.push_str(&format!("*:*:*:{}:{}\n", pgpass_field(&self.replication_user), pgpass_field(p.expose())));
        }
        if let Some(p) = &self.rewind_password {
            let user = self.rewind_user.as_deref().unwrap_or(superuser);
            text.push_str(&format!("*:*:*:{}:{}\n", pgpass_field(user), pgpass_field(p.expose())));
        }
        Some(text)
    }

    /// Writes the passfile (when a password is configured): created 0600 under a temporary name
    /// beside it, given to `owner` (uid, gid), then renamed over the old one, so no reader ever
    /// sees a partial file or wider permissions.
    pub fn write_passfile(&self, data_dir: &Path, superuser: &str, owner: Option<(u32, u32)>) -> Result<(), PgError> {
        let Some(text) = self.passfile_text(superuser) else { return Ok(()) };
        let path = self.passfile_path(data_dir);
        if std::fs::read(&path).ok().as_deref() == Some(text.as_bytes())
            && std::fs::metadata(&path).is_ok_and(|m| pgdaemon_dcs::secret::check_private(&m).is_ok())
        {
            return Ok(());
        }
        let tmp = path.with_extension("pgpass-new");
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| PgError::WrongState(format!("cannot write the passfile {}: {e}", tmp.display())))?;
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(io_err)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&tmp, Some(uid), Some(gid)).map_err(io_err)?;
        }
        std::fs::rename(&tmp, &path).map_err(io_err)
    }

    /// The connection string to `target` for `purpose`: host, port, user, TLS settings and the
    /// passfile; never a password. `dbname`: the database a rewind connects to.
    pub fn conninfo(
        &self,
        target: &PrimaryTarget,
        purpose: Purpose,
        member: &str,
        superuser: &str,
        dbname: &str,
        data_dir: &Path,
    ) -> String {
        let mut parts = vec![format!("host={}", conn_quote(&target.host)), format!("port={}", target.port)];
        match purpose {
            Purpose::Replication => {
                parts.push(format!("user={}", conn_quote(&self.replication_user)));
                parts.push(format!("application_name={}", conn_quote(member)));
            }
            Purpose::Rewind => {
                parts.push(format!("user={}", conn_quote(self.rewind_user.as_deref().unwrap_or(superuser))));
                parts.push(format!("dbname={}", conn_quote(dbname)));
            }
        }
        if self.has_passwords() {
            parts.push(format!("passfile={}", conn_quote(&self.passfile_path(data_dir).to_string_lossy())));
        }
        parts.extend(self.tls.params());
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn target() -> PrimaryTarget {
        PrimaryTarget { name: "pg-1".into(), host: "10.0.0.5".into(), port: 5432 }
    }

    fn auth() -> PeerAuth {
        PeerAuth {
            replication_password: Some(Secret::new("r:e\\p")),
            rewind_user: Some("rewinder".into()),
            rewind_password: Some(Secret::new("s3cret")),
            tls: PeerTls {
                sslmode: Some("verify-full".into()),
                sslrootcert: Some("/etc/pg/ca.crt".into()),
                sslcert: Some("/etc/pg/node.crt".into()),
                sslkey: Some("/etc/pg/node.key".into()),
            },
            ..Default::default()
        }
    }

    #[test]
    fn connection_strings_name_the_passfile_never_a_password() {
        let a = auth();
        let data = Path::new("/var/lib/postgresql/15/main");
        let rep = a.conninfo(&target(), Purpose::Replication, "pg-2", "postgres", "postgres", data);
        assert_eq!(
            rep,
            "host='10.0.0.5' port=5432 user='replicator' application_name='pg-2' \
             passfile='/var/lib/postgresql/15/main.pgpass' sslmode='verify-full' sslrootcert='/etc/pg/ca.crt' \
             sslcert='/etc/pg/node.crt' sslkey='/etc/pg/node.key'"
        );
        let rew = a.conninfo(&target(), Purpose::Rewind, "pg-2", "postgres", "postgres", data);
        assert!(rew.contains("user='rewinder' dbname='postgres'"), "{rew}");
        for s in [&rep, &rew] {
            assert!(!s.contains("s3cret") && !s.contains("r:e") && !s.contains("password"), "{s}");
        }
        let plain = PeerAuth::default().conninfo(&target(), Purpose::Rewind, "pg-2", "postgres", "postgres", data);
        assert_eq!(plain, "host='10.0.0.5' port=5432 user='postgres' dbname='postgres'");
    }

    #[test]
    fn the_passfile_is_private_and_escaped() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("main");
        let a = auth();
        a.write_passfile(&data, "postgres", None).unwrap();
        let path = dir.path().join("main.pgpass");
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "*:*:*:replicator:r\\:e\\\\p\n*:*:*:rewinder:s3cret\n");
        // Unchanged content: left alone; changed: replaced whole.
        a.write_passfile(&data, "postgres", None).unwrap();
        let b = PeerAuth { rewind_password: None, ..a };
        b.write_passfile(&data, "postgres", None).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "*:*:*:replicator:r\\:e\\\\p\n");
        assert!(!dir.path().join("main.pgpass-new").exists());
    }

    #[test]
    fn tls_settings_are_checked() {
        assert!(auth().tls.validate().is_ok());
        let bad = PeerTls { sslmode: Some("verify".into()), ..Default::default() };
        assert_eq!(bad.validate().unwrap_err().0, "sslmode");
        let half = PeerTls { sslcert: Some("/c".into()), ..Default::default() };
        assert_eq!(half.validate().unwrap_err().0, "sslcert");
        let unverified = PeerTls { sslmode: Some("verify-ca".into()), ..Default::default() };
        assert_eq!(unverified.validate().unwrap_err().0, "sslrootcert");
    }
}
