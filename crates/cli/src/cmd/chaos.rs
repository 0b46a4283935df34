//! `stator chaos`: fault injection into a local database (`kill`, `stop`, `resume`) and the
//! consistency checker that fails the primary again and again under writes (`run`).
//! Arguments and output only; the work is in `stator_local::chaos` and `stator_check::checker`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use stator_check::checker::{self, CheckOptions};
use stator_check::{Fault, LocalTarget};
use stator_local::chaos::{self, Injected};
use stator_local::{LocalError, StateDir};

use crate::error::{CliError, CliResult};

/// Inject faults into a local database, or check that failovers lose no acknowledged write.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  stator chaos kill -f db.yaml pg-0                 kill -9 pg-0's server (its manager restarts it)\n  stator chaos stop -f db.yaml pg-0 --node          hang pg-0 whole (manager and server)\n  stator chaos resume -f db.yaml pg-0               let it run again\n  stator chaos run -f db.yaml --failovers 20        writer + watcher + 20 failed primaries"
)]
pub struct ChaosArgs {
    #[command(subcommand)]
    pub command: ChaosCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum ChaosCommand {
    /// `kill -9` of an instance's database server (with --node: of its instance manager too).
    Kill(FaultArgs),
    /// SIGSTOP of an instance's server and all its processes: a hang (with --node: the
    /// instance manager too, as a lost node). `resume` ends it.
    Stop(FaultArgs),
    /// SIGCONT of whatever `stop` stopped in an instance.
    Resume(TargetArgs),
    /// The consistency checker: writes through rw, fails the primary round after round,
    /// probes every instance for writability, then reports lost writes, moments with two
    /// writable instances and the write outage per failover. Exits 1 unless all is well.
    ///
    /// It writes to the table `stator_chaos` in the application database and drops it at the
    /// end, also when the run fails or is aborted.
    Run(RunArgs),
}

/// Output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChaosOutput {
    Text,
    Json,
}

#[derive(clap::Args, Debug)]
pub struct TargetArgs {
    /// The Database spec file (`-` for stdin).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// State directory (as for `stator up`).
    #[arg(long, env = "STATOR_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// The instance, NAME-N.
    pub instance: String,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ChaosOutput::Text)]
    pub output: ChaosOutput,
}

#[derive(clap::Args, Debug)]
pub struct FaultArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Also the instance's manager: the whole node is lost (kill) or hangs (stop).
    #[arg(long)]
    pub node: bool,
}

#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The Database spec file (`-` for stdin); the database must be running (`stator up`).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    /// State directory (as for `stator up`).
    #[arg(long, env = "STATOR_STATE_DIR", value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Failovers to make: each round fails the current primary, waits for writes to resume
    /// and for the cluster to be Ready again. A round after which the primary came back in
    /// place (a killed node restarted within the detection timeout) is not a failover: it is
    /// reported as such and another round follows.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub failovers: u32,
    /// The fault: kill (kill -9 of the server), kill-node (and of its manager), stop (SIGSTOP
    /// of the server's processes, resumed once writes resumed elsewhere), stop-node (and its
    /// manager).
    #[arg(long, value_enum, default_value_t = Fault::Stop)]
    pub fault: Fault,
    /// Seconds a round may take to get a write acknowledged, and then to be Ready again.
    #[arg(long, default_value_t = 180, value_name = "SECONDS",
          value_parser = clap::value_parser!(u64).range(5..=3600))]
    pub round_timeout: u64,
    /// Seed of the random pause (0.5–2 s) before each fault.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(short = 'o', long = "output", value_enum, default_value_t = ChaosOutput::Text)]
    pub output: ChaosOutput,
}

pub fn run(args: ChaosArgs) -> CliResult {
    match args.command {
        ChaosCommand::Kill(a) => inject(a, false),
        ChaosCommand::Stop(a) => inject(a, true),
        ChaosCommand::Resume(a) => {
            let dir = database_dir(&a.file, a.state_dir.clone())?;
            let done = chaos::resume(&dir, &a.instance).map_err(failed)?;
            print_injected(&done, a.output)
        }
        ChaosCommand::Run(a) => check(a),
    }
}

fn database_dir(
    file: &std::path::Path,
    state_dir: Option<PathBuf>,
) -> Result<stator_local::DatabaseDir, CliError> {
    let db = crate::spec_file::load_for(file, crate::spec_file::Warnings::Quiet)?.database;
    StateDir::resolve(state_dir).open(&db).map_err(failed)
}

fn inject(a: FaultArgs, hang: bool) -> CliResult {
    let t = &a.target;
    let dir = database_dir(&t.file, t.state_dir.clone())?;
    let done = if hang {
        chaos::stop(&dir, &t.instance, a.node)
    } else {
        chaos::kill(&dir, &t.instance, a.node)
    }
    .map_err(failed)?;
    print_injected(&done, t.output)
}

fn print_injected(done: &Injected, output: ChaosOutput) -> CliResult {
    match output {
        ChaosOutput::Text => println!("{}", done.summary()),
        ChaosOutput::Json => println!("{}", to_json(done)?),
    }
    Ok(ExitCode::SUCCESS)
}

fn check(a: RunArgs) -> CliResult {
    let dir = database_dir(&a.file, a.state_dir.clone())?;
    let options = CheckOptions {
        failovers: a.failovers,
        fault: a.fault,
        round_timeout: Duration::from_secs(a.round_timeout),
        seed: a.seed,
        ..CheckOptions::default()
    };
    let progress = |line: &str| eprintln!("{line}");
    let report = checker::check(&LocalTarget::open(&dir)?, &options, &progress)?;
    match a.output {
        ChaosOutput::Text => print!("{}", report.render()),
        ChaosOutput::Json => println!("{}", to_json(&report)?),
    }
    Ok(if report.passed() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(crate::error::EXIT_FAILED)
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<String, CliError> {
    serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Failed(format!("cannot encode the result: {e}")))
}

fn failed(e: LocalError) -> CliError {
    if e.is_invalid() {
        CliError::Invalid(e.to_string())
    } else {
        CliError::Failed(e.to_string())
    }
}
