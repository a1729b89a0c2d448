//! The replication password from SSM Parameter Store, against a real moto server.
#![cfg(feature = "ssm")]

use aws_sdk_ssm::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_ssm::types::ParameterType;
use pgdaemon_agent::secrets::{read_ssm_parameter, SecretError};
use pgdaemon_testkit::engines::MotoServer;

fn client(moto: &MotoServer) -> aws_sdk_ssm::Client {
    let conf = aws_sdk_ssm::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(MotoServer::REGION))
        .endpoint_url(moto.endpoint())
        .credentials_provider(Credentials::new(MotoServer::ACCESS_KEY_ID, MotoServer::SECRET_ACCESS_KEY, None, None, "test"))
        .build();
    aws_sdk_ssm::Client::from_conf(conf)
}

#[tokio::test]
async fn reads_a_secure_string() {
    let moto = MotoServer::shared();
    let ssm = client(moto);
    let name = format!("/pgdaemon/test-{}/replication", std::process::id());
    ssm.put_parameter().name(&name).value("s3cret pass").r#type(ParameterType::SecureString).send().await.unwrap();
    let secret = read_ssm_parameter(&ssm, &name).await.unwrap();
    assert_eq!(secret.expose(), "s3cret pass");
    assert_eq!(format!("{secret:?} {secret}"), "<redacted> <redacted>");
}

#[tokio::test]
async fn a_missing_parameter_is_named_in_the_error() {
    let moto = MotoServer::shared();
    let name = format!("/pgdaemon/absent-{}", std::process::id());
    let err = read_ssm_parameter(&client(moto), &name).await.unwrap_err();
    assert!(matches!(err, SecretError::Ssm { .. }));
    assert!(err.to_string().contains(&name), "{err}");
}
