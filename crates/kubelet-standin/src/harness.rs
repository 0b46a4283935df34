//! What a test needs around the stand-in: the real control plane of `shared/kube` (started in a
//! temp dir, stopped on drop even when the test fails) and an address subnet of its own (an abstract
//! socket held for the test's lifetime, so parallel tests never hand out the same address).

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The `shared/kube` directory: `STATOR_KUBE_DIR`, else `../shared/kube` next to the checkout.
pub fn kube_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("STATOR_KUBE_DIR") {
        return dir.into();
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/kube")
}

/// Why the control plane cannot run here at all (a binary is missing), if so.
pub fn missing_binary() -> Option<String> {
    let dir = kube_dir();
    for f in ["start.sh", "stop.sh", "VERSION"] {
        if !dir.join(f).is_file() {
            return Some(format!("{} is missing", dir.join(f).display()));
        }
    }
    for b in ["kube-apiserver", "kube-controller-manager", "kubectl"] {
        let packed = dir.join("bin").join(format!("{b}.xz"));
        if !packed.is_file() {
            return Some(format!("{} is missing", packed.display()));
        }
    }
    None
}

/// The built `stator` binary the Stator image maps to: `STATOR_BIN`, else the `stator` of the
/// running test's own profile directory (`TARGET/debug/stator` for `cargo test`,
/// `TARGET/release/stator` for `cargo test --release`, whatever the target dir). Panics, saying
/// how to build it, if missing.
pub fn stator_binary() -> PathBuf {
    let path = std::env::var_os("STATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // A test runs as TARGET/PROFILE/deps/NAME-HASH.
            let exe = std::env::current_exe().unwrap_or_default();
            exe.parent()
                .and_then(Path::parent)
                .unwrap_or(Path::new("target/debug"))
                .join("stator")
        });
    assert!(
        path.is_file(),
        "no stator binary at {} (build it with `cargo build --workspace --bin stator`, or set STATOR_BIN)",
        path.display()
    );
    path
}

/// Polls `check` every half second until it gives `Ok`, or panics after `deadline` with what
/// it last saw (its `Err`). A bound, never a timing assertion.
pub async fn wait_for<T, F, Fut>(what: &str, deadline: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let start = std::time::Instant::now();
    loop {
        match check().await {
            Ok(v) => return v,
            Err(seen) if start.elapsed() > deadline => {
                panic!("timed out after {deadline:?} waiting for {what}; last seen: {seen}")
            }
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
        }
    }
}

/// A running control plane; stopped (and its directory removed) on drop.
pub struct ControlPlane {
    dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub kubectl: PathBuf,
}

impl ControlPlane {
    /// Runs `start.sh` in a fresh temp dir; panics with its output if it fails.
    pub fn start() -> ControlPlane {
        let dir = tempfile::Builder::new()
            .prefix("stator-kube-")
            .tempdir()
            .expect("temp dir for the control plane");
        // start.sh unpacks the binaries into its cache on first use, through one temp name
        // per binary: two first starts at once race on it ("mv: cannot stat
        // '…/kube-apiserver.tmp'", a fresh CI machine's two parallel stand-in tests). The first
        // start of this process runs alone; once it succeeded the cache is warm and the
        // others run side by side.
        static CACHE_WARM: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
        let run = || {
            Command::new("bash")
                .arg(kube_dir().join("start.sh"))
                .arg(dir.path())
                .output()
                .expect("run shared/kube/start.sh")
        };
        let mut warm = CACHE_WARM.lock().unwrap_or_else(|e| e.into_inner());
        let out = if *warm {
            drop(warm);
            run()
        } else {
            let out = run();
            *warm = out.status.success();
            out
        };
        let mut guard = ControlPlane {
            kubeconfig: dir.path().join("admin.kubeconfig"),
            kubectl: PathBuf::new(),
            dir,
        };
        assert!(
            out.status.success(),
            "shared/kube/start.sh failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let kubectl = stdout
            .lines()
            .find_map(|l| l.strip_prefix("export STATOR_KUBECTL="))
            .map(PathBuf::from)
            .expect("start.sh prints STATOR_KUBECTL");
        guard.kubectl = kubectl;
        guard
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        self.kubectl_as(&self.kubeconfig, args, stdin)
    }

    /// Runs `kubectl ARGS` with `kubeconfig` (e.g. one from
    /// [`ControlPlane::service_account_kubeconfig`]) and `stdin`; its stdout. Panics with its
    /// stderr if it fails.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> String {
        use std::io::Write;
        let mut child = Command::new(&self.kubectl)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("write kubectl stdin");
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().expect("kubectl output");
        assert!(
            out.status.success(),
            "kubectl {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A kubeconfig (0600, in the control plane's dir) for a new ServiceAccount in
    /// `kube-system` bound to `cluster_role`, with a token from the TokenRequest API.
    ///
    /// Why not the admin certificate: `start.sh` issues X.509 v1 client certificates, which
    /// rustls (kube-rs' TLS) refuses; a token also makes the RBAC what is tested.
    pub fn service_account_kubeconfig(&self, name: &str, cluster_role: &str) -> PathBuf {
        let manifest = serde_json::json!({
            "apiVersion": "v1", "kind": "List", "items": [
                {"apiVersion": "v1", "kind": "ServiceAccount",
                 "metadata": {"name": name, "namespace": "kube-system"}},
                {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                 "metadata": {"name": name},
                 "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
                 "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": "kube-system"}]},
            ],
        });
        self.kubectl(&["apply", "-f", "-"], Some(&manifest.to_string()));
        self.token_kubeconfig("kube-system", name)
    }

    /// A kubeconfig (0600, in the control plane's dir) with a token from the TokenRequest API
    /// for the existing ServiceAccount `namespace/name` (e.g. the operator's, from `deploy/`).
    pub fn token_kubeconfig(&self, namespace: &str, name: &str) -> PathBuf {
        let token = self.kubectl(
            &[
                "create",
                "token",
                name,
                "-n",
                namespace,
                "--duration",
                "24h",
            ],
            None,
        );
        let admin =
            kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("admin kubeconfig");
        let cluster = admin.clusters[0].cluster.clone().expect("a cluster");
        let config = serde_json::json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "stator-test", "cluster": {
                "server": cluster.server,
                "certificate-authority": cluster.certificate_authority,
            }}],
            "users": [{"name": name, "user": {"token": token.trim()}}],
            "contexts": [{"name": "stator-test", "context": {"cluster": "stator-test", "user": name, "namespace": "default"}}],
            "current-context": "stator-test",
        });
        let path = self.dir.path().join(format!("{name}.kubeconfig"));
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .expect("write kubeconfig");
        std::io::Write::write_all(&mut file, config.to_string().as_bytes())
            .expect("write kubeconfig");
        path
    }

    /// The stand-in's own identity: a ServiceAccount with [`STANDIN_CLUSTER_ROLE`] (no access to
    /// Databases, nor to labels of pods beyond `get`).
    pub fn standin_kubeconfig(&self) -> PathBuf {
        self.kubectl(&["apply", "-f", "-"], Some(STANDIN_CLUSTER_ROLE));
        self.service_account_kubeconfig("kubelet-standin", "kubelet-standin")
    }
}

/// What the stand-in may do: the verbs a kubelet and the scheduler's binder use, nothing more.
pub const STANDIN_CLUSTER_ROLE: &str = r#"{
  "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
  "metadata": {"name": "kubelet-standin"},
  "rules": [
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "create", "patch"]},
    {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "delete"]},
    {"apiGroups": [""], "resources": ["pods/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["pods/binding"], "verbs": ["create"]},
    {"apiGroups": [""], "resources": ["persistentvolumeclaims"], "verbs": ["get", "list"]},
    {"apiGroups": [""], "resources": ["persistentvolumes"], "verbs": ["get", "list", "create"]},
    {"apiGroups": [""], "resources": ["secrets", "configmaps"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["services"], "verbs": ["list"]},
    {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list"]}
  ]
}"#;

impl Drop for ControlPlane {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(kube_dir().join("stop.sh"))
            .arg(self.dir.path())
            .status();
    }
}

/// A subnet `198.18.S.0/24` (and with it the stand-in's network namespace `stator-standin-S`
/// and veth `sth-S`) held by this process until dropped.
pub struct Subnet {
    pub octet: u8,
    _lock: UnixListener,
}

/// Claims a free subnet among 198.18.100–250 by binding an abstract Unix socket named after it
/// (released by the kernel when the process ends; nothing is left on disk).
pub fn claim_subnet() -> io::Result<Subnet> {
    for octet in 100..=250u8 {
        let name = format!("stator-kubelet-standin-198.18.{octet}");
        let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
        if let Ok(lock) = UnixListener::bind_addr(&addr) {
            return Ok(Subnet { octet, _lock: lock });
        }
    }
    Err(io::Error::other("no free 198.18.S subnet among 100..=250"))
}

/// One test's cluster: the control plane, the stand-in on a subnet of its own (its root, PVs
/// and pod directories in a temp dir) and a client with a ServiceAccount token bound to
/// `cluster-admin` (the test's, or an operator's, own identity). Dropped in order: the stand-in
/// (every pod process killed), its temp dir, the subnet, the control plane.
pub struct Cluster {
    standin: Option<crate::StandIn>,
    pub client: kube::Client,
    /// The kubeconfig of `client` (0600, for `kubectl` with [`ControlPlane::kubectl_as`]).
    pub kubeconfig: PathBuf,
    pub root: tempfile::TempDir,
    pub subnet: Subnet,
    pub control_plane: ControlPlane,
}

impl Cluster {
    /// Starts it, the Stator image mapped to `stator`, the client's ServiceAccount named
    /// `account`; `None` (after printing why) when the control plane cannot run here.
    pub async fn start(stator: &Path, account: &str) -> Option<Cluster> {
        if let Some(missing) = missing_binary() {
            println!("skipped: the Kubernetes control plane cannot start here: {missing}");
            return None;
        }
        let control_plane = ControlPlane::start();
        let subnet = claim_subnet().expect("a free 198.18.S subnet");
        let root = tempfile::Builder::new()
            .prefix("stator-standin-")
            .tempdir()
            .expect("temp dir");
        let standin_kubeconfig = control_plane.standin_kubeconfig();
        let kubeconfig = control_plane.service_account_kubeconfig(account, "cluster-admin");
        let mut config = crate::Config::new(&standin_kubeconfig, root.path(), subnet.octet, stator);
        config.logs = std::env::var_os("STATOR_STANDIN_LOGS").map(PathBuf::from);
        let standin = crate::StandIn::start(config)
            .await
            .expect("stand-in starts");
        let client = crate::client(&kubeconfig).await.expect("client");
        Some(Cluster {
            standin: Some(standin),
            client,
            kubeconfig,
            root,
            subnet,
            control_plane,
        })
    }

    pub fn standin(&self) -> &crate::StandIn {
        self.standin.as_ref().expect("the stand-in runs until stop")
    }

    /// `kubectl ARGS` as the client's ServiceAccount; its stdout.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        self.control_plane.kubectl_as(&self.kubeconfig, args, stdin)
    }

    /// Stops the stand-in as [`crate::StandIn::shutdown`] does, then the rest.
    pub async fn stop(mut self) {
        if let Some(s) = self.standin.take() {
            s.shutdown().await;
        }
    }
}
