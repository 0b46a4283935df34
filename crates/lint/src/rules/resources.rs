//! Resource requests and memory limits of database pods, init containers included (the
//! scheduler sizes a pod by its largest init container too).
//!
//! CPU limits are deliberately not required: the guide sets one, but a CPU limit throttles a
//! latency-sensitive database under load and protects nothing that the request does not; the
//! memory limit is what the guide's OOM advice is about.

use crate::finding::{Finding, Rule, Severity};
use crate::object::Manifests;

pub const NO_REQUESTS: Rule = Rule {
    id: "STATOR-RES-001",
    name: "no-resource-requests",
    severity: Severity::Warning,
    summary: "A container has no CPU or memory request, so the scheduler may pack the database onto a node without room for it.",
    rationale: "Guide: give a sufficient memory request to avoid I/O stalls (operations: resources).",
    fix: "set resources.requests.cpu and resources.requests.memory (the guide uses 250m and 512Mi)",
};

pub const NO_MEMORY_LIMIT: Rule = Rule {
    id: "STATOR-RES-002",
    name: "no-memory-limit",
    severity: Severity::Warning,
    summary: "A container has no memory limit: the database's buffers cannot be sized against it, and the node may OOM-kill something else.",
    rationale: "Guide: databases are OOM-sensitive; set limits.memory together with the engine's buffer settings.",
    fix: "set resources.limits.memory and size shared_buffers / innodb_buffer_pool_size below it",
};

pub const RULES: &[&Rule] = &[&NO_REQUESTS, &NO_MEMORY_LIMIT];

pub fn check(manifests: &Manifests, out: &mut Vec<Finding>) {
    for workload in manifests.databases() {
        for container in workload.containers() {
            let who = container.describe();
            let resources = container.node.get("resources");
            let line = container.line_of("resources");
            let has = |path: &[&str]| {
                resources
                    .and_then(|r| r.path(path))
                    .is_some_and(|n| !n.is_null())
            };
            let missing: Vec<&str> = [
                ("cpu", ["requests", "cpu"]),
                ("memory", ["requests", "memory"]),
            ]
            .into_iter()
            .filter(|(_, path)| !has(path))
            .map(|(what, _)| what)
            .collect();
            if !missing.is_empty() {
                let line = resources
                    .and_then(|r| r.entry("requests"))
                    .map_or(line, |e| e.key_line);
                out.push(NO_REQUESTS.at(
                    workload.object,
                    line,
                    format!("{who} requests no {}", missing.join(" or ")),
                ));
            }
            if !has(&["limits", "memory"]) {
                let line = resources
                    .and_then(|r| r.entry("limits"))
                    .map_or(line, |e| e.key_line);
                out.push(NO_MEMORY_LIMIT.at(
                    workload.object,
                    line,
                    format!("{who} has no memory limit"),
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
    fn missing_requests_and_limits_are_found() {
        let yaml = GOOD_DATABASE.replace(
            "          requests: {cpu: 250m, memory: 512Mi}\n",
            "          requests: {cpu: 250m}\n",
        );
        assert_eq!(lines_of(&lint(&yaml), NO_REQUESTS.id), vec![44]);
        let yaml =
            GOOD_DATABASE.replace("limits: {cpu: \"1\", memory: 1Gi}", "limits: {cpu: \"1\"}");
        assert_eq!(lines_of(&lint(&yaml), NO_MEMORY_LIMIT.id), vec![45]);
    }

    #[test]
    fn a_container_without_resources_is_pointed_at() {
        let yaml = GOOD_DATABASE.replace(
            "        resources:\n          requests: {cpu: 250m, memory: 512Mi}\n          limits: {cpu: \"1\", memory: 1Gi}\n",
            "",
        );
        let findings = lint(&yaml);
        assert_eq!(lines_of(&findings, NO_REQUESTS.id), vec![27]);
        assert_eq!(lines_of(&findings, NO_MEMORY_LIMIT.id), vec![27]);
    }
}
