//! Issue 15: webhooks over https. The receiver is a TLS server on 127.0.0.1 (tokio-rustls with
//! a certificate from a test CA); the sink verifies it against `[events] webhook_ca_file` or the
//! system's roots. A receiver it cannot verify gets nothing, and the delivery is reported failed
//! (the sink's error, the `failed` count, the "given up" log line).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::HeaderMap;
use axum::routing::post;
use axum::Router;
use pgdaemon_agent::events::{EventsConfig, WebhookSink};
use pgdaemon_core::events::{Event, EventEmitter, EventKind, EventSink};
use pgdaemon_testkit::tls::{IssuedCert, TestPki};

/// What the receiver saw: the event ids of the requests that reached it, and the connections
/// it accepted (TLS handshakes attempted).
#[derive(Default)]
struct Receiver {
    ids: Mutex<Vec<String>>,
    connections: AtomicUsize,
}

/// An https receiver on a free loopback port presenting `cert`; `https://127.0.0.1:<port>/hook`.
async fn tls_receiver(cert: &IssuedCert) -> (Arc<Receiver>, String) {
    let r = Arc::new(Receiver::default());
    let seen = r.clone();
    let app = Router::new().route(
        "/hook",
        post(move |headers: HeaderMap| async move {
            let id = headers.get("x-pgdaemon-event-id").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
            seen.ids.lock().unwrap().push(id);
        }),
    );
    let config = pgdaemon_dcs::tls::server_config(&cert.cert, &cert.key, None).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("https://{}/hook", listener.local_addr().unwrap());
    let counter = r.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            counter.connections.fetch_add(1, Ordering::SeqCst);
            let (acceptor, app) = (acceptor.clone(), app.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let mut app = app.clone();
                    async move { tower_service::Service::call(&mut app, req.map(axum::body::Body::new)).await }
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(hyper_util::rt::TokioIo::new(tls), service).await;
            });
        }
    });
    (r, url)
}

fn event() -> Event {
    Event::new(EventKind::Promoted, "webhook-tls", 1_700_000_000_000, "pg-2 promoted").member("pg-2").term(4).source("test")
}

fn config(url: &str, ca_file: Option<std::path::PathBuf>) -> EventsConfig {
    EventsConfig {
        store: false,
        webhook_url: Some(url.to_string()),
        webhook_ca_file: ca_file,
        retry_attempts: 2,
        retry_first_delay_ms: 50,
        retry_max_delay_ms: 50,
        ..EventsConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_webhook_trusted_through_webhook_ca_file_receives_the_event() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path()).unwrap();
    let (recv, url) = tls_receiver(&pki.issue("hooks", &["127.0.0.1"]).unwrap()).await;
    let dispatcher = config(&url, Some(pki.ca_file())).start(None).unwrap();
    let e = event();
    dispatcher.emit(e.clone());
    assert!(dispatcher.flush(Duration::from_secs(10)).await, "{:?}", dispatcher.stats());
    assert_eq!(*recv.ids.lock().unwrap(), vec![e.id]);
    let (_, stats) = &dispatcher.stats()[0];
    assert_eq!((stats.delivered, stats.failed), (1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_whose_certificate_is_not_trusted_gets_nothing_and_the_failure_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::new(dir.path()).unwrap();
    // Signed by another CA than the one the sink trusts.
    let (recv, url) = tls_receiver(&pki.issue_untrusted("hooks", &["127.0.0.1"]).unwrap()).await;
    let dispatcher = config(&url, Some(pki.ca_file())).start(None).unwrap();
    dispatcher.emit(event());
    assert!(dispatcher.flush(Duration::from_secs(10)).await, "{:?}", dispatcher.stats());
    let (_, stats) = &dispatcher.stats()[0];
    assert_eq!((stats.delivered, stats.retries, stats.failed), (0, 1, 1), "both attempts failed, then given up");
    assert!(recv.connections.load(Ordering::SeqCst) >= 2, "each attempt reached the TLS handshake");
    assert!(recv.ids.lock().unwrap().is_empty(), "no request may reach an unverified receiver");

    // The sink's error says why; without webhook_ca_file the system's roots do not know the
    // test CA either.
    for ca in [Some(pki.ca_file()), None] {
        let sink = WebhookSink::new(&url, Duration::from_secs(5), ca.as_deref()).unwrap();
        let err = sink.deliver(&event()).await.unwrap_err().to_string();
        assert!(err.contains("certificate") && err.contains(&url), "{err}");
    }
    assert!(recv.ids.lock().unwrap().is_empty());
}
