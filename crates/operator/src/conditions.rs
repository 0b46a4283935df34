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

/// Applies `change` to the status of `db` (as last read) and writes it when it differs, as a
/// JSON merge patch from the old status to the new one, so a field the new status no longer
/// has is deleted (a merge patch of the new status alone keeps every field it omits: a
/// finished transition stayed in the saved failover state, and a leader loading it would
/// resume a failover long done); on a conflict (the other writer came first) reads it again
/// and retries. Whether it wrote.
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
        let (old_json, new_json) = (
            serde_json::to_value(&old).unwrap_or_default(),
            serde_json::to_value(&new).unwrap_or_default(),
        );
        let patch = serde_json::json!({
            "apiVersion": stator_api::API_VERSION,
            "kind": stator_api::KIND,
            "metadata": {"resourceVersion": current.metadata.resource_version},
            "status": merge_patch(&old_json, &new_json),
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

/// The JSON merge patch (RFC 7386) that turns `old` into `new`: changed fields, and `null` for
/// each field `old` has and `new` has not.
pub fn merge_patch(old: &serde_json::Value, new: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match (old, new) {
        (Value::Object(o), Value::Object(n)) => {
            let mut patch = serde_json::Map::new();
            for (k, v) in n {
                match o.get(k) {
                    Some(was) if was == v => {}
                    Some(was) => {
                        patch.insert(k.clone(), merge_patch(was, v));
                    }
                    None => {
                        patch.insert(k.clone(), v.clone());
                    }
                }
            }
            for k in o.keys().filter(|k| !n.contains_key(*k)) {
                patch.insert(k.clone(), Value::Null);
            }
            Value::Object(patch)
        }
        _ => new.clone(),
    }
}

/// What the API server keeps of `patch` merged into `target` (RFC 7386), for tests.
#[cfg(test)]
pub(crate) fn apply_merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::json!({});
    }
    let Some(t) = target.as_object_mut() else {
        return;
    };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            apply_merge_patch(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
        }
    }
}

#[cfg(test)]
mod merge_tests {
    use super::*;

    /// The failover state after a failover finished: its transition is gone. Written as the
    /// new status alone, the merge kept the old transition (the stand-in run's status showed a
    /// failover "promoting" long after it was done).
    #[test]
    fn a_field_the_new_status_drops_is_deleted_by_the_patch() {
        let old = serde_json::json!({
            "phase": "FailingOver",
            "failover": {"state": {"memory": {"primary": 1, "transition": {"from": 0}},
                                   "current": {"from": "pg-0"}}},
        });
        let new = serde_json::json!({
            "phase": "Ready",
            "failover": {"state": {"memory": {"primary": 1}}},
        });
        let mut stored = old.clone();
        apply_merge_patch(&mut stored, &merge_patch(&old, &new));
        assert_eq!(stored, new);
        // Unchanged fields are not sent again.
        assert_eq!(
            merge_patch(&new, &new),
            serde_json::json!({}),
            "an unchanged status patches nothing"
        );
    }
}
