//! The StatefulSet: one pod per instance, each running the instance manager (`stator instance
//! --pod`) as the database container's entrypoint (DESIGN.md, "In a pod").

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, ConfigMapVolumeSource, Container, ContainerPort, EmptyDirVolumeSource,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, ProjectedVolumeSource, SecretVolumeSource,
    TopologySpreadConstraint, Volume, VolumeResourceRequirements, WeightedPodAffinityTerm,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use stator_api::Database;
use stator_api::names::INSTANCE_MANAGER_PORT;
use stator_api::spec::{AntiAffinity, Engine};

use super::RenderOptions;
use super::backup::{self, STATOR_IMAGE_PGBACKREST};
use super::config::DATABASE_JSON_KEY;
use super::meta::{labels, object_meta, pod_selector};
use super::tls::{TLS_DIR, projected_sources, tls_secret_name};
use crate::container::{
    field_env, hardened_security_context, http_probe, mount, resources, resources_of,
    runtime_default_seccomp,
};

/// Where the init container puts the `stator` binary.
pub const STATOR_BIN_DIR: &str = "/stator";
/// Where the binary is inside the Stator image.
pub const STATOR_IMAGE_BINARY: &str = "/usr/local/bin/stator";
/// The ConfigMap's mount point.
pub const CONFIG_DIR: &str = "/etc/stator/config";
/// The credentials Secret's mount point: one file per key.
pub const SECRETS_DIR: &str = "/etc/stator/secrets";
/// The persistent volume's mount point (data directory, archives).
pub const DATA_DIR: &str = "/var/lib/stator";
/// Scratch space of the instance manager: its sockets, pid and lock files.
pub const RUN_DIR: &str = "/run/stator";
/// Name of the database container.
pub const DATABASE_CONTAINER: &str = "database";
/// Name of the volume claim template (PVCs are `data-NAME-N`).
pub const DATA_VOLUME: &str = "data";
/// Named container port of the instance manager; the probes use it.
pub const MANAGER_PORT_NAME: &str = "manager";
/// Annotation on the pod template holding a hash of `database.json`, so that a changed spec rolls
/// the pods.
pub const CONFIG_HASH_ANNOTATION: &str = "stator.dev/config-hash";
/// Seconds a pod gets to shut its server down cleanly.
pub const TERMINATION_GRACE_SECONDS: i64 = 60;
/// Mode of the credential files: owner and group (the fsGroup) may read, nobody else.
pub const SECRET_FILE_MODE: i32 = 0o440;

/// The database server's named port, as clients know the protocol.
pub fn engine_port_name(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "postgresql",
        Engine::Mysql | Engine::Mariadb => "mysql",
    }
}

/// Where the engine keeps its Unix socket (written at run time, so an emptyDir).
fn engine_socket_dir(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "/var/run/postgresql",
        Engine::Mysql | Engine::Mariadb => "/var/run/mysqld",
    }
}

/// The database container's command: the instance manager, which runs the server. `managed`
/// (operator mode): it never picks its role, but waits for the operator's orders; `lease`
/// (operator mode with `spec.failover.lease`): a primary serves only under the operator's
/// write lease.
pub fn instance_command(managed: bool, lease: bool) -> Vec<String> {
    let mut command: Vec<String> = [&format!("{STATOR_BIN_DIR}/stator"), "instance", "--pod"]
        .into_iter()
        .map(str::to_string)
        .collect();
    if managed {
        command.push("--managed".into());
        if lease {
            command.push("--lease".into());
        }
    }
    command.push("--database".into());
    command.push(format!("{CONFIG_DIR}/{DATABASE_JSON_KEY}"));
    command
}

pub fn render_stateful_set(
    db: &Database,
    options: &RenderOptions,
    config_hash: &str,
) -> StatefulSet {
    let managed = options.operator.is_some();
    // Operator mode: every pod is created at once (OrderedReady never recreates pod N while a
    // lower ordinal is unready, which would block a failover), and only the operator deletes a
    // pod to roll it (replicas first, the primary after a switchover).
    let (pod_management, update) = if managed {
        ("Parallel", "OnDelete")
    } else {
        ("OrderedReady", "RollingUpdate")
    };
    StatefulSet {
        metadata: object_meta(db, db.name()),
        spec: Some(StatefulSetSpec {
            replicas: Some(db.spec.instances as i32),
            selector: pod_selector(db),
            service_name: Some(db.headless_service_name()),
            pod_management_policy: Some(pod_management.into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some(update.into()),
                rolling_update: None,
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    when_deleted: Some("Retain".into()),
                    when_scaled: Some("Retain".into()),
                },
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(db)),
                    annotations: Some(BTreeMap::from([(
                        CONFIG_HASH_ANNOTATION.to_string(),
                        config_hash.to_string(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(db, options)),
            },
            volume_claim_templates: Some(vec![data_claim(db, options)]),
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

fn pod_spec(db: &Database, options: &RenderOptions) -> PodSpec {
    let uid = db.spec.engine.uid();
    let scheduling = &db.spec.scheduling;
    PodSpec {
        service_account_name: Some(db.name().to_string()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(TERMINATION_GRACE_SECONDS),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(uid),
            run_as_group: Some(uid),
            fs_group: Some(uid),
            fs_group_change_policy: Some("OnRootMismatch".into()),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..PodSecurityContext::default()
        }),
        init_containers: Some(vec![install_container(db, options, uid)]),
        containers: vec![database_container(db, options.operator.is_some())],
        volumes: Some(volumes(db)),
        affinity: affinity(db),
        topology_spread_constraints: topology_spread(db),
        node_selector: (!scheduling.node_selector.is_empty())
            .then(|| scheduling.node_selector.clone()),
        tolerations: (!scheduling.tolerations.is_empty()).then(|| scheduling.tolerations.clone()),
        ..PodSpec::default()
    }
}

/// The init container: copies `stator` from the Stator image into the shared emptyDir (and,
/// for PostgreSQL with `spec.backup`, `pgbackrest` too: the official image has none).
fn install_container(db: &Database, options: &RenderOptions, uid: i64) -> Container {
    let mut command = vec!["cp".to_string(), STATOR_IMAGE_BINARY.into()];
    if backup::copies_pgbackrest(db) {
        command.push(STATOR_IMAGE_PGBACKREST.into());
        command.push(format!("{STATOR_BIN_DIR}/"));
    } else {
        command.push(format!("{STATOR_BIN_DIR}/stator"));
    }
    Container {
        name: "install-stator".into(),
        image: Some(options.stator_image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(command),
        resources: Some(resources_of(("50m", "32Mi"), ("200m", "128Mi"))),
        security_context: Some(hardened_security_context(uid)),
        volume_mounts: Some(vec![mount("stator-bin", STATOR_BIN_DIR, false)]),
        ..Container::default()
    }
}

fn database_container(db: &Database, managed: bool) -> Container {
    let engine = db.spec.engine;
    let tls = db.spec.tls.enabled;
    Container {
        name: DATABASE_CONTAINER.into(),
        image: Some(db.image()),
        image_pull_policy: Some("IfNotPresent".into()),
        command: Some(instance_command(managed, db.spec.failover.lease)),
        env: Some(vec![
            field_env("POD_NAME", "metadata.name"),
            field_env("POD_NAMESPACE", "metadata.namespace"),
        ]),
        ports: Some(vec![
            ContainerPort {
                name: Some(engine_port_name(engine).into()),
                container_port: i32::from(engine.port()),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some(MANAGER_PORT_NAME.into()),
                container_port: i32::from(INSTANCE_MANAGER_PORT),
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            },
        ]),
        resources: Some(resources(&db.spec.resources)),
        security_context: Some(hardened_security_context(engine.uid())),
        // Initialising or cloning a large data directory can take long: up to 30 minutes
        // before liveness applies.
        startup_probe: Some(http_probe("/healthz", MANAGER_PORT_NAME, tls, 10, 180)),
        liveness_probe: Some(http_probe("/healthz", MANAGER_PORT_NAME, tls, 10, 6)),
        readiness_probe: Some(http_probe("/readyz", MANAGER_PORT_NAME, tls, 5, 3)),
        volume_mounts: Some(
            [
                mount("stator-bin", STATOR_BIN_DIR, true),
                mount("config", CONFIG_DIR, true),
                mount("secrets", SECRETS_DIR, true),
            ]
            .into_iter()
            .chain(tls.then(|| mount("tls", TLS_DIR, true)))
            .chain(backup::repository_mounts(db))
            .chain([
                mount(DATA_VOLUME, DATA_DIR, false),
                mount("run", RUN_DIR, false),
                mount("sockets", engine_socket_dir(engine), false),
                mount("tmp", "/tmp", false),
            ])
            .collect(),
        ),
        ..Container::default()
    }
}

fn empty_dir(name: &str, size_limit: &str) -> Volume {
    empty_dir_on(name, size_limit, None)
}

/// `medium: Some("Memory")` keeps the contents off the node's disk (tmpfs).
fn empty_dir_on(name: &str, size_limit: &str, medium: Option<&str>) -> Volume {
    Volume {
        name: name.into(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: medium.map(String::from),
            size_limit: Some(Quantity(size_limit.into())),
        }),
        ..Volume::default()
    }
}

/// The certificate Secret `NAME-tls` (TLS enabled): files 0440, readable by the fsGroup, which
/// the instance manager copies 0600 for the server. With `spec.tls.issuerRef`, the two Secrets
/// cert-manager fills, projected into the same five files.
fn tls_volume(db: &Database) -> Volume {
    if db.spec.tls.issuer_ref.is_some() {
        return Volume {
            name: "tls".into(),
            projected: Some(ProjectedVolumeSource {
                default_mode: Some(SECRET_FILE_MODE),
                sources: Some(projected_sources(db)),
            }),
            ..Volume::default()
        };
    }
    Volume {
        name: "tls".into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(tls_secret_name(db)),
            default_mode: Some(SECRET_FILE_MODE),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// The ConfigMap `NAME-config` (`database.json`) as the volume `config`, world-readable.
pub(super) fn config_volume(db: &Database) -> Volume {
    Volume {
        name: "config".into(),
        config_map: Some(ConfigMapVolumeSource {
            name: db.config_map_name(),
            default_mode: Some(0o444),
            ..ConfigMapVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn volumes(db: &Database) -> Vec<Volume> {
    let mut volumes = vec![
        empty_dir("stator-bin", "256Mi"),
        config_volume(db),
        Volume {
            name: "secrets".into(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(db.credentials_secret_name()),
                default_mode: Some(SECRET_FILE_MODE),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
        // Sockets, pid files and the staged 0600 copy of the credentials: memory only.
        empty_dir_on("run", "16Mi", Some("Memory")),
        empty_dir("sockets", "16Mi"),
        empty_dir("tmp", "1Gi"),
    ];
    if db.spec.tls.enabled {
        volumes.insert(3, tls_volume(db));
    }
    volumes.extend(backup::repository_volumes(db));
    volumes
}

/// One ReadWriteOnce volume per instance: `data-NAME-N`.
/// `--restore-from-snapshot`: every volume starts as a copy of that VolumeSnapshot.
fn data_claim(db: &Database, options: &RenderOptions) -> PersistentVolumeClaim {
    PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some(DATA_VOLUME.into()),
            labels: Some(labels(db)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: db.spec.storage.storage_class_name.clone(),
            data_source: backup::snapshot_data_source(&options.snapshots),
            resources: Some(VolumeResourceRequirements {
                requests: Some(BTreeMap::from([(
                    "storage".to_string(),
                    Quantity(db.spec.storage.size.clone()),
                )])),
                limits: None,
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        status: None,
    }
}

/// Instances kept off each other's nodes (`kubernetes.io/hostname`), as the spec asks.
fn affinity(db: &Database) -> Option<Affinity> {
    let term = PodAffinityTerm {
        label_selector: Some(pod_selector(db)),
        topology_key: "kubernetes.io/hostname".into(),
        ..PodAffinityTerm::default()
    };
    let anti = match db.spec.scheduling.anti_affinity {
        AntiAffinity::None => return None,
        AntiAffinity::Required => PodAntiAffinity {
            required_during_scheduling_ignored_during_execution: Some(vec![term]),
            ..PodAntiAffinity::default()
        },
        AntiAffinity::Preferred => PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: term,
                },
            ]),
            ..PodAntiAffinity::default()
        },
    };
    Some(Affinity {
        pod_anti_affinity: Some(anti),
        ..Affinity::default()
    })
}

fn topology_spread(db: &Database) -> Option<Vec<TopologySpreadConstraint>> {
    let spread = &db.spec.scheduling.topology_spread;
    (!spread.is_empty()).then(|| {
        spread
            .iter()
            .map(|t| TopologySpreadConstraint {
                max_skew: t.max_skew,
                topology_key: t.topology_key.clone(),
                when_unsatisfiable: t.when_unsatisfiable.as_str().into(),
                label_selector: Some(pod_selector(db)),
                ..TopologySpreadConstraint::default()
            })
            .collect()
    })
}
