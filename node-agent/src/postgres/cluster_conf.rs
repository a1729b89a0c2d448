//! The cluster-wide parameters in this node's files ([`pgdaemon_core::params`]):
//! `pgdaemon.cluster.conf` beside `postgresql.conf`, the line that includes it, and the reload.

use pgdaemon_core::params::{render_conf, ClusterParameters, CLUSTER_CONF_FILE, INCLUDE_LINE};
use pgdaemon_core::pg::{DataDirState, PgError};

use super::text::{io_err, query_err};
use super::LocalPostgres;

impl LocalPostgres {
    /// [`pgdaemon_core::pg::PgControl::apply_parameters`]: writes the file (atomically, owned
    /// like the data directory) and the include line when they differ, reloads a running server
    /// after a change, and reads back the values Postgres refused. Settings that need a restart
    /// are not refusals: they show in the probe's `pending_restart`.
    pub(super) async fn write_cluster_parameters(&self, params: &ClusterParameters) -> Result<Option<Vec<String>>, PgError> {
        if self.data_state() == DataDirState::Empty {
            return Ok(None);
        }
        let wrote = self.replace_if_changed(CLUSTER_CONF_FILE, &render_conf(params))?;
        let conf = std::fs::read_to_string(self.data().join("postgresql.conf")).map_err(io_err)?;
        let included = conf.lines().any(|l| l.trim() == INCLUDE_LINE);
        if !included {
            self.replace_if_changed("postgresql.conf", &format!("{}\n{INCLUDE_LINE}\n", conf.trim_end()))?;
        }
        // Not running: the files take effect when it starts.
        let Ok(client) = self.connect().await else { return Ok(Some(Vec::new())) };
        if wrote || !included {
            client.batch_execute("SELECT pg_reload_conf()").await.map_err(query_err)?;
        }
        let refused = client
            .query(
                "SELECT f.name || ' = ' || COALESCE(f.setting, '') || ': refused by PostgreSQL (its log says why)' \
                 FROM pg_file_settings f LEFT JOIN pg_settings s ON s.name = f.name \
                 WHERE f.error IS NOT NULL AND f.sourcefile LIKE '%/' || $1 AND COALESCE(s.context, '') <> 'postmaster' \
                 ORDER BY f.sourceline",
                &[&CLUSTER_CONF_FILE],
            )
            .await
            .map_err(query_err)?;
        Ok(Some(refused.iter().map(|r| r.get::<_, String>(0)).collect()))
    }

    /// Writes `name` in the data directory through a temporary file and a rename when its
    /// contents differ. Returns whether it wrote.
    fn replace_if_changed(&self, name: &str, contents: &str) -> Result<bool, PgError> {
        let path = self.data().join(name);
        if std::fs::read_to_string(&path).is_ok_and(|old| old == contents) {
            return Ok(false);
        }
        let tmp = self.data().join(format!("{name}.pgdaemon-tmp"));
        std::fs::write(&tmp, contents).map_err(io_err)?;
        self.own(&tmp)?;
        std::fs::rename(&tmp, &path).map_err(io_err)?;
        Ok(true)
    }

    /// The bytes under the data directory (files only; unreadable entries are skipped).
    pub(super) fn data_dir_size(&self) -> u64 {
        fn walk(dir: &std::path::Path) -> u64 {
            let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
            entries
                .flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => walk(&e.path()),
                    Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
                    _ => 0,
                })
                .sum()
        }
        walk(self.data())
    }

    /// `pg_reload_conf()`.
    pub(super) async fn reload_conf(&self) -> Result<(), PgError> {
        let client = self.connect().await.map_err(|e| PgError::WrongState(format!("not running: {e}")))?;
        client.batch_execute("SELECT pg_reload_conf()").await.map_err(query_err)
    }
}
