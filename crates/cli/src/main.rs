//! `stator`: one binary for the whole project — render, lint, the local runtime, the instance
//! manager and (later) the operator. This crate only parses arguments, loads spec files and
//! reports errors; every subcommand's work lives in the library crates.
//!
//! # Layout
//! - [`cmd`]: one module per subcommand, each with its clap `Args` and a `run` function.
//! - [`error`]: the error type and the exit codes (2 invalid input, 1 failure).
//! - [`spec_file`]: reading a `Database` spec file with messages that name the file.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod error;
mod spec_file;

/// Run PostgreSQL and MySQL/MariaDB as stateful services, from one `Database` spec: locally
/// with real database processes, or on Kubernetes.
#[derive(Parser, Debug)]
#[command(
    name = "stator",
    version,
    propagate_version = true,
    after_help = "Examples:\n  stator up -f examples/postgres-3.yaml      run a 3-instance PostgreSQL cluster here\n  stator render -f db.yaml -o out/           write the Kubernetes manifests\n  stator lint out/                           check manifests against the operations checklist"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = cmd::LogFormat::Human)]
    log_format: cmd::LogFormat,
    /// More detail in logs (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Render(cmd::render::RenderArgs),
    Crd(cmd::crd::CrdArgs),
    Install(cmd::install::InstallArgs),
    Lint(cmd::lint::LintArgs),
    Validate(cmd::validate::ValidateArgs),
    #[command(flatten)]
    Local(cmd::local::LocalCommand),
    Instance(cmd::instance::InstanceArgs),
    Switchover(cmd::switchover::SwitchoverArgs),
    Drain(cmd::switchover::DrainArgs),
    Snapshot(cmd::switchover::SnapshotArgs),
    Chaos(cmd::chaos::ChaosArgs),
    Backup(cmd::backup::BackupArgs),
    Restore(cmd::backup::RestoreArgs),
    Operator(cmd::operator::OperatorArgs),
    /// The dead man's switch of a lease-mode instance manager, which starts it itself.
    #[command(hide = true)]
    Deadman(cmd::instance::DeadmanArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cmd::init_logging(cli.log_format, cli.verbose);
    let result = match cli.command {
        Command::Render(args) => cmd::render::run(args),
        Command::Crd(args) => cmd::crd::run(args),
        Command::Install(args) => cmd::install::run(args),
        Command::Lint(args) => cmd::lint::run(args),
        Command::Validate(args) => cmd::validate::run(args),
        Command::Local(command) => cmd::local::run(command),
        Command::Instance(args) => cmd::instance::run(args),
        Command::Switchover(args) => cmd::switchover::switchover(args),
        Command::Drain(args) => cmd::switchover::drain(args),
        Command::Snapshot(args) => cmd::switchover::snapshot(args),
        Command::Chaos(args) => cmd::chaos::run(args),
        Command::Backup(args) => cmd::backup::backup(args),
        Command::Restore(args) => cmd::backup::restore(args),
        Command::Operator(args) => cmd::operator::run(args),
        Command::Deadman(args) => cmd::instance::deadman(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            e.exit_code()
        }
    }
}
