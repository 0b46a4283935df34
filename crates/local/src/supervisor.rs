//! The supervisor (`stator supervise`, started in the background by `stator up`): one process per
//! local database that runs its instance managers in ordinal order, restarts them when they die,
//! polls their `/status`, serves the `rw` / `ro` proxies and reports on its own port.
//!
//! It holds `supervisor.lock` (flock) for its whole life, so a second one for the same database
//! exits at once. Instance managers run in their own sessions: when the supervisor is killed
//! they keep running, and the next supervisor adopts them (pid file + command line, or an answer
//! on their port naming the instance) instead of starting duplicates.
//!
//! It never decides a failover itself: every tick it hands what it sees to the failover shell
//! ([`crate::failover`]), which asks the decision core and carries out its orders; the core's
//! decision says where `rw` and `ro` point, which instances must stay down (fenced, held,
//! being rebuilt), and what `stator status` says. Its HTTP port also takes `POST /switchover`
//! (with the api-token) for `stator switchover` and `stator drain`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use stator_api::instance::{InstanceConfig, InstanceReport, LocalPorts, ReloadRequest};
use stator_api::names::secret_keys;
use stator_api::parameters::effective_parameters;
use stator_api::{Database, Phase};
use stator_failover::client;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};

use crate::endpoint;
use crate::error::LocalError;
use crate::failover::{self, Failover, LocalRuntime, Sighting, SwitchoverDesk, Tick};
use crate::plan::{Host, instance_config, ordinal_of};
use crate::preflight;
use crate::process;
use crate::proxy::{self, ProxyKind, Routes};
use crate::report::{BackupsCondition, InstanceRow, Proxies, ProxyRoute, SupervisorReport};
use crate::secrets::read_secret;
use crate::state::{AppliedSpec, DatabaseDir, Marker, create_dir, write_json};

/// How often instances are checked while everything is as the spec asks: a lost primary is
/// noticed within this (its detection timeout starts then).
const TICK_STEADY: Duration = Duration::from_millis(250);
/// How often while something is starting, stopping or not ready, or while the primary looks
/// unhealthy or a failover runs: every step of an ordered start waits for one check, and the
/// detection of a lost primary adds at most this to `spec.failover.detectionTimeout`.
const TICK_BUSY: Duration = Duration::from_millis(100);
/// How long a `/status` request may take: short, because a hung instance manager must not slow
/// down the ticks that detect a lost primary.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
/// How long a `/status?fresh=1` request may take (while a failover chooses its candidate):
/// the manager's own bound on querying its server, and a little for the exchange.
const FRESH_PROBE_TIMEOUT: Duration =
    stator_instance::managed::FRESH_TIMEOUT.saturating_add(Duration::from_millis(200));
/// How long an instance manager may take to apply changed parameters without a restart.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// How long instance managers get to stop their servers cleanly (fast shutdown) before the
/// servers are stopped immediately.
pub const FAST_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs the supervisor of `dir` until SIGTERM or SIGINT, then stops every instance cleanly.
/// Returns at once when another supervisor holds the lock.
pub fn run(dir: DatabaseDir, exe: PathBuf) -> Result<(), LocalError> {
    let lock_path = dir.supervisor_lock();
    let file = crate::state::open_lock_file(&lock_path)?;
    let _lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err(_) => {
            let pid = process::read_pid_file(&dir.supervisor_pid_file());
            tracing::info!(
                "a supervisor already runs for {} (pid {}); leaving it in charge",
                dir.key(),
                pid.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
            );
            return Ok(());
        }
    };
    process::write_pid_file(&dir.supervisor_pid_file(), std::process::id())?;
    let threads = std::env::var("STATOR_SUPERVISOR_THREADS")
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .unwrap_or(2);
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .max_blocking_threads(4)
            .enable_all()
            .build()
    }
    .map_err(LocalError::AsyncRuntime)?;
    let result = runtime.block_on(supervise(&dir, &exe));
    let _ = std::fs::remove_file(dir.supervisor_pid_file());
    result
}

/// One instance as the supervisor tracks it.
struct Slot {
    ordinal: u32,
    name: String,
    pid: Option<u32>,
    /// Set when this supervisor started the manager (so it reaps it); adopted ones have none.
    child: Option<Child>,
    report: Option<InstanceReport>,
    restarts: u32,
    /// Crashes in a row since the instance was last ready: what "keeps exiting" means. A stop
    /// the failover shell caused (a fence, a rebuild) is not a crash.
    crashes: u32,
    not_before: Instant,
    /// When a stop (scale-down) was asked.
    stopping: Option<Instant>,
    /// Stopped to be started again with a changed spec (a rolling update), not crashed.
    updating: bool,
    /// Why the last `/status` request failed.
    probe_error: Option<String>,
}

impl Slot {
    fn new(ordinal: u32, name: String) -> Slot {
        Slot {
            ordinal,
            name,
            pid: None,
            child: None,
            report: None,
            restarts: 0,
            crashes: 0,
            not_before: Instant::now(),
            stopping: None,
            updating: false,
            probe_error: None,
        }
    }

    fn ready(&self) -> bool {
        self.pid.is_some() && self.report.as_ref().is_some_and(|r| r.ready)
    }

    /// Whether the manager process still runs; reaps it when it was our child.
    fn alive(&mut self) -> bool {
        let Some(pid) = self.pid else {
            return false;
        };
        if let Some(child) = &mut self.child {
            return matches!(child.try_wait(), Ok(None));
        }
        process::is_alive(pid)
    }
}

struct Supervisor<'a> {
    dir: &'a DatabaseDir,
    exe: &'a Path,
    applied: AppliedSpec,
    host: Host,
    slots: BTreeMap<u32, Slot>,
    routes: Arc<Routes>,
    report: Arc<Mutex<SupervisorReport>>,
    last_written: String,
    ever_ready: bool,
    /// The last report said Ready.
    settled: bool,
    /// Instances whose running config differs from the spec in what needs a restart.
    outdated: usize,
    /// Server settings a reload could not apply, per instance: those restart instead.
    reload_refused: BTreeMap<u32, serde_json::Value>,
    /// The failover shell: the decision core's memory, its orders, the switchover desk.
    failover: Failover,
    /// Instances that must not be started now (fenced, held, being rebuilt).
    keep_down: BTreeSet<u32>,
    /// The last tick found something wrong or in progress: tick fast.
    urgent: bool,
    /// The last tick asked for the next one sooner than even that ([`Tick::sooner`]).
    sooner: Option<Duration>,
    /// `database.json` says the database has data.
    identity_recorded: bool,
    /// Backups: since when they are expected (the primary first ready, ms since the epoch)
    /// and the failing archive's first sample ([`stator_control::backup_health`]).
    backups_expected_since: Option<u64>,
    archive_baseline: Option<stator_control::ArchiveBaseline>,
    backups_reason: String,
}

async fn supervise(dir: &DatabaseDir, exe: &Path) -> Result<(), LocalError> {
    let applied = dir
        .read_applied()?
        .ok_or_else(|| LocalError::NotFound(dir.key()))?;
    let db = applied.database.clone();
    crate::transport::register(&db, dir)?;
    let ports = LocalPorts::of(&db);
    let address = db.spec.local.listen_address.clone();
    let host = Host {
        server_user: preflight::server_user(db.spec.engine)?.map(|u| u.name),
        bin_dir: Some(preflight::find_bin_dir(db.spec.engine, db.version())?),
    };
    // Under a keeper the listening sockets are inherited: they stayed open (connections waited
    // in their backlog) while this supervisor was started.
    let bind = |name: &'static str, port: u16, purpose: &'static str| {
        let address = address.clone();
        async move {
            if let Some(listener) = crate::keeper::inherited_listener(name, port) {
                return TcpListener::from_std(listener).map_err(|source| LocalError::Listen {
                    address,
                    port,
                    purpose,
                    inherited: true,
                    source,
                });
            }
            TcpListener::bind((address.as_str(), port))
                .await
                .map_err(|source| LocalError::Listen {
                    address: address.clone(),
                    port,
                    purpose,
                    inherited: false,
                    source,
                })
        }
    };
    let rw = bind("rw", ports.rw(), "the rw proxy").await?;
    let ro = bind("ro", ports.ro(), "the ro proxy").await?;
    let status = bind("status", ports.supervisor(), "the supervisor's status").await?;
    let routes = Arc::new(Routes::default());
    let report = Arc::new(Mutex::new(initial_report(&applied, dir)));
    let desk = Arc::new(Mutex::new(SwitchoverDesk::default()));
    let endpoint = endpoint::StatusEndpoint {
        report: report.clone(),
        desk: desk.clone(),
        secrets_dir: dir.secrets_dir(),
        database: db.name().to_string(),
        dir: dir.clone(),
    };
    // The status endpoint carries the api-token of `POST /switchover`: TLS when the database has it.
    let status_tls =
        match crate::transport::tls_files(&db, dir) {
            Some(files) => Some(files.server_config().map_err(|e| {
                LocalError::Failed(format!("the certificates of {}: {e}", dir.key()))
            })?),
            None => None,
        };
    let mut tasks = vec![tokio::spawn(endpoint::serve(status, endpoint, status_tls))];
    tasks.push(tokio::spawn(crate::backup::schedule_forever(dir.clone())));
    tracing::info!(
        "supervising {} (pid {}): rw on {address}:{}, ro on {address}:{}",
        dir.key(),
        std::process::id(),
        ports.rw(),
        ports.ro()
    );
    let failover = Failover::load(
        LocalRuntime::new(dir, routes.clone(), host.bin_dir.clone()),
        desk,
    );
    let mut supervisor = Supervisor {
        dir,
        exe,
        applied,
        host,
        slots: BTreeMap::new(),
        routes,
        report,
        last_written: String::new(),
        ever_ready: false,
        settled: false,
        outdated: 0,
        reload_refused: BTreeMap::new(),
        failover,
        keep_down: BTreeSet::new(),
        urgent: false,
        sooner: None,
        identity_recorded: false,
        backups_expected_since: None,
        archive_baseline: None,
        backups_reason: "Healthy".into(),
    };
    supervisor.adopt().await;
    if supervisor.slots.is_empty() {
        // A cold start (after `stator down`): the primary is confirmed again once it is up,
        // so the time it takes to start is not taken for a failure.
        supervisor.failover.cold_start();
    }
    let mut keep_going = supervisor.step().await;
    // The proxies accept once the first tick has routed them: after a restart under a keeper,
    // the connections that waited in the inherited sockets' backlog go to the primary instead
    // of being dropped for want of a route.
    tasks.push(tokio::spawn(proxy::serve(
        rw,
        supervisor.routes.clone(),
        ProxyKind::Rw,
    )));
    tasks.push(tokio::spawn(proxy::serve(
        ro,
        supervisor.routes.clone(),
        ProxyKind::Ro,
    )));
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|source| LocalError::WatchSignal {
            signal: "SIGTERM",
            source,
        })?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|source| LocalError::WatchSignal {
        signal: "SIGINT",
        source,
    })?;
    let mut watchers = crate::changes::Watchers::new();
    while keep_going {
        watchers.watch(&supervisor.address(), &supervisor.managers());
        let pace = if supervisor.settled && !supervisor.urgent {
            TICK_STEADY
        } else {
            TICK_BUSY
        };
        // Sooner at a detection deadline and right after a promotion was ordered.
        let pause = supervisor.sooner.map_or(pace, |s| s.min(pace));
        tokio::select! {
            _ = tokio::time::sleep(pause) => keep_going = supervisor.step().await,
            // An instance's state, role or readiness changed: act on it now.
            _ = watchers.changed() => keep_going = supervisor.step().await,
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    drop(watchers);
    tracing::info!("stopping {}", dir.key());
    for task in &tasks {
        task.abort();
    }
    supervisor.shutdown().await;
    Ok(())
}

pub(crate) fn initial_report(applied: &AppliedSpec, dir: &DatabaseDir) -> SupervisorReport {
    let db = &applied.database;
    let ports = LocalPorts::of(db);
    SupervisorReport {
        database: dir.key(),
        engine: db.spec.engine.to_string(),
        version: db.version().to_string(),
        phase: Phase::Creating,
        generation: applied.generation,
        observed_generation: 0,
        supervisor_pid: Some(std::process::id()),
        primary: dir.read_primary(),
        instances: Vec::new(),
        removed: Vec::new(),
        proxies: Proxies::unrouted(db.spec.local.listen_address.clone(), ports),
        message: None,
        failover: None,
        backups_healthy: None,
    }
}

impl Supervisor<'_> {
    fn db(&self) -> &Database {
        &self.applied.database
    }

    fn address(&self) -> String {
        self.db().spec.local.listen_address.clone()
    }

    /// The port of every running instance manager, by ordinal.
    fn managers(&self) -> BTreeMap<u32, u16> {
        let ports = LocalPorts::of(self.db());
        self.slots
            .values()
            .filter(|slot| slot.pid.is_some())
            .map(|slot| (slot.ordinal, ports.manager(slot.ordinal)))
            .collect()
    }

    /// Takes over instance managers that survived a previous supervisor.
    async fn adopt(&mut self) {
        let desired = self.db().spec.instances;
        let mut ordinals: Vec<u32> = self.dir.known_ordinals();
        ordinals.extend(0..desired);
        ordinals.sort_unstable();
        ordinals.dedup();
        let ports = LocalPorts::of(self.db());
        for ordinal in ordinals {
            let name = self.dir.instance_name(ordinal);
            let marker = self.dir.config_file(ordinal).display().to_string();
            let mut pid = process::live_pid_from_file(&self.dir.manager_pid_file(ordinal), &marker);
            if pid.is_none() {
                let answer: Result<InstanceReport, _> = client::get_json(
                    &self.address(),
                    ports.manager(ordinal),
                    "/status",
                    PROBE_TIMEOUT,
                )
                .await;
                if let Ok(report) = answer
                    && report.name == name
                    && process::is_alive(report.manager_pid)
                {
                    pid = Some(report.manager_pid);
                }
            }
            if let Some(pid) = pid {
                tracing::info!("{name}: adopting the running instance manager (pid {pid})");
                let mut slot = Slot::new(ordinal, name);
                slot.pid = Some(pid);
                self.slots.insert(ordinal, slot);
            }
        }
    }

    /// Renews the certificates Stator issued when a third of their lifetime is left; the
    /// instance managers install and load them without a restart.
    fn renew_certificates(&self) {
        let Some(files) = crate::transport::tls_files(self.db(), self.dir) else {
            return;
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        if files.validity().is_some_and(|v| v.renewal_due(now)) {
            match crate::transport::renew(self.db(), self.dir) {
                Ok(v) => tracing::info!(
                    not_after = v.not_after,
                    "renewed the TLS certificates (a third of their lifetime was left)"
                ),
                Err(e) => tracing::warn!("renewing the TLS certificates: {e}"),
            }
        }
    }

    /// One round of checks and actions; false when the database is gone from the state dir
    /// (its spec removed behind the supervisor's back), which stops everything.
    async fn step(&mut self) -> bool {
        match self.dir.read_applied() {
            Ok(Some(applied)) => self.applied = applied,
            Ok(None) => {
                tracing::warn!(
                    "{} no longer exists (its spec file {} is gone); stopping every instance",
                    self.dir.key(),
                    self.dir.spec_file().display()
                );
                return false;
            }
            Err(e) => tracing::warn!("{e}; keeping the spec read before"),
        }
        let desired = self.db().spec.instances;
        self.reap();
        let fresh = self.failover.wants_fresh_reports();
        self.probe_all(fresh).await;
        let sightings = self.sightings(desired);
        let db = self.db().clone();
        let tick = self.failover.tick(&db, &sightings).await;
        self.keep_down = tick.keep_down.clone();
        self.urgent = tick.urgent;
        self.sooner = tick.sooner;
        let primary = self.dir.read_primary();
        self.stop_excess(desired);
        self.stop_held();
        self.start_in_order(desired, &primary);
        if !self.urgent {
            self.roll_out(desired, &primary).await;
            self.renew_certificates();
        }
        self.record_identity(&primary);
        self.publish(desired, &primary, &tick);
        true
    }

    /// What the failover shell is told about every instance that exists or should.
    fn sightings(&self, desired: u32) -> Vec<Sighting> {
        let mut ordinals: BTreeSet<u32> = (0..desired).collect();
        ordinals.extend(self.slots.keys().copied());
        ordinals.extend(self.dir.known_ordinals());
        ordinals
            .into_iter()
            .map(|ordinal| {
                let slot = self.slots.get(&ordinal);
                Sighting {
                    ordinal,
                    manager_pid: slot.and_then(|s| s.pid),
                    report: slot.and_then(|s| s.report.clone()),
                    probe_error: slot.and_then(|s| s.probe_error.clone()),
                }
            })
            .collect()
    }

    /// Stops (cleanly) the instance managers of instances held down (`stator drain`).
    fn stop_held(&mut self) {
        for slot in self.slots.values_mut() {
            if slot.stopping.is_some() || slot.ordinal >= self.applied.database.spec.instances {
                continue;
            }
            let Some(pid) = slot.pid else { continue };
            if let Some(why) = failover::held(self.dir, slot.ordinal) {
                tracing::info!("{}: held down ({why}); stopping it", slot.name);
                process::signal(pid, Signal::SIGTERM);
                slot.stopping = Some(Instant::now());
            }
        }
    }

    fn reap(&mut self) {
        let mut gone = Vec::new();
        let fenced: BTreeSet<u32> = self.failover.memory().fenced.keys().copied().collect();
        for slot in self.slots.values_mut() {
            if slot.pid.is_some() && !slot.alive() {
                let pid = slot.pid.take().unwrap_or_default();
                let status = slot
                    .child
                    .take()
                    .and_then(|mut c| c.try_wait().ok().flatten())
                    .map(|s| format!(" ({s})"))
                    .unwrap_or_default();
                slot.report = None;
                if slot.stopping.is_some() {
                    tracing::info!("{}: stopped (pid {pid}){status}; data dir kept", slot.name);
                    gone.push(slot.ordinal);
                } else if slot.updating {
                    tracing::info!(
                        "{}: stopped (pid {pid}); starting it with the new spec",
                        slot.name
                    );
                    slot.updating = false;
                    slot.not_before = Instant::now();
                } else if self.keep_down.contains(&slot.ordinal) || fenced.contains(&slot.ordinal) {
                    // Fenced, held or being rebuilt by the failover shell: stopped on purpose.
                    slot.restarts += 1;
                    slot.not_before = Instant::now();
                    tracing::info!(
                        "{}: instance manager (pid {pid}) stopped{status} (fenced, held or rebuilt)",
                        slot.name
                    );
                } else {
                    slot.restarts += 1;
                    slot.crashes += 1;
                    let delay = Duration::from_secs(u64::from(slot.crashes.min(10)));
                    slot.not_before = Instant::now() + delay;
                    tracing::warn!(
                        "{}: instance manager (pid {pid}) exited{status}; restarting in {delay:?}",
                        slot.name
                    );
                }
            }
        }
        for ordinal in gone {
            self.slots.remove(&ordinal);
        }
    }

    /// Asks every instance manager for its report; `fresh`: read from its server now
    /// (`/status?fresh=1`, within [`FRESH_PROBE_TIMEOUT`]) rather than its last observation.
    async fn probe_all(&mut self, fresh: bool) {
        let ports = LocalPorts::of(self.db());
        let (path, timeout) = if fresh {
            ("/status?fresh=1", FRESH_PROBE_TIMEOUT)
        } else {
            ("/status", PROBE_TIMEOUT)
        };
        let mut probes = tokio::task::JoinSet::new();
        for (ordinal, port) in self.managers() {
            let address = self.address();
            probes.spawn(async move {
                let answer: Result<InstanceReport, _> =
                    client::get_json(&address, port, path, timeout).await;
                (ordinal, answer)
            });
        }
        while let Some(Ok((ordinal, answer))) = probes.join_next().await {
            if let Some(slot) = self.slots.get_mut(&ordinal) {
                slot.probe_error = answer.as_ref().err().map(|e| e.to_string());
                match answer {
                    Ok(report) if report.name == slot.name => {
                        if report.ready {
                            slot.crashes = 0;
                        }
                        slot.report = Some(report)
                    }
                    Ok(report) => {
                        tracing::warn!(
                            "{}: port {} answers as {}; ignoring it",
                            slot.name,
                            ports.manager(ordinal),
                            report.name
                        );
                        slot.report = None;
                    }
                    Err(e) => {
                        tracing::debug!("{}: {e}", slot.name);
                        slot.report = None;
                    }
                }
            }
        }
    }

    /// Scale-down: stops the highest ordinal beyond `desired`, one at a time (a StatefulSet
    /// removes pods in reverse order). Its data dir stays.
    /// The primary is never stopped this way: the decision core first switches over away
    /// from a primary beyond `spec.instances`.
    fn stop_excess(&mut self, desired: u32) {
        let primary = self.failover.memory().primary;
        let Some(slot) = self
            .slots
            .values_mut()
            .rev()
            .find(|s| s.ordinal >= desired && s.pid.is_some() && Some(s.ordinal) != primary)
        else {
            return;
        };
        let Some(pid) = slot.pid else { return };
        match slot.stopping {
            None => {
                tracing::info!(
                    "{}: beyond spec.instances={desired}; stopping it",
                    slot.name
                );
                process::signal(pid, Signal::SIGTERM);
                slot.stopping = Some(Instant::now());
            }
            Some(since) if since.elapsed() > FAST_SHUTDOWN_TIMEOUT => {
                tracing::warn!(
                    "{}: not stopped after {FAST_SHUTDOWN_TIMEOUT:?}; stopping immediately",
                    slot.name
                );
                process::stop_server_immediately(&self.dir.data_dir(slot.ordinal));
                process::signal(pid, Signal::SIGKILL);
            }
            Some(_) => {}
        }
    }

    /// OrderedReady: starts the first missing instance only when every lower ordinal is ready.
    /// The recorded primary goes first (after a failover it may be any ordinal): every other
    /// instance is a replica of it and cannot become ready before it.
    /// While the recorded primary is kept down because its data is gone, every other instance
    /// that holds data starts without waiting for the one before to be ready (a replica with no
    /// primary never is): the decision core needs each one's position to promote the most
    /// advanced. Those with empty data dirs wait for the new primary to clone from.
    fn start_in_order(&mut self, desired: u32, primary: &str) {
        let first = ordinal_of(primary).filter(|p| *p < desired);
        let primary_lost =
            first.is_some_and(|p| self.keep_down.contains(&p) && !self.dir.holds_data(p));
        let order: Vec<u32> = first
            .into_iter()
            .chain((0..desired).filter(|o| Some(*o) != first))
            .collect();
        for ordinal in order {
            let name = self.dir.instance_name(ordinal);
            let slot = self
                .slots
                .entry(ordinal)
                .or_insert_with(|| Slot::new(ordinal, name));
            if slot.stopping.is_some() {
                // Scaled down and up again before it stopped: let the stop finish first.
                return;
            }
            if slot.pid.is_none() && self.keep_down.contains(&ordinal) {
                // Fenced, held or being rebuilt: the others start without it.
                continue;
            }
            if slot.pid.is_none() && primary_lost && !self.dir.holds_data(ordinal) {
                continue;
            }
            if slot.pid.is_none() {
                if Instant::now() >= slot.not_before {
                    let started = start_manager(
                        self.dir,
                        self.exe,
                        &self.applied.database,
                        ordinal,
                        primary,
                        &self.host,
                    );
                    match started {
                        Ok(child) => {
                            tracing::info!(
                                "{}: started its instance manager (pid {})",
                                slot.name,
                                child.id()
                            );
                            slot.pid = Some(child.id());
                            slot.child = Some(child);
                        }
                        Err(e) => {
                            tracing::error!("{}: {e}", slot.name);
                            slot.restarts += 1;
                            slot.crashes += 1;
                            slot.not_before = Instant::now() + Duration::from_secs(5);
                        }
                    }
                }
                return;
            }
            if !slot.ready() && !primary_lost {
                return;
            }
        }
    }

    /// A rolling update, as a StatefulSet does when its pod template changes, once every
    /// instance is ready. A change of parameters only is first applied without a restart
    /// (`POST /reload` to every outdated instance: PostgreSQL reloads, the MySQL family sets
    /// dynamic variables); what only a restart applies (other settings, `spec.replication`)
    /// restarts one instance at a time, replicas from the highest ordinal down, the primary
    /// last, and only while every other replica is routed by `ro`, so `ro` keeps a target
    /// whenever there are two replicas.
    async fn roll_out(&mut self, desired: u32, primary: &str) {
        let all_ready = (0..desired).all(|o| self.slots.get(&o).is_some_and(Slot::ready));
        let busy = self.slots.values().any(|s| {
            s.updating || s.stopping.is_some() || (s.ordinal >= desired && s.pid.is_some())
        });
        if !all_ready || busy {
            return;
        }
        let primary_ordinal = ordinal_of(primary).unwrap_or(0);
        let mut order: Vec<u32> = (0..desired)
            .rev()
            .filter(|o| *o != primary_ordinal)
            .collect();
        order.push(primary_ordinal);
        let mut outdated: Vec<u32> = Vec::new();
        for o in order {
            let wanted = instance_config(self.db(), self.dir, o, primary, &self.host);
            let wanted_settings = serde_json::to_value(&wanted)
                .map(|w| server_settings(&w))
                .unwrap_or_default();
            let Some(running) =
                crate::state::read_json::<serde_json::Value>(&self.dir.config_file(o))
                    .ok()
                    .flatten()
                    .map(|r| server_settings(&r))
            else {
                continue;
            };
            if running == wanted_settings {
                self.reload_refused.remove(&o);
                continue;
            }
            let reloadable = running["replication"] == wanted_settings["replication"]
                && self.reload_refused.get(&o) != Some(&wanted_settings);
            if reloadable {
                match self.reload(o, &wanted).await {
                    Ok(()) => {
                        if let Err(e) = write_json(&self.dir.config_file(o), &wanted) {
                            tracing::warn!("{e}");
                        }
                        continue;
                    }
                    Err(why) => {
                        tracing::info!(
                            "{}: {why}; restarting it instead (rolling update)",
                            self.dir.instance_name(o)
                        );
                        self.reload_refused.insert(o, wanted_settings);
                    }
                }
            }
            outdated.push(o);
        }
        self.outdated = outdated.len();
        let Some(&first) = outdated.first() else {
            return;
        };
        // Every other replica must be back behind `ro` before this one stops.
        let routed = self.routes.ro();
        let db = self.db().clone();
        let ports = LocalPorts::of(&db);
        let unrouted: Vec<String> = (0..desired)
            .filter(|o| *o != first && *o != primary_ordinal)
            .filter(|o| {
                format!("{}:{}", db.spec.local.listen_address, ports.server(*o))
                    .parse::<std::net::SocketAddr>()
                    .is_ok_and(|a| !routed.contains(&a))
            })
            .map(|o| self.dir.instance_name(o))
            .collect();
        if !unrouted.is_empty() {
            tracing::debug!(
                "rolling update waits for {} to be routed by ro",
                unrouted.join(", ")
            );
            return;
        }
        // A replica leaves `ro` before it stops, so no new connection is sent to it meanwhile.
        if first != primary_ordinal
            && let Ok(addr) = format!("{}:{}", db.spec.local.listen_address, ports.server(first))
                .parse::<std::net::SocketAddr>()
        {
            let rest: Vec<std::net::SocketAddr> =
                routed.iter().copied().filter(|a| *a != addr).collect();
            if !rest.is_empty() {
                self.routes.set_ro(rest);
            }
        }
        if let Some(slot) = self.slots.get_mut(&first)
            && let Some(pid) = slot.pid
        {
            tracing::info!(
                "{}: its server settings changed; restarting it (rolling update)",
                slot.name
            );
            process::signal(pid, Signal::SIGTERM);
            slot.updating = true;
        }
    }

    /// Asks instance `ordinal`'s manager to apply `wanted`'s parameters without a restart; why
    /// not, when it could not.
    async fn reload(&self, ordinal: u32, wanted: &InstanceConfig) -> Result<(), ReloadError> {
        let token = read_secret(&self.dir.secrets_dir(), secret_keys::API_TOKEN)
            .map_err(|e| ReloadError::Token(Box::new(e)))?;
        let body = serde_json::to_string(&ReloadRequest {
            parameters: effective_parameters(&wanted.database.spec),
        })
        .map_err(ReloadError::Encode)?;
        let port = LocalPorts::of(self.db()).manager(ordinal);
        match client::post(
            &self.address(),
            port,
            "/reload",
            &token,
            &body,
            RELOAD_TIMEOUT,
        )
        .await
        {
            Ok((200, _)) => {
                tracing::info!(
                    "{}: its parameters changed; applied without a restart",
                    self.dir.instance_name(ordinal)
                );
                Ok(())
            }
            Ok((_, answer)) => Err(ReloadError::Refused(client::answer_text(&answer))),
            Err(e) => Err(ReloadError::Unreachable(e)),
        }
    }

    /// Records in `database.json`, the moment the primary's data dir is in place (the instance
    /// manager moves it there complete, with its Stator marker), that the database has data,
    /// and PostgreSQL's system identifier, so data dirs of another database are refused. From
    /// then on an empty data dir is never initialised.
    fn record_identity(&mut self, primary: &str) {
        if self.identity_recorded {
            return;
        }
        let Some(ordinal) = ordinal_of(primary) else {
            return;
        };
        let data_dir = self.dir.data_dir(ordinal);
        if !stator_engine::data_dir::marker_path(&data_dir).exists() {
            return;
        }
        let Ok(Some(mut marker)) = self.dir.read_marker() else {
            return;
        };
        let system_identifier = match self.db().spec.engine {
            stator_api::Engine::Postgres => match preflight::system_identifier(&data_dir) {
                Some(id) => Some(id),
                None => return,
            },
            _ => None,
        };
        let recorded = Marker {
            initialized: true,
            system_identifier: marker.system_identifier.or(system_identifier),
            ..marker.clone()
        };
        if recorded != marker {
            marker = recorded;
            if let Err(e) = self.dir.write_marker(&marker) {
                tracing::warn!("{e}");
                return;
            }
            tracing::info!("{}: recorded that the database has data", self.dir.key());
        }
        self.identity_recorded = true;
    }

    fn publish(&mut self, desired: u32, primary: &str, tick: &Tick) {
        let db = self.db().clone();
        let ports = LocalPorts::of(&db);
        let mut rows = Vec::new();
        for slot in self.slots.values() {
            if slot.ordinal >= desired && slot.pid.is_none() {
                continue;
            }
            let state = if slot.stopping.is_some() {
                "stopping".to_string()
            } else if slot.updating {
                "updating".to_string()
            } else if slot.pid.is_none() && failover::held(self.dir, slot.ordinal).is_some() {
                "held".to_string()
            } else if slot.pid.is_none()
                && self.failover.memory().fenced.contains_key(&slot.ordinal)
            {
                "fenced".to_string()
            } else if slot.pid.is_none() {
                if slot.restarts > 0 {
                    "restarting"
                } else {
                    "pending"
                }
                .to_string()
            } else {
                match &slot.report {
                    Some(r) => r.state.to_string(),
                    None => "starting".to_string(),
                }
            };
            rows.push(InstanceRow {
                name: slot.name.clone(),
                ordinal: slot.ordinal,
                port: ports.server(slot.ordinal),
                manager_port: ports.manager(slot.ordinal),
                manager_pid: slot.pid,
                state,
                excess: slot.ordinal >= desired,
                manager_restarts: slot.restarts,
                manager_crashes: slot.crashes,
                // The backup facts change with every write (free bytes): they are judged into
                // `backups_healthy` and shown by `stator status`, not kept per row.
                report: slot.report.clone().map(|mut r| {
                    r.backup = None;
                    r
                }),
                lag: None,
            });
        }
        let primary_ordinal = ordinal_of(primary).unwrap_or(0);
        let primary_ready = self.slots.get(&primary_ordinal).is_some_and(Slot::ready);
        let all_ready = (0..desired).all(|o| self.slots.get(&o).is_some_and(Slot::ready));
        let excess_running = self
            .slots
            .values()
            .any(|s| s.ordinal >= desired && s.pid.is_some());
        if primary_ready {
            self.ever_ready = true;
        }
        let updating = self.outdated > 0 || self.slots.values().any(|s| s.updating);
        let status = &tick.status;
        let phase = if matches!(
            status.phase,
            Phase::FailingOver | Phase::Unavailable | Phase::Invalid
        ) && self.ever_ready
        {
            status.phase
        } else if all_ready && !excess_running && !updating && status.rw.is_some() {
            Phase::Ready
        } else if primary_ready && status.rw.is_some() {
            Phase::Degraded
        } else if self.ever_ready {
            Phase::Unavailable
        } else {
            Phase::Creating
        };
        let backups_healthy = self.judge_backups(&db, primary_ordinal, primary_ready);
        let (phase, backups_healthy) = match backups_healthy {
            Some(mut b) if !b.status && phase == Phase::Ready => {
                b.degrades_phase = true;
                (Phase::Degraded, Some(b))
            }
            other => (phase, other),
        };
        let name = |o: &u32| db.instance_name(*o);
        let rw_targets: Vec<String> = status.rw.iter().map(name).collect();
        let fallback = failover::ro_falls_back(&db, status);
        let ro_targets: Vec<String> = if fallback {
            rw_targets.clone()
        } else {
            status.ro.iter().map(name).collect()
        };
        let failover_report = self.failover.report(db.name(), status);
        let failed: Vec<String> = rows
            .iter()
            .filter(|r| {
                r.report
                    .as_ref()
                    .is_some_and(|x| x.state == stator_api::instance::ServerState::Failed)
            })
            .map(|r| r.name.clone())
            .collect();
        let removed = crate::runtime::removed_instances(self.dir, desired, |o| {
            self.slots.get(&o).is_some_and(|s| s.pid.is_some())
        });
        let mut report = SupervisorReport {
            database: self.dir.key(),
            engine: db.spec.engine.to_string(),
            version: db.version().to_string(),
            phase,
            generation: self.applied.generation,
            observed_generation: self.applied.generation,
            supervisor_pid: Some(std::process::id()),
            primary: primary.to_string(),
            instances: rows,
            removed,
            proxies: Proxies {
                host: db.spec.local.listen_address.clone(),
                rw: ProxyRoute {
                    port: ports.rw(),
                    targets: rw_targets,
                    fallback_to_primary: false,
                },
                ro: ProxyRoute {
                    port: ports.ro(),
                    targets: ro_targets,
                    fallback_to_primary: fallback,
                },
            },
            message: if !failed.is_empty() {
                Some(format!(
                    "{} failed; see `stator logs -f FILE {}`",
                    failed.join(", "),
                    failed[0]
                ))
            } else if status.reason != stator_control::Reason::Healthy {
                Some(format!("{}: {}", status.reason, status.message))
            } else {
                None
            },
            failover: Some(failover_report),
            backups_healthy,
        };
        report.measure_lag();
        // Degraded only by its backups is settled too: the instances need nothing.
        self.settled = report.phase == Phase::Ready
            || report
                .backups_healthy
                .as_ref()
                .is_some_and(|b| b.degrades_phase);
        self.write_snapshot(&report);
        if let Ok(mut shared) = self.report.lock() {
            *shared = report;
        }
    }

    /// The `BackupsHealthy` condition (with `spec.backup`): the decision core judges what the
    /// primary's instance manager last reported of its archive and backups; `None` while no
    /// ready primary reports them.
    fn judge_backups(
        &mut self,
        db: &Database,
        primary_ordinal: u32,
        primary_ready: bool,
    ) -> Option<BackupsCondition> {
        let backup = db.spec.backup.as_ref()?;
        let now_ms = stator_failover::clock::wall_ms();
        if primary_ready && self.backups_expected_since.is_none() {
            self.backups_expected_since = Some(now_ms);
        }
        // MariaDB's full backups are the runtime's: its primary's manager reports them as the
        // repository's manifests hold them, so they are judged like PostgreSQL's.
        let schedule = stator_control::BackupSchedule::parse(&backup.schedule).ok();
        let report = self
            .slots
            .get(&primary_ordinal)
            .filter(|_| primary_ready)
            .and_then(|s| s.report.as_ref())
            .and_then(|r| r.backup.as_ref());
        // Nothing judged, nothing claimed while no ready primary reports.
        report?;
        let health = stator_control::backup_health(stator_control::BackupHealthInput {
            now_ms,
            archive_timeout_ms: stator_api::duration::parse_duration(&backup.archive_timeout)
                .map_or(60_000, |d| d.as_millis() as u64),
            schedule: schedule.as_ref(),
            expected_since_ms: self.backups_expected_since.unwrap_or(now_ms),
            report,
            baseline: self.archive_baseline,
        });
        self.archive_baseline = health.baseline;
        if health.reason != self.backups_reason {
            if health.healthy {
                tracing::info!("backups are healthy again");
            } else {
                tracing::warn!(reason = %health.reason, "backups are not healthy: {}", health.message);
            }
            self.backups_reason = health.reason.clone();
        }
        Some(BackupsCondition {
            status: health.healthy,
            reason: health.reason,
            message: health.message,
            disk_full_in_seconds: health.disk_full_in_seconds,
            degrades_phase: false,
        })
    }

    fn write_snapshot(&mut self, report: &SupervisorReport) {
        let text = serde_json::to_string(report).unwrap_or_default();
        if text != self.last_written {
            if let Err(e) = write_json(&self.dir.supervisor_report(), report) {
                tracing::warn!("{e}");
            }
            self.last_written = text;
        }
    }

    /// Stops every instance manager (their servers with a fast shutdown), immediately after
    /// [`FAST_SHUTDOWN_TIMEOUT`], and records the database as stopped.
    async fn shutdown(&mut self) {
        let targets: Vec<(u32, PathBuf)> = self
            .slots
            .values()
            .filter_map(|s| s.pid.map(|pid| (pid, self.dir.data_dir(s.ordinal))))
            .collect();
        let _ =
            tokio::task::spawn_blocking(move || stop_instances(&targets, FAST_SHUTDOWN_TIMEOUT))
                .await;
        for slot in self.slots.values_mut() {
            if let Some(mut child) = slot.child.take() {
                let _ = child.try_wait();
            }
            slot.pid = None;
            slot.report = None;
        }
        let snapshot = self.report.lock().map(|r| r.clone()).ok();
        if let Some(mut report) = snapshot {
            report.phase = Phase::Stopped;
            report.supervisor_pid = None;
            for row in &mut report.instances {
                row.state = "stopped".into();
                row.manager_pid = None;
                row.report = None;
                row.lag = None;
            }
            report.proxies.rw.targets.clear();
            report.proxies.ro.targets.clear();
            self.last_written.clear();
            self.write_snapshot(&report);
        }
        tracing::info!("{} stopped; data kept", self.dir.key());
    }
}

/// What of an instance config needs a restart when it changes: the server settings.
fn server_settings(config: &serde_json::Value) -> serde_json::Value {
    let spec = &config["database"]["spec"];
    serde_json::json!({
        "config": spec.get("config"),
        "replication": spec.get("replication"),
    })
}

/// Sends SIGTERM to each instance manager (it stops its server with a fast shutdown), waits up
/// to `timeout`, then stops what is left immediately (the server with its engine's immediate
/// signal, the manager with SIGKILL). `targets` are (manager pid, data dir).
pub fn stop_instances(targets: &[(u32, PathBuf)], timeout: Duration) {
    for (pid, _) in targets {
        process::signal(*pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + timeout;
    for (pid, _) in targets {
        process::wait_gone(*pid, deadline.saturating_duration_since(Instant::now()));
    }
    for (pid, data_dir) in targets {
        if process::is_alive(*pid) {
            tracing::warn!(
                "instance manager {pid} did not stop in {timeout:?}; stopping its server immediately"
            );
            if let Some(server) = process::stop_server_immediately(data_dir) {
                process::wait_gone(server, Duration::from_secs(10));
            }
            process::signal(*pid, Signal::SIGKILL);
            process::wait_gone(*pid, Duration::from_secs(5));
        }
    }
}

/// Why changed parameters were not applied without a restart.
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    #[error("{0}")]
    Token(Box<LocalError>),
    #[error("{0}")]
    Encode(serde_json::Error),
    /// The manager's answer: what the server would not apply.
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Unreachable(stator_failover::client::ClientError),
}

/// Writes instance `ordinal`'s config and starts `stator instance --config FILE` for it.
fn start_manager(
    dir: &DatabaseDir,
    exe: &Path,
    db: &Database,
    ordinal: u32,
    primary: &str,
    host: &Host,
) -> Result<Child, LocalError> {
    let mut config = instance_config(db, dir, ordinal, primary, host);
    // A restore happens once, into a database that never had data: a primary that later lost
    // its data dir is filled from its peers like any other, never restored over its history.
    if matches!(
        config.bootstrap,
        stator_api::instance::Bootstrap::RestoreFrom { .. }
    ) && dir
        .read_marker()
        .ok()
        .flatten()
        .is_some_and(|m| m.had_data())
    {
        config.bootstrap = stator_api::instance::Bootstrap::InitPrimary;
    }
    dir.create_shared_dir(&dir.instance_dir(ordinal))?;
    create_dir(&config.run_dir, 0o700)?;
    let server_log = &config.log_file;
    process::open_private_log(server_log)?;
    if let Some(user) = &host.server_user
        && let Ok(Some(user)) = nix::unistd::User::from_name(user)
    {
        for path in [config.run_dir.as_path(), server_log.as_path()] {
            nix::unistd::chown(path, Some(user.uid), Some(user.gid)).map_err(|e| {
                LocalError::io(path, "cannot hand over to the server user", e.into())
            })?;
        }
    }
    let config_path = dir.config_file(ordinal);
    write_json(&config_path, &config)?;
    let config_arg = config_path.display().to_string();
    let child = process::spawn_detached(
        exe,
        &["instance", "--config", &config_arg],
        &dir.manager_log(ordinal),
    )?;
    process::write_pid_file(&dir.manager_pid_file(ordinal), child.id())?;
    Ok(child)
}
