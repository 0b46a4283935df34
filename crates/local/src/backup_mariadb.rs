//! Backups of a local MariaDB database (`spec.backup` with a local repository): `stator backup
//! create` stores a full backup streamed from a ready replica's instance manager (`GET
//! /backup`), else the primary's; list and verify read the manifests and re-hash the objects;
//! a restore is checked (repository, backup, target, objects) before anything is written.
//! The repository path and its marker are PostgreSQL's ([`crate::backup`]); the storing,
//! hashing and manifests are the engine's ([`stator_engine::mysql_family::repository`]).

use std::path::{Path, PathBuf};

use stator_api::instance::{LocalPorts, RestoreSource, RestoreTarget};
use stator_api::names::secret_keys;
use stator_api::{Database, Role};
use stator_engine::mysql_family::repository::{self, Manifest};
use stator_engine::postgres::backrest::{
    self, REPOSITORY_MARKER, RepositoryMarker, marker_conflict, read_repository_marker,
};

use crate::error::LocalError;
use crate::runtime::block_on;
use crate::secrets::read_secret;
use crate::state::DatabaseDir;

fn failed(e: impl std::fmt::Display) -> LocalError {
    LocalError::Failed(e.to_string())
}

/// The instance a full backup is streamed from: a ready replica if one answers, else the
/// primary. Its name and manager port.
fn backup_source(db: &Database, primary: &str) -> (String, u16) {
    let ports = LocalPorts::of(db);
    for ordinal in 0..db.spec.instances {
        let name = db.instance_name(ordinal);
        if name == primary {
            continue;
        }
        let report = crate::backup::manager_status(db, ordinal);
        if let Some(r) = report
            && r["ready"].as_bool() == Some(true)
            && r["role"].as_str() == Some(Role::Replica.as_str())
        {
            return (name, ports.manager(ordinal));
        }
    }
    let ordinal = crate::plan::ordinal_of(primary).unwrap_or(0);
    (primary.to_string(), ports.manager(ordinal))
}

/// Ties `repository` to `db` (writes the marker when absent; refuses another database's).
fn claim(repository: &Path, db: &Database) -> Result<(), LocalError> {
    let wanted = RepositoryMarker {
        namespace: db.namespace().into(),
        name: db.name().into(),
        system_identifier: None,
    };
    match read_repository_marker(repository).map_err(failed)? {
        Some(found) => match marker_conflict(repository, &found, &wanted) {
            Some(why) => Err(LocalError::Invalid(why)),
            None => Ok(()),
        },
        None => {
            std::fs::create_dir_all(repository)
                .map_err(|e| LocalError::io(repository, "create", e))?;
            let file = repository.join(REPOSITORY_MARKER);
            let text = serde_json::to_string_pretty(&wanted).map_err(failed)?;
            std::fs::write(&file, text).map_err(|e| LocalError::io(&file, "write", e))
        }
    }
}

/// Takes a full backup now. The answer has the PostgreSQL side's fields (`label`, `kind`,
/// `size`, `durationSeconds`) and the GTID.
pub fn create(
    dir: &DatabaseDir,
    db: &Database,
    repository: &Path,
) -> Result<serde_json::Value, LocalError> {
    claim(repository, db)?;
    let token = read_secret(&dir.secrets_dir(), secret_keys::API_TOKEN)?;
    let (source, port) = backup_source(db, &dir.read_primary());
    let host = db.spec.local.listen_address.clone();
    let repo = repository.to_path_buf();
    let m = block_on(async move {
        repository::store_full_backup(&host, port, token.as_str(), &source, &repo).await
    })?
    .map_err(failed)?;
    // Retention runs after each success.
    let full = db.spec.backup.as_ref().map_or(1, |b| b.retention.full);
    let expired = repository::apply_retention(repository, full).map_err(LocalError::Failed)?;
    Ok(serde_json::json!({
        "expired": expired,
        "label": m.id,
        "kind": "full",
        "size": m.size,
        "durationSeconds": m.stopped - m.started,
        "gtid": m.gtid,
        "source": m.source,
    }))
}

/// The complete backups, oldest first.
pub fn list(repository: &Path) -> Result<Vec<Manifest>, LocalError> {
    repository::list(repository).map_err(LocalError::Failed)
}

/// The table `stator backup list` prints for MariaDB.
pub fn table(name: &str, backups: &[Manifest]) -> String {
    let time = |t: f64| {
        let s = backrest::format_time(t);
        s.get(..19).unwrap_or(&s).to_string()
    };
    let mut out = format!(
        "{:<18} {:<5} {:<20} {:<20} {:>12}  GTID\n",
        "ID", "TYPE", "START (UTC)", "STOP (UTC)", "SIZE"
    );
    for b in backups {
        out.push_str(&format!(
            "{:<18} {:<5} {:<20} {:<20} {:>12}  {}\n",
            b.id,
            "full",
            time(b.started),
            time(b.stopped),
            b.size,
            b.gtid
        ));
    }
    out.push_str(&match recoverable(backups) {
        Some(r) => format!("recoverable: {r}\n"),
        None => format!("{name}: no backup yet: nothing can be restored\n"),
    });
    out
}

/// What can be restored: the end points of the full backups (no binlog archive yet).
pub fn recoverable(backups: &[Manifest]) -> Option<String> {
    let points: Vec<String> = backups
        .iter()
        .map(|b| format!("{} (GTID {})", b.id, b.gtid))
        .collect();
    (!points.is_empty()).then(|| {
        format!(
            "the ends of the full backups {} (no binlog archive: no point in between)",
            points.join(", ")
        )
    })
}

/// Re-hashes every object and checks the GTID positions; an error names each bad file.
pub fn verify(repository: &Path, name: &str) -> Result<String, LocalError> {
    repository::verify(repository).map_err(|e| {
        LocalError::Failed(format!(
            "the repository {} of {name} is damaged:\n{e}",
            repository.display()
        ))
    })
}

/// `spec.bootstrap.restoreFrom` of a MariaDB database, checked before anything is written:
/// the backup (named, else the newest), the target (the end of that backup: time targets
/// between backups need the binlog archive, refused naming the range), and its object.
pub fn resolve_restore(
    db: &Database,
    from: &stator_api::spec::RestoreFromSpec,
    repository: PathBuf,
    target: RestoreTarget,
) -> Result<(Database, RestoreSource), LocalError> {
    let refuse = |why: String| {
        LocalError::Invalid(format!(
            "spec.bootstrap.restoreFrom: {why} (nothing was created)"
        ))
    };
    let backups = list(&repository)?;
    let Some(newest) = backups.last() else {
        return Err(refuse(format!(
            "the repository of {} holds no backup yet; take one with `stator backup create` first",
            from.database
        )));
    };
    let chosen = match &from.backup {
        Some(id) => backups.iter().find(|b| &b.id == id).ok_or_else(|| {
            refuse(format!(
                "backup {id} is not in the repository of {} (see `stator backup list`)",
                from.database
            ))
        })?,
        None => newest,
    };
    let range = recoverable(&backups).unwrap_or_default();
    match &target {
        RestoreTarget::Latest | RestoreTarget::Immediate => {}
        RestoreTarget::Time(t) => {
            return Err(refuse(format!(
                "time {t} is outside the recoverable range of {}: {range}; point-in-time restores of MariaDB need the binlog archive, which is not implemented yet",
                from.database
            )));
        }
        RestoreTarget::Lsn(_) => {
            return Err(refuse(
                "targetLsn is PostgreSQL's; a MariaDB database restores to a backup".into(),
            ));
        }
    }
    repository::check_object(&repository, chosen).map_err(|e| {
        LocalError::Failed(format!("refusing to restore (nothing was created): {e}"))
    })?;
    let mut resolved = db.clone();
    if let Some(f) = resolved.spec.bootstrap.restore_from.as_mut() {
        f.backup = Some(chosen.id.clone());
    }
    Ok((
        resolved,
        RestoreSource {
            stanza: from.database.clone(),
            repository,
            set: chosen.id.clone(),
            target,
        },
    ))
}
