//! An operator's client of the agents' API (pgdctl `restart`, `reload`, `remove`, `version`):
//! the authenticated maintenance endpoints and the status document, over the same rustls
//! configuration the fencer uses ([`crate::tls`]).

use std::path::Path;
use std::time::Duration;

use reqwest::header::HeaderValue;
use serde_json::Value;

use crate::tls::{client_config, TlsError};

/// A live agent accepts within milliseconds.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a call did not get a 2xx answer.
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

/// Calls agents at the `api_url` their heartbeats publish.
#[derive(Debug, Clone)]
pub struct AgentClient {
    client: reqwest::Client,
    authorization: Option<HeaderValue>,
}

impl AgentClient {
    /// `token`: the agents' API bearer token (`[api] token_file`); `ca_file` verifies `https://`
    /// agents (`None`: the system's roots); `timeout` bounds each whole call (a restart waits for
    /// Postgres to stop and start).
    pub fn new(token: Option<&str>, ca_file: Option<&Path>, timeout: Duration) -> Result<Self, TlsError> {
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(client_config(ca_file, None)?)
            .timeout(timeout)
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .expect("an HTTP client with a rustls configuration always builds");
        let authorization = token.and_then(|t| HeaderValue::from_str(&format!("Bearer {}", t.trim())).ok()).map(|mut v| {
            v.set_sensitive(true);
            v
        });
        Ok(AgentClient { client, authorization })
    }

    /// `POST <api_url><path>` with a JSON `body`; the answer's JSON on a 2xx.
    pub async fn post(&self, member: &str, api_url: &str, path: &str, body: &Value) -> Result<Value, AgentCallError> {
        let url = Self::url(member, api_url, path)?;
        let mut req = self.client.post(&url).json(body);
        if let Some(auth) = &self.authorization {
            req = req.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        Self::answer(url, req.send().await).await
    }

    /// `GET <api_url><path>` (read-only routes answer 503 with the same document when their
    /// check fails: the document is returned either way).
    pub async fn get(&self, member: &str, api_url: &str, path: &str) -> Result<Value, AgentCallError> {
        let url = Self::url(member, api_url, path)?;
        let mut req = self.client.get(&url);
        if let Some(auth) = &self.authorization {
            req = req.header(reqwest::header::AUTHORIZATION, auth.clone());
        }
        let resp =
            req.send().await.map_err(|e| AgentCallError::Unreachable { url: url.clone(), detail: crate::error_chain(&e) })?;
        resp.json().await.map_err(|e| AgentCallError::Unreachable { url, detail: crate::error_chain(&e) })
    }

    fn url(member: &str, api_url: &str, path: &str) -> Result<String, AgentCallError> {
        if api_url.is_empty() {
            return Err(AgentCallError::NoUrl { member: member.to_string() });
        }
        Ok(format!("{}{path}", api_url.trim_end_matches('/')))
    }

    async fn answer(url: String, sent: reqwest::Result<reqwest::Response>) -> Result<Value, AgentCallError> {
        let resp = sent.map_err(|e| AgentCallError::Unreachable { url: url.clone(), detail: crate::error_chain(&e) })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let json: Option<Value> = serde_json::from_str(&text).ok();
        if status.is_success() {
            return Ok(json.unwrap_or(Value::Null));
        }
        let message = json
            .as_ref()
            .and_then(|j| j.get("error").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| text.chars().take(300).collect());
        Err(AgentCallError::Status { url, status: status.as_u16(), message })
    }
}
