//! Table tests of the decision core: each row is a situation (spec, observations, time, memory,
//! request) and the actions it must produce, named for the behaviour it pins down.

use std::collections::{BTreeMap, BTreeSet};

use stator_api::instance::ServerState;
use stator_api::position::{Lsn, ReplicationPosition, WalPosition};
use stator_api::{Engine, Phase, Role};
use stator_control::{
    Action, Bootstrap, ClusterSpec, Decision, Fence, FenceMethod, Input, InstanceFacts, Memory,
    Presence, Reason, Request, Transition, TransitionKind, TransitionPhase, decide,
};

const NOW: u64 = 1_000_000;
const TIMEOUT: u64 = 2_000;
const UUID: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";

// ------------------------------------------------------------------ situation builders

fn spec(engine: Engine, instances: u32) -> ClusterSpec {
    ClusterSpec {
        name: "demo".into(),
        engine,
        instances,
        synchronous: false,
        failover_enabled: true,
        detection_timeout_ms: TIMEOUT,
        switchover_timeout_ms: 30_000,
    }
}

fn wal(timeline: u32, lsn: u64) -> ReplicationPosition {
    ReplicationPosition::Wal(WalPosition {
        timeline,
        lsn: Lsn(lsn),
    })
}

fn mariadb(text: &str) -> ReplicationPosition {
    ReplicationPosition::parse(Engine::Mariadb, text, None).unwrap()
}

fn mysql(intervals: &str) -> ReplicationPosition {
    ReplicationPosition::parse(Engine::Mysql, &format!("{UUID}:{intervals}"), None).unwrap()
}

fn running(role: Role, position: ReplicationPosition) -> InstanceFacts {
    InstanceFacts {
        state: ServerState::Running,
        role: Some(role),
        ready: true,
        read_only: false,
        position: Some(position.clone()),
        received_position: (role == Role::Replica).then_some(position),
        upstream: None,
        replication_error: None,
        diverged: false,
        empty: false,
        message: None,
    }
}

/// A ready primary at `position`.
fn primary(position: ReplicationPosition) -> Presence {
    Presence::Reported(running(Role::Primary, position))
}

/// A ready replica of `upstream` that received and applied `position`.
fn replica(upstream: u32, position: ReplicationPosition) -> Presence {
    let mut facts = running(Role::Replica, position);
    facts.upstream = Some(upstream);
    Presence::Reported(facts)
}

fn with(presence: Presence, change: impl FnOnce(&mut InstanceFacts)) -> Presence {
    match presence {
        Presence::Reported(mut facts) => {
            change(&mut facts);
            Presence::Reported(facts)
        }
        other => other,
    }
}

/// A former primary, stopped by its fence, reporting its final position.
fn stopped_primary(position: ReplicationPosition) -> Presence {
    with(primary(position), |f| {
        f.state = ServerState::Stopped;
        f.ready = false;
    })
}

fn unreachable() -> Presence {
    Presence::Unreachable {
        reason: "connection refused".into(),
    }
}

fn down() -> Presence {
    Presence::Down {
        reason: "process exited".into(),
    }
}

/// Memory of a cluster whose first primary `p` was created but never seen serving.
fn created(p: u32) -> Memory {
    Memory {
        term: 1,
        primary: Some(p),
        ..Memory::default()
    }
}

/// Memory of a cluster whose primary `p` has served since term 1.
fn serving(p: u32, instances: u32) -> Memory {
    Memory {
        term: 1,
        primary: Some(p),
        primary_confirmed: true,
        sync_standbys: (0..instances).filter(|o| *o != p).collect(),
        ..Memory::default()
    }
}

fn fenced(memory: &mut Memory, ordinal: u32, method: FenceMethod, confirmed: bool) {
    memory.fenced.insert(
        ordinal,
        Fence {
            method,
            confirmed,
            floor: None,
        },
    );
}

/// Memory in the middle of a failover from `from`, its fence ordered (and confirmed or not).
fn failing_over(from: u32, instances: u32, confirmed: bool) -> Memory {
    let mut memory = serving(from, instances);
    memory.primary_unhealthy_since_ms = Some(NOW - 3 * TIMEOUT);
    memory.transition = Some(Transition {
        kind: TransitionKind::Failover,
        from: Some(from),
        target: None,
        started_ms: NOW - TIMEOUT,
        phase: TransitionPhase::Fencing,
    });
    fenced(&mut memory, from, FenceMethod::Kill, confirmed);
    memory
}

fn switching_over(from: u32, to: u32, instances: u32, phase: TransitionPhase) -> Memory {
    let mut memory = serving(from, instances);
    memory.transition = Some(Transition {
        kind: TransitionKind::Switchover,
        from: Some(from),
        target: Some(to),
        started_ms: NOW - 1_000,
        phase,
    });
    memory
}

fn input(spec: ClusterSpec, observed: Vec<(u32, Presence)>, memory: Memory) -> Input {
    Input {
        spec,
        observed: observed.into_iter().collect::<BTreeMap<_, _>>(),
        now_ms: NOW,
        memory,
        request: None,
        leases: None,
        unroutable: Default::default(),
    }
}

/// A MariaDB old primary (0), fenced by `method` and stopped, that reports no GTID set, while 2
/// is the primary past the fork.
fn unreported_old_primary(method: FenceMethod) -> Input {
    let mut memory = serving(2, 3);
    memory.fork = Some(mariadb("0-1-100"));
    fenced(&mut memory, 0, method, true);
    memory.fenced.get_mut(&0).unwrap().floor = memory.fork.clone();
    input(
        spec(Engine::Mariadb, 3),
        vec![
            (
                0,
                with(stopped_primary(mariadb("0-1-105")), |f| {
                    f.role = None;
                    f.position = None;
                }),
            ),
            (1, replica(2, mariadb("0-2-110"))),
            (2, primary(mariadb("0-2-110"))),
        ],
        memory,
    )
}

fn synchronous(mut input: Input) -> Input {
    input.spec.synchronous = true;
    input
}

fn failover_disabled(mut input: Input) -> Input {
    input.spec.failover_enabled = false;
    input
}

fn requesting(mut input: Input, to: Option<u32>) -> Input {
    input.request = Some(Request::Switchover { to });
    input
}

// ------------------------------------------------------------------ the table

struct Row {
    name: &'static str,
    input: Input,
    /// The actions, `Wait` left out (its reason is prose).
    actions: Vec<Action>,
    reason: Reason,
    /// Words the status message must contain.
    says: &'static str,
    /// Extra checks on the decision.
    then: fn(&Decision),
}

fn nothing(_: &Decision) {}

fn promote(ordinal: u32, term: u64) -> Action {
    Action::Promote { ordinal, term }
}

fn fence(ordinal: u32, method: FenceMethod) -> Action {
    Action::Fence { ordinal, method }
}

fn rows() -> Vec<Row> {
    let pg = |n| spec(Engine::Postgres, n);
    let maria = |n| spec(Engine::Mariadb, n);
    let healthy3 = || {
        vec![
            (0, primary(wal(1, 300))),
            (1, replica(0, wal(1, 300))),
            (2, replica(0, wal(1, 300))),
        ]
    };
    vec![
        Row {
            name: "an empty cluster creates its first primary",
            input: input(pg(3), vec![], Memory::default()),
            actions: vec![Action::Create {
                ordinal: 0,
                bootstrap: Bootstrap::InitPrimary,
            }],
            reason: Reason::Creating,
            says: "creating demo-0",
            then: |d| assert_eq!(d.memory.primary, Some(0)),
        },
        Row {
            name: "a first primary still initializing is waited for, never failed over",
            input: input(
                pg(3),
                vec![(
                    0,
                    with(primary(wal(1, 0)), |f| {
                        f.state = ServerState::Initializing;
                        f.ready = false;
                    }),
                )],
                Memory {
                    term: 1,
                    primary: Some(0),
                    ..Memory::default()
                },
            ),
            actions: vec![],
            reason: Reason::Creating,
            says: "waiting for demo-0",
            then: |d| assert!(d.memory.transition.is_none()),
        },
        Row {
            name: "a ready first primary is confirmed and its first replica cloned from it",
            input: input(
                pg(3),
                vec![(0, primary(wal(1, 100)))],
                Memory {
                    term: 1,
                    primary: Some(0),
                    ..Memory::default()
                },
            ),
            actions: vec![Action::Create {
                ordinal: 1,
                bootstrap: Bootstrap::CloneFrom { upstream: 0 },
            }],
            reason: Reason::Creating,
            says: "demo-1 is being created",
            then: |d| assert!(d.memory.primary_confirmed),
        },
        Row {
            name: "the next replica waits until the previous one is ready",
            input: input(
                pg(3),
                vec![
                    (0, primary(wal(1, 100))),
                    (
                        1,
                        with(replica(0, wal(1, 0)), |f| {
                            f.state = ServerState::Initializing;
                            f.ready = false;
                        }),
                    ),
                ],
                serving(0, 3),
            ),
            actions: vec![],
            reason: Reason::Creating,
            says: "demo-2 is being created",
            then: nothing,
        },
        Row {
            name: "a primary whose data is gone is failed over at once to the most advanced holder, never waited for",
            input: input(
                pg(3),
                vec![
                    (1, with(replica(0, wal(1, 300)), |f| f.ready = false)),
                    (2, with(replica(0, wal(1, 200)), |f| f.ready = false)),
                ],
                created(0),
            ),
            actions: vec![promote(1, 2)],
            reason: Reason::Promoting,
            says: "promoting demo-1",
            then: |d| {
                assert!(d.memory.transition.is_some());
                assert!(
                    d.memory.fenced.is_empty(),
                    "nothing to fence: {:?}",
                    d.memory.fenced
                );
            },
        },
        Row {
            name: "a primary whose data is gone waits until every instance holding data reports what it holds",
            input: input(
                maria(3),
                vec![
                    (1, with(replica(0, mariadb("0-1-5")), |f| f.ready = false)),
                    (2, down()),
                ],
                serving(0, 3),
            ),
            actions: vec![],
            reason: Reason::PrimaryUnhealthy,
            says: "the data of primary demo-0 is gone; waiting for demo-2",
            then: |d| assert!(d.memory.transition.is_none()),
        },
        Row {
            name: "a lost primary with no other instance holding data is not failed over",
            input: input(pg(2), vec![], created(0)),
            actions: vec![],
            reason: Reason::Creating,
            says: "waiting for demo-0",
            then: |d| assert!(d.memory.transition.is_none()),
        },
        Row {
            name: "a healthy cluster needs nothing and routes rw to the primary, ro to the replicas",
            input: input(pg(3), healthy3(), serving(0, 3)),
            actions: vec![],
            reason: Reason::Healthy,
            says: "demo-0 is the primary",
            then: |d| {
                assert_eq!(d.status.rw, Some(0));
                assert_eq!(d.status.ro, vec![1, 2]);
                assert_eq!(d.status.phase, Phase::Ready);
            },
        },
        Row {
            name: "the first unhealthy sighting of the primary starts the detection clock",
            input: input(
                pg(3),
                vec![
                    (0, unreachable()),
                    (1, replica(0, wal(1, 300))),
                    (2, replica(0, wal(1, 300))),
                ],
                serving(0, 3),
            ),
            actions: vec![],
            reason: Reason::PrimaryUnhealthy,
            says: "failing over if it stays so for 2000 ms",
            then: |d| {
                assert_eq!(d.memory.primary_unhealthy_since_ms, Some(NOW));
                assert!(d.actions.iter().any(|a| matches!(
                    a,
                    Action::Wait { recheck_at_ms: Some(t), .. } if *t == NOW + TIMEOUT
                )));
            },
        },
        Row {
            name: "the detection clock counts from the last sighting that the primary served",
            input: input(
                pg(3),
                vec![
                    (0, unreachable()),
                    (1, replica(0, wal(1, 300))),
                    (2, replica(0, wal(1, 300))),
                ],
                Memory {
                    primary_serving_at_ms: Some(NOW - 700),
                    ..serving(0, 3)
                },
            ),
            actions: vec![],
            reason: Reason::PrimaryUnhealthy,
            says: "demo-0 has been unreachable",
            then: |d| {
                assert_eq!(d.memory.primary_unhealthy_since_ms, Some(NOW - 700));
                assert!(d.actions.iter().any(|a| matches!(
                    a,
                    Action::Wait { recheck_at_ms: Some(t), .. } if *t == NOW - 700 + TIMEOUT
                )));
            },
        },
        Row {
            name: "not seen serving for the detection timeout, though first seen unhealthy just now, is failed over",
            input: input(
                pg(3),
                vec![
                    (0, unreachable()),
                    (1, replica(0, wal(1, 300))),
                    (2, replica(0, wal(1, 300))),
                ],
                Memory {
                    primary_serving_at_ms: Some(NOW - TIMEOUT),
                    ..serving(0, 3)
                },
            ),
            actions: vec![fence(0, FenceMethod::Kill)],
            reason: Reason::Fencing,
            says: "fencing demo-0",
            then: nothing,
        },
        Row {
            name: "a serving primary records when it was last seen serving",
            input: input(pg(3), healthy3(), serving(0, 3)),
            actions: vec![],
            reason: Reason::Healthy,
            says: "demo-0 is the primary",
            then: |d| assert_eq!(d.memory.primary_serving_at_ms, Some(NOW)),
        },
        Row {
            name: "a primary unhealthy for less than the detection timeout is not failed over",
            input: input(
                pg(3),
                vec![
                    (0, down()),
                    (1, replica(0, wal(1, 300))),
                    (2, replica(0, wal(1, 300))),
                ],
                Memory {
                    primary_unhealthy_since_ms: Some(NOW - TIMEOUT + 1),
                    ..serving(0, 3)
                },
            ),
            actions: vec![],
            reason: Reason::PrimaryUnhealthy,
            says: "demo-0 has been down",
            then: |d| assert!(d.memory.transition.is_none()),
        },
        Row {
            name: "a flap resets the detection clock",
            input: input(
                pg(3),
                healthy3(),
                Memory {
                    primary_unhealthy_since_ms: Some(NOW - TIMEOUT + 1),
                    ..serving(0, 3)
                },
            ),
            actions: vec![],
            reason: Reason::Healthy,
            says: "demo-0 is the primary",
            then: |d| assert_eq!(d.memory.primary_unhealthy_since_ms, None),
        },
        Row {
            name: "a hung primary (manager answers, server not ready) counts as unhealthy",
            input: input(
                pg(3),
                vec![
                    (
                        0,
                        with(primary(wal(1, 300)), |f| {
                            f.ready = false;
                            f.message = Some("query timed out".into());
                        }),
                    ),
                    (1, replica(0, wal(1, 300))),
                ],
                Memory {
                    primary_unhealthy_since_ms: Some(NOW - TIMEOUT),
                    ..serving(0, 3)
                },
            ),
            actions: vec![fence(0, FenceMethod::Kill)],
            reason: Reason::Fencing,
            says: "query timed out",
            then: nothing,
        },
        Row {
            name: "a read-only primary refuses writes and counts as unhealthy",
            input: input(
                pg(2),
                vec![
                    (0, with(primary(wal(1, 300)), |f| f.read_only = true)),
                    (1, replica(0, wal(1, 300))),
                ],
                serving(0, 2),
            ),
            actions: vec![],
            reason: Reason::PrimaryUnhealthy,
            says: "read-only",
            then: |d| assert_eq!(d.memory.primary_unhealthy_since_ms, Some(NOW)),
        },
        Row {
            name: "after the detection timeout the old primary is fenced before anything is promoted",
            input: input(
                pg(3),
                vec![
                    (0, unreachable()),
                    (1, replica(0, wal(1, 300))),
                    (2, replica(0, wal(1, 200))),
                ],
                Memory {
                    primary_unhealthy_since_ms: Some(NOW - TIMEOUT),
                    ..serving(0, 3)
                },
            ),
            actions: vec![fence(0, FenceMethod::Kill)],
            reason: Reason::Fencing,
            says: "fencing demo-0",
            then: |d| {
                assert_eq!(d.status.rw, None);
                let t = d.memory.transition.as_ref().unwrap();
                assert_eq!(t.kind, TransitionKind::Failover);
            },
        },
        Row {
            name: "with no replica able to replace it, an unhealthy primary is not fenced",
            input: input(
                maria(2),
                vec![
                    (
                        0,
                        with(primary(mariadb("0-1000-90")), |f| {
                            f.ready = false;
                            f.message = Some("no recent observation of the server".into());
                        }),
                    ),
                    (1, unreachable()),
                ],
                Memory {
                    primary_unhealthy_since_ms: Some(NOW - 3 * TIMEOUT),
                    ..serving(0, 2)
                },
            ),
            actions: vec![],
            reason: Reason::FailoverBlocked,
            says: "no replica can take its place (demo-1 is unreachable (connection refused)); not failing over",
            then: |d| {
                assert!(d.memory.transition.is_none());
                assert!(d.memory.fenced.is_empty());
            },
        },
        Row {
            name: "a down primary is still fenced first: a sighting before the order proves nothing",
            input: input(
                pg(2),
                vec![(0, down()), (1, replica(0, wal(1, 300)))],
                Memory {
                    primary_unhealthy_since_ms: Some(NOW - 10 * TIMEOUT),
                    ..serving(0, 2)
                },
            ),
            actions: vec![fence(0, FenceMethod::Kill)],
            reason: Reason::Fencing,
            says: "fencing demo-0",
            then: nothing,
        },
        Row {
            name: "an unreachable old primary blocks the promotion until it is seen fenced",
            input: input(
                pg(3),
                vec![
                    (0, unreachable()),
                    (1, replica(0, wal(1, 300))),
                    (2, replica(0, wal(1, 200))),
                ],
                failing_over(0, 3, false),
            ),
            actions: vec![fence(0, FenceMethod::Kill)],
            reason: Reason::Fencing,
            says: "must be seen stopped or read-only",
            then: nothing,
        },
        Row {
            name: "once the old primary is seen fenced the most advanced replica is promoted",
            input: input(
                pg(3),
                vec![
                    (0, down()),
                    (1, replica(0, wal(1, 100))),
                    (2, replica(0, wal(1, 200))),
                ],
                failing_over(0, 3, false),
            ),
            actions: vec![promote(2, 2)],
            reason: Reason::Promoting,
            says: "promoting demo-2",
            then: |d| assert_eq!(d.memory.fenced.get(&0).map(|f| f.confirmed), Some(true)),
        },
        Row {
            name: "a newer timeline beats a higher LSN on an older one",
            input: input(
                pg(3),
                vec![
                    (0, down()),
                    (1, replica(0, wal(2, 50))),
                    (2, replica(0, wal(1, 900))),
                ],
                failing_over(0, 3, true),
            ),
            actions: vec![promote(1, 2)],
            reason: Reason::Promoting,
            says: "promoting demo-1",
            then: nothing,
        },
        Row {
            name: "received WAL counts, not only replayed WAL",
            input: input(
                pg(3),
                vec![
                    (0, down()),
                    (
                        1,
                        with(replica(0, wal(1, 100)), |f| {
                            f.received_position = Some(wal(1, 300))
                        }),
                    ),
                    (2, replica(0, wal(1, 200))),
                ],
                failing_over(0, 3, true),
            ),
            actions: vec![promote(1, 2)],
            reason: Reason::Promoting,
            says: "promoting demo-1",
            then: nothing,
        },
        Row {
            name: "equally advanced replicas: the lowest ordinal is promoted",
            input: input(
                pg(3),
                vec![
                    (0, down()),
                    (1, replica(0, wal(1, 200))),
                    (2, replica(0, wal(1, 200))),
                ],
                failing_over(0, 3, true),
            ),
            actions: vec![promote(1, 2)],
            reason: Reason::Promoting,
            says: "promoting demo-1",
            then: nothing,
        },
        Row {
            name: "a diverged replica is never a candidate, however far ahead",
            input: input(
                pg(3),
                vec![
                    (0, down()),
                    (1, replica(0, wal(1, 100))),
                    (2, with(replica(0, wal(1, 900)), |f| f.diverged = true)),
                ],
                failing_over(0, 3, true),
            ),
            actions: vec![promote(1, 2)],
            reason: Reason::Promoting,
            says: "promoting demo-1",
            then: nothing,
        },
        Row {
            name: "a MariaDB replica with errant GTIDs is never a candidate",
            input: input(
                maria(3),
                vec![
                    (0, down()),
                    (1, replica(0, mariadb("0-1-100"))),
                    (
                        2,
                        with(replica(0, mariadb("0-1-100,5-3-2")), |f| f.diverged = true),
                    ),
                ],
                failing_over(0, 3, true),
            ),
            actions: vec![promote(1, 2)],
            reason: Reason::Promoting,
            says: "promoting demo-1",
            then: nothing,
        },
        Row {
            name: "MariaDB: the GTID superset is promoted",
            input: input(
                maria(3),
                vec![
                    (0, down()),
                    (1, replica(0, mariadb("0-1-90"))),
                    (2, replica(0, mariadb("0-1-100"))),
                ],
                failing_over(0, 3, true),
            ),
            actions: vec![promote(2, 2)],
            reason: Reason::Promoting,
            says: "promoting demo-2",
            then: nothing,
        },
        Row {
            name: "MySQL: the candidate applies its relay log before it is promoted",
            input: input(
                spec(Engine::Mysql, 3),
                vec![
                    (0, down()),
                    (
                        1,
                        with(replica(0, mysql("1-8")), |f| {
                            f.received_position = Some(mysql("1-10"))
                        }),
                    ),
                    (2, replica(0, mysql("1-9"))),
                ],
                failing_over(0, 3, true),
            ),
            actions: vec![],
            reason: Reason::Promoting,
            says: "applying its relay log (2 transactions",
            then: nothing,
        },
        Row {
            name: "incomparable GTID sets block the failover and say so",
            input: input(
                spec(Engine::Mysql, 3),
                vec![
                    (0, down()),
                    (1, replica(0, mysql("1-8:10"))),
                    (2, replica(0, mysql("1-9"))),
                ],
                failing_over(0, 3, true),
            ),
            actions: vec![],
            reason: Reason::FailoverBlocked,
            says: "no replica holds every transaction the others hold",
            then: |d| assert!(d.memory.transition.is_some()),
        },
        Row {
            name: "with no reachable replica the failover keeps trying and says why",
            input: input(
                pg(3),
                vec![(0, down()), (1, unreachable()), (2, down())],
                failing_over(0, 3, true),
            ),
            actions: vec![],
            reason: Reason::FailoverBlocked,
            says: "demo-1 is unreachable (connection refused); demo-2 is down",
            then: |d| {
                assert!(d.memory.transition.is_some());
                assert!(d.status.message.contains("retrying"));
            },
        },
        Row {
            name: "with no replica to take over, a returning fenced old primary takes writes again",
            input: input(
                pg(3),
                vec![
                    (0, stopped_primary(wal(1, 400))),
                    (1, unreachable()),
                    (2, down()),
                ],
                failing_over(0, 3, true),
            ),
            actions: vec![Action::Unfence { ordinal: 0 }],
            reason: Reason::FailoverBlocked,
            says: "demo-0 takes writes again",
            then: |d| assert!(!d.memory.fenced.contains_key(&0)),
        },
        Row {
            name: "synchronous: an unreachable standby that may hold acknowledged writes blocks promotion",
            input: synchronous(input(
                pg(3),
                vec![
                    (0, down()),
                    (1, replica(0, wal(1, 300))),
                    (2, unreachable()),
                ],
                failing_over(0, 3, true),
            )),
            actions: vec![],
            reason: Reason::FailoverBlocked,
            says: "demo-2 may hold acknowledged writes",
            then: |d| {
                assert!(
                    d.actions
                        .iter()
                        .all(|a| !matches!(a, Action::Promote { .. }))
                )
            },
        },
        Row {
            name: "asynchronous: an unreachable replica does not block promotion",
            input: input(
                pg(3),
                vec![
                    (0, down()),
                    (1, replica(0, wal(1, 300))),
                    (2, unreachable()),
                ],
                failing_over(0, 3, true),
            ),
            actions: vec![promote(1, 2)],
            reason: Reason::Promoting,
            says: "promoting demo-1",
            then: nothing,
        },
        Row {
            name: "synchronous: with every standby reporting, the one holding all is promoted",
            input: synchronous(input(
                pg(3),
                vec![
                    (0, down()),
                    (1, replica(0, wal(1, 100))),
                    (2, replica(0, wal(1, 200))),
                ],
                failing_over(0, 3, true),
            )),
            actions: vec![promote(2, 2)],
            reason: Reason::Promoting,
            says: "promoting demo-2",
            then: nothing,
        },
        Row {
            name: "synchronous: a candidate holding the fenced primary's final position is safe",
            input: synchronous(input(
                pg(3),
                vec![
                    (0, stopped_primary(wal(1, 300))),
                    (1, replica(0, wal(1, 300))),
                    (2, unreachable()),
                ],
                failing_over(0, 3, true),
            )),
            actions: vec![promote(1, 2)],
            reason: Reason::Promoting,
            says: "promoting demo-1",
            then: nothing,
        },
        Row {
            name: "synchronous: a standby ahead of the candidate but not running is waited for",
            input: synchronous(input(
                pg(3),
                vec![
                    (0, down()),
                    (1, replica(0, wal(1, 100))),
                    (
                        2,
                        with(replica(0, wal(1, 200)), |f| {
                            f.state = ServerState::Starting;
                            f.ready = false;
                        }),
                    ),
                ],
                failing_over(0, 3, true),
            )),
            actions: vec![],
            reason: Reason::FailoverBlocked,
            says: "which demo-1",
            then: nothing,
        },
        Row {
            name: "failover disabled: the lost primary is reported and nothing is done",
            input: failover_disabled(input(
                pg(3),
                vec![(0, down()), (1, replica(0, wal(1, 300)))],
                Memory {
                    primary_unhealthy_since_ms: Some(NOW - 100 * TIMEOUT),
                    ..serving(0, 3)
                },
            )),
            actions: vec![],
            reason: Reason::FailoverDisabled,
            says: "spec.failover.enabled: false",
            then: |d| assert!(d.memory.transition.is_none()),
        },
        Row {
            name: "a confirmed promotion makes rw follow the new primary and repoints the others",
            input: input(
                pg(3),
                vec![
                    (0, down()),
                    (1, replica(0, wal(1, 100))),
                    (2, primary(wal(2, 210))),
                ],
                {
                    let mut m = failing_over(0, 3, true);
                    m.transition.as_mut().unwrap().phase = TransitionPhase::Promoting {
                        candidate: 2,
                        since_ms: NOW - 100,
                        restore: false,
                        fork: Some(wal(1, 200)),
                    };
                    m
                },
            ),
            actions: vec![Action::Repoint {
                ordinal: 1,
                upstream: 2,
            }],
            reason: Reason::Degraded,
            says: "demo-2 is the primary",
            then: |d| {
                assert_eq!(d.memory.primary, Some(2));
                assert_eq!(d.memory.term, 2);
                assert_eq!(d.memory.fork, Some(wal(1, 200)));
                assert_eq!(d.memory.fenced[&0].floor, Some(wal(1, 200)));
                assert_eq!(d.status.rw, Some(2));
                assert!(!d.status.ro.contains(&2));
                assert!(d.memory.transition.is_none());
            },
        },
        Row {
            name: "a promotion not yet visible is ordered again",
            input: input(pg(3), vec![(0, down()), (1, replica(0, wal(1, 200)))], {
                let mut m = failing_over(0, 3, true);
                m.transition.as_mut().unwrap().phase = TransitionPhase::Promoting {
                    candidate: 1,
                    since_ms: NOW - 100,
                    restore: false,
                    fork: Some(wal(1, 200)),
                };
                m
            }),
            actions: vec![promote(1, 2)],
            reason: Reason::Promoting,
            says: "waiting for demo-1 to accept writes",
            then: |d| assert_eq!(d.status.rw, None),
        },
        Row {
            name: "a promoted candidate gone for the detection timeout is given up and fenced",
            input: input(
                pg(3),
                vec![
                    (0, down()),
                    (1, unreachable()),
                    (2, replica(0, wal(1, 150))),
                ],
                {
                    let mut m = failing_over(0, 3, true);
                    m.transition.as_mut().unwrap().phase = TransitionPhase::Promoting {
                        candidate: 1,
                        since_ms: NOW - TIMEOUT,
                        restore: false,
                        fork: Some(wal(1, 200)),
                    };
                    m
                },
            ),
            actions: vec![fence(1, FenceMethod::Kill)],
            reason: Reason::FailoverBlocked,
            says: "giving it up",
            // Its term is spent: its lease named it at term 2, and the managers that took
            // that lease refuse term 2 naming the next candidate; the next one gets term 3.
            then: |d| {
                assert!(d.memory.fenced.contains_key(&1));
                assert_eq!(d.memory.term, 2);
                assert_eq!(d.memory.lease_term(), 2);
            },
        },
        Row {
            name: "a returning old primary past the fork rejoins after pg_rewind",
            input: input(
                pg(3),
                vec![
                    (0, stopped_primary(wal(1, 300))),
                    (1, replica(2, wal(2, 400))),
                    (2, primary(wal(2, 400))),
                ],
                {
                    let mut m = serving(2, 3);
                    m.term = 2;
                    m.fork = Some(wal(1, 200));
                    fenced(&mut m, 0, FenceMethod::Kill, true);
                    m.fenced.get_mut(&0).unwrap().floor = m.fork.clone();
                    m
                },
            ),
            actions: vec![Action::Rejoin {
                ordinal: 0,
                upstream: 2,
                rewind: true,
            }],
            reason: Reason::Degraded,
            says: "pg_rewind",
            then: |d| assert!(d.memory.fenced.contains_key(&0)),
        },
        Row {
            name: "a returning old primary behind the fork rejoins without rewind",
            input: input(
                pg(3),
                vec![
                    (0, stopped_primary(wal(1, 150))),
                    (1, replica(2, wal(2, 400))),
                    (2, primary(wal(2, 400))),
                ],
                {
                    let mut m = serving(2, 3);
                    m.fork = Some(wal(1, 200));
                    fenced(&mut m, 0, FenceMethod::Kill, true);
                    m.fenced.get_mut(&0).unwrap().floor = m.fork.clone();
                    m
                },
            ),
            actions: vec![Action::Rejoin {
                ordinal: 0,
                upstream: 2,
                rewind: false,
            }],
            reason: Reason::Degraded,
            says: "demo-0 rejoins as a replica",
            then: nothing,
        },
        Row {
            name: "a rejoined old primary following the new one is no longer fenced",
            input: input(
                pg(3),
                vec![
                    (0, replica(2, wal(2, 400))),
                    (1, replica(2, wal(2, 400))),
                    (2, primary(wal(2, 400))),
                ],
                {
                    let mut m = serving(2, 3);
                    m.fork = Some(wal(1, 200));
                    fenced(&mut m, 0, FenceMethod::Kill, true);
                    m.fenced.get_mut(&0).unwrap().floor = m.fork.clone();
                    m
                },
            ),
            actions: vec![],
            reason: Reason::Healthy,
            says: "all 3 instances are ready",
            then: |d| {
                assert!(d.memory.fenced.is_empty());
                assert_eq!(d.status.ro, vec![0, 1]);
            },
        },
        Row {
            name: "a MariaDB old primary with errant transactions is rebuilt, not rejoined",
            input: input(
                maria(3),
                vec![
                    (0, stopped_primary(mariadb("0-1-105"))),
                    (1, replica(2, mariadb("0-2-110"))),
                    (2, primary(mariadb("0-2-110"))),
                ],
                {
                    let mut m = serving(2, 3);
                    m.fork = Some(mariadb("0-1-100"));
                    fenced(&mut m, 0, FenceMethod::Kill, true);
                    m.fenced.get_mut(&0).unwrap().floor = m.fork.clone();
                    m
                },
            ),
            actions: vec![Action::Rebuild {
                ordinal: 0,
                upstream: 2,
            }],
            reason: Reason::Degraded,
            says: "errant GTIDs",
            then: nothing,
        },
        Row {
            name: "a MariaDB old primary that reports no GTID set (stopped while it is demoted) waits instead of being rebuilt",
            input: unreported_old_primary(FenceMethod::ReadOnly),
            actions: vec![],
            reason: Reason::Degraded,
            says: "demo-0 waits to rejoin until it and the primary report their GTID sets",
            then: |d| assert!(d.memory.fenced.contains_key(&0)),
        },
        Row {
            name: "a killed MariaDB old primary that never reported its GTID set rejoins, its manager checking it",
            input: unreported_old_primary(FenceMethod::Kill),
            actions: vec![Action::Rejoin {
                ordinal: 0,
                upstream: 2,
                rewind: false,
            }],
            reason: Reason::Degraded,
            says: "demo-0 rejoins as a replica once its manager found no transaction demo-2 lacks",
            then: nothing,
        },
        Row {
            name: "a MariaDB old primary without errant transactions rejoins",
            input: input(
                maria(3),
                vec![
                    (0, stopped_primary(mariadb("0-1-100"))),
                    (1, replica(2, mariadb("0-2-110"))),
                    (2, primary(mariadb("0-2-110"))),
                ],
                {
                    let mut m = serving(2, 3);
                    m.fork = Some(mariadb("0-1-100"));
                    fenced(&mut m, 0, FenceMethod::Kill, true);
                    m.fenced.get_mut(&0).unwrap().floor = m.fork.clone();
                    m
                },
            ),
            actions: vec![Action::Rejoin {
                ordinal: 0,
                upstream: 2,
                rewind: false,
            }],
            reason: Reason::Degraded,
            says: "demo-0 rejoins",
            then: nothing,
        },
        Row {
            name: "a MariaDB replica past the fork that follows a replica of the primary is repointed, not rebuilt",
            input: input(
                maria(3),
                vec![
                    (0, primary(mariadb("0-1-150"))),
                    (1, replica(0, mariadb("0-1-150"))),
                    (2, replica(1, mariadb("0-1-150"))),
                ],
                Memory {
                    fork: Some(mariadb("0-2-100")),
                    ..serving(0, 3)
                },
            ),
            actions: vec![Action::Repoint {
                ordinal: 2,
                upstream: 0,
            }],
            reason: Reason::Degraded,
            says: "demo-2 is being repointed to demo-0",
            then: nothing,
        },
        Row {
            name: "a MariaDB replica past the fork that follows a replica not on the primary's line is rebuilt",
            input: input(
                maria(3),
                vec![
                    (0, primary(mariadb("0-1-150"))),
                    (
                        1,
                        with(replica(0, mariadb("0-2-120")), |f| {
                            f.upstream = Some(2);
                        }),
                    ),
                    (2, replica(1, mariadb("0-2-120"))),
                ],
                Memory {
                    fork: Some(mariadb("0-2-100")),
                    ..serving(0, 3)
                },
            ),
            actions: vec![
                Action::Rebuild {
                    ordinal: 1,
                    upstream: 0,
                },
                Action::Rebuild {
                    ordinal: 2,
                    upstream: 0,
                },
            ],
            reason: Reason::Degraded,
            says: "demo-2 diverged from the primary's history and is being repaired",
            then: nothing,
        },
        Row {
            name: "a replica following the wrong upstream is repointed to the primary",
            input: input(
                pg(3),
                vec![
                    (0, primary(wal(1, 300))),
                    (1, replica(0, wal(1, 300))),
                    (2, replica(1, wal(1, 300))),
                ],
                serving(0, 3),
            ),
            actions: vec![Action::Repoint {
                ordinal: 2,
                upstream: 0,
            }],
            reason: Reason::Degraded,
            says: "demo-2 is being repointed to demo-0",
            then: nothing,
        },
        Row {
            name: "a PostgreSQL replica on the old timeline past the fork is rewound",
            input: input(
                pg(3),
                vec![
                    (0, replica(2, wal(2, 300))),
                    (1, replica(0, wal(1, 250))),
                    (2, primary(wal(2, 300))),
                ],
                Memory {
                    fork: Some(wal(1, 200)),
                    ..serving(2, 3)
                },
            ),
            actions: vec![Action::Rejoin {
                ordinal: 1,
                upstream: 2,
                rewind: true,
            }],
            reason: Reason::Degraded,
            says: "diverged",
            then: nothing,
        },
        Row {
            name: "a PostgreSQL replica that cannot follow across timelines is rewound",
            input: input(
                pg(3),
                vec![
                    (0, replica(2, wal(3, 500))),
                    (
                        1,
                        with(replica(2, wal(1, 150)), |f| {
                            f.replication_error = Some(
                                "requested timeline 3 is not a child of this server's history"
                                    .into(),
                            )
                        }),
                    ),
                    (2, primary(wal(3, 500))),
                ],
                Memory {
                    fork: Some(wal(2, 400)),
                    ..serving(2, 3)
                },
            ),
            actions: vec![Action::Rejoin {
                ordinal: 1,
                upstream: 2,
                rewind: true,
            }],
            reason: Reason::Degraded,
            says: "demo-1 diverged",
            then: nothing,
        },
        Row {
            name: "a fenced instance whose data is gone is created again",
            input: input(
                pg(3),
                vec![(1, replica(2, wal(2, 400))), (2, primary(wal(2, 400)))],
                {
                    let mut m = serving(2, 3);
                    fenced(&mut m, 0, FenceMethod::Kill, true);
                    m
                },
            ),
            actions: vec![Action::Create {
                ordinal: 0,
                bootstrap: Bootstrap::CloneFrom { upstream: 2 },
            }],
            reason: Reason::Creating,
            says: "demo-0 is being created",
            then: |d| assert!(d.memory.fenced.is_empty()),
        },
        Row {
            name: "ro leaves out a ready replica that follows someone other than the primary",
            input: input(
                pg(3),
                vec![
                    (0, primary(wal(1, 300))),
                    (1, replica(0, wal(1, 300))),
                    (2, replica(1, wal(1, 300))),
                ],
                serving(0, 3),
            ),
            actions: vec![Action::Repoint {
                ordinal: 2,
                upstream: 0,
            }],
            reason: Reason::Degraded,
            says: "demo-2 is being repointed",
            then: |d| assert_eq!(d.status.ro, vec![1]),
        },
        Row {
            name: "a MariaDB replica flagged errant is rebuilt",
            input: input(
                maria(2),
                vec![
                    (0, primary(mariadb("0-1-300"))),
                    (
                        1,
                        with(replica(0, mariadb("0-1-300,9-9-1")), |f| f.diverged = true),
                    ),
                ],
                serving(0, 2),
            ),
            actions: vec![Action::Rebuild {
                ordinal: 1,
                upstream: 0,
            }],
            reason: Reason::Degraded,
            says: "diverged",
            then: nothing,
        },
        Row {
            name: "a second writable instance is fenced at once",
            input: input(
                pg(3),
                vec![
                    (0, primary(wal(1, 300))),
                    (1, replica(0, wal(1, 300))),
                    (2, primary(wal(1, 280))),
                ],
                serving(0, 3),
            ),
            actions: vec![fence(2, FenceMethod::Kill)],
            reason: Reason::Degraded,
            says: "demo-2 is running primary but not the primary: fencing it",
            then: |d| assert_eq!(d.status.rw, Some(0)),
        },
        Row {
            name: "nothing is promoted while another instance still accepts writes",
            input: input(
                pg(3),
                vec![
                    (0, down()),
                    (1, replica(0, wal(1, 300))),
                    (2, primary(wal(1, 100))),
                ],
                failing_over(0, 3, true),
            ),
            actions: vec![fence(2, FenceMethod::Kill)],
            reason: Reason::Fencing,
            says: "fencing demo-2",
            then: nothing,
        },
        Row {
            name: "a PostgreSQL switchover stops the primary cleanly first",
            input: requesting(input(pg(3), healthy3(), serving(0, 3)), Some(2)),
            actions: vec![fence(0, FenceMethod::Shutdown)],
            reason: Reason::Fencing,
            says: "switchover from demo-0 to demo-2",
            then: |d| assert_eq!(d.status.rw, None),
        },
        Row {
            name: "a MariaDB switchover makes the primary read-only first",
            input: requesting(
                input(
                    maria(2),
                    vec![
                        (0, primary(mariadb("0-1-9"))),
                        (1, replica(0, mariadb("0-1-9"))),
                    ],
                    serving(0, 2),
                ),
                None,
            ),
            actions: vec![fence(0, FenceMethod::ReadOnly)],
            reason: Reason::Fencing,
            says: "switchover from demo-0 to demo-1",
            then: nothing,
        },
        Row {
            name: "a switchover waits for the target to catch up with the final position",
            input: input(
                maria(2),
                vec![
                    (0, with(primary(mariadb("0-1-10")), |f| f.read_only = true)),
                    (1, replica(0, mariadb("0-1-8"))),
                ],
                {
                    let mut m = switching_over(0, 1, 2, TransitionPhase::CatchingUp);
                    fenced(&mut m, 0, FenceMethod::ReadOnly, true);
                    m
                },
            ),
            actions: vec![],
            reason: Reason::CatchingUp,
            says: "2 behind",
            then: nothing,
        },
        Row {
            name: "a switchover promotes the target once it holds the final position",
            input: input(
                maria(2),
                vec![
                    (0, with(primary(mariadb("0-1-10")), |f| f.read_only = true)),
                    (1, replica(0, mariadb("0-1-10"))),
                ],
                {
                    let mut m = switching_over(0, 1, 2, TransitionPhase::CatchingUp);
                    fenced(&mut m, 0, FenceMethod::ReadOnly, true);
                    m
                },
            ),
            actions: vec![promote(1, 2)],
            reason: Reason::Promoting,
            says: "promoting demo-1",
            then: nothing,
        },
        Row {
            name: "a switchover that cannot catch up in time is abandoned and the old primary takes writes again",
            input: input(
                maria(2),
                vec![
                    (0, with(primary(mariadb("0-1-10")), |f| f.read_only = true)),
                    (1, replica(0, mariadb("0-1-8"))),
                ],
                {
                    let mut m = switching_over(0, 1, 2, TransitionPhase::CatchingUp);
                    m.transition.as_mut().unwrap().started_ms = NOW - 30_000;
                    fenced(&mut m, 0, FenceMethod::ReadOnly, true);
                    m
                },
            ),
            actions: vec![Action::Unfence { ordinal: 0 }],
            reason: Reason::SwitchoverAbandoned,
            says: "did not catch up within 30000 ms",
            then: nothing,
        },
        Row {
            name: "a switchover to the primary itself is refused",
            input: requesting(input(pg(3), healthy3(), serving(0, 3)), Some(0)),
            actions: vec![],
            reason: Reason::SwitchoverRefused,
            says: "demo-0 is already the primary",
            then: |d| assert!(d.memory.transition.is_none()),
        },
        Row {
            name: "a switchover to a replica that cannot take over is refused",
            input: requesting(
                input(
                    pg(3),
                    vec![
                        (0, primary(wal(1, 300))),
                        (1, replica(0, wal(1, 300))),
                        (2, unreachable()),
                    ],
                    serving(0, 3),
                ),
                Some(2),
            ),
            actions: vec![],
            reason: Reason::SwitchoverRefused,
            says: "demo-2 cannot take over",
            then: nothing,
        },
        Row {
            name: "a switchover is refused while the primary is unhealthy",
            input: requesting(
                input(
                    pg(3),
                    vec![(0, unreachable()), (1, replica(0, wal(1, 300)))],
                    serving(0, 3),
                ),
                None,
            ),
            actions: vec![],
            reason: Reason::SwitchoverRefused,
            says: "a failover, not a switchover",
            then: nothing,
        },
        Row {
            name: "scaling down removes the surplus replica",
            input: input(pg(2), healthy3(), serving(0, 3)),
            actions: vec![Action::Remove { ordinal: 2 }],
            reason: Reason::Degraded,
            says: "demo-2 is being removed",
            then: |d| assert_eq!(d.status.ro, vec![1]),
        },
        Row {
            name: "a removed replica, stopped with its data kept, leaves the cluster healthy",
            input: input(
                pg(2),
                vec![
                    (0, primary(wal(1, 300))),
                    (1, replica(0, wal(1, 300))),
                    (2, down()),
                ],
                serving(0, 3),
            ),
            actions: vec![],
            reason: Reason::Healthy,
            says: "all 2 instances are ready",
            then: |d| assert_eq!(d.status.ro, vec![1]),
        },
        Row {
            name: "scaling down below the primary's ordinal switches over first",
            input: input(
                pg(2),
                vec![
                    (0, replica(2, wal(1, 300))),
                    (1, replica(2, wal(1, 300))),
                    (2, primary(wal(1, 300))),
                ],
                serving(2, 3),
            ),
            actions: vec![fence(2, FenceMethod::Shutdown)],
            reason: Reason::Fencing,
            says: "beyond spec.instances",
            then: nothing,
        },
        Row {
            name: "with the memory lost, the reported primary is adopted",
            input: input(pg(3), healthy3(), Memory::default()),
            actions: vec![],
            reason: Reason::Healthy,
            says: "adopted demo-0",
            then: |d| assert_eq!(d.memory.primary, Some(0)),
        },
        Row {
            name: "with the memory lost and two writable instances, the less advanced is fenced",
            input: input(
                pg(2),
                vec![(0, primary(wal(1, 100))), (1, primary(wal(2, 50)))],
                Memory::default(),
            ),
            actions: vec![fence(0, FenceMethod::Kill)],
            reason: Reason::Degraded,
            says: "demo-0 is running primary but not the primary: fencing it",
            then: |d| assert_eq!(d.memory.primary, Some(1)),
        },
    ]
}

fn without_waits(actions: &[Action]) -> Vec<Action> {
    actions
        .iter()
        .filter(|a| !matches!(a, Action::Wait { .. }))
        .cloned()
        .collect()
}

#[test]
fn every_situation_gives_its_actions() {
    let rows = rows();
    assert!(
        rows.len() >= 30,
        "the table must hold at least 30 situations"
    );
    let mut names = BTreeSet::new();
    let mut failures = Vec::new();
    for row in &rows {
        assert!(names.insert(row.name), "duplicate row name {:?}", row.name);
        let decision = decide(&row.input);
        let actions = without_waits(&decision.actions);
        let mut problems = Vec::new();
        if actions != row.actions {
            problems.push(format!(
                "actions: want {:?}\n              got  {:?}",
                row.actions, actions
            ));
        }
        if decision.status.reason != row.reason {
            problems.push(format!(
                "reason: want {:?}, got {:?}",
                row.reason, decision.status.reason
            ));
        }
        if !decision.status.message.contains(row.says) {
            problems.push(format!(
                "message {:?} does not say {:?}",
                decision.status.message, row.says
            ));
        }
        if problems.is_empty() {
            let then = row.then;
            if let Err(panic) = std::panic::catch_unwind(|| then(&decision)) {
                let text = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                problems.push(format!("check failed: {text}"));
            }
        }
        if !problems.is_empty() {
            failures.push(format!("{}:\n  {}", row.name, problems.join("\n  ")));
        }
    }
    assert!(failures.is_empty(), "\n{}\n", failures.join("\n\n"));
}

#[test]
fn a_waiting_decision_always_says_why() {
    for row in rows() {
        let decision = decide(&row.input);
        assert!(!decision.status.message.is_empty(), "{}", row.name);
        for action in &decision.actions {
            if let Action::Wait { reason, .. } = action {
                assert!(!reason.is_empty(), "{}", row.name);
            }
        }
    }
}

#[test]
fn cluster_spec_reads_the_database_and_names_a_bad_timeout() {
    let yaml = "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: demo\nspec:\n  engine: postgres\n  instances: 3\n  replication:\n    synchronous: true\n  failover:\n    detectionTimeout: 1500ms\n";
    let db: stator_api::Database = load(yaml);
    let spec = ClusterSpec::from_database(&db).unwrap();
    assert_eq!(spec.detection_timeout_ms, 1500);
    assert!(spec.synchronous && spec.failover_enabled);
    assert_eq!(spec.instances, 3);
    assert_eq!(spec.ordinal_of("demo-2"), Some(2));
    assert_eq!(spec.ordinal_of("demo-x"), None);
    assert_eq!(spec.ordinal_of("other-1"), None);
    let mut bad = db.clone();
    bad.spec.failover.detection_timeout = "soon".into();
    let error = ClusterSpec::from_database(&bad).unwrap_err();
    assert!(
        error.to_string().contains("spec.failover.detectionTimeout"),
        "{error}"
    );
}

fn load(yaml: &str) -> stator_api::Database {
    stator_api::load_database(yaml).unwrap().database
}
