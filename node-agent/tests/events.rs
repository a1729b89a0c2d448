//! Event delivery with real sinks: a webhook to an HTTP server on 127.0.0.1, a shell command hook
//! writing its stdin to a file, and the store's event log. Each event reaches each sink once; a
//! failing webhook is retried with the same event id and never holds up the caller or the other
//! sinks; a full queue drops its oldest event. End to end: two real agents (hosted coordinators)
//! on real Postgres and etcd fail over, and every event reaches the log and the webhook once.

mod common;

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
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
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
    let cfg = EventsConfig {
        store: false,
        webhook_url: Some(url),
        retry_attempts: 3,
        retry_first_delay_ms: 20,
        retry_max_delay_ms: 40,
        ..EventsConfig::default()
    };
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
    let gate = Arc::new(Gate {
        started: tokio::sync::Semaphore::new(0),
        release: tokio::sync::Semaphore::new(0),
        got: Mutex::default(),
    });
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

/// A `pgdaemon-agent` process, killed by its PID when dropped.
struct AgentProcess(Option<std::process::Child>);

impl AgentProcess {
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Two real agents (hosted coordinators, fencing off) on real Postgres and etcd, with a webhook
/// and a command hook each. The primary's host dies; the failover's events reach the event log
/// and the webhook once each, and the new primary's command hook hears of its promotion once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_reaches_every_sink_once() {
    use pgdaemon_core::{ClusterRecord, Role};
    use pgdaemon_dcs::EtcdStore;
    use pgdaemon_testkit::engines::EtcdServer;
    use pgdaemon_testkit::postgres::{postgres_available, PgCluster};

    if !postgres_available() {
        eprintln!("skipped: PostgreSQL binaries not found (set PGDAEMON_PG_BIN)");
        return;
    }
    let (pg, etcd) = tokio::task::spawn_blocking(|| {
        let mut pg = PgCluster::new().unwrap();
        pg.init_primary("pg-1").unwrap();
        pg.add_replica("pg-2", "pg-1").unwrap();
        (pg, EtcdServer::shared())
    })
    .await
    .unwrap();
    const PREFIX: &str = "/pgdaemon-events-e2e";
    let cluster = format!("events-e2e-{}", std::process::id());
    let store = EtcdStore::connect(&[etcd.endpoint()], PREFIX).await.unwrap();
    let dynamic = pgdaemon_testkit::short_timings();
    store.write_cluster(&cluster, None, &ClusterRecord::bootstrap("pg-1", dynamic)).await.unwrap();
    let (recv, url) = receiver(0).await;

    let dir = pg.dir().to_path_buf();
    let mut agents = Vec::new();
    for n in ["pg-1", "pg-2"] {
        let node = pg.node(n).clone();
        let api_port = pgdaemon_testkit::ports::free_port();
        let hook = dir.join(format!("{n}.hook"));
        let text = format!(
            "cluster = \"{cluster}\"\n[node]\nname = \"{n}\"\nlisten = \"127.0.0.1:{api_port}\"\npg_host = \"127.0.0.1\"\nimds = false\n\
             instance_id = \"local-{n}\"\navailability_zone = \"local\"\n\
             [postgres]\nbin_dir = \"{bin}\"\ndata_dir = \"{data}\"\nport = {port}\nconnect_host = \"{dir}/sock\"\n\
             replication_user = \"postgres\"\nlog_file = \"{log}\"\n\
             [postgres.parameters]\nlisten_addresses = \"127.0.0.1\"\nunix_socket_directories = \"{dir}/sock\"\nwal_log_hints = true\n\
             hot_standby = true\nwal_keep_size = \"256MB\"\nshared_buffers = \"16MB\"\nfsync = false\n\
             [store]\nbackend = \"etcd\"\nendpoints = [\"{etcd}\"]\nprefix = \"{PREFIX}\"\n\
             [coordinator]\nenabled = true\nfencing = [\"off\"]\ninterval_ms = 500\n\
             [events]\nwebhook_url = \"{url}\"\ncommand = \"cat >> '{hook}'; echo >> '{hook}'\"\n[log]\nlevel = \"info\"\n",
            bin = pg.bin_dir().display(),
            data = node.data_dir.display(),
            port = node.port,
            dir = dir.display(),
            log = node.log_file.display(),
            etcd = etcd.endpoint(),
            hook = hook.display(),
        );
        let config = dir.join(format!("{n}.toml"));
        std::fs::write(&config, text).unwrap();
        let log = std::fs::File::create(dir.join(format!("{n}.agent.log"))).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_pgdaemon-agent"))
            .arg("--config")
            .arg(&config)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn pgdaemon-agent");
        agents.push(AgentProcess(Some(child)));
    }
    let logs = || {
        ["pg-1", "pg-2"]
            .iter()
            .map(|n| {
                let text = std::fs::read_to_string(dir.join(format!("{n}.agent.log"))).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(30).collect();
                format!("--- {n}\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    async fn wait<F: Fn(&pgdaemon_core::ClusterView) -> bool>(store: &EtcdStore, cluster: &str, within: Duration, ok: F) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if store.read_view(cluster).await.is_ok_and(|v| ok(&v)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }
    let healthy = wait(&store, &cluster, Duration::from_secs(60), |v| {
        v.leader.as_ref().is_some_and(|l| l.owner == "pg-1" && !l.released)
            && v.members.get("pg-1").is_some_and(|m| m.role == Role::Primary)
            && v.members.get("pg-2").is_some_and(|m| m.role == Role::Replica && m.pg_running)
    })
    .await;
    assert!(healthy, "cluster never healthy\n{}", logs());
    // Let both coordinators see the healthy cluster (their baseline).
    let before = store.read_view(&cluster).await.unwrap();
    let beaten = wait(&store, &cluster, Duration::from_secs(20), |v| common::beat_twice_since(&before, v)).await;
    assert!(beaten, "heartbeats stopped beating\n{}", logs());

    // The primary's host dies: its agent and its Postgres.
    let died = Instant::now();
    agents[0].kill();
    pg.kill9("pg-1").unwrap();
    let failed_over = wait(&store, &cluster, Duration::from_secs(90), |v| {
        v.cluster.as_ref().is_some_and(|r| r.primary.as_deref() == Some("pg-2") && r.transition.is_none() && r.term == 2)
    })
    .await;
    assert!(failed_over, "no failover to pg-2\n{}", logs());
    let failover_s = died.elapsed().as_secs_f64();

    // Delivery is asynchronous: wait (bounded) until the webhook has every logged event.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut logged;
    loop {
        logged = store.read_events(&cluster, 0).await.unwrap();
        let hooked = recv.got.lock().unwrap().len();
        let finished = logged.iter().any(|e| e.kind == EventKind::Finished);
        if (finished && hooked >= logged.len()) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    logged = store.read_events(&cluster, 0).await.unwrap();
    let summary: Vec<String> =
        logged.iter().map(|e| format!("{} {} {}", e.source, e.kind, e.member.as_deref().unwrap_or("-"))).collect();

    let from = |source: &str, kind: EventKind| logged.iter().filter(|e| e.source == source && e.kind == kind).collect::<Vec<_>>();
    for kind in [EventKind::FailoverStarted, EventKind::Fenced, EventKind::Promoted, EventKind::Finished] {
        let got = from("coordinator", kind);
        assert_eq!(got.len(), 1, "coordinator {kind}: {summary:#?}\n{}", logs());
        assert_eq!(got[0].term, 2);
    }
    assert_eq!(from("coordinator", EventKind::Fenced)[0].member.as_deref(), Some("pg-1"));
    let promoted = from("agent", EventKind::Promoted);
    assert_eq!(promoted.len(), 1, "{summary:#?}");
    assert_eq!((promoted[0].member.as_deref(), promoted[0].term), (Some("pg-2"), 2));
    assert!(from("coordinator", EventKind::MemberDown).len() <= 1, "{summary:#?}");

    // The webhook got every logged event exactly once (no failures, so no retries), and nothing else.
    let mut hook_ids: Vec<String> = recv.got.lock().unwrap().iter().map(|(id, _)| id.clone()).collect();
    let mut log_ids: Vec<String> = logged.iter().map(|e| e.id.clone()).collect();
    hook_ids.sort();
    log_ids.sort();
    assert_eq!(hook_ids, log_ids, "{summary:#?}");
    let unique: std::collections::BTreeSet<&String> = log_ids.iter().collect();
    assert_eq!(unique.len(), log_ids.len());

    // pg-2's command hook heard of its own promotion once; pg-1's never ran (no role change).
    let hooked = hook_file(&dir.join("pg-2.hook"));
    assert_eq!(
        hooked.iter().map(|e| (e.kind, e.source.as_str())).collect::<Vec<_>>(),
        vec![(EventKind::Promoted, "agent")],
        "{hooked:#?}"
    );
    assert!(hook_file(&dir.join("pg-1.hook")).is_empty());
    eprintln!("failover in {failover_s:.1}s; {} events logged and posted once each: {summary:?}", logged.len());
    drop(agents);
    drop(pg);
}
