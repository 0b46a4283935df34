//! The stand-in's Nodes: registered Ready, with a heartbeat Lease in `kube-node-lease` renewed
//! every 10 s (a kubelet's renew interval: a quarter of the 40 s lease duration) and the Ready
//! condition re-posted every 5 minutes (the kubelet's `nodeStatusReportFrequency`). A stopped
//! node (fault drill) renews nothing until it is thawed, so the node lifecycle controller marks
//! it NotReady on its own schedule.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;

use crate::Error;

/// Lease renew interval of a kubelet (`nodeLeaseDurationSeconds` 40 × 0.25).
pub(crate) const LEASE_RENEW: Duration = Duration::from_secs(10);
const LEASE_DURATION_SECONDS: i32 = 40;
/// A kubelet re-posts an unchanged node status this often.
const STATUS_REPORT: Duration = Duration::from_secs(300);

/// One node of the stand-in.
pub(crate) struct NodeHandle {
    pub name: String,
    pub ip: Ipv4Addr,
    /// Set by the stop-node drill: no heartbeat, no pod handling.
    pub stopped: AtomicBool,
}

impl NodeHandle {
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }
}

fn node_object(node: &NodeHandle) -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node.name,
            "labels": {
                "kubernetes.io/hostname": node.name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64"),
                "stator.dev/kubelet-standin": "true",
            },
        },
        "spec": {},
    })
}

fn node_status(node: &NodeHandle, now: &Time) -> serde_json::Value {
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        json!({
            "type": type_, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        })
    };
    json!({
        "status": {
            "conditions": [
                condition("Ready", "True", "KubeletReady", "kubelet stand-in is posting ready status"),
                condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "no memory pressure"),
                condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "no disk pressure"),
                condition("PIDPressure", "False", "KubeletHasSufficientPID", "no PID pressure"),
            ],
            "addresses": [
                {"type": "InternalIP", "address": node.ip.to_string()},
                {"type": "Hostname", "address": node.name},
            ],
            "capacity": {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "20Gi"},
            "allocatable": {"cpu": "4", "memory": "8Gi", "pods": "110", "ephemeral-storage": "20Gi"},
            "nodeInfo": {
                "machineID": "", "systemUUID": "", "bootID": "", "kernelVersion": "",
                "osImage": "kubelet stand-in", "containerRuntimeVersion": "standin://0",
                "kubeletVersion": "v1.36.2", "kubeProxyVersion": "",
                "operatingSystem": "linux", "architecture": "amd64",
            },
        }
    })
}

/// Registers the node (create, or take over one left by an earlier stand-in) and posts Ready.
pub(crate) async fn register(client: &kube::Client, node: &NodeHandle) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let object: Node = serde_json::from_value(node_object(node)).map_err(Error::Json)?;
    match nodes.create(&PostParams::default(), &object).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(Error::Kube("create Node", e)),
    }
    post_status(client, node).await?;
    renew_lease(client, node).await
}

async fn post_status(client: &kube::Client, node: &NodeHandle) -> Result<(), Error> {
    let nodes: Api<Node> = Api::all(client.clone());
    let now = Time(Timestamp::now());
    nodes
        .patch_status(
            &node.name,
            &PatchParams::default(),
            &Patch::Strategic(node_status(node, &now)),
        )
        .await
        .map_err(|e| Error::Kube("patch Node status", e))?;
    Ok(())
}

async fn renew_lease(client: &kube::Client, node: &NodeHandle) -> Result<(), Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = MicroTime(Timestamp::now());
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": node.name,
            "ownerReferences": [],
        },
        "spec": {
            "holderIdentity": node.name,
            "leaseDurationSeconds": LEASE_DURATION_SECONDS,
            "renewTime": now,
        },
    });
    leases
        .patch(
            &node.name,
            &PatchParams::apply("kubelet-standin").force(),
            &Patch::Apply(lease),
        )
        .await
        .map_err(|e| Error::Kube("renew node Lease", e))?;
    Ok(())
}

/// Renews the node's Lease every [`LEASE_RENEW`] and re-posts its status every 5 minutes,
/// except while the node is stopped.
pub(crate) async fn heartbeat(client: kube::Client, node: Arc<NodeHandle>) {
    let mut since_status = Duration::ZERO;
    loop {
        tokio::time::sleep(LEASE_RENEW).await;
        if node.is_stopped() {
            continue;
        }
        if let Err(e) = renew_lease(&client, &node).await {
            tracing::warn!(node = %node.name, "{e}");
        }
        since_status += LEASE_RENEW;
        if since_status >= STATUS_REPORT {
            since_status = Duration::ZERO;
            if let Err(e) = post_status(&client, &node).await {
                tracing::warn!(node = %node.name, "{e}");
            }
        }
    }
}
