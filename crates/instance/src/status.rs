//! What the instance manager knows about its server, shared between the supervisor (which
//! writes the lifecycle), the observer (which writes the last observation) and the HTTP
//! endpoints (which read it). Turned into the `/status` report and the readiness verdict.

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use stator_engine::postgres::controldata::ControlData;

use stator_api::Role;
use stator_api::instance::{InstanceReport, ServerState};
use stator_engine::Observation;

/// A MySQL-family replica further behind than this (`Seconds_Behind_Master`) is not ready; the
/// engine decides it (an engine's `streaming` is false then) and this says why.
pub use stator_engine::mysql_family::MAX_READY_LAG_SECONDS;

/// An observation older than this does not count for readiness.
pub const OBSERVATION_MAX_AGE: Duration = Duration::from_secs(5);

/// The mutable facts.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub state: ServerState,
    pub pid: Option<u32>,
    pub restarts: u32,
    pub message: Option<String>,
    pub observation: Option<Observation>,
    pub observed_at: Option<Instant>,
    /// The last observation failed (why, in words).
    pub observe_error: Option<String>,
    pub adopted: bool,
    /// Whether the data dir holds data (`None` until the manager looked).
    pub holds_data: Option<bool>,
    /// The roles and the application database are in place (a primary created them, or a
    /// replica got them from its primary). A primary is not ready before: a client that `up`
    /// told "ready" must find the database it was promised.
    pub users_in_place: bool,
    /// A cleanly stopped primary's last checkpoint (PostgreSQL): reported as its role and
    /// position while the server is stopped.
    pub final_checkpoint: Option<ControlData>,
}

/// Queries the server now, within its own time bound: the observation, or why there is none.
pub type Query = Box<dyn Fn() -> BoxFuture<'static, Result<Observation, String>> + Send + Sync>;

/// The facts behind a lock, plus what never changes.
pub struct InstanceStatus {
    pub name: String,
    pub manager_pid: u32,
    pub started: Instant,
    inner: Mutex<Snapshot>,
    /// How [`InstanceStatus::refresh`] queries the server (`GET /status?fresh=1`).
    query: OnceLock<Query>,
    /// The count of headline changes (state, role, readiness, server pid), and whether the
    /// manager is stopping, for the long polls of `GET /changes`
    /// ([`InstanceStatus::changed_since`]).
    changes: tokio::sync::watch::Sender<(u64, bool)>,
}

impl std::fmt::Debug for InstanceStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstanceStatus")
            .field("name", &self.name)
            .field("manager_pid", &self.manager_pid)
            .field("inner", &self.snapshot())
            .finish_non_exhaustive()
    }
}

impl InstanceStatus {
    pub fn new(name: String) -> InstanceStatus {
        InstanceStatus {
            name,
            manager_pid: std::process::id(),
            started: Instant::now(),
            inner: Mutex::new(Snapshot {
                state: ServerState::Initializing,
                pid: None,
                restarts: 0,
                message: None,
                observation: None,
                observed_at: None,
                observe_error: None,
                adopted: false,
                holds_data: None,
                users_in_place: false,
                final_checkpoint: None,
            }),
            query: OnceLock::new(),
            changes: tokio::sync::watch::Sender::new((0, false)),
        }
    }

    /// How many times the headline (state, role, readiness, server pid) changed so far.
    pub fn changes(&self) -> u64 {
        self.changes.borrow().0
    }

    /// Waits until the headline changed from what `since` ([`InstanceStatus::changes`])
    /// counted, at most `wait`, or the manager stops; the count then. A supervisor's long poll:
    /// it learns that an instance became ready when it does, not at its next tick.
    pub async fn changed_since(&self, since: u64, wait: Duration) -> u64 {
        let mut rx = self.changes.subscribe();
        let answer = |&(count, closed): &(u64, bool)| count != since || closed;
        let _ = tokio::time::timeout(wait, rx.wait_for(answer)).await;
        rx.borrow().0
    }

    /// The manager stops: pending and later long polls answer at once, so they do not hold
    /// up the HTTP server's graceful shutdown.
    pub fn close(&self) {
        self.changes.send_modify(|(count, closed)| {
            *count += 1;
            *closed = true;
        });
    }

    /// Sets how [`InstanceStatus::refresh`] queries the server (once; later calls are ignored).
    pub fn set_query(&self, query: Query) {
        let _ = self.query.set(query);
    }

    /// Queries a running server now instead of relying on the last periodic observation: the
    /// observation is replaced by the answer, or cleared (with why) when the server does not
    /// answer, so `/status` and `/readyz` tell what is true now. Nothing to ask of a server
    /// that is not running.
    pub async fn refresh(&self) {
        let Some(query) = self.query.get() else {
            return;
        };
        if self.snapshot().state != ServerState::Running {
            return;
        }
        let answer = query().await;
        self.record_observation(answer, true);
    }

    /// Records an observation of the running server, or why it failed: `forget_on_error`
    /// clears the last observation too (a fresh query that got no answer), otherwise it
    /// stands until it grows stale.
    pub fn record_observation(&self, result: Result<Observation, String>, forget_on_error: bool) {
        self.update(|s| {
            if s.state != ServerState::Running {
                return;
            }
            match result {
                Ok(o) => {
                    s.observation = Some(o);
                    s.observed_at = Some(Instant::now());
                    s.observe_error = None;
                }
                Err(why) => {
                    if forget_on_error {
                        s.observation = None;
                        s.observed_at = None;
                    }
                    s.observe_error = Some(why);
                }
            }
        });
    }

    /// A copy of the facts.
    /// The server's pid, if one runs (without copying the rest).
    pub fn pid(&self) -> Option<u32> {
        match self.inner.lock() {
            Ok(g) => g.pid,
            Err(poisoned) => poisoned.into_inner().pid,
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        match self.inner.lock() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The data dir holds transactions its upstream lacks (`why`, the engine's refusal to make
    /// it follow): the report carries it as `errant`, so the decision core orders a rebuild
    /// instead of the same rejoin again; `role` is the role the data dir had. Kept until the
    /// next observation or state change.
    pub fn record_errant(&self, role: Option<stator_api::Role>, why: String) {
        self.update(|s| {
            s.observation = Some(Observation {
                role,
                errant: Some(why),
                ..Default::default()
            });
        });
    }

    /// Changes the facts under the lock; a changed headline wakes the long polls.
    pub fn update(&self, change: impl FnOnce(&mut Snapshot)) {
        let moved = {
            let mut g = match self.inner.lock() {
                Ok(g) => g,
                Err(poisoned) => poisoned.into_inner(),
            };
            let now = Instant::now();
            let before = headline(&g, now);
            change(&mut g);
            headline(&g, now) != before
        };
        if moved {
            self.changes.send_modify(|(count, _)| *count += 1);
        }
    }

    /// Sets the lifecycle state and its message.
    pub fn set_state(&self, state: ServerState, message: Option<String>) {
        self.update(|s| {
            s.state = state;
            s.message = message;
            if !matches!(state, ServerState::Running | ServerState::Starting) {
                s.observation = None;
                s.observed_at = None;
            }
        });
    }

    /// The `/status` report.
    pub fn report(&self) -> InstanceReport {
        build_report(
            &self.name,
            self.manager_pid,
            &self.snapshot(),
            Instant::now(),
        )
    }
}

/// What a change of wakes the long polls of `GET /changes`: the lifecycle state, the role, the
/// readiness verdict and the server's pid.
fn headline(s: &Snapshot, now: Instant) -> (ServerState, Option<Role>, bool, Option<u32>) {
    (
        s.state,
        s.observation.as_ref().and_then(|o| o.role),
        unready_reason(s, now).is_none(),
        s.pid,
    )
}

/// Why the server is not ready, or `None` when it is: running, freshly observed, and for a
/// replica, streaming from its upstream.
pub fn unready_reason(s: &Snapshot, now: Instant) -> Option<String> {
    if s.state != ServerState::Running {
        return Some(format!("server is {:?}", s.state).to_lowercase());
    }
    let fresh = s
        .observed_at
        .is_some_and(|t| now.saturating_duration_since(t) <= OBSERVATION_MAX_AGE);
    let Some(o) = s.observation.as_ref().filter(|_| fresh) else {
        return Some(
            s.observe_error
                .clone()
                .unwrap_or_else(|| "no recent observation of the server".into()),
        );
    };
    match o.role {
        Some(Role::Primary) if !s.users_in_place => {
            Some("creating the roles and the application database".into())
        }
        Some(Role::Primary) => None,
        Some(Role::Replica) => replica_unready_reason(o),
        None => Some("role not known yet".into()),
    }
}

/// Why a replica is not ready: errant transactions, a stopped or failing replication thread,
/// lag over [`MAX_READY_LAG_SECONDS`], or not streaming at all.
fn replica_unready_reason(o: &Observation) -> Option<String> {
    let upstream = o
        .upstream
        .as_deref()
        .map(|u| format!(" {u}"))
        .unwrap_or_default();
    if let Some(errant) = &o.errant {
        return Some(format!(
            "replica holds transactions its upstream{upstream} does not have: {errant}"
        ));
    }
    let mut stopped = Vec::new();
    if o.receiver_running == Some(false) {
        stopped.push("receiver");
    }
    if o.applier_running == Some(false) {
        stopped.push("applier");
    }
    let error = o
        .replication_error
        .as_deref()
        .map(|e| format!(": {e}"))
        .unwrap_or_default();
    if !stopped.is_empty() {
        return Some(format!(
            "replica is not streaming from its upstream{upstream}: the {} stopped{error}",
            stopped.join(" and the ")
        ));
    }
    if o.streaming {
        return None;
    }
    if let Some(lag) = o.lag_seconds.filter(|l| *l > MAX_READY_LAG_SECONDS) {
        return Some(format!(
            "replica lags {lag:.0}s behind its upstream{upstream}, more than {MAX_READY_LAG_SECONDS:.0}s"
        ));
    }
    Some(format!(
        "replica is not streaming from its upstream{upstream}{error}"
    ))
}

/// Builds the report from a snapshot.
pub fn build_report(name: &str, manager_pid: u32, s: &Snapshot, now: Instant) -> InstanceReport {
    let reason = unready_reason(s, now);
    let mut o = s.observation.clone().unwrap_or_default();
    if s.observation.is_none()
        && s.state == ServerState::Stopped
        && let Some(checkpoint) = &s.final_checkpoint
    {
        o.role = Some(Role::Primary);
        o.position = Some(checkpoint.lsn.clone());
        o.timeline = Some(checkpoint.timeline);
    }
    InstanceReport {
        name: name.to_string(),
        state: s.state,
        role: o.role,
        ready: reason.is_none(),
        pid: s.pid,
        manager_pid,
        server_version: o.server_version,
        uptime_seconds: o.uptime_seconds,
        timeline: o.timeline,
        position: o.position,
        received_position: o.received_position,
        lag: o.lag,
        lag_seconds: o.lag_seconds,
        upstream: o.upstream,
        message: s.message.clone().or(reason),
        restarts: s.restarts,
        read_only: o.read_only,
        receiver_running: o.receiver_running,
        applier_running: o.applier_running,
        replication_error: o.replication_error,
        errant: o.errant,
        holds_data: s.holds_data,
        backup: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_long_poll_answers_when_the_headline_changes_and_only_then() {
        let status = std::sync::Arc::new(InstanceStatus::new("db-0".into()));
        let start = status.changes();
        // A changed count answers at once.
        assert_eq!(
            status
                .changed_since(start + 7, Duration::from_secs(60))
                .await,
            start
        );
        // Facts outside the headline do not wake anyone.
        status.update(|s| s.restarts += 1);
        status.update(|s| s.message = Some("still initializing".into()));
        assert_eq!(status.changes(), start);
        assert_eq!(
            status.changed_since(start, Duration::from_millis(30)).await,
            start
        );
        // A state change wakes a waiting poll.
        let waiter = tokio::spawn({
            let status = status.clone();
            async move { status.changed_since(start, Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        status.set_state(ServerState::Starting, None);
        let woke = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the poll answered")
            .expect("the poll ran");
        assert_eq!(woke, start + 1);
        // So does the manager stopping, and later polls do not wait at all.
        let now = status.changes();
        let waiter = tokio::spawn({
            let status = status.clone();
            async move { status.changed_since(now, Duration::from_secs(60)).await }
        });
        tokio::task::yield_now().await;
        status.close();
        let closed = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the poll answered")
            .expect("the poll ran");
        assert_ne!(closed, now);
        let after = status.changes();
        tokio::time::timeout(
            Duration::from_secs(5),
            status.changed_since(after, Duration::from_secs(60)),
        )
        .await
        .expect("a poll after close answers at once");
    }

    fn running(o: Observation) -> Snapshot {
        Snapshot {
            state: ServerState::Running,
            pid: Some(42),
            restarts: 0,
            message: None,
            observation: Some(o),
            observed_at: Some(Instant::now()),
            observe_error: None,
            adopted: false,
            holds_data: Some(true),
            users_in_place: true,
            final_checkpoint: None,
        }
    }

    #[test]
    fn a_running_primary_is_ready() {
        let s = running(Observation {
            role: Some(Role::Primary),
            ..Default::default()
        });
        assert_eq!(unready_reason(&s, Instant::now()), None);
        assert!(build_report("db-0", 1, &s, Instant::now()).ready);
    }

    #[test]
    fn a_primary_is_not_ready_before_its_roles_and_database_exist() {
        let mut s = running(Observation {
            role: Some(Role::Primary),
            ..Default::default()
        });
        s.users_in_place = false;
        let why = unready_reason(&s, Instant::now()).unwrap();
        assert!(why.contains("application database"), "{why}");
        assert!(!build_report("db-0", 1, &s, Instant::now()).ready);
    }

    #[test]
    fn a_replica_that_does_not_stream_is_not_ready() {
        let s = running(Observation {
            role: Some(Role::Replica),
            streaming: false,
            upstream: Some("db-0".into()),
            ..Default::default()
        });
        let why = unready_reason(&s, Instant::now()).unwrap();
        assert!(
            why.contains("not streaming") && why.contains("db-0"),
            "{why}"
        );
    }

    #[test]
    fn a_replica_with_errant_transactions_is_not_ready_and_says_which() {
        let s = running(Observation {
            role: Some(Role::Replica),
            streaming: true,
            upstream: Some("db-0".into()),
            errant: Some("0-1002-5 (not in db-0's binary log)".into()),
            ..Default::default()
        });
        let why = unready_reason(&s, Instant::now()).unwrap();
        assert!(why.contains("0-1002-5") && why.contains("db-0"), "{why}");
    }

    #[test]
    fn a_replica_with_a_stopped_sql_thread_is_not_ready_and_shows_the_error() {
        let s = running(Observation {
            role: Some(Role::Replica),
            upstream: Some("db-0".into()),
            receiver_running: Some(true),
            applier_running: Some(false),
            replication_error: Some("Duplicate entry '1' for key 'PRIMARY'".into()),
            ..Default::default()
        });
        let why = unready_reason(&s, Instant::now()).unwrap();
        assert!(
            why.contains("not streaming")
                && why.contains("applier stopped")
                && why.contains("Duplicate entry"),
            "{why}"
        );
    }

    #[test]
    fn a_replica_lagging_too_far_is_not_ready_and_says_how_far() {
        let s = running(Observation {
            role: Some(Role::Replica),
            upstream: Some("db-0".into()),
            receiver_running: Some(true),
            applier_running: Some(true),
            lag_seconds: Some(95.0),
            ..Default::default()
        });
        let why = unready_reason(&s, Instant::now()).unwrap();
        assert!(why.contains("95s") && why.contains("30s"), "{why}");
    }

    #[test]
    fn a_stale_observation_is_not_ready() {
        let mut s = running(Observation {
            role: Some(Role::Primary),
            ..Default::default()
        });
        s.observed_at = Some(Instant::now());
        let later = Instant::now() + OBSERVATION_MAX_AGE + Duration::from_secs(1);
        assert!(unready_reason(&s, later).is_some());
    }

    #[test]
    fn a_stopped_primary_reports_its_final_checkpoint_as_its_position() {
        let mut s = running(Observation::default());
        s.state = ServerState::Stopped;
        s.observation = None;
        s.final_checkpoint = Some(ControlData {
            clean: true,
            lsn: "0/3000028".into(),
            timeline: 2,
        });
        let r = build_report("db-0", 1, &s, Instant::now());
        assert_eq!(r.role, Some(Role::Primary));
        assert_eq!(r.position.as_deref(), Some("0/3000028"));
        assert_eq!(r.timeline, Some(2));
        assert!(!r.ready);
    }

    #[test]
    fn a_starting_server_is_not_ready_and_says_so() {
        let mut s = running(Observation::default());
        s.state = ServerState::Starting;
        let r = build_report("db-0", 1, &s, Instant::now());
        assert!(!r.ready);
        assert_eq!(r.message.as_deref(), Some("server is starting"));
    }
}
