//! `stator uri` and `stator logs`: reading a database's credentials and logs from the state dir.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use stator_api::instance::LocalPorts;
use stator_api::names::secret_keys;
use stator_api::{Database, Engine};

use crate::error::LocalError;
use crate::secrets::read_secret;
use crate::state::DatabaseDir;

/// Which proxy a URI points at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    Rw,
    Ro,
}

/// A connection URI for the application user through `endpoint`, password included.
pub fn uri(db: &Database, dir: &DatabaseDir, endpoint: Endpoint) -> Result<String, LocalError> {
    if !dir.secrets_dir().is_dir() {
        return Err(LocalError::NotFound(dir.key()));
    }
    let password = read_secret(&dir.secrets_dir(), secret_keys::APP_PASSWORD)?;
    let ports = LocalPorts::of(db);
    let port = match endpoint {
        Endpoint::Rw => ports.rw(),
        Endpoint::Ro => ports.ro(),
    };
    let scheme = match db.spec.engine {
        Engine::Postgres => "postgresql",
        Engine::Mysql | Engine::Mariadb => "mysql",
    };
    let host = &db.spec.local.listen_address;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    Ok(format!(
        "{scheme}://{}:{}@{host}:{port}/{}",
        percent_encode(&db.spec.bootstrap.owner),
        percent_encode(&password),
        percent_encode(&db.spec.bootstrap.database)
    ))
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Which log of an instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogKind {
    /// The database server's log.
    Server,
    /// The instance manager's own output.
    Manager,
}

/// The log file of `instance` (`NAME-N`).
pub fn log_path(
    dir: &DatabaseDir,
    db: &Database,
    instance: &str,
    kind: LogKind,
) -> Result<PathBuf, LocalError> {
    let ordinal = instance
        .strip_prefix(&format!("{}-", db.name()))
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| {
            LocalError::Invalid(format!(
                "{instance:?} is not an instance of {} (expected {}-N, e.g. {})",
                dir.key(),
                db.name(),
                db.instance_name(0)
            ))
        })?;
    let path = match kind {
        LogKind::Server => dir.server_log(ordinal),
        LogKind::Manager => dir.manager_log(ordinal),
    };
    if !path.exists() {
        return Err(LocalError::Invalid(format!(
            "{instance} has no log yet ({} does not exist); `stator status` lists the instances",
            path.display()
        )));
    }
    Ok(path)
}

/// Copies `path` to `out`; with `follow`, keeps copying what is appended until interrupted.
pub fn copy_log(path: &Path, follow: bool, out: &mut dyn Write) -> Result<(), LocalError> {
    let mut file = std::fs::File::open(path).map_err(|e| LocalError::io(path, "cannot open", e))?;
    let mut position = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| LocalError::io(path, "cannot read", e))?;
        if n > 0 {
            position += n as u64;
            if out.write_all(&buf[..n]).is_err() {
                return Ok(()); // reader went away (e.g. `| head`)
            }
            continue;
        }
        if !follow {
            return Ok(());
        }
        let _ = out.flush();
        std::thread::sleep(Duration::from_millis(200));
        // Truncated or replaced: start again from the top.
        let length = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        if length < position {
            file = std::fs::File::open(path).map_err(|e| LocalError::io(path, "cannot open", e))?;
            file.seek(SeekFrom::Start(0))
                .map_err(|e| LocalError::io(path, "cannot read", e))?;
            position = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_with_reserved_characters_are_encoded() {
        assert_eq!(percent_encode("a b@c/d"), "a%20b%40c%2Fd");
        assert_eq!(percent_encode("Abc123"), "Abc123");
    }

    #[test]
    fn uri_carries_user_password_port_and_database() {
        let tmp = tempfile::tempdir().unwrap();
        let db = stator_api::load_database(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: pg}\nspec: {engine: postgres, local: {portBase: 20000}}\n",
        )
        .unwrap()
        .database;
        let dir = crate::state::StateDir {
            root: tmp.path().to_path_buf(),
        }
        .database_of(&db);
        assert!(matches!(
            uri(&db, &dir, Endpoint::Rw),
            Err(LocalError::NotFound(_))
        ));
        crate::secrets::ensure_secrets(&dir.secrets_dir()).unwrap();
        let password = read_secret(&dir.secrets_dir(), secret_keys::APP_PASSWORD).unwrap();
        assert_eq!(
            uri(&db, &dir, Endpoint::Ro).unwrap(),
            format!("postgresql://app:{password}@127.0.0.1:20001/app")
        );
    }

    #[test]
    fn log_of_an_unknown_instance_is_refused() {
        let db = stator_api::load_database(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: pg}\nspec: {engine: postgres}\n",
        )
        .unwrap()
        .database;
        let dir = crate::state::StateDir {
            root: "/nonexistent".into(),
        }
        .database_of(&db);
        let err = log_path(&dir, &db, "other-0", LogKind::Server)
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected pg-N"), "{err}");
    }
}
