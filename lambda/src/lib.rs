//! pgdaemon's coordinator as an AWS Lambda: a thin `main` over [`handler::Handler`], which is
//! generic over the store and fencer traits. EC2/SSM fencing lives here, the only crate allowed
//! the heavy AWS SDKs.

pub mod api_token;
pub mod aws;
pub mod config;
pub mod events;
pub mod handler;

use std::sync::Arc;
use std::time::Duration;

use pgdaemon_core::fence::{FenceChain, Fencer};
use pgdaemon_dcs::fence::HttpDemoteFencer;

use crate::api_token::TokenHttpFencer;
use crate::aws::{Ec2Api, Ec2Fencer, ParameterApi, SsmApi, SsmFencer};
use crate::config::{FencerKind, LambdaConfig};

/// The configured fencers, in order. Generic over the API traits so tests can pass fakes.
/// `ssm` also reads the agents' API token (`PGDAEMON_API_TOKEN_PARAMETER`) for the `http`
/// fencer, lazily (see [`api_token`]): building the chain makes no AWS call.
pub fn build_fencer<E, S>(config: &LambdaConfig, ec2: E, ssm: S) -> Arc<FenceChain>
where
    E: Ec2Api + Clone + 'static,
    S: SsmApi + ParameterApi + Clone + 'static,
{
    let http_timeout = config.http_timeout.max(Duration::from_millis(100));
    if config.fencers.contains(&FencerKind::Http) && config.api_token_parameter.is_none() {
        tracing::warn!(
            "the http fencer has no credentials (PGDAEMON_API_TOKEN_PARAMETER is unset): agents that require them answer 401"
        );
    }
    let fencers: Vec<Box<dyn Fencer>> = config
        .fencers
        .iter()
        .map(|k| -> Box<dyn Fencer> {
            match k {
                FencerKind::Ec2 => Box::new(Ec2Fencer::new(ec2.clone(), config.cluster_tag_key.clone())),
                FencerKind::Ssm => {
                    Box::new(SsmFencer::new(ssm.clone(), ec2.clone(), config.cluster_tag_key.clone(), config.ssm_command.clone()))
                }
                FencerKind::Http => {
                    let http = http_fencer(config, http_timeout);
                    match &config.api_token_parameter {
                        Some(name) => Box::new(TokenHttpFencer::with_fencer(ssm.clone(), name.clone(), http)),
                        None => Box::new(http),
                    }
                }
            }
        })
        .collect();
    Arc::new(FenceChain::new(fencers))
}

/// The `http` fencer without credentials: `https://` agents verified against
/// `PGDAEMON_API_CA_FILE` (checked by [`LambdaConfig::from_env`]), or the system's roots.
fn http_fencer(config: &LambdaConfig, timeout: Duration) -> HttpDemoteFencer {
    let plain = HttpDemoteFencer::new(timeout);
    let Some(ca) = &config.api_ca_file else { return plain };
    match plain.clone().with_tls(Some(ca), None) {
        Ok(fencer) => fencer,
        Err(e) => {
            // Read at init already; a file gone since then leaves the system's roots, which
            // verify no private CA: an https fence then fails, never confirms.
            tracing::error!(error = %e, "PGDAEMON_API_CA_FILE: the http fencer verifies agents against the system's roots");
            plain
        }
    }
}
