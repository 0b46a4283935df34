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

pub const TOKEN_PROBE_OVER_HTTP: Rule = Rule {
    id: "STATOR-PRB-004",
    name: "token-probe-over-http",
    severity: Severity::Warning,
    summary: "A probe speaks plain HTTP to an endpoint that carries a token (an Authorization header, or Stator's instance manager port 8008): the token and the database's state cross the pod network in clear.",
    rationale: "Issue 13: TLS by default; the instance manager serves HTTPS only, with its bearer token never in plaintext.",
    fix: "set `scheme: HTTPS` on the probe's httpGet and serve that endpoint over TLS",
};

pub const RULES: &[&Rule] = &[
    &NO_READINESS_PROBE,
    &NO_LIVENESS_PROBE,
    &IMPATIENT_LIVENESS_PROBE,
    &TOKEN_PROBE_OVER_HTTP,
];

/// Stator's instance-manager port (`stator_api::names::INSTANCE_MANAGER_PORT`), and its name in
/// rendered pods.
const MANAGER_PORT: i64 = 8008;
const MANAGER_PORT_NAME: &str = "manager";

/// Whether an `httpGet` goes in plaintext to an endpoint that carries a token.
fn carries_token_in_clear(get: &Node) -> bool {
    let https = get
        .get("scheme")
        .and_then(Node::as_str)
        .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
    if https {
        return false;
    }
    let port = get.get("port");
    let manager = port.and_then(Node::as_i64) == Some(MANAGER_PORT)
        || port.and_then(Node::as_str) == Some(MANAGER_PORT_NAME);
    let authorization = get.get("httpHeaders").is_some_and(|headers| {
        headers.items().iter().any(|h| {
            h.get("name")
                .and_then(Node::as_str)
                .is_some_and(|n| n.eq_ignore_ascii_case("Authorization"))
        })
    });
    manager || authorization
}

/// The least time a booting database gets before the liveness probe restarts it.
const MIN_LIVENESS_BUDGET_SECONDS: i64 = 60;

fn field(probe: &Node, key: &str, default: i64) -> i64 {
    probe.get(key).and_then(Node::as_i64).unwrap_or(default)
}

pub fn check(manifests: &Manifests, out: &mut Vec<Finding>) {
    for workload in manifests.databases() {
        for container in workload.database_containers() {
            let who = container.describe();
            for kind in ["startupProbe", "livenessProbe", "readinessProbe"] {
                let get = container.node.path(&[kind, "httpGet"]);
                if get.is_some_and(carries_token_in_clear) {
                    out.push(TOKEN_PROBE_OVER_HTTP.at(
                        workload.object,
                        container.line_of(kind),
                        format!("{who}: the {kind} speaks plain HTTP to an endpoint that carries a token"),
                    ));
                }
            }
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
            "        readinessProbe:\n          httpGet: {path: /readyz, port: 8008, scheme: HTTPS}\n",
            "",
        );
        assert_eq!(lines_of(&lint(&yaml), NO_READINESS_PROBE.id), vec![27]);
        let yaml = GOOD_DATABASE.replace(
            "        livenessProbe:\n          httpGet: {path: /healthz, port: 8008, scheme: HTTPS}\n",
            "",
        );
        assert_eq!(lines_of(&lint(&yaml), NO_LIVENESS_PROBE.id), vec![27]);
    }

    #[test]
    fn probes_over_http_to_a_token_endpoint_are_found() {
        assert_eq!(
            lines_of(&lint(GOOD_DATABASE), TOKEN_PROBE_OVER_HTTP.id),
            Vec::<usize>::new()
        );
        // scheme missing (HTTP) on the instance manager's port, by number and by name.
        let plain = GOOD_DATABASE.replace(
            "httpGet: {path: /readyz, port: 8008, scheme: HTTPS}",
            "httpGet: {path: /readyz, port: 8008}",
        );
        let found = lint(&plain);
        assert_eq!(
            lines_of(&found, TOKEN_PROBE_OVER_HTTP.id).len(),
            1,
            "{found:?}"
        );
        let named = GOOD_DATABASE.replace(
            "httpGet: {path: /readyz, port: 8008, scheme: HTTPS}",
            "httpGet: {path: /readyz, port: manager, scheme: HTTP}",
        );
        assert_eq!(lines_of(&lint(&named), TOKEN_PROBE_OVER_HTTP.id).len(), 1);
        // Another port, but with an Authorization header.
        let header = GOOD_DATABASE.replace(
            "httpGet: {path: /readyz, port: 8008, scheme: HTTPS}",
            "httpGet: {path: /readyz, port: 9000, httpHeaders: [{name: Authorization, value: Bearer x}]}",
        );
        assert_eq!(lines_of(&lint(&header), TOKEN_PROBE_OVER_HTTP.id).len(), 1);
        // Another port without a token: not this rule's business.
        let other = GOOD_DATABASE.replace(
            "httpGet: {path: /readyz, port: 8008, scheme: HTTPS}",
            "httpGet: {path: /readyz, port: 9000}",
        );
        assert_eq!(
            lines_of(&lint(&other), TOKEN_PROBE_OVER_HTTP.id),
            Vec::<usize>::new()
        );
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
            "        startupProbe:\n          httpGet: {path: /healthz, port: 8008, scheme: HTTPS}\n          failureThreshold: 360\n",
            "",
        );
        assert_eq!(
            lines_of(&lint(&impatient), IMPATIENT_LIVENESS_PROBE.id),
            vec![38]
        );
        let patient = impatient.replace(
            "          httpGet: {path: /healthz, port: 8008, scheme: HTTPS}\n",
            "          httpGet: {path: /healthz, port: 8008, scheme: HTTPS}\n          initialDelaySeconds: 30\n",
        );
        assert_eq!(
            lines_of(&lint(&patient), IMPATIENT_LIVENESS_PROBE.id),
            Vec::<usize>::new()
        );
    }
}
