//! The credentials an engine needs, read from the instance's secrets directory: one file per key
//! of [`stator_api::names::secret_keys`], mode 0600. Values never reach a log or a command line.

use std::fmt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use stator_api::names::secret_keys;

use crate::error::EngineError;

/// A secret value. `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself; only for handing to the server or a 0600 file.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The passwords of the roles an engine creates.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub superuser: Secret,
    pub app: Secret,
    pub replication: Secret,
    pub monitor: Secret,
}

impl Credentials {
    /// Reads the four passwords from `dir`.
    pub fn read(dir: &Path) -> Result<Credentials, EngineError> {
        Ok(Credentials {
            superuser: read_secret(dir, secret_keys::SUPERUSER_PASSWORD)?,
            app: read_secret(dir, secret_keys::APP_PASSWORD)?,
            replication: read_secret(dir, secret_keys::REPLICATION_PASSWORD)?,
            monitor: read_secret(dir, secret_keys::MONITOR_PASSWORD)?,
        })
    }
}

/// Reads `dir/key`: it must be a regular file no one but its owner can read, holding one
/// non-empty line (a trailing newline is dropped).
pub fn read_secret(dir: &Path, key: &str) -> Result<Secret, EngineError> {
    let path: PathBuf = dir.join(key);
    let fail = |message: String| EngineError::Secret {
        path: path.clone(),
        message,
    };
    let meta = std::fs::metadata(&path).map_err(|e| {
        fail(format!(
            "cannot read the secret {key:?}: {e} (expected a file of mode 0600)"
        ))
    })?;
    if !meta.is_file() {
        return Err(fail("is not a regular file".into()));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(fail(format!(
            "mode is {:04o}; a secret file must be readable by its owner only (chmod 600)",
            meta.mode() & 0o7777
        )));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| fail(format!("cannot read: {e}")))?;
    let value = text.strip_suffix('\n').unwrap_or(&text);
    let value = value.strip_suffix('\r').unwrap_or(value);
    if value.is_empty() {
        return Err(fail("is empty".into()));
    }
    if value.contains(['\n', '\0']) {
        return Err(fail("must hold a single line".into()));
    }
    Ok(Secret(value.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, key: &str, text: &str, mode: u32) {
        let p = dir.join(key);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    #[test]
    fn a_secret_drops_its_trailing_newline_and_hides_in_debug() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "k", "s3cret\n", 0o600);
        let s = read_secret(dir.path(), "k").unwrap();
        assert_eq!(s.expose(), "s3cret");
        assert_eq!(format!("{s:?}"), "<redacted>");
    }

    #[test]
    fn a_group_readable_secret_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "k", "x", 0o640);
        let e = read_secret(dir.path(), "k").unwrap_err().to_string();
        assert!(
            e.contains("/k") && e.contains("0640") && e.contains("chmod 600"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_or_empty_secret_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read_secret(dir.path(), "nope").is_err());
        write(dir.path(), "e", "\n", 0o600);
        assert!(
            read_secret(dir.path(), "e")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }
}
