//! Stator's own database pods on the kubelet stand-in and the real control plane of
//! `shared/kube`: the objects `stator render` writes, applied with a ServiceAccount token (as
//! the operator's will be), run as a kubelet would run them. Plain mode: PostgreSQL 3 Ready,
//! pod 0 the primary by ordinal, the replicas streaming from it through the headless name.
//! Operator mode: the pods wait for `/bootstrap`, which this test gives as the operator will.
//! Every wait is bounded polling; the only figure (apply → all Ready) is printed, never asserted.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use serde_json::{Value, json};
use stator_kubelet_standin::harness::{self, Cluster};
use stator_kubelet_standin::http;
use stator_kubelet_standin::observe::{self, condition, describe, phase};

/// Generous: three initdb/pg_basebackup runs on a loaded 2-core machine, OrderedReady.
const DEADLINE: Duration = Duration::from_secs(420);
/// The instance manager's port (`manager`) in the rendered pods.
const MANAGER_PORT: u16 = 8008;

struct Rig {
    stator: PathBuf,
    cluster: Cluster,
}

impl Rig {
    async fn start() -> Option<Rig> {
        let stator = harness::stator_binary();
        // cluster-admin through a ServiceAccount token: the operator's own token stands here.
        let cluster = Cluster::start(&stator, "stator-test-operator").await?;
        Some(Rig { stator, cluster })
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        self.cluster.kubectl(args, stdin)
    }

    /// `stator ARGS`; its stdout. Panics with its stderr if it fails.
    fn stator(&self, args: &[&str]) -> String {
        let out = Command::new(&self.stator)
            .args(args)
            .output()
            .expect("run stator");
        assert!(
            out.status.success(),
            "stator {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Renders `spec` (extra `stator render` flags in `flags`) into a directory and applies it.
    fn render_and_apply(&self, spec: &Path, name: &str, flags: &[&str]) {
        let out = self.cluster.root.path().join("render").join(name);
        let spec = spec.to_string_lossy();
        let out_arg = out.to_string_lossy();
        let mut args = vec!["render", "-f", &spec, "-o", &out_arg];
        args.extend_from_slice(flags);
        self.stator(&args);
        self.kubectl(&["apply", "-f", &out_arg], None);
    }

    async fn stop(self) {
        self.cluster.stop().await;
    }
}

fn pod_named<'a>(pods: &'a [Pod], name: &str) -> &'a Pod {
    pods.iter()
        .find(|p| p.metadata.name.as_deref() == Some(name))
        .unwrap_or_else(|| panic!("no pod {name}: {}", describe(pods)))
}

/// The instance manager's `/status` of `pod` over its pod IP (through the stand-in's veth).
async fn manager_status(pod: &Pod) -> Result<Value, String> {
    let ip: Ipv4Addr = observe::pod_ip(pod).ok_or("no pod IP yet")?;
    let https = http::probes_https(pod, "manager");
    let (code, body) = http::request(ip, MANAGER_PORT, https, "GET", "/status", None, None)
        .await
        .map_err(|e| format!("GET /status on {ip}: {e}"))?;
    if code != 200 {
        return Err(format!("GET /status on {ip}: {code} {body}"));
    }
    serde_json::from_str(&body).map_err(|e| format!("/status body {body:?}: {e}"))
}

/// Waits until every pod's manager reports the role given, ready, and (replicas) `upstream`.
async fn wait_streaming(client: &kube::Client, namespace: &str, primary: &str, replicas: &[&str]) {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    harness::wait_for(
        &format!("{primary} primary and {replicas:?} streaming from it"),
        DEADLINE,
        || async {
            let mut seen = Vec::new();
            let mut ok = true;
            for (name, role) in std::iter::once((primary, "primary"))
                .chain(replicas.iter().map(|r| (*r, "replica")))
            {
                let pod = pods.get(name).await.map_err(|e| e.to_string())?;
                let status = manager_status(&pod).await?;
                let upstream_ok = role == "primary" || status["upstream"].as_str() == Some(primary);
                ok &= status["role"] == role && status["ready"] == true && upstream_ok;
                seen.push(format!(
                    "{name}: role={} ready={} upstream={} message={}",
                    status["role"], status["ready"], status["upstream"], status["message"]
                ));
            }
            if ok { Ok(()) } else { Err(seen.join("; ")) }
        },
    )
    .await;
}

fn mount_namespace(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .ok()
        .map(|l| l.to_string_lossy().into_owned())
}

/// A process's start time (field 22 of `/proc/PID/stat`), which tells a reused pid apart.
fn start_time(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3 on.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(19)
        .map(String::from)
}

/// The processes (pid, start time) in mount namespace `mnt` (a container's, in the stand-in).
fn processes_in(mnt: &str) -> Vec<(i32, String)> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| mount_namespace(*pid).as_deref() == Some(mnt))
        .filter_map(|pid| Some((pid, start_time(pid)?)))
        .collect()
}

fn write_spec(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write spec");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_postgres_pods_run_plain_and_wait_for_the_operator_s_bootstrap() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");

    // Operator mode: a 2-instance Database (the CRD and the object exist, no operator runs;
    // this test gives the orders), its objects owned by it.
    rig.kubectl(&["create", "namespace", "shop"], None);
    rig.kubectl(&["create", "namespace", "app"], None);
    rig.kubectl(&["apply", "-f", "-"], Some(&rig.stator(&["crd"])));
    let app_spec = write_spec(
        rig.cluster.root.path(),
        "app-db",
        "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: app-db\n  namespace: app\nspec:\n  engine: postgres\n  version: \"15\"\n  instances: 2\n  storage:\n    size: 1Gi\n",
    );
    let app_spec_arg = app_spec.to_string_lossy().into_owned();
    harness::wait_for("the Database CRD served", DEADLINE, || async {
        Command::new(&rig.cluster.control_plane.kubectl)
            .args(["--kubeconfig"])
            .arg(&rig.cluster.kubeconfig)
            .args(["apply", "-f", &app_spec_arg])
            .output()
            .map_err(|e| e.to_string())
            .and_then(|o| {
                if o.status.success() {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&o.stderr).into_owned())
                }
            })
    })
    .await;
    let uid = rig
        .kubectl(
            &[
                "get",
                "database",
                "app-db",
                "-n",
                "app",
                "-o",
                "jsonpath={.metadata.uid}",
            ],
            None,
        )
        .trim()
        .to_string();

    // Plain mode: examples/postgres-3.yaml as `stator render` writes it.
    let applied = Instant::now();
    rig.render_and_apply(&examples.join("postgres-3.yaml"), "shop-db", &[]);
    rig.render_and_apply(
        &app_spec,
        "app-db",
        &["--operator-owner-uid", &uid, "--operator-namespace", "app"],
    );

    let pods = observe::ready_pods(
        &rig.cluster.client,
        "shop",
        "stator.dev/database=shop-db",
        3,
        DEADLINE,
    )
    .await;
    let all_ready = applied.elapsed();
    println!(
        "figure: postgres-3 (plain render) from apply to 3 pods Ready on the stand-in: {:.1}s",
        all_ready.as_secs_f64()
    );
    for p in &pods {
        assert!(condition(p, "Ready"), "{}", describe(&pods));
    }
    // Pod 0 is the primary by ordinal; the replicas cloned it through its headless name
    // (shop-db-0.shop-db-headless.shop.svc, from their /etc/hosts) and stream from it.
    wait_streaming(
        &rig.cluster.client,
        "shop",
        "shop-db-0",
        &["shop-db-1", "shop-db-2"],
    )
    .await;
    let standin = rig.cluster.standin();
    let hosts = std::fs::read_to_string(
        standin
            .pod_dir(
                pod_named(&pods, "shop-db-2")
                    .metadata
                    .uid
                    .as_deref()
                    .unwrap_or_default(),
            )
            .join("hosts"),
    )
    .expect("shop-db-2's /etc/hosts");
    for name in ["shop-db-0", "shop-db-1"] {
        let ip = observe::pod_ip(pod_named(&pods, name)).expect("pod IP");
        assert!(
            hosts.contains(&format!("{ip}\t{name}.shop-db-headless.shop.svc.cluster.local\t{name}.shop-db-headless.shop.svc\t")),
            "{name}'s headless name in shop-db-2's /etc/hosts:\n{hosts}"
        );
    }

    // Kill-container drill on a replica: every process of the container goes (the server its
    // manager started in a session of its own too), the container restarts on its data and
    // streams again.
    let victim = pod_named(&pods, "shop-db-2");
    let old_mnt =
        mount_namespace(observe::container_pid(victim, "database").expect("container ID"))
            .expect("the container's mount namespace");
    // By pid and start time: a namespace id is reused once its namespace is gone.
    let old_processes = processes_in(&old_mnt);
    assert!(
        old_processes.len() > 1,
        "the manager and its server: {old_processes:?}"
    );
    assert!(
        standin
            .kill_container_of("shop", "shop-db-2", "database")
            .await
            .expect("kill the container")
    );
    let shop_pods: Api<Pod> = Api::namespaced(rig.cluster.client.clone(), "shop");
    harness::wait_for("shop-db-2 restarted once and Ready", DEADLINE, || async {
        let p = shop_pods
            .get("shop-db-2")
            .await
            .map_err(|e| e.to_string())?;
        let restarts = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|c| c.first())
            .map_or(0, |c| c.restart_count);
        if restarts == 1 && condition(&p, "Ready") {
            Ok(())
        } else {
            Err(describe(&[p]))
        }
    })
    .await;
    harness::wait_for(
        "no process of the killed container left",
        DEADLINE,
        || async {
            let left = processes_in(&old_mnt);
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("{left:?}"))
            }
        },
    )
    .await;
    wait_streaming(
        &rig.cluster.client,
        "shop",
        "shop-db-0",
        &["shop-db-1", "shop-db-2"],
    )
    .await;

    // Operator mode: Running, the managers answering, but not Ready: they wait for /bootstrap.
    let pods_api: Api<Pod> = Api::namespaced(rig.cluster.client.clone(), "app");
    let waiting = harness::wait_for(
        "app-db pods Running, waiting for /bootstrap",
        DEADLINE,
        || async {
            let mut pods = Vec::new();
            for name in ["app-db-0", "app-db-1"] {
                let pod = pods_api.get(name).await.map_err(|e| e.to_string())?;
                if phase(&pod) != "Running" {
                    return Err(describe(&[pod]));
                }
                let status = manager_status(&pod).await?;
                if status["ready"] != false {
                    return Err(format!("{name}: {status}"));
                }
                pods.push(pod);
            }
            Ok(pods)
        },
    )
    .await;
    for p in &waiting {
        assert!(
            !condition(p, "Ready"),
            "not Ready before /bootstrap: {}",
            describe(&waiting)
        );
    }
    let token = observe::secret_value(
        &rig.cluster.client,
        "app",
        "app-db-credentials",
        "api-token",
    )
    .await
    .expect("read the Secret")
    .expect("the generated Secret holds api-token");
    let token = String::from_utf8(token).expect("a text token");
    let order = |pod: &Pod, body: Value| {
        let (ip, https) = (
            observe::pod_ip(pod).expect("pod IP"),
            http::probes_https(pod, "manager"),
        );
        let token = token.clone();
        async move {
            let body = body.to_string();
            let (code, answer) = http::request(
                ip,
                MANAGER_PORT,
                https,
                "POST",
                "/bootstrap",
                Some(&token),
                Some(&body),
            )
            .await
            .expect("POST /bootstrap");
            assert!(
                (200..300).contains(&code),
                "POST /bootstrap {body} on {ip}: {code} {answer}"
            );
        }
    };
    order(pod_named(&waiting, "app-db-0"), json!({"kind": "init"})).await;
    // As the operator will: clone only from a primary that is up.
    wait_streaming(&rig.cluster.client, "app", "app-db-0", &[]).await;
    order(
        pod_named(&waiting, "app-db-1"),
        json!({"kind": "clone", "upstream": {
            "instance": "app-db-0", "host": "app-db-0.app-db-headless.app.svc", "port": 5432,
        }}),
    )
    .await;
    observe::ready_pods(
        &rig.cluster.client,
        "app",
        "stator.dev/database=app-db",
        2,
        DEADLINE,
    )
    .await;
    wait_streaming(&rig.cluster.client, "app", "app-db-0", &["app-db-1"]).await;

    rig.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_mariadb_pods_run_plain_and_replicate() {
    let Some(rig) = Rig::start().await else {
        return;
    };
    // examples/mariadb.yaml with 2 instances and without its node selector and tolerations
    // (the stand-in's nodes carry no database label).
    let spec = write_spec(
        rig.cluster.root.path(),
        "wiki-db",
        "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: wiki-db\n  namespace: wiki\nspec:\n  engine: mariadb\n  version: \"10.11\"\n  instances: 2\n  storage:\n    size: 1Gi\n  bootstrap:\n    database: wiki\n    owner: wiki\n",
    );
    rig.kubectl(&["create", "namespace", "wiki"], None);
    let applied = Instant::now();
    rig.render_and_apply(&spec, "wiki-db", &[]);
    observe::ready_pods(
        &rig.cluster.client,
        "wiki",
        "stator.dev/database=wiki-db",
        2,
        DEADLINE,
    )
    .await;
    println!(
        "figure: mariadb-2 (plain render) from apply to 2 pods Ready on the stand-in: {:.1}s",
        applied.elapsed().as_secs_f64()
    );
    wait_streaming(&rig.cluster.client, "wiki", "wiki-db-0", &["wiki-db-1"]).await;
    rig.stop().await;
}
