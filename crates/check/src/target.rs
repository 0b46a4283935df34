//! What a check runs against, behind one trait: where it connects (the `rw` service and each
//! instance's server, with which logins), how it learns which instance is the primary and
//! whether the database is ready, and how it injects a fault into an instance. The local
//! runtime's target is [`LocalTarget`](crate::LocalTarget); a Kubernetes database can be one
//! too (the `rw` Service, the pods' addresses, the `Database` status, pod deletion).
//!
//! The checker identifies the server behind a connection as the server says it is (PostgreSQL:
//! the address the session arrived at and the port; MariaDB/MySQL: `server_id` and the port),
//! so instances may share a port on different addresses (pods) or an address on different
//! ports (the local runtime).

use std::future::Future;

use stator_api::Database;
use stator_engine::tls::Dial;

use crate::checker::Access;
use crate::error::CheckError;
use crate::fault::Fault;

/// What the runtime says of the database at one moment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The instance the runtime holds for the primary (`NAME-N`).
    pub primary: String,
    /// Ready: every instance ready, the primary serving.
    pub ready: bool,
    /// Why it is not ready, for a person.
    pub unready: String,
}

/// What a fault did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Injection {
    /// One line a person reads, e.g. `kill pg-0: SIGKILL server 1234`.
    pub summary: String,
    /// Processes signalled, where the target knows them.
    pub pids: Vec<u32>,
}

/// A running database the checker can write to, watch and fail.
pub trait Target: Sync {
    /// `NAMESPACE/NAME`, for reports.
    fn key(&self) -> String;

    /// The database as applied.
    fn database(&self) -> &Database;

    /// The logins.
    fn access(&self) -> &Access;

    /// Where the `rw` service is, and how its certificate is trusted.
    fn rw(&self) -> Dial;

    /// Every instance's name and where its server is now, probed directly by the watcher
    /// (asked again each probe round: a recreated pod may have another address).
    fn instances(&self) -> impl Future<Output = Result<Vec<(String, Dial)>, CheckError>> + Send;

    /// What the runtime says now.
    fn observe(&self) -> impl Future<Output = Result<Observation, CheckError>> + Send;

    /// Fails `instance` with `fault`.
    fn inject(&self, instance: &str, fault: Fault) -> Result<Injection, CheckError>;

    /// Ends a held fault (`stop`, `stop-node`) of `instance`.
    fn resume(&self, instance: &str) -> Result<Injection, CheckError>;
}
