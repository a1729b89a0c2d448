//! DynamoDB backend: one table, partition key `cluster` (S), sort key `item` (S); each record is
//! one item of native attributes ([`attrs`]). Conditional writes are condition expressions, so
//! the check and the write are one atomic step in DynamoDB:
//! - leases: acquire on `attribute_not_exists` / released / observed `rvn`, always with
//!   `#term < :term` (terms never repeat); renew and release on `rvn` + `owner` + not released;
//! - the cluster record: `attribute_not_exists` on creation, `version = :expected` afterwards;
//! - history: `attribute_not_exists` (one record per term).
//!
//! Reads are strongly consistent (`ConsistentRead`). A failed condition returns the item as it
//! was (`ReturnValuesOnConditionCheckFailure=ALL_OLD`): the conflict is explained from it, an
//! undecodable item is reported as malformed, and a lease write whose SDK retry finds its own
//! earlier attempt already applied (the same fresh `rvn`) is recognised as success.

pub mod attrs;
mod table;

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_dynamodb::config::retry::RetryConfig;
use aws_sdk_dynamodb::config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_dynamodb::Client;
use pgdaemon_core::codec::{self, check_acquire, check_cluster};
use pgdaemon_core::events::Event;
use pgdaemon_core::{
    keys, BackupConfig, ClusterParameters, ClusterRecord, ClusterView, HistoryEntry, LeaderLease, LeaseClaim, LeaseName,
    MemberState, MemberStatus, Registration, Store, StoreError,
};

use attrs::{from_item, item_name, key, to_item, Item, PK, SK};
pub use table::{create_table, TableOutcome, FLEET_ATTRIBUTE, FLEET_INDEX, FLEET_NAME, TTL_ATTRIBUTE};

/// Bound on one whole store call, retries included. A lease holder renews once per agent loop
/// (every probe interval, 1 s by default); it must learn of an outage well within its lease,
/// never hang.
pub const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one attempt: a healthy DynamoDB answers in milliseconds.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Attempts per call (the SDK retries throttling, 5xx and transport errors only).
pub const MAX_ATTEMPTS: u32 = 3;
/// Pages of one partition query before giving up (1 MiB each: far beyond any cluster).
const MAX_PAGES: usize = 100;

/// Part of every condition that replaces a record this build decided on: the stored record does
/// not declare a minimum reader newer than this build (`#mrv`, `:format`). A write over one it
/// cannot read fails its condition and reports the stored item as unreadable, like a read would.
const READABLE: &str = "(attribute_not_exists(#mrv) OR #mrv <= :format)";

/// The attribute holding a logged event's JSON. An event has a `cluster` field, which is the
/// table's partition key name, so it is stored whole as one string rather than field by field.
pub const EVENT_ATTR: &str = "event";

/// The DynamoDB item of a logged event: its JSON, plus `expire_at` as a number for TTL. It lives
/// in the cluster's partition (the IAM `LeadingKeys` condition covers it) after every other item.
fn event_item(cluster: &str, item: &str, event: &Event) -> Result<Item, StoreError> {
    let mut out = key(cluster, item);
    out.insert(EVENT_ATTR.into(), AttributeValue::S(codec::encode(item, event)?));
    if let Some(t) = event.expire_at {
        out.insert("expire_at".into(), AttributeValue::N(t.to_string()));
    }
    Ok(out)
}

/// Timeouts applied to every DynamoDB client built here.
pub fn timeout_config() -> TimeoutConfig {
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .operation_attempt_timeout(ATTEMPT_TIMEOUT)
        .operation_timeout(OPERATION_TIMEOUT)
        .build()
}

/// Bounded retries with short backoff, so retries fit inside [`OPERATION_TIMEOUT`].
pub fn retry_config() -> RetryConfig {
    RetryConfig::standard()
        .with_max_attempts(MAX_ATTEMPTS)
        .with_initial_backoff(Duration::from_millis(100))
        .with_max_backoff(Duration::from_secs(1))
}

/// A client from the SDK's default chains (credentials, region), with our bounds. `region` and
/// `endpoint_url` override the chain; without `endpoint_url` the SDK honours `AWS_ENDPOINT_URL`.
pub async fn client_from_env(region: Option<&str>, endpoint_url: Option<&str>) -> Client {
    let mut loader =
        aws_config::defaults(BehaviorVersion::latest()).timeout_config(timeout_config()).retry_config(retry_config());
    if let Some(region) = region {
        loader = loader.region(Region::new(region.to_string()));
    }
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    Client::new(&loader.load().await)
}

/// A client of an AWS API emulator (moto server, LocalStack) with static credentials, built
/// without touching the process environment.
pub fn emulator_client(endpoint_url: &str, region: &str, access_key_id: &str, secret_access_key: &str) -> Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_string()))
        .endpoint_url(endpoint_url)
        .credentials_provider(Credentials::new(access_key_id, secret_access_key, None, None, "pgdaemon-static"))
        .timeout_config(timeout_config())
        .retry_config(retry_config())
        .build();
    Client::from_conf(config)
}

/// The DynamoDB [`Store`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct DynamoDbStore {
    client: Client,
    table: String,
}

impl DynamoDbStore {
    pub fn new(client: Client, table: impl Into<String>) -> Self {
        DynamoDbStore { client, table: table.into() }
    }

    /// A store on `table` with a client from [`client_from_env`].
    pub async fn connect(table: &str, region: Option<&str>, endpoint_url: Option<&str>) -> Self {
        Self::new(client_from_env(region, endpoint_url).await, table)
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    async fn get(&self, cluster: &str, item: &str) -> Result<Option<Item>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(cluster, item)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| sdk_error("get", item, e))?;
        Ok(out.item)
    }

    /// Writes `record` as item `item` unless one exists: `true` written, `false` already there
    /// (append-only items: history, the event log).
    async fn put_if_absent(&self, item: &str, record: Item) -> Result<bool, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(record))
            .condition_expression("attribute_not_exists(#item)")
            .expression_attribute_names("#item", SK)
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if failed_put_condition(&e).is_some() => Ok(false),
            Err(e) => Err(sdk_error("append", item, e)),
        }
    }

    /// Every item of `cluster` whose sort key starts with `begins_with` (all with `None`), in
    /// sort-key order, strongly consistent, following pagination.
    async fn query(&self, cluster: &str, begins_with: Option<&str>) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        for _ in 0..MAX_PAGES {
            let mut req = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                .expression_attribute_names("#c", PK)
                .expression_attribute_values(":c", AttributeValue::S(cluster.into()))
                .set_exclusive_start_key(start.take());
            req = match begins_with {
                Some(prefix) => req
                    .key_condition_expression("#c = :c AND begins_with(#i, :p)")
                    .expression_attribute_names("#i", SK)
                    .expression_attribute_values(":p", AttributeValue::S(prefix.into())),
                // Everything but the event log (the partition's tail, which only grows).
                None => req
                    .key_condition_expression("#c = :c AND #i < :end")
                    .expression_attribute_names("#i", SK)
                    .expression_attribute_values(":end", AttributeValue::S(keys::VIEW_END.into())),
            };
            let out = req.send().await.map_err(|e| sdk_error("query", cluster, e))?;
            items.extend(out.items.unwrap_or_default());
            match out.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(items),
            }
        }
        Err(StoreError::Unavailable(format!("dynamodb query of {cluster}: more than {MAX_PAGES} pages")))
    }

    /// Conditional update of a held lease (renew or release).
    async fn update_held(&self, cluster: &str, item: &str, held: &LeaderLease, release: bool) -> Result<LeaderLease, StoreError> {
        let rvn = codec::new_rvn();
        let update = if release { "SET #rvn = :new, #released = :true" } else { "SET #rvn = :new" };
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(cluster, item)))
            .update_expression(update)
            .condition_expression("#rvn = :rvn AND #owner = :owner AND #released = :false")
            .expression_attribute_names("#rvn", "rvn")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#released", "released")
            .expression_attribute_values(":new", AttributeValue::S(rvn.clone()))
            .expression_attribute_values(":rvn", AttributeValue::S(held.rvn.clone()))
            .expression_attribute_values(":owner", AttributeValue::S(held.owner.clone()))
            .expression_attribute_values(":false", AttributeValue::Bool(false))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        if release {
            req = req.expression_attribute_values(":true", AttributeValue::Bool(true));
        }
        match req.send().await {
            Ok(out) => from_item(item, &out.attributes.unwrap_or_default()),
            Err(e) => match failed_update_condition(&e) {
                Some(old) => {
                    let current: Option<LeaderLease> = old.map(|o| from_item(item, &o)).transpose()?;
                    match current {
                        // An SDK retry found its own first attempt applied.
                        Some(c) if c.rvn == rvn => Ok(c),
                        current => Err(StoreError::conflict(
                            item,
                            codec::check_held(current.as_ref(), held).err().unwrap_or_else(|| "changed concurrently".into()),
                        )),
                    }
                }
                None => Err(sdk_error(if release { "release" } else { "renew" }, item, e)),
            },
        }
    }
}

/// `Some(item as it was)` when `err` is a failed condition of a PutItem.
fn failed_put_condition<R>(err: &SdkError<PutItemError, R>) -> Option<Option<Item>> {
    match err.as_service_error() {
        Some(PutItemError::ConditionalCheckFailedException(e)) => Some(e.item().cloned()),
        _ => None,
    }
}

fn failed_update_condition<R>(err: &SdkError<UpdateItemError, R>) -> Option<Option<Item>> {
    match err.as_service_error() {
        Some(UpdateItemError::ConditionalCheckFailedException(e)) => Some(e.item().cloned()),
        _ => None,
    }
}

/// Maps an SDK failure: a failed condition is a `Conflict` naming the item; throttling,
/// timeouts, transport failures, 5xx (and anything else the engine did not answer) are
/// `Unavailable`; a request DynamoDB refused as invalid is `Invalid`.
fn sdk_error<E, R>(op: &str, item: &str, err: SdkError<E, R>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    if let SdkError::ServiceError(ctx) = &err {
        let (code, message) = (ctx.err().code().unwrap_or("unknown"), ctx.err().message().unwrap_or(""));
        return match code {
            "ConditionalCheckFailedException" => StoreError::conflict(item, "condition failed"),
            "ValidationException" => StoreError::Invalid(format!("dynamodb {op} {item}: {message}")),
            "ResourceNotFoundException" => {
                StoreError::Unavailable(format!("dynamodb {op} {item}: {message} (create the table with `pgdctl create-table`)"))
            }
            _ => StoreError::Unavailable(format!("dynamodb {op} {item}: {code}: {message}")),
        };
    }
    StoreError::Unavailable(format!("dynamodb {op} {item}: {}", DisplayErrorContext(&err)))
}

impl DynamoDbStore {
    /// Compare-and-set of a record carrying its own version (the cluster record, the
    /// parameters): `stored` replaces the item only if its version is `expected_version` (`None`:
    /// only if absent), checked by DynamoDB's condition expression.
    async fn write_versioned<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        cluster: &str,
        item: &str,
        expected_version: Option<u64>,
        stored: T,
        version_of: impl Fn(&T) -> u64,
    ) -> Result<T, StoreError> {
        check_cluster(cluster)?;
        let req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(cluster, item, &stored)?))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let req = match expected_version {
            None => req.condition_expression("attribute_not_exists(#item)").expression_attribute_names("#item", SK),
            Some(v) => req
                .condition_expression(format!("#version = :v AND {READABLE}"))
                .expression_attribute_names("#mrv", codec::MIN_READER_FIELD)
                .expression_attribute_values(":format", AttributeValue::N(codec::RECORD_FORMAT.to_string()))
                .expression_attribute_names("#version", "version")
                .expression_attribute_values(":v", AttributeValue::N(v.to_string())),
        };
        match req.send().await {
            Ok(_) => Ok(stored),
            Err(e) => match failed_put_condition(&e) {
                Some(old) => {
                    // Unlike a lease's fresh rvn, equal content would not prove the stored
                    // record is this call's own (a retried) write, so a failed condition is
                    // always a conflict here; the caller re-reads and decides again.
                    let current: Option<T> = old.map(|o| from_item(item, &o)).transpose()?;
                    let stored_version = current.as_ref().map(version_of);
                    Err(StoreError::conflict(item, format!("expected version {expected_version:?}, stored {stored_version:?}")))
                }
                None => Err(sdk_error("write", item, e)),
            },
        }
    }
}

#[async_trait]
impl Store for DynamoDbStore {
    fn backend(&self) -> &'static str {
        "dynamodb"
    }

    async fn read_view(&self, cluster: &str) -> Result<ClusterView, StoreError> {
        check_cluster(cluster)?;
        // One query of the partition. Each page is strongly consistent; a cluster's items fit in
        // one page (1 MiB) by a wide margin, which makes the read one snapshot in practice.
        let mut view = ClusterView::default();
        for item in self.query(cluster, None).await? {
            let Some(name) = item_name(&item) else { continue };
            match name {
                keys::CLUSTER => view.cluster = Some(from_item(name, &item)?),
                keys::LEADER => view.leader = Some(from_item(name, &item)?),
                keys::COORDINATOR_LOCK => view.coordinator = Some(from_item(name, &item)?),
                // An unreadable member is skipped and reported, never failing the view (S6).
                n if n.starts_with(keys::MEMBER_PREFIX) => {
                    match from_item::<MemberStatus>(n, &item).and_then(|m| codec::check_member_key(n, &m).map(|()| m)) {
                        Ok(member) => {
                            view.members.insert(member.name.clone(), member);
                        }
                        Err(e) => codec::skip_unreadable(&mut view.unreadable, cluster, e),
                    }
                }
                // History is not part of the view; unknown items are left for newer versions.
                n => codec::read_optional_item(&mut view, cluster, n, || from_item(n, &item)),
            }
        }
        Ok(view)
    }

    async fn read_lease(&self, cluster: &str, name: LeaseName) -> Result<Option<LeaderLease>, StoreError> {
        check_cluster(cluster)?;
        let item = name.item_key();
        self.get(cluster, item).await?.map(|i| from_item(item, &i)).transpose()
    }

    async fn acquire_lease(
        &self,
        cluster: &str,
        name: LeaseName,
        claim: LeaseClaim<'_>,
        owner: &str,
        term: u64,
        lease_ms: u64,
    ) -> Result<LeaderLease, StoreError> {
        codec::validate_acquire(cluster, owner, term, lease_ms)?;
        let item = name.item_key();
        let lease = LeaderLease { owner: owner.into(), term, rvn: codec::new_rvn(), lease_ms, released: false };
        let req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(cluster, item, &lease)?))
            .expression_attribute_names("#term", "term")
            .expression_attribute_values(":term", AttributeValue::N(term.to_string()))
            .expression_attribute_names("#mrv", codec::MIN_READER_FIELD)
            .expression_attribute_values(":format", AttributeValue::N(codec::RECORD_FORMAT.to_string()))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let req = match claim {
            LeaseClaim::Free => req
                .condition_expression(format!(
                    "attribute_not_exists(#item) OR ((#released = :true OR #owner = :empty) AND #term < :term AND {READABLE})"
                ))
                .expression_attribute_names("#item", SK)
                .expression_attribute_names("#released", "released")
                .expression_attribute_names("#owner", "owner")
                .expression_attribute_values(":true", AttributeValue::Bool(true))
                .expression_attribute_values(":empty", AttributeValue::S(String::new())),
            LeaseClaim::Takeover { observed_rvn } => req
                .condition_expression(format!("#rvn = :observed AND #term < :term AND {READABLE}"))
                .expression_attribute_names("#rvn", "rvn")
                .expression_attribute_values(":observed", AttributeValue::S(observed_rvn.into())),
        };
        match req.send().await {
            Ok(_) => Ok(lease),
            Err(e) => match failed_put_condition(&e) {
                Some(old) => {
                    let current: Option<LeaderLease> = old.map(|o| from_item(item, &o)).transpose()?;
                    if current.as_ref().is_some_and(|c| c.rvn == lease.rvn) {
                        return Ok(lease); // an SDK retry found its own first attempt applied
                    }
                    let detail = check_acquire(current.as_ref(), claim, term).err();
                    Err(StoreError::conflict(item, detail.unwrap_or_else(|| "changed concurrently".into())))
                }
                None => Err(sdk_error("acquire", item, e)),
            },
        }
    }

    async fn renew_lease(&self, cluster: &str, name: LeaseName, held: &LeaderLease) -> Result<LeaderLease, StoreError> {
        check_cluster(cluster)?;
        self.update_held(cluster, name.item_key(), held, false).await
    }

    async fn release_lease(&self, cluster: &str, name: LeaseName, held: &LeaderLease) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        self.update_held(cluster, name.item_key(), held, true).await.map(drop)
    }

    async fn read_cluster(&self, cluster: &str) -> Result<Option<ClusterRecord>, StoreError> {
        check_cluster(cluster)?;
        self.get(cluster, keys::CLUSTER).await?.map(|i| from_item(keys::CLUSTER, &i)).transpose()
    }

    async fn write_cluster(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        record: &ClusterRecord,
    ) -> Result<ClusterRecord, StoreError> {
        let stored = ClusterRecord { version: expected_version.unwrap_or(0) + 1, ..record.clone() };
        self.write_versioned(cluster, keys::CLUSTER, expected_version, stored, |c: &ClusterRecord| c.version).await
    }

    async fn write_parameters(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        parameters: &ClusterParameters,
    ) -> Result<ClusterParameters, StoreError> {
        let stored = ClusterParameters { version: expected_version.unwrap_or(0) + 1, ..parameters.clone() };
        self.write_versioned(cluster, keys::PARAMETERS, expected_version, stored, |p: &ClusterParameters| p.version).await
    }

    async fn write_backup_config(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        config: &BackupConfig,
    ) -> Result<BackupConfig, StoreError> {
        let stored = BackupConfig { version: expected_version.unwrap_or(0) + 1, ..config.clone() };
        self.write_versioned(cluster, keys::BACKUP, expected_version, stored, |b: &BackupConfig| b.version).await
    }

    async fn put_member_state(&self, cluster: &str, state: &MemberState) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        keys::validate_member_name(&state.name).map_err(StoreError::Invalid)?;
        let item = keys::state(&state.name);
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(cluster, &item, state)?))
            .send()
            .await
            .map_err(|e| sdk_error("put", &item, e))?;
        Ok(())
    }

    async fn put_member(&self, cluster: &str, member: &MemberStatus) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        keys::validate_member_name(&member.name).map_err(StoreError::Invalid)?;
        let item = keys::member(&member.name);
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(to_item(cluster, &item, member)?))
            .send()
            .await
            .map_err(|e| sdk_error("put", &item, e))?;
        Ok(())
    }

    async fn remove_member(&self, cluster: &str, name: &str) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        keys::validate_member_name(name).map_err(StoreError::Invalid)?;
        for item in [keys::member(name), keys::state(name)] {
            self.client
                .delete_item()
                .table_name(&self.table)
                .set_key(Some(key(cluster, &item)))
                .send()
                .await
                .map_err(|e| sdk_error("delete", &item, e))?;
        }
        Ok(())
    }

    async fn append_history(&self, cluster: &str, entry: &HistoryEntry) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        let item = keys::history(entry.term);
        if self.put_if_absent(&item, to_item(cluster, &item, entry)?).await? {
            Ok(())
        } else {
            Err(StoreError::conflict(item, "a history record for this term exists"))
        }
    }

    async fn read_history(&self, cluster: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        check_cluster(cluster)?;
        // Sort keys carry the term zero-padded, so the query returns them in term order.
        // An unreadable one is skipped and logged.
        Ok(self
            .query(cluster, Some(keys::HISTORY_PREFIX))
            .await?
            .iter()
            .filter_map(|item| {
                from_item(item_name(item).unwrap_or(keys::HISTORY_PREFIX), item)
                    .map_err(|e| codec::warn_unreadable(cluster, &e))
                    .ok()
            })
            .collect())
    }

    async fn append_event(&self, cluster: &str, event: &Event) -> Result<(), StoreError> {
        let item = codec::event_item(cluster, event)?;
        // `false`: already logged (a retried append), nothing to do.
        self.put_if_absent(&item, event_item(cluster, &item, event)?).await.map(|_| ())
    }

    async fn read_events(&self, cluster: &str, since_ms: u64) -> Result<Vec<Event>, StoreError> {
        check_cluster(cluster)?;
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .consistent_read(true)
                // Every event from `since_ms` on (`BETWEEN` includes the end; no key equals it).
                .key_condition_expression("#c = :c AND #i BETWEEN :from AND :to")
                .expression_attribute_names("#c", PK)
                .expression_attribute_names("#i", SK)
                .expression_attribute_values(":c", AttributeValue::S(cluster.into()))
                .expression_attribute_values(":from", AttributeValue::S(keys::event(since_ms, "")))
                .expression_attribute_values(":to", AttributeValue::S(keys::EVENT_END.into()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_error("query", cluster, e))?;
            for item in page.items.unwrap_or_default() {
                let name = item_name(&item).unwrap_or(keys::EVENT_PREFIX);
                let text = item
                    .get(EVENT_ATTR)
                    .and_then(|a| a.as_s().ok())
                    .ok_or_else(|| StoreError::malformed(name, "no event attribute"));
                // An unreadable event is skipped and logged.
                match text.and_then(|t| codec::decode(name, t.as_bytes())) {
                    Ok(event) => out.push(event),
                    Err(e) => codec::warn_unreadable(cluster, &e),
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
        Err(StoreError::Unavailable(format!("dynamodb query of {cluster} events: more than {MAX_PAGES} pages")))
    }

    async fn register_cluster(&self, cluster: &str, registered_ms: u64) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        let mut item = to_item(cluster, keys::REGISTRATION, &Registration { registered_ms })?;
        // The index key: only registrations carry it, so the `fleet` index holds nothing else.
        item.insert(FLEET_ATTRIBUTE.into(), AttributeValue::S(FLEET_NAME.into()));
        // `false`: registered before; the first time is kept.
        self.put_if_absent(keys::REGISTRATION, item).await.map(|_| ())
    }

    async fn unregister_cluster(&self, cluster: &str) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        self.client
            .delete_item()
            .table_name(&self.table)
            .set_key(Some(key(cluster, keys::REGISTRATION)))
            .send()
            .await
            .map_err(|e| sdk_error("delete", keys::REGISTRATION, e))?;
        Ok(())
    }

    async fn is_registered(&self, cluster: &str) -> Result<bool, StoreError> {
        check_cluster(cluster)?;
        Ok(self.get(cluster, keys::REGISTRATION).await?.is_some())
    }

    async fn list_clusters(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        let mut start: Option<Item> = None;
        // A page of keys holds thousands of names; the bound is far beyond any fleet.
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .query()
                .table_name(&self.table)
                .index_name(FLEET_INDEX)
                .key_condition_expression("#f = :f")
                .expression_attribute_names("#f", FLEET_ATTRIBUTE)
                .expression_attribute_values(":f", AttributeValue::S(FLEET_NAME.into()))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| sdk_error("query", FLEET_INDEX, e))?;
            for item in page.items.unwrap_or_default() {
                match item.get(PK).and_then(|a| a.as_s().ok()) {
                    Some(name) if keys::validate_cluster_name(name).is_ok() => names.push(name.clone()),
                    other => tracing::warn!(?other, "skipping a fleet index entry that names no cluster"),
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                // The index sorts by cluster within the one `fleet` partition.
                _ => return Ok(names),
            }
        }
        Err(StoreError::Unavailable(format!("dynamodb query of the fleet index: more than {MAX_PAGES} pages")))
    }
}
