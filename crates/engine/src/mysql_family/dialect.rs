//! What differs between MariaDB and MySQL 8 inside the family: program names, the option-file
//! keys of GTID replication and semi-synchronous replication, and the words of the replication
//! statements. One [`Dialect`] value per flavor ([`crate::mariadb::DIALECT`],
//! [`crate::mysql::DIALECT`]); everything else is shared by [`super::MysqlFamily`].

use stator_api::Engine;
use stator_api::instance::Endpoint;

use crate::credentials::Secret;
use crate::error::EngineError;
use crate::mysql_family::config::ServerSettings;
use crate::tls::ServerTlsPaths;

/// The columns of the replica status a flavor prints (`SHOW SLAVE STATUS` / `SHOW REPLICA
/// STATUS`).
#[derive(Clone, Copy, Debug)]
pub struct ReplicaStatusColumns {
    pub source_host: &'static str,
    pub source_port: &'static str,
    pub io_running: &'static str,
    pub sql_running: &'static str,
    pub seconds_behind: &'static str,
    /// The transactions received (MariaDB: `Gtid_IO_Pos`; MySQL: `Retrieved_Gtid_Set`).
    pub retrieved: &'static str,
}

/// Builds the statements pointing replication at an upstream: (upstream, user, password, TLS).
pub type ChangeSource =
    fn(&Endpoint, &str, &Secret, Option<&ServerTlsPaths>) -> Result<Vec<String>, EngineError>;

/// One flavor of the family.
pub struct Dialect {
    pub engine: Engine,
    /// The server program, in binDir (`mariadbd`, `mysqld`).
    pub server_program: &'static str,
    /// The package that installs it, for the "not found" message.
    pub package: &'static str,
    /// File names in the data directory / run directory.
    pub pid_file: &'static str,
    pub socket_file: &'static str,
    /// Option-file keys Stator manages beyond the common ones.
    pub managed_options: fn(&ServerSettings) -> Vec<(&'static str, String)>,
    /// The statement printing the replica status.
    pub replica_status: &'static str,
    pub columns: ReplicaStatusColumns,
    /// The executed position (`@@gtid_current_pos`, `@@gtid_executed`).
    pub executed_position: &'static str,
    /// The transactions written to the binary log, for the errant-transaction check
    /// (`@@gtid_binlog_state`, `@@gtid_executed`).
    pub logged_position: &'static str,
    pub start_replica: &'static str,
    pub stop_replica: &'static str,
    pub reset_replica_all: &'static str,
    /// Statements making a replica writable (after `reset_replica_all`).
    pub make_writable: &'static [&'static str],
    /// The statement turning on the primary side of semi-synchronous replication at promotion
    /// (replicas run with only the replica side on).
    pub enable_semi_sync_source: &'static str,
    /// Statements pointing replication at `upstream` (as the replication user) with GTID
    /// auto-positioning; the password is only ever in this statement. With TLS files, the
    /// replica connects over TLS and verifies the upstream's certificate and host name.
    pub change_source: ChangeSource,
    /// The statement that makes the server read renewed certificate files without a restart.
    pub reload_tls: &'static str,
    /// The privileges of the replication and monitoring users.
    pub replication_privileges: &'static str,
    pub monitor_privileges: &'static str,
    /// How a password is set: `IDENTIFIED BY PASSWORD '<hash>'` where the flavor stores a hash
    /// Stator can compute, so the password itself travels in no statement.
    pub identified_by: fn(&Secret) -> String,
}
