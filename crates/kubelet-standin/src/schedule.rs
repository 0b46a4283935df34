//! Choosing a node for a pending pod, as the scheduler's filters would: `nodeSelector`, taints
//! the pod does not tolerate, the node a bound local PV pins it to, and required pod
//! anti-affinity (both the pod's own terms and those of pods already placed). No feasible node
//! leaves the pod Pending. Among feasible nodes the one with the fewest pods wins.
//!
//! Not done (the pod is placed as if they were absent): required node affinity expressions,
//! required pod affinity, preferred terms of any kind, resource requests, topology spread.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, PodAffinityTerm};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// The node names a pod is allowed on, and what the cluster looks like.
pub(crate) struct Cluster<'a> {
    pub nodes: &'a [Node],
    /// Pods bound to a node and not finished.
    pub placed: &'a [Pod],
}

fn labels(meta: &Option<BTreeMap<String, String>>) -> BTreeMap<String, String> {
    meta.clone().unwrap_or_default()
}

/// Whether `selector` selects an object with `labels`.
pub(crate) fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let by_labels = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let by_expressions = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    by_labels && by_expressions
}

fn node_label(node: &Node, key: &str) -> Option<String> {
    node.metadata.labels.as_ref()?.get(key).cloned()
}

fn required_anti_affinity(pod: &Pod) -> Vec<PodAffinityTerm> {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.pod_anti_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .clone()
        })
        .unwrap_or_default()
}

/// Whether term (of a pod in `term_namespace`) matches `other`.
fn term_matches(term: &PodAffinityTerm, term_namespace: &str, other: &Pod) -> bool {
    let other_ns = other.metadata.namespace.as_deref().unwrap_or("default");
    let namespaces = term.namespaces.clone().unwrap_or_default();
    let in_namespace = if namespaces.is_empty() && term.namespace_selector.is_none() {
        other_ns == term_namespace
    } else {
        namespaces.iter().any(|n| n == other_ns) || term.namespace_selector.is_some()
    };
    let selected = term
        .label_selector
        .as_ref()
        .is_some_and(|s| selects(s, &labels(&other.metadata.labels)));
    in_namespace && selected
}

fn node_of<'a>(nodes: &'a [Node], pod: &Pod) -> Option<&'a Node> {
    let name = pod.spec.as_ref()?.node_name.as_deref()?;
    nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(name))
}

fn tolerates(pod: &Pod, node: &Node) -> bool {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let taints = node
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    taints
        .iter()
        .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
        .all(|t| {
            tolerations.iter().any(|tol| {
                let effect_ok = tol
                    .effect
                    .as_deref()
                    .is_none_or(|e| e.is_empty() || e == t.effect);
                let key_ok = tol
                    .key
                    .as_deref()
                    .is_none_or(|k| k.is_empty() || k == t.key);
                let value_ok = match tol.operator.as_deref() {
                    Some("Exists") => true,
                    _ => tol.value.as_deref().unwrap_or("") == t.value.as_deref().unwrap_or(""),
                };
                effect_ok && key_ok && value_ok
            })
        })
}

fn node_selector_ok(pod: &Pod, node: &Node) -> bool {
    let node_labels = labels(&node.metadata.labels);
    pod.spec
        .as_ref()
        .and_then(|s| s.node_selector.clone())
        .unwrap_or_default()
        .iter()
        .all(|(k, v)| node_labels.get(k) == Some(v))
}

/// Whether placing `pod` on `node` breaks a required anti-affinity term, its own or another's.
fn anti_affinity_ok(pod: &Pod, node: &Node, cluster: &Cluster) -> bool {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let own = required_anti_affinity(pod);
    cluster.placed.iter().all(|other| {
        let Some(other_node) = node_of(cluster.nodes, other) else {
            return true;
        };
        let same_topology = |key: &str| {
            let here = node_label(node, key);
            here.is_some() && here == node_label(other_node, key)
        };
        let mine_ok = own
            .iter()
            .all(|t| !(same_topology(&t.topology_key) && term_matches(t, ns, other)));
        let other_ns = other.metadata.namespace.as_deref().unwrap_or("default");
        let theirs_ok = required_anti_affinity(other)
            .iter()
            .all(|t| !(same_topology(&t.topology_key) && term_matches(t, other_ns, pod)));
        mine_ok && theirs_ok
    })
}

/// The node to bind `pod` to, or `None` to leave it Pending. `pinned`: the node a bound local
/// PV of one of its claims requires.
pub(crate) fn choose_node(
    pod: &Pod,
    cluster: &Cluster,
    schedulable: &dyn Fn(&str) -> bool,
    pinned: Option<&str>,
) -> Option<String> {
    cluster
        .nodes
        .iter()
        .filter(|n| {
            let name = n.metadata.name.as_deref().unwrap_or_default();
            schedulable(name)
                && pinned.is_none_or(|p| p == name)
                && tolerates(pod, n)
                && node_selector_ok(pod, n)
                && anti_affinity_ok(pod, n, cluster)
        })
        .min_by_key(|n| {
            cluster
                .placed
                .iter()
                .filter(|p| {
                    p.spec.as_ref().and_then(|s| s.node_name.as_deref())
                        == n.metadata.name.as_deref()
                })
                .count()
        })
        .and_then(|n| n.metadata.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Affinity, PodAntiAffinity, PodSpec};
    use kube::api::ObjectMeta;

    fn node(name: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("kubernetes.io/hostname".to_string(), name.to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Node::default()
        }
    }

    fn pod(name: &str, node: Option<&str>) -> Pod {
        let term = PodAffinityTerm {
            label_selector: Some(LabelSelector {
                match_labels: Some([("app".to_string(), "db".to_string())].into()),
                ..LabelSelector::default()
            }),
            topology_key: "kubernetes.io/hostname".into(),
            ..PodAffinityTerm::default()
        };
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("default".into()),
                labels: Some([("app".to_string(), "db".to_string())].into()),
                ..ObjectMeta::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(str::to_string),
                affinity: Some(Affinity {
                    pod_anti_affinity: Some(PodAntiAffinity {
                        required_during_scheduling_ignored_during_execution: Some(vec![term]),
                        ..PodAntiAffinity::default()
                    }),
                    ..Affinity::default()
                }),
                ..PodSpec::default()
            }),
            ..Pod::default()
        }
    }

    #[test]
    fn required_anti_affinity_spreads_pods_and_leaves_the_fourth_pending() {
        let nodes = vec![node("a"), node("b"), node("c")];
        let placed = vec![pod("db-0", Some("a")), pod("db-1", Some("b"))];
        let cluster = Cluster {
            nodes: &nodes,
            placed: &placed,
        };
        let all = |_: &str| true;
        assert_eq!(
            choose_node(&pod("db-2", None), &cluster, &all, None).as_deref(),
            Some("c")
        );
        let placed = vec![
            pod("db-0", Some("a")),
            pod("db-1", Some("b")),
            pod("db-2", Some("c")),
        ];
        let cluster = Cluster {
            nodes: &nodes,
            placed: &placed,
        };
        assert_eq!(choose_node(&pod("db-3", None), &cluster, &all, None), None);
    }

    #[test]
    fn a_pinned_pod_goes_to_its_volume_node_or_nowhere() {
        let nodes = vec![node("a"), node("b")];
        let cluster = Cluster {
            nodes: &nodes,
            placed: &[],
        };
        let all = |_: &str| true;
        assert_eq!(
            choose_node(&pod("db-0", None), &cluster, &all, Some("b")).as_deref(),
            Some("b")
        );
        let not_b = |n: &str| n != "b";
        assert_eq!(
            choose_node(&pod("db-0", None), &cluster, &not_b, Some("b")),
            None
        );
    }
}
