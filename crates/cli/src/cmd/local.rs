//! The local runtime's commands: `up`, `status`, `uri`, `logs`, `down`, `delete`, the hidden
//! `supervise` that `up` starts in the background, and `bench local`. Arguments and output only;
//! the work is in `stator_local`.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use stator_local::inspect::{Endpoint, LogKind};
use stator_local::{LocalError, StateDir};

use crate::error::{CliError, CliResult};

/// Exit code of `up --foreground` stopped by Ctrl-C (128 + SIGINT, as shells report it).
const EXIT_INTERRUPTED: u8 = 130;

#[derive(clap::Subcommand, Debug)]
pub enum LocalCommand {
    Up(UpArgs),
    Status(StatusArgs),
    Uri(UriArgs),
    Logs(LogsArgs),
    Down(DownArgs),
    Delete(DeleteArgs),
    #[command(hide = true)]
    Supervise(SuperviseArgs),
    #[command(hide = true)]
    Keep(SuperviseArgs),
    #[command(subcommand)]
    Bench(BenchCommand),
    #[command(subcommand)]
    Tls(TlsCommand),
}

/// The database's TLS certificates.
#[derive(clap::Subcommand, Debug)]
pub enum TlsCommand {
    /// Issue new server and replication certificates from the database's CA now.
    ///
    /// The servers and instance managers pick them up without a restart (PostgreSQL reloads,
    /// MariaDB runs FLUSH SSL); open connections keep theirs, new ones get the new certificate.
    /// The supervisor does the same by itself when a third of their lifetime is left.
    Renew(TlsRenewArgs),
}

#[derive(clap::Args, Debug)]
pub struct TlsRenewArgs {
    /// The Database spec file (`-` for stdin).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    #[command(flatten)]
    pub state: StateDirArg,
}

/// Where local databases keep their state.
#[derive(clap::Args, Debug, Clone)]
pub struct StateDirArg {
    /// State directory (default: /var/lib/stator as root, else $XDG_STATE_HOME/stator or
    /// ~/.local/state/stator). One subdirectory per database: NAMESPACE/NAME.
    #[arg(long, env = "STATOR_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

impl StateDirArg {
    fn resolve(&self) -> StateDir {
        StateDir::resolve(self.state_dir.clone())
    }
}

/// Create or resume a database on this machine and wait until it is ready.
///
/// Runs the instances in ordinal order (NAME-1 starts once NAME-0 is ready), then prints a
/// status table and how to connect. A supervisor keeps running in the background; run `up`
/// again with a changed file to apply it (more instances add replicas, fewer stop the highest
/// ordinals and keep their data dirs).
///
/// spec.config.parameters are checked against the installed server first (a typo is refused
/// with the nearest valid name); settings Stator overrides (port, listen address, data dir,
/// hba/config/include files, replication, archiving, statement logging) are refused with their
/// list. Changed parameters are reloaded where the engine allows it; only what needs a restart
/// rolls through the instances.
///
/// Example: stator up -f examples/postgres-3.yaml
#[derive(clap::Args, Debug)]
pub struct UpArgs {
    /// The Database spec file (`-` for stdin).
    /// The Database spec file (`-` for stdin).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    #[command(flatten)]
    pub state: StateDirArg,
    /// Stay attached: the supervisor runs in this terminal; Ctrl-C stops the database.
    #[arg(long)]
    pub foreground: bool,
    /// Also install a systemd unit that keeps the database running (`systemctl stop
    /// stator-NAMESPACE-NAME` stops it); enabled and started when systemd runs.
    #[arg(long)]
    pub service: bool,
    /// Where --service writes the unit.
    #[arg(long, value_name = "DIR", default_value = stator_local::service::SYSTEM_UNIT_DIR, requires = "service")]
    pub unit_dir: PathBuf,
    /// How long to wait for the database to become ready, in seconds.
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    pub timeout: u64,
}

/// Output format for machines.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Table,
    Json,
    Yaml,
}

/// Show the instances (role, state, pid, port, timeline, position, lag behind the primary:
/// received / replayed, ready), instances removed with their data kept, and where the proxies
/// point.
///
/// Example: stator status -f examples/postgres-3.yaml -o json
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The Database spec file (`-` for stdin).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    #[command(flatten)]
    pub state: StateDirArg,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Ask the cluster (the kubeconfig kubectl uses) instead of the local state dir.
    #[arg(long)]
    pub kube: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum UriEndpoint {
    /// The primary, through the rw proxy.
    Rw,
    /// The ready replicas, through the ro proxy.
    Ro,
}

/// Print a connection URI for the application user, WITH ITS PASSWORD.
///
/// This is the one command that shows a secret: do not paste its output where others can see
/// it. Example: psql "$(stator uri -f db.yaml ro)"
#[derive(clap::Args, Debug)]
pub struct UriArgs {
    /// The Database spec file (`-` for stdin).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    #[command(flatten)]
    pub state: StateDirArg,
    /// Which proxy the URI points at (with --direct: which role the client looks for).
    #[arg(value_enum, default_value_t = UriEndpoint::Rw)]
    pub endpoint: UriEndpoint,
    /// Skip the proxy: a URI of every instance, the client finding the primary (rw) or a
    /// replica (ro) itself (PostgreSQL: libpq multi-host with target_session_attrs; MariaDB:
    /// the Connector/J replication form). Which clients understand it is printed on stderr.
    #[arg(long)]
    pub direct: bool,
    /// Ask the cluster (the kubeconfig kubectl uses) instead of the local state dir.
    #[arg(long)]
    pub kube: bool,
}

/// Print an instance's server log (with --manager: its instance manager's log).
///
/// Example: stator logs -f db.yaml pg-1 --follow
#[derive(clap::Args, Debug)]
pub struct LogsArgs {
    /// The Database spec file (`-` for stdin).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    #[command(flatten)]
    pub state: StateDirArg,
    /// The instance, NAME-N.
    pub instance: String,
    /// Keep printing what is appended.
    #[arg(long)]
    pub follow: bool,
    /// The instance manager's log instead of the server's.
    #[arg(long)]
    pub manager: bool,
}

/// Stop every instance cleanly (fast shutdown, immediate after a timeout), keeping all data.
///
/// `stator up` afterwards brings back the same data and the same primary.
///
/// Example: stator down -f examples/postgres-3.yaml
#[derive(clap::Args, Debug)]
pub struct DownArgs {
    /// The Database spec file (`-` for stdin).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    #[command(flatten)]
    pub state: StateDirArg,
}

/// Stop and remove a database. Its data dirs (and the credentials they need) are kept unless
/// --purge is given.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  stator delete -f examples/postgres-3.yaml           keep the data for a later `up`\n  stator delete -f examples/postgres-3.yaml --purge   remove the data for good"
)]
pub struct DeleteArgs {
    /// The Database spec file (`-` for stdin).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    #[command(flatten)]
    pub state: StateDirArg,
    /// Also remove the data dirs and credentials: the data is gone for good.
    #[arg(long)]
    pub purge: bool,
}

/// The supervisor of one database (started by its keeper), or with `keep` the keeper (started
/// by `stator up`), which restarts the supervisor when it crashes.
#[derive(clap::Args, Debug)]
pub struct SuperviseArgs {
    #[command(flatten)]
    pub state: StateDirArg,
    /// NAMESPACE/NAME.
    #[arg(long)]
    pub database: String,
}

/// Benchmarks that print ratios against a peer run side by side (not tests).
///
/// Example: cargo build --release -p stator && ./target/release/stator bench local
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// The local runtime vs the same steps by hand, and its proxy vs direct and vs HAProxy.
    Local(stator_check::bench::BenchArgs),
    /// Failover write outage: Stator's lost-node and in-place rounds vs Patroni + etcd +
    /// HAProxy at its defaults and tuned (`scripts/bench/patroni_baseline.sh`).
    Failover(stator_check::bench_failover::FailoverBenchArgs),
    /// A full backup and a restore vs pgBackRest by hand with the same settings, and the bytes
    /// stored (PostgreSQL; about 1 GiB by default, `--size-mib`).
    Backup(stator_check::bench_backup::BackupBenchArgs),
    /// The seconds and rows an archive-only restore to the latest point loses when the database
    /// is destroyed under a writer committing every 10 ms, per archiveTimeout (60 s and 5 s).
    Rpo(stator_check::bench_backup::RpoBenchArgs),
}

pub fn run(command: LocalCommand) -> CliResult {
    match command {
        LocalCommand::Up(args) => up(args),
        LocalCommand::Status(args) => status(args),
        LocalCommand::Uri(args) => uri(args),
        LocalCommand::Logs(args) => logs(args),
        LocalCommand::Down(args) => down(args),
        LocalCommand::Delete(args) => delete(args),
        LocalCommand::Supervise(args) => supervise(args, false),
        LocalCommand::Keep(args) => supervise(args, true),
        LocalCommand::Bench(BenchCommand::Failover(args)) => {
            stator_check::bench_failover::run(&args, &current_exe()?)?;
            Ok(ExitCode::SUCCESS)
        }
        LocalCommand::Bench(BenchCommand::Backup(args)) => {
            stator_check::bench_backup::run_backup(&args, &current_exe()?)?;
            Ok(ExitCode::SUCCESS)
        }
        LocalCommand::Bench(BenchCommand::Rpo(args)) => {
            stator_check::bench_backup::run_rpo(&args, &current_exe()?)?;
            Ok(ExitCode::SUCCESS)
        }
        LocalCommand::Tls(TlsCommand::Renew(args)) => tls_renew(args),
        LocalCommand::Bench(BenchCommand::Local(args)) => {
            stator_check::bench::run(&args, &current_exe()?)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

pub(crate) fn failed(e: LocalError) -> CliError {
    if e.is_invalid() {
        CliError::Invalid(e.to_string())
    } else {
        CliError::Failed(e.to_string())
    }
}

fn current_exe() -> Result<PathBuf, CliError> {
    std::env::current_exe()
        .map_err(|e| CliError::Failed(format!("cannot find the stator binary itself: {e}")))
}

fn up(args: UpArgs) -> CliResult {
    let loaded = crate::spec_file::load_for(&args.file, crate::spec_file::Warnings::Local)?;
    let db = loaded.database;
    let options = stator_local::up::UpOptions {
        state: args.state.resolve(),
        foreground: args.foreground,
        service_unit_dir: args.service.then(|| args.unit_dir.clone()),
        exe: current_exe()?,
        timeout: Duration::from_secs(args.timeout),
    };
    let dir = options.state.database_of(&db);
    if args.foreground {
        // Ctrl-C (or SIGTERM) stops the database cleanly, whether it comes while `up` waits
        // or once the database runs.
        stator_local::process::watch_interrupts();
    }
    let outcome = match stator_local::up::up(&db, &options) {
        Ok(outcome) => outcome,
        Err(e) if args.foreground && stator_local::process::interrupted() => {
            eprintln!("{e}");
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
        Err(e) => return Err(failed(e)),
    };
    let file = args.file.display().to_string();
    println!("{}", stator_local::report::render_table(&outcome.report));
    println!("{}", stator_local::up::connection_help(&db, &dir, &file));
    if let Some(mut child) = outcome.foreground {
        let _ = std::io::stdout().flush();
        eprintln!("running in the foreground; Ctrl-C stops the database (its data is kept)");
        // The keeper and supervisor share our terminal and get a Ctrl-C there themselves; a
        // SIGINT or SIGTERM sent to `up` alone is passed on as SIGTERM. Either way the
        // supervisor stops every instance cleanly, as `stator down` does.
        let mut interrupted = false;
        let status = loop {
            if stator_local::process::interrupted() && !interrupted {
                interrupted = true;
                eprintln!("interrupted: stopping {} (fast shutdown)…", dir.key());
                stator_local::process::ask_to_stop(child.id());
            }
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) => {
                    return Err(CliError::Failed(format!(
                        "cannot wait for the supervisor: {e}"
                    )));
                }
            }
        };
        if interrupted || stator_local::process::interrupted() {
            eprintln!(
                "{} stopped; all data kept (`stator up -f {}` starts it again)",
                dir.key(),
                file
            );
            return Ok(ExitCode::from(EXIT_INTERRUPTED));
        }
        if !status.success() {
            return Err(CliError::Failed(format!(
                "the supervisor exited with {status}"
            )));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn status(args: StatusArgs) -> CliResult {
    let db = crate::spec_file::load_for(&args.file, crate::spec_file::Warnings::Quiet)?.database;
    if args.kube {
        return crate::cmd::kube::status(&db, args.output);
    }
    let dir = args.state.resolve().open(&db).map_err(failed)?;
    let report = stator_local::runtime::current_report(&dir, &db).map_err(failed)?;
    let backups = stator_local::backup::status_summary(&dir, &db);
    match args.output {
        Output::Table => {
            print!("{}", stator_local::report::render_table(&report));
            if let Some(b) = &backups {
                print!("{}", stator_local::backup::render_summary(b));
            }
        }
        Output::Json => {
            let mut value = serde_json::to_value(&report)
                .map_err(|e| CliError::Failed(format!("cannot encode the status: {e}")))?;
            if let (Some(b), Some(map)) = (backups, value.as_object_mut()) {
                map.insert("backup".into(), b);
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&value)
                    .map_err(|e| CliError::Failed(format!("cannot encode the status: {e}")))?
            )
        }
        Output::Yaml => print!(
            "{}",
            serde_norway::to_string(&report)
                .map_err(|e| CliError::Failed(format!("cannot encode the status: {e}")))?
        ),
    }
    Ok(ExitCode::SUCCESS)
}

fn uri(args: UriArgs) -> CliResult {
    let db = crate::spec_file::load_for(&args.file, crate::spec_file::Warnings::Quiet)?.database;
    if args.kube {
        return crate::cmd::kube::uri(&db, args.endpoint);
    }
    let dir = args.state.resolve().open(&db).map_err(failed)?;
    let endpoint = match (args.endpoint, args.direct) {
        (UriEndpoint::Rw, false) => Endpoint::Rw,
        (UriEndpoint::Ro, false) => Endpoint::Ro,
        (UriEndpoint::Rw, true) => Endpoint::DirectRw,
        (UriEndpoint::Ro, true) => Endpoint::DirectRo,
    };
    let uri = stator_local::inspect::connection_uri(&db, &dir, endpoint).map_err(failed)?;
    if let Some(note) = &uri.note {
        eprintln!("{note}");
    }
    println!("{}", uri.uri);
    Ok(ExitCode::SUCCESS)
}

fn tls_renew(args: TlsRenewArgs) -> CliResult {
    let db = crate::spec_file::load_for(&args.file, crate::spec_file::Warnings::Quiet)?.database;
    let dir = args.state.resolve().open(&db).map_err(failed)?;
    let validity = stator_local::transport::renew(&db, &dir).map_err(failed)?;
    let days = (validity.not_after - validity.not_before) / 86_400;
    println!(
        "renewed the certificates of {} in {} (valid {days} days); the instances load them without a restart",
        dir.key(),
        dir.tls_dir().display()
    );
    Ok(ExitCode::SUCCESS)
}

fn logs(args: LogsArgs) -> CliResult {
    let db = crate::spec_file::load_for(&args.file, crate::spec_file::Warnings::Quiet)?.database;
    let dir = args.state.resolve().open(&db).map_err(failed)?;
    let kind = if args.manager {
        LogKind::Manager
    } else {
        LogKind::Server
    };
    let path = stator_local::inspect::log_path(&dir, &db, &args.instance, kind).map_err(failed)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    stator_local::inspect::copy_log(&path, args.follow, &mut out).map_err(failed)?;
    Ok(ExitCode::SUCCESS)
}

fn down(args: DownArgs) -> CliResult {
    let db = crate::spec_file::load_for(&args.file, crate::spec_file::Warnings::Quiet)?.database;
    let dir = args.state.resolve().open(&db).map_err(failed)?;
    eprintln!("stopping {} (fast shutdown)…", dir.key());
    let stopped = stator_local::stop::down(&dir).map_err(failed)?;
    for orphan in &stopped.orphans {
        eprintln!("stopped {orphan}, which ran without a supervisor");
    }
    println!(
        "{} stopped; all data kept in {} (`stator up -f {}` starts it again)",
        dir.key(),
        dir.root.display(),
        args.file.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn delete(args: DeleteArgs) -> CliResult {
    let db = crate::spec_file::load_for(&args.file, crate::spec_file::Warnings::Quiet)?.database;
    let dir = args.state.resolve().open(&db).map_err(failed)?;
    let deleted = stator_local::stop::delete(&dir, args.purge).map_err(failed)?;
    if args.purge {
        println!(
            "{} deleted with its data ({} removed)",
            dir.key(),
            dir.root.display()
        );
    } else {
        let kept: Vec<String> = deleted
            .kept
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        println!(
            "{} deleted; kept its data dirs ({}) and credentials in {} — `stator up` reuses them, `stator delete --purge` removes them",
            dir.key(),
            if kept.is_empty() {
                "none".into()
            } else {
                kept.join(", ")
            },
            dir.root.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn supervise(args: SuperviseArgs, keeper: bool) -> CliResult {
    let Some((namespace, name)) = args.database.split_once('/') else {
        return Err(CliError::Invalid(format!(
            "--database {:?}: expected NAMESPACE/NAME",
            args.database
        )));
    };
    let dir = args.state.resolve().database(namespace, name);
    if keeper {
        stator_local::keeper::run(dir, current_exe()?).map_err(failed)?;
    } else {
        stator_local::supervisor::run(dir, current_exe()?).map_err(failed)?;
    }
    Ok(ExitCode::SUCCESS)
}
