//! One HTTP client for the agents' API, used by every caller of it: the coordinator's `http`
//! fencer (`POST /demote`) and waker (`POST /wake`), failsafe peers (`POST /failsafe`) and
//! pgdctl's day-2 verbs (`/restart`, `/reinit`, `/reload`, `/drop-slot`). One place builds the
//! rustls configuration into the client ([`crate::tls`]; reqwest has no process-wide provider),
//! bounds connecting and the whole request, and sends the `Authorization` header (marked
//! sensitive, so it never shows in a `Debug`).

use std::path::Path;
use std::time::Duration;

use reqwest::header::HeaderValue;
use serde::Serialize;
use serde_json::Value;

use crate::tls::{client_config, ClientIdentity, TlsError};

/// How the request ended when it got an answer: the status and the body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: reqwest::StatusCode,
    pub body: String,
}

/// Why a call did not get a 2xx answer ([`AgentClient::call`]).
#[derive(Debug, thiserror::Error)]
pub enum AgentCallError {
    #[error("{member} reports no agent API URL")]
    NoUrl { member: String },
    /// No answer (unreachable, timed out, not HTTP).
    #[error("{url}: {detail}")]
    Unreachable { url: String, detail: String },
    /// The agent answered with an error status; `message` is its `error` field (or the body).
    #[error("{url}: HTTP {status}: {message}")]
    Status { url: String, status: u16, message: String },
}

/// A client of the agents' API at the `api_url` their heartbeats publish.
#[derive(Debug, Clone)]
pub struct AgentClient {
    client: reqwest::Client,
    authorization: Option<HeaderValue>,
    connect_timeout: Duration,
    timeout: Option<Duration>,
}

impl AgentClient {
    /// `https://` verified against the system's roots, no credentials; connecting may take
    /// `connect_timeout`, a whole request `timeout` (`None`: no bound here, the caller bounds
    /// each request itself).
    pub fn new(connect_timeout: Duration, timeout: Option<Duration>) -> Self {
        let tls = client_config(None, None).expect("a client configuration without files always builds");
        let client = Self::build(tls, connect_timeout, timeout);
        AgentClient { client, authorization: None, connect_timeout, timeout }
    }

    /// Verifies `https://` agents against `ca_file` (PEM; `None`: the system's roots) and
    /// presents `identity` to agents that require a client certificate.
    pub fn with_tls(self, ca_file: Option<&Path>, identity: Option<&ClientIdentity>) -> Result<Self, TlsError> {
        Ok(self.with_tls_config(client_config(ca_file, identity)?))
    }

    /// [`Self::with_tls`] with a configuration built elsewhere.
    pub fn with_tls_config(mut self, tls: rustls::ClientConfig) -> Self {
        self.client = Self::build(tls, self.connect_timeout, self.timeout);
        self
    }

    /// Sends `authorization` (`Basic ...` or `Bearer ...`) with every request.
    pub fn with_authorization(mut self, authorization: Option<HeaderValue>) -> Self {
        self.authorization = authorization.map(|mut v| {
            v.set_sensitive(true);
            v
        });
        self
    }

    /// Sends `Authorization: Bearer <token>` (a token that is not a valid header value is not
    /// sent: the agent then answers 401).
    pub fn with_bearer(self, token: Option<&str>) -> Self {
        let header = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {}", t.trim())).ok());
        self.with_authorization(header)
    }

    fn build(tls: rustls::ClientConfig, connect_timeout: Duration, timeout: Option<Duration>) -> reqwest::Client {
        let builder = reqwest::Client::builder().use_preconfigured_tls(tls).connect_timeout(connect_timeout);
        let builder = match timeout {
            Some(t) => builder.timeout(t),
            None => builder,
        };
        builder.build().expect("an HTTP client with a rustls configuration always builds")
    }

    /// `POST <api_url><path>` with `body` as JSON: the answer, whatever its status, or why there
    /// was none (`Err` names the URL).
    pub async fn post<B: Serialize + ?Sized>(&self, api_url: &str, path: &str, body: &B) -> Result<Answer, String> {
        let url = format!("{}{path}", api_url.trim_end_matches('/'));
        let mut request = self.client.post(&url).json(body);
        if let Some(auth) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        let response = request.send().await.map_err(|e| format!("POST {url}: {}", crate::error_chain(&e)))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| format!("POST {url}: {}", crate::error_chain(&e)))?;
        Ok(Answer { status, body })
    }

    async fn get(&self, url: &str) -> Result<Answer, String> {
        let mut request = self.client.get(url);
        if let Some(auth) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        let response = request.send().await.map_err(|e| format!("GET {url}: {}", crate::error_chain(&e)))?;
        let status = response.status();
        let body = response.text().await.map_err(|e| format!("GET {url}: {}", crate::error_chain(&e)))?;
        Ok(Answer { status, body })
    }

    /// An operator's call (pgdctl): `POST` to `member`'s agent; the answer's JSON on a 2xx, else
    /// the agent's `error` message with the status.
    pub async fn call(&self, member: &str, api_url: &str, path: &str, body: &Value) -> Result<Value, AgentCallError> {
        self.call_with(member, api_url, path, Some(body)).await
    }

    /// [`Self::call`] as a `GET` (no body).
    pub async fn call_get(&self, member: &str, api_url: &str, path: &str) -> Result<Value, AgentCallError> {
        self.call_with(member, api_url, path, None).await
    }

    async fn call_with(&self, member: &str, api_url: &str, path: &str, body: Option<&Value>) -> Result<Value, AgentCallError> {
        if api_url.is_empty() {
            return Err(AgentCallError::NoUrl { member: member.to_string() });
        }
        let url = format!("{}{path}", api_url.trim_end_matches('/'));
        let answer = match body {
            Some(body) => self.post(api_url, path, body).await,
            None => self.get(&url).await,
        }
        .map_err(|detail| AgentCallError::Unreachable { url: url.clone(), detail })?;
        let json: Option<Value> = serde_json::from_str(&answer.body).ok();
        if answer.status.is_success() {
            return Ok(json.unwrap_or(Value::Null));
        }
        let message = json
            .as_ref()
            .and_then(|j| j.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| answer.body.chars().take(300).collect());
        Err(AgentCallError::Status { url, status: answer.status.as_u16(), message })
    }
}
