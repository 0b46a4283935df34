//! The `Database` custom resource: what a user asks for.
//!
//! Every field has a default that matches the guide (`seed/`) or is safer than it, so the smallest
//! valid spec is `engine:` alone. Field docs become the CRD's descriptions and `kubectl explain`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Toleration;
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::parameters::ParameterValue;
use crate::status::DatabaseStatus;

/// A PostgreSQL or MySQL-family database: one primary and `instances - 1` replicas.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "stator.dev",
    version = "v1alpha1",
    kind = "Database",
    plural = "databases",
    shortname = "db",
    namespaced,
    status = "DatabaseStatus",
    printcolumn = r#"{"name":"Engine","type":"string","jsonPath":".spec.engine"}"#,
    printcolumn = r#"{"name":"Instances","type":"integer","jsonPath":".spec.instances"}"#,
    printcolumn = r#"{"name":"Ready","type":"integer","jsonPath":".status.readyInstances"}"#,
    printcolumn = r#"{"name":"Primary","type":"string","jsonPath":".status.currentPrimary"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseSpec {
    /// Database engine: `postgres`, `mysql` (MySQL 8) or `mariadb`.
    pub engine: Engine,

    /// Major version of the engine: `15` for PostgreSQL, `8.0`/`8.4` for MySQL, `10.11`/`11.4`
    /// for MariaDB. Defaults to the version Stator is tested with (15, 8.0, 10.11).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,

    /// Container image override. Must carry an explicit tag or digest (never `latest`).
    /// Defaults to the official image of the engine and version (`postgres:15`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Number of instances: 1 is a single primary; N is one primary and N-1 replicas.
    #[serde(default = "default_instances")]
    #[schemars(range(min = 1, max = 16))]
    pub instances: u32,

    /// Per-instance persistent storage (one ReadWriteOnce volume per instance).
    #[serde(default)]
    pub storage: StorageSpec,

    /// CPU and memory for each database container. Defaults to the guide's
    /// requests 250m/512Mi and limits 1/1Gi.
    #[serde(default)]
    pub resources: ResourcesSpec,

    /// Engine configuration.
    #[serde(default)]
    pub config: ConfigSpec,

    /// The initial database, its owner and where credentials come from.
    #[serde(default)]
    pub bootstrap: BootstrapSpec,

    /// How replicas follow the primary.
    #[serde(default)]
    pub replication: ReplicationSpec,

    /// How a lost primary is detected and replaced.
    #[serde(default)]
    pub failover: FailoverSpec,

    /// Where instances may run relative to each other and to nodes.
    #[serde(default)]
    pub scheduling: SchedulingSpec,

    /// The disruption budget: how many instances voluntary disruptions (drains) may take at once.
    #[serde(default)]
    pub disruption: DisruptionSpec,

    /// Who may connect to the database.
    #[serde(default)]
    pub network: NetworkSpec,

    /// Settings of the local runtime (`stator up`); ignored on Kubernetes.
    #[serde(default)]
    pub local: LocalSpec,

    /// TLS for clients, replication and the instance managers: on unless turned off.
    #[serde(default, skip_serializing_if = "TlsSpec::is_default")]
    pub tls: TlsSpec,

    /// Scheduled backups and continuous WAL archiving for point-in-time recovery. Implemented
    /// for PostgreSQL (and full backups of MariaDB, without binlog archiving yet) with a local
    /// repository under `stator up`; everything else (MySQL, s3, `stator render`) is refused, so
    /// that no one believes they have backups when they do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,
}

fn default_instances() -> u32 {
    1
}

/// The database engine.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// PostgreSQL.
    Postgres,
    /// MySQL 8.
    Mysql,
    /// MariaDB.
    Mariadb,
}

impl Engine {
    pub const ALL: [Engine; 3] = [Engine::Postgres, Engine::Mysql, Engine::Mariadb];

    /// The spelling used in the spec.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
            Engine::Mariadb => "mariadb",
        }
    }

    /// Major versions Stator knows how to run, the default first.
    pub fn supported_versions(self) -> &'static [&'static str] {
        match self {
            Engine::Postgres => &["15", "16", "17"],
            Engine::Mysql => &["8.0", "8.4"],
            Engine::Mariadb => &["10.11", "11.4"],
        }
    }

    pub fn default_version(self) -> &'static str {
        self.supported_versions()[0]
    }

    /// The port the server listens on inside a pod.
    pub fn port(self) -> u16 {
        match self {
            Engine::Postgres => 5432,
            Engine::Mysql | Engine::Mariadb => 3306,
        }
    }

    /// Official image repository of the engine.
    pub fn image_repository(self) -> &'static str {
        match self {
            Engine::Postgres => "postgres",
            Engine::Mysql => "mysql",
            Engine::Mariadb => "mariadb",
        }
    }

    /// The MySQL family shares configuration, users and replication concepts.
    pub fn is_mysql_family(self) -> bool {
        matches!(self, Engine::Mysql | Engine::Mariadb)
    }

    /// User and group id the official image runs the server as.
    pub fn uid(self) -> i64 {
        999
    }
}

impl std::fmt::Display for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Per-instance storage.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StorageSpec {
    /// Volume size as a Kubernetes quantity, e.g. `10Gi`.
    #[serde(default = "default_storage_size")]
    pub size: String,
    /// StorageClass of the volumes. Unset uses the cluster's default class. Prefer a class with
    /// `volumeBindingMode: WaitForFirstConsumer`, `reclaimPolicy: Retain` and
    /// `allowVolumeExpansion: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// What the operator does with the volumes when the `Database` is deleted: `Retain` (the
    /// default) keeps the PersistentVolumeClaims and their data; `Delete` deletes them.
    #[serde(default, skip_serializing_if = "Reclaim::is_retain")]
    pub reclaim: Reclaim,
}

/// What happens to a deleted `Database`'s volumes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum Reclaim {
    /// The PersistentVolumeClaims are kept: deleting data needs a person.
    #[default]
    Retain,
    /// The PersistentVolumeClaims are deleted with the `Database`.
    Delete,
}

impl Reclaim {
    pub fn is_retain(&self) -> bool {
        *self == Reclaim::Retain
    }
}

fn default_storage_size() -> String {
    "10Gi".to_string()
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
            reclaim: Reclaim::Retain,
        }
    }
}

/// CPU and memory requests and limits.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    #[serde(default = "default_requests")]
    pub requests: ResourceAmounts,
    #[serde(default = "default_limits")]
    pub limits: ResourceAmounts,
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        ResourcesSpec {
            requests: default_requests(),
            limits: default_limits(),
        }
    }
}

fn default_requests() -> ResourceAmounts {
    ResourceAmounts {
        cpu: "250m".into(),
        memory: "512Mi".into(),
    }
}

fn default_limits() -> ResourceAmounts {
    ResourceAmounts {
        cpu: "1".into(),
        memory: "1Gi".into(),
    }
}

/// A CPU and a memory quantity.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ResourceAmounts {
    /// CPU, e.g. `250m` or `1`.
    pub cpu: String,
    /// Memory, e.g. `512Mi`.
    pub memory: String,
}

/// Engine configuration.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigSpec {
    /// Server settings (`postgresql.conf` / `my.cnf` keys). They override Stator's defaults;
    /// settings Stator manages itself (ports, data directory, replication) are refused.
    #[serde(default)]
    pub parameters: BTreeMap<String, ParameterValue>,
}

/// The initial database and its credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// Name of the database created at initialisation.
    #[serde(default = "default_app_name")]
    pub database: String,
    /// The user that owns it (the application's user).
    #[serde(default = "default_app_name")]
    pub owner: String,
    /// An existing Secret holding the credentials (keys `superuser-password`, `app-password`,
    /// `replication-password`, `monitor-password`, `api-token`). Unset: Stator generates random
    /// ones in the Secret `NAME-credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_name: Option<String>,
    /// Start as a restore of another database's backup instead of an empty database
    /// (PostgreSQL, local repository: read from `spec.backup.repository`). Used once, when the
    /// database is created; `stator restore` fills it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_from: Option<RestoreFromSpec>,
}

/// Where a restored database comes from, and to which point.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreFromSpec {
    /// The database whose backups are restored (same namespace, same repository).
    pub database: String,
    /// The backup (a pgBackRest label such as `20261126-120000F`). Unset: the newest backup
    /// that ended before the target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// Recover up to this time (RFC 3339, e.g. `2026-11-26T12:00:00Z`). Unset with `targetLsn`
    /// unset: replay all archived WAL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_time: Option<String>,
    /// Recover up to this LSN (e.g. `0/3000060`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_lsn: Option<String>,
    /// Recover up to and including this transaction (MariaDB, e.g. `0-1000-42`). A restore to a
    /// time or to the latest point records here the GTID it resolved to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_gtid: Option<String>,
}

fn default_app_name() -> String {
    "app".to_string()
}

impl Default for BootstrapSpec {
    fn default() -> Self {
        BootstrapSpec {
            database: default_app_name(),
            owner: default_app_name(),
            secret_name: None,
            restore_from: None,
        }
    }
}

/// Replication between the primary and its replicas.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicationSpec {
    /// Commit only once a replica holds the write (RPO 0). Writes wait while no replica is
    /// connected rather than silently falling back to asynchronous replication.
    #[serde(default)]
    pub synchronous: bool,
}

/// Failure detection.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FailoverSpec {
    /// Fail over automatically when the primary is lost.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// How long the primary may be unreachable, hung or refusing connections before a replica
    /// is promoted, as a duration (`2s`, `1500ms`, `1m`). Between 1s and 5m.
    #[serde(default = "default_detection_timeout")]
    pub detection_timeout: String,
    /// Kubernetes only, opt-in: write-lease fencing. The operator grants the primary a write
    /// lease as long as the detection timeout and renews it (every replica first, then the
    /// primary); a primary whose lease runs out kills its own server unless every replica
    /// confirms the operator, not the primary, is gone. A replica is promoted over a primary it
    /// cannot see only once no lease of that primary can still be valid. Changing it rolls the
    /// pods. The local runtime ignores it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub lease: bool,
}

fn default_true() -> bool {
    true
}

fn default_detection_timeout() -> String {
    "2s".to_string()
}

impl Default for FailoverSpec {
    fn default() -> Self {
        FailoverSpec {
            enabled: true,
            detection_timeout: default_detection_timeout(),
            lease: false,
        }
    }
}

/// Placement of instances.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    /// Keep instances off each other's nodes: `required` (never share a node), `preferred`
    /// (the default: share only when there is no other choice) or `none`.
    #[serde(default)]
    pub anti_affinity: AntiAffinity,
    /// Spread instances over a topology domain (e.g. `topology.kubernetes.io/zone`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread: Vec<TopologySpread>,
    /// Run only on nodes with these labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Tolerate these node taints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
}

/// Pod anti-affinity between the instances of one database.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AntiAffinity {
    Required,
    #[default]
    Preferred,
    None,
}

/// One topology spread constraint over the instances of this database.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TopologySpread {
    /// Node label that names the domain, e.g. `topology.kubernetes.io/zone`.
    pub topology_key: String,
    /// Largest allowed difference in instance count between two domains.
    #[serde(default = "default_max_skew")]
    pub max_skew: i32,
    /// `ScheduleAnyway` (default) or `DoNotSchedule`.
    #[serde(default)]
    pub when_unsatisfiable: WhenUnsatisfiable,
}

fn default_max_skew() -> i32 {
    1
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum WhenUnsatisfiable {
    #[default]
    ScheduleAnyway,
    DoNotSchedule,
}

impl WhenUnsatisfiable {
    pub fn as_str(self) -> &'static str {
        match self {
            WhenUnsatisfiable::ScheduleAnyway => "ScheduleAnyway",
            WhenUnsatisfiable::DoNotSchedule => "DoNotSchedule",
        }
    }
}

/// The PodDisruptionBudget. Give at most one of the two fields; the default is
/// `maxUnavailable: 1`, which lets a drain take one instance at a time.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DisruptionSpec {
    /// At most this many instances may be down for voluntary disruptions. At least 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<u32>,
    /// At least this many instances must stay up. Lower than `instances`, or every drain blocks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_available: Option<u32>,
}

/// Network access.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkSpec {
    /// Peers allowed to connect to the database port (NetworkPolicy `from` entries). Empty:
    /// only pods in the database's own namespace. The instances always reach each other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_from: Vec<NetworkPolicyPeer>,
}

/// TLS: every TCP connection to the servers (clients through the proxies or direct,
/// replication, clones) and to the instance managers is encrypted and verified against the
/// database's CA; plaintext TCP is refused. Stator issues a CA, a server certificate and a
/// client certificate for the replication user per database, unless `issuerRef` names a
/// cert-manager issuer to do it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TlsSpec {
    /// `false` is the explicit opt-out: everything in plaintext (`stator validate` warns).
    #[serde(default = "default_tls_enabled")]
    pub enabled: bool,
    /// Kubernetes only: a cert-manager issuer that signs the server certificate (Secret
    /// `NAME-tls`) and the replication user's client certificate (Secret
    /// `NAME-replication-tls`); `stator render` and the operator then create cert-manager
    /// `Certificate` objects instead of issuing the certificates themselves. The issuer must
    /// put its CA into `ca.crt` (CA, SelfSigned and Vault issuers do; ACME issuers do not). The
    /// local runtime ignores it and issues its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
}

/// A cert-manager issuer, as a cert-manager `Certificate`'s `spec.issuerRef` names it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// Name of the `Issuer` (in the database's namespace) or `ClusterIssuer`.
    pub name: String,
    /// `Issuer` or `ClusterIssuer`.
    pub kind: IssuerKind,
    /// API group of the issuer; `cert-manager.io` unless an external issuer is used.
    #[serde(default = "default_issuer_group")]
    pub group: String,
}

/// Which kind of cert-manager issuer.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum IssuerKind {
    Issuer,
    ClusterIssuer,
}

impl IssuerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IssuerKind::Issuer => "Issuer",
            IssuerKind::ClusterIssuer => "ClusterIssuer",
        }
    }
}

/// cert-manager's own API group.
pub const CERT_MANAGER_GROUP: &str = "cert-manager.io";

fn default_issuer_group() -> String {
    CERT_MANAGER_GROUP.into()
}

fn default_tls_enabled() -> bool {
    true
}

impl Default for TlsSpec {
    fn default() -> Self {
        TlsSpec {
            enabled: true,
            issuer_ref: None,
        }
    }
}

impl TlsSpec {
    pub fn is_default(&self) -> bool {
        *self == TlsSpec::default()
    }
}

/// The local runtime (`stator up`). Ignored on Kubernetes.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalSpec {
    /// Address every server, proxy and endpoint listens on.
    #[serde(default = "default_listen_address")]
    pub listen_address: String,
    /// First of the ports the database uses: `rw` proxy = base, `ro` proxy = base+1, instance N's
    /// server = base+10+N, its instance manager = base+30+N. Default: 15400 for PostgreSQL,
    /// 13300 for the MySQL family.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_base: Option<u16>,
}

fn default_listen_address() -> String {
    "127.0.0.1".to_string()
}

impl Default for LocalSpec {
    fn default() -> Self {
        LocalSpec {
            listen_address: default_listen_address(),
            port_base: None,
        }
    }
}

/// Backups: where they go, when a full backup is taken, how many are kept, and how WAL (or
/// binlogs) are archived in between for point-in-time recovery.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// Where backups and archived WAL/binlogs are stored: exactly one of `local` or `s3`.
    /// Objects go under `PATH/NAMESPACE/NAME`.
    #[serde(default)]
    pub repository: BackupRepository,
    /// When a full backup is taken: a 5-field cron schedule (minute hour day-of-month month
    /// day-of-week) in UTC, numbers, `*`, ranges, lists and steps (`*/15`, `1-5`, `0,30`).
    /// Default `0 3 * * *` (03:00 UTC daily). A missed run (Stator was down) is made up once,
    /// never in a burst.
    #[serde(default = "default_backup_schedule")]
    pub schedule: String,
    /// How many backups are kept.
    #[serde(default)]
    pub retention: BackupRetention,
    /// The longest a written change waits before its WAL segment or binlog is archived: this
    /// bounds the data lost when only the archive survives. A duration (`30s`, `5m`) between
    /// 1s and 1h; default `60s`.
    #[serde(default = "default_archive_timeout")]
    pub archive_timeout: String,
    /// Compression of backups and archived files: `zst` (the default), `lz4`, `gz` or `none`.
    #[serde(default)]
    pub compression: BackupCompression,
    /// Processes that copy and compress files at once, 1 to 32; default 2.
    #[serde(default = "default_backup_parallel")]
    #[schemars(range(min = 1, max = 32))]
    pub parallel: u32,
    /// Encrypt the repository with a passphrase from a Secret. PostgreSQL only for now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<BackupEncryption>,
}

/// The default `backup.schedule`: daily at 03:00 UTC.
pub const DEFAULT_BACKUP_SCHEDULE: &str = "0 3 * * *";

fn default_backup_schedule() -> String {
    DEFAULT_BACKUP_SCHEDULE.to_string()
}

fn default_archive_timeout() -> String {
    "60s".to_string()
}

fn default_backup_parallel() -> u32 {
    2
}

/// The backup repository. Give exactly one of the two.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRepository {
    /// A directory on this machine. Local runtime only: a pod cannot reach it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalRepository>,
    /// An S3-compatible object store, reached over TLS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Repository>,
}

/// A repository in a local directory.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LocalRepository {
    /// Absolute path of the directory, e.g. `/srv/backups`.
    pub path: String,
}

/// A repository in an S3-compatible bucket.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3Repository {
    /// `host:port` of the S3 endpoint, e.g. `s3.eu-west-1.amazonaws.com:443`; always TLS.
    pub endpoint: String,
    /// Bucket name (3 to 63 lowercase letters, digits, `-` and `.`).
    pub bucket: String,
    /// Region of the bucket, e.g. `eu-west-1` (any value the store accepts, e.g. `us-east-1`).
    pub region: String,
    /// Absolute path inside the bucket; default `/stator`.
    #[serde(default = "default_s3_path")]
    pub path: String,
    /// A Secret whose `ca.crt` is the CA that signed the endpoint's certificate. Unset: the
    /// system's CAs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_name: Option<String>,
    /// The Secret with the keys (`access-key-id`, `secret-access-key`).
    pub credentials_secret_name: String,
}

fn default_s3_path() -> String {
    "/stator".to_string()
}

/// How many backups are kept.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRetention {
    /// Full backups kept (at least 1; default 2). WAL/binlogs older than the oldest kept backup
    /// are removed with it.
    #[serde(default = "default_retention_full")]
    #[schemars(range(min = 1))]
    pub full: u32,
}

fn default_retention_full() -> u32 {
    2
}

impl Default for BackupRetention {
    fn default() -> Self {
        BackupRetention {
            full: default_retention_full(),
        }
    }
}

/// Compression of backups and archived files.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BackupCompression {
    /// Zstandard: the best ratio for its speed.
    #[default]
    Zst,
    /// LZ4: the fastest, the largest files.
    Lz4,
    /// gzip: the slowest; for tools that read only gzip.
    Gz,
    /// No compression.
    None,
}

/// Repository encryption.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupEncryption {
    /// The Secret whose `passphrase` key encrypts the repository. Losing it loses the backups.
    pub secret_name: String,
}
