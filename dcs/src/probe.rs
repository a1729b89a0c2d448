//! The coordinator's [`AgentProbe`] over TCP: connect to the agent's API port and close.
//!
//! Only a connection refused by the host (`ECONNREFUSED`, a TCP reset: the host is up and
//! nothing listens) counts as [`AgentReach::Refused`]; the coordinator may break a lease on it
//! (docs/design.md section 4, "Early failover on evidence"). A timeout, an unreachable network,
//! a name that does not resolve are [`AgentReach::NoAnswer`]. No request is sent: an accepted
//! connection already proves a live agent process, and nothing of TLS or credentials is needed.

use std::time::Duration;

use async_trait::async_trait;
use pgdaemon_core::coordinator::{AgentProbe, AgentReach};

/// A live agent's host answers a connect within milliseconds, a dead agent's host at once.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(300);

/// TCP connect to the host and port of an agent's `api_url`.
#[derive(Debug, Clone)]
pub struct TcpProbe {
    timeout: Duration,
}

impl Default for TcpProbe {
    fn default() -> Self {
        TcpProbe { timeout: PROBE_TIMEOUT }
    }
}

impl TcpProbe {
    pub fn with_timeout(timeout: Duration) -> Self {
        TcpProbe { timeout }
    }
}

#[async_trait]
impl AgentProbe for TcpProbe {
    async fn probe(&self, api_url: &str) -> AgentReach {
        let Some((host, port)) = host_port(api_url) else { return AgentReach::NoAnswer };
        match tokio::time::timeout(self.timeout, tokio::net::TcpStream::connect((host.as_str(), port))).await {
            Ok(Ok(_stream)) => AgentReach::Answered,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => AgentReach::Refused,
            Ok(Err(e)) => {
                tracing::debug!(api_url, error = %e, "agent probe: no answer");
                AgentReach::NoAnswer
            }
            Err(_) => AgentReach::NoAnswer,
        }
    }
}

/// Host and port of `http(s)://host[:port][/path]` (the scheme's port when none is given).
fn host_port(api_url: &str) -> Option<(String, u16)> {
    let url = reqwest::Url::parse(api_url).ok()?;
    let host = url.host_str()?.trim_start_matches('[').trim_end_matches(']').to_string();
    Some((host, url.port_or_known_default()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_their_host_and_port() {
        assert_eq!(host_port("http://127.0.0.3:8008"), Some(("127.0.0.3".into(), 8008)));
        assert_eq!(host_port("https://pg-1.internal/"), Some(("pg-1.internal".into(), 443)));
        assert_eq!(host_port("http://[::1]:9"), Some(("::1".into(), 9)));
        assert_eq!(host_port("not a url"), None);
        assert_eq!(host_port(""), None);
    }

    #[tokio::test]
    async fn a_listener_answers_a_closed_port_refuses() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let probe = TcpProbe::default();
        assert_eq!(probe.probe(&format!("http://{addr}")).await, AgentReach::Answered);
        drop(listener);
        // The port is free now: the host answers with a reset.
        assert_eq!(probe.probe(&format!("http://{addr}")).await, AgentReach::Refused);
        assert_eq!(probe.probe("http://no-such-host.invalid:8008").await, AgentReach::NoAnswer);
    }
}
