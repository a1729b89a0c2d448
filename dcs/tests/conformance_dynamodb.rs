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
        emulator_client(&self.server().endpoint(), MotoServer::REGION, MotoServer::ACCESS_KEY_ID, MotoServer::SECRET_ACCESS_KEY)
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

    async fn put_raw(&self, cluster: &str, item: &str, record: serde_json::Value) {
        let mut raw = attrs::key(cluster, item);
        if item.starts_with(pgdaemon_core::keys::EVENT_PREFIX) {
            // Logged events are kept whole as one JSON string attribute.
            raw.insert(pgdaemon_dcs::dynamodb::EVENT_ATTR.into(), AttributeValue::S(record.to_string()));
        } else {
            for (name, value) in record.as_object().expect("a record is a JSON object") {
                raw.insert(name.clone(), attrs::to_attr(value));
            }
        }
        self.sdk_client().put_item().table_name(TABLE).set_item(Some(raw)).send().await.expect("raw put");
    }

    /// A DynamoDB item never expires by itself (TTL only garbage-collects, within days): a lease
    /// record stays until it is taken over or released.
    const LEASE_EXPIRES_IN_ENGINE: bool = false;
}

mod dynamodb {
    pgdaemon_core::conformance_suite!(super::Dynamo);
}

/// DynamoDB-specific: the table's shape and how records look in it.
mod dynamodb_items {
    use aws_sdk_dynamodb::types::{AttributeValue, TimeToLiveStatus};
    use pgdaemon_core::conformance::Harness;
    use pgdaemon_core::{keys, ClusterRecord, DynamicConfig, LeaseClaim, LeaseName, MemberStatus, Store, StoreError};
    use pgdaemon_dcs::dynamodb::attrs;
    use pgdaemon_dcs::{create_table, DynamoDbStore, TableOutcome};

    use super::{Dynamo, TABLE};

    fn cluster(check: &str) -> String {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        format!("{check}-{}-{nanos}", std::process::id())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_are_native_attributes() {
        let h = Dynamo::start(false).await;
        let s = h.client().await;
        let cluster = cluster("native");
        s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "a", 3, 5000).await.unwrap();
        s.write_cluster(&cluster, None, &ClusterRecord::bootstrap("a", DynamicConfig::default())).await.unwrap();
        let mut m = MemberStatus::new("a");
        m.expire_at = Some(4_000_000_000);
        s.put_member(&cluster, &m).await.unwrap();

        let raw = |item: &'static str| {
            let client = h.sdk_client();
            let cluster = cluster.clone();
            async move {
                let out = client
                    .get_item()
                    .table_name(TABLE)
                    .set_key(Some(attrs::key(&cluster, item)))
                    .consistent_read(true)
                    .send()
                    .await
                    .unwrap();
                out.item.expect("item exists")
            }
        };
        let leader = raw(keys::LEADER).await;
        assert_eq!(leader["term"], AttributeValue::N("3".into()));
        assert_eq!(leader["owner"], AttributeValue::S("a".into()));
        assert_eq!(leader["released"], AttributeValue::Bool(false));
        let record = raw(keys::CLUSTER).await;
        assert_eq!(record["version"], AttributeValue::N("1".into()));
        assert_eq!(record["primary"], AttributeValue::S("a".into()));
        let AttributeValue::M(config) = &record["config"] else { panic!("config is a map: {:?}", record["config"]) };
        assert_eq!(config["lease_ms"], AttributeValue::N("10000".into()));
        let member = raw("member#a").await;
        assert_eq!(member["expire_at"], AttributeValue::N("4000000000".into()), "the TTL attribute is a number");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_table_is_idempotent_and_enables_ttl() {
        let h = Dynamo::start(false).await;
        let client = h.sdk_client();
        let name = cluster("table");
        assert_eq!(create_table(&client, &name).await.unwrap(), TableOutcome::Created);
        assert_eq!(create_table(&client, &name).await.unwrap(), TableOutcome::AlreadyExisted);
        let ttl = client.describe_time_to_live().table_name(&name).send().await.unwrap();
        let ttl = ttl.time_to_live_description().expect("ttl description");
        assert_eq!(ttl.attribute_name(), Some("expire_at"));
        assert_eq!(ttl.time_to_live_status(), Some(&TimeToLiveStatus::Enabled));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn missing_table_is_unavailable_and_says_how_to_fix_it() {
        let h = Dynamo::start(false).await;
        let s = DynamoDbStore::new(h.sdk_client(), "no-such-table");
        match s.read_view(&cluster("missing")).await {
            Err(StoreError::Unavailable(m)) => assert!(m.contains("create-table"), "{m}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    /// A hung endpoint (suspended moto: connections accepted, no answers) must give
    /// `Unavailable` within the operation timeout, and the same client must recover.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn frozen_engine_is_unavailable_within_seconds() {
        let h = Dynamo::start(true).await;
        let s = h.client().await;
        let cluster = cluster("frozen");
        let held = s.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "a", 1, 5000).await.unwrap();
        h.server().freeze();
        let started = std::time::Instant::now();
        let err = s.renew_lease(&cluster, LeaseName::Leader, &held).await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        let err = s.read_view(&cluster).await.unwrap_err();
        assert!(err.is_unavailable(), "{err}");
        assert!(started.elapsed() < std::time::Duration::from_secs(15), "two calls took {:?}", started.elapsed());
        h.server().thaw();
        let mut recovered = false;
        for _ in 0..40 {
            if s.read_lease(&cluster, LeaseName::Leader).await.is_ok() {
                recovered = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        assert!(recovered, "the client must recover after the engine answers again");
    }
}

/// A table created before the fleet registry (no `fleet` index) gets the index from
/// `create_table`, and registrations then list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_table_adds_the_fleet_index_to_an_older_table() {
    use aws_sdk_dynamodb::types::{AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType};
    use pgdaemon_core::Store;
    let harness = Dynamo::start(false).await;
    let client = harness.sdk_client();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let table = format!("pgdaemon-old-{nanos}");
    let attribute =
        |n: &str| AttributeDefinition::builder().attribute_name(n).attribute_type(ScalarAttributeType::S).build().unwrap();
    let key = |n: &str, t| KeySchemaElement::builder().attribute_name(n).key_type(t).build().unwrap();
    client
        .create_table()
        .table_name(&table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute(attrs::PK))
        .attribute_definitions(attribute(attrs::SK))
        .key_schema(key(attrs::PK, KeyType::Hash))
        .key_schema(key(attrs::SK, KeyType::Range))
        .send()
        .await
        .expect("an old-style table");
    let store = DynamoDbStore::new(client.clone(), &table);
    store.register_cluster("early", 1).await.unwrap();
    assert!(store.list_clusters().await.is_err(), "no index yet: listing fails rather than answering empty");
    assert_eq!(create_table(&client, &table).await.unwrap(), pgdaemon_dcs::TableOutcome::AlreadyExisted);
    store.register_cluster("late", 2).await.unwrap();
    assert_eq!(store.list_clusters().await.unwrap(), vec!["early".to_string(), "late".to_string()]);
}
