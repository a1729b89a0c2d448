//! `pgdctl invoke`: the same actions sent to the coordinator Lambda, as the JSON payload
//! `aws lambda invoke --payload` takes: `{"action":…,"cluster":…,"candidate":…,"force":…}`.

use std::io::Write;

use aws_sdk_lambda::primitives::Blob;
use clap::{Args, ValueEnum};
use serde::Serialize;

use crate::{CtlError, StoreOpts};

/// The Lambda's actions (docs/design.md section 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LambdaAction {
    /// The cluster's state as the coordinator sees it.
    Status,
    /// One coordinator run now (what the schedule and the agents' fast path trigger).
    Evaluate,
    Failover,
    Switchover,
    Pause,
    Resume,
}

/// The invocation payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LambdaPayload {
    pub action: LambdaAction,
    pub cluster: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub candidate: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct InvokeArgs {
    /// What the coordinator should do.
    #[arg(value_enum)]
    pub action: LambdaAction,
    /// The coordinator function (name or ARN).
    #[arg(long, env = "PGDCTL_FUNCTION", default_value = "pgdaemon-coordinator")]
    pub function_name: String,
    /// failover/switchover: the member to promote.
    #[arg(long)]
    pub candidate: Option<String>,
    /// failover: promote the candidate even if it fails the eligibility checks (lag, timeline,
    /// tags): what only the old primary had is lost. Sent as `"force": true`. (`--force`, its
    /// name before 0.3, still works.)
    #[arg(long = "allow-data-loss", alias = "force", requires = "candidate")]
    pub force: bool,
    /// Lambda API endpoint (a local emulator). Default: `AWS_ENDPOINT_URL`, else AWS itself.
    #[arg(long, env = "PGDCTL_LAMBDA_ENDPOINT_URL")]
    pub lambda_endpoint_url: Option<String>,
    /// Print the payload and the equivalent `aws lambda invoke` command instead of invoking.
    #[arg(long)]
    pub print_payload: bool,
}

/// Builds and checks the payload (bad input changes nothing: it is never sent).
pub fn payload(action: LambdaAction, cluster: &str, candidate: Option<&str>, force: bool) -> Result<LambdaPayload, CtlError> {
    pgdaemon_core::keys::validate_cluster_name(cluster).map_err(CtlError::Usage)?;
    let changes_primary = matches!(action, LambdaAction::Failover | LambdaAction::Switchover);
    if let Some(c) = candidate {
        if !changes_primary {
            return Err(CtlError::Usage(
                format!("--candidate applies only to failover and switchover, not {action:?}").to_lowercase(),
            ));
        }
        pgdaemon_core::keys::validate_member_name(c).map_err(CtlError::Usage)?;
    }
    if force && action != LambdaAction::Failover {
        return Err(CtlError::Usage("--allow-data-loss applies only to failover".into()));
    }
    Ok(LambdaPayload { action, cluster: cluster.to_string(), candidate: candidate.map(str::to_string), force })
}

/// How the Lambda's answer reads: `Err(Refused)` when it says `"accepted": false` or the
/// function failed; otherwise the text to print.
pub fn interpret_response(function_error: Option<&str>, body: &[u8]) -> Result<String, CtlError> {
    let text = String::from_utf8_lossy(body).to_string();
    if let Some(kind) = function_error {
        return Err(CtlError::Refused(format!("the function failed ({kind}): {text}")));
    }
    match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => {
            if v.get("accepted") == Some(&serde_json::Value::Bool(false)) {
                let reason = v.get("reason").and_then(|r| r.as_str()).unwrap_or("no reason given");
                return Err(CtlError::Refused(reason.to_string()));
            }
            Ok(serde_json::to_string_pretty(&v).unwrap_or(text))
        }
        Err(_) => Ok(text),
    }
}

pub async fn run(opts: &StoreOpts, args: InvokeArgs, out: &mut impl Write) -> Result<(), CtlError> {
    // The cluster may come from a config file like every other command.
    let cluster = match (&opts.cluster, &opts.config) {
        (Some(c), _) => c.clone(),
        (None, Some(_)) => opts.resolve()?.1,
        (None, None) => return Err(CtlError::Usage("invoke needs --cluster NAME (or --config FILE)".into())),
    };
    let body = payload(args.action, &cluster, args.candidate.as_deref(), args.force)?;
    let json = serde_json::to_string(&body).map_err(anyhow::Error::from)?;
    if args.print_payload {
        writeln!(out, "{json}")?;
        writeln!(
            out,
            "# aws lambda invoke --function-name {} --cli-binary-format raw-in-base64-out --payload '{json}' /dev/stdout",
            args.function_name
        )?;
        return Ok(());
    }
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(region) = &opts.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(url) = &args.lambda_endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let sdk = loader.load().await;
    let client = aws_sdk_lambda::Client::new(&sdk);
    let resp =
        client.invoke().function_name(&args.function_name).payload(Blob::new(json.into_bytes())).send().await.map_err(|e| {
            let detail = aws_sdk_lambda::error::DisplayErrorContext(&e).to_string();
            match e.as_service_error() {
                Some(se) if se.is_resource_not_found_exception() => {
                    CtlError::Usage(format!("no function {:?}: {detail}", args.function_name))
                }
                Some(_) => CtlError::Refused(format!("invoke {}: {detail}", args.function_name)),
                None => CtlError::Unavailable(format!("Lambda unavailable: invoke {}: {detail}", args.function_name)),
            }
        })?;
    let body = resp.payload().map(|b| b.as_ref().to_vec()).unwrap_or_default();
    let text = interpret_response(resp.function_error(), &body)?;
    writeln!(out, "{text}")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_match_the_lambda_contract() {
        let p = payload(LambdaAction::Failover, "main", Some("pg-2"), true).unwrap();
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"action": "failover", "cluster": "main", "candidate": "pg-2", "force": true})
        );
        let p = payload(LambdaAction::Pause, "main", None, false).unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"action":"pause","cluster":"main"}"#);
        let p = payload(LambdaAction::Evaluate, "main", None, false).unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), r#"{"action":"evaluate","cluster":"main"}"#);
    }

    #[test]
    fn bad_payloads_are_usage_errors() {
        assert_eq!(payload(LambdaAction::Pause, "main", Some("pg-2"), false).unwrap_err().exit_code(), 2);
        assert_eq!(payload(LambdaAction::Switchover, "main", Some("pg-2"), true).unwrap_err().exit_code(), 2);
        assert_eq!(payload(LambdaAction::Status, "a b", None, false).unwrap_err().exit_code(), 2);
        assert_eq!(payload(LambdaAction::Failover, "main", Some("x/y"), false).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn responses_are_interpreted() {
        let refused = interpret_response(None, br#"{"accepted":false,"reason":"the cluster is paused"}"#).unwrap_err();
        assert_eq!(refused.exit_code(), 1);
        assert!(refused.to_string().contains("paused"));
        assert!(interpret_response(None, br#"{"accepted":true}"#).is_ok());
        assert_eq!(interpret_response(Some("Unhandled"), b"boom").unwrap_err().exit_code(), 1);
    }
}
