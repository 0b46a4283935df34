//! The contract between a runtime and the instance manager (`stator instance`):
//! the configuration file a runtime writes for each instance, and the `/status` report the
//! instance manager serves. Both runtimes (local supervisor, pod entrypoint) and the decision core
//! speak only through these types.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::spec::Database;
use crate::status::Role;

/// Everything `stator instance --config FILE` needs. Holds no secret: secrets are files in
/// `secrets_dir` (mode 0600), one per key of [`crate::names::secret_keys`].
#[derive(Serialize, Deserialize, Clone, Debug)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceConfig {
    /// The database this instance belongs to (validated).
    pub database: Database,
    /// Ordinal N of `NAME-N`.
    pub ordinal: u32,
    /// Data directory (`data-NAME-N`); created by the instance manager when absent.
    pub data_dir: PathBuf,
    /// Directory for the Unix socket, pid and lock files of this instance.
    pub run_dir: PathBuf,
    /// Directory holding one 0600 file per credential key.
    pub secrets_dir: PathBuf,
    /// The namespace's other Secrets the spec names (`spec.backup.repository.s3`'s), one
    /// directory per Secret holding one 0600 file per key. Locally
    /// `STATE/NAMESPACE/.secrets/`; `None`: none available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_root: Option<PathBuf>,
    /// Where the server's log goes (appended).
    pub log_file: PathBuf,
    /// Address the server and the HTTP endpoints bind.
    pub listen_address: String,
    /// The server's TCP port.
    pub port: u16,
    /// The instance manager's HTTP port.
    pub http_port: u16,
    /// How to create the data directory when it does not exist yet.
    pub bootstrap: Bootstrap,
    /// OS user the server runs as when the instance manager runs as root (PostgreSQL refuses
    /// root). `None` runs it as the current user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_user: Option<String>,
    /// Directory of the engine's binaries (`/usr/lib/postgresql/15/bin`); `None` searches PATH
    /// and the distribution's usual places.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bin_dir: Option<PathBuf>,
    /// The other instances that may hold this database's data (a pod's: the other ordinals,
    /// over the headless Service). With `bootstrap: InitPrimary` and an empty data dir, the
    /// manager asks them first and initialises only when none may hold data (see
    /// `stator_instance::peers`). Empty: no one to ask (the local runtime's supervisor applies
    /// the rule itself, from `database.json`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<Peer>,
    /// The database's certificates in the cert-manager layout (`ca.crt`, `tls.crt`, `tls.key`;
    /// `client.crt`/`client.key` for replication when present). Set: the server and the HTTP
    /// endpoints serve TLS only, replication verifies the upstream (verify-full). `None`: TLS
    /// is off (`spec.tls.enabled: false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_dir: Option<PathBuf>,
}

/// Another instance of the same database, and where its instance manager answers.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Peer {
    /// Its database server (what a clone copies from).
    pub server: Endpoint,
    /// Its instance manager's HTTP port, on the same host (`GET /status`).
    pub http_port: u16,
}

/// How an empty data directory is filled.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Bootstrap {
    /// A new primary: `initdb` / `mariadb-install-db`, then users and the application database.
    InitPrimary,
    /// A replica cloned from `upstream` (`pg_basebackup` / `mariadb-backup`), then following it.
    CloneFrom { upstream: Endpoint },
    /// A new primary restored from another database's backup (`pgbackrest restore`), recovered
    /// to a target and promoted; its replicas then clone it.
    RestoreFrom { source: RestoreSource },
}

/// A restore into an empty data dir: from the repository of `stanza` at `repository`, backup
/// `set`, stopping at `target`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RestoreSource {
    pub stanza: String,
    pub repository: PathBuf,
    pub set: String,
    pub target: RestoreTarget,
}

/// Where a restore stops.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "type", content = "value")]
pub enum RestoreTarget {
    /// Replay every archived WAL segment.
    Latest,
    /// Stop at the end of the backup (consistency).
    Immediate,
    /// Stop after the last transaction committed at or before this time (PostgreSQL format,
    /// UTC: `2026-11-26 12:00:00.123456+00`).
    Time(String),
    /// Stop at this LSN.
    Lsn(String),
    /// Stop after this transaction (MariaDB, `0-1000-42`).
    Gtid(String),
}

/// A server reachable over TCP, named by its instance.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    /// `NAME-N` of the instance behind the address.
    pub instance: String,
    pub host: String,
    pub port: u16,
}

/// Lifecycle state of the server an instance manager supervises.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum ServerState {
    /// Creating the data directory (initdb, clone).
    Initializing,
    /// Started, not yet accepting connections.
    Starting,
    /// Accepting connections.
    Running,
    /// Stopped on purpose (fenced, or shutting down).
    Stopped,
    /// Exited unexpectedly; the manager restarts it.
    Crashed,
    /// Cannot run until something changes; `message` says what.
    Failed,
}

impl ServerState {
    /// The word `stator status` and decision messages use, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerState::Initializing => "initializing",
            ServerState::Starting => "starting",
            ServerState::Running => "running",
            ServerState::Stopped => "stopped",
            ServerState::Crashed => "crashed",
            ServerState::Failed => "failed",
        }
    }
}

impl std::fmt::Display for ServerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `GET /status` returns.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceReport {
    /// `NAME-N`.
    pub name: String,
    pub state: ServerState,
    /// `None` while the server is not running or its role is not yet known.
    #[serde(default)]
    pub role: Option<Role>,
    /// Ready for traffic: running, and for a replica, replicating without error and within lag.
    pub ready: bool,
    /// Pid of the server process (postmaster / mariadbd).
    #[serde(default)]
    pub pid: Option<u32>,
    /// Pid of the instance manager itself.
    pub manager_pid: u32,
    /// Server version string, e.g. `15.18`.
    #[serde(default)]
    pub server_version: Option<String>,
    /// Seconds since the server was last started.
    #[serde(default)]
    pub uptime_seconds: Option<u64>,
    /// PostgreSQL timeline.
    #[serde(default)]
    pub timeline: Option<u32>,
    /// The primary's current write position, or the replica's replay position: an LSN such as
    /// `0/3000060`, or a GTID set.
    #[serde(default)]
    pub position: Option<String>,
    /// A replica's received (flushed) position: LSN or retrieved GTID set.
    #[serde(default)]
    pub received_position: Option<String>,
    /// Bytes (PostgreSQL) behind the primary; transactions for the MySQL family.
    #[serde(default)]
    pub lag: Option<u64>,
    /// A replica's lag in seconds, when the engine reports it.
    #[serde(default)]
    pub lag_seconds: Option<f64>,
    /// The instance a replica follows.
    #[serde(default)]
    pub upstream: Option<String>,
    /// Why the instance is not ready, or the last error, in words.
    #[serde(default)]
    pub message: Option<String>,
    /// Times the server was restarted by this manager after a crash.
    #[serde(default)]
    pub restarts: u32,
    /// The server refuses writes: a replica, or a primary made read-only (`read_only` /
    /// `super_read_only`, PostgreSQL `default_transaction_read_only`).
    #[serde(default)]
    pub read_only: bool,
    /// A replica's receiver (MySQL family: the IO thread; PostgreSQL: the walreceiver) runs.
    #[serde(default)]
    pub receiver_running: Option<bool>,
    /// A replica's applier (MySQL family: the SQL thread; PostgreSQL: replay) runs.
    #[serde(default)]
    pub applier_running: Option<bool>,
    /// A replica's last replication error (IO or SQL thread, walreceiver), in the server's words.
    #[serde(default)]
    pub replication_error: Option<String>,
    /// Transactions this instance holds that its upstream does not (an errant GTID set, or
    /// WAL past the point where the upstream's timeline forked). Such an instance is never
    /// ready, never a failover candidate, and is rebuilt rather than replicated over.
    #[serde(default)]
    pub errant: Option<String>,
    /// Whether the data dir holds data: false while an empty one is being filled (or waits to
    /// be), true once it holds data; `None` while not known yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holds_data: Option<bool>,
    /// Backups and the archive, when this instance takes them (`spec.backup`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<crate::backup_report::BackupReport>,
}

/// Body of `POST /demote`: follow `upstream` as a replica.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DemoteRequest {
    pub upstream: Endpoint,
}

/// `POST /reload`: the effective parameters (Stator's defaults and `spec.config.parameters`) the
/// running server should use; applied without a restart where the engine allows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadRequest {
    pub parameters: std::collections::BTreeMap<String, String>,
}

/// Local port layout from `spec.local.portBase`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalPorts {
    pub base: u16,
}

impl LocalPorts {
    pub fn of(db: &Database) -> LocalPorts {
        LocalPorts {
            base: db
                .spec
                .local
                .port_base
                .unwrap_or_else(|| crate::validate::default_port_base(db.spec.engine)),
        }
    }

    /// The `rw` proxy: the current primary.
    pub fn rw(self) -> u16 {
        self.base
    }

    /// The `ro` proxy: the ready replicas.
    pub fn ro(self) -> u16 {
        self.base + 1
    }

    /// The supervisor's own HTTP endpoint (status, switchover).
    pub fn supervisor(self) -> u16 {
        self.base + 2
    }

    /// Instance N's server.
    pub fn server(self, ordinal: u32) -> u16 {
        self.base + 10 + ordinal as u16
    }

    /// Instance N's instance manager.
    pub fn manager(self, ordinal: u32) -> u16 {
        self.base + 30 + ordinal as u16
    }
}
