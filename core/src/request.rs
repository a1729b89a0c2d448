//! Submitting a manual request (switchover, failover, pause, resume): the one compare-and-set
//! that writes a [`ManualRequest`] into the cluster record, shared by pgdctl and the Lambda. The
//! coordinator run that follows answers it in `last_request` under the same id.
//!
//! What is checked before the write differs by caller and stays the caller's: pgdctl refuses at
//! once what the coordinator would refuse (a paused cluster, a transition under way, an unknown
//! candidate: [`Check::View`]); the Lambda leaves those answers to the coordinator and checks
//! only what makes the write itself wrong ([`Check::Record`]). Both refuse a cluster without a
//! record and a second request while one is waiting: one request at a time, and a request never
//! overwrites another operator's.

use crate::model::{ClusterRecord, ClusterView, ManualRequest};
use crate::store::{Store, StoreError};

/// Why a request was not written. Nothing was changed in any case.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SubmitError {
    /// The cluster has no record: it was never bootstrapped.
    #[error("no cluster record (the cluster is not bootstrapped)")]
    NoRecord,
    /// Another request is still waiting for a coordinator's answer.
    #[error("request {} ({:?}) is still waiting for a coordinator", .0.id, .0.action)]
    Pending(Box<ManualRequest>),
    /// The caller's own check ([`Check::View`]) refused, with its reason.
    #[error("{0}")]
    Refused(String),
    /// Every attempt lost the compare-and-set to another writer (the coordinator, another
    /// operator).
    #[error("the cluster record kept changing; tried {attempts} times")]
    KeptChanging { attempts: usize },
    /// The store did not answer, or answered with a record that cannot be used.
    #[error(transparent)]
    Store(StoreError),
}

/// What is read and checked before each write attempt.
#[derive(Clone, Copy)]
pub enum Check<'a> {
    /// The record alone (one `read_cluster`): it exists and has no request waiting.
    Record,
    /// The whole view (one `read_view`: record, leases, members), given to the caller's check
    /// first; an `Err` is the refusal's reason ([`SubmitError::Refused`]). The record's own
    /// checks follow, so a check that ignores them still never overwrites a waiting request.
    View(&'a (dyn Fn(&ClusterView) -> Result<(), String> + Send + Sync)),
}

/// Writes `request` into `cluster`'s record by compare-and-set, re-reading and checking again
/// after each lost race, at most `attempts` times (at least once). Returns the record as
/// written.
pub async fn submit<S: Store + ?Sized>(
    store: &S,
    cluster: &str,
    request: &ManualRequest,
    check: Check<'_>,
    attempts: usize,
) -> Result<ClusterRecord, SubmitError> {
    let attempts = attempts.max(1);
    for _ in 0..attempts {
        let record = match check {
            Check::Record => store.read_cluster(cluster).await.map_err(SubmitError::Store)?,
            Check::View(f) => {
                let view = store.read_view(cluster).await.map_err(SubmitError::Store)?;
                f(&view).map_err(SubmitError::Refused)?;
                view.cluster
            }
        };
        let Some(mut record) = record else {
            return Err(SubmitError::NoRecord);
        };
        if let Some(pending) = &record.request {
            return Err(SubmitError::Pending(Box::new(pending.clone())));
        }
        record.request = Some(request.clone());
        match store.write_cluster(cluster, Some(record.version), &record).await {
            Ok(written) => return Ok(written),
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(SubmitError::Store(e)),
        }
    }
    Err(SubmitError::KeptChanging { attempts })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::config::DynamicConfig;
    use crate::memory::MemoryStore;
    use crate::model::RequestAction;

    fn request(id: &str) -> ManualRequest {
        ManualRequest { id: id.into(), action: RequestAction::Pause, candidate: None, force: false, requested_ms: 1 }
    }

    async fn store_with_record() -> MemoryStore {
        let store = MemoryStore::new();
        store.write_cluster("c", None, &ClusterRecord::bootstrap("a", DynamicConfig::default())).await.unwrap();
        store
    }

    /// Another writer changes the record between this caller's read and its write (the check
    /// runs in between), `times` times.
    fn racing_writer<'a>(
        store: &'a MemoryStore,
        times: usize,
        calls: &'a AtomicUsize,
    ) -> impl Fn(&ClusterView) -> Result<(), String> + Send + Sync + 'a {
        move |view: &ClusterView| {
            if calls.fetch_add(1, Ordering::SeqCst) < times {
                let mut r = view.cluster.clone().unwrap();
                r.paused = !r.paused;
                futures::executor::block_on(store.write_cluster("c", Some(r.version), &r)).unwrap();
            }
            Ok(())
        }
    }

    #[tokio::test]
    async fn writes_the_request_into_the_record() {
        let store = store_with_record().await;
        for check in [Check::Record, Check::View(&|_| Ok(()))] {
            let written = submit(&store, "c", &request("q1"), check, 3).await.unwrap();
            assert_eq!(written.request, Some(request("q1")));
            assert_eq!(store.read_cluster("c").await.unwrap().unwrap(), written);
            let mut cleared = written.clone();
            cleared.request = None;
            store.write_cluster("c", Some(written.version), &cleared).await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_waiting_request_is_never_overwritten() {
        let store = store_with_record().await;
        submit(&store, "c", &request("first"), Check::Record, 3).await.unwrap();
        for check in [Check::Record, Check::View(&|_| Ok(()))] {
            let e = submit(&store, "c", &request("second"), check, 3).await.unwrap_err();
            assert_eq!(e, SubmitError::Pending(Box::new(request("first"))));
            assert_eq!(e.to_string(), "request first (Pause) is still waiting for a coordinator");
        }
        assert_eq!(store.read_cluster("c").await.unwrap().unwrap().request.unwrap().id, "first");
    }

    #[tokio::test]
    async fn no_record_a_refusal_and_a_store_error_change_nothing() {
        let empty = MemoryStore::new();
        let e = submit(&empty, "c", &request("q"), Check::Record, 3).await.unwrap_err();
        assert_eq!(e, SubmitError::NoRecord);
        assert_eq!(e.to_string(), "no cluster record (the cluster is not bootstrapped)");
        assert!(empty.read_cluster("c").await.unwrap().is_none());

        let store = store_with_record().await;
        let e = submit(&store, "c", &request("q"), Check::View(&|_| Err("paused".into())), 3).await.unwrap_err();
        assert_eq!(e, SubmitError::Refused("paused".into()));
        assert!(store.read_cluster("c").await.unwrap().unwrap().request.is_none());

        store.set_available(false);
        let e = submit(&store, "c", &request("q"), Check::Record, 3).await.unwrap_err();
        assert!(matches!(e, SubmitError::Store(StoreError::Unavailable(_))), "{e:?}");
    }

    #[tokio::test]
    async fn a_lost_race_is_retried_on_a_fresh_read() {
        let store = store_with_record().await;
        let calls = AtomicUsize::new(0);
        let check = racing_writer(&store, 2, &calls);
        let written = submit(&store, "c", &request("q"), Check::View(&check), 3).await.unwrap();
        assert_eq!(calls.load(Ordering::SeqCst), 3, "two lost races, then the write");
        assert_eq!(written.request.as_ref().map(|q| q.id.as_str()), Some("q"));
        assert!(!written.paused, "the other writer's two changes are kept, not overwritten");
        assert_eq!(written.version, 4);
    }

    #[tokio::test]
    async fn a_record_that_keeps_changing_gives_up_after_the_attempts() {
        let store = store_with_record().await;
        let calls = AtomicUsize::new(0);
        let check = racing_writer(&store, usize::MAX, &calls);
        let e = submit(&store, "c", &request("q"), Check::View(&check), 3).await.unwrap_err();
        assert_eq!(e, SubmitError::KeptChanging { attempts: 3 });
        assert_eq!(e.to_string(), "the cluster record kept changing; tried 3 times");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert!(store.read_cluster("c").await.unwrap().unwrap().request.is_none());
    }
}
