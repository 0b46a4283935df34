//! `spec.backup` on Kubernetes: the repository's Secrets mounted into the pods as files, the
//! `NAME-backup` CronJob that asks the primary's instance manager for a backup (plain mode; the
//! operator schedules backups itself), the NetworkPolicy egress to the repository, and CSI
//! VolumeSnapshots (a snapshot of a replica's volume, volumes restored from one).
//!
//! Only an S3 repository can be rendered: `repository.local` is a directory of the local
//! runtime's machine, which no pod can reach.
//!
//! # Where a pod finds the repository's Secrets
//! Each Secret the spec names (`repository.s3.credentialsSecretName`, `repository.s3.caSecretName`,
//! `encryption.secretName`) is mounted read-only at [`BACKUP_SECRETS_DIR`]`/SECRET_NAME/`, one
//! file per key, mode 0400 (the kubelet adds the group's read bit for the pod's `fsGroup`, which
//! is how the non-root instance manager reads them). The instance manager reads
//! `spec.backup` from its `database.json`, copies these files owner-only onto its run volume
//! (`stator instance --pod`: it refuses a secret file others may read) and writes the keys only
//! into its 0600 `pgbackrest.conf`: never an environment variable, never a literal here.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{CronJob, CronJobSpec, JobSpec, JobTemplateSpec};
use k8s_openapi::api::core::v1::{
    Container, KeyToPath, PodSecurityContext, PodSpec, PodTemplateSpec, SecretVolumeSource,
    TypedLocalObjectReference, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use stator_api::Database;
use stator_api::names::secret_keys;
use stator_api::spec::{BackupSpec, Engine, S3Repository};

use super::config::DATABASE_JSON_KEY;
use super::meta::{labels, object_meta};
use super::tls::tls_secret_name;
use super::{RenderError, RenderOptions};
use crate::container::{hardened_security_context, mount, resources_of, runtime_default_seccomp};

/// Root of the repository's Secrets in a pod: one directory per Secret, named after it.
pub use stator_api::names::BACKUP_SECRETS_DIR;
/// Mode of the repository's key files.
pub const BACKUP_SECRET_FILE_MODE: i32 = 0o400;
/// Where the init container puts `pgbackrest` (PostgreSQL with `spec.backup`).
pub const PGBACKREST_BIN: &str = "/stator/pgbackrest";
/// Where `pgbackrest` is inside the Stator image.
pub const STATOR_IMAGE_PGBACKREST: &str = "/usr/bin/pgbackrest";
/// `app.kubernetes.io/component` of the backup CronJob's pods (never the database's, so that
/// no Service, PodDisruptionBudget or NetworkPolicy of the database selects them).
pub const BACKUP_COMPONENT: &str = "backup";
/// Where the backup job finds the API token (the credentials Secret's `api-token` key only).
pub const BACKUP_TOKEN_DIR: &str = "/etc/stator/token";
/// Where the backup job finds the CA that signed the instance managers' certificates.
pub const BACKUP_CA_DIR: &str = "/etc/stator/ca";
/// The config map's mount point in the backup job.
const JOB_CONFIG_DIR: &str = "/etc/stator/config";
/// `apiVersion` of CSI VolumeSnapshots.
pub const VOLUME_SNAPSHOT_API_VERSION: &str = "snapshot.storage.k8s.io/v1";
const VOLUME_SNAPSHOT_GROUP: &str = "snapshot.storage.k8s.io";

/// The S3 repository of `db`'s `spec.backup`; `None` without `spec.backup`. A `local`
/// repository is refused: no pod can reach a directory of the local runtime's machine.
pub fn s3_repository(db: &Database) -> Result<Option<&S3Repository>, RenderError> {
    let Some(backup) = &db.spec.backup else {
        return Ok(None);
    };
    match &backup.repository.s3 {
        Some(s3) => Ok(Some(s3)),
        None => Err(RenderError::LocalRepository {
            name: db.name().to_string(),
        }),
    }
}

/// The Secrets the pods mount under [`BACKUP_SECRETS_DIR`], in a fixed order, without repeats.
fn secret_names(backup: &BackupSpec, s3: &S3Repository) -> Vec<String> {
    let mut names = vec![s3.credentials_secret_name.clone()];
    names.extend(s3.ca_secret_name.clone());
    names.extend(backup.encryption.as_ref().map(|e| e.secret_name.clone()));
    let mut seen = std::collections::BTreeSet::new();
    names.retain(|n| seen.insert(n.clone()));
    names
}

/// Each Secret of [`secret_names`] with its volume's name (`backup-secret-N`); empty without
/// `spec.backup`.
fn repository_secrets(db: &Database) -> Vec<(String, String)> {
    let (Some(backup), Ok(Some(s3))) = (&db.spec.backup, s3_repository(db)) else {
        return Vec::new();
    };
    secret_names(backup, s3)
        .into_iter()
        .enumerate()
        .map(|(i, name)| (format!("backup-secret-{i}"), name))
        .collect()
}

/// The database pods' volumes for the repository's Secrets (empty without `spec.backup`).
pub fn repository_volumes(db: &Database) -> Vec<Volume> {
    repository_secrets(db)
        .into_iter()
        .map(|(volume, secret)| Volume {
            name: volume,
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret),
                default_mode: Some(BACKUP_SECRET_FILE_MODE),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        })
        .collect()
}

/// The database container's mounts of [`repository_volumes`]: each at
/// [`BACKUP_SECRETS_DIR`]`/SECRET`, read-only.
pub fn repository_mounts(db: &Database) -> Vec<VolumeMount> {
    repository_secrets(db)
        .into_iter()
        .map(|(volume, secret)| mount(&volume, &format!("{BACKUP_SECRETS_DIR}/{secret}"), true))
        .collect()
}

/// PostgreSQL with backups: the init container also copies `pgbackrest` (the official postgres
/// image has none) next to the `stator` binary.
pub fn copies_pgbackrest(db: &Database) -> bool {
    db.spec.backup.is_some() && db.spec.engine == Engine::Postgres
}

/// The port of the repository's endpoint (`host:port`), for the NetworkPolicy's egress.
pub fn repository_port(db: &Database) -> Option<u16> {
    let s3 = s3_repository(db).ok().flatten()?;
    s3.endpoint.rsplit_once(':')?.1.parse().ok()
}

/// The labels of the backup job's pods: the database's, with the component `backup`.
pub fn backup_job_labels(db: &Database) -> BTreeMap<String, String> {
    let mut labels = labels(db);
    labels.insert(
        stator_api::names::LABEL_COMPONENT.to_string(),
        BACKUP_COMPONENT.to_string(),
    );
    // `stator.dev/database` selects the database's pods: the job's pods must not carry it.
    labels.remove(stator_api::names::LABEL_DATABASE);
    labels
}

/// The CronJob's name: `NAME-backup`.
pub fn cron_job_name(db: &Database) -> String {
    format!("{}-backup", db.name())
}

/// The command of the backup job: `stator backup request`, which asks each instance manager in
/// turn for a backup until the primary takes it.
pub fn backup_job_command() -> Vec<String> {
    [
        super::STATOR_IMAGE_BINARY,
        "backup",
        "request",
        "--database",
        &format!("{JOB_CONFIG_DIR}/{DATABASE_JSON_KEY}"),
        "--token-file",
        &format!("{BACKUP_TOKEN_DIR}/{}", secret_keys::API_TOKEN),
        "--ca-file",
        &format!("{BACKUP_CA_DIR}/ca.crt"),
    ]
    .into_iter()
    .map(str::to_string)
    .collect()
}

/// `NAME-backup`: on `spec.backup.schedule` (UTC), one pod of the Stator image asks the
/// primary's instance manager for a backup (`POST /backups`, with the API token read from a
/// 0400 file). Never two at once (`Forbid`); a run missed by more than an hour is skipped,
/// so missed runs never come as a burst. Plain mode only: the operator schedules backups.
pub fn render_cron_job(db: &Database, options: &RenderOptions) -> Option<CronJob> {
    let backup = db.spec.backup.as_ref()?;
    if options.operator.is_some() {
        return None;
    }
    let uid = db.spec.engine.uid();
    let mut volumes = vec![
        super::statefulset::config_volume(db),
        one_key_volume(
            "token",
            &db.credentials_secret_name(),
            secret_keys::API_TOKEN,
        ),
    ];
    let mut mounts = vec![
        mount("config", JOB_CONFIG_DIR, true),
        mount("token", BACKUP_TOKEN_DIR, true),
    ];
    if db.spec.tls.enabled {
        volumes.push(one_key_volume("ca", &tls_secret_name(db), "ca.crt"));
        mounts.push(mount("ca", BACKUP_CA_DIR, true));
    }
    let pod = PodSpec {
        service_account_name: Some(db.name().to_string()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        restart_policy: Some("Never".into()),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(uid),
            run_as_group: Some(uid),
            fs_group: Some(uid),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..PodSecurityContext::default()
        }),
        containers: vec![Container {
            name: "backup".into(),
            image: Some(options.stator_image.clone()),
            image_pull_policy: Some("IfNotPresent".into()),
            command: Some(backup_job_command()),
            resources: Some(resources_of(("50m", "32Mi"), ("200m", "128Mi"))),
            security_context: Some(hardened_security_context(uid)),
            volume_mounts: Some(mounts),
            ..Container::default()
        }],
        volumes: Some(volumes),
        ..PodSpec::default()
    };
    let job_labels = backup_job_labels(db);
    let mut meta = object_meta(db, cron_job_name(db));
    meta.labels = Some(job_labels.clone());
    Some(CronJob {
        metadata: meta,
        spec: Some(CronJobSpec {
            schedule: backup.schedule.clone(),
            time_zone: Some("Etc/UTC".into()),
            concurrency_policy: Some("Forbid".into()),
            starting_deadline_seconds: Some(3600),
            successful_jobs_history_limit: Some(3),
            failed_jobs_history_limit: Some(3),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(job_labels.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(JobSpec {
                    backoff_limit: Some(2),
                    active_deadline_seconds: Some(6 * 3600),
                    template: PodTemplateSpec {
                        metadata: Some(ObjectMeta {
                            labels: Some(job_labels),
                            ..ObjectMeta::default()
                        }),
                        spec: Some(pod),
                    },
                    ..JobSpec::default()
                }),
            },
            ..CronJobSpec::default()
        }),
        status: None,
    })
}

/// A Secret volume holding one key of `secret`, mode 0400.
fn one_key_volume(name: &str, secret: &str, key: &str) -> Volume {
    Volume {
        name: name.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(BACKUP_SECRET_FILE_MODE),
            items: Some(vec![KeyToPath {
                key: key.into(),
                path: key.into(),
                mode: None,
            }]),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// A CSI `VolumeSnapshot` (`snapshot.storage.k8s.io/v1`; the external snapshotter's CRD, not a
/// k8s-openapi type).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshot {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: VolumeSnapshotSpec,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_snapshot_class_name: Option<String>,
    pub source: VolumeSnapshotSource,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSnapshotSource {
    pub persistent_volume_claim_name: String,
}

/// Which VolumeSnapshots a render emits and restores from (render options, not spec).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnapshotOptions {
    /// Emit a VolumeSnapshot of this name, of the last instance's volume (a replica's when the
    /// database has more than one instance).
    pub take: Option<String>,
    /// The VolumeSnapshotClass of the snapshot taken (unset: the cluster's default).
    pub class: Option<String>,
    /// Create every instance's volume from this VolumeSnapshot (the PVC template's `dataSource`).
    pub restore_from: Option<String>,
}

/// The VolumeSnapshot `options.take` asks for: of `data-NAME-(instances-1)`, the highest
/// ordinal, which is a replica whenever there is more than one instance (the first primary is
/// ordinal 0). A snapshot of a running replica is crash-consistent: the server recovers it as
/// after a power loss.
pub fn render_volume_snapshot(db: &Database, options: &SnapshotOptions) -> Option<VolumeSnapshot> {
    let name = options.take.clone()?;
    let ordinal = db.spec.instances.saturating_sub(1);
    Some(VolumeSnapshot {
        api_version: VOLUME_SNAPSHOT_API_VERSION.into(),
        kind: "VolumeSnapshot".into(),
        metadata: object_meta(db, name),
        spec: VolumeSnapshotSpec {
            volume_snapshot_class_name: options.class.clone(),
            source: VolumeSnapshotSource {
                persistent_volume_claim_name: format!(
                    "{}-{}-{ordinal}",
                    super::statefulset::DATA_VOLUME,
                    db.name()
                ),
            },
        },
    })
}

/// The PVC template's `dataSource` when the volumes start from a VolumeSnapshot.
pub fn snapshot_data_source(options: &SnapshotOptions) -> Option<TypedLocalObjectReference> {
    options
        .restore_from
        .as_ref()
        .map(|name| TypedLocalObjectReference {
            api_group: Some(VOLUME_SNAPSHOT_GROUP.into()),
            kind: "VolumeSnapshot".into(),
            name: name.clone(),
        })
}
