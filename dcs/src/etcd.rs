//! etcd backend: items are JSON documents ([`pgdaemon_core::codec`]) under
//! `<prefix>/<cluster>/<item>`; every conditional write is one transaction conditioned on the
//! revisions read just before (read, check with the shared rules, then a txn that succeeds only
//! if nothing changed in between - never an unconditional write).
//!
//! Leases: the `leader` and `lock#coordinator` keys are attached to an etcd lease whose TTL
//! (whole seconds, rounded up) is at least the record's `lease_ms`, kept alive on every renewal.
//! A holder that stops renewing therefore disappears from the store on its own. Because a key
//! that expired carries no term any more, each lease key has a companion `term#<item>` key (no
//! etcd lease) written in the same transaction with the same record: an expired lease reads as
//! that record without an owner (free), and the next acquisition must still raise its term.
//!
//! Security (optional, [`EtcdSecurity`]): TLS verified against a CA file or the system's roots, a
//! client certificate, and an etcd user. With a user the client authenticates when it connects
//! and sends the token etcd gave it with every request. etcd's tokens expire (simple tokens after
//! `--auth-token-ttl`, 300 s, without use, and all of them when etcd restarts; JWTs after their
//! TTL): the client is built with etcd-client's automatic refresh, which re-authenticates and
//! retries once when a request is refused for an invalid token (the refused request was not
//! applied, so the retry is safe), and a call that still ends in `Unauthenticated` drops the
//! connection so the next call connects and authenticates afresh. Both happen inside the
//! call's time bound. The password lives only in a [`Secret`], which never prints.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use crate::secret::Secret;
pub use crate::tls::ClientIdentity;
use async_trait::async_trait;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, KeyValue, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
};
use pgdaemon_core::codec::{self, check_acquire, check_cluster, decode, encode};
use pgdaemon_core::events::Event;
use pgdaemon_core::{
    keys, BackupConfig, ClusterParameters, ClusterRecord, ClusterView, HistoryEntry, LeaderLease, LeaseClaim, LeaseName,
    MemberState, MemberStatus, Registration, Store, StoreError,
};

/// Per-request gRPC deadline. A few seconds: a lease holder renews once per agent loop (every
/// probe interval, 1 s by default) and must learn of an outage well within its lease.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// Bound on establishing a connection to an endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Outer bound on one store call (a call may issue several requests); also covers requests that
/// wait in the client's balancer for an endpoint that never comes back.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Revoking a lease after a lost race or a release is cleanup only: it gets a short bound.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(1);

/// The etcd [`Store`]. Cheap to clone (clones share one connection).
#[derive(Clone)]
pub struct EtcdStore {
    conn: Arc<Connection>,
    prefix: String,
}

/// Reads the etcd user's password file by the rules of every secret file
/// ([`crate::secret::read_password_file`]); errors name the file, never the value.
pub fn read_password_file(path: &Path) -> Result<Secret, StoreError> {
    crate::secret::read_password_file(path).map_err(|e| StoreError::Invalid(e.to_string()))
}

/// TLS and authentication of the etcd client; the default is neither (plain `http://`, or
/// `https://` verified against the system's roots).
#[derive(Debug, Clone, Default)]
pub struct EtcdSecurity {
    /// CA certificate(s) that verify the server; `None`: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// A client certificate for an etcd with `--client-cert-auth`.
    pub identity: Option<ClientIdentity>,
    /// An etcd user and its password.
    pub user: Option<(String, Secret)>,
}

impl EtcdSecurity {
    /// From the `[store]` keys of a validated configuration; reads the password file.
    pub fn from_config(
        ca_file: Option<&Path>,
        cert_file: Option<&Path>,
        key_file: Option<&Path>,
        username: Option<&str>,
        password_file: Option<&Path>,
    ) -> Result<Self, StoreError> {
        let identity = match (cert_file, key_file) {
            (Some(c), Some(k)) => Some(ClientIdentity { cert_file: c.to_path_buf(), key_file: k.to_path_buf() }),
            (None, None) => None,
            _ => return Err(StoreError::Invalid("store.cert_file and store.key_file go together".into())),
        };
        let user = match (username, password_file) {
            (Some(u), Some(p)) => Some((u.to_string(), read_password_file(p)?)),
            (None, None) => None,
            _ => return Err(StoreError::Invalid("store.username and store.password_file go together".into())),
        };
        Ok(EtcdSecurity { ca_file: ca_file.map(Path::to_path_buf), identity, user })
    }

    fn uses_tls(&self) -> bool {
        self.ca_file.is_some() || self.identity.is_some()
    }

    /// tonic's TLS settings, after reading and checking every file here so that a bad one is
    /// an `Invalid` naming it (tonic's own message would be a bare "transport error").
    fn tls_options(&self) -> Result<TlsOptions, StoreError> {
        let invalid = |e: crate::tls::TlsError| StoreError::Invalid(format!("etcd TLS: {e}"));
        if self.identity.is_some() {
            // Parses the certificate and the key, and checks that they belong together.
            crate::tls::client_config(self.ca_file.as_deref(), self.identity.as_ref()).map_err(invalid)?;
        }
        let roots = crate::tls::root_store(self.ca_file.as_deref()).map_err(invalid)?;
        let mut tls = TlsOptions::new().trust_anchors(roots.roots);
        if let Some(id) = &self.identity {
            let read =
                |path: &Path| std::fs::read(path).map_err(|e| StoreError::Invalid(format!("etcd TLS: {}: {e}", path.display())));
            tls = tls.identity(Identity::from_pem(read(&id.cert_file)?, read(&id.key_file)?));
        }
        Ok(tls)
    }
}

/// The client, made on first use when connecting needs the server (authentication) and made
/// again after the server refused its token.
struct Connection {
    endpoints: Vec<String>,
    /// Holds the password (etcd-client's `Debug` would print it): never formatted.
    options: ConnectOptions,
    user: Option<String>,
    /// Some endpoint is `http://` (for the hint when it meets a TLS server).
    plain_http: bool,
    /// The client speaks TLS (for the hint when etcd closes the connection at once).
    tls: bool,
    client: Mutex<Option<Client>>,
    /// One connection attempt at a time.
    connecting: tokio::sync::Mutex<()>,
}

impl Connection {
    /// The current client, connecting first if there is none. The caller bounds the time.
    async fn client(&self) -> Result<Client, StoreError> {
        if let Some(c) = self.client.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(c.clone());
        }
        let _one = self.connecting.lock().await;
        if let Some(c) = self.client.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Ok(c.clone());
        }
        let client = Client::connect(&self.endpoints, Some(self.options.clone())).await.map_err(|e| self.connect_error(e))?;
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = Some(client.clone());
        Ok(client)
    }

    /// Forgets the client: the next call connects (and authenticates) again.
    fn reset(&self) {
        self.client.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Why connecting failed. Without a user nothing is sent while connecting, so only bad
    /// endpoints fail here; with one, this is also where etcd judges the credentials and where a
    /// refused TLS handshake shows.
    fn connect_error(&self, e: etcd_client::Error) -> StoreError {
        match &e {
            etcd_client::Error::InvalidUri(_) | etcd_client::Error::InvalidArgs(_) => {
                StoreError::Invalid(format!("etcd endpoints {:?}: {e}", self.endpoints))
            }
            etcd_client::Error::GRpcStatus(s) if is_auth_refusal(s.message()) => {
                let user = self.user.as_deref().unwrap_or_default();
                StoreError::Invalid(format!("etcd refused user {user:?}: {}", s.message()))
            }
            _ => StoreError::Unavailable(format!("connecting: {}", self.explain(&e))),
        }
    }

    /// Transport and server failures are `Unavailable`: the write may or may not have happened.
    fn map_error(&self, what: &str, e: etcd_client::Error) -> StoreError {
        match &e {
            // Credentials refused while refreshing the token (changed password, user removed):
            // not a fault of the request, and a later call may succeed once that is fixed.
            etcd_client::Error::GRpcStatus(s) if is_auth_refusal(s.message()) => {
                StoreError::Unavailable(format!("etcd {what}: credentials refused: {}", s.message()))
            }
            // gRPC INVALID_ARGUMENT (3): etcd refused the request itself (e.g. too large).
            etcd_client::Error::GRpcStatus(s) if s.code() as i32 == 3 => {
                StoreError::Invalid(format!("etcd {what}: {}", s.message()))
            }
            // gRPC UNAUTHENTICATED (16): the token was refused although the client logged in
            // again and retried once; connect afresh on the next call.
            etcd_client::Error::GRpcStatus(s) if s.code() as i32 == 16 => {
                self.reset();
                StoreError::Unavailable(format!("etcd {what}: {}", self.explain(&e)))
            }
            _ => StoreError::Unavailable(format!("etcd {what}: {}", self.explain(&e))),
        }
    }

    /// [`describe`], and what a TLS or scheme mismatch most likely means.
    fn explain(&self, e: &etcd_client::Error) -> String {
        let text = describe(e);
        let hint = if ["BadCertificate", "CertificateRequired", "UnknownCA", "bad certificate"].iter().any(|m| text.contains(m)) {
            " (etcd refused this client's certificate, or its absence: store.cert_file and store.key_file must be set \
             and signed by a CA in etcd's --trusted-ca-file)"
        } else if text.contains("invalid peer certificate") {
            " (etcd's certificate does not verify against store.ca_file, or the system's roots without it, \
             or does not name the endpoint's host)"
        } else if !closed_early(&text) {
            ""
        } else if self.plain_http {
            " (the endpoint is plain http://: if etcd serves TLS there, use https://)"
        } else if self.tls {
            // TLS 1.3: a client certificate is judged after the client's handshake is done, so
            // the refusal's alert is often lost in the closing connection.
            " (if etcd requires client certificates, this is how it refuses a missing or untrusted one: \
             check store.cert_file and store.key_file)"
        } else {
            ""
        };
        format!("{text}{hint}")
    }
}

/// The connection ended under the request: a restart, or a TLS or scheme mismatch.
fn closed_early(text: &str) -> bool {
    ["broken pipe", "connection closed", "connection reset", "frame"].iter().any(|m| text.contains(m))
}

fn is_plain_http(endpoint: &str) -> bool {
    endpoint.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://"))
}

/// etcd's answers to credentials it does not accept (messages from etcd's `rpctypes`): a wrong
/// name or password, a server without authentication enabled.
fn is_auth_refusal(m: &str) -> bool {
    m.contains("authentication failed") || m.contains("authentication is not enabled") || m.contains("user name not found")
}

/// An error with everything tonic and rustls say below it (a TLS refusal is otherwise a bare
/// "transport error"). Never includes credentials: they are not part of any request error.
fn describe(e: &etcd_client::Error) -> String {
    use std::error::Error as _;
    let (mut text, mut source): (String, Option<&dyn std::error::Error>) = match e {
        etcd_client::Error::GRpcStatus(s) => (s.message().to_string(), s.source()),
        etcd_client::Error::TransportError(t) => (format!("transport error: {t}"), t.source()),
        e => (e.to_string(), None),
    };
    while let Some(cause) = source {
        let m = cause.to_string();
        if !text.contains(&m) {
            text.push_str(": ");
            text.push_str(&m);
        }
        source = cause.source();
    }
    text
}

/// The prefix of the key that keeps a lease's last record when its etcd lease expires.
const TERM_PREFIX: &str = "term#";

fn term_item(item: &str) -> String {
    format!("{TERM_PREFIX}{item}")
}

/// One consistent read of a lease key and its term companion.
struct LeaseSnapshot {
    /// The live record, if its key exists.
    record: Option<LeaderLease>,
    record_rev: i64,
    /// The etcd lease the record is attached to (0: none).
    etcd_lease: i64,
    /// The last record written, kept after the live one expired.
    last: Option<LeaderLease>,
    last_rev: i64,
}

impl LeaseSnapshot {
    /// What the store reports: the live record, or the expired one as ownerless (free) with its
    /// term, so that terms keep increasing.
    fn current(&self) -> Option<LeaderLease> {
        self.record.clone().or_else(|| self.last.clone().map(|l| LeaderLease { owner: String::new(), ..l }))
    }
}

impl EtcdStore {
    /// A client of the etcd cluster at `endpoints` (e.g. `http://127.0.0.1:2379`) keeping items
    /// under `prefix`, without TLS options or authentication. Connects lazily: a stopped etcd
    /// shows up as `Unavailable` on the calls.
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        Self::connect_with(endpoints, prefix, EtcdSecurity::default()).await
    }

    /// As [`EtcdStore::connect`], with TLS and/or an etcd user. Unreadable or mismatched
    /// certificate files and credentials etcd refuses are `Invalid` here; an etcd that cannot be
    /// reached is not an error yet (the calls report it, and connect again, until it answers).
    pub async fn connect_with(endpoints: &[String], prefix: &str, security: EtcdSecurity) -> Result<Self, StoreError> {
        if endpoints.is_empty() {
            return Err(StoreError::Invalid("at least one etcd endpoint is needed".into()));
        }
        if !prefix.starts_with('/') || prefix.ends_with('/') {
            return Err(StoreError::Invalid(format!("etcd prefix {prefix:?} must start with '/' and not end with it")));
        }
        let mut options = ConnectOptions::new()
            .with_timeout(REQUEST_TIMEOUT)
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
        let tls = security.uses_tls() || endpoints.iter().any(|e| e.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://")));
        if security.uses_tls() {
            if let Some(plain) = endpoints.iter().find(|e| is_plain_http(e)) {
                return Err(StoreError::Invalid(format!("etcd endpoint {plain:?} is plain http://; TLS options need https://")));
            }
            options = options.with_tls(security.tls_options()?);
        } else if endpoints.iter().any(|e| e.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"))) {
            // https:// without a CA file: the system's roots (etcd-client alone would trust none).
            options = options.with_tls(security.tls_options()?);
        }
        let user = security.user.as_ref().map(|(name, _)| name.clone());
        if let Some((name, password)) = &security.user {
            options = options.with_user(name.clone(), password.expose()).with_auto_token_refresh(true);
        }
        let conn = Connection {
            endpoints: endpoints.to_vec(),
            options,
            user,
            plain_http: endpoints.iter().any(|e| is_plain_http(e)),
            tls,
            client: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
        };
        match tokio::time::timeout(CALL_TIMEOUT, conn.client()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e @ StoreError::Invalid(_))) => return Err(e),
            // Unreachable now: the first calls connect again (and report it).
            Ok(Err(e)) => tracing::warn!(error = %e, "etcd: cannot connect yet; retrying on each call"),
            Err(_) => tracing::warn!("etcd: connecting timed out; retrying on each call"),
        }
        Ok(EtcdStore { conn: Arc::new(conn), prefix: prefix.to_string() })
    }

    fn key(&self, cluster: &str, item: &str) -> String {
        format!("{}/{cluster}/{item}", self.prefix)
    }

    /// The fleet registry sits beside the clusters, `<prefix>/~registry/<cluster>` (`~` is never
    /// part of a cluster name), so listing it reads no cluster's items.
    fn registry_key(&self, cluster: &str) -> String {
        format!("{}/{}/{cluster}", self.prefix, keys::REGISTRATION)
    }

    /// Compare-and-set of a record carrying its own version (the cluster record, the parameters):
    /// the stored version must be `expected_version`, checked by etcd on the key's mod revision;
    /// `make(old + 1)` is written and returned.
    async fn write_versioned<T: serde::Serialize + serde::de::DeserializeOwned>(
        &self,
        cluster: &str,
        item: &str,
        expected_version: Option<u64>,
        version_of: impl Fn(&T) -> u64,
        make: impl FnOnce(u64) -> T,
    ) -> Result<T, StoreError> {
        check_cluster(cluster)?;
        let kv = self.get_one(cluster, item).await?;
        let current: Option<T> = kv.as_ref().map(|kv| decode(item, kv.value())).transpose()?;
        let stored_version = current.as_ref().map(version_of);
        codec::check_version(item, expected_version, stored_version)?;
        let stored = make(stored_version.unwrap_or(0) + 1);
        let key = self.key(cluster, item);
        let txn = Txn::new()
            .when([Compare::mod_revision(key.clone(), CompareOp::Equal, kv.as_ref().map_or(0, KeyValue::mod_revision))])
            .and_then([TxnOp::put(key, encode(item, &stored)?, None)]);
        if self.txn(&format!("write {item}"), txn).await?.succeeded() {
            Ok(stored)
        } else {
            Err(StoreError::conflict(item, format!("version {stored_version:?} was replaced by another writer")))
        }
    }

    fn cluster_prefix(&self, cluster: &str) -> String {
        format!("{}/{cluster}/", self.prefix)
    }

    /// Runs one etcd request under [`CALL_TIMEOUT`] (connecting first if needed, within the same
    /// bound), mapping transport failures to `Unavailable`.
    async fn call<T, F, Fut>(&self, what: &str, request: F) -> Result<T, StoreError>
    where
        F: FnOnce(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let attempt = async {
            // Credentials refused now, after the store was made, are an outage like any other.
            let client = self.conn.client().await.map_err(|e| match e {
                StoreError::Invalid(m) | StoreError::Unavailable(m) => StoreError::Unavailable(format!("etcd {what}: {m}")),
                e => e,
            })?;
            request(client).await.map_err(|e| self.conn.map_error(what, e))
        };
        match tokio::time::timeout(CALL_TIMEOUT, attempt).await {
            Err(_) => Err(StoreError::Unavailable(format!("etcd {what}: no answer within {CALL_TIMEOUT:?}"))),
            Ok(result) => result,
        }
    }

    async fn txn(&self, what: &str, txn: Txn) -> Result<etcd_client::TxnResponse, StoreError> {
        self.call(what, |mut c| async move { c.txn(txn).await }).await
    }

    async fn get_one(&self, cluster: &str, item: &str) -> Result<Option<KeyValue>, StoreError> {
        let key = self.key(cluster, item);
        let mut resp = self.call(&format!("get {item}"), |mut c| async move { c.get(key, None).await }).await?;
        Ok(resp.take_kvs().into_iter().next())
    }

    async fn lease_snapshot(&self, cluster: &str, item: &str) -> Result<LeaseSnapshot, StoreError> {
        let (key, last_key) = (self.key(cluster, item), self.key(cluster, &term_item(item)));
        let txn = Txn::new().and_then([TxnOp::get(key, None), TxnOp::get(last_key, None)]);
        let resp = self.txn(&format!("read {item}"), txn).await?;
        let mut kvs = resp.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(mut g) => g.take_kvs().into_iter().next(),
            _ => None,
        });
        let (record_kv, last_kv) = (kvs.next().flatten(), kvs.next().flatten());
        let record = record_kv.as_ref().map(|kv| decode::<LeaderLease>(item, kv.value())).transpose()?;
        let last = last_kv.as_ref().map(|kv| decode::<LeaderLease>(&term_item(item), kv.value())).transpose()?;
        Ok(LeaseSnapshot {
            record,
            record_rev: record_kv.as_ref().map_or(0, KeyValue::mod_revision),
            etcd_lease: record_kv.as_ref().map_or(0, KeyValue::lease),
            last,
            last_rev: last_kv.as_ref().map_or(0, KeyValue::mod_revision),
        })
    }

    /// Grants an etcd lease that outlives `lease_ms` (TTL in whole seconds, rounded up).
    async fn grant(&self, lease_ms: u64) -> Result<i64, StoreError> {
        let ttl = i64::try_from(lease_ms.div_ceil(1000)).unwrap_or(i64::MAX).max(1);
        Ok(self.call("lease grant", |mut c| async move { c.lease_grant(ttl, None).await }).await?.id())
    }

    /// Best effort: an etcd lease left behind expires on its own, so failures are only logged.
    async fn revoke(&self, id: i64) {
        if id == 0 {
            return;
        }
        let revoke = async {
            let mut client = self.conn.client().await?;
            client.lease_revoke(id).await.map_err(|e| self.conn.map_error("lease revoke", e))
        };
        match tokio::time::timeout(CLEANUP_TIMEOUT, revoke).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::debug!(lease = id, error = %e, "etcd lease revoke failed (it will expire)"),
            Err(_) => tracing::debug!(lease = id, "etcd lease revoke timed out (it will expire)"),
        }
    }

    /// Writes `lease` as the live record (attached to `etcd_lease`, or to none) and as the term
    /// companion, only if neither changed since `snap` was read.
    async fn put_lease(
        &self,
        cluster: &str,
        item: &str,
        snap: &LeaseSnapshot,
        lease: &LeaderLease,
        etcd_lease: Option<i64>,
    ) -> Result<bool, StoreError> {
        let (key, last_key) = (self.key(cluster, item), self.key(cluster, &term_item(item)));
        let text = encode(item, lease)?;
        let options = etcd_lease.map(|id| PutOptions::new().with_lease(id));
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key.clone(), CompareOp::Equal, snap.record_rev),
                Compare::mod_revision(last_key.clone(), CompareOp::Equal, snap.last_rev),
            ])
            .and_then([TxnOp::put(key, text.clone(), options), TxnOp::put(last_key, text, None)]);
        Ok(self.txn(&format!("write {item}"), txn).await?.succeeded())
    }

    /// Checks that `held` still is the live record, as renewal and release require.
    fn check_held(snap: &LeaseSnapshot, item: &str, held: &LeaderLease) -> Result<LeaderLease, StoreError> {
        if snap.record.is_none() && snap.last.as_ref().is_some_and(|l| !l.released) {
            return Err(StoreError::conflict(item, "the lease expired (its etcd lease ran out)"));
        }
        codec::check_held(snap.record.as_ref(), held).map_err(|d| StoreError::conflict(item, d))?;
        Ok(snap.record.clone().expect("checked by check_held"))
    }
}

/// Decodes the records of a prefix or range read (history, events), each named by its key below
/// `base` (the cluster's prefix). An unreadable one is skipped and logged.
fn decode_items<T: serde::de::DeserializeOwned>(cluster: &str, base: &str, kvs: Vec<KeyValue>) -> Vec<T> {
    kvs.iter()
        .filter_map(|kv| {
            let item = String::from_utf8_lossy(&kv.key()[base.len()..]).into_owned();
            decode(&item, kv.value()).map_err(|e| codec::warn_unreadable(cluster, &e)).ok()
        })
        .collect()
}

#[async_trait]
impl Store for EtcdStore {
    fn backend(&self) -> &'static str {
        "etcd"
    }

    async fn read_view(&self, cluster: &str) -> Result<ClusterView, StoreError> {
        check_cluster(cluster)?;
        let base = self.cluster_prefix(cluster);
        // One range read is one revision: a consistent snapshot of the whole cluster.
        // Up to `VIEW_END`: everything but the event log, which only grows.
        let (start, end) = (base.clone(), format!("{base}{}", keys::VIEW_END));
        let mut resp =
            self.call("read view", |mut c| async move { c.get(start, Some(GetOptions::new().with_range(end))).await }).await?;
        let mut view = ClusterView::default();
        let (mut last_leader, mut last_coordinator) = (None, None);
        let (leader_term, coordinator_term) = (term_item(keys::LEADER), term_item(keys::COORDINATOR_LOCK));
        for kv in resp.take_kvs() {
            let Some(item) = kv.key().strip_prefix(base.as_bytes()).and_then(|k| std::str::from_utf8(k).ok()) else {
                continue;
            };
            match item {
                keys::CLUSTER => view.cluster = Some(decode(item, kv.value())?),
                keys::LEADER => view.leader = Some(decode(item, kv.value())?),
                keys::COORDINATOR_LOCK => view.coordinator = Some(decode(item, kv.value())?),
                i if i == leader_term => last_leader = Some(decode::<LeaderLease>(item, kv.value())?),
                i if i == coordinator_term => last_coordinator = Some(decode::<LeaderLease>(item, kv.value())?),
                // An unreadable member is skipped and reported, never failing the view (S6).
                i if i.starts_with(keys::MEMBER_PREFIX) => match codec::decode_member(item, kv.value()) {
                    Ok(member) => {
                        view.members.insert(member.name.clone(), member);
                    }
                    Err(e) => codec::skip_unreadable(&mut view.unreadable, cluster, e),
                },
                // History is not part of the view; unknown items are left for newer versions.
                _ => codec::read_optional_item(&mut view, cluster, item, || codec::parse(item, kv.value())),
            }
        }
        let ownerless = |l: LeaderLease| LeaderLease { owner: String::new(), ..l };
        view.leader = view.leader.or(last_leader.map(ownerless));
        view.coordinator = view.coordinator.or(last_coordinator.map(ownerless));
        Ok(view)
    }

    async fn read_lease(&self, cluster: &str, name: LeaseName) -> Result<Option<LeaderLease>, StoreError> {
        check_cluster(cluster)?;
        Ok(self.lease_snapshot(cluster, name.item_key()).await?.current())
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
        let snap = self.lease_snapshot(cluster, item).await?;
        check_acquire(snap.current().as_ref(), claim, term).map_err(|d| StoreError::conflict(item, d))?;
        let lease = LeaderLease { owner: owner.into(), term, rvn: codec::new_rvn(), lease_ms, released: false };
        let id = self.grant(lease_ms).await?;
        match self.put_lease(cluster, item, &snap, &lease, Some(id)).await {
            Ok(true) => {
                // A taken-over record's etcd lease no longer holds any key.
                self.revoke(snap.etcd_lease).await;
                Ok(lease)
            }
            Ok(false) => {
                self.revoke(id).await;
                Err(StoreError::conflict(item, "changed by another writer since it was read"))
            }
            Err(e) => Err(e),
        }
    }

    async fn renew_lease(&self, cluster: &str, name: LeaseName, held: &LeaderLease) -> Result<LeaderLease, StoreError> {
        check_cluster(cluster)?;
        let item = name.item_key();
        let snap = self.lease_snapshot(cluster, item).await?;
        let current = Self::check_held(&snap, item, held)?;
        // Keep-alive first: the holder times its validity from before this call, so the etcd
        // lease must be extended no earlier than that instant and before the record changes.
        let id = if snap.etcd_lease == 0 {
            self.grant(current.lease_ms).await?
        } else {
            let etcd_lease = snap.etcd_lease;
            let keep_alive = |mut c: Client| async move {
                match c.lease_keep_alive(etcd_lease).await {
                    Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("not found") => Ok(false),
                    Err(e) => Err(e),
                    Ok(_) => Ok(true),
                }
            };
            match self.call(&format!("keep-alive {item}"), keep_alive).await {
                Ok(false) => return Err(StoreError::conflict(item, "the lease expired (its etcd lease ran out)")),
                Ok(true) => etcd_lease,
                Err(e) => return Err(e),
            }
        };
        let lease = LeaderLease { rvn: codec::new_rvn(), ..current };
        if self.put_lease(cluster, item, &snap, &lease, Some(id)).await? {
            Ok(lease)
        } else {
            Err(StoreError::conflict(item, "changed by another writer since it was read"))
        }
    }

    async fn release_lease(&self, cluster: &str, name: LeaseName, held: &LeaderLease) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        let item = name.item_key();
        let snap = self.lease_snapshot(cluster, item).await?;
        let current = Self::check_held(&snap, item, held)?;
        // A released record is kept (no etcd lease) so that its term stays visible.
        let lease = LeaderLease { rvn: codec::new_rvn(), released: true, ..current };
        if !self.put_lease(cluster, item, &snap, &lease, None).await? {
            return Err(StoreError::conflict(item, "changed by another writer since it was read"));
        }
        self.revoke(snap.etcd_lease).await;
        Ok(())
    }

    async fn read_cluster(&self, cluster: &str) -> Result<Option<ClusterRecord>, StoreError> {
        check_cluster(cluster)?;
        self.get_one(cluster, keys::CLUSTER).await?.map(|kv| decode(keys::CLUSTER, kv.value())).transpose()
    }

    async fn write_cluster(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        record: &ClusterRecord,
    ) -> Result<ClusterRecord, StoreError> {
        self.write_versioned(
            cluster,
            keys::CLUSTER,
            expected_version,
            |c: &ClusterRecord| c.version,
            |version| ClusterRecord { version, ..record.clone() },
        )
        .await
    }

    async fn write_parameters(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        parameters: &ClusterParameters,
    ) -> Result<ClusterParameters, StoreError> {
        self.write_versioned(
            cluster,
            keys::PARAMETERS,
            expected_version,
            |p: &ClusterParameters| p.version,
            |version| ClusterParameters { version, ..parameters.clone() },
        )
        .await
    }

    async fn write_backup_config(
        &self,
        cluster: &str,
        expected_version: Option<u64>,
        config: &BackupConfig,
    ) -> Result<BackupConfig, StoreError> {
        self.write_versioned(
            cluster,
            keys::BACKUP,
            expected_version,
            |b: &BackupConfig| b.version,
            |version| BackupConfig { version, ..config.clone() },
        )
        .await
    }

    async fn put_member_state(&self, cluster: &str, state: &MemberState) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        keys::validate_member_name(&state.name).map_err(StoreError::Invalid)?;
        let item = keys::state(&state.name);
        let text = encode(&item, state)?;
        let key = self.key(cluster, &item);
        self.call(&format!("put {item}"), |mut c| async move { c.put(key, text, None).await }).await?;
        Ok(())
    }

    async fn put_member(&self, cluster: &str, member: &MemberStatus) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        keys::validate_member_name(&member.name).map_err(StoreError::Invalid)?;
        let item = keys::member(&member.name);
        let text = encode(&item, member)?;
        let key = self.key(cluster, &item);
        self.call(&format!("put {item}"), |mut c| async move { c.put(key, text, None).await }).await?;
        Ok(())
    }

    async fn remove_member(&self, cluster: &str, name: &str) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        keys::validate_member_name(name).map_err(StoreError::Invalid)?;
        let (member, state) = (self.key(cluster, &keys::member(name)), self.key(cluster, &keys::state(name)));
        let txn = Txn::new().and_then([TxnOp::delete(member, None), TxnOp::delete(state, None)]);
        self.txn(&format!("remove member {name}"), txn).await?;
        Ok(())
    }

    async fn append_history(&self, cluster: &str, entry: &HistoryEntry) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        let item = keys::history(entry.term);
        let key = self.key(cluster, &item);
        let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key,
            encode(&item, entry)?,
            None,
        )]);
        if self.txn(&format!("append {item}"), txn).await?.succeeded() {
            Ok(())
        } else {
            Err(StoreError::conflict(item, "a history record for this term exists"))
        }
    }

    async fn read_history(&self, cluster: &str) -> Result<Vec<HistoryEntry>, StoreError> {
        check_cluster(cluster)?;
        let base = self.cluster_prefix(cluster);
        // Keys sort by term: history items carry it zero-padded.
        let start = format!("{base}{}", keys::HISTORY_PREFIX);
        let mut resp =
            self.call("read history", |mut c| async move { c.get(start, Some(GetOptions::new().with_prefix())).await }).await?;
        Ok(decode_items(cluster, &base, resp.take_kvs()))
    }

    async fn append_event(&self, cluster: &str, event: &Event) -> Result<(), StoreError> {
        let item = codec::event_item(cluster, event)?;
        let key = self.key(cluster, &item);
        // Put only if absent: a retried append of a logged event changes nothing and is `Ok`.
        let txn = Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key,
            encode(&item, event)?,
            None,
        )]);
        self.txn(&format!("append {item}"), txn).await?;
        Ok(())
    }

    async fn read_events(&self, cluster: &str, since_ms: u64) -> Result<Vec<Event>, StoreError> {
        check_cluster(cluster)?;
        let base = self.cluster_prefix(cluster);
        let from = self.key(cluster, &keys::event(since_ms, ""));
        let end = self.key(cluster, keys::EVENT_END);
        let mut resp =
            self.call("read events", |mut c| async move { c.get(from, Some(GetOptions::new().with_range(end))).await }).await?;
        Ok(decode_items(cluster, &base, resp.take_kvs()))
    }

    async fn register_cluster(&self, cluster: &str, registered_ms: u64) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        let key = self.registry_key(cluster);
        let text = encode(keys::REGISTRATION, &Registration { registered_ms })?;
        // Put only if absent, so the first registration time is kept.
        let txn =
            Txn::new().when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(key, text, None)]);
        self.txn("register", txn).await?;
        Ok(())
    }

    async fn unregister_cluster(&self, cluster: &str) -> Result<(), StoreError> {
        check_cluster(cluster)?;
        let key = self.registry_key(cluster);
        self.call("unregister", |mut c| async move { c.delete(key, None).await }).await?;
        Ok(())
    }

    async fn is_registered(&self, cluster: &str) -> Result<bool, StoreError> {
        check_cluster(cluster)?;
        let key = self.registry_key(cluster);
        let resp = self
            .call("read registration", |mut c| async move { c.get(key, Some(GetOptions::new().with_keys_only())).await })
            .await?;
        Ok(!resp.kvs().is_empty())
    }

    async fn list_clusters(&self) -> Result<Vec<String>, StoreError> {
        let base = self.registry_key("");
        let start = base.clone();
        let mut resp =
            self.call("list clusters", |mut c| async move {
                c.get(start, Some(GetOptions::new().with_prefix().with_keys_only())).await
            })
            .await?;
        // etcd returns keys in byte order, which is the names' order.
        Ok(resp
            .take_kvs()
            .iter()
            .filter_map(|kv| kv.key().strip_prefix(base.as_bytes()).and_then(|k| std::str::from_utf8(k).ok()).map(str::to_string))
            .filter(|name| keys::validate_cluster_name(name).is_ok())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expired_lease_reads_as_free_with_its_term() {
        let last = LeaderLease { owner: "a".into(), term: 7, rvn: "r".into(), lease_ms: 5000, released: false };
        let snap = LeaseSnapshot { record: None, record_rev: 0, etcd_lease: 0, last: Some(last), last_rev: 3 };
        let current = snap.current().unwrap();
        assert!(current.is_free());
        assert_eq!(current.term, 7);
        // The next claim must raise the term even though the live key is gone.
        assert!(check_acquire(Some(&current), LeaseClaim::Free, 7).is_err());
        assert!(check_acquire(Some(&current), LeaseClaim::Free, 8).is_ok());
    }

    #[test]
    fn the_password_never_prints() {
        let security = EtcdSecurity { user: Some(("u".into(), Secret::new("hunter2"))), ..Default::default() };
        let shown = format!("{security:?} {}", security.user.as_ref().unwrap().1);
        assert!(!shown.contains("hunter2") && shown.contains("<redacted>"), "{shown}");
    }

    #[tokio::test]
    async fn tls_options_need_https_endpoints() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pgdaemon_testkit::tls::TestPki::new(dir.path()).unwrap();
        let security = EtcdSecurity { ca_file: Some(pki.ca_file()), ..Default::default() };
        let err = EtcdStore::connect_with(&["http://127.0.0.1:1".into()], "/p", security).await.err().unwrap();
        assert!(matches!(err, StoreError::Invalid(ref m) if m.contains("http://127.0.0.1:1") && m.contains("https://")), "{err}");
    }

    #[tokio::test]
    async fn bad_endpoints_and_prefixes_are_invalid() {
        assert!(matches!(EtcdStore::connect(&[], "/p").await, Err(StoreError::Invalid(_))));
        assert!(matches!(EtcdStore::connect(&["http://127.0.0.1:1".into()], "p/").await, Err(StoreError::Invalid(_))));
    }
}
