//! One pod's worker: sets up its volumes, runs its init containers in order and then its
//! containers as real processes, restarts them per `restartPolicy` with the kubelet's back-off
//! (first restart at once, then 10 s doubling to 5 minutes, reset after 10 minutes of running),
//! runs their probes, patches `pods/status`, and terminates the pod as a kubelet does: SIGTERM,
//! the grace period, SIGKILL, then deletes the pod object with `gracePeriodSeconds=0`.
//!
//! Departures: no preStop/postStart hooks, no resource limits (no cgroups), no
//! `readOnlyRootFilesystem`, no capability changes (a root container keeps the stand-in's),
//! no service-link or `KUBERNETES_*` environment, `envFrom` not supported, no image users
//! (an unset `runAsUser`/`runAsGroup` is 0).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, HostIP, Pod, PodCondition, PodIP, PodStatus, Secret,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{DeleteParams, Patch, PatchParams, Preconditions};
use tokio::sync::mpsc;

use crate::Shared;
use crate::launch::{self, Launch, Mount, signal_container, signal_group};
use crate::probe::{self, Kind};
use crate::volume::{self, Prepared};

/// Orders for a pod worker.
#[derive(Debug)]
pub(crate) enum Order {
    /// Terminate with this grace period; `delete`: remove the pod object afterwards.
    Terminate { grace: Duration, delete: bool },
    /// SIGKILL one container's processes (fault drill).
    KillContainer(String),
    /// SIGSTOP every process and stop handling the pod (the stop-node drill).
    Freeze,
    /// SIGCONT every process and handle the pod again (the node thawed).
    Thaw,
}

/// Process groups of a pod's running containers, by container name (read by the stand-in's
/// `Drop` to leave no process behind).
/// With each its mount namespace (see [`signal_container`]).
pub(crate) type Groups = Arc<Mutex<HashMap<String, (i32, Option<Arc<launch::Namespace>>)>>>;

const MAX_BACKOFF: Duration = Duration::from_secs(300);
const BACKOFF_RESET: Duration = Duration::from_secs(600);

struct Ctr {
    spec: Container,
    init: bool,
    child: Option<tokio::process::Child>,
    pgid: i32,
    /// The container's mount namespace: every process it started.
    mnt: Option<Arc<launch::Namespace>>,
    launch: Option<Launch>,
    state: ContainerState,
    last: Option<ContainerState>,
    restarts: i32,
    started: Option<Instant>,
    backoff: Option<Duration>,
    next_start: Instant,
    /// Finished for good (init container succeeded; or no restart under the policy).
    done: bool,
    ready: bool,
    /// The startup probe has succeeded (or there is none): readiness and liveness run.
    startup_done: bool,
    successes: u32,
    failures: u32,
    generation: u64,
    probes: Vec<tokio::task::JoinHandle<()>>,
    kill_at: Option<Instant>,
}

fn waiting(reason: &str, message: Option<String>) -> ContainerState {
    ContainerState {
        waiting: Some(ContainerStateWaiting {
            reason: Some(reason.into()),
            message,
        }),
        ..ContainerState::default()
    }
}

/// The probe of this kind a container declares.
fn probe_of(spec: &Container, kind: Kind) -> Option<&k8s_openapi::api::core::v1::Probe> {
    match kind {
        Kind::Startup => spec.startup_probe.as_ref(),
        Kind::Readiness => spec.readiness_probe.as_ref(),
        Kind::Liveness => spec.liveness_probe.as_ref(),
    }
}

fn now() -> Time {
    Time(Timestamp::now())
}

impl Ctr {
    fn new(spec: Container, init: bool) -> Ctr {
        let reason = if init {
            "PodInitializing"
        } else {
            "ContainerCreating"
        };
        Ctr {
            spec,
            init,
            child: None,
            pgid: 0,
            mnt: None,
            launch: None,
            state: waiting(reason, None),
            last: None,
            restarts: 0,
            started: None,
            backoff: None,
            next_start: Instant::now(),
            done: false,
            ready: false,
            startup_done: false,
            successes: 0,
            failures: 0,
            generation: 0,
            probes: Vec::new(),
            kill_at: None,
        }
    }

    /// The state of this container that just exited with `code`.
    fn terminated(&self, code: i32) -> ContainerState {
        ContainerState {
            terminated: Some(ContainerStateTerminated {
                exit_code: code,
                reason: Some(if code == 0 { "Completed" } else { "Error" }.into()),
                started_at: self
                    .state
                    .running
                    .as_ref()
                    .and_then(|r| r.started_at.clone()),
                finished_at: Some(now()),
                container_id: Some(format!("standin://{}", self.pgid)),
                ..ContainerStateTerminated::default()
            }),
            ..ContainerState::default()
        }
    }

    fn status(&self) -> ContainerStatus {
        ContainerStatus {
            name: self.spec.name.clone(),
            image: self.spec.image.clone().unwrap_or_default(),
            image_id: String::new(),
            container_id: (self.pgid > 0).then(|| format!("standin://{}", self.pgid)),
            ready: self.ready,
            started: Some(self.child.is_some() && self.startup_done),
            restart_count: self.restarts,
            state: Some(self.state.clone()),
            last_state: self.last.clone(),
            ..ContainerStatus::default()
        }
    }
}

/// The pod's worker task.
pub(crate) struct Worker {
    shared: Arc<Shared>,
    pod: Pod,
    node: String,
    host_ip: Ipv4Addr,
    ip: Ipv4Addr,
    dir: PathBuf,
    groups: Groups,
    ctrs: Vec<Ctr>,
    volumes: BTreeMap<String, Prepared>,
    tmpfs: Vec<PathBuf>,
    transitions: HashMap<String, (String, Time)>,
    last_patch: Option<serde_json::Value>,
    failed: bool,
    /// The pod's network namespace exists (see `net`).
    network_ready: bool,
    sandbox_ready: bool,
    probe_tx: mpsc::UnboundedSender<(usize, u64, Kind, bool)>,
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn run(
        shared: Arc<Shared>,
        pod: Pod,
        node: String,
        host_ip: Ipv4Addr,
        ip: Ipv4Addr,
        pvc_uids: BTreeMap<String, String>,
        groups: Groups,
        mut orders: mpsc::UnboundedReceiver<Order>,
    ) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let dir = shared.config.root.join("pods").join(&uid);
        let spec = pod.spec.clone().unwrap_or_default();
        let mut ctrs: Vec<Ctr> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| Ctr::new(c.clone(), true))
            .collect();
        ctrs.extend(spec.containers.iter().map(|c| Ctr::new(c.clone(), false)));
        let (probe_tx, mut probe_rx) = mpsc::unbounded_channel();
        let mut w = Worker {
            shared,
            pod,
            node,
            host_ip,
            ip,
            dir,
            groups,
            ctrs,
            volumes: BTreeMap::new(),
            tmpfs: Vec::new(),
            transitions: HashMap::new(),
            last_patch: None,
            failed: false,
            network_ready: false,
            sandbox_ready: false,
            probe_tx,
        };
        let _ = std::fs::create_dir_all(w.dir.join("logs"));
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                order = orders.recv() => match order {
                    Some(Order::Terminate { grace, delete }) => {
                        w.terminate(grace, delete).await;
                        return;
                    }
                    Some(Order::KillContainer(name)) => {
                        if let Some(c) = w.ctrs.iter().find(|c| c.spec.name == name) {
                            signal_container(c.pgid, c.mnt.as_deref(), libc::SIGKILL);
                        }
                    }
                    Some(Order::Freeze) => {
                        for c in &w.ctrs {
                            signal_container(c.pgid, c.mnt.as_deref(), libc::SIGSTOP);
                        }
                        // A stopped node's kubelet does nothing more; the processes stay
                        // stopped until the node thaws or the stand-in stops (its Drop kills
                        // them). Orders given meanwhile (a deletion) are not seen, as by a
                        // frozen kubelet; the next sync after the thaw gives them again.
                        loop {
                            match orders.recv().await {
                                None => return,
                                Some(Order::Thaw) => break,
                                Some(_) => {}
                            }
                        }
                        // The whole node resumes at once: every container's processes
                        // continue, as a VM or a cgroup freezer resumes them.
                        for c in &w.ctrs {
                            signal_container(c.pgid, c.mnt.as_deref(), libc::SIGCONT);
                        }
                    }
                    Some(Order::Thaw) => {}
                    None => {
                        w.terminate(Duration::ZERO, false).await;
                        return;
                    }
                },
                Some((i, generation, kind, ok)) = probe_rx.recv() => w.probe_result(i, generation, kind, ok),
                _ = tick.tick() => {
                    if !w.sandbox_ready {
                        w.prepare(&pvc_uids).await;
                    }
                    if w.sandbox_ready {
                        w.step().await;
                    }
                    w.patch_status().await;
                }
            }
        }
    }

    async fn prepare(&mut self, pvc_uids: &BTreeMap<String, String>) {
        if !self.network_ready {
            let (subnet, k) = (self.shared.config.subnet, self.ip.octets()[3]);
            match tokio::task::spawn_blocking(move || crate::net::add_pod(subnet, k)).await {
                Ok(Ok(())) => self.network_ready = true,
                Ok(Err(e)) => return self.waiting_all(format!("pod network: {e}")),
                Err(e) => return self.waiting_all(format!("pod network: {e}")),
            }
        }
        let result = volume::prepare(
            &self.shared.client,
            &self.shared.config.root,
            &self.pod,
            &self.dir,
            pvc_uids,
            &mut self.tmpfs,
        )
        .await;
        self.shared
            .tmpfs
            .lock()
            .unwrap()
            .extend(self.tmpfs.iter().cloned());
        match result {
            Ok(volumes) => {
                self.volumes = volumes;
                self.sandbox_ready = true;
            }
            Err(message) => self.waiting_all(message),
        }
    }

    /// Every container waits to be created, for this reason.
    fn waiting_all(&mut self, message: String) {
        for c in &mut self.ctrs {
            let reason = if c.init {
                "PodInitializing"
            } else {
                "ContainerCreating"
            };
            c.state = waiting(reason, Some(message.clone()));
        }
    }

    fn probe_result(&mut self, i: usize, generation: u64, kind: Kind, ok: bool) {
        let grace = self.grace();
        let c = &mut self.ctrs[i];
        if c.generation != generation || c.child.is_none() {
            return;
        }
        let Some(probe) = probe_of(&c.spec, kind) else {
            return;
        };
        let t = probe::timing(probe);
        if ok {
            c.successes += 1;
            c.failures = 0;
        } else {
            c.failures += 1;
            c.successes = 0;
        }
        match kind {
            Kind::Startup => {
                if ok {
                    c.startup_done = true;
                    c.successes = 0;
                    self.spawn_probes(i, &[Kind::Readiness, Kind::Liveness]);
                } else if c.failures >= t.failure_threshold && c.kill_at.is_none() {
                    tracing::info!(container = %c.spec.name, "startup probe failed: killing");
                    signal_group(c.pgid, libc::SIGTERM);
                    c.kill_at = Some(Instant::now() + grace);
                }
            }
            Kind::Readiness => {
                if c.successes >= t.success_threshold {
                    c.ready = true;
                } else if c.failures >= t.failure_threshold {
                    c.ready = false;
                }
            }
            Kind::Liveness => {
                if c.failures >= t.failure_threshold && c.kill_at.is_none() {
                    tracing::info!(container = %c.spec.name, "liveness probe failed: killing");
                    signal_group(c.pgid, libc::SIGTERM);
                    c.kill_at = Some(Instant::now() + grace);
                }
            }
        }
    }

    fn grace(&self) -> Duration {
        Duration::from_secs(
            self.pod
                .spec
                .as_ref()
                .and_then(|s| s.termination_grace_period_seconds)
                .unwrap_or(30)
                .max(0) as u64,
        )
    }

    fn restart_policy(&self) -> String {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into())
    }

    /// Reaps exited containers, applies the restart policy, starts what is due.
    async fn step(&mut self) {
        let policy = self.restart_policy();
        let now_i = Instant::now();
        for c in &mut self.ctrs {
            if let Some(at) = c.kill_at
                && now_i >= at
            {
                signal_container(c.pgid, c.mnt.as_deref(), libc::SIGKILL);
            }
            let Some(child) = c.child.as_mut() else {
                continue;
            };
            let Ok(Some(status)) = child.try_wait() else {
                continue;
            };
            use std::os::unix::process::ExitStatusExt;
            let code = status
                .code()
                .unwrap_or_else(|| 128 + status.signal().unwrap_or(0));
            // Whatever the main process left in its session goes with it.
            signal_container(c.pgid, c.mnt.as_deref(), libc::SIGKILL);
            self.groups.lock().unwrap().remove(&c.spec.name);
            for p in c.probes.drain(..) {
                p.abort();
            }
            let terminated = c.terminated(code);
            c.child = None;
            c.ready = false;
            c.kill_at = None;
            let ran = c.started.map(|s| s.elapsed()).unwrap_or_default();
            let restart = if c.init {
                code != 0 && policy != "Never"
            } else {
                match policy.as_str() {
                    "Never" => false,
                    "OnFailure" => code != 0,
                    _ => true,
                }
            };
            if c.init && code == 0 {
                c.done = true;
            }
            if c.init && code != 0 && policy == "Never" {
                self.failed = true;
            }
            if !restart {
                c.done = true;
                c.state = terminated;
                continue;
            }
            if ran >= BACKOFF_RESET {
                c.backoff = None;
            }
            let delay = c.backoff.unwrap_or(Duration::ZERO);
            c.backoff = Some(if delay.is_zero() {
                Duration::from_secs(10)
            } else {
                (delay * 2).min(MAX_BACKOFF)
            });
            c.next_start = now_i + delay;
            c.restarts += 1;
            c.last = Some(terminated.clone());
            c.state = if delay.is_zero() {
                terminated
            } else {
                waiting(
                    "CrashLoopBackOff",
                    Some(format!(
                        "back-off {}s restarting failed container={} pod={}",
                        delay.as_secs(),
                        c.spec.name,
                        self.pod.metadata.name.clone().unwrap_or_default()
                    )),
                )
            };
        }
        if self.failed {
            return;
        }
        // Init containers one at a time, in order; then every container.
        let next_init = self.ctrs.iter().position(|c| c.init && !c.done);
        let due: Vec<usize> = match next_init {
            Some(i) => vec![i],
            None => (0..self.ctrs.len())
                .filter(|&i| !self.ctrs[i].init && !self.ctrs[i].done)
                .collect(),
        };
        for i in due {
            let c = &self.ctrs[i];
            if c.child.is_none() && Instant::now() >= c.next_start {
                self.start(i).await;
            }
        }
    }

    fn image_of(&self, container: &Container) -> Option<crate::Image> {
        let image = container.image.clone().unwrap_or_default();
        self.shared
            .config
            .images
            .iter()
            .find(|m| image.starts_with(&m.prefix))
            .cloned()
    }

    async fn env_of(&self, container: &Container) -> Result<Vec<(String, String)>, String> {
        let ns = self
            .pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let mut env = Vec::new();
        for var in container.env.iter().flatten() {
            let value = if let Some(v) = &var.value {
                v.clone()
            } else if let Some(from) = &var.value_from {
                if let Some(f) = &from.field_ref {
                    match f.field_path.as_str() {
                        "metadata.name" => self.pod.metadata.name.clone().unwrap_or_default(),
                        "metadata.namespace" => ns.clone(),
                        "metadata.uid" => self.pod.metadata.uid.clone().unwrap_or_default(),
                        "spec.nodeName" => self.node.clone(),
                        "status.podIP" => self.ip.to_string(),
                        "status.hostIP" => self.host_ip.to_string(),
                        other => {
                            return Err(format!(
                                "env {}: fieldRef {other} not supported",
                                var.name
                            ));
                        }
                    }
                } else if let Some(s) = &from.secret_key_ref {
                    let secrets: Api<Secret> = Api::namespaced(self.shared.client.clone(), &ns);
                    let secret = secrets
                        .get_opt(&s.name)
                        .await
                        .map_err(|e| format!("secret {:?}: {e}", s.name))?;
                    match secret
                        .and_then(|x| x.data)
                        .and_then(|d| d.get(&s.key).cloned())
                    {
                        Some(ByteString(v)) => String::from_utf8_lossy(&v).into_owned(),
                        None if s.optional == Some(true) => continue,
                        None => return Err(format!("secret {:?} has no key {:?}", s.name, s.key)),
                    }
                } else if let Some(c) = &from.config_map_key_ref {
                    let cms: Api<ConfigMap> = Api::namespaced(self.shared.client.clone(), &ns);
                    let cm = cms
                        .get_opt(&c.name)
                        .await
                        .map_err(|e| format!("configmap {:?}: {e}", c.name))?;
                    match cm.and_then(|x| x.data).and_then(|d| d.get(&c.key).cloned()) {
                        Some(v) => v,
                        None if c.optional == Some(true) => continue,
                        None => {
                            return Err(format!("configmap {:?} has no key {:?}", c.name, c.key));
                        }
                    }
                } else {
                    return Err(format!("env {}: valueFrom not supported", var.name));
                }
            } else {
                String::new()
            };
            env.push((var.name.clone(), value));
        }
        Ok(env)
    }

    /// The process of container `i`: image mapping, environment, user, mounts.
    async fn launch_of(&self, i: usize) -> Result<Launch, (String, String)> {
        let c = &self.ctrs[i].spec;
        let image = self.image_of(c).ok_or_else(|| {
            (
                "ErrImagePull".to_string(),
                format!(
                    "image {:?} is not mapped by the stand-in",
                    c.image.clone().unwrap_or_default()
                ),
            )
        })?;
        let pod_spec = self.pod.spec.clone().unwrap_or_default();
        let pod_sc = pod_spec.security_context.clone().unwrap_or_default();
        let sc = c.security_context.clone().unwrap_or_default();
        let uid = sc.run_as_user.or(pod_sc.run_as_user).unwrap_or(0);
        let gid = sc.run_as_group.or(pod_sc.run_as_group).unwrap_or(0);
        let non_root = sc.run_as_non_root.or(pod_sc.run_as_non_root) == Some(true);
        if non_root && uid == 0 {
            return Err((
                "CreateContainerConfigError".into(),
                "container has runAsNonRoot and image will run as root".into(),
            ));
        }
        let mut groups: Vec<u32> = pod_sc.fs_group.into_iter().map(|g| g as u32).collect();
        groups.extend(
            pod_sc
                .supplemental_groups
                .iter()
                .flatten()
                .map(|g| *g as u32),
        );
        let mut path: Vec<String> = image.path.iter().map(|p| p.display().to_string()).collect();
        path.extend(
            [
                "/usr/local/sbin",
                "/usr/local/bin",
                "/usr/sbin",
                "/usr/bin",
                "/sbin",
                "/bin",
            ]
            .map(String::from),
        );
        let hostname = pod_spec
            .hostname
            .clone()
            .or(self.pod.metadata.name.clone())
            .unwrap_or_default();
        let mut env = vec![
            ("PATH".to_string(), path.join(":")),
            ("HOSTNAME".to_string(), hostname),
            ("HOME".to_string(), "/".to_string()),
        ];
        env.extend(
            self.env_of(c)
                .await
                .map_err(|m| ("CreateContainerConfigError".to_string(), m))?,
        );
        let mut mounts = vec![Mount {
            source: self.dir.join("hosts"),
            target: "/etc/hosts".into(),
            read_only: false,
        }];
        for (source, target) in &image.files {
            mounts.push(Mount {
                source: source.clone(),
                target: target.clone(),
                read_only: true,
            });
        }
        for vm in c.volume_mounts.iter().flatten() {
            let Some(v) = self.volumes.get(&vm.name) else {
                continue;
            };
            let mut source = v.host.clone();
            if let Some(sub) = vm.sub_path.as_deref().filter(|s| !s.is_empty()) {
                source = source.join(sub);
                if !source.exists() {
                    let _ = std::fs::create_dir_all(&source);
                }
            }
            mounts.push(Mount {
                source,
                target: vm.mount_path.clone().into(),
                read_only: v.read_only || vm.read_only == Some(true),
            });
        }
        let mut argv = c
            .command
            .clone()
            .unwrap_or_else(|| image.entrypoint.clone());
        argv.extend(c.args.clone().unwrap_or_default());
        Ok(Launch {
            argv,
            env,
            working_dir: c.working_dir.clone().map(PathBuf::from),
            uid: uid as u32,
            gid: gid as u32,
            groups,
            mounts,
            netns: crate::net::pod_namespace_path(self.shared.config.subnet, self.ip.octets()[3]),
            standin: self.shared.config.subnet,
        })
    }

    async fn start(&mut self, i: usize) {
        let hosts = self.dir.join("hosts");
        if !hosts.exists() {
            let _ = std::fs::write(&hosts, crate::hosts::base(&self.pod, self.ip));
        }
        let launch = match self.launch_of(i).await {
            Ok(l) => l,
            Err((reason, message)) => {
                let c = &mut self.ctrs[i];
                c.state = waiting(&reason, Some(message));
                c.next_start = Instant::now() + Duration::from_secs(10);
                return;
            }
        };
        let name = self.ctrs[i].spec.name.clone();
        let log = match &self.shared.config.logs {
            Some(kept) => {
                let meta = &self.pod.metadata;
                let dir = kept.join(format!(
                    "{}_{}_{}",
                    meta.namespace.as_deref().unwrap_or_default(),
                    meta.name.as_deref().unwrap_or_default(),
                    meta.uid.as_deref().unwrap_or_default()
                ));
                let _ = std::fs::create_dir_all(&dir);
                dir.join(format!("{name}.log"))
            }
            None => self.dir.join("logs").join(format!("{name}.log")),
        };
        let spawned = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .and_then(|f| Ok((f.try_clone()?, f)))
            .and_then(|(out, err)| launch.spawn(Stdio::from(out), Stdio::from(err)));
        let c = &mut self.ctrs[i];
        match spawned {
            Ok(child) => {
                c.pgid = child.id().map_or(0, |p| p as i32);
                c.mnt = launch::Namespace::of(c.pgid);
                self.groups
                    .lock()
                    .unwrap()
                    .insert(name.clone(), (c.pgid, c.mnt.clone()));
                c.child = Some(child);
                c.started = Some(Instant::now());
                c.generation += 1;
                c.successes = 0;
                c.failures = 0;
                c.ready = c.spec.readiness_probe.is_none();
                c.state = ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(now()),
                    }),
                    ..ContainerState::default()
                };
                c.launch = Some(launch);
                c.startup_done = c.spec.startup_probe.is_none();
                if !c.init {
                    if c.startup_done {
                        self.spawn_probes(i, &[Kind::Readiness, Kind::Liveness]);
                    } else {
                        self.spawn_probes(i, &[Kind::Startup]);
                    }
                }
            }
            Err(e) => {
                c.state = waiting("RunContainerError", Some(e.to_string()));
                c.next_start = Instant::now() + Duration::from_secs(10);
            }
        }
    }

    /// Starts the probe loops of these kinds that container `i` declares. A startup probe's
    /// loop ends at its first success.
    fn spawn_probes(&mut self, i: usize, kinds: &[Kind]) {
        let (ip, node_ip) = (self.ip, self.host_ip);
        let tx = self.probe_tx.clone();
        let c = &mut self.ctrs[i];
        let Some(launch) = c.launch.clone() else {
            return;
        };
        for &kind in kinds {
            let Some(probe) = probe_of(&c.spec, kind).cloned() else {
                continue;
            };
            let (tx, spec, launch, generation) =
                (tx.clone(), c.spec.clone(), launch.clone(), c.generation);
            c.probes.push(tokio::spawn(async move {
                let t = probe::timing(&probe);
                tokio::time::sleep(t.initial_delay).await;
                loop {
                    let ok = probe::run_once(&probe, &spec, ip, node_ip, &launch).await;
                    if tx.send((i, generation, kind, ok)).is_err() || (kind == Kind::Startup && ok)
                    {
                        return;
                    }
                    tokio::time::sleep(t.period).await;
                }
            }));
        }
    }

    fn condition(&mut self, type_: &str, ok: bool) -> PodCondition {
        let status = if ok { "True" } else { "False" }.to_string();
        let entry = self
            .transitions
            .entry(type_.to_string())
            .or_insert_with(|| (status.clone(), now()));
        if entry.0 != status {
            *entry = (status.clone(), now());
        }
        PodCondition {
            type_: type_.into(),
            status,
            last_transition_time: Some(entry.1.clone()),
            ..PodCondition::default()
        }
    }

    fn status(&mut self) -> PodStatus {
        let inits_done = self.ctrs.iter().filter(|c| c.init).all(|c| c.done);
        let mains: Vec<&Ctr> = self.ctrs.iter().filter(|c| !c.init).collect();
        let all_ready = mains.iter().all(|c| c.ready);
        let phase = if self.failed {
            "Failed"
        } else if !inits_done {
            "Pending"
        } else if mains.iter().all(|c| c.done) {
            let ok = mains.iter().all(|c| {
                c.state
                    .terminated
                    .as_ref()
                    .is_some_and(|t| t.exit_code == 0)
            });
            if ok { "Succeeded" } else { "Failed" }
        } else if mains.iter().any(|c| c.started.is_some()) {
            "Running"
        } else {
            "Pending"
        };
        let sandbox = self.sandbox_ready;
        let conditions = vec![
            self.condition("PodReadyToStartContainers", sandbox),
            self.condition("Initialized", inits_done),
            self.condition("ContainersReady", all_ready && phase == "Running"),
            self.condition("Ready", all_ready && phase == "Running"),
            self.condition("PodScheduled", true),
        ];
        let init_statuses: Vec<ContainerStatus> = self
            .ctrs
            .iter()
            .filter(|c| c.init)
            .map(Ctr::status)
            .collect();
        PodStatus {
            phase: Some(phase.into()),
            conditions: Some(conditions),
            host_ip: Some(self.host_ip.to_string()),
            host_ips: Some(vec![HostIP {
                ip: self.host_ip.to_string(),
            }]),
            pod_ip: Some(self.ip.to_string()),
            pod_ips: Some(vec![PodIP {
                ip: self.ip.to_string(),
            }]),
            start_time: Some(
                self.pod
                    .status
                    .as_ref()
                    .and_then(|s| s.start_time.clone())
                    .unwrap_or_else(now),
            ),
            init_container_statuses: (!init_statuses.is_empty()).then_some(init_statuses),
            container_statuses: Some(
                self.ctrs
                    .iter()
                    .filter(|c| !c.init)
                    .map(Ctr::status)
                    .collect(),
            ),
            qos_class: self.pod.status.as_ref().and_then(|s| s.qos_class.clone()),
            ..PodStatus::default()
        }
    }

    /// The pods API of this pod's namespace, and its name.
    fn api(&self) -> (Api<Pod>, String) {
        let meta = &self.pod.metadata;
        let ns = meta.namespace.as_deref().unwrap_or("default");
        (
            Api::namespaced(self.shared.client.clone(), ns),
            meta.name.clone().unwrap_or_default(),
        )
    }

    async fn patch_status(&mut self) {
        let status = self.status();
        if self
            .pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.clone())
            .is_none()
        {
            let mut st = self.pod.status.clone().unwrap_or_default();
            st.start_time = status.start_time.clone();
            self.pod.status = Some(st);
        }
        let body = serde_json::json!({ "status": status });
        if self.last_patch.as_ref() == Some(&body) {
            return;
        }
        let (pods, name) = self.api();
        match pods
            .patch_status(&name, &PatchParams::default(), &Patch::Strategic(&body))
            .await
        {
            Ok(_) => self.last_patch = Some(body),
            Err(e) => tracing::debug!(pod = %name, "status patch: {e}"),
        }
    }

    /// SIGTERM, wait the grace period, SIGKILL; tear the volumes down; then, if asked, delete
    /// the pod object with grace 0 (with its UID as precondition, as a kubelet does).
    async fn terminate(&mut self, grace: Duration, delete: bool) {
        for c in &mut self.ctrs {
            for p in c.probes.drain(..) {
                p.abort();
            }
            if c.child.is_some() {
                signal_container(c.pgid, c.mnt.as_deref(), libc::SIGCONT);
                signal_group(c.pgid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        for c in &mut self.ctrs {
            let Some(child) = c.child.as_mut() else {
                continue;
            };
            let left = deadline.saturating_duration_since(Instant::now());
            let code = match tokio::time::timeout(left, child.wait()).await {
                Ok(Ok(s)) => s.code().unwrap_or(137),
                _ => {
                    signal_container(c.pgid, c.mnt.as_deref(), libc::SIGKILL);
                    let _ = child.wait().await;
                    137
                }
            };
            signal_container(c.pgid, c.mnt.as_deref(), libc::SIGKILL);
            self.groups.lock().unwrap().remove(&c.spec.name);
            c.state = c.terminated(code);
            c.child = None;
            c.ready = false;
        }
        for dir in self.tmpfs.drain(..) {
            volume::unmount(&dir);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        if self.network_ready {
            let (subnet, k) = (self.shared.config.subnet, self.ip.octets()[3]);
            let _ = tokio::task::spawn_blocking(move || crate::net::remove_pod(subnet, k)).await;
            self.network_ready = false;
        }
        if delete {
            let (pods, name) = self.api();
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: self.pod.metadata.uid.clone(),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            if let Err(e) = pods.delete(&name, &params).await {
                tracing::warn!(pod = %name, "final delete: {e}");
            }
        }
    }
}
