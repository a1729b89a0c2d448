//! Fencing: making sure an old primary can no longer accept writes before another member is
//! promoted (S3). Implementations (EC2 StopInstances, SSM RunCommand, the agent's HTTP demote, a
//! local command) live with their clients; this module holds the contract and the ordered chain.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::lsn::Lsn;
use crate::model::{MemberStatus, PendingFence, TransitionKind};

/// The member to fence and everything a fencer may need to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceTarget {
    pub cluster: String,
    pub member: String,
    /// The new term: the fenced member must not act as primary in any term below it.
    pub term: u64,
    pub kind: TransitionKind,
    pub reason: String,
    #[serde(default)]
    pub instance_id: Option<String>,
    /// The member's agent API base URL (may be empty).
    #[serde(default)]
    pub api_url: String,
    #[serde(default)]
    pub pg_host: String,
    #[serde(default)]
    pub pg_port: u16,
    /// Fencers this transition has given up on (timed out while pending): a chain skips them.
    #[serde(default)]
    pub skip: Vec<String>,
}

impl FenceTarget {
    /// A target built from the member's last heartbeat (or from its name alone when none exists).
    pub fn new(
        cluster: &str,
        member: &str,
        status: Option<&MemberStatus>,
        term: u64,
        kind: TransitionKind,
        reason: &str,
    ) -> Self {
        FenceTarget {
            cluster: cluster.to_string(),
            member: member.to_string(),
            term,
            kind,
            reason: reason.to_string(),
            instance_id: status.and_then(|s| s.instance_id.clone()),
            api_url: status.map(|s| s.api_url.clone()).unwrap_or_default(),
            pg_host: status.map(|s| s.pg_host.clone()).unwrap_or_default(),
            pg_port: status.map_or(0, |s| s.pg_port),
            skip: Vec::new(),
        }
    }
}

/// An operation a fencer started and has not confirmed yet: which fencer, and that fencer's own
/// handle for it (an SSM command id, an EC2 instance id). Passed back to the same fencer on the
/// next run so it checks that operation instead of starting another.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingHandle {
    /// The fencer's [`Fencer::name`].
    pub fencer: String,
    /// The fencer's own handle, without any prefix.
    pub handle: String,
}

impl PendingHandle {
    pub fn new(fencer: impl Into<String>, handle: impl Into<String>) -> Self {
        PendingHandle { fencer: fencer.into(), handle: handle.into() }
    }

    /// The stored form inside cluster records, which every version reads and writes:
    /// `{"fencer": "ssm", "handle": "ssm:<command-id>"}` (the handle prefixed with the fencer's
    /// name and a colon). Never change it: older coordinators resume from it.
    pub fn to_record(&self) -> PendingFence {
        PendingFence { fencer: self.fencer.clone(), handle: format!("{}:{}", self.fencer, self.handle) }
    }

    /// From the stored form: the prefixed handle every version writes, or (defensively) a bare
    /// handle, which is taken as the named fencer's own.
    pub fn from_record(stored: &PendingFence) -> Self {
        let prefix = format!("{}:", stored.fencer);
        let handle = stored.handle.strip_prefix(&prefix).unwrap_or(&stored.handle);
        PendingHandle::new(stored.fencer.clone(), handle)
    }
}

impl std::fmt::Display for PendingHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.fencer, self.handle)
    }
}

/// A fencer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FenceStatus {
    /// The target can no longer accept writes, confirmed (instance stopped, stop
    /// command succeeded, agent confirmed demotion). `lsn`: the target's last WAL position when
    /// the fencer learnt it (a clean demotion reports it; a stopped instance cannot).
    Confirmed { detail: String, lsn: Option<Lsn> },
    /// Started but not yet confirmed; ask the same fencer again with this `handle` (e.g. an SSM
    /// command id, built with [`PendingHandle::new`] and the fencer's own name).
    Pending { handle: PendingHandle, detail: String },
    /// Tried and failed (API error, command failed, agent unreachable): try the next fencer.
    Failed { detail: String },
    /// Not applicable to this target or not allowed (no instance id, instance not tagged with
    /// the cluster's id): nothing was done.
    Refused { detail: String },
}

impl FenceStatus {
    pub fn is_confirmed(&self) -> bool {
        matches!(self, FenceStatus::Confirmed { .. })
    }
}

/// One way of fencing a member.
///
/// Obligations:
/// - Return `Confirmed` only when the target is confirmed unable to accept writes; anything
///   short of confirmation is `Pending` (will be asked again) or `Failed`.
/// - Idempotent: fencing an already fenced target confirms again; `pending` is the handle of a
///   previous `Pending` answer from this fencer for the same target (its `fencer` is this
///   fencer's name), and the fencer must check that operation rather than start another.
/// - A `Pending` answer carries a [`PendingHandle`] naming this fencer.
/// - Never act on a target it is not allowed to touch (cloud fencers check the instance carries
///   the cluster's tag first) — answer `Refused` instead.
/// - Never sleep for long: wait at most a short bounded time for an API and return `Pending`
///   rather than poll; the coordinator comes back on its next run.
#[async_trait]
pub trait Fencer: Send + Sync {
    /// Stable name used in records, logs and `skip` lists (`ec2`, `ssm`, `http`, `command`).
    fn name(&self) -> &str;

    async fn fence(&self, target: &FenceTarget, pending: Option<&PendingHandle>) -> FenceStatus;
}

#[async_trait]
impl<F: Fencer + ?Sized> Fencer for std::sync::Arc<F> {
    fn name(&self) -> &str {
        (**self).name()
    }
    async fn fence(&self, target: &FenceTarget, pending: Option<&PendingHandle>) -> FenceStatus {
        (**self).fence(target, pending).await
    }
}

#[async_trait]
impl<F: Fencer + ?Sized> Fencer for Box<F> {
    fn name(&self) -> &str {
        (**self).name()
    }
    async fn fence(&self, target: &FenceTarget, pending: Option<&PendingHandle>) -> FenceStatus {
        (**self).fence(target, pending).await
    }
}

/// Fencers tried in a configured order until one confirms; a switchover tries the agent's own
/// demotion ([`GRACEFUL_FENCER`]) first.
///
/// A pending answer names the fencer that gave it, so the next call (with that handle) goes back
/// to the same fencer, and only that fencer sees the handle. Fencers listed in `target.skip` are
/// passed over. An empty chain refuses: "fencing off" is a separate, explicit
/// setting ([`crate::coordinator::FencingPolicy::Off`]), never an empty list.
pub struct FenceChain {
    fencers: Vec<Box<dyn Fencer>>,
}

/// The fencer that asks the old primary's agent to demote (`POST /demote`).
pub const GRACEFUL_FENCER: &str = "http";

impl FenceChain {
    pub fn new(fencers: Vec<Box<dyn Fencer>>) -> Self {
        FenceChain { fencers }
    }

    pub fn names(&self) -> Vec<String> {
        self.fencers.iter().map(|f| f.name().to_string()).collect()
    }

    pub fn is_empty(&self) -> bool {
        self.fencers.is_empty()
    }
}

#[async_trait]
impl Fencer for FenceChain {
    fn name(&self) -> &str {
        "chain"
    }

    async fn fence(&self, target: &FenceTarget, pending: Option<&PendingHandle>) -> FenceStatus {
        if self.fencers.is_empty() {
            return FenceStatus::Refused { detail: "no fencer configured".into() };
        }
        let mut notes = Vec::new();
        // A switchover asks a healthy primary to step down: its agent's demotion answers in
        // moments with the final WAL position the candidate must replay, and leaves the host
        // running. Stopping the instance (the EC2 fencer, often first for failovers) would take
        // the node away for a planned change. Any fencer's confirmation is equally a fence (S3),
        // so the order only changes which proof comes first.
        let mut order: Vec<&Box<dyn Fencer>> = self.fencers.iter().collect();
        if target.kind == TransitionKind::Switchover {
            order.sort_by_key(|f| f.name() != GRACEFUL_FENCER);
        }
        for fencer in order {
            let name = fencer.name();
            if target.skip.iter().any(|s| s == name) {
                notes.push(format!("{name}: skipped (gave up earlier)"));
                continue;
            }
            // Only the fencer that answered "pending" sees its handle: it checks that operation
            // instead of starting another.
            let inner = pending.filter(|p| p.fencer == name);
            match fencer.fence(target, inner).await {
                FenceStatus::Confirmed { detail, lsn } => {
                    return FenceStatus::Confirmed { detail: format!("{name}: {detail}"), lsn };
                }
                FenceStatus::Pending { handle, detail } => {
                    // Named after the fencer in this chain, whatever it put there.
                    let handle = PendingHandle::new(name, handle.handle);
                    return FenceStatus::Pending { handle, detail: format!("{name}: {detail}") };
                }
                FenceStatus::Failed { detail } | FenceStatus::Refused { detail } => notes.push(format!("{name}: {detail}")),
            }
        }
        FenceStatus::Failed { detail: notes.join("; ") }
    }
}

/// The `http` fencer's request, `POST <agent>/demote`: `{"term": 7, "reason": "..."}`. Sent by
/// [`Fencer`]s of every version and read by every agent: the field names never change.
///
/// The agent refuses a body with fields it does not know (400, nothing changed): a demotion is a
/// state-changing command, and a field an older agent cannot honour must not be dropped
/// silently. Adding a field therefore needs agents that know it first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoteRequest {
    /// The new term the coordinator bumped to: the agent refuses the lease for this term and
    /// below. Must be the cluster record's current term.
    pub term: u64,
    #[serde(default)]
    pub reason: String,
}

/// The agent's answer to [`DemoteRequest`] (200, 503 and 409 alike; `error` set unless
/// demoted). Read leniently: unknown fields are ignored, and an informational field of an
/// unexpected type is read as absent, so agents and coordinators of different versions
/// understand each other. Only `demoted`, `term` and `member` are required to confirm anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DemoteReply {
    pub demoted: bool,
    /// The term the request named.
    pub term: u64,
    /// The answering agent's member name.
    pub member: String,
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub fenced_through: Option<u64>,
    /// The stopped server's final WAL position (`1A/3025A70`), when known.
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub lsn: Option<String>,
    /// Read as another name for `lsn` (never written by an agent).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub final_lsn: Option<String>,
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The cluster record's term as the agent knows it (on a 409).
    #[serde(default, deserialize_with = "lenient", skip_serializing_if = "Option::is_none")]
    pub current_term: Option<u64>,
}

impl DemoteReply {
    /// Nothing was demoted: `error` says why.
    pub fn refused(member: String, term: u64, error: String, current_term: Option<u64>) -> Self {
        DemoteReply {
            demoted: false,
            term,
            member,
            role: None,
            fenced_through: None,
            lsn: None,
            final_lsn: None,
            error: Some(error),
            current_term,
        }
    }

    /// Whether this answer confirms that `member` demoted for `term`: `Ok` with the final WAL
    /// position when one parses (`lsn`, else `final_lsn`), or why not. A confirmation about
    /// another member or term (a misrouted request, an address reused by another node)
    /// confirms nothing.
    pub fn confirms(&self, member: &str, term: u64) -> Result<Option<Lsn>, String> {
        if !self.demoted {
            return Err(format!("agent did not confirm the demotion: {}", self.error.as_deref().unwrap_or("no reason given")));
        }
        if self.member != member {
            return Err(format!("the answer names member {:?}, not {member}: not a confirmation", self.member));
        }
        if self.term != term {
            return Err(format!("the answer names term {}, not {term}: not a confirmation", self.term));
        }
        Ok([&self.lsn, &self.final_lsn].into_iter().find_map(|l| l.as_deref()?.parse::<Lsn>().ok()))
    }
}

/// An optional field read as absent when its value has another type than expected.
fn lenient<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value.and_then(|v| serde_json::from_value(v).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Scripted {
        name: &'static str,
        answers: Mutex<Vec<FenceStatus>>,
        calls: Mutex<Vec<Option<String>>>,
    }

    impl Scripted {
        fn new(name: &'static str, answers: Vec<FenceStatus>) -> Self {
            Scripted { name, answers: Mutex::new(answers), calls: Mutex::new(vec![]) }
        }
    }

    #[async_trait]
    impl Fencer for Scripted {
        fn name(&self) -> &str {
            self.name
        }
        async fn fence(&self, _t: &FenceTarget, pending: Option<&PendingHandle>) -> FenceStatus {
            self.calls.lock().unwrap().push(pending.map(|p| p.handle.clone()));
            self.answers.lock().unwrap().remove(0)
        }
    }

    fn target() -> FenceTarget {
        FenceTarget::new("c", "n1", None, 2, TransitionKind::Failover, "test")
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
    }

    #[test]
    fn chain_moves_on_after_failure_and_resumes_the_pending_fencer() {
        let a = std::sync::Arc::new(Scripted::new(
            "a",
            vec![FenceStatus::Failed { detail: "down".into() }, FenceStatus::Refused { detail: "x".into() }],
        ));
        let b = std::sync::Arc::new(Scripted::new(
            "b",
            vec![
                FenceStatus::Pending { handle: PendingHandle::new("b", "h1"), detail: "sent".into() },
                FenceStatus::Confirmed { detail: "ok".into(), lsn: None },
            ],
        ));
        let chain = FenceChain::new(vec![Box::new(a.clone()), Box::new(b.clone())]);
        let first = block_on(chain.fence(&target(), None));
        assert_eq!(first, FenceStatus::Pending { handle: PendingHandle::new("b", "h1"), detail: "b: sent".into() });
        let second = block_on(chain.fence(&target(), Some(&PendingHandle::new("b", "h1"))));
        assert!(second.is_confirmed());
        assert_eq!(*b.calls.lock().unwrap(), vec![None, Some("h1".to_string())]);
        // `a` was asked fresh both times (its handle is never passed to another fencer).
        assert_eq!(*a.calls.lock().unwrap(), vec![None, None]);
    }

    #[test]
    fn a_switchover_asks_the_agent_first_and_a_failover_keeps_the_configured_order() {
        let ok = || FenceStatus::Confirmed { detail: "ok".into(), lsn: None };
        let ec2 = std::sync::Arc::new(Scripted::new("ec2", vec![ok()]));
        let http = std::sync::Arc::new(Scripted::new("http", vec![ok(), ok()]));
        let chain = FenceChain::new(vec![Box::new(ec2.clone()), Box::new(http.clone())]);
        let mut t = target();
        t.kind = TransitionKind::Switchover;
        assert_eq!(block_on(chain.fence(&t, None)), FenceStatus::Confirmed { detail: "http: ok".into(), lsn: None });
        assert!(ec2.calls.lock().unwrap().is_empty(), "the instance is not stopped for a planned switchover");
        assert_eq!(block_on(chain.fence(&target(), None)), FenceStatus::Confirmed { detail: "ec2: ok".into(), lsn: None });
    }

    #[test]
    fn skipped_and_empty_chains_never_confirm() {
        let a = Scripted::new("a", vec![FenceStatus::Confirmed { detail: "ok".into(), lsn: None }]);
        let chain = FenceChain::new(vec![Box::new(a)]);
        let mut t = target();
        t.skip.push("a".into());
        assert!(matches!(block_on(chain.fence(&t, None)), FenceStatus::Failed { .. }));
        let empty = FenceChain::new(vec![]);
        assert!(matches!(block_on(empty.fence(&target(), None)), FenceStatus::Refused { .. }));
    }

    #[test]
    fn pending_handles_keep_their_stored_form() {
        let h = PendingHandle::new("ssm", "0b6e-cmd");
        // The stored form is read by every version: the handle carries the fencer's prefix.
        let stored = h.to_record();
        assert_eq!(
            serde_json::to_string(&stored).unwrap(),
            r#"{"fencer":"ssm","handle":"ssm:0b6e-cmd"}"#,
            "the stored pending fence changed form: older coordinators could not resume it"
        );
        assert_eq!(PendingHandle::from_record(&stored), h);
        // A record written by an older version reads back the same.
        let legacy: PendingFence = serde_json::from_str(r#"{"fencer":"ssm","handle":"ssm:0b6e-cmd"}"#).unwrap();
        assert_eq!(PendingHandle::from_record(&legacy), h);
        // A bare handle is the named fencer's own; a colon after the prefix stays in the handle.
        let bare = PendingFence { fencer: "ec2".into(), handle: "i-0abc".into() };
        assert_eq!(PendingHandle::from_record(&bare), PendingHandle::new("ec2", "i-0abc"));
        let colon = PendingFence { fencer: "x".into(), handle: "x:a:b".into() };
        assert_eq!(PendingHandle::from_record(&colon), PendingHandle::new("x", "a:b"));
        assert_eq!(PendingHandle::from_record(&PendingHandle::new("x", "a:b").to_record()), PendingHandle::new("x", "a:b"));
    }

    #[test]
    fn demote_messages_keep_their_wire_form() {
        let req = DemoteRequest { term: 7, reason: "lease expired".into() };
        assert_eq!(serde_json::to_string(&req).unwrap(), r#"{"term":7,"reason":"lease expired"}"#);
        let old: DemoteRequest = serde_json::from_str(r#"{"reason":"x","term":7}"#).unwrap();
        assert_eq!(old, DemoteRequest { term: 7, reason: "x".into() });
        assert_eq!(serde_json::from_str::<DemoteRequest>(r#"{"term":7}"#).unwrap().reason, "");
        // Replies as agents write them today, with fields this version does not know.
        let ok: DemoteReply = serde_json::from_str(
            r#"{"demoted":true,"term":7,"member":"n1","role":"replica","fenced_through":7,"lsn":"1A/3025A70","extra":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(ok.confirms("n1", 7), Ok(Some(Lsn(0x1A_0302_5A70))));
        assert_eq!(ok.role.as_deref(), Some("replica"));
        assert_eq!(ok.fenced_through, Some(7));
        let written = DemoteReply { fenced_through: Some(7), role: Some("replica".into()), lsn: ok.lsn.clone(), ..ok.clone() };
        assert_eq!(
            serde_json::to_string(&written).unwrap(),
            r#"{"demoted":true,"term":7,"member":"n1","role":"replica","fenced_through":7,"lsn":"1A/3025A70"}"#
        );
        let refused: DemoteReply =
            serde_json::from_str(r#"{"demoted":false,"term":4,"member":"n1","error":"term 4 is stale","current_term":5}"#)
                .unwrap();
        assert_eq!(refused, DemoteReply::refused("n1".into(), 4, "term 4 is stale".into(), Some(5)));
        assert_eq!(
            serde_json::to_string(&refused).unwrap(),
            r#"{"demoted":false,"term":4,"member":"n1","error":"term 4 is stale","current_term":5}"#
        );
        assert!(refused.confirms("n1", 4).unwrap_err().contains("term 4 is stale"));
        // Informational fields of another type read as absent; `final_lsn` stands in for `lsn`.
        let odd: DemoteReply =
            serde_json::from_str(r#"{"demoted":true,"term":7,"member":"n1","lsn":5,"final_lsn":"0/60","role":3}"#).unwrap();
        assert_eq!((odd.lsn.as_deref(), odd.role.as_deref()), (None, None));
        assert_eq!(odd.confirms("n1", 7), Ok(Some(Lsn(0x60))));
        // Another member or term confirms nothing.
        assert!(ok.confirms("n2", 7).unwrap_err().contains("not a confirmation"));
        assert!(ok.confirms("n1", 8).unwrap_err().contains("not a confirmation"));
    }
}
