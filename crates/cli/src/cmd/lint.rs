//! `stator lint` (being built; see its issue).

use crate::error::{CliError, CliResult};

/// Not yet available.
#[derive(clap::Args, Debug)]
pub struct LintArgs {}

pub fn run(_args: LintArgs) -> CliResult {
    Err(CliError::Failed("stator lint is not built yet".into()))
}
