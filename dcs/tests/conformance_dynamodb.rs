//! The store conformance suite against DynamoDB's API as moto server implements it (started by
//! the test; see testkit). Clients use static dummy credentials set on the client config.

use async_trait::async_trait;
use aws_sdk_dynamodb::types::AttributeValue;
use pgdaemon_core::conformance::Harness;
use pgdaemon_dcs::dynamodb::{attrs, emulator_client};
use pgdaemon_dcs::{create_table, DynamoDbStore};
use pgdaemon_testkit::engines::MotoServer;

const TABLE: &str = "pgdaemon-conformance";

enum Server {
    Shared(&'static MotoServer),
    Own(MotoServer),
}

struct Dynamo(Server);

impl Dynamo {
    fn server(&self) -> &MotoServer {
        match &self.0 {
            Server::Shared(s) => s,
            Server::Own(s) => s,
        }
    }

    fn sdk_client(&self) -> aws_sdk_dynamodb::Client {
        emulator_client(
            &self.server().endpoint(),
            MotoServer::REGION,
            MotoServer::ACCESS_KEY_ID,
            MotoServer::SECRET_ACCESS_KEY,
        )
    }

    async fn create_table(&self) {
        create_table(&self.sdk_client(), TABLE).await.expect("create the table");
    }
}

#[async_trait]
impl Harness for Dynamo {
    type S = DynamoDbStore;

    async fn start(own_engine: bool) -> Self {
        let server = tokio::task::spawn_blocking(move || {
            if own_engine {
                Server::Own(MotoServer::start().unwrap_or_else(|e| panic!("cannot start moto server: {e:#}")))
            } else {
                Server::Shared(MotoServer::shared())
            }
        })
        .await
        .expect("moto start-up");
        let harness = Dynamo(server);
        harness.create_table().await; // idempotent
        harness
    }

    async fn client(&self) -> DynamoDbStore {
        DynamoDbStore::new(self.sdk_client(), TABLE)
    }

    async fn stop_engine(&self) {
        self.server().stop();
    }

    async fn restart_engine(&self) {
        self.server().restart().expect("restart moto");
        // moto keeps its state in memory only: a restarted server has no table until created.
        self.create_table().await;
    }

    async fn corrupt(&self, cluster: &str, item: &str) {
        // Required attributes missing and the ones present wrongly typed.
        let mut raw = attrs::key(cluster, item);
        raw.insert("term".into(), AttributeValue::S("not a number".into()));
        raw.insert("owner".into(), AttributeValue::N("1".into()));
        self.sdk_client().put_item().table_name(TABLE).set_item(Some(raw)).send().await.expect("raw put");
    }
}

mod dynamodb {
    pgdaemon_core::conformance_suite!(super::Dynamo);
}
