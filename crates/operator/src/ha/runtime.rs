//! [`PodRuntime`]: what the failover shell asks of a runtime, done with pods. Orders go to the
//! managed instance managers over HTTP with the api-token (`/fence`, `/rebuild`, and the
//! start-up orders `/bootstrap`, `/role`); routes are the `stator.dev/role` pod label
//! (`primary` only on the core's `rw` target, `replica` on its `ro` targets, none on a new
//! pod), which the `NAME-rw`/`NAME-ro` Services select; the shell's state lives in the
//! `Database` status. It never creates or deletes a pod: the StatefulSet controller does, and
//! a kubelet deletes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::Recorder;
use kube::{Client, ResourceExt};
use stator_api::instance::Endpoint;
use stator_api::names::{INSTANCE_MANAGER_PORT, LABEL_ROLE};
use stator_api::orders::{BootstrapOrder, FenceKind, FenceOrder, RebuildOrder, RoleOrder};
use stator_api::{Database, Role};
use stator_control::{FenceMethod, LeaseLedger, Memory, lease_length_ms};
use stator_engine::tls::{CaTrust, Dial, Trust};
use stator_failover::{FailoverState, FinalCheckpoint, Runtime, Work};

/// How long an order may take.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// One pod as listed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodView {
    pub name: String,
    /// Its UID: a pod deleted and created again under the same name is another pod, whose
    /// manager has been given no order yet.
    pub uid: String,
    pub ip: Option<String>,
    /// Its `stator.dev/role` label.
    pub role: Option<String>,
    /// Its `controller-revision-hash` label: the StatefulSet revision it was created from.
    pub revision: Option<String>,
    /// Its `Ready` condition is `True` (the kubelet's probes; what EndpointSlices follow).
    pub ready: bool,
    /// Its deletion has started.
    pub deleting: bool,
}

/// The label the StatefulSet controller puts on each pod: the revision it was created from.
pub const REVISION_LABEL: &str = "controller-revision-hash";

impl PodView {
    pub fn of(pod: &Pod) -> PodView {
        let status = pod.status.as_ref();
        PodView {
            name: pod.name_any(),
            ip: status.and_then(|s| s.pod_ip.clone()),
            role: pod.labels().get(LABEL_ROLE).cloned(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            revision: pod.labels().get(REVISION_LABEL).cloned(),
            ready: status
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True")),
            deleting: pod.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// What the loop listed this tick.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub pods: BTreeMap<u32, PodView>,
    /// Ordinals with a PVC (their data lives on).
    pub pvcs: BTreeSet<u32>,
    /// The `NAME-rw` Service's cluster IP.
    pub rw_ip: Option<String>,
}

/// A start-up order for a managed manager.
#[derive(Debug)]
pub enum StartOrder {
    Bootstrap(BootstrapOrder),
    Role(RoleOrder),
    /// A fenced instance the core lets back: its fence released (its manager then waits for
    /// its role when its data was a primary's), then its role.
    Rejoin(RoleOrder),
}

/// Whether a start-up order was not carried out: set once one of its steps was refused or its
/// manager not reached (the manager then still waits for it, so it may be given again).
#[derive(Clone, Debug, Default)]
pub struct Outcome(Arc<AtomicBool>);

impl Outcome {
    /// The order was refused, or its manager not reached.
    pub fn failed(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn fail(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
}

/// Why a runtime step failed.
#[derive(Debug, thiserror::Error)]
pub enum PodRuntimeError {
    #[error("the failover state in the status of Database {name:?} cannot be read: {message}")]
    State { name: String, message: String },
    #[error(
        "the failover state cannot be written into the status of Database {name:?} before the orders it decided: {message}"
    )]
    Persist { name: String, message: String },
}

/// The failover runtime of one `Database`'s pods.
pub struct PodRuntime {
    client: Client,
    recorder: Recorder,
    name: String,
    namespace: String,
    engine_port: u16,
    token: String,
    monitor: Option<String>,
    /// The database's CA (Secret `NAME-tls`); `None` when its TLS is off.
    ca: Option<CaTrust>,
    loaded: Option<serde_json::Value>,
    recorded: Option<u32>,
    observed: Observed,
    /// The role label each pod should carry.
    wanted: BTreeMap<u32, Option<Role>>,
    /// Orders given since the last [`PodRuntime::publish_events`]: (reason, pod, note).
    events: Vec<(&'static str, String, String)>,
    /// Instances a `/rebuild` was sent to: not sent again while it runs, unless the primary
    /// changed. The manager answers once the clone is done, and the mark ends one observation
    /// after that answer: a pod keeps its name through a rebuild and may need another one
    /// after a later failover, even from the same primary as before.
    rebuilt: BTreeMap<u32, RebuildMark>,
    /// The write leases, once `spec.failover.lease` is on (kept while this runtime lives: pods
    /// started in lease mode need them until they are rolled).
    leases: Option<super::lease::Leases>,
    /// `spec.failover.lease` as of the last tick.
    lease_on: bool,
    /// The instance last ordered `/bootstrap init` while the core remembered no primary.
    initialised: Option<u32>,
}

/// A `/rebuild` sent: the primary it names and the request under way.
struct RebuildMark {
    primary: u32,
    order: tokio::task::JoinHandle<()>,
    /// The manager had answered at the previous observation.
    answered_before: bool,
}

impl StartOrder {
    /// The kind of order, without its upstream: what a resend is counted by.
    pub fn kind(&self) -> &'static str {
        match self {
            StartOrder::Bootstrap(BootstrapOrder::Init) => "bootstrap init",
            StartOrder::Bootstrap(BootstrapOrder::Clone { .. }) => "bootstrap clone",
            StartOrder::Role(RoleOrder::Primary) => "role primary",
            StartOrder::Role(RoleOrder::Replica { .. }) => "role replica",
            StartOrder::Rejoin(_) => "rejoin",
        }
    }
}

impl PodRuntime {
    pub fn new(
        client: Client,
        recorder: Recorder,
        db: &Database,
        token: String,
        monitor: Option<String>,
        ca: Option<CaTrust>,
    ) -> PodRuntime {
        let status = db.status.clone().unwrap_or_default();
        PodRuntime {
            client,
            recorder,
            name: db.name_any(),
            namespace: db.namespace().to_string(),
            engine_port: db.spec.engine.port(),
            token,
            monitor,
            ca,
            loaded: status
                .failover
                .as_ref()
                .and_then(|f| f.get("state"))
                .cloned(),
            recorded: status
                .current_primary
                .as_deref()
                .and_then(|p| super::ordinal_of(db, p)),
            observed: Observed::default(),
            wanted: BTreeMap::new(),
            events: Vec::new(),
            rebuilt: BTreeMap::new(),
            leases: None,
            lease_on: false,
            initialised: None,
        }
    }

    /// What was listed this tick.
    pub fn observed(&self) -> &Observed {
        &self.observed
    }

    /// What was listed this tick. A rebuild mark ends with its pod, or on the second
    /// observation after the manager answered (the first may have been listed before it did).
    pub fn observe(&mut self, observed: Observed) {
        self.rebuilt.retain(|o, mark| {
            if !observed.pods.contains_key(o) || mark.answered_before {
                return false;
            }
            mark.answered_before = mark.order.is_finished();
            true
        });
        self.observed = observed;
    }

    /// Pod `NAME-N`'s stable DNS name (through the headless Service): what its peers dial,
    /// and what its certificate names.
    fn dns_name(&self, ordinal: u32) -> String {
        format!(
            "{}-{ordinal}.{}-headless.{}.svc",
            self.name, self.name, self.namespace
        )
    }

    /// How the operator reaches `port` of instance `ordinal`'s pod: its IP (the operator
    /// resolves no cluster names), verified as its DNS name against the database's CA. The
    /// trust travels with the dial, so many Databases, each with its own CA, and pod IPs that
    /// change when a pod is recreated need no process-wide registry.
    pub fn dial(&self, ordinal: u32, port: u16) -> Dial {
        let name = self.dns_name(ordinal);
        let host = self
            .observed
            .pods
            .get(&ordinal)
            .and_then(|p| p.ip.clone())
            .unwrap_or_else(|| name.clone());
        Dial {
            host,
            port,
            trust: self.trust(name),
        }
    }

    fn trust(&self, server_name: String) -> Trust {
        match &self.ca {
            Some(ca) => Trust::Verified {
                ca: ca.clone(),
                server_name,
            },
            None => Trust::Plain,
        }
    }

    /// Where instance `ordinal`'s server is reached, by name for the managers that clone or
    /// follow it (the headless Service name resolves inside pods).
    pub fn endpoint(&self, _db: &Database, ordinal: u32) -> Endpoint {
        self.endpoint_of(ordinal)
    }

    fn endpoint_of(&self, ordinal: u32) -> Endpoint {
        Endpoint {
            instance: format!("{}-{ordinal}", self.name),
            host: self.dns_name(ordinal),
            port: self.engine_port,
        }
    }

    /// Sends `body` to `path` of instance `ordinal`'s manager in a task; an Event says so.
    fn order(
        &mut self,
        ordinal: u32,
        reason: &'static str,
        path: &'static str,
        body: String,
        what: String,
    ) -> Work {
        self.orders(
            ordinal,
            reason,
            vec![(path, body)],
            what,
            Outcome::default(),
        )
    }

    /// Sends each `(path, body)` in turn to instance `ordinal`'s manager, in one task, the next
    /// only once the previous one was carried out; an Event says so, its `reason` the kind of
    /// order (the Recorder folds Events of one reason about one object into a series that
    /// shows only the first note: each kind of order, to each pod, is its own Event).
    /// `outcome` is marked failed when a step is refused or the manager is not reached.
    fn orders(
        &mut self,
        ordinal: u32,
        reason: &'static str,
        steps: Vec<(&'static str, String)>,
        what: String,
        outcome: Outcome,
    ) -> Work {
        let manager = self.dial(ordinal, INSTANCE_MANAGER_PORT);
        let token = self.token.clone();
        let pod = format!("{}-{ordinal}", self.name);
        self.events
            .push((reason, pod.clone(), format!("{pod}: {what}")));
        let task = tokio::spawn(async move {
            for (path, body) in steps {
                match stator_failover::client::post_at(&manager, path, &token, &body, ORDER_TIMEOUT)
                    .await
                {
                    Ok((200, _)) => tracing::info!(pod = %pod, "{path}: done"),
                    Ok((code, answer)) => {
                        tracing::warn!(
                            pod = %pod,
                            "{path}: HTTP {code}: {}",
                            stator_failover::client::answer_text(&answer)
                        );
                        outcome.fail();
                        return;
                    }
                    Err(e) => {
                        tracing::warn!(pod = %pod, "{path}: {}", e.detail());
                        outcome.fail();
                        return;
                    }
                }
            }
        });
        Work { what, task }
    }

    /// A start-up order (`/bootstrap` or `/role`; a fenced instance the core lets rejoin:
    /// `/fence` released, then `/role`). Its [`Outcome`] says when it was not carried out.
    pub fn start(&mut self, _db: &Database, ordinal: u32, order: StartOrder) -> Outcome {
        let role = |o: &RoleOrder| match o {
            RoleOrder::Primary => "role: primary".to_string(),
            RoleOrder::Replica { upstream } => format!("role: replica of {}", upstream.instance),
        };
        let json = |v: Result<String, serde_json::Error>| v.unwrap_or_default();
        let reason_of = |o: &RoleOrder| match o {
            RoleOrder::Primary => "RolePrimary",
            RoleOrder::Replica { .. } => "RoleReplica",
        };
        if matches!(order, StartOrder::Bootstrap(BootstrapOrder::Init)) {
            self.initialised = Some(ordinal);
        }
        let (reason, steps, what) = match order {
            StartOrder::Bootstrap(o) => {
                let what = match &o {
                    BootstrapOrder::Init => "bootstrap: init".to_string(),
                    BootstrapOrder::Clone { upstream } => {
                        format!("bootstrap: clone {}", upstream.instance)
                    }
                };
                let reason = match &o {
                    BootstrapOrder::Init => "BootstrapInit",
                    BootstrapOrder::Clone { .. } => "BootstrapClone",
                };
                (
                    reason,
                    vec![("/bootstrap", json(serde_json::to_string(&o)))],
                    what,
                )
            }
            StartOrder::Role(o) => (
                reason_of(&o),
                vec![("/role", json(serde_json::to_string(&o)))],
                role(&o),
            ),
            StartOrder::Rejoin(o) => {
                let release = FenceOrder {
                    kind: None,
                    release: true,
                };
                (
                    "Rejoin",
                    vec![
                        ("/fence", json(serde_json::to_string(&release))),
                        ("/role", json(serde_json::to_string(&o))),
                    ],
                    format!("release the fence, {}", role(&o)),
                )
            }
        };
        let outcome = Outcome::default();
        drop(self.orders(ordinal, reason, steps, what, outcome.clone()));
        outcome
    }

    /// Publishes an Event per order given since the last call.
    pub async fn publish_events(&mut self, db: &Database) {
        for (reason, pod, note) in std::mem::take(&mut self.events) {
            let pod = super::pod_ref(&self.namespace, &pod);
            super::publish(&self.recorder, db, reason, note, Some(pod)).await;
        }
    }

    /// Labels the pods whose role label differs from what the routes want (patches only on a
    /// change: an idle database costs no writes).
    fn relabel(&mut self) {
        for (ordinal, role) in self.wanted.clone() {
            let Some(pod) = self.observed.pods.get_mut(&ordinal) else {
                continue;
            };
            let want = role.map(|r| r.as_str().to_string());
            if pod.role == want {
                continue;
            }
            pod.role = want.clone();
            let api: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
            let name = pod.name.clone();
            let patch = serde_json::json!({"metadata": {"labels": {LABEL_ROLE: want}}});
            tokio::spawn(async move {
                if let Err(e) = api
                    .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(pod = %name, "labelling {LABEL_ROLE}: {e}");
                }
            });
        }
    }
}

impl Runtime for PodRuntime {
    type Error = PodRuntimeError;

    /// Only while `spec.failover.lease` is on: turned off, the leases go on for the pods still
    /// in lease mode until they are rolled, and the core decides as without them.
    fn leases(&self) -> Option<LeaseLedger> {
        self.leases
            .as_ref()
            .filter(|_| self.lease_on)
            .and_then(|l| l.ledger())
    }

    /// With `spec.failover.lease`: every pod with an address is leased to (started the first
    /// time), naming the writer `memory` gives.
    async fn lease_to(&mut self, db: &Database, detection_timeout_ms: u64, memory: &Memory) {
        self.lease_on = db.spec.failover.lease;
        if self.leases.is_none() && !self.lease_on {
            return;
        }
        let lease_ms = lease_length_ms(detection_timeout_ms);
        let managers = self
            .observed
            .pods
            .iter()
            .filter(|(_, p)| p.ip.is_some())
            .map(|(o, _)| (*o, self.dial(*o, INSTANCE_MANAGER_PORT)))
            .collect();
        if memory.primary.is_some() {
            self.initialised = None;
        }
        let plan = super::lease::Plan::of(memory, managers, self.initialised);
        let leases = self.leases.get_or_insert_with(|| {
            super::lease::Leases::start(&self.name, self.token.clone(), lease_ms)
        });
        leases.plan(plan, lease_ms).await;
    }

    /// Its pod is Ready (its kubelet's readiness probe passed): `NAME-rw`'s EndpointSlice
    /// lists only Ready pods, so a primary whose pod is not Ready is out of reach of clients
    /// (a pod recreated moments ago: until its startup probe, every 10 s, passed).
    fn routable(&self, ordinal: u32) -> bool {
        self.observed.pods.get(&ordinal).is_some_and(|p| p.ready)
    }

    /// The DNS name: a replica told to follow it dials it from inside its pod.
    fn server_endpoint(&self, db: &Database, ordinal: u32) -> Endpoint {
        self.endpoint(db, ordinal)
    }

    fn server_dial(&self, _db: &Database, ordinal: u32) -> Dial {
        self.dial(ordinal, self.engine_port)
    }

    fn manager_address(&self, _db: &Database, ordinal: u32) -> Dial {
        self.dial(ordinal, INSTANCE_MANAGER_PORT)
    }

    /// The Service's cluster IP, verified as its DNS name.
    fn rw_address(&self, _db: &Database) -> Dial {
        let name = format!("{}-rw.{}.svc", self.name, self.namespace);
        Dial {
            host: self.observed.rw_ip.clone().unwrap_or_else(|| name.clone()),
            port: self.engine_port,
            trust: self.trust(name),
        }
    }

    fn api_token(&self) -> Result<String, Self::Error> {
        Ok(self.token.clone())
    }

    fn monitor_password(&self) -> Option<String> {
        self.monitor.clone()
    }

    fn load_state(&self) -> Result<Option<FailoverState>, Self::Error> {
        match &self.loaded {
            None => Ok(None),
            Some(v) => {
                serde_json::from_value(v.clone())
                    .map(Some)
                    .map_err(|e| PodRuntimeError::State {
                        name: self.name.clone(),
                        message: e.to_string(),
                    })
            }
        }
    }

    /// The loop writes the state to the status after each tick.
    /// The state goes into the status with the rest of the round's status ([`super::round`]),
    /// and before the actions by [`Runtime::persist_state`].
    fn save_state(&mut self, _state: &FailoverState) -> Result<(), Self::Error> {
        Ok(())
    }

    /// `status.failover.state` replaced, exactly: a patch computed against the Database as
    /// read now, applied to that version only (retried on a conflict).
    async fn persist_state(&mut self, state: &FailoverState) -> Result<(), Self::Error> {
        let api: Api<Database> = Api::namespaced(self.client.clone(), &self.namespace);
        let failed = |message: String| PodRuntimeError::Persist {
            name: self.name.clone(),
            message,
        };
        let db = api
            .get(&self.name)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let value = super::without_nulls(serde_json::json!(state));
        crate::conditions::write_status(&api, &db, |s| {
            let mut failover = s
                .failover
                .clone()
                .filter(serde_json::Value::is_object)
                .unwrap_or_else(|| serde_json::json!({}));
            failover["state"] = value.clone();
            s.failover = Some(failover);
        })
        .await
        .map(|_| ())
        .map_err(|e| failed(e.to_string()))
    }

    fn recorded_primary(&self) -> Option<u32> {
        self.recorded
    }

    fn record_primary(&mut self, ordinal: u32, _name: &str) -> Result<(), Self::Error> {
        self.recorded = Some(ordinal);
        Ok(())
    }

    fn known_ordinals(&self) -> Vec<u32> {
        let mut known: Vec<u32> = self
            .observed
            .pods
            .keys()
            .chain(self.observed.pvcs.iter())
            .copied()
            .collect();
        known.sort_unstable();
        known.dedup();
        known
    }

    /// Not seen from outside a pod: a pod that exists answers for it through its manager.
    fn server_pid(&self, _db: &Database, _ordinal: u32) -> Option<u32> {
        None
    }

    fn holds_data(&self, ordinal: u32) -> bool {
        self.observed.pvcs.contains(&ordinal)
    }

    fn data_lost(&self, _ordinal: u32, _instances: u32) -> bool {
        false
    }

    fn data_location(&self, ordinal: u32) -> String {
        format!("PVC data-{}-{ordinal}", self.name)
    }

    async fn final_checkpoint(&self, _ordinal: u32) -> Option<FinalCheckpoint> {
        None
    }

    fn held(&self, _ordinal: u32) -> Option<String> {
        None
    }

    fn set_rw(&mut self, _db: &Database, rw: Option<u32>) {
        for (ordinal, role) in self.wanted.iter_mut() {
            if *role == Some(Role::Primary) && Some(*ordinal) != rw {
                *role = None;
            }
        }
        if let Some(rw) = rw {
            self.wanted.insert(rw, Some(Role::Primary));
        }
        self.relabel();
    }

    fn set_ro(&mut self, _db: &Database, ro: &[u32]) {
        let ordinals: Vec<u32> = self.observed.pods.keys().copied().collect();
        for ordinal in ordinals {
            let entry = self.wanted.entry(ordinal).or_insert(None);
            if *entry == Some(Role::Primary) {
                continue;
            }
            *entry = ro.contains(&ordinal).then_some(Role::Replica);
        }
        self.relabel();
    }

    /// Connections end with the server (a fence stops it or makes it read-only).
    fn cut(&mut self, _db: &Database, _ordinal: u32) -> usize {
        0
    }

    fn unroute(&mut self, _db: &Database, ordinal: u32) {
        self.wanted.insert(ordinal, None);
        self.relabel();
    }

    fn fence(
        &mut self,
        _db: &Database,
        ordinal: u32,
        method: FenceMethod,
        _manager: Option<u32>,
    ) -> Option<Work> {
        let kind = match method {
            FenceMethod::Kill => FenceKind::Kill,
            FenceMethod::Shutdown => FenceKind::Shutdown,
            FenceMethod::ReadOnly => FenceKind::ReadOnly,
        };
        let body = serde_json::to_string(&FenceOrder {
            kind: Some(kind),
            release: false,
        })
        .ok()?;
        Some(self.order(
            ordinal,
            "Fence",
            "/fence",
            body,
            format!("fence ({})", kind.as_str()),
        ))
    }

    fn set_read_only(&mut self, _db: &Database, ordinal: u32, on: bool) -> Option<Work> {
        let order = FenceOrder {
            kind: on.then_some(FenceKind::ReadOnly),
            release: !on,
        };
        let body = serde_json::to_string(&order).ok()?;
        let (reason, what) = if on {
            ("FenceReadOnly", "fence (read-only)")
        } else {
            ("Unfence", "release the fence")
        };
        Some(self.order(ordinal, reason, "/fence", body, what.into()))
    }

    /// The managed manager rebuilds by itself on `POST /rebuild` (stop, move aside within the
    /// volume, clone): sent once per rebuild, again when the primary changed.
    fn stop_for_rebuild(&mut self, ordinal: u32, _manager: Option<u32>) {
        let Some(primary) = self.recorded else { return };
        if self
            .rebuilt
            .get(&ordinal)
            .is_some_and(|m| m.primary == primary)
        {
            return;
        }
        let upstream = self.endpoint_of(primary);
        if let Ok(body) = serde_json::to_string(&RebuildOrder { upstream }) {
            let work = self.order(
                ordinal,
                "Rebuild",
                "/rebuild",
                body,
                format!("rebuild from {}-{primary}", self.name),
            );
            self.rebuilt.insert(
                ordinal,
                RebuildMark {
                    primary,
                    order: work.task,
                    answered_before: false,
                },
            );
        }
    }

    fn rebuilds_in_place(&self) -> bool {
        true
    }

    fn move_data_aside(&mut self, ordinal: u32) -> Result<String, Self::Error> {
        Ok(format!(
            "{} (moved aside within the volume by its manager)",
            self.data_location(ordinal)
        ))
    }

    /// Pods are created by the StatefulSet controller from `spec.instances`.
    fn create(&mut self, _db: &Database, _ordinal: u32) {}

    /// Pods are removed by the StatefulSet controller; their PVCs are kept.
    fn remove(&mut self, _db: &Database, _ordinal: u32) {}
}
