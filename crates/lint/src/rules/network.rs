//! Network exposure of database pods: a NetworkPolicy must select them and must not let every
//! source in; Services must not publish them outside the cluster.

use crate::finding::{Finding, Rule, Severity};
use crate::node::Node;
use crate::object::{Manifests, Object, Selector, Workload};

pub const NO_NETWORK_POLICY: Rule = Rule {
    id: "STATOR-NET-001",
    name: "no-network-policy",
    severity: Severity::Warning,
    summary: "No NetworkPolicy in the input restricts ingress to the database's pods: every pod in the cluster can connect.",
    rationale: "Guide (components: NetworkPolicy, minimise who can reach the DB; checklist: security); issue 3: a NetworkPolicy from network.allowFrom.",
    fix: "add a NetworkPolicy selecting the database pods with policyTypes [Ingress] that allows only the clients and the other instances",
};

pub const POLICY_ALLOWS_ALL: Rule = Rule {
    id: "STATOR-NET-002",
    name: "network-policy-allows-all",
    severity: Severity::Warning,
    summary: "A NetworkPolicy selecting database pods has an ingress rule that admits every source (no `from`, 0.0.0.0/0, or all namespaces).",
    rationale: "Guide: minimise the range allowed to reach the database; an allow-all rule makes the policy a no-op.",
    fix: "list the allowed clients in `from` (podSelector / namespaceSelector with labels)",
};

pub const EXPOSED_OUTSIDE_CLUSTER: Rule = Rule {
    id: "STATOR-NET-003",
    name: "database-exposed-outside-cluster",
    severity: Severity::Warning,
    summary: "A Service of type LoadBalancer or NodePort (or with externalIPs) selects database pods: the database is reachable from outside the cluster.",
    rationale: "Guide: applications reach the database through a ClusterIP Service; NetworkPolicy keeps the allowed range minimal.",
    fix: "use a ClusterIP Service (the guide's db-write / db-read) and reach it through the application or a port-forward",
};

pub const RULES: &[&Rule] = &[
    &NO_NETWORK_POLICY,
    &POLICY_ALLOWS_ALL,
    &EXPOSED_OUTSIDE_CLUSTER,
];

pub fn check(manifests: &Manifests, out: &mut Vec<Finding>) {
    let databases = manifests.databases();
    let policies: Vec<&Object> = manifests.of_kind("NetworkPolicy").collect();
    for workload in &databases {
        let selecting: Vec<&Object> = policies
            .iter()
            .copied()
            .filter(|p| policy_selects(p, workload) && restricts_ingress(p))
            .collect();
        if selecting.is_empty() {
            out.push(NO_NETWORK_POLICY.at(
                workload.object,
                workload.object.line,
                "no NetworkPolicy restricts ingress to these pods".into(),
            ));
        }
    }
    for policy in &policies {
        if !databases.iter().any(|w| policy_selects(policy, w)) {
            continue;
        }
        for rule in policy
            .node
            .path(&["spec", "ingress"])
            .map(Node::items)
            .unwrap_or(&[])
        {
            if let Some(why) = admits_everyone(rule) {
                out.push(POLICY_ALLOWS_ALL.at(policy, rule.line, why));
            }
        }
    }
    for service in manifests.of_kind("Service") {
        let Some(spec) = service.spec() else { continue };
        let kind = spec
            .get("type")
            .and_then(Node::as_str)
            .unwrap_or("ClusterIP");
        let external_ips = spec
            .get("externalIPs")
            .is_some_and(|e| !e.items().is_empty());
        if !matches!(kind, "LoadBalancer" | "NodePort") && !external_ips {
            continue;
        }
        let Some(selector) = spec.get("selector").map(Selector::of_map) else {
            continue;
        };
        if selector.is_empty() {
            continue;
        }
        if let Some(db) = databases
            .iter()
            .find(|w| w.object.shares_namespace_with(service) && selector.matches(&w.labels()))
        {
            let line = if external_ips {
                spec.line_of("externalIPs")
            } else {
                spec.line_of("type")
            };
            let how = if external_ips {
                "has externalIPs".to_string()
            } else {
                format!("is of type {kind}")
            };
            out.push(EXPOSED_OUTSIDE_CLUSTER.at(
                service,
                line,
                format!(
                    "the Service {how} and selects the pods of {}",
                    db.object.display()
                ),
            ));
        }
    }
}

fn policy_selects(policy: &Object, workload: &Workload<'_>) -> bool {
    policy.shares_namespace_with(workload.object)
        && policy
            .node
            .path(&["spec", "podSelector"])
            .is_some_and(|s| Selector::of(s).matches(&workload.labels()))
}

/// Whether the policy is about ingress: `policyTypes` lists Ingress, or is absent (Kubernetes
/// then always includes Ingress).
fn restricts_ingress(policy: &Object) -> bool {
    match policy.node.path(&["spec", "policyTypes"]) {
        None => true,
        Some(types) => types.items().iter().any(|t| t.as_str() == Some("Ingress")),
    }
}

fn admits_everyone(rule: &Node) -> Option<String> {
    let from = rule.get("from").map(Node::items).unwrap_or(&[]);
    if from.is_empty() {
        return Some("an ingress rule without `from` admits every source".into());
    }
    for peer in from {
        if let Some(cidr) = peer.path(&["ipBlock", "cidr"]).and_then(Node::as_str)
            && matches!(cidr, "0.0.0.0/0" | "::/0")
            && peer
                .path(&["ipBlock", "except"])
                .is_none_or(|e| e.items().is_empty())
        {
            return Some(format!("ipBlock {cidr} admits every address"));
        }
        let all_namespaces = peer
            .get("namespaceSelector")
            .is_some_and(|s| Selector::of(s).is_empty());
        let any_pod = peer
            .get("podSelector")
            .is_none_or(|s| Selector::of(s).is_empty());
        if all_namespaces && any_pod {
            return Some("an empty namespaceSelector admits every pod of every namespace".into());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_support::{GOOD_DATABASE, lines_of, lint};

    #[test]
    fn a_database_without_an_ingress_policy_is_reported() {
        let yaml = GOOD_DATABASE.replace(
            "podSelector: {matchLabels: {app: db}}\n  policyTypes: [Ingress]",
            "podSelector: {matchLabels: {app: db}}\n  policyTypes: [Egress]",
        );
        assert_eq!(lines_of(&lint(&yaml), NO_NETWORK_POLICY.id), vec![4]);
        let absent = GOOD_DATABASE.replace("  policyTypes: [Ingress]\n", "");
        assert_eq!(
            lines_of(&lint(&absent), NO_NETWORK_POLICY.id),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn allow_all_ingress_rules_are_found() {
        let yaml = GOOD_DATABASE.replace("  - from:\n    - podSelector: {matchLabels: {role: app}}\n", "  - ports: [{port: 5432}]\n  - from: [{ipBlock: {cidr: 0.0.0.0/0}}]\n  - from: [{namespaceSelector: {}}]\n");
        assert_eq!(
            lines_of(&lint(&yaml), POLICY_ALLOWS_ALL.id),
            vec![68, 69, 70]
        );
    }

    #[test]
    fn load_balancers_in_front_of_databases_are_reported() {
        let service = "---\napiVersion: v1\nkind: Service\nmetadata: {name: db-public, namespace: prod}\nspec:\n  type: LoadBalancer\n  selector: {app: db}\n  ports: [{port: 5432}]\n";
        let yaml = format!("{GOOD_DATABASE}{service}");
        assert_eq!(lines_of(&lint(&yaml), EXPOSED_OUTSIDE_CLUSTER.id), vec![75]);
        let internal = yaml.replace("  type: LoadBalancer\n", "");
        assert_eq!(lint(&internal), vec![]);
    }
}
