//! The `http` fencer's credentials (`PGDAEMON_API_TOKEN_PARAMETER`): the variable's rules, the
//! bearer token read from SSM at the first fence and sent to the agent, and a failed read that
//! fails the http fencer (never a confirmation) while the chain goes on and the function runs.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pgdaemon_core::fence::{FenceChain, FenceStatus, FenceTarget, Fencer, PendingHandle};
use pgdaemon_core::TransitionKind;
use pgdaemon_lambda::api_token::TokenHttpFencer;
use pgdaemon_lambda::aws::{Ec2Api, InstanceInfo, InvocationStatus, ParameterApi, SsmApi};
use pgdaemon_lambda::config::LambdaConfig;

const PARAM: &str = "/pgdaemon/prod/api-token";

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn the_variable_is_optional_and_must_be_an_absolute_parameter_name() {
    let c = LambdaConfig::from_env(env(&[("PGDAEMON_CLUSTERS", "prod")])).unwrap();
    assert_eq!(c.api_token_parameter, None);
    let c = LambdaConfig::from_env(env(&[("PGDAEMON_CLUSTERS", "prod"), ("PGDAEMON_API_TOKEN_PARAMETER", "  ")])).unwrap();
    assert_eq!(c.api_token_parameter, None, "blank is unset, like every other variable");
    let c = LambdaConfig::from_env(env(&[("PGDAEMON_CLUSTERS", "prod"), ("PGDAEMON_API_TOKEN_PARAMETER", PARAM)])).unwrap();
    assert_eq!(c.api_token_parameter.as_deref(), Some(PARAM));
    for bad in ["pgdaemon/prod/api-token", "/pgdaemon/prod/api token", "/x!"] {
        let err = LambdaConfig::from_env(env(&[("PGDAEMON_CLUSTERS", "prod"), ("PGDAEMON_API_TOKEN_PARAMETER", bad)]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("PGDAEMON_API_TOKEN_PARAMETER"), "{bad:?}: {err}");
    }
}

/// Answers GetParameter from a script (the last answer repeats) and counts the calls; also the
/// EC2/SSM fakes `build_fencer` needs.
#[derive(Clone)]
struct FakeAws {
    answers: Arc<Mutex<Vec<Result<String, String>>>>,
    reads: Arc<Mutex<Vec<String>>>,
}

impl FakeAws {
    fn new(answers: Vec<Result<&str, &str>>) -> Self {
        let answers = answers.into_iter().map(|a| a.map(str::to_string).map_err(str::to_string)).collect();
        FakeAws { answers: Arc::new(Mutex::new(answers)), reads: Arc::default() }
    }
    fn reads(&self) -> usize {
        self.reads.lock().unwrap().len()
    }
}

#[async_trait]
impl ParameterApi for FakeAws {
    async fn secure_string(&self, name: &str) -> Result<String, String> {
        self.reads.lock().unwrap().push(name.to_string());
        let mut a = self.answers.lock().unwrap();
        if a.len() > 1 {
            a.remove(0)
        } else {
            a[0].clone()
        }
    }
}

#[async_trait]
impl SsmApi for FakeAws {
    async fn send_command(&self, _id: &str, _commands: &[String], _comment: &str) -> Result<String, String> {
        Err("not in this test".into())
    }
    async fn invocation(&self, _command_id: &str, _id: &str) -> Result<InvocationStatus, String> {
        Err("not in this test".into())
    }
}

#[async_trait]
impl Ec2Api for FakeAws {
    async fn describe(&self, _id: &str) -> Result<Option<InstanceInfo>, String> {
        Err("not in this test".into())
    }
    async fn stop(&self, _id: &str, _force: bool) -> Result<(), String> {
        Err("not in this test".into())
    }
}

/// An agent answering every `POST /demote` with a confirmation for n1, term 7; returns the
/// requests it received (lowercased).
async fn agent() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let got = pgdaemon_testkit::http::answer_one(&mut sock, 200, r#"{"demoted":true,"term":7,"member":"n1"}"#).await;
            log.lock().unwrap().push(got.to_ascii_lowercase());
        }
    });
    (url, seen)
}

fn target(api_url: &str) -> FenceTarget {
    let mut t = FenceTarget::new("prod", "n1", None, 7, TransitionKind::Failover, "lease expired");
    t.api_url = api_url.to_string();
    t
}

#[tokio::test]
async fn the_token_is_read_once_at_the_first_fence_and_sent_as_bearer() {
    let aws = FakeAws::new(vec![Ok("t0ken-from-ssm")]);
    let f = TokenHttpFencer::new(aws.clone(), PARAM, Duration::from_secs(5));
    assert_eq!(f.name(), "http");
    assert_eq!(aws.reads(), 0, "nothing is read before the first fence");
    let (url, seen) = agent().await;
    assert!(f.fence(&target(&url), None).await.is_confirmed());
    assert!(f.fence(&target(&url), None).await.is_confirmed());
    assert_eq!(*aws.reads.lock().unwrap(), vec![PARAM.to_string()], "read once, then kept");
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|r| r.starts_with("post /demote ") && r.contains("authorization: bearer t0ken-from-ssm")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn an_unreadable_token_fails_the_http_fencer_and_the_chain_goes_on() {
    let aws = FakeAws::new(vec![Err("AccessDeniedException: not authorized to perform ssm:GetParameter"), Ok("t0ken")]);
    let (url, seen) = agent().await;
    let f = TokenHttpFencer::new(aws.clone(), PARAM, Duration::from_secs(5));
    match f.fence(&target(&url), None).await {
        FenceStatus::Failed { detail } => {
            assert!(detail.contains(PARAM) && detail.contains("AccessDenied"), "{detail}");
        }
        other => panic!("an unreadable token must fail the fence: {other:?}"),
    }
    assert!(seen.lock().unwrap().is_empty(), "no request without the credentials");
    // The next fence (next run) reads again and works.
    assert!(f.fence(&target(&url), None).await.is_confirmed());
    assert_eq!(aws.reads(), 2);

    // In a chain, the failure is a note and the next fencer decides.
    struct Confirms;
    #[async_trait]
    impl Fencer for Confirms {
        fn name(&self) -> &str {
            "next"
        }
        async fn fence(&self, _t: &FenceTarget, _p: Option<&PendingHandle>) -> FenceStatus {
            FenceStatus::Confirmed { detail: "stopped".into(), lsn: None }
        }
    }
    let broken = FakeAws::new(vec![Err("throttled")]);
    let chain =
        FenceChain::new(vec![Box::new(TokenHttpFencer::new(broken.clone(), PARAM, Duration::from_secs(5))), Box::new(Confirms)]);
    assert!(chain.fence(&target(&url), None).await.is_confirmed());
    let alone = FenceChain::new(vec![Box::new(TokenHttpFencer::new(broken, PARAM, Duration::from_secs(5)))]);
    assert!(matches!(alone.fence(&target(&url), None).await, FenceStatus::Failed { .. }));
}

#[tokio::test]
async fn unusable_token_values_fail_closed() {
    let (url, seen) = agent().await;
    for value in ["s3cr\nt", " s3crt", "s3crt "] {
        let f = TokenHttpFencer::new(FakeAws::new(vec![Ok(value)]), PARAM, Duration::from_secs(5));
        match f.fence(&target(&url), None).await {
            FenceStatus::Failed { detail } => assert!(!detail.contains("s3cr"), "the value never shows: {detail}"),
            other => panic!("{value:?}: {other:?}"),
        }
    }
    assert!(seen.lock().unwrap().is_empty());
}

#[tokio::test]
async fn build_fencer_wires_the_parameter_without_reading_it() {
    let config = LambdaConfig::from_env(env(&[
        ("PGDAEMON_CLUSTERS", "prod"),
        ("PGDAEMON_FENCING", "http"),
        ("PGDAEMON_API_TOKEN_PARAMETER", PARAM),
    ]))
    .unwrap();
    let aws = FakeAws::new(vec![Ok("t0ken")]);
    let chain = pgdaemon_lambda::build_fencer(&config, aws.clone(), aws.clone()).unwrap();
    assert_eq!(chain.names(), vec!["http".to_string()]);
    assert_eq!(aws.reads(), 0, "no AWS call at init");
    let (url, seen) = agent().await;
    assert!(chain.fence(&target(&url), None).await.is_confirmed());
    assert!(seen.lock().unwrap()[0].contains("authorization: bearer t0ken"));

    // Without the variable: no credentials sent, as before.
    let config = LambdaConfig::from_env(env(&[("PGDAEMON_CLUSTERS", "prod"), ("PGDAEMON_FENCING", "http")])).unwrap();
    let aws = FakeAws::new(vec![Ok("t0ken")]);
    let chain = pgdaemon_lambda::build_fencer(&config, aws.clone(), aws.clone()).unwrap();
    assert!(chain.fence(&target(&url), None).await.is_confirmed());
    assert_eq!(aws.reads(), 0);
    assert!(!seen.lock().unwrap()[1].contains("authorization:"));
}

/// A fleet coordinator reads each cluster's own token, once per cluster.
#[tokio::test]
async fn a_cluster_placeholder_reads_each_clusters_own_token() {
    let aws = FakeAws::new(vec![Ok("t0ken")]);
    let f = TokenHttpFencer::new(aws.clone(), "/pgdaemon/{cluster}/api-token", Duration::from_secs(5));
    let (url, _seen) = agent().await;
    for cluster in ["prod", "prod", "stage"] {
        let t = FenceTarget { cluster: cluster.into(), ..target(&url) };
        assert!(f.fence(&t, None).await.is_confirmed());
    }
    assert_eq!(*aws.reads.lock().unwrap(), vec!["/pgdaemon/prod/api-token", "/pgdaemon/stage/api-token"]);
}
