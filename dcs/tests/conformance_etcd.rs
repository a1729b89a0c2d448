//! The store conformance suite against a real etcd (started by the test; see testkit).

use async_trait::async_trait;
use pgdaemon_core::conformance::Harness;
use pgdaemon_dcs::EtcdStore;
use pgdaemon_testkit::engines::EtcdServer;

const PREFIX: &str = "/pgdaemon-conformance";

// One per test binary: the size of the inline variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Server {
    /// Shared by the ordinary checks of this test binary.
    Shared(&'static EtcdServer),
    /// Owned by one check that stops it.
    Own(EtcdServer),
}

struct Etcd(Server);

impl Etcd {
    fn server(&self) -> &EtcdServer {
        match &self.0 {
            Server::Shared(s) => s,
            Server::Own(s) => s,
        }
    }
}

#[async_trait]
impl Harness for Etcd {
    type S = EtcdStore;

    async fn start(own_engine: bool) -> Self {
        // Starting a process blocks; keep it off the runtime's worker threads.
        let server = tokio::task::spawn_blocking(move || {
            if own_engine {
                Server::Own(EtcdServer::start().unwrap_or_else(|e| panic!("cannot start etcd: {e:#}")))
            } else {
                Server::Shared(EtcdServer::shared())
            }
        })
        .await
        .expect("etcd start-up");
        Etcd(server)
    }

    async fn client(&self) -> EtcdStore {
        EtcdStore::connect(&[self.server().endpoint()], PREFIX).await.expect("etcd client")
    }

    async fn stop_engine(&self) {
        self.server().stop();
    }

    async fn restart_engine(&self) {
        self.server().restart().expect("restart etcd");
    }

    async fn corrupt(&self, cluster: &str, item: &str) {
        let mut raw = etcd_client::Client::connect([self.server().endpoint()], None).await.expect("raw etcd client");
        raw.put(format!("{PREFIX}/{cluster}/{item}"), "{\"not\": \"a record\"", None).await.expect("raw put");
    }

    async fn put_raw(&self, cluster: &str, item: &str, record: serde_json::Value) {
        let mut raw = etcd_client::Client::connect([self.server().endpoint()], None).await.expect("raw etcd client");
        raw.put(format!("{PREFIX}/{cluster}/{item}"), record.to_string(), None).await.expect("raw put");
    }

    /// `leader` and `lock#coordinator` are attached to an etcd lease with a TTL: the key of a
    /// holder that stops renewing is removed by etcd itself.
    const LEASE_EXPIRES_IN_ENGINE: bool = true;
}

mod etcd {
    pgdaemon_core::conformance_suite!(super::Etcd);
}

/// etcd-specific lease behaviour: the key of a holder that stops renewing expires with its etcd
/// lease, yet the term stays, so terms keep increasing.
mod etcd_leases {
    use std::time::{Duration, Instant};

    use pgdaemon_core::conformance::Harness;
    use pgdaemon_core::{LeaseClaim, LeaseName, Store};

    use super::Etcd;

    const LEASE_MS: u64 = 1000;

    fn cluster(check: &str) -> String {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        format!("{check}-{}-{nanos}", std::process::id())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_lease_is_free_but_keeps_its_term() {
        let h = Etcd::start(false).await;
        let s = h.client().await;
        let cluster = cluster("expiry");
        let started = Instant::now();
        let held = s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "a", 5, LEASE_MS).await.unwrap();
        let expired = loop {
            let lease = s.read_lease(&cluster, LeaseName::Leader).await.unwrap().expect("record or its term");
            if lease.is_free() {
                break lease;
            }
            assert!(started.elapsed() < Duration::from_secs(15), "an unrenewed etcd lease must expire");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        // The holder counts from before its call; the key must outlive that by the full lease.
        assert!(started.elapsed() >= Duration::from_millis(LEASE_MS), "expired after {:?}", started.elapsed());
        assert_eq!((expired.owner.as_str(), expired.term, expired.released), ("", 5, false));
        assert_eq!(s.read_view(&cluster).await.unwrap().leader, Some(expired));

        let err = s.renew_lease(&cluster, LeaseName::Leader, &held).await.unwrap_err();
        assert!(err.is_conflict(), "the old holder lost the lease: {err}");
        let err = s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "b", 5, LEASE_MS).await.unwrap_err();
        assert!(err.is_conflict(), "a repeated term is refused after expiry: {err}");
        let b = s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "b", 6, LEASE_MS).await.unwrap();
        assert_eq!(s.read_lease(&cluster, LeaseName::Leader).await.unwrap(), Some(b));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn renewals_keep_the_lease_alive_past_its_ttl() {
        let h = Etcd::start(false).await;
        let s = h.client().await;
        let cluster = cluster("keepalive");
        let mut held = s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "a", 1, LEASE_MS).await.unwrap();
        // 4 s of renewals every 400 ms: several TTLs (etcd's minimum TTL included).
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            held = s.renew_lease(&cluster, LeaseName::Leader, &held).await.unwrap();
        }
        assert_eq!(s.read_lease(&cluster, LeaseName::Leader).await.unwrap(), Some(held));
    }

    /// A hung etcd (suspended: connections open, no answers) must give `Unavailable` within
    /// seconds, not hang, and the same client must recover once it answers again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frozen_engine_is_unavailable_within_seconds() {
        let server = tokio::task::spawn_blocking(pgdaemon_testkit::engines::EtcdServer::start)
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("cannot start etcd: {e:#}"));
        let s = pgdaemon_dcs::EtcdStore::connect(&[server.endpoint()], super::PREFIX).await.unwrap();
        let cluster = cluster("frozen");
        let held = s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "a", 1, 5000).await.unwrap();
        server.freeze();
        let started = Instant::now();
        let err = s.renew_lease(&cluster, LeaseName::Leader, &held).await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        let err = s.read_view(&cluster).await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(started.elapsed() < Duration::from_secs(15), "two calls took {:?}", started.elapsed());
        server.thaw();
        let mut recovered = false;
        for _ in 0..40 {
            if s.read_lease(&cluster, LeaseName::Leader).await.is_ok() {
                recovered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(recovered, "the client must recover after the engine answers again");
    }
}
