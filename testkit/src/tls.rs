//! Certificates made in the test: one CA per [`TestPki`] and leaf certificates it signs, written
//! as PEM files (keys mode 0600) so real servers (Postgres, etcd, the agent) and clients read
//! them as they would in production. Nothing here is trusted beyond the test's own directory.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};

/// A test certificate authority writing its files into one directory.
pub struct TestPki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
}

/// The files of one issued certificate.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestPki {
    /// A new CA; its certificate is written to `dir/ca.crt`.
    pub fn new(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "pgdaemon test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_key = KeyPair::generate()?;
        let ca = params.self_signed(&ca_key)?;
        std::fs::write(dir.join("ca.crt"), ca.pem())?;
        Ok(TestPki { dir: dir.to_path_buf(), ca, ca_key })
    }

    /// The CA certificate (PEM) that verifies every certificate this PKI issues.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// Issues `name.crt`/`name.key` with common name `name` and the given subject alternative
    /// names (IP addresses or DNS names), usable as server and client certificate.
    pub fn issue(&self, name: &str, sans: &[&str]) -> Result<IssuedCert> {
        let mut params = CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.ca, &self.ca_key)?;
        let issued = IssuedCert { cert: self.dir.join(format!("{name}.crt")), key: self.dir.join(format!("{name}.key")) };
        std::fs::write(&issued.cert, cert.pem())?;
        std::fs::write(&issued.key, key.serialize_pem())?;
        std::fs::set_permissions(&issued.key, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod {}", issued.key.display()))?;
        Ok(issued)
    }

    /// A certificate for `name` signed by a different, untrusted CA (for refusal tests).
    pub fn issue_untrusted(&self, name: &str, sans: &[&str]) -> Result<IssuedCert> {
        let other = TestPki::new(&self.dir.join("untrusted"))?;
        other.issue(name, sans)
    }
}
