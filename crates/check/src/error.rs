//! What can go wrong in a check or a benchmark, one variant per step, each naming the database,
//! port, file or command.

use std::time::Duration;

use stator_local::LocalError;

/// An error of the checker or a benchmark. [`CheckError::is_invalid`] tells the command line
/// whether the input was at fault (exit 2) or the work failed (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The local runtime's own error (state dir, secrets, processes, spec).
    #[error(transparent)]
    Local(#[from] LocalError),
    #[error("cannot start the async runtime: {0}")]
    AsyncRuntime(#[source] std::io::Error),
    #[error("{database} is not running (no supervisor); `stator up -f FILE` starts it")]
    NotRunning { database: String },
    /// The runtime's view of the database cannot be had (its supervisor does not answer).
    #[error("{0}")]
    Unobservable(#[source] stator_failover::client::ClientError),
    #[error(
        "{database}: cannot create the table {} through rw (port {port}): {cause}{}",
        crate::checker::TABLE,
        leftover(.left)
    )]
    NoTable {
        database: String,
        port: u16,
        cause: SqlError,
        /// Why the table could not be dropped afterwards, when it could not.
        left: Option<SqlError>,
    },
    /// A program the benchmark runs (stator, pgbench, sysbench, the mariadb client) failed.
    #[error("{what} failed: {output}")]
    Command { what: String, output: String },
    /// A program the benchmark runs could not be started.
    #[error("{what}: {source}")]
    Spawn {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the benchmark's own spec is invalid: {0}")]
    OwnSpec(String),
    #[error("the replica made by hand on port {port} does not replicate:\n{status}")]
    NotReplicating { port: u16, status: String },
    #[error("nothing listens on port {0}")]
    NothingListens(u16),
    /// A target other than the local runtime failed to look or act, in its own words (e.g.
    /// the Kubernetes API's error, or a fault it does not inject).
    #[error("{0}")]
    Target(String),
}

/// What to do about a table that may be left behind.
fn leftover(left: &Option<SqlError>) -> String {
    let table = crate::checker::TABLE;
    left.as_ref()
        .map(|d| {
            format!("; if it exists, drop it by hand (DROP TABLE {table}; dropping it failed: {d})")
        })
        .unwrap_or_default()
}

impl CheckError {
    /// The input (spec, arguments) was at fault, not the machine.
    pub fn is_invalid(&self) -> bool {
        matches!(self, CheckError::Local(e) if e.is_invalid())
    }
}

/// Why a SQL session of the checker failed.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("port {port}: no answer within {timeout:?}")]
    Timeout { port: u16, timeout: Duration },
    #[error("port {port}: {message}")]
    Connect { port: u16, message: String },
    #[error("{0}")]
    Query(String),
    /// A step as a whole took longer than it may (`10s`, `30s`).
    #[error("no answer within {0}")]
    Slow(&'static str),
}

impl SqlError {
    /// `error` on the connection to `port`.
    pub(crate) fn at(port: u16, error: impl std::fmt::Display) -> SqlError {
        SqlError::Connect {
            port,
            message: error.to_string(),
        }
    }
}

/// The database did not become ready (every instance ready, writes acknowledged) in time.
#[derive(Debug, thiserror::Error)]
#[error("not ready within {timeout:?}: {last}")]
pub struct NotReady {
    pub timeout: Duration,
    /// What the last look found.
    pub last: String,
}
