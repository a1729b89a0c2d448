//! Creating the pgdaemon table (for `pgdctl create-table`, demos and tests; production tables
//! come from infra/ with the same schema).

use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, BillingMode, CreateGlobalSecondaryIndexAction, GlobalSecondaryIndex, GlobalSecondaryIndexUpdate,
    IndexStatus, KeySchemaElement, KeyType, Projection, ProjectionType, ScalarAttributeType, TableStatus,
    TimeToLiveSpecification, TimeToLiveStatus,
};
use aws_sdk_dynamodb::Client;
use pgdaemon_core::StoreError;

use super::attrs::{PK, SK};
use super::sdk_error;

/// The TTL attribute: DynamoDB deletes member records whose `expire_at` (Unix seconds) has
/// passed, "typically within two days" - garbage collection of departed members only, never
/// evidence of liveness.
pub const TTL_ATTRIBUTE: &str = "expire_at";

/// The global secondary index listing the fleet registry: partition key [`FLEET_ATTRIBUTE`],
/// sort key `cluster`, keys only. Only registration items carry the attribute, so the index
/// holds one small entry per registered cluster.
pub const FLEET_INDEX: &str = "fleet";
pub const FLEET_ATTRIBUTE: &str = "fleet";
/// The value of [`FLEET_ATTRIBUTE`] on every registration.
pub const FLEET_NAME: &str = "pgdaemon";

/// How long to wait for a new table to become ACTIVE (real DynamoDB: seconds).
const ACTIVE_WAIT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableOutcome {
    Created,
    /// The table was there already (its TTL setting is still ensured).
    AlreadyExisted,
}

/// Creates table `name` (on-demand billing, keys `cluster`/`item`, TTL on `expire_at`, the
/// [`FLEET_INDEX`]) and waits until it is ACTIVE. Idempotent: an existing table is
/// [`TableOutcome::AlreadyExisted`], and gets the index and TTL it lacks (tables created by
/// releases before the fleet registry).
pub async fn create_table(client: &Client, name: &str) -> Result<TableOutcome, StoreError> {
    let invalid = |e: aws_sdk_dynamodb::error::BuildError| StoreError::Invalid(format!("create-table request: {e}"));
    let key = |n: &str, t: KeyType| KeySchemaElement::builder().attribute_name(n).key_type(t).build();
    let result = client
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attribute(PK).map_err(invalid)?)
        .attribute_definitions(attribute(SK).map_err(invalid)?)
        .key_schema(key(PK, KeyType::Hash).map_err(invalid)?)
        .key_schema(key(SK, KeyType::Range).map_err(invalid)?)
        .attribute_definitions(attribute(FLEET_ATTRIBUTE).map_err(invalid)?)
        .global_secondary_indexes(fleet_index().map_err(invalid)?)
        .send()
        .await;
    let outcome = match result {
        Ok(_) => TableOutcome::Created,
        Err(e) if e.as_service_error().is_some_and(|s| s.is_resource_in_use_exception()) => TableOutcome::AlreadyExisted,
        Err(e) => return Err(sdk_error("create-table", name, e)),
    };
    wait_active(client, name).await?;
    if outcome == TableOutcome::AlreadyExisted {
        ensure_fleet_index(client, name).await?;
    }
    ensure_ttl(client, name).await?;
    Ok(outcome)
}

/// A string key attribute.
fn attribute(name: &str) -> Result<AttributeDefinition, aws_sdk_dynamodb::error::BuildError> {
    AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build()
}

fn fleet_index() -> Result<GlobalSecondaryIndex, aws_sdk_dynamodb::error::BuildError> {
    GlobalSecondaryIndex::builder()
        .index_name(FLEET_INDEX)
        .key_schema(KeySchemaElement::builder().attribute_name(FLEET_ATTRIBUTE).key_type(KeyType::Hash).build()?)
        .key_schema(KeySchemaElement::builder().attribute_name(PK).key_type(KeyType::Range).build()?)
        .projection(Projection::builder().projection_type(ProjectionType::KeysOnly).build())
        .build()
}

/// Adds the fleet index to a table that lacks it and waits until the index is ACTIVE.
async fn ensure_fleet_index(client: &Client, name: &str) -> Result<(), StoreError> {
    let invalid = |e: aws_sdk_dynamodb::error::BuildError| StoreError::Invalid(format!("update-table request: {e}"));
    let index_status = |out: &aws_sdk_dynamodb::operation::describe_table::DescribeTableOutput| {
        out.table()
            .map(|t| t.global_secondary_indexes())
            .unwrap_or_default()
            .iter()
            .find(|i| i.index_name() == Some(FLEET_INDEX))
            .map(|i| i.index_status().cloned())
    };
    let describe =
        || async { client.describe_table().table_name(name).send().await.map_err(|e| sdk_error("describe-table", name, e)) };
    if index_status(&describe().await?).is_none() {
        let index = fleet_index().map_err(invalid)?;
        let create = CreateGlobalSecondaryIndexAction::builder()
            .index_name(FLEET_INDEX)
            .set_key_schema(Some(index.key_schema().to_vec()))
            .set_projection(index.projection().cloned())
            .build()
            .map_err(invalid)?;
        client
            .update_table()
            .table_name(name)
            .attribute_definitions(attribute(FLEET_ATTRIBUTE).map_err(invalid)?)
            .global_secondary_index_updates(GlobalSecondaryIndexUpdate::builder().create(create).build())
            .send()
            .await
            .map_err(|e| sdk_error("update-table", name, e))?;
        tracing::info!(table = name, index = FLEET_INDEX, "added the fleet index");
    }
    let deadline = tokio::time::Instant::now() + ACTIVE_WAIT;
    loop {
        match index_status(&describe().await?) {
            // moto reports no status for an index it built at once.
            Some(None | Some(IndexStatus::Active)) => return Ok(()),
            _ if tokio::time::Instant::now() >= deadline => {
                return Err(StoreError::Unavailable(format!(
                    "index {FLEET_INDEX} of {name} did not become ACTIVE within {ACTIVE_WAIT:?}"
                )))
            }
            _ => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

async fn wait_active(client: &Client, name: &str) -> Result<(), StoreError> {
    let deadline = tokio::time::Instant::now() + ACTIVE_WAIT;
    loop {
        let out = client.describe_table().table_name(name).send().await.map_err(|e| sdk_error("describe-table", name, e))?;
        if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StoreError::Unavailable(format!("table {name} did not become ACTIVE within {ACTIVE_WAIT:?}")));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn ensure_ttl(client: &Client, name: &str) -> Result<(), StoreError> {
    let out = client.describe_time_to_live().table_name(name).send().await.map_err(|e| sdk_error("describe-ttl", name, e))?;
    let current = out.time_to_live_description();
    let enabled = current
        .and_then(|d| d.time_to_live_status())
        .is_some_and(|s| matches!(s, TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling))
        && current.and_then(|d| d.attribute_name()) == Some(TTL_ATTRIBUTE);
    if enabled {
        return Ok(());
    }
    let spec = TimeToLiveSpecification::builder()
        .enabled(true)
        .attribute_name(TTL_ATTRIBUTE)
        .build()
        .map_err(|e| StoreError::Invalid(format!("ttl request: {e}")))?;
    client
        .update_time_to_live()
        .table_name(name)
        .time_to_live_specification(spec)
        .send()
        .await
        .map_err(|e| sdk_error("update-ttl", name, e))?;
    Ok(())
}
