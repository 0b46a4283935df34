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
use stator_engine::mysql_family::binlog_archive::{self, RecoverableRange, TermRecord};
use stator_engine::mysql_family::repository::{self, Manifest};
use stator_engine::postgres::backrest;

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
    binlog_archive::claim_repository(repository, db.namespace(), db.name())
        .map_err(LocalError::Invalid)
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

/// A MariaDB repository: its complete full backups (oldest first), the binary log archive
/// and what they can restore.
#[derive(Debug, Clone)]
pub struct MariadbListing {
    pub backups: Vec<Manifest>,
    pub range: Option<RecoverableRange>,
    pub archived_logs: usize,
    pub terms: Vec<TermRecord>,
}

/// The complete backups and the archive.
pub fn list(repository: &Path) -> Result<MariadbListing, LocalError> {
    let backups = repository::list(repository).map_err(LocalError::Failed)?;
    let index = binlog_archive::read_archive(repository).map_err(LocalError::Failed)?;
    Ok(MariadbListing {
        range: index.range(&backups),
        archived_logs: index.logs.len(),
        terms: index.terms,
        backups,
    })
}

/// The table `stator backup list` prints for MariaDB.
pub fn table(name: &str, listing: &MariadbListing) -> String {
    let time = |t: f64| {
        let s = backrest::format_time(t);
        s.get(..19).unwrap_or(&s).to_string()
    };
    let mut out = format!(
        "{:<18} {:<5} {:<20} {:<20} {:>12}  GTID\n",
        "ID", "TYPE", "START (UTC)", "STOP (UTC)", "SIZE"
    );
    for b in &listing.backups {
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
    out.push_str(&format!(
        "binlog archive: {} binary logs in {} term(s){}\n",
        listing.archived_logs,
        listing.terms.len(),
        listing
            .terms
            .iter()
            .map(|t| format!(
                "; term {} on {} from GTID {}",
                t.term,
                t.instance,
                if t.start.is_empty() { "none" } else { &t.start }
            ))
            .collect::<String>()
    ));
    out.push_str(&match recoverable(listing) {
        Some(r) => format!("recoverable: {r}\n"),
        None => format!("{name}: no backup yet: nothing can be restored\n"),
    });
    out
}

/// What can be restored, in words: from the end of the oldest backup to the end of the archive.
pub fn recoverable(listing: &MariadbListing) -> Option<String> {
    listing.range.as_ref().map(RecoverableRange::describe)
}

/// Re-hashes every object (backups and archived binary logs) and checks the GTID positions and
/// the chain of the archive; an error names each bad file.
pub fn verify(repository: &Path, name: &str) -> Result<String, LocalError> {
    let damaged = |e: String| {
        LocalError::Failed(format!(
            "the repository {} of {name} is damaged:\n{e}",
            repository.display()
        ))
    };
    let mut report = repository::verify(repository).map_err(damaged)?;
    let backups = repository::list(repository).map_err(LocalError::Failed)?;
    let (archive, problems) = binlog_archive::verify_archive(repository, &backups);
    report.push_str(&archive);
    if problems.is_empty() {
        Ok(report)
    } else {
        Err(damaged(problems.join("\n")))
    }
}

/// `spec.bootstrap.restoreFrom` of a MariaDB database, checked before anything is written: the
/// backup (named, else the newest that ends before the target and leads to it), the target
/// inside the recoverable range (refused naming it), the objects the restore reads (refused
/// naming the file). A time or the latest point is resolved here to the GTID the replay stops
/// at, recorded as `targetGtid`, so the primary replays exactly what was checked.
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
    let backups = repository::list(&repository).map_err(LocalError::Failed)?;
    if backups.is_empty() {
        return Err(refuse(format!(
            "the repository of {} holds no backup yet; take one with `stator backup create` first",
            from.database
        )));
    }
    let wanted = binlog_archive::path_target(&target).map_err(refuse)?;
    let index = binlog_archive::read_archive(&repository).map_err(LocalError::Failed)?;
    let plan = index
        .plan(
            &repository,
            &from.database,
            &backups,
            from.backup.as_deref(),
            &wanted,
        )
        .map_err(refuse)?;
    repository::check_object(&repository, &plan.backup).map_err(|e| {
        LocalError::Failed(format!("refusing to restore (nothing was created): {e}"))
    })?;
    let mut resolved = db.clone();
    if let Some(f) = resolved.spec.bootstrap.restore_from.as_mut() {
        f.backup = Some(plan.backup.id.clone());
        if !plan.stop.is_empty() {
            f.target_time = None;
            f.target_gtid = Some(plan.stop.clone());
        }
    }
    let target = if plan.stop.is_empty() {
        RestoreTarget::Latest
    } else {
        RestoreTarget::Gtid(plan.stop.clone())
    };
    Ok((
        resolved,
        RestoreSource {
            stanza: from.database.clone(),
            repository,
            set: plan.backup.id,
            target,
        },
    ))
}
