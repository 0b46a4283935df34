//! Backups and WAL archiving with pgBackRest: the per-instance `pgbackrest.conf`, the
//! repository marker that ties a repository path to one database, the argument lists of every
//! pgBackRest command Stator runs (none carries a secret: the superuser password comes from a
//! 0600 `PGPASSFILE`), `pgbackrest info --output=json` read into backups and a recoverable
//! range, and the choice of the backup a restore starts from (never "the latest" for a target
//! it does not cover).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use stator_api::Database;
pub use stator_api::instance::{RestoreSource, RestoreTarget};
use stator_api::position::Lsn;
use stator_api::spec::BackupCompression;

use crate::error::EngineError;

/// The file in a repository path that says which database it belongs to.
pub const REPOSITORY_MARKER: &str = "stator-repository.json";
/// The instance's pgBackRest configuration, in its run directory.
pub const CONFIG_FILE: &str = "pgbackrest.conf";
/// The superuser's libpq password file pgBackRest reads (`PGPASSFILE`), in the run directory.
pub const SUPERUSER_PASSFILE: &str = "superuser.pgpass";
/// Where pgBackRest is installed by Debian's `pgbackrest` package.
pub const DEFAULT_PROGRAM: &str = "/usr/bin/pgbackrest";

/// Finds the `pgbackrest` program: `/usr/bin/pgbackrest`, else one next to the running
/// `stator` (in a pod, the init container copies both into one directory), else the first one
/// on PATH.
pub fn find_program() -> Option<PathBuf> {
    let default = PathBuf::from(DEFAULT_PROGRAM);
    if default.is_file() {
        return Some(default);
    }
    if let Some(beside) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join("pgbackrest")))
        .filter(|p| p.is_file())
    {
        return Some(beside);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|d| d.join("pgbackrest"))
            .find(|p| p.is_file())
    })
}

/// The repository path of one database: `ROOT/NAMESPACE/NAME`.
pub fn repository_path(root: &Path, namespace: &str, name: &str) -> PathBuf {
    root.join(namespace).join(name)
}

/// The local repository path of `db`, when it has one.
pub fn repository_of(db: &Database) -> Option<PathBuf> {
    let local = db.spec.backup.as_ref()?.repository.local.as_ref()?;
    Some(repository_path(
        Path::new(&local.path),
        db.namespace(),
        db.name(),
    ))
}

/// The repository path of database `name` (in `db`'s namespace and repository): a directory
/// (`local.path/NAMESPACE/NAME`) or a path inside the bucket (`s3.path/NAMESPACE/NAME`).
pub fn repository_path_of(db: &Database, name: &str) -> Option<PathBuf> {
    let repository = &db.spec.backup.as_ref()?.repository;
    let root = match (&repository.local, &repository.s3) {
        (Some(local), _) => &local.path,
        (None, Some(s3)) => &s3.path,
        (None, None) => return None,
    };
    Some(repository_path(Path::new(root), db.namespace(), name))
}

/// The key of the `credentialsSecretName` Secret holding the access key id.
pub const S3_ACCESS_KEY_ID: &str = "access-key-id";
/// The key of the `credentialsSecretName` Secret holding the secret access key.
pub const S3_SECRET_ACCESS_KEY: &str = "secret-access-key";
/// The key of the `caSecretName` Secret holding the CA certificate.
pub const S3_CA: &str = "ca.crt";

/// A repository in an S3 bucket as pgBackRest reaches it (always TLS, path-style URIs). The
/// keys stay in their Secret's files until they are written into a 0600 `pgbackrest.conf`.
#[derive(Clone, Debug, PartialEq)]
pub struct S3Settings {
    pub host: String,
    pub port: u16,
    pub bucket: String,
    pub region: String,
    /// The CA that signed the endpoint's certificate (`caSecretName`'s `ca.crt`); `None`: the
    /// system's CAs.
    pub ca_file: Option<PathBuf>,
    /// The `credentialsSecretName` Secret: a directory with one 0600 file per key.
    pub credentials_dir: PathBuf,
}

impl S3Settings {
    /// The S3 settings of `db`, its Secrets read from `secrets_root` (one directory per Secret
    /// of the namespace). `Ok(None)` without an S3 repository; an error naming the field when
    /// the endpoint is not `host:port` or the Secrets have no store here.
    pub fn of(db: &Database, secrets_root: Option<&Path>) -> Result<Option<Self>, EngineError> {
        let Some(s3) = db
            .spec
            .backup
            .as_ref()
            .and_then(|b| b.repository.s3.as_ref())
        else {
            return Ok(None);
        };
        let (host, port) = s3
            .endpoint
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .ok_or_else(|| EngineError::Config {
                field: "spec.backup.repository.s3.endpoint".into(),
                message: format!(
                    "{:?} is not host:port (e.g. s3.eu-west-1.amazonaws.com:443)",
                    s3.endpoint
                ),
            })?;
        let root = secrets_root.ok_or_else(|| EngineError::Config {
            field: "spec.backup.repository.s3.credentialsSecretName".into(),
            message: format!(
                "{:?}: this instance has no Secrets directory to read it from",
                s3.credentials_secret_name
            ),
        })?;
        Ok(Some(S3Settings {
            host,
            port,
            bucket: s3.bucket.clone(),
            region: s3.region.clone(),
            ca_file: s3.ca_secret_name.as_ref().map(|n| root.join(n).join(S3_CA)),
            credentials_dir: root.join(&s3.credentials_secret_name),
        }))
    }

    /// The `repo1-*` lines of `pgbackrest.conf` for this bucket, keys included (read from
    /// their 0600 files): only ever written into a 0600 file.
    pub fn render(&self) -> Result<String, EngineError> {
        let key = |k: &str| {
            crate::credentials::read_secret(&self.credentials_dir, k).map_err(|e| {
                EngineError::Config {
                    field: "spec.backup.repository.s3.credentialsSecretName".into(),
                    message: format!(
                        "{e} (the Secret holds {S3_ACCESS_KEY_ID} and {S3_SECRET_ACCESS_KEY})"
                    ),
                }
            })
        };
        let (id, secret) = (key(S3_ACCESS_KEY_ID)?, key(S3_SECRET_ACCESS_KEY)?);
        let mut out = format!(
            "repo1-type=s3\n\
             repo1-s3-endpoint={host}\n\
             repo1-storage-port={port}\n\
             repo1-s3-bucket={bucket}\n\
             repo1-s3-region={region}\n\
             repo1-s3-uri-style=path\n\
             repo1-s3-key={id}\n\
             repo1-s3-key-secret={secret}\n",
            host = conf_value("spec.backup.repository.s3.endpoint", &self.host)?,
            port = self.port,
            bucket = conf_value("spec.backup.repository.s3.bucket", &self.bucket)?,
            region = conf_value("spec.backup.repository.s3.region", &self.region)?,
            id = conf_value(
                "spec.backup.repository.s3.credentialsSecretName",
                id.expose()
            )?,
            secret = conf_value(
                "spec.backup.repository.s3.credentialsSecretName",
                secret.expose()
            )?,
        );
        if let Some(ca) = &self.ca_file {
            out.push_str(&format!(
                "repo1-storage-ca-file={}\n",
                conf_value(
                    "spec.backup.repository.s3.caSecretName",
                    &ca.to_string_lossy()
                )?
            ));
        }
        Ok(out)
    }
}

/// The key of the `spec.backup.encryption.secretName` Secret holding the repository's
/// passphrase.
pub const ENCRYPTION_PASSPHRASE: &str = "passphrase";
/// The cipher pgBackRest encrypts an encrypted repository with.
pub const CIPHER_TYPE: &str = "aes-256-cbc";

/// An encrypted repository (`spec.backup.encryption`): pgBackRest's own encryption
/// (`repo1-cipher-type`, `repo1-cipher-pass`). The passphrase stays in its Secret's file until it
/// is written into a 0600 `pgbackrest.conf`: never an argument, an environment variable or a log
/// line.
#[derive(Clone, Debug, PartialEq)]
pub struct Encryption {
    /// The Secret's file holding the passphrase (`SECRETS_ROOT/SECRET/passphrase`).
    pub passphrase_file: PathBuf,
}

impl Encryption {
    /// The encryption of `db`'s repository, its Secret read from `secrets_root` (one directory
    /// per Secret of the namespace). `Ok(None)` without `spec.backup.encryption`; an error
    /// naming the field when the instance has no Secrets directory.
    pub fn of(db: &Database, secrets_root: Option<&Path>) -> Result<Option<Self>, EngineError> {
        let Some(encryption) = db.spec.backup.as_ref().and_then(|b| b.encryption.as_ref()) else {
            return Ok(None);
        };
        let root = secrets_root.ok_or_else(|| EngineError::Config {
            field: "spec.backup.encryption.secretName".into(),
            message: format!(
                "{:?}: this instance has no Secrets directory to read it from",
                encryption.secret_name
            ),
        })?;
        Ok(Some(Encryption {
            passphrase_file: root
                .join(&encryption.secret_name)
                .join(ENCRYPTION_PASSPHRASE),
        }))
    }

    /// Reads the passphrase, an error naming `spec.backup.encryption.secretName` and the file
    /// expected when it is missing, empty, more than one line or readable by others.
    pub fn passphrase(&self) -> Result<crate::credentials::Secret, EngineError> {
        let (dir, key) = match (
            self.passphrase_file.parent(),
            self.passphrase_file.file_name(),
        ) {
            (Some(dir), Some(key)) => (dir, key.to_string_lossy().into_owned()),
            _ => (Path::new("."), ENCRYPTION_PASSPHRASE.to_string()),
        };
        crate::credentials::read_secret(dir, &key).map_err(|e| EngineError::Config {
            field: "spec.backup.encryption.secretName".into(),
            message: format!(
                "{e} (the Secret holds the repository's passphrase under the key {ENCRYPTION_PASSPHRASE:?}: one line, mode 0600)"
            ),
        })
    }

    /// The `repo1-cipher-*` lines of `pgbackrest.conf`, the passphrase included: only ever
    /// written into a 0600 file.
    pub fn render(&self) -> Result<String, EngineError> {
        let pass = self.passphrase()?;
        Ok(format!(
            "repo1-cipher-type={CIPHER_TYPE}
repo1-cipher-pass={}
",
            conf_value("spec.backup.encryption.secretName", pass.expose())?
        ))
    }
}

/// What the repository marker records.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryMarker {
    pub namespace: String,
    pub name: String,
    /// PostgreSQL's system identifier of the cluster whose WAL the repository holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_identifier: Option<u64>,
}

/// Why `marker` (found in `path`) does not belong to `wanted`, naming both databases.
pub fn marker_conflict(
    path: &Path,
    found: &RepositoryMarker,
    wanted: &RepositoryMarker,
) -> Option<String> {
    if found.namespace != wanted.namespace || found.name != wanted.name {
        return Some(format!(
            "{}: belongs to the database {}/{} ({}); {}/{} never writes into another database's repository path",
            path.display(),
            found.namespace,
            found.name,
            REPOSITORY_MARKER,
            wanted.namespace,
            wanted.name
        ));
    }
    match (found.system_identifier, wanted.system_identifier) {
        (Some(a), Some(b)) if a != b => Some(format!(
            "{}: holds the backups of another database also named {}/{} (PostgreSQL system identifier {a}, this one is {b}); move that repository away or delete it to back up this database there",
            path.display(),
            found.namespace,
            found.name
        )),
        _ => None,
    }
}

/// Reads the marker of the repository at `path`, if there is one.
pub fn read_repository_marker(path: &Path) -> Result<Option<RepositoryMarker>, EngineError> {
    let file = path.join(REPOSITORY_MARKER);
    match std::fs::read_to_string(&file) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| EngineError::Config {
                field: file.display().to_string(),
                message: format!("is not a Stator repository marker: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(EngineError::io(file, "read", e)),
    }
}

/// Everything an instance's `pgbackrest.conf` is made of.
#[derive(Clone, Debug, PartialEq)]
pub struct BackrestSettings {
    pub stanza: String,
    pub repository: PathBuf,
    pub retention_full: u32,
    pub compression: BackupCompression,
    pub parallel: u32,
    pub pg_path: PathBuf,
    pub pg_port: u16,
    pub socket_dir: PathBuf,
    /// The instance's run directory: lock, log and spool paths go under `pgbackrest/` in it,
    /// since pgBackRest's defaults (`/tmp/pgbackrest`, `/var/log/pgbackrest`) collide between
    /// instances on one machine.
    pub run_dir: PathBuf,
    /// The bucket, when the repository is in S3 (`repository` is then the path inside it).
    pub s3: Option<S3Settings>,
    /// The repository's encryption (`spec.backup.encryption`).
    pub encryption: Option<Encryption>,
}

impl BackrestSettings {
    /// The settings of `db`'s instance whose data dir, port and run dir are given. `None`
    /// without a repository; `s3`: the bucket of an S3 repository ([`S3Settings::of`]);
    /// `encryption`: the repository's passphrase ([`Encryption::of`]).
    pub fn of(
        db: &Database,
        pg_path: &Path,
        pg_port: u16,
        run_dir: &Path,
        s3: Option<S3Settings>,
        encryption: Option<Encryption>,
    ) -> Option<Self> {
        let backup = db.spec.backup.as_ref()?;
        Some(BackrestSettings {
            stanza: db.name().to_string(),
            repository: repository_path_of(db, db.name())?,
            s3,
            encryption,
            retention_full: backup.retention.full.max(1),
            compression: backup.compression,
            parallel: backup.parallel.max(1),
            pg_path: pg_path.to_path_buf(),
            pg_port,
            socket_dir: run_dir.to_path_buf(),
            run_dir: run_dir.to_path_buf(),
        })
    }

    pub fn config_path(&self) -> PathBuf {
        self.run_dir.join(CONFIG_FILE)
    }

    pub fn passfile(&self) -> PathBuf {
        self.run_dir.join(SUPERUSER_PASSFILE)
    }

    fn work_dir(&self, what: &str) -> PathBuf {
        self.run_dir.join("pgbackrest").join(what)
    }

    /// The lock, log and spool directories (created by the instance manager).
    pub fn work_dirs(&self) -> [PathBuf; 3] {
        [
            self.work_dir("lock"),
            self.work_dir("log"),
            self.work_dir("spool"),
        ]
    }
}

fn compress_type(c: BackupCompression) -> &'static str {
    match c {
        BackupCompression::Zst => "zst",
        BackupCompression::Lz4 => "lz4",
        BackupCompression::Gz => "gz",
        BackupCompression::None => "none",
    }
}

fn conf_value(field: &str, value: &str) -> Result<String, EngineError> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(EngineError::Config {
            field: field.into(),
            message: "must be a single line".into(),
        });
    }
    Ok(value.to_string())
}

/// Renders `pgbackrest.conf`. The superuser password is not in it (it comes from
/// `PGPASSFILE`); an S3 repository's keys and an encrypted repository's passphrase are, so it
/// is only ever written 0600. It never sets `archive-push-queue-max`: WAL is never dropped to
/// save disk.
pub fn render_config(s: &BackrestSettings) -> Result<String, EngineError> {
    let [lock, log, spool] = s.work_dirs();
    let path = |field: &str, p: &Path| conf_value(field, &p.to_string_lossy());
    let mut s3 = match &s.s3 {
        Some(s3) => s3.render()?,
        None => String::new(),
    };
    if let Some(encryption) = &s.encryption {
        s3.push_str(&encryption.render()?);
    }
    Ok(format!(
        "# Written by Stator; edit spec.backup instead.\n\
         [global]\n\
         {s3}repo1-path={repo}\n\
         repo1-retention-full={retention}\n\
         compress-type={compress}\n\
         process-max={parallel}\n\
         start-fast=y\n\
         archive-async=n\n\
         lock-path={lock}\n\
         log-path={log}\n\
         spool-path={spool}\n\
         log-level-console=warn\n\
         log-level-stderr=warn\n\
         log-level-file=info\n\
         \n\
         [{stanza}]\n\
         pg1-path={pg}\n\
         pg1-port={port}\n\
         pg1-socket-path={socket}\n\
         pg1-user={user}\n",
        repo = path("spec.backup.repository.local.path", &s.repository)?,
        retention = s.retention_full,
        compress = compress_type(s.compression),
        parallel = s.parallel,
        lock = path("runDir", &lock)?,
        log = path("runDir", &log)?,
        spool = path("runDir", &spool)?,
        stanza = conf_value("metadata.name", &s.stanza)?,
        pg = path("dataDir", &s.pg_path)?,
        port = s.pg_port,
        socket = path("runDir", &s.socket_dir)?,
        user = super::config::SUPERUSER,
    ))
}

/// The server's `archive_command`: the server runs with a cleared environment, so the config
/// file is named explicitly.
pub fn archive_command(program: &Path, s: &BackrestSettings) -> String {
    format!(
        "{} --config={} --stanza={} archive-push %p",
        program.display(),
        s.config_path().display(),
        s.stanza
    )
}

fn common(s: &BackrestSettings) -> Vec<OsString> {
    let mut config = OsString::from("--config=");
    config.push(s.config_path());
    vec![config, format!("--stanza={}", s.stanza).into()]
}

/// `pgbackrest stanza-create`.
pub fn stanza_create_args(s: &BackrestSettings) -> Vec<OsString> {
    let mut args = common(s);
    args.push("stanza-create".into());
    args
}

/// The kind of a backup.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BackupKind {
    Full,
    Diff,
    Incr,
}

impl BackupKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupKind::Full => "full",
            BackupKind::Diff => "diff",
            BackupKind::Incr => "incr",
        }
    }
}

/// `pgbackrest backup --type=…`. pgBackRest makes the first backup of a stanza full whatever
/// the type asked; retention (`repo1-retention-full`) runs after each success.
pub fn backup_args(s: &BackrestSettings, kind: BackupKind) -> Vec<OsString> {
    let mut args = common(s);
    args.push("backup".into());
    args.push(format!("--type={}", kind.as_str()).into());
    args
}

/// `pgbackrest info --output=json`.
pub fn info_args(s: &BackrestSettings) -> Vec<OsString> {
    let mut args = common(s);
    args.push("info".into());
    args.push("--output=json".into());
    args
}

/// `pgbackrest restore` of backup `set` into `s.pg_path`, stopping at `target` and promoting;
/// the restored server does not archive while it recovers (`--archive-mode=off`).
pub fn restore_args(s: &BackrestSettings, set: &str, target: &RestoreTarget) -> Vec<OsString> {
    let mut args = common(s);
    args.push("restore".into());
    args.push(format!("--set={set}").into());
    match target {
        RestoreTarget::Latest => args.push("--type=default".into()),
        // A GTID is MariaDB's: `choose_backup` refuses it before any restore runs.
        RestoreTarget::Immediate | RestoreTarget::Gtid(_) => args.push("--type=immediate".into()),
        RestoreTarget::Time(t) => {
            args.push("--type=time".into());
            args.push(format!("--target={t}").into());
        }
        RestoreTarget::Lsn(l) => {
            args.push("--type=lsn".into());
            args.push(format!("--target={l}").into());
        }
    }
    if *target != RestoreTarget::Latest {
        args.push("--target-action=promote".into());
    }
    args.push("--archive-mode=off".into());
    args
}

/// `pgbackrest verify`.
pub fn verify_args(s: &BackrestSettings) -> Vec<OsString> {
    let mut args = common(s);
    args.push("verify".into());
    args.push("--verbose".into());
    args.push("--output=text".into());
    args
}

/// One backup as `pgbackrest info` lists it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackupInfo {
    pub label: String,
    pub kind: String,
    /// Seconds since the epoch.
    pub start: i64,
    pub stop: i64,
    /// Bytes in the repository.
    pub size: u64,
    pub lsn_start: String,
    pub lsn_stop: String,
    pub wal_start: String,
    pub wal_stop: String,
}

/// The stanza as `pgbackrest info --output=json` describes it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RepositoryInfo {
    pub backups: Vec<BackupInfo>,
    /// The newest archived WAL segment (all timelines), if any.
    pub archive_max: Option<String>,
    pub archive_min: Option<String>,
    /// pgBackRest's status message (`ok`, `no valid backups`, …).
    pub status: String,
}

/// What `pgbackrest verify --verbose --output=text --log-level-console=info` (its console
/// `text`, and whether it exited 0) says of the repository described as `describe` (a
/// directory, or `s3://BUCKET/PATH`) whose path is `repository`: Ok when every file is
/// intact; otherwise the error, naming the damaged or missing files (see [`damaged_files`])
/// and quoting the lines that report them.
pub fn verify_verdict(
    text: &str,
    success: bool,
    repository: &Path,
    describe: &str,
    stanza: &str,
) -> Result<(), String> {
    let bad: Vec<&str> = text
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("invalid") && !l.contains("invalid: 0")
                || l.contains("error") && !l.contains("0 error")
                || l.contains("missing") && !l.contains("missing: 0")
                || l.contains("no usable")
        })
        .collect();
    if success && bad.is_empty() {
        return Ok(());
    }
    let files = damaged_files(text, repository, stanza);
    Err(format!(
        "the repository {describe} of {stanza} is damaged{}; pgbackrest verify:\n{}",
        if files.is_empty() {
            String::new()
        } else {
            format!(
                ": {}",
                files
                    .iter()
                    .map(|f| format!("{} (damaged or missing)", f.display()))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
        if bad.is_empty() {
            text.trim().to_string()
        } else {
            bad.join("\n")
        }
    ))
}

/// Runs `pgbackrest verify` (`invocation`, with its console output on stdout) of the repository
/// of `settings`: Ok when every file is intact, otherwise an error naming the damaged or missing
/// files ([`verify_verdict`]).
async fn verify_repository(
    invocation: crate::process::Invocation,
    settings: &BackrestSettings,
) -> Result<(), EngineError> {
    let (text, ended) = invocation.output_and_end(None).await?;
    let success = ended.is_ok();
    let describe = match &settings.s3 {
        Some(s3) => format!("s3://{}{}", s3.bucket, settings.repository.display()),
        None => settings.repository.display().to_string(),
    };
    verify_verdict(
        &text,
        success,
        &settings.repository,
        &describe,
        &settings.stanza,
    )
    .map_err(|damage| {
        tracing::error!("refusing the restore: {damage}");
        EngineError::State(format!(
            "refusing to restore (nothing was created): {damage}"
        ))
    })
}

/// The repository files `pgbackrest verify --verbose --output=text` (its `text`) finds damaged
/// or missing in the local repository at `repository`, stanza `stanza`: a file with an invalid
/// checksum or size or missing, a backup without its `backup.manifest`, a stanza without a
/// usable `backup.info` or `archive.info`. Paths in the repository, in the order found.
pub fn damaged_files(text: &str, repository: &Path, stanza: &str) -> Vec<PathBuf> {
    let backup_dir = repository.join("backup").join(stanza);
    let archive_dir = repository.join("archive").join(stanza);
    let mut found: Vec<PathBuf> = Vec::new();
    let mut add = |p: PathBuf| {
        if !found.contains(&p) {
            found.push(p);
        }
    };
    for line in text.lines() {
        let l = line.trim();
        let lower = l.to_ascii_lowercase();
        if lower.contains("no usable backup.info") {
            add(backup_dir.join("backup.info"));
        } else if lower.contains("no usable archive.info") {
            add(archive_dir.join("archive.info"));
        } else if lower.contains("status: manifest missing")
            && let Some(label) = l
                .split_once("backup: ")
                .and_then(|(_, rest)| rest.split(',').next())
        {
            add(backup_dir.join(label.trim()).join("backup.manifest"));
        } else if (lower.contains("invalid") || lower.contains("missing"))
            && let Some(quoted) = l.split('\'').nth(1)
            && !quoted.is_empty()
        {
            // `LABEL/pg_data/…` for a backup's file; `ARCHIVEID/…` (e.g. `15-1/…`) for WAL.
            let first = quoted.split('/').next().unwrap_or_default();
            let archive_id = first
                .split_once('-')
                .is_some_and(|(v, n)| v.parse::<u32>().is_ok() && n.parse::<u32>().is_ok());
            add(if archive_id {
                archive_dir.join(quoted)
            } else {
                backup_dir.join(quoted)
            });
        }
    }
    found
}

/// Reads `pgbackrest info --output=json` for one stanza.
pub fn parse_info(json: &str) -> Result<RepositoryInfo, String> {
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("pgbackrest info: not JSON: {e}"))?;
    let stanza = v
        .as_array()
        .and_then(|a| a.first())
        .ok_or("pgbackrest info: no stanza in the output")?;
    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
    let mut info = RepositoryInfo {
        status: s(&stanza["status"]["message"]),
        ..RepositoryInfo::default()
    };
    for a in stanza["archive"].as_array().into_iter().flatten() {
        let (min, max) = (a["min"].as_str(), a["max"].as_str());
        if let Some(max) = max
            && info.archive_max.as_deref().is_none_or(|m| m < max)
        {
            info.archive_max = Some(max.to_string());
        }
        if let Some(min) = min
            && info.archive_min.as_deref().is_none_or(|m| m > min)
        {
            info.archive_min = Some(min.to_string());
        }
    }
    for b in stanza["backup"].as_array().into_iter().flatten() {
        if b["error"].as_bool() == Some(true) {
            continue;
        }
        info.backups.push(BackupInfo {
            label: s(&b["label"]),
            kind: s(&b["type"]),
            start: b["timestamp"]["start"].as_i64().unwrap_or(0),
            stop: b["timestamp"]["stop"].as_i64().unwrap_or(0),
            size: b["info"]["repository"]["delta"].as_u64().unwrap_or(0),
            lsn_start: s(&b["lsn"]["start"]),
            lsn_stop: s(&b["lsn"]["stop"]),
            wal_start: s(&b["archive"]["start"]),
            wal_stop: s(&b["archive"]["stop"]),
        });
    }
    info.backups.sort_by_key(|b| b.stop);
    Ok(info)
}

/// One archived WAL file as pgBackRest stores it under `archive/STANZA`:
/// `ID/DIR/SEGMENT[.partial]-SHA1[.EXT]`, SHA1 being that of the file before compression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchivedWal {
    /// The path under `archive/STANZA`.
    pub path: String,
    /// The segment's name (timeline, log, segment: 24 hex digits).
    pub segment: String,
    /// The SHA-1 of the uncompressed file, in lowercase hex.
    pub sha1: String,
    /// The compression's extension (`zst`, `gz`, `lz4`, `bz2`), `None` when stored plain.
    pub compression: Option<String>,
}

impl ArchivedWal {
    /// `line` of `pgbackrest repo-ls --recurse archive/STANZA`, if it names a WAL file.
    fn parse(line: &str) -> Option<ArchivedWal> {
        let path = line.trim();
        let mut parts = path.split('/');
        let (_id, dir, file) = (parts.next()?, parts.next()?, parts.next()?);
        let hex = |t: &str, n: usize| t.len() == n && t.bytes().all(|b| b.is_ascii_hexdigit());
        if parts.next().is_some() || !hex(dir, 16) || !file.is_ascii() || file.len() < 24 + 1 + 40 {
            return None;
        }
        let segment = &file[..24];
        let rest = &file[24..];
        let rest = rest.strip_prefix(".partial").unwrap_or(rest);
        let rest = rest.strip_prefix('-')?;
        let (sha1, compression) = match rest.split_once('.') {
            Some((sha1, ext)) => (sha1, Some(ext.to_string())),
            None => (rest, None),
        };
        (is_segment_name(segment) && hex(sha1, 40) && segment[..16] == *dir).then(|| ArchivedWal {
            path: path.to_string(),
            segment: segment.to_string(),
            sha1: sha1.to_ascii_lowercase(),
            compression,
        })
    }
}

/// The archived WAL files of `listing` (`pgbackrest repo-ls --recurse archive/STANZA`, one
/// path per line) that a restore of a backup whose WAL starts at segment `start` may replay:
/// every segment from `start` on, on its timeline or a later one, partial segments included.
/// (Segments of a later timeline that forked before `start` are included too: a check of one
/// file too many, never one too few.)
pub fn wal_to_replay(listing: &str, start: &str) -> Vec<ArchivedWal> {
    if !is_segment_name(start) {
        return Vec::new();
    }
    let (timeline, position) = start.split_at(8);
    listing
        .lines()
        .filter_map(ArchivedWal::parse)
        .filter(|w| {
            let (t, p) = w.segment.split_at(8);
            t >= timeline && p >= position
        })
        .collect()
}

/// A WAL segment's name: 24 hex digits.
fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What the check of the archived WAL a restore replays found.
#[derive(Debug)]
pub enum WalCheck {
    /// Every file read back whole with its checksum: how many.
    Intact(usize),
    /// A file is missing, cannot be decompressed or does not match its checksum: which, why.
    Damaged(String),
    /// The check could not run (a tool missing, the listing failed): why. The whole
    /// repository is then verified instead.
    NotChecked(String),
}

/// The program that decompresses an archived WAL file stored with `extension`, with its
/// arguments (stdin to stdout); `None` for a plain file.
fn decompressor(
    extension: Option<&str>,
) -> Result<Option<(&'static str, &'static [&'static str])>, String> {
    Ok(match extension {
        None => None,
        Some("zst") => Some((
            crate::mysql_family::repository::ZSTD,
            &["-q", "-d", "-c"][..],
        )),
        Some("gz") => Some(("/usr/bin/gzip", &["-d", "-c"][..])),
        Some("lz4") => Some(("/usr/bin/lz4", &["-q", "-d", "-c"][..])),
        Some("bz2") => Some(("/usr/bin/bzip2", &["-d", "-c"][..])),
        Some(other) => return Err(format!("archived WAL compressed as {other:?}")),
    })
}

/// Reads archived WAL file `wal` of `settings`' stanza back through `pgbackrest repo-get`
/// (which decrypts it) and its decompressor, and compares the SHA-1 of what comes out with
/// the one in its name: `Ok(None)` when they match, `Ok(Some(why))` when the file is damaged.
async fn check_archived_wal(
    invocation: &(dyn Fn(Vec<OsString>) -> crate::process::Invocation + Sync),
    settings: &BackrestSettings,
    wal: &ArchivedWal,
) -> Result<Option<String>, String> {
    use sha1::{Digest, Sha1};
    use tokio::io::AsyncReadExt;
    let unzip = decompressor(wal.compression.as_deref())?;
    if let Some((program, _)) = unzip
        && !Path::new(program).exists()
    {
        return Err(format!("{program} is not installed"));
    }
    let object = format!("archive/{}/{}", settings.stanza, wal.path);
    let mut args = common(settings);
    args.push("repo-get".into());
    args.push(object.clone().into());
    let mut get = invocation(args)
        .spawn_piped(false, true)
        .map_err(|e| e.to_string())?;
    let mut unzipped = match unzip {
        Some((program, unzip_args)) => {
            let raw: std::process::Stdio = get
                .child
                .stdout
                .take()
                .ok_or("pgbackrest repo-get has no output pipe")?
                .try_into()
                .map_err(|e: std::io::Error| e.to_string())?;
            // As pgBackRest runs (user, log), another program.
            let inv = crate::process::Invocation {
                program: PathBuf::from(program),
                args: unzip_args.iter().map(OsString::from).collect(),
                ..invocation(common(settings))
            };
            Some(inv.spawn_reading(raw, true).map_err(|e| e.to_string())?)
        }
        None => None,
    };
    let mut hasher = Sha1::new();
    let mut buffer = vec![0u8; 1 << 16];
    let read = {
        let out = match unzipped.as_mut() {
            Some(tool) => tool.child.stdout.as_mut(),
            None => get.child.stdout.as_mut(),
        }
        .ok_or("no output pipe")?;
        loop {
            match out.read(&mut buffer).await {
                Ok(0) => break Ok(()),
                Ok(n) => hasher.update(&buffer[..n]),
                Err(e) => break Err(e),
            }
        }
    };
    let fetched = get.finish().await;
    let unzipped = match unzipped {
        Some(tool) => tool.finish().await,
        None => Ok(()),
    };
    let damaged = |why: String| Ok(Some(format!("{object}: {why}")));
    // The decompressor first: when it stops on damaged input, pgBackRest's writes fail too.
    if let Err(e) = unzipped {
        return damaged(format!("cannot be decompressed ({e})"));
    }
    if let Err(e) = fetched {
        return damaged(format!("cannot be read from the repository ({e})"));
    }
    if let Err(e) = read {
        return Err(format!("reading {object}: {e}"));
    }
    let actual = format!("{:x}", hasher.finalize());
    if actual != wal.sha1 {
        return damaged(format!(
            "its content's SHA-1 is {actual}, its name says {}",
            wal.sha1
        ));
    }
    Ok(None)
}

/// Checks every archived WAL file a restore of backup `set` may replay ([`wal_to_replay`]),
/// `parallel` at a time, with the repository's own tools (`info`, `repo-ls`, `repo-get`).
/// pgBackRest's restore checks each file of the set against its manifest itself; the WAL it
/// fetches during recovery it does not, and PostgreSQL takes a damaged WAL record for the end
/// of the WAL: a restore to the latest point would end early without a word.
pub async fn check_wal_of_set(
    invocation: &(dyn Fn(Vec<OsString>) -> crate::process::Invocation + Sync),
    settings: &BackrestSettings,
    set: &str,
    parallel: u32,
) -> WalCheck {
    let output = async |args: Vec<OsString>| {
        invocation(args)
            .output(None)
            .await
            .map_err(|e| e.to_string())
    };
    let info = match output(info_args(settings))
        .await
        .and_then(|t| parse_info(&t))
    {
        Ok(info) => info,
        Err(e) => return WalCheck::NotChecked(format!("pgbackrest info: {e}")),
    };
    let Some(start) = info
        .backups
        .iter()
        .find(|b| b.label == set)
        .map(|b| b.wal_start.clone())
        .filter(|start| is_segment_name(start))
    else {
        return WalCheck::NotChecked(format!(
            "pgbackrest info names no first WAL segment of backup {set}"
        ));
    };
    let mut args = common(settings);
    args.push("repo-ls".into());
    args.push("--recurse".into());
    args.push(format!("archive/{}", settings.stanza).into());
    let listing = match output(args).await {
        Ok(text) => text,
        Err(e) => return WalCheck::NotChecked(format!("pgbackrest repo-ls: {e}")),
    };
    let files = wal_to_replay(&listing, &start);
    let mut damage = Vec::new();
    for chunk in files.chunks(parallel.max(1) as usize) {
        let checks = chunk
            .iter()
            .map(|wal| check_archived_wal(invocation, settings, wal));
        for result in futures_util::future::join_all(checks).await {
            match result {
                Ok(None) => {}
                Ok(Some(why)) => damage.push(why),
                Err(e) => return WalCheck::NotChecked(e),
            }
        }
    }
    if damage.is_empty() {
        WalCheck::Intact(files.len())
    } else {
        WalCheck::Damaged(damage.join("; "))
    }
}

/// The LSN just past a WAL segment (16 MiB segments): `000000010000000200000003` → 2/4000000.
pub fn segment_end(segment: &str) -> Option<Lsn> {
    if segment.len() < 24 {
        return None;
    }
    let log = u64::from_str_radix(&segment[8..16], 16).ok()?;
    let seg = u64::from_str_radix(&segment[16..24], 16).ok()?;
    Some(Lsn((log << 32) + (seg + 1) * 0x100_0000))
}

/// What a restore can reach: from the end of the oldest backup to the newest archived WAL.
#[derive(Clone, Debug, PartialEq)]
pub struct RecoverableRange {
    /// Seconds since the epoch: the end of the oldest backup (the first consistent point).
    pub earliest_time: i64,
    /// Seconds since the epoch (fractional): when the newest WAL segment was archived.
    pub latest_time: Option<f64>,
    pub earliest_lsn: Lsn,
    /// The end of the newest archived WAL segment.
    pub latest_lsn: Option<Lsn>,
}

impl RecoverableRange {
    /// The range of `info`, `latest_archive_time` being when the newest segment was archived.
    pub fn of(info: &RepositoryInfo, latest_archive_time: Option<f64>) -> Option<Self> {
        let first = info.backups.first()?;
        Some(RecoverableRange {
            earliest_time: first.stop,
            latest_time: latest_archive_time,
            earliest_lsn: first.lsn_stop.parse().ok()?,
            latest_lsn: info.archive_max.as_deref().and_then(segment_end),
        })
    }

    /// `TIME1 .. TIME2 (LSN1 .. LSN2)`, in UTC.
    pub fn describe(&self) -> String {
        let latest_time = self
            .latest_time
            .map(format_time)
            .unwrap_or_else(|| "(nothing archived)".into());
        let latest_lsn = self
            .latest_lsn
            .map(|l| l.to_string())
            .unwrap_or_else(|| "?".into());
        format!(
            "{} .. {latest_time} (LSN {} .. {latest_lsn})",
            format_time(self.earliest_time as f64),
            self.earliest_lsn
        )
    }
}

/// Seconds since the epoch as `2026-11-26 12:00:00.123456+00`.
pub fn format_time(seconds: f64) -> String {
    let micros = (seconds * 1e6).round() as i64;
    match jiff::Timestamp::from_microsecond(micros) {
        Ok(t) => t.strftime("%Y-%m-%d %H:%M:%S%.6f+00").to_string(),
        Err(_) => format!("{seconds}"),
    }
}

/// Reads a time target: RFC 3339 or PostgreSQL's `2026-11-26 12:00:00.123+00`, any offset.
/// Seconds since the epoch.
pub fn parse_time(text: &str) -> Option<f64> {
    let t = text.trim();
    let parsed: Option<jiff::Timestamp> = t.parse().ok().or_else(|| {
        // PostgreSQL prints offsets as `+00`; jiff wants `+00:00`.
        let (head, sign, off) = match t.rfind(['+', '-']) {
            Some(i) if i > 10 => (&t[..i], &t[i..i + 1], &t[i + 1..]),
            _ => return None,
        };
        if off.len() == 2 && off.bytes().all(|b| b.is_ascii_digit()) {
            format!("{head}{sign}{off}:00").parse().ok()
        } else {
            None
        }
    });
    parsed.map(|ts| ts.as_microsecond() as f64 / 1e6)
}

/// The backup a restore starts from, or why none can serve: an error naming the range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    #[error(
        "the repository of {stanza} holds no backup yet; take one with `stator backup create` first"
    )]
    NoBackup { stanza: String },
    #[error("backup {label} is not in the repository of {stanza} (see `stator backup list`)")]
    UnknownBackup { stanza: String, label: String },
    #[error("{target} is outside the recoverable range of {stanza}: {range}")]
    OutOfRange {
        stanza: String,
        target: String,
        range: String,
    },
    #[error(
        "{target} lies before the end of backup {label} ({end}); pick an older backup or leave --backup out"
    )]
    BeforeBackup {
        target: String,
        label: String,
        end: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Chooses the backup to restore for `target` (`wanted`: the one asked for): the newest backup
/// that ended at or before the target — never the latest one for a target it does not cover
/// (pgBackRest's own fallback) — after checking the target lies inside the recoverable range.
pub fn choose_backup(
    stanza: &str,
    info: &RepositoryInfo,
    latest_archive_time: Option<f64>,
    target: &RestoreTarget,
    wanted: Option<&str>,
) -> Result<BackupInfo, TargetError> {
    let Some(range) = RecoverableRange::of(info, latest_archive_time) else {
        return Err(TargetError::NoBackup {
            stanza: stanza.into(),
        });
    };
    let out_of_range = |target: String| TargetError::OutOfRange {
        stanza: stanza.into(),
        target,
        range: range.describe(),
    };
    let fits: Box<dyn Fn(&BackupInfo) -> bool> = match target {
        RestoreTarget::Latest | RestoreTarget::Immediate => Box::new(|_| true),
        RestoreTarget::Gtid(g) => {
            return Err(TargetError::Invalid(format!(
                "--to-gtid {g:?}: a GTID is MariaDB's; a PostgreSQL database restores to a time or an LSN"
            )));
        }
        RestoreTarget::Time(t) => {
            let at = parse_time(t).ok_or_else(|| {
                TargetError::Invalid(format!(
                    "--to-time {t:?} is not a time (e.g. 2026-11-26T12:00:00Z or 2026-11-26 12:00:00.123+00)"
                ))
            })?;
            if at < range.earliest_time as f64 || range.latest_time.is_none_or(|l| at > l) {
                return Err(out_of_range(format!("time {}", format_time(at))));
            }
            Box::new(move |b: &BackupInfo| (b.stop as f64) <= at)
        }
        RestoreTarget::Lsn(l) => {
            let at: Lsn = l.parse().map_err(|_| {
                TargetError::Invalid(format!("--to-lsn {l:?} is not an LSN (e.g. 0/3000060)"))
            })?;
            if at < range.earliest_lsn || range.latest_lsn.is_none_or(|m| at > m) {
                return Err(out_of_range(format!("LSN {at}")));
            }
            Box::new(move |b: &BackupInfo| b.lsn_stop.parse::<Lsn>().is_ok_and(|s| s <= at))
        }
    };
    let target_text = match target {
        RestoreTarget::Time(t) => format!("time {t}"),
        RestoreTarget::Lsn(l) => format!("LSN {l}"),
        RestoreTarget::Gtid(g) => format!("GTID {g}"),
        RestoreTarget::Latest => "latest".into(),
        RestoreTarget::Immediate => "immediate".into(),
    };
    match wanted {
        Some(label) => {
            let b = info
                .backups
                .iter()
                .find(|b| b.label == label)
                .ok_or_else(|| TargetError::UnknownBackup {
                    stanza: stanza.into(),
                    label: label.into(),
                })?;
            if fits(b) {
                Ok(b.clone())
            } else {
                Err(TargetError::BeforeBackup {
                    target: target_text,
                    label: b.label.clone(),
                    end: format!("{}, LSN {}", format_time(b.stop as f64), b.lsn_stop),
                })
            }
        }
        None => info
            .backups
            .iter()
            .rev()
            .find(|b| fits(b))
            .cloned()
            .ok_or_else(|| out_of_range(target_text)),
    }
}

/// The lines pgBackRest's restore adds to `postgresql.auto.conf`: recovery settings of the
/// source that must not outlive the restore (a replica cloned later would copy them).
const RESTORE_KEYS: [&str; 3] = ["restore_command", "recovery_target", "archive_mode"];

/// `postgresql.auto.conf` without the restore's recovery settings.
pub fn without_restore_settings(auto_conf: &str) -> String {
    auto_conf
        .lines()
        .filter(|l| {
            let key = l.split('=').next().unwrap_or_default().trim();
            !RESTORE_KEYS.iter().any(|k| key.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// WAL waiting to be archived: see [`pending_archive`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct PendingArchive {
    pub files: u64,
    pub bytes: u64,
    /// Seconds since the epoch: the oldest `.ready` file's mtime (when its segment closed).
    pub oldest_since: Option<f64>,
}

/// Counts `pg_wal/archive_status/*.ready`: the segment's own size (16 MiB unless initdb chose
/// another) and the oldest one's time.
pub fn pending_archive(pg_wal: &Path) -> PendingArchive {
    let mut pending = PendingArchive::default();
    for entry in std::fs::read_dir(pg_wal.join("archive_status"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(segment) = name.strip_suffix(".ready") else {
            continue;
        };
        pending.files += 1;
        pending.bytes += std::fs::metadata(pg_wal.join(segment)).map_or(0, |m| m.len());
        if let Some(t) = entry.metadata().ok().and_then(|m| m.modified().ok()) {
            let t = seconds_since_epoch(t);
            pending.oldest_since = Some(pending.oldest_since.map_or(t, |o: f64| o.min(t)));
        }
    }
    pending
}

fn seconds_since_epoch(t: std::time::SystemTime) -> f64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// The last pgBackRest error in `log` (`ERROR: [NNN]: …` and its indented continuation
/// lines, without the hints), on one line.
pub fn last_error_line(log: &str) -> Option<String> {
    let lines: Vec<&str> = log.lines().collect();
    let start = lines
        .iter()
        .rposition(|l| l.starts_with("ERROR: [") || l.contains(" ERROR: ["))?;
    let first = lines[start];
    let mut message = first[first.find("ERROR: [")? + "ERROR: ".len()..]
        .trim()
        .to_string();
    for more in lines[start + 1..]
        .iter()
        .take_while(|l| l.starts_with(' ') || l.starts_with('\t'))
        .map(|l| l.trim())
        .filter(|l| !l.starts_with("HINT:"))
        .take(4)
    {
        message.push(' ');
        message.push_str(more);
    }
    Some(message)
}

/// Free bytes (available to unprivileged users) on the volume holding `path`.
pub fn free_bytes(path: &Path) -> Option<u64> {
    let s = nix::sys::statvfs::statvfs(path).ok()?;
    Some((s.blocks_available() as u64).saturating_mul(s.fragment_size() as u64))
}

/// The mtime (seconds since the epoch) of the newest archived WAL segment in the local
/// repository at `repository` (stanza `stanza`): when it reached the archive.
pub fn latest_archive_time(repository: &Path, stanza: &str) -> Option<f64> {
    let archive = repository.join("archive").join(stanza);
    let mut newest: Option<f64> = None;
    for version in std::fs::read_dir(&archive).ok()?.flatten() {
        for dir in std::fs::read_dir(version.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for file in std::fs::read_dir(dir.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let name = file.file_name().to_string_lossy().into_owned();
                // Segments only: 24 hex digits, a hash; not `.partial`, `.backup` or history.
                if name.len() < 25 || name.contains(".partial") || name.contains(".backup") {
                    continue;
                }
                if let Some(t) = file
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|m| m.duration_since(std::time::UNIX_EPOCH).ok())
                {
                    let t = t.as_secs_f64();
                    newest = Some(newest.map_or(t, |n: f64| n.max(t)));
                }
            }
        }
    }
    newest
}

/// [`latest_archive_time`] of a repository pgBackRest lists (`repo-ls --recurse --output=json
/// archive/STANZA`: an S3 repository): the newest segment's time.
pub fn latest_archive_time_in_listing(json: &str) -> Option<f64> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.as_object()?
        .iter()
        .filter(|(path, entry)| {
            let name = path.rsplit('/').next().unwrap_or(path);
            entry["type"] == "file"
                && name.len() >= 25
                && !name.contains(".partial")
                && !name.contains(".backup")
                && name
                    .get(..24)
                    .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .filter_map(|(_, entry)| entry["time"].as_f64())
        .reduce(f64::max)
}

/// What a finished backup was (`backup.lastBackup` in `/status`).
pub use stator_api::backup_report::BackupOutcome;

impl super::Postgres {
    fn backrest(&self) -> Result<&(BackrestSettings, PathBuf), EngineError> {
        self.backrest.as_ref().ok_or_else(|| EngineError::Config {
            field: "spec.backup".into(),
            message: "is not set (or names no local repository): this database takes no backups"
                .into(),
        })
    }

    /// True when `spec.backup` gives this instance a repository.
    pub fn backs_up(&self) -> bool {
        self.backrest.is_some()
    }

    /// Writes `pgbackrest.conf`, its work dirs and the superuser's password file, and makes
    /// the repository path (refusing one that belongs to another database). The
    /// `archive_command` and `archive_timeout` for `postgresql.conf`; `None` without backups.
    pub(super) fn write_backrest_config(
        &self,
        creds: &crate::credentials::Credentials,
    ) -> Result<Option<(String, u64)>, EngineError> {
        let Some((settings, program)) = &self.backrest else {
            return Ok(None);
        };
        for dir in settings.work_dirs() {
            self.user.create_private_dir(&dir)?;
        }
        self.user
            .create_private_dir(&settings.run_dir.join("pgbackrest"))?;
        let settings = &self.with_ca_copy(settings)?;
        self.user
            .write_file(&settings.config_path(), &render_config(settings)?, 0o600)?;
        self.user.write_file(
            &settings.passfile(),
            &super::config::render_passfile(super::config::SUPERUSER, creds.superuser.expose()),
            0o600,
        )?;
        self.prepare_repository(None)?;
        let timeout = self
            .spec
            .backup
            .as_ref()
            .and_then(|b| stator_api::duration::parse_duration(&b.archive_timeout))
            .map_or(60, |d| d.as_secs().max(1));
        Ok(Some((archive_command(program, settings), timeout)))
    }

    /// `settings` with the S3 CA copied into the run dir, owned by the server user (who runs
    /// `archive-push` and may not read the Secret's file).
    fn with_ca_copy(&self, settings: &BackrestSettings) -> Result<BackrestSettings, EngineError> {
        let mut settings = settings.clone();
        if let Some(s3) = settings.s3.as_mut()
            && let Some(ca) = &s3.ca_file
        {
            let text = std::fs::read_to_string(ca).map_err(|e| EngineError::Config {
                field: "spec.backup.repository.s3.caSecretName".into(),
                message: format!("cannot read {}: {e}", ca.display()),
            })?;
            let dir = self.run_dir.join("pgbackrest");
            self.user.create_private_dir(&dir)?;
            let copy = dir.join(S3_CA);
            self.user.write_file(&copy, &text, 0o600)?;
            s3.ca_file = Some(copy);
        }
        Ok(settings)
    }

    /// Checks the marker of an S3 repository and, with a system identifier, writes it
    /// (`pgbackrest repo-ls`/`repo-get`/`repo-put` with the instance's own configuration: the
    /// keys never reach a command line).
    async fn prepare_s3_repository(
        &self,
        system_identifier: Option<u64>,
    ) -> Result<(), EngineError> {
        let (settings, _) = self.backrest()?;
        let run = |args: Vec<&str>, input: Option<String>| {
            let mut all = common(settings);
            all.truncate(1);
            all.extend(args.into_iter().map(OsString::from));
            self.backrest_output(all, input)
        };
        let listing = run(
            vec![
                "repo-ls",
                "--output=json",
                "--filter=^stator-repository\\.json$",
            ],
            None,
        )
        .await?;
        let found = if listing.contains(REPOSITORY_MARKER) {
            let text = run(vec!["repo-get", "--raw", REPOSITORY_MARKER], None).await?;
            Some(
                serde_json::from_str::<RepositoryMarker>(&text).map_err(|e| {
                    EngineError::Config {
                        field: "spec.backup.repository.s3.path".into(),
                        message: format!(
                            "{}/{REPOSITORY_MARKER} is not a Stator repository marker: {e}",
                            settings.repository.display()
                        ),
                    }
                })?,
            )
        } else {
            None
        };
        let field = "spec.backup.repository.s3.path";
        if let Some(text) =
            self.marker_to_write(&settings.repository, field, found, system_identifier)?
        {
            run(vec!["repo-put", "--raw", REPOSITORY_MARKER], Some(text)).await?;
        }
        Ok(())
    }

    /// Checks the marker `found` in `repo` against this database (an error naming `field` when
    /// it belongs to another); the marker to write, when there is a system identifier and the
    /// repository does not hold it yet.
    fn marker_to_write(
        &self,
        repo: &Path,
        field: &str,
        found: Option<RepositoryMarker>,
        system_identifier: Option<u64>,
    ) -> Result<Option<String>, EngineError> {
        let wanted = RepositoryMarker {
            namespace: self.namespace.clone(),
            name: self.database.clone(),
            system_identifier,
        };
        if let Some(found) = &found
            && let Some(why) = marker_conflict(repo, found, &wanted)
        {
            return Err(EngineError::Config {
                field: field.into(),
                message: why,
            });
        }
        if system_identifier.is_none() || found.as_ref() == Some(&wanted) {
            return Ok(None);
        }
        serde_json::to_string_pretty(&wanted)
            .map(Some)
            .map_err(|e| EngineError::State(e.to_string()))
    }

    /// Creates the repository path (owned by the server user) and checks its marker; with a
    /// system identifier, writes the marker. An S3 repository is checked in
    /// [`Self::stanza_create`] instead.
    fn prepare_repository(&self, system_identifier: Option<u64>) -> Result<(), EngineError> {
        let (settings, _) = self.backrest()?;
        if settings.s3.is_some() {
            return Ok(());
        }
        let repo = &settings.repository;
        if !repo.exists() {
            std::fs::create_dir_all(repo).map_err(|e| EngineError::io(repo, "create", e))?;
            self.user.own(repo, 0o750)?;
        }
        self.user.check_reachable(repo)?;
        let found = read_repository_marker(repo)?;
        let field = "spec.backup.repository.local.path";
        if let Some(text) = self.marker_to_write(repo, field, found, system_identifier)? {
            self.user
                .write_file(&repo.join(REPOSITORY_MARKER), &text, 0o640)?;
        }
        Ok(())
    }

    fn backrest_invocation(
        &self,
        args: Vec<OsString>,
    ) -> Result<crate::process::Invocation, EngineError> {
        let (settings, program) = self.backrest()?;
        Ok(crate::process::Invocation {
            program: program.clone(),
            args,
            env: vec![("PGPASSFILE".into(), settings.passfile().into())],
            user: self.user.clone(),
            log_file: self.log_file.clone(),
            cwd: Some(self.run_dir.clone()),
        })
    }

    /// On a primary: ties the repository to this cluster (marker) and creates the stanza
    /// (idempotent: an existing, matching stanza is kept).
    pub async fn stanza_create(
        &self,
        creds: &crate::credentials::Credentials,
    ) -> Result<(), EngineError> {
        let system_identifier = self
            .with_session(creds, async |c: &tokio_postgres::Client| {
                let row = c
                    .query_one(
                        "SELECT system_identifier::text FROM pg_control_system()",
                        &[],
                    )
                    .await
                    .map_err(|e| EngineError::sql("reading the system identifier", &e))?;
                Ok(row.get::<_, String>(0).parse::<u64>().ok())
            })
            .await?;
        self.prepare_repository(system_identifier)?;
        let (settings, _) = self.backrest()?;
        if settings.s3.is_some() {
            self.prepare_s3_repository(system_identifier).await?;
        }
        self.backrest_invocation(stanza_create_args(settings))?
            .run()
            .await
    }

    /// Runs pgBackRest with `args` (`input` on its stdin); its stdout.
    async fn backrest_output(
        &self,
        args: Vec<OsString>,
        input: Option<String>,
    ) -> Result<String, EngineError> {
        self.backrest_invocation(args)?
            .output(input.as_deref())
            .await
    }

    /// `pgbackrest info --output=json`, read.
    pub async fn backup_info(&self) -> Result<RepositoryInfo, EngineError> {
        let (settings, _) = self.backrest()?;
        let out = self.backrest_output(info_args(settings), None).await?;
        parse_info(&out).map_err(EngineError::State)
    }

    /// The newest backup in the repository, as a finished backup (for `/status` after the
    /// manager started: what it ran itself is not all there is).
    pub async fn newest_backup(&self) -> Result<Option<BackupOutcome>, EngineError> {
        let info = self.backup_info().await?;
        Ok(info.backups.last().map(|b| BackupOutcome {
            label: b.label.clone(),
            kind: b.kind.clone(),
            started: b.start,
            duration_seconds: (b.stop - b.start) as f64,
            size: b.size,
        }))
    }

    /// Runs one backup on this (primary) instance; retention runs after it.
    pub async fn backup(&self, kind: BackupKind) -> Result<BackupOutcome, EngineError> {
        let (settings, _) = self.backrest()?;
        let started = std::time::SystemTime::now();
        let clock = std::time::Instant::now();
        self.backrest_invocation(backup_args(settings, kind))?
            .run()
            .await?;
        let duration_seconds = clock.elapsed().as_secs_f64();
        let info = self.backup_info().await?;
        let last = info
            .backups
            .last()
            .ok_or_else(|| EngineError::State("the backup is not in pgbackrest info".into()))?;
        Ok(BackupOutcome {
            label: last.label.clone(),
            kind: last.kind.clone(),
            started: started
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64),
            duration_seconds,
            size: last.size,
        })
    }

    /// Archive facts for `/status`: WAL segments waiting (`archive_status/*.ready`, which
    /// also counts failures `pg_stat_archiver` misses: an `archive_command` killed by a signal
    /// or exiting over 125), their bytes, and when the oldest of them became ready.
    pub fn archive_pending(&self) -> PendingArchive {
        pending_archive(&self.data_dir.join("pg_wal"))
    }

    /// pgBackRest's last error in the server log (where `archive_command`'s output goes), in
    /// its own words: e.g. why the repository cannot be written.
    pub fn last_archive_push_error(&self) -> Option<String> {
        use std::io::{Read, Seek, SeekFrom};
        let mut file = std::fs::File::open(&self.log_file).ok()?;
        let len = file.metadata().ok()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))
            .ok()?;
        let mut tail = Vec::new();
        file.read_to_end(&mut tail).ok()?;
        last_error_line(&String::from_utf8_lossy(&tail))
    }

    /// Free bytes on the volume of the data dir.
    pub fn free_bytes(&self) -> Option<u64> {
        free_bytes(&self.data_dir)
    }

    /// `pg_stat_archiver`: last archived time, failures, last failed time.
    pub async fn archiver(
        &self,
        creds: &crate::credentials::Credentials,
    ) -> Result<(Option<f64>, i64, Option<f64>, Option<String>), EngineError> {
        self.with_session(creds, async |c: &tokio_postgres::Client| {
            let row = c
                .query_one(
                    "SELECT EXTRACT(EPOCH FROM last_archived_time)::float8, failed_count,
                            EXTRACT(EPOCH FROM last_failed_time)::float8, last_failed_wal
                     FROM pg_stat_archiver",
                    &[],
                )
                .await
                .map_err(|e| EngineError::sql("reading pg_stat_archiver", &e))?;
            Ok((row.get(0), row.get(1), row.get(2), row.get(3)))
        })
        .await
    }

    /// Fills the empty data dir from `source` and runs its recovery to the end, on the socket
    /// only: pgBackRest restores the backup into a staging dir, a server replays WAL to the
    /// target and promotes, and stops; the restore's recovery settings are then removed, so
    /// the data dir starts (and is cloned) as an ordinary primary.
    pub async fn restore_backup(
        &self,
        source: &RestoreSource,
        creds: &crate::credentials::Credentials,
    ) -> Result<(), EngineError> {
        let (own, program) = self.backrest()?;
        self.prepare_dirs()?;
        let staging = self.staging_dir()?;
        let settings = BackrestSettings {
            stanza: source.stanza.clone(),
            repository: source.repository.clone(),
            pg_path: staging.clone(),
            ..self.with_ca_copy(own)?
        };
        let config = self.run_dir.join("pgbackrest-restore.conf");
        let mut flag = OsString::from("--config=");
        flag.push(&config);
        let invocation = |mut args: Vec<OsString>| {
            args[0] = flag.clone();
            crate::process::Invocation {
                program: program.clone(),
                args,
                env: Vec::new(),
                user: self.user.clone(),
                log_file: self.log_file.clone(),
                cwd: Some(self.run_dir.clone()),
            }
        };
        let result = async {
            self.user
                .write_file(&config, &render_config(&settings)?, 0o600)?;
            // pgBackRest's restore checks every file of the set against its manifest; the
            // archived WAL the recovery replays is read back beside the recovery (not beside
            // the copy, which keeps every core busy) by `check_wal_of_set`. The data dir is
            // installed only once both succeeded. When the restore or the recovery fails, the
            // whole repository is verified to name what is damaged or missing (pgBackRest
            // 2.45's verify cannot be limited to one set, and it reads every set: it runs only
            // then, or when the WAL could not be checked).
            let copied = invocation(restore_args(&settings, &source.set, &source.target))
                .run()
                .await;
            let (restored, wal) = match copied {
                Ok(()) => {
                    let (recovered, wal) = tokio::join!(
                        self.recover(&staging, creds),
                        check_wal_of_set(&invocation, &settings, &source.set, settings.parallel)
                    );
                    (recovered, Some(wal))
                }
                Err(e) => (Err(e), None),
            };
            let verify = || {
                let mut verify = verify_args(&settings);
                verify.push("--log-level-console=info".into());
                verify.push("--log-level-stderr=off".into());
                verify_repository(invocation(verify), &settings)
            };
            match wal {
                Some(WalCheck::Intact(files)) => {
                    tracing::info!(files, "the archived WAL the restore replays is intact")
                }
                Some(WalCheck::Damaged(damage)) => {
                    tracing::error!("refusing the restore: {damage}");
                    return Err(EngineError::State(format!(
                        "refusing to restore (nothing was created): the archived WAL is damaged: {damage}"
                    )));
                }
                Some(WalCheck::NotChecked(why)) => {
                    tracing::warn!("the archived WAL was not checked ({why}): verifying the whole repository");
                    verify().await?;
                }
                None => {}
            }
            if restored.is_err() {
                verify().await?;
            }
            restored?;
            let auto = staging.join("postgresql.auto.conf");
            let text = std::fs::read_to_string(&auto).unwrap_or_default();
            self.user
                .write_file(&auto, &without_restore_settings(&text), 0o600)?;
            for signal in ["recovery.signal", "standby.signal"] {
                let _ = std::fs::remove_file(staging.join(signal));
            }
            crate::data_dir::write_marker(&staging, &self.marker(None), &self.user)?;
            self.install_staging(&staging)
        }
        .await;
        let _ = std::fs::remove_file(&config);
        if result.is_err() {
            self.discard_staging(&staging);
        }
        result
    }

    /// Runs the restored `dir` until its recovery ended and it promoted, reachable only on
    /// the socket, then stops it (fast shutdown, a checkpoint).
    ///
    /// The restored cluster holds the source's roles and passwords: while it runs on the
    /// socket only (in the run dir, which only the server user may enter), the superuser may
    /// log in without one, and its password becomes this database's.
    async fn recover(
        &self,
        dir: &Path,
        creds: &crate::credentials::Credentials,
    ) -> Result<(), EngineError> {
        let socket = self.run_dir.to_string_lossy().into_owned();
        let hba = self.run_dir.join("restore.hba.conf");
        self.user.write_file(
            &hba,
            &format!("local all {} trust\n", super::config::SUPERUSER),
            0o600,
        )?;
        let mut args: Vec<OsString> = vec![
            "-D".into(),
            dir.into(),
            "-c".into(),
            "listen_addresses=".into(),
            "-c".into(),
            format!("port={}", self.port).into(),
            "-c".into(),
            format!("unix_socket_directories={socket}").into(),
            "-c".into(),
            "archive_mode=off".into(),
            "-c".into(),
            "hot_standby=off".into(),
            "-c".into(),
            format!("hba_file={}", hba.display()).into(),
        ];
        // A restored data dir starts as after a crash, so the server first syncs every file
        // in it (one open + fsync per file: 0.15 s for a 1 GiB pgbench database here, more
        // with more files). pgBackRest has just synced every file it wrote; one syncfs(2) of
        // the file system gives the same guarantee in one call, where the kernel reports its
        // write errors (Linux 5.8 and later; every PostgreSQL Stator runs has the setting).
        if syncfs_reports_errors(
            &std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default(),
        ) {
            args.extend(["-c".into(), "recovery_init_sync_method=syncfs".into()]);
        }
        let mut server = self.invocation("postgres", args).spawn_server(dir)?;
        let pidfile = dir.join("postmaster.pid");
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if !server.is_alive() {
                let how = server.exited().await;
                let log = std::fs::read_to_string(&self.log_file).unwrap_or_default();
                let fatal: Vec<&str> = log
                    .lines()
                    .rev()
                    .filter(|l| l.contains("FATAL") || l.contains("PANIC"))
                    .take(3)
                    .collect();
                return Err(EngineError::State(format!(
                    "the restored server stopped during recovery ({how}): {}; see {}",
                    fatal.into_iter().rev().collect::<Vec<_>>().join(" / "),
                    self.log_file.display()
                )));
            }
            let ready = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|t| t.lines().nth(7).map(|s| s.trim() == "ready"))
                .unwrap_or(false);
            if ready && !dir.join("recovery.signal").exists() {
                break;
            }
        }
        let adopted = self.adopt_superuser(creds).await;
        let how = server
            .stop(
                nix::sys::signal::Signal::SIGINT,
                nix::sys::signal::Signal::SIGQUIT,
                Duration::from_secs(60),
            )
            .await;
        let _ = std::fs::remove_file(&hba);
        tracing::info!(how = %how, "recovery of the restored data dir done");
        adopted
    }

    /// Sets the superuser's password (as a SCRAM verifier) to this database's, over the
    /// socket of the restored server.
    async fn adopt_superuser(
        &self,
        creds: &crate::credentials::Credentials,
    ) -> Result<(), EngineError> {
        // `trust` on the socket: the password sent (this database's) is not asked for.
        let mut last = String::new();
        for _ in 0..50 {
            match self.connect(&creds.superuser).await {
                Ok(client) => {
                    let sql = format!(
                        "ALTER ROLE {} PASSWORD {}",
                        super::quote_ident(super::config::SUPERUSER),
                        super::quote_literal(&super::scram_verifier(&creds.superuser))
                    );
                    return client
                        .batch_execute(&sql)
                        .await
                        .map_err(|e| EngineError::sql("setting the superuser's password", &e));
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(EngineError::Connect(format!(
            "the restored server on {}: {last}",
            self.run_dir.display()
        )))
    }
}

/// Whether syncfs(2) reports write errors on the kernel with this release string
/// (`/proc/sys/kernel/osrelease`, e.g. `6.1.0-13-amd64`): Linux 5.8 and later. Unknown: no.
fn syncfs_reports_errors(release: &str) -> bool {
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (5, 8),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn syncfs_is_trusted_from_linux_5_8() {
        use super::syncfs_reports_errors as ok;
        assert!(ok("6.1.0-13-amd64\n"));
        assert!(ok("5.8.0"));
        assert!(ok("5.10.0-28-cloud-amd64"));
        assert!(!ok("5.4.0-150-generic"));
        assert!(!ok("4.19.0-26-amd64"));
        assert!(!ok(""));
        assert!(!ok("garbage"));
    }

    #[test]
    fn the_last_error_of_a_log_is_its_message() {
        let log = concat!(
            "2026-11-26 16:38:39.151 GMT [31073] LOG:  archive command failed with exit code 103\n",
            "ERROR: [103]: unable to find a valid repository:\n",
            "       repo1: [FileOpenError] unable to load info file '/r/archive/ex/archive.info':\n",
            "       FileOpenError: unable to open file '/r/archive/ex/archive.info' for read: [20] Not a directory\n",
            "       HINT: archive.info cannot be opened but is required to push/get WAL segments.\n",
            "2026-11-26 16:38:42.114 GMT [31073] LOG:  archive command failed with exit code 103\n",
        );
        assert_eq!(
            last_error_line(log).as_deref(),
            Some(
                "[103]: unable to find a valid repository: repo1: [FileOpenError] unable to load info file '/r/archive/ex/archive.info': FileOpenError: unable to open file '/r/archive/ex/archive.info' for read: [20] Not a directory"
            )
        );
        assert_eq!(last_error_line("LOG: all fine\n"), None);
    }

    #[test]
    fn damaged_files_name_the_file_the_manifest_and_the_info_files() {
        let text = "2026-11-26 15:59:02.725 P01   INFO: invalid checksum '20261126-155812F/pg_data/base/5/1255.zst'\n\
                    P01 INFO: invalid size '15-1/0000000100000000/000000010000000000000003-abc.zst'\n\
                    backup: 20261126-160000F, status: manifest missing, total files checked: 0\n\
                    No usable backup.info file\n\
                    No usable archive.info file\n\
                    missing: 0, checksum invalid: 0, size invalid: 0, other: 0\n";
        let repo = Path::new("/r/default/db");
        let got = damaged_files(text, repo, "db");
        let want: Vec<PathBuf> = [
            "/r/default/db/backup/db/20261126-155812F/pg_data/base/5/1255.zst",
            "/r/default/db/archive/db/15-1/0000000100000000/000000010000000000000003-abc.zst",
            "/r/default/db/backup/db/20261126-160000F/backup.manifest",
            "/r/default/db/backup/db/backup.info",
            "/r/default/db/archive/db/archive.info",
        ]
        .iter()
        .map(PathBuf::from)
        .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn verify_verdict_passes_an_intact_repository_and_names_a_damaged_file() {
        let repo = Path::new("/r/default/db");
        let intact = "stanza: db\nstatus: ok\n  backup: 20261126-155812F, status: valid, total files checked: 9, total valid files: 9\n    missing: 0, checksum invalid: 0, size invalid: 0, other: 0\n";
        assert_eq!(
            verify_verdict(intact, true, repo, "/r/default/db", "db"),
            Ok(())
        );
        // A non-zero exit is never intact, whatever the text says.
        assert!(verify_verdict(intact, false, repo, "/r/default/db", "db").is_err());
        let damaged = "P01 INFO: invalid checksum '20261126-155812F/pg_data/base/5/1255.zst'\n";
        let said = verify_verdict(damaged, true, repo, "s3://b/default/db", "db").unwrap_err();
        assert!(
            said.contains("s3://b/default/db of db is damaged")
                && said.contains("/r/default/db/backup/db/20261126-155812F/pg_data/base/5/1255.zst (damaged or missing)")
                && said.contains("invalid checksum"),
            "{said}"
        );
    }

    use super::*;

    #[test]
    fn the_wal_a_restore_replays_is_every_archived_segment_from_the_backups_start_on() {
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let listing = [
            "15-1".to_string(),
            "15-1/0000000100000000".into(),
            format!("15-1/0000000100000000/000000010000000000000003-{sha}.zst"),
            format!("15-1/0000000100000000/000000010000000000000004-{sha}.zst"),
            format!("15-1/0000000100000000/000000010000000000000005.partial-{sha}.zst"),
            "15-1/00000002.history".into(),
            format!("15-1/0000000200000000/000000020000000000000005-{sha}"),
            format!("15-1/0000000200000001/000000020000000100000000-{sha}.lz4"),
            "archive.info".into(),
            // Not WAL files: one in the wrong directory, one with a short checksum.
            format!("15-1/0000000100000001/000000010000000000000009-{sha}.zst"),
            "15-1/0000000100000000/000000010000000000000009-abc.zst".into(),
        ]
        .join("\n");
        let picked = wal_to_replay(&listing, "000000010000000000000004");
        let names: Vec<&str> = picked.iter().map(|w| w.segment.as_str()).collect();
        assert_eq!(
            names,
            [
                "000000010000000000000004",
                "000000010000000000000005",
                "000000020000000000000005",
                "000000020000000100000000"
            ]
        );
        assert_eq!(picked[0].sha1, sha);
        assert_eq!(picked[0].compression.as_deref(), Some("zst"));
        assert_eq!(picked[2].compression, None);
        assert_eq!(
            picked[1].path,
            format!("15-1/0000000100000000/000000010000000000000005.partial-{sha}.zst")
        );
        // A later backup on timeline 2 needs nothing of timeline 1.
        assert_eq!(wal_to_replay(&listing, "000000020000000000000005").len(), 2);
        assert!(wal_to_replay(&listing, "").is_empty());
    }

    fn settings() -> BackrestSettings {
        BackrestSettings {
            stanza: "shop".into(),
            repository: "/srv/backups/default/shop".into(),
            retention_full: 2,
            compression: BackupCompression::Zst,
            parallel: 2,
            pg_path: "/var/lib/stator/default/shop/data-shop-0".into(),
            pg_port: 20010,
            socket_dir: "/run/shop-0".into(),
            s3: None,
            encryption: None,
            run_dir: "/run/shop-0".into(),
        }
    }

    #[test]
    fn an_s3_repository_names_the_bucket_and_its_keys_come_from_the_secret_files() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("s3-keys");
        std::fs::create_dir(&keys).unwrap();
        for (k, v) in [(S3_ACCESS_KEY_ID, "AKID"), (S3_SECRET_ACCESS_KEY, "SECRET")] {
            std::fs::write(keys.join(k), v).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(keys.join(k), std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        let mut s = settings();
        s.repository = "/stator/default/shop".into();
        s.s3 = Some(S3Settings {
            host: "127.0.0.1".into(),
            port: 9000,
            bucket: "b".into(),
            region: "us-east-1".into(),
            ca_file: Some("/run/shop-0/pgbackrest/ca.crt".into()),
            credentials_dir: keys.clone(),
        });
        let text = render_config(&s).unwrap();
        for line in [
            "repo1-type=s3\n",
            "repo1-s3-endpoint=127.0.0.1\n",
            "repo1-storage-port=9000\n",
            "repo1-s3-bucket=b\n",
            "repo1-s3-uri-style=path\n",
            "repo1-s3-key=AKID\n",
            "repo1-s3-key-secret=SECRET\n",
            "repo1-storage-ca-file=/run/shop-0/pgbackrest/ca.crt\n",
            "repo1-path=/stator/default/shop\n",
        ] {
            assert!(text.contains(line), "{line:?} not in {text}");
        }
        // The argument lists never carry the keys: they are only in the 0600 file.
        for args in [
            backup_args(&s, BackupKind::Full),
            info_args(&s),
            verify_args(&s),
        ] {
            let joined = format!("{args:?}");
            assert!(
                !joined.contains("SECRET") && !joined.contains("AKID"),
                "{joined}"
            );
        }
        assert!(!archive_command(Path::new("/usr/bin/pgbackrest"), &s).contains("SECRET"));
        // A missing key names the field.
        std::fs::remove_file(keys.join(S3_SECRET_ACCESS_KEY)).unwrap();
        let e = render_config(&s).unwrap_err().to_string();
        assert!(e.contains("credentialsSecretName"), "{e}");
    }

    #[test]
    fn the_newest_archived_segment_of_an_s3_listing_is_found() {
        let json = r#"{".":{"type":"path"},
            "15-1/0000000100000000/000000010000000000000003-aa.zst":{"type":"file","size":1,"time":1700000300},
            "15-1/0000000100000000/000000010000000000000002-bb.zst":{"type":"file","size":1,"time":1700000200},
            "15-1/0000000100000000/000000010000000000000004.00000028.backup":{"type":"file","size":1,"time":1700000900},
            "15-1/00000002.history":{"type":"file","size":1,"time":1700000950}}"#;
        assert_eq!(latest_archive_time_in_listing(json), Some(1700000300.0));
        assert_eq!(latest_archive_time_in_listing("{}"), None);
    }

    #[test]
    fn the_config_keeps_each_instance_in_its_own_paths_and_never_drops_wal() {
        let text = render_config(&settings()).unwrap();
        for line in [
            "repo1-path=/srv/backups/default/shop\n",
            "repo1-retention-full=2\n",
            "compress-type=zst\n",
            "process-max=2\n",
            "lock-path=/run/shop-0/pgbackrest/lock\n",
            "log-path=/run/shop-0/pgbackrest/log\n",
            "spool-path=/run/shop-0/pgbackrest/spool\n",
            "[shop]\n",
            "pg1-path=/var/lib/stator/default/shop/data-shop-0\n",
            "pg1-port=20010\n",
            "pg1-socket-path=/run/shop-0\n",
            "pg1-user=postgres\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("archive-push-queue-max"), "{text}");
        assert!(!text.contains("pass"), "{text}");
    }

    #[test]
    fn the_archive_command_names_its_config() {
        assert_eq!(
            archive_command(Path::new("/usr/bin/pgbackrest"), &settings()),
            "/usr/bin/pgbackrest --config=/run/shop-0/pgbackrest.conf --stanza=shop archive-push %p"
        );
    }

    /// A Secret directory `name` under `root` holding `passphrase` (0600).
    fn passphrase_secret(root: &Path, name: &str, passphrase: &str) -> Encryption {
        use std::os::unix::fs::PermissionsExt;
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(ENCRYPTION_PASSPHRASE);
        std::fs::write(&file, format!("{passphrase}\n")).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        Encryption {
            passphrase_file: file,
        }
    }

    #[test]
    fn an_encrypted_repository_gets_its_passphrase_from_the_secret_file_into_the_config_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings();
        s.encryption = Some(passphrase_secret(dir.path(), "backup-key", "correct horse"));
        let text = render_config(&s).unwrap();
        for line in [
            "repo1-cipher-type=aes-256-cbc\n",
            "repo1-cipher-pass=correct horse\n",
        ] {
            assert!(text.contains(line), "{line:?} not in {text}");
        }
        // In [global]: every command (archive-push, backup, restore, info) reads it.
        let global = text.split("\n[shop]").next().unwrap();
        assert!(global.contains("repo1-cipher-pass="), "{text}");
        assert!(!archive_command(Path::new("/usr/bin/pgbackrest"), &s).contains("horse"));

        // The spec's Secret is found under the instance's Secrets root, key `passphrase`.
        let db = stator_api::load::load_database(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: shop}\nspec:\n  engine: postgres\n  backup:\n    repository: {local: {path: /srv/b}}\n    encryption: {secretName: backup-key}\n",
        )
        .unwrap()
        .database;
        let found = Encryption::of(&db, Some(dir.path())).unwrap().unwrap();
        assert_eq!(found, *s.encryption.as_ref().unwrap());
        let e = Encryption::of(&db, None).unwrap_err().to_string();
        assert!(e.contains("spec.backup.encryption.secretName"), "{e}");

        // A missing key, an empty one, or one others may read: the field and the file expected.
        let file = dir.path().join("backup-key").join(ENCRYPTION_PASSPHRASE);
        for (content, mode) in [(None, 0o600), (Some(""), 0o600), (Some("p"), 0o644)] {
            let _ = std::fs::remove_file(&file);
            if let Some(content) = content {
                use std::os::unix::fs::PermissionsExt;
                std::fs::write(&file, content).unwrap();
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            }
            let e = render_config(&s).unwrap_err().to_string();
            assert!(
                e.contains("spec.backup.encryption.secretName")
                    && e.contains(&file.display().to_string())
                    && e.contains("passphrase"),
                "{content:?}: {e}"
            );
        }
    }

    #[test]
    fn no_argument_list_carries_a_secret() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings();
        let passphrase = "the-repository-passphrase-9f2c";
        s.encryption = Some(passphrase_secret(dir.path(), "backup-key", passphrase));
        let secret = "hunter2-the-superuser-password";
        assert!(
            render_config(&s).unwrap().contains(passphrase),
            "the passphrase is in the 0600 config"
        );
        assert!(
            !archive_command(Path::new("/usr/bin/pgbackrest"), &s).contains(passphrase),
            "nor in archive_command"
        );
        let lists = [
            stanza_create_args(&s),
            backup_args(&s, BackupKind::Full),
            backup_args(&s, BackupKind::Incr),
            info_args(&s),
            verify_args(&s),
            restore_args(
                &s,
                "20261126-120000F",
                &RestoreTarget::Time("2026-11-26 12:00:00+00".into()),
            ),
            restore_args(
                &s,
                "20261126-120000F",
                &RestoreTarget::Lsn("0/3000060".into()),
            ),
            restore_args(&s, "20261126-120000F", &RestoreTarget::Latest),
        ];
        for args in lists {
            for a in &args {
                let a = a.to_string_lossy();
                assert!(
                    !a.contains(secret) && !a.contains(passphrase) && !a.contains("pass"),
                    "{a}"
                );
                assert!(
                    a.starts_with("--") || a.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
                    "only options and the command: {a}"
                );
            }
        }
        let restore: Vec<String> = restore_args(&s, "L", &RestoreTarget::Time("T".into()))
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        for expected in [
            "--set=L",
            "--type=time",
            "--target=T",
            "--target-action=promote",
            "--archive-mode=off",
        ] {
            assert!(restore.contains(&expected.to_string()), "{restore:?}");
        }
    }

    fn backup(label: &str, stop: i64, lsn_stop: &str) -> BackupInfo {
        BackupInfo {
            label: label.into(),
            kind: "full".into(),
            start: stop - 5,
            stop,
            size: 1,
            lsn_start: "0/1000000".into(),
            lsn_stop: lsn_stop.into(),
            wal_start: String::new(),
            wal_stop: String::new(),
        }
    }

    fn info() -> RepositoryInfo {
        RepositoryInfo {
            backups: vec![
                backup("A", 1000, "0/3000000"),
                backup("B", 2000, "0/6000000"),
            ],
            archive_max: Some("000000020000000000000009".into()),
            archive_min: Some("000000010000000000000001".into()),
            status: "ok".into(),
        }
    }

    fn time(seconds: i64) -> RestoreTarget {
        RestoreTarget::Time(format_time(seconds as f64))
    }

    #[test]
    fn a_time_target_uses_the_newest_backup_that_ended_before_it_never_the_latest() {
        let i = info();
        assert_eq!(
            choose_backup("s", &i, Some(3000.0), &time(1500), None)
                .unwrap()
                .label,
            "A"
        );
        assert_eq!(
            choose_backup("s", &i, Some(3000.0), &time(2500), None)
                .unwrap()
                .label,
            "B"
        );
        // Asked for B with a target before B ended: refused, not replaced.
        let e = choose_backup("s", &i, Some(3000.0), &time(1500), Some("B")).unwrap_err();
        assert!(matches!(e, TargetError::BeforeBackup { .. }), "{e}");
    }

    #[test]
    fn a_target_outside_the_range_is_refused_naming_the_range() {
        let i = info();
        for t in [time(500), time(3500)] {
            let e = choose_backup("s", &i, Some(3000.0), &t, None)
                .unwrap_err()
                .to_string();
            assert!(e.contains("outside the recoverable range of s"), "{e}");
            assert!(
                e.contains(&format_time(1000.0)) && e.contains(&format_time(3000.0)),
                "{e}"
            );
            assert!(e.contains("LSN 0/3000000 .. 0/A000000"), "{e}");
        }
        let e = choose_backup(
            "s",
            &i,
            Some(3000.0),
            &RestoreTarget::Lsn("0/B000000".into()),
            None,
        )
        .unwrap_err();
        assert!(matches!(e, TargetError::OutOfRange { .. }), "{e}");
        assert_eq!(
            choose_backup("s", &i, None, &RestoreTarget::Lsn("0/5000000".into()), None)
                .unwrap()
                .label,
            "A"
        );
        let none = RepositoryInfo::default();
        assert!(matches!(
            choose_backup("s", &none, None, &RestoreTarget::Latest, None),
            Err(TargetError::NoBackup { .. })
        ));
    }

    #[test]
    fn times_are_read_in_both_spellings() {
        let a = parse_time("2026-11-26T12:00:00.5Z").unwrap();
        let b = parse_time("2026-11-26 12:00:00.5+00").unwrap();
        let c = parse_time("2026-11-26 14:00:00.5+02").unwrap();
        assert_eq!(a, b);
        assert_eq!(a, c);
        assert_eq!(parse_time(&format_time(a)), Some(a));
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn the_restore_settings_do_not_outlive_the_restore() {
        let auto = "# Do not edit\nwork_mem = '8MB'\nrestore_command = 'pgbackrest archive-get %f \"%p\"'\nrecovery_target_time = 'x'\nrecovery_target_action = 'promote'\narchive_mode = 'off'\n";
        assert_eq!(
            without_restore_settings(auto),
            "# Do not edit\nwork_mem = '8MB'\n"
        );
    }

    #[test]
    fn a_segment_ends_16_mib_after_its_start() {
        assert_eq!(
            segment_end("000000010000000200000003").unwrap().to_string(),
            "2/4000000"
        );
        assert_eq!(
            segment_end("0000000100000000000000FF").unwrap().to_string(),
            "1/0"
        );
    }

    #[test]
    fn a_repository_of_another_database_is_refused_naming_it() {
        let mine = RepositoryMarker {
            namespace: "default".into(),
            name: "a".into(),
            system_identifier: Some(1),
        };
        let theirs = RepositoryMarker {
            name: "b".into(),
            ..mine.clone()
        };
        let e = marker_conflict(Path::new("/r"), &theirs, &mine).unwrap();
        assert!(e.contains("default/b"), "{e}");
        let other_cluster = RepositoryMarker {
            system_identifier: Some(2),
            ..mine.clone()
        };
        assert!(marker_conflict(Path::new("/r"), &other_cluster, &mine).is_some());
        assert!(marker_conflict(Path::new("/r"), &mine, &mine).is_none());
    }
}
