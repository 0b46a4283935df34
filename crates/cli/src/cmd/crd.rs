//! `stator crd`: print the CustomResourceDefinition of `Database`.

use std::io::Write;
use std::process::ExitCode;

use crate::error::{CliError, CliResult};

/// Print the CustomResourceDefinition of the Database resource (stator.dev/v1alpha1) as YAML,
/// generated from Stator's own types. Install it once per cluster before applying Databases.
#[derive(clap::Args, Debug)]
#[command(
    after_help = "Examples:\n  stator crd | kubectl apply -f -\n  stator crd > deploy/crd.yaml"
)]
pub struct CrdArgs {}

pub fn run(_args: CrdArgs) -> CliResult {
    let yaml = stator_kube::crd::crd_yaml()
        .map_err(|e| CliError::Failed(format!("cannot serialize the CRD: {e}")))?;
    std::io::stdout()
        .write_all(yaml.as_bytes())
        .map_err(|e| CliError::Failed(format!("cannot write to stdout: {e}")))?;
    Ok(ExitCode::SUCCESS)
}
