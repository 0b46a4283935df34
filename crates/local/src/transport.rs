//! A local database's certificates ([`ensure_certificates`], [`renew`]) and which of its
//! endpoints speak TLS ([`register`]), so that every client of this runtime — the instance
//! managers' and the supervisor's HTTP (`probe`, `order`) and the SQL connections of the
//! failover shell and the checker — connects through the engine's one connector
//! (`stator_engine::tls::connect_http`, `postgres_tls`, `mysql_tls`). A port nobody registered is plain (unit
//! tests' hand-made servers, a database with `spec.tls.enabled: false`).

use stator_api::Database;
use stator_api::instance::LocalPorts;
use stator_engine::tls::TlsFiles;

use crate::error::LocalError;
use crate::state::DatabaseDir;

/// Most instances a database may have (`spec.instances` is at most 16): scaling up needs no
/// new registration.
const MAX_ORDINALS: u32 = 16;

/// The certificate set of `db`, when its TLS is on.
pub fn tls_files(db: &Database, dir: &DatabaseDir) -> Option<TlsFiles> {
    db.spec.tls.enabled.then(|| TlsFiles::new(dir.tls_dir()))
}

/// Records that every endpoint of `db` (proxies, servers, instance managers, supervisor) speaks
/// TLS verified against its CA. Nothing to do when its TLS is off.
pub fn register(db: &Database, dir: &DatabaseDir) -> Result<(), LocalError> {
    let Some(files) = tls_files(db, dir) else {
        return Ok(());
    };
    let ports = LocalPorts::of(db);
    let mut all = vec![ports.rw(), ports.ro(), ports.supervisor()];
    for ordinal in 0..MAX_ORDINALS {
        all.extend([ports.server(ordinal), ports.manager(ordinal)]);
    }
    stator_engine::tls::trust_endpoints(&db.spec.local.listen_address, all, &files)
        .map_err(|e| LocalError::Failed(format!("the certificates of {}: {e}", dir.key())))
}

/// Issues the database's CA and certificates into `tls/` when it has none yet (a set placed
/// there by hand, in the cert-manager layout, is used as it is). Returns true when it issued.
pub fn ensure_certificates(db: &Database, dir: &DatabaseDir) -> Result<bool, LocalError> {
    let Some(files) = tls_files(db, dir) else {
        return Ok(false);
    };
    crate::state::create_dir(files.dir(), 0o700)?;
    // As with the secrets: an older or hand-made set is tightened to 0600.
    for entry in std::fs::read_dir(files.dir())
        .map_err(|e| LocalError::io(files.dir(), "cannot read", e))?
        .flatten()
    {
        let path = entry.path();
        if path.is_file() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| LocalError::io(&path, "cannot set permissions", e))?;
        }
    }
    if files.path(stator_engine::tls::SERVER_CERT).exists() {
        files
            .check()
            .map_err(|e| LocalError::Invalid(e.to_string()))?;
        return Ok(false);
    }
    issue(db, &files, true)?;
    Ok(true)
}

/// New server and replication certificates from the database's CA (`stator tls renew`, and the
/// supervisor when a third of their lifetime is left). The servers and instance managers pick
/// them up without a restart.
pub fn renew(db: &Database, dir: &DatabaseDir) -> Result<stator_engine::tls::Validity, LocalError> {
    let files = tls_files(db, dir).ok_or_else(|| {
        LocalError::Invalid(format!(
            "{}: spec.tls.enabled is false; there are no certificates to renew",
            dir.key()
        ))
    })?;
    issue(db, &files, false)
}

fn issue(
    db: &Database,
    files: &TlsFiles,
    with_ca: bool,
) -> Result<stator_engine::tls::Validity, LocalError> {
    let sans = stator_engine::tls::local_sans(&[db.spec.local.listen_address.as_str()]);
    let user = stator_engine::postgres::config::REPLICATION_USER;
    let issued = if with_ca {
        files.issue(db.name(), &sans, user)
    } else {
        files.issue_leaves(db.name(), &sans, user)
    };
    issued.map_err(|e| LocalError::Failed(e.to_string()))
}
