//! One high-availability loop per `Database` (MOCO's per-cluster manager): every tick it takes
//! the database's pods and PVCs from the operator's caches ([`crate::stores`]), reads each pod's `/status?fresh=1` over the pod IP, hands
//! that to the shared failover shell ([`stator_failover::Failover`], which calls
//! `stator_control::decide`), gives the managed instance managers their start-up orders
//! (`/bootstrap`, `/role`) and writes the status.
//!
//! What counts as evidence: a pod whose manager answers is what its report says (dead and
//! fenced included); a pod that exists and does not answer is unreachable, never down, whatever
//! its phase; only a pod the kubelet finished deleting (gone from the API server) while its PVC
//! holds the data is down. Pods are deleted only to roll a spec change ([`rollout`]).
//!
//! # Layout
//! - this file: [`Loops`] (start, stop) and the loop itself.
//! - [`rollout`]: a new StatefulSet revision rolled one pod at a time, the primary last after a
//!   switchover.
//! - [`scale`]: the StatefulSet's replicas held over the primary until the core moved it below
//!   `spec.instances`, and the controller woken when that changes.
//! - [`lease`]: with `spec.failover.lease`, the write leases granted to the pods' managers and
//!   the ledger the core judges an unreachable primary by.
//! - [`runtime`]: [`PodRuntime`](runtime::PodRuntime), the failover [`Runtime`](stator_failover::Runtime)
//!   of pods: orders over HTTP, routes as `stator.dev/role` labels, state in the status.

pub mod lease;
pub mod rollout;
pub mod runtime;
pub mod scale;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::{Client, Resource, ResourceExt};
use stator_api::instance::{InstanceReport, ServerState};
use stator_api::names::{INSTANCE_MANAGER_PORT, secret_keys};
use stator_api::orders::{BootstrapOrder, RoleOrder};
use stator_api::{Database, InstanceStatus, Phase, SwitchoverStatus};
use stator_engine::tls::{self, CaTrust};
use stator_failover::{Failover, FailoverState, Sighting, SwitchoverDesk};
use stator_kube::render::tls_secret_name;

use crate::SWITCHOVER_ANNOTATION;
use crate::conditions::{self, DEGRADED, PROGRESSING, READY, write_status};
use crate::stores::Stores;
use runtime::{Observed, PodRuntime};

/// How long a start-up order (`/bootstrap`, `/role`) is given before the same order is sent
/// again to the same pod.
const ORDER_RESEND: Duration = Duration::from_secs(60);
/// How long after a start-up order that was not carried out (refused, its manager not
/// reached) the same order is given again: its manager still waits for one, and what refused it
/// may have passed (seen on the stand-in: a pod just recreated could not resolve its new
/// primary's name yet, so its `pg_rewind` failed, and it stayed stopped for the minute of
/// [`ORDER_RESEND`]).
const ORDER_RETRY: Duration = Duration::from_secs(5);
/// How long one `/status` may take: the manager's own bound on its server's answer
/// (`FRESH_TIMEOUT`, 1 s) and some. Every tick waits for its slowest probe, and a primary is
/// seen unhealthy only when its probe ends: with 3 s, a frozen node added 3 s to detection
/// and to every tick of the failover after it.
const PROBE_TIMEOUT: Duration = Duration::from_millis(1_500);
/// How long `/status` may take from a manager whose last probe got no answer (a frozen node, a
/// partition): its last observation (no `fresh=1`, so a live manager answers at once, without
/// querying its server). Every tick waits for its slowest probe: with the full
/// [`PROBE_TIMEOUT`], a frozen primary's node added 1.5 s to each round of its failover (the
/// fence, the promotion, the new primary seen serving: three rounds, 4.5 s of write outage,
/// measured on the stand-in). A manager that answers again gets the full, fresh probe from the
/// next tick on.
const QUICK_PROBE_TIMEOUT: Duration = Duration::from_millis(300);
/// The pace of a loop while something is wrong or in progress ([`stator_failover::Tick::urgent`]).
const URGENT_TICK: Duration = Duration::from_secs(1);
/// The pace while a failover or switchover runs: each of its steps (the fence seen done and
/// the candidate chosen, the promotion, the replicas repointed) waits for a round, and every
/// round until the promotion is write outage (the local supervisor's busy pace is 100 ms).
/// Only while the transition lasts: a database that stays broken is watched at
/// [`URGENT_TICK`], so many of them do not cost a probe of every pod five times a second.
const TRANSITION_TICK: Duration = Duration::from_millis(200);

/// The running loops, one per `Database` (namespace, name).
pub struct Loops {
    client: Client,
    recorder: Recorder,
    stores: Stores,
    tick: Duration,
    enabled: bool,
    tasks: Mutex<HashMap<(String, String), tokio::task::JoinHandle<()>>>,
    /// What each loop's core keeps, for the replicas the controller applies.
    holds: Arc<scale::Holds>,
}

fn key(db: &Database) -> (String, String) {
    (db.namespace().to_string(), db.name_any())
}

impl Loops {
    pub fn new(
        client: Client,
        recorder: Recorder,
        stores: Stores,
        tick: Duration,
        enabled: bool,
        holds: Arc<scale::Holds>,
    ) -> Loops {
        Loops {
            client,
            recorder,
            stores,
            tick,
            enabled,
            tasks: Mutex::new(HashMap::new()),
            holds,
        }
    }

    /// Starts the loop of `db` unless it runs.
    pub async fn ensure(&self, db: &Database) {
        if !self.enabled {
            return;
        }
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(db);
        if tasks.get(&k).is_some_and(|t| !t.is_finished()) {
            return;
        }
        let (client, recorder, tick) = (self.client.clone(), self.recorder.clone(), self.tick);
        let stores = self.stores.clone();
        let holds = self.holds.clone();
        let (ns, name) = k.clone();
        tasks.insert(
            k,
            tokio::spawn(
                async move { run_loop(client, recorder, stores, tick, holds, ns, name).await },
            ),
        );
    }

    /// Stops the loop of `db`, if it runs.
    pub async fn stop(&self, db: &Database) {
        let task = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key(db));
        self.holds.forget(db);
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
    }

    pub async fn stop_all(&self) {
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, t)| t)
            .collect();
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
    }

    /// How many loops run.
    pub fn len(&self) -> usize {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The loops end with their owner, as with a killed process: an operator whose `run` future is
/// dropped (lease lost, aborted) leaves no loop acting on its Databases behind.
impl Drop for Loops {
    fn drop(&mut self) {
        for (_, task) in self
            .tasks
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
        {
            task.abort();
        }
    }
}

/// The api-token and monitor password from the credentials Secret (never logged).
/// What the loop needs of the database's Secrets: the api-token, the monitor password and,
/// with TLS on, the CA of Secret `NAME-tls` (never a key).
struct Secrets {
    token: String,
    monitor: Option<String>,
    ca: Option<CaTrust>,
}

async fn read_secrets(client: &Client, db: &Database) -> Option<Secrets> {
    let api: Api<Secret> = Api::namespaced(client.clone(), db.namespace());
    let read = |name: String| {
        let api = api.clone();
        async move {
            match api.get(&name).await {
                Ok(s) => Some(s.data.unwrap_or_default()),
                Err(e) => {
                    tracing::warn!(database = %db.name_any(), "reading Secret {name}: {e}");
                    None
                }
            }
        }
    };
    let data = read(db.credentials_secret_name()).await?;
    let value = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
    };
    let ca = if db.spec.tls.enabled {
        let name = tls_secret_name(db);
        let tls = read(name.clone()).await?;
        let source = format!("Secret {}/{name}, key {}", db.namespace(), tls::CA_CERT);
        let pem = tls.get(tls::CA_CERT).map(|v| v.0.as_slice()).unwrap_or(&[]);
        match CaTrust::from_pem(pem, &source) {
            Ok(ca) => Some(ca),
            Err(e) => {
                tracing::warn!(database = %db.name_any(), "{e}");
                return None;
            }
        }
    } else {
        None
    };
    Some(Secrets {
        token: value(secret_keys::API_TOKEN)?,
        monitor: value(secret_keys::MONITOR_PASSWORD),
        ca,
    })
}

/// The ordinal of pod `NAME-N` of `db`.
pub fn ordinal_of(db: &Database, pod: &str) -> Option<u32> {
    pod.strip_prefix(db.name())?.strip_prefix('-')?.parse().ok()
}

/// The switchover annotation: `ID` or `ID:NAME-N`.
pub fn switchover_request(db: &Database) -> Option<(String, Option<String>)> {
    let value = db.annotations().get(SWITCHOVER_ANNOTATION)?;
    Some(match value.split_once(':') {
        Some((id, to)) => (id.to_string(), Some(to.to_string())),
        None => (value.clone(), None),
    })
}

/// The database's pods, PVCs and `NAME-rw` address, from the operator's caches.
fn observe(stores: &Stores, db: &Database) -> Observed {
    let (ns, name) = key(db);
    let mut observed = Observed::default();
    for pod in stores.pods_of(&ns, &name) {
        if let Some(ordinal) = ordinal_of(db, &pod.name_any()) {
            observed.pods.insert(ordinal, runtime::PodView::of(&pod));
        }
    }
    for pvc in stores.pvcs_of(&ns, &name) {
        // data-NAME-N
        if let Some(ordinal) = pvc
            .name_any()
            .rsplit_once('-')
            .and_then(|(_, n)| n.parse().ok())
        {
            observed.pvcs.insert(ordinal);
        }
    }
    if let Some(svc) = stores.service(&ns, &db.rw_service_name()) {
        observed.rw_ip = svc
            .spec
            .as_ref()
            .and_then(|s| s.cluster_ip.clone())
            .filter(|ip| ip != "None");
    }
    observed
}

/// A pod missing from the cache is evidence the failover acts on (its kubelet finished
/// deleting it: with its PVC holding the data, the instance is down). The cache may lag, so
/// that evidence is taken from the API server itself: each instance with a PVC and no cached
/// pod is read there, and a pod found is observed as it is. No read while every pod with a
/// PVC is cached (an idle database). Ordinals at or above the StatefulSet's `replicas` are
/// not read: their PVCs stay after a scale-down and no pod comes back for them, so they would
/// cost a read every tick for good.
async fn confirm_gone(
    client: &Client,
    db: &Database,
    replicas: u32,
    observed: &mut Observed,
) -> Result<(), kube::Error> {
    let missing: Vec<u32> = observed
        .pvcs
        .iter()
        .filter(|o| **o < replicas && !observed.pods.contains_key(o))
        .copied()
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(client.clone(), db.namespace());
    for ordinal in missing {
        if let Some(pod) = pods.get_opt(&db.instance_name(ordinal)).await? {
            observed.pods.insert(ordinal, runtime::PodView::of(&pod));
        }
    }
    Ok(())
}

/// `/status?fresh=1` of each pod with an address; plain `/status` within
/// [`QUICK_PROBE_TIMEOUT`] of those in `unanswered` (their last probe got no answer).
async fn probe(rt: &PodRuntime, ordinals: &[u32], unanswered: &BTreeSet<u32>) -> Vec<Sighting> {
    let observed = rt.observed();
    let asks = ordinals.iter().map(|&ordinal| {
        let ip = observed.pods.get(&ordinal).and_then(|p| p.ip.clone());
        let present = observed.pods.contains_key(&ordinal);
        let manager = rt.dial(ordinal, INSTANCE_MANAGER_PORT);
        let (path, limit) = if unanswered.contains(&ordinal) {
            ("/status", QUICK_PROBE_TIMEOUT)
        } else {
            ("/status?fresh=1", PROBE_TIMEOUT)
        };
        async move {
            if ip.is_none() {
                return Sighting {
                    ordinal,
                    // A pod that exists is never taken for down: unreachable at worst.
                    manager_pid: present.then_some(0),
                    report: None,
                    probe_error: Some(if present {
                        "its pod has no address yet".into()
                    } else {
                        "its pod is gone".into()
                    }),
                };
            };
            match stator_failover::client::get_json_at::<InstanceReport>(&manager, path, limit)
                .await
            {
                Ok(report) => Sighting {
                    ordinal,
                    manager_pid: Some(report.manager_pid),
                    report: Some(report),
                    probe_error: None,
                },
                Err(e) => Sighting {
                    ordinal,
                    manager_pid: Some(0),
                    report: None,
                    probe_error: Some(e.detail()),
                },
            }
        }
    });
    futures::future::join_all(asks).await
}

async fn run_loop(
    client: Client,
    recorder: Recorder,
    stores: Stores,
    tick: Duration,
    holds: Arc<scale::Holds>,
    ns: String,
    name: String,
) {
    // An empty cache would read as "every pod is gone": wait for the first lists.
    if !stores.ready().await {
        return;
    }
    let mut state = LoopState {
        api: Api::namespaced(client.clone(), &ns),
        client,
        recorder,
        stores,
        tick,
        holds,
        ns,
        name,
        desk: Arc::new(Mutex::new(SwitchoverDesk::default())),
        rollout: rollout::Rollout::default(),
        failover: None,
        started: BTreeMap::new(),
        taken: BTreeSet::new(),
        unanswered: BTreeSet::new(),
    };
    // Idle, 100 loops are 100 tasks asleep: what one holds while it sleeps is paid 100 times.
    // A round is boxed, so it is allocated while it runs and freed before the pause (with the
    // Database, its sightings and the status written): a sleeping task keeps only the loop's
    // own state, not room for the round's largest step.
    loop {
        match Box::pin(round(&mut state)).await {
            Round::Stop => return,
            Round::Pause(pause) => tokio::time::sleep(pause).await,
        }
    }
}

/// What one Database's loop keeps between rounds.
struct LoopState {
    client: Client,
    recorder: Recorder,
    stores: Stores,
    tick: Duration,
    holds: Arc<scale::Holds>,
    ns: String,
    name: String,
    api: Api<Database>,
    desk: Arc<Mutex<SwitchoverDesk>>,
    rollout: rollout::Rollout,
    /// Made at the first round that can read the Database's Secrets and saved state.
    failover: Option<Failover<PodRuntime>>,
    started: BTreeMap<u32, Sent>,
    taken: BTreeSet<String>,
    /// Pods whose manager did not answer the last probe.
    unanswered: BTreeSet<u32>,
}

/// How a round ended.
enum Round {
    /// The Database is gone or being deleted: the loop ends.
    Stop,
    /// Run the next round after this pause.
    Pause(Duration),
}

/// One round of a Database's loop: observe the pods, tick the failover shell, start what must
/// start, roll, write the status.
async fn round(l: &mut LoopState) -> Round {
    let tick = l.tick;
    let Some(db) = l.stores.database(&l.ns, &l.name) else {
        return Round::Stop;
    };
    if db.metadata.deletion_timestamp.is_some() {
        return Round::Stop;
    }
    let fo = match &mut l.failover {
        Some(fo) => fo,
        slot @ None => {
            let Some(secrets) = read_secrets(&l.client, &db).await else {
                return Round::Pause(tick);
            };
            // The saved failover state is loaded from the API server, never from the cache: a
            // cache lagging the last status write (this loop's before a restart, or the
            // previous leader's) would resume a failover from a state older than the one
            // already acted on.
            let saved = match l.api.get_opt(&l.name).await {
                Ok(Some(saved)) => saved,
                Ok(None) => return Round::Stop,
                Err(e) => {
                    tracing::warn!(database = %l.name, "reading the Database: {e}");
                    return Round::Pause(tick);
                }
            };
            let rt = PodRuntime::new(
                l.client.clone(),
                l.recorder.clone(),
                &saved,
                secrets.token,
                secrets.monitor,
                secrets.ca,
            );
            slot.insert(Failover::load(rt, l.desk.clone()))
        }
    };
    let mut observed = observe(&l.stores, &db);
    if let Err(e) = confirm_gone(&l.client, &db, l.holds.replicas(&db), &mut observed).await {
        tracing::warn!(database = %l.name, "reading pods: {e}");
        return Round::Pause(tick);
    }
    let mut ordinals: Vec<u32> = (0..db.spec.instances).collect();
    ordinals.extend(observed.pods.keys().chain(observed.pvcs.iter()));
    ordinals.sort_unstable();
    ordinals.dedup();
    fo.runtime_mut().observe(observed);
    let sightings = probe(fo.runtime(), &ordinals, &l.unanswered).await;
    l.unanswered = sightings
        .iter()
        .filter(|s| s.report.is_none() && s.manager_pid.is_some())
        .map(|s| s.ordinal)
        .collect();
    take_switchover(&db, &l.desk, &mut l.taken);
    let result = fo.tick(&db, &sightings).await;
    start_instances(fo, &db, &sightings, &result.keep_down, &mut l.started).await;
    fo.runtime_mut().publish_events(&db).await;
    let rolling = l
        .rollout
        .step(
            &l.client,
            &l.recorder,
            &db,
            rollout::Tick {
                memory: fo.memory(),
                status: &result.status,
                sightings: &sightings,
                observed: fo.runtime().observed(),
                desk: &l.desk,
            },
        )
        .await;
    let state = fo.state().clone();
    let report = fo.report(db.name(), &result.status);
    // The annotation's ticket, not one the rollout asked for.
    let ticket = l
        .desk
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .last()
        .filter(|t| !l.rollout.owns(t.id));
    let status = instance_statuses(&db, &sightings);
    let primary = result.primary.clone();
    let generation = db.metadata.generation;
    let written = write_status(&l.api, &db, |s| {
        s.phase = Some(result.status.phase);
        s.current_primary = primary.clone();
        s.ready_instances = status.iter().filter(|i| i.ready).count() as u32;
        s.instances = status.clone();
        s.failover = Some(without_nulls(
            serde_json::json!({"state": state, "report": report}),
        ));
        let ready = result.status.phase == Phase::Ready;
        let reason = result.status.reason.as_str();
        let message = &result.status.message;
        conditions::set(&mut s.conditions, READY, ready, reason, message, generation);
        conditions::set(
            &mut s.conditions,
            PROGRESSING,
            !ready && result.status.phase != Phase::Degraded,
            reason,
            message,
            generation,
        );
        if let Some(rolling) = &rolling {
            let reason = rollout::REASON;
            conditions::set(
                &mut s.conditions,
                PROGRESSING,
                true,
                reason,
                rolling,
                generation,
            );
        }
        conditions::set(
            &mut s.conditions,
            DEGRADED,
            matches!(
                result.status.phase,
                Phase::Degraded | Phase::Unavailable | Phase::FailingOver
            ),
            reason,
            message,
            generation,
        );
        if let (Some((id, _)), Some(t)) = (switchover_request(&db), &ticket) {
            s.switchover = Some(SwitchoverStatus {
                id,
                state: t.state.as_str().into(),
                message: Some(t.outcome()),
            });
        }
    })
    .await;
    if let Err(e) = written {
        tracing::warn!(database = %l.name, "{e}");
    }
    // After the status write: a controller woken to lower the replicas finds the new
    // primary recorded.
    l.holds.update(&db, scale::kept(fo.memory()));
    let transition = fo.memory().transition.is_some();
    Round::Pause(pause(tick, result.urgent, transition, result.sooner))
}

/// The pause before a Database's next round: its `tick` while all is well, at most
/// [`URGENT_TICK`] while something is wrong or in progress, [`TRANSITION_TICK`] while a
/// failover or switchover runs, and sooner still when the failover shell asks
/// ([`stator_failover::Tick::sooner`]: an unhealthy primary's detection deadline, so the
/// failover is decided there and not up to a tick later; a promotion just ordered, so it is
/// seen, and `rw` routed to it, as soon as it took effect: every round until then is write
/// outage).
fn pause(tick: Duration, urgent: bool, transition: bool, sooner: Option<Duration>) -> Duration {
    let pace = if transition {
        TRANSITION_TICK
    } else if urgent {
        URGENT_TICK
    } else {
        tick
    };
    let pace = pace.min(tick);
    sooner.map_or(pace, |s| s.min(pace))
}

/// Queues the annotation's switchover once per id: an id in the status, or taken by this loop
/// already (the status write may lag a tick), is not taken again.
fn take_switchover(db: &Database, desk: &Mutex<SwitchoverDesk>, taken: &mut BTreeSet<String>) {
    let Some((id, to)) = switchover_request(db) else {
        return;
    };
    let in_status = db
        .status
        .as_ref()
        .and_then(|s| s.switchover.as_ref())
        .is_some_and(|s| s.id == id);
    if in_status || !taken.insert(id) {
        return;
    }
    let target = to.and_then(|n| ordinal_of(db, &n).map(|o| (n, o)));
    desk.lock()
        .unwrap_or_else(|e| e.into_inner())
        .request(target);
}

/// The last start-up order given to an instance: to which pod (UID), what kind, when, and
/// whether it was carried out.
#[derive(Clone, Debug)]
struct Sent {
    pod: String,
    kind: &'static str,
    at: Instant,
    outcome: runtime::Outcome,
    /// Its server was seen running in a round after the order: the order was carried out, and
    /// a later need of the same order (the instance failed over again and waiting for its
    /// role once more) is a new one.
    ran: bool,
}

/// Whether `order` to instance `ordinal`, now in pod `pod`, waits: the same kind of order went
/// to the same pod less than [`ORDER_RESEND`] ago (it may still be carried out). Another kind
/// of order, or a pod created again since (a new manager, which got nothing), does not wait:
/// a former primary's recreated pod, fenced, must not wait out the minute of its first
/// bootstrap before it is let back as a replica. One that was not carried out waits only
/// [`ORDER_RETRY`].
fn waits(last: Option<&Sent>, pod: &str, order: &runtime::StartOrder, now: Instant) -> bool {
    last.is_some_and(|s| {
        let since = now.duration_since(s.at);
        let wait = if s.outcome.failed() {
            ORDER_RETRY
        } else {
            ORDER_RESEND
        };
        s.pod == pod && s.kind == order.kind() && since < wait && !s.ran
    })
}

/// Gives the start-up orders of [`start_orders`]; the same one to the same pod at most once
/// per [`ORDER_RESEND`], or [`ORDER_RETRY`] after it was not carried out ([`waits`]).
async fn start_instances(
    fo: &mut Failover<PodRuntime>,
    db: &Database,
    sightings: &[Sighting],
    keep_down: &BTreeSet<u32>,
    started: &mut BTreeMap<u32, Sent>,
) {
    for (ordinal, sent) in started.iter_mut() {
        let running = sightings.iter().any(|s| {
            s.ordinal == *ordinal
                && s.report
                    .as_ref()
                    .is_some_and(|r| r.state == ServerState::Running)
        });
        // This round's sightings were taken after every order in `started` was given (in an
        // earlier round).
        if running {
            sent.ran = true;
        }
    }
    let pods = &fo.runtime().observed().pods;
    let init = runtime::StartOrder::Bootstrap(BootstrapOrder::Init).kind();
    let init_sent = started
        .iter()
        .find(|(o, s)| s.kind == init && pods.get(o).is_some_and(|p| p.uid == s.pod))
        .map(|(o, _)| *o);
    let orders = start_orders(fo.memory(), keep_down, sightings, init_sent, |o| {
        fo.runtime().endpoint(db, o)
    });
    let now = Instant::now();
    for (ordinal, order) in orders {
        let pod = fo
            .runtime()
            .observed()
            .pods
            .get(&ordinal)
            .map(|p| p.uid.clone())
            .unwrap_or_default();
        if waits(started.get(&ordinal), &pod, &order, now) {
            continue;
        }
        let kind = order.kind();
        let outcome = fo.runtime_mut().start(db, ordinal, order);
        started.insert(
            ordinal,
            Sent {
                pod,
                kind,
                at: now,
                outcome,
                ran: false,
            },
        );
    }
}

/// Start-up orders the managed managers wait for: an empty data dir is bootstrapped (init on
/// one instance when the database holds no data yet: the one an init was ordered to already,
/// `init_sent`, else the first that answers; none while one initialises; else cloned from the
/// primary), a
/// data dir waiting for its role is told it (the core's primary, or a replica of it), a fenced
/// instance the core lets back (no longer in `keep_down`: it rejoins as a replica of a
/// confirmed primary) has its fence released first. Instances the shell keeps down get
/// nothing. `endpoint`: where instance N's server is reached from the pods.
fn start_orders(
    memory: &stator_control::Memory,
    keep_down: &BTreeSet<u32>,
    sightings: &[Sighting],
    init_sent: Option<u32>,
    endpoint: impl Fn(u32) -> stator_api::instance::Endpoint,
) -> Vec<(u32, runtime::StartOrder)> {
    let any_data = sightings.iter().any(|s| {
        s.report
            .as_ref()
            .is_some_and(|r| r.holds_data == Some(true))
    });
    let primary_running = memory.primary.and_then(|p| {
        sightings
            .iter()
            .find(|s| s.ordinal == p)
            .and_then(|s| s.report.as_ref())
            .filter(|r| r.state == ServerState::Running && r.ready)
            .map(|_| p)
    });
    // An instance creating its data dir while no primary runs is a new primary being
    // initialised (a clone needs a running upstream): no second one is initialised beside it.
    // Found on the stand-in under load: pg-2 answered first and got the init; a second later
    // pg-0 answered too, came first in order, and got a second init while pg-2's ran.
    let initializing = primary_running.is_none()
        && sightings.iter().any(|s| {
            s.report
                .as_ref()
                .is_some_and(|r| r.state == ServerState::Initializing)
        });
    // The instance an init was ordered to stays the one (its order may not have arrived yet).
    let first = init_sent.or_else(|| {
        sightings
            .iter()
            .find(|s| s.report.is_some())
            .map(|s| s.ordinal)
    });
    let mut orders = Vec::new();
    for s in sightings {
        let Some(report) = &s.report else { continue };
        if report.state != ServerState::Stopped || keep_down.contains(&s.ordinal) {
            continue;
        }
        let fenced = memory.fenced.contains_key(&s.ordinal);
        let order = match report.holds_data {
            Some(false) if fenced => continue,
            Some(false) => match (primary_running, memory.primary) {
                (Some(p), _) if p != s.ordinal => {
                    runtime::StartOrder::Bootstrap(BootstrapOrder::Clone {
                        upstream: endpoint(p),
                    })
                }
                // No data anywhere: the core's designated primary (else the first
                // instance that answers) is initialised.
                (None, designated)
                    if !any_data
                        && !initializing
                        && (designated == Some(s.ordinal)
                            || (designated.is_none() && first == Some(s.ordinal))) =>
                {
                    runtime::StartOrder::Bootstrap(BootstrapOrder::Init)
                }
                _ => continue,
            },
            Some(true) => match (memory.primary, primary_running) {
                // Released first too: a primary the core restored (a switchover given up)
                // may hold the kill fence its manager took (lease expiry, or the core's own
                // fence before the restore); `Unfence` releases nothing on PostgreSQL, and a
                // bare `/role` was refused "fenced (kill)" every round (the restart-during-
                // hand-over drill: FailingOver for good).
                (Some(p), _) if p == s.ordinal && !fenced => {
                    runtime::StartOrder::Rejoin(RoleOrder::Primary)
                }
                // Released first even when the core holds no fence on it: a fence its manager
                // still holds from an order the core no longer counts (one that crossed a
                // release, or a former leader's) refused every `/role` for good; releasing no
                // fence is answered "not fenced".
                (Some(p), Some(running)) if p != s.ordinal => {
                    runtime::StartOrder::Rejoin(RoleOrder::Replica {
                        upstream: endpoint(running),
                    })
                }
                _ => continue,
            },
            None => continue,
        };
        orders.push((s.ordinal, order));
    }
    orders
}

fn instance_statuses(db: &Database, sightings: &[Sighting]) -> Vec<InstanceStatus> {
    sightings
        .iter()
        .filter(|s| s.ordinal < db.spec.instances || s.report.is_some())
        .map(|s| match &s.report {
            Some(r) => InstanceStatus {
                name: db.instance_name(s.ordinal),
                role: r.role,
                ready: r.ready,
                position: r.position.clone(),
                timeline: r.timeline,
                lag: r.lag,
                message: r.message.clone(),
            },
            None => InstanceStatus {
                name: db.instance_name(s.ordinal),
                message: s.probe_error.clone(),
                ..InstanceStatus::default()
            },
        })
        .collect()
}

/// `value` without its `null` fields: a JSON merge patch deletes a field set to `null`, so
/// the status read back would never equal one written with them, and every tick would write.
pub fn without_nulls(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => map
            .into_iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k, without_nulls(v)))
            .collect(),
        serde_json::Value::Array(items) => items.into_iter().map(without_nulls).collect(),
        other => other,
    }
}

/// The failover state kept in the status, if any and readable.
pub fn saved_state(db: &Database) -> Option<FailoverState> {
    let value = db.status.as_ref()?.failover.as_ref()?.get("state")?.clone();
    serde_json::from_value(value).ok()
}

/// The failover report kept in the status (what `stator status` prints), if any.
pub fn saved_report(db: &Database) -> Option<stator_failover::FailoverReport> {
    let value = db
        .status
        .as_ref()?
        .failover
        .as_ref()?
        .get("report")?
        .clone();
    serde_json::from_value(value).ok()
}

/// The reference an Event names pod `name` of `namespace` by.
pub(crate) fn pod_ref(namespace: &str, name: &str) -> k8s_openapi::api::core::v1::ObjectReference {
    k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name.into()),
        namespace: Some(namespace.into()),
        ..Default::default()
    }
}

/// An Event about `db` (an order given to pod `related`).
pub(crate) async fn publish(
    recorder: &Recorder,
    db: &Database,
    reason: &str,
    note: String,
    related: Option<k8s_openapi::api::core::v1::ObjectReference>,
) {
    let event = Event {
        type_: EventType::Normal,
        reason: reason.into(),
        note: Some(note),
        action: reason.into(),
        secondary: related,
    };
    if let Err(e) = recorder.publish(&event, &db.object_ref(&())).await {
        tracing::warn!(database = %db.name_any(), "cannot publish event {reason}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_api::instance::Endpoint;
    use stator_control::{Fence, FenceMethod, Memory};

    /// Instance `ordinal`'s manager answers with `state`.
    fn sighting(ordinal: u32, state: &str, ready: bool, holds_data: bool) -> Sighting {
        let report: InstanceReport = serde_json::from_value(serde_json::json!({
            "name": format!("pg-{ordinal}"), "state": state, "ready": ready,
            "role": if state == "running" { Some("primary") } else { None },
            "managerPid": 10 + ordinal, "restarts": 0, "readOnly": false, "holdsData": holds_data,
        }))
        .expect("a report");
        Sighting {
            ordinal,
            manager_pid: Some(report.manager_pid),
            report: Some(report),
            probe_error: None,
        }
    }

    fn endpoint(ordinal: u32) -> Endpoint {
        Endpoint {
            instance: format!("pg-{ordinal}"),
            host: format!("pg-{ordinal}.pg-headless.apps.svc"),
            port: 5432,
        }
    }

    /// The old primary's pod deleted: the core failed over to pg-1 and fenced pg-0 when its
    /// recreated pod reported (its data dir was a primary's); its manager holds the fence and
    /// waits. Once the shell lets it back (not kept down), it must get its fence released and
    /// its role; fenced instances got nothing before, so it stayed stopped forever.
    #[test]
    fn a_fenced_former_primary_let_back_is_released_then_told_to_follow() {
        let memory = Memory {
            primary: Some(1),
            primary_confirmed: true,
            fenced: [(
                0,
                Fence {
                    method: FenceMethod::Kill,
                    confirmed: true,
                    floor: None,
                },
            )]
            .into(),
            ..Memory::default()
        };
        let sightings = vec![
            sighting(0, "stopped", false, true),
            sighting(1, "running", true, true),
        ];
        let orders = start_orders(&memory, &BTreeSet::new(), &sightings, None, endpoint);
        match orders.as_slice() {
            [(0, runtime::StartOrder::Rejoin(RoleOrder::Replica { upstream }))] => {
                assert_eq!(upstream, &endpoint(1))
            }
            other => panic!(
                "expected a rejoin of pg-0 following pg-1, got {} orders",
                other.len()
            ),
        }
        // Kept down (the primary not confirmed yet, a transition): nothing.
        let kept: BTreeSet<u32> = [0].into();
        assert!(start_orders(&memory, &kept, &sightings, None, endpoint).is_empty());
    }

    /// The stand-in drill that found it: after the operator was killed during a failover,
    /// pg-1's manager held a kill fence the new leader's core did not count; the loop sent it
    /// a bare `/role` every minute, refused each time ("fenced (kill)"), and the drill never
    /// got its replica back. A stopped data dir let back as a replica is released first.
    #[test]
    fn a_replica_let_back_is_released_first_even_when_the_core_holds_no_fence() {
        let memory = Memory {
            primary: Some(2),
            primary_confirmed: true,
            ..Memory::default()
        };
        let sightings = vec![
            sighting(1, "stopped", false, true),
            sighting(2, "running", true, true),
        ];
        let orders = start_orders(&memory, &BTreeSet::new(), &sightings, None, endpoint);
        match orders.as_slice() {
            [(1, runtime::StartOrder::Rejoin(RoleOrder::Replica { upstream }))] => {
                assert_eq!(upstream, &endpoint(2))
            }
            other => panic!("expected a rejoin of pg-1 following pg-2, got {other:?}"),
        }
    }

    /// The restart-during-hand-over drill: the switchover's target fenced itself (its lease
    /// ran out while no operator led), the core gave the switchover up and restored pg-1,
    /// whose manager held a kill fence; `/role primary` alone was refused every round. The
    /// core's primary, stopped, is released before it is told its role.
    #[test]
    fn a_restored_primary_holding_a_fence_is_released_before_its_role() {
        let memory = Memory {
            primary: Some(1),
            primary_confirmed: true,
            ..Memory::default()
        };
        let sightings = vec![sighting(1, "stopped", false, true)];
        let orders = start_orders(&memory, &BTreeSet::new(), &sightings, None, endpoint);
        assert!(
            matches!(
                orders.as_slice(),
                [(1, runtime::StartOrder::Rejoin(RoleOrder::Primary))]
            ),
            "{orders:?}"
        );
    }

    /// The stand-in run that found it (a PostgreSQL bring-up at load 5): pg-2's manager
    /// answered first and got `/bootstrap init`; a round later pg-0's answered too, came first
    /// in order, and got a second init while pg-2's ran: two primaries of one new database.
    #[test]
    fn a_new_database_is_initialised_on_one_instance_only() {
        let memory = Memory::default();
        let init = |orders: &[(u32, runtime::StartOrder)]| -> Vec<u32> {
            orders
                .iter()
                .filter(|(_, o)| matches!(o, runtime::StartOrder::Bootstrap(BootstrapOrder::Init)))
                .map(|(n, _)| *n)
                .collect()
        };
        // pg-2 initialising, pg-0 empty and answering: nothing for pg-0.
        let sightings = vec![
            sighting(0, "stopped", false, false),
            sighting(2, "initializing", false, false),
        ];
        let none = start_orders(&memory, &BTreeSet::new(), &sightings, None, endpoint);
        assert!(init(&none).is_empty(), "{none:?}");
        // pg-2 got the init, which has not arrived yet (it still reports stopped and empty):
        // pg-2 again, never pg-0.
        let sightings = vec![
            sighting(0, "stopped", false, false),
            sighting(2, "stopped", false, false),
        ];
        let again = start_orders(&memory, &BTreeSet::new(), &sightings, Some(2), endpoint);
        assert_eq!(init(&again), vec![2], "{again:?}");
        // Nothing ordered yet: the first that answers.
        let first = start_orders(&memory, &BTreeSet::new(), &sightings, None, endpoint);
        assert_eq!(init(&first), vec![0], "{first:?}");
    }

    /// The stand-in run that found it: pg-0 bootstrapped, its pod deleted 20 s later, the
    /// failover done, and pg-0's recreated pod (fenced) got its rejoin only a minute after its
    /// bootstrap, the throttle keyed by ordinal alone.
    #[test]
    fn a_start_order_waits_only_for_the_same_order_to_the_same_pod() {
        let t0 = Instant::now();
        let rejoin = runtime::StartOrder::Rejoin(RoleOrder::Replica {
            upstream: endpoint(1),
        });
        let init = runtime::StartOrder::Bootstrap(BootstrapOrder::Init);
        let bootstrapped = Sent {
            pod: "uid-a".into(),
            kind: init.kind(),
            at: t0,
            outcome: runtime::Outcome::default(),
            ran: false,
        };
        let soon = t0 + Duration::from_secs(20);
        // The same order to the same pod, within the minute: it may still be carried out.
        assert!(waits(Some(&bootstrapped), "uid-a", &init, soon));
        // Resent after the minute.
        assert!(!waits(
            Some(&bootstrapped),
            "uid-a",
            &init,
            t0 + ORDER_RESEND + Duration::from_secs(1)
        ));
        // Another kind of order, or the pod created again: at once.
        assert!(!waits(Some(&bootstrapped), "uid-a", &rejoin, soon));
        assert!(!waits(Some(&bootstrapped), "uid-b", &init, soon));
        assert!(!waits(None, "uid-a", &init, soon));
    }

    /// The stand-in benchmark that found it: a former primary's recreated pod was told to
    /// rejoin moments after the promotion, before its pod could resolve the new primary's
    /// name; its `pg_rewind` failed, the order was refused, and the same order waited out the
    /// minute of [`ORDER_RESEND`], the pod stopped all that while. One not carried out is given
    /// again after [`ORDER_RETRY`].
    #[test]
    fn a_start_order_that_was_not_carried_out_is_given_again_soon() {
        let t0 = Instant::now();
        let rejoin = runtime::StartOrder::Rejoin(RoleOrder::Replica {
            upstream: endpoint(1),
        });
        let sent = Sent {
            pod: "uid-a".into(),
            kind: rejoin.kind(),
            at: t0,
            outcome: runtime::Outcome::default(),
            ran: false,
        };
        let later = t0 + ORDER_RETRY + Duration::from_secs(1);
        // Carried out, or still under way: it waits.
        assert!(waits(Some(&sent), "uid-a", &rejoin, later));
        sent.outcome.fail();
        // Refused: not at once (every round would send it again), but well within the minute.
        assert!(waits(
            Some(&sent),
            "uid-a",
            &rejoin,
            t0 + Duration::from_secs(1)
        ));
        assert!(!waits(Some(&sent), "uid-a", &rejoin, later));
    }

    /// The manager-freeze drill that found it: a replica told its role (done), promoted, then
    /// failed over again within the minute, waited for `/role` 46 s, since the same order had
    /// gone to the same pod less than [`ORDER_RESEND`] ago. An order whose server was seen
    /// running since was carried out: the next need of it is a new one, given at once.
    #[test]
    fn an_order_carried_out_does_not_hold_back_the_next_need_of_it() {
        let t0 = Instant::now();
        let rejoin = runtime::StartOrder::Rejoin(RoleOrder::Replica {
            upstream: endpoint(1),
        });
        let mut sent = Sent {
            pod: "uid-a".into(),
            kind: rejoin.kind(),
            at: t0,
            outcome: runtime::Outcome::default(),
            ran: false,
        };
        let soon = t0 + Duration::from_secs(10);
        assert!(waits(Some(&sent), "uid-a", &rejoin, soon));
        sent.ran = true;
        assert!(!waits(Some(&sent), "uid-a", &rejoin, soon));
    }

    /// The stand-in benchmark that found it: the loop paused a whole second after ordering a
    /// promotion (the shell asked for 20 ms), so each failover's promotion was seen, and `rw`
    /// routed to it, up to a second after it took effect.
    #[test]
    fn the_loop_pauses_no_longer_than_the_shell_asks() {
        let ms = Duration::from_millis;
        let tick = Duration::from_secs(5);
        // (urgent, transition, sooner) -> pause
        let table = [
            ((false, false, None), tick),
            ((true, false, None), URGENT_TICK),
            ((true, false, Some(ms(20))), ms(20)),
            ((false, false, Some(ms(1_900))), ms(1_900)),
            // A failover or switchover runs: each of its steps waits for a round.
            ((true, true, None), TRANSITION_TICK),
            ((true, true, Some(ms(20))), ms(20)),
            // Never later than the pace.
            ((true, false, Some(ms(4_000))), URGENT_TICK),
            ((true, true, Some(ms(4_000))), TRANSITION_TICK),
            ((false, false, Some(ms(9_000))), tick),
        ];
        for ((urgent, transition, sooner), want) in table {
            assert_eq!(
                pause(tick, urgent, transition, sooner),
                want,
                "urgent {urgent}, transition {transition}, sooner {sooner:?}"
            );
        }
        // A tick shorter than the pace is kept.
        assert_eq!(pause(ms(300), true, false, None), ms(300));
        assert_eq!(pause(ms(100), true, true, None), ms(100));
    }

    #[test]
    fn the_failover_record_round_trips_through_a_merge_patch_unchanged() {
        // What the API server keeps of a merge patch: fields set to null are deleted.
        fn merged(v: &serde_json::Value) -> serde_json::Value {
            let mut target = serde_json::json!({});
            crate::conditions::apply_merge_patch(&mut target, v);
            target
        }
        let state = FailoverState::default();
        let written = without_nulls(serde_json::json!({"state": state}));
        assert_eq!(
            merged(&written),
            written,
            "a second tick would write the same status again"
        );
        // And the state is read back as it was.
        let db_status = stator_api::DatabaseStatus {
            failover: Some(merged(&written)),
            ..Default::default()
        };
        let mut db = crate::fixtures::DatabaseBuilder::test().build();
        db.status = Some(db_status);
        assert_eq!(saved_state(&db), Some(state));
    }
}
