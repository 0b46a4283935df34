//! Checks made before anything is written or started, each failing with an error that names
//! what is wrong and how to fix it: engine binaries, the server's OS user, the state dir's
//! reachability by that user, ports, and data dirs that belong to something else.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use stator_api::Engine;

use crate::error::{LocalError, PortUse};

/// The directory of the engine's server binaries for `version`.
pub fn find_bin_dir(engine: Engine, version: &str) -> Result<PathBuf, LocalError> {
    let (program, candidates, install): (&str, Vec<PathBuf>, String) = match engine {
        Engine::Postgres => (
            "postgres",
            vec![
                PathBuf::from(format!("/usr/lib/postgresql/{version}/bin")),
                PathBuf::from(format!("/usr/pgsql-{version}/bin")),
                PathBuf::from(format!("/opt/homebrew/opt/postgresql@{version}/bin")),
                PathBuf::from(format!("/usr/local/opt/postgresql@{version}/bin")),
            ],
            format!(
                "install them: Debian/Ubuntu `apt-get install postgresql-{version}`, Fedora/RHEL `dnf install postgresql{version}-server`, macOS `brew install postgresql@{version}`"
            ),
        ),
        Engine::Mariadb => (
            "mariadbd",
            vec![PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")],
            format!(
                "install them: Debian/Ubuntu `apt-get install mariadb-server` (MariaDB {version}), Fedora/RHEL `dnf install mariadb-server`"
            ),
        ),
        Engine::Mysql => (
            "mysqld",
            vec![PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")],
            format!(
                "install them: MySQL {version} from https://dev.mysql.com/downloads/ (package `mysql-server`)"
            ),
        ),
    };
    for dir in &candidates {
        if is_executable(&dir.join(program)) {
            return Ok(dir.clone());
        }
    }
    // On PATH, PostgreSQL only counts when its major version matches.
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(program);
            if is_executable(&candidate)
                && (engine != Engine::Postgres
                    || postgres_major(&candidate).as_deref() == Some(version))
            {
                return Ok(dir);
            }
        }
    }
    let looked: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
    Err(LocalError::BinariesMissing(format!(
        "{} {version} binaries not found (looked for `{program}` in {} and on PATH); {install}",
        engine_title(engine),
        looked.join(", ")
    )))
}

pub fn engine_title(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "PostgreSQL",
        Engine::Mariadb => "MariaDB",
        Engine::Mysql => "MySQL",
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// `postgres --version` → its major version (`15`).
fn postgres_major(program: &Path) -> Option<String> {
    let out = std::process::Command::new(program)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.split_whitespace().last()?;
    Some(version.split('.').next()?.to_string())
}

/// The OS user the server runs as: `None` when we are not root (the server runs as us);
/// as root, the engine's system user, which must exist.
pub fn server_user(engine: Engine) -> Result<Option<ServerUser>, LocalError> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let name = match engine {
        Engine::Postgres => "postgres",
        Engine::Mariadb | Engine::Mysql => "mysql",
    };
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok(Some(ServerUser {
            name: name.to_string(),
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })),
        _ => Err(LocalError::ServerUserMissing(format!(
            "running as root: {} refuses to run as root, so stator runs it as the system user `{name}`, which does not exist here; create it (e.g. `useradd --system --user-group --home-dir /var/lib/{name} --shell /usr/sbin/nologin {name}`) or run stator as an unprivileged user",
            engine_title(engine)
        ))),
    }
}

/// An unprivileged OS user the server runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Every directory from `/` down to `dir` must let `user` pass (search permission), or the
/// server cannot reach its data dir.
pub fn check_reachable(dir: &Path, user: &ServerUser) -> Result<(), LocalError> {
    let mut current = PathBuf::new();
    for component in dir.components() {
        current.push(component);
        let Ok(meta) = fs::metadata(&current) else {
            break; // created later by us, with a mode that lets it pass
        };
        let mode = meta.mode();
        let passes = if meta.uid() == user.uid {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !passes {
            return Err(LocalError::Invalid(format!(
                "{}: the server runs as `{}`, which cannot enter this directory (mode {:o}); allow it (`chmod o+x {}`) or choose another --state-dir",
                current.display(),
                user.name,
                mode & 0o7777,
                current.display()
            )));
        }
    }
    Ok(())
}

/// The ports in `wanted` that another program holds on `address`.
pub fn busy_ports(address: &str, wanted: &[PortUse]) -> Vec<PortUse> {
    wanted
        .iter()
        .filter(|p| TcpListener::bind((address, p.port)).is_err())
        .cloned()
        .collect()
}

pub fn check_ports(address: &str, wanted: &[PortUse]) -> Result<(), LocalError> {
    let busy = busy_ports(address, wanted);
    if busy.is_empty() {
        Ok(())
    } else {
        Err(LocalError::PortsInUse(busy))
    }
}

/// The major version a PostgreSQL data dir was made by (`PG_VERSION`), when it has one.
pub fn data_dir_version(data_dir: &Path) -> Option<String> {
    fs::read_to_string(data_dir.join("PG_VERSION"))
        .ok()
        .map(|s| s.trim().to_string())
}

/// PostgreSQL's database system identifier: the first 8 bytes of `global/pg_control`, shared
/// by a primary and every replica cloned from it.
pub fn system_identifier(data_dir: &Path) -> Option<u64> {
    let bytes = fs::read(data_dir.join("global/pg_control")).ok()?;
    let first: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_ne_bytes(first))
}

/// A data dir that exists must hold data of this engine version and of this database.
pub fn check_data_dir(
    data_dir: &Path,
    instance: &str,
    engine: Engine,
    version: &str,
    system_id: Option<u64>,
) -> Result<(), LocalError> {
    if engine != Engine::Postgres || !data_dir.is_dir() {
        return Ok(());
    }
    if let Some(found) = data_dir_version(data_dir)
        && found != version
    {
        return Err(LocalError::DataDirForeign(format!(
            "{}: {instance}'s data dir holds PostgreSQL {found} data, but this database is PostgreSQL {version}; upgrade it with pg_upgrade, set spec.version to {found:?}, or move the directory away",
            data_dir.display()
        )));
    }
    // The instance manager's own marker names the database that made the directory.
    let marker = fs::read(data_dir.join("stator.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    if let Some(owner) = marker
        .as_ref()
        .and_then(|m| m.get("database"))
        .and_then(|d| d.as_str())
        && Some(owner) != instance.rsplit_once('-').map(|(name, _)| name)
    {
        return Err(LocalError::DataDirForeign(format!(
            "{}: {instance}'s data dir belongs to the database {owner:?}; move it away or delete it",
            data_dir.display()
        )));
    }
    if let (Some(expected), Some(found)) = (system_id, system_identifier(data_dir))
        && expected != found
    {
        return Err(LocalError::DataDirForeign(format!(
            "{}: {instance}'s data dir belongs to another database (system identifier {found}, this database's is {expected}); move it away or delete it",
            data_dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_say_how_to_install() {
        let err = find_bin_dir(Engine::Postgres, "99")
            .unwrap_err()
            .to_string();
        assert!(err.contains("PostgreSQL 99 binaries not found"), "{err}");
        assert!(err.contains("apt-get install postgresql-99"), "{err}");
    }

    #[test]
    fn a_held_port_is_named_with_its_purpose() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let err = check_ports(
            "127.0.0.1",
            &[PortUse {
                port,
                purpose: "pg-1's server".into(),
            }],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains(&format!("port {port} (pg-1's server) is already in use")),
            "{err}"
        );
    }

    #[test]
    fn data_dir_of_another_version_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("PG_VERSION"), "14\n").unwrap();
        let err = check_data_dir(tmp.path(), "pg-0", Engine::Postgres, "15", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds PostgreSQL 14 data"), "{err}");
        check_data_dir(tmp.path(), "pg-0", Engine::Postgres, "14", None).unwrap();
    }

    #[test]
    fn data_dir_of_another_database_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("global")).unwrap();
        fs::write(tmp.path().join("global/pg_control"), 7u64.to_ne_bytes()).unwrap();
        assert_eq!(system_identifier(tmp.path()), Some(7));
        let err = check_data_dir(tmp.path(), "pg-1", Engine::Postgres, "15", Some(8))
            .unwrap_err()
            .to_string();
        assert!(err.contains("belongs to another database"), "{err}");
        check_data_dir(tmp.path(), "pg-1", Engine::Postgres, "15", Some(7)).unwrap();
    }

    #[test]
    fn an_unreachable_directory_is_named() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let closed = tmp.path().join("closed");
        fs::create_dir(&closed).unwrap();
        fs::set_permissions(&closed, fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let stranger = ServerUser {
            name: "nobody".into(),
            uid: 65534,
            gid: 65534,
        };
        let err = check_reachable(&closed.join("db"), &stranger)
            .unwrap_err()
            .to_string();
        assert!(err.contains("closed"), "{err}");
        assert!(err.contains("`nobody`"), "{err}");
    }
}
