//! The etcd store against an etcd that speaks TLS only, requires client certificates signed by
//! its CA (`--client-cert-auth`) and has authentication enabled (user `pgdaemon`, read-write on
//! the test's prefix only). Tokens expire after one idle second (`--auth-token-ttl=1`), so the
//! client's re-authentication runs all the time here, not once every five minutes.
//!
//! One such etcd serves every check of this binary; only the conformance check that stops its
//! engine starts its own. Each refused client must fail clearly and leave nothing behind.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pgdaemon_core::conformance::Harness;
use pgdaemon_core::{ClusterRecord, DynamicConfig, LeaseClaim, LeaseName, MemberStatus, Store, StoreConfig, StoreError};
use pgdaemon_dcs::etcd::{read_password_file, ClientIdentity, Secret};
use pgdaemon_dcs::{EtcdSecurity, EtcdStore};
use pgdaemon_testkit::engines::{remove_dir_at_exit, EtcdServer, EtcdTls};
use pgdaemon_testkit::tls::{IssuedCert, TestPki};

const PREFIX: &str = "/pgdaemon-tls";
const USER: &str = "pgdaemon";
const PASSWORD: &str = "s3cret pass-phrase";
/// etcd options: tokens expire after 1 s without use; cheap password hashing for quick logins.
const ETCD_ARGS: &[&str] = &["--auth-token-ttl=1", "--bcrypt-cost=4"];

/// Certificates and the password file, shared by every check (removed at exit).
struct Files {
    ca: PathBuf,
    server: IssuedCert,
    client: IssuedCert,
    /// Signed by another CA: the server must refuse it, and the client must refuse a server
    /// verified only by that CA.
    untrusted: IssuedCert,
    untrusted_ca: PathBuf,
    password_file: PathBuf,
}

impl Files {
    fn create() -> Files {
        let dir = tempfile::Builder::new().prefix("pgd-etcd-tls-").tempdir().unwrap().keep();
        remove_dir_at_exit(dir.clone());
        let pki = TestPki::new(&dir).unwrap();
        let untrusted = pki.issue_untrusted("stranger", &["127.0.0.1"]).unwrap();
        let password_file = dir.join("etcd.pass");
        write_mode(&password_file, &format!("{PASSWORD}\n"), 0o600);
        Files {
            ca: pki.ca_file(),
            server: pki.issue("etcd-server", &["127.0.0.1"]).unwrap(),
            client: pki.issue("pgdaemon-client", &["127.0.0.1"]).unwrap(),
            untrusted_ca: untrusted.cert.parent().unwrap().join("ca.crt"),
            untrusted,
            password_file,
        }
    }

    fn identity(cert: &IssuedCert) -> ClientIdentity {
        ClientIdentity { cert_file: cert.cert.clone(), key_file: cert.key.clone() }
    }

    /// What a correctly configured agent uses.
    fn good(&self) -> EtcdSecurity {
        EtcdSecurity {
            ca_file: Some(self.ca.clone()),
            identity: Some(Self::identity(&self.client)),
            user: Some((USER.into(), read_password_file(&self.password_file).unwrap())),
        }
    }

    /// An etcd with TLS and authentication, as every check here expects it.
    fn start_etcd(&self) -> EtcdServer {
        let tls = EtcdTls { ca_file: self.ca.clone(), cert_file: self.server.cert.clone(), key_file: self.server.key.clone() };
        let server = EtcdServer::start_tls(&tls, ETCD_ARGS).unwrap_or_else(|e| panic!("cannot start etcd with TLS: {e:#}"));
        server.enable_auth(&self.client, USER, PASSWORD, PREFIX).unwrap_or_else(|e| panic!("cannot enable etcd auth: {e:#}"));
        server
    }
}

fn write_mode(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

struct Shared {
    files: Files,
    server: EtcdServer,
}

/// The etcd (and files) every check shares, started once; stopped by PID when the tests exit.
async fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    tokio::task::spawn_blocking(|| {
        let shared = SHARED.get_or_init(|| {
            let files = Files::create();
            let server = files.start_etcd();
            Shared { files, server }
        });
        shared.server.stop_at_exit();
        shared
    })
    .await
    .expect("etcd start-up")
}

fn cluster(check: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("{check}-{}-{nanos}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// The conformance suite, through TLS, client certificates and tokens that keep expiring.

// One per test binary: the size of the inline variant does not matter.
#[allow(clippy::large_enum_variant)]
enum Server {
    Shared(&'static Shared),
    /// For the check that stops its engine: same certificates, users and options.
    Own(&'static Shared, EtcdServer),
}

struct Secure(Server);

impl Secure {
    fn shared(&self) -> &'static Shared {
        match &self.0 {
            Server::Shared(s) | Server::Own(s, _) => s,
        }
    }

    fn server(&self) -> &EtcdServer {
        match &self.0 {
            Server::Shared(s) => &s.server,
            Server::Own(_, own) => own,
        }
    }

    /// A raw etcd-client connection with the same credentials, bypassing the store's encoder.
    async fn raw(&self) -> etcd_client::Client {
        let files = &self.shared().files;
        let tls = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(std::fs::read(&files.ca).unwrap()))
            .identity(etcd_client::Identity::from_pem(
                std::fs::read(&files.client.cert).unwrap(),
                std::fs::read(&files.client.key).unwrap(),
            ));
        let options = etcd_client::ConnectOptions::new().with_tls(tls).with_user(USER, PASSWORD);
        etcd_client::Client::connect([self.server().endpoint()], Some(options)).await.expect("raw etcd client")
    }
}

#[async_trait]
impl Harness for Secure {
    type S = EtcdStore;

    async fn start(own_engine: bool) -> Self {
        let shared = shared().await;
        if own_engine {
            let own = tokio::task::spawn_blocking(|| shared.files.start_etcd()).await.expect("etcd start-up");
            Secure(Server::Own(shared, own))
        } else {
            Secure(Server::Shared(shared))
        }
    }

    async fn client(&self) -> EtcdStore {
        EtcdStore::connect_with(&[self.server().endpoint()], PREFIX, self.shared().files.good()).await.expect("etcd client")
    }

    async fn stop_engine(&self) {
        self.server().stop();
    }

    /// A restarted etcd has forgotten every token it issued: the client must log in again.
    async fn restart_engine(&self) {
        self.server().restart().expect("restart etcd");
    }

    async fn corrupt(&self, cluster: &str, item: &str) {
        self.raw().await.put(format!("{PREFIX}/{cluster}/{item}"), "{\"not\": \"a record\"", None).await.expect("raw put");
    }

    async fn put_raw(&self, cluster: &str, item: &str, record: serde_json::Value) {
        self.raw().await.put(format!("{PREFIX}/{cluster}/{item}"), record.to_string(), None).await.expect("raw put");
    }

    const LEASE_EXPIRES_IN_ENGINE: bool = true;
}

mod conformance {
    pgdaemon_core::conformance_suite!(super::Secure);
}

// ---------------------------------------------------------------------------------------------
// Token expiry, and the clients etcd (or the client itself) must refuse.

/// Through the agent's own path (`[store]` keys, the password file read by `connect`): a lease
/// and a heartbeat are written and read, then again after the token expired while idle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_works_and_outlives_its_token() {
    let shared = shared().await;
    let files = &shared.files;
    let config = StoreConfig::Etcd {
        endpoints: vec![shared.server.endpoint()],
        prefix: PREFIX.into(),
        ca_file: Some(files.ca.clone()),
        cert_file: Some(files.client.cert.clone()),
        key_file: Some(files.client.key.clone()),
        username: Some(USER.into()),
        password_file: Some(files.password_file.clone()),
    };
    let store = pgdaemon_dcs::connect(&config).await.expect("connect with TLS and a user");
    let cluster = cluster("works");
    let held = store.acquire_lease(&cluster, LeaseName::Leader, LeaseClaim::Free, "a", 1, 10_000).await.unwrap();
    store.put_member(&cluster, &MemberStatus::new("a")).await.unwrap();
    let view = store.read_view(&cluster).await.unwrap();
    assert_eq!(view.leader.as_ref(), Some(&held));
    assert!(view.members.contains_key("a"));

    // Idle for longer than the token's TTL (checked by etcd every second): the next calls are
    // refused for an invalid token, the client logs in again and retries, within one call.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let started = Instant::now();
    let renewed = store.renew_lease(&cluster, LeaseName::Leader, &held).await.expect("renewal after the token expired");
    store.put_member(&cluster, &MemberStatus::new("b")).await.expect("heartbeat after the token expired");
    let view = store.read_view(&cluster).await.unwrap();
    assert_eq!(view.leader, Some(renewed));
    assert_eq!(view.members.len(), 2);
    assert!(started.elapsed() < Duration::from_secs(3), "re-authentication took {:?}", started.elapsed());
}

/// Connects with `security` to `endpoint` and tries to write; every attempt must fail, and the
/// well-configured client must then see nothing of `cluster`. Returns the errors.
async fn refused(shared: &Shared, endpoint: &str, security: EtcdSecurity, cluster: &str) -> Vec<StoreError> {
    let started = Instant::now();
    let mut errors = Vec::new();
    match EtcdStore::connect_with(&[endpoint.to_string()], PREFIX, security).await {
        Err(e) => errors.push(e),
        Ok(store) => {
            let record = ClusterRecord::bootstrap("a", DynamicConfig::default());
            errors.push(store.put_member(cluster, &MemberStatus::new("a")).await.unwrap_err());
            errors.push(store.write_cluster(cluster, None, &record).await.unwrap_err());
            errors.push(store.acquire_lease(cluster, LeaseName::Leader, LeaseClaim::Free, "a", 1, 10_000).await.unwrap_err());
            errors.push(store.read_view(cluster).await.unwrap_err());
        }
    }
    assert!(started.elapsed() < Duration::from_secs(12), "refusals took {:?}", started.elapsed());
    for e in &errors {
        assert!(!e.to_string().contains(PASSWORD) && !format!("{e:?}").contains(PASSWORD), "password in {e:?}");
    }
    let good = EtcdStore::connect_with(&[shared.server.endpoint()], PREFIX, shared.files.good()).await.unwrap();
    let view = good.read_view(cluster).await.unwrap();
    assert!(view.cluster.is_none() && view.leader.is_none() && view.members.is_empty(), "a refused client wrote: {view:?}");
    errors
}

/// Every error is `Unavailable` (etcd was reached, but refused or could not be spoken to), says
/// what TLS reported (one of `reasons`) and names the setting to check (`hint`). A client
/// certificate is judged after a TLS 1.3 client finished its handshake, so etcd's refusal shows
/// as its alert or, when the connection closes first, as the closed connection.
fn all_unavailable_with(errors: &[StoreError], reasons: &[&str], hint: &str) {
    for e in errors {
        let text = e.to_string();
        assert!(e.is_unavailable(), "{e:?}");
        assert!(reasons.iter().any(|n| text.contains(n)), "{text}: expected one of {reasons:?}");
        assert!(text.contains(hint), "{text}: expected the hint {hint:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused() {
    let shared = shared().await;
    let security = EtcdSecurity { identity: None, ..shared.files.good() };
    let errors = refused(shared, &shared.server.endpoint(), security, &cluster("nocert")).await;
    all_unavailable_with(
        &errors,
        &["CertificateRequired", "BadCertificate", "connection closed", "broken pipe", "reset"],
        "store.cert_file",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_from_another_ca_is_refused() {
    let shared = shared().await;
    let security = EtcdSecurity { identity: Some(Files::identity(&shared.files.untrusted)), ..shared.files.good() };
    let errors = refused(shared, &shared.server.endpoint(), security, &cluster("untrusted")).await;
    all_unavailable_with(
        &errors,
        &["BadCertificate", "UnknownCA", "connection closed", "broken pipe", "reset"],
        "store.cert_file",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_the_ca_does_not_vouch_for_is_refused() {
    let shared = shared().await;
    let security = EtcdSecurity { ca_file: Some(shared.files.untrusted_ca.clone()), ..shared.files.good() };
    let errors = refused(shared, &shared.server.endpoint(), security, &cluster("wrongca")).await;
    all_unavailable_with(&errors, &["invalid peer certificate"], "store.ca_file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_refused_when_connecting() {
    let shared = shared().await;
    let security = EtcdSecurity { user: Some((USER.into(), Secret::new("not the password"))), ..shared.files.good() };
    let errors = refused(shared, &shared.server.endpoint(), security, &cluster("badpass")).await;
    assert_eq!(errors.len(), 1, "refused at connect: {errors:?}");
    let text = errors[0].to_string();
    assert!(matches!(errors[0], StoreError::Invalid(_)), "{text}");
    assert!(text.contains(USER) && text.contains("authentication failed"), "{text}");
    assert!(!text.contains("not the password"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_to_the_tls_port_is_refused() {
    let shared = shared().await;
    let plain = shared.server.endpoint().replace("https://", "http://");
    // As configured: TLS options with an http:// endpoint are a configuration error.
    let config = StoreConfig::Etcd {
        endpoints: vec![plain.clone()],
        prefix: PREFIX.into(),
        ca_file: Some(shared.files.ca.clone()),
        cert_file: None,
        key_file: None,
        username: None,
        password_file: None,
    };
    let err = pgdaemon_dcs::connect(&config).await.err().expect("TLS options with http:// are refused");
    assert!(matches!(err, StoreError::Invalid(ref m) if m.contains("store.ca_file") && m.contains("https://")), "{err}");
    // Without TLS options, the client speaks plain HTTP/2 to a TLS server: nothing gets through.
    let security = EtcdSecurity { ca_file: None, identity: None, ..shared.files.good() };
    let errors = refused(shared, &plain, security, &cluster("plain")).await;
    all_unavailable_with(&errors, &["broken pipe", "connection closed", "connection reset", "frame"], "use https://");
}

/// Files that cannot be used are `Invalid` at connect time and name the file; the password shows
/// in no message and no `Debug` output. No etcd needed: files are checked before connecting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_files_are_named_and_the_password_never_printed() {
    let files = &shared().await.files;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = vec!["https://127.0.0.1:1".to_string()];
    let connect = |security: EtcdSecurity| {
        let endpoint = endpoint.clone();
        async move { EtcdStore::connect_with(&endpoint, PREFIX, security).await.err().expect("refused") }
    };

    let not_pem = dir.path().join("not-a-ca.pem");
    write_mode(&not_pem, "hello\n", 0o644);
    let e = connect(EtcdSecurity { ca_file: Some(not_pem), ..Default::default() }).await;
    assert!(matches!(e, StoreError::Invalid(ref m) if m.contains("not-a-ca.pem")), "{e}");

    let missing = dir.path().join("missing.crt");
    let id = ClientIdentity { cert_file: missing, key_file: files.client.key.clone() };
    let e = connect(EtcdSecurity { ca_file: Some(files.ca.clone()), identity: Some(id), ..Default::default() }).await;
    assert!(matches!(e, StoreError::Invalid(ref m) if m.contains("missing.crt")), "{e}");

    let id = ClientIdentity { cert_file: files.client.cert.clone(), key_file: files.untrusted.key.clone() };
    let e = connect(EtcdSecurity { ca_file: Some(files.ca.clone()), identity: Some(id), ..Default::default() }).await;
    assert!(matches!(e, StoreError::Invalid(ref m) if m.contains("stranger.key") && m.contains("does not match")), "{e}");

    let open = dir.path().join("open.pass");
    write_mode(&open, PASSWORD, 0o644);
    let e = read_password_file(&open).unwrap_err();
    assert!(matches!(e, StoreError::Invalid(ref m) if m.contains("open.pass") && m.contains("0644")), "{e}");
    let empty = dir.path().join("empty.pass");
    write_mode(&empty, "\n", 0o600);
    assert!(read_password_file(&empty).unwrap_err().to_string().contains("empty"));
    let config = StoreConfig::Etcd {
        endpoints: endpoint.clone(),
        prefix: PREFIX.into(),
        ca_file: None,
        cert_file: None,
        key_file: None,
        username: Some(USER.into()),
        password_file: Some(open),
    };
    let e = pgdaemon_dcs::connect(&config).await.err().expect("a readable-by-others password file is refused");
    assert!(matches!(e, StoreError::Invalid(ref m) if m.contains("open.pass")), "{e}");
    assert!(!e.to_string().contains(PASSWORD));

    let good = files.good();
    assert_eq!(good.user.as_ref().unwrap().1.expose(), PASSWORD, "trailing newline trimmed");
    for shown in [format!("{good:?}"), format!("{}", good.user.as_ref().unwrap().1)] {
        assert!(!shown.contains(PASSWORD) && shown.contains("<redacted>"), "{shown}");
    }
}
