//! The real-cluster suite: runs only when `STATOR_E2E_KUBECONFIG` (a kubeconfig with the rights
//! to install the operator: cluster-admin) and `STATOR_E2E_IMAGE` (the Stator image built from
//! `deploy/Dockerfile`, pullable by the cluster's nodes) are set; otherwise each test prints why
//! it did nothing and passes. See the README ("The real-cluster suite").
//!
//! Against that cluster: `stator install` (the library behind it) with the image set to
//! `STATOR_E2E_IMAGE` is applied server-side and the operator's Deployment rolls out; then, for
//! PostgreSQL 15 and MariaDB 10.11 each in a fresh namespace `stator-e2e-ENGINE-XXXXXX`, a
//! 3-instance synchronous `Database` reaches Ready with a primary and two ready replicas and
//! `NAME-rw`'s EndpointSlice holds the primary; the consistency checker's writer and watcher
//! run through `NAME-rw`; the primary's pod is deleted → a new primary, and the old pod back
//! as a ready replica, with the checker's verdict held (no moment with two writable instances,
//! no acknowledged write lost); the `Database` deleted → its StatefulSet, Services and
//! credentials gone, its PVCs kept. The namespace is deleted at the end whatever happened
//! (the install is left in place: it is cluster-wide, and may be shared).
//!
//! # How the test reaches the database
//! A test process outside the cluster cannot reach pod IPs or Service cluster IPs. It reaches
//! them through the API server's `pods/portforward`, with `kubectl port-forward` subprocesses
//! (no extra crate features: kube's port-forwarding needs its `ws` feature and a websocket
//! stack, which this suite alone would pull into every build of the operator's tests). Each is
//! held behind a local listener the test owns:
//! - `NAME-rw`: each new connection goes to the pod that is the ready endpoint of `NAME-rw`'s
//!   EndpointSlice at that moment, as kube-proxy would send it (a plain
//!   `kubectl port-forward svc/NAME-rw` picks one pod once and keeps it, even after a
//!   failover);
//! - each pod `NAME-N`: its own listener, for the checker's watcher.
//!
//! A forward is started again when its pod was recreated (another UID) or its kubectl exited.
//! Connections fail while there is no ready primary, which is the outage the checker measures.
//! `kubectl` is `STATOR_E2E_KUBECTL` or the one on PATH.
//!
//! Waits poll; their bound (`STATOR_E2E_DEADLINE_SECONDS`, default 900) only stops a hung test:
//! nothing is timed. Never run against this repository's CI: there is no real cluster there.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use stator_api::names::LABEL_DATABASE;
use stator_api::{Database, Engine, Phase, Role};
use stator_engine::tls::CaTrust;
use stator_kubelet_standin::harness::wait_for;
use support::target::{KubeTarget, Reach, finish_writing, start_writing};
use tokio::io::AsyncBufReadExt;

/// What the suite needs from the environment, or why it does not run.
struct E2e {
    kubeconfig: PathBuf,
    image: String,
    kubectl: String,
    deadline: Duration,
}

impl E2e {
    fn from_env() -> Result<E2e, String> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let (Some(kubeconfig), Some(image)) =
            (var("STATOR_E2E_KUBECONFIG"), var("STATOR_E2E_IMAGE"))
        else {
            return Err(
                "STATOR_E2E_KUBECONFIG and STATOR_E2E_IMAGE are not both set: the real-cluster suite did not run (see the README, \"The real-cluster suite\")"
                    .into(),
            );
        };
        let kubeconfig = PathBuf::from(kubeconfig);
        if !kubeconfig.is_file() {
            return Err(format!(
                "STATOR_E2E_KUBECONFIG: {} is not a file",
                kubeconfig.display()
            ));
        }
        let deadline = match var("STATOR_E2E_DEADLINE_SECONDS") {
            Some(s) => Duration::from_secs(s.parse().map_err(|_| {
                format!("STATOR_E2E_DEADLINE_SECONDS: {s:?} is not a number of seconds")
            })?),
            None => Duration::from_secs(900),
        };
        Ok(E2e {
            kubeconfig,
            image,
            kubectl: var("STATOR_E2E_KUBECTL").unwrap_or_else(|| "kubectl".into()),
            deadline,
        })
    }

    fn kubectl_command(&self) -> Command {
        let mut command = Command::new(&self.kubectl);
        command.arg("--kubeconfig").arg(&self.kubeconfig);
        command
    }

    /// `kubectl ARGS` (with `input` on stdin), which must succeed; its stdout.
    fn kubectl(&self, args: &[&str], input: Option<&str>) -> String {
        use std::io::Write;
        let mut child = self
            .kubectl_command()
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", self.kubectl));
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(text.as_bytes()).expect("write to kubectl");
        }
        let out = child.wait_with_output().expect("kubectl's output");
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

/// Applies `stator install` with the image `STATOR_E2E_IMAGE` (once per test process) and
/// waits for the CRD and the operator's rollout.
fn install(e2e: &E2e) {
    static INSTALLED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut installed = INSTALLED.lock().unwrap_or_else(|e| e.into_inner());
    if *installed {
        return;
    }
    use stator_kube::install::{DEFAULT_NAMESPACE, InstallOptions, OPERATOR_NAME};
    let objects = stator_kube::install::install(&InstallOptions {
        namespace: DEFAULT_NAMESPACE.into(),
        image: e2e.image.clone(),
    })
    .unwrap_or_else(|e| panic!("STATOR_E2E_IMAGE: {e}"));
    let stream = objects.to_yaml_stream().expect("the install as YAML");
    e2e.kubectl(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "--field-manager",
            "stator-e2e",
            "-f",
            "-",
        ],
        Some(&stream),
    );
    e2e.kubectl(
        &[
            "wait",
            "--for",
            "condition=established",
            "crd/databases.stator.dev",
            "--timeout=120s",
        ],
        None,
    );
    let timeout = format!("--timeout={}s", e2e.deadline.as_secs());
    e2e.kubectl(
        &[
            "rollout",
            "status",
            &format!("deployment/{OPERATOR_NAME}"),
            "-n",
            DEFAULT_NAMESPACE,
            &timeout,
        ],
        None,
    );
    *installed = true;
}

/// A fresh namespace, deleted when dropped (a failed assertion included).
struct Namespace<'a> {
    e2e: &'a E2e,
    name: String,
}

impl<'a> Namespace<'a> {
    fn create(e2e: &'a E2e, engine: Engine) -> Namespace<'a> {
        let suffix: String = {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos() ^ std::process::id())
                .unwrap_or_default();
            format!("{nanos:08x}")
        };
        let name = format!("stator-e2e-{}-{}", engine.as_str(), &suffix[..6]);
        e2e.kubectl(&["create", "namespace", &name], None);
        Namespace { e2e, name }
    }
}

impl Drop for Namespace<'_> {
    fn drop(&mut self) {
        println!("deleting the namespace {}", self.name);
        let _ = self
            .e2e
            .kubectl_command()
            .args([
                "delete",
                "namespace",
                &self.name,
                "--ignore-not-found",
                "--wait=false",
            ])
            .status();
    }
}

/// The `kubectl port-forward` subprocesses of one namespace, one per pod, started on demand.
struct Forwards {
    kubectl: String,
    kubeconfig: PathBuf,
    namespace: String,
    pods: Api<Pod>,
    /// The server's port in the pods.
    remote: u16,
    live: tokio::sync::Mutex<HashMap<String, Forward>>,
}

struct Forward {
    uid: String,
    port: u16,
    child: tokio::process::Child,
}

impl Forwards {
    fn new(e2e: &E2e, namespace: &str, admin: &kube::Client, remote: u16) -> Forwards {
        Forwards {
            kubectl: e2e.kubectl.clone(),
            kubeconfig: e2e.kubeconfig.clone(),
            namespace: namespace.into(),
            pods: Api::namespaced(admin.clone(), namespace),
            remote,
            live: tokio::sync::Mutex::new(HashMap::new()),
        }
    }

    /// The local port forwarded to `pod`'s server: the running forward when it was started for
    /// this pod (same UID) and its kubectl still runs, else a new one.
    async fn port_of(&self, pod: &str) -> Result<u16, String> {
        let found = self
            .pods
            .get(pod)
            .await
            .map_err(|e| format!("pod {pod}: {e}"))?;
        let uid = found.metadata.uid.clone().unwrap_or_default();
        let phase = found.status.and_then(|s| s.phase).unwrap_or_default();
        if phase != "Running" {
            return Err(format!("pod {pod} is {phase:?}, not Running"));
        }
        let mut live = self.live.lock().await;
        if let Some(mut old) = live.remove(pod) {
            if old.uid == uid && matches!(old.child.try_wait(), Ok(None)) {
                let port = old.port;
                live.insert(pod.to_string(), old);
                return Ok(port);
            }
            let _ = old.child.kill().await;
        }
        let mut command = tokio::process::Command::new(&self.kubectl);
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args([
                "-n",
                &self.namespace,
                "port-forward",
                "--address",
                "127.0.0.1",
            ])
            .arg(format!("pod/{pod}"))
            .arg(format!(":{}", self.remote))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .map_err(|e| format!("kubectl port-forward: {e}"))?;
        let stdout = child.stdout.take().expect("kubectl's stdout");
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        // "Forwarding from 127.0.0.1:PORT -> REMOTE"
        let port = tokio::time::timeout(Duration::from_secs(30), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(port) = line
                    .strip_prefix("Forwarding from 127.0.0.1:")
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|p| p.parse::<u16>().ok())
                {
                    return Some(port);
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(port) = port else {
            let _ = child.kill().await;
            return Err(format!("kubectl port-forward pod/{pod} gave no local port"));
        };
        // kubectl prints a line per connection: keep reading, so it never blocks on the pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        live.insert(pod.to_string(), Forward { uid, port, child });
        Ok(port)
    }

    /// Ends every kubectl it started.
    async fn stop(&self) {
        for (_, mut forward) in self.live.lock().await.drain() {
            let _ = forward.child.kill().await;
        }
    }
}

/// Where a local listener sends each connection.
#[derive(Clone)]
enum Via {
    /// The ready endpoint of this Service's EndpointSlices at that moment.
    Service(String),
    Pod(String),
}

/// The ready pods behind the Service, by name.
async fn endpoints(slices: &Api<EndpointSlice>, service: &str) -> Vec<String> {
    let list = slices
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .map(|l| l.items)
        .unwrap_or_default();
    let mut names: Vec<String> = list
        .iter()
        .flat_map(|s| s.endpoints.iter())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .filter_map(|e| e.target_ref.as_ref().and_then(|t| t.name.clone()))
        .collect();
    names.sort();
    names
}

/// A listener on 127.0.0.1 that forwards each connection `via` a Service or a pod; its port
/// and its task (aborted to stop it).
async fn listen(
    forwards: Arc<Forwards>,
    slices: Api<EndpointSlice>,
    via: Via,
) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a local port");
    let port = listener.local_addr().expect("its address").port();
    let task = tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let (forwards, slices, via) = (forwards.clone(), slices.clone(), via.clone());
            tokio::spawn(async move {
                let pod = match via {
                    Via::Pod(pod) => pod,
                    Via::Service(service) => match endpoints(&slices, &service).await.first() {
                        Some(pod) => pod.clone(),
                        // No ready endpoint: the connection is refused, as a Service's would be.
                        None => return,
                    },
                };
                let Ok(port) = forwards.port_of(&pod).await else {
                    return;
                };
                if let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
            });
        }
    });
    (port, task)
}

fn ready_roles(db: &Database) -> (Option<String>, Vec<String>) {
    let status = db.status.clone().unwrap_or_default();
    let mut replicas: Vec<String> = status
        .instances
        .iter()
        .filter(|i| i.ready && i.role == Some(Role::Replica))
        .map(|i| i.name.clone())
        .collect();
    replicas.sort();
    (status.current_primary, replicas)
}

async fn database_until(
    dbs: &Api<Database>,
    name: &str,
    what: &str,
    deadline: Duration,
    check: impl Fn(&Database) -> bool,
) -> Database {
    wait_for(what, deadline, || async {
        let db = dbs.get(name).await.map_err(|e| e.to_string())?;
        if check(&db) {
            Ok(db)
        } else {
            Err(format!(
                "status: {}",
                serde_json::to_string(&db.status).unwrap_or_default()
            ))
        }
    })
    .await
}

/// The whole drill for one engine; see the module docs.
async fn drill(engine: Engine, version: &str) {
    let e2e = match E2e::from_env() {
        Ok(e2e) => e2e,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    install(&e2e);
    let admin = stator_kubelet_standin::client(&e2e.kubeconfig)
        .await
        .expect("a client for STATOR_E2E_KUBECONFIG");
    let namespace = Namespace::create(&e2e, engine);
    let ns = namespace.name.clone();
    let name = format!("e2e-{}", engine.as_str());
    println!("{name} in the namespace {ns}");

    let mut spec = serde_json::json!({
        "engine": engine.as_str(), "version": version, "instances": 3,
        "storage": {"size": "1Gi"},
        "replication": {"synchronous": true},
        "bootstrap": {"database": "app", "owner": "app"},
    });
    if let Ok(class) = std::env::var("STATOR_E2E_STORAGE_CLASS") {
        spec["storage"]["storageClassName"] = class.into();
    }
    let manifest = serde_json::json!({
        "apiVersion": "stator.dev/v1alpha1", "kind": "Database",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    });
    e2e.kubectl(
        &["apply", "--server-side", "-f", "-"],
        Some(&manifest.to_string()),
    );

    let dbs: Api<Database> = Api::namespaced(admin.clone(), &ns);
    let db = database_until(
        &dbs,
        &name,
        "Ready with a primary and two ready replicas",
        e2e.deadline,
        |db| {
            let (primary, replicas) = ready_roles(db);
            db.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
                && primary.is_some()
                && replicas.len() == 2
        },
    )
    .await;
    let (primary, replicas) = ready_roles(&db);
    let primary = primary.expect("a primary");
    println!("{name}: Ready, primary {primary}, replicas {replicas:?}");

    let slices: Api<EndpointSlice> = Api::namespaced(admin.clone(), &ns);
    wait_for("NAME-rw holds the primary", e2e.deadline, || async {
        let rw = endpoints(&slices, &format!("{name}-rw")).await;
        (rw == vec![primary.clone()])
            .then_some(())
            .ok_or_else(|| format!("rw {rw:?}"))
    })
    .await;

    // The test's ways in: NAME-rw as kube-proxy would route it, and each pod.
    let forwards = Arc::new(Forwards::new(&e2e, &ns, &admin, engine.port()));
    let mut listeners = Vec::new();
    let (rw_port, task) = listen(
        forwards.clone(),
        slices.clone(),
        Via::Service(format!("{name}-rw")),
    )
    .await;
    listeners.push(task);
    let mut pod_ports = BTreeMap::new();
    for ordinal in 0..3 {
        let pod = format!("{name}-{ordinal}");
        let (port, task) = listen(forwards.clone(), slices.clone(), Via::Pod(pod.clone())).await;
        listeners.push(task);
        pod_ports.insert(pod, port);
    }
    let secrets: Api<Secret> = Api::namespaced(admin.clone(), &ns);
    let tls = secrets
        .get(&format!("{name}-tls"))
        .await
        .expect("the Secret NAME-tls")
        .data
        .expect("data");
    let ca = CaTrust::from_pem(&tls["ca.crt"].0, "Secret NAME-tls").expect("its CA");
    let target = KubeTarget::new(
        &admin,
        &admin,
        &ns,
        &name,
        ca,
        ("127.0.0.1".into(), rw_port),
        Reach::Forwarded(Arc::new(pod_ports)),
    )
    .await;
    let mut writing = start_writing(&target).await;

    // The primary's pod deleted: a new primary, the old pod back as a ready replica.
    writing.drill("primary pod deleted");
    e2e.kubectl(
        &["delete", "pod", &primary, "-n", &ns, "--wait=false"],
        None,
    );
    let db = database_until(
        &dbs,
        &name,
        "a new primary and the old pod back as a ready replica",
        e2e.deadline,
        |db| {
            let (now, replicas) = ready_roles(db);
            db.status.as_ref().and_then(|s| s.phase) == Some(Phase::Ready)
                && now.as_deref().is_some_and(|p| p != primary)
                && replicas.len() == 2
                && replicas.contains(&primary)
        },
    )
    .await;
    let now = db.status.as_ref().and_then(|s| s.current_primary.clone());
    println!("{name}: after the primary pod's deletion: primary {now:?}");
    if let Some(report) = stator_operator::ha::saved_report(&db)
        && let Some(last) = &report.last
    {
        println!("{name}: failover: {}", last.outage.describe());
    }
    let report = finish_writing(writing, &target).await;
    println!(
        "{name}: {} writes acknowledged, {} lost, {} moments with two writable instances",
        report.writes_acknowledged,
        report.writes_lost,
        report.split_brain.len()
    );
    for task in listeners {
        task.abort();
    }
    forwards.stop().await;

    // The Database deleted: its objects go, its PVCs stay.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(admin.clone(), &ns);
    let by_db = ListParams::default().labels(&format!("{LABEL_DATABASE}={name}"));
    let claims: Vec<String> = names(pvcs.list(&by_db).await.expect("the PVCs").items);
    assert_eq!(claims.len(), 3, "one PVC per instance: {claims:?}");
    e2e.kubectl(
        &["delete", "database", &name, "-n", &ns, "--wait=false"],
        None,
    );
    let sts: Api<StatefulSet> = Api::namespaced(admin.clone(), &ns);
    let services: Api<Service> = Api::namespaced(admin.clone(), &ns);
    let credentials = format!("{name}-credentials");
    let rw_service = format!("{name}-rw");
    wait_for(
        "the Database and its owned objects gone",
        e2e.deadline,
        || async {
            let mut left = Vec::new();
            if dbs
                .get_opt(&name)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                left.push("the Database");
            }
            if sts
                .get_opt(&name)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                left.push("the StatefulSet");
            }
            if services
                .get_opt(&rw_service)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                left.push("the Service NAME-rw");
            }
            if secrets
                .get_opt(&credentials)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                left.push("the Secret NAME-credentials");
            }
            left.is_empty()
                .then_some(())
                .ok_or_else(|| format!("still there: {left:?}"))
        },
    )
    .await;
    assert_eq!(
        names(pvcs.list(&by_db).await.expect("the PVCs").items),
        claims,
        "PVCs were deleted without spec.storage.reclaim: Delete"
    );
    println!("{name}: deleted, its PVCs {claims:?} kept");
    drop(namespace);
}

fn names<K: kube::Resource>(items: Vec<K>) -> Vec<String> {
    let mut names: Vec<String> = items
        .into_iter()
        .filter_map(|i| i.meta().name.clone())
        .collect();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_on_a_real_cluster_fails_over_under_the_checker_and_keeps_its_pvcs() {
    drill(Engine::Postgres, "15").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_on_a_real_cluster_fails_over_under_the_checker_and_keeps_its_pvcs() {
    drill(Engine::Mariadb, "10.11").await;
}

/// The suite's own parts that run without a cluster: the variables it reads.
#[test]
fn without_the_variables_the_suite_says_why_it_does_not_run() {
    if std::env::var_os("STATOR_E2E_KUBECONFIG").is_some()
        || std::env::var_os("STATOR_E2E_IMAGE").is_some()
    {
        return;
    }
    let why = E2e::from_env()
        .err()
        .expect("no cluster without the variables");
    assert!(
        why.contains("STATOR_E2E_KUBECONFIG") && why.contains("STATOR_E2E_IMAGE"),
        "{why}"
    );
}
