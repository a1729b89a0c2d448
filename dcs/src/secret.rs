//! Secrets read by every part: a value that never prints ([`Secret`]) and the one rule for
//! secret files (password files, private keys): no access for group or others, libpq's
//! `.pgpass` rule. The agent's passwords and API token, the etcd user's password and the API's
//! TLS key all go through here.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

/// A secret string. Only [`Secret::expose`] reveals it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value, for the one call that needs it (a libpq connection string, a
    /// `primary_conninfo`). Never format it into a message.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

const REDACTED: &str = "<redacted>";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(REDACTED)
    }
}

/// Why the password could not be read. Messages name the file or parameter, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("password file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("password file {path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("password file {path} {reason}")]
    Permissions { path: PathBuf, reason: String },
    #[error("password file {path} is empty")]
    Empty { path: PathBuf },
    #[error("SSM parameter {name}: {reason}")]
    Ssm { name: String, reason: String },
}

/// Reads a password file. Refused when group or others may read it (libpq's `.pgpass` rule),
/// when it is not a regular file, or when it holds nothing but line endings. Trailing `\n`/`\r`
/// are trimmed (editors add them); every other character, spaces included, is kept.
pub fn read_password_file(path: &Path) -> Result<Secret, SecretError> {
    let io = |source| SecretError::Io { path: path.to_path_buf(), source };
    let meta = std::fs::metadata(path).map_err(io)?;
    if !meta.is_file() {
        return Err(SecretError::NotAFile { path: path.to_path_buf() });
    }
    check_private(&meta).map_err(|reason| SecretError::Permissions { path: path.to_path_buf(), reason })?;
    let text = std::fs::read_to_string(path).map_err(io)?;
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() {
        return Err(SecretError::Empty { path: path.to_path_buf() });
    }
    Ok(Secret::new(value))
}

/// A secret file's mode must give group and others no access; `Err` says what is wrong.
pub fn check_private(meta: &std::fs::Metadata) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(format!("has mode {mode:04o}; group and others must have no access (chmod 600)"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn secret_never_prints_its_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "<redacted>");
        assert_eq!(format!("{s:?}"), "<redacted>");
        #[derive(Debug, Serialize)]
        struct Holder {
            password: Secret,
        }
        let h = Holder { password: s.clone() };
        assert!(!format!("{h:?}").contains("hunter2"));
        assert!(!serde_json::to_string(&h).unwrap().contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn file_is_read_and_trailing_newline_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), "pw", " s3cret \r\n", 0o600);
        assert_eq!(read_password_file(&p).unwrap().expose(), " s3cret ");
        let p = write(dir.path(), "pw2", "abc", 0o400);
        assert_eq!(read_password_file(&p).unwrap().expose(), "abc");
    }

    #[test]
    fn loose_permissions_are_refused_without_leaking() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o660] {
            let p = write(dir.path(), "pw", "topsecret\n", mode);
            let err = read_password_file(&p).unwrap_err();
            assert!(matches!(err, SecretError::Permissions { .. }), "{mode:o}: {err}");
            assert!(err.to_string().contains("chmod 600"));
            assert!(!err.to_string().contains("topsecret"));
        }
    }

    #[test]
    fn missing_empty_and_directory_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(read_password_file(&dir.path().join("nope")), Err(SecretError::Io { .. })));
        let p = write(dir.path(), "empty", "\n", 0o600);
        assert!(matches!(read_password_file(&p), Err(SecretError::Empty { .. })));
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert!(matches!(read_password_file(&sub), Err(SecretError::NotAFile { .. })));
    }
}
