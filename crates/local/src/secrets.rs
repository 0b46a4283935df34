//! The credentials of a local database: one 0600 file per key in a 0700 directory, generated
//! once with the operating system's CSPRNG and never rewritten.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::RngExt;
use rand::distr::Alphanumeric;
use stator_api::names::secret_keys;

use crate::error::LocalError;
use crate::state::create_dir;

/// Length of a generated password or token: 32 alphanumerics, about 190 bits.
pub const SECRET_LEN: usize = 32;

/// Creates every missing secret file in `dir`; existing ones are kept as they are (modes are
/// tightened to 0600). Returns the keys that were generated now.
pub fn ensure_secrets(dir: &Path) -> Result<Vec<&'static str>, LocalError> {
    create_dir(dir, 0o700)?;
    let mut generated = Vec::new();
    for key in secret_keys::ALL {
        let path = dir.join(key);
        if path.exists() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .map_err(|e| LocalError::io(&path, "cannot set permissions", e))?;
            continue;
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| LocalError::io(&path, "cannot create secret", e))?;
        file.write_all(generate_secret().as_bytes())
            .and_then(|_| file.sync_all())
            .map_err(|e| LocalError::io(&path, "cannot write secret", e))?;
        generated.push(key);
    }
    Ok(generated)
}

/// Reads one secret with the instance manager's own rules (a 0600 file holding one line), so
/// the runtime never hands out a password from a file others could have read or changed.
pub fn read_secret(dir: &Path, key: &str) -> Result<String, LocalError> {
    stator_engine::credentials::read_secret(dir, key)
        .map(|secret| secret.expose().to_string())
        .map_err(|e| LocalError::Failed(e.to_string()))
}

/// A random alphanumeric secret from the thread-local CSPRNG (ChaCha, seeded by the OS).
pub fn generate_secret() -> String {
    let mut rng = rand::rng();
    (0..SECRET_LEN)
        .map(|_| char::from(rng.sample(Alphanumeric)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_created_once_with_private_modes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("secrets");
        let first = ensure_secrets(&dir).unwrap();
        assert_eq!(first.len(), secret_keys::ALL.len());
        let password = read_secret(&dir, secret_keys::APP_PASSWORD).unwrap();
        assert_eq!(password.len(), SECRET_LEN);
        let again = ensure_secrets(&dir).unwrap();
        assert!(again.is_empty());
        assert_eq!(
            read_secret(&dir, secret_keys::APP_PASSWORD).unwrap(),
            password
        );
        let dir_mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        for key in secret_keys::ALL {
            let mode = fs::metadata(dir.join(key)).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{key}");
        }
    }

    #[test]
    fn generated_secrets_differ() {
        assert_ne!(generate_secret(), generate_secret());
    }
}
