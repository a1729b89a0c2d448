//! The store conformance suite against a real etcd (started by the test; see testkit).

use async_trait::async_trait;
use pgdaemon_core::conformance::Harness;
use pgdaemon_dcs::EtcdStore;
use pgdaemon_testkit::engines::EtcdServer;

const PREFIX: &str = "/pgdaemon-conformance";

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
}

mod etcd {
    pgdaemon_core::conformance_suite!(super::Etcd);
}
