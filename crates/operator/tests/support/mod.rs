//! What the operator's tests against the real API server share: the control plane with
//! `deploy/` applied, the operator's own token, and a poll that says what never happened.
#![allow(dead_code)]

pub mod target;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use kube::Client;
use stator_kubelet_standin::harness::ControlPlane;
use stator_operator::OperatorOptions;

pub const NS: &str = "stator-system";

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn kubectl(cp: &ControlPlane, args: &[&str]) -> String {
    let out = Command::new(&cp.kubectl)
        .arg("--kubeconfig")
        .arg(&cp.kubeconfig)
        .args(args)
        .output()
        .expect("run kubectl");
    assert!(
        out.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A kubeconfig (0600) with a token of the operator's own ServiceAccount from `deploy/`.
pub fn operator_kubeconfig(cp: &ControlPlane) -> PathBuf {
    cp.token_kubeconfig(NS, "stator-operator")
}

pub async fn client_of(path: &Path) -> Client {
    stator_kubelet_standin::client(path).await.expect("client")
}

pub fn options(identity: &str) -> OperatorOptions {
    OperatorOptions {
        namespace: NS.into(),
        stator_image: "ghcr.io/stator-dev/stator:0.1.0".into(),
        identity: identity.into(),
        lease_duration: Duration::from_secs(15),
        tick: Duration::from_secs(2),
        ha_loops: true,
    }
}

/// Polls `check` until it gives a value; panics naming `what` if it never does.
pub async fn until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..600 {
        if let Some(v) = check().await {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("never happened: {what}");
}

/// `deploy/` applied (CRD established) and the namespace `apps` for Databases.
pub fn install(cp: &ControlPlane) {
    kubectl(
        cp,
        &[
            "apply",
            "--server-side",
            "-k",
            repo().join("deploy").to_str().unwrap(),
        ],
    );
    kubectl(
        cp,
        &[
            "wait",
            "--for",
            "condition=established",
            "crd/databases.stator.dev",
            "--timeout=60s",
        ],
    );
    kubectl(cp, &["create", "namespace", "apps"]);
}

/// With `STATOR_STANDIN_LOGS=DIR`, the operator's log goes to `DIR/operator.log` (filter:
/// `RUST_LOG`, else `info`) and the stand-in keeps each container's log there too, so what the
/// operator and the instance managers said outlives a failed test. Without it: no log.
pub fn keep_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    let Some(dir) = std::env::var_os("STATOR_STANDIN_LOGS") else {
        return;
    };
    ONCE.call_once(|| {
        let dir = PathBuf::from(dir);
        std::fs::create_dir_all(&dir).expect("the log directory");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("operator.log"))
            .expect("the operator's log");
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .try_init();
    });
}
