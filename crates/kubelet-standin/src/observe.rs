//! What a test reads of the pods the stand-in runs, through any client (the test's own, an
//! operator's): phase, conditions, addresses, a Secret's key, and bounded waits for readiness.
//! Reads only; the fault drills are [`crate::StandIn`]'s.

use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::ListParams;

use crate::Error;

/// Whether the pod's condition `type_` is `True`.
pub fn condition(pod: &Pod, type_: &str) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == type_ && c.status == "True"))
}

/// The pod's phase (empty while it has none).
pub fn phase(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

/// Running and Ready.
pub fn is_ready(pod: &Pod) -> bool {
    phase(pod) == "Running" && condition(pod, "Ready")
}

/// One line per pod (name, node, phase, readiness, restarts), for messages.
pub fn describe(pods: &[Pod]) -> String {
    pods.iter()
        .map(|p| {
            let restarts: i32 = p
                .status
                .as_ref()
                .and_then(|s| s.container_statuses.as_ref())
                .map(|cs| cs.iter().map(|c| c.restart_count).sum())
                .unwrap_or(0);
            format!(
                "{} node={:?} phase={} ready={} restarts={restarts}; ",
                p.metadata.name.clone().unwrap_or_default(),
                p.spec.as_ref().and_then(|s| s.node_name.clone()),
                phase(p),
                condition(p, "Ready")
            )
        })
        .collect()
}

/// The main process of a pod's container (it leads the container's process group), from the
/// stand-in's `standin://PID` container ID.
pub fn container_pid(pod: &Pod, container: &str) -> Option<i32> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)?
        .container_id
        .as_ref()?
        .strip_prefix("standin://")?
        .parse()
        .ok()
}

/// The pod's address, once the stand-in has reported one.
pub fn pod_ip(pod: &Pod) -> Option<Ipv4Addr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

/// The address of pod `name` in `namespace`, once it has one.
pub async fn pod_ip_of(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<Ipv4Addr>, Error> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = pods
        .get_opt(name)
        .await
        .map_err(|e| Error::Kube("get pod", e))?;
    Ok(pod.as_ref().and_then(pod_ip))
}

/// The value of `key` in Secret `name` (e.g. the generated `api-token`); `None` if the Secret
/// or the key is absent.
pub async fn secret_value(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<Option<Vec<u8>>, Error> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secret = secrets
        .get_opt(name)
        .await
        .map_err(|e| Error::Kube("get secret", e))?;
    Ok(secret
        .and_then(|s| s.data)
        .and_then(|mut d| d.remove(key))
        .map(|ByteString(v)| v))
}

/// Waits (bounded by `deadline`, polling) until exactly `n` of the pods matching `selector` in
/// `namespace` are Running and Ready; all the matching pods. Panics at the deadline with what
/// it saw last.
pub async fn ready_pods(
    client: &kube::Client,
    namespace: &str,
    selector: &str,
    n: usize,
    deadline: Duration,
) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    crate::harness::wait_for(
        &format!("{n} Ready pods {selector} in {namespace}"),
        deadline,
        || async {
            let list = pods
                .list(&ListParams::default().labels(selector))
                .await
                .map_err(|e| e.to_string())?
                .items;
            if list.iter().filter(|p| is_ready(p)).count() == n {
                Ok(list)
            } else {
                Err(describe(&list))
            }
        },
    )
    .await
}
