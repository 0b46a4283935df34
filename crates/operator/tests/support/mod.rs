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
