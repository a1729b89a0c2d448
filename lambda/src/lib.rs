//! pgdaemon's coordinator as an AWS Lambda: a thin `main` over [`handler::Handler`], which is
//! generic over the store and fencer traits. EC2/SSM fencing lives here, the only crate allowed
//! the heavy AWS SDKs.

pub mod aws;
pub mod config;
pub mod events;
pub mod handler;

use std::sync::Arc;
use std::time::Duration;

use pgdaemon_core::fence::{FenceChain, Fencer};
use pgdaemon_dcs::fence::HttpDemoteFencer;

use crate::aws::{Ec2Api, Ec2Fencer, SsmApi, SsmFencer};
use crate::config::{FencerKind, LambdaConfig};

/// The configured fencers, in order. Generic over the API traits so tests can pass fakes.
pub fn build_fencer<E, S>(config: &LambdaConfig, ec2: E, ssm: S) -> Arc<FenceChain>
where
    E: Ec2Api + Clone + 'static,
    S: SsmApi + Clone + 'static,
{
    let fencers: Vec<Box<dyn Fencer>> = config
        .fencers
        .iter()
        .map(|k| -> Box<dyn Fencer> {
            match k {
                FencerKind::Ec2 => Box::new(Ec2Fencer::new(ec2.clone(), config.cluster_tag_key.clone())),
                FencerKind::Ssm => {
                    Box::new(SsmFencer::new(ssm.clone(), ec2.clone(), config.cluster_tag_key.clone(), config.ssm_command.clone()))
                }
                FencerKind::Http => Box::new(HttpDemoteFencer::new(config.http_timeout.max(Duration::from_millis(100)))),
            }
        })
        .collect();
    Arc::new(FenceChain::new(fencers))
}
