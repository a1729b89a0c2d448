//! pgdaemon-dcs: the networked [`Store`] backends (DynamoDB, etcd), each behind a cargo feature,
//! and [`connect`], which builds the backend a [`StoreConfig`] names.
//!
//! Both backends keep the same items as the in-memory store (docs/design.md section 2, names from
//! [`pgdaemon_core::keys`]) and apply the same lease rules ([`pgdaemon_core::codec`]); they differ
//! only in how a check-and-write is made atomic in the engine. Every call is bounded in time, so a
//! stopped engine gives [`StoreError::Unavailable`] within seconds, never a hang.

use std::sync::Arc;

use pgdaemon_core::{MemoryStore, Store, StoreConfig, StoreError};

/// An operator's client of the agents' API (pgdctl's maintenance verbs).
pub mod agent_client;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;
#[cfg(feature = "etcd")]
pub mod etcd;
/// HTTP-demote and local-command fencers (no cloud SDK needed).
pub mod fence;
/// One fencer builder (names, order, checks) for the agent-hosted coordinator and the Lambda.
pub mod fence_config;
/// The coordinator's agent probe (is the primary's agent process gone?).
pub mod probe;
/// Values that never print, and the rule for secret files.
pub mod secret;
/// rustls client and server configurations from PEM files.
pub mod tls;
/// The coordinator's HTTP waker (`POST /wake` on an agent).
pub mod wake;

/// `e` and its sources, each once: the top-level message of reqwest or tokio-postgres does not
/// say why (refused, timed out, `invalid peer certificate: UnknownIssuer`); the sources do.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text = format!("{text}: {s_text}");
        }
        source = s.source();
    }
    text
}

#[cfg(feature = "dynamodb")]
pub use dynamodb::{create_table, DynamoDbStore, TableOutcome};
#[cfg(feature = "etcd")]
pub use etcd::{EtcdSecurity, EtcdStore};

/// Builds the store `config` names. Validates the config first (bad input changes nothing).
/// Networked backends connect lazily: an engine that is down now makes the first calls fail
/// with `Unavailable`, not this function. etcd's certificate and password files are read here:
/// an unreadable or unusable one, or credentials etcd refuses, are `Invalid` naming it.
pub async fn connect(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    config.validate().map_err(|e| StoreError::Invalid(e.to_string()))?;
    match config {
        StoreConfig::Memory {} => Ok(Arc::new(MemoryStore::new())),
        #[cfg(feature = "etcd")]
        StoreConfig::Etcd { endpoints, prefix, ca_file, cert_file, key_file, username, password_file } => {
            let security = etcd::EtcdSecurity::from_config(
                ca_file.as_deref(),
                cert_file.as_deref(),
                key_file.as_deref(),
                username.as_deref(),
                password_file.as_deref(),
            )?;
            Ok(Arc::new(EtcdStore::connect_with(endpoints, prefix, security).await?))
        }
        #[cfg(not(feature = "etcd"))]
        StoreConfig::Etcd { .. } => Err(StoreError::Invalid("this build has no etcd backend (cargo feature `etcd`)".into())),
        #[cfg(feature = "dynamodb")]
        StoreConfig::Dynamodb { table, region, endpoint_url } => {
            Ok(Arc::new(DynamoDbStore::connect(table, region.as_deref(), endpoint_url.as_deref()).await))
        }
        #[cfg(not(feature = "dynamodb"))]
        StoreConfig::Dynamodb { .. } => {
            Err(StoreError::Invalid("this build has no DynamoDB backend (cargo feature `dynamodb`)".into()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_config_builds_a_memory_store() {
        let store = connect(&StoreConfig::Memory {}).await.unwrap();
        assert_eq!(store.backend(), "memory");
    }

    #[tokio::test]
    async fn invalid_config_is_refused() {
        let err = connect(&StoreConfig::etcd(vec![], "/pgdaemon")).await.err().unwrap();
        assert!(matches!(err, StoreError::Invalid(ref m) if m.contains("endpoints")), "{err}");
    }
}
