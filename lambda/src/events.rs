//! The Lambda coordinator's events: the coordinators emit into a [`Collector`] while an
//! invocation runs (failover/switchover started, fenced, promoted, finished, and member health
//! changes seen across warm invocations); before the invocation returns, each event is delivered
//! to every sink: the store's event log (always) and the cluster's SNS topic
//! (`PGDAEMON_SNS_TOPIC_ARN`, which the Terraform module and the CDK stack set; unset: no SNS).
//!
//! Delivery happens after the coordinator's work, so it never delays a failover; each sink gets a
//! few bounded retries ([`RetryPolicy`]) and a failure is logged, never turned into a failed
//! invocation (the change of primary itself is done and recorded). The Lambda is frozen between
//! invocations, so nothing is left queued: delivery finishes inside the invocation.
//!
//! SNS messages: the event as JSON, a subject `pgdaemon <cluster>: <kind> <member> (term N)`,
//! and message attributes `kind`, `cluster` and `event_id` (subscription filter policies can
//! select e.g. only `finished`; receivers deduplicate by `event_id`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sns::types::MessageAttributeValue;
use pgdaemon_core::events::{deliver_with_retry, Collector, Event, EventSink, RetryPolicy, SinkError, DEFAULT_RETENTION};
use pgdaemon_core::store::StoreSink;
use pgdaemon_core::{Clock, Store};
use serde_json::Value;

use crate::handler::{Handler, HandlerError};

/// Retries inside one invocation: short, the whole delivery stays within a few seconds.
const RETRY: RetryPolicy =
    RetryPolicy { attempts: 3, first_delay: Duration::from_millis(200), max_delay: Duration::from_secs(1) };

/// Publishes events to one SNS topic.
pub struct SnsSink {
    client: aws_sdk_sns::Client,
    topic: String,
}

impl SnsSink {
    pub fn new(client: aws_sdk_sns::Client, topic: impl Into<String>) -> Self {
        SnsSink { client, topic: topic.into() }
    }
}

fn attr(value: &str) -> MessageAttributeValue {
    MessageAttributeValue::builder().data_type("String").string_value(value).build().expect("data type is set")
}

/// SNS subjects: at most 100 printable ASCII characters, no line breaks.
pub fn subject(event: &Event) -> String {
    let member = event.member.as_deref().map(|m| format!(" {m}")).unwrap_or_default();
    format!("pgdaemon {}: {}{member} (term {})", event.cluster, event.kind, event.term)
        .chars()
        .map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' })
        .take(100)
        .collect()
}

#[async_trait]
impl EventSink for SnsSink {
    fn name(&self) -> &str {
        "sns"
    }

    async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
        let message = serde_json::to_string(event).map_err(|e| SinkError::permanent(format!("encoding the event: {e}")))?;
        self.client
            .publish()
            .topic_arn(&self.topic)
            .subject(subject(event))
            .message(message)
            .message_attributes("kind", attr(event.kind.as_str()))
            .message_attributes("cluster", attr(&event.cluster))
            .message_attributes("event_id", attr(&event.id))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| SinkError::retryable(format!("SNS publish: {}", aws_sdk_sns::error::DisplayErrorContext(e))))
    }
}

/// The collector the coordinators emit into, and the sinks its events go to.
pub struct Events {
    collector: Arc<Collector>,
    sinks: Vec<Arc<dyn EventSink>>,
    retry: RetryPolicy,
}

impl Events {
    /// Sinks as given (tests); the emitter for [`Handler::with_events`] is [`Events::emitter`].
    pub fn new(sinks: Vec<Arc<dyn EventSink>>) -> Self {
        Events { collector: Arc::new(Collector::new()), sinks, retry: RETRY }
    }

    /// The store's event log, plus SNS when `PGDAEMON_SNS_TOPIC_ARN` is set; a value that is not
    /// an SNS topic ARN fails the cold start.
    pub fn from_env<S: Store + 'static>(sdk: &aws_config::SdkConfig, store: S) -> anyhow::Result<Self> {
        let topic = std::env::var("PGDAEMON_SNS_TOPIC_ARN").ok().map(|t| t.trim().to_string()).filter(|t| !t.is_empty());
        if let Some(t) = &topic {
            anyhow::ensure!(
                t.starts_with("arn:") && t.contains(":sns:"),
                "PGDAEMON_SNS_TOPIC_ARN: {t:?} is not an SNS topic ARN"
            );
        }
        let mut sinks: Vec<Arc<dyn EventSink>> = vec![Arc::new(StoreSink::new(store, DEFAULT_RETENTION))];
        if let Some(t) = topic {
            sinks.push(Arc::new(SnsSink::new(aws_sdk_sns::Client::new(sdk), t)));
        }
        Ok(Self::new(sinks))
    }

    pub fn emitter(&self) -> Arc<Collector> {
        self.collector.clone()
    }

    pub fn sink_names(&self) -> Vec<String> {
        self.sinks.iter().map(|s| s.name().to_string()).collect()
    }

    /// Delivers everything emitted so far to every sink (sinks concurrently, events in order,
    /// each with bounded retries). Returns the number of (event, sink) deliveries that failed.
    pub async fn deliver(&self) -> usize {
        self.deliver_events(&self.collector.drain()).await
    }

    /// Takes every event emitted so far (to deliver them with [`Events::deliver_events`]).
    pub fn drain(&self) -> Vec<Event> {
        self.collector.drain()
    }

    /// Delivers `events` as [`Events::deliver`] does.
    pub async fn deliver_events(&self, events: &[Event]) -> usize {
        if events.is_empty() {
            return 0;
        }
        let per_sink = self.sinks.iter().map(|sink| {
            async move {
                let mut failed = 0;
                for e in events.iter().filter(|e| sink.accepts(e)) {
                    if let Err(err) = deliver_with_retry(sink.as_ref(), e, self.retry, tokio::time::sleep, |_, _| {}).await {
                        failed += 1;
                        tracing::warn!(sink = sink.name(), event_id = %e.id, event = %e.summary(), error = %err, "event delivery given up");
                    }
                }
                failed
            }
        });
        let failed: usize = futures::future::join_all(per_sink).await.into_iter().sum();
        tracing::info!(events = events.len(), failed, "events delivered");
        failed
    }
}

/// Handles `event`, then delivers the events its coordinator runs emitted (also after an error:
/// a step may have been recorded before it), then prints the invocation's metrics (`crate::emf`).
pub async fn handle_and_publish<S, F, C>(
    handler: &Handler<S, F, C>,
    events: &Events,
    event: lambda_runtime::LambdaEvent<Value>,
) -> Result<Value, HandlerError>
where
    S: Store + Clone + 'static,
    F: pgdaemon_core::fence::Fencer + Clone + 'static,
    C: Clock + Clone + 'static,
{
    let answer = handler.handle(event).await;
    let emitted = events.drain();
    events.deliver_events(&emitted).await;
    let errored = match &answer {
        Err(HandlerError::Store { cluster, .. }) => Some(cluster.as_str()),
        _ => None,
    };
    let metrics = crate::emf::collect(handler.store(), &handler.take_reports(), &emitted, errored).await;
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    crate::emf::emit(&metrics, now_ms);
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdaemon_core::events::EventKind;

    #[test]
    fn subjects_fit_sns_rules() {
        let e = Event::new(EventKind::FailoverStarted, "c".repeat(63), 1, "x").member("m\u{e9}\n".repeat(30)).term(7);
        let s = subject(&e);
        assert!(s.len() <= 100 && s.chars().all(|c| c.is_ascii_graphic() || c == ' '), "{s:?}");
        let e = Event::new(EventKind::Finished, "prod", 1, "x").member("pg-2").term(4);
        assert_eq!(subject(&e), "pgdaemon prod: finished pg-2 (term 4)");
    }
}
