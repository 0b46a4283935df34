//! The local runtime's commands: `up`, `status`, `uri`, `logs`, `down`, `delete` (being built).

use crate::error::{CliError, CliResult};

#[derive(clap::Subcommand, Debug)]
pub enum LocalCommand {
    /// Create or resume a database on this machine (not built yet).
    Up {},
}

pub fn run(_command: LocalCommand) -> CliResult {
    Err(CliError::Failed(
        "the local runtime is not built yet".into(),
    ))
}
