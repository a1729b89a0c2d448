//! Event delivery in the agent process (`[events]` section): a [`Dispatcher`] that takes events
//! from the agent loop, the hosted coordinator and the monitor without ever blocking them, and
//! delivers each to every configured sink from a task of its own:
//!
//! - `store`: the cluster's event log in the store (on by default);
//! - `webhook_url`: an HTTP POST of the event as JSON (header `X-Pgdaemon-Event-Id`); `https://`
//!   verified against the system's roots or `webhook_ca_file`;
//! - `command`: a shell command with the event as JSON on stdin and `PGDAEMON_EVENT_*` in its
//!   environment (Patroni's `on_role_change`; by default only for role changes of this node).
//!
//! Each sink has a bounded queue; when a sink falls behind so far that its queue is full, the
//! oldest waiting event is dropped with a warning (a stalled webhook must not grow memory without
//! bound). A failed delivery is retried with backoff ([`RetryPolicy`]), then logged and given up.
//! Sinks are independent: a dead webhook delays nothing but its own queue.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pgdaemon_core::events::{
    deliver_with_retry, DeliveryFailed, Event, EventEmitter, EventSink, RetryPolicy, SinkError, DEFAULT_RETENTION,
};
use pgdaemon_core::store::StoreSink;
use pgdaemon_core::{ConfigError, Store};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

/// The `[events]` configuration section (agent and monitor).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    /// Append events to the store's event log (`pgdctl`/the API can show them later).
    #[serde(default = "default_true")]
    pub store: bool,
    /// Days a logged event is kept (DynamoDB TTL; other stores keep events until deleted).
    #[serde(default = "default_retention_days")]
    pub retention_days: u64,
    /// POST every event as JSON to this `http://` or `https://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    #[serde(default = "default_webhook_timeout_ms")]
    pub webhook_timeout_ms: u64,
    /// PEM CA file verifying an `https://` webhook's certificate (a private CA); unset: the
    /// system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_ca_file: Option<PathBuf>,
    /// Run this shell command (`sh -c`) with the event JSON on stdin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// `role_changes` (this node's own promoted / demoted / lease lost, and a monitored
    /// target's role change: Patroni's `on_role_change`) or `all`.
    #[serde(default)]
    pub command_events: CommandEvents,
    #[serde(default = "default_command_timeout_ms")]
    pub command_timeout_ms: u64,
    /// Events waiting per sink before the oldest is dropped.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// Delivery attempts per event and sink (first one included).
    #[serde(default = "default_retry_attempts")]
    pub retry_attempts: u32,
    #[serde(default = "default_retry_first_delay_ms")]
    pub retry_first_delay_ms: u64,
    #[serde(default = "default_retry_max_delay_ms")]
    pub retry_max_delay_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CommandEvents {
    #[default]
    RoleChanges,
    All,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            store: true,
            retention_days: default_retention_days(),
            webhook_url: None,
            webhook_timeout_ms: default_webhook_timeout_ms(),
            webhook_ca_file: None,
            command: None,
            command_events: CommandEvents::default(),
            command_timeout_ms: default_command_timeout_ms(),
            queue_capacity: default_queue_capacity(),
            retry_attempts: default_retry_attempts(),
            retry_first_delay_ms: default_retry_first_delay_ms(),
            retry_max_delay_ms: default_retry_max_delay_ms(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_retention_days() -> u64 {
    DEFAULT_RETENTION.as_secs() / 86_400
}
fn default_webhook_timeout_ms() -> u64 {
    5_000
}
fn default_command_timeout_ms() -> u64 {
    10_000
}
fn default_queue_capacity() -> usize {
    1_000
}
fn default_retry_attempts() -> u32 {
    RetryPolicy::default().attempts
}
fn default_retry_first_delay_ms() -> u64 {
    RetryPolicy::default().first_delay.as_millis() as u64
}
fn default_retry_max_delay_ms() -> u64 {
    RetryPolicy::default().max_delay.as_millis() as u64
}

impl EventsConfig {
    /// Rejects values that cannot work, naming the key (`events.<key>`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.webhook_url {
            let parsed = reqwest::Url::parse(url)
                .map_err(|e| ConfigError::invalid("events.webhook_url", format!("{url:?} is not a URL: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(ConfigError::invalid("events.webhook_url", format!("{url:?} must be http:// or https://")));
            }
        }
        if let Some(path) = &self.webhook_ca_file {
            if self.webhook_url.is_none() {
                return Err(ConfigError::invalid("events.webhook_ca_file", "is set without events.webhook_url"));
            }
            if !path.is_absolute() {
                return Err(ConfigError::invalid(
                    "events.webhook_ca_file",
                    format!("{} must be an absolute path", path.display()),
                ));
            }
        }
        if self.command.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(ConfigError::invalid("events.command", "is empty (leave it out to run no command)"));
        }
        for (key, v) in [
            ("events.webhook_timeout_ms", self.webhook_timeout_ms),
            ("events.command_timeout_ms", self.command_timeout_ms),
            ("events.retry_first_delay_ms", self.retry_first_delay_ms),
            ("events.retention_days", self.retention_days),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(key, "must be above 0"));
            }
        }
        if self.queue_capacity == 0 {
            return Err(ConfigError::invalid("events.queue_capacity", "must be at least 1"));
        }
        if self.retry_attempts == 0 || self.retry_attempts > 100 {
            return Err(ConfigError::invalid("events.retry_attempts", "must be 1 to 100"));
        }
        if self.retry_max_delay_ms < self.retry_first_delay_ms {
            return Err(ConfigError::invalid("events.retry_max_delay_ms", "must not be below events.retry_first_delay_ms"));
        }
        Ok(())
    }

    pub fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            attempts: self.retry_attempts,
            first_delay: Duration::from_millis(self.retry_first_delay_ms),
            max_delay: Duration::from_millis(self.retry_max_delay_ms),
        }
    }

    /// The configured sinks (`store` only when a store is given). Reads `webhook_ca_file`: a file
    /// that is missing or holds no certificate is an error naming the key.
    pub fn sinks(&self, store: Option<Arc<dyn Store>>) -> anyhow::Result<Vec<Arc<dyn EventSink>>> {
        self.validate()?;
        let mut sinks: Vec<Arc<dyn EventSink>> = Vec::new();
        if let (true, Some(store)) = (self.store, store) {
            sinks.push(Arc::new(StoreSink::new(store, Duration::from_secs(self.retention_days * 86_400))));
        }
        if let Some(url) = &self.webhook_url {
            let timeout = Duration::from_millis(self.webhook_timeout_ms);
            sinks.push(Arc::new(WebhookSink::new(url, timeout, self.webhook_ca_file.as_deref())?));
        }
        if let Some(cmd) = &self.command {
            let only_roles = self.command_events == CommandEvents::RoleChanges;
            sinks.push(Arc::new(CommandSink::new(cmd, Duration::from_millis(self.command_timeout_ms), only_roles)));
        }
        Ok(sinks)
    }

    /// Validates, builds the sinks and starts a dispatcher over them (needs a tokio runtime).
    pub fn start(&self, store: Option<Arc<dyn Store>>) -> anyhow::Result<Arc<Dispatcher>> {
        Ok(Dispatcher::start(self.sinks(store)?, self.queue_capacity, self.retry()))
    }
}

/// Delivery counters of one sink.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    pub delivered: u64,
    /// Retried attempts (each failed attempt that was followed by another).
    pub retries: u64,
    /// Events given up after the last attempt.
    pub failed: u64,
    /// Events dropped unsent because the queue was full.
    pub dropped: u64,
}

struct SinkQueue {
    sink: Arc<dyn EventSink>,
    queue: Mutex<VecDeque<Event>>,
    capacity: usize,
    wake: Notify,
    busy: AtomicBool,
    delivered: AtomicU64,
    retries: AtomicU64,
    failed: AtomicU64,
    dropped: AtomicU64,
}

impl SinkQueue {
    fn push(&self, event: Event) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.len() >= self.capacity {
            if let Some(old) = q.pop_front() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(sink = self.sink.name(), event_id = %old.id, event = %old.summary(), capacity = self.capacity, "event queue full: dropped the oldest event");
            }
        }
        q.push_back(event);
        drop(q);
        self.wake.notify_one();
    }

    fn pop(&self) -> Option<Event> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let e = q.pop_front();
        // Marked busy under the lock, so `idle` never sees an empty queue with an event in hand.
        self.busy.store(e.is_some(), Ordering::SeqCst);
        e
    }

    fn idle(&self) -> bool {
        let q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.is_empty() && !self.busy.load(Ordering::SeqCst)
    }

    fn stats(&self) -> SinkStats {
        SinkStats {
            delivered: self.delivered.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
        }
    }
}

/// Asynchronous, bounded, retrying delivery to a set of sinks (see the module docs).
/// `emit` never waits; dropping the last handle stops the delivery tasks.
pub struct Dispatcher {
    queues: Vec<Arc<SinkQueue>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Dispatcher {
    /// Starts one delivery task per sink on the current tokio runtime.
    pub fn start(sinks: Vec<Arc<dyn EventSink>>, capacity: usize, retry: RetryPolicy) -> Arc<Dispatcher> {
        let queues: Vec<Arc<SinkQueue>> = sinks
            .into_iter()
            .map(|sink| {
                Arc::new(SinkQueue {
                    sink,
                    queue: Mutex::new(VecDeque::new()),
                    capacity: capacity.max(1),
                    wake: Notify::new(),
                    busy: AtomicBool::new(false),
                    delivered: AtomicU64::new(0),
                    retries: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                    dropped: AtomicU64::new(0),
                })
            })
            .collect();
        // Supervised: a delivery loop that panics (a sink's bug) is started again after a logged
        // backoff, so one bad event does not silence the sink for the life of the agent.
        let tasks = queues
            .iter()
            .map(|q| {
                let (q, name) = (q.clone(), format!("event delivery ({})", q.sink.name()));
                tokio::spawn(async move {
                    crate::supervise::restarting(&name, crate::supervise::RESTART_BACKOFF, || {
                        Some(deliver_loop(q.clone(), retry))
                    })
                    .await
                })
            })
            .collect();
        Arc::new(Dispatcher { queues, tasks })
    }

    /// Sink names, in configuration order.
    pub fn sink_names(&self) -> Vec<String> {
        self.queues.iter().map(|q| q.sink.name().to_string()).collect()
    }

    /// Counters per sink, in configuration order.
    pub fn stats(&self) -> Vec<(String, SinkStats)> {
        self.queues.iter().map(|q| (q.sink.name().to_string(), q.stats())).collect()
    }

    /// Waits until every queue is empty and no delivery is in flight, at most `timeout`.
    /// Returns whether everything was handed over (delivered or given up).
    pub async fn flush(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.queues.iter().all(|q| q.idle()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl EventEmitter for Dispatcher {
    fn emit(&self, event: Event) {
        tracing::info!(event_id = %event.id, kind = %event.kind, cluster = %event.cluster, member = event.member.as_deref().unwrap_or("-"), term = event.term, detail = %event.detail, "event");
        for q in &self.queues {
            if q.sink.accepts(&event) {
                q.push(event.clone());
            }
        }
    }
}

async fn deliver_loop(q: Arc<SinkQueue>, retry: RetryPolicy) {
    loop {
        let Some(event) = q.pop() else {
            q.wake.notified().await;
            continue;
        };
        let on_retry = |_: &SinkError, _: Duration| {
            q.retries.fetch_add(1, Ordering::Relaxed);
        };
        match deliver_with_retry(q.sink.as_ref(), &event, retry, tokio::time::sleep, on_retry).await {
            Ok(attempt) => {
                q.delivered.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(sink = q.sink.name(), event_id = %event.id, attempt, "event delivered");
            }
            Err(DeliveryFailed { attempts: attempt, error: e }) => {
                q.failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!(sink = q.sink.name(), event_id = %event.id, event = %event.summary(), attempt, error = %e, "event delivery given up");
            }
        }
        q.busy.store(false, Ordering::SeqCst);
    }
}

/// POSTs each event as JSON. 2xx is delivered; 408, 429 and 5xx (and no answer) are retried;
/// other statuses are permanent failures (the receiver refuses this event). An `https://`
/// receiver whose certificate does not verify (chain and host name, against `ca_file` or the
/// system's roots) gets nothing: the attempt fails before the request is sent, and is retried
/// like any connection failure (a certificate may be replaced) until given up.
pub struct WebhookSink {
    url: reqwest::Url,
    client: reqwest::Client,
}

impl WebhookSink {
    pub fn new(url: &str, timeout: Duration, ca_file: Option<&Path>) -> anyhow::Result<Self> {
        let url = reqwest::Url::parse(url).with_context(|| format!("webhook URL {url:?}"))?;
        let tls = pgdaemon_dcs::tls::client_config(ca_file, None)
            .map_err(|e| ConfigError::invalid("events.webhook_ca_file", e.to_string()))?;
        let client = reqwest::Client::builder().use_preconfigured_tls(tls).timeout(timeout).build().context("HTTP client")?;
        Ok(WebhookSink { url, client })
    }
}

#[async_trait]
impl EventSink for WebhookSink {
    fn name(&self) -> &str {
        "webhook"
    }

    async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
        let resp = self.client.post(self.url.clone()).header("X-Pgdaemon-Event-Id", &event.id).json(event).send().await.map_err(
            |e| SinkError::retryable(format!("POST {}: {}", redact(&self.url), pgdaemon_dcs::error_chain(&e.without_url()))),
        )?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else if status.is_server_error() || status.as_u16() == 408 || status.as_u16() == 429 {
            Err(SinkError::retryable(format!("POST {}: HTTP {status}", redact(&self.url))))
        } else {
            Err(SinkError::permanent(format!("POST {}: HTTP {status}", redact(&self.url))))
        }
    }
}

/// The URL without credentials or query (tokens often live there) for logs.
fn redact(url: &reqwest::Url) -> String {
    format!("{}://{}{}", url.scheme(), url.host_str().unwrap_or(""), url.port().map(|p| format!(":{p}")).unwrap_or_default())
        + url.path()
}

/// Runs `sh -c <command>` per event: the event JSON on stdin, and `PGDAEMON_EVENT_KIND`,
/// `PGDAEMON_EVENT_ID`, `PGDAEMON_CLUSTER`, `PGDAEMON_MEMBER`, `PGDAEMON_TERM` in the
/// environment. Exit 0 is delivered; anything else (or the timeout, which kills it) is retried.
pub struct CommandSink {
    command: String,
    timeout: Duration,
    only_role_changes: bool,
}

impl CommandSink {
    pub fn new(command: impl Into<String>, timeout: Duration, only_role_changes: bool) -> Self {
        CommandSink { command: command.into(), timeout, only_role_changes }
    }
}

#[async_trait]
impl EventSink for CommandSink {
    fn name(&self) -> &str {
        "command"
    }

    /// Role changes of the local node are the events its own agent loop emits (source `agent`);
    /// the hosted coordinator's events about the cluster are not. The monitor's `role_changed`
    /// of a watched target counts too.
    fn accepts(&self, event: &Event) -> bool {
        !self.only_role_changes || (event.kind.is_role_change() && (event.source == "agent" || event.source == "monitor"))
    }

    async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
        let json = serde_json::to_vec(event).map_err(|e| SinkError::permanent(format!("encoding the event: {e}")))?;
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .env("PGDAEMON_EVENT_KIND", event.kind.as_str())
            .env("PGDAEMON_EVENT_ID", &event.id)
            .env("PGDAEMON_CLUSTER", &event.cluster)
            .env("PGDAEMON_MEMBER", event.member.as_deref().unwrap_or(""))
            .env("PGDAEMON_TERM", event.term.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| SinkError::retryable(format!("starting the event command: {e}")))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let run = async move {
            // A command that does not read its stdin must not fail the delivery.
            let _ = stdin.write_all(&json).await;
            drop(stdin);
            child.wait_with_output().await
        };
        match tokio::time::timeout(self.timeout, run).await {
            Err(_) => Err(SinkError::retryable(format!("event command did not finish within {:?} (killed)", self.timeout))),
            Ok(Err(e)) => Err(SinkError::retryable(format!("event command: {e}"))),
            Ok(Ok(out)) if out.status.success() => Ok(()),
            Ok(Ok(out)) => {
                let stderr = String::from_utf8_lossy(&out.stderr);
                Err(SinkError::retryable(format!(
                    "event command exited with {}: {}",
                    out.status,
                    stderr.trim().chars().take(200).collect::<String>()
                )))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_rejections_name_the_key() {
        let c: EventsConfig = toml::from_str("").unwrap();
        assert_eq!(c, EventsConfig::default());
        assert!(c.store && c.webhook_url.is_none() && c.command.is_none());
        assert!(c.validate().is_ok());
        for (text, key) in [
            ("webhook_url = \"ftp://x\"", "webhook_url"),
            ("webhook_url = \"not a url\"", "webhook_url"),
            ("command = \"  \"", "command"),
            ("queue_capacity = 0", "queue_capacity"),
            ("retry_attempts = 0", "retry_attempts"),
            ("retry_first_delay_ms = 500\nretry_max_delay_ms = 100", "retry_max_delay_ms"),
            ("webhook_ca_file = \"/etc/pgdaemon/hooks-ca.pem\"", "webhook_ca_file"),
            ("webhook_url = \"https://h/x\"\nwebhook_ca_file = \"ca.pem\"", "webhook_ca_file"),
        ] {
            let c: EventsConfig = toml::from_str(text).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(&format!("events.{key}")), "{text}: {err}");
        }
        assert!(toml::from_str::<EventsConfig>("surprise = 1").is_err());
        assert!(toml::from_str::<EventsConfig>("command_events = \"some\"").is_err());
    }

    #[test]
    fn an_unusable_webhook_ca_file_is_named_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("hooks-ca.pem");
        let cfg = EventsConfig {
            store: false,
            webhook_url: Some("https://hooks.example/pg".into()),
            webhook_ca_file: Some(ca.clone()),
            ..Default::default()
        };
        assert!(cfg.validate().is_ok(), "no file access in validate");
        let err = format!("{:#}", cfg.sinks(None).err().unwrap());
        assert!(err.contains("events.webhook_ca_file") && err.contains("hooks-ca.pem"), "{err}");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let err = format!("{:#}", cfg.sinks(None).err().unwrap());
        assert!(err.contains("events.webhook_ca_file") && err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn redacts_credentials_and_query() {
        let u = reqwest::Url::parse("https://user:secret@hooks.example:8443/p/x?token=abc").unwrap();
        assert_eq!(redact(&u), "https://hooks.example:8443/p/x");
    }
}
