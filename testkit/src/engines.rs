//! etcd and moto server processes on free loopback ports.
//!
//! Each engine is owned by a value that stops exactly the process it started (by PID, then
//! waits for it) when dropped. Tests that only need *an* engine share one per test binary
//! ([`EtcdServer::shared`], [`MotoServer::shared`]); a test that stops its engine starts its own.
//! Shared engines live in statics, which Rust never drops, so they are stopped (and their data
//! removed) by an exit handler, and every engine also dies with the test process itself
//! (`PR_SET_PDEATHSIG`), even when that is killed.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::ports::free_port;

/// How long an engine may take to answer after it was started.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts with fresh ports when a just-chosen port was taken by someone else meanwhile.
const START_ATTEMPTS: usize = 3;

/// A local single-member etcd with its data in a temporary directory.
pub struct EtcdServer {
    engine: Engine,
    /// Set when clients must speak TLS ([`EtcdServer::start_tls`]).
    tls: Option<EtcdTls>,
}

/// The TLS files of an etcd that serves clients over TLS only ([`EtcdServer::start_tls`]).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA that signed the server's certificate and every client certificate it accepts.
    pub ca_file: PathBuf,
    /// The server's certificate and key (its names must include `127.0.0.1`).
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl EtcdServer {
    /// Starts etcd on free loopback client and peer ports and waits until it is healthy.
    pub fn start() -> anyhow::Result<Self> {
        Self::launch(None, &[])
    }

    /// Starts etcd serving clients over TLS only (`https://`, [`EtcdServer::endpoint`]),
    /// presenting `tls.cert_file` and accepting only clients whose certificate `tls.ca_file`
    /// signed (`--client-cert-auth`). `extra_args` go to etcd as they are (e.g.
    /// `--auth-token-ttl`). Health is checked on a separate plain-HTTP metrics port.
    pub fn start_tls(tls: &EtcdTls, extra_args: &[&str]) -> anyhow::Result<Self> {
        Self::launch(Some(tls), extra_args)
    }

    fn launch(tls: Option<&EtcdTls>, extra_args: &[&str]) -> anyhow::Result<Self> {
        let program = find_program("etcd", &[PathBuf::from("/usr/bin/etcd"), PathBuf::from("/usr/local/bin/etcd")])
            .context("etcd is not installed: run scripts/setup")?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let (client_port, peer_port) = (free_port(), free_port());
            let dir = temp_dir("pgd-etcd-")?;
            let scheme = if tls.is_some() { "https" } else { "http" };
            let client = format!("{scheme}://127.0.0.1:{client_port}");
            let peer = format!("http://127.0.0.1:{peer_port}");
            let data = dir.join("data");
            let mut args = vec![
                "--name".into(),
                "pgd".into(),
                "--data-dir".into(),
                data.display().to_string(),
                "--listen-client-urls".into(),
                client.clone(),
                "--advertise-client-urls".into(),
                client,
                "--listen-peer-urls".into(),
                peer.clone(),
                "--initial-advertise-peer-urls".into(),
                peer.clone(),
                "--initial-cluster".into(),
                format!("pgd={peer}"),
                "--initial-cluster-state".into(),
                "new".into(),
            ];
            // Plain HTTP answers /health on the client port; a TLS one gets a metrics port.
            let mut ready_port = client_port;
            if let Some(tls) = tls {
                ready_port = free_port();
                for (flag, value) in [
                    ("--cert-file", tls.cert_file.display().to_string()),
                    ("--key-file", tls.key_file.display().to_string()),
                    ("--trusted-ca-file", tls.ca_file.display().to_string()),
                    ("--client-cert-auth", "true".into()),
                    ("--listen-metrics-urls", format!("http://127.0.0.1:{ready_port}")),
                ] {
                    args.push(format!("{flag}={value}"));
                }
            }
            args.extend(extra_args.iter().map(|a| a.to_string()));
            let engine = Engine::new("etcd", program.clone(), args, dir, client_port, "/health").with_ready_port(ready_port);
            match engine.spawn() {
                Ok(()) => return Ok(EtcdServer { engine, tls: tls.cloned() }),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// Turns on etcd's authentication (after [`EtcdServer::start_tls`]), with `etcdctl` from
    /// etcd's directory or PATH: a `root` user (etcd requires one; random password, not kept),
    /// and `user` with `password` and a role that may read and write the keys under `prefix` only.
    /// `client` is any client certificate the server's CA signed (etcdctl's TLS identity).
    pub fn enable_auth(&self, client: &crate::tls::IssuedCert, user: &str, password: &str, prefix: &str) -> anyhow::Result<()> {
        let tls = self.tls.as_ref().context("enable_auth needs an etcd started with start_tls")?;
        let etcdctl = [self.engine.program.with_file_name("etcdctl")]
            .into_iter()
            .find(|p| is_executable(p))
            .or_else(|| find_program("etcdctl", &[]))
            .context("etcdctl is not installed beside etcd nor on PATH")?;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let root_password = format!("root-{nanos}-{}", std::process::id());
        let role = format!("{user}-rw");
        let steps: [Vec<String>; 6] = [
            vec!["user".into(), "add".into(), format!("root:{root_password}"), "--interactive=false".into()],
            vec!["role".into(), "add".into(), role.clone()],
            vec![
                "role".into(),
                "grant-permission".into(),
                role.clone(),
                "--prefix=true".into(),
                "readwrite".into(),
                format!("{prefix}/"),
            ],
            vec!["user".into(), "add".into(), format!("{user}:{password}"), "--interactive=false".into()],
            vec!["user".into(), "grant-role".into(), user.into(), role],
            vec!["auth".into(), "enable".into()],
        ];
        for step in steps {
            let out = Command::new(&etcdctl)
                .env("ETCDCTL_API", "3")
                .arg(format!("--endpoints={}", self.endpoint()))
                .arg(format!("--cacert={}", tls.ca_file.display()))
                .arg(format!("--cert={}", client.cert.display()))
                .arg(format!("--key={}", client.key.display()))
                .args(["--dial-timeout=2s", "--command-timeout=5s"])
                .args(&step)
                .stdin(Stdio::null())
                .output()
                .with_context(|| format!("cannot run {}", etcdctl.display()))?;
            if !out.status.success() {
                // The step names a user, a role or a command, never a password (passed inline
                // as `name:password` to `user add`, which is left out here).
                let shown = if step[..2] == ["user", "add"] { "user add <name:password>".into() } else { step.join(" ") };
                bail!("etcdctl {shown}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(())
    }

    /// The engine every ordinary check of this test binary shares (never stopped by tests).
    /// Panics, failing the test, when etcd cannot be started (e.g. not installed).
    pub fn shared() -> &'static EtcdServer {
        static SHARED: OnceLock<EtcdServer> = OnceLock::new();
        let server = SHARED.get_or_init(|| EtcdServer::start().unwrap_or_else(|e| panic!("cannot start etcd: {e:#}")));
        register_at_exit(&server.engine);
        server
    }

    /// Makes an etcd kept in a static (shared by a test binary's checks, like
    /// [`EtcdServer::shared`]) stop, and its data go, when the test process exits.
    pub fn stop_at_exit(&'static self) {
        register_at_exit(&self.engine);
    }

    /// The client URL, e.g. `http://127.0.0.1:23791` (`https://` after [`EtcdServer::start_tls`]).
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.engine.port)
    }
}

/// A moto server (AWS API emulator from the project's virtualenv). Its state is in memory only:
/// a restart starts empty.
pub struct MotoServer {
    engine: Engine,
}

impl MotoServer {
    /// Region and static credentials that clients of the emulator use (moto accepts any).
    pub const REGION: &'static str = "us-east-1";
    pub const ACCESS_KEY_ID: &'static str = "test";
    pub const SECRET_ACCESS_KEY: &'static str = "test";

    pub fn start() -> anyhow::Result<Self> {
        let program = find_moto().context("moto_server is not installed: run scripts/setup")?;
        let mut last_err = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port();
            let dir = temp_dir("pgd-moto-")?;
            let args = vec!["-H".into(), "127.0.0.1".into(), "-p".into(), port.to_string()];
            let engine = Engine::new("moto_server", program.clone(), args, dir, port, "/moto-api/");
            match engine.spawn() {
                Ok(()) => return Ok(MotoServer { engine }),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// The server every ordinary check of this test binary shares (never stopped by tests).
    pub fn shared() -> &'static MotoServer {
        static SHARED: OnceLock<MotoServer> = OnceLock::new();
        let server = SHARED.get_or_init(|| MotoServer::start().unwrap_or_else(|e| panic!("cannot start moto server: {e:#}")));
        register_at_exit(&server.engine);
        server
    }

    /// The endpoint URL for AWS SDK clients, e.g. `http://127.0.0.1:50321`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.engine.port)
    }
}

impl std::ops::Deref for EtcdServer {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

/// Moto keeps its state in memory only: [`Engine::restart`] starts it empty.
impl std::ops::Deref for MotoServer {
    type Target = Engine;
    fn deref(&self) -> &Engine {
        &self.engine
    }
}

/// One engine process, restartable with the same arguments. [`EtcdServer`] and [`MotoServer`]
/// dereference to it for `pid`, `stop`, `restart`, `freeze` and `thaw`.
pub struct Engine {
    name: &'static str,
    program: PathBuf,
    args: Vec<String>,
    /// Data and the log (`engine.log`); removed when the engine is dropped or at exit.
    dir: PathBuf,
    port: u16,
    /// Where `GET ready_path` answers 200 once the engine is up (plain HTTP; usually `port`).
    ready_port: u16,
    ready_path: &'static str,
    child: Mutex<Option<Child>>,
}

impl Engine {
    fn new(name: &'static str, program: PathBuf, args: Vec<String>, dir: PathBuf, port: u16, ready_path: &'static str) -> Self {
        Engine { name, program, args, dir, port, ready_port: port, ready_path, child: Mutex::new(None) }
    }

    fn with_ready_port(mut self, ready_port: u16) -> Self {
        self.ready_port = ready_port;
        self
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.lock().unwrap().as_ref().map(Child::id)
    }

    /// Starts the process again with the same arguments, ports and data directory (etcd's
    /// contents survive; moto's do not).
    pub fn restart(&self) -> anyhow::Result<()> {
        self.spawn()
    }

    /// Suspends the process (SIGSTOP): connections stay open but nothing answers, as in a
    /// network partition or a stalled host. [`Engine::thaw`] resumes it.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    /// Starts the process (if not running) and waits until it answers on its port.
    fn spawn(&self) -> anyhow::Result<()> {
        let mut slot = self.child.lock().unwrap();
        if slot.is_some() {
            return Ok(());
        }
        let log_path = self.dir.join("engine.log");
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path)?;
        let mut cmd = Command::new(&self.program);
        // In its own directory: whatever it writes beside itself (moto's request recording, for
        // one) stays out of the checkout.
        cmd.args(&self.args).current_dir(&self.dir).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        let mut child = spawn_tied_to_process(cmd).with_context(|| format!("cannot run {}", self.program.display()))?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("{} exited during start-up ({status}); log {}:\n{}", self.name, log_path.display(), log_tail(&log_path));
            }
            if http_ok(self.ready_port, self.ready_path) {
                *slot = Some(child);
                return Ok(());
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} did not answer within {READY_TIMEOUT:?}; log {}:\n{}",
                    self.name,
                    log_path.display(),
                    log_tail(&log_path)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process by PID (SIGKILL: an abrupt stop, as a crash or power loss) and reaps it.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` to the running process, if any.
    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = self.child.lock().unwrap().as_ref() {
            // SAFETY: kill(2) on the PID of our own child, which has not been reaped (we hold it).
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
    }

    fn remove_data(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
        self.remove_data();
    }
}

/// Shared engines, stopped by [`stop_shared_engines`] when the test process exits.
static AT_EXIT: Mutex<Vec<&'static Engine>> = Mutex::new(Vec::new());

/// Directories of shared test fixtures (certificates) removed at exit, after the engines stopped.
static DIRS_AT_EXIT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn register_at_exit(engine: &'static Engine) {
    let mut list = AT_EXIT.lock().unwrap();
    if !list.iter().any(|e| std::ptr::eq(*e, engine)) {
        list.push(engine);
    }
    drop(list);
    install_exit_hook();
}

/// Removes `dir` when the test process exits: for the files of a fixture that lives in a static
/// beside a shared engine (statics are never dropped).
pub fn remove_dir_at_exit(dir: PathBuf) {
    DIRS_AT_EXIT.lock().unwrap().push(dir);
    install_exit_hook();
}

fn install_exit_hook() {
    static HOOK: OnceLock<()> = OnceLock::new();
    HOOK.get_or_init(|| {
        // SAFETY: registers a plain `extern "C" fn` with no arguments, as atexit requires.
        unsafe { libc::atexit(stop_shared_engines) };
    });
}

extern "C" fn stop_shared_engines() {
    if let Ok(list) = AT_EXIT.lock() {
        for engine in list.iter() {
            engine.stop();
            engine.remove_data();
        }
    }
    if let Ok(dirs) = DIRS_AT_EXIT.lock() {
        for dir in dirs.iter() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Spawns `cmd` so that the child is killed when this process dies, however it dies.
/// `PR_SET_PDEATHSIG` fires when the *thread* that spawned the child exits, and test threads
/// come and go, so every child is spawned by one thread that lives as long as the process.
fn spawn_tied_to_process(mut cmd: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("engine-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static, so this thread never ends before the process.
            })
            .expect("spawn the engine-spawner thread");
        Mutex::new(tx)
    });
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: the closure runs in the forked child before exec and only makes one
        // async-signal-safe system call.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let (reply_tx, reply_rx) = mpsc::channel();
    sender.lock().unwrap().send((cmd, reply_tx)).map_err(|_| std::io::Error::other("engine-spawner thread is gone"))?;
    reply_rx.recv().map_err(|_| std::io::Error::other("engine-spawner thread is gone"))?
}

fn temp_dir(prefix: &str) -> anyhow::Result<PathBuf> {
    Ok(tempfile::Builder::new().prefix(prefix).tempdir().context("create a temporary directory")?.keep())
}

/// `name` on PATH, else the first of `fallbacks` that exists.
fn find_program(name: &str, fallbacks: &[PathBuf]) -> Option<PathBuf> {
    let on_path =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).map(|d| d.join(name)).collect::<Vec<_>>()).unwrap_or_default();
    on_path.into_iter().chain(fallbacks.iter().cloned()).find(|p| is_executable(p))
}

/// `moto_server` on PATH, in `$PGDAEMON_VENV/bin`, or in the default virtualenv of scripts/setup.
fn find_moto() -> Option<PathBuf> {
    let mut fallbacks = Vec::new();
    if let Some(venv) = std::env::var_os("PGDAEMON_VENV") {
        fallbacks.push(PathBuf::from(venv).join("bin/moto_server"));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")));
    if let Some(cache) = cache {
        fallbacks.push(cache.join("pgdaemon/venv/bin/moto_server"));
    }
    find_program("moto_server", &fallbacks)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether `GET path` on the loopback port answers 200.
fn http_ok(port: u16, path: &str) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(2)));
    if write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 16];
    let mut read = 0;
    while read < head.len() {
        match stream.read(&mut head[read..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => read += n,
        }
    }
    let head = String::from_utf8_lossy(&head[..read]);
    head.starts_with("HTTP/1.") && head.get(9..12) == Some("200")
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_stops_restarts_with_its_data_and_is_gone_after_drop() {
        let etcd = EtcdServer::start().expect("etcd (run scripts/setup)");
        let pid = etcd.pid().unwrap();
        assert!(http_ok(etcd.engine.port, "/health"));
        etcd.stop();
        assert!(!http_ok(etcd.engine.port, "/health"), "stopped etcd must not answer");
        etcd.restart().unwrap();
        assert!(http_ok(etcd.engine.port, "/health"));
        let new_pid = etcd.pid().unwrap();
        assert_ne!(pid, new_pid);
        let dir = etcd.engine.dir.clone();
        drop(etcd);
        assert!(!Path::new(&format!("/proc/{new_pid}")).exists() || proc_is_zombie_or_gone(new_pid), "killed by pid");
        assert!(!dir.exists(), "data removed");
    }

    #[test]
    fn moto_answers_and_stops() {
        let moto = MotoServer::start().expect("moto_server (run scripts/setup)");
        assert!(moto.endpoint().starts_with("http://127.0.0.1:"));
        assert!(http_ok(moto.port, "/moto-api/"));
        moto.stop();
        assert!(!http_ok(moto.port, "/moto-api/"));
    }

    fn proc_is_zombie_or_gone(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |s| s.contains(") Z "))
    }
}
