//! Change-of-primary events on the cluster's SNS topic (`PGDAEMON_SNS_TOPIC_ARN`, which the
//! Terraform module and the CDK stack set): after each invocation, every history item written
//! while it ran is published once, so that alerting subscribed to the topic hears of each
//! failover and switchover. Unset: nothing is published. A failed publish is logged, never
//! turned into a failed invocation (the change of primary itself is done and recorded).

use pgdaemon_core::{Clock, Store, SystemClock};
use serde_json::{json, Value};

use crate::handler::{Handler, HandlerError};

pub struct Events<S> {
    sns: Option<(aws_sdk_sns::Client, String)>,
    store: S,
}

impl<S: Store> Events<S> {
    /// Reads `PGDAEMON_SNS_TOPIC_ARN`; a value that is not an ARN fails the cold start.
    pub fn from_env(sdk: &aws_config::SdkConfig, store: S) -> anyhow::Result<Self> {
        let topic = std::env::var("PGDAEMON_SNS_TOPIC_ARN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        if let Some(t) = &topic {
            anyhow::ensure!(t.starts_with("arn:") && t.contains(":sns:"), "PGDAEMON_SNS_TOPIC_ARN: {t:?} is not an SNS topic ARN");
        }
        Ok(Events { sns: topic.map(|t| (aws_sdk_sns::Client::new(sdk), t)), store })
    }

    /// Publishes the history items of the clusters in `answer` finished at or after `since_ms`.
    pub async fn publish(&self, answer: &Value, since_ms: u64) {
        let Some((sns, topic)) = &self.sns else { return };
        let mut clusters: Vec<&str> = answer["results"].as_array().into_iter().flatten().filter_map(|r| r["cluster"].as_str()).collect();
        clusters.extend(answer["cluster"].as_str());
        for cluster in clusters {
            let history = match self.store.read_history(cluster).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(cluster, error = %e, "reading history for the SNS event");
                    continue;
                }
            };
            for entry in history.iter().filter(|h| h.finished_ms >= since_ms) {
                let old = entry.old_primary.as_deref().unwrap_or("-");
                let subject: String =
                    format!("pgdaemon {cluster}: {:?} {old} -> {} (term {})", entry.kind, entry.new_primary, entry.term).chars().take(100).collect();
                let message = json!({ "event": "primary-changed", "cluster": cluster, "history": entry });
                match sns.publish().topic_arn(topic).subject(subject).message(message.to_string()).send().await {
                    Ok(_) => tracing::info!(cluster, term = entry.term, "failover event published"),
                    Err(e) => tracing::warn!(cluster, error = %aws_sdk_sns::error::DisplayErrorContext(e), "publishing the failover event"),
                }
            }
        }
    }
}

/// Handles `event`, then publishes the changes of primary it carried out.
pub async fn handle_and_publish<S, F, C>(
    handler: &Handler<S, F, C>,
    events: &Events<S>,
    event: lambda_runtime::LambdaEvent<Value>,
) -> Result<Value, HandlerError>
where
    S: Store + Clone + 'static,
    F: pgdaemon_core::fence::Fencer + Clone + 'static,
    C: Clock + Clone + 'static,
{
    let since_ms = SystemClock::new().wall_ms();
    let answer = handler.handle(event).await?;
    events.publish(&answer, since_ms).await;
    Ok(answer)
}
