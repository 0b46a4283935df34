//! `stator instance`: the instance manager, from a config file (local runtime) or derived from a
//! Database file and the pod's environment (Kubernetes).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use stator_api::Database;
use stator_api::instance::{Bootstrap, Endpoint, InstanceConfig, Peer};
use stator_api::names::INSTANCE_MANAGER_PORT;

use crate::error::{CliError, CliResult};

/// Run the instance manager of one database server: initialize or clone its data directory,
/// start and supervise the server, and serve /healthz, /readyz, /status, /metrics, /promote,
/// /demote and (MariaDB) /backup over HTTP (/promote, /demote and /backup need
/// `Authorization: Bearer` with the api-token secret). Stops the server cleanly on SIGTERM or
/// SIGINT.
#[derive(clap::Args, Debug)]
#[command(
    group(clap::ArgGroup::new("source").required(true).args(["config", "pod"])),
    after_help = "Examples:\n  stator instance --config /var/lib/stator/default/db/db-0.json\n  POD_NAME=db-1 POD_NAMESPACE=prod stator instance --pod --database /etc/stator/database.json\n  POD_NAME=db-1 POD_NAMESPACE=prod stator instance --pod --managed --database /etc/stator/database.json"
)]
pub struct InstanceArgs {
    /// The instance config (JSON `InstanceConfig`), as the local runtime writes it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run as a pod's entrypoint: derive the config from --database and the env POD_NAME
    /// (NAME-N) and POD_NAMESPACE.
    #[arg(long, requires = "database")]
    pub pod: bool,
    /// With --pod, for the operator's pods: never pick a role. An empty data dir is filled only
    /// on POST /bootstrap, a former primary's starts only on POST /role, and POST /fence, DELETE
    /// /fence and POST /rebuild are obeyed (all with the api-token).
    #[arg(long, requires = "pod")]
    pub managed: bool,
    /// With --managed: lease mode. A primary serves only under the operator's write lease
    /// (POST /lease); when it expires the manager kills its server unless every other ordinal's
    /// manager confirms (POST /confirm) that the operator, not the primary, is gone.
    #[arg(long, requires = "managed")]
    pub lease: bool,
    /// The Database (JSON or YAML) the pod belongs to; used with --pod.
    #[arg(long, value_name = "FILE")]
    pub database: Option<PathBuf>,
    /// Where the server's output goes in a pod (`/dev/stderr` for `kubectl logs`).
    #[arg(long, value_name = "FILE", default_value = "/run/stator/server.log")]
    pub server_log: PathBuf,
}

/// `stator deadman --data-dir DIR`: started by a lease-mode instance manager, never by hand
/// (see `stator_instance::deadman`); reads its deadlines on stdin.
#[derive(clap::Args, Debug)]
pub struct DeadmanArgs {
    /// The data directory of the server it guards (a pid that does not serve it is never
    /// killed).
    #[arg(long, value_name = "DIR")]
    pub data_dir: PathBuf,
}

pub fn deadman(args: DeadmanArgs) -> Result<ExitCode, CliError> {
    stator_instance::deadman::run(&args.data_dir, std::io::BufReader::new(std::io::stdin()));
    Ok(ExitCode::SUCCESS)
}

/// Paths inside a pod.
pub const POD_DATA_DIR: &str = "/var/lib/stator/data";
/// A directory the manager creates inside the `run` emptyDir mounted at `/run/stator`: a
/// kubelet makes that mount root-owned (group fsGroup, 2777), which a non-root manager cannot
/// make private (issue 10: "/run/stator: cannot set the mode of"), but its own subdirectory it
/// can.
pub const POD_RUN_DIR: &str = "/run/stator/instance";
/// Where Kubernetes mounts the credentials Secret. Its files are root-owned and group-readable
/// by the pod's fsGroup (the kubelet always adds group read), so they are staged, 0600, into
/// [`POD_SECRETS_DIR`] on the memory-backed run volume before the manager reads them.
pub const POD_MOUNTED_SECRETS_DIR: &str = "/etc/stator/secrets";
/// The staged copy the instance manager reads (owner-only, as everywhere else).
pub const POD_SECRETS_DIR: &str = "/run/stator/secrets";
/// The staged copy of the Secrets `spec.backup` names (mounted, group-readable, under
/// [`stator_api::names::BACKUP_SECRETS_DIR`]): one 0600 file per key, `SECRET/KEY`, which the
/// manager reads (S3 keys, CA, the repository's passphrase) as it reads the local runtime's
/// `STATE/NAMESPACE/.secrets`.
pub const POD_BACKUP_SECRETS_DIR: &str = "/run/stator/backup-secrets";

pub fn run(args: InstanceArgs) -> CliResult {
    let config = if let Some(path) = &args.config {
        read_config(path)?
    } else {
        let path = args
            .database
            .as_deref()
            .ok_or_else(|| CliError::Invalid("--pod needs --database FILE".into()))?;
        let database =
            crate::spec_file::load_for(path, crate::spec_file::Warnings::Quiet)?.database;
        let pod_name = std::env::var("POD_NAME").map_err(|_| {
            CliError::Invalid(
                "--pod: the environment variable POD_NAME (NAME-N, from the downward API) is not set"
                    .into(),
            )
        })?;
        let namespace = std::env::var("POD_NAMESPACE").ok();
        let mut config = pod_instance_config(
            database,
            &pod_name,
            namespace.as_deref(),
            stator_instance::running_as_root(),
            &args.server_log,
        )?;
        if args.lease {
            // The failsafe asks every other ordinal, not only ordinal 0's peers.
            config.peers =
                every_other_ordinal(&config.database, config.ordinal, namespace.as_deref());
        }
        stage_secrets(Path::new(POD_MOUNTED_SECRETS_DIR), &config.secrets_dir)?;
        stage_backup_secrets(
            Path::new(stator_api::names::BACKUP_SECRETS_DIR),
            Path::new(POD_BACKUP_SECRETS_DIR),
        )?;
        config
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))?;
    // Managed: the ordinal-derived bootstrap and peers are not used; the operator's orders are.
    let mode = match (args.managed, args.lease) {
        (true, true) => stator_instance::Mode::Leased,
        (true, false) => stator_instance::Mode::Managed,
        (false, _) => stator_instance::Mode::Plain,
    };
    match runtime.block_on(stator_instance::run_in(config, mode)) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        Err(e @ stator_instance::InstanceError::Config { .. }) => {
            Err(CliError::Invalid(e.to_string()))
        }
        Err(e) => Err(CliError::Failed(e.to_string())),
    }
}

/// Copies every credential file from the Secret mount `from` into `to` (created 0700), each file
/// written 0600 through a temporary name and renamed, so a reader never sees a partial secret.
pub fn stage_secrets(from: &Path, to: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};

    let failed = |what: String| CliError::Failed(format!("staging the pod's secrets: {what}"));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(to)
        .map_err(|e| failed(format!("cannot create {}: {e}", to.display())))?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| failed(format!("cannot restrict {}: {e}", to.display())))?;
    for key in stator_api::names::secret_keys::ALL {
        let source = from.join(key);
        let value = std::fs::read(&source).map_err(|e| {
            failed(format!(
                "cannot read {} ({e}); the credentials Secret must hold the key {key:?}",
                source.display()
            ))
        })?;
        write_private_file(to, key, &value).map_err(failed)?;
    }
    Ok(())
}

/// Copies every Secret mounted under `from` (one directory per Secret, one file per key; the
/// kubelet's hidden `..data` entries skipped) into `to/SECRET/KEY`, the directories 0700 and the
/// files 0600 like [`stage_secrets`]: the mounted files are group-readable (fsGroup), which the
/// manager's reader refuses for a secret. Nothing to do when `from` does not exist (no
/// `spec.backup`).
pub fn stage_backup_secrets(from: &Path, to: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let failed =
        |what: String| CliError::Failed(format!("staging the pod's spec.backup Secrets: {what}"));
    let entries = match std::fs::read_dir(from) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(failed(format!("cannot list {}: {e}", from.display()))),
    };
    let private_dir = |dir: &Path| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .and_then(|()| std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)))
            .map_err(|e| failed(format!("cannot create {}: {e}", dir.display())))
    };
    private_dir(to)?;
    for secret in entries.flatten() {
        let name = secret.file_name();
        if name.to_string_lossy().starts_with('.') || !secret.path().is_dir() {
            continue;
        }
        let staged_dir = to.join(&name);
        private_dir(&staged_dir)?;
        let keys = std::fs::read_dir(secret.path())
            .map_err(|e| failed(format!("cannot list {}: {e}", secret.path().display())))?;
        for key in keys.flatten() {
            let key_name = key.file_name();
            // `..data` and `..TIMESTAMP`: the kubelet's atomic-update machinery, not keys.
            if key_name.to_string_lossy().starts_with("..") || !key.path().is_file() {
                continue;
            }
            let value = std::fs::read(key.path())
                .map_err(|e| failed(format!("cannot read {}: {e}", key.path().display())))?;
            write_private_file(&staged_dir, &key_name.to_string_lossy(), &value).map_err(failed)?;
        }
    }
    Ok(())
}

/// Writes `dir/key` (0600) through a temporary name and a rename, so a reader never sees a
/// partial secret.
fn write_private_file(dir: &Path, key: &str, value: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let staged = dir.join(format!(".{key}.new"));
    let _ = std::fs::remove_file(&staged);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&staged)
        .map_err(|e| format!("cannot write {}: {e}", staged.display()))?;
    file.write_all(value)
        .and_then(|()| file.sync_all())
        .map_err(|e| format!("cannot write {}: {e}", staged.display()))?;
    std::fs::rename(&staged, dir.join(key))
        .map_err(|e| format!("cannot place {}: {e}", dir.join(key).display()))
}

fn read_config(path: &Path) -> Result<InstanceConfig, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::Invalid(format!("{}: cannot read: {e}", path.display())))?;
    serde_json::from_str(&text).map_err(|e| {
        CliError::Invalid(format!(
            "{}: not a valid instance config (JSON InstanceConfig): {e}",
            path.display()
        ))
    })
}

/// The OS user the official image runs the server as (uid 999 in both images).
pub fn server_user_of(engine: stator_api::Engine) -> &'static str {
    if engine.is_mysql_family() {
        "mysql"
    } else {
        "postgres"
    }
}

/// The managers of every ordinal of `database` but `ordinal`, over the headless Service.
pub fn every_other_ordinal(
    database: &Database,
    ordinal: u32,
    namespace: Option<&str>,
) -> Vec<Peer> {
    let namespace = namespace
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| database.namespace());
    (0..database.spec.instances)
        .filter(|o| *o != ordinal)
        .map(|o| Peer {
            server: Endpoint {
                instance: database.instance_name(o),
                host: format!(
                    "{}.{}.{namespace}.svc",
                    database.instance_name(o),
                    database.headless_service_name()
                ),
                port: database.spec.engine.port(),
            },
            http_port: INSTANCE_MANAGER_PORT,
        })
        .collect()
}

/// The instance config of pod `pod_name` (`NAME-N`) of `database`: ordinal 0 starts as the
/// primary, every other ordinal clones `NAME-0` through the headless Service. Ordinal 0 has the
/// other ordinals as peers: with an empty data dir (a lost volume) it initialises only when
/// none of them holds data, and clones otherwise (`stator_instance::peers`).
pub fn pod_instance_config(
    database: Database,
    pod_name: &str,
    namespace: Option<&str>,
    running_as_root: bool,
    server_log: &Path,
) -> Result<InstanceConfig, CliError> {
    let name = database.name().to_string();
    let ordinal = pod_name
        .rsplit_once('-')
        .filter(|(prefix, _)| *prefix == name)
        .and_then(|(_, n)| n.parse::<u32>().ok())
        .ok_or_else(|| {
            CliError::Invalid(format!(
                "POD_NAME {pod_name:?} is not {name}-N (the StatefulSet pod name of the Database {name:?})"
            ))
        })?;
    let namespace = namespace
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| database.namespace())
        .to_string();
    let port = database.spec.engine.port();
    let endpoint = |ordinal: u32| Endpoint {
        instance: database.instance_name(ordinal),
        host: format!(
            "{}.{}.{namespace}.svc",
            database.instance_name(ordinal),
            database.headless_service_name()
        ),
        port,
    };
    let (bootstrap, peers) = if ordinal == 0 {
        (
            Bootstrap::InitPrimary,
            every_other_ordinal(&database, 0, Some(namespace.as_str())),
        )
    } else {
        let upstream = endpoint(0);
        (Bootstrap::CloneFrom { upstream }, Vec::new())
    };
    Ok(InstanceConfig {
        ordinal,
        data_dir: PathBuf::from(POD_DATA_DIR),
        run_dir: PathBuf::from(POD_RUN_DIR),
        secrets_dir: PathBuf::from(POD_SECRETS_DIR),
        // The Secrets spec.backup names, mounted one directory per Secret by the rendered
        // StatefulSet and staged owner-only (the local runtime's STATE/NAMESPACE/.secrets has
        // the same layout).
        secrets_root: Some(PathBuf::from(POD_BACKUP_SECRETS_DIR)),
        log_file: server_log.to_path_buf(),
        listen_address: "0.0.0.0".into(),
        port,
        http_port: INSTANCE_MANAGER_PORT,
        bootstrap,
        server_user: running_as_root.then(|| server_user_of(database.spec.engine).to_string()),
        bin_dir: None,
        peers,
        // The certificate Secret NAME-tls, mounted by the rendered StatefulSet.
        tls_dir: database
            .spec
            .tls
            .enabled
            .then(|| PathBuf::from(stator_kube::render::TLS_DIR)),
        database,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn database() -> Database {
        stator_api::load_database(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: orders\n  namespace: shop\nspec:\n  engine: postgres\n  instances: 3\n",
        )
        .unwrap()
        .database
    }

    fn log() -> PathBuf {
        PathBuf::from("/run/stator/server.log")
    }

    #[test]
    fn without_tls_the_pod_runs_plaintext() {
        let mut db = database();
        db.spec.tls.enabled = false;
        let c = pod_instance_config(db, "orders-1", Some("shop"), false, &log()).unwrap();
        assert_eq!(c.tls_dir, None);
    }

    #[test]
    fn ordinal_zero_initializes_the_primary() {
        let c = pod_instance_config(database(), "orders-0", Some("shop"), false, &log()).unwrap();
        assert_eq!(c.ordinal, 0);
        assert_eq!(c.bootstrap, Bootstrap::InitPrimary);
        assert_eq!(c.port, 5432);
        assert_eq!(c.http_port, 8008);
        assert_eq!(c.listen_address, "0.0.0.0");
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/stator/data"));
        assert_eq!(c.secrets_dir, PathBuf::from("/run/stator/secrets"));
        assert_eq!(c.server_user, None);
        // TLS by default: the rendered StatefulSet mounts NAME-tls there.
        assert_eq!(c.tls_dir, Some(PathBuf::from("/etc/stator/tls")));
        // spec.backup's Secrets: the owner-only copy of what render mounts (one directory per
        // Secret), staged on the run volume.
        assert_eq!(
            c.secrets_root,
            Some(PathBuf::from("/run/stator/backup-secrets"))
        );
        // Before initialising an empty data dir it asks the other ordinals' managers.
        let peers: Vec<(String, u16)> = c
            .peers
            .iter()
            .map(|p| (p.server.host.clone(), p.http_port))
            .collect();
        assert_eq!(
            peers,
            vec![
                ("orders-1.orders-headless.shop.svc".to_string(), 8008),
                ("orders-2.orders-headless.shop.svc".to_string(), 8008)
            ]
        );
    }

    #[test]
    fn in_lease_mode_every_other_ordinal_is_a_peer_to_confirm_the_failsafe() {
        let peers: Vec<String> = every_other_ordinal(&database(), 1, Some("prod"))
            .into_iter()
            .map(|p| format!("{}:{} {}", p.server.host, p.http_port, p.server.instance))
            .collect();
        assert_eq!(
            peers,
            vec![
                "orders-0.orders-headless.prod.svc:8008 orders-0".to_string(),
                "orders-2.orders-headless.prod.svc:8008 orders-2".to_string()
            ]
        );
    }

    #[test]
    fn other_ordinals_clone_ordinal_zero_through_the_headless_service() {
        let c = pod_instance_config(database(), "orders-2", Some("prod"), false, &log()).unwrap();
        assert_eq!(c.ordinal, 2);
        assert_eq!(
            c.bootstrap,
            Bootstrap::CloneFrom {
                upstream: Endpoint {
                    instance: "orders-0".into(),
                    host: "orders-0.orders-headless.prod.svc".into(),
                    port: 5432,
                }
            }
        );
        assert!(c.peers.is_empty(), "a replica clones; it never initialises");
    }

    #[test]
    fn the_namespace_defaults_to_the_database_one() {
        let c = pod_instance_config(database(), "orders-1", None, false, &log()).unwrap();
        let Bootstrap::CloneFrom { upstream } = c.bootstrap else {
            panic!("expected a clone");
        };
        assert_eq!(upstream.host, "orders-0.orders-headless.shop.svc");
    }

    #[test]
    fn a_root_pod_runs_the_server_as_postgres() {
        let c = pod_instance_config(database(), "orders-0", None, true, &log()).unwrap();
        assert_eq!(c.server_user.as_deref(), Some("postgres"));
    }

    #[test]
    fn a_root_mysql_family_pod_runs_the_server_as_mysql() {
        let mut db = database();
        db.spec.engine = stator_api::Engine::Mariadb;
        let c = pod_instance_config(db, "orders-1", None, true, &log()).unwrap();
        assert_eq!(c.server_user.as_deref(), Some("mysql"));
        assert_eq!(c.port, 3306);
    }

    #[test]
    fn a_pod_name_of_another_database_or_without_ordinal_is_refused() {
        for bad in ["users-0", "orders", "orders-x", "orders-", "orders-0-1"] {
            let e = pod_instance_config(database(), bad, None, false, &log()).unwrap_err();
            assert!(e.to_string().contains("POD_NAME"), "{bad}: {e}");
        }
    }

    #[test]
    fn mounted_secrets_are_staged_owner_only_for_the_manager() {
        use stator_api::names::secret_keys;
        use std::os::unix::fs::PermissionsExt;

        let mount = tempfile::tempdir().unwrap();
        for key in secret_keys::ALL {
            let p = mount.path().join(key);
            std::fs::write(&p, format!("value-of-{key}")).unwrap();
            // What the kubelet produces with fsGroup: group-readable, read-only.
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o440)).unwrap();
        }
        let run = tempfile::tempdir().unwrap();
        let staged = run.path().join("secrets");
        stage_secrets(mount.path(), &staged).unwrap();
        let dir_mode = std::fs::metadata(&staged).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        for key in secret_keys::ALL {
            let p = staged.join(key);
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600
            );
            assert_eq!(
                std::fs::read_to_string(&p).unwrap(),
                format!("value-of-{key}")
            );
        }
        // The engine's strict reader accepts the staged copy.
        stator_engine::credentials::Credentials::read(&staged).unwrap();
        // Staging again (a restarted container) replaces the files in place.
        stage_secrets(mount.path(), &staged).unwrap();
    }

    #[test]
    fn mounted_backup_secrets_are_staged_owner_only_so_the_engine_reads_them() {
        use stator_engine::postgres::backrest::{ENCRYPTION_PASSPHRASE, Encryption};
        use std::os::unix::fs::{PermissionsExt, symlink};

        // As the kubelet lays out a Secret volume: keys are symlinks into `..data`, a
        // timestamped directory of group-readable files.
        let mount = tempfile::tempdir().unwrap();
        let secret = mount.path().join("backup-key");
        let data = secret.join("..2026_11_27_00_00_00.1");
        std::fs::create_dir_all(&data).unwrap();
        let file = data.join(ENCRYPTION_PASSPHRASE);
        std::fs::write(&file, "the-passphrase").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o440)).unwrap();
        symlink("..2026_11_27_00_00_00.1", secret.join("..data")).unwrap();
        symlink(
            format!("..data/{ENCRYPTION_PASSPHRASE}"),
            secret.join(ENCRYPTION_PASSPHRASE),
        )
        .unwrap();
        let mounted = Encryption {
            passphrase_file: secret.join(ENCRYPTION_PASSPHRASE),
        };
        assert!(
            mounted.passphrase().is_err(),
            "the mounted, group-readable file is refused as it is"
        );

        let run = tempfile::tempdir().unwrap();
        let staged = run.path().join("backup-secrets");
        stage_backup_secrets(mount.path(), &staged).unwrap();
        let staged_file = staged.join("backup-key").join(ENCRYPTION_PASSPHRASE);
        assert_eq!(
            std::fs::metadata(&staged_file)
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let names: Vec<_> = std::fs::read_dir(staged.join("backup-key"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![ENCRYPTION_PASSPHRASE.to_string()]);
        let passphrase = Encryption {
            passphrase_file: staged_file,
        }
        .passphrase()
        .unwrap();
        assert_eq!(passphrase.expose(), "the-passphrase");
        // Again (a restarted container), and without a mount (no spec.backup): fine.
        stage_backup_secrets(mount.path(), &staged).unwrap();
        stage_backup_secrets(&mount.path().join("none"), &run.path().join("x")).unwrap();
        assert!(!run.path().join("x").exists());
    }

    #[test]
    fn a_secret_missing_from_the_mount_is_named() {
        let mount = tempfile::tempdir().unwrap();
        let run = tempfile::tempdir().unwrap();
        let e = stage_secrets(mount.path(), &run.path().join("s"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("superuser-password"), "{e}");
    }
}
