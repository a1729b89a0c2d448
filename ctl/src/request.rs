//! Manual requests (switchover, failover, pause, resume) through the cluster record: pgdctl
//! writes a [`ManualRequest`] by compare-and-set, the coordinator answers in `last_request` with
//! the same id, and for a change of primary pgdctl then waits until the new primary is in place.

use std::io::Write;
use std::time::{Duration, Instant};

use pgdaemon_core::request::{Check, SubmitError};
use pgdaemon_core::{ClusterRecord, ClusterView, ManualRequest, RequestAction, RequestOutcome, Store, StoreError};

use crate::table::now_ms;
use crate::CtlError;

/// How often the record is read while waiting.
const POLL: Duration = Duration::from_millis(200);
/// Compare-and-set attempts against concurrent writers (agents never write the record, so a
/// conflict is the coordinator or another operator; a few retries always suffice).
const CAS_ATTEMPTS: usize = 8;

/// pgdctl's own checks before writing a request: the answers the coordinator would give anyway,
/// given at once and without needing a running coordinator. `Err` is the refusal's reason.
pub fn precheck(view: &ClusterView, action: RequestAction, candidate: Option<&str>) -> Result<(), String> {
    let Some(record) = view.cluster.as_ref() else {
        return Err("the cluster has no record yet: it was never bootstrapped (start its agents first)".into());
    };
    if let Some(q) = &record.request {
        return Err(format!(
            "another request is pending ({} {}, id {}); wait for the coordinator to answer it",
            q.action,
            q.candidate.as_deref().unwrap_or(""),
            q.id
        ));
    }
    if matches!(action, RequestAction::Pause | RequestAction::Resume) {
        return Ok(());
    }
    if record.paused {
        return Err("the cluster is paused: resume it first (pgdctl resume)".into());
    }
    if let Some(t) = &record.transition {
        return Err(format!("a {} to {} (term {}) is already in progress", t.kind, t.candidate, t.term));
    }
    if action == RequestAction::Switchover && record.primary.is_none() {
        return Err("switchover needs a running primary and none is designated; use failover".into());
    }
    if let Some(c) = candidate {
        if record.primary.as_deref() == Some(c) {
            return Err(format!("{c} is already the primary"));
        }
        if !view.members.contains_key(c) {
            let known: Vec<&str> = view.members.keys().map(String::as_str).collect();
            return Err(format!("{c} is not a member of the cluster (members: {})", known.join(", ")));
        }
    }
    Ok(())
}

/// Writes the request by compare-and-set ([`pgdaemon_core::request::submit`]), with
/// [`precheck`] on every fresh read. Returns the record as written.
pub async fn submit(store: &dyn Store, cluster: &str, request: &ManualRequest) -> Result<ClusterRecord, CtlError> {
    let check = |view: &ClusterView| precheck(view, request.action, request.candidate.as_deref());
    pgdaemon_core::request::submit(store, cluster, request, Check::View(&check), CAS_ATTEMPTS).await.map_err(|e| match e {
        SubmitError::Store(e) => e.into(),
        // `precheck` refuses a missing record and a waiting request first, in its own words.
        e => CtlError::Refused(e.to_string()),
    })
}

/// Waits for the coordinator's answer to request `id`. On timeout the request is withdrawn (if
/// still pending) so that a forgotten failover never fires later by surprise.
pub async fn wait_answer(store: &dyn Store, cluster: &str, id: &str, timeout: Duration) -> Result<RequestOutcome, CtlError> {
    let deadline = Instant::now() + timeout;
    loop {
        let record =
            store.read_cluster(cluster).await?.ok_or_else(|| CtlError::Refused("the cluster record disappeared".into()))?;
        if let Some(o) = record.last_request.as_ref().filter(|o| o.id == id) {
            return Ok(o.clone());
        }
        if record.request.as_ref().is_none_or(|q| q.id != id) {
            return Err(CtlError::Refused(format!("request {id} was removed without an answer (by another operator?)")));
        }
        if Instant::now() >= deadline {
            return withdraw(store, cluster, id, timeout).await;
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn withdraw(store: &dyn Store, cluster: &str, id: &str, timeout: Duration) -> Result<RequestOutcome, CtlError> {
    for _ in 0..CAS_ATTEMPTS {
        let Some(mut record) = store.read_cluster(cluster).await? else {
            break;
        };
        if let Some(o) = record.last_request.as_ref().filter(|o| o.id == id) {
            // Answered while we gave up: the answer counts.
            return Ok(o.clone());
        }
        if record.request.as_ref().is_none_or(|q| q.id != id) {
            break;
        }
        let version = record.version;
        record.request = None;
        match store.write_cluster(cluster, Some(version), &record).await {
            Ok(_) => {
                return Err(CtlError::Timeout(format!(
                    "no coordinator answered within {:.0}s; the request was withdrawn. Is a coordinator running \
                     (an agent with [coordinator] enabled = true, or the Lambda: use `pgdctl invoke`)?",
                    timeout.as_secs_f64()
                )))
            }
            Err(StoreError::Conflict { .. }) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(CtlError::Timeout(format!("no answer to request {id} within {:.0}s", timeout.as_secs_f64())))
}

/// After an accepted switchover/failover: waits until the transition it started has finished.
/// Returns the new primary and the term.
pub async fn wait_transition(store: &dyn Store, cluster: &str, deadline: Instant) -> Result<(String, u64), CtlError> {
    let mut target_term: Option<u64> = None;
    let mut last_step = None;
    loop {
        let record =
            store.read_cluster(cluster).await?.ok_or_else(|| CtlError::Refused("the cluster record disappeared".into()))?;
        match &record.transition {
            Some(t) if target_term.is_none_or(|term| term == t.term) => {
                target_term = Some(t.term);
                if last_step != Some(t.step) {
                    tracing::info!(step = ?t.step, candidate = %t.candidate, "transition progress");
                    last_step = Some(t.step);
                }
            }
            Some(t) => {
                return Err(CtlError::Refused(format!(
                    "the change of term {} was superseded by another transition (term {}: {})",
                    target_term.unwrap_or(0),
                    t.term,
                    t.reason
                )))
            }
            None => {
                if let Some(p) = &record.primary {
                    return Ok((p.clone(), record.term));
                }
            }
        }
        if Instant::now() >= deadline {
            let where_ = record
                .transition
                .as_ref()
                .map_or("no primary designated yet".to_string(), |t| format!("at step {:?} towards {}", t.step, t.candidate));
            return Err(CtlError::Timeout(format!(
                "the change of primary started but has not finished ({where_}); watch it with `pgdctl list --watch`"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The whole command: check, write, wait for the answer, and for a change of primary wait for it.
pub async fn act(
    store: &dyn Store,
    cluster: &str,
    action: RequestAction,
    candidate: Option<String>,
    force: bool,
    timeout: Duration,
    out: &mut impl Write,
) -> Result<(), CtlError> {
    if let Some(c) = &candidate {
        pgdaemon_core::keys::validate_member_name(c).map_err(CtlError::Usage)?;
    }
    let started = Instant::now();
    let deadline = started + timeout;
    let request = ManualRequest { id: uuid::Uuid::new_v4().to_string(), action, candidate, force, requested_ms: now_ms() };
    submit(store, cluster, &request).await?;
    let outcome = wait_answer(store, cluster, &request.id, timeout).await?;
    let verb = action.to_string();
    if !outcome.accepted {
        return Err(CtlError::Refused(format!("{verb}: {}", outcome.reason)));
    }
    writeln!(out, "{verb} accepted: {}", outcome.reason)?;
    if matches!(action, RequestAction::Failover | RequestAction::Switchover) {
        let (primary, term) = wait_transition(store, cluster, deadline).await?;
        writeln!(out, "ok: {verb} done: {primary} is the primary in term {term} ({:.1}s)", started.elapsed().as_secs_f64())?;
    } else {
        writeln!(out, "ok: {verb}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdaemon_core::{DynamicConfig, MemberStatus, MemoryStore};

    fn view(paused: bool) -> ClusterView {
        let mut r = ClusterRecord::bootstrap("a", DynamicConfig::default());
        r.paused = paused;
        let mut v = ClusterView { cluster: Some(r), ..Default::default() };
        for n in ["a", "b"] {
            v.members.insert(n.into(), MemberStatus::new(n));
        }
        v
    }

    #[test]
    fn precheck_refuses_with_reasons() {
        assert!(precheck(&ClusterView::default(), RequestAction::Pause, None).unwrap_err().contains("bootstrapped"));
        assert!(precheck(&view(true), RequestAction::Failover, None).unwrap_err().contains("paused"));
        assert!(precheck(&view(true), RequestAction::Resume, None).is_ok());
        assert!(precheck(&view(false), RequestAction::Switchover, Some("a")).unwrap_err().contains("already the primary"));
        assert!(precheck(&view(false), RequestAction::Switchover, Some("zz")).unwrap_err().contains("not a member"));
        assert!(precheck(&view(false), RequestAction::Switchover, Some("b")).is_ok());
    }

    #[tokio::test]
    async fn unanswered_request_times_out_and_is_withdrawn() {
        let store = MemoryStore::new();
        store.write_cluster("c", None, &ClusterRecord::bootstrap("a", DynamicConfig::default())).await.unwrap();
        let err =
            act(&store, "c", RequestAction::Pause, None, false, Duration::from_millis(300), &mut Vec::new()).await.unwrap_err();
        assert_eq!(err.exit_code(), 4, "{err}");
        let record = store.read_cluster("c").await.unwrap().unwrap();
        assert!(record.request.is_none(), "withdrawn");
        assert!(!record.paused);
    }

    #[tokio::test]
    async fn answered_refusal_exits_1_with_the_reason() {
        let store = std::sync::Arc::new(MemoryStore::new());
        store.write_cluster("c", None, &ClusterRecord::bootstrap("a", DynamicConfig::default())).await.unwrap();
        // A stand-in coordinator: answers whatever request appears with a refusal.
        let s2 = store.clone();
        let answerer = tokio::spawn(async move {
            for _ in 0..100 {
                let mut r = s2.read_cluster("c").await.unwrap().unwrap();
                if let Some(q) = r.request.take() {
                    r.last_request = Some(RequestOutcome {
                        id: q.id,
                        action: q.action,
                        accepted: false,
                        reason: "no eligible candidate: b: stale".into(),
                    });
                    let v = r.version;
                    s2.write_cluster("c", Some(v), &r).await.unwrap();
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let err = act(store.as_ref(), "c", RequestAction::Failover, None, false, Duration::from_secs(5), &mut Vec::new())
            .await
            .unwrap_err();
        answerer.await.unwrap();
        assert_eq!(err.exit_code(), 1);
        assert!(err.to_string().contains("no eligible candidate: b: stale"), "{err}");
    }
}
