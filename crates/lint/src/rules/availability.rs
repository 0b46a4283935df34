//! Availability of database workloads: StatefulSet use, pod management, disruption budgets
//! and spreading replicas over nodes.

use crate::finding::{Finding, Rule, Severity};
use crate::node::{Node, Value};
use crate::object::{Manifests, Object, Selector, Workload};

pub const NOT_A_STATEFULSET: Rule = Rule {
    id: "STATOR-AVL-001",
    name: "database-not-statefulset",
    severity: Severity::Warning,
    summary: "A database runs in a Deployment, ReplicaSet, DaemonSet or bare Pod: no stable identity, per-pod volume or ordered roll-out.",
    rationale: "Guide, \"why StatefulSet\": stable network identity, persistent storage per pod, ordered start and stop.",
    fix: "run the database as a StatefulSet with volumeClaimTemplates and a headless Service",
};

pub const PARALLEL_POD_MANAGEMENT: Rule = Rule {
    id: "STATOR-AVL-002",
    name: "parallel-pod-management",
    severity: Severity::Error,
    summary: "A replicated database StatefulSet uses `podManagementPolicy: Parallel`: replicas start before the primary is ready and all stop at once.",
    rationale: "Guide: ordered roll-out and roll-back for data consistency; issue 3: OrderedReady.",
    fix: "set podManagementPolicy: OrderedReady (the default)",
};

pub const NO_DISRUPTION_BUDGET: Rule = Rule {
    id: "STATOR-AVL-003",
    name: "no-disruption-budget",
    severity: Severity::Warning,
    summary: "No PodDisruptionBudget in the input selects the database's pods: a node drain may evict every instance at once.",
    rationale: "Guide (operations: PDB; checklist: availability): a PDB keeps a minimum available during evictions.",
    fix: "add a PodDisruptionBudget with maxUnavailable: 1 selecting the database pods",
};

pub const DRAIN_BLOCKING_BUDGET: Rule = Rule {
    id: "STATOR-AVL-004",
    name: "drain-blocking-disruption-budget",
    severity: Severity::Warning,
    summary: "A PodDisruptionBudget allows no eviction at all (minAvailable ≥ replicas, minAvailable 100% or maxUnavailable 0): `kubectl drain` waits forever.",
    rationale: "Guide: fault-injection routine `kubectl drain`; issue 3: the budget never blocks a drain forever without saying so.",
    fix: "use maxUnavailable: 1 (with one instance, accept the downtime of a drain or add replicas)",
};

pub const NO_ANTI_AFFINITY: Rule = Rule {
    id: "STATOR-AVL-005",
    name: "no-anti-affinity",
    severity: Severity::Warning,
    summary: "A database with several replicas has no pod anti-affinity or topology spread over its own pods: all instances may land on one node.",
    rationale: "Guide (operations: anti-affinity / topology spread): force replicas apart across nodes and zones.",
    fix: "add podAntiAffinity on kubernetes.io/hostname (or a topologySpreadConstraint) selecting the database's own pods",
};

pub const RULES: &[&Rule] = &[
    &NOT_A_STATEFULSET,
    &PARALLEL_POD_MANAGEMENT,
    &NO_DISRUPTION_BUDGET,
    &DRAIN_BLOCKING_BUDGET,
    &NO_ANTI_AFFINITY,
];

pub fn check(manifests: &Manifests, out: &mut Vec<Finding>) {
    let databases = manifests.databases();
    let budgets: Vec<&Object> = manifests.of_kind("PodDisruptionBudget").collect();
    for workload in &databases {
        let object = workload.object;
        if object.kind != "StatefulSet" {
            out.push(NOT_A_STATEFULSET.at(
                object,
                object.line,
                format!("a database runs as a {}", object.kind),
            ));
        }
        let replicas = workload.replicas();
        if object.kind == "StatefulSet"
            && replicas > 1
            && object
                .node
                .path(&["spec", "podManagementPolicy"])
                .and_then(Node::as_str)
                == Some("Parallel")
        {
            out.push(PARALLEL_POD_MANAGEMENT.at(
                object,
                spec_line(object, "podManagementPolicy"),
                format!("{replicas} replicas are started and stopped in parallel"),
            ));
        }
        if object.kind != "Pod" && !budgets.iter().any(|b| selects(b, workload)) {
            out.push(NO_DISRUPTION_BUDGET.at(
                object,
                object.line,
                "no PodDisruptionBudget selects these pods".into(),
            ));
        }
        if replicas > 1 && !spreads_own_pods(workload) {
            out.push(NO_ANTI_AFFINITY.at(
                object,
                spec_line(object, "replicas"),
                format!("{replicas} replicas with no anti-affinity or topology spread over their own pods"),
            ));
        }
    }
    for budget in budgets {
        let replicas = databases
            .iter()
            .filter(|w| selects(budget, w))
            .map(Workload::replicas)
            .max();
        if let Some((line, why)) = blocks_every_drain(budget, replicas) {
            out.push(DRAIN_BLOCKING_BUDGET.at(budget, line, why));
        }
    }
}

fn spec_line(object: &Object, key: &str) -> usize {
    object.spec().map_or(object.line, |s| s.line_of(key))
}

fn selects(budget: &Object, workload: &Workload<'_>) -> bool {
    budget.shares_namespace_with(workload.object)
        && budget
            .node
            .path(&["spec", "selector"])
            .is_some_and(|s| Selector::of(s).matches(&workload.labels()))
}

fn spreads_own_pods(workload: &Workload<'_>) -> bool {
    let labels = workload.labels();
    let matches_own = |term: &Node| {
        term.get("labelSelector")
            .is_some_and(|s| !Selector::of(s).is_empty() && Selector::of(s).matches(&labels))
    };
    let anti = workload.pod.path(&["affinity", "podAntiAffinity"]);
    let required = anti
        .and_then(|a| a.get("requiredDuringSchedulingIgnoredDuringExecution"))
        .map(Node::items)
        .unwrap_or(&[])
        .iter()
        .any(matches_own);
    let preferred = anti
        .and_then(|a| a.get("preferredDuringSchedulingIgnoredDuringExecution"))
        .map(Node::items)
        .unwrap_or(&[])
        .iter()
        .filter_map(|p| p.get("podAffinityTerm"))
        .any(matches_own);
    let spread = workload
        .pod
        .get("topologySpreadConstraints")
        .map(Node::items)
        .unwrap_or(&[])
        .iter()
        .any(matches_own);
    required || preferred || spread
}

/// A percentage (`"100%"`) or an integer.
enum Amount {
    Count(i64),
    Percent(i64),
}

fn amount(node: &Node) -> Option<Amount> {
    match &node.value {
        Value::Int(i) => Some(Amount::Count(*i)),
        Value::Str(s) => s
            .trim()
            .strip_suffix('%')
            .and_then(|p| p.trim().parse().ok())
            .map(Amount::Percent)
            .or_else(|| s.trim().parse().ok().map(Amount::Count)),
        _ => None,
    }
}

fn blocks_every_drain(budget: &Object, replicas: Option<i64>) -> Option<(usize, String)> {
    let spec = budget.spec()?;
    if let Some(entry) = spec.entry("maxUnavailable") {
        return match amount(&entry.value)? {
            Amount::Count(0) | Amount::Percent(0) => Some((
                entry.key_line,
                "maxUnavailable 0: no pod may ever be evicted".into(),
            )),
            _ => None,
        };
    }
    let entry = spec.entry("minAvailable")?;
    match (amount(&entry.value)?, replicas) {
        (Amount::Percent(p), _) if p >= 100 => Some((
            entry.key_line,
            format!("minAvailable {p}%: no pod may ever be evicted"),
        )),
        (Amount::Count(n), Some(r)) if n >= r => Some((
            entry.key_line,
            format!(
                "minAvailable {n} with {r} replica(s): no pod may ever be evicted, so a drain never finishes"
            ),
        )),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_support::{GOOD_DATABASE, lines_of, lint};

    #[test]
    fn databases_in_deployments_are_reported() {
        let yaml = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: db}\nspec:\n  template:\n    spec:\n      containers:\n      - {name: db, image: postgres:16}\n";
        assert_eq!(lines_of(&lint(yaml), NOT_A_STATEFULSET.id), vec![3]);
    }

    #[test]
    fn parallel_pod_management_is_an_error_for_replicated_databases_only() {
        let yaml = GOOD_DATABASE.replace(
            "podManagementPolicy: OrderedReady",
            "podManagementPolicy: Parallel",
        );
        assert_eq!(lines_of(&lint(&yaml), PARALLEL_POD_MANAGEMENT.id), vec![9]);
        let single = yaml.replace("replicas: 3", "replicas: 1");
        assert_eq!(
            lines_of(&lint(&single), PARALLEL_POD_MANAGEMENT.id),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn a_budget_must_select_the_pods() {
        let yaml = GOOD_DATABASE.replace(
            "  maxUnavailable: 1\n  selector: {matchLabels: {app: db}}",
            "  maxUnavailable: 1\n  selector: {matchLabels: {app: other}}",
        );
        assert_eq!(lines_of(&lint(&yaml), NO_DISRUPTION_BUDGET.id), vec![4]);
        let other_namespace = GOOD_DATABASE.replace(
            "metadata: {name: db, namespace: prod}\nspec:\n  maxUnavailable",
            "metadata: {name: db, namespace: dev}\nspec:\n  maxUnavailable",
        );
        assert_eq!(
            lines_of(&lint(&other_namespace), NO_DISRUPTION_BUDGET.id),
            vec![4]
        );
    }

    #[test]
    fn budgets_that_block_every_drain_are_found() {
        let min_all = GOOD_DATABASE.replace("  maxUnavailable: 1\n", "  minAvailable: 3\n");
        assert_eq!(
            lines_of(&lint(&min_all), DRAIN_BLOCKING_BUDGET.id),
            vec![58]
        );
        let min_some = GOOD_DATABASE.replace("  maxUnavailable: 1\n", "  minAvailable: 2\n");
        assert_eq!(
            lines_of(&lint(&min_some), DRAIN_BLOCKING_BUDGET.id),
            Vec::<usize>::new()
        );
        let zero = GOOD_DATABASE.replace("  maxUnavailable: 1\n", "  maxUnavailable: \"0%\"\n");
        assert_eq!(lines_of(&lint(&zero), DRAIN_BLOCKING_BUDGET.id), vec![58]);
    }

    #[test]
    fn replicas_need_anti_affinity_over_their_own_pods() {
        let yaml = GOOD_DATABASE.replace(
            "- labelSelector: {matchLabels: {app: db}}",
            "- labelSelector: {matchLabels: {app: web}}",
        );
        assert_eq!(lines_of(&lint(&yaml), NO_ANTI_AFFINITY.id), vec![8]);
        let spread = yaml.replace(
            "      containers:\n",
            "      topologySpreadConstraints:\n      - {maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {app: db}}}\n      containers:\n",
        );
        assert_eq!(
            lines_of(&lint(&spread), NO_ANTI_AFFINITY.id),
            Vec::<usize>::new()
        );
    }
}
