//! The orders a runtime gives a managed instance manager (`stator instance --managed`, the
//! operator's pods), as the bodies of its HTTP endpoints. A managed manager never chooses a
//! role: it fills an empty data directory only on [`BootstrapOrder`], starts a data directory
//! that was a primary only on [`RoleOrder`], and otherwise obeys [`FenceOrder`] and
//! [`RebuildOrder`]. Every order needs the bearer token.
//!
//! | endpoint | body | when |
//! |---|---|---|
//! | `POST /bootstrap` | `{"kind": "init"}` or `{"kind": "clone", "upstream": ENDPOINT}` | the data dir is empty |
//! | `POST /role` | `{"role": "primary"}` or `{"role": "replica", "upstream": ENDPOINT}` | the data dir was a primary and the server is stopped, waiting for this order |
//! | `POST /fence` | `{"kind": "kill" \| "shutdown" \| "read-only"}`, or `{"release": true}` | any time; held until released |
//! | `DELETE /fence` | none | releases the fence |
//! | `POST /rebuild` | `{"upstream": ENDPOINT}` | the data dir holds data |
//! | `GET /status?fresh=1` | none | queries the server now (bounded) instead of the cached report |
//! | `POST /lease` | [`LeaseOrder`] | lease mode (`--managed --lease`): every tick, to every instance |
//! | `POST /confirm` | [`ConfirmOrder`] | lease mode: a writer whose lease ends asks its peers |
//!
//! `ENDPOINT` is `{"instance": "NAME-N", "host": "…", "port": N}`.
//!
//! In lease mode, `GET /status` and every answer of `/lease` and `/confirm` add to the report
//! `clock` (the manager's `CLOCK_BOOTTIME` in milliseconds, read when answering),
//! `incarnation` (16 hex digits, new at every start of the manager) and `lease` (`term`,
//! `writer`, `expiresAt`, `holdsWriteLease`, `lengthMs`, `heardAt`, `failsafeUntil`,
//! `failsafe`, `fenced`); `/lease` and `/confirm` answer 200 with `result`, or 409 with
//! `error` starting with the field refused (`incarnation:`, `term:`, `writer:`, `expiresAt:`).

use serde::{Deserialize, Serialize};

use crate::instance::Endpoint;

/// `POST /bootstrap`: how to fill the empty data directory.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum BootstrapOrder {
    /// initdb / mariadb-install-db: a new primary.
    Init,
    /// A copy of `upstream`, then following it.
    Clone { upstream: Endpoint },
}

/// `POST /role`: what a data directory that was a primary starts as.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", tag = "role")]
pub enum RoleOrder {
    /// Start it as it is: the primary.
    Primary,
    /// Make it follow `upstream` (pg_rewind / a GTID re-point) before it starts.
    Replica { upstream: Endpoint },
}

/// How a fence keeps a server from taking writes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FenceKind {
    /// SIGKILL of the server's process group; it stays down.
    Kill,
    /// A clean shutdown (PostgreSQL: the final checkpoint reaches the streaming replicas); it
    /// stays down and `/status` reports its final checkpoint.
    Shutdown,
    /// It keeps running, refusing writes.
    ReadOnly,
}

impl FenceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            FenceKind::Kill => "kill",
            FenceKind::Shutdown => "shutdown",
            FenceKind::ReadOnly => "read-only",
        }
    }
}

/// `POST /fence`: set a fence of `kind`, or (`release: true`) release the one held.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FenceOrder {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<FenceKind>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub release: bool,
}

/// `POST /rebuild`: move the data directory aside (within its volume), clone `upstream` into
/// its place, and delete the old copy only once the clone succeeded.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RebuildOrder {
    pub upstream: Endpoint,
}

/// `POST /lease`: the write lease. `writer` (`NAME-N`) may write at `term`; `expires_at` is
/// on the receiving manager's clock (a `clock` it reported, plus L); `incarnation` is the one
/// it reported. Only the writer holds a lease; every other instance records the term, the
/// writer and that it heard the operator.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LeaseOrder {
    pub term: u64,
    pub writer: String,
    pub expires_at: u64,
    pub incarnation: String,
    /// A peer's quiet time (ms): it confirms a writer's failsafe only once it has not heard
    /// the operator for this long (the operator's L minus a renewal period, which its Down
    /// rule accounts for). Without it, `expiresAt` minus the arrival time, which can be far
    /// shorter (the reading a lease is built on is a round old): a peer confirming that soon
    /// could vouch for a writer the operator is already failing over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quiet_ms: Option<u64>,
}

/// `POST /confirm`: a writer asking a peer whether it still follows `writer` at `term` and
/// has not heard the operator for its quiet time (`quietMs`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ConfirmOrder {
    pub term: u64,
    pub writer: String,
}
