//! Fencers that need no cloud SDK: the agent's HTTP demote endpoint and a local command.
//! (The EC2 and SSM fencers live in the Lambda crate, the only crate built with the EC2 SDK.)

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use pgdaemon_core::fence::{DemoteReply, DemoteRequest, FenceStatus, FenceTarget, Fencer, PendingHandle};

use crate::agent_client::AgentClient;
use crate::tls::{ClientIdentity, TlsError};

/// Asks the old primary's agent to demote: `POST <api_url>/demote` with a [`DemoteRequest`]
/// (`{"term": T, "reason": "..."}`). The agent answers 200 with a [`DemoteReply`]
/// (`{"demoted": true, ...}`) only once Postgres stopped accepting writes. Confirmed only by a
/// success status (2xx) whose reply has `demoted: true`, `member` equal to the target's name and
/// `term` equal (as a number) to the term asked for ([`DemoteReply::confirms`]). Everything else is a failure, never a confirmation: a refused connection, a
/// timeout, any other status (401, 409, 503, ...), a body that is not JSON or lacks
/// `demoted: true`, and an answer that names another member or term *or leaves either out* (a
/// misrouted request, e.g. to an address reused by another node, or a confused agent confirms
/// nothing about the target). A target whose heartbeat has no API URL is refused without a
/// request. The old primary's final WAL position (switchover catch-up) is read from `lsn`, else
/// `final_lsn`, when present as a parseable string; otherwise the confirmation carries none.
///
/// Agents require authentication for `/demote` (`[api]` credentials): give the fencer the
/// `Authorization` header value with [`HttpDemoteFencer::with_authorization`].
///
/// `https://` API URLs (agents with `[api] tls_cert_file`) are verified, chain and host name,
/// against the system's roots, or the CA given to [`HttpDemoteFencer::with_tls`]; an agent
/// requiring client certificates (`tls_client_ca_file`) gets the identity given there. A
/// certificate that does not verify fails the request before anything is sent: never a
/// confirmation.
/// A live agent accepts a connection (and completes a TLS handshake) within milliseconds; one
/// that does not (a dead host, a partition dropping its packets) costs the chain only this
/// before the next fencer is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone)]
pub struct HttpDemoteFencer {
    client: AgentClient,
}

impl HttpDemoteFencer {
    /// `timeout` bounds the whole request, including the agent's demotion (a fast shutdown with
    /// a checkpoint; tens of seconds at worst on a busy primary); connecting, at most
    /// [`CONNECT_TIMEOUT`] of it.
    /// `https://` is verified against the system's roots (see [`Self::with_tls`] for a private
    /// CA).
    pub fn new(timeout: Duration) -> Self {
        HttpDemoteFencer { client: AgentClient::new(timeout.min(CONNECT_TIMEOUT), Some(timeout)) }
    }

    /// Verifies the agents' certificates against `ca_file` (PEM; `None`: the system's roots)
    /// and presents `identity` to agents that require a client certificate. Fails, naming the
    /// file, when a file cannot be read or used.
    pub fn with_tls(mut self, ca_file: Option<&Path>, identity: Option<&ClientIdentity>) -> Result<Self, TlsError> {
        self.client = self.client.with_tls(ca_file, identity)?;
        Ok(self)
    }

    /// [`Self::with_tls`] with a configuration built elsewhere (from [`crate::tls`]).
    pub fn with_tls_config(mut self, tls: rustls::ClientConfig) -> Self {
        self.client = self.client.with_tls_config(tls);
        self
    }

    /// Sends `authorization` (`Basic ...` or `Bearer ...`) with every request.
    pub fn with_authorization(mut self, authorization: Option<reqwest::header::HeaderValue>) -> Self {
        self.client = self.client.with_authorization(authorization);
        self
    }
}

#[async_trait]
impl Fencer for HttpDemoteFencer {
    fn name(&self) -> &str {
        "http"
    }

    async fn fence(&self, target: &FenceTarget, _pending: Option<&PendingHandle>) -> FenceStatus {
        if target.api_url.is_empty() {
            return FenceStatus::Refused { detail: format!("{} reports no agent API URL", target.member) };
        }
        let url = format!("{}/demote", target.api_url.trim_end_matches('/'));
        let body = DemoteRequest { term: target.term, reason: target.reason.clone() };
        let answer = match self.client.post(&target.api_url, "/demote", &body).await {
            Ok(a) => a,
            Err(detail) => return FenceStatus::Failed { detail },
        };
        if !answer.status.is_success() {
            return FenceStatus::Failed {
                detail: format!("POST {url}: HTTP {}: {}", answer.status, answer.body.chars().take(300).collect::<String>()),
            };
        }
        let reply: DemoteReply = match serde_json::from_str(&answer.body) {
            Ok(r) => r,
            Err(e) if e.is_data() => {
                return FenceStatus::Failed {
                    detail: format!("POST {url}: the answer is not a demote reply ({e}): not a confirmation"),
                }
            }
            Err(e) => return FenceStatus::Failed { detail: format!("POST {url}: answer is not JSON: {e}") },
        };
        // The confirmation must be about the target and the term asked for.
        match reply.confirms(&target.member, target.term) {
            Ok(lsn) => FenceStatus::Confirmed {
                detail: format!("agent at {} confirmed demotion for term {}", target.api_url, target.term),
                lsn,
            },
            Err(why) => FenceStatus::Failed { detail: format!("POST {url}: {why}") },
        }
    }
}

/// Runs `sh -c <command>` on the coordinator's host (tests, and hosts without a cloud API).
///
/// The command learns its target from the environment: `PGDAEMON_FENCE_CLUSTER`,
/// `PGDAEMON_FENCE_MEMBER`, `PGDAEMON_FENCE_TERM`, `PGDAEMON_FENCE_KIND`,
/// `PGDAEMON_FENCE_INSTANCE_ID`, `PGDAEMON_FENCE_API_URL`, `PGDAEMON_FENCE_PG_HOST`,
/// `PGDAEMON_FENCE_PG_PORT`. Exit status 0 means "confirmed: the target cannot accept writes";
/// any other status, a signal or the timeout is a failure (the process is killed on timeout).
/// The command must therefore verify, not just attempt (e.g. stop, then check nothing listens).
#[derive(Debug, Clone)]
pub struct CommandFencer {
    command: String,
    timeout: Duration,
}

impl CommandFencer {
    pub fn new(command: impl Into<String>, timeout: Duration) -> Self {
        CommandFencer { command: command.into(), timeout }
    }
}

#[async_trait]
impl Fencer for CommandFencer {
    fn name(&self) -> &str {
        "command"
    }

    async fn fence(&self, target: &FenceTarget, _pending: Option<&PendingHandle>) -> FenceStatus {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(&self.command)
            .env("PGDAEMON_FENCE_CLUSTER", &target.cluster)
            .env("PGDAEMON_FENCE_MEMBER", &target.member)
            .env("PGDAEMON_FENCE_TERM", target.term.to_string())
            .env("PGDAEMON_FENCE_KIND", target.kind.to_string())
            .env("PGDAEMON_FENCE_INSTANCE_ID", target.instance_id.as_deref().unwrap_or(""))
            .env("PGDAEMON_FENCE_API_URL", &target.api_url)
            .env("PGDAEMON_FENCE_PG_HOST", &target.pg_host)
            .env("PGDAEMON_FENCE_PG_PORT", target.pg_port.to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let run = cmd.output();
        let out = match tokio::time::timeout(self.timeout, run).await {
            Err(_) => return FenceStatus::Failed { detail: format!("command timed out after {} ms", self.timeout.as_millis()) },
            Ok(Err(e)) => return FenceStatus::Failed { detail: format!("cannot run the fence command: {e}") },
            Ok(Ok(out)) => out,
        };
        let tail = |b: &[u8]| {
            String::from_utf8_lossy(b).trim().chars().rev().take(300).collect::<String>().chars().rev().collect::<String>()
        };
        if out.status.success() {
            FenceStatus::Confirmed { detail: format!("fence command succeeded: {}", tail(&out.stdout)), lsn: None }
        } else {
            FenceStatus::Failed { detail: format!("fence command failed ({}): {}", out.status, tail(&out.stderr)) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdaemon_core::TransitionKind;

    fn target(api_url: &str) -> FenceTarget {
        let mut t = FenceTarget::new("c1", "n1", None, 7, TransitionKind::Failover, "lease expired");
        t.api_url = api_url.to_string();
        t.pg_port = 5432;
        t
    }

    #[tokio::test]
    async fn command_exit_status_decides_and_sees_the_target() {
        let ok = CommandFencer::new(
            "test \"$PGDAEMON_FENCE_MEMBER/$PGDAEMON_FENCE_TERM/$PGDAEMON_FENCE_PG_PORT\" = n1/7/5432 && echo stopped",
            Duration::from_secs(5),
        );
        match ok.fence(&target(""), None).await {
            FenceStatus::Confirmed { detail, .. } => assert!(detail.contains("stopped"), "{detail}"),
            other => panic!("{other:?}"),
        }
        let bad = CommandFencer::new("echo still running >&2; exit 3", Duration::from_secs(5));
        match bad.fence(&target(""), None).await {
            FenceStatus::Failed { detail } => assert!(detail.contains("still running"), "{detail}"),
            other => panic!("{other:?}"),
        }
        let slow = CommandFencer::new("sleep 5", Duration::from_millis(200));
        assert!(matches!(slow.fence(&target(""), None).await, FenceStatus::Failed { .. }));
    }

    /// A one-shot HTTP server answering with `status` and `body` (testkit).
    async fn serve(status: u16, body: &'static str) -> (String, tokio::task::JoinHandle<String>) {
        pgdaemon_testkit::http::serve_once(status, body).await
    }

    #[tokio::test]
    async fn http_demote_confirms_only_on_demoted_true() {
        let f = HttpDemoteFencer::new(Duration::from_secs(5));
        // The reply exactly as agents write it today.
        let (url, task) =
            serve(200, r#"{"demoted":true,"term":7,"member":"n1","role":"replica","fenced_through":7,"lsn":"0/3000060"}"#).await;
        match f.fence(&target(&url), None).await {
            FenceStatus::Confirmed { lsn, .. } => assert_eq!(lsn, Some("0/3000060".parse().unwrap())),
            other => panic!("{other:?}"),
        }
        let request = task.await.unwrap();
        assert!(request.starts_with("POST /demote "), "{request}");
        assert!(request.contains(r#""term":7"#) && request.contains("lease expired"), "{request}");
        assert!(!request.to_ascii_lowercase().contains("authorization:"), "{request}");

        let (url, _t) = serve(503, r#"{"demoted":false,"error":"still primary"}"#).await;
        assert!(matches!(f.fence(&target(&url), None).await, FenceStatus::Failed { detail } if detail.contains("503")));
        let (url, _t) = serve(200, r#"{"demoted":false}"#).await;
        assert!(matches!(f.fence(&target(&url), None).await, FenceStatus::Failed { .. }));
        // Nobody listening.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(matches!(f.fence(&target(&format!("http://127.0.0.1:{port}")), None).await, FenceStatus::Failed { .. }));
        assert!(matches!(f.fence(&target(""), None).await, FenceStatus::Refused { .. }));
    }

    #[tokio::test]
    async fn http_demote_rejects_a_confirmation_for_another_member_or_term() {
        let f = HttpDemoteFencer::new(Duration::from_secs(5));
        for body in [
            r#"{"demoted":true,"term":7,"member":"n2"}"#,
            r#"{"demoted":true,"term":8,"member":"n1"}"#,
            r#"{"demoted":true,"term":6,"member":"n1"}"#,
            r#"{"demoted":true,"member":"n1"}"#,
            r#"{"demoted":true,"term":7}"#,
            r#"{"demoted":true,"term":"7","member":"n1"}"#,
        ] {
            let (url, _t) = serve(200, body).await;
            match f.fence(&target(&url), None).await {
                FenceStatus::Failed { detail } => assert!(detail.contains("not a confirmation"), "{body}: {detail}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn http_demote_sends_its_credentials_and_reports_a_refusal() {
        let auth = reqwest::header::HeaderValue::from_static("Bearer t0ken");
        let f = HttpDemoteFencer::new(Duration::from_secs(5)).with_authorization(Some(auth));
        assert!(!format!("{f:?}").contains("t0ken"), "the credential must not show in Debug");
        let (url, task) = serve(200, r#"{"demoted":true,"term":7,"member":"n1"}"#).await;
        assert!(matches!(f.fence(&target(&url), None).await, FenceStatus::Confirmed { .. }));
        let request = task.await.unwrap().to_ascii_lowercase();
        assert!(request.contains("authorization: bearer t0ken"), "{request}");
        let (url, _t) = serve(401, r#"{"error":"authentication required"}"#).await;
        assert!(matches!(f.fence(&target(&url), None).await, FenceStatus::Failed { detail } if detail.contains("401")));
    }
}
