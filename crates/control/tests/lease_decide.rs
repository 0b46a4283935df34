//! The lease ledger as the decision core's optional input: with it, an instance the shell
//! knows only as down or absent (a deleted pod, a pod not running) or cannot reach at all (a
//! frozen node, a partition) counts as unable to write only once no lease of it can be valid,
//! and a replica is promoted over it only once it has answered for the Down bound. Table rows
//! pin the cases; a property checks over random situations that a ledger only ever delays
//! (never adds a promotion, an unfence or a fence confirmation) beyond what it says of an
//! unreachable instance whose leases are all void: that it is down.

use std::collections::BTreeMap;

use proptest::prelude::*;
use stator_api::instance::ServerState;
use stator_api::position::{Lsn, ReplicationPosition, WalPosition};
use stator_api::{Engine, Role};
use stator_control::{
    Action, ClusterSpec, Decision, Fence, FenceMethod, Input, InstanceFacts, LeaseLedger, Memory,
    Presence, Transition, TransitionKind, TransitionPhase, decide, down_after_ms,
};

const NOW: u64 = 1_000_000;
const TIMEOUT: u64 = 2_000;
/// The Down bound for L = the detection timeout: 2 271 ms.
const B: u64 = 2_271;

fn spec(instances: u32) -> ClusterSpec {
    ClusterSpec {
        name: "demo".into(),
        engine: Engine::Postgres,
        instances,
        synchronous: false,
        failover_enabled: true,
        detection_timeout_ms: TIMEOUT,
        switchover_timeout_ms: 30_000,
    }
}

fn wal(lsn: u64) -> ReplicationPosition {
    ReplicationPosition::Wal(WalPosition {
        timeline: 1,
        lsn: Lsn(lsn),
    })
}

fn replica(lsn: u64) -> Presence {
    Presence::Reported(InstanceFacts {
        state: ServerState::Running,
        role: Some(Role::Replica),
        ready: true,
        read_only: false,
        position: Some(wal(lsn)),
        received_position: Some(wal(lsn)),
        upstream: Some(0),
        replication_error: None,
        diverged: false,
        empty: false,
        message: None,
    })
}

fn unreachable() -> Presence {
    Presence::Unreachable {
        reason: "timeout".into(),
    }
}

fn pod_gone() -> Presence {
    Presence::Down {
        reason: "its pod is gone".into(),
    }
}

/// A failover from 0 in its fencing phase, 0's kill fence ordered and not yet confirmed.
fn failing_over() -> Memory {
    let mut fenced = BTreeMap::new();
    fenced.insert(
        0,
        Fence {
            method: FenceMethod::Kill,
            confirmed: false,
            floor: None,
        },
    );
    Memory {
        term: 1,
        primary: Some(0),
        primary_confirmed: true,
        primary_unhealthy_since_ms: Some(NOW - 3 * TIMEOUT),
        primary_serving_at_ms: None,
        transition: Some(Transition {
            kind: TransitionKind::Failover,
            from: Some(0),
            target: None,
            started_ms: NOW - TIMEOUT,
            phase: TransitionPhase::Fencing,
        }),
        fenced,
        sync_standbys: [1, 2].into(),
        fork: None,
    }
}

/// A ledger started long ago: the writer 0 was last sent a lease at `last_lease`, built on a
/// clock reading that came back at that moment; the replicas answer every 200 ms from
/// `answering_from` to NOW.
fn ledger(last_lease: u64, answering_from: u64) -> LeaseLedger {
    let mut ledger = LeaseLedger::new(TIMEOUT, 0);
    let probe = ledger.send(0, 1, None, last_lease - 10);
    ledger.answered(0, probe.id, last_lease, 5_000 + last_lease, "w");
    ledger.send(0, 1, Some(0), last_lease);
    for ordinal in [1, 2] {
        let mut at = answering_from;
        while at <= NOW {
            let order = ledger.send(ordinal, 1, Some(0), at);
            ledger.answered(ordinal, order.id, at + 5, at, "r");
            at += 200;
        }
    }
    ledger
}

fn input(observed: Vec<(u32, Presence)>, memory: Memory, leases: Option<LeaseLedger>) -> Input {
    Input {
        spec: spec(3),
        observed: observed.into_iter().collect(),
        now_ms: NOW,
        memory,
        request: None,
        leases,
        unroutable: Default::default(),
    }
}

fn promoted(decision: &Decision) -> Vec<u32> {
    decision
        .actions
        .iter()
        .filter_map(|a| match a {
            Action::Promote { ordinal, .. } | Action::Unfence { ordinal } => Some(*ordinal),
            _ => None,
        })
        .collect()
}

fn recheck(decision: &Decision) -> Option<u64> {
    decision.actions.iter().find_map(|a| match a {
        Action::Wait { recheck_at_ms, .. } => *recheck_at_ms,
        _ => None,
    })
}

#[test]
fn the_lease_table() {
    struct Row {
        name: &'static str,
        primary: Presence,
        leases: Option<LeaseLedger>,
        promoted: Vec<u32>,
        /// The fence of 0 is confirmed after the decision.
        confirmed: bool,
        recheck: Option<u64>,
        /// Words the status message must hold.
        says: &'static str,
    }
    let rows = vec![
        Row {
            name: "without a ledger a deleted pod is taken for stopped: as before",
            primary: pod_gone(),
            leases: None,
            promoted: vec![1],
            confirmed: true,
            recheck: None,
            says: "promoting demo-1",
        },
        Row {
            name: "a deleted pod whose lease may be valid holds the promotion back",
            primary: pod_gone(),
            leases: Some(ledger(NOW - 1_000, 0)),
            promoted: vec![],
            confirmed: false,
            recheck: Some(NOW - 1_000 + B),
            says: "may be valid for 1271 ms more",
        },
        Row {
            name: "one ms before the bound it still holds",
            primary: pod_gone(),
            leases: Some(ledger(NOW - B + 1, 0)),
            promoted: vec![],
            confirmed: false,
            recheck: Some(NOW + 1),
            says: "may be valid for 1 ms more",
        },
        Row {
            name: "exactly at the bound the pod counts as down and the replica is promoted",
            primary: pod_gone(),
            leases: Some(ledger(NOW - B, 0)),
            promoted: vec![1],
            confirmed: true,
            recheck: None,
            says: "promoting demo-1",
        },
        Row {
            name: "an absent primary (PVC gone too) is held by its lease the same way",
            primary: Presence::Absent,
            leases: Some(ledger(NOW - 1_000, 0)),
            promoted: vec![],
            confirmed: false,
            recheck: Some(NOW - 1_000 + B),
            says: "may be valid",
        },
        Row {
            name: "the lease void but the candidate answering too briefly: no promotion yet",
            primary: pod_gone(),
            leases: Some(ledger(NOW - 10_000, NOW - 1_000)),
            promoted: vec![],
            confirmed: true,
            recheck: Some(NOW - 1_000 + 5 + B),
            says: "has answered its leases for 995 ms, and must for 2271 ms",
        },
        Row {
            name: "the lease void, the candidate answering for exactly the bound: promoted",
            primary: pod_gone(),
            leases: Some(ledger(NOW - 10_000, NOW - 5 - B)),
            promoted: vec![1],
            confirmed: true,
            recheck: None,
            says: "promoting demo-1",
        },
        Row {
            name: "a primary that reports itself stopped needs no lease rule",
            primary: Presence::Reported(InstanceFacts {
                state: ServerState::Stopped,
                role: Some(Role::Primary),
                ready: false,
                read_only: false,
                position: Some(wal(50)),
                received_position: None,
                upstream: None,
                replication_error: None,
                diverged: false,
                empty: false,
                message: None,
            }),
            leases: Some(ledger(NOW - 10, NOW - 100)),
            promoted: vec![1],
            confirmed: true,
            recheck: None,
            says: "promoting demo-1",
        },
        Row {
            name: "without a ledger an unreachable primary blocks for ever",
            primary: unreachable(),
            leases: None,
            promoted: vec![],
            confirmed: false,
            recheck: None,
            says: "fencing demo-0",
        },
        Row {
            name: "an unreachable primary whose lease may be valid holds the promotion back",
            primary: unreachable(),
            leases: Some(ledger(NOW - 1_000, 0)),
            promoted: vec![],
            confirmed: false,
            recheck: Some(NOW - 1_000 + B),
            says: "may be valid for 1271 ms more",
        },
        Row {
            name: "an unreachable primary whose lease is void counts as down (a frozen node)",
            primary: unreachable(),
            leases: Some(ledger(NOW - B, 0)),
            promoted: vec![1],
            confirmed: true,
            recheck: None,
            says: "promoting demo-1",
        },
        Row {
            name: "leases sent to a writer no longer answering extend nothing: each is built on \
                   the last reading it answered",
            primary: unreachable(),
            leases: Some({
                let mut l = ledger(NOW - B, 0);
                for at in [NOW - 1_500, NOW - 1_000, NOW - 500, NOW - 10] {
                    let order = l.send(0, 1, Some(0), at);
                    l.failed(0, order.id, at + 400);
                }
                l
            }),
            promoted: vec![1],
            confirmed: true,
            recheck: None,
            says: "promoting demo-1",
        },
        Row {
            name: "an unreachable primary and a candidate answering too briefly: no promotion",
            primary: unreachable(),
            leases: Some(ledger(NOW - 10_000, NOW - 1_000)),
            promoted: vec![],
            confirmed: true,
            recheck: Some(NOW - 1_000 + 5 + B),
            says: "has answered its leases for 995 ms, and must for 2271 ms",
        },
    ];
    let mut failures = Vec::new();
    for row in rows {
        let decision = decide(&input(
            vec![(0, row.primary), (1, replica(100)), (2, replica(90))],
            failing_over(),
            row.leases,
        ));
        let mut problems = Vec::new();
        if promoted(&decision) != row.promoted {
            problems.push(format!("promoted {:?}", promoted(&decision)));
        }
        let confirmed = decision.memory.fenced.get(&0).is_some_and(|f| f.confirmed);
        if confirmed != row.confirmed {
            problems.push(format!("fence of demo-0 confirmed: {confirmed}"));
        }
        if recheck(&decision) != row.recheck {
            problems.push(format!("recheck at {:?}", recheck(&decision)));
        }
        if !decision.status.message.contains(row.says) {
            problems.push(format!("says {:?}", decision.status.message));
        }
        if !problems.is_empty() {
            failures.push(format!("{}:\n  {}", row.name, problems.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "\n{}\n", failures.join("\n\n"));
}

/// A new shell (an operator that restarted, a new leader) counts every instance as holding a
/// lease sent at its start, so a pod deleted meanwhile is not taken for stopped at once.
#[test]
fn a_fresh_ledger_holds_every_instance_for_one_bound() {
    let fresh = LeaseLedger::new(TIMEOUT, NOW - 100);
    let decision = decide(&input(
        vec![(0, pod_gone()), (1, replica(100)), (2, replica(90))],
        failing_over(),
        Some(fresh),
    ));
    assert!(promoted(&decision).is_empty(), "{:?}", decision.actions);
    assert_eq!(recheck(&decision), Some(NOW - 100 + down_after_ms(TIMEOUT)));
}

/// A primary no longer reached (a frozen node), detected at its timeout: when its every
/// lease is already void and the candidate has answered for the bound, the decision that
/// starts the failover orders the kill fence (it still goes out) and promotes at once; the
/// lease rule needs no sighting, so the fence is not waited for a round. While a lease may
/// still be valid, the same decision orders the fence and promotes nobody.
#[test]
fn an_unreachable_primary_whose_leases_are_void_is_failed_over_in_one_decision() {
    let steady = Memory {
        term: 1,
        primary: Some(0),
        primary_confirmed: true,
        primary_unhealthy_since_ms: None,
        primary_serving_at_ms: Some(NOW - TIMEOUT - 1),
        transition: None,
        fenced: BTreeMap::new(),
        sync_standbys: [1, 2].into(),
        fork: None,
    };
    let fenced = |d: &Decision| {
        d.actions.iter().any(|a| {
            matches!(
                a,
                Action::Fence {
                    ordinal: 0,
                    method: FenceMethod::Kill
                }
            )
        })
    };
    for (last_lease, promotes) in [(NOW - B, true), (NOW - B + 1, false)] {
        let decision = decide(&input(
            vec![(0, unreachable()), (1, replica(100)), (2, replica(90))],
            steady.clone(),
            Some(ledger(last_lease, 0)),
        ));
        assert!(fenced(&decision), "{:?}", decision.actions);
        let expected: Vec<u32> = if promotes { vec![1] } else { vec![] };
        assert_eq!(promoted(&decision), expected, "{}", decision.status.message);
    }
}

// ------------------------------------------------------------------------- only later

fn presence() -> impl Strategy<Value = Presence> {
    prop_oneof![
        Just(Presence::Absent),
        Just(pod_gone()),
        Just(Presence::Unreachable {
            reason: "timeout".into()
        }),
        (0u64..200).prop_map(replica),
        (0u64..200, any::<bool>(), any::<bool>()).prop_map(|(lsn, ro, stopped)| {
            Presence::Reported(InstanceFacts {
                state: if stopped {
                    ServerState::Stopped
                } else {
                    ServerState::Running
                },
                role: Some(Role::Primary),
                ready: !stopped,
                read_only: ro,
                position: Some(wal(lsn)),
                received_position: None,
                upstream: None,
                replication_error: None,
                diverged: false,
                empty: false,
                message: None,
            })
        }),
    ]
}

/// Random exchanges around NOW: (instance, send offset, writer named, answered after).
fn exchanges() -> impl Strategy<Value = Vec<(u32, u64, Option<u32>, Option<u64>)>> {
    prop::collection::vec(
        (
            0u32..4,
            0u64..8_000,
            prop::option::of(0u32..4),
            prop::option::of(0u64..3_000),
        ),
        0..40,
    )
}

fn random_ledger(
    started: u64,
    mut exchanges: Vec<(u32, u64, Option<u32>, Option<u64>)>,
) -> LeaseLedger {
    let mut ledger = LeaseLedger::new(TIMEOUT, NOW - 8_000 - started);
    exchanges.sort_by_key(|e| e.1);
    let mut answers = Vec::new();
    for (ordinal, offset, writer, answer) in exchanges {
        let at = NOW - 8_000 + offset;
        // Answers due by now are recorded in time order before each send.
        answers.sort_unstable();
        while let Some(&(due, o, id)) = answers.first() {
            if due > at {
                break;
            }
            ledger.answered(o, id, due, due, "x");
            answers.remove(0);
        }
        let order = ledger.send(ordinal, 1, writer, at);
        if let Some(after) = answer {
            answers.push((at + after, ordinal, order.id));
        }
    }
    for (due, o, id) in answers {
        if due <= NOW {
            ledger.answered(o, id, due, due, "x");
        }
    }
    ledger
}

fn memory() -> impl Strategy<Value = Memory> {
    (
        any::<bool>(),
        0u32..4,
        prop::option::of(0u32..4),
        prop::collection::btree_map(0u32..4, (any::<bool>(), any::<bool>()), 0..3),
        0u32..3,
    )
        .prop_map(|(transition, primary, target, fenced, phase)| Memory {
            term: 1,
            primary: Some(primary),
            primary_confirmed: true,
            primary_unhealthy_since_ms: Some(NOW - 10_000),
            primary_serving_at_ms: Some(NOW - 10_000),
            transition: transition.then(|| Transition {
                kind: if target.is_some() {
                    TransitionKind::Switchover
                } else {
                    TransitionKind::Failover
                },
                from: Some(primary),
                target,
                started_ms: NOW - 5_000,
                phase: match (phase, target) {
                    (0, _) => TransitionPhase::Fencing,
                    (1, Some(_)) => TransitionPhase::CatchingUp,
                    (_, t) => TransitionPhase::Promoting {
                        candidate: t.unwrap_or((primary + 1) % 4),
                        since_ms: NOW - 1_000,
                        restore: false,
                        fork: None,
                    },
                },
            }),
            fenced: fenced
                .into_iter()
                .map(|(o, (kill, confirmed))| {
                    (
                        o,
                        Fence {
                            method: if kill {
                                FenceMethod::Kill
                            } else {
                                FenceMethod::Shutdown
                            },
                            confirmed,
                            floor: None,
                        },
                    )
                })
                .collect(),
            sync_standbys: Default::default(),
            fork: None,
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    /// A ledger never adds a promotion, an unfence or a fence confirmation to what the same
    /// situation decides without one, once each unreachable instance whose every lease is
    /// void is taken for down there (what the lease rule says of it: its manager killed its
    /// server when the lease ended). An unreachable instance a lease of which may be valid
    /// stays unreachable on both sides, so it never counts as unable to write.
    #[test]
    fn a_ledger_only_ever_delays(
        observed in prop::collection::btree_map(0u32..4, presence(), 1..5),
        memory in memory(),
        started in 0u64..10_000,
        exchanges in exchanges(),
    ) {
        let ledger = random_ledger(started, exchanges);
        let with = Input {
            spec: spec(3),
            observed: observed.clone(),
            now_ms: NOW,
            memory,
            request: None,
            leases: Some(ledger.clone()),
            unroutable: Default::default(),
        };
        let mut without = with.clone();
        without.leases = None;
        without.observed = observed
            .into_iter()
            .map(|(o, p)| match p {
                Presence::Unreachable { .. } if ledger.lease_void(o, NOW) => (o, pod_gone()),
                p => (o, p),
            })
            .collect();
        let (plain, leased) = (decide(&without), decide(&with));
        for o in promoted(&leased) {
            prop_assert!(
                promoted(&plain).contains(&o),
                "{o} promoted or unfenced only with the ledger: {:?} vs {:?}",
                leased.actions,
                plain.actions
            );
        }
        for (o, fence) in &leased.memory.fenced {
            if fence.confirmed && !with.memory.fenced.get(o).is_some_and(|f| f.confirmed) {
                // Without the ledger it is confirmed too, or the decision went further and
                // already let the instance go (restored it, rejoined it).
                prop_assert!(
                    plain.memory.fenced.get(o).is_none_or(|f| f.confirmed),
                    "{o}'s fence confirmed only with the ledger"
                );
            }
        }
        prop_assert!(
            leased.memory.term <= plain.memory.term,
            "the ledger raised the term ({} > {})",
            leased.memory.term,
            plain.memory.term
        );
    }
}
