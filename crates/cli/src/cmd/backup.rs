//! `stator backup create|list|verify` and `stator restore`: backups of a local PostgreSQL
//! database with pgBackRest (of MariaDB: full backups, zstd and SHA-256), and a new database
//! restored from them to a point in time.
//! Arguments and output only; the work is in `stator_local::backup` and `stator_local::up`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use stator_local::StateDir;

use crate::cmd::local::{StateDirArg, failed};
use crate::error::{CliError, CliResult};

/// Backups of a database (`spec.backup`, PostgreSQL or MariaDB, in a local or S3 repository).
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  stator backup create -f db.yaml              an incremental backup (the first one is full)\n  stator backup create -f db.yaml --type full\n  stator backup list -f db.yaml                 ID, times, size, LSN range, recoverable range\n  stator backup verify -f db.yaml               pgbackrest verify: every file of every backup and the WAL\n                                                (MariaDB: re-hashes every backup, checks its manifest)"
)]
pub struct BackupArgs {
    #[command(subcommand)]
    pub action: BackupAction,
}

#[derive(clap::Subcommand, Debug)]
pub enum BackupAction {
    /// Take a backup now, on the primary.
    Create {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        state: StateDirArg,
        /// full, diff or incr (default incr; the first backup is always full).
        #[arg(long = "type", value_parser = ["full", "diff", "incr"])]
        kind: Option<String>,
    },
    /// List the backups and the recoverable range.
    List {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        state: StateDirArg,
        /// Print JSON.
        #[arg(short = 'o', long, value_parser = ["table", "json"], default_value = "table")]
        output: String,
    },
    /// Check every file of the repository (pgbackrest verify).
    Verify {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        state: StateDirArg,
    },
    /// In a pod (the rendered NAME-backup CronJob): ask the instance managers, through the
    /// headless Service, for a backup; the primary's takes it, the others refuse.
    #[command(hide = true)]
    Request {
        /// The database's database.json (the ConfigMap NAME-config).
        #[arg(long, value_name = "FILE")]
        database: PathBuf,
        /// A file holding the instance managers' API token (never the token itself).
        #[arg(long, value_name = "FILE")]
        token_file: PathBuf,
        /// The CA that signed the instance managers' certificates (spec.tls.enabled), a file
        /// named ca.crt.
        #[arg(long, value_name = "FILE")]
        ca_file: PathBuf,
    },
}

/// Create a new database from another one's backups, recovered to a point in time.
///
/// Fills spec.bootstrap.restoreFrom of NEW.yaml and brings NEW up: its primary is restored
/// from NAME's repository (the newest backup that ended before the target) and recovered to the
/// target, then its replicas clone it. Refuses when NEW exists or is NAME, and when the target
/// lies outside the recoverable range (the error names it); nothing is created then.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  stator restore -f new.yaml --from db --to-time 2026-11-26T12:00:00Z\n  stator restore -f new.yaml --from db --to-lsn 0/3000060\n  stator restore -f new.yaml --from db --to-gtid 0-1000-42   (MariaDB)\n  stator restore -f new.yaml --from db                     to the latest archived WAL (binlog)"
)]
pub struct RestoreArgs {
    /// The new database's spec file.
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    #[command(flatten)]
    pub state: StateDirArg,
    /// The database whose backups are restored (same namespace and repository).
    #[arg(long, value_name = "NAME")]
    pub from: String,
    /// The backup to start from (default: the newest that ended before the target).
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Recover up to this time (RFC 3339, or PostgreSQL's `2026-11-26 12:00:00.1+00`).
    #[arg(long, value_name = "TIME", conflicts_with_all = ["to_lsn", "to_gtid"])]
    pub to_time: Option<String>,
    /// Recover up to this LSN (PostgreSQL).
    #[arg(long, value_name = "LSN", conflicts_with = "to_gtid")]
    pub to_lsn: Option<String>,
    /// Recover up to and including this transaction (MariaDB, e.g. 0-1000-42).
    #[arg(long, value_name = "GTID")]
    pub to_gtid: Option<String>,
    /// How long to wait for the new database, in seconds.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub timeout: u64,
}

pub fn backup(args: BackupArgs) -> CliResult {
    match args.action {
        BackupAction::Request {
            database,
            token_file,
            ca_file,
        } => request(&database, &token_file, &ca_file),
        BackupAction::Create { file, state, kind } => {
            let db = crate::spec_file::load_for(&file, crate::spec_file::Warnings::Quiet)?.database;
            let dir = StateDir::resolve(state.state_dir.clone())
                .open(&db)
                .map_err(failed)?;
            let primary = dir.read_primary();
            let ordinal = stator_local::plan::ordinal_of(&primary).unwrap_or(0);
            let done = stator_local::backup::create(&dir, &db, kind.as_deref(), ordinal)
                .map_err(failed)?;
            println!(
                "backup {} ({}) done on {}: {} bytes in {:.1} s",
                done["label"].as_str().unwrap_or("?"),
                done["kind"].as_str().unwrap_or("?"),
                done["source"].as_str().unwrap_or(&primary),
                done["size"],
                done["durationSeconds"].as_f64().unwrap_or(0.0)
            );
            Ok(ExitCode::SUCCESS)
        }
        BackupAction::List {
            file,
            output,
            state,
        } => {
            let db = crate::spec_file::load_for(&file, crate::spec_file::Warnings::Quiet)?.database;
            let secrets = StateDir::resolve(state.state_dir.clone()).secrets_root(db.namespace());
            let listing = stator_local::backup::list(&db, None, &secrets).map_err(failed)?;
            if output == "json" {
                let range = listing.range.as_ref().map(|r| {
                    serde_json::json!({
                        "earliestTime": r.earliest_time,
                        "latestTime": r.latest_time,
                        "earliestLsn": r.earliest_lsn.to_string(),
                        "latestLsn": r.latest_lsn.map(|l| l.to_string()),
                    })
                });
                let backups = match &listing.mariadb {
                    Some(m) => serde_json::json!(m.backups),
                    None => serde_json::json!(listing.info.backups),
                };
                // MariaDB: the range with its GTIDs, and the binlog archive's terms.
                let range = range.or_else(|| {
                    let r = listing.mariadb.as_ref()?.range.as_ref()?;
                    Some(serde_json::json!(r))
                });
                let terms = listing.mariadb.as_ref().map(|m| serde_json::json!(m.terms));
                let value = serde_json::json!({
                    "backups": backups,
                    "archiveMin": listing.info.archive_min,
                    "archiveMax": listing.info.archive_max,
                    "recoverable": range,
                    "binlogTerms": terms,
                });
                println!(
                    "{}",
                    serde_json::to_string_pretty(&value).unwrap_or_default()
                );
            } else {
                print!("{}", listing.table());
            }
            Ok(ExitCode::SUCCESS)
        }
        BackupAction::Verify { file, state } => {
            let db = crate::spec_file::load_for(&file, crate::spec_file::Warnings::Quiet)?.database;
            let secrets = StateDir::resolve(state.state_dir.clone()).secrets_root(db.namespace());
            let report = stator_local::backup::verify(&db, None, &secrets).map_err(failed)?;
            print!("{report}");
            println!("verify: the repository of {} is intact", db.name());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `stator backup request`: `POST /backups` to each instance manager in turn
/// (`NAME-N.NAME-headless.NAMESPACE.svc`), until one (the primary) takes the backup.
fn request(
    database: &std::path::Path,
    token_file: &std::path::Path,
    ca_file: &std::path::Path,
) -> CliResult {
    let db = crate::spec_file::load_for(database, crate::spec_file::Warnings::Quiet)?.database;
    let token = std::fs::read_to_string(token_file)
        .map_err(|e| CliError::Invalid(format!("--token-file {}: {e}", token_file.display())))?;
    let token = token.trim().to_string();
    if db.spec.tls.enabled {
        // The engine's TLS files are a directory in the cert-manager layout: the CA is `ca.crt`.
        if ca_file.file_name() != Some(std::ffi::OsStr::new(stator_engine::tls::CA_CERT)) {
            return Err(CliError::Invalid(format!(
                "--ca-file {}: expected a file named {}",
                ca_file.display(),
                stator_engine::tls::CA_CERT
            )));
        }
        let dir = ca_file.parent().unwrap_or(std::path::Path::new("."));
        stator_engine::tls::trust_by_default(&stator_engine::tls::TlsFiles::new(dir))
            .map_err(|e| CliError::Invalid(format!("--ca-file {}: {e}", ca_file.display())))?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the runtime: {e}")))?;
    let mut refusals = Vec::new();
    for ordinal in 0..db.spec.instances {
        let host = format!(
            "{}.{}.{}.svc",
            db.instance_name(ordinal),
            db.headless_service_name(),
            db.namespace()
        );
        let answer = runtime.block_on(stator_engine::manager_client::post(
            &host,
            stator_api::names::INSTANCE_MANAGER_PORT,
            "/backups",
            &token,
            "{}",
            Duration::from_secs(6 * 3600),
        ));
        match answer {
            Ok((200, body)) => {
                println!(
                    "backup taken by {}: {}",
                    db.instance_name(ordinal),
                    String::from_utf8_lossy(&body).trim()
                );
                return Ok(ExitCode::SUCCESS);
            }
            Ok((code, body)) => refusals.push(format!(
                "{} (HTTP {code}): {}",
                db.instance_name(ordinal),
                stator_engine::manager_client::answer_text(&body)
            )),
            Err(e) => refusals.push(format!("{}: {e}", db.instance_name(ordinal))),
        }
    }
    Err(CliError::Failed(format!(
        "no instance of {} took the backup:\n  {}",
        db.name(),
        refusals.join("\n  ")
    )))
}

pub fn restore(args: RestoreArgs) -> CliResult {
    let mut db =
        crate::spec_file::load_for(&args.file, crate::spec_file::Warnings::Local)?.database;
    if args.from == db.name() {
        return Err(CliError::Invalid(format!(
            "--from {}: is the database of {} itself; a restore goes into a new database (another metadata.name); nothing was changed",
            args.from,
            args.file.display()
        )));
    }
    let state = StateDir::resolve(args.state.state_dir.clone());
    let dir = state.database_of(&db);
    if dir.spec_file().exists() || dir.marker_file().exists() {
        return Err(CliError::Invalid(format!(
            "{}: the database {} exists already; a restore never touches an existing database (pick another metadata.name, or `stator delete --purge` it first); nothing was changed",
            dir.root.display(),
            dir.key()
        )));
    }
    db.spec.bootstrap.restore_from = Some(stator_api::spec::RestoreFromSpec {
        database: args.from.clone(),
        backup: args.backup.clone(),
        target_time: args.to_time.clone(),
        target_lsn: args.to_lsn.clone(),
        target_gtid: args.to_gtid.clone(),
    });
    let report = stator_api::validate(&db);
    if !report.errors.is_empty() {
        let lines: Vec<String> = report
            .errors
            .iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        return Err(CliError::Invalid(format!(
            "{} (with --from {}): nothing was changed:\n  {}",
            args.file.display(),
            args.from,
            lines.join("\n  ")
        )));
    }
    let options = stator_local::up::UpOptions {
        state,
        foreground: false,
        service_unit_dir: None,
        exe: std::env::current_exe()
            .map_err(|e| CliError::Failed(format!("cannot find the stator binary itself: {e}")))?,
        timeout: Duration::from_secs(args.timeout),
    };
    let outcome = stator_local::up::up(&db, &options).map_err(failed)?;
    println!("{}", stator_local::report::render_table(&outcome.report));
    println!(
        "{} restored from {}; its spec (with spec.bootstrap.restoreFrom) is in {}",
        db.name(),
        args.from,
        dir.spec_file().display()
    );
    Ok(ExitCode::SUCCESS)
}
