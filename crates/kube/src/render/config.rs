//! The objects the pods mount or run as: ServiceAccount, credentials Secret, ConfigMap.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use stator_api::Database;

use super::credentials::Credentials;
use super::meta::object_meta;

/// Key of the ConfigMap that holds the Database as JSON, read by `stator instance --pod`.
pub const DATABASE_JSON_KEY: &str = "database.json";

/// The pods' own identity, with no API token mounted: the instance manager needs no API access.
pub fn render_service_account(db: &Database) -> ServiceAccount {
    ServiceAccount {
        metadata: object_meta(db, db.name()),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// The Secret `NAME-credentials` holding the generated credentials.
pub fn render_secret(db: &Database, credentials: &Credentials) -> Secret {
    let data: BTreeMap<String, ByteString> = credentials
        .iter()
        .map(|(key, value)| (key.to_string(), ByteString(value.as_bytes().to_vec())))
        .collect();
    Secret {
        metadata: object_meta(db, db.credentials_secret_name()),
        type_: Some("Opaque".into()),
        data: Some(data),
        // A re-render generates new passwords; applying them over the ones the database was
        // initialised with would lock everyone out. The API server refuses that change instead.
        immutable: Some(true),
        ..Secret::default()
    }
}

/// The Database the instance manager reads: name, namespace, labels and spec; no status and no
/// server-set metadata, so that the same spec always gives the same bytes.
pub fn database_for_pods(db: &Database) -> Database {
    let mut copy = Database::new(db.name(), db.spec.clone());
    copy.metadata = ObjectMeta {
        name: Some(db.name().to_string()),
        namespace: Some(db.namespace().to_string()),
        labels: db.metadata.labels.clone().filter(|l| !l.is_empty()),
        ..ObjectMeta::default()
    };
    copy.status = None;
    copy
}

/// The ConfigMap `NAME-config`: `database.json`, the Database as pretty JSON.
pub fn render_config_map(db: &Database, database_json: &str) -> ConfigMap {
    ConfigMap {
        metadata: object_meta(db, db.config_map_name()),
        data: Some(BTreeMap::from([(
            DATABASE_JSON_KEY.to_string(),
            database_json.to_string(),
        )])),
        ..ConfigMap::default()
    }
}
