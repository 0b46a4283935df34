//! The security context of database pods: non-root, no privilege escalation, no privileged
//! mode, capabilities dropped, seccomp, read-only root filesystem, `fsGroup`, and the API token.
//! Every container is checked, init containers included: they run in the same pod with the
//! same volumes.

use crate::finding::{Finding, Rule, Severity};
use crate::node::Node;
use crate::object::{Container, Manifests, Workload};

pub const RUNS_AS_ROOT: Rule = Rule {
    id: "STATOR-CTX-001",
    name: "runs-as-root",
    severity: Severity::Error,
    summary: "A container may run as root: `runAsNonRoot: true` is set neither on it nor on the pod, or `runAsUser` is 0.",
    rationale: "Guide checklist: `runAsNonRoot`; issue 3: hardened security context, non-root.",
    fix: "set securityContext.runAsNonRoot: true and runAsUser to the image's database user (999 in the official postgres/mysql images)",
};

pub const PRIVILEGE_ESCALATION: Rule = Rule {
    id: "STATOR-CTX-002",
    name: "privilege-escalation-allowed",
    severity: Severity::Error,
    summary: "A container does not set `allowPrivilegeEscalation: false`, so setuid binaries can regain root.",
    rationale: "Issue 3: hardened security context, no privilege escalation.",
    fix: "set securityContext.allowPrivilegeEscalation: false on the container",
};

pub const PRIVILEGED: Rule = Rule {
    id: "STATOR-CTX-003",
    name: "privileged-container",
    severity: Severity::Error,
    summary: "A container runs `privileged: true`: root on the node.",
    rationale: "Guide checklist (security); a database never needs the host's devices.",
    fix: "remove privileged: true",
};

pub const CAPABILITIES_NOT_DROPPED: Rule = Rule {
    id: "STATOR-CTX-004",
    name: "capabilities-not-dropped",
    severity: Severity::Warning,
    summary: "A container keeps the runtime's default Linux capabilities (`capabilities.drop` lacks ALL).",
    rationale: "Issue 3: all capabilities dropped; a non-root database needs none.",
    fix: "set securityContext.capabilities.drop: [ALL]",
};

pub const NO_SECCOMP_PROFILE: Rule = Rule {
    id: "STATOR-CTX-005",
    name: "no-seccomp-profile",
    severity: Severity::Warning,
    summary: "Neither the container nor the pod sets a seccomp profile (RuntimeDefault or Localhost), or it is Unconfined.",
    rationale: "Issue 3: seccomp RuntimeDefault.",
    fix: "set securityContext.seccompProfile.type: RuntimeDefault on the pod",
};

pub const WRITABLE_ROOT_FILESYSTEM: Rule = Rule {
    id: "STATOR-CTX-006",
    name: "writable-root-filesystem",
    severity: Severity::Warning,
    summary: "A container's root filesystem is writable (`readOnlyRootFilesystem` is not true).",
    rationale: "Issue 3: read-only root filesystem, with emptyDirs where the engine must write.",
    fix: "set securityContext.readOnlyRootFilesystem: true and mount emptyDirs for /tmp and the socket directory",
};

pub const NO_FS_GROUP: Rule = Rule {
    id: "STATOR-CTX-007",
    name: "no-fs-group",
    severity: Severity::Warning,
    summary: "A database pod mounts persistent volumes but sets no `fsGroup`, so the volume may not be writable by the database user.",
    rationale: "Guide failure table: permission error (EACCES) ← fsGroup/runAsUser not set.",
    fix: "set spec.template.spec.securityContext.fsGroup to the database user's group (999 in the official images)",
};

pub const SERVICE_ACCOUNT_TOKEN: Rule = Rule {
    id: "STATOR-CTX-008",
    name: "service-account-token-mounted",
    severity: Severity::Warning,
    summary: "The pod gets a Kubernetes API token it does not need: `automountServiceAccountToken` is not false on the pod or its ServiceAccount.",
    rationale: "Guide checklist: Secret/RBAC; issue 3: ServiceAccount with no token automount.",
    fix: "set automountServiceAccountToken: false on the pod spec or its ServiceAccount",
};

pub const HOST_NAMESPACES: Rule = Rule {
    id: "STATOR-CTX-009",
    name: "host-namespaces",
    severity: Severity::Error,
    summary: "A database pod shares the node's network, process or IPC namespace (hostNetwork, hostPID, hostIPC).",
    rationale: "Guide: NetworkPolicy limits who reaches the database; on the host network no NetworkPolicy applies and the port is open on the node.",
    fix: "remove hostNetwork / hostPID / hostIPC and reach the database through its Services",
};

pub const RULES: &[&Rule] = &[
    &RUNS_AS_ROOT,
    &PRIVILEGE_ESCALATION,
    &PRIVILEGED,
    &CAPABILITIES_NOT_DROPPED,
    &NO_SECCOMP_PROFILE,
    &WRITABLE_ROOT_FILESYSTEM,
    &NO_FS_GROUP,
    &SERVICE_ACCOUNT_TOKEN,
    &HOST_NAMESPACES,
];

pub fn check(manifests: &Manifests, out: &mut Vec<Finding>) {
    for workload in manifests.databases() {
        for container in workload.containers() {
            check_container(&workload, &container, out);
        }
        check_fs_group(&workload, out);
        check_token(manifests, &workload, out);
        for key in ["hostNetwork", "hostPID", "hostIPC"] {
            if workload.pod.get(key).and_then(Node::as_bool) == Some(true) {
                out.push(HOST_NAMESPACES.at(
                    workload.object,
                    workload.pod_line_of(key),
                    format!("the pod sets {key}: true"),
                ));
            }
        }
    }
}

/// A container's `securityContext` field, falling back to the pod's where Kubernetes does.
fn effective<'a>(
    workload: &Workload<'a>,
    container: &Container<'a>,
    path: &[&str],
) -> Option<(&'a Node, usize)> {
    let lookup = |ctx: Option<&'a Node>| {
        let ctx = ctx?;
        let node = ctx.path(path)?;
        let line = ctx.line_of(path[0]);
        Some((node, line))
    };
    lookup(container.node.get("securityContext"))
        .or_else(|| lookup(workload.pod.get("securityContext")))
}

fn check_container(workload: &Workload<'_>, container: &Container<'_>, out: &mut Vec<Finding>) {
    let object = workload.object;
    let who = container.describe();
    let ctx = container.node.get("securityContext");
    // Where to point when a field is missing: the container's securityContext, or the container.
    let here = container.line_of("securityContext");
    let ctx_field = |key: &str| ctx.and_then(|c| c.get(key));
    let ctx_line = |key: &str| ctx.and_then(|c| c.entry(key)).map_or(here, |e| e.key_line);

    match effective(workload, container, &["runAsUser"]) {
        Some((user, line)) if user.as_i64() == Some(0) => {
            out.push(RUNS_AS_ROOT.at(object, line, format!("{who} runs as user 0 (root)")));
        }
        _ => match effective(workload, container, &["runAsNonRoot"]) {
            Some((flag, _)) if flag.as_bool() == Some(true) => {}
            Some((_, line)) => {
                out.push(RUNS_AS_ROOT.at(object, line, format!("{who}: runAsNonRoot is not true")))
            }
            None => out.push(RUNS_AS_ROOT.at(
                object,
                here,
                format!("{who} sets no runAsNonRoot, nor does the pod: it may run as root"),
            )),
        },
    }

    if ctx_field("allowPrivilegeEscalation").and_then(Node::as_bool) != Some(false) {
        out.push(PRIVILEGE_ESCALATION.at(
            object,
            ctx_line("allowPrivilegeEscalation"),
            format!("{who} does not set allowPrivilegeEscalation: false"),
        ));
    }

    if ctx_field("privileged").and_then(Node::as_bool) == Some(true) {
        out.push(PRIVILEGED.at(
            object,
            ctx_line("privileged"),
            format!("{who} is privileged"),
        ));
    }

    let drops_all = ctx
        .and_then(|c| c.path(&["capabilities", "drop"]))
        .is_some_and(|d| {
            d.items()
                .iter()
                .any(|i| i.as_str().is_some_and(|s| s.eq_ignore_ascii_case("ALL")))
        });
    if !drops_all {
        out.push(CAPABILITIES_NOT_DROPPED.at(
            object,
            ctx_line("capabilities"),
            format!("{who} does not drop ALL capabilities"),
        ));
    }

    match effective(workload, container, &["seccompProfile", "type"]) {
        Some((kind, _)) if matches!(kind.as_str(), Some("RuntimeDefault" | "Localhost")) => {}
        Some((kind, line)) => out.push(NO_SECCOMP_PROFILE.at(
            object,
            line,
            format!(
                "{who} runs with seccomp profile {}",
                kind.text().unwrap_or_else(|| "(empty)".into())
            ),
        )),
        None => out.push(NO_SECCOMP_PROFILE.at(
            object,
            here,
            format!("{who} has no seccomp profile, nor does the pod"),
        )),
    }

    if ctx_field("readOnlyRootFilesystem").and_then(Node::as_bool) != Some(true) {
        out.push(WRITABLE_ROOT_FILESYSTEM.at(
            object,
            ctx_line("readOnlyRootFilesystem"),
            format!("{who} has a writable root filesystem"),
        ));
    }
}

fn mounts_persistent_volumes(workload: &Workload<'_>) -> bool {
    let templates = workload
        .object
        .node
        .path(&["spec", "volumeClaimTemplates"])
        .is_some_and(|t| !t.items().is_empty());
    let claims = workload
        .pod
        .get("volumes")
        .map(Node::items)
        .unwrap_or(&[])
        .iter()
        .any(|v| v.get("persistentVolumeClaim").is_some());
    templates || claims
}

fn check_fs_group(workload: &Workload<'_>, out: &mut Vec<Finding>) {
    if !mounts_persistent_volumes(workload) {
        return;
    }
    let ctx = workload.pod.get("securityContext");
    if ctx.and_then(|c| c.get("fsGroup")).is_none() {
        out.push(NO_FS_GROUP.at(
            workload.object,
            workload.pod_line_of("securityContext"),
            "the pod mounts persistent volumes but sets no fsGroup".into(),
        ));
    }
}

fn check_token(manifests: &Manifests, workload: &Workload<'_>, out: &mut Vec<Finding>) {
    let pod = workload.pod;
    match pod
        .get("automountServiceAccountToken")
        .and_then(Node::as_bool)
    {
        Some(false) => return,
        Some(true) => {
            out.push(
                SERVICE_ACCOUNT_TOKEN.at(
                    workload.object,
                    workload.pod_line_of("automountServiceAccountToken"),
                    "the pod asks for a Kubernetes API token (automountServiceAccountToken: true)"
                        .into(),
                ),
            );
            return;
        }
        None => {}
    }
    let account = pod
        .get("serviceAccountName")
        .and_then(Node::text)
        .unwrap_or_else(|| "default".into());
    let account_opts_out = manifests.of_kind("ServiceAccount").any(|sa| {
        sa.name == account
            && sa.shares_namespace_with(workload.object)
            && sa
                .node
                .get("automountServiceAccountToken")
                .and_then(Node::as_bool)
                == Some(false)
    });
    if !account_opts_out {
        out.push(SERVICE_ACCOUNT_TOKEN.at(
            workload.object,
            workload.pod_line_of("serviceAccountName"),
            format!("the pod mounts the API token of ServiceAccount \"{account}\""),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_support::{GOOD_DATABASE, lines_of, lint};

    fn without(needle: &str, replacement: &str) -> String {
        assert!(GOOD_DATABASE.contains(needle), "{needle}");
        GOOD_DATABASE.replacen(needle, replacement, 1)
    }

    #[test]
    fn missing_run_as_non_root_points_at_the_container() {
        let yaml = without("        runAsNonRoot: true\n", "");
        // The container's securityContext line (lines shift up by one).
        assert_eq!(lines_of(&lint(&yaml), RUNS_AS_ROOT.id), vec![28]);
    }

    #[test]
    fn run_as_user_zero_is_root_even_with_the_flag() {
        let yaml = without("runAsUser: 999", "runAsUser: 0");
        assert_eq!(lines_of(&lint(&yaml), RUNS_AS_ROOT.id), vec![18]);
    }

    #[test]
    fn privilege_escalation_must_be_off_explicitly() {
        let yaml = without("          allowPrivilegeEscalation: false\n", "");
        assert_eq!(lines_of(&lint(&yaml), PRIVILEGE_ESCALATION.id), vec![29]);
    }

    #[test]
    fn privileged_containers_are_errors() {
        let yaml = without(
            "          allowPrivilegeEscalation: false\n",
            "          allowPrivilegeEscalation: false\n          privileged: true\n",
        );
        assert_eq!(lines_of(&lint(&yaml), PRIVILEGED.id), vec![31]);
    }

    #[test]
    fn capabilities_must_drop_all() {
        let yaml = without("drop: [ALL]", "drop: [NET_RAW]");
        assert_eq!(
            lines_of(&lint(&yaml), CAPABILITIES_NOT_DROPPED.id),
            vec![32]
        );
    }

    #[test]
    fn seccomp_unconfined_or_missing_is_found() {
        let yaml = without("type: RuntimeDefault", "type: Unconfined");
        assert_eq!(lines_of(&lint(&yaml), NO_SECCOMP_PROFILE.id), vec![20]);
        let yaml = without("        seccompProfile: {type: RuntimeDefault}\n", "");
        assert_eq!(lines_of(&lint(&yaml), NO_SECCOMP_PROFILE.id), vec![28]);
    }

    #[test]
    fn writable_root_filesystem_is_found() {
        let yaml = without(
            "readOnlyRootFilesystem: true",
            "readOnlyRootFilesystem: false",
        );
        assert_eq!(
            lines_of(&lint(&yaml), WRITABLE_ROOT_FILESYSTEM.id),
            vec![31]
        );
    }

    #[test]
    fn fs_group_is_required_with_persistent_volumes() {
        let yaml = without("        fsGroup: 999\n", "");
        assert_eq!(lines_of(&lint(&yaml), NO_FS_GROUP.id), vec![16]);
    }

    #[test]
    fn api_token_may_be_refused_by_the_service_account() {
        let yaml = without(
            "      automountServiceAccountToken: false\n",
            "      serviceAccountName: db\n",
        );
        assert_eq!(lines_of(&lint(&yaml), SERVICE_ACCOUNT_TOKEN.id), vec![15]);
        let with_account = format!(
            "{yaml}---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: db, namespace: prod}}\nautomountServiceAccountToken: false\n"
        );
        assert_eq!(
            lines_of(&lint(&with_account), SERVICE_ACCOUNT_TOKEN.id),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn host_namespaces_are_errors() {
        let yaml = without(
            "      automountServiceAccountToken: false\n",
            "      automountServiceAccountToken: false\n      hostNetwork: true\n      hostPID: false\n",
        );
        assert_eq!(lines_of(&lint(&yaml), HOST_NAMESPACES.id), vec![16]);
    }

    #[test]
    fn init_containers_are_checked_too() {
        let yaml = without(
            "      containers:\n",
            "      initContainers:\n      - name: copy\n        image: busybox:1.36\n      containers:\n",
        );
        let findings = lint(&yaml);
        assert!(
            findings.iter().any(|f| f.rule == PRIVILEGE_ESCALATION.id
                && f.message.contains("init container \"copy\""))
        );
    }

    #[test]
    fn non_database_workloads_are_not_judged() {
        let yaml = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n      containers:\n      - {name: web, image: nginx:1.27}\n";
        assert_eq!(lint(yaml), vec![]);
    }
}
