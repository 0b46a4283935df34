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
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector;
use kube::runtime::utils::{Predicate, WatchStreamExt, predicates};
use kube::runtime::watcher;
use kube::{Client, Resource, ResourceExt};
use stator_api::names::LABEL_DATABASE;
use stator_api::{Database, Reclaim};

use crate::conditions::{self, PROGRESSING, SPEC_VALID, StatusError, write_status};
use crate::steps::{self, ApplyError, BuildError};
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
}

/// What every reconcile shares.
pub struct Context {
    pub client: Client,
    pub options: OperatorOptions,
    pub recorder: Recorder,
    pub loops: ha::Loops,
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
    pub fn new(client: Client, options: OperatorOptions) -> Arc<Context> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(options.identity.clone()),
            },
        );
        let loops = ha::Loops::new(client.clone(), recorder.clone(), options.tick);
        Arc::new(Context {
            client,
            options,
            recorder,
            loops,
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
    let ctx = Context::new(client.clone(), options);
    let (lost_tx, lost_rx) = tokio::sync::oneshot::channel::<()>();
    let keeper = tokio::spawn(async move {
        election.keep().await;
        let _ = lost_tx.send(());
    });
    let lost = async move {
        let _ = lost_rx.await;
    };
    controller(client, ctx.clone())
        .graceful_shutdown_on(lost)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!("reconcile: {e}");
            }
        })
        .await;
    ctx.loops.stop_all().await;
    keeper.abort();
}

/// The controller: Databases in every namespace, woken by a new generation or a finalizer
/// change only (status writes, by the loops or by itself, never wake it).
pub fn controller(client: Client, _ctx: Arc<Context>) -> Controller<Database> {
    let api: Api<Database> = Api::all(client);
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(predicates::finalizers),
            Default::default(),
        );
    Controller::for_stream(stream, reader)
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
            let was_invalid = db
                .status
                .as_ref()
                .is_some_and(|s| s.observed_generation == generation && conditions::is_true(s, SPEC_VALID) == Some(false));
            write_status(&api, db, |s| {
                s.observed_generation = generation;
                s.phase = Some(stator_api::Phase::Invalid);
                conditions::set(&mut s.conditions, SPEC_VALID, false, invalid.reason, &invalid.message, generation);
                conditions::set(&mut s.conditions, PROGRESSING, false, invalid.reason, "the spec must change first", generation);
            })
            .await?;
            if !was_invalid {
                ctx.event(db, EventType::Warning, invalid.reason, invalid.message.clone()).await;
            }
            // Nothing to retry: a new generation wakes the controller.
            return Ok(Action::await_change());
        }
    };
    let manifests = steps::build(&valid, &ctx.options.stator_image, &ctx.options.namespace)?;
    let applied = steps::apply(&ctx.client, db, &manifests).await?;
    if applied.secret_created {
        ctx.event(db, EventType::Normal, "CredentialsCreated", format!("created Secret {}", db.credentials_secret_name())).await;
    }
    for object in &applied.pruned {
        ctx.event(db, EventType::Normal, "Pruned", format!("deleted {object}: the spec no longer asks for it")).await;
    }
    write_status(&api, db, |s| {
        s.observed_generation = generation;
        conditions::set(&mut s.conditions, SPEC_VALID, true, "Valid", "", generation);
        if !s.conditions.iter().any(|c| c.type_ == conditions::READY && c.status == "True") {
            conditions::set(&mut s.conditions, PROGRESSING, true, "Applied", "objects applied; instances starting", generation);
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
        let list = pvcs.list(&ListParams::default().labels(&selector)).await.map_err(err)?;
        for pvc in list {
            match pvcs.delete(&pvc.name_any(), &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(err(e)),
            }
        }
        ctx.event(db, EventType::Normal, "VolumesDeleted", "spec.storage.reclaim is Delete: PVCs deleted".into()).await;
    }
    Ok(Action::await_change())
}

/// A failed step is retried with a pause (the API server or a conflict, never the spec).
pub fn error_policy(db: Arc<Database>, error: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(database = %db.name_any(), "{error}");
    Action::requeue(Duration::from_secs(10))
}
