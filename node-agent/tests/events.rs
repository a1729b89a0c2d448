//! Event delivery with real sinks: a webhook to an HTTP server on 127.0.0.1, a shell command hook
//! writing its stdin to a file, and the store's event log. Each event reaches each sink once; a
//! failing webhook is retried with the same event id and never holds up the caller or the other
//! sinks; a full queue drops its oldest event.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use pgdaemon_agent::events::{CommandEvents, Dispatcher, EventsConfig};
use pgdaemon_core::events::{Event, EventEmitter, EventKind, EventSink, RetryPolicy, SinkError};
use pgdaemon_core::{MemoryStore, Store};

/// What the test receiver saw: (header id, body) per request, and how many requests to fail.
#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<(String, Event)>>,
    fail_first: AtomicUsize,
    requests: AtomicUsize,
}

async fn hook(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: String) -> StatusCode {
    let n = r.requests.fetch_add(1, Ordering::SeqCst);
    let id = headers.get("x-pgdaemon-event-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    let event: Event = serde_json::from_str(&body).expect("the body is one event as JSON");
    r.got.lock().unwrap().push((id, event));
    if n < r.fail_first.load(Ordering::SeqCst) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

/// A receiver on a free loopback port; the server task ends with the test's runtime.
async fn receiver(fail_first: usize) -> (Arc<Receiver>, String) {
    let r = Arc::new(Receiver { fail_first: AtomicUsize::new(fail_first), ..Default::default() });
    let app = Router::new().route("/hook", post(hook)).with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (r, url)
}

fn event(kind: EventKind, n: u64) -> Event {
    Event::new(kind, "events-test", 1_700_000_000_000 + n, format!("event {n}")).member("pg-1").term(n).source("test")
}

fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy { attempts, first_delay: Duration::from_millis(50), max_delay: Duration::from_millis(200) }
}

/// The events a command hook appended to `path`, one JSON document per line.
fn hook_file(path: &std::path::Path) -> Vec<Event> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter(|l| !l.trim().is_empty()).map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sink_gets_each_event_once() {
    let (recv, url) = receiver(0).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hook.jsonl");
    let store = Arc::new(MemoryStore::new());
    let cfg = EventsConfig {
        webhook_url: Some(url),
        // The hook sees the JSON on stdin and the kind in its environment.
        command: Some(format!("{{ cat; echo; }} >> '{}' && test -n \"$PGDAEMON_EVENT_KIND\"", file.display())),
        command_events: CommandEvents::All,
        ..EventsConfig::default()
    };
    let dispatcher = cfg.start(Some(store.clone() as Arc<dyn Store>)).unwrap();
    assert_eq!(dispatcher.sink_names(), ["store", "webhook", "command"]);
    let sent: Vec<Event> = (1..=5).map(|n| event(EventKind::MemberDown, n)).collect();
    for e in &sent {
        dispatcher.emit(e.clone());
    }
    assert!(dispatcher.flush(Duration::from_secs(20)).await, "delivery did not finish: {:?}", dispatcher.stats());

    let webhook: Vec<(String, Event)> = recv.got.lock().unwrap().clone();
    assert_eq!(webhook.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(), sent, "webhook: each once, in order");
    assert!(webhook.iter().all(|(id, e)| *id == e.id), "the id header names the event");
    assert_eq!(hook_file(&file), sent, "command hook: each once, in order");
    let logged = store.read_events("events-test", 0).await.unwrap();
    assert_eq!(logged.iter().map(|e| e.id.clone()).collect::<Vec<_>>(), sent.iter().map(|e| e.id.clone()).collect::<Vec<_>>());
    assert!(logged.iter().all(|e| e.expire_at.is_some()), "logged events carry their TTL");
    for (name, s) in dispatcher.stats() {
        assert_eq!((s.delivered, s.retries, s.failed, s.dropped), (5, 0, 0, 0), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_webhook_is_retried_without_blocking_anything() {
    // The receiver answers 500 twice, then 200.
    let (recv, url) = receiver(2).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hook.jsonl");
    let cfg = EventsConfig {
        store: false,
        webhook_url: Some(url),
        command: Some(format!("cat >> '{}'; echo >> '{}'", file.display(), file.display())),
        retry_attempts: 4,
        retry_first_delay_ms: 300,
        retry_max_delay_ms: 300,
        ..EventsConfig::default()
    };
    let dispatcher = cfg.start(None).unwrap();
    // A role change of this node (its agent loop's event): the command hook's default diet.
    let promoted = event(EventKind::Promoted, 1).source("agent");
    let started = Instant::now();
    dispatcher.emit(promoted.clone());
    // Not this node's role change: the default command hook (role changes only) gets neither.
    dispatcher.emit(event(EventKind::LagOverThreshold, 2));
    dispatcher.emit(event(EventKind::Promoted, 3).source("coordinator"));
    assert!(started.elapsed() < Duration::from_millis(50), "emit waited for a sink: {:?}", started.elapsed());

    // The command hook is done long before the webhook's retries are (2 x 300 ms).
    let mut hook_done = None;
    for _ in 0..100 {
        if hook_file(&file).len() == 1 {
            hook_done = Some(started.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let hook_done = hook_done.expect("the command hook never ran");
    assert!(dispatcher.flush(Duration::from_secs(20)).await);
    let webhook_done = started.elapsed();
    assert!(hook_done < Duration::from_millis(550) && hook_done < webhook_done, "hook {hook_done:?}, webhook {webhook_done:?}");

    let got = recv.got.lock().unwrap().clone();
    let ids: Vec<&str> = got.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids.len(), 5, "3 attempts for the first event, 1 for each other: {ids:?}");
    assert!(ids[..3].iter().all(|id| *id == promoted.id), "retries carry the same id so the receiver can dedupe: {ids:?}");
    let stats = dispatcher.stats();
    assert_eq!(stats[0].0, "webhook");
    assert_eq!((stats[0].1.delivered, stats[0].1.retries, stats[0].1.failed), (3, 2, 0));
    assert_eq!(hook_file(&file), vec![promoted], "the hook got the role change once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_webhook_is_given_up_after_its_attempts() {
    let (recv, url) = receiver(usize::MAX).await;
    let cfg = EventsConfig { store: false, webhook_url: Some(url), retry_attempts: 3, retry_first_delay_ms: 20, retry_max_delay_ms: 40, ..EventsConfig::default() };
    let dispatcher = cfg.start(None).unwrap();
    dispatcher.emit(event(EventKind::FailoverStarted, 1));
    assert!(dispatcher.flush(Duration::from_secs(20)).await);
    assert_eq!(recv.requests.load(Ordering::SeqCst), 3, "bounded: exactly the configured attempts");
    let s = dispatcher.stats()[0].1;
    assert_eq!((s.delivered, s.retries, s.failed), (0, 2, 1));
}

/// A sink that holds each delivery until released (our own trait, to fill a queue on purpose).
struct Gate {
    started: tokio::sync::Semaphore,
    release: tokio::sync::Semaphore,
    got: Mutex<Vec<String>>,
}

#[async_trait]
impl EventSink for Gate {
    fn name(&self) -> &str {
        "gate"
    }
    async fn deliver(&self, event: &Event) -> Result<(), SinkError> {
        self.started.add_permits(1);
        self.release.acquire().await.unwrap().forget();
        self.got.lock().unwrap().push(event.id.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_drops_the_oldest_event() {
    let gate = Arc::new(Gate { started: tokio::sync::Semaphore::new(0), release: tokio::sync::Semaphore::new(0), got: Mutex::default() });
    let dispatcher = Dispatcher::start(vec![gate.clone() as Arc<dyn EventSink>], 2, fast_retry(1));
    let events: Vec<Event> = (1..=5).map(|n| event(EventKind::MemberUp, n)).collect();
    dispatcher.emit(events[0].clone());
    // The first event is in flight; the queue (2) then takes 2..5 and keeps the newest two.
    tokio::time::timeout(Duration::from_secs(10), gate.started.acquire()).await.unwrap().unwrap().forget();
    for e in &events[1..] {
        dispatcher.emit(e.clone());
    }
    gate.release.add_permits(10);
    assert!(dispatcher.flush(Duration::from_secs(10)).await);
    let expected: Vec<String> = [&events[0], &events[3], &events[4]].iter().map(|e| e.id.clone()).collect();
    assert_eq!(*gate.got.lock().unwrap(), expected);
    let s = dispatcher.stats()[0].1;
    assert_eq!((s.delivered, s.dropped), (3, 2));
}
