//! Table tests of [`Failover::tick`] on a fake runtime: each row is a story of ticks (what the
//! runtime saw, how much time passed) and what the shell must have done through the runtime,
//! sent to the instance managers and recorded. The decision core is the real one; every
//! failing row is collected, not only the first.

use std::sync::{Arc, Mutex};

use stator_api::instance::ServerState;
use stator_api::{Database, Engine, Role};
use stator_control::{FenceMethod, Memory, Reason, Transition, TransitionPhase};

use super::*;
use crate::fake::{Did, FakeRuntime, database, gone, report, seen};
use crate::history::{EventKind, EventOutcome};
use crate::runtime::{FinalCheckpoint, Sighting};
use crate::ticket::{SwitchoverDesk, TicketState};

type Shell = Failover<FakeRuntime>;

/// One tick of a story: move the clock, change the world, tick, check.
struct Step {
    advance_ms: u64,
    before: fn(&mut Shell),
    sightings: fn() -> Vec<Sighting>,
    expect: fn(&Tick, &mut Shell) -> Result<(), String>,
}

struct Row {
    name: &'static str,
    engine: Engine,
    instances: u32,
    /// The primary record the runtime starts with.
    recorded: Option<u32>,
    steps: Vec<Step>,
}

impl Row {
    /// A PostgreSQL pair whose primary record names db-0.
    fn postgres(name: &'static str, steps: Vec<Step>) -> Row {
        Row {
            name,
            engine: Engine::Postgres,
            instances: 2,
            recorded: Some(0),
            steps,
        }
    }
}

fn nothing(_: &mut Shell) {}

/// Asks for a switchover to db-`to`.
fn request(shell: &mut Shell, to: u32) {
    shell
        .desk
        .lock()
        .unwrap()
        .request(Some((format!("db-{to}"), to)));
}

/// The last switchover ticket.
fn ticket(shell: &Shell) -> SwitchoverTicket {
    shell.desk.lock().unwrap().last().unwrap()
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if ok { Ok(()) } else { Err(what()) }
}

fn healthy_pair() -> Vec<Sighting> {
    vec![
        seen(0, report(0, Role::Primary, "0/3000060", 1)),
        seen(1, report(1, Role::Replica, "0/3000060", 1)),
    ]
}

/// db-0's manager and server are gone; db-1 still streams (its receiver has stopped).
fn primary_gone() -> Vec<Sighting> {
    let mut replica = report(1, Role::Replica, "0/3000060", 1);
    replica.receiver_running = Some(false);
    vec![gone(0), seen(1, replica)]
}

/// db-1 took the writes, on timeline 2.
fn promoted() -> Vec<Sighting> {
    vec![gone(0), seen(1, report(1, Role::Primary, "0/3000100", 2))]
}

/// The steps that bring a fresh shell to a confirmed, healthy db-0.
fn settle() -> Step {
    Step {
        advance_ms: 0,
        before: nothing,
        sightings: healthy_pair,
        expect: |tick, shell| {
            ensure(tick.status.reason == Reason::Healthy, || {
                format!("not healthy: {:?}", tick.status)
            })?;
            shell.runtime_mut().take_did();
            Ok(())
        },
    }
}

fn rows() -> Vec<Row> {
    vec![
        Row::postgres(
            "a healthy pair is routed and its primary confirmed and saved",
            vec![Step {
                advance_ms: 0,
                before: nothing,
                sightings: healthy_pair,
                expect: |tick, shell| {
                    let rt = shell.runtime();
                    ensure(tick.primary.as_deref() == Some("db-0"), || {
                        format!("primary {:?}", tick.primary)
                    })?;
                    ensure(rt.rw == Some(0) && rt.ro == [1], || {
                        format!("rw {:?} ro {:?}", rt.rw, rt.ro)
                    })?;
                    ensure(tick.keep_down.is_empty() && !tick.urgent, || {
                        format!("keep down {:?}, urgent {}", tick.keep_down, tick.urgent)
                    })?;
                    ensure(
                        rt.saved.as_ref().is_some_and(|s| {
                            s.memory.primary_confirmed && s.timelines.get(&0) == Some(&1)
                        }),
                        || format!("saved {:?}", rt.saved),
                    )?;
                    ensure(rt.did.is_empty(), || format!("did {:?}", rt.did))
                },
            }],
        ),
        Row::postgres(
            "a lost primary is fenced and replaced only after the detection timeout",
            vec![
                settle(),
                Step {
                    advance_ms: 100,
                    before: nothing,
                    sightings: primary_gone,
                    expect: |tick, shell| {
                        ensure(tick.status.reason == Reason::PrimaryUnhealthy, || {
                            format!("{:?}", tick.status)
                        })?;
                        ensure(tick.urgent, || "not urgent".into())?;
                        // The next tick is asked for no later than the detection deadline.
                        ensure(tick.sooner == Some(Duration::from_millis(1_900)), || {
                            format!("sooner {:?}", tick.sooner)
                        })?;
                        // Before the fence, reports come from the last observations.
                        ensure(!shell.wants_fresh_reports(), || {
                            "fresh reports asked before the fence".into()
                        })?;
                        let did = shell.runtime_mut().take_did();
                        ensure(did.is_empty(), || {
                            format!("acted before the timeout: {did:?}")
                        })
                    },
                },
                Step {
                    advance_ms: 2_000,
                    before: nothing,
                    sightings: primary_gone,
                    expect: |tick, shell| {
                        let did = shell.runtime_mut().take_did();
                        ensure(
                            did.contains(&Did::Unroute(0))
                                && did.contains(&Did::Fence(0, FenceMethod::Kill)),
                            || format!("not fenced: {did:?}"),
                        )?;
                        ensure(tick.keep_down.contains(&0), || {
                            format!("db-0 may start: {:?}", tick.keep_down)
                        })?;
                        // After a fence, the runtime's own pace: the replicas' reports catch
                        // up with the kill before a candidate is chosen on them.
                        ensure(tick.sooner.is_none(), || {
                            format!("sooner {:?}", tick.sooner)
                        })?;
                        ensure(shell.runtime().rw.is_none(), || "rw still routed".into())?;
                        // The next tick may confirm the fence and choose: fresh reports.
                        ensure(shell.wants_fresh_reports(), || {
                            "no fresh reports asked for the candidate choice".into()
                        })?;
                        let current = shell.state().current.clone();
                        ensure(
                            current.as_ref().is_some_and(|e| {
                                e.kind == EventKind::Failover
                                    && e.outcome == EventOutcome::InProgress
                                    && e.from.as_deref() == Some("db-0")
                            }),
                            || format!("current {current:?}"),
                        )
                    },
                },
                Step {
                    advance_ms: 100,
                    before: nothing,
                    sightings: primary_gone,
                    expect: |tick, shell| {
                        // The fence of a gone instance is confirmed: the replica is promoted.
                        let order = shell.in_flight.get(&1).map(|f| f.what.clone());
                        ensure(order.as_deref() == Some("promote (term 2)"), || {
                            format!("order to db-1 {order:?}, status {:?}", tick.status)
                        })?;
                        // The candidate is chosen: it is asked directly from now on.
                        ensure(!shell.wants_fresh_reports(), || {
                            "fresh reports still asked after the promotion was ordered".into()
                        })?;
                        ensure(tick.sooner == Some(QUICK_PAUSE), || {
                            format!("sooner {:?}", tick.sooner)
                        })
                    },
                },
                Step {
                    advance_ms: 100,
                    before: nothing,
                    sightings: promoted,
                    expect: |tick, shell| {
                        let rt = shell.runtime();
                        ensure(rt.rw == Some(1) && rt.recorded == Some(1), || {
                            format!("rw {:?}, recorded {:?}", rt.rw, rt.recorded)
                        })?;
                        ensure(tick.primary.as_deref() == Some("db-1"), || {
                            format!("primary {:?}", tick.primary)
                        })?;
                        let last = shell.state().history.last().cloned();
                        ensure(
                            last.as_ref().is_some_and(|e| {
                                e.outcome == EventOutcome::Done
                                    && e.to.as_deref() == Some("db-1")
                                    && e.term == 2
                                    && e.outage.rw_unrouted_ms == Some(200)
                            }),
                            || format!("last {last:?}"),
                        )?;
                        ensure(shell.state().timelines.get(&1) == Some(&2), || {
                            format!("timelines {:?}", shell.state().timelines)
                        })?;
                        // Done: back to the runtime's own pace and its last observations.
                        ensure(!shell.wants_fresh_reports(), || {
                            "fresh reports still asked".into()
                        })?;
                        ensure(tick.sooner.is_none(), || {
                            format!("sooner {:?}", tick.sooner)
                        })
                    },
                },
            ],
        ),
        Row::postgres(
            "a held instance is down for the core and kept down",
            vec![Step {
                advance_ms: 0,
                before: |shell| {
                    shell.rt.held.insert(1, "drained".into());
                },
                sightings: || vec![seen(0, report(0, Role::Primary, "0/3000060", 1)), gone(1)],
                expect: |tick, shell| {
                    ensure(tick.keep_down.contains(&1), || {
                        format!("keep down {:?}", tick.keep_down)
                    })?;
                    let report = shell.report("db", &tick.status);
                    ensure(
                        report.held.get("db-1").map(String::as_str) == Some("drained"),
                        || format!("held {:?}", report.held),
                    )?;
                    ensure(tick.status.reason == Reason::Degraded, || {
                        format!("{:?}", tick.status)
                    })
                },
            }],
        ),
        Row::postgres(
            "a kill fence still hanging once the fence is confirmed is given up, not left to \
             block the instance's next orders",
            vec![
                settle(),
                Step {
                    advance_ms: 2_500,
                    before: |shell| shell.rt.hanging_kills = true,
                    sightings: primary_gone,
                    expect: |_, shell| {
                        let did = shell.runtime_mut().take_did();
                        ensure(did.contains(&Did::Fence(0, FenceMethod::Kill)), || {
                            format!("did {did:?}")
                        })?;
                        ensure(shell.in_flight.get(&0).is_some_and(|f| f.kill), || {
                            "the kill is not in flight".into()
                        })
                    },
                },
                Step {
                    advance_ms: 100,
                    before: nothing,
                    sightings: primary_gone,
                    expect: |_, shell| {
                        // db-0 is seen gone: its fence is confirmed, the kill no longer needed.
                        ensure(
                            shell
                                .state
                                .memory
                                .fenced
                                .get(&0)
                                .is_some_and(|f| f.confirmed),
                            || format!("fences {:?}", shell.state.memory.fenced),
                        )?;
                        ensure(!shell.in_flight.contains_key(&0), || {
                            "the hanging kill is still in flight".into()
                        })
                    },
                },
            ],
        ),
        Row::postgres(
            "a server running without its manager is unreachable, not down",
            vec![
                settle(),
                Step {
                    advance_ms: 2_500,
                    before: |shell| {
                        shell.rt.servers.insert(0, 4242);
                    },
                    sightings: primary_gone,
                    expect: |tick, shell| {
                        // Unreachable for the whole timeout: fenced all the same, but the
                        // failover waits for the fence to be seen.
                        let did = shell.runtime_mut().take_did();
                        ensure(did.contains(&Did::Fence(0, FenceMethod::Kill)), || {
                            format!("did {did:?}")
                        })?;
                        ensure(!shell.in_flight.contains_key(&1), || {
                            format!("promoted while db-0 may run: {:?}", tick.status)
                        })
                    },
                },
            ],
        ),
        Row::postgres(
            "a switchover is taken once, fences cleanly, waits for the final checkpoint and ends done",
            vec![
                settle(),
                Step {
                    advance_ms: 100,
                    before: |shell| request(shell, 1),
                    sightings: healthy_pair,
                    expect: |_, shell| {
                        let ticket = ticket(shell);
                        ensure(
                            ticket.state == TicketState::Running
                                && ticket.from.as_deref() == Some("db-0"),
                            || format!("ticket {ticket:?}"),
                        )?;
                        let did = shell.runtime_mut().take_did();
                        ensure(did.contains(&Did::Fence(0, FenceMethod::Shutdown)), || {
                            format!("did {did:?}")
                        })?;
                        ensure(
                            shell.in_flight.get(&0).map(|f| f.what.as_str()) == Some("shutdown"),
                            || "the shutdown is not in flight".into(),
                        )
                    },
                },
                Step {
                    advance_ms: 100,
                    before: |shell| {
                        shell.rt.checkpoints.insert(
                            0,
                            FinalCheckpoint {
                                clean: true,
                                lsn: "0/3000060".into(),
                                timeline: 1,
                            },
                        );
                    },
                    sightings: primary_gone,
                    expect: |tick, shell| {
                        let order = shell.in_flight.get(&1).map(|f| f.what.clone());
                        ensure(order.as_deref() == Some("promote (term 2)"), || {
                            format!("order to db-1 {order:?}, status {:?}", tick.status)
                        })?;
                        ensure(shell.running_ticket.is_some(), || {
                            "ticket settled early".into()
                        })
                    },
                },
                Step {
                    advance_ms: 100,
                    before: nothing,
                    sightings: promoted,
                    expect: |_, shell| {
                        let ticket = ticket(shell);
                        ensure(
                            ticket.state == TicketState::Done
                                && ticket.message == "db-1 is the primary (term 2)"
                                && ticket.primary.as_deref() == Some("db-1"),
                            || format!("ticket {ticket:?}"),
                        )?;
                        let last = shell.state().history.last().cloned();
                        ensure(
                            last.is_some_and(|e| {
                                e.kind == EventKind::Switchover && e.outcome == EventOutcome::Done
                            }),
                            || "no switchover event".into(),
                        )
                    },
                },
            ],
        ),
        Row::postgres(
            "a switchover to the primary itself is refused and nothing is fenced",
            vec![
                settle(),
                Step {
                    advance_ms: 100,
                    before: |shell| request(shell, 0),
                    sightings: healthy_pair,
                    expect: |_, shell| {
                        let ticket = ticket(shell);
                        ensure(
                            ticket.state == TicketState::Refused
                                && ticket.outcome().starts_with("switchover refused: "),
                            || format!("ticket {ticket:?}"),
                        )?;
                        let did = shell.runtime_mut().take_did();
                        ensure(did.is_empty(), || format!("did {did:?}"))
                    },
                },
            ],
        ),
        Row {
            name: "a MariaDB primary is fenced read-only for a switchover",
            engine: Engine::Mariadb,
            instances: 2,
            recorded: Some(0),
            steps: vec![
                Step {
                    advance_ms: 0,
                    before: nothing,
                    sightings: mariadb_pair,
                    expect: |tick, shell| {
                        ensure(tick.status.reason == Reason::Healthy, || {
                            format!("{:?}", tick.status)
                        })?;
                        shell.runtime_mut().take_did();
                        Ok(())
                    },
                },
                Step {
                    advance_ms: 100,
                    before: |shell| request(shell, 1),
                    sightings: mariadb_pair,
                    expect: |_, shell| {
                        let did = shell.runtime_mut().take_did();
                        ensure(did.contains(&Did::Fence(0, FenceMethod::ReadOnly)), || {
                            format!("did {did:?}")
                        })
                    },
                },
            ],
        },
    ]
}

fn mariadb_pair() -> Vec<Sighting> {
    let gtid = "0-1-5";
    let mut primary = report(0, Role::Primary, gtid, 0);
    primary.timeline = None;
    let mut replica = report(1, Role::Replica, gtid, 0);
    replica.timeline = None;
    replica.receiver_running = Some(true);
    vec![seen(0, primary), seen(1, replica)]
}

fn shell_for(row: &Row) -> (Database, Shell) {
    let db = database(row.engine, row.instances);
    let runtime = FakeRuntime::new(row.instances, row.recorded);
    let shell = Failover::load(runtime, Arc::new(Mutex::new(SwitchoverDesk::default())));
    (db, shell)
}

#[tokio::test]
async fn ticks_on_a_fake_runtime() {
    let mut failures = Vec::new();
    for row in rows() {
        let (db, mut shell) = shell_for(&row);
        if row.engine != Engine::Postgres {
            shell.runtime_mut().server_port = crate::fake::greeter().await;
        }
        for (i, step) in row.steps.iter().enumerate() {
            shell.runtime_mut().monotonic_ms += step.advance_ms;
            (step.before)(&mut shell);
            let tick = shell.tick(&db, &(step.sightings)()).await;
            if let Err(why) = (step.expect)(&tick, &mut shell) {
                failures.push(format!("{} (tick {}): {why}", row.name, i + 1));
                break;
            }
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[tokio::test]
async fn a_switchover_the_core_turned_into_a_failover_is_abandoned_whatever_its_message() {
    let (db, mut shell) = shell_for(&Row {
        name: "",
        engine: Engine::Postgres,
        instances: 2,
        recorded: Some(0),
        steps: Vec::new(),
    });
    let spec = ClusterSpec::from_database(&db).unwrap();
    let started = |kind| Transition {
        kind,
        from: Some(0),
        target: None,
        started_ms: 5,
        phase: TransitionPhase::Fencing,
    };
    let before = Memory {
        transition: Some(Transition {
            target: Some(1),
            ..started(TransitionKind::Switchover)
        }),
        ..Memory::default()
    };
    let mut after = before.clone();
    after.transition = Some(started(TransitionKind::Failover));
    shell.state.memory = after.clone();
    request(&mut shell, 1);
    shell.running_ticket = Some(RunningTicket {
        ticket: SwitchoverTicket {
            state: TicketState::Running,
            ..ticket(&shell)
        },
        to: Some(1),
        decided: true,
    });
    let decision = Decision {
        actions: Vec::new(),
        memory: after,
        status: Status {
            phase: stator_api::Phase::FailingOver,
            reason: Reason::Fencing,
            message: "fencing db-0".into(),
            rw: None,
            ro: Vec::new(),
        },
    };
    shell.settle_ticket(&spec, &before, &decision);
    let ticket = ticket(&shell);
    assert_eq!(ticket.state, TicketState::Abandoned, "{ticket:?}");
    assert!(shell.running_ticket.is_none());
    // A failover that was one from the start leaves the ticket running.
    let mut other = before.clone();
    other.transition = Some(started(TransitionKind::Failover));
    assert!(!turned_into_failover(
        other.transition.as_ref(),
        decision.memory.transition.as_ref().unwrap()
    ));
}

fn facts(position: &str, timeline: u32) -> InstanceFacts {
    InstanceFacts {
        state: ServerState::Running,
        role: Some(Role::Replica),
        ready: false,
        read_only: true,
        position: ReplicationPosition::parse(Engine::Postgres, position, Some(timeline)).ok(),
        received_position: None,
        upstream: Some(0),
        replication_error: None,
        diverged: false,
        empty: false,
        message: None,
    }
}

#[test]
fn positions_reported_on_an_older_timeline_are_read_on_the_newest_one_seen() {
    let mut f = facts("0/3000060", 1);
    on_timeline(&mut f, 2);
    assert_eq!(f.held().and_then(|h| h.timeline()), Some(2));
    let mut newer = facts("0/3000060", 3);
    on_timeline(&mut newer, 2);
    assert_eq!(newer.held().and_then(|h| h.timeline()), Some(3));
}

#[test]
fn only_a_primary_or_a_streaming_replica_teaches_the_timeline() {
    let mut shell = Failover::load(
        FakeRuntime::new(3, None),
        Arc::new(Mutex::new(SwitchoverDesk::default())),
    );
    let with = |role, receiver: Option<bool>, timeline| {
        let mut r = report(1, role, "0/3000060", timeline);
        r.receiver_running = receiver;
        r
    };
    shell.remember_timeline(1, &with(Role::Replica, Some(true), 3));
    shell.remember_timeline(1, &with(Role::Replica, Some(false), 1));
    shell.remember_timeline(1, &with(Role::Replica, Some(true), 2));
    assert_eq!(shell.state.timelines.get(&1), Some(&3));
    shell.remember_timeline(2, &with(Role::Replica, Some(false), 5));
    assert_eq!(shell.state.timelines.get(&2), None);
    shell.remember_timeline(2, &with(Role::Primary, None, 4));
    assert_eq!(shell.state.timelines.get(&2), Some(&4));
}
