//! The faults a check injects into one instance: what each does is the target's business (the
//! local runtime signals processes; a Kubernetes target deletes or freezes pods).

use serde::{Deserialize, Serialize};

/// A fault the chaos commands and the checker can inject into one instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// `kill -9` of the database server; its instance manager restarts it (or a failover
    /// replaces it, whichever comes first).
    Kill,
    /// `kill -9` of the instance manager and the server in the same instant; the supervisor
    /// restarts the manager.
    KillNode,
    /// SIGSTOP of the server's process tree (a hang); resumed by `resume`.
    Stop,
    /// SIGSTOP of the instance manager and the server's tree: a node that is lost while it is
    /// held, then comes back when resumed.
    StopNode,
}

impl Fault {
    pub fn as_str(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::KillNode => "kill-node",
            Fault::Stop => "stop",
            Fault::StopNode => "stop-node",
        }
    }

    /// Whether the fault holds processes stopped until [`resume`].
    pub fn holds(self) -> bool {
        matches!(self, Fault::Stop | Fault::StopNode)
    }

    /// Whether the instance manager is hit too.
    pub fn includes_manager(self) -> bool {
        matches!(self, Fault::KillNode | Fault::StopNode)
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
