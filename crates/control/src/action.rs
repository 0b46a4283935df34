//! What `decide` returns: actions for the shell, the new memory, and a status a person reads.
//!
//! Actions are level-triggered: the core repeats an order in every decision until it observes
//! the result, so the shells must make each action idempotent (an order repeated while it is in
//! progress must not restart it) and apply a decision's actions, in order, before taking the
//! observation for the next decision.

use serde::{Deserialize, Serialize};
use stator_api::Phase;

use crate::memory::{FenceMethod, Memory};

/// One thing the shell must do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "action"
)]
pub enum Action {
    /// Nothing can be done yet; decide again when something changes, and at the latest at
    /// `recheck_at_ms` when given.
    Wait {
        reason: String,
        #[serde(default)]
        recheck_at_ms: Option<u64>,
    },
    /// Create instance `ordinal` (its data directory / PVC and its process / pod).
    Create { ordinal: u32, bootstrap: Bootstrap },
    /// Take `ordinal` out of `rw` and keep it from accepting writes, by `method`.
    Fence { ordinal: u32, method: FenceMethod },
    /// Let a fenced (former) primary accept writes again: a switchover abandoned, or no replica
    /// can take over from it. Put it back behind `rw` once it reports writable.
    Unfence { ordinal: u32 },
    /// Promote replica `ordinal` to primary, starting `term`. Every other instance that could
    /// accept writes has been seen fenced.
    Promote { ordinal: u32, term: u64 },
    /// Make running replica `ordinal` follow `upstream`.
    Repoint { ordinal: u32, upstream: u32 },
    /// Start former primary (or stray replica) `ordinal` as a replica of `upstream`; with
    /// `rewind`, first `pg_rewind` it onto `upstream`'s timeline.
    Rejoin {
        ordinal: u32,
        upstream: u32,
        rewind: bool,
    },
    /// Discard `ordinal`'s data and clone it again from `upstream` (an errant GTID set).
    Rebuild { ordinal: u32, upstream: u32 },
    /// Delete instance `ordinal` (scale down); never the primary.
    Remove { ordinal: u32 },
}

/// How a new instance gets its data.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Bootstrap {
    /// A new primary (`initdb`, `mariadb-install-db`).
    InitPrimary,
    /// A replica cloned from instance `upstream`, then following it.
    CloneFrom { upstream: u32 },
}

/// Why the cluster is in its state: the `reason` of the status condition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// Instances are being created; the first primary is not confirmed yet.
    Creating,
    /// The primary serves writes and every instance is ready.
    Healthy,
    /// The primary serves writes; some instance is not ready, or is being repaired.
    Degraded,
    /// The primary looks unhealthy; the detection timeout has not run out.
    PrimaryUnhealthy,
    /// The primary is lost and `spec.failover.enabled` is false.
    FailoverDisabled,
    /// Waiting for instances that may accept writes to be seen fenced.
    Fencing,
    /// Switchover: the candidate is catching up with the fenced primary.
    CatchingUp,
    /// A promotion was ordered; waiting for the new primary to accept writes.
    Promoting,
    /// A failover cannot finish yet (no candidate, or none safe); the message says why.
    FailoverBlocked,
    /// A switchover request was refused; the message says why.
    SwitchoverRefused,
    /// A switchover was abandoned; the old primary takes writes again.
    SwitchoverAbandoned,
    /// No primary is known and none can be chosen yet.
    NoPrimary,
}

impl Reason {
    /// CamelCase, as in a Kubernetes condition.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Creating => "Creating",
            Reason::Healthy => "Healthy",
            Reason::Degraded => "Degraded",
            Reason::PrimaryUnhealthy => "PrimaryUnhealthy",
            Reason::FailoverDisabled => "FailoverDisabled",
            Reason::Fencing => "Fencing",
            Reason::CatchingUp => "CatchingUp",
            Reason::Promoting => "Promoting",
            Reason::FailoverBlocked => "FailoverBlocked",
            Reason::SwitchoverRefused => "SwitchoverRefused",
            Reason::SwitchoverAbandoned => "SwitchoverAbandoned",
            Reason::NoPrimary => "NoPrimary",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a person (and the `Database` status) is told.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub phase: Phase,
    pub reason: Reason,
    /// One line: what is happening and why.
    pub message: String,
    /// Where `rw` sends connections now: the confirmed primary, when it is not fenced.
    pub rw: Option<u32>,
    /// Where `ro` sends connections now: ready replicas following the primary, not fenced and
    /// not being promoted.
    pub ro: Vec<u32>,
}

/// The outcome of one [`decide`](crate::decide()).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Decision {
    /// In the order the shell must apply them.
    pub actions: Vec<Action>,
    /// Pass it to the next `decide`.
    pub memory: Memory,
    pub status: Status,
}
