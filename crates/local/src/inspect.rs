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

/// Where a URI points.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The primary, through the `rw` proxy.
    Rw,
    /// The ready replicas, through the `ro` proxy.
    Ro,
    /// Every instance directly, the client finding the primary itself (no proxy hop).
    DirectRw,
    /// Every instance directly, the client preferring a replica.
    DirectRo,
}

/// A connection URI and which clients understand it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uri {
    pub uri: String,
    /// Which clients understand the URI (and what they do in a failover), for the user.
    pub note: Option<String>,
}

/// A connection URI for the application user through `endpoint`, password included. With TLS
/// (the default) the client verifies the server against the database's CA and the host name:
/// PostgreSQL `sslmode=verify-full&sslrootcert=…`, the MySQL family `ssl-mode=VERIFY_IDENTITY&
/// ssl-ca=…` (the MySQL URI form of mysqlsh and the connectors; Connector/J's `sslMode` for the
/// direct form).
pub fn uri(db: &Database, dir: &DatabaseDir, endpoint: Endpoint) -> Result<String, LocalError> {
    connection_uri(db, dir, endpoint).map(|u| u.uri)
}

/// [`uri`] with the note on which clients understand it.
pub fn connection_uri(
    db: &Database,
    dir: &DatabaseDir,
    endpoint: Endpoint,
) -> Result<Uri, LocalError> {
    if !dir.secrets_dir().is_dir() {
        return Err(LocalError::NotFound(dir.key()));
    }
    let password = read_secret(&dir.secrets_dir(), secret_keys::APP_PASSWORD)?;
    let ports = LocalPorts::of(db);
    let host = &db.spec.local.listen_address;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.clone()
    };
    let ca = db
        .spec
        .tls
        .enabled
        .then(|| dir.tls_dir().join(stator_engine::tls::CA_CERT));
    let ca = ca.map(|p| percent_encode(&p.to_string_lossy()));
    let user = percent_encode(&db.spec.bootstrap.owner);
    let password = percent_encode(&password);
    let database = percent_encode(&db.spec.bootstrap.database);
    let primary = crate::plan::ordinal_of(&dir.read_primary()).unwrap_or(0);
    // The recorded primary first, then the others in ordinal order.
    let mut ordinals: Vec<u32> = (0..db.spec.instances).collect();
    ordinals.sort_by_key(|o| (*o != primary, *o));
    let hosts = |ordinals: &[u32]| {
        ordinals
            .iter()
            .map(|o| format!("{host}:{}", ports.server(*o)))
            .collect::<Vec<_>>()
            .join(",")
    };
    // The proxy's port (unused by the direct forms).
    let port = if endpoint == Endpoint::Ro {
        ports.ro()
    } else {
        ports.rw()
    };
    let mut query: Vec<String> = Vec::new();
    let (text, note) = match (db.spec.engine, endpoint) {
        (Engine::Postgres, Endpoint::Rw | Endpoint::Ro) => {
            if let Some(ca) = &ca {
                query.push(format!("sslmode=verify-full&sslrootcert={ca}"));
            }
            (
                format!("postgresql://{user}:{password}@{host}:{port}/{database}"),
                None,
            )
        }
        (Engine::Postgres, Endpoint::DirectRw | Endpoint::DirectRo) => {
            if endpoint == Endpoint::DirectRw {
                query.push("target_session_attrs=read-write".into());
            } else {
                query.push("target_session_attrs=prefer-standby&load_balance_hosts=random".into());
            }
            if let Some(ca) = &ca {
                query.push(format!("sslmode=verify-full&sslrootcert={ca}"));
            }
            let note = if endpoint == Endpoint::DirectRw {
                "a multi-host URI of every instance: libpq (psql, and drivers built on it) tries them in turn and keeps the one that takes writes (target_session_attrs=read-write, libpq 10+); after a failover a client reconnects and finds the new primary the same way"
            } else {
                "a multi-host URI of every instance: libpq 16+ (load_balance_hosts) picks one at random and prefers a replica (target_session_attrs=prefer-standby, libpq 14+); older libpq refuses load_balance_hosts"
            };
            (
                format!(
                    "postgresql://{user}:{password}@{}/{database}",
                    hosts(&ordinals)
                ),
                Some(note.to_string()),
            )
        }
        (Engine::Mysql | Engine::Mariadb, Endpoint::Rw | Endpoint::Ro) => {
            if let Some(ca) = &ca {
                query.push(format!("ssl-mode=VERIFY_IDENTITY&ssl-ca={ca}"));
            }
            (
                format!("mysql://{user}:{password}@{host}:{port}/{database}"),
                None,
            )
        }
        (Engine::Mysql | Engine::Mariadb, Endpoint::DirectRw | Endpoint::DirectRo) => {
            query.push(format!("user={user}&password={password}"));
            if let Some(ca) = &ca {
                query.push(format!("sslMode=verify-full&serverSslCert={ca}"));
            }
            let (form, listed, note) = if endpoint == Endpoint::DirectRw {
                (
                    "replication",
                    ordinals.clone(),
                    "the Connector/J replication form (MariaDB Connector/J; other MySQL-protocol clients do not understand it): writes go to the first host, the recorded primary now, reads of read-only connections to the others. It does not find a new primary after a failover: print it again, or use the rw proxy",
                )
            } else {
                (
                    "loadbalance",
                    ordinals[1..].to_vec(),
                    "the Connector/J load-balancing form over the replicas (MariaDB Connector/J only)",
                )
            };
            let listed = if listed.is_empty() {
                ordinals.clone()
            } else {
                listed
            };
            (
                format!("jdbc:mariadb:{form}://{}/{database}", hosts(&listed)),
                Some(note.to_string()),
            )
        }
    };
    let uri = if query.is_empty() {
        text
    } else {
        format!("{text}?{}", query.join("&"))
    };
    Ok(Uri { uri, note })
}

/// `text` percent-encoded for a URI component (unreserved characters kept).
pub fn percent_encode(text: &str) -> String {
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
    fn a_mariadb_direct_uri_is_connector_j_replication_with_the_primary_first() {
        let tmp = tempfile::tempdir().unwrap();
        let db = stator_api::load_database(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: my}\nspec: {engine: mariadb, instances: 3, local: {portBase: 20000}}\n",
        )
        .unwrap()
        .database;
        let dir = crate::state::StateDir {
            root: tmp.path().to_path_buf(),
        }
        .database_of(&db);
        crate::secrets::ensure_secrets(&dir.secrets_dir()).unwrap();
        std::fs::create_dir_all(&dir.root).unwrap();
        dir.write_primary("my-1").unwrap();
        let rw = connection_uri(&db, &dir, Endpoint::DirectRw).unwrap();
        assert!(
            rw.uri.starts_with(
                "jdbc:mariadb:replication://127.0.0.1:20011,127.0.0.1:20010,127.0.0.1:20012/app?user=app&password="
            ),
            "{}",
            rw.uri
        );
        assert!(
            rw.uri.contains("&sslMode=verify-full&serverSslCert="),
            "{}",
            rw.uri
        );
        assert!(rw.note.unwrap().contains("Connector/J"));
        let ro = connection_uri(&db, &dir, Endpoint::DirectRo).unwrap();
        assert!(
            ro.uri
                .starts_with("jdbc:mariadb:loadbalance://127.0.0.1:20010,127.0.0.1:20012/app?"),
            "{}",
            ro.uri
        );
        let proxied = connection_uri(&db, &dir, Endpoint::Ro).unwrap();
        assert!(
            proxied
                .uri
                .contains("@127.0.0.1:20001/app?ssl-mode=VERIFY_IDENTITY&ssl-ca="),
            "{}",
            proxied.uri
        );
        assert!(proxied.note.is_none());
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
        let ca = dir
            .tls_dir()
            .join("ca.crt")
            .display()
            .to_string()
            .replace('/', "%2F");
        assert_eq!(
            uri(&db, &dir, Endpoint::Ro).unwrap(),
            format!(
                "postgresql://app:{password}@127.0.0.1:20001/app?sslmode=verify-full&sslrootcert={ca}"
            )
        );
        let direct = uri(&db, &dir, Endpoint::DirectRw).unwrap();
        assert!(
            direct.starts_with(&format!(
                "postgresql://app:{password}@127.0.0.1:20010/app?target_session_attrs=read-write&sslmode=verify-full"
            )),
            "{direct}"
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
