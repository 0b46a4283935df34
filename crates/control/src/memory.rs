//! What the core decided before: handed back in every [`Decision`](crate::Decision) and passed
//! into the next [`decide`](crate::decide()) call. The shells persist it (the local runtime in its
//! state directory, the operator in the `Database` status) so a restarted shell continues a
//! failover where it was instead of starting a second one.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use stator_api::position::ReplicationPosition;

/// The core's memory between decisions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Memory {
    /// Counts promotions; each `Promote` carries the term it starts. The shells may use it as a
    /// fencing token.
    #[serde(default)]
    pub term: u64,
    /// The instance that holds the writer role (or last held it, during a transition).
    #[serde(default)]
    pub primary: Option<u32>,
    /// The primary has been seen healthy since it became primary. Before that (a primary still
    /// initializing, a promotion not yet confirmed) it is not failed over.
    #[serde(default)]
    pub primary_confirmed: bool,
    /// Since when the primary has looked unhealthy without interruption; `None` while healthy.
    #[serde(default)]
    pub primary_unhealthy_since_ms: Option<u64>,
    /// When the primary was last seen serving. The detection clock starts there, not at the
    /// first unhealthy sighting: the primary may have stopped serving any time after it, and a
    /// shell that observes every few hundred milliseconds would otherwise add a whole
    /// observation period to every failover.
    #[serde(default)]
    pub primary_serving_at_ms: Option<u64>,
    /// A failover or switchover in progress.
    #[serde(default)]
    pub transition: Option<Transition>,
    /// Instances ordered fenced that have not rejoined yet, by ordinal.
    #[serde(default)]
    pub fenced: BTreeMap<u32, Fence>,
    /// Synchronous mode: replicas that may have acknowledged a write of the current term (every
    /// replica that existed during it: the shells configure `ANY 1 (all replicas)` and
    /// semi-sync on every replica). A candidate must hold everything each of them holds.
    #[serde(default)]
    pub sync_standbys: BTreeSet<u32>,
    /// What the current primary held when it was promoted: the point where its history left the
    /// previous primary's. An instance past it on the old history has diverged.
    #[serde(default)]
    pub fork: Option<ReplicationPosition>,
}

impl Memory {
    /// The instance allowed to accept writes now, if any: the candidate while it is being
    /// promoted (or restored), none during the rest of a transition, otherwise the primary
    /// unless it is fenced. The only instance a shell may name the writer in a lease.
    pub fn authorised_writer(&self) -> Option<u32> {
        match &self.transition {
            Some(Transition {
                phase: TransitionPhase::Promoting { candidate, .. },
                ..
            }) => Some(*candidate),
            Some(_) => None,
            None => self.primary.filter(|p| !self.fenced.contains_key(p)),
        }
    }

    /// The term a lease sent now carries: the term the candidate being promoted will hold
    /// (`term + 1`: the term is counted only once the promotion is seen, but a manager takes
    /// one writer per term, so the candidate's lease must already carry its own), otherwise
    /// the current term. A restored primary is promoted again at a new term like any
    /// candidate: the term it held before may since have been handed to the switchover's
    /// target (a lease of `term + 1` naming the target), and the managers that took it refuse
    /// that term naming anyone else.
    pub fn lease_term(&self) -> u64 {
        match &self.transition {
            Some(Transition {
                phase: TransitionPhase::Promoting { .. },
                ..
            }) => self.term + 1,
            _ => self.term,
        }
    }

    /// The instance a lease sent now names: [`Memory::authorised_writer`], else the primary
    /// the instances follow at [`Memory::lease_term`] (named to the others only, so that they
    /// hear the shell at that term; it gets no write lease).
    pub fn lease_writer(&self) -> Option<u32> {
        self.authorised_writer().or(self.primary)
    }
}

/// A fence the core ordered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fence {
    pub method: FenceMethod,
    /// Seen unable to write in an observation made after the order. A confirmed fence is held
    /// by the shell until the core orders `Unfence`, `Rejoin` or `Rebuild`.
    pub confirmed: bool,
    /// The lowest point the primary's line went back to since the fence: the least of the
    /// positions new primaries were promoted at. Whatever the fenced instance holds beyond it
    /// is not on the line (a diverged timeline, errant GTIDs). `None`: no promotion since.
    #[serde(default)]
    pub floor: Option<ReplicationPosition>,
}

/// How an instance is kept from accepting writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum FenceMethod {
    /// Kill the server at once (SIGKILL works on a hung, SIGSTOPped process too; on Kubernetes
    /// delete the pod) and keep it stopped. Used by failover.
    Kill,
    /// Stop the server cleanly (PostgreSQL `pg_ctl stop -m fast`: connected standbys receive
    /// every WAL record, including the shutdown checkpoint) and keep it stopped; the instance
    /// manager keeps reporting its final position. Planned PostgreSQL switchover.
    Shutdown,
    /// Keep the server running but refusing writes (`super_read_only`, `read_only`), so replicas
    /// can fetch the rest of its binary log. Planned MySQL/MariaDB switchover.
    ReadOnly,
}

/// A change of primary in progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub kind: TransitionKind,
    /// The primary being replaced; `None` when the memory of it was lost.
    pub from: Option<u32>,
    /// The replica asked for (switchover `--to`) or chosen when the switchover started.
    #[serde(default)]
    pub target: Option<u32>,
    pub started_ms: u64,
    pub phase: TransitionPhase,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TransitionKind {
    /// Unplanned: the primary was unhealthy for the detection timeout.
    Failover,
    /// Planned: requested, with the primary healthy; loses no write.
    Switchover,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    tag = "phase"
)]
pub enum TransitionPhase {
    /// Fencing every instance that may accept writes; then choosing the candidate.
    Fencing,
    /// Switchover: the old primary is fenced; the target is catching up with its final position.
    CatchingUp,
    /// `Promote` (or `Unfence`, when the old primary is restored) was ordered at `since_ms`;
    /// waiting for `candidate` to report itself writable.
    Promoting {
        candidate: u32,
        since_ms: u64,
        /// Restoring the old primary rather than promoting a replica.
        restore: bool,
        /// What the candidate held when it was ordered promoted.
        #[serde(default)]
        fork: Option<ReplicationPosition>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn during(phase: TransitionPhase) -> Memory {
        Memory {
            term: 4,
            primary: Some(0),
            transition: Some(Transition {
                kind: TransitionKind::Failover,
                from: Some(0),
                target: None,
                started_ms: 0,
                phase,
            }),
            ..Memory::default()
        }
    }

    /// A manager takes one writer per term: the candidate's lease carries the term its
    /// promotion starts, the old primary is named to the others at its own term while it is
    /// being fenced, and a restored primary gets a new term too.
    #[test]
    fn a_lease_names_the_candidate_at_the_term_its_promotion_starts() {
        let steady = Memory {
            term: 4,
            primary: Some(0),
            ..Memory::default()
        };
        assert_eq!((steady.lease_term(), steady.lease_writer()), (4, Some(0)));
        assert_eq!(steady.authorised_writer(), Some(0));
        let fencing = during(TransitionPhase::Fencing);
        assert_eq!((fencing.lease_term(), fencing.lease_writer()), (4, Some(0)));
        assert_eq!(fencing.authorised_writer(), None);
        let promoting = |restore| {
            during(TransitionPhase::Promoting {
                candidate: if restore { 0 } else { 2 },
                since_ms: 0,
                restore,
                fork: None,
            })
        };
        let m = promoting(false);
        assert_eq!((m.lease_term(), m.lease_writer()), (5, Some(2)));
        let m = promoting(true);
        assert_eq!((m.lease_term(), m.lease_writer()), (5, Some(0)));
        assert_eq!(Memory::default().lease_writer(), None);
    }
}
