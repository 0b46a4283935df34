//! The rules, one module per area of the guide's operations checklist. Ids are
//! `STATOR-<AREA>-<NNN>`, never reused:
//!
//! | area | module | what |
//! |---|---|---|
//! | `SEC` | [`secrets`] | passwords on command lines, literal and weak secrets, disabled authentication |
//! | `CTX` | [`pod_security`] | security context: root, privilege, capabilities, seccomp, fsGroup, API token |
//! | `RES` | [`resources`] | requests and memory limits |
//! | `PRB` | [`probes`] | readiness, liveness and start-up probes |
//! | `STO` | [`storage`] | access modes, persistence, StorageClass and snapshot policies |
//! | `AVL` | [`availability`] | StatefulSet use, pod management, disruption budgets, anti-affinity |
//! | `NET` | [`network`] | NetworkPolicy coverage and exposure outside the cluster |
//! | `IMG` | [`images`] | image tags |
//! | `TLS` | [`tls`] | database servers serving without TLS |
//!
//! Workload rules apply to database workloads only ([`crate::object::Workload::is_database`]):
//! the linter is for database manifests, and an application Deployment next to them is not its
//! business. Secret rules apply to every object, because a leaked password leaks wherever it is.

pub mod availability;
pub mod images;
pub mod network;
pub mod pod_security;
pub mod probes;
pub mod resources;
pub mod secrets;
pub mod storage;
pub mod tls;

use crate::finding::{Finding, Rule};
use crate::object::Manifests;

/// Every rule, in id order.
pub fn rules() -> Vec<&'static Rule> {
    let mut all: Vec<&'static Rule> = [
        secrets::RULES,
        pod_security::RULES,
        resources::RULES,
        probes::RULES,
        storage::RULES,
        availability::RULES,
        network::RULES,
        images::RULES,
        tls::RULES,
    ]
    .into_iter()
    .flatten()
    .copied()
    .collect();
    all.sort_by_key(|r| r.id);
    all
}

/// Runs every rule over the manifests.
pub fn check_all(manifests: &Manifests) -> Vec<Finding> {
    let mut out = Vec::new();
    secrets::check(manifests, &mut out);
    pod_security::check(manifests, &mut out);
    resources::check(manifests, &mut out);
    probes::check(manifests, &mut out);
    storage::check(manifests, &mut out);
    availability::check(manifests, &mut out);
    network::check(manifests, &mut out);
    images::check(manifests, &mut out);
    tls::check(manifests, &mut out);
    out
}

#[cfg(test)]
pub(crate) mod test_support {
    use crate::finding::Finding;
    use crate::source::{Source, parse_sources};

    /// Lints one YAML text (file name `t.yaml`).
    pub fn lint(yaml: &str) -> Vec<Finding> {
        let manifests = parse_sources(&[Source {
            file: "t.yaml".into(),
            text: yaml.to_string(),
        }])
        .expect("test YAML parses");
        super::check_all(&manifests)
    }

    /// The lines at which `rule` fired.
    pub fn lines_of(findings: &[Finding], rule: &str) -> Vec<usize> {
        findings
            .iter()
            .filter(|f| f.rule == rule)
            .map(|f| f.line)
            .collect()
    }

    /// A hardened single-container database StatefulSet that no workload rule fires on,
    /// with its PDB and NetworkPolicy. Tests break one thing at a time by text replacement.
    pub const GOOD_DATABASE: &str = r#"apiVersion: apps/v1
kind: StatefulSet
metadata:
  name: db
  namespace: prod
spec:
  serviceName: db-headless
  replicas: 3
  podManagementPolicy: OrderedReady
  selector: {matchLabels: {app: db}}
  template:
    metadata:
      labels: {app: db}
    spec:
      automountServiceAccountToken: false
      securityContext:
        runAsNonRoot: true
        runAsUser: 999
        fsGroup: 999
        seccompProfile: {type: RuntimeDefault}
      affinity:
        podAntiAffinity:
          requiredDuringSchedulingIgnoredDuringExecution:
          - labelSelector: {matchLabels: {app: db}}
            topologyKey: kubernetes.io/hostname
      containers:
      - name: postgres
        image: postgres:15
        securityContext:
          allowPrivilegeEscalation: false
          readOnlyRootFilesystem: true
          capabilities: {drop: [ALL]}
        args: [-c, ssl=on]
        env:
        - {name: POSTGRES_PASSWORD_FILE, value: /run/secrets/password}
        readinessProbe:
          httpGet: {path: /readyz, port: 8008, scheme: HTTPS}
        livenessProbe:
          httpGet: {path: /healthz, port: 8008, scheme: HTTPS}
        startupProbe:
          httpGet: {path: /healthz, port: 8008, scheme: HTTPS}
          failureThreshold: 360
        resources:
          requests: {cpu: 250m, memory: 512Mi}
          limits: {cpu: "1", memory: 1Gi}
        volumeMounts:
        - {name: data, mountPath: /var/lib/postgresql/data}
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 10Gi}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: db, namespace: prod}
spec:
  maxUnavailable: 1
  selector: {matchLabels: {app: db}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector: {matchLabels: {role: app}}
"#;

    #[test]
    fn the_good_database_has_no_findings() {
        assert_eq!(lint(GOOD_DATABASE), vec![]);
    }

    #[test]
    fn rule_ids_are_unique_and_documented() {
        let rules = super::rules();
        let mut ids: Vec<_> = rules.iter().map(|r| r.id).collect();
        ids.dedup();
        assert_eq!(ids.len(), rules.len());
        for rule in rules {
            assert!(rule.id.starts_with("STATOR-"), "{}", rule.id);
            assert!(!rule.summary.is_empty() && !rule.fix.is_empty() && !rule.rationale.is_empty());
        }
    }
}
