//! The fleet benchmark's small run in `make test` (issue 20; `make bench-fleet` runs 1,000
//! clusters): 20 registered three-member clusters, two of which lose their primary, evaluated by
//! the coordinator Lambda's own handler over etcd and over DynamoDB (moto server). The agents of
//! the two failing clusters are the real agent runtime over a stand-in Postgres
//! (drills/src/fleet/standin.rs, listed in drills/README.md). No timing is asserted: the figures
//! are the benchmark's to report.

use pgdaemon_drills::fleet::{self, FleetSpec};

async fn small_fleet(backend: &str) {
    let (_engine, store) = fleet::start_store(backend).await.unwrap_or_else(|e| panic!("{backend}: {e:#}"));
    let config = fleet::quick_config();
    let spec = FleetSpec {
        clusters: 20,
        dead: 2,
        lambda_env: vec![("PGDAEMON_RUN_BUDGET_MS".into(), fleet::run_budget(&config).as_millis().to_string())],
        config,
    };
    let report = fleet::run(store.clone(), &spec).await.unwrap_or_else(|e| panic!("{backend}: {e:#}"));
    println!("{}", fleet::summary(&report));
    for run in [&report.steady, &report.failover] {
        assert_eq!(run.clusters_evaluated, 20, "{backend}: every registered cluster is evaluated: {run:?}");
        assert!(run.store.reads > 0 && run.store.writes > 0, "{run:?}");
    }
    let dead = fleet::dead_clusters(&spec);
    assert_eq!(report.failover_seconds.keys().cloned().collect::<Vec<_>>(), dead, "{backend}: each dead cluster failed over");
    assert_eq!(store.list_clusters().await.unwrap().len(), 20);
    for i in 0..spec.clusters {
        let c = fleet::cluster_name(i);
        if dead.contains(&c) {
            continue;
        }
        let record = store.read_cluster(&c).await.unwrap().unwrap();
        assert_eq!((record.term, record.primary.as_deref()), (1, Some("m1")), "{backend}: healthy {c} untouched");
        assert!(store.read_history(&c).await.unwrap().is_empty(), "{backend}: {c}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fleet_on_etcd() {
    small_fleet("etcd").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_fleet_on_dynamodb() {
    small_fleet("dynamodb").await;
}
