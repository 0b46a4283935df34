//! Readiness, liveness and start-up probes of the database containers (the containers running
//! a database image; all regular containers when the workload is a database only because it is
//! a StatefulSet with volume claims). Sidecars are not judged.

use crate::finding::{Finding, Rule, Severity};
use crate::node::Node;
use crate::object::Manifests;

pub const NO_READINESS_PROBE: Rule = Rule {
    id: "STATOR-PRB-001",
    name: "no-readiness-probe",
    severity: Severity::Warning,
    summary: "A database container has no readinessProbe: Services send clients to it before it accepts connections.",
    rationale: "Guide (operations: probes): readinessProbe checks that the instance can take traffic.",
    fix: "add a readinessProbe (an httpGet to the instance manager's /readyz, or a socket check), never one with a password",
};

pub const NO_LIVENESS_PROBE: Rule = Rule {
    id: "STATOR-PRB-002",
    name: "no-liveness-probe",
    severity: Severity::Warning,
    summary: "A database container has no livenessProbe: a hung server is never restarted.",
    rationale: "Guide (operations: probes): livenessProbe, conservative enough to avoid a restart loop.",
    fix: "add a conservative livenessProbe, and a startupProbe to cover crash recovery",
};

pub const IMPATIENT_LIVENESS_PROBE: Rule = Rule {
    id: "STATOR-PRB-003",
    name: "impatient-liveness-probe",
    severity: Severity::Warning,
    summary: "Without a startupProbe, the livenessProbe kills a database that takes under a minute longer to start (initialDelaySeconds + periodSeconds × failureThreshold < 60 s).",
    rationale: "Guide failure table: probe fails repeatedly ← initial delay too small / slow DB boot; raise the delay and threshold.",
    fix: "add a startupProbe with a generous failureThreshold (crash recovery can take minutes), or raise initialDelaySeconds",
};

pub const RULES: &[&Rule] = &[
    &NO_READINESS_PROBE,
    &NO_LIVENESS_PROBE,
    &IMPATIENT_LIVENESS_PROBE,
];

/// The least time a booting database gets before the liveness probe restarts it.
const MIN_LIVENESS_BUDGET_SECONDS: i64 = 60;

fn field(probe: &Node, key: &str, default: i64) -> i64 {
    probe.get(key).and_then(Node::as_i64).unwrap_or(default)
}

pub fn check(manifests: &Manifests, out: &mut Vec<Finding>) {
    for workload in manifests.databases() {
        for container in workload.database_containers() {
            let who = container.describe();
            if container.node.get("readinessProbe").is_none() {
                out.push(NO_READINESS_PROBE.at(
                    workload.object,
                    container.line(),
                    format!("{who} has no readinessProbe"),
                ));
            }
            let Some(liveness) = container.node.get("livenessProbe") else {
                out.push(NO_LIVENESS_PROBE.at(
                    workload.object,
                    container.line(),
                    format!("{who} has no livenessProbe"),
                ));
                continue;
            };
            if container.node.get("startupProbe").is_some() {
                continue;
            }
            let delay = field(liveness, "initialDelaySeconds", 0);
            let period = field(liveness, "periodSeconds", 10);
            let failures = field(liveness, "failureThreshold", 3);
            let budget = delay.saturating_add(period.saturating_mul(failures));
            if budget < MIN_LIVENESS_BUDGET_SECONDS {
                out.push(IMPATIENT_LIVENESS_PROBE.at(
                    workload.object,
                    container.line_of("livenessProbe"),
                    format!(
                        "{who}: the livenessProbe restarts the database after {budget} s of start-up ({delay} + {period} × {failures}) and there is no startupProbe"
                    ),
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_support::{GOOD_DATABASE, lines_of, lint};

    #[test]
    fn missing_probes_point_at_the_container() {
        let yaml = GOOD_DATABASE.replace(
            "        readinessProbe:\n          httpGet: {path: /readyz, port: 8008}\n",
            "",
        );
        assert_eq!(lines_of(&lint(&yaml), NO_READINESS_PROBE.id), vec![27]);
        let yaml = GOOD_DATABASE.replace(
            "        livenessProbe:\n          httpGet: {path: /healthz, port: 8008}\n",
            "",
        );
        assert_eq!(lines_of(&lint(&yaml), NO_LIVENESS_PROBE.id), vec![27]);
    }

    #[test]
    fn sidecars_need_no_probes() {
        let yaml = GOOD_DATABASE.replace(
            "        - {name: data, mountPath: /var/lib/postgresql/data}\n",
            "        - {name: data, mountPath: /var/lib/postgresql/data}\n      - name: exporter\n        image: prometheuscommunity/postgres-exporter:v0.15.0\n        securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}\n        resources: {requests: {cpu: 10m, memory: 32Mi}, limits: {memory: 64Mi}}\n",
        );
        assert_eq!(lint(&yaml), vec![]);
    }

    #[test]
    fn a_liveness_probe_without_startup_probe_needs_a_minute() {
        let impatient = GOOD_DATABASE.replace(
            "        startupProbe:\n          httpGet: {path: /healthz, port: 8008}\n          failureThreshold: 360\n",
            "",
        );
        assert_eq!(
            lines_of(&lint(&impatient), IMPATIENT_LIVENESS_PROBE.id),
            vec![38]
        );
        let patient = impatient.replace(
            "          httpGet: {path: /healthz, port: 8008}\n",
            "          httpGet: {path: /healthz, port: 8008}\n          initialDelaySeconds: 30\n",
        );
        assert_eq!(
            lines_of(&lint(&patient), IMPATIENT_LIVENESS_PROBE.id),
            Vec::<usize>::new()
        );
    }
}
