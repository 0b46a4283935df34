//! `stator crd` (being built; see its issue).

use crate::error::{CliError, CliResult};

/// Not yet available.
#[derive(clap::Args, Debug)]
pub struct CrdArgs {}

pub fn run(_args: CrdArgs) -> CliResult {
    Err(CliError::Failed("stator crd is not built yet".into()))
}
