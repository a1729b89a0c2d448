//! The agent process: builds the parts once, then loops [`AgentRuntime::tick`] every probe
//! interval while serving the HTTP API, until a shutdown signal.
//!
//! Clean shutdown (SIGTERM/SIGINT), chosen to match Patroni: a primary first stops accepting
//! writes (the same verified demotion the coordinator's fencer uses), then one last loop releases
//! the leader lease and publishes a heartbeat, so the coordinator can promote a replica at once
//! instead of waiting out the lease. The order matters: releasing first would let a successor be
//! promoted while this Postgres still takes writes. A replica leaves its Postgres running (it
//! serves reads and cannot diverge); the next agent start adopts it. A shutdown never interrupts
//! a loop in progress: it is observed between loops.
//!
//! With the cluster paused ("hands off", Patroni's pause), a clean shutdown leaves a primary
//! running and its lease in place: the next agent start re-takes its own lease and the primary
//! carries on, with no failover and no write error. While no agent runs, the node is what an
//! agent crash leaves (Postgres up, nobody renewing): a failover after `resume` fences it first
//! (S3), and without fencing only a watchdog protects it, as after a crash (docs/operations.md).
//!
//! Besides its ticker the loop runs at once when woken ([`crate::wake::LoopWake`]: `POST /wake`,
//! or the coordinator hosted on this node): an ordinary loop, only earlier, never overlapping
//! the running one and at most one per [`crate::wake::MIN_WAKE_GAP`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use pgdaemon_core::agent::{
    AgentHandle, AgentIdentity, AgentRuntime, AgentSnapshot, BootstrapPolicy, CoordinatorTrigger, DemoteError, FailsafeReply,
    FailsafeRequest, MaintenanceError, TickReport,
};
use pgdaemon_core::pg::PgControl;
use pgdaemon_core::{Clock, ClusterView, HistoryEntry, Lsn, Role, Store, StoreError, SystemClock};
use pgdaemon_dcs::probe::TcpProbe;
use tokio::time::MissedTickBehavior;

use crate::api_security::{ApiSecurity, ServerLimits};
use crate::config::AgentConfig;
use crate::http::{AgentApi, ApiState};
use crate::identity::Identity;
use crate::metrics::LoopStats;
use crate::postgres::{LocalPostgres, PeerAuth, PgSettings};
use crate::secrets::Secret;
use crate::wake::{LoopWake, MIN_WAKE_GAP};
use crate::watchdog::{Watchdog, WatchdogConfig, WatchdogMode};

/// The agent version written into heartbeats and the API.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long `POST /restart` with `primary_in_place` waits for the loop to start the primary again.
const IN_PLACE_RESTART_WAIT: Duration = Duration::from_secs(120);

/// How long the final loop of a clean shutdown may take (store calls are bounded anyway).
const FINAL_TICK_TIMEOUT: Duration = Duration::from_secs(10);

/// [`AgentApi`] over a running agent: the runtime's handle plus the store for `/cluster` and
/// `/history`, and the loop's wake for `POST /wake`.
pub struct LiveApi {
    pub handle: AgentHandle,
    pub store: Arc<dyn Store>,
    pub cluster: String,
    pub wake: LoopWake,
    pub backups: Option<Arc<crate::backups::Backups>>,
}

#[async_trait]
impl AgentApi for LiveApi {
    fn snapshot(&self) -> AgentSnapshot {
        self.handle.snapshot()
    }

    fn backups(&self) -> Option<Arc<crate::backups::Backups>> {
        self.backups.clone()
    }

    async fn demote(&self, term: u64, reason: &str) -> Result<(), DemoteError> {
        self.handle.demote_now(term, reason).await
    }

    async fn demote_with_position(&self, term: u64, reason: &str) -> Result<Option<Lsn>, DemoteError> {
        self.handle.demote_now_with_position(term, reason).await
    }

    async fn cluster_view(&self) -> Result<ClusterView, StoreError> {
        self.store.read_view(&self.cluster).await
    }

    async fn history(&self) -> Result<Vec<HistoryEntry>, StoreError> {
        self.store.read_history(&self.cluster).await
    }

    async fn current_term(&self) -> Result<u64, StoreError> {
        Ok(self.store.read_cluster(&self.cluster).await?.map_or(0, |c| c.term))
    }

    fn failsafe(&self, req: &FailsafeRequest) -> FailsafeReply {
        self.handle.failsafe_ack(req)
    }

    fn wake(&self) {
        self.wake.wake()
    }

    async fn restart(&self, primary: bool) -> Result<(), MaintenanceError> {
        if !primary {
            return self.handle.restart_replica().await;
        }
        self.handle.restart_primary_in_place().await?;
        // The loop starts it again (under its lease, as after a crash of Postgres alone): now,
        // not at its next tick. Done once a loop that began after the stop saw it primary.
        self.wake.wake();
        let after = self.handle.snapshot().counters.ticks + 1;
        let deadline = tokio::time::Instant::now() + IN_PLACE_RESTART_WAIT;
        loop {
            let s = self.handle.snapshot();
            if s.counters.ticks > after && s.pg_running && s.role == Role::Primary {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(MaintenanceError::Pg(pgdaemon_core::pg::PgError::NotVerified(format!(
                    "not primary again {} s after the stop ({})",
                    IN_PLACE_RESTART_WAIT.as_secs(),
                    s.last_reason
                ))));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn reload(&self) -> Result<(), MaintenanceError> {
        self.handle.reload().await
    }

    async fn reinit(&self) -> Result<(), MaintenanceError> {
        self.handle.reinit().await
    }

    async fn drop_member_slot(&self, member: &str) -> Result<(), MaintenanceError> {
        self.handle.drop_member_slot(member).await
    }
}

/// What the loop did, returned when it stops.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub ticks: u64,
    /// A primary was demoted and its lease handed back on the way out.
    pub demoted_on_exit: bool,
}

/// The member identity the runtime publishes, from the configuration and the resolved host identity.
pub fn agent_identity(cfg: &AgentConfig, host: &Identity) -> AgentIdentity {
    AgentIdentity {
        cluster: cfg.cluster.clone(),
        member: cfg.node.name.clone(),
        pg_host: cfg.node.pg_host.clone(),
        pg_port: cfg.advertised_pg_port(),
        api_url: cfg.advertised_api_url(),
        instance_id: host.instance_id.clone(),
        availability_zone: host.availability_zone.clone(),
        tags: cfg.node.tags.clone(),
        agent_version: VERSION.to_string(),
    }
}

/// Runs the loop and the HTTP API on `listener` until `shutdown` resolves, then shuts down cleanly
/// (see the module docs). Generic over the runtime's parts so tests and the bench drive it with
/// any store, Postgres and clock.
pub async fn run<S, P, C>(
    runtime: AgentRuntime<S, P, C>,
    store: Arc<dyn Store>,
    clock: C,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<RunSummary>
where
    S: Store,
    P: PgControl + 'static,
    C: Clock + Clone + 'static,
{
    let off = Watchdog::new(WatchdogConfig::default());
    run_with_watchdog(runtime, store, clock, listener, shutdown, off).await
}

/// [`run`] with a hardware watchdog (see [`crate::watchdog`]): armed and petted by the lease
/// watchdog task while the lease (or failsafe) is valid, disarmed otherwise and on the way out.
pub async fn run_with_watchdog<S, P, C>(
    runtime: AgentRuntime<S, P, C>,
    store: Arc<dyn Store>,
    clock: C,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
    device: Watchdog,
) -> anyhow::Result<RunSummary>
where
    S: Store,
    P: PgControl + 'static,
    C: Clock + Clone + 'static,
{
    // Library callers (tests, the bench) that bind their own loopback listener get the API
    // without access control, as before; the agent process passes `[api]` (see `start`).
    let (security, limits) = (ApiSecurity::insecure(), ServerLimits::default());
    run_with_api(runtime, store, clock, listener, shutdown, device, security, limits, LoopWake::new(), None).await
}

/// [`run_with_watchdog`] with the API's access control and limits (`[api]`), and the loop's
/// `wake` (shared with a coordinator hosted on this node; `POST /wake` uses it too). The failsafe
/// peer requests this node sends carry the same credentials it requires.
#[allow(clippy::too_many_arguments)]
pub async fn run_with_api<S, P, C>(
    mut runtime: AgentRuntime<S, P, C>,
    store: Arc<dyn Store>,
    clock: C,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()>,
    device: Watchdog,
    security: ApiSecurity,
    limits: ServerLimits,
    wake: LoopWake,
    backups: Option<Arc<crate::backups::Backups>>,
) -> anyhow::Result<RunSummary>
where
    S: Store,
    P: PgControl + 'static,
    C: Clock + Clone + 'static,
{
    let peer_auth = security.client_authorization();
    // Peers' `https://` APIs verified against `[api] tls_ca_file`, this node's certificate for mTLS.
    let peer_tls = security.client_tls();
    let handle = runtime.handle();
    let stats = Arc::new(LoopStats::new(clock.monotonic()));
    let cluster = handle.snapshot().cluster;
    let state = ApiState {
        api: Arc::new(LiveApi { handle: handle.clone(), store: store.clone(), cluster, wake: wake.clone(), backups }),
        clock: Arc::new(clock.clone()),
        stats: stats.clone(),
        version: VERSION.to_string(),
    };
    let addr = listener.local_addr().context("listener address")?;
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    // Background tasks, supervised (crate::supervise). The API server and the lease watchdog
    // are watched: if either ends before the shutdown, the agent shuts down as on SIGTERM (a
    // primary is demoted before its lease is released) and then exits with an error, so systemd
    // restarts it. The watchdog is restarted by no one on purpose: it is the S2 backstop for a
    // loop that does not come back, and a panic in it is a bug likely to repeat, so carrying on
    // as primary (even after a restart) could mean carrying on unwatched; the clean way down
    // demotes first and leaves the lease to the next agent start (S7 applies to it). Without
    // its API a node cannot be fenced over HTTP nor acknowledge failsafe peers, and its
    // listener cannot be rebound from here, so that way down is the only one for it too.
    let mut server = Box::pin(crate::supervise::watch("HTTP API server", async move {
        let stopped = async move {
            let _ = http_stopped.await;
        };
        if let Err(e) = crate::http::serve_with(listener, state, security, limits, stopped).await {
            tracing::warn!(error = %e, "HTTP server stopped with an error");
        }
    }));
    tracing::info!(%addr, "HTTP API listening");
    let mut watchdog = Box::pin(crate::supervise::watch("lease watchdog", lease_watchdog(handle.clone(), device)));
    // Failsafe rounds (they do nothing unless `failsafe_mode` is on and the lease is overdue).
    // Restarted when it dies: without it no acknowledgements are asked for and the lease
    // deadline applies (the safe side), only the availability failsafe mode adds is missing.
    let failsafe = {
        let handle = handle.clone();
        let peers: Arc<dyn pgdaemon_core::agent::FailsafePeers> =
            Arc::new(crate::failsafe::HttpPeers::new().with_authorization(peer_auth).with_tls(peer_tls));
        tokio::spawn(async move {
            crate::supervise::restarting("failsafe", crate::supervise::RESTART_BACKOFF, || {
                Some(crate::failsafe::failsafe_task(handle.clone(), peers.clone()))
            })
            .await
        })
    };

    // Keeps the heartbeat and the progress going while the loop runs a long basebackup or
    // rewind of its own (AgentHandle::keep_alive). Restarted when it dies: without it such a
    // member only looks down until the operation ends.
    let keeper = {
        let (handle, store, stats, clock) = (handle.clone(), store.clone(), stats.clone(), clock.clone());
        tokio::spawn(async move {
            crate::supervise::restarting("heartbeat keeper", crate::supervise::RESTART_BACKOFF, || {
                let (handle, store, stats, clock) = (handle.clone(), store.clone(), stats.clone(), clock.clone());
                Some(async move {
                    loop {
                        let every = pgdaemon_core::agent::heartbeat_period(&handle.snapshot().config);
                        tokio::time::sleep(every).await;
                        let busy = stats.idle_for(clock.monotonic());
                        if let Err(e) = handle.keep_alive(store.as_ref(), busy).await {
                            tracing::warn!(error = %e, "publishing the heartbeat during a long operation");
                        }
                    }
                })
            })
            .await
        })
    };
    let mut period = runtime.interval();
    let mut ticker = new_interval(period);
    let mut last_reason = String::new();
    let mut died = None;
    let mut server_ended = false;
    // When the last loop started, and when a woken loop is due (rate-limited from that start).
    let mut last_start = tokio::time::Instant::now();
    let mut woken_at: Option<tokio::time::Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let due = woken_at.unwrap_or_else(|| tokio::time::Instant::now() + period);
        tokio::select! {
            // `biased`: a pending shutdown wins over a due tick, and so does a dead task.
            biased;
            _ = &mut shutdown => break,
            d = &mut watchdog => {
                died = Some(d);
                break;
            }
            d = &mut server => {
                died = Some(d);
                server_ended = true;
                break;
            }
            _ = ticker.tick() => {}
            // A wake (a permit is kept while a loop runs) schedules one early loop.
            _ = wake.woken(), if woken_at.is_none() => {
                // The woken loop also publishes the heartbeat (a coordinator waits for it).
                runtime.handle().woken();
                woken_at = Some(tokio::time::Instant::now().max(last_start + MIN_WAKE_GAP));
                continue;
            }
            _ = tokio::time::sleep_until(due), if woken_at.is_some() => {
                tracing::debug!("woken: running the loop now");
                // The regular cadence goes on from this loop.
                ticker.reset();
            }
        }
        // A scheduled or a woken loop: either satisfies a pending wake. The tick itself is never
        // raced against the shutdown: a role change runs to its end.
        woken_at = None;
        last_start = tokio::time::Instant::now();
        let report = runtime.tick().await;
        stats.record_tick(clock.monotonic(), report.duration);
        log_report(&report, &mut last_reason);
        if runtime.interval() != period {
            period = runtime.interval();
            tracing::info!(probe_interval_ms = period.as_millis() as u64, "probe interval changed");
            ticker = new_interval(period);
        }
    }

    match &died {
        Some(d) => tracing::error!(error = %d, "shutting down: a task the agent cannot run without died"),
        None => tracing::info!("shutting down"),
    }
    // Dropping a watched task's future stops it.
    drop(watchdog);
    failsafe.abort();
    keeper.abort();
    let mut summary = RunSummary { ticks: stats.ticks(), demoted_on_exit: false };
    let snap = handle.snapshot();
    let paused = snap.last_view.as_ref().and_then(|v| v.cluster.as_ref()).is_some_and(|c| c.paused);
    if paused && died.is_none() && (snap.holds_lease || snap.role == Role::Primary) {
        tracing::warn!(
            "cluster paused: leaving Postgres running as primary and the leader lease in place; \
             the next agent start re-takes the lease"
        );
    } else if snap.holds_lease || snap.role == Role::Primary {
        let term = snap.lease_term.unwrap_or(snap.term);
        match handle.demote_now(term, "agent shutting down").await {
            Ok(()) => {
                // This loop sees the fence and releases the lease (and publishes the heartbeat).
                match tokio::time::timeout(FINAL_TICK_TIMEOUT, runtime.tick()).await {
                    Ok(report) => log_report(&report, &mut last_reason),
                    Err(_) => tracing::warn!("final loop timed out; the lease will expire instead of being released"),
                }
                summary.demoted_on_exit = true;
            }
            // Still writable: keep the lease rather than hand it over while writes are accepted;
            // it expires on its own and the coordinator fences this node.
            Err(e) => {
                tracing::error!(error = %e, "demotion on shutdown failed; leaving the lease to expire")
            }
        }
    }
    let _ = stop_http.send(());
    if !server_ended {
        // A server stopped by the shutdown "returned"; only a panic on the way out is news.
        if let Ok(d) = tokio::time::timeout(Duration::from_secs(5), server).await {
            if d.panicked() {
                tracing::warn!(error = %d, "HTTP server task failed");
            }
        }
    }
    summary.ticks = stats.ticks();
    tracing::info!(ticks = summary.ticks, demoted = summary.demoted_on_exit, "stopped");
    match died {
        Some(d) => Err(anyhow::Error::new(d).context("agent stopped")),
        None => Ok(summary),
    }
}

/// How often the lease watchdog checks the held lease's deadline.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(200);

/// S2 for a loop that does not come back (a store call hanging beyond the lease): a tick can only
/// check its lease when it runs, so this task demotes a primary whose lease deadline has passed.
/// Also drives the hardware watchdog: petted only while the lease (or failsafe) is valid, so a
/// hung process stops the pets; dropped (magic close) when the task is aborted at shutdown.
async fn lease_watchdog(handle: AgentHandle, mut device: Watchdog) {
    let mut every = new_interval(WATCHDOG_PERIOD);
    loop {
        every.tick().await;
        match handle.enforce_lease_deadline().await {
            Ok(true) => tracing::warn!("lease deadline passed while the loop was stuck: demoted"),
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "lease watchdog could not demote"),
        }
        let margin = handle.snapshot().config.safety_margin();
        if let Err(e) = device.update(handle.lease_valid_for(), margin) {
            tracing::error!(error = %e, "hardware watchdog");
        }
    }
}

fn new_interval(period: Duration) -> tokio::time::Interval {
    let mut t = tokio::time::interval(period);
    // After a slow loop (a basebackup, a stalled store), wait a full period instead of bursting.
    t.set_missed_tick_behavior(MissedTickBehavior::Delay);
    t
}

/// One line per loop that did something (or whose reason changed); quiet loops log at debug.
fn log_report(report: &TickReport, last_reason: &mut String) {
    let done = report.done();
    let routine = done.iter().all(|a| matches!(*a, "publish_heartbeat" | "renew_lease"));
    let failed: Vec<String> =
        report.outcomes.iter().filter_map(|o| o.error.as_ref().map(|e| format!("{}: {e}", o.action.name()))).collect();
    let ms = report.duration.as_millis() as u64;
    if !failed.is_empty() || !report.errors.is_empty() {
        tracing::warn!(reason = %report.reason, actions = ?done, failed = ?failed, errors = ?report.errors, loop_ms = ms, "loop");
    } else if !routine || report.reason != *last_reason {
        tracing::info!(reason = %report.reason, actions = ?done, loop_ms = ms, "loop");
    } else {
        tracing::debug!(reason = %report.reason, loop_ms = ms, "loop");
    }
    last_reason.clone_from(&report.reason);
}

/// Resolves when the process gets SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the agent");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
    }
}

/// The agent-hosted coordinator hook (`[coordinator] enabled = true`): the one call site that
/// starts it. Returns the trigger the runtime uses for fast-path runs (a local channel to the
/// hosted coordinator), `None` when disabled.
/// `authorization`: what the hosted coordinator's `http` fencer and waker send (this node's
/// `[api]` credentials, read once at start); `wake`: this node's loop, which the hosted
/// coordinator wakes directly.
pub async fn start_coordinator(
    cfg: &AgentConfig,
    store: Arc<dyn Store>,
    events: Option<Arc<dyn pgdaemon_core::events::EventEmitter>>,
    authorization: Option<reqwest::header::HeaderValue>,
    wake: LoopWake,
) -> anyhow::Result<Option<Arc<dyn CoordinatorTrigger>>> {
    // Hosted coordinator (`enabled`), Lambda fast path (`lambda_function`), or nothing.
    crate::coordinator_mode::start_from_hook(cfg, store, events, authorization, wake).await
}

/// The passwords for connections to peers, read once at start.
#[derive(Debug, Default)]
pub struct PeerSecrets {
    pub replication: Option<Secret>,
    pub rewind: Option<Secret>,
}

/// Builds this node's Postgres control from the configuration.
pub fn build_pg(cfg: &AgentConfig, secrets: PeerSecrets) -> LocalPostgres {
    let pg = &cfg.postgres;
    let mut s = PgSettings::new(cfg.node.name.clone(), pg.data_dir.clone(), pg.port);
    s.bin_dir = pg.bin_dir.clone();
    s.connect_host = pg.connect_host.clone();
    s.superuser = pg.superuser.clone();
    s.database = pg.database.clone();
    s.peers = PeerAuth {
        replication_user: pg.replication_user.clone(),
        replication_password: secrets.replication,
        rewind_user: pg.rewind_user.clone(),
        rewind_password: secrets.rewind,
        tls: pg.tls.clone(),
        passfile: pg.passfile.clone(),
    };
    s.bootstrap = cfg.bootstrap.clone();
    if let Some(user) = &pg.run_as {
        s.run_as = Some(user.clone());
    }
    s.log_file = pg.log_file.clone();
    s.server_options = pg.parameters.iter().map(|(k, v)| (k.clone(), v.to_string())).collect();
    s.archive = cfg.archive.clone().map(|config| crate::postgres::Barman { config, cluster: cfg.cluster.clone() });
    s.server_options.extend(s.archive.iter().flat_map(|b| b.server_options()));
    LocalPostgres::new(s)
}

/// Everything `main` does after parsing arguments and installing logging: resolve identity, read
/// the replication password, connect the store, build the runtime, start the hosted coordinator
/// if enabled, bind the API, and run until a signal.
pub async fn start(cfg: AgentConfig) -> anyhow::Result<RunSummary> {
    let (host, imds_error) = crate::identity::resolve(&cfg.node, crate::identity::IMDS_TIMEOUT).await;
    if let Some(e) = imds_error {
        tracing::warn!(error = %e, "no EC2 identity from IMDS (set node.instance_id/availability_zone on non-EC2 hosts)");
    }
    tracing::info!(instance_id = ?host.instance_id, availability_zone = ?host.availability_zone, "host identity");
    let secrets = PeerSecrets {
        replication: cfg.postgres.replication_password().await.context("replication password")?,
        rewind: cfg.postgres.rewind_password().await.context("rewind password")?,
    };
    // The API's access control, before anything binds or connects: a loose or missing secret
    // file, an unreadable token parameter, or an unauthenticated API on a non-loopback address
    // stops the start here. Read once: the server, the failsafe requests and the hosted
    // coordinator's http fencer all use these credentials.
    let listen = cfg.node.listen_addr()?;
    cfg.api.check_listen(listen).map_err(|e| anyhow::anyhow!("config: {e}"))?;
    let security = ApiSecurity::load(&cfg.api).await.context("[api] credentials")?;
    if cfg.api.insecure {
        tracing::warn!(%listen, "[api] insecure = true: /demote and /failsafe accept unauthenticated requests");
    } else if !security.has_credentials() {
        tracing::warn!(%listen, "no [api] credentials: /demote and /failsafe are refused (HTTP fencing of this node and failsafe acknowledgements will fail)");
    }
    let store = pgdaemon_dcs::connect(&cfg.store).await.context("store")?;
    let pg = build_pg(&cfg, secrets);
    let archive_pg = pg.clone();
    // The passfile before anything connects to a peer: a path it cannot be written to stops the
    // start here rather than at the first failover.
    pg.ensure_passfile().context("[postgres] passfile")?;
    let clock = SystemClock::new();
    let mut runtime = AgentRuntime::new(store.clone(), pg, clock.clone(), agent_identity(&cfg, &host), cfg.dynamic.clone())
        .with_departed_slot_retention(cfg.postgres.departed_slot_retention().unwrap_or(Duration::MAX))
        .with_bootstrap(BootstrapPolicy { enabled: cfg.bootstrap.enabled, lock: Duration::from_secs(cfg.bootstrap.lock_s) });
    // Events (store log, webhook, command hook) from the loop and the hosted coordinator.
    let events = cfg.events.start(Some(store.clone())).context("events")?;
    tracing::info!(sinks = ?events.sink_names(), "event sinks");
    runtime = runtime.with_events(events.clone());
    // The loop's wake: `POST /wake`, and the hosted coordinator directly.
    let wake = LoopWake::new();
    let authorization = security.client_authorization();
    if let Some(trigger) = start_coordinator(&cfg, store.clone(), Some(events.clone()), authorization, wake.clone()).await? {
        // A replica that finds the primary's agent port refusing connections asks at once.
        runtime = runtime.with_trigger(trigger).with_agent_probe(Arc::new(TcpProbe::default()));
    }
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    tracing::info!(cluster = %cfg.cluster, member = %cfg.node.name, store = store.backend(), version = VERSION, "agent starting");
    let mut device = Watchdog::new(cfg.watchdog.clone());
    if cfg.watchdog.mode == WatchdogMode::Required {
        let d = &cfg.dynamic;
        device.check(d.lease().saturating_sub(d.safety_margin())).context("watchdog mode is required")?;
    }
    let limits = cfg.api.limits();
    let mut backup_peers = pgdaemon_dcs::agent_client::AgentClient::new(Duration::from_secs(1), Some(Duration::from_secs(10)))
        .with_authorization(security.client_authorization());
    if let Some(tls) = security.client_tls() {
        backup_peers = backup_peers.with_tls_config(tls);
    }
    // Backups and the archive watch ([archive]), restarted when the task dies.
    let backups = cfg.archive.as_ref().map(|archive| {
        Arc::new(crate::backups::Backups::new(
            archive_pg,
            store.clone(),
            runtime.handle(),
            events.clone(),
            Arc::new(clock.clone()),
            cfg.cluster.clone(),
            cfg.node.name.clone(),
            cfg.dynamic.clone(),
            Duration::from_secs(archive.check_interval_s),
            backup_peers.clone(),
        ))
    });
    if let Some(b) = backups.clone() {
        tokio::spawn(crate::supervise::restarting("backups", crate::supervise::RESTART_BACKOFF, move || Some(b.clone().run())));
    }
    let summary = run_with_api(runtime, store, clock, listener, shutdown_signal(), device, security, limits, wake, backups).await;
    // The last events (a demotion on the way out) get a few seconds to reach their sinks.
    if !events.flush(EVENTS_FLUSH_TIMEOUT).await {
        tracing::warn!(stats = ?events.stats(), "events still undelivered at exit");
    }
    summary
}

/// How long a stopping agent waits for queued events.
const EVENTS_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
