//! Lambda entry point (`bootstrap` for provided.al2023): configuration and clients once per cold
//! start, then the runtime loop over the handler.

use std::sync::Arc;

use anyhow::Context;
use aws_config::BehaviorVersion;
use lambda_runtime::{service_fn, LambdaEvent};
use pgdaemon_core::SystemClock;
use pgdaemon_dcs::DynamoDbStore;
use pgdaemon_lambda::aws::{SdkEc2, SdkSsm};
use pgdaemon_lambda::config::LambdaConfig;
use pgdaemon_lambda::fleet::LambdaShardInvoker;
use pgdaemon_lambda::handler::Handler;
use serde_json::Value;

#[tokio::main]
async fn main() -> Result<(), lambda_runtime::Error> {
    tracing_subscriber::fmt().json().with_env_filter(tracing_subscriber::EnvFilter::from_default_env()).without_time().init();
    let config = LambdaConfig::from_env(std::env::vars()).context("invalid configuration")?;
    let sdk = aws_config::defaults(BehaviorVersion::latest()).load().await;
    let dynamodb = pgdaemon_dcs::dynamodb::client_from_env(None, None).await;
    let store = Arc::new(DynamoDbStore::new(dynamodb, config.table.clone()));
    let ssm = SdkSsm(aws_sdk_ssm::Client::new(&sdk));
    let fencer = pgdaemon_lambda::build_fencer(&config, SdkEc2(aws_sdk_ec2::Client::new(&sdk)), ssm.clone())
        .context("invalid configuration: PGDAEMON_FENCING")?;
    let waker = pgdaemon_lambda::build_waker(&config, ssm).context("invalid configuration: PGDAEMON_FENCING")?;
    let owner = format!("lambda-{}", uuid::Uuid::new_v4());
    let events = Arc::new(pgdaemon_lambda::events::Events::from_env(&sdk, store.clone()).context("invalid configuration")?);
    let mut handler = Handler::new(store, fencer, SystemClock::new(), config, &owner)
        .with_events(events.emitter())
        .with_waker(waker)
        .with_probe(Arc::new(pgdaemon_dcs::probe::TcpProbe::default()));
    // Set by Lambda; absent when run elsewhere, where a scheduled run then covers every cluster.
    if let Ok(function) = std::env::var("AWS_LAMBDA_FUNCTION_NAME") {
        let invoker = LambdaShardInvoker::new(aws_sdk_lambda::Client::new(&sdk), function);
        handler = handler.with_shard_invoker(Arc::new(invoker));
    }
    let handler = Arc::new(handler);
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let (handler, events) = (handler.clone(), events.clone());
        // A stable `errorType` per refusal (HandlerError::error_type), not a Rust type name.
        async move {
            pgdaemon_lambda::events::handle_and_publish(&handler, &events, event).await.map_err(lambda_runtime::Diagnostic::from)
        }
    }))
    .await
}
