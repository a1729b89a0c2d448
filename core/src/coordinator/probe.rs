//! Whether the primary's agent process is alive, as evidence for an early failover
//! (docs/design.md section 4, "Early failover on evidence").
//!
//! The coordinator connects to the agent's API port. A refused connection is an answer from the
//! agent's host itself: it is up and nothing listens on the port, so the agent process is gone
//! (killed, crashed, not restarted). A timeout or any other error proves nothing (a partition,
//! a dead host, a slow network look alike) and leaves the lease rule in charge. An accepted
//! connection means a live agent, whatever its loop is doing.

use async_trait::async_trait;

/// One probe's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentReach {
    /// The connection was accepted: the agent process is alive.
    Answered,
    /// The host refused the connection: no agent process listens there.
    Refused,
    /// No answer in time, an error, or no address to probe: no evidence either way.
    NoAnswer,
}

/// Probes a member's agent.
///
/// Obligation: answer [`AgentReach::Refused`] only when the agent's own host refused the
/// connection (a TCP reset on connect), never for a timeout, an unreachable network or a TLS or
/// HTTP error; the coordinator breaks a lease on that answer. Must return within a fraction of a
/// second (a connect timeout of a few hundred milliseconds).
#[async_trait]
pub trait AgentProbe: Send + Sync {
    /// Probes the agent whose API base URL is `api_url` (`http(s)://host:port`).
    async fn probe(&self, api_url: &str) -> AgentReach;
}

/// No probing: never any evidence, so failovers wait for the lease (the default).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProbe;

#[async_trait]
impl AgentProbe for NoProbe {
    async fn probe(&self, _api_url: &str) -> AgentReach {
        AgentReach::NoAnswer
    }
}

/// The coordinator-lock owner name of the coordinator hosted by `member`'s agent:
/// `agent-<member>-<instance>`, `instance` (8 letters or digits) distinguishing one agent
/// process from the next.
pub fn hosted_owner(member: &str, instance: &str) -> String {
    format!("agent-{member}-{instance}")
}

/// The member whose agent process hosts the coordinator named `owner` (see [`hosted_owner`],
/// with an instance of 8 letters or digits; `agent-<member>` alone is accepted too), among
/// `members`. `None` for any other owner (a Lambda's) or when more than one member would fit.
pub fn hosting_member<'a>(owner: &str, members: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let rest = owner.strip_prefix("agent-")?;
    let mut fits = members.into_iter().filter(|m| {
        rest.strip_prefix(*m).is_some_and(|instance| {
            instance.is_empty()
                || instance.strip_prefix('-').is_some_and(|i| i.len() == 8 && i.chars().all(|c| c.is_ascii_alphanumeric()))
        })
    });
    let member = fits.next()?;
    fits.next().is_none().then_some(member)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hosted_owner_names_its_member() {
        let members = ["pg", "pg-1", "pg-2"];
        assert_eq!(hosting_member(&hosted_owner("pg-1", "3f2a9c1d"), members), Some("pg-1"));
        assert_eq!(hosting_member(&hosted_owner("pg", "3f2a9c1d"), members), Some("pg"));
        assert_eq!(hosting_member("agent-pg-2", members), Some("pg-2"));
        assert_eq!(hosting_member("lambda-3f2a9c1d-0000", members), None);
        assert_eq!(hosting_member("agent-pg-3-3f2a9c1d", members), None, "not a member");
        assert_eq!(hosting_member("agent-pg-1-3f2a", members), None, "not an instance");
        // Both would fit: nobody's.
        assert_eq!(hosting_member("agent-pg-3f2a9c1d", ["pg", "pg-3f2a9c1d"]), None);
    }
}
