//! The `http` fencer with the agents' API credentials (`PGDAEMON_API_TOKEN_PARAMETER`).
//!
//! Agents require credentials for `POST /demote` (node-agent README, "Access control"). The
//! coordinator sends `Authorization: Bearer <token>`, the token being the SSM SecureString the
//! agents read through `[api] token_ssm_parameter`. It is read, decrypted, at the first HTTP fence
//! of a container and kept for the container's life; nothing is read at init, so an unreadable
//! parameter can never stop the function from starting (EC2 and SSM fencing still work).
//!
//! While the parameter cannot be read, every HTTP fence fails (`Failed`, never a confirmation:
//! the chain goes on to its next fencer) with an error log, and the next fence tries the read
//! again. A rotated token reaches the coordinator at its next cold start (and the agents at
//! their restart).

use std::time::Duration;

use async_trait::async_trait;
use pgdaemon_core::fence::{FenceStatus, FenceTarget, Fencer, PendingHandle};
use pgdaemon_dcs::fence::HttpDemoteFencer;
use reqwest::header::HeaderValue;
use tokio::sync::OnceCell;

use crate::aws::ParameterApi;

/// Longest wait for GetParameter (SDK retries included) before the fence counts as failed.
pub const TOKEN_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// [`HttpDemoteFencer`] whose bearer token comes from an SSM parameter, read lazily.
pub struct TokenHttpFencer<P> {
    params: P,
    parameter: String,
    /// The fencer without credentials (timeout, TLS); the token is added to a copy.
    base: HttpDemoteFencer,
    ready: OnceCell<HttpDemoteFencer>,
}

impl<P: ParameterApi> TokenHttpFencer<P> {
    /// `timeout`: the HTTP fencer's request timeout (`PGDAEMON_HTTP_TIMEOUT_MS`).
    pub fn new(params: P, parameter: impl Into<String>, timeout: Duration) -> Self {
        Self::with_fencer(params, parameter, HttpDemoteFencer::new(timeout))
    }

    /// With `base` (its timeout and TLS, e.g. `PGDAEMON_API_CA_FILE`) as the fencer that gets the token.
    pub fn with_fencer(params: P, parameter: impl Into<String>, base: HttpDemoteFencer) -> Self {
        TokenHttpFencer { params, parameter: parameter.into(), base, ready: OnceCell::new() }
    }

    /// The fencer with its credentials, reading the parameter on first use. An error is not
    /// kept: the next call reads again.
    async fn fencer(&self) -> Result<&HttpDemoteFencer, String> {
        self.ready
            .get_or_try_init(|| async {
                let token = match tokio::time::timeout(TOKEN_READ_TIMEOUT, self.params.secure_string(&self.parameter)).await {
                    Ok(read) => read?,
                    Err(_) => return Err(format!("GetParameter timed out after {} s", TOKEN_READ_TIMEOUT.as_secs())),
                };
                // The agents trim the header value, so surrounding whitespace could never match.
                let header = HeaderValue::from_str(&format!("Bearer {token}"))
                    .ok()
                    .filter(|_| !token.is_empty() && token.trim() == token)
                    .ok_or_else(|| {
                        "the value is not a usable token (printable characters, no surrounding whitespace)".to_string()
                    })?;
                Ok(self.base.clone().with_authorization(Some(header)))
            })
            .await
    }
}

#[async_trait]
impl<P: ParameterApi> Fencer for TokenHttpFencer<P> {
    fn name(&self) -> &str {
        "http"
    }

    async fn fence(&self, target: &FenceTarget, pending: Option<&PendingHandle>) -> FenceStatus {
        match self.fencer().await {
            Ok(http) => http.fence(target, pending).await,
            Err(e) => {
                tracing::error!(parameter = %self.parameter, error = %e, member = %target.member, "cannot read the agent API token (PGDAEMON_API_TOKEN_PARAMETER): the http fencer fails");
                FenceStatus::Failed { detail: format!("agent API token from SSM parameter {}: {e}", self.parameter) }
            }
        }
    }
}
