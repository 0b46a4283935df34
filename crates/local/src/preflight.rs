//! Checks made before anything is written or started, each failing with an error that names
//! what is wrong and how to fix it: engine binaries, the server's OS user, the state dir's
//! reachability by that user, ports, and data dirs that belong to something else.

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use stator_api::Engine;

use crate::error::{LocalError, PortUse};

/// What the local runtime needs of an engine's installation: the server program, where the
/// distributions put it, the tools the instance manager runs next to it, and how to install them.
/// The one place that knows these differences.
struct Installation {
    /// The server program whose directory is the instance's `bin_dir`.
    program: &'static str,
    /// Where distributions install it, searched before PATH.
    candidates: Vec<PathBuf>,
    /// Tools looked up in the bin dir, then `BIN_DIR/../bin`, then PATH.
    tools: &'static [&'static str],
    install: String,
}

fn installation(engine: Engine, version: &str) -> Installation {
    match engine {
        Engine::Postgres => Installation {
            program: "postgres",
            candidates: vec![
                PathBuf::from(format!("/usr/lib/postgresql/{version}/bin")),
                PathBuf::from(format!("/usr/pgsql-{version}/bin")),
                PathBuf::from(format!("/opt/homebrew/opt/postgresql@{version}/bin")),
                PathBuf::from(format!("/usr/local/opt/postgresql@{version}/bin")),
            ],
            tools: &["initdb", "pg_basebackup", "pg_rewind"],
            install: format!(
                "install them: Debian/Ubuntu `apt-get install postgresql-{version}`, Fedora/RHEL `dnf install postgresql{version}-server`, macOS `brew install postgresql@{version}`"
            ),
        },
        Engine::Mariadb => Installation {
            program: "mariadbd",
            candidates: vec![PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")],
            tools: &["mariadb-install-db", "mariadb-backup", "mariadb"],
            install: format!(
                "install them: Debian/Ubuntu `apt-get install mariadb-server mariadb-backup` (MariaDB {version}), Fedora/RHEL `dnf install mariadb-server mariadb-backup`"
            ),
        },
        Engine::Mysql => Installation {
            program: "mysqld",
            candidates: vec![PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")],
            tools: &["mysql"],
            install: format!(
                "install them: MySQL {version} from https://dev.mysql.com/downloads/ (package `mysql-server`)"
            ),
        },
    }
}

/// The directory of the engine's server binaries for `version`, after checking that the tools
/// the instance manager needs are there too.
pub fn find_bin_dir(engine: Engine, version: &str) -> Result<PathBuf, LocalError> {
    let path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    let wanted = installation(engine, version);
    find_bin_dir_in(engine, version, &wanted.candidates, &path)
}

fn find_bin_dir_in(
    engine: Engine,
    version: &str,
    candidates: &[PathBuf],
    path: &[PathBuf],
) -> Result<PathBuf, LocalError> {
    let wanted = installation(engine, version);
    let program = wanted.program;
    // Programs found whose version is not the one asked for, for the error.
    let mut others: Vec<String> = Vec::new();
    let mut found = None;
    for (dir, on_path) in candidates
        .iter()
        .map(|d| (d, false))
        .chain(path.iter().map(|d| (d, true)))
    {
        let candidate = dir.join(program);
        if !is_executable(&candidate) {
            continue;
        }
        match server_version_of(engine, &candidate) {
            Some(full) if version_in_major(&full, version) => {}
            Some(full) => {
                others.push(format!("{} is {full}", candidate.display()));
                continue;
            }
            // PostgreSQL's own directories carry the major version in their name.
            None if engine == Engine::Postgres && !on_path => {}
            None => {
                others.push(format!("{} (version unknown)", candidate.display()));
                continue;
            }
        }
        found = Some(dir.clone());
        break;
    }
    let Some(bin_dir) = found else {
        let looked: Vec<String> = candidates.iter().map(|d| d.display().to_string()).collect();
        let others = if others.is_empty() {
            String::new()
        } else {
            format!(" (found only other versions: {})", others.join(", "))
        };
        return Err(LocalError::BinariesMissing(format!(
            "{} {version} binaries not found (looked for `{program}` in {} and on PATH){others}; {}",
            engine_title(engine),
            looked.join(", "),
            wanted.install
        )));
    };
    let missing: Vec<&str> = wanted
        .tools
        .iter()
        .copied()
        .filter(|tool| find_tool_in(&bin_dir, tool, path).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(LocalError::BinariesMissing(format!(
            "{} {version}: found `{program}` in {}, but not {} (looked there, in its ../bin and on PATH); {}",
            engine_title(engine),
            bin_dir.display(),
            missing
                .iter()
                .map(|t| format!("`{t}`"))
                .collect::<Vec<_>>()
                .join(", "),
            wanted.install
        )));
    }
    Ok(bin_dir)
}

/// A tool of the engine: in `bin_dir`, then `bin_dir/../bin` (Debian keeps `mariadbd` in
/// /usr/sbin and the tools in /usr/bin), then PATH.
pub fn find_tool(bin_dir: &Path, tool: &str) -> Option<PathBuf> {
    let path: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    find_tool_in(bin_dir, tool, &path)
}

fn find_tool_in(bin_dir: &Path, tool: &str, path: &[PathBuf]) -> Option<PathBuf> {
    let sibling = bin_dir.parent().map(|p| p.join("bin"));
    std::iter::once(bin_dir.to_path_buf())
        .chain(sibling)
        .chain(path.iter().cloned())
        .map(|d| d.join(tool))
        .find(|p| is_executable(p))
}

/// The engine's tools that create a data dir: a new primary's, and a replica's copy of its
/// upstream (for progress lines).
/// pgBackRest, which a database with `spec.backup` archives and backs up with: its path, or an
/// error saying how to install it.
pub fn find_pgbackrest() -> Result<PathBuf, LocalError> {
    stator_engine::postgres::backrest::find_program().ok_or_else(|| {
        LocalError::BinariesMissing(
            "spec.backup needs pgBackRest, which is not installed (looked for /usr/bin/pgbackrest and on PATH); install it: Debian/Ubuntu `apt-get install pgbackrest` (2.45 or later)"
                .into(),
        )
    })
}

pub fn bootstrap_tools(engine: Engine) -> (&'static str, &'static str) {
    match engine {
        Engine::Postgres => ("initdb", "pg_basebackup"),
        Engine::Mariadb => ("mariadb-install-db", "mariadb-backup"),
        Engine::Mysql => ("mysqld --initialize", "the clone plugin"),
    }
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

/// The full version a server program reports with `--version` (`15.8`, `10.11.19`).
fn server_version_of(engine: Engine, program: &Path) -> Option<String> {
    let out = std::process::Command::new(program)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    match engine {
        // `postgres (PostgreSQL) 15.8 (Debian 15.8-1)` → the first word that starts with a digit.
        Engine::Postgres => text
            .split_whitespace()
            .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
            .map(str::to_string),
        Engine::Mariadb | Engine::Mysql => parse_mysql_family_version(&text),
    }
}

/// `15.8` is in `15`; `10.11.19` is in `10.11` but not in `10.1`.
pub fn version_in_major(full: &str, major: &str) -> bool {
    full == major
        || full
            .strip_prefix(major)
            .is_some_and(|rest| rest.starts_with('.'))
}

/// `mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for …` or `mysqld  Ver 8.0.36 for …` → `10.11.19`.
pub fn parse_mysql_family_version(text: &str) -> Option<String> {
    let mut words = text.split_whitespace();
    words.find(|w| *w == "Ver")?;
    let version = words.next()?;
    let number: String = version
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!number.is_empty() && number.contains('.')).then_some(number)
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

/// What the files of a data dir say about the server that made them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataFiles {
    pub engine: Engine,
    /// The version the files record: PostgreSQL's major (`PG_VERSION`), MariaDB's full
    /// version (`mysql_upgrade_info` holds e.g. `10.11.19-MariaDB`; this is `10.11.19`).
    pub version: String,
}

impl DataFiles {
    /// Whether these files can run under `engine` `major` without an upgrade.
    fn fit(&self, engine: Engine, major: &str) -> bool {
        self.engine == engine && version_in_major(&self.version, major)
    }
}

/// The engine and version a data dir's own files name, when they do: PostgreSQL's
/// `PG_VERSION`, MariaDB's `mysql_upgrade_info` (written by mariadb-install-db and
/// mariadb-upgrade). MySQL 8 records its version in no plain file.
pub fn data_files(data_dir: &Path) -> Option<DataFiles> {
    let read = |name: &str| {
        fs::read_to_string(data_dir.join(name))
            .ok()
            .map(|s| s.trim().trim_end_matches('\0').to_string())
    };
    if let Some(version) = read("PG_VERSION") {
        return Some(DataFiles {
            engine: Engine::Postgres,
            version,
        });
    }
    let text = read("mysql_upgrade_info")?;
    let engine = if text.contains("MariaDB") {
        Engine::Mariadb
    } else {
        Engine::Mysql
    };
    let version = text
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    Some(DataFiles { engine, version })
}

/// PostgreSQL's database system identifier: the first 8 bytes of `global/pg_control`, shared
/// by a primary and every replica cloned from it. MariaDB has no such identifier in its files
/// (`server_id` differs per instance, and a clone copies no cluster id): for it this is `None`,
/// and the data dir's `stator.json` marker, naming its database, is what identifies it.
pub fn system_identifier(data_dir: &Path) -> Option<u64> {
    let bytes = fs::read(data_dir.join("global/pg_control")).ok()?;
    let first: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_ne_bytes(first))
}

/// How a data dir of an older or newer version is brought to this one.
fn upgrade_hint(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "upgrade it with pg_upgrade",
        Engine::Mariadb | Engine::Mysql => {
            "upgrade it by starting that version and then this one with mariadb-upgrade / mysql_upgrade"
        }
    }
}

/// A data dir that exists must hold data of this engine, of this major version and of this
/// database (its `stator.json` marker, and for PostgreSQL the system identifier).
pub fn check_data_dir(
    data_dir: &Path,
    instance: &str,
    engine: Engine,
    version: &str,
    system_id: Option<u64>,
) -> Result<(), LocalError> {
    if !data_dir.is_dir() {
        return Ok(());
    }
    if let Some(found) = data_files(data_dir)
        && !found.fit(engine, version)
    {
        let hint = if found.engine == engine {
            format!(
                "{}, set spec.version to its version, or move the directory away",
                upgrade_hint(engine)
            )
        } else {
            "move the directory away or choose another database name".to_string()
        };
        return Err(LocalError::DataDirForeign(format!(
            "{}: {instance}'s data dir holds {} {} data, but this database is {} {version}; {hint}",
            data_dir.display(),
            engine_title(found.engine),
            found.version,
            engine_title(engine),
        )));
    }
    // The instance manager's own marker names the engine and database that made the directory.
    let marker = fs::read(data_dir.join("stator.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
    if let Some(owner) = marker
        .as_ref()
        .and_then(|m| m.get("engine"))
        .and_then(|e| e.as_str())
        && owner != engine.as_str()
    {
        return Err(LocalError::DataDirForeign(format!(
            "{}: {instance}'s data dir was made by a {owner} instance, but this database is {}; move it away or delete it",
            data_dir.display(),
            engine_title(engine)
        )));
    }
    // A cloned MariaDB replica has no `mysql_upgrade_info`: the marker says the version.
    if let Some(major) = marker
        .as_ref()
        .and_then(|m| m.get("majorVersion"))
        .and_then(|v| v.as_str())
        && major != version
    {
        return Err(LocalError::DataDirForeign(format!(
            "{}: {instance}'s data dir holds {} {major} data, but this database is {} {version}; {}, set spec.version to {major:?}, or move the directory away",
            data_dir.display(),
            engine_title(engine),
            engine_title(engine),
            upgrade_hint(engine)
        )));
    }
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

/// `spec.config.parameters` against the engine's own binary in `bin_dir`: every misspelled name
/// (with the nearest valid one) and every value the server would refuse at start, each as
/// `spec.config.parameters.KEY: what is wrong`. Empty when all is well.
pub fn parameter_problems(
    db: &stator_api::Database,
    bin_dir: &Path,
) -> Result<Vec<String>, LocalError> {
    let parameters = &db.spec.config.parameters;
    if parameters.is_empty() {
        return Ok(Vec::new());
    }
    let engine = db.spec.engine;
    let wanted = server_user(engine)?.map(|u| u.name);
    let user = stator_engine::ServerUser::resolve(wanted.as_deref())
        .map_err(|e| LocalError::Failed(e.to_string()))?;
    let program = bin_dir.join(installation(engine, db.version()).program);
    let failed = |e: stator_engine::EngineError| {
        LocalError::Failed(format!(
            "cannot check spec.config.parameters against {}: {e}",
            program.display()
        ))
    };
    let catalog =
        stator_engine::parameter_check::read_catalog(engine, &program, &user).map_err(failed)?;
    let problems =
        stator_engine::parameter_check::check_parameters(engine, &catalog, &user, parameters)
            .map_err(failed)?;
    Ok(problems
        .into_iter()
        .map(|p| format!("spec.config.parameters.{}: {}", p.key, p.message))
        .collect())
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

    /// A bin dir holding a fake `mariadbd` that reports `version`, and the tools named.
    fn fake_mariadb(version: &str, tools: &[&str]) -> tempfile::TempDir {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let sbin = tmp.path().join("sbin");
        fs::create_dir_all(&sbin).unwrap();
        fs::create_dir_all(tmp.path().join("bin")).unwrap();
        let script = format!(
            "#!/bin/sh\necho \"$0  Ver {version}-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64\"\n"
        );
        let server = sbin.join("mariadbd");
        fs::write(&server, script).unwrap();
        fs::set_permissions(&server, fs::Permissions::from_mode(0o755)).unwrap();
        for tool in tools {
            let path = tmp.path().join("bin").join(tool);
            fs::write(&path, "#!/bin/sh\n").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        }
        tmp
    }

    const MARIADB_TOOLS: [&str; 3] = ["mariadb-install-db", "mariadb-backup", "mariadb"];

    #[test]
    fn mariadb_is_found_with_its_tools_in_the_sibling_bin_dir() {
        let fake = fake_mariadb("10.11.19", &MARIADB_TOOLS);
        let sbin = fake.path().join("sbin");
        let found =
            find_bin_dir_in(Engine::Mariadb, "10.11", std::slice::from_ref(&sbin), &[]).unwrap();
        assert_eq!(found, sbin);
        assert_eq!(
            find_tool_in(&sbin, "mariadb-backup", &[]),
            Some(fake.path().join("bin/mariadb-backup"))
        );
    }

    #[test]
    fn a_mariadbd_of_another_version_is_named_and_not_used() {
        let fake = fake_mariadb("11.4.2", &MARIADB_TOOLS);
        let sbin = fake.path().join("sbin");
        let err = find_bin_dir_in(Engine::Mariadb, "10.11", std::slice::from_ref(&sbin), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("MariaDB 10.11 binaries not found"), "{err}");
        assert!(err.contains("mariadbd is 11.4.2"), "{err}");
        assert!(
            err.contains("apt-get install mariadb-server mariadb-backup"),
            "{err}"
        );
        // 10.1 is not 10.11.
        let old = fake_mariadb("10.11.19", &MARIADB_TOOLS);
        assert!(find_bin_dir_in(Engine::Mariadb, "10.1", &[old.path().join("sbin")], &[]).is_err());
    }

    #[test]
    fn missing_mariadb_tools_are_named_with_the_install_hint() {
        let fake = fake_mariadb("10.11.19", &["mariadb"]);
        let err = find_bin_dir_in(Engine::Mariadb, "10.11", &[fake.path().join("sbin")], &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`mariadb-install-db`, `mariadb-backup`"),
            "{err}"
        );
        assert!(
            err.contains("apt-get install mariadb-server mariadb-backup"),
            "{err}"
        );
    }

    #[test]
    fn no_mariadbd_anywhere_says_how_to_install_it() {
        let empty = tempfile::tempdir().unwrap();
        let err = find_bin_dir_in(
            Engine::Mariadb,
            "10.11",
            &[empty.path().to_path_buf()],
            &[empty.path().to_path_buf()],
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("looked for `mariadbd`"), "{err}");
        assert!(err.contains("apt-get install mariadb-server"), "{err}");
    }

    #[test]
    fn mysql_family_versions_are_read_from_the_version_line() {
        assert_eq!(
            parse_mysql_family_version(
                "/usr/sbin/mariadbd  Ver 10.11.19-MariaDB-0+deb12u1 for debian-linux-gnu on x86_64 (Debian 12)"
            )
            .as_deref(),
            Some("10.11.19")
        );
        assert_eq!(
            parse_mysql_family_version("/usr/sbin/mysqld  Ver 8.0.36 for Linux on x86_64")
                .as_deref(),
            Some("8.0.36")
        );
        assert_eq!(parse_mysql_family_version("garbage"), None);
        assert_eq!(parse_mysql_family_version("Ver"), None);
        assert!(version_in_major("10.11.19", "10.11"));
        assert!(version_in_major("15", "15"));
        assert!(!version_in_major("10.11.19", "10.1"));
        assert!(!version_in_major("150.1", "15"));
    }

    #[test]
    fn a_mariadb_data_dir_of_another_version_or_engine_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("mysql_upgrade_info"), "10.6.12-MariaDB\0").unwrap();
        let err = check_data_dir(tmp.path(), "m-0", Engine::Mariadb, "10.11", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds MariaDB 10.6.12 data"), "{err}");
        assert!(err.contains("mariadb-upgrade"), "{err}");
        fs::write(tmp.path().join("mysql_upgrade_info"), "10.11.19-MariaDB").unwrap();
        check_data_dir(tmp.path(), "m-0", Engine::Mariadb, "10.11", None).unwrap();

        let pg = tempfile::tempdir().unwrap();
        fs::write(pg.path().join("PG_VERSION"), "15\n").unwrap();
        let err = check_data_dir(pg.path(), "m-0", Engine::Mariadb, "10.11", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds PostgreSQL 15 data"), "{err}");
    }

    #[test]
    fn a_data_dir_marked_by_another_engine_or_database_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(
            tmp.path().join("stator.json"),
            r#"{"engine":"postgres","majorVersion":"15","database":"m"}"#,
        )
        .unwrap();
        let err = check_data_dir(tmp.path(), "m-0", Engine::Mariadb, "10.11", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("made by a postgres instance"), "{err}");
        fs::write(
            tmp.path().join("stator.json"),
            r#"{"engine":"mariadb","majorVersion":"10.11","database":"other"}"#,
        )
        .unwrap();
        let err = check_data_dir(tmp.path(), "m-0", Engine::Mariadb, "10.11", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("belongs to the database \"other\""), "{err}");
        fs::write(
            tmp.path().join("stator.json"),
            r#"{"engine":"mariadb","majorVersion":"11.4","database":"m"}"#,
        )
        .unwrap();
        let err = check_data_dir(tmp.path(), "m-0", Engine::Mariadb, "10.11", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds MariaDB 11.4 data"), "{err}");
        fs::write(
            tmp.path().join("stator.json"),
            r#"{"engine":"mariadb","majorVersion":"10.11","database":"m"}"#,
        )
        .unwrap();
        check_data_dir(tmp.path(), "m-0", Engine::Mariadb, "10.11", None).unwrap();
        assert_eq!(system_identifier(tmp.path()), None);
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
