//! Labels and metadata every rendered object carries.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use stator_api::Database;
use stator_api::names::{
    LABEL_COMPONENT, LABEL_DATABASE, LABEL_INSTANCE, LABEL_MANAGED_BY, LABEL_NAME, LABEL_PART_OF,
    LABEL_VERSION,
};

/// `app.kubernetes.io/component` of the database's objects.
pub const COMPONENT: &str = "database";
/// `app.kubernetes.io/managed-by` and `app.kubernetes.io/part-of`.
pub const MANAGER: &str = "stator";

/// The recommended `app.kubernetes.io/*` labels plus `stator.dev/database`.
pub fn labels(db: &Database) -> BTreeMap<String, String> {
    [
        (LABEL_NAME, db.spec.engine.as_str()),
        (LABEL_INSTANCE, db.name()),
        (LABEL_COMPONENT, COMPONENT),
        (LABEL_PART_OF, MANAGER),
        (LABEL_MANAGED_BY, MANAGER),
        (LABEL_VERSION, db.version()),
        (LABEL_DATABASE, db.name()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The labels that pick out this database's pods: `stator.dev/database=NAME`. Never changes over
/// the database's life (a StatefulSet's selector is immutable).
pub fn selector_labels(db: &Database) -> BTreeMap<String, String> {
    BTreeMap::from([(LABEL_DATABASE.to_string(), db.name().to_string())])
}

/// A label selector matching this database's pods.
pub fn pod_selector(db: &Database) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(db)),
        match_expressions: None,
    }
}

/// Metadata of an object named `name` in the database's namespace, with [`labels`].
pub fn object_meta(db: &Database, name: impl Into<String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(db.namespace().to_string()),
        labels: Some(labels(db)),
        ..ObjectMeta::default()
    }
}

/// The owner reference to the `Database` (uid `uid`) that operator mode puts on every object:
/// the Database is their controller, and the garbage collector deletes them only after the
/// owner's foreground deletion waits for them (`blockOwnerDeletion`).
pub fn owner_reference(db: &Database, uid: &str) -> OwnerReference {
    OwnerReference {
        api_version: stator_api::API_VERSION.into(),
        kind: stator_api::KIND.into(),
        name: db.name().to_string(),
        uid: uid.to_string(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}
