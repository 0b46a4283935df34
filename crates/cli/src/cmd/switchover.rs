//! `stator switchover` and `stator drain`: planned moves of the primary on a local database.
//! Arguments and output only; the work is in `stator_local::switchover`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use stator_failover::{SwitchoverTicket, TicketState};
use stator_local::{LocalError, StateDir};

use crate::cmd::local::StateDirArg;
use crate::error::{CliError, CliResult};

/// Move the primary to a replica without losing a write (planned switchover).
///
/// The primary stops taking writes (`rw` has no target), the target catches up with its final
/// position, is promoted, `rw` points at it, and the old primary rejoins as a replica. Prints
/// how long `rw` had no writable target. Without --to, the most advanced replica is chosen.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  stator switchover -f examples/postgres-3.yaml               to the most advanced replica\n  stator switchover -f examples/postgres-3.yaml --to pg-2     to pg-2"
)]
pub struct SwitchoverArgs {
    /// The Database spec file (`-` for stdin).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    #[command(flatten)]
    pub state: StateDirArg,
    /// The replica to promote, NAME-N.
    #[arg(long, value_name = "NAME-N")]
    pub to: Option<String>,
    /// How long to wait for the switchover to finish, in seconds.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub timeout: u64,
    /// Ask the cluster (the kubeconfig kubectl uses) instead of the local state dir.
    #[arg(long)]
    pub kube: bool,
}

/// Stop one instance for maintenance, honouring the disruption budget (like `kubectl drain`).
///
/// Refuses while another instance is unavailable (maxUnavailable: 1). A primary is first moved
/// away by a switchover. The instance then stops and stays stopped until
/// `stator drain --uncordon` (or the next `stator up`) lets it run again, as a replica.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  stator drain -f examples/postgres-3.yaml pg-0              stop pg-0 (a switchover first if it is the primary)\n  stator drain -f examples/postgres-3.yaml pg-0 --uncordon   let pg-0 run again"
)]
pub struct DrainArgs {
    /// The Database spec file (`-` for stdin).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    #[command(flatten)]
    pub state: StateDirArg,
    /// The instance, NAME-N.
    pub instance: String,
    /// Undo a drain: let the instance run again.
    #[arg(long)]
    pub uncordon: bool,
    /// How long to wait for the switchover and the stop, in seconds.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub timeout: u64,
}

/// Copy a replica's data dir, consistently: the local runtime's VolumeSnapshot.
///
/// The replica is drained (it leaves the ro route and its server stops cleanly), its data dir
/// is copied with `cp -a --reflink=auto` into the database's snapshots/ directory, and it is
/// uncordoned and back in the ro route before this returns. Refuses the primary (a running
/// server's data dir is never copied) and a database with one instance.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  stator snapshot -f examples/postgres-3.yaml                  the replica with the highest ordinal\n  stator snapshot -f examples/postgres-3.yaml --instance pg-1"
)]
pub struct SnapshotArgs {
    /// The Database spec file (`-` for stdin).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
    #[command(flatten)]
    pub state: StateDirArg,
    /// The replica to copy, NAME-N (default: the replica with the highest ordinal).
    #[arg(long, value_name = "NAME-N")]
    pub instance: Option<String>,
    /// How long to wait for the stop, and for the return to the ro route, in seconds.
    #[arg(long, default_value_t = 120, value_name = "SECONDS")]
    pub timeout: u64,
}

pub fn snapshot(args: SnapshotArgs) -> CliResult {
    let db = crate::spec_file::load_for(&args.file, crate::spec_file::Warnings::Quiet)?.database;
    let dir = StateDir::resolve(args.state.state_dir.clone())
        .open(&db)
        .map_err(failed)?;
    let taken = stator_local::snapshot::snapshot(
        &dir,
        &db,
        args.instance.as_deref(),
        Duration::from_secs(args.timeout),
    )
    .map_err(failed)?;
    println!(
        "snapshot of {} in {} ({} out of the ro route for {:.1} s{})",
        taken.instance,
        taken.path.display(),
        taken.instance,
        taken.out_of_route.as_secs_f64(),
        if taken.uncordoned {
            ""
        } else {
            "; it was drained before and stays drained"
        }
    );
    Ok(ExitCode::SUCCESS)
}

fn failed(e: LocalError) -> CliError {
    if e.is_invalid() {
        CliError::Invalid(e.to_string())
    } else {
        CliError::Failed(e.to_string())
    }
}

fn describe(ticket: &SwitchoverTicket) -> String {
    format!(
        "{} -> {}{}",
        ticket.from.as_deref().unwrap_or("?"),
        ticket.primary.as_deref().unwrap_or("?"),
        match ticket.outage.describe() {
            d if d.is_empty() => d,
            d => format!("; write outage: {d}"),
        }
    )
}

pub fn switchover(args: SwitchoverArgs) -> CliResult {
    let db = crate::spec_file::load_for(&args.file, crate::spec_file::Warnings::Quiet)?.database;
    if args.kube {
        return crate::cmd::kube::switchover(
            &db,
            args.to.as_deref(),
            Duration::from_secs(args.timeout),
        );
    }
    let dir = StateDir::resolve(args.state.state_dir.clone())
        .open(&db)
        .map_err(failed)?;
    let ticket = stator_local::switchover::switchover(
        &dir,
        &db,
        args.to.as_deref(),
        Duration::from_secs(args.timeout),
    )
    .map_err(failed)?;
    match ticket.state {
        TicketState::Done => {
            println!("switchover done: {}", describe(&ticket));
            Ok(ExitCode::SUCCESS)
        }
        _ => Err(CliError::Failed(ticket.outcome())),
    }
}

pub fn drain(args: DrainArgs) -> CliResult {
    let db = crate::spec_file::load_for(&args.file, crate::spec_file::Warnings::Quiet)?.database;
    let dir = StateDir::resolve(args.state.state_dir.clone())
        .open(&db)
        .map_err(failed)?;
    if args.uncordon {
        let was = stator_local::switchover::uncordon(&dir, &db, &args.instance).map_err(failed)?;
        if was {
            println!(
                "{} uncordoned: the supervisor starts it again (as a replica of the primary)",
                args.instance
            );
        } else {
            println!("{} was not drained; nothing to do", args.instance);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let drained = stator_local::switchover::drain(
        &dir,
        &db,
        &args.instance,
        Duration::from_secs(args.timeout),
    )
    .map_err(failed)?;
    if drained.already {
        println!(
            "{} is already drained (`--uncordon` lets it run again)",
            drained.instance
        );
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(ticket) = &drained.switchover {
        println!("switchover done first: {}", describe(ticket));
    }
    println!(
        "{} drained: stopped, and kept stopped until `stator drain -f {} {} --uncordon` or `stator up`",
        drained.instance,
        args.file.display(),
        drained.instance
    );
    Ok(ExitCode::SUCCESS)
}
