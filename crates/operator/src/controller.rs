//! The `Database` controller, shaped like kube-rs' controller-rs: a finalizer around a pipeline
//! of named steps (`validate → build → apply → status`, [`crate::steps`]), an error type per
//! step, and a watch that only wakes it for what it must act on: a new generation (a spec
//! change, a deletion) or a finalizer change, never a status write.
//!
//! A spec that can never work gets `SpecValid=False` and a Warning Event, and the reconcile
//! waits for the spec to change instead of retrying. A valid one is applied and handed to its
//! high-availability loop ([`crate::ha`]), which keeps the rest of the status.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::channel::mpsc::UnboundedReceiver;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{ObjectRef, Store, store::Writer};
use kube::runtime::utils::{Predicate, WatchStreamExt, predicates};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use stator_api::names::LABEL_DATABASE;
use stator_api::{Database, Reclaim};

use crate::conditions::{self, PROGRESSING, SPEC_VALID, StatusError, write_status};
use crate::steps::{self, ApplyError, BuildError};
use crate::stores::{self, Stores};
use crate::{FIELD_MANAGER, FINALIZER, ha, lease};

/// How the operator runs.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// Namespace the operator runs in (its Lease, the NetworkPolicy admitting it to pods).
    pub namespace: String,
    /// Image of the `stator` binary the pods copy.
    pub stator_image: String,
    /// This process's name in the Lease and in Events (its pod name).
    pub identity: String,
    pub lease_duration: Duration,
    /// Period of the high-availability loops.
    pub tick: Duration,
    /// Run the high-availability loops (off only in tests of the reconcile alone).
    pub ha_loops: bool,
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub options: OperatorOptions,
    pub recorder: Recorder,
    pub loops: ha::Loops,
    /// The caches of Databases, pods, PVCs and Services ([`crate::stores`]).
    pub stores: Stores,
    /// What the loops' cores keep: the StatefulSet's replicas are held over the primary.
    pub holds: Arc<ha::scale::Holds>,
    /// The loops' wake-ups, taken by [`controller`] (`reconcile_on`).
    woken: std::sync::Mutex<Option<UnboundedReceiver<ObjectRef<Database>>>>,
}

/// Why one reconcile failed: the step, and what.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error("cleaning up Database {name:?}: {source}")]
    Cleanup {
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("finalizer of Database {name:?}: {message}")]
    Finalizer { name: String, message: String },
}

impl Context {
    /// A context whose caches are never filled (tests of the reconcile alone).
    pub fn new(client: Client, options: OperatorOptions) -> Arc<Context> {
        Context::with_stores(client, options, stores::new().0)
    }

    pub fn with_stores(client: Client, options: OperatorOptions, stores: Stores) -> Arc<Context> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(options.identity.clone()),
            },
        );
        let (holds, woken) = ha::scale::Holds::new();
        let holds = Arc::new(holds);
        let loops = ha::Loops::new(
            client.clone(),
            recorder.clone(),
            stores.clone(),
            options.tick,
            options.ha_loops,
            holds.clone(),
        );
        Arc::new(Context {
            client,
            options,
            recorder,
            loops,
            stores,
            holds,
            woken: std::sync::Mutex::new(Some(woken)),
        })
    }

    /// Publishes an Event about `db`; a failure is logged, never fatal.
    pub async fn event(&self, db: &Database, kind: EventType, reason: &str, note: String) {
        let event = Event {
            type_: kind,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &db.object_ref(&())).await {
            tracing::warn!(database = %db.name_any(), "cannot publish event {reason}: {e}");
        }
    }
}

/// Runs the operator: waits for the Lease, then reconciles until the lease is lost.
pub async fn run(client: Client, options: OperatorOptions) {
    let leases = Api::namespaced(client.clone(), &options.namespace);
    let mut election = lease::Election::new(
        leases,
        stator_kube::install::LEASE_NAME,
        &options.identity,
        options.lease_duration,
    );
    election.acquire().await;
    tracing::info!(identity = %options.identity, "leading: reconciling Databases");
    let (stores, writers) = stores::new();
    let ctx = Context::with_stores(client.clone(), options, stores.clone());
    let (databases, watches) = writers.spawn(&client);
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    // Aborted when `run` ends or is dropped: a dropped operator must not go on renewing its
    // Lease (no other could ever lead).
    let keeper = stator_engine::task::AbortOnDrop(tokio::spawn(async move {
        election.keep().await;
        let _ = lost_tx.send(());
    }));
    let lost = async move {
        let _ = lost_rx.await;
    };
    controller(client, &ctx, databases, stores.databases)
        .graceful_shutdown_on(lost)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!("reconcile: {e}");
            }
        })
        .await;
    ctx.loops.stop_all().await;
    drop(watches);
    drop(keeper);
}

/// The controller: Databases in every namespace, woken by a new generation or a finalizer
/// change only (status writes, by the loops or by itself, never wake it), and by a loop whose
/// core moved the primary the StatefulSet's replicas are held over ([`ha::scale`]).
/// `writer` fills `reader`, the cache the high-availability loops read their Database from.
pub fn controller(
    client: Client,
    ctx: &Context,
    writer: Writer<Database>,
    reader: Store<Database>,
) -> Controller<Database> {
    let api: Api<Database> = Api::all(client);
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(stores::trim_metadata)
        .reflect(writer)
        .applied_objects()
        .predicate_filter(wakes(), Default::default());
    let controller = Controller::for_stream(stream, reader);
    let woken = ctx.woken.lock().unwrap_or_else(|e| e.into_inner()).take();
    match woken {
        Some(woken) => controller.reconcile_on(woken),
        None => controller,
    }
}

/// What wakes the controller: a new `metadata.generation` (spec changes, a deletion starting)
/// or a change of the finalizers (the finalizer added, another removed). Status, labels and
/// annotations do not: the loops read those themselves.
pub fn wakes() -> impl Predicate<Database> + Send + 'static {
    predicates::generation.combine(predicates::finalizers)
}

/// One reconcile of `db`, inside the finalizer.
pub async fn reconcile(db: Arc<Database>, ctx: Arc<Context>) -> Result<Action, Error> {
    let api: Api<Database> = Api::namespaced(ctx.client.clone(), db.namespace());
    let name = db.name_any();
    finalizer(&api, FINALIZER, db, |event| async {
        match event {
            Finalizer::Apply(db) => reconcile_apply(&db, &ctx).await,
            Finalizer::Cleanup(db) => cleanup(&db, &ctx).await,
        }
    })
    .await
    .map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        other => Error::Finalizer {
            name,
            message: other.to_string(),
        },
    })
}

async fn reconcile_apply(db: &Database, ctx: &Context) -> Result<Action, Error> {
    let api: Api<Database> = Api::namespaced(ctx.client.clone(), db.namespace());
    let generation = db.metadata.generation;
    let valid = match steps::validate(db) {
        Ok(valid) => valid,
        Err(invalid) => {
            ctx.loops.stop(db).await;
            let was_invalid = db.status.as_ref().is_some_and(|s| {
                s.observed_generation == generation
                    && conditions::is_true(s, SPEC_VALID) == Some(false)
            });
            write_status(&api, db, |s| {
                s.observed_generation = generation;
                s.phase = Some(stator_api::Phase::Invalid);
                conditions::set(
                    &mut s.conditions,
                    SPEC_VALID,
                    false,
                    invalid.reason,
                    &invalid.message,
                    generation,
                );
                conditions::set(
                    &mut s.conditions,
                    PROGRESSING,
                    false,
                    invalid.reason,
                    "the spec must change first",
                    generation,
                );
            })
            .await?;
            if !was_invalid {
                ctx.event(
                    db,
                    EventType::Warning,
                    invalid.reason,
                    invalid.message.clone(),
                )
                .await;
            }
            // Nothing to retry: a new generation wakes the controller.
            return Ok(Action::await_change());
        }
    };
    let replicas = ctx.holds.replicas(db);
    let manifests = steps::build(
        &valid,
        &ctx.options.stator_image,
        &ctx.options.namespace,
        replicas,
    )?;
    if replicas != db.spec.instances {
        tracing::info!(
            database = %db.name_any(),
            "StatefulSet replicas held at {replicas} (spec.instances {}): the primary is \
             switched away before its pod is removed",
            db.spec.instances
        );
    }
    let applied = steps::apply(&ctx.client, db, &manifests).await?;
    if applied.secret_created {
        ctx.event(
            db,
            EventType::Normal,
            "CredentialsCreated",
            format!("created Secret {}", db.credentials_secret_name()),
        )
        .await;
    }
    for object in &applied.pruned {
        ctx.event(
            db,
            EventType::Normal,
            "Pruned",
            format!("deleted {object}: the spec no longer asks for it"),
        )
        .await;
    }
    write_status(&api, db, |s| {
        s.observed_generation = generation;
        conditions::set(&mut s.conditions, SPEC_VALID, true, "Valid", "", generation);
        if !s
            .conditions
            .iter()
            .any(|c| c.type_ == conditions::READY && c.status == "True")
        {
            conditions::set(
                &mut s.conditions,
                PROGRESSING,
                true,
                "Applied",
                "objects applied; instances starting",
                generation,
            );
        }
        if s.phase.is_none() || s.phase == Some(stator_api::Phase::Invalid) {
            s.phase = Some(stator_api::Phase::Creating);
        }
    })
    .await?;
    ctx.loops.ensure(db).await;
    Ok(Action::await_change())
}

/// The Database is being deleted: stop its loop, delete its PVCs only when
/// `spec.storage.reclaim: Delete`; the owned objects go with it (owner references).
async fn cleanup(db: &Database, ctx: &Context) -> Result<Action, Error> {
    ctx.loops.stop(db).await;
    if db.spec.storage.reclaim == Reclaim::Delete {
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), db.namespace());
        let selector = format!("{LABEL_DATABASE}={}", db.name_any());
        let err = |e| Error::Cleanup {
            name: db.name_any(),
            source: Box::new(e),
        };
        // One by one: RBAC grants delete, not deletecollection.
        let list = pvcs
            .list(&ListParams::default().labels(&selector))
            .await
            .map_err(err)?;
        for pvc in list {
            match pvcs.delete(&pvc.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(err(e)),
            }
        }
        ctx.event(
            db,
            EventType::Normal,
            "VolumesDeleted",
            "spec.storage.reclaim is Delete: PVCs deleted".into(),
        )
        .await;
    }
    Ok(Action::await_change())
}

/// A failed step is retried with a pause (the API server or a conflict, never the spec).
pub fn error_policy(db: Arc<Database>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(database = %db.name_any(), "{error}");
    Action::requeue(Duration::from_secs(10))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use futures::StreamExt;
    use kube::runtime::WatchStreamExt;
    use serde_json::json;

    use super::*;
    use crate::fixtures::{DatabaseBuilder, Seen, echo, mock};

    fn options() -> OperatorOptions {
        OperatorOptions {
            namespace: "stator-system".into(),
            stator_image: "ghcr.io/stator-dev/stator:0.1.0".into(),
            identity: "test".into(),
            lease_duration: Duration::from_secs(15),
            tick: Duration::from_secs(1),
            ha_loops: false,
        }
    }

    fn lines(log: &std::sync::Mutex<Vec<Seen>>) -> Vec<String> {
        log.lock().unwrap().iter().map(Seen::line).collect()
    }

    #[tokio::test]
    async fn a_create_adds_the_finalizer_then_applies_in_dependency_order_then_writes_status() {
        let (client, log) = mock(Arc::new(echo));
        let ctx = Context::new(client, options());
        // First the finalizer, and nothing else: the finalizer change wakes the next round.
        let db = DatabaseBuilder::test().build();
        let action = reconcile(Arc::new(db), ctx.clone()).await.unwrap();
        assert_eq!(action, Action::await_change());
        assert_eq!(
            lines(&log),
            ["PATCH /apis/stator.dev/v1alpha1/namespaces/ns/databases/db"]
        );
        log.lock().unwrap().clear();
        let db = DatabaseBuilder::test().finalized().build();
        let action = reconcile(Arc::new(db), ctx).await.unwrap();
        assert_eq!(action, Action::await_change());
        let ns = "/api/v1/namespaces/ns";
        assert_eq!(
            lines(&log),
            [
                format!("PATCH {ns}/serviceaccounts/db"),
                format!("GET {ns}/secrets/db-credentials"),
                format!("POST {ns}/secrets"),
                // TLS is on by default: the CA and certificates, created once, before the pods.
                format!("GET {ns}/secrets/db-tls"),
                format!("POST {ns}/secrets"),
                format!("PATCH {ns}/configmaps/db-config"),
                format!("PATCH {ns}/services/db-headless"),
                format!("PATCH {ns}/services/db-rw"),
                format!("PATCH {ns}/services/db-ro"),
                "PATCH /apis/policy/v1/namespaces/ns/poddisruptionbudgets/db".into(),
                "PATCH /apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/db".into(),
                "PATCH /apis/apps/v1/namespaces/ns/statefulsets/db".into(),
                format!("GET {ns}/services"),
                "POST /apis/events.k8s.io/v1/namespaces/ns/events".into(),
                "PATCH /apis/stator.dev/v1alpha1/namespaces/ns/databases/db/status".into(),
            ]
        );
        let log = log.lock().unwrap();
        // One field manager, forced, for every apply.
        for seen in log
            .iter()
            .filter(|s| s.method == "PATCH" && !s.uri.contains("databases"))
        {
            assert!(
                seen.uri.contains("fieldManager=stator") && seen.uri.contains("force=true"),
                "{}",
                seen.uri
            );
        }
        let status = &log.last().unwrap().body;
        assert_eq!(status["status"]["observedGeneration"], json!(1));
        let conditions = status["status"]["conditions"].as_array().unwrap();
        let spec_valid = conditions
            .iter()
            .find(|c| c["type"] == "SpecValid")
            .unwrap();
        assert_eq!(spec_valid["status"], "True");
        let progressing = conditions
            .iter()
            .find(|c| c["type"] == "Progressing")
            .unwrap();
        assert_eq!(progressing["status"], "True");
        // No secret value anywhere but in the Secret's create.
        let secret = log
            .iter()
            .find(|s| s.line().ends_with("/secrets") && s.method == "POST")
            .unwrap();
        let token = secret.body["data"]["api-token"]
            .as_str()
            .or(secret.body["stringData"]["api-token"].as_str())
            .unwrap();
        for seen in log.iter().filter(|s| !std::ptr::eq(*s, secret)) {
            assert!(
                !seen.body.to_string().contains(token),
                "{} carries the api-token",
                seen.line()
            );
        }
        // The TLS Secret holds what the pods mount, and the CA's key stays out of the cluster.
        let tls = log
            .iter()
            .filter(|s| s.line().ends_with("/secrets") && s.method == "POST")
            .nth(1)
            .unwrap();
        assert_eq!(tls.body["metadata"]["name"], "db-tls");
        let data = tls.body["data"]
            .as_object()
            .or(tls.body["stringData"].as_object())
            .unwrap();
        for key in ["ca.crt", "tls.crt", "tls.key", "client.crt", "client.key"] {
            assert!(data.contains_key(key), "db-tls lacks {key}");
        }
        assert!(!data.contains_key("ca.key"), "db-tls carries the CA's key");
    }

    #[tokio::test]
    async fn the_secret_is_never_written_twice() {
        // The API server holds the Secrets already (credentials, TLS): they are read, never
        // created, patched or replaced.
        let (client, log) = mock(Arc::new(|seen: &Seen| {
            let existing = ["db-credentials", "db-tls"]
                .into_iter()
                .find(|name| seen.uri.contains(&format!("/secrets/{name}")));
            if let (Some(name), "GET") = (existing, seen.method.as_str()) {
                (
                    200,
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": name, "namespace": "ns"}}),
                )
            } else {
                echo(seen)
            }
        }));
        let ctx = Context::new(client, options());
        for _ in 0..2 {
            let db = DatabaseBuilder::test().finalized().build();
            reconcile(Arc::new(db), ctx.clone()).await.unwrap();
        }
        let writes: Vec<String> = lines(&log)
            .into_iter()
            .filter(|l| l.contains("/secrets") && !l.starts_with("GET"))
            .collect();
        assert_eq!(writes, Vec::<String>::new());
        assert_eq!(
            lines(&log)
                .iter()
                .filter(|l| l.contains("/secrets/db-credentials"))
                .count(),
            2
        );
        assert_eq!(
            lines(&log)
                .iter()
                .filter(|l| l.contains("/secrets/db-tls"))
                .count(),
            2
        );
    }

    #[tokio::test]
    async fn an_invalid_spec_reports_spec_valid_false_and_an_event_and_waits_for_a_change() {
        let (client, log) = mock(Arc::new(echo));
        let ctx = Context::new(client, options());
        let db = DatabaseBuilder::test().finalized().invalid().build();
        let action = reconcile(Arc::new(db.clone()), ctx.clone()).await.unwrap();
        // Not a requeue: only a new generation wakes it.
        assert_eq!(action, Action::await_change());
        let seen = log.lock().unwrap().clone();
        let lines: Vec<String> = seen.iter().map(Seen::line).collect();
        assert_eq!(
            lines,
            [
                "PATCH /apis/stator.dev/v1alpha1/namespaces/ns/databases/db/status",
                "POST /apis/events.k8s.io/v1/namespaces/ns/events",
            ]
        );
        let conditions = seen[0].body["status"]["conditions"]
            .as_array()
            .unwrap()
            .clone();
        let spec_valid = conditions
            .iter()
            .find(|c| c["type"] == "SpecValid")
            .unwrap();
        assert_eq!(spec_valid["status"], "False");
        assert!(
            spec_valid["message"]
                .as_str()
                .unwrap()
                .contains("spec.instances")
        );
        assert_eq!(seen[1].body["type"], "Warning");
        // The same generation again (a resync, a restart): no write, no second Event.
        let mut again = db;
        again.status = serde_json::from_value(seen[0].body["status"].clone()).unwrap();
        log.lock().unwrap().clear();
        let action = reconcile(Arc::new(again), ctx).await.unwrap();
        assert_eq!(action, Action::await_change());
        assert_eq!(lines_of(&log), Vec::<String>::new());
    }

    #[tokio::test]
    async fn each_order_is_its_own_event_with_its_own_note() {
        // Two different orders to the same pod in one tick. They were both reason "Order"
        // about the Database: the Recorder folded the second into the first's series (a
        // PATCH of its count), so `kubectl get events` showed only the first note.
        use crate::ha::runtime::{PodRuntime, StartOrder};
        use stator_api::orders::{BootstrapOrder, RoleOrder};
        let (client, log) = mock(Arc::new(echo));
        let ctx = Context::new(client.clone(), options());
        let db = DatabaseBuilder::test().finalized().build();
        let mut rt = PodRuntime::new(client, ctx.recorder.clone(), &db, "t".into(), None, None);
        rt.start(&db, 0, StartOrder::Bootstrap(BootstrapOrder::Init));
        rt.start(&db, 0, StartOrder::Role(RoleOrder::Primary));
        rt.publish_events(&db).await;
        let log = log.lock().unwrap().clone();
        let events: Vec<(String, String, String)> = log
            .iter()
            .filter(|s| s.uri.contains("/events"))
            .map(|s| {
                (
                    s.method.clone(),
                    s.body["reason"].as_str().unwrap_or("").to_string(),
                    s.body["note"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        assert_eq!(
            events,
            [
                (
                    "POST".into(),
                    "BootstrapInit".into(),
                    "db-0: bootstrap: init".into()
                ),
                (
                    "POST".into(),
                    "RolePrimary".into(),
                    "db-0: role: primary".into()
                ),
            ]
        );
        // Each names the pod it went to.
        for seen in log.iter().filter(|s| s.uri.contains("/events")) {
            assert_eq!(seen.body["related"]["name"], "db-0");
            assert_eq!(seen.body["related"]["kind"], "Pod");
        }
    }

    /// Scaled 5 -> 2 with the primary on ordinal 4: the StatefulSet keeps 5 replicas until
    /// the loop says the core moved the primary below 2, then 2.
    #[tokio::test]
    async fn the_statefulset_keeps_the_primary_until_the_loop_says_it_moved() {
        let (client, log) = mock(Arc::new(echo));
        let ctx = Context::new(client, options());
        let mut db = DatabaseBuilder::test().finalized().build();
        db.spec.instances = 2;
        let applied_replicas = || {
            let log = log.lock().unwrap();
            let sts = log
                .iter()
                .rfind(|s| s.method == "PATCH" && s.uri.contains("/statefulsets/"))
                .expect("the StatefulSet applied");
            sts.body["spec"]["replicas"].clone()
        };
        ctx.holds.update(&db, Some(4));
        reconcile(Arc::new(db.clone()), ctx.clone()).await.unwrap();
        assert_eq!(applied_replicas(), json!(5));
        ctx.holds.update(&db, Some(1));
        reconcile(Arc::new(db.clone()), ctx.clone()).await.unwrap();
        assert_eq!(applied_replicas(), json!(2));
        // Scaling up is never held back.
        db.spec.instances = 5;
        reconcile(Arc::new(db), ctx).await.unwrap();
        assert_eq!(applied_replicas(), json!(5));
    }

    fn lines_of(log: &std::sync::Mutex<Vec<Seen>>) -> Vec<String> {
        lines(log)
    }

    #[tokio::test]
    async fn a_status_only_change_does_not_wake_the_controller() {
        let db = DatabaseBuilder::test().finalized().build();
        let mut status_changed = db.clone();
        status_changed.status = Some(stator_api::DatabaseStatus {
            ready_instances: 3,
            ..Default::default()
        });
        status_changed.metadata.resource_version = Some("2".into());
        let mut annotated = status_changed.clone();
        annotated
            .metadata
            .annotations
            .get_or_insert_default()
            .insert("x".into(), "y".into());
        let mut spec_changed = annotated.clone();
        spec_changed.spec.instances = 5;
        spec_changed.metadata.generation = Some(2);
        let mut unfinalized = spec_changed.clone();
        unfinalized.metadata.finalizers = None;
        let events = [db, status_changed, annotated, spec_changed, unfinalized];
        let woken: Vec<Database> =
            futures::stream::iter(events.map(Ok::<_, kube::runtime::watcher::Error>))
                .predicate_filter(wakes(), Default::default())
                .filter_map(|r| async move { r.ok() })
                .collect()
                .await;
        let generations: Vec<(Option<i64>, bool)> = woken
            .iter()
            .map(|d| (d.metadata.generation, d.metadata.finalizers.is_some()))
            .collect();
        assert_eq!(
            generations,
            [(Some(1), true), (Some(2), true), (Some(2), false)]
        );
    }
}
