//! Property tests of the decision core's invariants.
//!
//! Two kinds:
//! - over random single situations (any spec, any observations, any memory): determinism; a
//!   promotion only when no other instance may accept writes; a failover promotes no replica
//!   behind another eligible one; in synchronous mode none that may lack an acknowledged write;
//! - over random sequences of events against a simulated cluster (crashes, hangs, partitions
//!   between the shell and an instance, restarts, writes, replication, switchover requests),
//!   where the core's actions are applied to the simulated truth: never two writable instances,
//!   in synchronous mode no acknowledged write missing from a writable instance, never a rejoin
//!   without rewind of an instance whose history diverged, and once the chaos stops the
//!   cluster always gets a primary back (a failover never stalls for good).

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use stator_api::instance::ServerState;
use stator_api::position::{
    Lsn, MariadbGtid, MariadbGtidPosition, MysqlGtidSet, ReplicationPosition, WalPosition,
};
use stator_api::{Engine, Role};
use stator_control::{
    Action, Bootstrap, ClusterSpec, Decision, Fence, FenceMethod, Input, InstanceFacts, Memory,
    Presence, Request, Transition, TransitionKind, TransitionPhase, decide,
};

// ======================================================================= random situations

const UUID: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";

fn position(engine: Engine, timeline: u32, n: u64, errant: bool) -> ReplicationPosition {
    match engine {
        Engine::Postgres => ReplicationPosition::Wal(WalPosition {
            timeline,
            lsn: Lsn(n),
        }),
        Engine::Mariadb => {
            let mut gtids = vec![MariadbGtid {
                domain: 0,
                server: 1,
                sequence: n,
            }];
            if errant {
                gtids.push(MariadbGtid {
                    domain: 1,
                    server: 9,
                    sequence: 1,
                });
            }
            ReplicationPosition::Mariadb {
                gtid: MariadbGtidPosition::from_gtids(gtids),
            }
        }
        Engine::Mysql => {
            let mut set = MysqlGtidSet::new();
            set.insert_range(UUID, 1, n);
            if errant {
                set.insert_range(UUID, n + 2, n + 2);
            }
            ReplicationPosition::Mysql { gtid: set }
        }
    }
}

fn engine() -> impl Strategy<Value = Engine> {
    prop::sample::select(vec![Engine::Postgres, Engine::Mariadb, Engine::Mysql])
}

fn facts(engine: Engine) -> impl Strategy<Value = InstanceFacts> {
    (
        prop::sample::select(vec![
            ServerState::Initializing,
            ServerState::Starting,
            ServerState::Running,
            ServerState::Running,
            ServerState::Running,
            ServerState::Stopped,
            ServerState::Crashed,
            ServerState::Failed,
        ]),
        prop::option::weighted(
            0.9,
            prop::sample::select(vec![Role::Primary, Role::Replica, Role::Replica]),
        ),
        any::<bool>(),
        prop::bool::weighted(0.15),
        (
            1u32..3,
            0u64..6,
            0u64..3,
            prop::bool::weighted(0.2),
            prop::bool::weighted(0.9),
        ),
        prop::option::of(0u32..4),
        prop::bool::weighted(0.15),
    )
        .prop_map(
            move |(
                state,
                role,
                ready,
                read_only,
                (timeline, applied, extra, errant, known),
                upstream,
                diverged,
            )| {
                InstanceFacts {
                    state,
                    role,
                    ready,
                    read_only,
                    position: known.then(|| position(engine, timeline, applied, errant)),
                    received_position: known
                        .then(|| position(engine, timeline, applied + extra, errant)),
                    upstream,
                    replication_error: None,
                    diverged,
                    empty: false,
                    message: None,
                }
            },
        )
}

fn presence(engine: Engine) -> impl Strategy<Value = Presence> {
    prop_oneof![
        1 => Just(Presence::Absent),
        1 => Just(Presence::Down { reason: "exited".into() }),
        1 => Just(Presence::Unreachable { reason: "timeout".into() }),
        5 => facts(engine).prop_map(Presence::Reported),
    ]
}

fn memory(engine: Engine) -> impl Strategy<Value = Memory> {
    (
        0u64..4,
        prop::option::of(0u32..4),
        any::<bool>(),
        prop::option::of(0u64..10_000),
        prop::option::of((
            any::<bool>(),
            prop::option::of(0u32..4),
            prop::option::of(0u32..4),
            0u64..10_000,
            0u8..3,
            0u32..4,
            any::<bool>(),
        )),
        prop::collection::btree_map(
            0u32..4,
            (
                prop::sample::select(vec![
                    FenceMethod::Kill,
                    FenceMethod::Shutdown,
                    FenceMethod::ReadOnly,
                ]),
                any::<bool>(),
            ),
            0..3,
        ),
        prop::collection::btree_set(0u32..4, 0..4),
        prop::option::of((1u32..3, 0u64..6)),
    )
        .prop_map(
            move |(term, primary, confirmed, since, transition, fenced, sync, fork)| Memory {
                term,
                primary,
                primary_confirmed: confirmed,
                primary_unhealthy_since_ms: since,
                primary_serving_at_ms: None,
                transition: transition.map(
                    |(failover, from, target, started, phase, candidate, restore)| Transition {
                        kind: if failover {
                            TransitionKind::Failover
                        } else {
                            TransitionKind::Switchover
                        },
                        from,
                        target,
                        started_ms: started,
                        phase: match phase {
                            0 => TransitionPhase::Fencing,
                            1 => TransitionPhase::CatchingUp,
                            _ => TransitionPhase::Promoting {
                                candidate,
                                since_ms: started,
                                restore,
                                fork: None,
                            },
                        },
                    },
                ),
                fenced: fenced
                    .into_iter()
                    .map(|(o, (method, confirmed))| {
                        (
                            o,
                            Fence {
                                method,
                                confirmed,
                                floor: None,
                            },
                        )
                    })
                    .collect(),
                sync_standbys: sync,
                fork: fork.map(|(t, n)| position(engine, t, n, false)),
            },
        )
}

fn situation() -> impl Strategy<Value = Input> {
    engine().prop_flat_map(|engine| {
        (
            1u32..5,
            any::<bool>(),
            any::<bool>(),
            prop::collection::btree_map(0u32..5, presence(engine), 0..5),
            0u64..20_000,
            memory(engine),
            prop::option::weighted(0.2, prop::option::of(0u32..4)),
        )
            .prop_map(
                move |(instances, synchronous, enabled, observed, now, memory, request)| Input {
                    spec: ClusterSpec {
                        name: "demo".into(),
                        engine,
                        instances,
                        synchronous,
                        failover_enabled: enabled,
                        detection_timeout_ms: 2_000,
                        switchover_timeout_ms: 30_000,
                    },
                    observed,
                    now_ms: now,
                    memory,
                    request: request.map(|to| Request::Switchover { to }),
                    leases: None,
                    unroutable: Default::default(),
                },
            )
    })
}

/// Situations in the middle of a failover from instance 0, where promotions happen.
fn failover_situation() -> impl Strategy<Value = Input> {
    engine().prop_flat_map(|engine| {
        (
            2u32..5,
            any::<bool>(),
            prop_oneof![
                Just(Presence::Down { reason: "exited".into() }),
                Just(Presence::Unreachable { reason: "timeout".into() }),
                (0u64..6).prop_map(move |n| Presence::Reported(InstanceFacts {
                    state: ServerState::Stopped,
                    role: Some(Role::Primary),
                    ready: false,
                    read_only: false,
                    position: Some(position(engine, 1, n, false)),
                    received_position: None,
                    upstream: None,
                    replication_error: None,
                    diverged: false,
                    empty: false,
                    message: None,
                })),
            ],
            prop::collection::vec(
                prop_oneof![
                    6 => (1u32..3, 0u64..6, 0u64..3, prop::bool::weighted(0.1), prop::bool::weighted(0.1)).prop_map(
                        move |(timeline, applied, extra, errant, diverged)| {
                            Presence::Reported(InstanceFacts {
                                state: ServerState::Running,
                                role: Some(Role::Replica),
                                ready: true,
                                read_only: false,
                                position: Some(position(engine, timeline, applied, errant)),
                                received_position: Some(position(engine, timeline, applied + extra, errant)),
                                upstream: Some(0),
                                replication_error: None,
                                diverged,
                                empty: false,
                                message: None,
                            })
                        }
                    ),
                    1 => presence(engine),
                ],
                4,
            ),
            any::<bool>(),
            prop::option::of((1u32..3, 0u64..6)),
        )
            .prop_map(move |(instances, synchronous, old, replicas, confirmed, fork)| {
                let mut observed: BTreeMap<u32, Presence> = BTreeMap::new();
                observed.insert(0, old);
                for (i, r) in replicas.into_iter().enumerate().take(instances as usize - 1) {
                    observed.insert(i as u32 + 1, r);
                }
                let mut fenced = BTreeMap::new();
                fenced.insert(0, Fence { method: FenceMethod::Kill, confirmed, floor: None });
                Input {
                    spec: ClusterSpec {
                        name: "demo".into(),
                        engine,
                        instances,
                        synchronous,
                        failover_enabled: true,
                        detection_timeout_ms: 2_000,
                        switchover_timeout_ms: 30_000,
                    },
                    observed,
                    now_ms: 50_000,
                    memory: Memory {
                        term: 1,
                        primary: Some(0),
                        primary_confirmed: true,
                        primary_unhealthy_since_ms: Some(40_000),
                        primary_serving_at_ms: None,
                        transition: Some(Transition {
                            kind: TransitionKind::Failover,
                            from: Some(0),
                            target: None,
                            started_ms: 45_000,
                            phase: TransitionPhase::Fencing,
                        }),
                        fenced,
                        sync_standbys: (1..instances).collect(),
                        fork: fork.map(|(t, n)| position(engine, t, n, false)),
                    },
                    request: None,
                    leases: None,
                    unroutable: Default::default(),
                }
            })
    })
}

fn any_situation() -> impl Strategy<Value = Input> {
    prop_oneof![situation(), failover_situation()]
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

/// An instance that may accept writes as far as the core can know: the test's own statement
/// of the fencing rule. A fence counts only when it was ordered in an earlier decision and the
/// instance is seen unable to write now (or was seen so before: the shell holds it).
fn may_write(input: &Input, ordinal: u32, promoted: u32) -> bool {
    let presence = input.presence(ordinal);
    let memory = &input.memory;
    if let Some(fence) = memory.fenced.get(&ordinal) {
        return presence.writable() || !(fence.confirmed || presence.cannot_write());
    }
    let from = memory.transition.as_ref().and_then(|t| t.from);
    let candidate = match &memory.transition {
        Some(Transition {
            phase: TransitionPhase::Promoting { candidate, .. },
            ..
        }) => Some(*candidate),
        _ => None,
    };
    let was_writer = memory.primary == Some(ordinal)
        || from == Some(ordinal)
        || (candidate == Some(ordinal) && ordinal != promoted);
    if was_writer {
        return !matches!(presence, Presence::Absent);
    }
    presence.writable()
        || (!presence.cannot_write()
            && presence
                .facts()
                .is_some_and(|f| f.role == Some(Role::Primary)))
}

/// The promotion of `ordinal` was decided in an earlier decision (and is only repeated now).
fn ordered_before(input: &Input, ordinal: u32) -> bool {
    matches!(
        &input.memory.transition,
        Some(Transition { phase: TransitionPhase::Promoting { candidate, .. }, .. }) if *candidate == ordinal
    )
}

/// The test's own notion of a promotable replica (mirrors the documented rules).
fn eligible(input: &Input, ordinal: u32, from: Option<u32>) -> Option<ReplicationPosition> {
    if ordinal >= input.spec.instances
        || Some(ordinal) == from
        || input.memory.fenced.contains_key(&ordinal)
    {
        return None;
    }
    let f = input.facts(ordinal)?;
    if f.state != ServerState::Running || f.role != Some(Role::Replica) || f.diverged {
        return None;
    }
    let held = f.held()?;
    let follows = f.upstream.is_some() && f.upstream == input.memory.primary;
    let past_fork = match (&input.memory.fork, &held) {
        (Some(ReplicationPosition::Wal(k)), ReplicationPosition::Wal(h)) => {
            h.timeline == k.timeline && h.lsn > k.lsn
        }
        (Some(ReplicationPosition::Wal(_)), _) => false,
        (Some(k), h) => !follows && !k.includes(h),
        (None, _) => false,
    };
    (!past_fork).then_some(held)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn the_same_input_gives_the_same_decision(input in any_situation()) {
        prop_assert_eq!(decide(&input), decide(&input.clone()));
    }

    #[test]
    fn a_promotion_happens_only_when_no_other_instance_may_write(input in any_situation()) {
        let decision = decide(&input);
        for x in promoted(&decision) {
            for y in input.observed.keys().copied().chain(input.memory.fenced.keys().copied()).chain(input.memory.primary) {
                if y != x {
                    prop_assert!(
                        !may_write(&input, y, x),
                        "promoted {x} while {y} may write: {:?}\n{:?}", input.presence(y), decision
                    );
                }
            }
            prop_assert!(promoted(&decision).len() == 1, "two promotions in one decision");
        }
    }

    #[test]
    fn a_failover_never_promotes_a_replica_behind_another_eligible_one(input in any_situation()) {
        let decision = decide(&input);
        let failover = matches!(&decision.memory.transition, Some(t) if t.kind == TransitionKind::Failover);
        for action in &decision.actions {
            let Action::Promote { ordinal, .. } = action else { continue };
            if !failover || ordered_before(&input, *ordinal) {
                continue;
            }
            let from = decision.memory.transition.as_ref().and_then(|t| t.from);
            let held = input.facts(*ordinal).and_then(|f| f.held()).expect("promoted without a position");
            for other in input.observed.keys().copied() {
                if other == *ordinal {
                    continue;
                }
                if let Some(theirs) = eligible(&input, other, from) {
                    prop_assert!(
                        held.includes(&theirs),
                        "promoted {ordinal} holding {held} although {other} holds {theirs}"
                    );
                }
            }
        }
    }

    #[test]
    fn synchronous_mode_never_promotes_a_replica_that_may_lack_an_acknowledged_write(
        input in any_situation().prop_map(|mut i| { i.spec.synchronous = true; i })
    ) {
        let decision = decide(&input);
        for action in &decision.actions {
            let Action::Promote { ordinal, .. } = action else { continue };
            if ordered_before(&input, *ordinal) {
                continue;
            }
            let from = decision.memory.transition.as_ref().and_then(|t| t.from);
            let held = input.facts(*ordinal).and_then(|f| f.held()).expect("promoted without a position");
            let holds_final = from.is_some_and(|old| {
                input.memory.fenced.contains_key(&old)
                    && input.facts(old).and_then(|f| f.held()).is_some_and(|fin| held.includes(&fin))
            });
            if holds_final {
                continue;
            }
            for &standby in &input.memory.sync_standbys {
                if standby == *ordinal || Some(standby) == from {
                    continue;
                }
                match input.presence(standby) {
                    Presence::Absent => {}
                    Presence::Reported(f) if f.diverged => {}
                    Presence::Reported(f) => {
                        let theirs = f.held();
                        prop_assert!(
                            theirs.as_ref().is_some_and(|t| held.includes(t)),
                            "promoted {ordinal} ({held}) although standby {standby} holds {theirs:?}"
                        );
                    }
                    other => prop_assert!(false, "promoted {ordinal} although standby {standby} is {other:?}"),
                }
            }
        }
    }

    #[test]
    fn every_decision_explains_itself(input in any_situation()) {
        let decision = decide(&input);
        prop_assert!(!decision.status.message.is_empty());
        if let Some(rw) = decision.status.rw {
            prop_assert!(!decision.status.ro.contains(&rw));
        }
    }
}

// ======================================================================= simulated cluster

#[derive(Clone, Debug)]
struct Entry {
    id: u64,
    writer: u32,
    timeline: u32,
}

#[derive(Clone, Debug, Default)]
struct Node {
    exists: bool,
    running: bool,
    hung: bool,
    /// Cut off from the shell (and from clients).
    partitioned: bool,
    /// The shell's record that this instance is fenced: it is not started again.
    held: bool,
    primary: bool,
    read_only: bool,
    log: Vec<Entry>,
    upstream: Option<u32>,
}

impl Node {
    fn writable(&self) -> bool {
        // A hung primary is counted: it accepts writes again the moment it resumes.
        self.exists && self.running && self.primary && !self.read_only
    }

    fn live(&self) -> bool {
        self.exists && self.running && !self.hung
    }
}

fn is_prefix(a: &[Entry], b: &[Entry]) -> bool {
    a.len() <= b.len() && a.iter().zip(b).all(|(x, y)| x.id == y.id)
}

struct World {
    spec: ClusterSpec,
    nodes: Vec<Node>,
    next_id: u64,
    next_timeline: u32,
    acked: BTreeSet<u64>,
    memory: Memory,
    now: u64,
    rw: Option<u32>,
    trace: Vec<String>,
}

#[derive(Clone, Debug)]
enum Event {
    Write,
    Replicate(u32, u8),
    Crash(u32),
    Hang(u32),
    Resume(u32),
    Restart(u32),
    Partition(u32),
    Heal(u32),
    Switchover(Option<u32>),
    Quiet,
}

fn event(n: u32) -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => Just(Event::Write),
        4 => (0..n, any::<u8>()).prop_map(|(o, k)| Event::Replicate(o, k)),
        1 => (0..n).prop_map(Event::Crash),
        1 => (0..n).prop_map(Event::Hang),
        1 => (0..n).prop_map(Event::Resume),
        2 => (0..n).prop_map(Event::Restart),
        1 => (0..n).prop_map(Event::Partition),
        2 => (0..n).prop_map(Event::Heal),
        1 => prop::option::of(0..n).prop_map(Event::Switchover),
        2 => Just(Event::Quiet),
    ]
}

impl World {
    fn new(engine: Engine, instances: u32, synchronous: bool) -> World {
        World {
            spec: ClusterSpec {
                name: "sim".into(),
                engine,
                instances,
                synchronous,
                failover_enabled: true,
                detection_timeout_ms: 2_000,
                switchover_timeout_ms: 10_000,
            },
            nodes: vec![Node::default(); instances as usize],
            next_id: 1,
            next_timeline: 2,
            acked: BTreeSet::new(),
            memory: Memory::default(),
            now: 1_000,
            rw: None,
            trace: Vec::new(),
        }
    }

    fn position(&self, node: &Node) -> ReplicationPosition {
        match self.spec.engine {
            Engine::Postgres => ReplicationPosition::Wal(WalPosition {
                timeline: node.log.last().map_or(1, |e| e.timeline),
                lsn: Lsn(node.log.len() as u64),
            }),
            _ => ReplicationPosition::Mariadb {
                gtid: MariadbGtidPosition::from_gtids(node.log.last().map(|e| MariadbGtid {
                    domain: 0,
                    server: e.writer,
                    sequence: node.log.len() as u64,
                })),
            },
        }
    }

    /// MariaDB instance managers compare their GTID state with the primary's and flag errant
    /// transactions; a stopped, fenced former primary cannot, so the core must judge it alone.
    /// PostgreSQL managers flag nothing: the core judges timelines itself.
    fn errant(&self, ordinal: u32) -> bool {
        if self.spec.engine == Engine::Postgres || self.memory.fenced.contains_key(&ordinal) {
            return false;
        }
        let Some(line) = self.memory.primary else {
            return false;
        };
        line != ordinal
            && !is_prefix(
                &self.nodes[ordinal as usize].log,
                &self.nodes[line as usize].log,
            )
    }

    fn observe(&self, stopped_reports: bool) -> BTreeMap<u32, Presence> {
        let mut observed = BTreeMap::new();
        for (i, node) in self.nodes.iter().enumerate() {
            let ordinal = i as u32;
            if !node.exists {
                continue;
            }
            let presence = if node.partitioned || (node.running && node.hung) {
                Presence::Unreachable {
                    reason: "timeout".into(),
                }
            } else if !(node.running || stopped_reports || node.held) {
                Presence::Down {
                    reason: "exited".into(),
                }
            } else {
                let position = self.position(node);
                Presence::Reported(InstanceFacts {
                    state: if node.running {
                        ServerState::Running
                    } else {
                        ServerState::Stopped
                    },
                    role: Some(if node.primary {
                        Role::Primary
                    } else {
                        Role::Replica
                    }),
                    ready: node.running,
                    read_only: node.read_only,
                    position: Some(position.clone()),
                    received_position: (!node.primary).then_some(position),
                    upstream: if node.primary { None } else { node.upstream },
                    replication_error: None,
                    diverged: self.errant(ordinal),
                    empty: false,
                    message: None,
                })
            };
            observed.insert(ordinal, presence);
        }
        observed
    }

    fn replicate(&mut self, ordinal: u32, fraction: u8) {
        let r = &self.nodes[ordinal as usize];
        if !r.live() || r.primary || r.partitioned {
            return;
        }
        let Some(u) = r.upstream else { return };
        let up = &self.nodes[u as usize];
        if !up.live() || up.partitioned || !is_prefix(&r.log, &up.log) {
            return;
        }
        let missing = up.log.len() - r.log.len();
        let take = (missing * (fraction as usize + 1)).div_ceil(256);
        let entries: Vec<Entry> = up.log[r.log.len()..r.log.len() + take].to_vec();
        self.nodes[ordinal as usize].log.extend(entries);
    }

    fn replicate_all(&mut self) {
        for o in 0..self.nodes.len() as u32 {
            self.replicate(o, 255);
        }
    }

    fn write(&mut self) {
        let Some(p) = self.rw else { return };
        let node = &self.nodes[p as usize];
        if !node.writable() || node.hung || node.partitioned {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        let timeline = node.log.last().map_or(1, |e| e.timeline);
        self.nodes[p as usize].log.push(Entry {
            id,
            writer: p,
            timeline,
        });
        if !self.spec.synchronous {
            self.acked.insert(id);
            return;
        }
        // Acknowledged once a replica streaming from the primary holds it.
        let standby = (0..self.nodes.len() as u32).find(|&r| {
            let n = &self.nodes[r as usize];
            r != p
                && n.live()
                && !n.partitioned
                && !n.primary
                && n.upstream == Some(p)
                && is_prefix(&n.log, &self.nodes[p as usize].log)
        });
        if let Some(r) = standby {
            self.nodes[r as usize].log = self.nodes[p as usize].log.clone();
            self.acked.insert(id);
        }
    }

    fn node(&mut self, ordinal: u32) -> &mut Node {
        &mut self.nodes[ordinal as usize]
    }

    fn happen(&mut self, event: &Event) -> Option<Request> {
        match *event {
            Event::Write => self.write(),
            Event::Replicate(o, k) => self.replicate(o, k),
            Event::Crash(o) => {
                let n = self.node(o);
                n.running = false;
                n.hung = false;
            }
            Event::Hang(o) => self.node(o).hung = true,
            Event::Resume(o) => self.node(o).hung = false,
            Event::Restart(o) => {
                // The instance manager restarts a server that is not held fenced.
                let n = self.node(o);
                if n.exists && !n.running && !n.held {
                    n.running = true;
                }
            }
            Event::Partition(o) => self.node(o).partitioned = true,
            Event::Heal(o) => self.node(o).partitioned = false,
            Event::Switchover(to) => return Some(Request::Switchover { to }),
            Event::Quiet => {}
        }
        None
    }

    /// The shell: applies one action to the truth. `Err` is a broken invariant.
    fn apply(&mut self, action: &Action) -> Result<(), String> {
        match *action {
            Action::Wait { .. } => {}
            Action::Create {
                ordinal,
                ref bootstrap,
            } => {
                let log = match bootstrap {
                    Bootstrap::InitPrimary => Vec::new(),
                    Bootstrap::CloneFrom { upstream } => self.nodes[*upstream as usize].log.clone(),
                };
                let n = &mut self.nodes[ordinal as usize];
                if !n.exists {
                    *n = Node {
                        exists: true,
                        running: true,
                        primary: matches!(bootstrap, Bootstrap::InitPrimary),
                        log,
                        upstream: match bootstrap {
                            Bootstrap::CloneFrom { upstream } => Some(*upstream),
                            Bootstrap::InitPrimary => None,
                        },
                        ..Node::default()
                    };
                }
            }
            Action::Fence { ordinal, method } => {
                // The fence is recorded even when the instance cannot be reached; reaching it
                // is what stops it.
                self.nodes[ordinal as usize].held = true;
                if self.nodes[ordinal as usize].partitioned {
                    return Ok(());
                }
                match method {
                    FenceMethod::Kill => {
                        let n = &mut self.nodes[ordinal as usize];
                        n.running = false;
                        n.hung = false;
                    }
                    FenceMethod::Shutdown => {
                        if self.nodes[ordinal as usize].live() {
                            // A clean shutdown sends every WAL record to connected standbys.
                            for r in 0..self.nodes.len() as u32 {
                                if self.nodes[r as usize].upstream == Some(ordinal) {
                                    self.replicate(r, 255);
                                }
                            }
                        }
                        let n = &mut self.nodes[ordinal as usize];
                        n.running = false;
                        n.hung = false;
                    }
                    FenceMethod::ReadOnly => {
                        let n = &mut self.nodes[ordinal as usize];
                        if n.live() {
                            n.read_only = true;
                        } else {
                            n.running = false;
                        }
                    }
                }
            }
            Action::Unfence { ordinal } => {
                let n = &mut self.nodes[ordinal as usize];
                n.held = false;
                if !n.partitioned && n.exists {
                    n.running = true;
                    n.hung = false;
                    n.read_only = false;
                }
            }
            Action::Promote { ordinal, .. } => {
                let timeline = self.next_timeline;
                let id = self.next_id;
                let pg = self.spec.engine == Engine::Postgres;
                let n = &mut self.nodes[ordinal as usize];
                if n.live() && !n.partitioned && !n.primary {
                    n.primary = true;
                    n.upstream = None;
                    n.read_only = false;
                    if pg {
                        // The end-of-recovery record starts the new timeline.
                        n.log.push(Entry {
                            id,
                            writer: ordinal,
                            timeline,
                        });
                        self.next_id += 1;
                        self.next_timeline += 1;
                    }
                }
            }
            Action::Repoint { ordinal, upstream } => {
                let n = &mut self.nodes[ordinal as usize];
                if n.live() && !n.partitioned && !n.primary {
                    n.upstream = Some(upstream);
                }
            }
            Action::Rejoin {
                ordinal,
                upstream,
                rewind,
            } => {
                if self.nodes[ordinal as usize].partitioned {
                    return Ok(());
                }
                let base = self.nodes[upstream as usize].log.clone();
                let n = &mut self.nodes[ordinal as usize];
                if rewind {
                    let common = n
                        .log
                        .iter()
                        .zip(&base)
                        .take_while(|(a, b)| a.id == b.id)
                        .count();
                    n.log.truncate(common);
                } else if !is_prefix(&n.log, &base) {
                    return Err(format!(
                        "instance {ordinal} rejoined {upstream} without rewind although its history diverged"
                    ));
                }
                n.primary = false;
                n.upstream = Some(upstream);
                n.held = false;
                n.running = true;
                n.hung = false;
                n.read_only = false;
            }
            Action::Rebuild { ordinal, upstream } => {
                if self.nodes[ordinal as usize].partitioned {
                    return Ok(());
                }
                let base = self.nodes[upstream as usize].log.clone();
                let n = &mut self.nodes[ordinal as usize];
                n.log = base;
                n.primary = false;
                n.upstream = Some(upstream);
                n.held = false;
                n.running = true;
                n.hung = false;
                n.read_only = false;
            }
            Action::Remove { ordinal } => self.nodes[ordinal as usize].exists = false,
        }
        Ok(())
    }

    fn check(&self, when: &str) -> Result<(), String> {
        let writable: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].writable())
            .collect();
        if writable.len() > 1 {
            return Err(format!("{when}: two writable instances {writable:?}"));
        }
        if self.spec.synchronous {
            for &w in &writable {
                let ids: BTreeSet<u64> = self.nodes[w].log.iter().map(|e| e.id).collect();
                if let Some(lost) = self.acked.iter().find(|id| !ids.contains(id)) {
                    return Err(format!(
                        "{when}: writable instance {w} lacks acknowledged write {lost}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Observe, decide, apply; then check the invariants.
    fn tick(
        &mut self,
        request: Option<Request>,
        stopped_reports: bool,
    ) -> Result<Decision, String> {
        let input = Input {
            spec: self.spec.clone(),
            observed: self.observe(stopped_reports),
            now_ms: self.now,
            memory: self.memory.clone(),
            request,
            leases: None,
            unroutable: Default::default(),
        };
        let decision = decide(&input);
        for action in &decision.actions {
            self.apply(action)?;
            self.check(&format!("after {action:?}"))?;
        }
        self.trace.push(format!(
            "t={} {:?} | {}",
            self.now, decision.actions, decision.status.message
        ));
        self.memory = decision.memory.clone();
        self.rw = decision.status.rw;
        Ok(decision)
    }

    /// No more chaos: every instance reachable, resumed, restarted unless held, replicating.
    fn calm(&mut self) {
        for n in &mut self.nodes {
            n.partitioned = false;
            n.hung = false;
            if n.exists && !n.running && !n.held {
                n.running = true;
            }
        }
        self.replicate_all();
    }

    fn serving_primary(&self) -> Option<u32> {
        let p = self.rw?;
        let n = &self.nodes[p as usize];
        (n.writable() && !n.hung && !n.partitioned).then_some(p)
    }
}

fn simulate(
    engine: Engine,
    instances: u32,
    synchronous: bool,
    steps: &[(Event, u64, bool)],
) -> Result<(), String> {
    run_world(engine, instances, synchronous, steps).map(|_| ())
}

fn run_world(
    engine: Engine,
    instances: u32,
    synchronous: bool,
    steps: &[(Event, u64, bool)],
) -> Result<World, String> {
    let mut world = World::new(engine, instances, synchronous);
    let failed = |world: &World, e: String| Err(format!("{e}\ntrace:\n{}", world.trace.join("\n")));
    // Create the cluster.
    for _ in 0..(4 * instances + 4) {
        world.now += 500;
        world.calm();
        if let Err(e) = world.tick(None, true) {
            return failed(&world, e);
        }
    }
    if world.serving_primary().is_none() {
        return failed(&world, "the cluster was never created".into());
    }
    // Chaos.
    for (event, ms, stopped_reports) in steps {
        world.now += ms;
        let request = world.happen(event);
        if let Err(e) = world.check(&format!("after event {event:?}")) {
            return failed(&world, e);
        }
        if let Err(e) = world.tick(request, *stopped_reports) {
            return failed(&world, e);
        }
    }
    // Calm: the cluster must get a serving primary back.
    for _ in 0..60 {
        world.now += 1_000;
        world.calm();
        if let Err(e) = world.tick(None, true) {
            return failed(&world, e);
        }
        if world.serving_primary().is_some() && world.memory.transition.is_none() {
            return Ok(world);
        }
    }
    failed(
        &world,
        "no primary serves writes a minute after the chaos stopped".into(),
    )
}

fn steps(instances: u32) -> impl Strategy<Value = Vec<(Event, u64, bool)>> {
    prop::collection::vec((event(instances), 0u64..1_500, any::<bool>()), 1..80)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn simulated_postgres_never_has_two_writers_and_recovers(
        (instances, synchronous, steps) in (2u32..5, any::<bool>()).prop_flat_map(|(n, s)| (Just(n), Just(s), steps(n)))
    ) {
        if let Err(e) = simulate(Engine::Postgres, instances, synchronous, &steps) {
            prop_assert!(false, "{e}");
        }
    }

    #[test]
    fn simulated_mariadb_never_has_two_writers_and_recovers(
        (instances, synchronous, steps) in (2u32..5, any::<bool>()).prop_flat_map(|(n, s)| (Just(n), Just(s), steps(n)))
    ) {
        if let Err(e) = simulate(Engine::Mariadb, instances, synchronous, &steps) {
            prop_assert!(false, "{e}");
        }
    }

    #[test]
    fn synchronous_simulation_loses_no_acknowledged_write(
        (instances, steps) in (2u32..5).prop_flat_map(|n| (Just(n), steps(n)))
    ) {
        for engine in [Engine::Postgres, Engine::Mariadb] {
            if let Err(e) = simulate(engine, instances, true, &steps) {
                prop_assert!(false, "{engine}: {e}");
            }
        }
    }
}

/// The simulation does exercise failovers: a crashed primary is replaced by the most advanced
/// replica within the detection timeout plus a few decisions, and rejoins as a replica.
#[test]
fn simulated_crash_of_the_primary_is_failed_over_and_the_old_primary_rejoins() {
    for engine in [Engine::Postgres, Engine::Mariadb] {
        for synchronous in [false, true] {
            let mut steps = vec![(Event::Write, 100, true), (Event::Write, 100, true)];
            steps.push((Event::Replicate(1, 255), 100, true));
            steps.push((Event::Write, 100, true));
            steps.push((Event::Crash(0), 100, false));
            for _ in 0..8 {
                steps.push((Event::Quiet, 700, false));
            }
            let world = run_world(engine, 3, synchronous, &steps)
                .unwrap_or_else(|e| panic!("{engine} synchronous={synchronous}: {e}"));
            let primary = world.serving_primary().expect("a serving primary");
            assert_ne!(
                primary,
                0,
                "{engine}: the crashed primary was not replaced\n{}",
                world.trace.join("\n")
            );
            assert!(world.memory.term >= 2);
            let old = &world.nodes[0];
            assert!(
                !old.primary && old.running && old.upstream == Some(primary),
                "{engine}: the old primary did not rejoin: {old:?}\n{}",
                world.trace.join("\n")
            );
            // Every acknowledged write survived (one replica held all of them).
            let ids: BTreeSet<u64> = world.nodes[primary as usize]
                .log
                .iter()
                .map(|e| e.id)
                .collect();
            if synchronous {
                assert!(world.acked.iter().all(|id| ids.contains(id)));
            }
        }
    }
}

/// A planned switchover in the simulation moves the primary and loses no acknowledged write,
/// even in asynchronous mode.
#[test]
fn simulated_switchover_moves_the_primary_without_losing_writes() {
    for engine in [Engine::Postgres, Engine::Mariadb] {
        let steps = vec![
            (Event::Write, 100, true),
            (Event::Write, 100, true),
            (Event::Switchover(Some(2)), 100, true),
            (Event::Quiet, 100, true),
            (Event::Replicate(2, 255), 100, true),
            (Event::Quiet, 100, true),
            (Event::Quiet, 100, true),
            (Event::Quiet, 100, true),
        ];
        let world = run_world(engine, 3, false, &steps).unwrap_or_else(|e| panic!("{engine}: {e}"));
        assert_eq!(
            world.serving_primary(),
            Some(2),
            "{engine}\n{}",
            world.trace.join("\n")
        );
        let ids: BTreeSet<u64> = world.nodes[2].log.iter().map(|e| e.id).collect();
        assert!(
            world.acked.iter().all(|id| ids.contains(id)),
            "{engine}: a write was lost"
        );
        assert!(!world.acked.is_empty());
    }
}
