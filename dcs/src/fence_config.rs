//! One fencer builder for every coordinator: the agent-hosted one (`[coordinator] fencing`) and
//! the Lambda (`PGDAEMON_FENCING`). Both describe their fencers the same way: names in order
//! ([`Fencing::parse`], checked against the fencers that place offers), the `command` fencer's
//! command, and the `http` fencer's TLS and credentials ([`FencerConfig`]). The agent's
//! `check-config` runs the same checks as its start.
//!
//! The EC2 and SSM fencers need cloud SDKs that only the Lambda crate is built with: the builder
//! asks the caller's hook for them by name ([`FencerConfig::build`]).

use std::time::Duration;

use pgdaemon_core::coordinator::FencingPolicy;
use pgdaemon_core::fence::{FenceChain, Fencer};

use crate::fence::{CommandFencer, HttpDemoteFencer};
use crate::wake::HttpWaker;

/// A fencer, by the name used in configurations, records, logs and `skip` lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FencerKind {
    /// EC2 StopInstances (the Lambda only).
    Ec2,
    /// SSM RunCommand of a stop script (the Lambda only).
    Ssm,
    /// The old primary's agent, `POST /demote`.
    Http,
    /// A local shell command (the agent-hosted coordinator only).
    Command,
}

impl FencerKind {
    pub fn name(self) -> &'static str {
        match self {
            FencerKind::Ec2 => "ec2",
            FencerKind::Ssm => "ssm",
            FencerKind::Http => "http",
            FencerKind::Command => "command",
        }
    }
}

impl std::fmt::Display for FencerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the agent-hosted coordinator offers, and its default.
pub const AGENT_FENCERS: &[FencerKind] = &[FencerKind::Http, FencerKind::Command];
pub const AGENT_DEFAULT: &[FencerKind] = &[FencerKind::Http];
/// What the Lambda offers, and its default.
pub const LAMBDA_FENCERS: &[FencerKind] = &[FencerKind::Ec2, FencerKind::Ssm, FencerKind::Http];
pub const LAMBDA_DEFAULT: &[FencerKind] = LAMBDA_FENCERS;

/// A fencer configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FenceConfigError {
    #[error("unknown fencer {name:?}: expected {expected} (in order), or off")]
    Unknown { name: String, expected: String },
    #[error("fencer {0:?} is listed twice")]
    Duplicate(String),
    #[error("\"off\" must be the only entry")]
    OffNotAlone,
    #[error("the \"command\" fencer is listed but no fence command is set")]
    NoCommand,
    /// A fencer this crate cannot build and the caller's hook did not (a build without the
    /// cloud SDKs).
    #[error("the {0} fencer is not available in this program")]
    Unavailable(FencerKind),
}

/// Which fencers a coordinator uses, in order, or fencing explicitly off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fencing {
    /// No fencer: S3 by the coordinator's own observation of the lease ([`FencingPolicy::Off`]).
    Off,
    /// These fencers, tried in this order until one confirms.
    Chain(Vec<FencerKind>),
}

impl Fencing {
    /// From configured names (surrounding blanks ignored): `off` alone, or names among
    /// `offered`, each once. No names: `default`.
    pub fn parse<S: AsRef<str>>(names: &[S], offered: &[FencerKind], default: &[FencerKind]) -> Result<Self, FenceConfigError> {
        let names: Vec<&str> = names.iter().map(|n| n.as_ref().trim()).collect();
        if names.is_empty() {
            return Ok(Fencing::Chain(default.to_vec()));
        }
        if names == ["off"] {
            return Ok(Fencing::Off);
        }
        let mut kinds = Vec::new();
        for name in names {
            if name == "off" {
                return Err(FenceConfigError::OffNotAlone);
            }
            let Some(kind) = offered.iter().copied().find(|k| k.name() == name) else {
                let expected = offered.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ");
                return Err(FenceConfigError::Unknown { name: name.to_string(), expected });
            };
            if kinds.contains(&kind) {
                return Err(FenceConfigError::Duplicate(name.to_string()));
            }
            kinds.push(kind);
        }
        Ok(Fencing::Chain(kinds))
    }

    pub fn policy(&self) -> FencingPolicy {
        match self {
            Fencing::Off => FencingPolicy::Off,
            Fencing::Chain(_) => FencingPolicy::Required,
        }
    }

    /// The fencers in order (none when off).
    pub fn kinds(&self) -> &[FencerKind] {
        match self {
            Fencing::Off => &[],
            Fencing::Chain(kinds) => kinds,
        }
    }

    pub fn uses(&self, kind: FencerKind) -> bool {
        self.kinds().contains(&kind)
    }
}

/// Everything the fencers without a cloud SDK are built from, checked when made.
#[derive(Clone)]
pub struct FencerConfig {
    fencing: Fencing,
    timeout: Duration,
    command: Option<String>,
    http_tls: Option<rustls::ClientConfig>,
    http_authorization: Option<reqwest::header::HeaderValue>,
}

impl std::fmt::Debug for FencerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FencerConfig")
            .field("fencing", &self.fencing)
            .field("timeout", &self.timeout)
            .field("command", &self.command)
            .field("http_tls", &self.http_tls.is_some())
            .field("http_authorization", &self.http_authorization.as_ref().map(|_| "(redacted)"))
            .finish()
    }
}

impl FencerConfig {
    /// `timeout` bounds each `http` request and `command` run; `command` is the `command`
    /// fencer's shell command, required (not blank) when that fencer is listed.
    pub fn new(fencing: Fencing, timeout: Duration, command: Option<String>) -> Result<Self, FenceConfigError> {
        let command = command.filter(|c| !c.trim().is_empty());
        if fencing.uses(FencerKind::Command) && command.is_none() {
            return Err(FenceConfigError::NoCommand);
        }
        Ok(FencerConfig { fencing, timeout, command, http_tls: None, http_authorization: None })
    }

    /// The `http` fencer verifies agents with `tls` (default: the system's roots, no client
    /// certificate).
    pub fn with_http_tls(mut self, tls: rustls::ClientConfig) -> Self {
        self.http_tls = Some(tls);
        self
    }

    /// The `http` fencer sends `authorization` (the agents' `[api]` credentials).
    pub fn with_http_authorization(mut self, authorization: Option<reqwest::header::HeaderValue>) -> Self {
        self.http_authorization = authorization;
        self
    }

    pub fn fencing(&self) -> &Fencing {
        &self.fencing
    }

    pub fn policy(&self) -> FencingPolicy {
        self.fencing.policy()
    }

    /// The standard `http` fencer of this configuration.
    pub fn http_fencer(&self) -> HttpDemoteFencer {
        let plain = HttpDemoteFencer::new(self.timeout);
        let plain = match &self.http_tls {
            Some(tls) => plain.with_tls_config(tls.clone()),
            None => plain,
        };
        plain.with_authorization(self.http_authorization.clone())
    }

    /// The coordinator's waker ([`crate::wake`]) with the `http` fencer's TLS and credentials:
    /// agents guard `POST /wake` as they guard `POST /demote`. Its timeouts are its own (short),
    /// not the fencer's. Built whatever the fencers are (a wake needs no fencing).
    pub fn http_waker(&self) -> HttpWaker {
        let plain = HttpWaker::new();
        let plain = match &self.http_tls {
            Some(tls) => plain.with_tls_config(tls.clone()),
            None => plain,
        };
        plain.with_authorization(self.http_authorization.clone())
    }

    /// The chain, in the configured order (empty when fencing is off). For each fencer,
    /// `hook(kind)` is asked first: it builds the fencers this crate cannot (`ec2`, `ssm`) or
    /// replaces a standard one; `None` builds the standard `http` or `command` fencer.
    pub fn build(&self, mut hook: impl FnMut(FencerKind) -> Option<Box<dyn Fencer>>) -> Result<FenceChain, FenceConfigError> {
        let mut fencers: Vec<Box<dyn Fencer>> = Vec::new();
        for &kind in self.fencing.kinds() {
            let fencer = match (hook(kind), kind) {
                (Some(f), _) => f,
                (None, FencerKind::Http) => Box::new(self.http_fencer()),
                (None, FencerKind::Command) => {
                    let command = self.command.clone().ok_or(FenceConfigError::NoCommand)?;
                    Box::new(CommandFencer::new(command, self.timeout))
                }
                (None, other) => return Err(FenceConfigError::Unavailable(other)),
            };
            fencers.push(fencer);
        }
        Ok(FenceChain::new(fencers))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use FencerKind::*;

    const T: Duration = Duration::from_secs(15);

    #[test]
    fn names_parse_in_order_against_what_is_offered() {
        let none: [&str; 0] = [];
        assert_eq!(Fencing::parse(&none, AGENT_FENCERS, AGENT_DEFAULT), Ok(Fencing::Chain(vec![Http])));
        assert_eq!(Fencing::parse(&none, LAMBDA_FENCERS, LAMBDA_DEFAULT), Ok(Fencing::Chain(vec![Ec2, Ssm, Http])));
        assert_eq!(Fencing::parse(&["command", " http"], AGENT_FENCERS, AGENT_DEFAULT), Ok(Fencing::Chain(vec![Command, Http])));
        assert_eq!(Fencing::parse(&["off"], AGENT_FENCERS, AGENT_DEFAULT), Ok(Fencing::Off));
        assert_eq!(Fencing::Off.policy(), FencingPolicy::Off);
        assert_eq!(Fencing::Chain(vec![Http]).policy(), FencingPolicy::Required);
        let err = Fencing::parse(&["htp"], AGENT_FENCERS, AGENT_DEFAULT).unwrap_err();
        assert_eq!(err.to_string(), "unknown fencer \"htp\": expected http, command (in order), or off");
        // A fencer offered elsewhere is unknown here.
        assert!(matches!(Fencing::parse(&["ec2"], AGENT_FENCERS, AGENT_DEFAULT), Err(FenceConfigError::Unknown { .. })));
        assert!(matches!(Fencing::parse(&["command"], LAMBDA_FENCERS, LAMBDA_DEFAULT), Err(FenceConfigError::Unknown { .. })));
        assert_eq!(Fencing::parse(&["http", "off"], AGENT_FENCERS, AGENT_DEFAULT), Err(FenceConfigError::OffNotAlone));
        assert_eq!(
            Fencing::parse(&["http", "http"], AGENT_FENCERS, AGENT_DEFAULT),
            Err(FenceConfigError::Duplicate("http".into()))
        );
    }

    #[test]
    fn the_command_fencer_needs_a_command() {
        let chain = Fencing::Chain(vec![Http, Command]);
        assert_eq!(FencerConfig::new(chain.clone(), T, None).unwrap_err(), FenceConfigError::NoCommand);
        assert_eq!(FencerConfig::new(chain.clone(), T, Some("  ".into())).unwrap_err(), FenceConfigError::NoCommand);
        assert!(FencerConfig::new(Fencing::Chain(vec![Http]), T, None).is_ok());
        let config = FencerConfig::new(chain, T, Some("true".into())).unwrap();
        assert_eq!(config.build(|_| None).unwrap().names(), vec!["http", "command"]);
    }

    #[test]
    fn cloud_fencers_come_from_the_hook_in_the_configured_order() {
        struct Named(&'static str);
        #[async_trait::async_trait]
        impl Fencer for Named {
            fn name(&self) -> &str {
                self.0
            }
            async fn fence(
                &self,
                _t: &pgdaemon_core::fence::FenceTarget,
                _p: Option<&pgdaemon_core::fence::PendingHandle>,
            ) -> pgdaemon_core::fence::FenceStatus {
                pgdaemon_core::fence::FenceStatus::Refused { detail: "test".into() }
            }
        }
        let config = FencerConfig::new(Fencing::Chain(vec![Ec2, Http, Ssm]), T, None).unwrap();
        let chain = config
            .build(|k| match k {
                Ec2 => Some(Box::new(Named("ec2"))),
                Ssm => Some(Box::new(Named("ssm"))),
                _ => None,
            })
            .unwrap();
        assert_eq!(chain.names(), vec!["ec2", "http", "ssm"]);
        // Without the hook, the cloud fencers are unavailable, never silently left out.
        assert_eq!(config.build(|_| None).err(), Some(FenceConfigError::Unavailable(Ec2)));
        let off = FencerConfig::new(Fencing::Off, T, None).unwrap();
        assert!(off.build(|_| None).unwrap().is_empty());
        assert_eq!(off.policy(), FencingPolicy::Off);
    }

    #[test]
    fn debug_never_shows_the_credentials() {
        let auth = reqwest::header::HeaderValue::from_static("Bearer s3cret");
        let config = FencerConfig::new(Fencing::Chain(vec![Http]), T, None).unwrap().with_http_authorization(Some(auth));
        assert!(!format!("{config:?}").contains("s3cret"));
    }
}
