//! What `stator status|switchover|uri --kube` do against a cluster: read the `Database` the
//! operator keeps the status of, and ask for a switchover through the annotation its loop
//! takes once per id. The kubeconfig is found as kubectl finds it ([`kube::Config::infer`]).

use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Config};
use stator_api::Database;

use crate::SWITCHOVER_ANNOTATION;

/// Why the cluster could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum KubeCliError {
    #[error("no Kubernetes configuration (KUBECONFIG, ~/.kube/config or in-cluster): {0}")]
    Config(String),
    #[error("Database {namespace}/{name}: {source}")]
    Api {
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
}

/// A client from the kubeconfig kubectl would use.
pub async fn client() -> Result<Client, KubeCliError> {
    let config = Config::infer()
        .await
        .map_err(|e| KubeCliError::Config(e.to_string()))?;
    Client::try_from(config).map_err(|e| KubeCliError::Config(e.to_string()))
}

/// The `Database` named like `spec`'s, as the cluster holds it (with its status).
pub async fn get(client: &Client, spec: &Database) -> Result<Database, KubeCliError> {
    let api: Api<Database> = Api::namespaced(client.clone(), spec.namespace());
    api.get(spec.name()).await.map_err(|e| KubeCliError::Api {
        namespace: spec.namespace().into(),
        name: spec.name().into(),
        source: Box::new(e),
    })
}

/// Asks for a switchover (to `to`, `NAME-N`, or the best replica): sets the annotation with a
/// fresh id; the loop takes it once. The id.
pub async fn request_switchover(
    client: &Client,
    spec: &Database,
    to: Option<&str>,
) -> Result<String, KubeCliError> {
    let id = format!("{:x}", jiff::Timestamp::now().as_nanosecond());
    let value = match to {
        Some(to) => format!("{id}:{to}"),
        None => id.clone(),
    };
    let api: Api<Database> = Api::namespaced(client.clone(), spec.namespace());
    let patch = serde_json::json!({"metadata": {"annotations": {SWITCHOVER_ANNOTATION: value}}});
    api.patch(spec.name(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| KubeCliError::Api {
            namespace: spec.namespace().into(),
            name: spec.name().into(),
            source: Box::new(e),
        })?;
    Ok(id)
}
