//! `stator render` (being built; see its issue).

use crate::error::{CliError, CliResult};

/// Not yet available.
#[derive(clap::Args, Debug)]
pub struct RenderArgs {}

pub fn run(_args: RenderArgs) -> CliResult {
    Err(CliError::Failed("stator render is not built yet".into()))
}
