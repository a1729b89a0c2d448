//! pgdaemon's coordinator as an AWS Lambda: a thin `main` over [`handler::Handler`], which is
//! generic over the store and fencer traits. EC2/SSM fencing lives here, the only crate allowed
//! the heavy AWS SDKs.

pub mod api_token;
pub mod aws;
pub mod config;
pub mod emf;
pub mod events;
pub mod fleet;
pub mod handler;

use std::sync::Arc;
use std::time::Duration;

use pgdaemon_core::coordinator::AgentWaker;
use pgdaemon_core::fence::{FenceChain, Fencer};
use pgdaemon_dcs::fence_config::{FenceConfigError, FencerConfig, FencerKind};

use crate::api_token::{TokenHttpFencer, TokenHttpWaker};
use crate::aws::{Ec2Api, Ec2Fencer, ParameterApi, SsmApi, SsmFencer};
use crate::config::LambdaConfig;

/// The configured fencers, in order, from the shared builder ([`FencerConfig`]); the Lambda adds
/// `ec2` and `ssm` (the only crate with their SDKs). Generic over the API traits so tests can
/// pass fakes. With `PGDAEMON_API_TOKEN_PARAMETER`, the `http` fencer reads the agents' API token
/// through `ssm` lazily (see [`api_token`]): building the chain makes no AWS call.
pub fn build_fencer<E, S>(config: &LambdaConfig, ec2: E, ssm: S) -> Result<Arc<FenceChain>, FenceConfigError>
where
    E: Ec2Api + Clone + 'static,
    S: SsmApi + ParameterApi + Clone + 'static,
{
    if config.fencing.uses(FencerKind::Http) && config.api_token_parameter.is_none() {
        tracing::warn!(
            "the http fencer has no credentials (PGDAEMON_API_TOKEN_PARAMETER is unset): agents that require them answer 401"
        );
    }
    let fencers = fencer_config(config)?;
    let chain = fencers.build(|kind| -> Option<Box<dyn Fencer>> {
        match kind {
            FencerKind::Ec2 => Some(Box::new(Ec2Fencer::new(ec2.clone(), config.cluster_tag_key.clone()))),
            FencerKind::Ssm => Some(Box::new(SsmFencer::new(
                ssm.clone(),
                ec2.clone(),
                config.cluster_tag_key.clone(),
                config.ssm_command.clone(),
            ))),
            FencerKind::Http => config.api_token_parameter.as_ref().map(|name| -> Box<dyn Fencer> {
                Box::new(TokenHttpFencer::with_fencer(ssm.clone(), name.clone(), fencers.http_fencer()))
            }),
            FencerKind::Command => None,
        }
    })?;
    Ok(Arc::new(chain))
}

/// The shared fencer configuration: `http` timeout and TLS. `https://` agents are verified
/// against `PGDAEMON_API_CA_FILE` (checked by [`LambdaConfig::from_env`]), or the system's roots.
fn fencer_config(config: &LambdaConfig) -> Result<FencerConfig, FenceConfigError> {
    let http_timeout = config.http_timeout.max(Duration::from_millis(100));
    let mut fencers = FencerConfig::new(config.fencing.clone(), http_timeout, None)?;
    if let Some(ca) = &config.api_ca_file {
        match pgdaemon_dcs::tls::client_config(Some(ca), None) {
            Ok(tls) => fencers = fencers.with_http_tls(tls),
            // Read at init already; a file gone since then leaves the system's roots, which
            // verify no private CA: an https fence (or wake) then fails, never confirms.
            Err(e) => {
                tracing::error!(error = %e, "PGDAEMON_API_CA_FILE: the http fencer verifies agents against the system's roots")
            }
        }
    }
    Ok(fencers)
}

/// The coordinator's waker (`POST /wake` on the candidate after designating it, on the others
/// after the promotion; docs/design.md section 4): the `http` fencer's TLS and credentials
/// (`PGDAEMON_API_TOKEN_PARAMETER`, read lazily through `ssm`). Built whatever the fencers are.
pub fn build_waker<S>(config: &LambdaConfig, ssm: S) -> Result<Arc<dyn AgentWaker>, FenceConfigError>
where
    S: ParameterApi + 'static,
{
    let base = fencer_config(config)?.http_waker();
    Ok(match &config.api_token_parameter {
        Some(name) => Arc::new(TokenHttpWaker::new(ssm, name.clone(), base)),
        None => Arc::new(base),
    })
}
