//! Failsafe mode in the agent process: asking peers over HTTP (`POST <api_url>/failsafe`) and the
//! task that runs the rounds beside the loop. The rules are in `pgdaemon_core::agent` (failsafe
//! module) and `docs/failsafe.md`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pgdaemon_core::agent::{AgentHandle, FailsafePeers, FailsafeReply, FailsafeRequest, RoundOutcome};

/// [`FailsafePeers`] over the members' HTTP APIs.
pub struct HttpPeers {
    client: reqwest::Client,
    /// `Authorization` sent with every request (the cluster's shared `[api]` credentials).
    authorization: Option<reqwest::header::HeaderValue>,
}

impl HttpPeers {
    /// `https://` peers are verified against the system's roots; see [`Self::with_tls`].
    pub fn new() -> Self {
        let tls = pgdaemon_dcs::tls::client_config(None, None).expect("a client configuration without files always builds");
        HttpPeers { client: Self::client(tls), authorization: None }
    }

    /// Verifies `https://` peers with `tls` (`ApiSecurity::client_tls`: the cluster's CA from
    /// `[api] tls_ca_file`, and this node's certificate for peers that require one). `None`
    /// keeps the system's roots.
    pub fn with_tls(mut self, tls: Option<rustls::ClientConfig>) -> Self {
        if let Some(tls) = tls {
            self.client = Self::client(tls);
        }
        self
    }

    fn client(tls: rustls::ClientConfig) -> reqwest::Client {
        // No client-wide timeout: each request carries the round's own bound. Every client is
        // given its TLS configuration (reqwest has no process-wide rustls provider).
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .expect("an HTTP client with a rustls configuration always builds")
    }

    /// Sends `authorization` (see `ApiSecurity::client_authorization`) with every request.
    pub fn with_authorization(mut self, authorization: Option<reqwest::header::HeaderValue>) -> Self {
        self.authorization = authorization;
        self
    }
}

impl Default for HttpPeers {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl FailsafePeers for HttpPeers {
    async fn ask(&self, api_url: &str, request: &FailsafeRequest, timeout: Duration) -> Result<FailsafeReply, String> {
        let url = format!("{}/failsafe", api_url.trim_end_matches('/'));
        let call = async {
            let mut post = self.client.post(&url).json(request);
            if let Some(auth) = &self.authorization {
                post = post.header(reqwest::header::AUTHORIZATION, auth.clone());
            }
            let resp = post.send().await.map_err(|e| format!("{url}: {e}"))?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(|e| format!("{url}: {e}"))?;
            // A refusal is a 409 with a reply body; anything else without one is no answer.
            serde_json::from_slice::<FailsafeReply>(&body)
                .map_err(|e| format!("{url}: HTTP {status}, unreadable reply ({e}): {}", String::from_utf8_lossy(&body)))
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(format!("{url}: no answer within {} ms", timeout.as_millis())),
        }
    }
}

/// How often the task checks whether a round is due (a round itself runs at most once per probe
/// interval, see [`AgentHandle::failsafe_round`]).
const CHECK_PERIOD: Duration = Duration::from_millis(100);

/// Runs failsafe rounds for the life of the agent. Separate from the loop and from the lease
/// watchdog: a loop stuck in store calls is exactly when acknowledgements are needed, and a round
/// waiting on a slow peer must not delay the watchdog's demotion.
pub async fn failsafe_task(handle: AgentHandle, peers: Arc<dyn FailsafePeers>) {
    let mut every = tokio::time::interval(CHECK_PERIOD);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last: Option<String> = None;
    loop {
        every.tick().await;
        let Some(outcome) = handle.failsafe_round(peers.as_ref()).await else {
            continue;
        };
        // Log changes of outcome kind, not every round.
        let kind = match &outcome {
            RoundOutcome::Granted { .. } => "granted",
            RoundOutcome::Refused { .. } => "refused",
            RoundOutcome::Unanswered { .. } => "unanswered",
        };
        if last.as_deref() != Some(kind) {
            match &outcome {
                RoundOutcome::Granted { members, .. } => {
                    tracing::warn!(?members, "failsafe: store unreachable; every member acknowledged, staying primary")
                }
                RoundOutcome::Refused { member, reason } => {
                    tracing::warn!(member, reason, "failsafe: refused; the lease deadline applies")
                }
                RoundOutcome::Unanswered { member, error } => {
                    tracing::warn!(member, error, "failsafe: a member did not answer; the lease deadline applies")
                }
            }
            last = Some(kind.to_string());
        }
    }
}
