//! EC2 and SSM fencing. The fencers' logic is written against two narrow traits ([`Ec2Api`],
//! [`SsmApi`]) so every answer the APIs can give is unit-tested; the SDK implementations are thin
//! and tested against moto server.
//!
//! Both fencers check, before acting, that the instance carries the cluster's tag
//! (`<tag key>=<cluster>`): a member record naming someone else's instance is refused.

use std::collections::BTreeMap;

use async_trait::async_trait;
use pgdaemon_core::fence::{FenceStatus, FenceTarget, Fencer, PendingHandle};

/// What the fencers need to know about an instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstanceInfo {
    /// EC2 state name: pending, running, stopping, stopped, shutting-down, terminated.
    pub state: String,
    pub tags: BTreeMap<String, String>,
}

/// The EC2 calls fencing makes.
///
/// Obligations: `describe` returns `Ok(None)` only when EC2 says the instance does not exist;
/// `stop` is StopInstances with `Force` as given and returns once EC2 accepted it. Errors are
/// the API's message (the fencer reports them, never treats them as success).
#[async_trait]
pub trait Ec2Api: Send + Sync {
    async fn describe(&self, instance_id: &str) -> Result<Option<InstanceInfo>, String>;
    async fn stop(&self, instance_id: &str, force: bool) -> Result<(), String>;
}

/// The state of one SSM command invocation (GetCommandInvocation's `Status`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InvocationStatus {
    Pending,
    InProgress,
    Delayed,
    Success,
    Cancelled,
    TimedOut,
    Failed,
    Cancelling,
    /// The invocation is not visible yet (just sent).
    NotYetVisible,
    Other(String),
}

impl InvocationStatus {
    pub fn parse(s: &str) -> Self {
        match s {
            "Pending" => Self::Pending,
            "InProgress" => Self::InProgress,
            "Delayed" => Self::Delayed,
            "Success" => Self::Success,
            "Cancelled" => Self::Cancelled,
            "TimedOut" => Self::TimedOut,
            "Failed" => Self::Failed,
            "Cancelling" => Self::Cancelling,
            other => Self::Other(other.to_string()),
        }
    }
}

/// The SSM calls fencing makes.
///
/// Obligations: `send_command` runs `AWS-RunShellScript` with `commands` on exactly one instance
/// and returns the command id; `invocation` is GetCommandInvocation for that instance.
#[async_trait]
pub trait SsmApi: Send + Sync {
    async fn send_command(&self, instance_id: &str, commands: &[String], comment: &str) -> Result<String, String>;
    async fn invocation(&self, command_id: &str, instance_id: &str) -> Result<InvocationStatus, String>;
}

fn check_tag(info: &InstanceInfo, key: &str, target: &FenceTarget, id: &str) -> Result<(), FenceStatus> {
    match info.tags.get(key) {
        Some(v) if *v == target.cluster => Ok(()),
        Some(v) => Err(FenceStatus::Refused {
            detail: format!("instance {id} is tagged {key}={v}, not {}: refusing to touch it", target.cluster),
        }),
        None => Err(FenceStatus::Refused { detail: format!("instance {id} has no {key} tag: refusing to touch it") }),
    }
}

/// Looks the instance up and checks the cluster tag. `Err` is the fencer's answer.
async fn tagged_instance<E: Ec2Api + ?Sized>(
    ec2: &E,
    tag_key: &str,
    target: &FenceTarget,
) -> Result<(String, InstanceInfo), FenceStatus> {
    let Some(id) = target.instance_id.clone().filter(|i| !i.is_empty()) else {
        return Err(FenceStatus::Refused { detail: format!("{} reports no instance id", target.member) });
    };
    let info = match ec2.describe(&id).await {
        Ok(Some(info)) => info,
        Ok(None) => return Err(FenceStatus::Failed { detail: format!("instance {id} does not exist") }),
        Err(e) => return Err(FenceStatus::Failed { detail: format!("DescribeInstances {id}: {e}") }),
    };
    check_tag(&info, tag_key, target, &id)?;
    Ok((id, info))
}

/// Only an instance that is off proves its Postgres takes no writes. While it is `stopping` (or
/// `shutting-down`) the guest may still run: where the old primary's agent is dead nothing else
/// stops its Postgres, and the simulation found two writable primaries when `stopping` counted
/// (sim/FINDINGS.md).
fn is_down(state: &str) -> bool {
    matches!(state, "stopped" | "terminated")
}

/// Fences by stopping the instance (StopInstances, `Force`), confirmed by DescribeInstances
/// reporting `stopped` (or `terminated`); `stopping` is pending.
pub struct Ec2Fencer<E> {
    ec2: E,
    tag_key: String,
}

impl<E: Ec2Api> Ec2Fencer<E> {
    pub fn new(ec2: E, tag_key: impl Into<String>) -> Self {
        Ec2Fencer { ec2, tag_key: tag_key.into() }
    }
}

#[async_trait]
impl<E: Ec2Api> Fencer for Ec2Fencer<E> {
    fn name(&self) -> &str {
        "ec2"
    }

    async fn fence(&self, target: &FenceTarget, _pending: Option<&PendingHandle>) -> FenceStatus {
        let (id, info) = match tagged_instance(&self.ec2, &self.tag_key, target).await {
            Ok(x) => x,
            Err(answer) => return answer,
        };
        if is_down(&info.state) {
            return FenceStatus::Confirmed { detail: format!("instance {id} is {}", info.state), lsn: None };
        }
        // Stopping again is harmless, so a resumed check simply asks again.
        if let Err(e) = self.ec2.stop(&id, true).await {
            return FenceStatus::Failed { detail: format!("StopInstances {id}: {e}") };
        }
        match self.ec2.describe(&id).await {
            Ok(Some(after)) if is_down(&after.state) => {
                FenceStatus::Confirmed { detail: format!("instance {id} is {}", after.state), lsn: None }
            }
            Ok(Some(after)) => FenceStatus::Pending {
                handle: PendingHandle::new(self.name(), id.clone()),
                detail: format!("stop requested; instance {id} is {}", after.state),
            },
            Ok(None) => FenceStatus::Failed { detail: format!("instance {id} vanished after StopInstances") },
            Err(e) => FenceStatus::Pending {
                handle: PendingHandle::new(self.name(), id.clone()),
                detail: format!("stop requested; DescribeInstances failed: {e}"),
            },
        }
    }
}

/// Fences by running a stop script through SSM (`AWS-RunShellScript`), confirmed only by the
/// command invocation's `Success`. The command id is the pending handle, so a resumed
/// coordinator checks the same command instead of sending another.
pub struct SsmFencer<S, E> {
    ssm: S,
    ec2: E,
    tag_key: String,
    command: String,
}

impl<S: SsmApi, E: Ec2Api> SsmFencer<S, E> {
    pub fn new(ssm: S, ec2: E, tag_key: impl Into<String>, command: impl Into<String>) -> Self {
        SsmFencer { ssm, ec2, tag_key: tag_key.into(), command: command.into() }
    }

    async fn check(&self, command_id: &str, id: &str) -> FenceStatus {
        match self.ssm.invocation(command_id, id).await {
            Ok(InvocationStatus::Success) => {
                FenceStatus::Confirmed { detail: format!("SSM command {command_id} on {id} succeeded"), lsn: None }
            }
            Ok(
                s @ (InvocationStatus::Pending
                | InvocationStatus::InProgress
                | InvocationStatus::Delayed
                | InvocationStatus::NotYetVisible),
            ) => FenceStatus::Pending {
                handle: PendingHandle::new(self.name(), command_id),
                detail: format!("SSM command {command_id} on {id}: {s:?}"),
            },
            Ok(s) => FenceStatus::Failed { detail: format!("SSM command {command_id} on {id} ended {s:?}") },
            // Unknown outcome: keep checking the same command (the pending timeout moves on).
            Err(e) => FenceStatus::Pending {
                handle: PendingHandle::new(self.name(), command_id),
                detail: format!("GetCommandInvocation {command_id}: {e}"),
            },
        }
    }
}

#[async_trait]
impl<S: SsmApi, E: Ec2Api> Fencer for SsmFencer<S, E> {
    fn name(&self) -> &str {
        "ssm"
    }

    async fn fence(&self, target: &FenceTarget, pending: Option<&PendingHandle>) -> FenceStatus {
        let (id, info) = match tagged_instance(&self.ec2, &self.tag_key, target).await {
            Ok(x) => x,
            Err(answer) => return answer,
        };
        if let Some(pending) = pending {
            return self.check(&pending.handle, &id).await;
        }
        if info.state != "running" {
            return FenceStatus::Failed { detail: format!("instance {id} is {}: SSM cannot run commands on it", info.state) };
        }
        let comment: String = format!("pgdaemon fence {} term {}", target.member, target.term).chars().take(100).collect();
        match self.ssm.send_command(&id, std::slice::from_ref(&self.command), &comment).await {
            Ok(command_id) => self.check(&command_id, &id).await,
            Err(e) => FenceStatus::Failed { detail: format!("SendCommand to {id}: {e}") },
        }
    }
}

/// [`Ec2Api`] over the AWS SDK.
#[derive(Clone, Debug)]
pub struct SdkEc2(pub aws_sdk_ec2::Client);

#[async_trait]
impl Ec2Api for SdkEc2 {
    async fn describe(&self, instance_id: &str) -> Result<Option<InstanceInfo>, String> {
        let out = match self.0.describe_instances().instance_ids(instance_id).send().await {
            Ok(out) => out,
            Err(e) => {
                let code = e.as_service_error().and_then(|s| aws_sdk_ec2::error::ProvideErrorMetadata::code(s)).unwrap_or("");
                if code.starts_with("InvalidInstanceID") {
                    return Ok(None);
                }
                return Err(aws_sdk_ec2::error::DisplayErrorContext(e).to_string());
            }
        };
        let instance = out.reservations().iter().flat_map(|r| r.instances()).find(|i| i.instance_id() == Some(instance_id));
        Ok(instance.map(|i| InstanceInfo {
            state: i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default(),
            tags: i.tags().iter().filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or("").to_string()))).collect(),
        }))
    }

    async fn stop(&self, instance_id: &str, force: bool) -> Result<(), String> {
        self.0
            .stop_instances()
            .instance_ids(instance_id)
            .force(force)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| aws_sdk_ec2::error::DisplayErrorContext(e).to_string())
    }
}

/// Reads a secret from Parameter Store (the agents' API token, see [`crate::api_token`]).
///
/// Obligation: `secure_string` is GetParameter with `WithDecryption`; errors name the parameter's
/// problem, never a value.
#[async_trait]
pub trait ParameterApi: Send + Sync {
    async fn secure_string(&self, name: &str) -> Result<String, String>;
}

/// [`SsmApi`] and [`ParameterApi`] over the AWS SDK.
#[derive(Clone, Debug)]
pub struct SdkSsm(pub aws_sdk_ssm::Client);

#[async_trait]
impl SsmApi for SdkSsm {
    async fn send_command(&self, instance_id: &str, commands: &[String], comment: &str) -> Result<String, String> {
        let out = self
            .0
            .send_command()
            .instance_ids(instance_id)
            .document_name("AWS-RunShellScript")
            .parameters("commands", commands.to_vec())
            .comment(comment)
            .timeout_seconds(60)
            .send()
            .await
            .map_err(|e| aws_sdk_ssm::error::DisplayErrorContext(e).to_string())?;
        out.command()
            .and_then(|c| c.command_id())
            .map(str::to_string)
            .ok_or_else(|| "SendCommand returned no command id".to_string())
    }

    async fn invocation(&self, command_id: &str, instance_id: &str) -> Result<InvocationStatus, String> {
        match self.0.get_command_invocation().command_id(command_id).instance_id(instance_id).send().await {
            Ok(out) => Ok(out.status().map_or(InvocationStatus::Pending, |s| InvocationStatus::parse(s.as_str()))),
            Err(e) => {
                if e.as_service_error().is_some_and(|s| s.is_invocation_does_not_exist()) {
                    return Ok(InvocationStatus::NotYetVisible);
                }
                Err(aws_sdk_ssm::error::DisplayErrorContext(e).to_string())
            }
        }
    }
}

#[async_trait]
impl ParameterApi for SdkSsm {
    async fn secure_string(&self, name: &str) -> Result<String, String> {
        let out = self
            .0
            .get_parameter()
            .name(name)
            .with_decryption(true)
            .send()
            .await
            .map_err(|e| aws_sdk_ssm::error::DisplayErrorContext(e).to_string())?;
        match out.parameter().and_then(|p| p.value()) {
            Some(v) if !v.is_empty() => Ok(v.to_string()),
            _ => Err("the parameter has no value".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgdaemon_core::TransitionKind;
    use std::sync::Mutex;

    #[derive(Default)]
    struct FakeEc2 {
        states: Mutex<Vec<&'static str>>,
        tag: Option<&'static str>,
        stops: Mutex<u32>,
    }

    #[async_trait]
    impl Ec2Api for FakeEc2 {
        async fn describe(&self, _id: &str) -> Result<Option<InstanceInfo>, String> {
            let mut s = self.states.lock().unwrap();
            let state = if s.len() > 1 { s.remove(0) } else { s[0] };
            let tags = self.tag.iter().map(|v| ("pgdaemon:cluster".to_string(), v.to_string())).collect();
            Ok(Some(InstanceInfo { state: state.into(), tags }))
        }
        async fn stop(&self, _id: &str, force: bool) -> Result<(), String> {
            assert!(force);
            *self.stops.lock().unwrap() += 1;
            Ok(())
        }
    }

    struct FakeSsm {
        statuses: Mutex<Vec<Result<InvocationStatus, String>>>,
        sent: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl SsmApi for FakeSsm {
        async fn send_command(&self, _id: &str, commands: &[String], _c: &str) -> Result<String, String> {
            self.sent.lock().unwrap().push(commands.join(";"));
            Ok("cmd-1".into())
        }
        async fn invocation(&self, command_id: &str, _id: &str) -> Result<InvocationStatus, String> {
            assert_eq!(command_id, "cmd-1");
            self.statuses.lock().unwrap().remove(0)
        }
    }

    fn target() -> FenceTarget {
        let mut t = FenceTarget::new("prod", "n1", None, 4, TransitionKind::Failover, "test");
        t.instance_id = Some("i-1".into());
        t
    }

    fn ec2(states: Vec<&'static str>, tag: Option<&'static str>) -> FakeEc2 {
        FakeEc2 { states: Mutex::new(states), tag, stops: Mutex::new(0) }
    }

    #[tokio::test]
    async fn ec2_confirms_only_stopped_or_terminated() {
        let f = Ec2Fencer::new(ec2(vec!["running", "stopped"], Some("prod")), "pgdaemon:cluster");
        assert!(f.fence(&target(), None).await.is_confirmed());
        for still in ["running", "stopping", "shutting-down"] {
            let f = Ec2Fencer::new(ec2(vec!["running", still], Some("prod")), "pgdaemon:cluster");
            let answer = f.fence(&target(), None).await;
            assert!(
                matches!(&answer, FenceStatus::Pending { handle, .. } if *handle == PendingHandle::new("ec2", "i-1")),
                "{still}: {answer:?}"
            );
        }
        let f = Ec2Fencer::new(ec2(vec!["stopped"], Some("prod")), "pgdaemon:cluster");
        assert!(f.fence(&target(), Some(&PendingHandle::new("ec2", "i-1"))).await.is_confirmed());
        assert_eq!(*f.ec2.stops.lock().unwrap(), 0, "already stopped: nothing to do");
    }

    #[tokio::test]
    async fn ec2_and_ssm_refuse_untagged_or_foreign_instances() {
        for tag in [None, Some("other-cluster")] {
            let f = Ec2Fencer::new(ec2(vec!["running"], tag), "pgdaemon:cluster");
            assert!(matches!(f.fence(&target(), None).await, FenceStatus::Refused { .. }));
            assert_eq!(*f.ec2.stops.lock().unwrap(), 0);
            let ssm = FakeSsm { statuses: Mutex::new(vec![]), sent: Mutex::new(vec![]) };
            let f = SsmFencer::new(ssm, ec2(vec!["running"], tag), "pgdaemon:cluster", "stop");
            assert!(matches!(f.fence(&target(), None).await, FenceStatus::Refused { .. }));
            assert!(f.ssm.sent.lock().unwrap().is_empty());
        }
        let mut t = target();
        t.instance_id = None;
        let f = Ec2Fencer::new(ec2(vec!["running"], Some("prod")), "pgdaemon:cluster");
        assert!(matches!(f.fence(&t, None).await, FenceStatus::Refused { .. }));
    }

    #[tokio::test]
    async fn ssm_statuses_map_to_pending_confirmed_or_failed() {
        use InvocationStatus::*;
        let cases: Vec<(InvocationStatus, &str)> = vec![
            (Pending, "pending"),
            (InProgress, "pending"),
            (Delayed, "pending"),
            (NotYetVisible, "pending"),
            (Success, "confirmed"),
            (Failed, "failed"),
            (TimedOut, "failed"),
            (Cancelled, "failed"),
            (Cancelling, "failed"),
        ];
        for (status, want) in cases {
            let ssm = FakeSsm { statuses: Mutex::new(vec![Ok(status.clone())]), sent: Mutex::new(vec![]) };
            let f = SsmFencer::new(ssm, ec2(vec!["running"], Some("prod")), "pgdaemon:cluster", "systemctl stop postgresql");
            let got = f.fence(&target(), None).await;
            let kind = match &got {
                FenceStatus::Pending { handle, .. } => {
                    assert_eq!(*handle, PendingHandle::new("ssm", "cmd-1"));
                    "pending"
                }
                FenceStatus::Confirmed { .. } => "confirmed",
                FenceStatus::Failed { .. } => "failed",
                FenceStatus::Refused { .. } => "refused",
            };
            assert_eq!(kind, want, "{status:?}: {got:?}");
            assert_eq!(*f.ssm.sent.lock().unwrap(), vec!["systemctl stop postgresql".to_string()]);
        }
    }

    #[tokio::test]
    async fn ssm_resumes_the_pending_command_instead_of_sending_another() {
        let ssm = FakeSsm {
            statuses: Mutex::new(vec![Ok(InvocationStatus::InProgress), Err("throttled".into()), Ok(InvocationStatus::Success)]),
            sent: Mutex::new(vec![]),
        };
        let f = SsmFencer::new(ssm, ec2(vec!["running"], Some("prod")), "pgdaemon:cluster", "stop");
        let pending = PendingHandle::new("ssm", "cmd-1");
        assert!(matches!(f.fence(&target(), Some(&pending)).await, FenceStatus::Pending { .. }));
        assert!(matches!(f.fence(&target(), Some(&pending)).await, FenceStatus::Pending { .. }));
        assert!(f.fence(&target(), Some(&pending)).await.is_confirmed());
        assert!(f.ssm.sent.lock().unwrap().is_empty());
    }
}
