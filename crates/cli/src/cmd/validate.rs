//! `stator validate`: check a spec without doing anything.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::error::{CliError, CliResult};

/// Check a Database spec and print its problems, all at once (exit 2 when invalid).
///
/// Where the engine's binaries are installed, `spec.config.parameters` are also checked against
/// the server itself (names and values, with the nearest valid name for a typo). Parameters
/// Stator sets itself (port, listen address, data dir, hba/config files, replication, archiving,
/// include files, …) are refused with the list of them, and so are logging settings that would
/// write statement text (PostgreSQL log_statement other than none, log_min_duration_statement;
/// MariaDB general_log, slow_query_log).
///
/// Example: stator validate -f examples/postgres-3.yaml
#[derive(clap::Args, Debug)]
pub struct ValidateArgs {
    /// The Database spec file (`-` for stdin).
    #[arg(short = 'f', long = "file")]
    pub file: PathBuf,
}

pub fn run(args: ValidateArgs) -> CliResult {
    let loaded = crate::spec_file::load(&args.file)?;
    let db = &loaded.database;
    let shown = args.file.display();
    match stator_local::preflight::find_bin_dir(db.spec.engine, db.version()) {
        Ok(bin_dir) => {
            let problems = stator_local::preflight::parameter_problems(db, &bin_dir)
                .map_err(|e| CliError::Invalid(format!("{shown}: {e}")))?;
            if !problems.is_empty() {
                return Err(CliError::Invalid(format!(
                    "{shown} is not a valid Database spec:\n  {}",
                    problems
                        .iter()
                        .map(|p| format!("{shown}: {p}"))
                        .collect::<Vec<_>>()
                        .join("\n  ")
                )));
            }
        }
        Err(_) if db.spec.config.parameters.is_empty() => {}
        Err(e) => {
            eprintln!("note: {shown}: spec.config.parameters not checked against the server ({e})")
        }
    }
    println!(
        "{}: valid ({} {} with {} instance(s))",
        args.file.display(),
        loaded.database.spec.engine,
        loaded.database.version(),
        loaded.database.spec.instances
    );
    Ok(ExitCode::SUCCESS)
}
