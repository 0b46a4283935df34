//! The state directory: where a database's spec, secrets, data dirs, logs and pid files live.
//!
//! ```text
//! STATE/NAMESPACE/NAME/
//!   database.json        who this directory belongs to (engine, version, system identifier)
//!   spec.json            the applied spec and its generation
//!   primary              NAME-N of the current primary
//!   secrets/             0700; one 0600 file per credential key
//!   data-NAME-N/         the data directories (kept unless `delete --purge`)
//!   instances/NAME-N/    config.json, manager.pid, manager.log, server.log, run/
//!   supervisor.lock      held (flock) by the running supervisor
//!   supervisor.pid, supervisor.log, supervisor.json (last report)
//! ```

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
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

    pub fn database_of(&self, db: &Database) -> DatabaseDir {
        self.database(db.namespace(), db.name())
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
            0o644,
        )
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
    write_atomic(path, &text, 0o644)
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
