//! What can go wrong in the local runtime, each error naming the object, file or port.

use std::path::PathBuf;

/// An error of the local runtime. [`LocalError::is_invalid`] tells the command line whether the
/// input was at fault (exit 2) or the work failed (exit 1). Every error raised before the state
/// dir is written leaves everything as it was.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The spec asks for something that cannot be applied to the existing database.
    #[error("{0}")]
    Invalid(String),
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", render_ports(.0))]
    PortsInUse(Vec<PortUse>),
    #[error("{0}")]
    BinariesMissing(String),
    #[error("{0}")]
    ServerUserMissing(String),
    #[error("{0}")]
    DataDirForeign(String),
    /// The database had data and no instance's data dir holds it any more.
    #[error("{0}")]
    DataGone(String),
    #[error("database {0} does not exist here (no `stator up` was run for it in this state dir)")]
    NotFound(String),
    #[error("{0}")]
    Failed(String),
    /// `up` stopped waiting: the database is not ready within the timeout, and it keeps
    /// trying in the background.
    #[error("{0}")]
    NotReady(String),
    #[error("cannot start the async runtime: {0}")]
    AsyncRuntime(#[source] std::io::Error),
    /// The supervisor cannot serve one of its ports.
    #[error("{}", describe_listen(.address, *.port, .purpose, *.inherited, .source))]
    Listen {
        address: String,
        port: u16,
        purpose: &'static str,
        /// The socket came from the keeper.
        inherited: bool,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch {signal}: {source}")]
    WatchSignal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the supervisor of {database} does not answer: {source}")]
    SupervisorSilent {
        database: String,
        #[source]
        source: stator_failover::client::ClientError,
    },
    #[error(transparent)]
    Switchover(#[from] crate::switchover::SwitchoverError),
    #[error(transparent)]
    Fault(#[from] crate::chaos::FaultError),
    /// This user may not use a state dir (another user's, e.g. root's).
    #[error("{}: permission denied: run as root or the state dir's owner ({owner})", .path.display())]
    PermissionDenied { path: PathBuf, owner: String },
}

/// A port the database needs and another program holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortUse {
    pub port: u16,
    /// What the database would use it for, e.g. `pg-1's server`.
    pub purpose: String,
}

fn describe_listen(
    address: &str,
    port: u16,
    purpose: &str,
    inherited: bool,
    source: &std::io::Error,
) -> String {
    if inherited {
        format!("cannot use the inherited socket of {address}:{port} for {purpose}: {source}")
    } else {
        format!("cannot listen on {address}:{port} for {purpose}: {source}")
    }
}

fn render_ports(ports: &[PortUse]) -> String {
    let list: Vec<String> = ports
        .iter()
        .map(|p| format!("port {} ({}) is already in use", p.port, p.purpose))
        .collect();
    format!(
        "{}; stop the program holding it or choose another spec.local.portBase (the database uses 50 ports from it)",
        list.join(", ")
    )
}

impl LocalError {
    /// The input (spec, arguments) was at fault, not the machine.
    pub fn is_invalid(&self) -> bool {
        matches!(self, LocalError::Invalid(_) | LocalError::NotFound(_))
    }

    /// [`LocalError::PermissionDenied`] for `path`, naming its owner.
    pub fn permission_denied(path: &std::path::Path) -> Self {
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(path)
            .ok()
            .map(|m| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(m.uid()))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
                    .unwrap_or_else(|| format!("uid {}", m.uid()))
            })
            .unwrap_or_else(|| "unknown".into());
        LocalError::PermissionDenied {
            path: path.to_path_buf(),
            owner,
        }
    }

    pub fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Self {
        LocalError::Io {
            path: path.into(),
            action,
            source,
        }
    }
}
