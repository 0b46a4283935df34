//! The operator's caches of the API server: one watch per kind, shared by the controller and
//! every high-availability loop, instead of a GET and two LISTs per Database per tick (with
//! 100 Databases and a 2 s tick that was ~200 reads a second, and spec changes queued behind
//! them). Shaped like controller-rs' and the Stackable operators' stores: a
//! [`reflector`] per kind, objects trimmed with `.modify()` before they are cached.
//!
//! - Databases: the controller's own watch (full objects: the loops need spec, annotations and
//!   status), without `managedFields`.
//! - Pods of any Database (label `stator.dev/database`): only the metadata without annotations,
//!   `status.podIP` and the `Ready` condition are kept (what [`crate::ha::runtime::PodView`]
//!   reads).
//! - PVCs: a metadata-only watch (the loop only needs which ordinals have one).
//! - Services of any Database: only `spec.clusterIP` (`NAME-rw`'s address).
//!
//! A loop ticks only once every store has its first list ([`Stores::ready`]): an empty cache
//! must never read as "every pod is gone".

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{PersistentVolumeClaim, Pod, PodStatus, Service, ServiceSpec};
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use stator_api::Database;
use stator_api::names::LABEL_DATABASE;

/// The caches' readers.
#[derive(Clone)]
pub struct Stores {
    pub databases: Store<Database>,
    pub pods: Store<Pod>,
    pub pvcs: Store<PartialObjectMeta<PersistentVolumeClaim>>,
    pub services: Store<Service>,
}

/// The caches' writers, consumed by [`Writers::spawn`] (pods, PVCs, Services) and the
/// controller (Databases).
pub struct Writers {
    pub databases: Writer<Database>,
    pods: Writer<Pod>,
    pvcs: Writer<PartialObjectMeta<PersistentVolumeClaim>>,
    services: Writer<Service>,
}

/// Empty caches and their writers; nothing is watched until [`Writers::spawn`].
pub fn new() -> (Stores, Writers) {
    let (databases, databases_w) = reflector::store();
    let (pods, pods_w) = reflector::store();
    let (pvcs, pvcs_w) = reflector::store();
    let (services, services_w) = reflector::store();
    (
        Stores {
            databases,
            pods,
            pvcs,
            services,
        },
        Writers {
            databases: databases_w,
            pods: pods_w,
            pvcs: pvcs_w,
            services: services_w,
        },
    )
}

/// `managedFields` is most of an object's size and nothing here reads it.
pub fn trim_metadata<K: Resource>(object: &mut K) {
    object.meta_mut().managed_fields = None;
}

fn trim_pod(pod: &mut Pod) {
    trim_metadata(pod);
    pod.metadata.annotations = None;
    pod.spec = None;
    let status = pod.status.take().unwrap_or_default();
    // The rollout waits on the Ready condition (what EndpointSlices follow); the others go.
    let ready = status
        .conditions
        .map(|c| c.into_iter().filter(|c| c.type_ == "Ready").collect());
    pod.status = Some(PodStatus {
        pod_ip: status.pod_ip,
        conditions: ready,
        ..PodStatus::default()
    });
}

fn trim_service(svc: &mut Service) {
    trim_metadata(svc);
    svc.metadata.annotations = None;
    let ip = svc.spec.as_ref().and_then(|s| s.cluster_ip.clone());
    svc.spec = Some(ServiceSpec {
        cluster_ip: ip,
        ..ServiceSpec::default()
    });
    svc.status = None;
}

/// The watch tasks, aborted when dropped.
pub type Watches = Vec<stator_engine::task::AbortOnDrop>;

impl Writers {
    /// Starts the watches of pods, PVCs and Services (in every namespace, of Databases only);
    /// they stop when the returned [`Watches`] is dropped. Gives back the Databases' writer.
    pub fn spawn(self, client: &Client) -> (Writer<Database>, Watches) {
        let config = watcher::Config::default().labels(LABEL_DATABASE);
        let pods = watcher(Api::<Pod>::all(client.clone()), config.clone())
            .default_backoff()
            .modify(trim_pod)
            .reflect(self.pods);
        // `PartialObjectMeta`: a metadata-only watch.
        let pvcs = watcher(
            Api::<PartialObjectMeta<PersistentVolumeClaim>>::all(client.clone()),
            config.clone(),
        )
        .default_backoff()
        .modify(trim_metadata)
        .reflect(self.pvcs);
        let services = watcher(Api::<Service>::all(client.clone()), config)
            .default_backoff()
            .modify(trim_service)
            .reflect(self.services);
        let tasks = vec![
            tokio::spawn(drain(pods)),
            tokio::spawn(drain(pvcs)),
            tokio::spawn(drain(services)),
        ];
        (
            self.databases,
            tasks
                .into_iter()
                .map(stator_engine::task::AbortOnDrop)
                .collect(),
        )
    }
}

async fn drain<S, T, E>(stream: S)
where
    S: futures::Stream<Item = Result<T, E>>,
    E: std::fmt::Display,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        if let Err(e) = event {
            tracing::warn!("watch: {e}");
        }
    }
}

impl Stores {
    /// Waits until every cache holds its first list (false: a writer is gone).
    pub async fn ready(&self) -> bool {
        self.databases.wait_until_ready().await.is_ok()
            && self.pods.wait_until_ready().await.is_ok()
            && self.pvcs.wait_until_ready().await.is_ok()
            && self.services.wait_until_ready().await.is_ok()
    }

    /// Database `ns/name` as last seen.
    pub fn database(&self, ns: &str, name: &str) -> Option<Arc<Database>> {
        self.databases.get(&ObjectRef::new(name).within(ns))
    }

    /// The pods of Database `ns/name`.
    pub fn pods_of(&self, ns: &str, name: &str) -> Vec<Arc<Pod>> {
        self.pods
            .state_filter(|p| p.namespace().as_deref() == Some(ns) && of(p.labels(), name))
    }

    /// The PVCs of Database `ns/name`.
    pub fn pvcs_of(
        &self,
        ns: &str,
        name: &str,
    ) -> Vec<Arc<PartialObjectMeta<PersistentVolumeClaim>>> {
        self.pvcs
            .state_filter(|p| p.namespace().as_deref() == Some(ns) && of(p.labels(), name))
    }

    /// Service `ns/name` as last seen.
    pub fn service(&self, ns: &str, name: &str) -> Option<Arc<Service>> {
        self.services.get(&ObjectRef::new(name).within(ns))
    }
}

fn of(labels: &std::collections::BTreeMap<String, String>, name: &str) -> bool {
    labels.get(LABEL_DATABASE).map(String::as_str) == Some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_pod_keeps_what_the_loop_reads_and_nothing_more() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "db-0", "namespace": "ns",
                "labels": {"stator.dev/database": "db", "stator.dev/role": "primary"},
                "annotations": {"a": "b"},
                "managedFields": [{"manager": "kubelet", "operation": "Update"}]},
            "spec": {"containers": [{"name": "c", "image": "i"}]},
            "status": {"podIP": "10.0.0.1", "phase": "Running", "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": "True"}]},
        }))
        .unwrap();
        let view = crate::ha::runtime::PodView::of(&pod);
        let mut trimmed = pod;
        trim_pod(&mut trimmed);
        assert_eq!(crate::ha::runtime::PodView::of(&trimmed), view);
        assert!(trimmed.spec.is_none() && trimmed.metadata.managed_fields.is_none());
        assert!(view.ready, "the Ready condition is read");
        let status = trimmed.status.unwrap();
        assert_eq!(status.phase, None);
        assert_eq!(status.conditions.map(|c| c.len()), Some(1));
    }
}
