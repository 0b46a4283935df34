//! The `Database` status both writers share (the controller: `SpecValid`, `Progressing`,
//! `observedGeneration`; the high-availability loop: phase, instances, primary, `Ready`,
//! `Degraded`, the failover state) and the one function that writes it: read, change, write
//! only if it differs (idle databases cost no writes), with the resourceVersion so two writers
//! never overwrite each other's fields.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use stator_api::{Database, DatabaseStatus};

pub const READY: &str = "Ready";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const SPEC_VALID: &str = "SpecValid";

/// Sets condition `kind`; its transition time moves only when its status does.
pub fn set(
    conditions: &mut Vec<Condition>,
    kind: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let reason = if reason.is_empty() { "Unknown" } else { reason };
    match conditions.iter_mut().find(|c| c.type_ == kind) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = Time(jiff::Timestamp::now());
            }
            c.status = status;
            c.reason = reason.to_string();
            c.message = message.to_string();
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: kind.to_string(),
            status,
            reason: reason.to_string(),
            message: message.to_string(),
            observed_generation: generation,
            last_transition_time: Time(jiff::Timestamp::now()),
        }),
    }
}

/// The status of condition `kind`, if set.
pub fn is_true(status: &DatabaseStatus, kind: &str) -> Option<bool> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| c.status == "True")
}

/// Why the status could not be written.
#[derive(Debug, thiserror::Error)]
#[error("writing the status of Database {name:?}: {source}")]
pub struct StatusError {
    pub name: String,
    #[source]
    pub source: Box<kube::Error>,
}

/// Applies `change` to the status of `db` (as last read) and writes it when it differs; on a
/// conflict (the other writer came first) reads it again and retries. Whether it wrote.
pub async fn write_status(
    api: &Api<Database>,
    db: &Database,
    change: impl Fn(&mut DatabaseStatus),
) -> Result<bool, StatusError> {
    let name = db.metadata.name.clone().unwrap_or_default();
    let err = |e| StatusError {
        name: name.clone(),
        source: Box::new(e),
    };
    let mut current = db.clone();
    for _ in 0..5 {
        let old = current.status.clone().unwrap_or_default();
        let mut new = old.clone();
        change(&mut new);
        if new == old {
            return Ok(false);
        }
        let patch = serde_json::json!({
            "apiVersion": stator_api::API_VERSION,
            "kind": stator_api::KIND,
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "status": new,
        });
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => {
                current = api.get(&name).await.map_err(err)?;
            }
            Err(e) => return Err(err(e)),
        }
    }
    Ok(false)
}
