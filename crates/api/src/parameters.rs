//! Engine parameters: the defaults Stator applies, the keys Stator manages itself (and so refuses
//! from users), and the merge of both with `spec.config.parameters`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::quantity::Quantity;
use crate::spec::{DatabaseSpec, Engine};

/// A parameter value. YAML lets users write `200`, `on` or `true`; the server only sees text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParameterValue(pub String);

impl ParameterValue {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Serialize for ParameterValue {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ParameterValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Scalar {
            Text(String),
            Int(i64),
            Float(f64),
            Bool(bool),
        }
        let text = match Scalar::deserialize(deserializer).map_err(|_| {
            serde::de::Error::custom("expected a scalar value (a string, number or boolean)")
        })? {
            Scalar::Text(s) => s,
            Scalar::Int(i) => i.to_string(),
            Scalar::Float(f) => f.to_string(),
            Scalar::Bool(b) => if b { "on" } else { "off" }.to_string(),
        };
        Ok(ParameterValue(text))
    }
}

impl JsonSchema for ParameterValue {
    fn schema_name() -> Cow<'static, str> {
        "ParameterValue".into()
    }

    fn inline_schema() -> bool {
        true
    }

    /// Any scalar, as in a YAML file: the API server then accepts exactly what the local
    /// runtime accepts (`200`, `"8MB"`, `on`, `true`, `1.1`). A structural schema allows an
    /// untyped node only with `x-kubernetes-preserve-unknown-fields`; lists and maps are refused
    /// by Stator's own validation with the field's path.
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "description": "A parameter value: a string, number or boolean.",
            "x-kubernetes-preserve-unknown-fields": true
        })
    }
}

/// A parameter Stator sets itself, and why a user may not.
pub struct ManagedKey {
    pub key: &'static str,
    pub why: &'static str,
}

const PG_MANAGED: &[ManagedKey] = &[
    ManagedKey {
        key: "ssl",
        why: "TLS is managed by Stator (spec.tls; certificates in the database's TLS directory)",
    },
    ManagedKey {
        key: "ssl_cert_file",
        why: "TLS is managed by Stator (spec.tls; certificates in the database's TLS directory)",
    },
    ManagedKey {
        key: "ssl_key_file",
        why: "TLS is managed by Stator (spec.tls; certificates in the database's TLS directory)",
    },
    ManagedKey {
        key: "ssl_ca_file",
        why: "TLS is managed by Stator (spec.tls; certificates in the database's TLS directory)",
    },
    ManagedKey {
        key: "ssl_min_protocol_version",
        why: "TLS is managed by Stator (spec.tls; certificates in the database's TLS directory)",
    },
    ManagedKey {
        key: "port",
        why: "the port is fixed per runtime (5432 in pods, local.portBase locally)",
    },
    ManagedKey {
        key: "listen_addresses",
        why: "Stator binds the server (local.listenAddress locally, the pod IP on Kubernetes)",
    },
    ManagedKey {
        key: "unix_socket_directories",
        why: "the instance manager owns the socket directory",
    },
    ManagedKey {
        key: "data_directory",
        why: "the data directory is the instance's volume",
    },
    ManagedKey {
        key: "config_file",
        why: "Stator writes the configuration file",
    },
    ManagedKey {
        key: "hba_file",
        why: "Stator writes pg_hba.conf (scram-sha-256 only)",
    },
    ManagedKey {
        key: "ident_file",
        why: "Stator writes the ident file",
    },
    ManagedKey {
        key: "external_pid_file",
        why: "the instance manager tracks the postmaster",
    },
    ManagedKey {
        key: "wal_level",
        why: "replication needs wal_level=replica",
    },
    ManagedKey {
        key: "hot_standby",
        why: "replicas serve reads; Stator sets it",
    },
    ManagedKey {
        key: "wal_log_hints",
        why: "pg_rewind after a failover needs it on",
    },
    ManagedKey {
        key: "primary_conninfo",
        why: "replication is set up by Stator",
    },
    ManagedKey {
        key: "primary_slot_name",
        why: "replication slots are managed by Stator",
    },
    ManagedKey {
        key: "synchronous_standby_names",
        why: "use spec.replication.synchronous",
    },
    ManagedKey {
        key: "synchronous_commit",
        why: "use spec.replication.synchronous",
    },
    ManagedKey {
        key: "archive_mode",
        why: "WAL archiving is managed by Stator",
    },
    ManagedKey {
        key: "archive_command",
        why: "WAL archiving is managed by Stator",
    },
    ManagedKey {
        key: "restore_command",
        why: "recovery is managed by Stator",
    },
    ManagedKey {
        key: "recovery_target_time",
        why: "point-in-time recovery is managed by Stator",
    },
    ManagedKey {
        key: "promote_trigger_file",
        why: "promotion is decided by Stator",
    },
    ManagedKey {
        key: "password_encryption",
        why: "Stator requires scram-sha-256",
    },
    ManagedKey {
        key: "include",
        why: "Stator writes the whole configuration; an included file could override what it manages",
    },
    ManagedKey {
        key: "include_dir",
        why: "Stator writes the whole configuration; an included file could override what it manages",
    },
    ManagedKey {
        key: "include_if_exists",
        why: "Stator writes the whole configuration; an included file could override what it manages",
    },
    ManagedKey {
        key: "cluster_name",
        why: "Stator names each server after its instance (NAME-N); replication uses it",
    },
    ManagedKey {
        key: "unix_socket_permissions",
        why: "the socket is private to the server user (0700)",
    },
    ManagedKey {
        key: "hot_standby_feedback",
        why: "replicas serve reads; Stator sets it on",
    },
    ManagedKey {
        key: "logging_collector",
        why: "the instance manager collects the server's log",
    },
    ManagedKey {
        key: "log_file_mode",
        why: "the server log is readable only by the server user (0600)",
    },
    ManagedKey {
        key: "log_min_error_statement",
        why: "the text of a failed statement can carry a password (ALTER ROLE … PASSWORD); \
              Stator keeps statement text out of the log (it sets panic)",
    },
    ManagedKey {
        key: "log_parameter_max_length_on_error",
        why: "bind parameters can carry passwords and personal data; Stator keeps them out of \
              the log (it sets 0)",
    },
];

const MYSQL_MANAGED: &[ManagedKey] = &[
    ManagedKey {
        key: "ssl_ca",
        why: "TLS is managed by Stator (spec.tls; certificates in the database's TLS directory)",
    },
    ManagedKey {
        key: "ssl_cert",
        why: "TLS is managed by Stator (spec.tls; certificates in the database's TLS directory)",
    },
    ManagedKey {
        key: "ssl_key",
        why: "TLS is managed by Stator (spec.tls; certificates in the database's TLS directory)",
    },
    ManagedKey {
        key: "require_secure_transport",
        why: "TLS is managed by Stator (spec.tls; certificates in the database's TLS directory)",
    },
    ManagedKey {
        key: "tls_version",
        why: "TLS is managed by Stator (spec.tls; certificates in the database's TLS directory)",
    },
    ManagedKey {
        key: "port",
        why: "the port is fixed per runtime (3306 in pods, local.portBase locally)",
    },
    ManagedKey {
        key: "bind_address",
        why: "Stator binds the server (local.listenAddress locally, the pod IP on Kubernetes)",
    },
    ManagedKey {
        key: "socket",
        why: "the instance manager owns the socket",
    },
    ManagedKey {
        key: "datadir",
        why: "the data directory is the instance's volume",
    },
    ManagedKey {
        key: "pid_file",
        why: "the instance manager tracks the server",
    },
    ManagedKey {
        key: "user",
        why: "the server runs as the image's (or system's) mysql user",
    },
    ManagedKey {
        key: "skip_networking",
        why: "replication and the proxies need TCP",
    },
    ManagedKey {
        key: "server_id",
        why: "each instance gets a unique server_id from its ordinal",
    },
    ManagedKey {
        key: "log_bin",
        why: "replication needs the binary log",
    },
    ManagedKey {
        key: "binlog_format",
        why: "replication needs binlog_format=ROW",
    },
    ManagedKey {
        key: "gtid_mode",
        why: "replication uses GTIDs",
    },
    ManagedKey {
        key: "enforce_gtid_consistency",
        why: "replication uses GTIDs",
    },
    ManagedKey {
        key: "gtid_strict_mode",
        why: "replication uses strict GTIDs",
    },
    ManagedKey {
        key: "gtid_domain_id",
        why: "GTID domains are managed by Stator",
    },
    ManagedKey {
        key: "log_slave_updates",
        why: "every instance must be able to become primary",
    },
    ManagedKey {
        key: "log_replica_updates",
        why: "every instance must be able to become primary",
    },
    ManagedKey {
        key: "relay_log",
        why: "replication is set up by Stator",
    },
    ManagedKey {
        key: "read_only",
        why: "Stator sets it from the instance's role",
    },
    ManagedKey {
        key: "super_read_only",
        why: "Stator sets it from the instance's role",
    },
    ManagedKey {
        key: "rpl_semi_sync_master_enabled",
        why: "use spec.replication.synchronous",
    },
    ManagedKey {
        key: "rpl_semi_sync_slave_enabled",
        why: "use spec.replication.synchronous",
    },
    ManagedKey {
        key: "rpl_semi_sync_source_enabled",
        why: "use spec.replication.synchronous",
    },
    ManagedKey {
        key: "rpl_semi_sync_replica_enabled",
        why: "use spec.replication.synchronous",
    },
    ManagedKey {
        key: "rpl_semi_sync_master_wait_point",
        why: "use spec.replication.synchronous",
    },
    ManagedKey {
        key: "rpl_semi_sync_master_timeout",
        why: "use spec.replication.synchronous",
    },
    ManagedKey {
        key: "tmpdir",
        why: "temporary files go to the instance's private run directory",
    },
    ManagedKey {
        key: "log_error",
        why: "the instance manager names the server's log file",
    },
    ManagedKey {
        key: "log_raw",
        why: "it writes passwords unmasked into the logs",
    },
];

/// What Stator does to keep statement text (and so literals: passwords, personal data) out of
/// the server log, for the settings that would write it.
pub struct LogRule {
    pub key: &'static str,
    /// The values that write no statement text.
    pub allowed: fn(&str) -> bool,
    pub valid: &'static str,
    pub why: &'static str,
}

fn pg_disabled_duration(v: &str) -> bool {
    v.trim().starts_with('-')
}

fn none(v: &str) -> bool {
    v.trim().eq_ignore_ascii_case("none")
}

fn off(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "off" | "0" | "false" | "no"
    )
}

const PG_LOG_RULES: &[LogRule] = &[
    LogRule {
        key: "log_statement",
        allowed: none,
        valid: "none",
        why: "ddl, mod and all write statement text with its literals (ALTER ROLE … PASSWORD is ddl)",
    },
    LogRule {
        key: "log_min_duration_statement",
        allowed: pg_disabled_duration,
        valid: "-1",
        why: "a slow statement is logged with its text and literals",
    },
    LogRule {
        key: "log_min_duration_sample",
        allowed: pg_disabled_duration,
        valid: "-1",
        why: "a sampled statement is logged with its text and literals",
    },
    LogRule {
        key: "debug_print_parse",
        allowed: off,
        valid: "off",
        why: "parse trees hold the statement's literals",
    },
    LogRule {
        key: "debug_print_rewritten",
        allowed: off,
        valid: "off",
        why: "rewritten trees hold the statement's literals",
    },
    LogRule {
        key: "debug_print_plan",
        allowed: off,
        valid: "off",
        why: "plans hold the statement's literals",
    },
];

const MYSQL_LOG_RULES: &[LogRule] = &[
    LogRule {
        key: "general_log",
        allowed: off,
        valid: "0 (off)",
        why: "the general log holds every statement with its literals",
    },
    LogRule {
        key: "slow_query_log",
        allowed: off,
        valid: "0 (off)",
        why: "the slow log holds statement text with its literals",
    },
];

/// If `value` of `key` would write statement text to the server log: the valid value and why.
pub fn log_rule_violation(engine: Engine, key: &str, value: &str) -> Option<&'static LogRule> {
    let key = normalize_key(engine, key);
    let rules = if engine.is_mysql_family() {
        MYSQL_LOG_RULES
    } else {
        PG_LOG_RULES
    };
    rules
        .iter()
        .find(|r| r.key == key)
        .filter(|r| !(r.allowed)(value))
}

/// How a user-written key is compared: MySQL accepts `-` and `_` alike.
pub fn normalize_key(engine: Engine, key: &str) -> String {
    let key = key.trim().to_ascii_lowercase();
    if engine.is_mysql_family() {
        key.replace('-', "_")
    } else {
        key
    }
}

/// The keys of `engine` that Stator manages, with the reason.
pub fn managed_keys(engine: Engine) -> &'static [ManagedKey] {
    if engine.is_mysql_family() {
        MYSQL_MANAGED
    } else {
        PG_MANAGED
    }
}

/// If `key` is managed by Stator for `engine`, why.
pub fn managed_reason(engine: Engine, key: &str) -> Option<&'static str> {
    let key = normalize_key(engine, key);
    managed_keys(engine)
        .iter()
        .find(|m| {
            m.key == key
                || (key.starts_with("recovery_target") && m.key.starts_with("recovery_target"))
        })
        .map(|m| m.why)
}

/// Stator's defaults for `spec`, before the user's parameters. Memory-sized settings follow
/// `resources.limits.memory` (a quarter for PostgreSQL's shared buffers, half for InnoDB's pool).
pub fn default_parameters(spec: &DatabaseSpec) -> BTreeMap<String, String> {
    let memory = Quantity::parse(&spec.resources.limits.memory)
        .map(Quantity::bytes)
        .unwrap_or(1 << 30);
    let mib = |fraction: u64| format!("{}MB", (memory / fraction / (1 << 20)).max(32));
    let mut p = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        p.insert(k.to_string(), v);
    };
    match spec.engine {
        Engine::Postgres => {
            set("max_connections", "100".into());
            set("shared_buffers", mib(4));
            set("effective_cache_size", mib(2));
            set("max_wal_senders", "10".into());
            set("max_replication_slots", "10".into());
            set("wal_keep_size", "512MB".into());
            // A replica whose primary restarted reconnects after 1 s, not PostgreSQL's 5 s:
            // until then it is not ready, and `ro` may have no target.
            set("wal_retrieve_retry_interval", "1s".into());
            set("log_destination", "stderr".into());
            set("log_line_prefix", "%m [%p] %q%u@%d ".into());
            set("log_checkpoints", "on".into());
            set("log_lock_waits", "on".into());
        }
        Engine::Mysql | Engine::Mariadb => {
            set("character_set_server", "utf8mb4".into());
            let collation = if spec.engine == Engine::Mysql {
                "utf8mb4_0900_ai_ci"
            } else {
                "utf8mb4_unicode_ci"
            };
            set("collation_server", collation.into());
            set("innodb_flush_log_at_trx_commit", "1".into());
            set("sync_binlog", "1".into());
            set("innodb_buffer_pool_size", mib(2).replace("MB", "M"));
            set("max_connections", "151".into());
            set("skip_name_resolve", "1".into());
        }
    }
    p
}

/// Defaults overlaid with the user's parameters (keys normalised). Managed keys are not checked
/// here; validation refuses them before this is called.
pub fn effective_parameters(spec: &DatabaseSpec) -> BTreeMap<String, String> {
    let mut p = default_parameters(spec);
    for (k, v) in &spec.config.parameters {
        p.insert(normalize_key(spec.engine, k), v.0.clone());
    }
    p
}

/// The name of `names` closest to `wanted` (edit distance), when close enough to be a typo:
/// at most 2 edits, or a quarter of the name for long ones.
pub fn nearest_name<'a, S: AsRef<str> + ?Sized + 'a>(
    wanted: &str,
    names: impl IntoIterator<Item = &'a S>,
) -> Option<&'a str> {
    let limit = (wanted.chars().count() / 4).max(2);
    names
        .into_iter()
        .map(|n| (edit_distance(wanted, n.as_ref()), n.as_ref()))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, n)| n)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_finds_the_nearest_name_and_nonsense_finds_none() {
        let names = ["max_connections", "max_wal_senders", "work_mem"];
        assert_eq!(
            nearest_name("max_connectons", names.iter().copied()),
            Some("max_connections")
        );
        assert_eq!(
            nearest_name("wrok_mem", names.iter().copied()),
            Some("work_mem")
        );
        assert_eq!(nearest_name("frobnicate", names.iter().copied()), None);
    }

    #[test]
    fn settings_that_would_log_literals_are_named() {
        assert!(log_rule_violation(Engine::Postgres, "log_statement", "all").is_some());
        assert!(log_rule_violation(Engine::Postgres, "log_statement", "ddl").is_some());
        assert!(log_rule_violation(Engine::Postgres, "log_statement", "none").is_none());
        assert!(log_rule_violation(Engine::Postgres, "log_min_duration_statement", "0").is_some());
        assert!(log_rule_violation(Engine::Postgres, "log_min_duration_statement", "-1").is_none());
        assert!(log_rule_violation(Engine::Mariadb, "general-log", "ON").is_some());
        assert!(log_rule_violation(Engine::Mariadb, "slow_query_log", "0").is_none());
    }
}
