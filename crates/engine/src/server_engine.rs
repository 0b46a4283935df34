//! The one trait both engine families implement. The instance manager drives a server only
//! through it: what to do with an empty data directory, which files to write, how to start,
//! probe, observe, promote and demote, and how positions compare. Everything engine-specific
//! (initdb vs mariadb-install-db, LSN vs GTID set, pg_rewind vs a GTID re-point) lives behind it.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use stator_api::Role;
use stator_api::instance::Endpoint;
use stator_api::position::ReplicationPosition;

use crate::credentials::Credentials;
use crate::data_dir::DataDirState;
use crate::error::EngineError;
use crate::process::ServerProcess;

/// What one observation of a running server found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Observation {
    pub role: Option<Role>,
    /// e.g. `15.14`.
    pub server_version: Option<String>,
    /// Seconds since the server started.
    pub uptime_seconds: Option<u64>,
    pub timeline: Option<u32>,
    /// Primary: current write position; replica: replay position.
    pub position: Option<String>,
    /// The same as a number, for metrics (PostgreSQL: the LSN in bytes).
    pub position_bytes: Option<u64>,
    /// Replica: received (flushed) position.
    pub received_position: Option<String>,
    /// Replica: bytes (PostgreSQL) or transactions behind its upstream.
    pub lag: Option<u64>,
    pub lag_seconds: Option<f64>,
    /// Replica: connected to its upstream and receiving (PostgreSQL: walreceiver `streaming`).
    pub streaming: bool,
    /// Replica: the instance it follows.
    pub upstream: Option<String>,
    /// The server refuses writes (a replica, or a read-only primary).
    pub read_only: bool,
    /// Replica: the receiver (IO thread / walreceiver) runs.
    pub receiver_running: Option<bool>,
    /// Replica: the applier (SQL thread / replay) runs.
    pub applier_running: Option<bool>,
    /// Replica: the last replication error, in the server's words.
    pub replication_error: Option<String>,
    /// Transactions held here that the upstream does not have (errant GTIDs, a forked
    /// timeline), in words; such a replica is not ready.
    pub errant: Option<String>,
}

/// A database engine driving one instance's server. Implemented by [`crate::postgres::Postgres`];
/// the MySQL family implements the same operations with its own tools.
///
/// Life of an instance: [`inspect_data_dir`](Self::inspect_data_dir) → when empty,
/// [`initialize`](Self::initialize) or [`clone_upstream`](Self::clone_upstream) →
/// [`write_config`](Self::write_config) → [`find_running`](Self::find_running) (adopt) or
/// [`start`](Self::start) → [`probe`](Self::probe) until it answers → on a primary
/// [`ensure_users`](Self::ensure_users) → [`observe`](Self::observe) periodically.
pub trait ServerEngine: Send + Sync + 'static {
    /// The engine family.
    fn kind(&self) -> stator_api::Engine;

    /// What the data directory holds. An error (changing nothing) when it belongs to another
    /// database, engine or major version.
    fn inspect_data_dir(&self) -> Result<DataDirState, EngineError>;

    /// Creates a new primary's data directory (initdb / mariadb-install-db) and its marker.
    fn initialize(
        &self,
        creds: &Credentials,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Fills an empty data directory with a copy of `upstream` (pg_basebackup / mariadb-backup)
    /// and records that this instance follows it.
    fn clone_upstream(
        &self,
        upstream: &Endpoint,
        creds: &Credentials,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Fills an empty data directory from another database's backup, recovered to a target and
    /// promoted (`Bootstrap::RestoreFrom`). Engines without restores refuse.
    fn restore_from(
        &self,
        source: &stator_api::instance::RestoreSource,
        creds: &Credentials,
    ) -> impl Future<Output = Result<(), EngineError>> + Send {
        let _ = (source, creds);
        async {
            Err(EngineError::Config {
                field: "spec.bootstrap.restoreFrom".into(),
                message: format!("{} cannot restore from a backup yet", self.kind()),
            })
        }
    }

    /// Writes the server's configuration files (from the spec, the managed keys and the role
    /// recorded in the data directory) and the 0600 password file replication uses.
    fn write_config(&self, creds: &Credentials) -> Result<(), EngineError>;

    /// A server already running on this data directory (left by a killed instance manager).
    fn find_running(&self) -> Result<Option<ServerProcess>, EngineError>;

    /// Makes a running server read the configuration files again (settings that need a
    /// restart apply at the next one).
    fn reload_config(&self, server: &ServerProcess) -> Result<(), EngineError>;

    /// Applies `parameters` (the effective set: Stator's defaults and the spec's) to the running
    /// server without a restart where the engine allows it, and rewrites the configuration so
    /// the next start uses them too. Returns the names that only a restart applies (empty: all
    /// took effect).
    fn apply_parameters(
        &self,
        creds: &Credentials,
        parameters: BTreeMap<String, String>,
    ) -> impl Future<Output = Result<Vec<String>, EngineError>> + Send;

    /// Starts the server; returns at once.
    fn start(&self) -> Result<ServerProcess, EngineError>;

    /// Stops the server: a clean fast shutdown, an immediate one after `timeout`.
    fn stop(
        &self,
        server: &mut ServerProcess,
        timeout: Duration,
    ) -> impl Future<Output = String> + Send;

    /// Ok when the server accepts connections; [`EngineError::Connect`] while it does not.
    fn probe(&self, creds: &Credentials) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// On a primary: creates (or updates the passwords of) the replication, monitoring and
    /// application roles and the application database. Idempotent.
    fn ensure_users(
        &self,
        creds: &Credentials,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Role, positions, lag.
    fn observe(
        &self,
        creds: &Credentials,
    ) -> impl Future<Output = Result<Observation, EngineError>> + Send;

    /// Makes a running replica the primary and records it in the data directory.
    fn promote(&self, creds: &Credentials) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// With the server stopped: makes this data directory follow `upstream`, rewinding it first
    /// when its history diverged (pg_rewind).
    fn rejoin(
        &self,
        upstream: &Endpoint,
        creds: &Credentials,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// With the server running as a replica: makes it follow `upstream` instead without a
    /// restart, when the engine can tell online that this is safe (the same checks as
    /// [`rejoin`](Self::rejoin)). `Ok(true)`: it follows `upstream` now; `Ok(false)`: not done
    /// online (a primary, errant transactions, an engine that cannot), the caller stops the
    /// server and rejoins. An error may leave replication stopped, never pointed elsewhere:
    /// the caller rejoins offline then too.
    fn repoint_running(
        &self,
        upstream: &Endpoint,
        creds: &Credentials,
    ) -> impl Future<Output = Result<bool, EngineError>> + Send {
        let _ = (upstream, creds);
        std::future::ready(Ok(false))
    }

    /// Fences a running server read-only (`on`) or releases that fence: it keeps running and
    /// serving reads, and refuses writes (MySQL family: `read_only`; PostgreSQL:
    /// `default_transaction_read_only`) until released. On a stopped server it changes only
    /// what PostgreSQL's next start uses (the MySQL family starts as its role says).
    fn set_read_only(
        &self,
        creds: &Credentials,
        on: bool,
    ) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// A cleanly stopped primary's final position: the last checkpoint of its data directory
    /// (PostgreSQL, `pg_controldata`); `None` for a replica's, a running one, one that crashed,
    /// or an engine that does not tell.
    fn final_checkpoint(
        &self,
    ) -> impl Future<Output = Option<crate::postgres::controldata::ControlData>> + Send {
        std::future::ready(None)
    }

    /// Reads a position as this engine reports it (PostgreSQL needs the timeline).
    fn parse_position(
        &self,
        text: &str,
        timeline: Option<u32>,
    ) -> Result<ReplicationPosition, EngineError> {
        Ok(ReplicationPosition::parse(self.kind(), text, timeline)?)
    }

    /// Orders two positions; `None` when they are not comparable (diverged GTID sets).
    fn compare_positions(
        &self,
        a: &ReplicationPosition,
        b: &ReplicationPosition,
    ) -> Option<Ordering> {
        a.compare(b)
    }
}
