//! The kubelet stand-in against the real control plane of `shared/kube` (etcd, kube-apiserver,
//! kube-controller-manager): the real StatefulSet and PV controllers create and bind what the
//! stand-in runs. Every wait is bounded polling with a generous deadline and a message saying
//! what was last seen; nothing is timed.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{
    ConfigMap, Node, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Service,
};
use kube::Api;
use kube::api::{ListParams, PostParams};
use serde_json::{Value, json};
use stator_kubelet_standin::StandIn;
use stator_kubelet_standin::harness::{self, Cluster};
use stator_kubelet_standin::observe::{self, condition, describe, phase};

const DEADLINE: Duration = Duration::from_secs(240);

async fn wait_for<T, F, Fut>(what: &str, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    harness::wait_for(what, DEADLINE, check).await
}

/// The control plane, the stand-in and their temp dirs, for one test.
struct Rig {
    admin: kube::Client,
    subnet: u8,
    cluster: Cluster,
}

impl Rig {
    async fn start() -> Option<Rig> {
        // The Stator image is not used here; any path will do for its binary.
        let stator = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/stator");
        let cluster = Cluster::start(&stator, "stator-test-admin").await?;
        Some(Rig {
            admin: cluster.client.clone(),
            subnet: cluster.subnet.octet,
            cluster,
        })
    }

    fn standin(&self) -> &StandIn {
        self.cluster.standin()
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        Api::namespaced(self.admin.clone(), "default")
    }

    async fn create<K>(&self, object: Value)
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
        K::DynamicType: Default,
    {
        let typed: K = serde_json::from_value(object).expect("object");
        self.api::<K>()
            .create(&PostParams::default(), &typed)
            .await
            .expect("create object");
    }

    async fn stop(self) {
        self.cluster.stop().await;
    }
}

/// A plain HTTP/1.0 GET; the body.
async fn http_get(ip: std::net::Ipv4Addr, port: u16, path: &str) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((ip, port)).await?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await?;
    let mut out = String::new();
    s.read_to_string(&mut out).await?;
    match out.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.0 200") => Ok(body.to_string()),
        _ => Err(std::io::Error::other(out)),
    }
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// Waits until the pods with `label` are `n`, all Running and Ready.
async fn ready_pods(rig: &Rig, label: &str, n: usize) -> Vec<Pod> {
    observe::ready_pods(&rig.admin, "default", label, n, DEADLINE).await
}

fn web_statefulset(replicas: i32) -> Value {
    let script = r#"
set -e
[ -f /data/first-boot ] || echo "$HOSTNAME" > /data/first-boot
echo boot >> /data/boots
{
  echo "uid $(id -u) gid $(id -g) groups $(id -G)"
  stat -c 'mode %a owner %u group %g %n' /etc/app/app.conf /etc/creds/password /scratch /cache /data
  if ls /var/run/secrets/kubernetes.io/serviceaccount >/dev/null 2>&1; then echo token-mounted; else echo no-token; fi
  if head -c1 /etc/creds/password >/dev/null; then echo secret-readable; fi
  grep -c ' /cache tmpfs ' /proc/self/mounts | sed 's/^/cache-tmpfs /'
  cat /scratch/init-done
} > /data/seen
echo "$HOSTNAME" > /scratch/whoami
touch /scratch/ready
exec python3 -m http.server 8080 --bind "$POD_IP" --directory /scratch
"#;
    json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "web"},
        "spec": {
            "replicas": replicas,
            "serviceName": "web",
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "web"}},
            "template": {
                "metadata": {"labels": {"app": "web"}},
                "spec": {
                    "terminationGracePeriodSeconds": 10,
                    "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 2000, "runAsNonRoot": true},
                    "initContainers": [{
                        "name": "init", "image": "busybox:1.36",
                        "command": ["sh", "-c", "echo init-ran > /scratch/init-done"],
                        "volumeMounts": [{"name": "work", "mountPath": "/scratch"}],
                    }],
                    "containers": [{
                        "name": "main", "image": "busybox:1.36",
                        "command": ["sh", "-c", script],
                        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
                        "ports": [{"name": "http", "containerPort": 8080}],
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1},
                        "livenessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 5},
                        "volumeMounts": [
                            {"name": "data", "mountPath": "/data"},
                            {"name": "config", "mountPath": "/etc/app"},
                            {"name": "creds", "mountPath": "/etc/creds"},
                            {"name": "work", "mountPath": "/scratch"},
                            {"name": "cache", "mountPath": "/cache"},
                        ],
                    }],
                    "volumes": [
                        {"name": "config", "configMap": {"name": "web-config"}},
                        {"name": "creds", "secret": {"secretName": "web-creds", "defaultMode": 0o400}},
                        {"name": "work", "emptyDir": {}},
                        {"name": "cache", "emptyDir": {"medium": "Memory"}},
                    ],
                },
            },
            "volumeClaimTemplates": [{
                "metadata": {"name": "data"},
                "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "16Mi"}}},
            }],
        },
    })
}

async fn pvc_uid(rig: &Rig, name: &str) -> String {
    let pvcs = rig.api::<PersistentVolumeClaim>();
    wait_for(&format!("claim {name} Bound"), || async {
        let pvc = pvcs.get(name).await.map_err(|e| e.to_string())?;
        let phase = pvc.status.as_ref().and_then(|s| s.phase.clone());
        if phase.as_deref() == Some("Bound") {
            Ok(pvc.metadata.uid.clone().unwrap_or_default())
        } else {
            Err(format!("phase {phase:?}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statefulset_pods_run_with_their_volumes_and_come_back_on_the_same_claim() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    rig.create::<ConfigMap>(json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "web-config"},
        "data": {"app.conf": "greeting = hello\n"},
    }))
    .await;
    rig.create::<Secret>(json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "web-creds"},
        "stringData": {"password": "not-a-real-password"},
    }))
    .await;
    rig.create::<Service>(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
        "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 80}]},
    }))
    .await;
    rig.create::<Service>(json!({
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "web-rw"},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }))
    .await;
    rig.create::<StatefulSet>(web_statefulset(2)).await;

    // Running and Ready through the real API, each on an address of its own.
    let pods = ready_pods(&rig, "app=web", 2).await;
    let ips: BTreeSet<String> = pods
        .iter()
        .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
        .collect();
    assert_eq!(ips.len(), 2, "distinct pod IPs: {ips:?}");
    for ip in &ips {
        assert!(
            ip.starts_with(&format!("198.18.{}.", rig.subnet)),
            "pod IP {ip} in the stand-in's subnet"
        );
    }
    for p in &pods {
        let st = p.status.as_ref().expect("status");
        assert!(st.host_ip.is_some(), "hostIP set");
        for c in ["PodScheduled", "Initialized", "ContainersReady", "Ready"] {
            assert!(condition(p, c), "{c} True on {:?}", p.metadata.name);
        }
    }

    // Claims Bound by the real PV controller, to the stand-in's PV for that claim's UID.
    let uid0 = pvc_uid(&rig, "data-web-0").await;
    let uid1 = pvc_uid(&rig, "data-web-1").await;
    assert_ne!(uid0, uid1);
    let pvc0 = rig
        .api::<PersistentVolumeClaim>()
        .get("data-web-0")
        .await
        .expect("claim");
    let pv_name = pvc0
        .spec
        .as_ref()
        .and_then(|s| s.volume_name.clone())
        .expect("claim bound to a volume");
    assert_eq!(pv_name, format!("standin-{uid0}"));
    let pv = Api::<PersistentVolume>::all(rig.admin.clone())
        .get(&pv_name)
        .await
        .expect("PV");
    assert_eq!(
        pv.status.and_then(|s| s.phase).as_deref(),
        Some("Bound"),
        "PV bound"
    );

    // What the container saw inside its mount namespace, as uid 1000.
    let pv0 = rig.standin().pv_dir(&uid0);
    let seen = wait_for("the container's report in its PV", || async {
        std::fs::read_to_string(pv0.join("seen")).map_err(|e| e.to_string())
    })
    .await;
    let line = |needle: &str| {
        seen.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in the container's report:\n{seen}"))
            .to_string()
    };
    assert!(
        line("uid ").starts_with("uid 1000 gid 1000 groups "),
        "{seen}"
    );
    assert!(
        line("uid ").split(' ').any(|g| g == "2000"),
        "fsGroup among the groups: {seen}"
    );
    // The Secret's 0400 becomes 0440 root:fsGroup, as the kubelet's ownership pass makes it.
    assert_eq!(
        line("/etc/creds/password"),
        "mode 440 owner 0 group 2000 /etc/creds/password"
    );
    assert_eq!(
        line("/etc/app/app.conf"),
        "mode 644 owner 0 group 2000 /etc/app/app.conf"
    );
    // emptyDir as a kubelet makes it: root-owned, group fsGroup, 2777 (issue 10).
    assert_eq!(line(" /scratch"), "mode 2777 owner 0 group 2000 /scratch");
    assert_eq!(line(" /cache"), "mode 2777 owner 0 group 2000 /cache");
    assert_eq!(
        line("cache-tmpfs"),
        "cache-tmpfs 1",
        "medium: Memory is a tmpfs"
    );
    assert_eq!(line(" /data"), "mode 2775 owner 0 group 2000 /data");
    assert!(seen.contains("secret-readable"), "{seen}");
    assert!(seen.contains("no-token"), "no API token in the pod: {seen}");
    assert!(
        seen.contains("init-ran"),
        "the init container ran first: {seen}"
    );
    let host_secret = std::fs::metadata(
        rig.standin()
            .pod_dir(pods[0].metadata.uid.as_deref().unwrap_or_default())
            .join("volumes/creds/password"),
    )
    .expect("secret file on the host");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(host_secret.mode() & 0o7777, 0o440);

    // /etc/hosts knows the headless names of both pods.
    let web0 = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("web-0"))
        .expect("web-0")
        .clone();
    let hosts_file = rig
        .standin()
        .pod_dir(web0.metadata.uid.as_deref().unwrap_or_default())
        .join("hosts");
    wait_for("web-0's /etc/hosts to name web-1.web", || async {
        let hosts = std::fs::read_to_string(&hosts_file).map_err(|e| e.to_string())?;
        if hosts.contains("web-1.web.default.svc.cluster.local") && hosts.contains("\tweb-1.web\n")
        {
            Ok(())
        } else {
            Err(hosts)
        }
    })
    .await;

    // The Service's address forwards to both ready pods (the test reaches them through the
    // stand-in's veth), and pods know its name.
    let rw = wait_for("web-rw forwarded", || async {
        rig.standin()
            .service_address("default", "web-rw")
            .ok_or_else(|| "no address yet".to_string())
    })
    .await;
    let answered = std::sync::Mutex::new(BTreeSet::new());
    wait_for("web-rw answered by web-0 and web-1", || async {
        if let Ok(body) = http_get(rw, 80, "/whoami").await {
            answered.lock().unwrap().insert(body.trim().to_string());
        }
        let seen = answered.lock().unwrap().clone();
        if seen.len() == 2 {
            Ok(())
        } else {
            Err(format!("answered so far: {seen:?} via {rw}"))
        }
    })
    .await;
    let hosts = std::fs::read_to_string(&hosts_file).expect("hosts");
    assert!(
        hosts.contains(&format!("{rw}\tweb-rw.default.svc.cluster.local")),
        "{hosts}"
    );

    // Kill-container drill: restarted in place (restartCount 1), Ready again.
    let web1 = pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("web-1"))
        .expect("web-1");
    assert!(
        rig.standin()
            .kill_container(web1.metadata.uid.as_deref().unwrap_or_default(), "main")
    );
    let api = rig.api::<Pod>();
    wait_for("web-1 restarted once and Ready", || async {
        let p = api.get("web-1").await.map_err(|e| e.to_string())?;
        let restarts = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .map(|c| c.restart_count)
            .unwrap_or(0);
        if restarts == 1 && condition(&p, "Ready") {
            Ok(())
        } else {
            Err(format!("restarts {restarts}, {}", describe(&[p])))
        }
    })
    .await;

    // Pod deletion: terminated like a kubelet, recreated by the StatefulSet controller on the
    // same claim, data still there.
    let first_boot = std::fs::read_to_string(pv0.join("first-boot")).expect("first-boot");
    let old_uid = web0.metadata.uid.clone().unwrap_or_default();
    let old_pgid = observe::container_pid(&web0, "main").expect("web-0's main process group");
    assert!(alive(old_pgid));
    rig.standin()
        .delete_pod("default", "web-0")
        .await
        .expect("delete web-0");
    let web0_new = wait_for("web-0 recreated and Ready", || async {
        let p = api.get_opt("web-0").await.map_err(|e| e.to_string())?;
        match p {
            Some(p)
                if p.metadata.uid.as_deref() != Some(old_uid.as_str())
                    && phase(&p) == "Running"
                    && condition(&p, "Ready") =>
            {
                Ok(p)
            }
            Some(p) => Err(describe(&[p])),
            None => Err("web-0 absent".into()),
        }
    })
    .await;
    assert!(!alive(old_pgid), "the old pod's process is gone");
    assert_eq!(pvc_uid(&rig, "data-web-0").await, uid0, "same claim");
    assert_eq!(
        std::fs::read_to_string(pv0.join("first-boot")).expect("first-boot"),
        first_boot,
        "data written before the deletion is still there"
    );
    let boots = std::fs::read_to_string(pv0.join("boots")).expect("boots");
    assert_eq!(boots.lines().count(), 2, "two boots on one claim: {boots}");
    assert!(observe::container_pid(&web0_new, "main").is_some_and(alive));

    let pgids: Vec<i32> = rig
        .api::<Pod>()
        .list(&ListParams::default().labels("app=web"))
        .await
        .expect("pods")
        .items
        .iter()
        .filter_map(|p| observe::container_pid(p, "main"))
        .collect();
    rig.stop().await;
    for pgid in pgids {
        assert!(!alive(pgid), "no process left after the stand-in stopped");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_anti_affinity_leaves_the_fourth_pod_pending_and_a_stopped_node_goes_not_ready() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    rig.create::<StatefulSet>(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "spread"},
        "spec": {
            "replicas": 4,
            "serviceName": "spread",
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": "spread"}},
            "template": {
                "metadata": {"labels": {"app": "spread"}},
                "spec": {
                    "automountServiceAccountToken": false,
                    "affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{
                        "labelSelector": {"matchLabels": {"app": "spread"}},
                        "topologyKey": "kubernetes.io/hostname",
                    }]}},
                    "containers": [{
                        "name": "main", "image": "busybox",
                        "command": ["sh", "-c", "exec sleep 100000"],
                    }],
                },
            },
        },
    }))
    .await;
    let ready = ready_pods(&rig, "app=spread", 3).await;
    let nodes: BTreeSet<String> = ready
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    assert_eq!(nodes.len(), 3, "one pod per node: {}", describe(&ready));
    let pending: Vec<&Pod> = ready.iter().filter(|p| phase(p) != "Running").collect();
    assert_eq!(pending.len(), 1, "{}", describe(&ready));
    assert_eq!(phase(pending[0]), "Pending");
    assert!(
        pending[0]
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_ref())
            .is_none(),
        "the fourth pod is not bound: {}",
        describe(&ready)
    );

    // Stop-node drill: the node's processes are stopped and, its Lease no longer renewed, the
    // real node lifecycle controller marks it not Ready.
    let victim = ready
        .iter()
        .find(|p| phase(p) == "Running")
        .expect("a running pod");
    let node = victim
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .expect("bound");
    let pgid = observe::container_pid(victim, "main").expect("process group");
    rig.standin().stop_node(&node);
    wait_for("the stopped node's process in state T", || async {
        let stat =
            std::fs::read_to_string(format!("/proc/{pgid}/stat")).map_err(|e| e.to_string())?;
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .chars()
            .next();
        if state == Some('T') {
            Ok(())
        } else {
            Err(stat)
        }
    })
    .await;
    let nodes_api = Api::<Node>::all(rig.admin.clone());
    wait_for(&format!("node {node} not Ready"), || async {
        let n = nodes_api.get(&node).await.map_err(|e| e.to_string())?;
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        if ready.as_deref() == Some("Unknown") {
            Ok(())
        } else {
            Err(format!("Ready={ready:?}"))
        }
    })
    .await;
    rig.stop().await;
    assert!(
        !alive(pgid),
        "the stopped node's process is gone after the stand-in stopped"
    );
}
