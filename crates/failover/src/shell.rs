//! The failover shell both runtimes share: every tick it turns what the runtime sees (instance
//! managers running or not, their `/status`, a direct query to the primary's server) into a
//! [`control::Input`](stator_control::Input), calls [`stator_control::decide`], persists the
//! core's [`Memory`] through the runtime, and carries out the actions idempotently: fence (out of
//! `rw` first, live connections cut, then what the runtime does to stop writes), promote and
//! repoint (`POST /promote`, `POST /demote` to the instance managers), rejoin (a held-down former
//! primary is started again by the runtime as a replica of the new primary), rebuild (the data
//! is moved aside, never deleted, and cloned again) and unfence.
//!
//! It decides nothing itself: who is primary, when to fail over and where `rw` and `ro` point
//! come from the decision. What it adds is timing and bookkeeping: the write outage clients saw
//! (from the moment the old primary last took writes to the first write the new one accepted
//! through `rw`, see [`WriteOutage::client_write_outage_ms`]), the part of it `rw` had no
//! target, the last failover's timestamps, PostgreSQL timelines, the orders in flight, and the
//! outcome of switchover requests, all shown by `stator status`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stator_api::instance::{DemoteRequest, Endpoint, InstanceReport, ServerState};
use stator_api::position::ReplicationPosition;
use stator_api::{Database, Engine, Phase, Role};
use stator_control::{
    Action, ClusterSpec, Decision, FenceMethod, Input, InstanceFacts, Memory, Presence, Request,
    Status, Transition, TransitionKind, TransitionPhase,
};

use crate::client;
use crate::history::{
    EventKind, EventOutcome, FailoverEvent, FailoverReport, FailoverState, WriteOutage,
};
use crate::runtime::{Runtime, Sighting, Work};
use crate::server::{self, ServerAnswer, WriteCheckError};
use crate::ticket::{SwitchoverDesk, SwitchoverTicket, TicketState};

/// How long an order (`/promote`, `/demote`) may run before it is sent again.
const ORDER_TIMEOUT: Duration = Duration::from_secs(150);
/// How long after an order was sent the same instance gets no other order, unless it
/// finished and its effect is seen sooner.
const ORDER_SETTLE: Duration = Duration::from_millis(1500);
/// How many finished failovers and switchovers the state keeps.
const HISTORY: usize = 20;
/// The pause [`Tick::sooner`] asks for after a decision that promotes: a promotion answers
/// within moments, and every tick until it is seen is write outage. Not after a fence: the
/// candidate is chosen at the tick that sees the fence done, and the replicas' reports need
/// the runtime's own pace to catch up with the kill (a replica's observation hung on the frozen
/// primary completes only then); choosing sooner would choose on older positions.
const QUICK_PAUSE: Duration = Duration::from_millis(20);
/// At most this many quick ticks in a row (an order that takes long is then watched at the
/// runtime's own pace).
const QUICK_TICKS: u32 = 10;
/// The shortest direct query to an unhealthy primary at its detection deadline: the query is
/// cut to end at the deadline (so the decision falls there, not up to a whole query later),
/// never below this.
const DEADLINE_PROBE_FLOOR: Duration = Duration::from_millis(150);

/// Work for an instance not answered yet (an order, a clean shutdown, a `read_only` switch).
struct InFlight {
    what: String,
    since: Instant,
    task: tokio::task::JoinHandle<()>,
    /// A kill fence: given up once the core no longer waits for it.
    kill: bool,
}

impl From<Work> for InFlight {
    fn from(work: Work) -> Self {
        InFlight {
            what: work.what,
            since: Instant::now(),
            task: work.task,
            kill: false,
        }
    }
}

/// The switchover request passed to the core and waiting for its outcome.
struct RunningTicket {
    ticket: SwitchoverTicket,
    to: Option<u32>,
    /// A decision was taken on it already (it did not end at once).
    decided: bool,
}

/// What one tick decided, for the runtime.
pub struct Tick {
    pub status: Status,
    /// `NAME-N` of the primary the core holds, once confirmed.
    pub primary: Option<String>,
    /// Instances the runtime must not start now (fenced and not yet allowed back, held,
    /// being rebuilt).
    pub keep_down: BTreeSet<u32>,
    /// Something is wrong or in progress: tick fast.
    pub urgent: bool,
    /// Tick again within this, sooner than the runtime's fast pace: a detection deadline
    /// falls before it, or a promotion was just ordered.
    pub sooner: Option<Duration>,
}

/// The failover shell of one database, acting through its runtime `R`.
pub struct Failover<R: Runtime> {
    rt: R,
    state: FailoverState,
    saved: String,
    /// The state last persisted by [`Runtime::persist_state`].
    persisted: String,
    desk: Arc<Mutex<SwitchoverDesk>>,
    running_ticket: Option<RunningTicket>,
    in_flight: BTreeMap<u32, InFlight>,
    /// Final facts of cleanly shut down, fenced primaries (PostgreSQL: their final checkpoint).
    finals: BTreeMap<u32, InstanceFacts>,
    /// Instances being stopped to have their data moved aside for a rebuild.
    rebuilding: BTreeSet<u32>,
    /// `rw` lost its target at this time (monotonic ms, wall ms).
    rw_lost: Option<(u64, u64)>,
    rw_now: Option<u32>,
    /// The write check through `rw` that ends the client write outage of the transition
    /// started at this time (wall ms); it answers when a write was accepted.
    write_check: Option<(u64, tokio::task::JoinHandle<Result<u64, WriteCheckError>>)>,
    /// The transition (its start, wall ms) this shell finished and measures the client
    /// write outage of. One finished by an earlier shell is not measured: the database
    /// may have been down on purpose since.
    measuring: Option<u64>,
    monitor_password: Option<String>,
    /// The recorded primary kept down because its data is gone (said once).
    data_lost: Option<u32>,
    /// Quick ticks in a row so far ([`QUICK_TICKS`]).
    quick_ticks: u32,
    /// The step of the transition in progress last written to the log.
    last_step: Option<String>,
}

impl<R: Runtime> Failover<R> {
    /// Loads the saved state (`failover.json` locally); a fresh state starts from the
    /// runtime's primary record (not confirmed until it is seen healthy).
    pub fn load(runtime: R, desk: Arc<Mutex<SwitchoverDesk>>) -> Failover<R> {
        let from_record = |runtime: &R| {
            let mut state = FailoverState::default();
            if let Some(ordinal) = runtime.recorded_primary() {
                state.memory.primary = Some(ordinal);
                state.memory.term = 1;
            }
            state
        };
        let state = match runtime.load_state() {
            Ok(Some(state)) => state,
            Ok(None) => from_record(&runtime),
            Err(e) => {
                // Never start a second failover on a guess: keep the record, start from the
                // primary record, and say so.
                tracing::error!("{e}; starting the failover memory from the primary record");
                from_record(&runtime)
            }
        };
        Failover {
            rt: runtime,
            saved: serde_json::to_string(&state).unwrap_or_default(),
            persisted: serde_json::to_string(&state).unwrap_or_default(),
            state,
            desk,
            running_ticket: None,
            in_flight: BTreeMap::new(),
            finals: BTreeMap::new(),
            rebuilding: BTreeSet::new(),
            rw_lost: None,
            rw_now: None,
            write_check: None,
            measuring: None,
            monitor_password: None,
            data_lost: None,
            quick_ticks: 0,
            last_step: None,
        }
    }

    /// The runtime the shell acts through.
    pub fn runtime(&self) -> &R {
        &self.rt
    }

    /// The runtime, to change what it holds between ticks (a test's fake world).
    pub fn runtime_mut(&mut self) -> &mut R {
        &mut self.rt
    }

    /// What the shell records: the core's memory, the history, the timelines.
    pub fn state(&self) -> &FailoverState {
        &self.state
    }

    /// After a cold start (no instance manager was running): the primary is confirmed again
    /// once it is seen healthy, so its start-up is not taken for a failure. A transition in
    /// progress continues where it was.
    pub fn cold_start(&mut self) {
        if self.state.memory.transition.is_none() {
            self.state.memory.primary_confirmed = false;
            self.state.memory.primary_unhealthy_since_ms = None;
        }
    }

    /// The memory the core holds now.
    pub fn memory(&self) -> &Memory {
        &self.state.memory
    }

    /// A failover may choose whom to promote in the next tick: its old primary's fence is
    /// ordered (the tick that confirms it also chooses the candidate) and no promotion is
    /// under way (once one is ordered, its candidate is asked directly). The next reports should
    /// be read from the servers then (`/status?fresh=1`), not from their managers' last
    /// periodic observation, which may predate a transaction a replica received (and
    /// acknowledged, in synchronous mode) just before the primary stopped: a candidate chosen
    /// on it lacks what another replica holds, which then diverges. The runtime probes after
    /// it reaped the fenced processes, so a fence confirmed in that tick was carried out
    /// before the replicas were asked. Not asked before the fence: a fresh report waits for
    /// its check of the frozen upstream, bounded but not free, and the detection pays for it.
    pub fn wants_fresh_reports(&self) -> bool {
        let memory = &self.state.memory;
        memory.transition.as_ref().is_some_and(|t| {
            t.kind == TransitionKind::Failover
                && t.phase == TransitionPhase::Fencing
                && t.from.is_none_or(|old| memory.fenced.contains_key(&old))
        })
    }

    /// One round: observe, decide, act, route. The routes are changed here and only here.
    pub async fn tick(&mut self, db: &Database, sightings: &[Sighting]) -> Tick {
        self.drop_settled_orders();
        let spec = match ClusterSpec::from_database(db) {
            Ok(spec) => spec,
            Err(e) => {
                return Tick {
                    status: Status {
                        phase: Phase::Invalid,
                        reason: stator_control::Reason::NoPrimary,
                        message: e.to_string(),
                        rw: None,
                        ro: Vec::new(),
                    },
                    primary: None,
                    keep_down: BTreeSet::new(),
                    urgent: false,
                    sooner: None,
                };
            }
        };
        let observed = self.observe(db, &spec, sightings).await;
        let request = self.take_request(&spec);
        let input = Input {
            spec: spec.clone(),
            observed,
            now_ms: self.rt.monotonic_ms(),
            memory: self.state.memory.clone(),
            request,
            // A runtime that sends no leases gives none: decided as without them.
            leases: self.rt.leases(),
            unroutable: sightings
                .iter()
                .map(|s| s.ordinal)
                .filter(|o| !self.rt.routable(*o))
                .collect(),
        };
        let decision = stator_control::decide(&input);
        self.log_transition_step(&spec, &input, &decision);
        self.follow_transition(&spec, &input, &decision);
        self.state.memory = decision.memory.clone();
        self.save();
        self.persist().await;
        // A kill fence this decision confirmed no longer holds the instance's next order.
        self.drop_settled_orders();
        // Before the actions: a candidate ordered promoted must hold its lease first.
        self.rt
            .lease_to(db, spec.detection_timeout_ms, &decision.memory)
            .await;
        let primary = self.record_primary(&spec);
        self.route(db, &spec, &decision.status);
        self.check_write(db).await;
        self.carry_out(db, &spec, &decision, sightings).await;
        self.finish_rebuilds(db, &spec, sightings);
        self.settle_ticket(&spec, &input.memory, &decision);
        let keep_down = self.keep_down(&spec, sightings);
        let urgent = !matches!(
            decision.status.reason,
            stator_control::Reason::Healthy | stator_control::Reason::Degraded
        ) || self.state.memory.transition.is_some();
        let sooner = self.sooner(&decision);
        Tick {
            status: decision.status,
            primary,
            keep_down,
            urgent,
            sooner,
        }
    }

    /// Forgets the orders in flight that are done with: finished ones after a moment, hung
    /// ones after [`ORDER_TIMEOUT`], and kill fences the core no longer waits for (aborted).
    fn drop_settled_orders(&mut self) {
        let fenced = &self.state.memory.fenced;
        self.in_flight.retain(|ordinal, f| {
            // A kill the core no longer waits for (its fence confirmed, or released) is given
            // up: one still connecting to the address of a pod gone since held back every
            // later order to the instance (the node-freeze benchmark's first round waited 70 s
            // for a promotion behind one, until the old address gave "No route to host"), and
            // it must not land after the release. (Found by a helper on its outage branch.)
            let obsolete = f.kill && fenced.get(ordinal).is_none_or(|fence| fence.confirmed);
            // A finished order is remembered for a moment: its effect shows only in the next
            // observations, and repeating it meanwhile would only disturb it.
            let keep = if obsolete {
                false
            } else if f.task.is_finished() {
                f.since.elapsed() < ORDER_SETTLE
            } else {
                f.since.elapsed() < ORDER_TIMEOUT
            };
            if !keep {
                f.task.abort();
            }
            keep
        });
    }

    /// When to tick again at the latest, when sooner than the runtime's pace matters: at the
    /// core's recheck time (an unhealthy primary's detection deadline), and right after a
    /// decision that promotes, for at most [`QUICK_TICKS`] ticks in a row.
    fn sooner(&mut self, decision: &Decision) -> Option<Duration> {
        let now = self.rt.monotonic_ms();
        let recheck = decision
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Wait {
                    recheck_at_ms: Some(at),
                    ..
                } => Some(
                    Duration::from_millis(at.saturating_sub(now)).max(Duration::from_millis(5)),
                ),
                _ => None,
            })
            .min();
        let acting = decision
            .actions
            .iter()
            .any(|a| matches!(a, Action::Promote { .. }));
        let quick = if acting && self.quick_ticks < QUICK_TICKS {
            self.quick_ticks += 1;
            Some(QUICK_PAUSE)
        } else {
            if !acting {
                self.quick_ticks = 0;
            }
            None
        };
        match (recheck, quick) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The report for `stator status`.
    pub fn report(&self, spec_name: &str, status: &Status) -> FailoverReport {
        let name = |o: u32| format!("{spec_name}-{o}");
        let memory = &self.state.memory;
        let mut held_map = BTreeMap::new();
        for ordinal in self.rt.known_ordinals() {
            if let Some(why) = self.rt.held(ordinal) {
                held_map.insert(name(ordinal), why);
            }
        }
        FailoverReport {
            term: memory.term,
            primary: memory.primary.map(name),
            reason: status.reason.to_string(),
            message: status.message.clone(),
            fenced: memory.fenced.keys().map(|o| name(*o)).collect(),
            held: held_map,
            current: self.state.current.clone(),
            last: self.state.history.last().cloned(),
            history: self.state.history.clone(),
            switchover: self.desk.lock().ok().and_then(|d| d.last()),
        }
    }

    // ------------------------------------------------------------------------------ observe

    async fn observe(
        &mut self,
        db: &Database,
        spec: &ClusterSpec,
        sightings: &[Sighting],
    ) -> BTreeMap<u32, Presence> {
        let mut observed = BTreeMap::new();
        let engine = db.spec.engine;
        let memory = self.state.memory.clone();
        let candidate = match &memory.transition {
            Some(t) => match t.phase {
                TransitionPhase::Promoting { candidate, .. } => Some(candidate),
                _ => None,
            },
            None => None,
        };
        // A switchover's target catching up: its manager observes it once a second, the
        // promotion should not wait for that.
        let catching_up = match &memory.transition {
            Some(t) if t.phase == TransitionPhase::CatchingUp => t.target,
            _ => None,
        };
        for s in sightings {
            let ordinal = s.ordinal;
            if let Some(report) = &s.report
                && engine == Engine::Postgres
            {
                self.remember_timeline(ordinal, report);
            }
            let presence = match (&s.manager_pid, &s.report) {
                (Some(_), Some(report)) => match InstanceFacts::from_report(spec, report) {
                    Ok(mut facts) => {
                        if let Some(tli) = self.state.timelines.get(&ordinal) {
                            on_timeline(&mut facts, *tli);
                        }
                        Presence::Reported(facts)
                    }
                    Err(e) => Presence::Unreachable {
                        reason: format!("its report cannot be read: {e}"),
                    },
                },
                (Some(_), None) => Presence::Unreachable {
                    reason: s
                        .probe_error
                        .clone()
                        .unwrap_or_else(|| "its instance manager does not answer".into()),
                },
                (None, _) => {
                    if let Some(pid) = self.rt.server_pid(db, ordinal) {
                        Presence::Unreachable {
                            reason: format!(
                                "its instance manager is not running but its server (pid {pid}) is"
                            ),
                        }
                    } else if let Some(finals) = self.final_facts(engine, spec, ordinal).await {
                        Presence::Reported(finals)
                    } else if self.rt.holds_data(ordinal) {
                        Presence::Down {
                            reason: match self.rt.held(ordinal) {
                                Some(why) => format!("held down: {why}"),
                                None if memory.fenced.contains_key(&ordinal) => "fenced".into(),
                                None => "its instance manager is not running".into(),
                            },
                        }
                    } else {
                        Presence::Absent
                    }
                }
            };
            observed.insert(ordinal, presence);
        }
        // The primary (and a replica being promoted) is also asked directly: a hung server
        // still looks fine in a manager's last observation.
        let mut direct: Vec<u32> = memory
            .primary
            .into_iter()
            .chain(candidate)
            .chain(catching_up)
            .collect();
        direct.sort_unstable();
        direct.dedup();
        for ordinal in direct {
            let Some(Presence::Reported(facts)) = observed.get(&ordinal).cloned() else {
                continue;
            };
            if facts.state != ServerState::Running {
                continue;
            }
            let server = self.rt.server_dial(db, ordinal);
            // MariaDB/MySQL: the primary's probe reads only the greeting (what a hang withholds);
            // the candidate being promoted is asked its `read_only` as the monitor user, so
            // its promotion is seen the moment it took effect, not at its manager's next
            // observation (up to a second later, all of it write outage).
            let password = match engine {
                Engine::Postgres => self.monitor_password(),
                Engine::Mysql | Engine::Mariadb if Some(ordinal) == candidate => {
                    self.monitor_password()
                }
                Engine::Mysql | Engine::Mariadb => None,
            };
            // An unhealthy primary's query ends at its detection deadline at the latest, so the
            // decision that fails it over falls there and not up to a whole query later.
            let limit = match memory.primary_unhealthy_since_ms {
                Some(since) if Some(ordinal) == memory.primary && candidate.is_none() => {
                    let deadline = since.saturating_add(spec.detection_timeout_ms);
                    let left = deadline.saturating_sub(self.rt.monotonic_ms());
                    Duration::from_millis(left)
                        .clamp(DEADLINE_PROBE_FLOOR, server::SERVER_PROBE_TIMEOUT)
                }
                _ => server::SERVER_PROBE_TIMEOUT,
            };
            let answer = server::query_server(engine, &server, password.as_deref(), limit).await;
            let presence = match answer {
                Err(why) if Some(ordinal) == memory.primary && candidate.is_none() => {
                    Presence::Unreachable {
                        reason: format!("its server does not answer: {why}"),
                    }
                }
                Ok(ServerAnswer {
                    writable: Some(false),
                    received: Some(received),
                }) if Some(ordinal) == catching_up => {
                    let mut facts = facts;
                    let timeline = facts.held().and_then(|h| h.timeline());
                    if let Ok(seen) = ReplicationPosition::parse(engine, &received, timeline)
                        && facts
                            .received_position
                            .as_ref()
                            .is_none_or(|r| seen.includes(r))
                    {
                        facts.received_position = Some(seen);
                    }
                    Presence::Reported(facts)
                }
                Ok(ServerAnswer {
                    writable: Some(true),
                    ..
                }) if !facts.writable() || !facts.ready => {
                    // Seen accepting writes before its manager observed it (a promotion).
                    let mut facts = facts;
                    facts.role = Some(Role::Primary);
                    facts.read_only = false;
                    facts.ready = true;
                    facts.upstream = None;
                    Presence::Reported(facts)
                }
                _ => Presence::Reported(facts),
            };
            observed.insert(ordinal, presence);
        }
        observed
    }

    /// Remembers the timeline a PostgreSQL instance is on, when the report knows it for sure:
    /// a primary's, or a replica's while its walreceiver streams.
    fn remember_timeline(&mut self, ordinal: u32, report: &InstanceReport) {
        let Some(tli) = report.timeline else { return };
        let sure = report.state == ServerState::Running
            && match report.role {
                Some(Role::Primary) => true,
                Some(Role::Replica) => report.receiver_running == Some(true),
                None => false,
            };
        if sure {
            let known = self.state.timelines.entry(ordinal).or_insert(tli);
            *known = (*known).max(tli);
        }
    }

    /// The facts of a cleanly stopped, fenced PostgreSQL primary: its final checkpoint.
    async fn final_facts(
        &mut self,
        engine: Engine,
        spec: &ClusterSpec,
        ordinal: u32,
    ) -> Option<InstanceFacts> {
        let fence = self.state.memory.fenced.get(&ordinal)?;
        if fence.method != FenceMethod::Shutdown || engine != Engine::Postgres {
            return None;
        }
        if let Some(f) = self.finals.get(&ordinal) {
            return Some(f.clone());
        }
        let control = self.rt.final_checkpoint(ordinal).await?;
        if !control.clean {
            return None;
        }
        let position =
            ReplicationPosition::parse(spec.engine, &control.lsn, Some(control.timeline)).ok()?;
        let facts = InstanceFacts {
            state: ServerState::Stopped,
            role: Some(Role::Primary),
            ready: false,
            read_only: false,
            position: Some(position),
            received_position: None,
            upstream: None,
            replication_error: None,
            diverged: false,
            empty: false,
            message: Some(format!(
                "fenced: shut down cleanly, final checkpoint {} on timeline {}",
                control.lsn, control.timeline
            )),
        };
        self.finals.insert(ordinal, facts.clone());
        Some(facts)
    }

    fn monitor_password(&mut self) -> Option<String> {
        if self.monitor_password.is_none() {
            self.monitor_password = self.rt.monitor_password();
        }
        self.monitor_password.clone()
    }

    /// Ends the last transition's client write outage: once `rw` has a target again, a write
    /// check goes through `rw` itself (one at a time, in the background, retried every tick
    /// until one is accepted); the moment the first is accepted is the outage's end.
    async fn check_write(&mut self, db: &Database) {
        let measuring = self.measuring;
        let awaiting = |state: &FailoverState| {
            state
                .history
                .last()
                .filter(|e| e.writes_stopped_at_ms.is_some() && e.write_accepted_at_ms.is_none())
                .map(|e| e.started_at_ms)
                .filter(|started| state.current.is_none() && Some(*started) == measuring)
        };
        if self
            .write_check
            .as_ref()
            .is_some_and(|(_, c)| c.is_finished())
            && let Some((started, check)) = self.write_check.take()
        {
            // Finished: the answer is there without waiting.
            match check.await {
                // Only for the transition it was started for.
                Ok(Ok(accepted_at)) if awaiting(&self.state) == Some(started) => {
                    self.write_accepted(accepted_at)
                }
                Ok(Ok(_)) => {}
                Ok(Err(why)) => tracing::debug!("write check through rw: {why}"),
                Err(e) => tracing::debug!("write check through rw: {e}"),
            }
        }
        let Some(started) = awaiting(&self.state) else {
            return;
        };
        if self.rw_now.is_none() || self.write_check.is_some() {
            return;
        }
        let Some(password) = self.monitor_password() else {
            return;
        };
        let rw = self.rt.rw_address(db);
        let engine = db.spec.engine;
        self.write_check = Some((
            started,
            tokio::spawn(async move {
                server::write_through(engine, &rw, &password).await?;
                Ok(crate::clock::wall_ms())
            }),
        ));
    }

    fn write_accepted(&mut self, accepted_at: u64) {
        let Some(event) = self.state.history.last_mut() else {
            return;
        };
        let Some(stopped) = event.writes_stopped_at_ms else {
            return;
        };
        if event.write_accepted_at_ms.is_some() {
            return;
        }
        let outage = accepted_at.saturating_sub(stopped);
        event.write_accepted_at_ms = Some(accepted_at);
        event.outage.client_write_outage_ms = Some(outage);
        tracing::info!(
            "{} {}: clients could not write for {outage} ms (rw had no target for {} of them)",
            event.kind,
            event.outcome,
            event
                .outage
                .rw_unrouted_ms
                .map_or("?".to_string(), |ms| format!("{ms} ms"))
        );
        let event = event.clone();
        self.save();
        if event.kind == EventKind::Switchover
            && let Ok(mut desk) = self.desk.lock()
            && let Some(ticket) = desk.last.as_mut()
            && ticket.from == event.from
            && ticket.finished()
            && ticket.outage.client_write_outage_ms.is_none()
        {
            ticket.outage.client_write_outage_ms = Some(outage);
        }
    }

    // ------------------------------------------------------------------------------ requests

    fn take_request(&mut self, spec: &ClusterSpec) -> Option<Request> {
        let queued = self.desk.lock().ok()?.queued.take()?;
        let (mut ticket, to) = queued;
        ticket.state = TicketState::Running;
        ticket.from = self.state.memory.primary.map(|p| spec.instance_name(p));
        self.publish_ticket(&ticket);
        self.running_ticket = Some(RunningTicket {
            ticket,
            to,
            decided: false,
        });
        Some(Request::Switchover { to })
    }

    fn publish_ticket(&self, ticket: &SwitchoverTicket) {
        if let Ok(mut desk) = self.desk.lock()
            && desk.last.as_ref().is_none_or(|l| l.id <= ticket.id)
        {
            desk.last = Some(ticket.clone());
        }
    }

    /// After a decision: what became of the running switchover request.
    fn settle_ticket(&mut self, spec: &ClusterSpec, before: &Memory, decision: &Decision) {
        let Some(RunningTicket {
            mut ticket,
            to,
            decided,
        }) = self.running_ticket.take()
        else {
            return;
        };
        let memory = &self.state.memory;
        let keep_running = |shell: &mut Self, ticket: SwitchoverTicket| {
            shell.publish_ticket(&ticket);
            shell.running_ticket = Some(RunningTicket {
                ticket,
                to,
                decided: true,
            });
        };
        match &memory.transition {
            _ if decision.status.reason == stator_control::Reason::SwitchoverRefused
                && ticket.state == TicketState::Running
                && !self.ticket_bound(&ticket, decided) =>
            {
                ticket.state = TicketState::Refused;
                ticket.message = decision.status.message.clone();
                ticket.primary = memory.primary.map(|p| spec.instance_name(p));
            }
            Some(t) if t.kind == TransitionKind::Switchover => {
                ticket.message = decision.status.message.clone();
                ticket.state = TicketState::Running;
                keep_running(self, ticket);
                return;
            }
            Some(t) => {
                ticket.message = decision.status.message.clone();
                if turned_into_failover(before.transition.as_ref(), t) {
                    ticket.state = TicketState::Abandoned;
                } else {
                    keep_running(self, ticket);
                    return;
                }
            }
            None => {
                let last = self.state.history.last();
                let done = last.is_some_and(|e| {
                    e.kind == EventKind::Switchover && e.outcome == EventOutcome::Done
                });
                ticket.primary = memory.primary.map(|p| spec.instance_name(p));
                ticket.outage = last.map(|e| e.outage).unwrap_or_default();
                if done && ticket.primary != ticket.from {
                    ticket.state = TicketState::Done;
                    ticket.message = format!(
                        "{} is the primary (term {})",
                        ticket.primary.clone().unwrap_or_default(),
                        memory.term
                    );
                } else if ticket.state == TicketState::Running
                    && last.is_some_and(|e| e.outcome == EventOutcome::Abandoned)
                {
                    ticket.state = TicketState::Abandoned;
                    ticket.message = last.map(|e| e.message.clone()).unwrap_or_default();
                } else {
                    ticket.state = TicketState::Refused;
                    ticket.message = decision.status.message.clone();
                }
            }
        }
        self.publish_ticket(&ticket);
    }

    /// The ticket already saw its switchover start (a later refusal is of another request):
    /// a decision was taken on it and the switchover in progress is the one it asked for.
    fn ticket_bound(&self, ticket: &SwitchoverTicket, decided: bool) -> bool {
        self.state
            .current
            .as_ref()
            .is_some_and(|c| c.kind == EventKind::Switchover && c.from == ticket.from)
            && decided
    }

    // ------------------------------------------------------------------------------ bookkeeping

    /// Writes each new step of a transition to the log, as the status says it, and with a
    /// promotion what every instance reported holding: the candidate choice can be checked
    /// afterwards (a rare chaos-check failure promoted one replica while another turned out
    /// to hold a transaction it lacked, and nothing said what the core had seen).
    fn log_transition_step(&mut self, spec: &ClusterSpec, input: &Input, decision: &Decision) {
        if input.memory.transition.is_none() && decision.memory.transition.is_none() {
            self.last_step = None;
            return;
        }
        let message = &decision.status.message;
        if self.last_step.as_ref() == Some(message) {
            return;
        }
        tracing::info!("{message}");
        self.last_step = Some(message.clone());
        if decision
            .actions
            .iter()
            .any(|a| matches!(a, Action::Promote { .. }))
        {
            let seen: Vec<String> = input
                .observed
                .iter()
                .map(|(o, presence)| {
                    let mut what = format!("{} {}", spec.instance_name(*o), presence.describe());
                    if let Some(f) = presence.facts() {
                        if let Some(u) = f.upstream {
                            what.push_str(&format!(", of {}", spec.instance_name(u)));
                        }
                        let held = f.held();
                        let held = held.map_or("nothing reported".to_string(), |h| h.to_string());
                        what.push_str(&format!(", holds {held}"));
                    }
                    what
                })
                .collect();
            tracing::info!("as the promotion was ordered: {}", seen.join("; "));
        }
    }

    /// Records the start and the end of transitions as events.
    fn follow_transition(&mut self, spec: &ClusterSpec, input: &Input, decision: &Decision) {
        let before = &input.memory;
        let after = &decision.memory;
        let now_mono = input.now_ms;
        let wall_now = self.rt.wall_ms();
        let to_wall = |mono: u64| wall_now.saturating_sub(now_mono.saturating_sub(mono));
        if let Some(t) = &after.transition {
            let kind = EventKind::from(t.kind);
            let fresh = self.state.current.as_ref().is_none_or(|c| c.kind != kind);
            if fresh {
                let writes_stopped = match t.kind {
                    TransitionKind::Failover => before
                        .primary_serving_at_ms
                        .or(before.primary_unhealthy_since_ms)
                        .unwrap_or(t.started_ms),
                    TransitionKind::Switchover => t.started_ms,
                };
                // A failover that replaces a switchover in progress: writes stopped with it.
                let writes_stopped_at_ms = [
                    Some(to_wall(writes_stopped)),
                    self.rw_lost.map(|(_, wall)| wall),
                    self.state
                        .current
                        .as_ref()
                        .and_then(|c| c.writes_stopped_at_ms),
                ]
                .into_iter()
                .flatten()
                .min();
                self.state.current = Some(FailoverEvent {
                    kind,
                    from: t.from.map(|f| spec.instance_name(f)),
                    to: None,
                    outcome: EventOutcome::InProgress,
                    term: after.term,
                    unhealthy_since_ms: before.primary_unhealthy_since_ms.map(to_wall),
                    started_at_ms: to_wall(t.started_ms),
                    rw_lost_at_ms: self.rw_lost.map(|(_, wall)| wall),
                    finished_at_ms: None,
                    writes_stopped_at_ms,
                    write_accepted_at_ms: None,
                    outage: WriteOutage::default(),
                    message: decision.status.message.clone(),
                });
            } else if let Some(current) = self.state.current.as_mut() {
                current.message = decision.status.message.clone();
            }
            return;
        }
        if let Some(mut event) = self.state.current.take() {
            let promoted = after.primary != before.primary
                || after.term != before.term
                || before.transition.as_ref().is_some_and(|t| {
                    matches!(t.phase, TransitionPhase::Promoting { restore: false, .. })
                });
            event.to = after.primary.map(|p| spec.instance_name(p));
            event.term = after.term;
            event.outcome = if promoted && event.to != event.from {
                EventOutcome::Done
            } else {
                EventOutcome::Abandoned
            };
            event.message = decision.status.message.clone();
            self.measuring = Some(event.started_at_ms);
            self.state.history.push(event);
            let excess = self.state.history.len().saturating_sub(HISTORY);
            self.state.history.drain(..excess);
        }
    }

    /// Write-ahead ([`Runtime::persist_state`]): the state decided, before its actions; only
    /// when it changed.
    async fn persist(&mut self) {
        let text = serde_json::to_string(&self.state).unwrap_or_default();
        if text != self.persisted {
            match self.rt.persist_state(&self.state).await {
                Ok(()) => self.persisted = text,
                Err(e) => tracing::error!("{e}"),
            }
        }
    }

    fn save(&mut self) {
        let text = serde_json::to_string(&self.state).unwrap_or_default();
        if text != self.saved {
            match self.rt.save_state(&self.state) {
                Ok(()) => self.saved = text,
                Err(e) => tracing::error!("{e}"),
            }
        }
    }

    /// Writes the `primary` record when the core holds a new confirmed primary.
    fn record_primary(&mut self, spec: &ClusterSpec) -> Option<String> {
        let memory = &self.state.memory;
        let p = memory.primary?;
        if !memory.primary_confirmed || memory.transition.is_some() {
            return None;
        }
        let name = spec.instance_name(p);
        let term = memory.term;
        if self.rt.recorded_primary() != Some(p) {
            tracing::info!("{name} is the primary now (term {term})");
            if let Err(e) = self.rt.record_primary(p, &name) {
                tracing::error!("{e}");
            }
        }
        Some(name)
    }

    // ------------------------------------------------------------------------------ routes

    /// `rw` follows `Status.rw`, `ro` follows `Status.ro` (the primary when the database has
    /// a single instance). Connections to a former `rw` target are cut.
    fn route(&mut self, db: &Database, spec: &ClusterSpec, status: &Status) {
        let rw = status.rw;
        if rw != self.rw_now {
            if let Some(old) = self.rw_now {
                self.rt.set_rw(db, None);
                let cut = self.rt.cut(db, old);
                if cut > 0 {
                    tracing::info!(
                        "cut {cut} connection(s) to the former primary {}",
                        spec.instance_name(old)
                    );
                }
            }
            match rw {
                None => {
                    if self.rw_lost.is_none() {
                        let now = self.rt.wall_ms();
                        self.rw_lost = Some((self.rt.monotonic_ms(), now));
                        if let Some(current) = self.state.current.as_mut()
                            && current.rw_lost_at_ms.is_none()
                        {
                            current.rw_lost_at_ms = Some(now);
                            current.writes_stopped_at_ms =
                                Some(current.writes_stopped_at_ms.map_or(now, |t| t.min(now)));
                        }
                    }
                }
                Some(_) => {
                    if let Some((lost, _)) = self.rw_lost.take() {
                        let outage = self.rt.monotonic_ms().saturating_sub(lost);
                        let finished = self.rt.wall_ms();
                        if let Some(last) = self.state.history.last_mut()
                            && last.finished_at_ms.is_none()
                        {
                            last.outage.rw_unrouted_ms = Some(outage);
                            last.finished_at_ms = Some(finished);
                            tracing::info!(
                                "{} {}: rw had no target for {outage} ms",
                                last.kind,
                                last.outcome
                            );
                        }
                        self.save();
                    }
                }
            }
            self.rw_now = rw;
        }
        self.rt.set_rw(db, rw);
        let ro: Vec<u32> = if ro_falls_back(db, status) {
            rw.into_iter().collect()
        } else {
            status.ro.clone()
        };
        self.rt.set_ro(db, &ro);
    }

    // ------------------------------------------------------------------------------ actions

    async fn carry_out(
        &mut self,
        db: &Database,
        spec: &ClusterSpec,
        decision: &Decision,
        sightings: &[Sighting],
    ) {
        let manager_pid = |o: u32| {
            sightings
                .iter()
                .find(|s| s.ordinal == o)
                .and_then(|s| s.manager_pid)
        };
        for action in &decision.actions {
            match action {
                Action::Wait { .. } => {}
                Action::Create { ordinal, .. } => self.rt.create(db, *ordinal),
                Action::Remove { ordinal } => self.rt.remove(db, *ordinal),
                Action::Fence { ordinal, method } => {
                    self.fence(db, *ordinal, *method, manager_pid(*ordinal))
                }
                Action::Unfence { ordinal } => {
                    self.finals.remove(ordinal);
                    if db.spec.engine != Engine::Postgres
                        && manager_pid(*ordinal).is_some()
                        && let Some(work) = self.rt.set_read_only(db, *ordinal, false)
                    {
                        self.in_flight.insert(*ordinal, InFlight::from(work));
                    }
                    tracing::debug!(
                        "{}: unfenced; it takes writes again",
                        spec.instance_name(*ordinal)
                    );
                }
                Action::Promote { ordinal, term } => {
                    if manager_pid(*ordinal).is_some() {
                        self.send(db, spec, *ordinal, format!("promote (term {term})"), None);
                    }
                }
                Action::Repoint { ordinal, upstream }
                | Action::Rejoin {
                    ordinal, upstream, ..
                } => {
                    self.finals.remove(ordinal);
                    // A manager whose server was just started has not observed its role yet;
                    // a started replica may already follow `upstream`: wait for the report.
                    let role_known = sightings
                        .iter()
                        .find(|s| s.ordinal == *ordinal)
                        .and_then(|s| s.report.as_ref())
                        .is_some_and(|r| r.role.is_some() || r.state == ServerState::Failed);
                    if manager_pid(*ordinal).is_some() && role_known {
                        let to = self.rt.server_endpoint(db, *upstream);
                        self.send(
                            db,
                            spec,
                            *ordinal,
                            format!("follow {}", to.instance),
                            Some(to),
                        );
                    }
                    // A stopped one is started by the runtime with a replica config.
                }
                Action::Rebuild { ordinal, upstream } => {
                    self.rebuild(spec, *ordinal, *upstream, manager_pid(*ordinal));
                }
            }
        }
    }

    /// Out of `rw` and `ro` first, the live connections cut, then the server: kill at once;
    /// a clean shutdown or `read_only` only when no other work runs on the instance.
    fn fence(&mut self, db: &Database, ordinal: u32, method: FenceMethod, manager: Option<u32>) {
        self.rt.unroute(db, ordinal);
        if method != FenceMethod::Kill && self.in_flight.contains_key(&ordinal) {
            return;
        }
        if let Some(work) = self.rt.fence(db, ordinal, method, manager) {
            let mut order = InFlight::from(work);
            order.kill = method == FenceMethod::Kill;
            self.in_flight.insert(ordinal, order);
        }
    }

    /// Sends `/promote` (no upstream) or `/demote` to `ordinal`'s manager, unless an order is
    /// still running there.
    fn send(
        &mut self,
        db: &Database,
        spec: &ClusterSpec,
        ordinal: u32,
        what: String,
        upstream: Option<Endpoint>,
    ) {
        if let Some(running) = self.in_flight.get(&ordinal) {
            tracing::debug!(
                "{}: {} still running; not sending {what}",
                spec.instance_name(ordinal),
                running.what
            );
            return;
        }
        let token = match self.rt.api_token() {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("cannot order {what}: {e}");
                return;
            }
        };
        let manager = self.rt.manager_address(db, ordinal);
        let name = spec.instance_name(ordinal);
        let label = what.clone();
        tracing::info!("{name}: ordering {what}");
        let task = tokio::spawn(async move {
            let (path, body) = match upstream {
                None => ("/promote", "{}".to_string()),
                Some(upstream) => (
                    "/demote",
                    serde_json::to_string(&DemoteRequest { upstream }).unwrap_or_default(),
                ),
            };
            match client::post_at(&manager, path, &token, &body, ORDER_TIMEOUT).await {
                Ok((200, _)) => tracing::info!("{name}: {label}: done"),
                Ok((code, body)) => tracing::warn!(
                    "{name}: {label}: refused (HTTP {code}): {}",
                    client::answer_text(&body)
                ),
                Err(e) => tracing::warn!("{name}: {label}: {e}"),
            }
        });
        self.in_flight
            .insert(ordinal, InFlight::from(Work { what, task }));
    }

    /// Rebuild: stop the instance, move its data aside (kept), and let the runtime start it
    /// again: it clones the primary.
    fn rebuild(&mut self, spec: &ClusterSpec, ordinal: u32, upstream: u32, manager: Option<u32>) {
        let name = spec.instance_name(ordinal);
        if let Some(running) = self.in_flight.get(&ordinal) {
            tracing::debug!("{name}: {} still running; not rebuilding yet", running.what);
            return;
        }
        if self.rt.rebuilds_in_place() {
            // Its manager carries the rebuild out once ordered (the runtime sends the order
            // once and says so): nothing to keep down or to finish here. A mark would keep it
            // down for good, and a later start order (a fenced former primary waiting for its
            // role) would never be given.
            self.finals.remove(&ordinal);
            self.state.timelines.remove(&ordinal);
        } else if self.rebuilding.insert(ordinal) {
            tracing::warn!(
                "{name}: holds transactions {} lacks: stopping it to rebuild it",
                spec.instance_name(upstream)
            );
        }
        self.rt.stop_for_rebuild(ordinal, manager);
    }

    /// A rebuild goes on by itself once ordered (the core sees the instance down meanwhile and
    /// orders nothing): when the instance's manager and server are gone, its data is moved
    /// aside (kept, never deleted) and the runtime may start it again: it clones the primary.
    fn finish_rebuilds(&mut self, db: &Database, spec: &ClusterSpec, sightings: &[Sighting]) {
        let pending: Vec<u32> = self.rebuilding.iter().copied().collect();
        for ordinal in pending {
            let name = spec.instance_name(ordinal);
            let manager = sightings
                .iter()
                .find(|s| s.ordinal == ordinal)
                .and_then(|s| s.manager_pid);
            if manager.is_some() || self.rt.server_pid(db, ordinal).is_some() {
                continue;
            }
            if self.rt.holds_data(ordinal) {
                match self.rt.move_data_aside(ordinal) {
                    Ok(kept) => tracing::warn!(
                        "{name}: its data dir is kept as {kept}; it is cloned again from the primary"
                    ),
                    Err(e) => {
                        tracing::error!("{name}: {e}");
                        continue;
                    }
                }
            }
            self.rebuilding.remove(&ordinal);
            self.finals.remove(&ordinal);
            self.state.timelines.remove(&ordinal);
        }
    }

    /// Instances the runtime must not start now (fenced and not yet allowed back, held,
    /// being rebuilt, a primary whose data is gone).
    pub fn keep_down(&mut self, spec: &ClusterSpec, sightings: &[Sighting]) -> BTreeSet<u32> {
        let memory = &self.state.memory;
        let settled_primary = memory
            .primary
            .filter(|_| memory.primary_confirmed && memory.transition.is_none());
        let recorded = self.rt.recorded_primary();
        let mut down: BTreeSet<u32> = sightings
            .iter()
            .map(|s| s.ordinal)
            .chain(0..spec.instances)
            .filter(|o| self.rt.held(*o).is_some())
            .collect();
        down.extend(self.rebuilding.iter().copied());
        for ordinal in memory.fenced.keys() {
            // A fenced instance comes back only as a replica of a confirmed primary, which the
            // primary record names (its config then says CloneFrom that primary).
            let may_rejoin =
                settled_primary.is_some_and(|p| p != *ordinal) && recorded == settled_primary;
            if !may_rejoin {
                down.insert(*ordinal);
            }
        }
        if let Some(t) = &memory.transition {
            // During a transition the old primary is not started (its config names it the
            // primary), unless the core gives it the writes back (a restore).
            let restoring = matches!(
                t.phase,
                TransitionPhase::Promoting { candidate, restore: true, .. } if Some(candidate) == t.from
            );
            if let Some(from) = t.from
                && !restoring
            {
                down.insert(from);
            }
        }
        // An empty data dir is initialised only as the first primary of a database that never
        // had data. A recorded primary whose data is gone stays down: the core fails over to
        // the most advanced instance holding the data, the primary record then names that one,
        // and this one is started as its replica (cloned from it).
        let lost =
            recorded.filter(|p| *p < spec.instances && self.rt.data_lost(*p, spec.instances));
        if let Some(p) = lost {
            if self.data_lost != lost {
                tracing::warn!(
                    "{}: the primary's data dir {} is gone or empty and the database has data; it is not initialised empty, but cloned once an instance holding the data is promoted",
                    spec.instance_name(p),
                    self.rt.data_location(p)
                );
            }
            down.insert(p);
        }
        self.data_lost = lost;
        down
    }
}

/// `ro` goes to the primary: a database of one instance has no replica to read from. With
/// more, `ro` has no target while no replica is ready (a promoted replica is never in it).
pub fn ro_falls_back(db: &Database, status: &Status) -> bool {
    status.ro.is_empty() && db.spec.instances <= 1
}

/// Reads PostgreSQL positions on timeline `tli` when they were reported on an older one.
fn on_timeline(facts: &mut InstanceFacts, tli: u32) {
    for position in [&mut facts.position, &mut facts.received_position]
        .into_iter()
        .flatten()
    {
        if let ReplicationPosition::Wal(w) = position
            && w.timeline < tli
        {
            w.timeline = tli;
        }
    }
}

/// Whether `after` is the failover the core turned the switchover `before` into (its
/// transition keeps the switchover's start and the primary it replaces).
fn turned_into_failover(before: Option<&Transition>, after: &Transition) -> bool {
    before.is_some_and(|b| {
        b.kind == TransitionKind::Switchover
            && after.kind == TransitionKind::Failover
            && after.started_ms == b.started_ms
            && after.from == b.from
    })
}

#[cfg(test)]
#[path = "shell_tests.rs"]
mod tests;
