//! `stator instance` (being built; see its issue).

use crate::error::{CliError, CliResult};

/// Not yet available.
#[derive(clap::Args, Debug)]
pub struct InstanceArgs {}

pub fn run(_args: InstanceArgs) -> CliResult {
    Err(CliError::Failed("stator instance is not built yet".into()))
}
