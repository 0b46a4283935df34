//! The `Database` status subresource: what the runtime observed. Written by the operator and the
//! local runtime, never by users.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Observed state of a `Database`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseStatus {
    /// Coarse lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// `metadata.generation` of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Instance currently serving writes (`NAME-N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_primary: Option<String>,
    /// Number of instances that pass their readiness check.
    #[serde(default)]
    pub ready_instances: u32,
    /// One entry per instance, by ordinal.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<InstanceStatus>,
    /// Standard conditions: `Ready`, `Available`, `Progressing`, `FailingOver`, `SpecValid`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The operator's failover record: `state` (`stator_failover::FailoverState`: the decision
    /// core's memory, the failover and switchover history with each event's write outage, the
    /// timelines; a restarted or new operator leader continues a failover from it) and
    /// `report` (`stator_failover::FailoverReport`, what `stator status --kube` prints).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub failover: Option<serde_json::Value>,
    /// The last switchover request (`stator.dev/switchover` annotation id) the operator took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<SwitchoverStatus>,
}

/// A switchover asked through the `stator.dev/switchover` annotation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverStatus {
    /// The annotation's id: taken once.
    pub id: String,
    /// `pending`, `done`, `refused`, … (the failover shell's ticket state).
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// An object whose fields the API server keeps as written.
fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// Lifecycle phase of a database.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Instances are being created.
    Creating,
    /// Every instance is ready and the primary serves writes.
    Ready,
    /// The primary serves writes but some instances are not ready.
    Degraded,
    /// A failover or switchover is in progress.
    FailingOver,
    /// No primary serves writes.
    Unavailable,
    /// The spec can never work; see the `SpecValid` condition.
    Invalid,
    /// Stopped on purpose (`stator down`).
    Stopped,
}

/// What one instance reported.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    /// `NAME-N`.
    pub name: String,
    /// `primary` or `replica`; unset while unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// Passes its readiness check.
    #[serde(default)]
    pub ready: bool,
    /// Replication position: an LSN (`0/3000060`) for PostgreSQL, a GTID set for MySQL/MariaDB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// PostgreSQL timeline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    /// Bytes (PostgreSQL) or transactions (MySQL family) behind the primary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// Why it is not ready, in words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The role of an instance. Also the value of the `stator.dev/role` pod label.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Replica,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
