//! Failsafe mode in the agent process: asking peers over HTTP (`POST <api_url>/failsafe`) and the
//! task that runs the rounds beside the loop. The rules are in `pgdaemon_core::agent` (failsafe
//! module) and `docs/failsafe.md`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pgdaemon_core::agent::{AgentHandle, FailsafePeers, FailsafeReply, FailsafeRequest, RoundOutcome};
use pgdaemon_dcs::agent_client::AgentClient;

/// [`FailsafePeers`] over the members' HTTP APIs.
pub struct HttpPeers {
    /// No client-wide request bound: each request carries the round's own.
    client: AgentClient,
}

impl HttpPeers {
    /// `https://` peers are verified against the system's roots; see [`Self::with_tls`].
    pub fn new() -> Self {
        HttpPeers { client: AgentClient::new(PEER_CONNECT_TIMEOUT, None) }
    }

    /// Verifies `https://` peers with `tls` (`ApiSecurity::client_tls`: the cluster's CA from
    /// `[api] tls_ca_file`, and this node's certificate for peers that require one). `None`
    /// keeps the system's roots.
    pub fn with_tls(mut self, tls: Option<rustls::ClientConfig>) -> Self {
        if let Some(tls) = tls {
            self.client = self.client.with_tls_config(tls);
        }
        self
    }

    /// Sends `authorization` (see `ApiSecurity::client_authorization`) with every request.
    pub fn with_authorization(mut self, authorization: Option<reqwest::header::HeaderValue>) -> Self {
        self.client = self.client.with_authorization(authorization);
        self
    }
}

/// A peer that does not accept a connection within this is not going to acknowledge in time.
const PEER_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

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
            let answer = self.client.post(api_url, "/failsafe", request).await?;
            // A refusal is a 409 with a reply body; anything else without one is no answer.
            serde_json::from_str::<FailsafeReply>(&answer.body)
                .map_err(|e| format!("{url}: HTTP {}, unreadable reply ({e}): {}", answer.status, answer.body))
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
