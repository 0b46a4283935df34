//! Choosing the replica to promote, and the checks that make a promotion safe.
//!
//! The rules, in order:
//! - A candidate is a running replica that reports its position, is not fenced, is not being
//!   removed (ordinal beyond `spec.instances`) and has not diverged (no errant GTID set, no WAL
//!   past the primary's timeline fork).
//! - The candidate is the most advanced of them: it holds everything every other candidate
//!   holds (PostgreSQL: newest timeline, then highest received/replayed LSN; MySQL family: a
//!   GTID superset of the others' received and executed sets). Ties go to the requested target,
//!   then to one clients can be routed to ([`Input::unroutable`]), then to the lowest ordinal.
//!   When no candidate holds what all others hold (incomparable
//!   GTID sets), nobody is promoted and the status says so.
//! - MySQL family: the candidate is promoted only once it has applied its relay log (its
//!   executed set holds its retrieved set), or it would lose transactions it already received.
//! - Synchronous mode: the candidate must hold every write that may have been acknowledged:
//!   either it holds the old primary's final position, or it holds what each synchronous
//!   standby of the term holds, and every one of them is reporting. A standby that may hold an
//!   acknowledged write and cannot be asked blocks the failover: unavailable beats lost.

use std::collections::BTreeSet;

use stator_api::instance::ServerState;
use stator_api::position::ReplicationPosition;
use stator_api::{Engine, Role};

use crate::input::Input;
use crate::memory::Memory;

/// Every ordinal the core may have to think about: the spec's, the observed, the remembered.
pub(crate) fn ordinals(input: &Input, memory: &Memory) -> BTreeSet<u32> {
    let mut all: BTreeSet<u32> = (0..input.spec.instances).collect();
    all.extend(input.observed.keys().copied());
    all.extend(memory.fenced.keys().copied());
    all.extend(memory.primary);
    all
}

/// Why `ordinal` cannot be promoted, or `None` when it can.
pub fn ineligibility(
    input: &Input,
    memory: &Memory,
    ordinal: u32,
    from: Option<u32>,
) -> Option<String> {
    if ordinal >= input.spec.instances {
        return Some("is being removed (beyond spec.instances)".into());
    }
    if from == Some(ordinal) {
        return Some("is the primary being replaced".into());
    }
    if memory.fenced.contains_key(&ordinal) {
        return Some("is fenced".into());
    }
    let presence = input.presence(ordinal);
    let Some(facts) = presence.facts() else {
        return Some(format!("is {}", presence.describe()));
    };
    if facts.state != ServerState::Running {
        return Some(format!("is {}", facts.state.as_str()));
    }
    if facts.role != Some(Role::Replica) {
        return Some("is not a replica".into());
    }
    let follows_primary = memory
        .primary
        .is_some_and(|p| follows_line_of(input, ordinal, p));
    if facts.diverged || diverged_past_fork(memory, facts.held().as_ref(), follows_primary) {
        return Some("has diverged from the primary's history".into());
    }
    if facts.held().is_none() {
        return Some("reports no replication position".into());
    }
    None
}

/// Whether replica `ordinal` replicates `primary`'s line: it follows `primary`, or a running
/// replica that does, through any number of hops. Past the first, every server on the way
/// must be a running replica that reports no replication error and no divergence: in the MySQL
/// family replication refuses a server whose history the upstream lacks (GTID strict mode), so
/// such a chain vouches for each link. A replica left following another replica after a
/// failover (its own repoint not yet done) is thus repointed, not rebuilt.
pub(crate) fn follows_line_of(input: &Input, ordinal: u32, primary: u32) -> bool {
    let mut at = ordinal;
    for hop in 0..input.spec.instances {
        let Some(facts) = input.facts(at) else {
            return false;
        };
        if hop > 0 || facts.upstream != Some(primary) {
            let sound = facts.state == ServerState::Running
                && facts.role == Some(Role::Replica)
                && !facts.diverged
                && facts.replication_error.is_none();
            if !sound {
                return false;
            }
        }
        match facts.upstream {
            Some(upstream) if upstream == primary => return true,
            Some(upstream) if upstream != ordinal => at = upstream,
            _ => return false,
        }
    }
    false
}

/// Holds history the current primary's line does not, judged from the fork recorded at the
/// last promotion: PostgreSQL WAL on the old timeline past the fork point; for the MySQL family,
/// transactions beyond the fork while not following the current primary's line (a replica
/// that follows it, directly or through other replicas, legitimately holds newer transactions).
pub(crate) fn diverged_past_fork(
    memory: &Memory,
    held: Option<&ReplicationPosition>,
    follows_primary: bool,
) -> bool {
    match (&memory.fork, held) {
        (Some(ReplicationPosition::Wal(fork)), Some(ReplicationPosition::Wal(held))) => {
            held.timeline == fork.timeline && held.lsn > fork.lsn
        }
        (Some(ReplicationPosition::Wal(_)), _) => false,
        (Some(fork), Some(held)) => !follows_primary && !fork.includes(held),
        _ => false,
    }
}

/// The replicas that could replace `from` and what each holds, or why there is none (each
/// excused: fenced, down, unreachable, not running, diverged, being removed, no position).
fn eligible_replicas(
    input: &Input,
    memory: &Memory,
    from: Option<u32>,
) -> Result<Vec<(u32, ReplicationPosition)>, String> {
    let spec = &input.spec;
    let mut eligible: Vec<(u32, ReplicationPosition)> = Vec::new();
    let mut excuses: Vec<String> = Vec::new();
    for ordinal in ordinals(input, memory) {
        if from == Some(ordinal) {
            continue;
        }
        match ineligibility(input, memory, ordinal, from) {
            None => {
                if let Some(held) = input.facts(ordinal).and_then(|f| f.held()) {
                    eligible.push((ordinal, held));
                }
            }
            Some(why) => {
                if ordinal < spec.instances {
                    excuses.push(format!("{} {why}", spec.instance_name(ordinal)));
                }
            }
        }
    }
    if !eligible.is_empty() {
        return Ok(eligible);
    }
    Err(if excuses.is_empty() {
        "there are no replicas".to_string()
    } else {
        excuses.join("; ")
    })
}

/// Why no replica could replace `primary` in a failover, or `None` when at least one could.
/// Which one, and whether it is safe, is decided after the fence.
pub fn no_replacement(input: &Input, memory: &Memory, primary: u32) -> Option<String> {
    eligible_replicas(input, memory, Some(primary)).err()
}

/// The most advanced eligible replica and what it holds, or why there is none.
/// `prefer` wins ties, then a routable replica ([`Input::unroutable`]), then the lowest
/// ordinal.
pub fn choose_promotion_candidate(
    input: &Input,
    memory: &Memory,
    from: Option<u32>,
    prefer: Option<u32>,
) -> Result<(u32, ReplicationPosition), String> {
    let spec = &input.spec;
    let eligible = eligible_replicas(input, memory, from)
        .map_err(|why| format!("no replica can be promoted: {why}"))?;
    let tops: Vec<&(u32, ReplicationPosition)> = eligible
        .iter()
        .filter(|(_, held)| eligible.iter().all(|(_, other)| held.includes(other)))
        .collect();
    let chosen = tops
        .iter()
        .find(|(o, _)| Some(*o) == prefer)
        .or_else(|| tops.iter().find(|(o, _)| !input.unroutable.contains(o)))
        .or_else(|| tops.first());
    match chosen {
        Some((ordinal, held)) => Ok((*ordinal, held.clone())),
        None => Err(format!(
            "no replica holds every transaction the others hold ({}); \
             promoting any would lose transactions another replica has",
            eligible
                .iter()
                .map(|(o, held)| format!("{}: {held}", spec.instance_name(*o)))
                .collect::<Vec<_>>()
                .join("; ")
        )),
    }
}

/// MySQL family: how many received transactions `ordinal` has not applied yet (0 when it
/// applied its whole relay log). PostgreSQL replays everything received while promoting: 0.
pub fn relay_log_backlog(input: &Input, ordinal: u32) -> u64 {
    if input.spec.engine == Engine::Postgres {
        return 0;
    }
    let Some(facts) = input.facts(ordinal) else {
        return 0;
    };
    match (&facts.position, &facts.received_position) {
        (Some(applied), Some(received)) => received.ahead_of(applied).unwrap_or(0),
        (None, Some(received)) => received.ahead_of(&empty_like(received)).unwrap_or(0),
        _ => 0,
    }
}

fn empty_like(position: &ReplicationPosition) -> ReplicationPosition {
    match position {
        ReplicationPosition::Mariadb { .. } => ReplicationPosition::Mariadb {
            gtid: Default::default(),
        },
        ReplicationPosition::Mysql { .. } => ReplicationPosition::Mysql {
            gtid: Default::default(),
        },
        ReplicationPosition::Wal(w) => ReplicationPosition::Wal(*w),
    }
}

/// Synchronous mode: why promoting `candidate` (holding `held`) could lose an acknowledged
/// write, or `None` when it cannot (or the mode is asynchronous).
pub fn may_lack_acknowledged_writes(
    input: &Input,
    memory: &Memory,
    candidate: u32,
    held: &ReplicationPosition,
    from: Option<u32>,
) -> Option<String> {
    let spec = &input.spec;
    if !spec.synchronous {
        return None;
    }
    let name = |o: u32| spec.instance_name(o);
    // Holding the old primary's final position covers everything it ever acknowledged.
    if let Some(old) = from {
        let fenced = memory.fenced.get(&old).is_some_and(|f| f.confirmed);
        let final_position = input.facts(old).and_then(|f| f.held());
        if fenced && final_position.as_ref().is_some_and(|p| held.includes(p)) {
            return None;
        }
    }
    for &standby in &memory.sync_standbys {
        if standby == candidate || Some(standby) == from {
            continue;
        }
        let presence = input.presence(standby);
        match presence.facts() {
            _ if matches!(presence, crate::input::Presence::Absent) => continue,
            Some(f) if f.diverged => continue,
            // Created after the last promotion (a scale-up) and not cloned yet: it never
            // acknowledged anything.
            Some(f) if f.empty => continue,
            Some(f) => match f.held() {
                Some(theirs) if held.includes(&theirs) => continue,
                Some(theirs) => {
                    return Some(format!(
                        "synchronous replication: {} holds {theirs}, which {} ({held}) lacks, \
                         and may hold acknowledged writes; waiting until it can be promoted",
                        name(standby),
                        name(candidate)
                    ));
                }
                None => {
                    return Some(format!(
                        "synchronous replication: {} may hold acknowledged writes and reports no \
                         position; staying unavailable rather than losing them",
                        name(standby)
                    ));
                }
            },
            None => {
                return Some(format!(
                    "synchronous replication: {} may hold acknowledged writes that {} lacks and \
                     is {}; staying unavailable rather than losing them",
                    name(standby),
                    name(candidate),
                    presence.describe()
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use stator_api::position::{Lsn, WalPosition};

    use super::*;
    use crate::input::{ClusterSpec, InstanceFacts, Presence};

    fn replica(timeline: u32, lsn: u64) -> Presence {
        let position = ReplicationPosition::Wal(WalPosition {
            timeline,
            lsn: Lsn(lsn),
        });
        Presence::Reported(InstanceFacts {
            state: ServerState::Running,
            role: Some(Role::Replica),
            ready: true,
            read_only: false,
            position: Some(position.clone()),
            received_position: Some(position),
            upstream: Some(0),
            replication_error: None,
            diverged: false,
            empty: false,
            message: None,
        })
    }

    fn input(observed: Vec<(u32, Presence)>) -> Input {
        Input {
            spec: ClusterSpec {
                name: "demo".into(),
                engine: Engine::Postgres,
                instances: 4,
                synchronous: false,
                failover_enabled: true,
                detection_timeout_ms: 2_000,
                switchover_timeout_ms: 30_000,
            },
            observed: observed.into_iter().collect::<BTreeMap<_, _>>(),
            now_ms: 0,
            memory: Memory::default(),
            request: None,
            leases: None,
            unroutable: Default::default(),
        }
    }

    #[test]
    fn the_most_advanced_wins_and_a_preferred_replica_wins_ties() {
        let i = input(vec![
            (1, replica(1, 5)),
            (2, replica(1, 9)),
            (3, replica(1, 9)),
        ]);
        let m = Memory::default();
        assert_eq!(
            choose_promotion_candidate(&i, &m, Some(0), None).unwrap().0,
            2
        );
        assert_eq!(
            choose_promotion_candidate(&i, &m, Some(0), Some(3))
                .unwrap()
                .0,
            3
        );
        assert_eq!(
            choose_promotion_candidate(&i, &m, Some(0), Some(1))
                .unwrap()
                .0,
            2
        );
    }

    /// The stand-in benchmark that found it: the deleted primary's two replicas held the same
    /// and the lowest ordinal was promoted, a pod recreated seconds before whose startup probe
    /// (every 10 s) had not passed yet: Kubernetes routed `rw` to it only then, 4-5 s of write
    /// outage more than promoting the other. A routable replica wins ties; never over a more
    /// advanced one, nor over the requested target.
    #[test]
    fn a_routable_replica_wins_ties_and_nothing_else() {
        let mut i = input(vec![
            (1, replica(1, 9)),
            (2, replica(1, 9)),
            (3, replica(1, 9)),
        ]);
        i.unroutable = [1].into();
        let m = Memory::default();
        let chosen = |i: &Input, prefer| {
            choose_promotion_candidate(i, &m, Some(0), prefer)
                .unwrap()
                .0
        };
        assert_eq!(chosen(&i, None), 2);
        assert_eq!(chosen(&i, Some(1)), 1, "the requested target first");
        i.unroutable = [1, 2, 3].into();
        assert_eq!(chosen(&i, None), 1, "none routable: the lowest ordinal");
        let mut ahead = input(vec![(1, replica(1, 10)), (2, replica(1, 9))]);
        ahead.unroutable = [1].into();
        assert_eq!(
            chosen(&ahead, None),
            1,
            "the most advanced, routable or not"
        );
    }

    /// Scaled up to 4 with demo-3's pod created but not cloned yet (its manager reports an
    /// empty data dir, hence no position): the primary dies. demo-3 is a synchronous standby
    /// on record, but it holds nothing; one that holds data and reports no position (its
    /// server stopped) still blocks.
    #[test]
    fn an_empty_synchronous_standby_holds_no_acknowledged_write() {
        let stopped = |empty| {
            Presence::Reported(InstanceFacts {
                state: ServerState::Stopped,
                role: None,
                ready: false,
                read_only: false,
                position: None,
                received_position: None,
                upstream: None,
                replication_error: None,
                diverged: false,
                empty,
                message: Some("the data dir is empty: waiting for POST /bootstrap".into()),
            })
        };
        let memory = Memory {
            sync_standbys: [1, 2, 3].into_iter().collect(),
            ..Memory::default()
        };
        let held = ReplicationPosition::Wal(WalPosition {
            timeline: 1,
            lsn: Lsn(9),
        });
        let mut i = input(vec![
            (1, replica(1, 9)),
            (2, replica(1, 9)),
            (3, stopped(true)),
        ]);
        i.spec.synchronous = true;
        assert_eq!(
            may_lack_acknowledged_writes(&i, &memory, 1, &held, Some(0)),
            None
        );
        i.observed.insert(3, stopped(false));
        let why = may_lack_acknowledged_writes(&i, &memory, 1, &held, Some(0)).unwrap();
        assert!(why.contains("demo-3 may hold acknowledged writes"), "{why}");
    }

    #[test]
    fn without_candidates_the_reason_names_every_replica() {
        let i = input(vec![
            (
                1,
                Presence::Down {
                    reason: "exited".into(),
                },
            ),
            (
                2,
                Presence::Unreachable {
                    reason: "timeout".into(),
                },
            ),
        ]);
        let why = choose_promotion_candidate(&i, &Memory::default(), Some(0), None).unwrap_err();
        assert!(why.contains("demo-1 is down (exited)"), "{why}");
        assert!(why.contains("demo-2 is unreachable (timeout)"), "{why}");
        assert!(why.contains("demo-3 is absent"), "{why}");
    }

    #[test]
    fn wal_past_the_fork_on_the_old_timeline_has_diverged() {
        let memory = Memory {
            fork: Some(ReplicationPosition::Wal(WalPosition {
                timeline: 1,
                lsn: Lsn(100),
            })),
            ..Memory::default()
        };
        let at = |timeline, lsn| {
            ReplicationPosition::Wal(WalPosition {
                timeline,
                lsn: Lsn(lsn),
            })
        };
        assert!(diverged_past_fork(&memory, Some(&at(1, 101)), false));
        assert!(!diverged_past_fork(&memory, Some(&at(1, 100)), false));
        assert!(!diverged_past_fork(&memory, Some(&at(2, 900)), true));
    }
}
