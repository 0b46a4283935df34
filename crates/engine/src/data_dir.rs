//! The data directory's identity: a marker file written when Stator creates the directory, naming
//! the engine, the major version and the database it belongs to, and — for a replica — the
//! upstream it follows. An instance refuses a directory whose marker names anything else.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use stator_api::instance::Endpoint;

use crate::error::EngineError;
use crate::server_user::ServerUser;

/// File name of the marker inside the data directory.
pub const MARKER_FILE: &str = "stator.json";

/// What the marker says.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DataDirMarker {
    /// `postgres`, `mysql`, `mariadb`.
    pub engine: String,
    /// Major version of the files, e.g. `15`.
    pub major_version: String,
    /// `metadata.name` of the Database.
    pub database: String,
    /// The upstream this instance follows; `None` for a primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub follows: Option<Endpoint>,
}

/// What an instance found in its data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataDirState {
    /// Absent or empty: to be created by the bootstrap.
    Empty,
    /// Created by Stator for this database, engine and version.
    Ready(DataDirMarker),
}

/// Path of the marker of `data_dir`.
pub fn marker_path(data_dir: &Path) -> PathBuf {
    data_dir.join(MARKER_FILE)
}

/// True when `dir` does not exist or holds nothing (a `lost+found` of a fresh volume does not
/// count).
pub fn is_empty_dir(dir: &Path) -> Result<bool, EngineError> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry.map_err(|e| EngineError::io(dir, "list", e))?;
                if entry.file_name() != "lost+found" {
                    return Ok(false);
                }
            }
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(EngineError::io(dir, "list", e)),
    }
}

/// Reads the marker; `None` when there is none.
pub fn read_marker(data_dir: &Path) -> Result<Option<DataDirMarker>, EngineError> {
    let path = marker_path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(EngineError::io(path, "read", e)),
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| EngineError::ForeignDataDir {
            path,
            message: format!("the Stator marker is not valid: {e}"),
        })
}

/// Writes the marker atomically, owned by the server user.
pub fn write_marker(
    data_dir: &Path,
    marker: &DataDirMarker,
    user: &ServerUser,
) -> Result<(), EngineError> {
    let text = serde_json::to_string_pretty(marker).map_err(|e| EngineError::Config {
        field: MARKER_FILE.into(),
        message: e.to_string(),
    })?;
    user.write_file(&marker_path(data_dir), &(text + "\n"), 0o600)
}

/// Where a bootstrap builds `data_dir`: a hidden sibling, moved into place (one rename) only
/// once complete with its marker, so an instance manager killed during initdb, mariadb-install-db
/// or a clone leaves an empty data directory, never a half-made one. A data directory that is a
/// mount point cannot be replaced; it is built in place.
pub fn staging_dir(data_dir: &Path, user: &ServerUser) -> Result<PathBuf, EngineError> {
    let (Some(parent), Some(name)) = (data_dir.parent(), data_dir.file_name()) else {
        return Err(EngineError::Config {
            field: "dataDir".into(),
            message: format!("{} has no parent directory", data_dir.display()),
        });
    };
    let in_place = match (std::fs::metadata(data_dir), std::fs::metadata(parent)) {
        (Ok(dir), Ok(up)) => {
            use std::os::unix::fs::MetadataExt;
            dir.dev() != up.dev()
        }
        _ => false,
    };
    if in_place {
        user.create_private_dir(data_dir)?;
        return Ok(data_dir.to_path_buf());
    }
    std::fs::create_dir_all(parent).map_err(|e| EngineError::io(parent, "create", e))?;
    let staging = parent.join(format!(".{}.stator-new", name.to_string_lossy()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .map_err(|e| EngineError::io(&staging, "remove the leftover", e))?;
    }
    user.create_private_dir(&staging)?;
    Ok(staging)
}

/// Moves a complete staging directory into place.
pub fn install_staging(
    staging: &Path,
    data_dir: &Path,
    user: &ServerUser,
) -> Result<(), EngineError> {
    if staging == data_dir {
        return Ok(());
    }
    // rename(2) replaces an empty directory.
    std::fs::rename(staging, data_dir)
        .map_err(|e| EngineError::io(data_dir, "move the new data directory into", e))?;
    user.own(data_dir, 0o700)
}

/// Removes what a failed bootstrap left.
pub fn discard_staging(staging: &Path, data_dir: &Path) {
    if staging != data_dir {
        let _ = std::fs::remove_dir_all(staging);
        return;
    }
    if let Ok(entries) = std::fs::read_dir(staging) {
        for entry in entries.flatten() {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }
}

/// Compares a marker with what this instance expects; the reason it does not belong, if not.
pub fn marker_mismatch(
    found: &DataDirMarker,
    engine: &str,
    major: &str,
    database: &str,
) -> Option<String> {
    if found.engine != engine {
        return Some(format!(
            "belongs to a {} server, not {engine}",
            found.engine
        ));
    }
    if found.major_version != major {
        return Some(format!(
            "holds {} {} files, this instance runs {engine} {major} (upgrade the directory, or use another one)",
            found.engine, found.major_version
        ));
    }
    if found.database != database {
        return Some(format!(
            "belongs to the database {:?}, not {database:?}",
            found.database
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(db: &str) -> DataDirMarker {
        DataDirMarker {
            engine: "postgres".into(),
            major_version: "15".into(),
            database: db.into(),
            follows: None,
        }
    }

    #[test]
    fn a_marker_of_another_database_is_a_mismatch_naming_both() {
        let why = marker_mismatch(&marker("orders"), "postgres", "15", "users").unwrap();
        assert!(why.contains("orders") && why.contains("users"), "{why}");
        assert!(marker_mismatch(&marker("users"), "postgres", "15", "users").is_none());
    }

    #[test]
    fn a_marker_of_another_major_version_is_a_mismatch() {
        let why = marker_mismatch(&marker("a"), "postgres", "16", "a").unwrap();
        assert!(why.contains("15") && why.contains("16"), "{why}");
    }

    #[test]
    fn lost_and_found_alone_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(is_empty_dir(dir.path()).unwrap());
        std::fs::create_dir(dir.path().join("lost+found")).unwrap();
        assert!(is_empty_dir(dir.path()).unwrap());
        std::fs::write(dir.path().join("x"), "").unwrap();
        assert!(!is_empty_dir(dir.path()).unwrap());
        assert!(is_empty_dir(&dir.path().join("absent")).unwrap());
    }
}
