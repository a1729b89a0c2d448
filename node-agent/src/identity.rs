//! Where this node runs: the EC2 instance id and availability zone, from the configuration or
//! from the instance metadata service (IMDSv2: PUT a session token, then GET with it).
//!
//! The coordinator fences a dead primary by stopping its instance, so on EC2 the instance id
//! matters; on other hosts set `node.instance_id`/`node.availability_zone` (or leave them out:
//! the member then simply has none, and EC2 fencing cannot target it).

use std::time::Duration;

use crate::config::NodeConfig;

/// IMDS answers locally within milliseconds; anything slower means "not on EC2" (or a hop limit
/// problem), and the agent must not hang its start on it.
pub const IMDS_TIMEOUT: Duration = Duration::from_secs(2);
/// Session token lifetime asked for; the agent reads identity once at start.
const TOKEN_TTL_SECONDS: &str = "60";

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Identity {
    pub instance_id: Option<String>,
    pub availability_zone: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("IMDS {url}: {reason}")]
    Imds { url: String, reason: String },
}

/// A minimal IMDSv2 client.
#[derive(Debug, Clone)]
pub struct ImdsClient {
    base: String,
    http: reqwest::Client,
}

impl ImdsClient {
    pub fn new(base: &str, timeout: Duration) -> Self {
        // Plain HTTP, but reqwest has no process-wide rustls provider: every client gets its TLS
        // configuration.
        let tls = pgdaemon_dcs::tls::client_config(None, None).expect("a client configuration without files always builds");
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .timeout(timeout)
            .connect_timeout(timeout)
            // IMDS is link-local: a proxy from the environment would only break it.
            .no_proxy()
            .build()
            .expect("a plain HTTP client always builds");
        ImdsClient { base: base.trim_end_matches('/').to_string(), http }
    }

    fn err(url: &str, reason: impl ToString) -> IdentityError {
        IdentityError::Imds { url: url.to_string(), reason: reason.to_string() }
    }

    /// `PUT /latest/api/token`.
    pub async fn token(&self) -> Result<String, IdentityError> {
        let url = format!("{}/latest/api/token", self.base);
        let resp = self
            .http
            .put(&url)
            .header("X-aws-ec2-metadata-token-ttl-seconds", TOKEN_TTL_SECONDS)
            .send()
            .await
            .map_err(|e| Self::err(&url, e))?;
        Self::text(&url, resp).await
    }

    /// `GET /latest/meta-data/<path>` with the session token.
    pub async fn get(&self, token: &str, path: &str) -> Result<String, IdentityError> {
        let url = format!("{}/latest/meta-data/{path}", self.base);
        let resp = self.http.get(&url).header("X-aws-ec2-metadata-token", token).send().await.map_err(|e| Self::err(&url, e))?;
        Self::text(&url, resp).await
    }

    async fn text(url: &str, resp: reqwest::Response) -> Result<String, IdentityError> {
        let status = resp.status();
        if !status.is_success() {
            return Err(Self::err(url, format!("HTTP {status}")));
        }
        let text = resp.text().await.map_err(|e| Self::err(url, e))?;
        let text = text.trim();
        if text.is_empty() {
            return Err(Self::err(url, "empty answer"));
        }
        Ok(text.to_string())
    }

    /// Instance id and availability zone.
    pub async fn identity(&self) -> Result<Identity, IdentityError> {
        let token = self.token().await?;
        let instance_id = self.get(&token, "instance-id").await?;
        let az = self.get(&token, "placement/availability-zone").await?;
        Ok(Identity { instance_id: Some(instance_id), availability_zone: Some(az) })
    }
}

/// Configured values win; IMDS fills in what is missing when `node.imds` is on. An IMDS failure
/// is returned so the caller can log it and continue with what the configuration gave.
pub async fn resolve(node: &NodeConfig, timeout: Duration) -> (Identity, Option<IdentityError>) {
    let configured = Identity { instance_id: node.instance_id.clone(), availability_zone: node.availability_zone.clone() };
    let complete = configured.instance_id.is_some() && configured.availability_zone.is_some();
    if complete || !node.imds {
        return (configured, None);
    }
    match ImdsClient::new(&node.imds_endpoint, timeout).identity().await {
        Ok(found) => (
            Identity {
                instance_id: configured.instance_id.or(found.instance_id),
                availability_zone: configured.availability_zone.or(found.availability_zone),
            },
            None,
        ),
        Err(e) => (configured, Some(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::{get, put};
    use axum::Router;

    /// A tiny IMDSv2 imitation: a token is required on every metadata GET.
    async fn fake_imds() -> (String, tokio::task::JoinHandle<()>) {
        async fn token(headers: HeaderMap) -> Result<&'static str, StatusCode> {
            match headers.get("x-aws-ec2-metadata-token-ttl-seconds") {
                Some(_) => Ok("tok-123"),
                None => Err(StatusCode::BAD_REQUEST),
            }
        }
        fn authorized(headers: &HeaderMap) -> Result<(), StatusCode> {
            match headers.get("x-aws-ec2-metadata-token").and_then(|v| v.to_str().ok()) {
                Some("tok-123") => Ok(()),
                _ => Err(StatusCode::UNAUTHORIZED),
            }
        }
        let app = Router::new()
            .route("/latest/api/token", put(token))
            .route("/latest/meta-data/instance-id", get(|h: HeaderMap| async move { authorized(&h).map(|_| "i-0abc123\n") }))
            .route(
                "/latest/meta-data/placement/availability-zone",
                get(|h: HeaderMap| async move { authorized(&h).map(|_| "eu-west-1b") }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        (url, task)
    }

    fn node(endpoint: &str) -> NodeConfig {
        let text = format!("name = \"n1\"\npg_host = \"127.0.0.1\"\nimds_endpoint = \"{endpoint}\"\n");
        toml::from_str(&text).unwrap()
    }

    #[tokio::test]
    async fn reads_identity_with_a_session_token() {
        let (url, task) = fake_imds().await;
        let (id, err) = resolve(&node(&url), IMDS_TIMEOUT).await;
        assert!(err.is_none(), "{err:?}");
        assert_eq!(id.instance_id.as_deref(), Some("i-0abc123"));
        assert_eq!(id.availability_zone.as_deref(), Some("eu-west-1b"));
        // Without the token the metadata is refused, so the client really sent it.
        let client = ImdsClient::new(&url, IMDS_TIMEOUT);
        assert!(client.get("wrong", "instance-id").await.is_err());
        task.abort();
    }

    #[tokio::test]
    async fn configured_values_win_and_skip_imds() {
        let mut n = node("http://127.0.0.1:9"); // nothing listens on the discard port
        n.instance_id = Some("i-configured".into());
        n.availability_zone = Some("az-x".into());
        let (id, err) = resolve(&n, IMDS_TIMEOUT).await;
        assert!(err.is_none());
        assert_eq!(id.instance_id.as_deref(), Some("i-configured"));
    }

    #[tokio::test]
    async fn partial_override_is_completed_from_imds() {
        let (url, task) = fake_imds().await;
        let mut n = node(&url);
        n.availability_zone = Some("az-mine".into());
        let (id, _) = resolve(&n, IMDS_TIMEOUT).await;
        assert_eq!(id.instance_id.as_deref(), Some("i-0abc123"));
        assert_eq!(id.availability_zone.as_deref(), Some("az-mine"));
        task.abort();
    }

    #[tokio::test]
    async fn unreachable_imds_is_reported_quickly() {
        let port = pgdaemon_testkit::ports::free_port();
        let n = node(&format!("http://127.0.0.1:{port}"));
        let started = std::time::Instant::now();
        let (id, err) = resolve(&n, Duration::from_millis(500)).await;
        assert!(err.is_some());
        assert_eq!(id, Identity::default());
        assert!(started.elapsed() < Duration::from_secs(2));
        let mut off = n.clone();
        off.imds = false;
        assert!(resolve(&off, IMDS_TIMEOUT).await.1.is_none());
    }
}
