//! `stator validate`: check a spec without doing anything.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::error::{CliError, CliResult};
use crate::spec_file::{self, Warnings};

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
    let text = spec_file::read(&args.file)?;
    let loaded = spec_file::load_text(&args.file, &text, Warnings::All);
    // The parameters are checked against the server even when the spec has other problems, so
    // every problem comes at once.
    let database = match &loaded {
        Ok(l) => Some(l.database.clone()),
        Err(_) => stator_api::load::readable_database(&text),
    };
    let shown = args.file.display();
    let problems: Vec<String> = match database {
        Some(db) => parameter_problems(&db)
            .map_err(|e| CliError::Invalid(format!("{shown}: {e}")))?
            .iter()
            .map(|p| format!("{shown}: {p}"))
            .collect(),
        None => Vec::new(),
    };
    match loaded {
        Err(CliError::Invalid(message)) if !problems.is_empty() => Err(CliError::Invalid(format!(
            "{message}\n  {}",
            problems.join("\n  ")
        ))),
        Err(e) => Err(e),
        Ok(_) if !problems.is_empty() => Err(CliError::Invalid(format!(
            "{shown} is not a valid Database spec:\n  {}",
            problems.join("\n  ")
        ))),
        Ok(loaded) => {
            println!(
                "{shown}: valid ({} {} with {} instance(s))",
                loaded.database.spec.engine,
                loaded.database.version(),
                loaded.database.spec.instances
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `spec.config.parameters` against the installed server; a note (and no problem) when its
/// binaries are not installed here.
fn parameter_problems(db: &stator_api::Database) -> Result<Vec<String>, stator_local::LocalError> {
    if db.spec.config.parameters.is_empty() {
        return Ok(Vec::new());
    }
    match stator_local::preflight::find_bin_dir(db.spec.engine, db.version()) {
        Ok(bin_dir) => stator_local::preflight::parameter_problems(db, &bin_dir),
        Err(e) => {
            eprintln!("note: spec.config.parameters not checked against the server ({e})");
            Ok(Vec::new())
        }
    }
}
