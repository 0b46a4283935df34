//! The PodDisruptionBudget (how many instances a drain may take at once) and the NetworkPolicy
//! (who may connect to what).

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use stator_api::Database;
use stator_api::names::INSTANCE_MANAGER_PORT;

use super::OperatorMode;
use super::meta::{object_meta, pod_selector};
use crate::install::operator_selector_labels;

/// `spec.disruption`, defaulting to `maxUnavailable: 1`: a drain takes one instance at a time and
/// never blocks forever, not even for a 1-instance database (validation warns about that one).
pub fn render_pod_disruption_budget(db: &Database) -> PodDisruptionBudget {
    let d = &db.spec.disruption;
    let (max_unavailable, min_available) = match (d.max_unavailable, d.min_available) {
        (_, Some(min)) => (None, Some(IntOrString::Int(min as i32))),
        (max, None) => (Some(IntOrString::Int(max.unwrap_or(1) as i32)), None),
    };
    PodDisruptionBudget {
        metadata: object_meta(db, db.name()),
        spec: Some(PodDisruptionBudgetSpec {
            selector: Some(pod_selector(db)),
            max_unavailable,
            min_available,
            // A pod that is not ready serves nothing the budget protects; evicting it must not
            // block a drain.
            unhealthy_pod_eviction_policy: Some("AlwaysAllow".into()),
        }),
        status: None,
    }
}

fn tcp(port: u16) -> NetworkPolicyPort {
    NetworkPolicyPort {
        port: Some(IntOrString::Int(i32::from(port))),
        protocol: Some("TCP".into()),
        end_port: None,
    }
}

fn own_pods(db: &Database) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        pod_selector: Some(pod_selector(db)),
        ..NetworkPolicyPeer::default()
    }
}

/// The operator's pods, in its namespace (by the name label every namespace carries).
fn operator_pods(operator: &OperatorMode) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                NAMESPACE_NAME_LABEL.to_string(),
                operator.operator_namespace.clone(),
            )])),
            match_expressions: None,
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(operator_selector_labels()),
            match_expressions: None,
        }),
        ip_block: None,
    }
}

/// The label the API server sets on every Namespace to its name.
const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// Ingress: clients (`spec.network.allowFrom`, default every pod of the namespace) to the
/// database port; the database's own pods to the database port and the instance manager (for
/// replication and cloning). Egress: DNS, and the database's own pods on those two ports.
///
/// Operator mode (`operator`: the operator's namespace) adds one ingress rule: the operator's
/// pods to the instance manager, for its `/status` reads and its orders. `spec.backup` adds the
/// egress to the repository's port, and in plain mode the backup CronJob's pods to the
/// instance manager.
pub fn render_network_policy(db: &Database, operator: Option<&OperatorMode>) -> NetworkPolicy {
    let port = db.spec.engine.port();
    let clients = if db.spec.network.allow_from.is_empty() {
        vec![NetworkPolicyPeer {
            pod_selector: Some(LabelSelector::default()),
            ..NetworkPolicyPeer::default()
        }]
    } else {
        db.spec.network.allow_from.clone()
    };
    let peer_ports = vec![tcp(port), tcp(INSTANCE_MANAGER_PORT)];
    let dns = ["UDP", "TCP"]
        .into_iter()
        .map(|protocol| NetworkPolicyPort {
            port: Some(IntOrString::Int(53)),
            protocol: Some(protocol.into()),
            end_port: None,
        })
        .collect();
    let mut ingress = vec![
        NetworkPolicyIngressRule {
            from: Some(clients),
            ports: Some(vec![tcp(port)]),
        },
        NetworkPolicyIngressRule {
            from: Some(vec![own_pods(db)]),
            ports: Some(peer_ports.clone()),
        },
    ];
    if let Some(operator) = operator {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![operator_pods(operator)]),
            ports: Some(vec![tcp(INSTANCE_MANAGER_PORT)]),
        });
    }
    // spec.backup, plain mode: the backup CronJob's pods ask the instance managers for a backup.
    if db.spec.backup.is_some() && operator.is_none() {
        ingress.push(NetworkPolicyIngressRule {
            from: Some(vec![NetworkPolicyPeer {
                pod_selector: Some(LabelSelector {
                    match_labels: Some(super::backup::backup_job_labels(db)),
                    match_expressions: None,
                }),
                ..NetworkPolicyPeer::default()
            }]),
            ports: Some(vec![tcp(INSTANCE_MANAGER_PORT)]),
        });
    }
    let mut egress = vec![
        NetworkPolicyEgressRule {
            to: None,
            ports: Some(dns),
        },
        NetworkPolicyEgressRule {
            to: Some(vec![own_pods(db)]),
            ports: Some(peer_ports),
        },
    ];
    // spec.backup: the repository's endpoint, by port (a NetworkPolicy cannot name a host, and
    // the store's addresses are not known here).
    if let Some(port) = super::backup::repository_port(db) {
        egress.push(NetworkPolicyEgressRule {
            to: None,
            ports: Some(vec![tcp(port)]),
        });
    }
    NetworkPolicy {
        metadata: object_meta(db, db.name()),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pod_selector(db)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(ingress),
            egress: Some(egress),
        }),
    }
}
