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
//!
//! The coordinator's waker ([`TokenHttpWaker`], `POST /wake`) needs the same credentials and
//! reads the parameter the same way, lazily, in the background of its first wake.
//!
//! A fleet coordinator serves clusters with a token each: a name containing [`CLUSTER_PLACEHOLDER`]
//! (`/pgdaemon/{cluster}/api-token`) is read per cluster, with the placeholder replaced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use pgdaemon_core::coordinator::{AgentWaker, WakeTarget};
use pgdaemon_core::fence::{FenceStatus, FenceTarget, Fencer, PendingHandle};
use pgdaemon_dcs::fence::HttpDemoteFencer;
use pgdaemon_dcs::wake::HttpWaker;
use reqwest::header::HeaderValue;
use tokio::sync::OnceCell;

use crate::aws::ParameterApi;

/// Replaced by the cluster's name in `PGDAEMON_API_TOKEN_PARAMETER`.
pub const CLUSTER_PLACEHOLDER: &str = "{cluster}";

/// The parameter holding `cluster`'s token.
pub fn parameter_for(parameter: &str, cluster: &str) -> String {
    parameter.replace(CLUSTER_PLACEHOLDER, cluster)
}

/// A client with credentials per parameter name, each built on first use. An error is not
/// kept: the next call reads again.
struct PerParameter<T> {
    cells: Mutex<HashMap<String, Arc<OnceCell<T>>>>,
}

impl<T: Clone> PerParameter<T> {
    fn new() -> Self {
        PerParameter { cells: Mutex::new(HashMap::new()) }
    }

    async fn get<P: ParameterApi>(&self, params: &P, name: &str, with: impl FnOnce(HeaderValue) -> T) -> Result<T, String> {
        let cell = self.cells.lock().unwrap_or_else(PoisonError::into_inner).entry(name.to_string()).or_default().clone();
        cell.get_or_try_init(|| async { Ok(with(bearer(params, name).await?)) }).await.cloned()
    }
}

/// Longest wait for GetParameter (SDK retries included) before the fence counts as failed.
pub const TOKEN_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// [`HttpDemoteFencer`] whose bearer token comes from an SSM parameter, read lazily.
pub struct TokenHttpFencer<P> {
    params: P,
    parameter: String,
    /// The fencer without credentials (timeout, TLS); the token is added to a copy.
    base: HttpDemoteFencer,
    ready: PerParameter<HttpDemoteFencer>,
}

impl<P: ParameterApi> TokenHttpFencer<P> {
    /// `timeout`: the HTTP fencer's request timeout (`PGDAEMON_HTTP_TIMEOUT_MS`).
    pub fn new(params: P, parameter: impl Into<String>, timeout: Duration) -> Self {
        Self::with_fencer(params, parameter, HttpDemoteFencer::new(timeout))
    }

    /// With `base` (its timeout and TLS, e.g. `PGDAEMON_API_CA_FILE`) as the fencer that gets the token.
    pub fn with_fencer(params: P, parameter: impl Into<String>, base: HttpDemoteFencer) -> Self {
        TokenHttpFencer { params, parameter: parameter.into(), base, ready: PerParameter::new() }
    }

    /// The fencer with `name`'s credentials, reading the parameter on first use.
    async fn fencer(&self, name: &str) -> Result<HttpDemoteFencer, String> {
        self.ready.get(&self.params, name, |header| self.base.clone().with_authorization(Some(header))).await
    }
}

/// `Authorization: Bearer <token>` from the SSM parameter `parameter`.
async fn bearer<P: ParameterApi>(params: &P, parameter: &str) -> Result<HeaderValue, String> {
    let token = match tokio::time::timeout(TOKEN_READ_TIMEOUT, params.secure_string(parameter)).await {
        Ok(read) => read?,
        Err(_) => return Err(format!("GetParameter timed out after {} s", TOKEN_READ_TIMEOUT.as_secs())),
    };
    // The agents trim the header value, so surrounding whitespace could never match.
    HeaderValue::from_str(&format!("Bearer {token}"))
        .ok()
        .filter(|_| !token.is_empty() && token.trim() == token)
        .ok_or_else(|| "the value is not a usable token (printable characters, no surrounding whitespace)".to_string())
}

/// [`HttpWaker`] whose bearer token comes from an SSM parameter, read lazily inside the
/// background task of a wake (the coordinator never waits for it). While the parameter cannot be
/// read, wakes are dropped with an error log (the agents' own loops pick the record up anyway).
pub struct TokenHttpWaker<P> {
    inner: Arc<WakerInner<P>>,
}

struct WakerInner<P> {
    params: P,
    parameter: String,
    /// The waker without credentials (TLS); the token is added to a copy.
    base: HttpWaker,
    ready: PerParameter<HttpWaker>,
}

impl<P: ParameterApi + 'static> TokenHttpWaker<P> {
    /// `base`: the waker with its TLS (e.g. `PGDAEMON_API_CA_FILE`), which gets the token.
    pub fn new(params: P, parameter: impl Into<String>, base: HttpWaker) -> Self {
        TokenHttpWaker { inner: Arc::new(WakerInner { params, parameter: parameter.into(), base, ready: PerParameter::new() }) }
    }

    /// One wake, awaited (what [`AgentWaker::wake`] runs in the background).
    pub async fn send(&self, target: &WakeTarget) -> Result<(), String> {
        self.inner.send(target).await
    }
}

impl<P: ParameterApi> WakerInner<P> {
    async fn send(&self, target: &WakeTarget) -> Result<(), String> {
        let name = parameter_for(&self.parameter, &target.cluster);
        let waker = self
            .ready
            .get(&self.params, &name, |header| self.base.clone().with_authorization(Some(header)))
            .await
            .map_err(|e| format!("agent API token from SSM parameter {name}: {e}"))?;
        waker.send(target).await.map_err(|e| e.to_string())
    }
}

impl<P: ParameterApi + 'static> AgentWaker for TokenHttpWaker<P> {
    fn wake(&self, target: &WakeTarget) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(member = %target.member, "no async runtime: the agent is not woken");
            return;
        };
        let (inner, target) = (self.inner.clone(), target.clone());
        runtime.spawn(async move {
            match inner.send(&target).await {
                Ok(()) => tracing::debug!(member = %target.member, reason = %target.describe(), "agent woken"),
                Err(e) => tracing::info!(member = %target.member, error = %e, "could not wake the agent"),
            }
        });
    }
}

#[async_trait]
impl<P: ParameterApi> Fencer for TokenHttpFencer<P> {
    fn name(&self) -> &str {
        "http"
    }

    async fn fence(&self, target: &FenceTarget, pending: Option<&PendingHandle>) -> FenceStatus {
        let name = parameter_for(&self.parameter, &target.cluster);
        match self.fencer(&name).await {
            Ok(http) => http.fence(target, pending).await,
            Err(e) => {
                tracing::error!(parameter = %name, error = %e, member = %target.member, "cannot read the agent API token (PGDAEMON_API_TOKEN_PARAMETER): the http fencer fails");
                FenceStatus::Failed { detail: format!("agent API token from SSM parameter {name}: {e}") }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdaemon_core::coordinator::WakeReason;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Params(Result<String, String>);

    #[async_trait]
    impl ParameterApi for Params {
        async fn secure_string(&self, _name: &str) -> Result<String, String> {
            self.0.clone()
        }
    }

    fn target(api_url: &str) -> WakeTarget {
        WakeTarget { cluster: "c".into(), member: "n2".into(), api_url: api_url.into(), term: 5, reason: WakeReason::Promoted }
    }

    #[tokio::test]
    async fn the_waker_sends_the_parameters_token_and_fails_without_it() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !String::from_utf8_lossy(&got).contains("promoted in term 5") {
                let n = sock.read(&mut buf).await.unwrap();
                assert!(n > 0, "connection closed early");
                got.extend_from_slice(&buf[..n]);
            }
            sock.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await.unwrap();
            String::from_utf8_lossy(&got).to_ascii_lowercase()
        });
        let waker = TokenHttpWaker::new(Params(Ok("t0ken".into())), "/p", HttpWaker::new());
        waker.send(&target(&url)).await.unwrap();
        let request = server.await.unwrap();
        assert!(request.starts_with("post /wake ") && request.contains("authorization: bearer t0ken"), "{request}");

        let broken = TokenHttpWaker::new(Params(Err("AccessDenied".into())), "/p", HttpWaker::new());
        let err = broken.send(&target(&url)).await.unwrap_err();
        assert!(err.contains("AccessDenied") && err.contains("/p"), "{err}");
        // The trait call never waits, whatever the parameter does.
        let started = std::time::Instant::now();
        broken.wake(&target(&url));
        assert!(started.elapsed() < Duration::from_millis(50));
    }
}
