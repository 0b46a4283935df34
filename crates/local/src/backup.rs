//! Backups of the local runtime (`spec.backup`, PostgreSQL with a local or S3 repository;
//! MariaDB's, local or S3, are in [`crate::backup_mariadb`], dispatched from here):
//! what `up` refuses, `stator backup create|list|verify`, and the check `stator restore` (and
//! `up` of a spec with `spec.bootstrap.restoreFrom`) makes before anything is written: the
//! source's repository exists, the target lies inside its recoverable range, and the backup to
//! restore is chosen (never "the latest" for a target it does not cover).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use stator_api::instance::{LocalPorts, RestoreSource, RestoreTarget};
use stator_api::names::secret_keys;
use stator_api::{Database, Engine};
use stator_engine::postgres::backrest::{
    self, BackupInfo, Encryption, RecoverableRange, RepositoryInfo, S3Settings, choose_backup,
    latest_archive_time, parse_info, read_repository_marker,
};

use crate::error::LocalError;
use crate::runtime::block_on;
use crate::secrets::read_secret;
use crate::state::DatabaseDir;

/// What `up` refuses of `spec.backup`: everything but PostgreSQL (local or S3 repository,
/// encrypted or not) or MariaDB (local or S3 repository, the S3 one with its `caSecretName`,
/// unencrypted); an S3 repository whose Secrets are missing from `secrets_root`
/// ([`crate::state::StateDir::secrets_root`]); an encryption Secret without its `passphrase`
/// file there; and a missing pgBackRest (PostgreSQL) or zstd (MariaDB). Names the field.
pub fn check_spec(db: &Database, secrets_root: &Path) -> Result<(), LocalError> {
    let Some(backup) = &db.spec.backup else {
        return Ok(());
    };
    let refuse = |field: &str, why: String| {
        Err(LocalError::Invalid(format!(
            "{field}: {why} (nothing was changed)"
        )))
    };
    if !matches!(db.spec.engine, Engine::Postgres | Engine::Mariadb) {
        return refuse(
            "spec.backup",
            format!(
                "backups of {} are not implemented yet (PostgreSQL and MariaDB only); remove spec.backup to run without backups",
                db.spec.engine
            ),
        );
    }
    if let Some(s3) = &backup.repository.s3
        && db.spec.engine == Engine::Mariadb
        && s3.ca_secret_name.is_none()
    {
        return refuse(
            "spec.backup.repository.s3.caSecretName",
            "required for an S3 repository of MariaDB: the CA (its ca.crt) the endpoint's certificate is verified against".into(),
        );
    }
    if let Some(s3) = S3Settings::of(db, Some(secrets_root)).map_err(engine_invalid)? {
        s3.render().map_err(engine_invalid)?;
        if let Some(ca) = &s3.ca_file
            && !ca.is_file()
        {
            return refuse(
                "spec.backup.repository.s3.caSecretName",
                format!(
                    "{} is missing: a local Secret is a directory of one 0600 file per key (here {})",
                    ca.display(),
                    backrest::S3_CA
                ),
            );
        }
    }
    if backup.encryption.is_some() && db.spec.engine != Engine::Postgres {
        return refuse(
            "spec.backup.encryption",
            format!(
                "encrypted repositories are supported for postgres only for now, not {}; remove it",
                db.spec.engine
            ),
        );
    }
    if let Some(encryption) = Encryption::of(db, Some(secrets_root)).map_err(engine_invalid)? {
        encryption.passphrase().map_err(engine_invalid)?;
    }
    if db.spec.engine == Engine::Mariadb {
        let zstd = Path::new(stator_engine::mysql_family::repository::ZSTD);
        if !zstd.is_file() {
            return refuse(
                "spec.backup",
                format!(
                    "{} is missing: MariaDB backups are compressed with it (apt-get install zstd)",
                    zstd.display()
                ),
            );
        }
        return Ok(());
    }
    crate::preflight::find_pgbackrest().map(|_| ())
}

fn engine_invalid(e: stator_engine::EngineError) -> LocalError {
    LocalError::Invalid(format!("{e} (nothing was changed)"))
}

/// Where a database's backups are, as the local commands reach them: a directory, or a path in
/// an S3 bucket.
#[derive(Clone, Debug)]
pub struct Repository {
    /// The directory, or the path inside the bucket.
    pub path: PathBuf,
    pub s3: Option<S3Settings>,
    /// The passphrase of an encrypted repository (`spec.backup.encryption`).
    pub encryption: Option<Encryption>,
}

impl Repository {
    /// The repository of database `name` in `db`'s namespace and `spec.backup.repository`.
    pub fn of(db: &Database, name: &str, secrets_root: &Path) -> Result<Repository, LocalError> {
        let path = backrest::repository_path_of(db, name).ok_or_else(|| {
            LocalError::Invalid(format!(
                "{}: spec.backup.repository is not set: this database has no backups here",
                db.name()
            ))
        })?;
        let s3 = S3Settings::of(db, Some(secrets_root)).map_err(engine_invalid)?;
        let encryption = Encryption::of(db, Some(secrets_root)).map_err(engine_invalid)?;
        Ok(Repository {
            path,
            s3,
            encryption,
        })
    }

    /// `/srv/backups/default/shop`, or `s3://bucket/stator/default/shop`.
    pub fn describe(&self) -> String {
        match &self.s3 {
            Some(s3) => format!("s3://{}{}", s3.bucket, self.path.display()),
            None => self.path.display().to_string(),
        }
    }
}

/// `pgbackrest info --output=json` of `stanza` in `repository`, run by this user with no log file
/// (it only reads the repository).
pub fn repository_info(
    repository: &Repository,
    stanza: &str,
) -> Result<RepositoryInfo, LocalError> {
    let out = pgbackrest(
        repository,
        stanza,
        &["info", "--output=json", "--log-level-console=warn"],
    )?;
    if !out.status.success() {
        return Err(LocalError::Failed(format!(
            "pgbackrest info of {stanza} in {} failed: {}",
            repository.describe(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let json = String::from_utf8_lossy(&out.stdout);
    // pgBackRest reports a repository it cannot reach (a refused key, a bad CA) or whose info
    // files it cannot decrypt in the status of a successful `info`: that is then an error, not
    // "no backups".
    if let Some(message) = repository_status_error(&json) {
        if let Some(e) = decryption_failure(repository, stanza, &message) {
            return Err(e);
        }
        if repository.s3.is_some() {
            return Err(s3_failure(repository, "pgbackrest info", &message));
        }
    }
    parse_info(&json).map_err(LocalError::Failed)
}

/// The message of the repository's status in `pgbackrest info --output=json`, when it is an
/// error (code 99: the repository or its info files could not be read).
fn repository_status_error(json: &str) -> Option<String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        // What a wrong passphrase decrypts an info file to may not even make valid JSON of
        // pgBackRest's message: the error is then read from the text.
        return json
            .contains("\"code\":99")
            .then(|| json.split_once("\"message\":\"").map_or(json, |(_, m)| m))
            .map(|m| m.replace("\\n", "\n"));
    };
    let status = v[0]["repo"][0]["status"].as_object()?;
    (status.get("code").and_then(|c| c.as_i64()) == Some(99)).then(|| {
        status
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or("")
            .to_string()
    })
}

/// When pgBackRest could not load `stanza`'s info files because of the repository's
/// encryption (pgBackRest's `message`): the error saying so, naming
/// `spec.backup.encryption.secretName` and the passphrase's file. Never quotes the message past
/// its first line: what a wrong passphrase decrypts to is noise.
fn decryption_failure(repository: &Repository, stanza: &str, message: &str) -> Option<LocalError> {
    if !message.contains("unable to load info file") {
        return None;
    }
    let first = message.lines().next().unwrap_or("").trim();
    let why = match &repository.encryption {
        // A passphrase given, and the files are not OpenSSL-encrypted at all.
        Some(e) if message.contains("cipher header invalid") => format!(
            "it is not encrypted, but spec.backup.encryption.secretName names a passphrase ({}): remove spec.backup.encryption to read it, or back up into a new repository path",
            e.passphrase_file.display()
        ),
        Some(e) => format!(
            "the passphrase of spec.backup.encryption.secretName ({}) does not decrypt it: it is not the passphrase the repository was encrypted with (or both copies of its info file are damaged)",
            e.passphrase_file.display()
        ),
        // OpenSSL's salted format: the repository is encrypted, no passphrase given.
        None if message.contains("Salted__") => "it is encrypted, and spec.backup.encryption is not set: set spec.backup.encryption.secretName to the Secret whose passphrase key encrypted it".to_string(),
        None => return None,
    };
    Some(LocalError::Failed(format!(
        "the repository {} of {stanza} cannot be read: {why} (pgBackRest: {first})",
        repository.describe()
    )))
}

/// Runs pgBackRest on `repository`. An S3 repository's keys and an encrypted repository's
/// passphrase go into a 0600 configuration file in a private temporary directory (removed
/// afterwards), never on the command line.
fn pgbackrest(
    repository: &Repository,
    stanza: &str,
    args: &[&str],
) -> Result<std::process::Output, LocalError> {
    let program = crate::preflight::find_pgbackrest()?;
    let mut command = Command::new(&program);
    let config_dir;
    let mut global = String::new();
    if let Some(s3) = &repository.s3 {
        global.push_str(&s3.render().map_err(engine_invalid)?);
    }
    if let Some(encryption) = &repository.encryption {
        global.push_str(&encryption.render().map_err(engine_invalid)?);
    }
    if global.is_empty() {
        command
            .arg(format!("--repo1-path={}", repository.path.display()))
            .arg("--config=/dev/null");
    } else {
        config_dir = PrivateDir::new()?;
        let config = config_dir.0.join(backrest::CONFIG_FILE);
        let text = format!(
            "[global]\n{global}repo1-path={}\n",
            repository.path.display()
        );
        write_private(&config, &text)?;
        command.arg(format!("--config={}", config.display()));
    }
    command
        .arg(format!("--stanza={stanza}"))
        .arg("--log-level-file=off")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .output()
        .map_err(|e| LocalError::io(&program, "cannot run", e))
}

/// An S3 repository `what` could not use: the first line of pgBackRest's `message` and the S3
/// error code, and where the keys and the CA come from.
fn s3_failure(repository: &Repository, what: &str, message: &str) -> LocalError {
    let first = message.lines().next().unwrap_or("").trim();
    let code = message
        .split_once("<Code>")
        .and_then(|(_, rest)| rest.split_once("</Code>"))
        .map(|(code, _)| format!(" ({code})"))
        .unwrap_or_default();
    let keys = repository
        .s3
        .as_ref()
        .map(|s3| s3.credentials_dir.display().to_string())
        .unwrap_or_default();
    LocalError::Failed(format!(
        "{what}: {} refused or unreachable: {first}{code}; check the keys of spec.backup.repository.s3.credentialsSecretName (the files in {keys}), the endpoint and caSecretName",
        repository.describe()
    ))
}

/// A new 0700 directory under the temporary directory, removed when dropped.
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn new() -> Result<PrivateDir, LocalError> {
        use std::os::unix::fs::DirBuilderExt;
        let path = std::env::temp_dir().join(format!(
            "stator-pgbackrest-{}",
            crate::secrets::generate_secret()
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .map_err(|e| LocalError::io(&path, "cannot create", e))?;
        Ok(PrivateDir(path))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes a new 0600 file.
fn write_private(path: &Path, text: &str) -> Result<(), LocalError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| LocalError::io(path, "cannot write", e))
}

/// The marker of `repository`, if it has one.
fn repository_marker(
    repository: &Repository,
    stanza: &str,
) -> Result<Option<backrest::RepositoryMarker>, LocalError> {
    if repository.s3.is_none() {
        return read_repository_marker(&repository.path)
            .map_err(|e| LocalError::Failed(e.to_string()));
    }
    let out = pgbackrest(
        repository,
        stanza,
        &["repo-get", "--raw", backrest::REPOSITORY_MARKER],
    )?;
    // pgBackRest's error 055: the file is missing.
    if out.status.code() == Some(55) {
        return Ok(None);
    }
    if !out.status.success() {
        return Err(s3_failure(
            repository,
            &format!("reading {}", backrest::REPOSITORY_MARKER),
            String::from_utf8_lossy(&out.stderr).trim(),
        ));
    }
    serde_json::from_slice(&out.stdout).map(Some).map_err(|e| {
        LocalError::Failed(format!(
            "{}/{} is not a Stator repository marker: {e}",
            repository.describe(),
            backrest::REPOSITORY_MARKER
        ))
    })
}

/// When the newest WAL segment reached `repository` (seconds since the epoch).
fn archive_time(repository: &Repository, stanza: &str) -> Option<f64> {
    if repository.s3.is_none() {
        return latest_archive_time(&repository.path, stanza);
    }
    let archive = format!("archive/{stanza}");
    let out = pgbackrest(
        repository,
        stanza,
        &["repo-ls", "--recurse", "--output=json", &archive],
    )
    .ok()?;
    backrest::latest_archive_time_in_listing(&String::from_utf8_lossy(&out.stdout))
}

/// The repository of database `name` (same namespace as `db`) and its marker's check.
fn source_repository(
    db: &Database,
    name: &str,
    secrets_root: &Path,
) -> Result<Repository, LocalError> {
    let repository = Repository::of(db, name, secrets_root)?;
    match repository_marker(&repository, name)? {
        Some(m) if m.name == name && m.namespace == db.namespace() => Ok(repository),
        Some(m) => Err(LocalError::Invalid(format!(
            "{}: belongs to {}/{}, not {}/{name}",
            repository.describe(),
            m.namespace,
            m.name,
            db.namespace()
        ))),
        None => Err(LocalError::Invalid(format!(
            "spec.bootstrap.restoreFrom.database: {name:?} has no backups in {} (no {} there); see `stator backup list -f` of that database",
            repository.describe(),
            backrest::REPOSITORY_MARKER
        ))),
    }
}

/// Backups and recoverable range of `db` (its own repository, or database `name`'s).
pub fn list(db: &Database, name: Option<&str>, secrets_root: &Path) -> Result<Listing, LocalError> {
    let stanza = name.unwrap_or(db.name()).to_string();
    let repository = Repository::of(db, &stanza, secrets_root)?;
    if db.spec.engine == Engine::Mariadb {
        let mariadb = crate::backup_mariadb::list(&repository)?;
        return Ok(Listing {
            stanza,
            info: RepositoryInfo::default(),
            range: None,
            mariadb: Some(mariadb),
        });
    }
    if repository.s3.is_none() && !repository.path.join("backup").exists() {
        return Ok(Listing {
            stanza,
            info: RepositoryInfo::default(),
            range: None,
            mariadb: None,
        });
    }
    let info = repository_info(&repository, &stanza)?;
    let range = RecoverableRange::of(&info, archive_time(&repository, &stanza));
    Ok(Listing {
        stanza,
        info,
        range,
        mariadb: None,
    })
}

/// A repository's backups and what they can restore.
pub struct Listing {
    pub stanza: String,
    pub info: RepositoryInfo,
    pub range: Option<RecoverableRange>,
    /// A MariaDB repository: its full backups (their manifests) and binlog archive.
    pub mariadb: Option<crate::backup_mariadb::MariadbListing>,
}

impl Listing {
    /// The table `stator backup list` prints.
    pub fn table(&self) -> String {
        if let Some(mariadb) = &self.mariadb {
            return crate::backup_mariadb::table(&self.stanza, mariadb);
        }
        let mut out = format!(
            "{:<26} {:<5} {:<23} {:<23} {:>12}  LSN\n",
            "ID", "TYPE", "START (UTC)", "STOP (UTC)", "SIZE"
        );
        let time = |t: i64| {
            let s = backrest::format_time(t as f64);
            s.get(..19).unwrap_or(&s).to_string()
        };
        for b in &self.info.backups {
            out.push_str(&format!(
                "{:<26} {:<5} {:<23} {:<23} {:>12}  {} .. {}\n",
                b.label,
                b.kind,
                time(b.start),
                time(b.stop),
                b.size,
                b.lsn_start,
                b.lsn_stop
            ));
        }
        out.push_str(&match &self.range {
            Some(r) => format!("recoverable: {}\n", r.describe()),
            None => format!("{}: no backup yet: nothing can be restored\n", self.stanza),
        });
        out
    }
}

/// `pgbackrest verify` of `db`'s repository: Ok with its report, or an error naming the
/// invalid files.
pub fn verify(
    db: &Database,
    name: Option<&str>,
    secrets_root: &Path,
) -> Result<String, LocalError> {
    let stanza = name.unwrap_or(db.name());
    let repository = Repository::of(db, stanza, secrets_root)?;
    if db.spec.engine == Engine::Mariadb {
        return crate::backup_mariadb::verify(&repository, stanza);
    }
    verify_repository(&repository, stanza, parallel(db))
}

/// `spec.backup.parallel` (default 2): pgBackRest's `process-max`, for `verify` too.
fn parallel(db: &Database) -> u32 {
    db.spec.backup.as_ref().map_or(2, |b| b.parallel.max(1))
}

/// `pgbackrest verify` of the whole repository (pgBackRest 2.45's verify cannot be limited to
/// one backup set), its files checked by `parallel` processes as the backup and the restore
/// use.
fn verify_repository(
    repository: &Repository,
    stanza: &str,
    parallel: u32,
) -> Result<String, LocalError> {
    let out = pgbackrest(
        repository,
        stanza,
        &[
            "verify",
            "--verbose",
            "--output=text",
            "--log-level-console=info",
            &format!("--process-max={parallel}"),
        ],
    )?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let Err(damage) = backrest::verify_verdict(
        &text,
        out.status.success(),
        &repository.path,
        &repository.describe(),
        stanza,
    ) else {
        return Ok(text);
    };
    // Info files that cannot be loaded may be a passphrase that does not decrypt them, not
    // damage: `info` tells which.
    if text.contains("No usable backup.info")
        && let Ok(info) = pgbackrest(
            repository,
            stanza,
            &["info", "--output=json", "--log-level-console=warn"],
        )
        && let Some(message) = repository_status_error(&String::from_utf8_lossy(&info.stdout))
        && let Some(e) = decryption_failure(repository, stanza, &message)
    {
        return Err(e);
    }
    Err(LocalError::Failed(damage))
}

/// `spec.bootstrap.restoreFrom`, checked and completed before anything is written: the
/// source's repository, the target inside its range, the backup chosen (the repository is
/// verified here only when none can be; otherwise the primary's instance manager verifies it
/// beside the restore and installs nothing unless it is intact). The source the primary's
/// instance manager restores.
pub fn resolve_restore(
    db: &Database,
    secrets_root: &Path,
) -> Result<Option<(Database, RestoreSource)>, LocalError> {
    let Some(from) = &db.spec.bootstrap.restore_from else {
        return Ok(None);
    };
    if db.spec.engine == Engine::Mariadb {
        let repository = Repository::of(db, &from.database, secrets_root)?;
        let target = restore_target(from)?;
        return crate::backup_mariadb::resolve_restore(db, from, &repository, target).map(Some);
    }
    let repository = source_repository(db, &from.database, secrets_root)?;
    let target = restore_target(from)?;
    let chosen = repository_info(&repository, &from.database).and_then(|info| {
        choose_backup(
            &from.database,
            &info,
            archive_time(&repository, &from.database),
            &target,
            from.backup.as_deref(),
        )
        .map_err(|e| {
            LocalError::Invalid(format!(
                "spec.bootstrap.restoreFrom: {e} (nothing was created)"
            ))
        })
    });
    // The primary's instance manager checks what it restores (pgBackRest's restore checks the
    // set's files, the manager reads back the archived WAL it replays; the data dir is
    // installed only once both passed). When no backup can be chosen, the whole repository is
    // verified here first: a damaged repository is refused naming the file (a missing
    // backup.info would otherwise read as "no backup", and a damaged backup must never be
    // replaced by another).
    let chosen = match chosen {
        Ok(chosen) => chosen,
        Err(e) => {
            verify_repository(&repository, &from.database, parallel(db)).map_err(|v| {
                LocalError::Failed(format!("refusing to restore (nothing was created): {v}"))
            })?;
            return Err(e);
        }
    };
    let mut resolved = db.clone();
    if let Some(f) = resolved.spec.bootstrap.restore_from.as_mut() {
        f.backup = Some(chosen.label.clone());
    }
    Ok(Some((
        resolved,
        RestoreSource {
            stanza: from.database.clone(),
            repository: repository.path,
            set: chosen.label,
            target,
        },
    )))
}

/// The target of `spec.bootstrap.restoreFrom`.
pub fn restore_target(
    from: &stator_api::spec::RestoreFromSpec,
) -> Result<RestoreTarget, LocalError> {
    if let Some(g) = &from.target_gtid {
        return Ok(RestoreTarget::Gtid(g.clone()));
    }
    Ok(match (&from.target_time, &from.target_lsn) {
        (Some(t), _) => {
            let at = backrest::parse_time(t).ok_or_else(|| {
                LocalError::Invalid(format!(
                    "spec.bootstrap.restoreFrom.targetTime: {t:?} is not a time (e.g. 2026-11-26T12:00:00Z)"
                ))
            })?;
            RestoreTarget::Time(backrest::format_time(at))
        }
        (None, Some(l)) => RestoreTarget::Lsn(l.clone()),
        (None, None) => RestoreTarget::Latest,
    })
}

/// The restore source of a spec whose `restoreFrom` names its backup (as `up` leaves it).
pub fn restore_source(db: &Database) -> Option<RestoreSource> {
    let from = db.spec.bootstrap.restore_from.as_ref()?;
    Some(RestoreSource {
        stanza: from.database.clone(),
        repository: backrest::repository_path_of(db, &from.database)?,
        set: from.backup.clone()?,
        target: restore_target(from).ok()?,
    })
}

/// Asks the primary's instance manager for a backup and waits for it.
pub fn create(
    dir: &DatabaseDir,
    db: &Database,
    kind: Option<&str>,
    primary_ordinal: u32,
) -> Result<serde_json::Value, LocalError> {
    if backrest::repository_path_of(db, db.name()).is_none() {
        return Err(LocalError::Invalid(format!(
            "{}: spec.backup.repository is not set: this database has no backups here",
            db.name()
        )));
    }
    crate::transport::register(db, dir)?;
    if db.spec.engine == Engine::Mariadb {
        let repository = Repository::of(db, db.name(), &dir.namespace_secrets())?;
        return crate::backup_mariadb::create(dir, db, &repository);
    }
    let token = read_secret(&dir.secrets_dir(), secret_keys::API_TOKEN)?;
    let host = db.spec.local.listen_address.clone();
    let port = LocalPorts::of(db).manager(primary_ordinal);
    let body = match kind {
        Some(k) => serde_json::json!({ "type": k }).to_string(),
        None => "{}".to_string(),
    };
    // A backup already running (the schedule's, or another `backup create`) is waited for,
    // then this one runs: what was asked for (its type) is what the caller gets. A test's
    // incremental backup was refused when the schedule's first backup started a moment before.
    let started = std::time::Instant::now();
    let mut said = false;
    let (code, answer) = loop {
        let (code, answer) = block_on(async {
            stator_engine::manager_client::post(
                &host,
                port,
                "/backups",
                token.as_str(),
                &body,
                Duration::from_secs(3600),
            )
            .await
        })?
        .map_err(|e| LocalError::Failed(format!("the primary's instance manager: {e}")))?;
        let running = code == 409
            && stator_engine::manager_client::answer_text(&answer).contains("already running");
        if !running || started.elapsed() > Duration::from_secs(3600) {
            break (code, answer);
        }
        if !said {
            said = true;
            tracing::info!("a backup is already running on the primary: waiting for it to end");
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    if code != 200 {
        return Err(LocalError::Failed(format!(
            "the backup failed (HTTP {code}): {}",
            stator_engine::manager_client::answer_text(&answer)
        )));
    }
    serde_json::from_slice(&answer)
        .map_err(|e| LocalError::Failed(format!("the answer cannot be read: {e}")))
}

/// The newest backup in `info`, for `stator status`.
pub fn newest(info: &RepositoryInfo) -> Option<&BackupInfo> {
    info.backups.last()
}

/// The file under the database's dir recording when the last scheduled backup started (ms
/// since the epoch).
fn last_run_file(dir: &DatabaseDir) -> PathBuf {
    dir.root.join("backup-last-run")
}

/// The supervisor's backup schedule: every few seconds, asks the decision core whether a
/// backup is due (`control::backup_due` of the schedule, the last run and now: missed runs give
/// one run) and, when it is, has the primary's instance manager take one. The start is recorded
/// once the primary took the order; an order refused (no primary yet) is asked again soon.
pub async fn schedule_forever(dir: DatabaseDir) {
    use stator_control::backup_due::{BackupSchedule, backup_due};
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let Ok(Some(applied)) = dir.read_applied() else {
            continue;
        };
        let db = applied.database;
        let Some(backup) = db.spec.backup.as_ref() else {
            continue;
        };
        if !matches!(db.spec.engine, Engine::Postgres | Engine::Mariadb) {
            continue;
        }
        let Ok(schedule) = BackupSchedule::parse(&backup.schedule) else {
            continue;
        };
        let last = std::fs::read_to_string(last_run_file(&dir))
            .ok()
            .and_then(|t| t.trim().parse::<u64>().ok());
        let now = stator_failover::clock::wall_ms();
        match backup_due(&schedule, last, now) {
            Ok(due) if due.is_due() => {}
            _ => continue,
        }
        if db.spec.engine == Engine::Mariadb {
            // The supervisor itself streams the backup into the repository.
            let (d, database) = (dir.clone(), db.clone());
            match tokio::task::spawn_blocking(move || create(&d, &database, None, 0)).await {
                Ok(Ok(_)) => {
                    let _ = std::fs::write(last_run_file(&dir), now.to_string());
                    tracing::info!("scheduled backup done");
                }
                Ok(Err(e)) => tracing::warn!("scheduled backup: {e}; asking again"),
                Err(e) => tracing::warn!("scheduled backup: {e}; asking again"),
            }
            continue;
        }
        let primary = dir.read_primary();
        let ordinal = crate::plan::ordinal_of(&primary).unwrap_or(0);
        let Ok(token) = read_secret(&dir.secrets_dir(), secret_keys::API_TOKEN) else {
            continue;
        };
        let host = db.spec.local.listen_address.clone();
        let port = LocalPorts::of(&db).manager(ordinal);
        tracing::info!(primary = %primary, "a scheduled backup is due");
        let answer = stator_engine::manager_client::post(
            &host,
            port,
            "/backups",
            token.as_str(),
            "{}",
            Duration::from_secs(6 * 3600),
        )
        .await;
        match answer {
            Ok((200, _)) => {
                let _ = std::fs::write(last_run_file(&dir), now.to_string());
                tracing::info!("scheduled backup done");
            }
            Ok((409, body))
                if stator_engine::manager_client::answer_text(&body)
                    .contains("already running") =>
            {
                let _ = std::fs::write(last_run_file(&dir), now.to_string());
            }
            Ok((code, body)) => tracing::warn!(
                "scheduled backup refused (HTTP {code}): {}; asking again",
                stator_engine::manager_client::answer_text(&body)
            ),
            Err(e) => tracing::warn!("scheduled backup: {e}; asking again"),
        }
    }
}

/// What `stator status` shows of backups: the last backup, the recoverable range and the
/// archive as the primary's instance manager reports it (`backup` in its `/status`).
pub fn status_summary(dir: &DatabaseDir, db: &Database) -> Option<serde_json::Value> {
    db.spec.backup.as_ref()?;
    let listing = list(db, None, &dir.namespace_secrets()).ok();
    let mariadb_last = listing
        .as_ref()
        .and_then(|l| l.mariadb.as_ref())
        .and_then(|m| m.backups.last())
        .map(|m| {
            serde_json::json!({
                "id": m.id,
                "kind": "full",
                "stop": backrest::format_time(m.stopped),
                "durationSeconds": (m.stopped - m.started).round(),
                "size": m.size,
                "gtid": m.gtid,
            })
        });
    let last = listing
        .as_ref()
        .and_then(|l| newest(&l.info).cloned())
        .map(|b| {
            serde_json::json!({
                "id": b.label,
                "kind": b.kind,
                "stop": backrest::format_time(b.stop as f64),
                "durationSeconds": b.stop - b.start,
                "size": b.size,
            })
        });
    let last = last.or(mariadb_last);
    let range = listing.as_ref().and_then(|l| match &l.mariadb {
        Some(b) => crate::backup_mariadb::recoverable(b),
        None => l.range.as_ref().map(|r| r.describe()),
    });
    let primary = dir.read_primary();
    crate::transport::register(db, dir).ok()?;
    let manager = manager_status(db, crate::plan::ordinal_of(&primary).unwrap_or(0));
    let facts = manager.as_ref().map(|m| m["backup"].clone());
    Some(serde_json::json!({
        "lastBackup": last,
        "recoverable": range,
        "primary": primary,
        "archive": facts.as_ref().map(|f| f["archive"].clone()),
        "lastError": facts.as_ref().map(|f| f["lastError"].clone()),
        "running": facts.as_ref().map(|f| f["running"].clone()),
        "archiveLagSeconds": facts.as_ref().map(|f| archive_lag(&f["archive"])),
        "freeBytes": facts.as_ref().map(|f| f["freeBytes"].clone()),
    }))
}

/// How far the archive is behind: seconds the oldest file waiting to be archived has waited
/// (0 when none waits).
fn archive_lag(archive: &serde_json::Value) -> f64 {
    let now = stator_failover::clock::wall_ms() as f64 / 1000.0;
    match (
        archive["pendingFiles"].as_u64(),
        archive["oldestPendingSince"].as_f64(),
    ) {
        (Some(n), Some(since)) if n > 0 => (now - since).max(0.0).round(),
        _ => 0.0,
    }
}

/// The `/status` of instance `ordinal`'s manager, if it answers within 2 s (the database's
/// transport registered first: `crate::transport::register`).
pub(crate) fn manager_status(db: &Database, ordinal: u32) -> Option<serde_json::Value> {
    let host = db.spec.local.listen_address.clone();
    let port = LocalPorts::of(db).manager(ordinal);
    block_on(async move {
        stator_engine::manager_client::get_json::<serde_json::Value>(
            &host,
            port,
            "/status",
            Duration::from_secs(2),
        )
        .await
        .ok()
    })
    .ok()
    .flatten()
}

/// The lines `stator status` prints under its table.
pub fn render_summary(summary: &serde_json::Value) -> String {
    let mut out = String::from("\nBackups:\n");
    match summary["lastBackup"].as_object() {
        Some(b) => out.push_str(&format!(
            "  last backup:  {} ({}) ended {}, {} s, {} bytes\n",
            b["id"].as_str().unwrap_or("?"),
            b["kind"].as_str().unwrap_or("?"),
            b["stop"].as_str().unwrap_or("?"),
            b["durationSeconds"],
            b["size"]
        )),
        None => out.push_str("  last backup:  none yet\n"),
    }
    out.push_str(&format!(
        "  recoverable:  {}\n",
        summary["recoverable"]
            .as_str()
            .unwrap_or("nothing (no backup yet)")
    ));
    let a = &summary["archive"];
    if a.is_object() {
        let last = a["lastSuccess"]
            .as_f64()
            .map(backrest::format_time)
            .unwrap_or_else(|| "never".into());
        out.push_str(&format!(
            "  archive:      last success {last}, lag {} s, {} segment(s) ({} bytes) waiting, {} failure(s){}\n",
            summary["archiveLagSeconds"].as_f64().unwrap_or(0.0),
            a["pendingFiles"],
            a["pendingBytes"],
            a["failures"],
            a["lastError"]
                .as_str()
                .map(|e| format!(", last error: {e}"))
                .unwrap_or_default()
        ));
    }
    if let Some(e) = summary["lastError"].as_str() {
        out.push_str(&format!("  last backup error: {e}\n"));
    }
    if let Some(free) = summary["freeBytes"].as_u64() {
        out.push_str(&format!("  data volume:  {free} bytes free\n"));
    }
    out
}
