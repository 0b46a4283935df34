//! A test-only kubelet stand-in for the real control plane of `shared/kube/start.sh`: it keeps
//! three Nodes Ready with heartbeat Leases, binds pending pods (the scheduler's part, honouring
//! required pod anti-affinity), gives each claim a PV keyed by the claim's UID, runs each pod's
//! containers as real processes, each pod in a network namespace of its own with its own
//! address, patches `pods/status` as a kubelet does and deletes pods as a kubelet does. The
//! real StatefulSet, PV and EndpointSlice controllers do the rest. Never a dependency of the
//! shipped binary.
//!
//! It must not, and does not: read Database objects, label pods, call anything in a pod but its
//! declared probes, shorten a period (probe periods, back-off, lease renewal are a kubelet's or
//! the pod's own), keep a process after its pod is gone, reuse data across PVC UIDs, or give a
//! pod an API token (projected volumes are not mounted).
//!
//! Departures from a kubelet, besides those each module lists:
//! - it watches by listing every second (no watch, no informer cache);
//! - addresses: not `127.0.0.K` as first planned, because the API server refuses loopback
//!   addresses in EndpointSlices ("may not be in the loopback range"), so the real
//!   EndpointSlice controller could never publish such a pod. The stand-in takes
//!   `198.18.S.0/24` (RFC 2544's benchmarking range, never routed), where `S` is the
//!   stand-in's [`Config::subnet`] (so stand-ins of parallel tests never share an address):
//!   node K is `198.18.S.K` (K from 1, at most 8), the host's own address (the default source
//!   of the host's connections) `.9`, pods get `.10`–`.199` and Services `.200`–`.254`; pod addresses
//!   are handed out round-robin as the CNI host-local IPAM plugin does (a recreated pod does
//!   not get the address its predecessor just freed). A CNI bridge plugin also sends a
//!   gratuitous ARP for a new pod's address; the stand-in does not, so an address reused after
//!   the range wrapped around is reached only once the host's stale ARP entry expires;
//! - network: a CNI-bridge-like network the stand-in makes itself: a switch namespace
//!   (`stator-standin-S`) with a bridge, a veth pair to the host (`sth-S` on the host), and a
//!   network namespace per pod (`stator-standin-S-K`) on the bridge, so each pod has its own
//!   ports and `127.0.0.1`; node and Service addresses are on the host end, where the
//!   stand-in's probes and Service forwarders run, and the host reaches every pod IP through
//!   the veth. All of it is deleted when the stand-in stops (and, left by a killed stand-in of
//!   the same `S`, when the next one starts); see `net`;
//! - images are not pulled: [`Image`] maps an image name prefix to installed binaries (the
//!   Stator image → the built `stator` at `/usr/local/bin/stator`, `postgres:15` → Debian's
//!   PostgreSQL 15, `mariadb:` → Debian's MariaDB, `busybox` → the host's tools), and the
//!   container's root file system is the host's, with the pod's volumes mounted over it and the
//!   image's own `/etc/passwd` and `/etc/group` (`postgres` and `mysql` are uid/gid 999 as in
//!   the official images; missing mount points are created on the host and removed when the
//!   last stand-in of the process stops); `readOnlyRootFilesystem` is not enforced and the
//!   image's `ENV` is not set (only `PATH`, `HOSTNAME`, `HOME` and the container's `env`);
//! - processes: no PID namespace and no cgroup; a container's processes are the ones in its
//!   own mount namespace (so a server its main process started in a session of its own is
//!   stopped, killed and frozen with it, as in a container); `SIGTERM` goes to the main
//!   process's process group;
//! - `/etc/hosts` of a pod lists every pod with a `hostname` and `subdomain` (the headless
//!   names), ready or not, and every forwarded Service (there is no cluster DNS).
//!
//! # Layout
//! - `node`: Node registration and heartbeats;
//! - `schedule`: choosing a node (pure);
//! - `volume`: PVs and the pod volumes on the host;
//! - `net`: the pods' network: the bridge, the veth pair to the host, a namespace per pod;
//! - `launch`: one process in its pod's network namespace and its own mount namespace, as its
//!   user, and signalling a container's processes;
//! - `probe`: exec, httpGet and tcpSocket probes, and startup probes before them;
//! - `http`: one HTTP(S) request into a pod (the probes', and tests' calls to instance
//!   managers);
//! - `pod`: a pod's worker (containers, restarts, status, termination);
//! - `service`: an address per Service on the host end of the veth, forwarding to its ready
//!   endpoints;
//! - `hosts`: the pods' `/etc/hosts`;
//! - `harness`: the control plane, an address subnet, the `stator` binary and bounded waits
//!   for a test;
//! - `observe`: what a test reads of pods (readiness, addresses, a Secret's key).

pub mod harness;
mod hosts;
pub mod http;
mod launch;
mod net;
mod node;
pub mod observe;
mod pod;
mod probe;
mod schedule;
mod service;
mod volume;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, PersistentVolume, PersistentVolumeClaim, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use serde_json::json;
use tokio::sync::mpsc;

pub use volume::owner;

/// What can go wrong talking to the API server or the host.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}: {1}")]
    Kube(&'static str, #[source] kube::Error),
    #[error("kubeconfig {0}: {1}")]
    Kubeconfig(PathBuf, String),
    #[error("object: {0}")]
    Json(#[source] serde_json::Error),
    #[error("{0}: {1}")]
    Io(PathBuf, #[source] std::io::Error),
}

/// An image name prefix and what runs for it on this machine.
#[derive(Clone, Debug)]
pub struct Image {
    /// Matches `image` by prefix, e.g. `postgres:15`.
    pub prefix: String,
    /// Directories put first on the container's `PATH`.
    pub path: Vec<PathBuf>,
    /// The image's entrypoint, used when a container has no `command`.
    pub entrypoint: Vec<String>,
    /// Host files shown at a path inside the container (read-only), as the image holds them.
    pub files: Vec<(PathBuf, PathBuf)>,
    /// The image's own accounts besides root: `/etc/passwd` and `/etc/group` inside the
    /// container list exactly these (as the image's do), each with a group of its name and id.
    pub users: Vec<ImageUser>,
}

/// An account of an image (`postgres` and `mysql` are uid and gid 999 in the official images).
#[derive(Clone, Debug)]
pub struct ImageUser {
    pub name: String,
    pub id: u32,
    pub home: PathBuf,
}

impl ImageUser {
    fn new(name: &str, id: u32, home: &str) -> ImageUser {
        ImageUser {
            name: name.into(),
            id,
            home: home.into(),
        }
    }
}

impl Image {
    /// Writes the image's `/etc/passwd` and `/etc/group` under `dir` and shows them in its
    /// containers (images without accounts of their own see the host's).
    fn write_accounts(&mut self, dir: &Path) -> std::io::Result<()> {
        if self.users.is_empty() {
            return Ok(());
        }
        std::fs::create_dir_all(dir)?;
        let mut passwd = String::from("root:x:0:0:root:/root:/bin/sh\n");
        let mut group = String::from("root:x:0:\n");
        for u in &self.users {
            passwd.push_str(&format!(
                "{}:x:{}:{}::{}:/bin/sh\n",
                u.name,
                u.id,
                u.id,
                u.home.display()
            ));
            group.push_str(&format!("{}:x:{}:\n", u.name, u.id));
        }
        passwd.push_str("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n");
        group.push_str("nogroup:x:65534:\n");
        for (name, content) in [("passwd", passwd), ("group", group)] {
            let path = dir.join(name);
            std::fs::write(&path, content)?;
            self.files.push((path, PathBuf::from("/etc").join(name)));
        }
        Ok(())
    }
}

/// The stand-in's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub kubeconfig: PathBuf,
    /// Where PV directories and pod directories live (the test's temp dir).
    pub root: PathBuf,
    /// The third octet of every address the stand-in hands out.
    pub subnet: u8,
    pub images: Vec<Image>,
    pub nodes: usize,
    /// Where container logs go instead of the pod's directory, kept after the pod is gone
    /// (`NAMESPACE_POD_UID/CONTAINER.log`, as a kubelet's `/var/log/pods`, which a kubelet
    /// removes with the pod): set from `STATOR_STANDIN_LOGS` by the harness, to read what the
    /// instance managers said after a failed test.
    pub logs: Option<PathBuf>,
}

impl Config {
    /// Three nodes and the images Stator's manifests use: the Stator image (its binary at
    /// `/usr/local/bin/stator` is `stator_binary`), `postgres:15` (Debian's PostgreSQL 15),
    /// `mariadb:` (Debian's MariaDB) and `busybox` (the host's shell tools).
    pub fn new(kubeconfig: &Path, root: &Path, subnet: u8, stator_binary: &Path) -> Config {
        let stator_dir = stator_binary
            .parent()
            .unwrap_or(Path::new("/"))
            .to_path_buf();
        Config {
            kubeconfig: kubeconfig.to_path_buf(),
            root: root.to_path_buf(),
            subnet,
            nodes: 3,
            logs: None,
            images: vec![
                Image {
                    prefix: "ghcr.io/stator-dev/stator".into(),
                    path: vec![stator_dir],
                    entrypoint: vec!["/usr/local/bin/stator".into()],
                    files: vec![(stator_binary.to_path_buf(), "/usr/local/bin/stator".into())],
                    users: vec![],
                },
                Image {
                    prefix: "postgres:15".into(),
                    path: vec!["/usr/lib/postgresql/15/bin".into()],
                    entrypoint: vec!["postgres".into()],
                    files: vec![],
                    users: vec![ImageUser::new("postgres", 999, "/var/lib/postgresql")],
                },
                Image {
                    prefix: "mariadb:".into(),
                    path: vec!["/usr/sbin".into()],
                    entrypoint: vec!["mariadbd".into()],
                    files: vec![],
                    users: vec![ImageUser::new("mysql", 999, "/var/lib/mysql")],
                },
                Image {
                    prefix: "busybox".into(),
                    path: vec![],
                    entrypoint: vec!["sh".into()],
                    files: vec![],
                    users: vec![],
                },
            ],
        }
    }
}

struct PodHandle {
    node: usize,
    ip: Ipv4Addr,
    orders: mpsc::UnboundedSender<pod::Order>,
    groups: pod::Groups,
    terminating: bool,
    task: tokio::task::JoinHandle<()>,
}

pub(crate) struct Shared {
    client: kube::Client,
    config: Config,
    nodes: Vec<Arc<node::NodeHandle>>,
    pods: Mutex<HashMap<String, PodHandle>>,
    /// The last pod address octet handed out: the next pod gets the next free one after it
    /// ([`next_pod_octet`]).
    last_pod_octet: Mutex<Option<u8>>,
    /// tmpfs mounts, unmounted when the stand-in stops (pods unmount theirs when torn down).
    tmpfs: Mutex<Vec<PathBuf>>,
    services: service::Forwards,
}

/// A running stand-in. Stop it with [`StandIn::shutdown`]; dropping it kills every process it
/// started, unmounts its tmpfs mounts, removes the mount points it created and deletes its
/// network namespace and veth pair.
pub struct StandIn {
    shared: Arc<Shared>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Dropped last, after `Drop::drop` has killed the processes and closed the forwarders.
    _network: net::Network,
}

/// A client for the kubeconfig at `path`.
pub async fn client(path: &Path) -> Result<kube::Client, Error> {
    let kubeconfig = Kubeconfig::read_from(path)
        .map_err(|e| Error::Kubeconfig(path.to_path_buf(), e.to_string()))?;
    let client_config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| Error::Kubeconfig(path.to_path_buf(), e.to_string()))?;
    kube::Client::try_from(client_config).map_err(|e| Error::Kube("client", e))
}

impl StandIn {
    /// Registers the nodes and starts the heartbeat and the sync loop.
    pub async fn start(mut config: Config) -> Result<StandIn, Error> {
        let client = client(&config.kubeconfig).await?;
        std::fs::create_dir_all(config.root.join("pods"))
            .map_err(|e| Error::Io(config.root.clone(), e))?;
        for (i, image) in config.images.iter_mut().enumerate() {
            let dir = config.root.join("images").join(i.to_string());
            image
                .write_accounts(&dir)
                .map_err(|e| Error::Io(dir.clone(), e))?;
        }
        // Node addresses end below the host's own.
        config.nodes = config.nodes.clamp(1, net::MAX_NODES);
        let network = net::Network::create(config.subnet, config.nodes)
            .map_err(|e| Error::Io(net::namespace_path(config.subnet), e))?;
        let nodes: Vec<Arc<node::NodeHandle>> = (0..config.nodes)
            .map(|i| {
                Arc::new(node::NodeHandle {
                    name: format!("standin-{i}"),
                    ip: address(config.subnet, i as u8 + 1),
                    stopped: false.into(),
                })
            })
            .collect();
        for n in &nodes {
            node::register(&client, n).await?;
        }
        let shared = Arc::new(Shared {
            client,
            config,
            nodes,
            pods: Mutex::new(HashMap::new()),
            last_pod_octet: Mutex::new(None),
            tmpfs: Mutex::new(Vec::new()),
            services: Mutex::new(HashMap::new()),
        });
        let mut tasks = Vec::new();
        for n in &shared.nodes {
            tasks.push(tokio::spawn(node::heartbeat(
                shared.client.clone(),
                n.clone(),
            )));
        }
        let s = shared.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                if let Err(e) = sync(&s).await {
                    tracing::warn!("kubelet stand-in sync: {e}");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }));
        Ok(StandIn {
            shared,
            tasks,
            _network: network,
        })
    }

    /// The stand-in's API client (the kubeconfig's credentials).
    pub fn client(&self) -> kube::Client {
        self.shared.client.clone()
    }

    /// The host directory of the PV of the claim with this UID.
    pub fn pv_dir(&self, pvc_uid: &str) -> PathBuf {
        volume::pv_dir(&self.shared.config.root, pvc_uid)
    }

    /// The host directory of a running pod (its volumes are under `volumes/NAME`).
    pub fn pod_dir(&self, pod_uid: &str) -> PathBuf {
        self.shared.config.root.join("pods").join(pod_uid)
    }

    /// The address (on the host end of the stand-in's veth) forwarding to the Service's ready
    /// endpoints, once it has one.
    pub fn service_address(&self, namespace: &str, name: &str) -> Option<Ipv4Addr> {
        let services = self.shared.services.lock().unwrap();
        services
            .get(&(namespace.to_string(), name.to_string()))
            .map(|f| f.ip)
    }

    /// The names of the stand-in's nodes.
    pub fn node_names(&self) -> Vec<String> {
        self.shared.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Fault drill: SIGKILL a container's processes; the pod's worker restarts it per its
    /// restart policy, with back-off.
    pub fn kill_container(&self, pod_uid: &str, container: &str) -> bool {
        let pods = self.shared.pods.lock().unwrap();
        pods.get(pod_uid).is_some_and(|h| {
            h.orders
                .send(pod::Order::KillContainer(container.into()))
                .is_ok()
        })
    }

    /// Fault drill: [`StandIn::kill_container`] of pod `name` in `namespace`, by name; false if
    /// the stand-in does not run that pod.
    pub async fn kill_container_of(
        &self,
        namespace: &str,
        name: &str,
        container: &str,
    ) -> Result<bool, Error> {
        let pods: Api<Pod> = Api::namespaced(self.shared.client.clone(), namespace);
        let pod = pods
            .get_opt(name)
            .await
            .map_err(|e| Error::Kube("get pod", e))?;
        let uid = pod.and_then(|p| p.metadata.uid).unwrap_or_default();
        Ok(self.kill_container(&uid, container))
    }

    /// Fault drill: delete a pod through the API with its own grace period, as `kubectl delete
    /// pod` does; the stand-in then terminates it like a kubelet.
    pub async fn delete_pod(&self, namespace: &str, name: &str) -> Result<(), Error> {
        let pods: Api<Pod> = Api::namespaced(self.shared.client.clone(), namespace);
        pods.delete(name, &DeleteParams::default())
            .await
            .map_err(|e| Error::Kube("delete pod", e))?;
        Ok(())
    }

    /// The host's own address on the stand-in's network (`198.18.S.9`): the source of every
    /// connection from the host that binds none (the test, an operator it runs, the Service
    /// forwarders); the kubelet's probes come from their node's address instead.
    pub fn host_address(&self) -> Ipv4Addr {
        address(self.shared.config.subnet, net::HOST)
    }

    /// Fault drill: a partition between port `port` of the pod at `pod_ip` and the host's own
    /// address ([`StandIn::host_address`]): inside the pod's network namespace, every TCP
    /// segment from that port to that address is dropped (`ip rule … blackhole`), so a
    /// connection from the host to the port gets no answer, while the kubelet's probes, the
    /// pod's other ports and the other pods still pass. `cut: false` heals it.
    pub fn cut_from_host(&self, pod_ip: Ipv4Addr, port: u16, cut: bool) -> Result<(), Error> {
        let subnet = self.shared.config.subnet;
        let [_, _, s, k] = pod_ip.octets();
        if s != subnet || !net::PODS.contains(&k) {
            return Err(Error::Io(
                net::namespace_path(subnet),
                std::io::Error::other(format!("{pod_ip} is no pod address of this stand-in")),
            ));
        }
        net::cut_host(subnet, k, port, cut)
            .map_err(|e| Error::Io(net::pod_namespace_path(subnet, k), e))
    }

    /// Node `name` and its index.
    fn node(&self, name: &str) -> Option<(usize, &Arc<node::NodeHandle>)> {
        self.shared
            .nodes
            .iter()
            .enumerate()
            .find(|(_, n)| n.name == name)
    }

    /// Fault drill: stop a node: its pods' processes are SIGSTOPped, its Lease is no longer
    /// renewed and the stand-in no longer handles its pods.
    pub fn stop_node(&self, name: &str) {
        let Some((i, n)) = self.node(name) else {
            return;
        };
        n.stopped.store(true, Ordering::SeqCst);
        for h in self.shared.pods.lock().unwrap().values() {
            if h.node == i {
                let _ = h.orders.send(pod::Order::Freeze);
            }
        }
    }

    /// Fault drill: thaw a node [`StandIn::stop_node`] stopped: its pods' processes continue
    /// (all at once, as a resumed VM's), its Lease is renewed again at the next heartbeat and
    /// the stand-in handles its pods again (a pod deleted meanwhile is terminated then).
    pub fn start_node(&self, name: &str) {
        let Some((i, n)) = self.node(name) else {
            return;
        };
        for h in self.shared.pods.lock().unwrap().values() {
            if h.node == i {
                let _ = h.orders.send(pod::Order::Thaw);
            }
        }
        n.stopped.store(false, Ordering::SeqCst);
    }

    /// Stops the stand-in: every pod's processes are stopped (SIGTERM, then SIGKILL after a
    /// few seconds; the pods stay in the API, as when a kubelet dies) and the host is cleaned.
    pub async fn shutdown(mut self) {
        for t in self.tasks.drain(..) {
            t.abort();
        }
        let handles: Vec<PodHandle> = self
            .shared
            .pods
            .lock()
            .unwrap()
            .drain()
            .map(|(_, h)| h)
            .collect();
        for h in &handles {
            let _ = h.orders.send(pod::Order::Terminate {
                grace: Duration::from_secs(5),
                delete: false,
            });
        }
        for h in handles {
            let _ = tokio::time::timeout(Duration::from_secs(30), h.task).await;
            kill_groups(&h.groups);
        }
    }
}

fn kill_groups(groups: &pod::Groups) {
    for (pgid, mnt) in groups.lock().unwrap().values() {
        launch::signal_container(*pgid, mnt.as_deref(), libc::SIGCONT);
        launch::signal_container(*pgid, mnt.as_deref(), libc::SIGKILL);
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        for h in self.shared.pods.lock().unwrap().values() {
            h.task.abort();
            kill_groups(&h.groups);
        }
        self.shared.services.lock().unwrap().clear();
        for dir in self.shared.tmpfs.lock().unwrap().drain(..) {
            volume::unmount(&dir);
        }
        launch::release_mount_points(self.shared.config.subnet);
    }
}

/// Address `k` of the stand-in's subnet `S`: `198.18.S.k`.
pub fn address(subnet: u8, k: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, subnet, k)
}

/// The address octet of the next pod: the first free one after `last` (the last handed out),
/// wrapping around [`net::PODS`]; `None` when every one is in use. Round-robin, as the CNI
/// host-local IPAM plugin allocates: a pod created again right after its predecessor was
/// removed gets another address than the one just freed. Taking the lowest free one instead
/// gave it that very address, which the host's neighbour (ARP) table still mapped to the
/// deleted pod's MAC for 15-45 s (a REACHABLE entry is not re-resolved before it goes stale),
/// so everything the host sent to the new pod (the operator's orders, the probes) was dropped
/// meanwhile.
fn next_pod_octet(last: Option<u8>, used: &BTreeSet<u8>) -> Option<u8> {
    let (first, end) = (*net::PODS.start(), *net::PODS.end());
    let start = match last {
        Some(k) if k >= first && k < end => k + 1,
        _ => first,
    };
    (start..=end)
        .chain(first..start)
        .find(|k| !used.contains(k))
}

fn pod_key(pod: &Pod) -> String {
    pod.metadata.uid.clone().unwrap_or_default()
}

fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Every object of a kind, in all namespaces.
async fn list<K>(
    client: &kube::Client,
    params: &ListParams,
    what: &'static str,
) -> Result<Vec<K>, Error>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned,
{
    Ok(Api::<K>::all(client.clone())
        .list(params)
        .await
        .map_err(|e| Error::Kube(what, e))?
        .items)
}

/// One pass: schedule, give claims PVs, start, terminate and forget pods.
async fn sync(shared: &Arc<Shared>) -> Result<(), Error> {
    let client = &shared.client;
    let all = ListParams::default();
    let mut pods: Vec<Pod> = list(client, &all, "list pods").await?;
    let ours = ListParams::default().labels("stator.dev/kubelet-standin=true");
    let nodes: Vec<Node> = list(client, &ours, "list nodes").await?;
    let pvcs: Vec<PersistentVolumeClaim> = list(client, &all, "list claims").await?;
    let pvs: Vec<PersistentVolume> = list(client, &all, "list volumes").await?;
    let services: Vec<Service> = list(client, &all, "list services").await?;
    let slices: Vec<EndpointSlice> = list(client, &all, "list endpointslices").await?;
    service::sync(&shared.services, shared.config.subnet, &services, &slices).await;
    let claim = |ns: &str, name: &str| {
        pvcs.iter().find(|c| {
            c.metadata.namespace.as_deref() == Some(ns) && c.metadata.name.as_deref() == Some(name)
        })
    };
    let pv_of = |c: &PersistentVolumeClaim| {
        let uid = c.metadata.uid.clone().unwrap_or_default();
        pvs.iter().find(|pv| {
            pv.spec
                .as_ref()
                .and_then(|s| s.claim_ref.as_ref())
                .and_then(|r| r.uid.clone())
                == Some(uid.clone())
        })
    };
    let node_index = |name: &str| shared.nodes.iter().position(|n| n.name == name);

    // Schedule.
    for i in 0..pods.len() {
        let pod = &pods[i];
        let scheduler = pod.spec.as_ref().and_then(|s| s.scheduler_name.clone());
        if node_name(pod).is_some()
            || pod.metadata.deletion_timestamp.is_some()
            || finished(pod)
            || scheduler
                .as_deref()
                .is_some_and(|s| s != "default-scheduler")
        {
            continue;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let pinned = volume::claim_names(pod)
            .iter()
            .filter_map(|c| claim(&ns, c))
            .filter_map(pv_of)
            .find_map(volume::pv_node);
        let placed: Vec<Pod> = pods
            .iter()
            .filter(|p| node_name(p).is_some() && !finished(p))
            .cloned()
            .collect();
        let cluster = schedule::Cluster {
            nodes: &nodes,
            placed: &placed,
        };
        let schedulable = |n: &str| node_index(n).is_some_and(|i| !shared.nodes[i].is_stopped());
        let Some(target) = schedule::choose_node(pod, &cluster, &schedulable, pinned.as_deref())
        else {
            continue;
        };
        let name = pod.metadata.name.clone().unwrap_or_default();
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": target},
        });
        let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        match api
            .create_subresource::<_, serde_json::Value>(
                "binding",
                &name,
                &PostParams::default(),
                &binding,
            )
            .await
        {
            Ok(_) => {
                let mut spec = pods[i].spec.clone().unwrap_or_default();
                spec.node_name = Some(target);
                pods[i].spec = Some(spec);
            }
            Err(e) => tracing::debug!(pod = %name, "bind: {e}"),
        }
    }

    // Our pods: claims, start, terminate.
    let live: BTreeSet<String> = pods.iter().map(pod_key).collect();
    for pod in &pods {
        let Some(ni) = node_name(pod).and_then(node_index) else {
            continue;
        };
        if shared.nodes[ni].is_stopped() {
            continue;
        }
        let uid = pod_key(pod);
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        if pod.metadata.deletion_timestamp.is_some() {
            let grace = Duration::from_secs(
                pod.metadata
                    .deletion_grace_period_seconds
                    .unwrap_or(30)
                    .max(0) as u64,
            );
            let running = {
                let mut pods_rt = shared.pods.lock().unwrap();
                if let Some(h) = pods_rt.get_mut(&uid)
                    && !h.terminating
                {
                    h.terminating = true;
                    let _ = h.orders.send(pod::Order::Terminate {
                        grace,
                        delete: true,
                    });
                }
                pods_rt.contains_key(&uid)
            };
            if !running {
                // Nothing of it runs here: remove it at once, as a kubelet does.
                let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
                let name = pod.metadata.name.clone().unwrap_or_default();
                let params = DeleteParams {
                    grace_period_seconds: Some(0),
                    preconditions: Some(kube::api::Preconditions {
                        uid: Some(uid.clone()),
                        resource_version: None,
                    }),
                    ..DeleteParams::default()
                };
                let _ = api.delete(&name, &params).await;
            }
            continue;
        }
        if shared.pods.lock().unwrap().contains_key(&uid) || finished(pod) {
            continue;
        }
        // Every claim needs a PV, and must be Bound, before the pod starts.
        let mut pvc_uids = BTreeMap::new();
        let mut all_bound = true;
        for name in volume::claim_names(pod) {
            let Some(c) = claim(&ns, &name) else {
                all_bound = false;
                continue;
            };
            if pv_of(c).is_none() {
                volume::create_pv(client, &shared.config.root, c, &shared.nodes[ni].name).await?;
            }
            let bound = c.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Bound");
            all_bound &= bound;
            pvc_uids.insert(name, c.metadata.uid.clone().unwrap_or_default());
        }
        if !all_bound {
            continue;
        }
        let mut pods_rt = shared.pods.lock().unwrap();
        let used: BTreeSet<u8> = pods_rt.values().map(|h| h.ip.octets()[3]).collect();
        let mut last = shared.last_pod_octet.lock().unwrap();
        let Some(k) = next_pod_octet(*last, &used) else {
            continue;
        };
        *last = Some(k);
        drop(last);
        let ip = address(shared.config.subnet, k);
        let (tx, rx) = mpsc::unbounded_channel();
        let groups = pod::Groups::default();
        let task = tokio::spawn(pod::Worker::run(
            shared.clone(),
            pod.clone(),
            shared.nodes[ni].name.clone(),
            shared.nodes[ni].ip,
            ip,
            pvc_uids,
            groups.clone(),
            rx,
        ));
        pods_rt.insert(
            uid,
            PodHandle {
                node: ni,
                ip,
                orders: tx,
                groups,
                terminating: false,
                task,
            },
        );
    }

    // Pods gone from the API (or whose worker ended): no process may outlive them.
    {
        let mut pods_rt = shared.pods.lock().unwrap();
        let gone: Vec<String> = pods_rt
            .iter()
            .filter(|(uid, h)| h.task.is_finished() || (!live.contains(*uid) && !h.terminating))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in gone {
            if let Some(h) = pods_rt.get_mut(&uid) {
                if h.task.is_finished() {
                    kill_groups(&h.groups);
                    pods_rt.remove(&uid);
                } else if !shared.nodes[h.node].is_stopped() {
                    h.terminating = true;
                    let _ = h.orders.send(pod::Order::Terminate {
                        grace: Duration::ZERO,
                        delete: false,
                    });
                }
            }
        }
    }

    hosts::write_all(shared, &pods);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pod_gets_the_next_free_address_after_the_last_not_the_one_just_freed() {
        let used = |ks: &[u8]| ks.iter().copied().collect::<BTreeSet<u8>>();
        // The first pods: .10, then on.
        assert_eq!(next_pod_octet(None, &used(&[])), Some(10));
        assert_eq!(next_pod_octet(Some(12), &used(&[10, 11, 12])), Some(13));
        // pg-0 at .10 deleted and created again: not .10, which the host may still map to the
        // old pod's MAC.
        assert_eq!(next_pod_octet(Some(12), &used(&[11, 12])), Some(13));
        // In-use addresses are skipped; at the end of the range it wraps around.
        assert_eq!(next_pod_octet(Some(12), &used(&[13, 14])), Some(15));
        assert_eq!(next_pod_octet(Some(199), &used(&[10, 11])), Some(12));
        assert_eq!(next_pod_octet(Some(198), &used(&[199])), Some(10));
        // Every one in use: none.
        let all: BTreeSet<u8> = net::PODS.collect();
        assert_eq!(next_pod_octet(Some(50), &all), None);
        let but_50: BTreeSet<u8> = net::PODS.filter(|k| *k != 50).collect();
        assert_eq!(next_pod_octet(Some(50), &but_50), Some(50));
    }
}
