//! The agent's HTTP API: Patroni's paths and status codes, so HAProxy and NLB health checks
//! written for Patroni work unchanged (GET, HEAD and OPTIONS all answer with the same status).
//!
//! | path | 200 when |
//! |---|---|
//! | `/`, `/primary`, `/read-write`, `/master` | Postgres is read-write and this agent holds the leader lease, valid *now* by its own clock, with no demotion for its term begun |
//! | `/leader` | the leader lease is held and valid now (whatever Postgres does) |
//! | `/replica[?lag=]` | Postgres runs in recovery, streams, and is at most `lag` behind (bytes, or `16kB`, `64MB`, `1GB`) |
//! | `/read-only[?lag=]` | `/primary` or `/replica` would answer 200 |
//! | `/health` | Postgres answers |
//! | `/liveness` | the agent loop completed a tick within `lease` (primary) or `2 x lease` (others) |
//! | `/readiness[?lag=]` | a ready primary, or a replica that streams (within `lag` if given) |
//! | `/patroni` | always (the status document) |
//!
//! Otherwise 503. `/cluster`, `/history` and `/metrics` report; `POST /demote` is the
//! coordinator's HTTP fencer (200 only once Postgres stopped accepting writes); `POST /failsafe`
//! is failsafe mode's peer endpoint (200 acknowledged, 409 refused); `POST /wake` makes the loop
//! run now (202; the coordinator's waker after designating or promoting).
//!
//! The `POST` endpoints change the node (or its timing), so they pass [`crate::api_security`] first: peer
//! allow-list (403), then credentials (401 with `WWW-Authenticate`); with no credentials
//! configured they are refused (403) unless `[api] insecure = true`. Bodies are limited to
//! [`MAX_BODY_BYTES`]. The read-only endpoints are open unless `[api] protect_reads = true`.
//!
//! With `[api] tls_cert_file` the server speaks TLS only, on every path (HAProxy: `check-ssl`);
//! with `tls_client_ca_file` a client without a certificate chaining to that CA fails the
//! handshake and never reaches a handler. See [`serve_with`].
//!
//! Lease validity is evaluated at request time, not copied from the last loop: if the loop stalls,
//! `/primary` turns 503 at the moment the lease stops being valid, which is what a load balancer
//! needs to stop sending writes to a node that may already be fenced.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, DefaultBodyLimit, Query, Request, State};
use axum::handler::Handler;
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, MethodRouter};
use axum::{Json, Router};
use pgdaemon_core::agent::AgentSnapshot;
use pgdaemon_core::{Clock, ClusterView, HistoryEntry, Role, StoreError};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api_security::{url_host, ApiSecurity, Denied, ServerLimits};
use crate::api_state::error_response;
pub use crate::api_state::{AgentApi, ApiState};
use crate::metrics::{self, role_name};
use crate::{http_backup, http_control, http_maintenance};

/// Largest request body accepted (413 beyond): the requests are small JSON objects.
pub const MAX_BODY_BYTES: usize = 4096;

/// The API router without any access control ([`ApiSecurity::insecure`]): for library callers
/// and tests that build their own server. The agent process uses [`serve_with`] and the
/// security built from `[api]`.
pub fn router(state: ApiState) -> Router {
    router_with(state, Arc::new(ApiSecurity::insecure()))
}

/// The API router with `security` applied to the state-changing routes (and to the read-only
/// ones when `protect_reads`). The peer address comes from a `ConnectInfo<SocketAddr>` request
/// extension ([`serve_with`] sets it); without one, a configured allow-list refuses the request.
pub fn router_with(state: ApiState, security: Arc<ApiSecurity>) -> Router {
    let guard_state = Guard { security: security.clone(), api: state.api.clone() };
    let reads = Router::new()
        .route("/", health(primary))
        .route("/primary", health(primary))
        .route("/read-write", health(primary))
        .route("/master", health(primary))
        .route("/leader", health(leader))
        .route("/replica", health(replica))
        .route("/read-only", health(read_only))
        .route("/health", health(health_check))
        .route("/liveness", health(liveness))
        .route("/readiness", health(readiness))
        .route("/patroni", health(patroni))
        .route("/cluster", get(cluster))
        .route("/history", get(history))
        .route("/metrics", get(metrics_text));
    let writes = Router::new()
        .route("/demote", post(http_control::demote))
        .route("/failsafe", post(http_control::failsafe))
        .route("/wake", post(http_control::wake))
        .route("/restart", post(http_maintenance::restart))
        .route("/reinit", post(http_maintenance::reinit))
        .route("/reload", post(http_maintenance::reload))
        .route("/drop-slot", post(http_maintenance::drop_slot))
        .route("/backup", post(http_backup::backup))
        .route("/backups", get(http_backup::list))
        .route("/switch-wal", post(http_backup::switch_wal))
        .route_layer(middleware::from_fn_with_state(guard_state.clone(), guard));
    let reads =
        if security.protect_reads { reads.route_layer(middleware::from_fn_with_state(guard_state, guard)) } else { reads };
    reads.merge(writes).layer(DefaultBodyLimit::max(MAX_BODY_BYTES)).with_state(state)
}

#[derive(Clone)]
struct Guard {
    security: Arc<ApiSecurity>,
    api: Arc<dyn AgentApi>,
}

/// Allow-list (403), then credentials (401): before any handler runs, so a refused request
/// changes nothing (S6).
async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    let members = if g.security.include_members { member_addresses(g.api.as_ref()).await } else { Vec::new() };
    let path = req.uri().path().to_string();
    if !g.security.peer_allowed(peer, &members) {
        tracing::warn!(?peer, path, "API request refused: peer not in the allow-list");
        let who = peer.map_or("an unknown peer".to_string(), |p| p.to_string());
        return g.security.deny(Denied::Forbidden(format!("{who} is not in [api] allowlist")));
    }
    if let Err(d) = g.security.authenticate(req.headers()) {
        tracing::warn!(?peer, path, reason = ?d, "API request refused");
        return g.security.deny(d);
    }
    next.run(req).await
}

/// The addresses of the cluster members' API hosts in the agent's last view (names resolved,
/// each lookup bounded to one second).
async fn member_addresses(api: &dyn AgentApi) -> Vec<IpAddr> {
    let snapshot = api.snapshot();
    let Some(view) = snapshot.last_view else { return Vec::new() };
    let mut out = Vec::new();
    for m in view.members.values() {
        let Some(host) = url_host(&m.api_url) else { continue };
        if let Ok(ip) = host.parse::<IpAddr>() {
            out.push(ip);
        } else if let Ok(Ok(addrs)) = tokio::time::timeout(Duration::from_secs(1), tokio::net::lookup_host((host, 0))).await {
            out.extend(addrs.map(|a| a.ip()));
        }
    }
    out
}

/// A health-check route: GET (and HEAD) and OPTIONS, as load balancers use either.
fn health<H, T>(handler: H) -> MethodRouter<ApiState>
where
    H: Handler<T, ApiState> + Clone,
    T: 'static,
{
    get(handler.clone()).options(handler)
}

/// Serves [`router`] (no access control) on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: ApiState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, ApiSecurity::insecure(), ServerLimits::default(), shutdown).await
}

/// Serves [`router_with`] on `listener` until `shutdown` resolves: HTTP/1.1, at most
/// `limits.max_connections` connections at once (further ones wait in the listen backlog), and
/// `limits.read_timeout` for a request's headers and again for its body (a slow client cannot
/// hold a connection slot forever). The peer address is passed to the router as `ConnectInfo`.
/// On shutdown, stops accepting and lets requests in flight finish.
///
/// With TLS ([`ApiSecurity::tls`]) each connection's handshake runs in that connection's own
/// task, within its slot and bounded by `limits.read_timeout`: a client that never completes it
/// holds one slot for that long and delays no other connection. A failed handshake (a plain
/// HTTP request, no or an untrusted client certificate) is logged at debug and the connection
/// dropped.
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    state: ApiState,
    security: ApiSecurity,
    limits: ServerLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let tls = security.tls().map(tokio_rustls::TlsAcceptor::from);
    let app = router_with(state, Arc::new(security));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let timeout = limits.read_timeout;
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            p = slots.clone().acquire_owned() => p.expect("the semaphore is never closed"),
        };
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accepting an API connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let mut req = req.map(|b| axum::body::Body::new(tower_http::timeout::TimeoutBody::new(timeout, b)));
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut app = app.clone();
            async move { tower_service::Service::call(&mut app, req).await }
        });
        // Counts as a connection in flight from now on: shutdown waits for a handshake too.
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let io: Box<dyn Io> = match tls {
                None => Box::new(stream),
                Some(acceptor) => match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => Box::new(stream),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "API TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, timeout_ms = timeout.as_millis() as u64, "API TLS handshake not completed in time");
                        return;
                    }
                },
            };
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(timeout)
                .serve_connection(TokioIo::new(io), service);
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(%peer, error = %e, "API connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A connection's byte stream: TCP, or TLS over TCP.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// The health-check query string. Unknown parameters (Patroni's `tag_*`, `mode`) are ignored.
#[derive(Debug, Default, Deserialize)]
pub struct CheckQuery {
    lag: Option<String>,
}

impl CheckQuery {
    // The error is the response itself (axum's, 128 bytes): boxing it would only add a step.
    #[allow(clippy::result_large_err)]
    fn max_lag(&self) -> Result<Option<u64>, Response> {
        match &self.lag {
            None => Ok(None),
            Some(v) => parse_lag(v).map(Some).map_err(|e| error_response(StatusCode::BAD_REQUEST, &e)),
        }
    }
}

/// Parses a lag bound as Patroni does: bytes, or a number with one of the (case-sensitive)
/// PostgreSQL memory units `B`, `kB`, `MB`, `GB`, `TB` (powers of 1024), e.g. `16kB`, `1.5 MB`.
pub fn parse_lag(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim());
    let bad = || format!("lag {text:?} must be bytes or a number with a unit (B, kB, MB, GB, TB), like 16MB");
    if number.is_empty() || number.starts_with('.') || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let factor: u64 = match unit {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        "TB" => 1 << 40,
        _ => return Err(bad()),
    };
    if number.contains('.') {
        let value: f64 = number.parse().map_err(|_| bad())?;
        let bytes = (value * factor as f64).round();
        if bytes >= u64::MAX as f64 {
            return Err(bad());
        }
        Ok(bytes as u64)
    } else {
        number.parse::<u64>().ok().and_then(|n| n.checked_mul(factor)).ok_or_else(bad)
    }
}

/// The checks, evaluated on one snapshot at one instant.
struct Checks<'a> {
    s: &'a AgentSnapshot,
    now: Duration,
}

impl Checks<'_> {
    fn lease_valid(&self) -> bool {
        self.s.holds_lease && self.s.lease_valid_until.is_some_and(|until| self.now < until)
    }

    /// A demotion for the lease's term (or a later one) has begun: no longer primary, even while
    /// Postgres is still shutting down.
    fn primary(&self) -> bool {
        let fenced = self.s.lease_term.is_some_and(|t| t <= self.s.fenced_through);
        self.s.pg_running && self.s.role == Role::Primary && self.lease_valid() && !fenced
    }

    fn streaming_replica(&self) -> bool {
        self.s.pg_running && self.s.role == Role::Replica && self.s.last_probe.as_ref().is_some_and(|p| p.streaming)
    }

    fn within(&self, max_lag: Option<u64>) -> bool {
        match max_lag {
            None => true,
            // Unknown lag cannot be shown to be within any bound.
            Some(max) => lag_bytes(self.s).is_some_and(|lag| lag <= max),
        }
    }
}

/// Bytes this replica is behind the designated primary's last published write position
/// (Patroni uses the leader's last position in the DCS the same way, so health checks never
/// query the primary). `None` when not a replica or the position is unknown.
pub fn lag_bytes(s: &AgentSnapshot) -> Option<u64> {
    let probe = s.last_probe.as_ref().filter(|p| p.running && p.role == Role::Replica)?;
    let mine = match (probe.receive_lsn, probe.replay_lsn) {
        (Some(a), Some(b)) => a.max(b),
        (a, b) => a.or(b)?,
    };
    let view = s.last_view.as_ref()?;
    let primary = view.cluster.as_ref()?.primary.as_deref()?;
    let member = view.members.get(primary).filter(|m| m.role == Role::Primary && m.name != s.member)?;
    Some(member.write_lsn?.bytes_ahead_of(mine))
}

fn status_document(st: &ApiState, s: &AgentSnapshot, now: Duration) -> Value {
    let checks = Checks { s, now };
    let probe = s.last_probe.as_ref();
    let mut doc = serde_json::Map::new();
    doc.insert("state".into(), json!(if s.pg_running { "running" } else { "stopped" }));
    doc.insert("role".into(), json!(role_name(s.role)));
    if let Some(p) = probe.filter(|p| p.running) {
        doc.insert("timeline".into(), json!(p.timeline));
        let xlog = match s.role {
            Role::Primary => json!({ "location": p.write_lsn.map(|l| l.0) }),
            _ => json!({
                "received_location": p.receive_lsn.map(|l| l.0),
                "replayed_location": p.replay_lsn.map(|l| l.0),
                "replayed_timestamp": Value::Null,
                "paused": false,
            }),
        };
        doc.insert("xlog".into(), xlog);
        if s.role == Role::Primary {
            let rows: Vec<Value> = p
                .replication
                .iter()
                .map(|r| json!({ "application_name": r.application_name, "state": r.state, "sync_state": r.sync_state }))
                .collect();
            doc.insert("replication".into(), json!(rows));
        }
    }
    let view = s.last_view.as_ref();
    let unlocked = view.is_none_or(|v| v.leader.as_ref().is_none_or(|l| l.is_free()));
    if unlocked {
        doc.insert("cluster_unlocked".into(), json!(true));
    }
    if view.and_then(|v| v.cluster.as_ref()).is_some_and(|c| c.paused) {
        doc.insert("pause".into(), json!(true));
    }
    // Patroni's field: a setting changed in the files waits for a restart.
    let pending: &[String] = probe.map_or(&[], |p| &p.pending_restart);
    if !pending.is_empty() {
        doc.insert("pending_restart".into(), json!(true));
    }
    doc.insert("patroni".into(), json!({ "version": st.version, "scope": s.cluster, "name": s.member }));
    let valid_for_ms = s.lease_valid_until.filter(|_| checks.lease_valid()).map(|u| u.saturating_sub(now).as_millis() as u64);
    doc.insert(
        "pgdaemon".into(),
        json!({
            "term": s.term,
            "lease": { "held": checks.lease_valid(), "term": s.lease_term, "valid_for_ms": valid_for_ms },
            "fenced_through": s.fenced_through,
            "streaming": probe.is_some_and(|p| p.streaming),
            "lag_bytes": lag_bytes(s),
            "lag_seconds": probe.and_then(|p| p.replay_age).map(|a| a.as_secs_f64()),
            "last_reason": s.last_reason,
            "store_error": s.store_error,
            "pg_error": probe.and_then(|p| p.error.clone()),
            "pending_restart": pending,
        }),
    );
    Value::Object(doc)
}

/// Runs `check` on the current snapshot and answers 200 or 503 with the status document.
fn answer(st: &ApiState, check: impl FnOnce(&Checks) -> bool) -> Response {
    let s = st.api.snapshot();
    let now = st.clock.monotonic();
    let checks = Checks { s: &s, now };
    let ok = check(&checks);
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(status_document(st, &s, now))).into_response()
}

async fn primary(State(st): State<ApiState>) -> Response {
    answer(&st, |c| c.primary())
}

async fn leader(State(st): State<ApiState>) -> Response {
    answer(&st, |c| c.lease_valid())
}

async fn replica(State(st): State<ApiState>, Query(q): Query<CheckQuery>) -> Response {
    let max = match q.max_lag() {
        Ok(m) => m,
        Err(r) => return r,
    };
    answer(&st, |c| c.streaming_replica() && c.within(max))
}

async fn read_only(State(st): State<ApiState>, Query(q): Query<CheckQuery>) -> Response {
    let max = match q.max_lag() {
        Ok(m) => m,
        Err(r) => return r,
    };
    answer(&st, |c| c.primary() || (c.streaming_replica() && c.within(max)))
}

async fn health_check(State(st): State<ApiState>) -> Response {
    answer(&st, |c| c.s.pg_running)
}

async fn readiness(State(st): State<ApiState>, Query(q): Query<CheckQuery>) -> Response {
    let max = match q.max_lag() {
        Ok(m) => m,
        Err(r) => return r,
    };
    answer(&st, |c| c.primary() || (c.streaming_replica() && c.within(max)))
}

async fn patroni(State(st): State<ApiState>) -> Response {
    answer(&st, |_| true)
}

/// Patroni's rule: the loop may be silent for `ttl` on the primary and `2 x ttl` elsewhere.
async fn liveness(State(st): State<ApiState>) -> Response {
    let s = st.api.snapshot();
    let now = st.clock.monotonic();
    let lease = s.config.lease();
    let allowed = if s.role == Role::Primary { lease } else { lease * 2 };
    let idle = st.stats.idle_for(now);
    let code = if idle <= allowed { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(json!({ "loop_idle_ms": idle.as_millis() as u64, "allowed_ms": allowed.as_millis() as u64, "ticks": st.stats.ticks() })))
        .into_response()
}

fn store_error(e: StoreError) -> Response {
    error_response(StatusCode::SERVICE_UNAVAILABLE, &e.to_string())
}

/// Patroni's `/cluster` document (members with role/state/host/port/timeline/lag) plus the term,
/// the lease and any transition in progress.
async fn cluster(State(st): State<ApiState>) -> Response {
    let view = match st.api.cluster_view().await {
        Ok(v) => v,
        Err(e) => return store_error(e),
    };
    let s = st.api.snapshot();
    (StatusCode::OK, Json(cluster_document(&s.cluster, &view))).into_response()
}

pub fn cluster_document(scope: &str, view: &ClusterView) -> Value {
    let record = view.cluster.as_ref();
    let leader = view.leader.as_ref().filter(|l| !l.is_free()).map(|l| l.owner.as_str());
    let sync: Vec<&str> =
        record.and_then(|r| r.sync.as_ref()).map(|s| s.members.iter().map(String::as_str).collect()).unwrap_or_default();
    let primary_pos = leader.and_then(|l| view.members.get(l)).and_then(|m| m.write_lsn);
    let members: Vec<Value> = view
        .members
        .values()
        .map(|m| {
            let role = if Some(m.name.as_str()) == leader && m.role == Role::Primary {
                "leader"
            } else if m.role == Role::Replica && sync.contains(&m.name.as_str()) {
                "sync_standby"
            } else if m.role == Role::Replica {
                "replica"
            } else {
                role_name(m.role)
            };
            let state = match (m.pg_running, m.role, m.streaming) {
                (false, _, _) => "stopped",
                (true, Role::Replica, true) => "streaming",
                _ => "running",
            };
            let mut doc = json!({
                "name": m.name,
                "role": role,
                "state": state,
                "api_url": m.api_url,
                "host": m.pg_host,
                "port": m.pg_port,
                "timeline": m.timeline,
                "tags": m.tags,
                "term": m.term,
            });
            let o = doc.as_object_mut().expect("object");
            if m.role == Role::Replica {
                let pos = m.wal_position();
                let lag = m.lag_bytes.or_else(|| Some(primary_pos?.bytes_ahead_of(pos?)));
                o.insert("lag".into(), json!(lag));
                o.insert("lsn".into(), json!(pos.map(|l| l.to_string())));
                o.insert("receive_lsn".into(), json!(m.receive_lsn.map(|l| l.to_string())));
                o.insert("replay_lsn".into(), json!(m.replay_lsn.map(|l| l.to_string())));
            } else if let Some(l) = m.write_lsn {
                o.insert("lsn".into(), json!(l.to_string()));
            }
            if let Some(id) = &m.instance_id {
                o.insert("instance_id".into(), json!(id));
            }
            if let Some(az) = &m.availability_zone {
                o.insert("availability_zone".into(), json!(az));
            }
            doc
        })
        .collect();
    let mut doc = json!({ "scope": scope, "members": members });
    let o = doc.as_object_mut().expect("object");
    if let Some(r) = record {
        o.insert("term".into(), json!(r.term));
        o.insert("primary".into(), json!(r.primary));
        if r.paused {
            o.insert("pause".into(), json!(true));
        }
        if let Some(t) = &r.transition {
            o.insert("transition".into(), serde_json::to_value(t).unwrap_or(Value::Null));
        }
    }
    if let Some(l) = &view.leader {
        o.insert("leader".into(), json!({ "owner": l.owner, "term": l.term, "released": l.released }));
    }
    doc
}

/// Patroni's `/history`: `[term, lsn, reason, timestamp, new_primary]` per promotion. The first
/// element is the pgdaemon term where Patroni has the timeline.
async fn history(State(st): State<ApiState>) -> Response {
    match st.api.history().await {
        Ok(entries) => (StatusCode::OK, Json(history_document(&entries))).into_response(),
        Err(e) => store_error(e),
    }
}

pub fn history_document(entries: &[HistoryEntry]) -> Value {
    Value::Array(
        entries
            .iter()
            .map(|e| json!([e.term, e.lsn.map(|l| l.0), e.reason, iso8601_utc(e.finished_ms), e.new_primary]))
            .collect(),
    )
}

/// `2019-09-23T16:57:57+00:00` from milliseconds since the epoch (civil-from-days, proleptic
/// Gregorian calendar; no date library needed for one format).
pub fn iso8601_utc(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}+00:00", rem / 3600, rem % 3600 / 60, rem % 60)
}

async fn metrics_text(State(st): State<ApiState>) -> Response {
    let s = st.api.snapshot();
    let body = metrics::render(&s, &st.stats, st.clock.monotonic(), lag_bytes(&s), &st.version);
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lag_units_follow_patroni() {
        assert_eq!(parse_lag("1048576"), Ok(1_048_576));
        assert_eq!(parse_lag("1024kB"), Ok(1_048_576));
        assert_eq!(parse_lag("10MB"), Ok(10 << 20));
        assert_eq!(parse_lag("1GB"), Ok(1 << 30));
        assert_eq!(parse_lag("1TB"), Ok(1 << 40));
        assert_eq!(parse_lag("16 kB"), Ok(16 << 10));
        assert_eq!(parse_lag("1.5MB"), Ok(3 << 19));
        assert_eq!(parse_lag("0"), Ok(0));
        for bad in ["", "kB", "10mb", "10KB", "-5", "1.2.3", "ten", "99999999999999999999", "20000000TB"] {
            assert!(parse_lag(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn timestamps_are_iso8601() {
        assert_eq!(iso8601_utc(0), "1970-01-01T00:00:00+00:00");
        assert_eq!(iso8601_utc(1_569_257_877_000), "2019-09-23T16:57:57+00:00");
        assert_eq!(iso8601_utc(951_782_400_000), "2000-02-29T00:00:00+00:00");
    }
}
