//! The Lambda's event delivery against moto server: events reach the SNS topic (read back through
//! an HTTP subscription to a server on 127.0.0.1, which moto calls on publish) and the store's
//! event log, each once and with its id; a topic that does not exist is retried a bounded number
//! of times, reported, and does not keep the other sink from its events.

use std::sync::{Arc, Mutex};

use aws_sdk_sns::config::{BehaviorVersion, Credentials, Region};
use pgdaemon_core::events::{Event, EventEmitter, EventKind, EventSink, DEFAULT_RETENTION};
use pgdaemon_core::store::StoreSink;
use pgdaemon_core::{MemoryStore, Store};
use pgdaemon_lambda::events::{Events, SnsSink};
use pgdaemon_testkit::engines::MotoServer;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn sns() -> aws_sdk_sns::Client {
    let moto = MotoServer::shared();
    let creds = Credentials::new(MotoServer::ACCESS_KEY_ID, MotoServer::SECRET_ACCESS_KEY, None, None, "test");
    let conf = aws_sdk_sns::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(MotoServer::REGION))
        .endpoint_url(moto.endpoint())
        .credentials_provider(creds)
        .build();
    aws_sdk_sns::Client::from_conf(conf)
}

/// A minimal HTTP receiver on loopback keeping each request body; answers 200.
async fn receiver() -> (Arc<Mutex<Vec<String>>>, String) {
    let bodies: Arc<Mutex<Vec<String>>> = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/sns", listener.local_addr().unwrap());
    let keep = bodies.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 8192];
                // Headers, then Content-Length bytes of body (bounded reads).
                for _ in 0..1000 {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf);
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            keep.lock().unwrap().push(String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned());
                            break;
                        }
                    }
                }
                let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n").await;
            });
        }
    });
    (bodies, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_reach_sns_and_the_store_once_each() {
    let client = sns();
    let topic =
        client.create_topic().name(format!("pgdaemon-events-{}", std::process::id())).send().await.unwrap().topic_arn.unwrap();
    let (bodies, url) = receiver().await;
    client.subscribe().topic_arn(&topic).protocol("http").endpoint(&url).send().await.unwrap();

    let store = Arc::new(MemoryStore::new());
    let events = Events::new(vec![
        Arc::new(StoreSink::new(store.clone(), DEFAULT_RETENTION)) as Arc<dyn EventSink>,
        Arc::new(SnsSink::new(client.clone(), topic.clone())),
    ]);
    let sent: Vec<Event> = [EventKind::FailoverStarted, EventKind::Fenced, EventKind::Promoted, EventKind::Finished]
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            Event::new(k, "prod", 1_700_000_000_000 + i as u64, "pg-1 -> pg-2").member("pg-2").term(5).source("coordinator")
        })
        .collect();
    for e in &sent {
        events.emitter().emit(e.clone());
    }
    assert_eq!(events.deliver().await, 0);
    assert_eq!(events.deliver().await, 0, "a second delivery has nothing left to send");

    // moto posts each notification to the subscriber during Publish.
    let notes: Vec<Value> = bodies.lock().unwrap().iter().map(|b| serde_json::from_str(b).unwrap()).collect();
    let got: Vec<Event> = notes.iter().map(|n| serde_json::from_str(n["Message"].as_str().unwrap()).unwrap()).collect();
    assert_eq!(got, sent, "each event once, in order: {notes:#?}");
    assert_eq!(notes[0]["Subject"], "pgdaemon prod: failover_started pg-2 (term 5)");
    let logged = store.read_events("prod", 0).await.unwrap();
    assert_eq!(logged.iter().map(|e| &e.id).collect::<Vec<_>>(), sent.iter().map(|e| &e.id).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_topic_is_retried_reported_and_isolated() {
    let store = Arc::new(MemoryStore::new());
    let missing = format!("arn:aws:sns:{}:123456789012:no-such-topic-{}", MotoServer::REGION, std::process::id());
    let events = Events::new(vec![
        Arc::new(SnsSink::new(sns(), missing)) as Arc<dyn EventSink>,
        Arc::new(StoreSink::new(store.clone(), DEFAULT_RETENTION)),
    ]);
    let e = Event::new(EventKind::Finished, "prod2", 1, "x").term(2);
    events.emitter().emit(e.clone());
    let started = std::time::Instant::now();
    assert_eq!(events.deliver().await, 1, "the SNS delivery is given up and counted");
    // Three attempts with 200 + 400 ms between them: bounded, well inside a Lambda timeout.
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
    assert_eq!(
        store.read_events("prod2", 0).await.unwrap(),
        vec![Event { expire_at: store.read_events("prod2", 0).await.unwrap()[0].expire_at, ..e }]
    );
}
