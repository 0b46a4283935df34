//! The shell around the decision core in the local runtime: every supervisor tick it turns what
//! the supervisor sees (instance managers alive or not, their `/status`, a direct query to the
//! primary's server) into a [`control::Input`](stator_control::Input), calls
//! [`stator_control::decide`], persists the core's [`Memory`] in `failover.json`, and carries out
//! the actions idempotently: fence (out of `rw` first, live connections cut, then kill -9 of
//! the manager and the whole server process tree, or a clean shutdown), promote and repoint
//! (`POST /promote`, `POST /demote` to the instance managers), rejoin (a held-down former
//! primary is started again with a config that makes it a replica of the new primary; its
//! instance manager rewinds it before the server starts), rebuild (the data dir is moved aside,
//! never deleted, and cloned again) and unfence.
//!
//! It decides nothing itself: who is primary, when to fail over and where `rw` and `ro` point
//! come from the decision. What it adds is timing and bookkeeping: the write outage clients saw
//! (from the moment the old primary last took writes to the first write the new one accepted
//! through `rw`, see [`WriteOutage::client_write_outage_ms`]), the part of it `rw` had no
//! target, the last failover's timestamps, and the outcome of switchover requests, all shown
//! by `stator status`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use stator_api::instance::{DemoteRequest, Endpoint, InstanceReport, LocalPorts, ServerState};
use stator_api::names::secret_keys;
use stator_api::position::ReplicationPosition;
use stator_api::{Database, Engine, Phase, Role};
use stator_control::{
    Action, ClusterSpec, Decision, FenceMethod, Input, InstanceFacts, Memory, Presence, Request,
    Status, TransitionKind, TransitionPhase,
};

use crate::error::LocalError;
use crate::order;
use crate::process;
use crate::proxy::Routes;
use crate::secrets::read_secret;
use crate::state::{DatabaseDir, read_json, write_atomic, write_json};
use stator_engine::procfs;

/// How long the direct query to the primary's server may take before the primary counts as
/// hung for this tick.
pub const SERVER_PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// How long an order (`/promote`, `/demote`) may run before it is sent again.
const ORDER_TIMEOUT: Duration = Duration::from_secs(150);
/// How long after an order was sent the same instance gets no other order, unless it
/// finished and its effect is seen sooner.
const ORDER_SETTLE: Duration = Duration::from_millis(1500);
/// How many finished failovers and switchovers `failover.json` keeps.
const HISTORY: usize = 20;

/// `failover.json` in the database's directory.
pub fn failover_file(dir: &DatabaseDir) -> PathBuf {
    dir.root.join("failover.json")
}

/// `instances/NAME-N/hold`: while it exists the supervisor does not start instance N (a drain,
/// or a fault-injection drill that keeps a killed instance down). Its content says why.
/// `stator drain --uncordon` and `stator up` remove it.
pub fn hold_file(dir: &DatabaseDir, ordinal: u32) -> PathBuf {
    dir.instance_dir(ordinal).join("hold")
}

/// Holds instance `ordinal` down: the supervisor stops starting it until [`release`].
pub fn hold(dir: &DatabaseDir, ordinal: u32, why: &str) -> Result<(), LocalError> {
    dir.create_shared_dir(&dir.instance_dir(ordinal))?;
    write_atomic(
        &hold_file(dir, ordinal),
        format!("{why}\n").as_bytes(),
        crate::state::PRIVATE_FILE,
    )
}

/// Lets the supervisor start instance `ordinal` again; true when it was held.
pub fn release(dir: &DatabaseDir, ordinal: u32) -> Result<bool, LocalError> {
    let path = hold_file(dir, ordinal);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(LocalError::io(&path, "cannot remove", e)),
    }
}

/// Releases every held instance (`stator up` asks for all of them); their names.
pub fn release_all(dir: &DatabaseDir) -> Result<Vec<String>, LocalError> {
    let mut released = Vec::new();
    for ordinal in dir.known_ordinals() {
        if release(dir, ordinal)? {
            released.push(dir.instance_name(ordinal));
        }
    }
    Ok(released)
}

/// Why instance `ordinal` is held, when it is.
pub fn held(dir: &DatabaseDir, ordinal: u32) -> Option<String> {
    std::fs::read_to_string(hold_file(dir, ordinal))
        .ok()
        .map(|s| s.trim().to_string())
}

/// Milliseconds of `CLOCK_MONOTONIC`: never goes backwards, and is the same clock for every
/// process on this machine, so a restarted supervisor continues the core's timers.
pub fn monotonic_ms() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec it is given.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) } != 0 {
        return 0;
    }
    u64::try_from(t.tv_sec).unwrap_or(0) * 1000 + u64::try_from(t.tv_nsec).unwrap_or(0) / 1_000_000
}

/// Milliseconds since the Unix epoch, for timestamps people and checkers read.
pub fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `ms` since the Unix epoch as an RFC 3339 UTC time (`2025-11-26T10:53:08Z`), for messages a
/// person reads; JSON keeps the milliseconds.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = (secs / 86_400) as i64;
    let rest = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm, proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

/// What `failover.json` holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverState {
    /// The decision core's memory, passed back into every decision.
    #[serde(default)]
    pub memory: Memory,
    /// Finished failovers and switchovers, oldest first.
    #[serde(default)]
    pub history: Vec<FailoverEvent>,
    /// The transition in progress, as people read it.
    #[serde(default)]
    pub current: Option<FailoverEvent>,
    /// PostgreSQL: the newest timeline each instance was seen on (as a primary, or streaming
    /// as a replica). A replica whose walreceiver stopped (its upstream died) reports the
    /// timeline of its last restartpoint, which may be older than the WAL it holds; its
    /// positions are read on this timeline instead, so it is not taken for diverged.
    #[serde(default)]
    pub timelines: BTreeMap<u32, u32>,
}

/// One failover or switchover.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverEvent {
    /// `failover` or `switchover`.
    pub kind: String,
    /// The primary replaced.
    #[serde(default)]
    pub from: Option<String>,
    /// The new primary (the old one when it took writes again); `None` while in progress.
    #[serde(default)]
    pub to: Option<String>,
    /// `done`, `abandoned` (the old primary takes writes again) or `inProgress`.
    pub outcome: String,
    /// The term the new primary started.
    #[serde(default)]
    pub term: u64,
    /// Wall clock (ms since the Unix epoch): the primary first looked unhealthy (failover).
    #[serde(default)]
    pub unhealthy_since_ms: Option<u64>,
    /// Wall clock: the core started the transition (detection ran out, or the request).
    pub started_at_ms: u64,
    /// Wall clock: `rw` lost its target.
    #[serde(default)]
    pub rw_lost_at_ms: Option<u64>,
    /// Wall clock: the new primary accepted writes and `rw` pointed at it.
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    /// Wall clock: the last moment clients could still write. A failover: the last sighting
    /// of the old primary serving (the detection clock starts there; it may have stopped any
    /// time after it, so this errs on the long side). A switchover: the fence order or `rw`
    /// losing its target, whichever came first.
    #[serde(default)]
    pub writes_stopped_at_ms: Option<u64>,
    /// Wall clock: the first write accepted through `rw` afterwards, as the supervisor's own
    /// write check saw it (see [`write_through`]).
    #[serde(default)]
    pub write_accepted_at_ms: Option<u64>,
    /// From `writes_stopped_at_ms` to `write_accepted_at_ms`, and the part `rw` had no target.
    #[serde(flatten)]
    pub outage: WriteOutage,
    /// The last status message of the transition.
    #[serde(default)]
    pub message: String,
}

/// The failover part of the supervisor's report (`stator status -o json`, key `failover`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverReport {
    /// The current term (counts promotions).
    pub term: u64,
    /// The primary the core holds (`NAME-N`).
    #[serde(default)]
    pub primary: Option<String>,
    /// The decision's reason (`Healthy`, `PrimaryUnhealthy`, `FailoverBlocked`, …).
    pub reason: String,
    /// The decision's message: what is happening and why.
    pub message: String,
    /// Instances fenced (kept from accepting writes) until they rejoin.
    #[serde(default)]
    pub fenced: Vec<String>,
    /// Instances held down (drained, or held by a drill) and why.
    #[serde(default)]
    pub held: BTreeMap<String, String>,
    /// The transition in progress.
    #[serde(default)]
    pub current: Option<FailoverEvent>,
    /// The last finished failover or switchover.
    #[serde(default)]
    pub last: Option<FailoverEvent>,
    /// Every finished failover and switchover this state dir remembers (at most 20).
    #[serde(default)]
    pub history: Vec<FailoverEvent>,
    /// The last switchover request and what became of it.
    #[serde(default)]
    pub switchover: Option<SwitchoverTicket>,
}

/// A switchover request (`POST /switchover` on the supervisor) and its outcome.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverTicket {
    pub id: u64,
    /// The instance asked for; `None`: the most advanced replica.
    #[serde(default)]
    pub to: Option<String>,
    /// `queued`, `running`, `done`, `refused`, `abandoned`.
    pub state: String,
    pub message: String,
    /// The primary when the request was taken.
    #[serde(default)]
    pub from: Option<String>,
    /// The primary after it finished.
    #[serde(default)]
    pub primary: Option<String>,
    /// The switchover's write outage, once measured.
    #[serde(flatten)]
    pub outage: WriteOutage,
}

/// The write outage of a failover or switchover.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WriteOutage {
    /// What clients saw (ms): from the last moment the old primary took writes to the first
    /// write accepted through `rw` (see [`FailoverEvent::writes_stopped_at_ms`] and
    /// [`FailoverEvent::write_accepted_at_ms`]). A client adds its own reconnect and retry.
    #[serde(default)]
    pub client_write_outage_ms: Option<u64>,
    /// How long `rw` had no target (ms): only the part of the client outage after the core
    /// gave up on the old primary and before it routed to the new one.
    #[serde(default, alias = "writeOutageMs")]
    pub rw_unrouted_ms: Option<u64>,
}

impl WriteOutage {
    /// `clients could not write for 2315 ms (rw had no target for 237 ms)`; empty when not
    /// measured.
    pub fn describe(&self) -> String {
        match (self.client_write_outage_ms, self.rw_unrouted_ms) {
            (Some(client), Some(rw)) => {
                format!("clients could not write for {client} ms (rw had no target for {rw} ms)")
            }
            (Some(client), None) => format!("clients could not write for {client} ms"),
            (None, Some(rw)) => format!(
                "rw had no target for {rw} ms (the first write on the new primary is not confirmed yet)"
            ),
            (None, None) => String::new(),
        }
    }
}

impl SwitchoverTicket {
    pub fn finished(&self) -> bool {
        matches!(self.state.as_str(), "done" | "refused" | "abandoned")
    }

    /// The outcome for a person: `switchover STATE: REASON`. The decision core's refusals
    /// carry `switchover refused: ` already; it is said once, not twice.
    pub fn outcome(&self) -> String {
        let prefix = format!("switchover {}: ", self.state);
        let reason = self.message.strip_prefix(&prefix).unwrap_or(&self.message);
        format!("{prefix}{reason}")
    }
}

/// The switchover requests the HTTP endpoint takes and the tick consumes.
#[derive(Debug, Default)]
pub struct SwitchoverDesk {
    next_id: u64,
    queued: Option<(SwitchoverTicket, Option<u32>)>,
    last: Option<SwitchoverTicket>,
}

impl SwitchoverDesk {
    /// Queues a request for the next tick; its ticket.
    pub fn request(&mut self, to: Option<(String, u32)>) -> SwitchoverTicket {
        self.next_id += 1;
        let ticket = SwitchoverTicket {
            id: self.next_id,
            to: to.as_ref().map(|(name, _)| name.clone()),
            state: "queued".into(),
            message: "waiting for the next decision".into(),
            ..SwitchoverTicket::default()
        };
        self.queued = Some((ticket.clone(), to.map(|(_, o)| o)));
        self.last = Some(ticket.clone());
        ticket
    }

    pub fn last(&self) -> Option<SwitchoverTicket> {
        self.last.clone()
    }
}

/// What the supervisor knows of one instance at the start of a tick.
#[derive(Clone, Debug)]
pub struct Sighting {
    pub ordinal: u32,
    /// The instance manager process runs.
    pub manager_pid: Option<u32>,
    /// Its `/status`, when it answered.
    pub report: Option<InstanceReport>,
    /// Why `/status` did not answer.
    pub probe_error: Option<String>,
}

/// What a direct query to a server found.
#[derive(Clone, Debug, Default)]
struct ServerAnswer {
    /// Accepts writes; `None`: not known.
    writable: Option<bool>,
    /// A replica's received (flushed) position.
    received: Option<String>,
}

/// An order sent to an instance manager, not answered yet.
struct InFlight {
    what: String,
    since: Instant,
    task: tokio::task::JoinHandle<()>,
}

/// What one tick decided, for the supervisor.
pub struct Tick {
    pub status: Status,
    /// `NAME-N` of the primary the core holds, once confirmed.
    pub primary: Option<String>,
    /// Instances the supervisor must not start now (fenced and not yet allowed back, held,
    /// being rebuilt).
    pub keep_down: BTreeSet<u32>,
    /// Something is wrong or in progress: tick fast.
    pub urgent: bool,
}

/// The failover shell of one database.
pub struct Failover {
    dir: DatabaseDir,
    state: FailoverState,
    saved: String,
    desk: Arc<Mutex<SwitchoverDesk>>,
    /// The request passed to the core and waiting for its outcome.
    running_ticket: Option<(SwitchoverTicket, Option<u32>)>,
    in_flight: BTreeMap<u32, InFlight>,
    /// Final facts of cleanly shut down, fenced primaries (PostgreSQL: from pg_controldata).
    finals: BTreeMap<u32, InstanceFacts>,
    /// Data dirs being moved aside for a rebuild: the manager was told to stop.
    rebuilding: BTreeSet<u32>,
    /// `rw` lost its target at this time (monotonic, wall).
    rw_lost: Option<(Instant, u64)>,
    rw_now: Option<u32>,
    /// The write check through `rw` that ends the client write outage of the transition
    /// started at this time (wall ms); it answers when a write was accepted.
    write_check: Option<(u64, tokio::task::JoinHandle<Result<u64, String>>)>,
    /// The transition (its start, wall ms) this supervisor finished and measures the client
    /// write outage of. One finished by an earlier supervisor is not measured: the database
    /// may have been down on purpose since.
    measuring: Option<u64>,
    monitor_password: Option<String>,
    bin_dir: Option<PathBuf>,
    /// The recorded primary kept down because its data is gone (said once).
    data_lost: Option<u32>,
}

impl Failover {
    /// Loads `failover.json`; a fresh state starts from the `primary` record (not confirmed
    /// until it is seen healthy).
    pub fn load(
        dir: &DatabaseDir,
        desk: Arc<Mutex<SwitchoverDesk>>,
        bin_dir: Option<PathBuf>,
    ) -> Failover {
        let state = match read_json::<FailoverState>(&failover_file(dir)) {
            Ok(Some(state)) => state,
            Ok(None) => {
                let mut state = FailoverState::default();
                if let Some(ordinal) = crate::plan::ordinal_of(&dir.read_primary()) {
                    state.memory.primary = Some(ordinal);
                    state.memory.term = 1;
                }
                state
            }
            Err(e) => {
                // Never start a second failover on a guess: keep the record, start from the
                // primary record, and say so.
                tracing::error!("{e}; starting the failover memory from the primary record");
                let mut state = FailoverState::default();
                if let Some(ordinal) = crate::plan::ordinal_of(&dir.read_primary()) {
                    state.memory.primary = Some(ordinal);
                    state.memory.term = 1;
                }
                state
            }
        };
        Failover {
            dir: dir.clone(),
            saved: serde_json::to_string(&state).unwrap_or_default(),
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
            bin_dir,
            data_lost: None,
        }
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

    /// One round: observe, decide, act, route. `routes` is changed here and only here.
    pub async fn tick(&mut self, db: &Database, sightings: &[Sighting], routes: &Routes) -> Tick {
        self.in_flight.retain(|_, f| {
            // A finished order is remembered for a moment: its effect shows only in the next
            // observations, and repeating it meanwhile would only disturb it.
            let keep = if f.task.is_finished() {
                f.since.elapsed() < ORDER_SETTLE
            } else {
                f.since.elapsed() < ORDER_TIMEOUT
            };
            if !keep {
                f.task.abort();
            }
            keep
        });
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
                };
            }
        };
        let observed = self.observe(db, &spec, sightings).await;
        let request = self.take_request(&spec);
        let input = Input {
            spec: spec.clone(),
            observed,
            now_ms: monotonic_ms(),
            memory: self.state.memory.clone(),
            request,
        };
        let decision = stator_control::decide(&input);
        self.follow_transition(&spec, &input, &decision);
        self.state.memory = decision.memory.clone();
        self.save();
        let primary = self.record_primary(&spec);
        self.route(db, &decision.status, routes);
        self.check_write(db).await;
        self.carry_out(db, &spec, &decision, sightings, routes)
            .await;
        self.finish_rebuilds(db.spec.engine, sightings);
        self.settle_ticket(&spec, &decision);
        let keep_down = self.keep_down(&spec, sightings);
        let urgent = !matches!(
            decision.status.reason,
            stator_control::Reason::Healthy | stator_control::Reason::Degraded
        ) || self.state.memory.transition.is_some();
        Tick {
            status: decision.status,
            primary,
            keep_down,
            urgent,
        }
    }

    /// The report for `stator status`.
    pub fn report(&self, spec_name: &str, status: &Status) -> FailoverReport {
        let name = |o: u32| format!("{spec_name}-{o}");
        let memory = &self.state.memory;
        let mut held_map = BTreeMap::new();
        for ordinal in self.dir.known_ordinals() {
            if let Some(why) = held(&self.dir, ordinal) {
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
            let data_dir = self.dir.data_dir(ordinal);
            let server_pid = server_pid(engine, &data_dir);
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
                    if let Some(pid) = server_pid {
                        Presence::Unreachable {
                            reason: format!(
                                "its instance manager is not running but its server (pid {pid}) is"
                            ),
                        }
                    } else if let Some(finals) = self.final_facts(engine, spec, ordinal).await {
                        Presence::Reported(finals)
                    } else if has_data(&data_dir) {
                        Presence::Down {
                            reason: match held(&self.dir, ordinal) {
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
            let port = LocalPorts::of(db).server(ordinal);
            let answer = self
                .query_server(engine, &db.spec.local.listen_address, port)
                .await;
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
        let data_dir = self.dir.data_dir(ordinal);
        if marker_follows(&data_dir).is_some() {
            return None;
        }
        let control = stator_engine::postgres::controldata::read_control_data(
            self.bin_dir.as_deref(),
            &data_dir,
        )
        .await?;
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
            message: Some(format!(
                "fenced: shut down cleanly, final checkpoint {} on timeline {}",
                control.lsn, control.timeline
            )),
        };
        self.finals.insert(ordinal, facts.clone());
        Some(facts)
    }

    /// A real query on the server with [`SERVER_PROBE_TIMEOUT`]: whether it accepts writes
    /// and what it received, when the engine tells (MariaDB: only its greeting is read).
    async fn query_server(
        &mut self,
        engine: Engine,
        host: &str,
        port: u16,
    ) -> Result<ServerAnswer, String> {
        match engine {
            Engine::Postgres => {
                let Some(password) = self.monitor_password() else {
                    return Ok(ServerAnswer::default());
                };
                let query = async {
                    let row = monitor_query(
                        host,
                        port,
                        &password,
                        "stator-supervisor",
                        "SELECT NOT pg_is_in_recovery() AND \
                         current_setting('default_transaction_read_only') = 'off', \
                         pg_last_wal_receive_lsn()::text",
                    )
                    .await?;
                    Ok(ServerAnswer {
                        writable: Some(row.get::<_, bool>(0)),
                        received: row.get::<_, Option<String>>(1),
                    })
                };
                match tokio::time::timeout(SERVER_PROBE_TIMEOUT, query).await {
                    Ok(answer) => answer,
                    Err(_) => Err(format!(
                        "no answer to a query within {} ms",
                        SERVER_PROBE_TIMEOUT.as_millis()
                    )),
                }
            }
            Engine::Mysql | Engine::Mariadb => {
                use tokio::io::AsyncReadExt;
                let greet = async {
                    let mut stream = tokio::net::TcpStream::connect((host, port))
                        .await
                        .map_err(|e| format!("cannot connect: {e}"))?;
                    let mut b = [0u8; 5];
                    stream
                        .read_exact(&mut b)
                        .await
                        .map_err(|e| format!("no greeting: {e}"))?;
                    Ok(ServerAnswer::default())
                };
                match tokio::time::timeout(SERVER_PROBE_TIMEOUT, greet).await {
                    Ok(answer) => answer,
                    Err(_) => Err(format!(
                        "no greeting within {} ms",
                        SERVER_PROBE_TIMEOUT.as_millis()
                    )),
                }
            }
        }
    }

    fn monitor_password(&mut self) -> Option<String> {
        if self.monitor_password.is_none() {
            self.monitor_password =
                read_secret(&self.dir.secrets_dir(), secret_keys::MONITOR_PASSWORD).ok();
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
        let host = db.spec.local.listen_address.clone();
        let port = LocalPorts::of(db).rw();
        let engine = db.spec.engine;
        self.write_check = Some((
            started,
            tokio::spawn(async move {
                write_through(engine, &host, port, &password).await?;
                Ok(wall_ms())
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
        if event.kind == "switchover"
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
        ticket.state = "running".into();
        ticket.from = self.state.memory.primary.map(|p| spec.instance_name(p));
        self.publish_ticket(&ticket);
        self.running_ticket = Some((ticket, to));
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
    fn settle_ticket(&mut self, spec: &ClusterSpec, decision: &Decision) {
        let Some((mut ticket, to)) = self.running_ticket.take() else {
            return;
        };
        let memory = &self.state.memory;
        match &memory.transition {
            _ if decision.status.reason == stator_control::Reason::SwitchoverRefused
                && ticket.state == "running"
                && !self.ticket_bound(&ticket) =>
            {
                ticket.state = "refused".into();
                ticket.message = decision.status.message.clone();
                ticket.primary = memory.primary.map(|p| spec.instance_name(p));
            }
            Some(t) if t.kind == TransitionKind::Switchover => {
                ticket.message = decision.status.message.clone();
                ticket.state = "running".into();
                self.publish_ticket(&ticket);
                self.running_ticket = Some((ticket, to));
                return;
            }
            Some(_) => {
                ticket.message = decision.status.message.clone();
                if ticket.message.contains("turned into a failover") {
                    ticket.state = "abandoned".into();
                } else {
                    self.publish_ticket(&ticket);
                    self.running_ticket = Some((ticket, to));
                    return;
                }
            }
            None => {
                let last = self.state.history.last();
                let done = last.is_some_and(|e| e.kind == "switchover" && e.outcome == "done");
                ticket.primary = memory.primary.map(|p| spec.instance_name(p));
                ticket.outage = last.map(|e| e.outage).unwrap_or_default();
                if done && ticket.primary != ticket.from {
                    ticket.state = "done".into();
                    ticket.message = format!(
                        "{} is the primary (term {})",
                        ticket.primary.clone().unwrap_or_default(),
                        memory.term
                    );
                } else if ticket.state == "running"
                    && last.is_some_and(|e| e.outcome == "abandoned")
                {
                    ticket.state = "abandoned".into();
                    ticket.message = last.map(|e| e.message.clone()).unwrap_or_default();
                } else {
                    ticket.state = "refused".into();
                    ticket.message = decision.status.message.clone();
                }
            }
        }
        self.publish_ticket(&ticket);
    }

    /// The ticket already saw its switchover start (a later refusal is of another request).
    fn ticket_bound(&self, ticket: &SwitchoverTicket) -> bool {
        self.state
            .current
            .as_ref()
            .is_some_and(|c| c.kind == "switchover" && c.from == ticket.from)
            && ticket.message != "waiting for the next decision"
    }

    // ------------------------------------------------------------------------------ bookkeeping

    /// Records the start and the end of transitions as events.
    fn follow_transition(&mut self, spec: &ClusterSpec, input: &Input, decision: &Decision) {
        let before = &input.memory;
        let after = &decision.memory;
        let now_mono = input.now_ms;
        let to_wall = |mono: u64| wall_ms().saturating_sub(now_mono.saturating_sub(mono));
        if let Some(t) = &after.transition {
            let kind = match t.kind {
                TransitionKind::Failover => "failover",
                TransitionKind::Switchover => "switchover",
            };
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
                    kind: kind.into(),
                    from: t.from.map(|f| spec.instance_name(f)),
                    to: None,
                    outcome: "inProgress".into(),
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
                "done".into()
            } else {
                "abandoned".into()
            };
            event.message = decision.status.message.clone();
            self.measuring = Some(event.started_at_ms);
            self.state.history.push(event);
            let excess = self.state.history.len().saturating_sub(HISTORY);
            self.state.history.drain(..excess);
        }
    }

    fn save(&mut self) {
        let text = serde_json::to_string(&self.state).unwrap_or_default();
        if text != self.saved {
            match write_json(&failover_file(&self.dir), &self.state) {
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
        if self.dir.read_primary() != name {
            tracing::info!("{name} is the primary now (term {})", memory.term);
            if let Err(e) = self.dir.write_primary(&name) {
                tracing::error!("{e}");
            }
        }
        Some(name)
    }

    // ------------------------------------------------------------------------------ routes

    /// `rw` follows `Status.rw`, `ro` follows `Status.ro` (the primary when the database has
    /// a single instance). Connections to a former `rw` target are cut.
    fn route(&mut self, db: &Database, status: &Status, routes: &Routes) {
        let addr = |ordinal: u32| server_addr(db, ordinal);
        let rw = status.rw;
        if rw != self.rw_now {
            if let Some(old) = self.rw_now.and_then(addr) {
                routes.set_rw(None);
                let cut = routes.cut(old);
                if cut > 0 {
                    tracing::info!("cut {cut} connection(s) to the former primary at {old}");
                }
            }
            match rw {
                None => {
                    if self.rw_lost.is_none() {
                        let now = wall_ms();
                        self.rw_lost = Some((Instant::now(), now));
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
                        let outage = u64::try_from(lost.elapsed().as_millis()).unwrap_or(u64::MAX);
                        if let Some(last) = self.state.history.last_mut()
                            && last.finished_at_ms.is_none()
                        {
                            last.outage.rw_unrouted_ms = Some(outage);
                            last.finished_at_ms = Some(wall_ms());
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
        routes.set_rw(rw.and_then(addr));
        let ro: Vec<SocketAddr> = if ro_falls_back(db, status) {
            rw.and_then(addr).into_iter().collect()
        } else {
            status.ro.iter().filter_map(|o| addr(*o)).collect()
        };
        routes.set_ro(ro);
    }

    // ------------------------------------------------------------------------------ actions

    async fn carry_out(
        &mut self,
        db: &Database,
        spec: &ClusterSpec,
        decision: &Decision,
        sightings: &[Sighting],
        routes: &Routes,
    ) {
        let manager_pid = |o: u32| {
            sightings
                .iter()
                .find(|s| s.ordinal == o)
                .and_then(|s| s.manager_pid)
        };
        for action in &decision.actions {
            match action {
                Action::Wait { .. } | Action::Create { .. } | Action::Remove { .. } => {}
                Action::Fence { ordinal, method } => {
                    self.fence(db, *ordinal, *method, manager_pid(*ordinal), routes)
                }
                Action::Unfence { ordinal } => {
                    self.finals.remove(ordinal);
                    if db.spec.engine != Engine::Postgres && manager_pid(*ordinal).is_some() {
                        self.set_read_only(*ordinal, false);
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
                        let to = endpoint(db, spec, *upstream);
                        self.send(
                            db,
                            spec,
                            *ordinal,
                            format!("follow {}", to.instance),
                            Some(to),
                        );
                    }
                    // A stopped one is started by the supervisor with a replica config.
                }
                Action::Rebuild { ordinal, upstream } => {
                    self.rebuild(spec, *ordinal, *upstream, manager_pid(*ordinal));
                }
            }
        }
    }

    fn fence(
        &mut self,
        db: &Database,
        ordinal: u32,
        method: FenceMethod,
        manager: Option<u32>,
        routes: &Routes,
    ) {
        let name = db.instance_name(ordinal);
        // Out of rw first, then the live connections, then the server.
        if let Some(addr) = server_addr(db, ordinal) {
            if routes.rw() == Some(addr) {
                routes.set_rw(None);
            }
            let ro: Vec<SocketAddr> = routes.ro().into_iter().filter(|a| *a != addr).collect();
            routes.set_ro(ro);
            routes.cut(addr);
        }
        match method {
            FenceMethod::Kill => {
                let data_dir = self.dir.data_dir(ordinal);
                let server = server_pid(db.spec.engine, &data_dir);
                if manager.is_some() || server.is_some() {
                    tracing::warn!(
                        "{name}: fencing: kill -9 of its instance manager ({}) and its server's process tree ({})",
                        manager.map_or("-".to_string(), |p| p.to_string()),
                        server.map_or("-".to_string(), |p| p.to_string())
                    );
                }
                // Everything the manager started (a server it is just starting has no pid
                // file yet) and everything under the server, collected before any is killed
                // (orphans are adopted by init and would be lost from sight).
                let mut doomed: Vec<u32> = manager.map(procfs::process_tree).unwrap_or_default();
                doomed.extend(server.map(procfs::process_tree).unwrap_or_default());
                doomed.dedup();
                for pid in doomed {
                    process::signal(pid, Signal::SIGKILL);
                }
            }
            FenceMethod::Shutdown => {
                if let Some(pid) = manager
                    && !self.in_flight.contains_key(&ordinal)
                {
                    tracing::info!("{name}: fencing: clean shutdown of its server");
                    process::signal(pid, Signal::SIGTERM);
                    self.in_flight.insert(
                        ordinal,
                        InFlight {
                            what: "shutdown".into(),
                            since: Instant::now(),
                            task: tokio::spawn(wait_gone(pid)),
                        },
                    );
                }
            }
            FenceMethod::ReadOnly => {
                // The server keeps running, refusing writes, so the replicas can fetch the rest
                // of its binary log; its manager keeps reporting its final GTID position.
                if manager.is_some() && !self.in_flight.contains_key(&ordinal) {
                    tracing::info!("{name}: fencing: read_only=ON");
                    self.set_read_only(ordinal, true);
                }
            }
        }
    }

    /// `SET GLOBAL read_only` on a MySQL-family server, as `root` over its Unix socket (root
    /// logs in only there, by the OS user: no password anywhere), with the `mariadb` client.
    fn set_read_only(&mut self, ordinal: u32, on: bool) {
        let socket = self.dir.run_dir(ordinal).join("mariadb.sock");
        let client = self
            .bin_dir
            .as_deref()
            .and_then(|b| crate::preflight::find_tool(b, "mariadb"))
            .unwrap_or_else(|| PathBuf::from("mariadb"));
        let sql = format!("SET GLOBAL read_only={}", if on { "ON" } else { "OFF" });
        let name = self.dir.instance_name(ordinal);
        let label = sql.clone();
        let task = tokio::spawn(async move {
            let run = tokio::process::Command::new(client)
                .args(["--no-defaults", "-u", "root", "-N", "-B"])
                .arg(format!("--socket={}", socket.display()))
                .args(["-e", &sql])
                .stdin(std::process::Stdio::null())
                .output();
            match tokio::time::timeout(Duration::from_secs(10), run).await {
                Ok(Ok(out)) if out.status.success() => tracing::info!("{name}: {sql}: done"),
                Ok(Ok(out)) => tracing::warn!(
                    "{name}: {sql} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Ok(Err(e)) => tracing::warn!("{name}: {sql}: cannot run the client: {e}"),
                Err(_) => tracing::warn!("{name}: {sql}: no answer within 10 s"),
            }
        });
        self.in_flight.insert(
            ordinal,
            InFlight {
                what: label,
                since: Instant::now(),
                task,
            },
        );
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
        let token = match read_secret(&self.dir.secrets_dir(), secret_keys::API_TOKEN) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!("cannot order {what}: {e}");
                return;
            }
        };
        let host = db.spec.local.listen_address.clone();
        let port = LocalPorts::of(db).manager(ordinal);
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
            match order::post(&host, port, path, &token, &body, ORDER_TIMEOUT).await {
                Ok((200, _)) => tracing::info!("{name}: {label}: done"),
                Ok((code, body)) => tracing::warn!(
                    "{name}: {label}: refused (HTTP {code}): {}",
                    order::answer_text(&body)
                ),
                Err(e) => tracing::warn!("{name}: {label}: {e}"),
            }
        });
        self.in_flight.insert(
            ordinal,
            InFlight {
                what,
                since: Instant::now(),
                task,
            },
        );
    }

    /// Rebuild: stop the manager, move the data dir aside (kept, named with the time), and
    /// let the supervisor start the instance again: it clones the primary.
    fn rebuild(&mut self, spec: &ClusterSpec, ordinal: u32, upstream: u32, manager: Option<u32>) {
        let name = spec.instance_name(ordinal);
        if let Some(running) = self.in_flight.get(&ordinal) {
            tracing::debug!("{name}: {} still running; not rebuilding yet", running.what);
            return;
        }
        if self.rebuilding.insert(ordinal) {
            tracing::warn!(
                "{name}: holds transactions {} lacks: stopping it to rebuild it",
                spec.instance_name(upstream)
            );
        }
        if let Some(pid) = manager {
            process::signal(pid, Signal::SIGTERM);
        }
    }

    /// A rebuild goes on by itself once ordered (the core sees the instance down meanwhile and
    /// orders nothing): when the instance's manager and server are gone, its data dir is moved
    /// aside (kept, never deleted) and the supervisor may start it again: it clones the primary.
    fn finish_rebuilds(&mut self, engine: Engine, sightings: &[Sighting]) {
        let pending: Vec<u32> = self.rebuilding.iter().copied().collect();
        for ordinal in pending {
            let name = self.dir.instance_name(ordinal);
            let manager = sightings
                .iter()
                .find(|s| s.ordinal == ordinal)
                .and_then(|s| s.manager_pid);
            let data_dir = self.dir.data_dir(ordinal);
            if manager.is_some() || server_pid(engine, &data_dir).is_some() {
                continue;
            }
            if has_data(&data_dir) {
                let aside = data_dir.with_file_name(format!(
                    "{}.diverged-{}",
                    data_dir
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    wall_ms() / 1000
                ));
                match std::fs::rename(&data_dir, &aside) {
                    Ok(()) => tracing::warn!(
                        "{name}: its data dir is kept as {}; it is cloned again from the primary",
                        aside.display()
                    ),
                    Err(e) => {
                        tracing::error!("{name}: cannot move {} aside: {e}", data_dir.display());
                        continue;
                    }
                }
            }
            self.rebuilding.remove(&ordinal);
            self.finals.remove(&ordinal);
            self.state.timelines.remove(&ordinal);
        }
    }

    /// Instances the supervisor must not start now.
    fn keep_down(&mut self, spec: &ClusterSpec, sightings: &[Sighting]) -> BTreeSet<u32> {
        let memory = &self.state.memory;
        let settled_primary = memory
            .primary
            .filter(|_| memory.primary_confirmed && memory.transition.is_none());
        let recorded = crate::plan::ordinal_of(&self.dir.read_primary());
        let mut down: BTreeSet<u32> = sightings
            .iter()
            .map(|s| s.ordinal)
            .chain(0..spec.instances)
            .filter(|o| held(&self.dir, *o).is_some())
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
        let lost = recorded.filter(|p| {
            *p < spec.instances
                && !self.dir.holds_data(*p)
                && self.dir.had_data(
                    self.dir.read_marker().ok().flatten().as_ref(),
                    0..spec.instances,
                )
        });
        if let Some(p) = lost {
            if self.data_lost != lost {
                tracing::warn!(
                    "{}: the primary's data dir {} is gone or empty and the database has data; it is not initialised empty, but cloned once an instance holding the data is promoted",
                    spec.instance_name(p),
                    self.dir.data_dir(p).display()
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

/// The address of instance `ordinal`'s server.
/// One query on a PostgreSQL server as the monitor user, on a connection of its own.
async fn monitor_query(
    host: &str,
    port: u16,
    password: &str,
    application_name: &str,
    sql: &str,
) -> Result<tokio_postgres::Row, String> {
    let mut config = tokio_postgres::Config::new();
    config
        .host(host)
        .port(port)
        .user(stator_engine::postgres::config::MONITOR_USER)
        .password(password)
        .dbname("postgres")
        .application_name(application_name)
        .connect_timeout(SERVER_PROBE_TIMEOUT);
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let task = tokio::spawn(connection);
    let row = client
        .query_one(sql, &[])
        .await
        .map_err(|e| format!("query failed: {e}"));
    drop(client);
    let _ = task.await;
    row
}

/// How long one write check through `rw` may take: a write on a synchronous primary waits for
/// a standby, as clients' writes do.
const WRITE_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// One write check through the `rw` proxy at `host:port`, as the monitor user; `Ok` when the
/// server behind it accepted it.
///
/// PostgreSQL: a read-write transaction that takes a transaction id and commits it
/// (`pg_current_xact_id()`): a commit record is written to WAL, and a synchronous primary
/// waits for its standby, exactly as for a client's write. A replica refuses it ("cannot
/// assign TransactionIds during recovery"), a fenced primary returns no id.
/// MariaDB: the server behind `rw` has `read_only` off. It is a read, not a write (Stator keeps
/// no table of its own to write to), so it shows the server would accept the application's
/// writes, not that one was committed.
pub async fn write_through(
    engine: Engine,
    host: &str,
    port: u16,
    password: &str,
) -> Result<(), String> {
    let check = async {
        match engine {
            Engine::Postgres => {
                let row = monitor_query(
                    host,
                    port,
                    password,
                    "stator-write-check",
                    "SELECT CASE WHEN current_setting('transaction_read_only') = 'off' \
                     THEN pg_current_xact_id()::text END",
                )
                .await
                .map_err(|e| format!("the write failed: {e}"))?;
                match row.get::<_, Option<String>>(0) {
                    Some(_) => Ok(()),
                    None => Err("the server behind rw is read-only".to_string()),
                }
            }
            Engine::Mysql | Engine::Mariadb => {
                use mysql_async::prelude::Queryable;
                let opts = mysql_async::OptsBuilder::default()
                    .ip_or_hostname(host.to_string())
                    .tcp_port(port)
                    .user(Some(stator_engine::mysql_family::config::MONITOR_USER))
                    .pass(Some(password.to_string()))
                    // Never the server's Unix socket: that would bypass `rw`.
                    .prefer_socket(false);
                let mut conn = mysql_async::Conn::new(opts)
                    .await
                    .map_err(|e| format!("cannot connect: {e}"))?;
                let read_only: Option<i64> = conn
                    .query_first("SELECT @@global.read_only")
                    .await
                    .map_err(|e| format!("cannot read read_only: {e}"))?;
                let _ = conn.disconnect().await;
                match read_only {
                    Some(0) => Ok(()),
                    _ => Err("the server behind rw is read-only".to_string()),
                }
            }
        }
    };
    tokio::time::timeout(WRITE_CHECK_TIMEOUT, check)
        .await
        .map_err(|_| format!("no answer within {WRITE_CHECK_TIMEOUT:?}"))?
}

fn server_addr(db: &Database, ordinal: u32) -> Option<SocketAddr> {
    format!(
        "{}:{}",
        db.spec.local.listen_address,
        LocalPorts::of(db).server(ordinal)
    )
    .parse()
    .ok()
}

fn endpoint(db: &Database, spec: &ClusterSpec, ordinal: u32) -> Endpoint {
    Endpoint {
        instance: spec.instance_name(ordinal),
        host: db.spec.local.listen_address.clone(),
        port: LocalPorts::of(db).server(ordinal),
    }
}

async fn wait_gone(pid: u32) {
    while process::is_alive(pid) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The server process running on `data_dir`, when alive and really that server (a recycled
/// pid is never fenced).
pub fn server_pid(engine: Engine, data_dir: &Path) -> Option<u32> {
    process::server_of(engine, data_dir)
}

fn has_data(data_dir: &Path) -> bool {
    std::fs::read_dir(data_dir).is_ok_and(|mut entries| entries.next().is_some())
}

/// The instance a data dir follows, from its Stator marker.
fn marker_follows(data_dir: &Path) -> Option<String> {
    stator_engine::data_dir::read_marker(data_dir)
        .ok()
        .flatten()
        .and_then(|m| m.follows)
        .map(|f| f.instance)
}

/// The failover lines of the `stator status` table (the core's message is the report's
/// message): fences, holds, the last failover or switchover.
pub fn render_failover(f: &FailoverReport) -> String {
    let mut out = String::new();
    if !f.fenced.is_empty() {
        out.push_str(&format!(
            "fenced (kept from taking writes until it rejoins): {}\n",
            f.fenced.join(", ")
        ));
    }
    for (name, why) in &f.held {
        out.push_str(&format!(
            "{name}: held down ({why}); `stator drain -f FILE {name} --uncordon` lets it run again\n"
        ));
    }
    if let Some(e) = &f.last {
        out.push_str(&format!(
            "last {}: {} -> {} ({}, term {}){}\n",
            e.kind,
            e.from.as_deref().unwrap_or("?"),
            e.to.as_deref().unwrap_or("?"),
            e.outcome,
            e.term,
            match e.outage.describe() {
                d if d.is_empty() => d,
                d => format!(", {d}"),
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wall_times_read_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_154_388_123), "2025-11-26T10:53:08Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_107_542_399_000), "2100-02-28T23:59:59Z");
    }

    #[test]
    fn a_refused_switchover_says_refused_once() {
        let ticket = SwitchoverTicket {
            state: "refused".into(),
            message: "switchover refused: pg-1 is already the primary".into(),
            ..SwitchoverTicket::default()
        };
        assert_eq!(
            ticket.outcome(),
            "switchover refused: pg-1 is already the primary"
        );
        let abandoned = SwitchoverTicket {
            state: "abandoned".into(),
            message: "the primary was lost: turned into a failover".into(),
            ..SwitchoverTicket::default()
        };
        assert_eq!(
            abandoned.outcome(),
            "switchover abandoned: the primary was lost: turned into a failover"
        );
    }

    #[test]
    fn an_event_names_its_outages_and_reads_the_old_rw_figure_as_what_it_was() {
        let old: FailoverEvent = serde_json::from_str(
            r#"{"kind":"failover","outcome":"done","startedAtMs":5,"writeOutageMs":254}"#,
        )
        .unwrap();
        assert_eq!(old.outage.rw_unrouted_ms, Some(254));
        assert_eq!(old.outage.client_write_outage_ms, None);
        let mut event = old;
        event.outage.client_write_outage_ms = Some(5300);
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["clientWriteOutageMs"], 5300);
        assert_eq!(json["rwUnroutedMs"], 254);
        assert!(json.get("writeOutageMs").is_none(), "{json}");
        assert_eq!(
            event.outage.describe(),
            "clients could not write for 5300 ms (rw had no target for 254 ms)"
        );
    }

    #[test]
    fn a_hold_is_kept_until_released() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = crate::state::StateDir {
            root: tmp.path().to_path_buf(),
        }
        .database("ns", "db");
        assert_eq!(held(&dir, 1), None);
        hold(&dir, 1, "drained").unwrap();
        assert_eq!(held(&dir, 1).as_deref(), Some("drained"));
        assert!(release(&dir, 1).unwrap());
        assert!(!release(&dir, 1).unwrap());
        assert_eq!(held(&dir, 1), None);
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
        let tmp = tempfile::tempdir().unwrap();
        let dir = crate::state::StateDir {
            root: tmp.path().to_path_buf(),
        }
        .database("ns", "db");
        let mut shell = Failover::load(&dir, Arc::new(Mutex::new(SwitchoverDesk::default())), None);
        let report = |role, receiver, timeline| InstanceReport {
            name: "db-1".into(),
            state: ServerState::Running,
            role: Some(role),
            ready: true,
            pid: Some(2),
            manager_pid: 1,
            server_version: None,
            uptime_seconds: None,
            timeline: Some(timeline),
            position: None,
            received_position: None,
            lag: None,
            lag_seconds: None,
            upstream: None,
            message: None,
            restarts: 0,
            read_only: false,
            receiver_running: receiver,
            applier_running: None,
            replication_error: None,
            errant: None,
            holds_data: Some(true),
        };
        shell.remember_timeline(1, &report(Role::Replica, Some(true), 3));
        shell.remember_timeline(1, &report(Role::Replica, Some(false), 1));
        shell.remember_timeline(1, &report(Role::Replica, Some(true), 2));
        assert_eq!(shell.state.timelines.get(&1), Some(&3));
        shell.remember_timeline(2, &report(Role::Replica, Some(false), 5));
        assert_eq!(shell.state.timelines.get(&2), None);
        shell.remember_timeline(2, &report(Role::Primary, None, 4));
        assert_eq!(shell.state.timelines.get(&2), Some(&4));
    }

    #[test]
    fn a_fenced_instance_stays_down_until_a_new_primary_is_confirmed_and_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = crate::state::StateDir {
            root: tmp.path().to_path_buf(),
        }
        .database("ns", "db");
        crate::state::create_dir(&dir.root, 0o755).unwrap();
        let spec = ClusterSpec {
            name: "db".into(),
            engine: Engine::Postgres,
            instances: 3,
            synchronous: false,
            failover_enabled: true,
            detection_timeout_ms: 2000,
            switchover_timeout_ms: 30_000,
        };
        let mut shell = Failover::load(&dir, Arc::new(Mutex::new(SwitchoverDesk::default())), None);
        let fence = stator_control::Fence {
            method: FenceMethod::Kill,
            confirmed: true,
            floor: None,
        };
        shell.state.memory.fenced.insert(0, fence);
        shell.state.memory.primary = Some(1);
        shell.state.memory.primary_confirmed = false;
        assert!(shell.keep_down(&spec, &[]).contains(&0));
        shell.state.memory.primary_confirmed = true;
        // Confirmed, but the primary record still names db-0: its config would say primary.
        assert!(shell.keep_down(&spec, &[]).contains(&0));
        dir.write_primary("db-1").unwrap();
        assert!(!shell.keep_down(&spec, &[]).contains(&0));
        hold(&dir, 2, "drained").unwrap();
        assert_eq!(shell.keep_down(&spec, &[]), BTreeSet::from([2]));
    }

    #[test]
    fn the_desk_queues_one_request_and_remembers_the_last() {
        let mut desk = SwitchoverDesk::default();
        let first = desk.request(None);
        let second = desk.request(Some(("db-2".into(), 2)));
        assert_eq!((first.id, second.id), (1, 2));
        assert_eq!(desk.queued.as_ref().map(|(_, to)| *to), Some(Some(2)));
        assert_eq!(desk.last().map(|t| t.id), Some(2));
    }
}
