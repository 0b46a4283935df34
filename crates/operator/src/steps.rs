//! The steps of one reconcile, each reading only the previous step's output:
//! [`validate`] (the spec can work) → [`build`] (the objects render's operator mode makes) →
//! [`apply`] (server-side apply in dependency order, the Secret created once, objects no longer
//! wanted deleted by label). Only `apply` (and the status step in [`crate::conditions`]) talks to
//! the API server; each step has its own error type.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, ListParams, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use stator_api::Database;
use stator_api::names::LABEL_DATABASE;
use stator_kube::render::{OperatorMode, TlsMaterial, tls_secret_name};
use stator_kube::{Credentials, Manifests, RenderError, RenderOptions};

use crate::FIELD_MANAGER;

/// Why a spec can never work: reported as `SpecValid=False`, never retried until it changes.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ValidateError {
    /// The condition's reason (`InvalidSpec`, `BackupNotImplemented`).
    pub reason: &'static str,
    /// Every problem, each naming its field.
    pub message: String,
}

/// A spec that passed [`validate`].
pub struct Valid<'a> {
    pub db: &'a Database,
    pub uid: String,
}

/// The spec validation `stator validate` runs, plus what the operator cannot run yet.
pub fn validate(db: &Database) -> Result<Valid<'_>, ValidateError> {
    let report = stator_api::validate(db);
    if !report.is_valid() {
        let message = report
            .errors
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        return Err(ValidateError {
            reason: "InvalidSpec",
            message,
        });
    }
    if db.spec.backup.is_some() {
        return Err(ValidateError {
            reason: "BackupNotImplemented",
            message: "spec.backup is set, and the operator takes no backups yet: remove it".into(),
        });
    }
    let uid = db.metadata.uid.clone().unwrap_or_default();
    Ok(Valid { db, uid })
}

/// Why the objects could not be built (a bug or an option, never the spec: [`validate`] ran).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("building the objects of Database {name:?}: {source}")]
    Render {
        name: String,
        #[source]
        source: Box<RenderError>,
    },
    #[error("issuing the certificates of Database {name:?} (Secret {secret:?}): {message}")]
    Certificates {
        name: String,
        secret: String,
        message: String,
    },
}

/// Render's operator mode. The credentials and, with TLS on (the default), the database's CA
/// and certificates are fresh; they reach the cluster only if their Secret does not exist yet
/// ([`apply`] never rewrites either: a new CA would break trust between running pods).
/// `replicas`: the StatefulSet's, `spec.instances` held over a primary the core has not
/// switched away yet ([`crate::ha::scale`]); never below `spec.instances`.
pub fn build(
    valid: &Valid<'_>,
    stator_image: &str,
    operator_namespace: &str,
    replicas: u32,
) -> Result<Manifests, BuildError> {
    let options = RenderOptions {
        stator_image: stator_image.to_string(),
        operator: Some(OperatorMode {
            database_uid: valid.uid.clone(),
            operator_namespace: operator_namespace.to_string(),
        }),
        ..RenderOptions::default()
    };
    let mut credentials = Credentials::random();
    // With spec.tls.issuerRef cert-manager fills NAME-tls from the Certificates render emits:
    // a Secret of the operator's own under that name would be one cert-manager then rewrites.
    if valid.db.spec.tls.enabled && valid.db.spec.tls.issuer_ref.is_none() {
        let material =
            TlsMaterial::issue(valid.db).map_err(|message| BuildError::Certificates {
                name: valid.db.name().to_string(),
                secret: tls_secret_name(valid.db),
                message,
            })?;
        credentials = credentials.with_tls(material);
    }
    let mut manifests =
        stator_kube::render(valid.db, &options, Some(&credentials)).map_err(|e| {
            BuildError::Render {
                name: valid.db.name().to_string(),
                source: Box::new(e),
            }
        })?;
    if let Some(spec) = manifests.stateful_set.spec.as_mut() {
        let replicas = replicas.max(valid.db.spec.instances);
        spec.replicas = Some(i32::try_from(replicas).unwrap_or(i32::MAX));
    }
    Ok(manifests)
}

/// Why applying failed: which object, which call.
#[derive(Debug, thiserror::Error)]
#[error("{verb} {kind} {name:?}: {source}")]
pub struct ApplyError {
    pub verb: &'static str,
    pub kind: &'static str,
    pub name: String,
    #[source]
    pub source: Box<kube::Error>,
}

impl ApplyError {
    fn new(verb: &'static str, kind: &'static str, name: &str, source: kube::Error) -> Self {
        ApplyError {
            verb,
            kind,
            name: name.to_string(),
            source: Box::new(source),
        }
    }
}

/// What [`apply`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The credentials Secret was created now (it did not exist).
    pub secret_created: bool,
    /// Objects deleted because the spec no longer asks for them (`Kind/name`).
    pub pruned: Vec<String>,
}

async fn apply_one<K>(client: &Client, ns: &str, object: &K) -> Result<(), ApplyError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let mut object = object.clone();
    // SSA wants apiVersion and kind in the body; k8s-openapi serializes them itself.
    object.meta_mut().managed_fields = None;
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(&object),
    )
    .await
    .map_err(|e| ApplyError::new("apply", kind_of::<K>(), &name, e))?;
    Ok(())
}

/// Server-side applies a cert-manager `Certificate` (a CRD: no k8s-openapi type, so through
/// the dynamic API).
async fn apply_certificate(
    client: &Client,
    ns: &str,
    certificate: &stator_kube::render::Certificate,
) -> Result<(), ApplyError> {
    let name = certificate.metadata.name.clone().unwrap_or_default();
    let gvk = kube::api::GroupVersionKind::gvk("cert-manager.io", "v1", "Certificate");
    let api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &kube::api::ApiResource::from_gvk(&gvk));
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &kube::api::Patch::Apply(certificate),
    )
    .await
    .map_err(|e| ApplyError::new("apply", "Certificate", &name, e))?;
    Ok(())
}

fn kind_of<K: Resource<DynamicType = ()>>() -> &'static str {
    // Kinds of k8s-openapi types are 'static strings behind a Cow.
    match K::kind(&()) {
        std::borrow::Cow::Borrowed(k) => k,
        std::borrow::Cow::Owned(_) => "object",
    }
}

/// Creates the credentials Secret when it does not exist (read first, so an existing one is
/// not even sent new values); an existing one is never patched or replaced.
async fn create_secret_once(
    client: &Client,
    ns: &str,
    secret: &Secret,
) -> Result<bool, ApplyError> {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(client.clone(), ns);
    match api.get_metadata_opt(&name).await {
        Ok(Some(_)) => return Ok(false),
        Ok(None) => {}
        Err(e) => return Err(ApplyError::new("get", "Secret", &name, e)),
    }
    match api
        .create(
            &PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            },
            secret,
        )
        .await
    {
        Ok(_) => Ok(true),
        // Created meanwhile (another operator before it lost its lease): kept as it is.
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(ApplyError::new("create", "Secret", &name, e)),
    }
}

/// Deletes the objects of kind `K` labelled for this database that are not in `wanted`.
async fn prune<K>(
    client: &Client,
    db: &Database,
    wanted: &[String],
    pruned: &mut Vec<String>,
) -> Result<(), ApplyError>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), db.namespace());
    let selector = format!("{LABEL_DATABASE}={}", db.name());
    let list = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| ApplyError::new("list", kind_of::<K>(), &selector, e))?;
    for object in list {
        let name = object.name_any();
        if wanted.contains(&name) {
            continue;
        }
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => pruned.push(format!("{}/{name}", kind_of::<K>())),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(ApplyError::new("delete", kind_of::<K>(), &name, e)),
        }
    }
    Ok(())
}

/// Makes the cluster hold `manifests`: in dependency order (ServiceAccount, Secret and
/// ConfigMap before the StatefulSet that mounts them), server-side applied with one field
/// manager; the Secret created once; Services the spec no longer asks for deleted by label.
pub async fn apply(
    client: &Client,
    db: &Database,
    manifests: &Manifests,
) -> Result<Applied, ApplyError> {
    // Destructured without `..`: a new kind cannot be forgotten here.
    let Manifests {
        service_account,
        secret,
        tls_secret,
        certificates,
        config_map,
        services,
        pod_disruption_budget,
        network_policy,
        stateful_set,
        // Plain mode only: operator mode renders neither (the operator refuses spec.backup
        // until it schedules backups itself, and takes no VolumeSnapshots).
        cron_job: _,
        volume_snapshot: _,
    } = manifests;
    let ns = db.namespace();
    let mut applied = Applied::default();
    apply_one::<ServiceAccount>(client, ns, service_account).await?;
    if let Some(secret) = secret {
        applied.secret_created = create_secret_once(client, ns, secret).await?;
    }
    // The TLS Secret (CA, server and replication certificates) is created once too, before
    // the StatefulSet whose pods mount it.
    if let Some(tls) = tls_secret {
        create_secret_once(client, ns, tls).await?;
    }
    // spec.tls.issuerRef: cert-manager's Certificates, before the pods that mount their Secrets.
    for certificate in certificates {
        apply_certificate(client, ns, certificate).await?;
    }
    apply_one::<ConfigMap>(client, ns, config_map).await?;
    for service in services {
        apply_one::<Service>(client, ns, service).await?;
    }
    apply_one::<PodDisruptionBudget>(client, ns, pod_disruption_budget).await?;
    apply_one::<NetworkPolicy>(client, ns, network_policy).await?;
    apply_one::<StatefulSet>(client, ns, stateful_set).await?;
    let wanted: Vec<String> = services
        .iter()
        .filter_map(|s| s.metadata.name.clone())
        .collect();
    prune::<Service>(client, db, &wanted, &mut applied.pruned).await?;
    Ok(applied)
}
