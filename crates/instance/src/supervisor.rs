//! The supervisor: fills an empty data directory (initdb or a clone of the upstream; a new
//! primary's only after asking its peers, see [`crate::peers`]), writes the
//! configuration, adopts a server still running on the data directory or starts one, waits until
//! it accepts connections, creates the roles on a primary, restarts the server with backoff when
//! it dies, and carries out promote, demote and shutdown one at a time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use stator_api::Role;
use stator_api::instance::{Bootstrap, Endpoint, Peer, ServerState};
use stator_engine::{
    Credentials, DataDirMarker, DataDirState, EngineError, ServerEngine, ServerProcess,
};
use tokio::sync::{mpsc, oneshot};

use crate::error::InstanceError;
use crate::peers::{self, EmptyDataDir};
use crate::status::InstanceStatus;

/// A reply to a mutating request: `Ok` with what was done, or why not.
pub type Reply = oneshot::Sender<Result<String, String>>;

/// What the HTTP endpoints and the signal handler ask of the supervisor.
#[derive(Debug)]
pub enum Command {
    Promote(Reply),
    Demote(Endpoint, Reply),
    /// Apply these effective parameters without a restart; the reply names what needs one.
    Reload(BTreeMap<String, String>, Reply),
    /// An order to a managed instance manager ([`crate::managed`]); only its router sends one.
    Order(crate::managed::Order, Reply),
    Shutdown,
}

/// Restart delays: 1s, 2s, 4s … 30s; back to 1s after the server ran for a minute.
#[derive(Debug, Default)]
pub struct Backoff {
    failures: u32,
}

impl Backoff {
    pub const MAX: Duration = Duration::from_secs(30);
    pub const STABLE_AFTER: Duration = Duration::from_secs(60);

    /// The delay before the next attempt, given how long the last run lasted.
    pub fn next_delay(&mut self, ran_for: Duration) -> Duration {
        if ran_for >= Self::STABLE_AFTER {
            self.failures = 0;
        }
        let delay = Duration::from_secs(1u64 << self.failures.min(5)).min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        delay
    }
}

/// How serving a started server ended.
pub(crate) enum Served {
    Shutdown,
    Exited(String),
    Rejoin(Endpoint, Reply),
    /// A managed instance manager's order, for [`crate::managed`] to carry out; the server
    /// still runs.
    Order(crate::managed::Order, Reply),
}

/// Drives one server through its life.
pub struct Supervisor<E: ServerEngine> {
    pub engine: Arc<E>,
    pub creds: Credentials,
    pub bootstrap: Bootstrap,
    /// Asked before an empty data dir is initialised as a new primary.
    pub peers: Vec<Peer>,
    pub status: Arc<InstanceStatus>,
    pub commands: mpsc::Receiver<Command>,
    /// How long a fast shutdown may take before an immediate one.
    pub stop_timeout: Duration,
}

impl<E: ServerEngine> Supervisor<E> {
    pub(crate) fn fail(&self, source: EngineError) -> InstanceError {
        self.status
            .set_state(ServerState::Failed, Some(source.to_string()));
        InstanceError::Engine {
            instance: self.status.name.clone(),
            source,
        }
    }

    /// Runs until shut down (Ok) or until the server cannot run (Err).
    pub async fn run(mut self) -> Result<(), InstanceError> {
        let state = self.engine.inspect_data_dir().map_err(|e| self.fail(e))?;
        let holds_data = matches!(state, DataDirState::Ready(_));
        self.status.update(|s| s.holds_data = Some(holds_data));
        let filled = match &state {
            DataDirState::Empty => self.fill_data_dir().await?,
            DataDirState::Ready(marker) => match rejoin_target(&self.bootstrap, marker) {
                Some(upstream) => self.rejoin_before_start(upstream).await?,
                None => true,
            },
        };
        if !filled {
            self.status.set_state(ServerState::Stopped, None);
            return Ok(());
        }
        let mut backoff = Backoff::default();
        let mut pending_reply: Option<Reply> = None;
        loop {
            self.engine
                .write_config(&self.creds)
                .map_err(|e| self.fail(e))?;
            let mut server = match self.engine.find_running().map_err(|e| self.fail(e))? {
                Some(running) => {
                    tracing::info!(
                        pid = running.pid(),
                        "adopting the server already running on the data directory"
                    );
                    // The configuration just written may differ from the one it started with.
                    if let Err(e) = self.engine.reload_config(&running) {
                        tracing::warn!(error = %e, "reloading the adopted server's configuration");
                    }
                    running
                }
                None => self.engine.start().map_err(|e| self.fail(e))?,
            };
            let adopted = server.is_adopted();
            self.status.update(|s| {
                s.pid = Some(server.pid());
                s.adopted = adopted;
                s.state = ServerState::Starting;
                s.message = None;
            });
            if let Some(reply) = pending_reply.take() {
                let _ = reply.send(Ok("rejoined; the server is starting as a replica".into()));
            }
            let started = Instant::now();
            let served = loop {
                match self.serve(&mut server).await {
                    Served::Order(_, reply) => refuse_order(reply),
                    other => break other,
                }
            };
            match served {
                Served::Shutdown => {
                    self.status
                        .set_state(ServerState::Stopped, Some("shutting down".into()));
                    let how = self.engine.stop(&mut server, self.stop_timeout).await;
                    tracing::info!(how = %how, "server stopped");
                    self.status.update(|s| s.pid = None);
                    return Ok(());
                }
                Served::Exited(how) => {
                    let delay = backoff.next_delay(started.elapsed());
                    tracing::warn!(how = %how, delay_ms = delay.as_millis() as u64, "the server died; restarting it");
                    self.status.update(|s| {
                        s.restarts = s.restarts.saturating_add(1);
                        s.pid = None;
                    });
                    self.status.set_state(
                        ServerState::Crashed,
                        Some(format!("server {how}; restarting in {}s", delay.as_secs())),
                    );
                    if !self.pause(delay).await {
                        self.status.set_state(ServerState::Stopped, None);
                        return Ok(());
                    }
                }
                // Answered in the loop above; never breaks out of it.
                Served::Order(_, reply) => refuse_order(reply),
                Served::Rejoin(upstream, reply) => {
                    match self.demote_stopping(&mut server, upstream, reply).await {
                        Some(reply) => pending_reply = Some(reply),
                        None => {
                            self.status.set_state(ServerState::Stopped, None);
                            return Ok(());
                        }
                    }
                }
            }
        }
    }

    /// Stops the server for a demotion and rejoins `upstream` ([`Self::rejoin_until_done`]).
    pub(crate) async fn demote_stopping(
        &mut self,
        server: &mut ServerProcess,
        upstream: Endpoint,
        reply: Reply,
    ) -> Option<Reply> {
        self.status.set_state(
            ServerState::Stopped,
            Some(format!(
                "demoting: rejoining as a replica of {}",
                upstream.instance
            )),
        );
        let how = self.engine.stop(server, self.stop_timeout).await;
        tracing::info!(how = %how, upstream = %upstream.instance, "stopped for demotion");
        self.status.update(|s| s.pid = None);
        self.rejoin_until_done(upstream, reply).await
    }

    /// Rejoins `upstream` with the server stopped. A failed rejoin leaves the server stopped
    /// (never back as a primary that was asked to step down) until another demotion succeeds;
    /// `None` when asked to shut down meanwhile.
    async fn rejoin_until_done(
        &mut self,
        mut upstream: Endpoint,
        mut reply: Reply,
    ) -> Option<Reply> {
        loop {
            match self.engine.rejoin(&upstream, &self.creds).await {
                Ok(()) => return Some(reply),
                Err(e) => {
                    tracing::error!(error = %e, "rejoin failed; the server stays stopped");
                    self.status.set_state(
                        ServerState::Failed,
                        Some(format!(
                            "demotion to a replica of {} failed, the server stays stopped until a demotion succeeds: {e}",
                            upstream.instance
                        )),
                    );
                    let _ = reply.send(Err(e.to_string()));
                }
            }
            loop {
                match self.commands.recv().await {
                    None | Some(Command::Shutdown) => return None,
                    Some(Command::Promote(r))
                    | Some(Command::Reload(_, r))
                    | Some(Command::Order(_, r)) => {
                        let _ = r.send(Err(
                            "the server is stopped after a failed demotion; demote it again".into(),
                        ));
                    }
                    Some(Command::Demote(u, r)) => {
                        upstream = u;
                        reply = r;
                        break;
                    }
                }
            }
        }
    }

    /// Initializes or clones the empty data directory. False when shut down meanwhile.
    async fn fill_data_dir(&mut self) -> Result<bool, InstanceError> {
        self.status.set_state(ServerState::Initializing, None);
        let upstream = match self.bootstrap.clone() {
            Bootstrap::InitPrimary => match self.consult_peers().await {
                None => return Ok(false),
                Some(Some(upstream)) => upstream,
                Some(None) => {
                    tracing::info!("initializing a new primary");
                    self.engine
                        .initialize(&self.creds)
                        .await
                        .map_err(|e| self.fail(e))?;
                    self.status.update(|s| s.holds_data = Some(true));
                    return Ok(true);
                }
            },
            Bootstrap::CloneFrom { upstream } => upstream,
            Bootstrap::RestoreFrom { source } => {
                // Never retried over a half-restored dir: a failure leaves it empty and says why.
                tracing::info!(from = %source.stanza, set = %source.set, "restoring from a backup");
                self.engine
                    .restore_from(&source, &self.creds)
                    .await
                    .map_err(|e| self.fail(e))?;
                self.status.update(|s| s.holds_data = Some(true));
                return Ok(true);
            }
        };
        let mut backoff = Backoff::default();
        loop {
            tracing::info!(upstream = %upstream.instance, "cloning the upstream");
            match self.engine.clone_upstream(&upstream, &self.creds).await {
                Ok(()) => {
                    self.status.update(|s| s.holds_data = Some(true));
                    return Ok(true);
                }
                Err(e) => {
                    let delay = backoff.next_delay(Duration::ZERO);
                    tracing::warn!(error = %e, "clone failed; retrying");
                    self.status.set_state(
                        ServerState::Initializing,
                        Some(format!(
                            "cloning {} failed, retrying in {}s: {e}",
                            upstream.instance,
                            delay.as_secs()
                        )),
                    );
                    if !self.pause(delay).await {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// A new primary's empty data dir: asks the peers whether one holds the database's data
    /// ([`crate::peers`]), again every few seconds while that is not safe to tell.
    /// `Some(None)`: initialise; `Some(Some(upstream))`: clone from it instead; `None`: shut
    /// down meanwhile.
    async fn consult_peers(&mut self) -> Option<Option<Endpoint>> {
        if self.peers.is_empty() {
            return Some(None);
        }
        let mut said = String::new();
        loop {
            let answers = peers::ask_all(&self.peers).await;
            match peers::plan_empty_data_dir(&answers) {
                EmptyDataDir::Initialise => return Some(None),
                EmptyDataDir::CloneFrom(upstream) => {
                    tracing::warn!(
                        upstream = %upstream.instance,
                        "the data dir is empty but the database has data: cloning the primary instead of initializing"
                    );
                    return Some(Some(upstream));
                }
                EmptyDataDir::Wait(why) => {
                    if why != said {
                        tracing::warn!("{why}");
                        said = why.clone();
                    }
                    self.status.set_state(ServerState::Initializing, Some(why));
                    if !self.pause(peers::ASK_AGAIN).await {
                        return None;
                    }
                }
            }
        }
    }

    /// Start-as-replica: the config says this instance follows `upstream`, but its data dir was
    /// a primary or followed another instance (a former primary after a failover, a replica
    /// of the old primary). The server is stopped if one still runs on the data dir, and the
    /// data dir is made to follow `upstream` (pg_rewind when its history diverged) BEFORE any
    /// server starts, so a former primary never comes back writable. Retried with backoff
    /// while the upstream cannot be reached; false when shut down meanwhile.
    async fn rejoin_before_start(&mut self, upstream: Endpoint) -> Result<bool, InstanceError> {
        let message = format!("rejoining as a replica of {}", upstream.instance);
        self.status
            .set_state(ServerState::Initializing, Some(message.clone()));
        if let Some(mut running) = self.engine.find_running().map_err(|e| self.fail(e))? {
            tracing::warn!(
                pid = running.pid(),
                upstream = %upstream.instance,
                "a server runs on a data dir that must follow another instance; stopping it first"
            );
            let how = self.engine.stop(&mut running, self.stop_timeout).await;
            tracing::info!(how = %how, "stopped before rejoining");
        }
        let mut backoff = Backoff::default();
        loop {
            tracing::info!(upstream = %upstream.instance, "{message} before starting the server");
            match self.engine.rejoin(&upstream, &self.creds).await {
                Ok(()) => return Ok(true),
                Err(e) => {
                    let delay = backoff.next_delay(Duration::ZERO);
                    tracing::warn!(error = %e, "rejoin failed; the server stays stopped and it is retried");
                    let errant = holds_errant_transactions(&e);
                    // Errant transactions never go away by retrying: the instance is reported
                    // failed and errant, so the decision core orders it rebuilt.
                    self.status.set_state(
                        if errant {
                            ServerState::Failed
                        } else {
                            ServerState::Initializing
                        },
                        Some(format!(
                            "{message} failed, retrying in {}s (the server stays stopped): {e}",
                            delay.as_secs()
                        )),
                    );
                    if errant {
                        self.status.record_errant(None, e.to_string());
                    }
                    if !self.pause(delay).await {
                        return Ok(false);
                    }
                }
            }
        }
    }

    /// Waits `delay`, answering commands; false when asked to shut down.
    async fn pause(&mut self, delay: Duration) -> bool {
        let until = tokio::time::Instant::now() + delay;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Shutdown) => return false,
                    Some(Command::Promote(r))
                    | Some(Command::Demote(_, r))
                    | Some(Command::Reload(_, r))
                    | Some(Command::Order(_, r)) => {
                        let _ = r.send(Err("the server is not running".into()));
                    }
                },
            }
        }
    }

    /// Serves a started server until it exits, a shutdown, a demotion, or an order.
    pub(crate) async fn serve(&mut self, server: &mut ServerProcess) -> Served {
        let mut running = false;
        let mut users_ready = false;
        loop {
            let tick = if running {
                Duration::from_secs(2)
            } else {
                PROBE_UNTIL_RUNNING
            };
            tokio::select! {
                how = server.exited() => return Served::Exited(how),
                cmd = self.commands.recv() => match cmd {
                    None | Some(Command::Shutdown) => return Served::Shutdown,
                    Some(Command::Demote(upstream, reply)) => {
                        if running && self.repointed_running(&upstream).await {
                            let _ = reply.send(Ok(format!("following {} (re-pointed without a restart)", upstream.instance)));
                            continue;
                        }
                        return Served::Rejoin(upstream, reply);
                    }
                    Some(Command::Order(order, reply)) => return Served::Order(order, reply),
                    Some(Command::Reload(parameters, reply)) => {
                        if !running {
                            let _ = reply.send(Err("the server is not accepting connections yet".into()));
                            continue;
                        }
                        let _ = reply.send(match self.engine.apply_parameters(&self.creds, parameters).await {
                            Ok(pending) if pending.is_empty() => Ok("reloaded".into()),
                            Ok(pending) => Err(format!("only a restart applies: {}", pending.join(", "))),
                            Err(e) => Err(e.to_string()),
                        });
                    }
                    Some(Command::Promote(reply)) => {
                        if !running {
                            let _ = reply.send(Err("the server is not accepting connections yet".into()));
                            continue;
                        }
                        let result = self.engine.promote(&self.creds).await;
                        users_ready = false;
                        let _ = reply.send(match result {
                            Ok(()) => Ok("promoted".into()),
                            Err(e) => Err(e.to_string()),
                        });
                    }
                },
                _ = tokio::time::sleep(tick) => {
                    if !running {
                        match self.engine.probe(&self.creds).await {
                            Ok(()) => {
                                running = true;
                                tracing::info!(pid = server.pid(), "the server accepts connections");
                                self.status.set_state(ServerState::Running, None);
                            }
                            Err(e) if e.is_connect() => continue,
                            Err(e) => {
                                tracing::warn!(error = %e, "probing the server");
                                continue;
                            }
                        }
                    }
                    if !users_ready {
                        users_ready = self.ensure_users_on_primary().await;
                        if users_ready {
                            self.status.update(|s| s.users_in_place = true);
                            // Ready now, not at the next periodic observation: whoever waits
                            // for this instance (a bring-up, a restore) sees it at once.
                            self.status.refresh().await;
                        }
                    }
                }
            }
        }
    }

    /// A running replica told to follow another upstream: re-pointed in place when the engine
    /// can tell that is safe ([`ServerEngine::repoint_running`]), and observed at once so
    /// `/status` names the new upstream. False: the caller stops the server and rejoins.
    async fn repointed_running(&self, upstream: &Endpoint) -> bool {
        match self.engine.repoint_running(upstream, &self.creds).await {
            Ok(true) => {
                // Bounded, as every fresh query: the serve loop waits for it.
                self.status.refresh().await;
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::warn!(error = %e, upstream = %upstream.instance, "re-pointing the running replica failed; stopping it to rejoin");
                false
            }
        }
    }

    /// Creates the roles and database when the server is a primary. True when done or not
    /// needed (a replica gets them from its primary).
    async fn ensure_users_on_primary(&self) -> bool {
        match self.engine.observe(&self.creds).await {
            Ok(o) if o.role == Some(Role::Primary) => {
                match self.engine.ensure_users(&self.creds).await {
                    Ok(()) => {
                        tracing::info!("roles and application database are in place");
                        true
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "creating roles");
                        self.status.update(|s| s.message = Some(e.to_string()));
                        false
                    }
                }
            }
            Ok(_) => true,
            Err(_) => false,
        }
    }
}

/// The answer of a manager that is not managed to an order.
fn refuse_order(reply: Reply) {
    let _ = reply.send(Err(
        "this instance manager is not managed: it takes no orders".into(),
    ));
}

/// The engine refused to make this data dir follow its upstream because it holds transactions
/// the upstream does not have (MySQL family: errant GTIDs).
pub(crate) fn holds_errant_transactions(e: &EngineError) -> bool {
    matches!(e, EngineError::Errant { .. })
}

/// The upstream a data dir must be made to follow before its server starts: the config says
/// to follow `upstream` while the marker says the data dir is a primary or follows another
/// instance. `None` when the data dir may start as it is.
pub fn rejoin_target(bootstrap: &Bootstrap, marker: &DataDirMarker) -> Option<Endpoint> {
    match bootstrap {
        Bootstrap::CloneFrom { upstream }
            if marker.follows.as_ref().map(|f| &f.instance) != Some(&upstream.instance) =>
        {
            Some(upstream.clone())
        }
        _ => None,
    }
}

/// How often a started server is probed until it accepts connections: a refused connection
/// costs next to nothing, and PostgreSQL often accepts 30 ms after its start, so a coarser
/// pace is waited out by every start (a restore's, a rejoin's, a restart's).
pub const PROBE_UNTIL_RUNNING: Duration = Duration::from_millis(20);

/// How often an instance that is not ready yet is observed: a replica becomes ready the moment
/// it streams, and the runtime starts the next instance only then (OrderedReady), so this pace
/// bounds how long bring-up waits on each instance.
pub const OBSERVE_UNTIL_READY: Duration = Duration::from_millis(100);

/// Observes the server while it runs, for `/status`, `/readyz` and `/metrics`: every
/// [`OBSERVE_UNTIL_READY`] until it is ready, then every `period`.
pub async fn observe_forever<E: ServerEngine>(
    engine: Arc<E>,
    creds: Credentials,
    status: Arc<InstanceStatus>,
    period: Duration,
) {
    loop {
        if status.snapshot().state == ServerState::Running {
            let result = engine.observe(&creds).await;
            status.record_observation(result.map_err(|e| e.to_string()), false);
        }
        let ready = crate::status::unready_reason(&status.snapshot(), Instant::now()).is_none();
        tokio::time::sleep(if ready { period } else { OBSERVE_UNTIL_READY }).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(follows: Option<&str>) -> DataDirMarker {
        DataDirMarker {
            engine: "postgres".into(),
            major_version: "15".into(),
            database: "pg".into(),
            follows: follows.map(endpoint),
        }
    }

    fn endpoint(instance: &str) -> Endpoint {
        Endpoint {
            instance: instance.into(),
            host: "127.0.0.1".into(),
            port: 5432,
        }
    }

    #[test]
    fn a_former_primary_told_to_follow_rejoins_before_it_starts() {
        let follow_1 = Bootstrap::CloneFrom {
            upstream: endpoint("pg-1"),
        };
        assert_eq!(
            rejoin_target(&follow_1, &marker(None)),
            Some(endpoint("pg-1"))
        );
        assert_eq!(
            rejoin_target(&follow_1, &marker(Some("pg-0"))),
            Some(endpoint("pg-1"))
        );
        assert_eq!(rejoin_target(&follow_1, &marker(Some("pg-1"))), None);
        assert_eq!(rejoin_target(&Bootstrap::InitPrimary, &marker(None)), None);
        assert_eq!(
            rejoin_target(&Bootstrap::InitPrimary, &marker(Some("pg-0"))),
            None
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets_after_a_stable_run() {
        let mut b = Backoff::default();
        let delays: Vec<u64> = (0..7)
            .map(|_| b.next_delay(Duration::ZERO).as_secs())
            .collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(b.next_delay(Backoff::STABLE_AFTER).as_secs(), 1);
    }
}
