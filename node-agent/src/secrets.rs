//! The replication password: from a file (permissions checked, trailing newline trimmed) or an
//! SSM Parameter Store SecureString (cargo feature `ssm`, on by default).
//!
//! The value lives only inside [`Secret`], whose `Debug`, `Display` and `Serialize` print
//! `<redacted>`, so it cannot reach a log line, a `{:?}` of a config or a store record by accident.
//! Code that must hand it to libpq calls [`Secret::expose`], and nothing else.

pub use pgdaemon_dcs::secret::{read_password_file, Secret, SecretError};

/// Reads a SecureString (or String) parameter, decrypted.
#[cfg(feature = "ssm")]
pub async fn read_ssm_parameter(client: &aws_sdk_ssm::Client, name: &str) -> Result<Secret, SecretError> {
    let ssm_err = |reason: String| SecretError::Ssm { name: name.to_string(), reason };
    let out = client
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .map_err(|e| ssm_err(aws_sdk_ssm::error::DisplayErrorContext(e).to_string()))?;
    let value = out.parameter().and_then(|p| p.value()).ok_or_else(|| ssm_err("the parameter has no value".into()))?;
    if value.is_empty() {
        return Err(ssm_err("the parameter is empty".into()));
    }
    Ok(Secret::new(value))
}

/// Builds an SSM client from the SDK's usual chain (region, credentials, `AWS_ENDPOINT_URL`).
#[cfg(feature = "ssm")]
pub async fn ssm_client() -> aws_sdk_ssm::Client {
    let conf = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
    aws_sdk_ssm::Client::new(&conf)
}

/// Reads the SecureString `name`, decrypted, with a client from the SDK's usual chain: the one
/// path every secret the agent keeps in SSM takes (`[postgres] ssm_parameter`,
/// `[api] token_ssm_parameter`).
pub async fn load_ssm_secret(name: &str) -> Result<Secret, SecretError> {
    #[cfg(feature = "ssm")]
    {
        read_ssm_parameter(&ssm_client().await, name).await
    }
    #[cfg(not(feature = "ssm"))]
    {
        Err(SecretError::Ssm { name: name.to_string(), reason: "built without the `ssm` feature".into() })
    }
}

/// Whether `name` can be an SSM parameter name (characters and length; no AWS call). The
/// caller adds its own rules (the API token's parameter must be absolute) and names its key.
pub fn check_ssm_parameter_name(name: &str) -> Result<(), String> {
    let ok_chars = name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-/".contains(c));
    if name.is_empty() || name.len() > 2048 || !ok_chars {
        return Err(format!("{name:?} is not an SSM parameter name"));
    }
    Ok(())
}
