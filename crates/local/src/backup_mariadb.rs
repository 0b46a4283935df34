//! Backups of a local MariaDB database (`spec.backup` with a local or S3 repository): `stator
//! backup create` stores a full backup streamed from a ready replica's instance manager (`GET
//! /backup`), else the primary's; list and verify read the manifests and re-hash the objects;
//! a restore is checked (repository, backup, target, objects) before anything is written.
//! The repository path, its marker and the S3 settings (bucket, CA and keys from local
//! Secrets) are PostgreSQL's ([`crate::backup`]); the storing, hashing and manifests are the
//! engine's ([`stator_engine::mysql_family::repository`]) over its object store
//! ([`stator_engine::object_store`]): the same code on a directory and on S3.

use stator_api::instance::{LocalPorts, RestoreSource, RestoreTarget};
use stator_api::names::secret_keys;
use stator_api::{Database, Role};
use stator_engine::mysql_family::binlog_archive::{self, RecoverableRange, TermRecord};
use stator_engine::mysql_family::repository::{self, Manifest};
use stator_engine::postgres::backrest;

use stator_engine::object_store::{ObjectStore, Store};

use crate::backup::Repository;
use crate::error::LocalError;
use crate::runtime::block_on;
use crate::secrets::read_secret;
use crate::state::DatabaseDir;

/// The store of `repository`: its directory, or its path in the S3 bucket.
fn open(repository: &Repository) -> Result<Store, LocalError> {
    Store::open(&repository.path, repository.s3.as_ref()).map_err(LocalError::Invalid)
}

/// A store error; on S3 it names where the keys and the CA come from.
fn store_failed(store: &Store, e: String) -> LocalError {
    if store.is_s3() && !e.contains("credentialsSecretName") {
        LocalError::Failed(format!(
            "{e}; check spec.backup.repository.s3 (the endpoint, caSecretName and the keys of credentialsSecretName)"
        ))
    } else {
        LocalError::Failed(e)
    }
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

/// Takes a full backup now. The answer has the PostgreSQL side's fields (`label`, `kind`,
/// `size`, `durationSeconds`) and the GTID.
pub fn create(
    dir: &DatabaseDir,
    db: &Database,
    repository: &Repository,
) -> Result<serde_json::Value, LocalError> {
    let store = open(repository)?;
    let token = read_secret(&dir.secrets_dir(), secret_keys::API_TOKEN)?;
    let (source, port) = backup_source(db, &dir.read_primary());
    let host = db.spec.local.listen_address.clone();
    let full = db.spec.backup.as_ref().map_or(1, |b| b.retention.full);
    let (m, expired) = block_on(async {
        // Ties the repository to `db` (writes the marker when absent; refuses another
        // database's).
        binlog_archive::claim_repository(&store, db.namespace(), db.name())
            .await
            .map_err(LocalError::Invalid)?;
        let m = repository::store_full_backup(&host, port, token.as_str(), &source, &store)
            .await
            .map_err(|e| store_failed(&store, e.to_string()))?;
        // Retention runs after each success.
        let expired = repository::apply_retention(&store, full)
            .await
            .map_err(|e| store_failed(&store, e))?;
        Ok::<_, LocalError>((m, expired))
    })??;
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
pub fn list(repository: &Repository) -> Result<MariadbListing, LocalError> {
    let store = open(repository)?;
    block_on(async {
        let backups = repository::list(&store)
            .await
            .map_err(|e| store_failed(&store, e))?;
        let index = binlog_archive::read_archive(&store)
            .await
            .map_err(|e| store_failed(&store, e))?;
        Ok(MariadbListing {
            range: index.range(&backups),
            archived_logs: index.logs.len(),
            terms: index.terms,
            backups,
        })
    })?
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
pub fn verify(repository: &Repository, name: &str) -> Result<String, LocalError> {
    let store = open(repository)?;
    let damaged = |e: String| {
        LocalError::Failed(format!(
            "the repository {} of {name} is damaged:\n{e}",
            repository.describe()
        ))
    };
    block_on(async {
        let mut report = repository::verify(&store).await.map_err(damaged)?;
        let backups = repository::list(&store)
            .await
            .map_err(|e| store_failed(&store, e))?;
        let (archive, problems) = binlog_archive::verify_archive(&store, &backups).await;
        report.push_str(&archive);
        if problems.is_empty() {
            Ok(report)
        } else {
            Err(damaged(problems.join("\n")))
        }
    })?
}

/// `spec.bootstrap.restoreFrom` of a MariaDB database, checked before anything is written: the
/// backup (named, else the newest that ends before the target and leads to it), the target
/// inside the recoverable range (refused naming it). The backup's object is checked (length,
/// SHA-256, refused naming the file) by the instance manager as it restores it. A time or the
/// latest point is resolved here to the GTID the replay stops at, recorded as `targetGtid`,
/// so the primary replays exactly what was checked.
pub fn resolve_restore(
    db: &Database,
    from: &stator_api::spec::RestoreFromSpec,
    repository: &Repository,
    target: RestoreTarget,
) -> Result<(Database, RestoreSource), LocalError> {
    let refuse = |why: String| {
        LocalError::Invalid(format!(
            "spec.bootstrap.restoreFrom: {why} (nothing was created)"
        ))
    };
    let store = open(repository)?;
    let plan = block_on(async {
        // The source's marker must name it.
        let marker = store
            .get(backrest::REPOSITORY_MARKER)
            .await
            .map_err(|e| store_failed(&store, e))?;
        let marker: Option<backrest::RepositoryMarker> = marker
            .map(|bytes| {
                serde_json::from_slice(&bytes).map_err(|e| {
                    LocalError::Failed(format!(
                        "{}: is not a Stator repository marker: {e}",
                        store.location(backrest::REPOSITORY_MARKER)
                    ))
                })
            })
            .transpose()?;
        match marker {
            Some(m) if m.name == from.database && m.namespace == db.namespace() => {}
            Some(m) => {
                return Err(LocalError::Invalid(format!(
                    "{}: belongs to {}/{}, not {}/{}",
                    repository.describe(),
                    m.namespace,
                    m.name,
                    db.namespace(),
                    from.database
                )));
            }
            None => {
                return Err(LocalError::Invalid(format!(
                    "spec.bootstrap.restoreFrom.database: {:?} has no backups in {} (no {} there); see `stator backup list -f` of that database",
                    from.database,
                    repository.describe(),
                    backrest::REPOSITORY_MARKER
                )));
            }
        }
        let backups = repository::list(&store)
            .await
            .map_err(|e| store_failed(&store, e))?;
        if backups.is_empty() {
            return Err(refuse(format!(
                "the repository of {} holds no backup yet; take one with `stator backup create` first",
                from.database
            )));
        }
        let wanted = binlog_archive::path_target(&target).map_err(refuse)?;
        let index = binlog_archive::read_archive(&store)
            .await
            .map_err(|e| store_failed(&store, e))?;
        let plan = index
            .plan(
                &store,
                &from.database,
                &backups,
                from.backup.as_deref(),
                &wanted,
            )
            .await
            .map_err(refuse)?;
        // The backup's object is not read here: the primary's instance manager checks its
        // length and SHA-256 as it unpacks it and installs nothing unless they match, and `up`
        // removes a new database whose restore failed.
        Ok(plan)
    })??;
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
            repository: repository.path.clone(),
            set: plan.backup.id,
            target,
        },
    ))
}
