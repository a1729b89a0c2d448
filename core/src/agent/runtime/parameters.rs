//! Keeping this member's Postgres on the cluster-wide parameters ([`crate::params`]) and
//! reporting what it could not take yet (a pending restart, a refused value) and a long
//! operation in progress in the member's state item. Neither changes a role, holds a lease or
//! needs the decision: it runs after the tick's actions.

use super::AgentRuntime;
use crate::clock::Clock;
use crate::model::ClusterView;
use crate::params::MemberState;
use crate::pg::{PgControl, PgProbe};
use crate::store::Store;

/// What this process applied last: the parameters' version and the values Postgres refused.
#[derive(Debug, Clone, Default)]
pub(super) struct AppliedParameters {
    pub(super) version: Option<u64>,
    pub(super) errors: Vec<String>,
}

impl<S, P, C> AgentRuntime<S, P, C>
where
    S: Store,
    P: PgControl + 'static,
    C: Clock + Clone + 'static,
{
    /// Writes the view's parameters when this process has not applied their version yet (every
    /// agent start applies once: the write is a no-op when the file already holds them), then
    /// publishes the member's state when it differs from the stored one. Without a readable
    /// parameters item nothing is written: an item this build cannot read (a newer format) or a
    /// store that lost its items must not wipe the parameters a node runs with.
    pub(super) async fn keep_parameters_and_state(&mut self, view: &ClusterView, probe: &PgProbe) {
        if let Some(wanted) = view.parameters.as_ref().filter(|w| self.parameters.version != Some(w.version)) {
            match self.pg.apply_parameters(wanted).await {
                Ok(Some(errors)) => {
                    if !errors.is_empty() {
                        tracing::warn!(version = wanted.version, ?errors, "Postgres refused cluster-wide parameters");
                    }
                    self.parameters = AppliedParameters { version: Some(wanted.version), errors };
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(version = wanted.version, error = %e, "applying the cluster-wide parameters"),
            }
        }
        let activity = match self.handle().activity() {
            Some(a) => Some(a.describe(self.clock.monotonic(), self.pg.data_dir_bytes().await)),
            None => None,
        };
        let stored = view.states.get(&self.identity.member);
        let state = MemberState {
            name: self.identity.member.clone(),
            parameters_version: self.parameters.version.unwrap_or(0),
            pending_restart: probe.pending_restart.clone(),
            parameter_errors: self.parameters.errors.clone(),
            activity,
            postgres_version: probe.server_version.clone().or_else(|| stored.and_then(|s| s.postgres_version.clone())),
            archive: self.handle().archive_status(),
        };
        // Nothing to report and nothing stored: no item (an idle cluster without cluster-wide
        // parameters writes nothing more than before).
        let trivial = state == MemberState { name: state.name.clone(), ..MemberState::default() };
        if stored == Some(&state) || (stored.is_none() && trivial) {
            return;
        }
        if let Err(e) = self.store.put_member_state(&self.identity.cluster, &state).await {
            tracing::warn!(error = %e, "publishing the member state; trying again next loop");
        }
    }
}
