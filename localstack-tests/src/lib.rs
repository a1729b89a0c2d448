//! Support for the end-to-end tests of the AWS path (`tests/aws_path.rs`): the stack deployed by
//! `scripts/localstack-test`, the real coordinator binary under a local Lambda runtime API
//! emulator (`cargo lambda watch --only-lambda-apis`), real agents as child processes, and a TCP
//! relay in front of the AWS endpoint so that a test can take the endpoint away and give it back
//! (with its state) whatever emulator serves it (moto server or LocalStack).
//!
//! Every process started here is owned by a guard that stops exactly that PID when dropped, and
//! dies with the test process (`PR_SET_PDEATHSIG`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinSet;

/// What `scripts/localstack-test` deployed, from its `PGDAEMON_LST_*` variables.
#[derive(Debug, Clone)]
pub struct Stack {
    pub endpoint: String,
    pub region: String,
    pub cluster: String,
    pub function: String,
    pub table: String,
    pub topic_arn: String,
    pub rule: String,
    pub tag_key: String,
    /// Directory holding the built `bootstrap` and `pgdaemon-agent`.
    pub bin_dir: PathBuf,
    pub python: PathBuf,
}

impl Stack {
    /// `None` (the test explains and skips) when the script did not set the variables up.
    pub fn from_env() -> Option<Stack> {
        let v = |k: &str| std::env::var(k).ok().filter(|s| !s.is_empty());
        Some(Stack {
            endpoint: v("AWS_ENDPOINT_URL")?,
            region: v("AWS_REGION").unwrap_or_else(|| "us-east-1".into()),
            cluster: v("PGDAEMON_LST_CLUSTER")?,
            function: v("PGDAEMON_LST_FUNCTION")?,
            table: v("PGDAEMON_LST_TABLE")?,
            topic_arn: v("PGDAEMON_LST_TOPIC_ARN")?,
            rule: v("PGDAEMON_LST_RULE")?,
            tag_key: v("PGDAEMON_LST_TAG_KEY")?,
            bin_dir: PathBuf::from(v("PGDAEMON_LST_BIN_DIR")?),
            python: PathBuf::from(v("PGDAEMON_LST_PYTHON").unwrap_or_else(|| "python3".into())),
        })
    }

    /// Runs one `aws_helper.py` command (boto3 against the real endpoint) and parses its JSON.
    pub fn aws(&self, args: &[&str]) -> Result<Value> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("aws_helper.py");
        let out = Command::new(&self.python)
            .arg(&script)
            .args(args)
            .env("AWS_ENDPOINT_URL", &self.endpoint)
            .env("AWS_DEFAULT_REGION", &self.region)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", script.display()))?;
        if !out.status.success() {
            bail!("aws_helper {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("aws_helper {args:?}: not JSON"))
    }

    pub fn instance_state(&self, id: &str) -> Result<String> {
        Ok(self.aws(&["state", id])?.as_str().unwrap_or_default().to_string())
    }
}

/// A child process stopped by PID (SIGTERM, then SIGKILL after a grace period) when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr appended to `log`, tied to this process's life.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Proc> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        cmd.stdin(Stdio::null()).stdout(file.try_clone()?).stderr(file);
        #[cfg(target_os = "linux")]
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().with_context(|| format!("cannot start {name}"))?;
        Ok(Proc { name: name.to_string(), child: Some(child), log: log.to_path_buf() })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Still running?
    pub fn alive(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// SIGKILL (a host that dies), waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for it.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else { return };
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// A TCP relay from a loopback port to the AWS endpoint. [`Relay::stop`] closes the listener and
/// cuts every open connection (the endpoint is unreachable, as in an outage of the service);
/// [`Relay::start`] listens again on the same port. The emulator behind keeps its state.
pub struct Relay {
    port: u16,
    target: String,
    tasks: Arc<Mutex<JoinSet<()>>>,
}

impl Relay {
    /// `endpoint`: `http://host:port` of the real endpoint.
    pub async fn new(endpoint: &str) -> Result<Relay> {
        let target = endpoint.trim_start_matches("http://").trim_end_matches('/').to_string();
        if target.contains('/') || endpoint.starts_with("https://") {
            bail!("the relay handles plain http://host:port endpoints, not {endpoint}");
        }
        let relay = Relay { port: pgdaemon_testkit::ports::free_port(), target, tasks: Arc::new(Mutex::new(JoinSet::new())) };
        relay.start().await?;
        Ok(relay)
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn start(&self) -> Result<()> {
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(([127, 0, 0, 1], self.port).into())?;
        let listener: TcpListener = socket.listen(128)?;
        let target = self.target.clone();
        let tasks = self.tasks.clone();
        self.tasks.lock().unwrap().spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let target = target.clone();
                tasks.lock().unwrap().spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(())
    }

    /// Closes the listener and every relayed connection.
    pub fn stop(&self) {
        self.tasks.lock().unwrap().abort_all();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The local Lambda: `cargo lambda watch --only-lambda-apis` serving the Lambda Invoke API and the
/// runtime API on one port, and the real `bootstrap` polling that runtime API with the deployed
/// function's environment. Invoke is `POST /2015-03-31/functions/<name>/invocations`, exactly
/// what `aws lambda invoke --endpoint-url` sends.
pub struct LocalLambda {
    pub port: u16,
    pub function: String,
    // Field order: the function stops before the emulator it polls.
    pub bootstrap: Proc,
    _emulator: Proc,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl LocalLambda {
    /// `env`: the function's environment (the deployed one plus test overrides).
    pub async fn start(stack: &Stack, env: &BTreeMap<String, String>) -> Result<LocalLambda> {
        let dir = tempfile::Builder::new().prefix("pgdaemon-lambda-emu-").tempdir()?;
        // cargo-lambda serves only functions that are binaries of the Cargo project it runs in:
        // a stub project whose one binary has the deployed function's name.
        std::fs::write(
            dir.path().join("Cargo.toml"),
            format!(
                "[package]\nname = \"lambda-emulator-stub\"\nversion = \"0.0.0\"\nedition = \"2021\"\n[workspace]\n[[bin]]\nname = \"{}\"\npath = \"main.rs\"\n",
                stack.function
            ),
        )?;
        std::fs::write(dir.path().join("main.rs"), "fn main() {}\n")?;
        let port = pgdaemon_testkit::ports::free_port();
        // `cargo-lambda lambda ...` is what `cargo lambda ...` runs: calling it directly leaves no
        // cargo parent process between the guard and the emulator.
        let mut cmd = Command::new(which("cargo-lambda")?);
        cmd.args(["lambda", "watch", "--only-lambda-apis", "-A", "127.0.0.1", "-P", &port.to_string()])
            .current_dir(dir.path())
            .env("NO_COLOR", "1");
        let emulator = Proc::spawn("cargo-lambda watch", cmd, &dir.path().join("emulator.log"))?;
        wait_port(port, Duration::from_secs(30)).await.context("the Lambda emulator did not listen")?;

        let mut cmd = Command::new(stack.bin_dir.join("bootstrap"));
        cmd.env_clear()
            .envs(env)
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{port}/.rt/{}", stack.function))
            .env("AWS_LAMBDA_FUNCTION_NAME", &stack.function)
            .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
            .env("RUST_LOG", "info");
        let mut bootstrap = Proc::spawn("bootstrap", cmd, &dir.path().join("bootstrap.log"))?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !bootstrap.alive() {
            bail!("the coordinator Lambda exited at init:\n{}", bootstrap.log_tail(20));
        }
        Ok(LocalLambda {
            port,
            function: stack.function.clone(),
            bootstrap,
            _emulator: emulator,
            _dir: dir,
            // reqwest has no process-wide rustls provider: every client is given its TLS configuration.
            http: reqwest::Client::builder().use_preconfigured_tls(pgdaemon_dcs::tls::client_config(None, None)?).build()?,
        })
    }

    /// The endpoint agents use for the Lambda API (`AWS_ENDPOINT_URL_LAMBDA`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A synchronous invoke: `Ok` is the function's answer, `Err` its error (function error or
    /// transport), as `aws lambda invoke` reports them.
    pub async fn invoke(&mut self, payload: &Value) -> Result<Value> {
        let r = self.invoke_detached(payload).await;
        if let Err(e) = &r {
            if !self.bootstrap.alive() {
                bail!("function died: {e:#}\n{}", self.bootstrap.log_tail(20));
            }
        }
        r
    }

    /// The same invoke as a future that borrows nothing (to spawn it and keep checking the
    /// cluster while the function runs).
    pub fn invoke_detached(&self, payload: &Value) -> impl std::future::Future<Output = Result<Value>> + Send + 'static {
        let url = format!("{}/2015-03-31/functions/{}/invocations", self.url(), self.function);
        let (http, body) = (self.http.clone(), payload.to_string());
        async move {
            let resp = http
                .post(&url)
                .header("X-Amz-Invocation-Type", "RequestResponse")
                .body(body)
                .timeout(Duration::from_secs(90))
                .send()
                .await
                .context("invoke")?;
            let status = resp.status();
            let function_error = resp.headers().get("x-amz-function-error").is_some();
            let text = resp.text().await.unwrap_or_default();
            let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
            if !status.is_success() || function_error || body.get("errorType").is_some() || body.get("errorMessage").is_some() {
                bail!("function error ({status}): {text}");
            }
            Ok(body)
        }
    }
}

fn which(program: &str) -> Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
        .with_context(|| format!("{program} is not on PATH (the tools venv: run scripts/setup)"))
}

pub async fn wait_port(port: u16, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("nothing listens on 127.0.0.1:{port} after {timeout:?}")
}

/// Polls `cond` every 250 ms until it holds, or fails with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if cond().await {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
