//! `stator install`: print (or write) what a cluster needs for the Stator operator.

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use stator_kube::install::{DEFAULT_NAMESPACE, InstallError, InstallOptions, install};
use stator_kube::render::DEFAULT_STATOR_IMAGE;

use crate::error::{CliError, CliResult};

/// Print the objects that install the Stator operator: the Database CRD, the operator's
/// Namespace, ServiceAccount, least-privilege RBAC (a ClusterRole for the kinds it manages in
/// every namespace, a Role for its leader-election Lease) and a hardened Deployment.
///
/// The Deployment runs `stator operator` from the image. deploy/ in the repository holds this
/// output (`-o deploy/`).
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    stator install | kubectl apply --server-side -f -\n  \
    stator install --namespace ops --image registry.example/stator:0.1.0 | kubectl apply --server-side -f -\n  \
    stator install -o deploy/ && kubectl apply --server-side -k deploy/")]
pub struct InstallArgs {
    /// Namespace of the operator (created by the install).
    #[arg(short = 'n', long, value_name = "NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// The Stator image (pin a version tag or a digest); the same one `stator render` uses.
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_STATOR_IMAGE)]
    pub image: String,
    /// Write one file per part and a kustomization.yaml into DIR (created if missing; those
    /// files are replaced, others left alone) instead of one YAML stream on stdout.
    #[arg(short = 'o', long = "output", value_name = "DIR")]
    pub output: Option<PathBuf>,
}

pub fn run(args: InstallArgs) -> CliResult {
    let options = InstallOptions {
        namespace: args.namespace,
        image: args.image,
    };
    let objects = install(&options).map_err(install_error)?;
    let Some(dir) = args.output else {
        let stream = objects.to_yaml_stream().map_err(install_error)?;
        std::io::stdout()
            .write_all(stream.as_bytes())
            .map_err(|e| CliError::Failed(format!("cannot write to stdout: {e}")))?;
        return Ok(ExitCode::SUCCESS);
    };
    let files = objects.files().map_err(install_error)?;
    fs::create_dir_all(&dir)
        .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", dir.display())))?;
    for file in &files {
        let path = dir.join(file.name);
        fs::write(&path, &file.contents)
            .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))?;
    }
    eprintln!(
        "wrote the install into {} ({} files)",
        dir.display(),
        files.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn install_error(e: InstallError) -> CliError {
    match e {
        InstallError::InvalidNamespace { .. } | InstallError::InvalidImage { .. } => {
            CliError::Invalid(e.to_string())
        }
        InstallError::Serialize { .. } => CliError::Failed(e.to_string()),
    }
}
