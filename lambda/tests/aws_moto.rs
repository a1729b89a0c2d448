//! EC2 and SSM fencing against moto server (the AWS engine LocalStack uses): the instance really
//! moves to stopped, the SSM command is recorded and its invocation read with
//! GetCommandInvocation, and instances without the cluster's tag are refused untouched.
//! (moto reports SSM commands as Success at once; the other statuses are unit-tested over the
//! `SsmApi` trait in `src/aws.rs`.)

use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ec2::types::{InstanceType, ResourceType, Tag, TagSpecification};
use pgdaemon_core::fence::{FenceStatus, FenceTarget, Fencer, PendingHandle};
use pgdaemon_core::TransitionKind;
use pgdaemon_lambda::aws::{Ec2Api, Ec2Fencer, InvocationStatus, SdkEc2, SdkSsm, SsmApi, SsmFencer};
use pgdaemon_testkit::engines::MotoServer;

const TAG: &str = "pgdaemon:cluster";

fn clients() -> (aws_sdk_ec2::Client, aws_sdk_ssm::Client) {
    let moto = MotoServer::shared();
    let creds = Credentials::new(MotoServer::ACCESS_KEY_ID, MotoServer::SECRET_ACCESS_KEY, None, None, "test");
    let ec2 = aws_sdk_ec2::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(MotoServer::REGION))
        .endpoint_url(moto.endpoint())
        .credentials_provider(creds.clone())
        .build();
    let ssm = aws_sdk_ssm::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(MotoServer::REGION))
        .endpoint_url(moto.endpoint())
        .credentials_provider(creds)
        .build();
    (aws_sdk_ec2::Client::from_conf(ec2), aws_sdk_ssm::Client::from_conf(ssm))
}

/// Launches one instance, tagged `pgdaemon:cluster=<cluster>` when given.
async fn launch(ec2: &aws_sdk_ec2::Client, cluster: Option<&str>) -> String {
    let mut req = ec2.run_instances().image_id("ami-12c6146b").instance_type(InstanceType::T3Micro).min_count(1).max_count(1);
    if let Some(c) = cluster {
        req = req.tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::Instance)
                .tags(Tag::builder().key(TAG).value(c).build())
                .build(),
        );
    }
    let out = req.send().await.expect("RunInstances");
    out.instances()[0].instance_id().unwrap().to_string()
}

fn target(cluster: &str, instance: &str) -> FenceTarget {
    target_member(cluster, "n1", instance)
}

fn target_member(cluster: &str, member: &str, instance: &str) -> FenceTarget {
    let mut t = FenceTarget::new(cluster, member, None, 3, TransitionKind::Failover, "moto test");
    t.instance_id = Some(instance.to_string());
    t
}

#[tokio::test]
async fn ec2_fencer_stops_a_tagged_instance() {
    let (ec2, _) = clients();
    let id = launch(&ec2, Some("moto-ec2")).await;
    let api = SdkEc2(ec2.clone());
    assert_eq!(api.describe(&id).await.unwrap().unwrap().state, "running");
    let fencer = Ec2Fencer::new(api.clone(), TAG);
    let answer = fencer.fence(&target("moto-ec2", &id), None).await;
    assert!(answer.is_confirmed(), "{answer:?}");
    let state = api.describe(&id).await.unwrap().unwrap().state;
    assert!(state == "stopped" || state == "stopping", "{state}");
    // Confirming again is idempotent and does not need another stop.
    assert!(fencer.fence(&target("moto-ec2", &id), Some(&PendingHandle::new("ec2", id.clone()))).await.is_confirmed());
    // An instance that does not exist is a failure, not a confirmation.
    let missing = fencer.fence(&target("moto-ec2", "i-0123456789abcdef0"), None).await;
    assert!(matches!(missing, FenceStatus::Failed { .. }), "{missing:?}");
}

#[tokio::test]
async fn instances_without_the_cluster_tag_are_refused_untouched() {
    let (ec2, ssm) = clients();
    let untagged = launch(&ec2, None).await;
    let foreign = launch(&ec2, Some("someone-else")).await;
    let api = SdkEc2(ec2.clone());
    // A member name no other test uses: the fencer writes it into the command's comment.
    let member = "refused-member";
    for id in [&untagged, &foreign] {
        let answer = Ec2Fencer::new(api.clone(), TAG).fence(&target_member("moto-tag", member, id), None).await;
        assert!(matches!(answer, FenceStatus::Refused { .. }), "{answer:?}");
        let fencer = SsmFencer::new(SdkSsm(ssm.clone()), api.clone(), TAG, "true");
        let answer = fencer.fence(&target_member("moto-tag", member, id), None).await;
        assert!(matches!(answer, FenceStatus::Refused { .. }), "{answer:?}");
        assert_eq!(api.describe(id).await.unwrap().unwrap().state, "running");
    }
    // Matched by comment, not by instance: moto adds every instance it holds to a command sent
    // without targets, so the concurrent SSM test's command lists these instances too.
    let listed = ssm.list_commands().send().await.unwrap();
    let ours: Vec<_> = listed.commands().iter().filter(|c| c.comment().is_some_and(|t| t.contains(member))).collect();
    assert!(ours.is_empty(), "a command was sent for a refused instance: {ours:?}");
}

#[tokio::test]
async fn ssm_fencer_sends_the_stop_command_and_reads_its_invocation() {
    let (ec2, ssm) = clients();
    let id = launch(&ec2, Some("moto-ssm")).await;
    let script = "systemctl stop pgdaemon-agent postgresql; ! pgrep -x postgres";
    let fencer = SsmFencer::new(SdkSsm(ssm.clone()), SdkEc2(ec2.clone()), TAG, script);
    let answer = fencer.fence(&target("moto-ssm", &id), None).await;
    assert!(answer.is_confirmed(), "{answer:?}");
    // The command really was recorded by SSM, with our document, script and instance.
    let listed = ssm.list_commands().send().await.unwrap();
    let cmd = listed.commands().iter().find(|c| c.instance_ids().contains(&id)).expect("SendCommand recorded for the instance");
    assert_eq!(cmd.document_name(), Some("AWS-RunShellScript"));
    let params = cmd.parameters().unwrap();
    assert_eq!(params.get("commands").unwrap(), &vec![script.to_string()]);
    assert!(cmd.comment().unwrap().contains("term 3"));
    // Its invocation status comes from GetCommandInvocation.
    let status = SdkSsm(ssm.clone()).invocation(cmd.command_id().unwrap(), &id).await.unwrap();
    assert_eq!(status, InvocationStatus::Success);
    // Resuming with the pending handle checks that command instead of sending another.
    let before = listed.commands().len();
    assert!(fencer
        .fence(&target("moto-ssm", &id), Some(&PendingHandle::new("ssm", cmd.command_id().unwrap())))
        .await
        .is_confirmed());
    assert_eq!(ssm.list_commands().send().await.unwrap().commands().len(), before);
}
