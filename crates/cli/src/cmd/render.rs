//! `stator render`: a Database spec → its Kubernetes manifests, as files or one YAML stream.

use std::fs::{self, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use stator_kube::render::{
    Credentials, DEFAULT_STATOR_IMAGE, FILE_NAMES, GENERATED_HEADER, ManifestFile, OperatorMode,
    RenderError, RenderOptions, SECRET_FILE, SnapshotOptions, TlsMaterial, render,
};

use crate::error::{CliError, CliResult};

/// Write the Kubernetes objects that run a Database without the operator: ServiceAccount,
/// Secret (generated passwords), ConfigMap, Services (headless, NAME-rw, NAME-ro),
/// PodDisruptionBudget, NetworkPolicy and StatefulSet, one file per kind; with spec.backup (an
/// s3 repository) the CronJob NAME-backup, and with --volume-snapshot a VolumeSnapshot.
///
/// The spec is validated first: an invalid spec exits 2 and writes nothing. The directory is
/// written beside and then moved into place, so it is never left half-written. The Secret
/// holds generated passwords: its file is mode 0600, and it is left out when
/// spec.bootstrap.secretName names an existing Secret.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    stator render -f examples/postgres-3.yaml -o out/ && kubectl apply -f out/\n  \
    stator render -f db.yaml -o - | kubectl apply -f -\n  \
    stator render -f db.yaml -o out/ --stator-image registry.example/stator:0.1.0")]
pub struct RenderArgs {
    /// The Database spec file (`-` for stdin).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Directory to write the files into (created; replaced if it holds only an earlier
    /// render), or `-` for one multi-document YAML stream on stdout.
    #[arg(short = 'o', long = "output", value_name = "DIR|-")]
    pub output: PathBuf,
    /// Image of the init container that provides the `stator` binary to the pods.
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_STATOR_IMAGE)]
    pub stator_image: String,
    /// Operator mode, for checking what the operator applies: the objects owned by the
    /// Database with this `metadata.uid`, pods left to the operator, and the operator admitted
    /// to the instance managers.
    #[arg(long, value_name = "UID", hide = true)]
    pub operator_owner_uid: Option<String>,
    /// Operator mode: the namespace the operator runs in.
    #[arg(long, value_name = "NAMESPACE", hide = true, requires = "operator_owner_uid",
          default_value = stator_kube::install::DEFAULT_NAMESPACE)]
    pub operator_namespace: String,
    /// Also write a CSI VolumeSnapshot of this name (volumesnapshot.yaml) of the last
    /// instance's volume, a replica's when there are two or more instances.
    #[arg(long, value_name = "NAME")]
    pub volume_snapshot: Option<String>,
    /// The VolumeSnapshotClass of --volume-snapshot (default: the cluster's default class).
    #[arg(long, value_name = "CLASS", requires = "volume_snapshot")]
    pub volume_snapshot_class: Option<String>,
    /// Create the instances' volumes from this VolumeSnapshot (the volume claim template's
    /// dataSource): a new database restored from a snapshot of another one's volume.
    #[arg(long, value_name = "NAME")]
    pub restore_from_snapshot: Option<String>,
}

pub fn run(args: RenderArgs) -> CliResult {
    let loaded = crate::spec_file::load_for(&args.file, crate::spec_file::Warnings::Kubernetes)?;
    let db = &loaded.database;
    let options = RenderOptions {
        stator_image: args.stator_image.clone(),
        operator: args
            .operator_owner_uid
            .clone()
            .map(|database_uid| OperatorMode {
                database_uid,
                operator_namespace: args.operator_namespace.clone(),
            }),
        snapshots: SnapshotOptions {
            take: args.volume_snapshot.clone(),
            class: args.volume_snapshot_class.clone(),
            restore_from: args.restore_from_snapshot.clone(),
        },
    };
    // Passwords unless an existing Secret holds them; certificates whenever TLS is on (the
    // default) and no cert-manager issuer makes them: both into secret.yaml, never committed.
    let mut credentials = Credentials::random();
    if db.spec.tls.enabled && db.spec.tls.issuer_ref.is_none() {
        let material = TlsMaterial::issue(db).map_err(|e| {
            CliError::Failed(format!(
                "cannot issue the certificates of {}: {e}",
                db.name()
            ))
        })?;
        credentials = credentials.with_tls(material);
    }
    let credentials = Some(credentials);
    let manifests = render(db, &options, credentials.as_ref()).map_err(render_error)?;
    let shown = format!("{}/{}", db.namespace(), db.name());
    if args.output == Path::new("-") {
        let stream = manifests.to_yaml_stream().map_err(render_error)?;
        std::io::stdout()
            .write_all(stream.as_bytes())
            .map_err(|e| CliError::Failed(format!("cannot write to stdout: {e}")))?;
        if manifests.tls_secret.is_some() {
            eprintln!(
                "warning: the output holds the Secret {} with certificate keys; keep it private",
                stator_kube::render::tls_secret_name(db)
            );
        }
        if manifests.secret.is_some() {
            eprintln!(
                "warning: the output holds the Secret {} with generated passwords; keep it private",
                db.credentials_secret_name()
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let files = manifests.files().map_err(render_error)?;
    check_target(&args.output)?;
    write_directory(&args.output, &files)?;
    eprintln!(
        "rendered Database {shown} into {} ({} files)",
        args.output.display(),
        files.len()
    );
    if files.iter().any(|f| f.holds_secrets) {
        eprintln!(
            "warning: {} holds generated passwords (mode 0600): keep it out of version control, \
             apply it once, and delete it when the database no longer needs it",
            args.output.join(SECRET_FILE).display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn render_error(e: RenderError) -> CliError {
    match e {
        RenderError::InvalidSpec { .. }
        | RenderError::InvalidStatorImage { .. }
        | RenderError::MissingOwnerUid { .. }
        | RenderError::LocalRepository { .. }
        | RenderError::SnapshotsInOperatorMode { .. } => CliError::Invalid(e.to_string()),
        RenderError::MissingCredentials { .. }
        | RenderError::MissingTlsCertificates { .. }
        | RenderError::Serialize { .. } => CliError::Failed(e.to_string()),
    }
}

/// Whether `path` is a file an earlier `stator render` wrote: a known name and the header line.
fn written_by_stator(path: &Path) -> bool {
    let known = path
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| FILE_NAMES.contains(&n));
    if !known || !path.symlink_metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let Ok(file) = fs::File::open(path) else {
        return false;
    };
    let mut first = String::new();
    BufReader::new(file).read_line(&mut first).is_ok() && first.starts_with(GENERATED_HEADER)
}

/// An existing target must be a directory holding nothing but an earlier render.
fn check_target(dir: &Path) -> Result<(), CliError> {
    let meta = match dir.symlink_metadata() {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(CliError::Invalid(format!(
                "-o {}: cannot inspect: {e}",
                dir.display()
            )));
        }
    };
    if !meta.is_dir() {
        return Err(CliError::Invalid(format!(
            "-o {}: exists and is not a directory; name a new or empty directory, or - for stdout",
            dir.display()
        )));
    }
    let entries = fs::read_dir(dir)
        .map_err(|e| CliError::Invalid(format!("-o {}: cannot read: {e}", dir.display())))?;
    let mut foreign: Vec<String> = Vec::new();
    for entry in entries {
        let entry = entry
            .map_err(|e| CliError::Invalid(format!("-o {}: cannot read: {e}", dir.display())))?;
        if !written_by_stator(&entry.path()) {
            foreign.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    if foreign.is_empty() {
        return Ok(());
    }
    foreign.sort();
    Err(CliError::Invalid(format!(
        "-o {}: holds files stator render did not write ({}); name a new or empty directory, \
         or one holding only an earlier render",
        dir.display(),
        foreign.join(", ")
    )))
}

/// `dir`'s parent and a name for a sibling of `dir` that starts with a dot.
fn sibling(dir: &Path, purpose: &str) -> Result<PathBuf, CliError> {
    let name = dir
        .file_name()
        .ok_or_else(|| {
            CliError::Invalid(format!("-o {}: name a directory, e.g. out/", dir.display()))
        })?
        .to_string_lossy()
        .into_owned();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    Ok(parent.join(format!(".{name}.stator-{purpose}-{}", std::process::id())))
}

/// Writes `files` into a fresh directory beside `dir`, then moves it into place: `dir` either
/// keeps its earlier content or holds the complete new render, never a mix.
fn write_directory(dir: &Path, files: &[ManifestFile]) -> Result<(), CliError> {
    let failed = |what: &str, path: &Path, e: std::io::Error| {
        CliError::Failed(format!("cannot {what} {}: {e}", path.display()))
    };
    let staging = sibling(dir, "new")?;
    if let Some(parent) = staging.parent() {
        fs::create_dir_all(parent).map_err(|e| failed("create", parent, e))?;
    }
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(|e| failed("remove", &staging, e))?;
    }
    fs::create_dir(&staging).map_err(|e| failed("create", &staging, e))?;
    let written = write_files(&staging, files).and_then(|()| swap_into_place(&staging, dir));
    if written.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    written
}

fn write_files(staging: &Path, files: &[ManifestFile]) -> Result<(), CliError> {
    let holds_secrets = files.iter().any(|f| f.holds_secrets);
    for file in files {
        let path = staging.join(file.name);
        let mode = if file.holds_secrets { 0o600 } else { 0o644 };
        let mut out = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&path)
            .map_err(|e| CliError::Failed(format!("cannot create {}: {e}", path.display())))?;
        // The mode passed to open is reduced by the umask; set it exactly.
        out.set_permissions(fs::Permissions::from_mode(mode))
            .and_then(|()| out.write_all(file.contents.as_bytes()))
            .and_then(|()| out.sync_all())
            .map_err(|e| CliError::Failed(format!("cannot write {}: {e}", path.display())))?;
    }
    let dir_mode = if holds_secrets { 0o700 } else { 0o755 };
    fs::set_permissions(staging, fs::Permissions::from_mode(dir_mode))
        .map_err(|e| CliError::Failed(format!("cannot set mode of {}: {e}", staging.display())))
}

fn swap_into_place(staging: &Path, dir: &Path) -> Result<(), CliError> {
    let failed = |e: std::io::Error| {
        CliError::Failed(format!(
            "cannot move {} to {}: {e}",
            staging.display(),
            dir.display()
        ))
    };
    if !dir.exists() {
        return fs::rename(staging, dir).map_err(failed);
    }
    let old = sibling(dir, "old")?;
    fs::rename(dir, &old).map_err(failed)?;
    if let Err(e) = fs::rename(staging, dir) {
        let _ = fs::rename(&old, dir);
        return Err(failed(e));
    }
    fs::remove_dir_all(&old).map_err(|e| {
        CliError::Failed(format!(
            "rendered into {}, but cannot remove the earlier render moved to {}: {e}",
            dir.display(),
            old.display()
        ))
    })
}
