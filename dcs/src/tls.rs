//! rustls configurations for the TLS connections pgdaemon makes (webhooks, the HTTP fencer, the
//! monitor's probes) and accepts (the agent API), all on the aws-lc-rs provider the AWS SDK
//! already builds, so the process carries one crypto library. PEM files only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate or key file could not be used; names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File { path: path.to_path_buf(), reason: reason.to_string() }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Every certificate in a PEM file (at least one).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_err(path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(path, e))?;
    if certs.is_empty() {
        return Err(file_err(path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_err(path, format!("no usable private key ({e})")))
}

/// Trust anchors: the certificates of `ca_file`, or the system's roots without one.
pub fn root_store(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let (added, _) = roots.add_parsable_certificates(load_certs(path)?);
            if added == 0 {
                return Err(file_err(path, "holds no usable CA certificate"));
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    Ok(roots)
}

/// A client identity for servers that verify client certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

/// A client configuration: the server's chain and name are verified against `ca_file` (or the
/// system roots); with `identity`, a client certificate is presented.
pub fn client_config(ca_file: Option<&Path>, identity: Option<&ClientIdentity>) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(root_store(ca_file)?);
    match identity {
        None => Ok(builder.with_no_client_auth()),
        Some(id) => builder
            .with_client_auth_cert(load_certs(&id.cert_file)?, load_key(&id.key_file)?)
            .map_err(|e| file_err(&id.key_file, format!("does not match {}: {e}", id.cert_file.display()))),
    }
}

/// A server configuration presenting `cert_file`/`key_file`; with `client_ca`, every client must
/// present a certificate that chains to it (others fail the handshake).
pub fn server_config(cert_file: &Path, key_file: &Path, client_ca: Option<&Path>) -> Result<rustls::ServerConfig, TlsError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(Some(ca))?), provider())
                    .build()
                    .map_err(|e| file_err(ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(load_certs(cert_file)?, load_key(key_file)?)
        .map_err(|e| file_err(key_file, format!("does not match {}: {e}", cert_file.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_named_in_errors() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(Some(&empty), None).unwrap_err().to_string();
        assert!(e.contains("empty.pem") && e.contains("no PEM certificate"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = server_config(&missing, &missing, None).unwrap_err().to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }

    #[test]
    fn a_test_pki_gives_working_configurations() {
        let dir = tempfile::tempdir().unwrap();
        let pki = pgdaemon_testkit::tls::TestPki::new(dir.path()).unwrap();
        let server = pki.issue("server", &["127.0.0.1"]).unwrap();
        let id = ClientIdentity { cert_file: server.cert.clone(), key_file: server.key.clone() };
        client_config(Some(&pki.ca_file()), Some(&id)).unwrap();
        server_config(&server.cert, &server.key, Some(&pki.ca_file())).unwrap();
        let other = pki.issue("other", &["127.0.0.1"]).unwrap();
        let e = server_config(&server.cert, &other.key, None).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
    }
}
