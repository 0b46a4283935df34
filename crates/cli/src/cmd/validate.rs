//! `stator validate`: check a spec without doing anything.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::error::CliResult;

/// Check a Database spec and print its problems, all at once (exit 2 when invalid).
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
    println!(
        "{}: valid ({} {} with {} instance(s))",
        args.file.display(),
        loaded.database.spec.engine,
        loaded.database.version(),
        loaded.database.spec.instances
    );
    Ok(ExitCode::SUCCESS)
}
