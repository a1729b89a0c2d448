//! HAProxy in front of the three members with the check docs/load-balancers.md documents: TCP
//! proxying to Postgres, HTTP check of each agent's `GET /primary` (200 only on the primary),
//! `inter 1s fall 2 rise 1`, sessions cut when a server is marked down. Started by the bench on
//! a free loopback port and stopped by its PID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result};

/// The configuration for `members` = (name, Postgres port, agent API port).
pub fn config(listen_port: u16, members: &[(String, u16, u16)]) -> String {
    let mut s = format!(
        "global\n    maxconn 200\n\n\
         defaults\n    mode tcp\n    timeout connect 2s\n    timeout client 30m\n    timeout server 30m\n\n\
         listen postgres_primary\n    bind 127.0.0.1:{listen_port}\n    \
         option httpchk GET /primary\n    http-check expect status 200\n    \
         default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions\n"
    );
    for (name, pg, api) in members {
        s.push_str(&format!("    server {name} 127.0.0.1:{pg} check port {api}\n"));
    }
    s
}

/// The `haproxy` binary (scripts/bench-failover installs it when missing).
pub fn binary() -> Result<PathBuf> {
    for p in ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy", "/usr/bin/haproxy"] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    let out = Command::new("sh").args(["-c", "command -v haproxy"]).output().context("looking for haproxy")?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    anyhow::ensure!(!path.is_empty(), "haproxy is not installed (scripts/bench-failover installs it: apt-get install haproxy)");
    Ok(PathBuf::from(path))
}

/// A running HAProxy, killed by its PID when dropped.
pub struct Haproxy {
    pub port: u16,
    child: Child,
}

impl Haproxy {
    pub fn start(dir: &Path, members: &[(String, u16, u16)]) -> Result<Haproxy> {
        let port = pgdaemon_testkit::ports::free_port();
        let cfg = dir.join("haproxy.cfg");
        std::fs::write(&cfg, config(port, members))?;
        let log = std::fs::File::create(dir.join("haproxy.log"))?;
        // -db: stay in the foreground (so the PID is ours), -f: this configuration only.
        let child = Command::new(binary()?)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn haproxy")?;
        Ok(Haproxy { port, child })
    }

    pub fn conninfo(&self) -> String {
        format!("host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=1", self.port)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn config_checks_each_agent_for_primary() {
        let c = super::config(6000, &[("pg-1".into(), 5001, 8001), ("pg-2".into(), 5002, 8002)]);
        assert!(c.contains("bind 127.0.0.1:6000\n"));
        assert!(c.contains("option httpchk GET /primary\n"));
        assert!(c.contains("http-check expect status 200\n"));
        assert!(c.contains("default-server inter 1s fall 2 rise 1 on-marked-down shutdown-sessions\n"));
        assert!(c.contains("server pg-2 127.0.0.1:5002 check port 8002\n"));
    }
}
