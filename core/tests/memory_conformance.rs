//! The conformance suite against the in-memory store.

use async_trait::async_trait;
use pgdaemon_core::conformance::Harness;
use pgdaemon_core::MemoryStore;
use std::sync::Arc;

struct Memory(Arc<MemoryStore>);

#[async_trait]
impl Harness for Memory {
    type S = Arc<MemoryStore>;

    async fn start(_own_engine: bool) -> Self {
        Memory(Arc::new(MemoryStore::new()))
    }

    async fn client(&self) -> Self::S {
        self.0.clone()
    }

    async fn stop_engine(&self) {
        self.0.set_available(false);
    }

    async fn restart_engine(&self) {
        self.0.set_available(true);
    }

    async fn corrupt(&self, cluster: &str, item: &str) {
        self.0.put_raw(cluster, item, "{\"not\": \"a record\"");
    }

    async fn put_raw(&self, cluster: &str, item: &str, record: serde_json::Value) {
        self.0.put_raw(cluster, item, &record.to_string());
    }

    /// Nothing expires in memory: a record stays until it is taken over or released.
    const LEASE_EXPIRES_IN_ENGINE: bool = false;
}

mod memory {
    pgdaemon_core::conformance_suite!(super::Memory);
}
