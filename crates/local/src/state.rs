//! The state directory: where a database's spec, secrets, data dirs, logs and pid files live.
//!
//! ```text
//! STATE/NAMESPACE/NAME/
//!   database.json        who this directory belongs to (engine, version, system identifier,
//!                        whether its first primary was initialised)
//!   spec.json            the applied spec and its generation
//!   primary              NAME-N of the current primary
//!   secrets/             0700; one 0600 file per credential key
//!   data-NAME-N/         the data directories (kept unless `delete --purge`)
//!   instances/NAME-N/    config.json, manager.pid, manager.log, server.log, run/
//!   supervisor.lock      held (flock) by the running supervisor
//!   keeper.lock, keeper.pid  the keeper that restarts a crashed supervisor
//!   up.lock              held (flock) by `stator up` while it starts the database
//!   supervisor.pid, supervisor.log, supervisor.json (last report)
//! ```
//!
//! Nothing under `NAME/` is readable by other users: logs hold statement text and the lock
//! must not be taken by anyone else. As root, `NAME/`, `instances/` and `instances/NAME-N/`
//! are 0750 with the server user's group (the server must pass them to reach its data dir, run
//! dir and log), everything else is 0700/0600, owned by root or by the server user (its data
//! dir, run dir and `server.log`). Without root, all of it is 0700/0600. [`lock_down`] brings
//! a directory of an older version to these modes.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use stator_api::Database;

use crate::error::LocalError;

/// The root of all local databases.
#[derive(Clone, Debug)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    /// `explicit` (the `--state-dir` flag or `STATOR_STATE_DIR`), else the per-user default.
    /// The path is made absolute: the supervisor and instance managers run from `/`.
    pub fn resolve(explicit: Option<PathBuf>) -> StateDir {
        let root = explicit.unwrap_or_else(default_root);
        StateDir {
            root: std::path::absolute(&root).unwrap_or(root),
        }
    }

    pub fn database(&self, namespace: &str, name: &str) -> DatabaseDir {
        DatabaseDir {
            root: self.root.join(namespace).join(name),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The local Secrets of `namespace` a spec names by `...SecretName` (S3 repository keys
    /// and CA): `STATE/NAMESPACE/.secrets/SECRET/KEY`, one 0600 file per key (the leading dot
    /// keeps it apart from the databases, whose names cannot start with one).
    pub fn secrets_root(&self, namespace: &str) -> PathBuf {
        self.root.join(namespace).join(".secrets")
    }

    pub fn database_of(&self, db: &Database) -> DatabaseDir {
        self.database(db.namespace(), db.name())
    }

    /// [`StateDir::database_of`] for a command that reads or changes it: refused, naming the
    /// path, when this user may not use it ([`DatabaseDir::check_access`]).
    pub fn open(&self, db: &Database) -> Result<DatabaseDir, LocalError> {
        let dir = self.database_of(db);
        dir.check_access()?;
        Ok(dir)
    }
}

/// `/var/lib/stator` for root; `$XDG_STATE_HOME/stator` or `~/.local/state/stator` otherwise.
pub fn default_root() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/stator");
    }
    if let Some(xdg) = std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(xdg).join("stator");
    }
    match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/state/stator"),
        None => PathBuf::from("/tmp/stator-state"),
    }
}

/// One database's directory and the names of everything in it.
#[derive(Clone, Debug)]
pub struct DatabaseDir {
    pub root: PathBuf,
    pub namespace: String,
    pub name: String,
}

/// The spec `up` applied last, with a counter the supervisor echoes once it has acted on it.
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct AppliedSpec {
    pub generation: u64,
    pub database: Database,
}

/// Who a database directory belongs to; checked before data dirs are reused.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Marker {
    pub namespace: String,
    pub name: String,
    pub engine: String,
    pub version: String,
    /// PostgreSQL's database system identifier of the primary's data dir, once it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<u64>,
    /// The first primary was initialised: from then on the database has data, and an empty
    /// data dir is cloned from an instance that holds it, never initialised (an empty primary
    /// would lose every write). Recorded for every engine, the moment the first primary's data
    /// dir is in place. It is the one identity fact MariaDB offers: it has no cluster-wide
    /// identifier in its files (`server_id` is per server and set by Stator, GTID domains are
    /// configuration, a clone copies no Stator marker), while PostgreSQL also has its
    /// system identifier above.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub initialized: bool,
}

impl Marker {
    /// Whether this database ever had data (its first primary was initialised).
    pub fn had_data(&self) -> bool {
        self.initialized || self.system_identifier.is_some()
    }
}

impl DatabaseDir {
    /// `NAMESPACE/NAME`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn instance_name(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.name)
    }

    pub fn spec_file(&self) -> PathBuf {
        self.root.join("spec.json")
    }
    pub fn marker_file(&self) -> PathBuf {
        self.root.join("database.json")
    }
    pub fn primary_file(&self) -> PathBuf {
        self.root.join("primary")
    }
    pub fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }
    /// [`StateDir::secrets_root`] of this database's namespace.
    pub fn namespace_secrets(&self) -> PathBuf {
        self.root
            .parent()
            .map(|ns| ns.join(".secrets"))
            .unwrap_or_else(|| self.root.join(".secrets"))
    }
    /// The database's certificates (`ca.crt`, `tls.crt`, `tls.key`, …), 0700, keys 0600.
    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }
    pub fn data_dir(&self, ordinal: u32) -> PathBuf {
        self.root
            .join(format!("data-{}", self.instance_name(ordinal)))
    }
    pub fn instance_dir(&self, ordinal: u32) -> PathBuf {
        self.root
            .join("instances")
            .join(self.instance_name(ordinal))
    }
    pub fn config_file(&self, ordinal: u32) -> PathBuf {
        self.instance_dir(ordinal).join("config.json")
    }
    pub fn manager_pid_file(&self, ordinal: u32) -> PathBuf {
        self.instance_dir(ordinal).join("manager.pid")
    }
    pub fn manager_log(&self, ordinal: u32) -> PathBuf {
        self.instance_dir(ordinal).join("manager.log")
    }
    pub fn server_log(&self, ordinal: u32) -> PathBuf {
        self.instance_dir(ordinal).join("server.log")
    }
    pub fn run_dir(&self, ordinal: u32) -> PathBuf {
        self.instance_dir(ordinal).join("run")
    }
    pub fn supervisor_lock(&self) -> PathBuf {
        self.root.join("supervisor.lock")
    }
    /// Held (flock) by the running keeper (`stator keep`), which restarts a crashed supervisor.
    pub fn keeper_lock(&self) -> PathBuf {
        self.root.join("keeper.lock")
    }
    pub fn keeper_pid_file(&self) -> PathBuf {
        self.root.join("keeper.pid")
    }
    /// Held (flock) by `stator up` while it checks and starts the database, so two concurrent
    /// `up` of one database start one keeper.
    pub fn up_lock(&self) -> PathBuf {
        self.root.join("up.lock")
    }
    pub fn supervisor_pid_file(&self) -> PathBuf {
        self.root.join("supervisor.pid")
    }
    pub fn supervisor_log(&self) -> PathBuf {
        self.root.join("supervisor.log")
    }
    pub fn supervisor_report(&self) -> PathBuf {
        self.root.join("supervisor.json")
    }

    pub fn exists(&self) -> bool {
        self.root.is_dir()
    }

    /// Refuses a database directory this user cannot use (another user's, e.g. root's, seen by
    /// a non-root user): without this, commands would find no supervisor (its lock cannot be
    /// opened) and report "stopped" or "not running" about a database that runs. A directory
    /// that does not exist is not refused here; commands say themselves that it is missing.
    pub fn check_access(&self) -> Result<(), LocalError> {
        use nix::unistd::{AccessFlags, access};
        let rwx = AccessFlags::R_OK | AccessFlags::W_OK | AccessFlags::X_OK;
        match fs::metadata(&self.root) {
            Ok(_) => {
                if access(&self.root, rwx).is_err() {
                    return Err(LocalError::permission_denied(&self.root));
                }
                let lock = self.supervisor_lock();
                if lock.exists() && access(&lock, AccessFlags::W_OK).is_err() {
                    return Err(LocalError::permission_denied(&lock));
                }
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let blocked = self
                    .root
                    .ancestors()
                    .skip(1)
                    .find(|a| access(*a, AccessFlags::X_OK).is_err())
                    .unwrap_or(&self.root);
                Err(LocalError::permission_denied(blocked))
            }
            Err(_) => {
                // Missing: `up` creates it in the nearest existing ancestor.
                let existing = self.root.ancestors().skip(1).find(|a| a.exists());
                match existing {
                    Some(a) if access(a, AccessFlags::W_OK | AccessFlags::X_OK).is_err() => {
                        Err(LocalError::permission_denied(a))
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    /// Creates a directory inside `NAME/` that the server user must pass (`instances/`,
    /// `instances/NAME-N/`), with the group and the mode (0750 or 0700) of `NAME/` itself.
    pub fn create_shared_dir(&self, path: &Path) -> Result<(), LocalError> {
        if !self.root.exists() {
            create_dir(&self.root, 0o700)?; // `up` gives it its group; until then, private
        }
        let root =
            fs::metadata(&self.root).map_err(|e| LocalError::io(&self.root, "cannot read", e))?;
        if let Some(parent) = path.parent()
            && parent != self.root
            && parent.starts_with(&self.root)
        {
            self.create_shared_dir(parent)?;
        }
        create_dir(path, root.mode() & 0o750)?;
        let meta = fs::metadata(path).map_err(|e| LocalError::io(path, "cannot read", e))?;
        if meta.gid() != root.gid() {
            nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(root.gid())))
                .map_err(|e| LocalError::io(path, "cannot set the group of", e.into()))?;
        }
        Ok(())
    }

    /// The spec applied last; `None` when none was (or it was deleted).
    pub fn read_applied(&self) -> Result<Option<AppliedSpec>, LocalError> {
        read_json(&self.spec_file())
    }

    pub fn write_applied(&self, applied: &AppliedSpec) -> Result<(), LocalError> {
        write_json(&self.spec_file(), applied)
    }

    pub fn read_marker(&self) -> Result<Option<Marker>, LocalError> {
        read_json(&self.marker_file())
    }

    pub fn write_marker(&self, marker: &Marker) -> Result<(), LocalError> {
        write_json(&self.marker_file(), marker)
    }

    /// The current primary, `NAME-0` until something records another.
    pub fn read_primary(&self) -> String {
        fs::read_to_string(self.primary_file())
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| self.instance_name(0))
    }

    pub fn write_primary(&self, instance: &str) -> Result<(), LocalError> {
        write_atomic(
            &self.primary_file(),
            format!("{instance}\n").as_bytes(),
            PRIVATE_FILE,
        )
    }

    /// Whether instance `ordinal`'s data dir holds anything (a directory that cannot be read
    /// counts as holding data: it must not be initialised over).
    pub fn holds_data(&self, ordinal: u32) -> bool {
        !stator_engine::data_dir::is_empty_dir(&self.data_dir(ordinal)).unwrap_or(false)
    }

    /// Whether the database ever had data: its marker says so, or some instance's data dir
    /// (of `ordinals`, and every known one) holds data.
    pub fn had_data(
        &self,
        marker: Option<&Marker>,
        ordinals: impl IntoIterator<Item = u32>,
    ) -> bool {
        marker.is_some_and(Marker::had_data)
            || ordinals
                .into_iter()
                .chain(self.known_ordinals())
                .any(|o| self.holds_data(o))
    }

    /// Ordinals that have an instance directory or a data directory, ascending.
    pub fn known_ordinals(&self) -> Vec<u32> {
        let mut found = std::collections::BTreeSet::new();
        let prefix = format!("{}-", self.name);
        let data_prefix = format!("data-{}-", self.name);
        for (dir, pre) in [
            (self.root.join("instances"), prefix.as_str()),
            (self.root.clone(), data_prefix.as_str()),
        ] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let Some(rest) = file_name.to_str().and_then(|n| n.strip_prefix(pre)) else {
                    continue;
                };
                if let Ok(n) = rest.parse::<u32>() {
                    found.insert(n);
                }
            }
        }
        found.into_iter().collect()
    }
}

/// The mode of every file in a database's directory: no one but its owner (root, or the
/// server user for what the server writes) may read it.
pub const PRIVATE_FILE: u32 = 0o600;

/// Brings `dir` (written by an older version, with 0755 dirs and 0644 files) to the modes the
/// module documentation lists, and gives `NAME/` the group `server_gid` (the server user's) or,
/// without one, mode 0700. Data dirs and run dirs keep their owner (the server user) and lose
/// any access by others. The lock file is replaced when others could open it and no live
/// supervisor holds it (whoever holds the old one then holds nothing). Returns the paths
/// whose mode or owner changed.
pub fn lock_down(dir: &DatabaseDir, server_gid: Option<u32>) -> Result<Vec<PathBuf>, LocalError> {
    let mut changed = Vec::new();
    let shared_mode = if server_gid.is_some() { 0o750 } else { 0o700 };
    if let Some(gid) = server_gid {
        let meta =
            fs::metadata(&dir.root).map_err(|e| LocalError::io(&dir.root, "cannot read", e))?;
        if meta.gid() != gid {
            nix::unistd::chown(&dir.root, None, Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(|e| LocalError::io(&dir.root, "cannot set the group of", e.into()))?;
            changed.push(dir.root.clone());
        }
    }
    set_mode(&dir.root, shared_mode, &mut changed)?;
    let lock = dir.supervisor_lock();
    if let Ok(meta) = fs::symlink_metadata(&lock)
        && (meta.mode() & 0o077 != 0 || meta.uid() != nix::unistd::geteuid().as_raw())
    {
        let supervisor =
            crate::process::live_pid_from_file(&dir.supervisor_pid_file(), "supervise");
        if supervisor.is_none() {
            fs::remove_file(&lock).map_err(|e| LocalError::io(&lock, "cannot replace", e))?;
        } else {
            fs::set_permissions(&lock, fs::Permissions::from_mode(PRIVATE_FILE))
                .map_err(|e| LocalError::io(&lock, "cannot set permissions", e))?;
        }
        changed.push(lock);
    }
    let entries =
        fs::read_dir(&dir.root).map_err(|e| LocalError::io(&dir.root, "cannot read", e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(meta) = fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.is_file() {
            restrict(&path, PRIVATE_FILE, &mut changed)?;
        } else if meta.is_dir() && path.file_name().is_some_and(|n| n == "instances") {
            dir.create_shared_dir(&path)?;
            set_mode(&path, shared_mode, &mut changed)?;
            for instance in fs::read_dir(&path).into_iter().flatten().flatten() {
                let instance = instance.path();
                if !instance.is_dir() {
                    continue;
                }
                dir.create_shared_dir(&instance)?;
                set_mode(&instance, shared_mode, &mut changed)?;
                for item in fs::read_dir(&instance).into_iter().flatten().flatten() {
                    let item = item.path();
                    let mode = if item.is_dir() { 0o700 } else { PRIVATE_FILE };
                    restrict(&item, mode, &mut changed)?;
                }
            }
        } else if meta.is_dir() {
            restrict(&path, 0o700, &mut changed)?;
        }
    }
    Ok(changed)
}

/// Gives `path` exactly `mode`.
fn set_mode(path: &Path, mode: u32, changed: &mut Vec<PathBuf>) -> Result<(), LocalError> {
    let meta = fs::metadata(path).map_err(|e| LocalError::io(path, "cannot read", e))?;
    if meta.mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(|e| LocalError::io(path, "cannot set permissions", e))?;
        changed.push(path.to_path_buf());
    }
    Ok(())
}

/// Takes from `path` every permission bit `mode` does not have (group and others first of all).
fn restrict(path: &Path, mode: u32, changed: &mut Vec<PathBuf>) -> Result<(), LocalError> {
    let meta = fs::symlink_metadata(path).map_err(|e| LocalError::io(path, "cannot read", e))?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let current = meta.mode() & 0o7777;
    let wanted = current & mode;
    if wanted != current {
        fs::set_permissions(path, fs::Permissions::from_mode(wanted))
            .map_err(|e| LocalError::io(path, "cannot set permissions", e))?;
        changed.push(path.to_path_buf());
    }
    Ok(())
}

/// Opens (creating it 0600) the lock file at `path`. No one but its owner can open it, so no one
/// else can hold its flock and block the supervisor, the keeper or `up`.
pub fn open_lock_file(path: &Path) -> Result<fs::File, LocalError> {
    fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(PRIVATE_FILE)
        .open(path)
        .map_err(|e| LocalError::io(path, "cannot open lock", e))
}

/// Creates `path` (and parents) with `mode` on the last component.
pub fn create_dir(path: &Path, mode: u32) -> Result<(), LocalError> {
    if !path.is_dir() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(path)
            .map_err(|e| LocalError::io(path, "cannot create directory", e))?;
    }
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| LocalError::io(path, "cannot set permissions", e))
}

/// Writes through a temporary file and a rename, so readers never see half a file.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), LocalError> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| LocalError::io(&tmp, "cannot write", e))?;
    file.write_all(bytes)
        .and_then(|_| file.sync_all())
        .map_err(|e| LocalError::io(&tmp, "cannot write", e))?;
    fs::rename(&tmp, path).map_err(|e| LocalError::io(path, "cannot replace", e))
}

pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), LocalError> {
    let mut text = serde_json::to_vec_pretty(value)
        .map_err(|e| LocalError::Failed(format!("{}: cannot encode: {e}", path.display())))?;
    text.push(b'\n');
    write_atomic(path, &text, PRIVATE_FILE)
}

pub fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, LocalError> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            LocalError::Failed(format!(
                "{}: damaged ({e}); remove it to start over",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(LocalError::io(path, "cannot read", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_paths_follow_the_statefulset_names() {
        let dir = StateDir {
            root: PathBuf::from("/s"),
        }
        .database("default", "pg");
        assert_eq!(dir.data_dir(2), PathBuf::from("/s/default/pg/data-pg-2"));
        assert_eq!(
            dir.config_file(1),
            PathBuf::from("/s/default/pg/instances/pg-1/config.json")
        );
        assert_eq!(dir.key(), "default/pg");
    }

    #[test]
    fn primary_defaults_to_ordinal_zero_and_is_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir {
            root: tmp.path().to_path_buf(),
        }
        .database("ns", "db");
        create_dir(&dir.root, 0o755).unwrap();
        assert_eq!(dir.read_primary(), "db-0");
        dir.write_primary("db-2").unwrap();
        assert_eq!(dir.read_primary(), "db-2");
    }

    #[test]
    fn lock_down_closes_an_older_layout_to_other_users_and_replaces_an_open_lock() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir {
            root: tmp.path().to_path_buf(),
        }
        .database("ns", "db");
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        // As an older version left it: 0755 dirs, 0644 files and logs, a 0644 lock.
        for d in [dir.root.clone(), dir.instance_dir(0), dir.data_dir(0)] {
            fs::create_dir_all(&d).unwrap();
            fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::set_permissions(
            dir.root.join("instances"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let files = [
            dir.supervisor_log(),
            dir.spec_file(),
            dir.manager_log(0),
            dir.server_log(0),
            dir.supervisor_lock(),
        ];
        for f in &files {
            fs::write(f, "x").unwrap();
            fs::set_permissions(f, fs::Permissions::from_mode(0o644)).unwrap();
        }
        let old_lock = fs::metadata(dir.supervisor_lock()).unwrap().ino();
        let changed = lock_down(&dir, None).unwrap();
        assert!(changed.contains(&dir.root), "{changed:?}");
        assert_eq!(mode(&dir.root), 0o700);
        assert_eq!(mode(&dir.root.join("instances")), 0o700);
        assert_eq!(mode(&dir.instance_dir(0)), 0o700);
        assert_eq!(mode(&dir.data_dir(0)), 0o700);
        for f in &files[..4] {
            assert_eq!(mode(f), 0o600, "{}", f.display());
        }
        // No supervisor holds the open lock: it is removed (whoever holds it holds nothing),
        // and the supervisor creates a new one, 0600.
        assert!(
            fs::metadata(dir.supervisor_lock())
                .map(|m| m.ino() != old_lock)
                .unwrap_or(true)
        );
        assert!(lock_down(&dir, None).unwrap().is_empty(), "idempotent");
        // New shared dirs take NAME/'s mode and group.
        dir.create_shared_dir(&dir.instance_dir(1)).unwrap();
        assert_eq!(mode(&dir.instance_dir(1)), 0o700);
    }

    #[test]
    fn known_ordinals_come_from_instance_and_data_dirs() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = StateDir {
            root: tmp.path().to_path_buf(),
        }
        .database("ns", "db");
        create_dir(&dir.instance_dir(0), 0o755).unwrap();
        create_dir(&dir.data_dir(3), 0o700).unwrap();
        create_dir(&dir.root.join("data-other-1"), 0o700).unwrap();
        assert_eq!(dir.known_ordinals(), vec![0, 3]);
    }
}
