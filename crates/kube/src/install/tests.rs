//! Unit tests of the install: each asserts one property issue 10 (item 6) asks for.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::*;

fn default_install() -> Install {
    install(&InstallOptions::default()).expect("the default install builds")
}

/// `(group, resource)` → verbs, over every rule of the ClusterRole.
fn cluster_verbs(install: &Install) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut verbs: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for rule in install.cluster_role.rules.as_ref().unwrap() {
        assert!(
            rule.resource_names.is_none(),
            "cluster rules are not by name"
        );
        for group in rule.api_groups.as_ref().unwrap() {
            for resource in rule.resources.as_ref().unwrap() {
                verbs
                    .entry((group.clone(), resource.clone()))
                    .or_default()
                    .extend(rule.verbs.iter().cloned());
            }
        }
    }
    verbs
}

fn set(verbs: &[&str]) -> BTreeSet<String> {
    verbs.iter().map(|v| v.to_string()).collect()
}

#[test]
fn the_cluster_role_grants_exactly_the_operators_verbs() {
    let owned = set(&["get", "list", "watch", "create", "patch", "delete"]);
    let expected: BTreeMap<(String, String), BTreeSet<String>> = [
        (
            ("stator.dev", "databases"),
            set(&["get", "list", "watch", "patch", "update"]),
        ),
        (
            ("stator.dev", "databases/status"),
            set(&["get", "patch", "update"]),
        ),
        (("stator.dev", "databases/finalizers"), set(&["update"])),
        (("apps", "statefulsets"), owned.clone()),
        (("", "services"), owned.clone()),
        (("", "configmaps"), owned.clone()),
        (("", "serviceaccounts"), owned.clone()),
        (("policy", "poddisruptionbudgets"), owned.clone()),
        (("networking.k8s.io", "networkpolicies"), owned),
        (("", "secrets"), set(&["get", "create"])),
        (
            ("", "pods"),
            set(&["get", "list", "watch", "patch", "delete"]),
        ),
        (
            ("", "persistentvolumeclaims"),
            set(&["get", "list", "watch", "delete"]),
        ),
        (
            ("cert-manager.io", "certificates"),
            set(&["get", "create", "patch"]),
        ),
        (("events.k8s.io", "events"), set(&["create", "patch"])),
    ]
    .into_iter()
    .map(|((g, r), v)| ((g.to_string(), r.to_string()), v))
    .collect();
    assert_eq!(cluster_verbs(&default_install()), expected);
}

#[test]
fn no_rule_uses_a_wildcard_or_an_escalation_verb() {
    let i = default_install();
    let rules = i
        .cluster_role
        .rules
        .iter()
        .chain(i.lease_role.rules.iter())
        .flatten();
    for rule in rules {
        let words = rule
            .verbs
            .iter()
            .chain(rule.resources.iter().flatten())
            .chain(rule.api_groups.iter().flatten());
        for word in words {
            assert!(!word.contains('*'), "wildcard in {rule:?}");
            assert!(
                !["escalate", "bind", "impersonate", "deletecollection"].contains(&word.as_str()),
                "{word} in {rule:?}"
            );
        }
        assert!(rule.non_resource_urls.is_none());
    }
}

#[test]
fn the_lease_role_renews_only_the_operators_lease_in_its_namespace() {
    let i = install(&InstallOptions {
        namespace: "ops".into(),
        ..InstallOptions::default()
    })
    .unwrap();
    assert_eq!(i.lease_role.metadata.namespace.as_deref(), Some("ops"));
    let rules = i.lease_role.rules.as_ref().unwrap();
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].verbs, ["create"]);
    assert_eq!(rules[1].verbs, ["get", "update"]);
    assert_eq!(rules[1].resource_names, Some(vec![LEASE_NAME.to_string()]));
    for rule in rules {
        assert_eq!(
            rule.api_groups,
            Some(vec!["coordination.k8s.io".to_string()])
        );
        assert_eq!(rule.resources, Some(vec!["leases".to_string()]));
    }
    assert_eq!(i.lease_role_binding.role_ref.kind, "Role");
}

#[test]
fn bindings_name_the_operators_service_account_in_the_chosen_namespace() {
    let i = install(&InstallOptions {
        namespace: "ops".into(),
        ..InstallOptions::default()
    })
    .unwrap();
    for subjects in [
        &i.cluster_role_binding.subjects,
        &i.lease_role_binding.subjects,
    ] {
        assert_eq!(subjects.as_ref().unwrap(), &vec![operator_subject("ops")]);
    }
    assert_eq!(i.namespace.metadata.name.as_deref(), Some("ops"));
    for namespaced in [
        &i.service_account.metadata,
        &i.lease_role.metadata,
        &i.lease_role_binding.metadata,
        &i.network_policy.metadata,
        &i.deployment.metadata,
    ] {
        assert_eq!(namespaced.namespace.as_deref(), Some("ops"));
    }
    assert_eq!(i.cluster_role.metadata.namespace, None);
    assert_eq!(i.cluster_role_binding.metadata.namespace, None);
}

fn pod_spec(i: &Install) -> &PodSpec {
    i.deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

#[test]
fn the_deployment_is_one_hardened_replica_with_http_probes_and_resources() {
    let i = default_install();
    assert_eq!(i.deployment.spec.as_ref().unwrap().replicas, Some(1));
    let pod = pod_spec(&i);
    let pod_security = pod.security_context.as_ref().unwrap();
    assert_eq!(pod_security.run_as_non_root, Some(true));
    assert_eq!(
        pod_security.seccomp_profile.as_ref().unwrap().type_,
        "RuntimeDefault"
    );
    assert_eq!(pod.containers.len(), 1);
    assert!(pod.init_containers.is_none());
    let c = &pod.containers[0];
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert!(sc.run_as_user.unwrap() >= 10000, "a high uid");
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(
        sc.capabilities.as_ref().unwrap().drop,
        Some(vec!["ALL".to_string()])
    );
    assert_eq!(sc.capabilities.as_ref().unwrap().add, None);
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    let resources = c.resources.as_ref().unwrap();
    for amounts in [&resources.requests, &resources.limits] {
        let amounts = amounts.as_ref().unwrap();
        assert!(amounts.contains_key("cpu") && amounts.contains_key("memory"));
    }
    for (probe, path) in [
        (&c.liveness_probe, "/healthz"),
        (&c.readiness_probe, "/readyz"),
    ] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::String(HEALTH_PORT_NAME.into()));
    }
    let port = &c.ports.as_ref().unwrap()[0];
    assert_eq!(port.name.as_deref(), Some(HEALTH_PORT_NAME));
    assert_eq!(port.container_port, i32::from(HEALTH_PORT));
    assert_eq!(c.image.as_deref(), Some(DEFAULT_STATOR_IMAGE));
    assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
    assert_eq!(
        c.command,
        Some(vec![
            STATOR_IMAGE_BINARY.to_string(),
            "operator".to_string()
        ])
    );
}

#[test]
fn only_the_operator_container_gets_an_api_token() {
    let i = default_install();
    assert_eq!(
        i.service_account.automount_service_account_token,
        Some(false)
    );
    let pod = pod_spec(&i);
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.service_account_name.as_deref(), Some(OPERATOR_NAME));
    let token_volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "api-token")
        .unwrap();
    let sources = token_volume
        .projected
        .as_ref()
        .unwrap()
        .sources
        .as_ref()
        .unwrap();
    let token = sources[0].service_account_token.as_ref().unwrap();
    assert!(token.expiration_seconds.unwrap() <= 3607, "a bounded token");
    let mount = pod.containers[0]
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|m| m.name == "api-token")
        .unwrap();
    assert_eq!(mount.mount_path, SERVICE_ACCOUNT_DIR);
    assert_eq!(mount.read_only, Some(true));
}

#[test]
fn the_image_and_namespace_are_checked() {
    let bad_ns = install(&InstallOptions {
        namespace: "Stator_System".into(),
        ..InstallOptions::default()
    });
    assert!(matches!(bad_ns, Err(InstallError::InvalidNamespace { .. })));
    let latest = install(&InstallOptions {
        image: "ghcr.io/stator-dev/stator:latest".into(),
        ..InstallOptions::default()
    });
    assert!(matches!(latest, Err(InstallError::InvalidImage { .. })));
    let digest = "registry.example/stator@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    let pinned = install(&InstallOptions {
        image: digest.into(),
        ..InstallOptions::default()
    })
    .unwrap();
    assert_eq!(
        pod_spec(&pinned).containers[0].image.as_deref(),
        Some(digest)
    );
}

#[test]
fn the_namespace_enforces_the_restricted_pod_security_standard() {
    let labels = default_install().namespace.metadata.labels.unwrap();
    assert_eq!(
        labels
            .get("pod-security.kubernetes.io/enforce")
            .map(String::as_str),
        Some("restricted")
    );
}

#[test]
fn the_crd_file_is_exactly_stator_crd_and_the_kustomization_lists_the_rest() {
    let files = default_install().files().unwrap();
    let names: Vec<&str> = files.iter().map(|f| f.name).collect();
    assert_eq!(names, INSTALL_FILE_NAMES);
    assert_eq!(files[0].contents, crate::crd::crd_yaml().unwrap());
    let kustomization = &files[4].contents;
    for name in &INSTALL_FILE_NAMES[..4] {
        assert!(kustomization.contains(&format!("  - {name}\n")), "{name}");
    }
}

#[test]
fn the_stream_holds_every_object_once_in_apply_order() {
    let stream = default_install().to_yaml_stream().unwrap();
    let kinds: Vec<String> = serde_norway::Deserializer::from_str(&stream)
        .map(|d| {
            let v: serde_json::Value = serde::Deserialize::deserialize(d).unwrap();
            v["kind"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "CustomResourceDefinition",
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "NetworkPolicy",
            "Deployment",
        ]
    );
}

/// Everything but the CRD (pinned by `deploy/crd.yaml` and its own test), as YAML.
#[test]
fn the_install_is_as_pinned() {
    let files = default_install().files().unwrap();
    let pinned: Vec<String> = files[1..]
        .iter()
        .map(|f| format!("# {}\n{}", f.name, f.contents))
        .collect();
    insta::assert_snapshot!("install", pinned.join(""));
}

#[test]
fn committed_deploy_matches_the_generated_install() {
    let committed = [
        include_str!("../../../../deploy/crd.yaml"),
        include_str!("../../../../deploy/namespace.yaml"),
        include_str!("../../../../deploy/rbac.yaml"),
        include_str!("../../../../deploy/operator.yaml"),
        include_str!("../../../../deploy/kustomization.yaml"),
    ];
    for (file, committed) in default_install().files().unwrap().iter().zip(committed) {
        assert!(
            file.contents == committed,
            "deploy/{} differs from `stator install`; run `cargo run -p stator -- install -o deploy/` \
             and commit it",
            file.name
        );
    }
}
