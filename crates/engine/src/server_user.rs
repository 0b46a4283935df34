//! The OS user a server runs as. PostgreSQL and MariaDB/MySQL refuse to run as root, so an
//! instance manager that runs as root starts the server (and initdb, pg_basebackup, pg_rewind,
//! mariadb-install-db, mariadb-backup) as an unprivileged user,
//! with that user's uid and gid and no supplementary groups, and owns the server's files to it.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use nix::unistd::{Gid, Uid, User, chown};

use crate::error::EngineError;

/// Who the server runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// True when spawning must switch to this user (the manager runs as root).
    pub switch: bool,
}

impl ServerUser {
    /// Resolves `wanted` (the instance config's `serverUser`). Without one, the server runs as
    /// the current user, which must not be root.
    pub fn resolve(wanted: Option<&str>) -> Result<ServerUser, EngineError> {
        let me = Uid::effective();
        match wanted {
            None => {
                if me.is_root() {
                    return Err(EngineError::ServerUser {
                        user: "root".into(),
                        message: "the database server refuses to run as root; set serverUser in the instance config (\"postgres\" for PostgreSQL, \"mysql\" for MariaDB and MySQL; create it with `useradd --system NAME` if it does not exist)".into(),
                    });
                }
                let name = User::from_uid(me)
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| me.to_string());
                Ok(ServerUser {
                    name,
                    uid: me.as_raw(),
                    gid: Gid::effective().as_raw(),
                    switch: false,
                })
            }
            Some(name) => {
                let user = User::from_name(name)
                    .map_err(|e| EngineError::ServerUser {
                        user: name.into(),
                        message: format!("cannot look it up: {e}"),
                    })?
                    .ok_or_else(|| EngineError::ServerUser {
                        user: name.into(),
                        message: "no such user; create it (`useradd --system NAME`) or name another in serverUser".into(),
                    })?;
                if user.uid.is_root() {
                    return Err(EngineError::ServerUser {
                        user: name.into(),
                        message: "is root; the database server refuses to run as root".into(),
                    });
                }
                if user.uid != me && !me.is_root() {
                    return Err(EngineError::ServerUser {
                        user: name.into(),
                        message: format!(
                            "the instance manager runs as uid {me} and cannot switch to uid {}; run it as root or as that user",
                            user.uid
                        ),
                    });
                }
                Ok(ServerUser {
                    name: user.name,
                    uid: user.uid.as_raw(),
                    gid: user.gid.as_raw(),
                    switch: user.uid != me,
                })
            }
        }
    }

    /// Makes `path` belong to this user (when switching) with `mode`.
    pub fn own(&self, path: &Path, mode: u32) -> Result<(), EngineError> {
        if self.switch {
            chown(
                path,
                Some(Uid::from_raw(self.uid)),
                Some(Gid::from_raw(self.gid)),
            )
            .map_err(|e| EngineError::io(path, "change the owner of", e.into()))?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| EngineError::io(path, "set the mode of", e))
    }

    /// Creates the server log `path` if missing and makes it this user's, mode 0600: it may
    /// quote statements (a failed `ALTER ROLE … PASSWORD` quotes the password), and the server
    /// itself may open it (MariaDB's `log_error`).
    pub fn create_log_file(&self, path: &Path) -> Result<(), EngineError> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| EngineError::io(path, "create", e))?;
        // A regular file only: a log sent to a terminal or a pipe keeps its owner and mode.
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => self.own(path, 0o600),
            _ => Ok(()),
        }
    }

    /// Creates `dir` (and missing parents) and makes it this user's, mode 0700.
    pub fn create_private_dir(&self, dir: &Path) -> Result<(), EngineError> {
        std::fs::create_dir_all(dir).map_err(|e| EngineError::io(dir, "create", e))?;
        self.own(dir, 0o700)
    }

    /// Writes `text` to `path` atomically (a temporary sibling renamed over it), owned by this
    /// user with `mode`, so a reader never sees a half-written file.
    pub fn write_file(&self, path: &Path, text: &str, mode: u32) -> Result<(), EngineError> {
        write_atomic(path, text, mode, Some(self))
    }

    /// Checks that this user can reach `path`: every existing ancestor must be searchable by it.
    /// Names the first directory that is not, and how to fix it.
    pub fn check_reachable(&self, path: &Path) -> Result<(), EngineError> {
        if !self.switch {
            return Ok(());
        }
        let mut ancestors: Vec<&Path> = path.ancestors().skip(1).collect();
        ancestors.reverse();
        for dir in ancestors {
            if dir.as_os_str().is_empty() {
                continue;
            }
            let Ok(meta) = std::fs::metadata(dir) else {
                continue;
            };
            let mode = meta.mode();
            let ok = if meta.uid() == self.uid {
                mode & 0o100 != 0
            } else if meta.gid() == self.gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if !ok {
                return Err(EngineError::ServerUser {
                    user: self.name.clone(),
                    message: format!(
                        "cannot reach {}: {} (mode {:04o}) is not searchable by it; allow it with `chmod o+x {}` or put the state directory elsewhere",
                        path.display(),
                        dir.display(),
                        mode & 0o7777,
                        dir.display()
                    ),
                });
            }
        }
        Ok(())
    }
}

/// Writes `text` to `path` atomically (a temporary sibling renamed over it) with `mode`, owned
/// by `owner` when given (else by whoever runs this).
pub fn write_atomic(
    path: &Path,
    text: &str,
    mode: u32,
    owner: Option<&ServerUser>,
) -> Result<(), EngineError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("stator-tmp");
    let _ = std::fs::remove_file(&tmp);
    {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| EngineError::io(&tmp, "create", e))?;
        f.write_all(text.as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| EngineError::io(&tmp, "write", e))?;
    }
    if let Some(owner) = owner {
        owner.own(&tmp, mode)?;
    }
    std::fs::rename(&tmp, path).map_err(|e| EngineError::io(path, "replace", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_server_user_is_refused_with_how_to_create_it() {
        let e = ServerUser::resolve(Some("no-such-user-stator"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no-such-user-stator") && e.contains("useradd"),
            "{e}"
        );
    }

    #[test]
    fn a_server_log_is_created_or_tightened_to_0600_for_the_server_user() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let Ok(user) = ServerUser::resolve(Some("postgres")) else {
            return; // no such user here: nothing to hand the log to
        };
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("old.log");
        std::fs::write(&old, "statement text\n").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        let new = dir.path().join("new.log");
        for log in [&old, &new] {
            user.create_log_file(log).unwrap();
            let meta = std::fs::metadata(log).unwrap();
            assert_eq!(meta.mode() & 0o777, 0o600, "{}", log.display());
            if user.switch {
                assert_eq!(meta.uid(), user.uid, "{}", log.display());
            }
        }
        assert_eq!(std::fs::read_to_string(&old).unwrap(), "statement text\n");
    }

    #[test]
    fn root_as_server_user_is_refused() {
        let e = ServerUser::resolve(Some("root")).unwrap_err().to_string();
        assert!(e.contains("refuses to run as root"), "{e}");
    }

    #[test]
    fn a_root_manager_without_server_user_is_refused() {
        if Uid::effective().is_root() {
            let e = ServerUser::resolve(None).unwrap_err().to_string();
            assert!(e.contains("serverUser"), "{e}");
        }
    }

    #[test]
    fn an_unsearchable_parent_is_named() {
        if !Uid::effective().is_root() || User::from_name("postgres").ok().flatten().is_none() {
            return;
        }
        let user = ServerUser::resolve(Some("postgres")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let e = user
            .check_reachable(&dir.path().join("data"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&dir.path().display().to_string()) && e.contains("o+x"),
            "{e}"
        );
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        user.check_reachable(&dir.path().join("data")).unwrap();
    }
}
