//! Who may change a node through its HTTP API (`[api]`): authentication (Patroni-compatible HTTP
//! basic auth and/or a bearer token), an allow-list of peer addresses, and the server's limits.
//!
//! State-changing requests (`POST /demote`, `POST /failsafe`) stop a primary or promise not to
//! take the leader lease, so S6 applies: an unauthenticated request changes nothing. Read-only
//! health endpoints stay open by default (`protect_reads = false`) so HAProxy and NLB checks work
//! unchanged. With no credentials configured, state-changing requests are refused (403) unless
//! `insecure = true` says, explicitly, that the network alone protects the API; and the agent
//! refuses to start on a non-loopback address without credentials (see [`ApiConfig::check_listen`]).
//!
//! Secrets come from files (mode 0600 or stricter, read with [`crate::secrets::read_password_file`],
//! which refuses group- or world-readable files) or, for the token, from an SSM SecureString
//! (`token_ssm_parameter`, read once at start through [`crate::secrets::load_ssm_secret`], the
//! path the replication password takes), and are compared in constant time.
//!
//! TLS (`tls_cert_file` + `tls_key_file`): every endpoint, health checks included, is served
//! over TLS only; with `tls_client_ca_file` a client must also present a certificate chaining
//! to that CA, verified in the handshake, before any request is read (mTLS). The files are read
//! and checked at start ([`ApiSecurity::load`]); errors name the key. The same node's outgoing
//! API requests (the hosted coordinator's `http` fencer) verify the other members against
//! `tls_ca_file` and present `tls_cert_file` when asked for a client certificate
//! ([`ApiConfig::client_tls`]).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use ipnet::IpNet;
use pgdaemon_core::ConfigError;
use pgdaemon_dcs::tls::{self, ClientIdentity, TlsError};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::secrets::{check_ssm_parameter_name, load_ssm_secret, read_password_file, Secret, SecretError};

/// `[api]`: authentication, allow-list and limits of the agent's HTTP API.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// HTTP basic auth user (Patroni's `restapi.authentication.username`); needs `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// File holding the basic-auth password (mode 0600 or stricter; a trailing newline is trimmed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// File holding a bearer token (`Authorization: Bearer <token>`), same rules as `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// SSM Parameter Store name (absolute, e.g. `/pgdaemon/<cluster>/api-token`) of a SecureString
    /// holding the bearer token, read once at start. Alternative to `token_file` (not both).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_ssm_parameter: Option<String>,
    /// CIDRs (or single addresses) allowed to send state-changing requests. Empty: any address
    /// (credentials still required).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowlist: Vec<String>,
    /// Also allow the cluster members' API hosts (from the last view of the store).
    #[serde(default)]
    pub allowlist_include_members: bool,
    /// Require credentials (and the allow-list) for the read-only endpoints too. Off by default so
    /// load balancer health checks need no credentials.
    #[serde(default)]
    pub protect_reads: bool,
    /// Accept state-changing requests without credentials (the network alone protects the API).
    #[serde(default)]
    pub insecure: bool,
    /// Connections served at once; further connections wait to be accepted. 0 means 64.
    #[serde(default)]
    pub max_connections: usize,
    /// Time a client has to send a request's headers, and separately its body (ms). 0 means 5000.
    /// Also bounds the TLS handshake.
    #[serde(default)]
    pub read_timeout_ms: u64,
    /// PEM certificate (chain) of the API. With `tls_key_file`, every endpoint is served over
    /// TLS only and the advertised API URL is `https://`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// Its PEM private key (mode 0600 or stricter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// Clients must present a certificate chaining to this PEM CA (mTLS); needs TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// PEM CA verifying the other members' API certificates when this node calls them (the
    /// hosted coordinator's `http` fencer). Unset: the system's roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
}

/// Why `[api]` could not be loaded at start: a secret, or a TLS file (named with its key).
#[derive(Debug, thiserror::Error)]
pub enum ApiLoadError {
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error("{key}: {source}")]
    Tls { key: &'static str, source: TlsError },
}

fn tls_err(key: &'static str) -> impl FnOnce(TlsError) -> ApiLoadError {
    move |source| ApiLoadError::Tls { key, source }
}

/// The server's limits (from `[api]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    pub max_connections: usize,
    pub read_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits { max_connections: 64, read_timeout: Duration::from_secs(5) }
    }
}

impl ApiConfig {
    /// Whether credentials (basic auth or a token) are configured.
    pub fn has_credentials(&self) -> bool {
        self.password_file.is_some() || self.token_file.is_some() || self.token_ssm_parameter.is_some()
    }

    /// Whether the API is served over TLS (and advertised as `https://`).
    pub fn tls_enabled(&self) -> bool {
        self.tls_cert_file.is_some() && self.tls_key_file.is_some()
    }

    /// The certificate this node presents when a peer asks for one (mTLS): its own API's.
    pub fn client_identity(&self) -> Option<ClientIdentity> {
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(cert), Some(key)) => Some(ClientIdentity { cert_file: cert.clone(), key_file: key.clone() }),
            _ => None,
        }
    }

    /// The TLS configuration of this node's requests to the other members' APIs: their
    /// certificates verified against `tls_ca_file` (or the system's roots), this node's own
    /// certificate presented to members that require one. Reads the files; errors name the key.
    pub fn client_tls(&self) -> Result<rustls::ClientConfig, ApiLoadError> {
        if let Some(ca) = &self.tls_ca_file {
            tls::root_store(Some(ca)).map_err(tls_err("api.tls_ca_file"))?;
        }
        let identity = self.client_identity();
        if let Some(id) = &identity {
            self.check_key_pair(&id.cert_file, &id.key_file)?;
        }
        tls::client_config(self.tls_ca_file.as_deref(), identity.as_ref()).map_err(tls_err("api.tls_key_file"))
    }

    /// The server's TLS configuration (`None`: plain HTTP). Reads the files; errors name the key.
    pub fn server_tls(&self) -> Result<Option<Arc<rustls::ServerConfig>>, ApiLoadError> {
        let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) else { return Ok(None) };
        self.check_key_pair(cert, key)?;
        if let Some(ca) = &self.tls_client_ca_file {
            tls::root_store(Some(ca)).map_err(tls_err("api.tls_client_ca_file"))?;
        }
        let config = tls::server_config(cert, key, self.tls_client_ca_file.as_deref()).map_err(tls_err("api.tls_key_file"))?;
        Ok(Some(Arc::new(config)))
    }

    /// Each file of the pair on its own (so an error names its key), the key file's mode first.
    fn check_key_pair(&self, cert: &Path, key: &Path) -> Result<(), ApiLoadError> {
        tls::load_certs(cert).map_err(tls_err("api.tls_cert_file"))?;
        check_key_mode(key).map_err(tls_err("api.tls_key_file"))?;
        tls::load_key(key).map_err(tls_err("api.tls_key_file"))?;
        Ok(())
    }

    pub fn limits(&self) -> ServerLimits {
        let d = ServerLimits::default();
        ServerLimits {
            max_connections: if self.max_connections == 0 { d.max_connections } else { self.max_connections },
            read_timeout: if self.read_timeout_ms == 0 { d.read_timeout } else { Duration::from_millis(self.read_timeout_ms) },
        }
    }

    /// Value checks (no filesystem access).
    pub fn validate(&self) -> Result<(), ConfigError> {
        match (&self.username, &self.password_file) {
            (Some(u), Some(_)) if u.is_empty() || u.contains(':') => {
                return Err(ConfigError::invalid("api.username", "must be non-empty and contain no ':'"))
            }
            (Some(_), None) => return Err(ConfigError::invalid("api.password_file", "api.username needs api.password_file")),
            (None, Some(_)) => return Err(ConfigError::invalid("api.username", "api.password_file needs api.username")),
            _ => {}
        }
        for (key, path) in [
            ("api.password_file", &self.password_file),
            ("api.token_file", &self.token_file),
            ("api.tls_cert_file", &self.tls_cert_file),
            ("api.tls_key_file", &self.tls_key_file),
            ("api.tls_client_ca_file", &self.tls_client_ca_file),
            ("api.tls_ca_file", &self.tls_ca_file),
        ] {
            if let Some(p) = path.as_ref().filter(|p| !p.is_absolute()) {
                return Err(ConfigError::invalid(key, format!("{} must be an absolute path", p.display())));
            }
        }
        if let Some(name) = &self.token_ssm_parameter {
            let key = "api.token_ssm_parameter";
            if self.token_file.is_some() {
                return Err(ConfigError::invalid(key, "set either api.token_file or api.token_ssm_parameter, not both"));
            }
            if !cfg!(feature = "ssm") {
                return Err(ConfigError::invalid(key, "this agent was built without the `ssm` feature; use api.token_file"));
            }
            check_ssm_parameter_name(name).map_err(|r| ConfigError::invalid(key, r))?;
            if !name.starts_with('/') {
                return Err(ConfigError::invalid(
                    key,
                    format!("{name:?} must be an absolute name like /pgdaemon/<cluster>/api-token"),
                ));
            }
        }
        match (&self.tls_cert_file, &self.tls_key_file) {
            (Some(_), None) => return Err(ConfigError::invalid("api.tls_key_file", "api.tls_cert_file needs api.tls_key_file")),
            (None, Some(_)) => return Err(ConfigError::invalid("api.tls_cert_file", "api.tls_key_file needs api.tls_cert_file")),
            _ => {}
        }
        if self.tls_client_ca_file.is_some() && !self.tls_enabled() {
            return Err(ConfigError::invalid(
                "api.tls_client_ca_file",
                "client certificates are verified in the TLS handshake: set api.tls_cert_file and api.tls_key_file too",
            ));
        }
        parse_allowlist(&self.allowlist)?;
        if self.insecure && self.has_credentials() {
            return Err(ConfigError::invalid("api.insecure", "credentials are configured: remove insecure = true"));
        }
        if self.max_connections > 10_000 {
            return Err(ConfigError::invalid("api.max_connections", "must be at most 10000"));
        }
        Ok(())
    }

    /// The start-time rule: without credentials (and without `insecure = true`) the API may only
    /// listen on a loopback address. A cluster whose coordinator fences over HTTP would otherwise
    /// find out at failover time, and a reachable unauthenticated API is exactly the attack of
    /// issue 15. On loopback the agent starts, but state-changing requests are still refused.
    pub fn check_listen(&self, listen: SocketAddr) -> Result<(), String> {
        if self.has_credentials() || self.insecure || listen.ip().is_loopback() {
            return Ok(());
        }
        Err(format!(
            "the HTTP API would listen on {listen} without authentication: set [api] username + password_file \
             and/or token_file (files with mode 0600) or token_ssm_parameter, or listen on 127.0.0.1, or set [api] insecure = true \
             to accept unauthenticated /demote and /failsafe requests from the network"
        ))
    }
}

/// A private key file must deny group and others, as password files do.
fn check_key_mode(path: &Path) -> Result<(), TlsError> {
    let file_err = |reason: String| TlsError::File { path: path.to_path_buf(), reason };
    let meta = std::fs::metadata(path).map_err(|e| file_err(e.to_string()))?;
    pgdaemon_dcs::secret::check_private(&meta).map_err(file_err)
}

fn parse_allowlist(entries: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    entries
        .iter()
        .map(|e| {
            e.parse::<IpNet>()
                .or_else(|_| e.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| ConfigError::invalid("api.allowlist", format!("{e:?} is not a CIDR like 10.0.0.0/16 or an address")))
        })
        .collect()
}

/// The checks the API applies, built once from `[api]` (secrets and TLS files read).
#[derive(Clone, Default)]
pub struct ApiSecurity {
    basic: Option<(String, Secret)>,
    token: Option<Secret>,
    allowlist: Vec<IpNet>,
    pub include_members: bool,
    pub protect_reads: bool,
    insecure: bool,
    /// Serve over TLS with this configuration (client certificates verified when it says so).
    tls: Option<Arc<rustls::ServerConfig>>,
    /// This node's requests to the other members' APIs ([`ApiConfig::client_tls`]).
    client_tls: Option<rustls::ClientConfig>,
}

impl std::fmt::Debug for ApiSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiSecurity")
            .field("basic_user", &self.basic.as_ref().map(|(u, _)| u))
            .field("token", &self.token.is_some())
            .field("allowlist", &self.allowlist)
            .field("include_members", &self.include_members)
            .field("protect_reads", &self.protect_reads)
            .field("insecure", &self.insecure)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Why a request was turned away.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// 401: missing or wrong credentials.
    Unauthenticated(String),
    /// 403: the peer is not allowed, or state-changing requests are disabled.
    Forbidden(String),
}

impl ApiSecurity {
    /// No checks at all: what `insecure = true` means. Also what [`crate::http::router`] uses
    /// (library callers and tests that build their own router); the agent process builds its
    /// security from `[api]` with [`Self::from_config`].
    pub fn insecure() -> Self {
        ApiSecurity { insecure: true, ..Default::default() }
    }

    /// Nothing configured: state-changing requests are refused (403).
    pub fn disabled() -> Self {
        ApiSecurity::default()
    }

    /// Basic auth with `user` / `password` (tests and embedding).
    pub fn with_basic(mut self, user: &str, password: &str) -> Self {
        self.basic = Some((user.to_string(), Secret::new(password)));
        self.insecure = false;
        self
    }

    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(Secret::new(token));
        self.insecure = false;
        self
    }

    /// Serves over TLS with `config` (tests and embedding; the agent builds it from `[api]`).
    pub fn with_tls(mut self, config: rustls::ServerConfig) -> Self {
        self.tls = Some(Arc::new(config));
        self
    }

    /// The server's TLS configuration, if the API is served over TLS.
    pub fn tls(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.tls.clone()
    }

    /// The TLS configuration of this node's requests to its peers' APIs (failsafe requests), as
    /// read from `[api]` by [`Self::load`]; `None` when not built from a configuration.
    pub fn client_tls(&self) -> Option<rustls::ClientConfig> {
        self.client_tls.clone()
    }

    pub fn with_allowlist(mut self, cidrs: &[&str]) -> Result<Self, ConfigError> {
        self.allowlist = parse_allowlist(&cidrs.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        Ok(self)
    }

    /// Reads the secrets `cfg` names: the files (refusing group- or world-readable ones) and the
    /// token's SSM parameter (decrypted), and the TLS certificate, key (mode checked as for the
    /// secret files) and client CA. Called once at start; the result also gives the
    /// credentials this node sends ([`Self::client_authorization`]).
    pub async fn load(cfg: &ApiConfig) -> Result<Self, ApiLoadError> {
        let basic = match (&cfg.username, &cfg.password_file) {
            (Some(u), Some(p)) => Some((u.clone(), read_password_file(p)?)),
            _ => None,
        };
        let token = match (&cfg.token_file, &cfg.token_ssm_parameter) {
            (Some(path), _) => Some(read_password_file(path)?),
            (None, Some(name)) => Some(load_ssm_secret(name).await?),
            (None, None) => None,
        };
        if let Some(t) = &token {
            // A token this node could not send, or that no request could match (the server trims
            // the header value), is a configuration error, not a silent 401 at failover time.
            let sendable = HeaderValue::from_str(&format!("Bearer {}", t.expose())).is_ok();
            if !sendable || t.expose().trim() != t.expose() {
                let reason = "the token must be printable characters without leading or trailing whitespace";
                return Err(match (&cfg.token_file, &cfg.token_ssm_parameter) {
                    (Some(path), _) => SecretError::Io {
                        path: path.clone(),
                        source: std::io::Error::new(std::io::ErrorKind::InvalidData, reason),
                    },
                    (None, name) => SecretError::Ssm { name: name.clone().unwrap_or_default(), reason: reason.into() },
                }
                .into());
            }
        }
        let tls = cfg.server_tls()?;
        let client_tls = Some(cfg.client_tls()?);
        Ok(ApiSecurity {
            basic,
            token,
            // Validated with the configuration.
            allowlist: parse_allowlist(&cfg.allowlist).unwrap_or_default(),
            include_members: cfg.allowlist_include_members,
            protect_reads: cfg.protect_reads,
            insecure: cfg.insecure && !cfg.has_credentials(),
            tls,
            client_tls,
        })
    }

    pub fn has_credentials(&self) -> bool {
        self.basic.is_some() || self.token.is_some()
    }

    /// The `Authorization` header this node sends to its peers (failsafe requests) and the
    /// hosted coordinator sends to the agents it fences: the token if any, else basic auth.
    /// Every member of a cluster is expected to share the same API credentials.
    pub fn client_authorization(&self) -> Option<HeaderValue> {
        let value = match (&self.token, &self.basic) {
            (Some(t), _) => format!("Bearer {}", t.expose()),
            (None, Some((u, p))) => {
                format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{}", p.expose())))
            }
            (None, None) => return None,
        };
        let mut v = HeaderValue::from_str(&value).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// Whether `peer` may send this request: allowed by the allow-list (or `members`, the
    /// cluster members' API addresses when `include_members`). No allow-list: everyone.
    /// An unknown peer address never passes a configured allow-list.
    pub fn peer_allowed(&self, peer: Option<IpAddr>, members: &[IpAddr]) -> bool {
        if self.allowlist.is_empty() && !self.include_members {
            return true;
        }
        let Some(ip) = peer.map(canonical) else { return false };
        self.allowlist.iter().any(|n| n.contains(&ip)) || (self.include_members && members.iter().any(|m| canonical(*m) == ip))
    }

    /// Checks the credentials of a request (allow-list checked separately, first).
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<(), Denied> {
        if self.insecure {
            return Ok(());
        }
        if !self.has_credentials() {
            return Err(Denied::Forbidden(
                "state-changing requests are disabled: no [api] credentials are configured (set username + password_file or token_file, or insecure = true)".into(),
            ));
        }
        let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return Err(Denied::Unauthenticated("authentication required".into()));
        };
        let (scheme, rest) = auth.split_once(' ').unwrap_or((auth, ""));
        let rest = rest.trim();
        let ok = if scheme.eq_ignore_ascii_case("bearer") {
            self.token.as_ref().is_some_and(|t| ct_eq(t.expose().as_bytes(), rest.as_bytes()))
        } else if scheme.eq_ignore_ascii_case("basic") {
            match (&self.basic, base64::engine::general_purpose::STANDARD.decode(rest)) {
                (Some((user, password)), Ok(decoded)) => {
                    let (u, p) = match decoded.iter().position(|b| *b == b':') {
                        Some(i) => (&decoded[..i], &decoded[i + 1..]),
                        None => (&decoded[..], &b""[..]),
                    };
                    // Both compared, always: no early exit on a wrong user name.
                    let user_ok = ct_eq(user.as_bytes(), u);
                    let pass_ok = ct_eq(password.expose().as_bytes(), p);
                    user_ok & pass_ok
                }
                _ => false,
            }
        } else {
            false
        };
        if ok {
            Ok(())
        } else {
            Err(Denied::Unauthenticated("wrong credentials".into()))
        }
    }

    /// The `WWW-Authenticate` challenge of a 401.
    pub fn challenge(&self) -> &'static str {
        if self.basic.is_none() && self.token.is_some() {
            "Bearer realm=\"pgdaemon\""
        } else {
            "Basic realm=\"pgdaemon\", charset=\"UTF-8\""
        }
    }

    pub fn deny(&self, d: Denied) -> Response {
        match d {
            Denied::Unauthenticated(m) => {
                let mut r = (StatusCode::UNAUTHORIZED, Json(serde_json::json!({ "error": m }))).into_response();
                r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(self.challenge()));
                r
            }
            Denied::Forbidden(m) => (StatusCode::FORBIDDEN, Json(serde_json::json!({ "error": m }))).into_response(),
        }
    }
}

/// Constant-time equality (the length is not secret: a differing length answers `false` at once).
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// IPv4-mapped IPv6 addresses (a dual-stack listener's view of IPv4 peers) as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The host of an `http(s)://host[:port][/...]` URL (brackets of an IPv6 literal removed).
pub fn url_host(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("http://").or_else(|| url.strip_prefix("https://"))?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(v6) = authority.strip_prefix('[') {
        return v6.split_once(']').map(|(h, _)| h);
    }
    Some(authority.split(':').next().unwrap_or(authority)).filter(|h| !h.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        let v = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}")));
        h.insert(header::AUTHORIZATION, v.parse().unwrap());
        h
    }

    #[test]
    fn credentials_are_checked() {
        let s = ApiSecurity::disabled().with_basic("patroni", "s3cret").with_token("tok");
        assert!(s.authenticate(&basic("patroni", "s3cret")).is_ok());
        assert!(matches!(s.authenticate(&basic("patroni", "s3cre")), Err(Denied::Unauthenticated(_))));
        assert!(matches!(s.authenticate(&basic("root", "s3cret")), Err(Denied::Unauthenticated(_))));
        assert!(matches!(s.authenticate(&HeaderMap::new()), Err(Denied::Unauthenticated(_))));
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer tok".parse().unwrap());
        assert!(s.authenticate(&h).is_ok());
        h.insert(header::AUTHORIZATION, "Bearer tok2".parse().unwrap());
        assert!(s.authenticate(&h).is_err());
        h.insert(header::AUTHORIZATION, "Basic !!!".parse().unwrap());
        assert!(s.authenticate(&h).is_err());
        // The client header round-trips (token preferred).
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, s.client_authorization().unwrap());
        assert!(s.authenticate(&h).is_ok());
        let b = ApiSecurity::disabled().with_basic("u", "p:with:colons");
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, b.client_authorization().unwrap());
        assert!(b.authenticate(&h).is_ok());
        assert!(matches!(ApiSecurity::disabled().authenticate(&basic("a", "b")), Err(Denied::Forbidden(_))));
        assert!(ApiSecurity::insecure().authenticate(&HeaderMap::new()).is_ok());
    }

    #[test]
    fn allowlist_and_members() {
        let s = ApiSecurity::insecure().with_allowlist(&["10.0.0.0/16", "192.168.1.7"]).unwrap();
        assert!(s.peer_allowed(Some("10.0.3.4".parse().unwrap()), &[]));
        assert!(s.peer_allowed(Some("::ffff:10.0.3.4".parse().unwrap()), &[]));
        assert!(s.peer_allowed(Some("192.168.1.7".parse().unwrap()), &[]));
        assert!(!s.peer_allowed(Some("192.168.1.8".parse().unwrap()), &[]));
        assert!(!s.peer_allowed(None, &[]));
        let mut m = s.clone();
        m.include_members = true;
        assert!(m.peer_allowed(Some("172.16.0.9".parse().unwrap()), &["172.16.0.9".parse().unwrap()]));
        assert!(ApiSecurity::insecure().peer_allowed(None, &[]));
    }

    #[test]
    fn config_rules() {
        let mut c = ApiConfig::default();
        assert!(c.validate().is_ok());
        assert!(c.check_listen("0.0.0.0:8008".parse().unwrap()).is_err());
        assert!(c.check_listen("127.0.0.1:8008".parse().unwrap()).is_ok());
        c.username = Some("u".into());
        assert!(c.validate().is_err());
        c.password_file = Some("/etc/pgdaemon/api-password".into());
        assert!(c.validate().is_ok());
        assert!(c.check_listen("0.0.0.0:8008".parse().unwrap()).is_ok());
        c.allowlist = vec!["10.0.0.0/33".into()];
        assert!(c.validate().is_err());
        c.allowlist = vec!["10.0.0.0/16".into(), "::1".into()];
        assert!(c.validate().is_ok());
        c.token_file = Some("relative".into());
        assert!(c.validate().is_err());
        let c = ApiConfig { insecure: true, ..Default::default() };
        assert!(c.check_listen("0.0.0.0:8008".parse().unwrap()).is_ok());
    }

    #[tokio::test]
    async fn loose_secret_files_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "tok\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let c = ApiConfig { token_file: Some(p.clone()), ..Default::default() };
        assert!(ApiSecurity::load(&c).await.is_err());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = ApiSecurity::load(&c).await.unwrap();
        assert!(s.has_credentials() && !format!("{s:?}").contains("tok\""));
        // A token no request could match (surrounding whitespace) is refused at start.
        std::fs::write(&p, " tok\n").unwrap();
        assert!(ApiSecurity::load(&c).await.is_err());
    }

    #[test]
    fn token_ssm_parameter_rules() {
        let key_of = |c: &ApiConfig| match c.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        let c = ApiConfig { token_ssm_parameter: Some("/pgdaemon/prod/api-token".into()), ..Default::default() };
        assert!(c.validate().is_ok());
        assert!(c.has_credentials());
        assert!(c.check_listen("0.0.0.0:8008".parse().unwrap()).is_ok(), "credentials: any address");
        // Both sources of the token: refused, naming the key.
        let both = ApiConfig { token_file: Some("/etc/pgdaemon/api-token".into()), ..c.clone() };
        assert_eq!(key_of(&both), "api.token_ssm_parameter");
        assert!(both.validate().unwrap_err().to_string().contains("not both"));
        // The name must be absolute and a parameter name.
        for bad in ["pgdaemon/prod/api-token", "", "/pgdaemon/prod/api token", "/x!"] {
            let c = ApiConfig { token_ssm_parameter: Some(bad.into()), ..Default::default() };
            assert_eq!(key_of(&c), "api.token_ssm_parameter", "{bad:?}");
        }
        // With basic auth alongside: fine; with insecure: refused (credentials are configured).
        let c = ApiConfig {
            username: Some("u".into()),
            password_file: Some("/etc/pgdaemon/api-password".into()),
            token_ssm_parameter: Some("/pgdaemon/prod/api-token".into()),
            ..Default::default()
        };
        assert!(c.validate().is_ok());
        let c = ApiConfig { insecure: true, token_ssm_parameter: Some("/pgdaemon/prod/api-token".into()), ..Default::default() };
        assert_eq!(key_of(&c), "api.insecure");
    }

    #[test]
    fn tls_config_rules() {
        let key_of = |c: &ApiConfig| match c.validate() {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        let tls = ApiConfig {
            tls_cert_file: Some("/etc/pgdaemon/api.crt".into()),
            tls_key_file: Some("/etc/pgdaemon/api.key".into()),
            tls_client_ca_file: Some("/etc/pgdaemon/ca.crt".into()),
            tls_ca_file: Some("/etc/pgdaemon/ca.crt".into()),
            ..Default::default()
        };
        assert!(tls.validate().is_ok() && tls.tls_enabled());
        assert_eq!(key_of(&ApiConfig { tls_key_file: None, ..tls.clone() }), "api.tls_key_file");
        assert_eq!(key_of(&ApiConfig { tls_cert_file: None, ..tls.clone() }), "api.tls_cert_file");
        let no_tls = ApiConfig { tls_cert_file: None, tls_key_file: None, ..tls.clone() };
        assert_eq!(key_of(&no_tls), "api.tls_client_ca_file", "mTLS needs TLS");
        assert_eq!(key_of(&ApiConfig { tls_ca_file: Some("ca.crt".into()), ..tls.clone() }), "api.tls_ca_file");
        assert!(!ApiConfig::default().tls_enabled());
    }

    #[tokio::test]
    async fn tls_files_are_read_at_start_and_errors_name_the_key() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pki = pgdaemon_testkit::tls::TestPki::new(dir.path()).unwrap();
        let node = pki.issue("n1", &["127.0.0.1"]).unwrap();
        let other = pki.issue("n2", &["127.0.0.1"]).unwrap();
        let cfg = ApiConfig {
            tls_cert_file: Some(node.cert.clone()),
            tls_key_file: Some(node.key.clone()),
            tls_client_ca_file: Some(pki.ca_file()),
            tls_ca_file: Some(pki.ca_file()),
            ..Default::default()
        };
        assert!(ApiSecurity::load(&cfg).await.unwrap().tls().is_some());
        assert!(ApiSecurity::load(&ApiConfig::default()).await.unwrap().tls().is_none());
        cfg.client_tls().unwrap();
        let err = |c: &ApiConfig| {
            let e = c.server_tls().map(|_| ()).and_then(|_| c.client_tls().map(|_| ())).unwrap_err();
            assert!(matches!(e, ApiLoadError::Tls { .. }), "{e:?}");
            e.to_string()
        };
        let missing = ApiConfig { tls_cert_file: Some(dir.path().join("missing.crt")), ..cfg.clone() };
        assert!(err(&missing).starts_with("api.tls_cert_file: ") && err(&missing).contains("missing.crt"), "{}", err(&missing));
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not PEM\n").unwrap();
        let e = err(&ApiConfig { tls_client_ca_file: Some(garbage.clone()), ..cfg.clone() });
        assert!(e.starts_with("api.tls_client_ca_file: ") && e.contains("garbage.pem"), "{e}");
        let e = err(&ApiConfig { tls_ca_file: Some(garbage.clone()), ..cfg.clone() });
        assert!(e.starts_with("api.tls_ca_file: "), "{e}");
        let e = err(&ApiConfig { tls_key_file: Some(other.key.clone()), ..cfg.clone() });
        assert!(e.starts_with("api.tls_key_file: ") && e.contains("does not match"), "{e}");
        // A key others may read is refused, like a password file.
        std::fs::set_permissions(&node.key, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = err(&cfg);
        assert!(e.starts_with("api.tls_key_file: ") && e.contains("chmod 600"), "{e}");
        assert!(ApiSecurity::load(&cfg).await.is_err());
    }

    #[test]
    fn hosts_of_urls() {
        assert_eq!(url_host("http://10.0.0.5:8008"), Some("10.0.0.5"));
        assert_eq!(url_host("https://pg-1.internal/x"), Some("pg-1.internal"));
        assert_eq!(url_host("http://[fd00::1]:8008"), Some("fd00::1"));
        assert_eq!(url_host("ftp://x"), None);
    }
}
