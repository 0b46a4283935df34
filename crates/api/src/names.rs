//! Names derived from a database's name, shared by both runtimes, and the Kubernetes name rules
//! they must obey.

use crate::spec::Database;

/// Label every object of a database carries: `app.kubernetes.io/instance=NAME`.
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_VERSION: &str = "app.kubernetes.io/version";
/// `primary` or `replica`; the `NAME-rw` and `NAME-ro` Services select on it.
pub const LABEL_ROLE: &str = "stator.dev/role";
/// The database a pod belongs to; the selector of the StatefulSet, PDB and NetworkPolicy.
pub const LABEL_DATABASE: &str = "stator.dev/database";

/// Port of the instance manager's HTTP endpoints inside a pod.
pub const INSTANCE_MANAGER_PORT: u16 = 8008;

/// In a pod: where the Secrets `spec.backup` names (`repository.s3.credentialsSecretName`,
/// `repository.s3.caSecretName`, `encryption.secretName`) are mounted, one directory per Secret
/// named after it, one file per key (`BACKUP_SECRETS_DIR/SECRET/KEY`), group-readable: the
/// instance manager stages an owner-only copy of it and reads the repository's Secrets there.
pub const BACKUP_SECRETS_DIR: &str = "/etc/stator/backup-secrets";

/// Longest database name: the StatefulSet controller labels pods with
/// `controller-revision-hash: NAME-<10 chars>`, which must fit in 63.
pub const MAX_NAME_LEN: usize = 52;

impl Database {
    /// `metadata.name`; empty when missing (validation reports it).
    pub fn name(&self) -> &str {
        self.metadata.name.as_deref().unwrap_or("")
    }

    /// `metadata.namespace`, `default` when unset.
    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// `NAME-N`: the pod, and the local instance.
    pub fn instance_name(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.name())
    }

    /// `data-NAME-N`: the PVC, and the local data directory.
    pub fn data_volume_name(&self, ordinal: u32) -> String {
        format!("data-{}", self.instance_name(ordinal))
    }

    pub fn headless_service_name(&self) -> String {
        format!("{}-headless", self.name())
    }

    pub fn rw_service_name(&self) -> String {
        format!("{}-rw", self.name())
    }

    pub fn ro_service_name(&self) -> String {
        format!("{}-ro", self.name())
    }

    /// The Secret with generated credentials, or the one the user named.
    pub fn credentials_secret_name(&self) -> String {
        self.spec
            .bootstrap
            .secret_name
            .clone()
            .unwrap_or_else(|| format!("{}-credentials", self.name()))
    }

    pub fn config_map_name(&self) -> String {
        format!("{}-config", self.name())
    }

    /// The engine version, defaulted.
    pub fn version(&self) -> &str {
        self.spec
            .version
            .as_deref()
            .unwrap_or_else(|| self.spec.engine.default_version())
    }

    /// The container image, defaulted to the official one for engine and version.
    pub fn image(&self) -> String {
        self.spec.image.clone().unwrap_or_else(|| {
            format!("{}:{}", self.spec.engine.image_repository(), self.version())
        })
    }
}

/// Credential keys in the credentials Secret (and files of the local runtime).
pub mod secret_keys {
    pub const SUPERUSER_PASSWORD: &str = "superuser-password";
    pub const APP_PASSWORD: &str = "app-password";
    pub const REPLICATION_PASSWORD: &str = "replication-password";
    pub const MONITOR_PASSWORD: &str = "monitor-password";
    /// Token the mutating instance-manager endpoints (`/promote`, `/demote`) require.
    pub const API_TOKEN: &str = "api-token";
    pub const ALL: [&str; 5] = [
        SUPERUSER_PASSWORD,
        APP_PASSWORD,
        REPLICATION_PASSWORD,
        MONITOR_PASSWORD,
        API_TOKEN,
    ];
}

/// Why `name` is not an RFC 1035 label (what Service names must be), if it is not.
pub fn dns1035_label_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 63 {
        return Some(format!(
            "is {} characters long; at most 63 are allowed",
            name.len()
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Some("must start with a lowercase letter".into());
    }
    dns1123_label_problem(name)
}

/// Why `name` is not an RFC 1123 label (lowercase alphanumerics and `-`), if it is not.
pub fn dns1123_label_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 63 {
        return Some(format!(
            "is {} characters long; at most 63 are allowed",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Some(format!(
            "contains {c:?}; only lowercase letters, digits and '-' are allowed"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some("must start and end with a letter or digit".into());
    }
    None
}

/// Why `name` is not an RFC 1123 subdomain (what most Kubernetes object names and API groups
/// must be: dot-separated labels, 253 characters at most), if it is not.
pub fn dns1123_subdomain_problem(name: &str) -> Option<String> {
    if name.len() > 253 {
        return Some(format!(
            "is {} characters long; at most 253 are allowed",
            name.len()
        ));
    }
    name.split('.').find_map(|label| {
        dns1123_label_problem(label).map(|problem| {
            if label.is_empty() && !name.is_empty() {
                "has an empty part between dots".to_string()
            } else {
                problem.replace("and '-' are allowed", "'-' and '.' are allowed")
            }
        })
    })
}

/// Why `name` is not a valid SQL identifier Stator will create (database or user), if it is not.
/// Kept to a portable subset so that no quoting is ever needed in generated SQL.
pub fn sql_identifier_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".into());
    }
    if name.len() > 32 {
        return Some(format!(
            "is {} characters long; at most 32 are allowed",
            name.len()
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_') {
        return Some("must start with a lowercase letter or '_'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Some(format!(
            "contains {c:?}; only lowercase letters, digits and '_' are allowed"
        ));
    }
    None
}
