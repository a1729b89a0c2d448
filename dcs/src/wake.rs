//! The coordinator's [`AgentWaker`] over HTTP: `POST <api_url>/wake` on the member's agent, in
//! the background, so the agent runs its next loop at once instead of at its next tick
//! (docs/design.md section 4). Built like the `http` fencer ([`crate::fence_config`]): the same
//! TLS configuration and the same `Authorization` header, since agents guard `/wake` as they
//! guard `/demote`.
//!
//! Best effort by design: a wake only brings an ordinary loop forward, so a lost one costs at most
//! a probe interval. The request is bounded by [`CONNECT_TIMEOUT`] (an unreachable host) and
//! [`TOTAL_TIMEOUT`]; its outcome is logged and never reaches the coordinator.

use std::time::Duration;

use pgdaemon_core::coordinator::{AgentWaker, WakeTarget};
use reqwest::header::HeaderValue;

use crate::agent_client::AgentClient;
use crate::tls::{ClientIdentity, TlsError};

/// A live agent accepts within milliseconds; one that does not is not worth waiting for.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(300);
/// Bound of one whole wake request (the agent answers 202 before its loop runs).
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a wake request did not reach its agent (logged only).
#[derive(Debug, thiserror::Error)]
pub enum WakeError {
    #[error("{member} reports no agent API URL")]
    NoUrl { member: String },
    #[error("POST {url}: {detail}")]
    Request { url: String, detail: String },
    #[error("POST {url}: HTTP {status}: {body}")]
    Refused { url: String, status: u16, body: String },
    #[error("no async runtime to send the wake request on")]
    NoRuntime,
}

/// `POST <api_url>/wake` with `{"reason": "designated in term 7"}` (see the module docs).
#[derive(Debug, Clone)]
pub struct HttpWaker {
    client: AgentClient,
}

impl Default for HttpWaker {
    fn default() -> Self {
        Self::new()
    }
}

impl HttpWaker {
    /// `https://` verified against the system's roots (see [`Self::with_tls`]), no credentials.
    pub fn new() -> Self {
        HttpWaker { client: AgentClient::new(CONNECT_TIMEOUT, Some(TOTAL_TIMEOUT)) }
    }

    /// Verifies the agents' certificates against `ca_file` (`None`: the system's roots) and
    /// presents `identity` to agents that require a client certificate.
    pub fn with_tls(mut self, ca_file: Option<&std::path::Path>, identity: Option<&ClientIdentity>) -> Result<Self, TlsError> {
        self.client = self.client.with_tls(ca_file, identity)?;
        Ok(self)
    }

    /// [`Self::with_tls`] with a configuration built elsewhere (the `http` fencer's).
    pub fn with_tls_config(mut self, tls: rustls::ClientConfig) -> Self {
        self.client = self.client.with_tls_config(tls);
        self
    }

    /// Sends `authorization` (`Basic ...` or `Bearer ...`) with every request.
    pub fn with_authorization(mut self, authorization: Option<HeaderValue>) -> Self {
        self.client = self.client.with_authorization(authorization);
        self
    }

    /// One wake request, awaited: `Ok` once the agent accepted it (2xx).
    pub async fn send(&self, target: &WakeTarget) -> Result<(), WakeError> {
        if target.api_url.is_empty() {
            return Err(WakeError::NoUrl { member: target.member.clone() });
        }
        let url = format!("{}/wake", target.api_url.trim_end_matches('/'));
        let body = serde_json::json!({ "reason": target.describe() });
        let answer = self
            .client
            .post(&target.api_url, "/wake", &body)
            .await
            .map_err(|detail| WakeError::Request { url: url.clone(), detail })?;
        if answer.status.is_success() {
            return Ok(());
        }
        Err(WakeError::Refused { url, status: answer.status.as_u16(), body: answer.body.chars().take(300).collect() })
    }

    /// [`Self::send`] in the background on the current tokio runtime; the outcome is logged.
    pub fn spawn(&self, target: &WakeTarget) -> Result<(), WakeError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| WakeError::NoRuntime)?;
        let (waker, target) = (self.clone(), target.clone());
        runtime.spawn(async move {
            match waker.send(&target).await {
                Ok(()) => tracing::debug!(member = %target.member, reason = %target.describe(), "agent woken"),
                // Not a problem in itself: the agent's own loop reads the record within a probe.
                Err(e) => tracing::info!(member = %target.member, error = %e, "could not wake the agent"),
            }
        });
        Ok(())
    }
}

impl AgentWaker for HttpWaker {
    fn wake(&self, target: &WakeTarget) {
        if let Err(e) = self.spawn(target) {
            tracing::warn!(member = %target.member, error = %e, "could not wake the agent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdaemon_core::coordinator::WakeReason;

    fn target(api_url: &str) -> WakeTarget {
        WakeTarget { cluster: "c1".into(), member: "n2".into(), api_url: api_url.into(), term: 7, reason: WakeReason::Designated }
    }

    /// Accepts one connection, reads one request and answers `status`; returns the request.
    async fn serve(status: u16) -> (String, tokio::task::JoinHandle<String>) {
        pgdaemon_testkit::http::serve_once(status, "{}").await
    }

    #[tokio::test]
    async fn posts_wake_with_its_credentials_and_reports_a_refusal() {
        let auth = HeaderValue::from_static("Bearer t0ken");
        let w = HttpWaker::new().with_authorization(Some(auth));
        assert!(!format!("{w:?}").contains("t0ken"), "the credential must not show in Debug");
        let (url, task) = serve(202).await;
        w.send(&target(&format!("{url}/"))).await.unwrap();
        let request = task.await.unwrap();
        assert!(request.starts_with("POST /wake "), "{request}");
        assert!(request.to_ascii_lowercase().contains("authorization: bearer t0ken"), "{request}");
        assert!(request.contains(r#"{"reason":"designated in term 7"}"#), "{request}");

        let (url, _t) = serve(401).await;
        assert!(matches!(w.send(&target(&url)).await, Err(WakeError::Refused { status: 401, .. })));
        assert!(matches!(w.send(&target("")).await, Err(WakeError::NoUrl { .. })));
    }

    #[tokio::test]
    async fn an_unreachable_agent_costs_at_most_the_timeouts_and_never_blocks_the_caller() {
        let w = HttpWaker::new();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(matches!(w.send(&target(&format!("http://127.0.0.1:{port}"))).await, Err(WakeError::Request { .. })));
        // An address that never answers (TEST-NET-1): the connect timeout ends it.
        let started = std::time::Instant::now();
        assert!(w.send(&target("http://192.0.2.1:8008")).await.is_err());
        assert!(started.elapsed() < TOTAL_TIMEOUT + Duration::from_millis(500), "{:?}", started.elapsed());
        // The trait call returns at once, the request runs in the background.
        let started = std::time::Instant::now();
        w.wake(&target("http://192.0.2.1:8008"));
        assert!(started.elapsed() < Duration::from_millis(50), "{:?}", started.elapsed());
    }

    #[test]
    fn without_a_runtime_nothing_is_sent_and_nothing_panics() {
        assert!(matches!(HttpWaker::new().spawn(&target("http://127.0.0.1:1")), Err(WakeError::NoRuntime)));
        HttpWaker::new().wake(&target("http://127.0.0.1:1"));
    }
}
