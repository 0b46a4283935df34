//! Unit tests of the rendered objects: each asserts one property the issue or the guide asks for.

use k8s_openapi::api::core::v1::{Container, PodSpec};
use rand::SeedableRng;
use rand::rngs::StdRng;
use stator_api::names::{LABEL_DATABASE, LABEL_ROLE, secret_keys};
use stator_api::{Database, load_database};

use super::*;

fn database(yaml_spec: &str) -> Database {
    let text = format!(
        "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: shop-db\n  namespace: shop\nspec:\n{yaml_spec}"
    );
    load_database(&text).expect("test spec is valid").database
}

/// The same passwords and certificates every call (issued once), so renders compare equal.
fn credentials() -> Credentials {
    static TLS: std::sync::OnceLock<TlsMaterial> = std::sync::OnceLock::new();
    let material = TLS.get_or_init(|| {
        TlsMaterial::issue(&database(THREE_POSTGRES)).expect("issues the certificates")
    });
    Credentials::generate(&mut StdRng::seed_from_u64(7)).with_tls(material.clone())
}

fn manifests(yaml_spec: &str) -> Manifests {
    render(
        &database(yaml_spec),
        &RenderOptions::default(),
        Some(&credentials()),
    )
    .expect("renders")
}

fn pod_spec(m: &Manifests) -> &PodSpec {
    m.stateful_set
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
}

fn database_container(m: &Manifests) -> &Container {
    pod_spec(m)
        .containers
        .iter()
        .find(|c| c.name == DATABASE_CONTAINER)
        .unwrap()
}

fn claim_templates(m: &Manifests) -> &[k8s_openapi::api::core::v1::PersistentVolumeClaim] {
    m.stateful_set
        .spec
        .as_ref()
        .unwrap()
        .volume_claim_templates
        .as_ref()
        .unwrap()
}

const THREE_POSTGRES: &str = "  engine: postgres\n  instances: 3\n";

#[test]
fn every_object_has_the_namespace_and_the_recommended_labels() {
    let m = manifests(THREE_POSTGRES);
    let stream = m.to_yaml_stream().unwrap();
    let docs: Vec<serde_json::Value> = serde_norway::Deserializer::from_str(&stream)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(
        docs.len(),
        10,
        "SA, 2 Secrets (passwords, certificates), ConfigMap, 3 Services, PDB, NP, STS"
    );
    for doc in docs {
        let meta = &doc["metadata"];
        assert_eq!(meta["namespace"], "shop", "{}", doc["kind"]);
        for key in [
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/component",
            "app.kubernetes.io/part-of",
            "app.kubernetes.io/managed-by",
            "app.kubernetes.io/version",
            LABEL_DATABASE,
        ] {
            assert!(
                meta["labels"][key].is_string(),
                "{} lacks label {key}",
                doc["kind"]
            );
        }
        assert_eq!(meta["labels"]["app.kubernetes.io/name"], "postgres");
        assert_eq!(meta["labels"]["app.kubernetes.io/version"], "15");
    }
}

#[test]
fn an_unset_namespace_is_written_as_default() {
    let text = "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: a\nspec:\n  engine: mariadb\n";
    let db = load_database(text).unwrap().database;
    let m = render(&db, &RenderOptions::default(), Some(&credentials())).unwrap();
    assert_eq!(
        m.stateful_set.metadata.namespace.as_deref(),
        Some("default")
    );
    assert_eq!(
        m.network_policy.metadata.namespace.as_deref(),
        Some("default")
    );
}

#[test]
fn statefulset_starts_instances_in_order_behind_the_headless_service() {
    let m = manifests(THREE_POSTGRES);
    let spec = m.stateful_set.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.pod_management_policy.as_deref(), Some("OrderedReady"));
    assert_eq!(spec.service_name.as_deref(), Some("shop-db-headless"));
    let selector = spec.selector.match_labels.as_ref().unwrap();
    assert_eq!(
        selector.get(LABEL_DATABASE).map(String::as_str),
        Some("shop-db")
    );
    let template_labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    for (k, v) in selector {
        assert_eq!(
            template_labels.get(k),
            Some(v),
            "template carries selector {k}"
        );
    }
}

#[test]
fn volume_claim_template_is_one_read_write_once_volume_of_the_spec_size_and_class() {
    let m = manifests("  engine: mysql\n  storage:\n    size: 33Gi\n    storageClassName: fast\n");
    let claims = claim_templates(&m);
    assert_eq!(claims.len(), 1);
    let claim = &claims[0];
    assert_eq!(claim.metadata.name.as_deref(), Some("data"));
    let spec = claim.spec.as_ref().unwrap();
    assert_eq!(spec.access_modes, Some(vec!["ReadWriteOnce".to_string()]));
    assert_eq!(spec.storage_class_name.as_deref(), Some("fast"));
    let size = &spec.resources.as_ref().unwrap().requests.as_ref().unwrap()["storage"];
    assert_eq!(size.0, "33Gi");
}

#[test]
fn pods_run_non_root_with_seccomp_and_the_engine_uid_as_fs_group() {
    let m = manifests(THREE_POSTGRES);
    let pod = pod_spec(&m);
    let sc = pod.security_context.as_ref().unwrap();
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.run_as_user, Some(999));
    assert_eq!(sc.run_as_group, Some(999));
    assert_eq!(sc.fs_group, Some(999));
    assert_eq!(sc.fs_group_change_policy.as_deref(), Some("OnRootMismatch"));
    assert_eq!(sc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    assert_eq!(pod.automount_service_account_token, Some(false));
    assert_eq!(pod.service_account_name.as_deref(), Some("shop-db"));
    assert_eq!(
        m.service_account.automount_service_account_token,
        Some(false)
    );
}

#[test]
fn every_container_is_hardened_and_has_resources_and_a_pinned_image() {
    let m = manifests(THREE_POSTGRES);
    let pod = pod_spec(&m);
    let all = pod
        .containers
        .iter()
        .chain(pod.init_containers.iter().flatten());
    let mut count = 0;
    for c in all {
        count += 1;
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
        assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
        assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
        let caps = sc.capabilities.as_ref().unwrap();
        assert_eq!(caps.drop, Some(vec!["ALL".to_string()]), "{}", c.name);
        assert!(caps.add.is_none(), "{}", c.name);
        let res = c.resources.as_ref().unwrap();
        for key in ["cpu", "memory"] {
            assert!(
                res.requests.as_ref().unwrap().contains_key(key),
                "{}",
                c.name
            );
            assert!(res.limits.as_ref().unwrap().contains_key(key), "{}", c.name);
        }
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let image = c.image.as_deref().unwrap();
        assert!(
            stator_api::validate::image_problem(image).is_none(),
            "{image} is not pinned"
        );
    }
    assert_eq!(count, 2);
}

#[test]
fn database_container_gets_the_spec_resources_and_image() {
    let m = manifests(
        "  engine: mariadb\n  image: registry.example/mariadb:10.11.9\n  resources:\n    requests: {cpu: 300m, memory: 600Mi}\n    limits: {cpu: '3', memory: 3Gi}\n",
    );
    let c = database_container(&m);
    assert_eq!(c.image.as_deref(), Some("registry.example/mariadb:10.11.9"));
    let res = c.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "300m");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "600Mi");
    assert_eq!(res.limits.as_ref().unwrap()["cpu"].0, "3");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "3Gi");
}

#[test]
fn default_images_are_the_official_ones_by_version() {
    for (engine, image) in [
        ("postgres", "postgres:15"),
        ("mysql", "mysql:8.0"),
        ("mariadb", "mariadb:10.11"),
    ] {
        let m = manifests(&format!("  engine: {engine}\n"));
        assert_eq!(database_container(&m).image.as_deref(), Some(image));
    }
}

#[test]
fn database_container_runs_the_instance_manager_from_the_init_container() {
    let m = manifests(THREE_POSTGRES);
    let pod = pod_spec(&m);
    let init = &pod.init_containers.as_ref().unwrap()[0];
    assert_eq!(init.image.as_deref(), Some(DEFAULT_STATOR_IMAGE));
    assert!(DEFAULT_STATOR_IMAGE.ends_with(env!("CARGO_PKG_VERSION")));
    assert_eq!(
        init.command.as_ref().unwrap().last().map(String::as_str),
        Some("/stator/stator")
    );
    let c = database_container(&m);
    assert_eq!(
        c.command.as_ref().unwrap(),
        &[
            "/stator/stator",
            "instance",
            "--pod",
            "--database",
            "/etc/stator/config/database.json"
        ]
    );
    let env: Vec<(&str, &str)> = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .map(|e| {
            let field = e.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
            (e.name.as_str(), field.field_path.as_str())
        })
        .collect();
    assert_eq!(
        env,
        [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace")
        ]
    );
}

#[test]
fn stator_image_can_be_overridden_and_must_be_pinned() {
    let db = database(THREE_POSTGRES);
    let options = RenderOptions {
        stator_image: "registry.example/stator:9.9.9".into(),
        ..RenderOptions::default()
    };
    let m = render(&db, &options, Some(&credentials())).unwrap();
    let init = &pod_spec(&m).init_containers.as_ref().unwrap()[0];
    assert_eq!(init.image.as_deref(), Some("registry.example/stator:9.9.9"));
    let latest = RenderOptions {
        stator_image: "registry.example/stator:latest".into(),
        ..RenderOptions::default()
    };
    assert!(matches!(
        render(&db, &latest, Some(&credentials())),
        Err(RenderError::InvalidStatorImage { .. })
    ));
}

#[test]
fn probes_are_http_to_the_instance_manager_and_never_exec() {
    let m = manifests(THREE_POSTGRES);
    let c = database_container(&m);
    let manager = c
        .ports
        .as_ref()
        .unwrap()
        .iter()
        .find(|p| p.name.as_deref() == Some("manager"))
        .unwrap();
    assert_eq!(manager.container_port, 8008);
    for (probe, path) in [
        (&c.readiness_probe, "/readyz"),
        (&c.liveness_probe, "/healthz"),
        (&c.startup_probe, "/healthz"),
    ] {
        let probe = probe.as_ref().unwrap();
        assert!(probe.exec.is_none());
        let get = probe.http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("manager".into())
        );
    }
    let startup = c.startup_probe.as_ref().unwrap();
    let liveness = c.liveness_probe.as_ref().unwrap();
    assert!(startup.failure_threshold.unwrap() * startup.period_seconds.unwrap() >= 600);
    assert!(
        startup.failure_threshold.unwrap() > liveness.failure_threshold.unwrap(),
        "startup allows longer than liveness"
    );
}

#[test]
fn secrets_are_mounted_as_group_readable_files_never_as_env() {
    let m = manifests(THREE_POSTGRES);
    let pod = pod_spec(&m);
    let c = database_container(&m);
    for e in c.env.iter().flatten() {
        let from = e.value_from.as_ref();
        assert!(
            from.is_none_or(|f| f.secret_key_ref.is_none()),
            "{}",
            e.name
        );
    }
    assert!(c.env_from.is_none());
    let volume = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.secret.is_some())
        .unwrap();
    let secret = volume.secret.as_ref().unwrap();
    assert_eq!(secret.secret_name.as_deref(), Some("shop-db-credentials"));
    assert_eq!(secret.default_mode, Some(0o440));
    let mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|vm| vm.name == volume.name)
        .unwrap();
    assert_eq!(mount.mount_path, SECRETS_DIR);
    assert_eq!(mount.read_only, Some(true));
}

#[test]
fn writable_paths_are_volumes_for_each_engine() {
    for (engine, socket_dir) in [
        ("postgres", "/var/run/postgresql"),
        ("mysql", "/var/run/mysqld"),
        ("mariadb", "/var/run/mysqld"),
    ] {
        let m = manifests(&format!("  engine: {engine}\n"));
        let mounts: Vec<(&str, Option<bool>)> = database_container(&m)
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|vm| (vm.mount_path.as_str(), vm.read_only))
            .collect();
        for path in ["/tmp", RUN_DIR, DATA_DIR, socket_dir] {
            assert!(
                mounts.contains(&(path, None)),
                "{engine}: {path} is not writable"
            );
        }
        for path in [STATOR_BIN_DIR, CONFIG_DIR, SECRETS_DIR] {
            assert!(mounts.contains(&(path, Some(true))), "{engine}: {path}");
        }
    }
}

#[test]
fn anti_affinity_follows_the_spec() {
    let preferred = manifests(THREE_POSTGRES);
    let anti = pod_spec(&preferred)
        .affinity
        .as_ref()
        .unwrap()
        .pod_anti_affinity
        .as_ref()
        .unwrap();
    let term = &anti
        .preferred_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        term.pod_affinity_term.topology_key,
        "kubernetes.io/hostname"
    );
    assert!(
        anti.required_during_scheduling_ignored_during_execution
            .is_none()
    );

    let required = manifests(
        "  engine: postgres\n  instances: 3\n  scheduling:\n    antiAffinity: required\n",
    );
    let anti = pod_spec(&required)
        .affinity
        .as_ref()
        .unwrap()
        .pod_anti_affinity
        .as_ref()
        .unwrap();
    let term = &anti
        .required_during_scheduling_ignored_during_execution
        .as_ref()
        .unwrap()[0];
    assert_eq!(term.topology_key, "kubernetes.io/hostname");
    let selector = term
        .label_selector
        .as_ref()
        .unwrap()
        .match_labels
        .as_ref()
        .unwrap();
    assert_eq!(selector[LABEL_DATABASE], "shop-db");

    let none = manifests("  engine: postgres\n  scheduling:\n    antiAffinity: none\n");
    assert!(pod_spec(&none).affinity.is_none());
}

#[test]
fn topology_spread_node_selector_and_tolerations_come_from_the_spec() {
    let m = manifests(
        "  engine: mysql\n  instances: 3\n  scheduling:\n    topologySpread:\n      - topologyKey: topology.kubernetes.io/zone\n        whenUnsatisfiable: DoNotSchedule\n    nodeSelector:\n      disk: ssd\n    tolerations:\n      - key: dedicated\n        operator: Equal\n        value: db\n        effect: NoSchedule\n",
    );
    let pod = pod_spec(&m);
    let spread = &pod.topology_spread_constraints.as_ref().unwrap()[0];
    assert_eq!(spread.topology_key, "topology.kubernetes.io/zone");
    assert_eq!(spread.max_skew, 1);
    assert_eq!(spread.when_unsatisfiable, "DoNotSchedule");
    assert!(spread.label_selector.is_some());
    assert_eq!(pod.node_selector.as_ref().unwrap()["disk"], "ssd");
    let toleration = &pod.tolerations.as_ref().unwrap()[0];
    assert_eq!(toleration.key.as_deref(), Some("dedicated"));
    assert_eq!(toleration.value.as_deref(), Some("db"));

    let plain = manifests("  engine: mysql\n");
    let pod = pod_spec(&plain);
    assert!(pod.topology_spread_constraints.is_none());
    assert!(pod.node_selector.is_none());
    assert!(pod.tolerations.is_none());
}

#[test]
fn rw_and_ro_services_select_the_role_and_headless_publishes_not_ready_pods() {
    let m = manifests(THREE_POSTGRES);
    let names: Vec<&str> = m
        .services
        .iter()
        .map(|s| s.metadata.name.as_deref().unwrap())
        .collect();
    assert_eq!(names, ["shop-db-headless", "shop-db-rw", "shop-db-ro"]);
    let headless = m.services[0].spec.as_ref().unwrap();
    assert_eq!(headless.cluster_ip.as_deref(), Some("None"));
    assert_eq!(headless.publish_not_ready_addresses, Some(true));
    assert!(!headless.selector.as_ref().unwrap().contains_key(LABEL_ROLE));
    for (service, role) in [(&m.services[1], "primary"), (&m.services[2], "replica")] {
        let spec = service.spec.as_ref().unwrap();
        let selector = spec.selector.as_ref().unwrap();
        assert_eq!(selector[LABEL_ROLE], role);
        assert_eq!(selector[LABEL_DATABASE], "shop-db");
        assert_eq!(spec.ports.as_ref().unwrap()[0].port, 5432);
        assert_ne!(spec.cluster_ip.as_deref(), Some("None"));
    }
    let mysql = manifests("  engine: mysql\n");
    assert_eq!(
        mysql.services[1]
            .spec
            .as_ref()
            .unwrap()
            .ports
            .as_ref()
            .unwrap()[0]
            .port,
        3306
    );
}

#[test]
fn disruption_budget_defaults_to_one_unavailable_and_follows_the_spec() {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let default = manifests(THREE_POSTGRES);
    let spec = default.pod_disruption_budget.spec.as_ref().unwrap();
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(1)));
    assert!(spec.min_available.is_none());
    assert!(spec.selector.is_some());

    let min = manifests("  engine: postgres\n  instances: 3\n  disruption:\n    minAvailable: 2\n");
    let spec = min.pod_disruption_budget.spec.as_ref().unwrap();
    assert_eq!(spec.min_available, Some(IntOrString::Int(2)));
    assert!(spec.max_unavailable.is_none());

    let max =
        manifests("  engine: postgres\n  instances: 5\n  disruption:\n    maxUnavailable: 2\n");
    let spec = max.pod_disruption_budget.spec.as_ref().unwrap();
    assert_eq!(spec.max_unavailable, Some(IntOrString::Int(2)));
}

#[test]
fn network_policy_admits_the_namespace_by_default_and_peers_to_each_other() {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let m = manifests(THREE_POSTGRES);
    let spec = m.network_policy.spec.as_ref().unwrap();
    assert_eq!(
        spec.policy_types,
        Some(vec!["Ingress".to_string(), "Egress".to_string()])
    );
    let ingress = spec.ingress.as_ref().unwrap();
    let clients = &ingress[0];
    let peer = &clients.from.as_ref().unwrap()[0];
    assert_eq!(
        peer.pod_selector,
        Some(Default::default()),
        "every pod of the namespace"
    );
    assert!(peer.namespace_selector.is_none());
    let ports: Vec<_> = clients
        .ports
        .iter()
        .flatten()
        .map(|p| p.port.clone())
        .collect();
    assert_eq!(ports, [Some(IntOrString::Int(5432))]);
    let peers = &ingress[1];
    let selector = peers.from.as_ref().unwrap()[0]
        .pod_selector
        .as_ref()
        .unwrap()
        .match_labels
        .as_ref()
        .unwrap();
    assert_eq!(selector[LABEL_DATABASE], "shop-db");
    let ports: Vec<_> = peers
        .ports
        .iter()
        .flatten()
        .map(|p| p.port.clone())
        .collect();
    assert_eq!(
        ports,
        [Some(IntOrString::Int(5432)), Some(IntOrString::Int(8008))]
    );
    let egress = spec.egress.as_ref().unwrap();
    assert!(
        egress[0]
            .ports
            .iter()
            .flatten()
            .all(|p| p.port == Some(IntOrString::Int(53)))
    );
}

#[test]
fn network_policy_uses_allow_from_verbatim() {
    let m = manifests(
        "  engine: mariadb\n  network:\n    allowFrom:\n      - namespaceSelector:\n          matchLabels:\n            team: web\n      - ipBlock:\n          cidr: 10.1.0.0/16\n",
    );
    let spec = m.network_policy.spec.as_ref().unwrap();
    let from = spec.ingress.as_ref().unwrap()[0].from.as_ref().unwrap();
    assert_eq!(from.len(), 2);
    assert!(from[0].namespace_selector.is_some());
    assert_eq!(from[1].ip_block.as_ref().unwrap().cidr, "10.1.0.0/16");
}

#[test]
fn secret_holds_every_credential_key_and_is_immutable() {
    let m = manifests(THREE_POSTGRES);
    let secret = m.secret.as_ref().unwrap();
    assert_eq!(secret.metadata.name.as_deref(), Some("shop-db-credentials"));
    assert_eq!(secret.immutable, Some(true));
    let data = secret.data.as_ref().unwrap();
    let creds = credentials();
    for key in secret_keys::ALL {
        assert_eq!(
            data[key].0,
            creds.get(key).unwrap().as_bytes(),
            "{key} holds the generated value"
        );
    }
    assert_eq!(data.len(), secret_keys::ALL.len());
}

#[test]
fn an_existing_secret_is_mounted_and_none_is_rendered() {
    // Without TLS: with it, the certificate Secret would still be rendered.
    let db = database(
        "  engine: postgres\n  tls:\n    enabled: false\n  bootstrap:\n    secretName: my-creds\n",
    );
    for creds in [None, Some(credentials())] {
        let m = render(&db, &RenderOptions::default(), creds.as_ref()).unwrap();
        assert!(m.secret.is_none());
        let files = m.files().unwrap();
        assert!(
            files
                .iter()
                .all(|f| f.name != SECRET_FILE && !f.holds_secrets)
        );
        assert!(!m.to_yaml_stream().unwrap().contains("kind: Secret"));
        let volume = pod_spec(&m)
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find_map(|v| v.secret.as_ref())
            .unwrap();
        assert_eq!(volume.secret_name.as_deref(), Some("my-creds"));
    }
}

#[test]
fn generated_credentials_are_required_without_an_existing_secret() {
    let db = database(THREE_POSTGRES);
    assert!(matches!(
        render(&db, &RenderOptions::default(), None),
        Err(RenderError::MissingCredentials { .. })
    ));
}

#[test]
fn an_invalid_database_is_refused() {
    let mut db = database(THREE_POSTGRES);
    db.spec.storage.size = "10Q".into();
    let err = render(&db, &RenderOptions::default(), Some(&credentials())).unwrap_err();
    assert!(matches!(err, RenderError::InvalidSpec { .. }));
    assert!(err.to_string().contains("spec.storage.size"), "{err}");
}

#[test]
fn config_map_database_json_loads_back_to_the_same_database() {
    let db = database(
        "  engine: postgres\n  instances: 2\n  config:\n    parameters:\n      work_mem: 8MB\n",
    );
    let m = render(&db, &RenderOptions::default(), Some(&credentials())).unwrap();
    let json = &m.config_map.data.as_ref().unwrap()[DATABASE_JSON_KEY];
    let loaded = load_database(json)
        .expect("database.json is a valid Database")
        .database;
    assert_eq!(loaded.spec, db.spec);
    assert_eq!(loaded.metadata.name.as_deref(), Some("shop-db"));
    assert_eq!(loaded.metadata.namespace.as_deref(), Some("shop"));
    assert_eq!(
        m.config_map.metadata.name.as_deref(),
        Some("shop-db-config")
    );
}

#[test]
fn config_map_leaves_out_server_set_metadata_and_status() {
    let mut db = database(THREE_POSTGRES);
    db.metadata.uid = Some("1234".into());
    db.metadata.resource_version = Some("99".into());
    db.status = Some(Default::default());
    let json = database_for_pods(&db);
    assert!(json.metadata.uid.is_none());
    assert!(json.metadata.resource_version.is_none());
    assert!(json.status.is_none());
}

#[test]
fn the_same_spec_and_credentials_give_the_same_bytes() {
    let a = manifests(THREE_POSTGRES);
    let b = manifests(THREE_POSTGRES);
    assert_eq!(a.files().unwrap(), b.files().unwrap());
    assert_eq!(a.to_yaml_stream().unwrap(), b.to_yaml_stream().unwrap());
}

#[test]
fn a_changed_spec_changes_the_pod_template_config_hash() {
    let hash = |m: &Manifests| {
        m.stateful_set
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[CONFIG_HASH_ANNOTATION]
            .clone()
    };
    let a = manifests(THREE_POSTGRES);
    let b = manifests(
        "  engine: postgres\n  instances: 3\n  config:\n    parameters:\n      work_mem: 8MB\n",
    );
    assert_ne!(hash(&a), hash(&b));
    assert_eq!(hash(&a), hash(&manifests(THREE_POSTGRES)));
}

/// Operator mode: scaling gives the pods no new revision (the operator would roll every pod
/// for nothing), a parameter does; plain mode keeps hashing the whole spec, as before.
#[test]
fn in_operator_mode_scaling_keeps_the_pod_template_and_a_parameter_changes_it() {
    let hash = |spec: &str, operator: bool| {
        let options = RenderOptions {
            operator: operator.then(|| super::OperatorMode {
                database_uid: "0b5e1a7c-4f7d-4c1e-9a57-5a1f2d3c4b5e".into(),
                operator_namespace: "stator-system".into(),
            }),
            ..RenderOptions::default()
        };
        let m = render(&database(spec), &options, Some(&credentials())).expect("renders");
        let template = m.stateful_set.spec.unwrap().template;
        template.metadata.unwrap().annotations.unwrap()[CONFIG_HASH_ANNOTATION].clone()
    };
    let five = THREE_POSTGRES.replace("instances: 3", "instances: 5");
    assert_ne!(five, THREE_POSTGRES);
    let tuned = format!("{THREE_POSTGRES}  config:\n    parameters:\n      work_mem: 8MB\n");
    assert_eq!(hash(THREE_POSTGRES, true), hash(&five, true));
    assert_ne!(hash(THREE_POSTGRES, true), hash(&tuned, true));
    assert_ne!(hash(THREE_POSTGRES, false), hash(&five, false));
}

/// `spec.failover.lease` puts the operator's pods in lease mode (`--lease`); plain `stator
/// render` pods have no operator to grant leases and never get it; without the field the
/// rendered objects are byte for byte what they were.
#[test]
fn write_leases_put_only_the_operators_pods_in_lease_mode() {
    let command = |spec: &str, operator: bool| {
        let options = RenderOptions {
            operator: operator.then(|| super::OperatorMode {
                database_uid: "0b5e1a7c-4f7d-4c1e-9a57-5a1f2d3c4b5e".into(),
                operator_namespace: "stator-system".into(),
            }),
            ..RenderOptions::default()
        };
        let m = render(&database(spec), &options, Some(&credentials())).expect("renders");
        database_container(&m).command.clone().unwrap_or_default()
    };
    let leased = format!("{THREE_POSTGRES}  failover:\n    lease: true\n");
    let off = format!("{THREE_POSTGRES}  failover:\n    lease: false\n");
    assert!(command(&leased, true).contains(&"--lease".to_string()));
    assert!(!command(THREE_POSTGRES, true).contains(&"--lease".to_string()));
    assert!(!command(&leased, false).contains(&"--lease".to_string()));
    assert_eq!(manifests(&off), manifests(THREE_POSTGRES));
}

#[test]
fn passwords_appear_only_in_the_secret_file() {
    let m = manifests(THREE_POSTGRES);
    let creds = credentials();
    for file in m.files().unwrap() {
        for (key, value) in creds.iter() {
            assert!(!file.contents.contains(value), "{key} in {}", file.name);
        }
        assert!(file.contents.starts_with(GENERATED_HEADER));
        assert_eq!(file.holds_secrets, file.name == SECRET_FILE);
    }
}

#[test]
fn files_are_one_per_kind_in_apply_order() {
    let m = manifests(THREE_POSTGRES);
    let names: Vec<&str> = m.files().unwrap().iter().map(|f| f.name).collect();
    // certificates.yaml only with spec.tls.issuerRef; cronjob.yaml only with spec.backup;
    // volumesnapshot.yaml only with --volume-snapshot.
    let expected: Vec<&str> = FILE_NAMES
        .into_iter()
        .filter(|n| ![CERTIFICATES_FILE, CRON_JOB_FILE, VOLUME_SNAPSHOT_FILE].contains(n))
        .collect();
    assert_eq!(names, expected);
    let stream = m.to_yaml_stream().unwrap();
    let kinds: Vec<&str> = stream
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Secret",
            "Secret",
            "ConfigMap",
            "Service",
            "Service",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "StatefulSet"
        ]
    );
}

#[test]
fn operator_mode_without_the_database_uid_is_refused() {
    let db = database(THREE_POSTGRES);
    let options = RenderOptions {
        operator: Some(super::OperatorMode {
            database_uid: " ".into(),
            operator_namespace: "stator-system".into(),
        }),
        ..RenderOptions::default()
    };
    let e = render(&db, &options, Some(&credentials())).unwrap_err();
    assert!(matches!(e, RenderError::MissingOwnerUid { .. }), "{e}");
    assert!(e.to_string().contains("metadata.uid"), "{e}");
}

#[test]
fn tls_by_default_mounts_the_certificate_secret_and_probes_over_https() {
    let tls_volume = |m: &Manifests| {
        pod_spec(m)
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == "tls")
            .and_then(|v| v.secret.clone())
    };
    let schemes = |m: &Manifests| {
        let c = database_container(m);
        [&c.startup_probe, &c.liveness_probe, &c.readiness_probe]
            .iter()
            .map(|p| {
                let get = p.as_ref().unwrap().http_get.as_ref().unwrap();
                assert_eq!(
                    get.port,
                    k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                        "manager".into()
                    )
                );
                get.scheme.clone().unwrap()
            })
            .collect::<Vec<_>>()
    };
    let m = manifests(THREE_POSTGRES);
    let secret = m
        .tls_secret
        .as_ref()
        .expect("the certificate Secret NAME-tls");
    assert_eq!(secret.metadata.name.as_deref(), Some("shop-db-tls"));
    let mut expected = TLS_SECRET_KEYS.to_vec();
    expected.sort_unstable();
    let keys: Vec<&str> = secret
        .data
        .as_ref()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(keys, expected);
    let volume = tls_volume(&m).expect("the tls volume");
    assert_eq!(volume.secret_name.as_deref(), Some("shop-db-tls"));
    assert_eq!(
        volume.default_mode,
        Some(0o440),
        "readable by the fsGroup only"
    );
    let c = database_container(&m);
    let mount = c
        .volume_mounts
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "tls")
        .unwrap();
    assert_eq!(
        (mount.mount_path.as_str(), mount.read_only),
        (TLS_DIR, Some(true))
    );
    assert_eq!(schemes(&m), ["HTTPS", "HTTPS", "HTTPS"]);
    let tls_file = m
        .files()
        .unwrap()
        .into_iter()
        .find(|f| f.name == SECRET_FILE)
        .unwrap();
    assert!(tls_file.holds_secrets && tls_file.contents.contains("name: shop-db-tls"));

    // The opt-out renders today's plaintext objects.
    let plain = manifests("  engine: postgres\n  instances: 3\n  tls:\n    enabled: false\n");
    assert!(plain.tls_secret.is_none() && tls_volume(&plain).is_none());
    assert_eq!(schemes(&plain), ["HTTP", "HTTP", "HTTP"]);

    // Plain mode without certificates is refused, naming the field; operator mode leaves the
    // Secret to the operator and still mounts it.
    let db = database(THREE_POSTGRES);
    let bare = Credentials::generate(&mut StdRng::seed_from_u64(7));
    let e = render(&db, &RenderOptions::default(), Some(&bare)).unwrap_err();
    assert!(
        matches!(e, RenderError::MissingTlsCertificates { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("spec.tls.enabled"), "{e}");
    let options = RenderOptions {
        operator: Some(super::OperatorMode {
            database_uid: "0f6b".into(),
            operator_namespace: "stator-system".into(),
        }),
        ..RenderOptions::default()
    };
    let m = render(&db, &options, Some(&bare)).unwrap();
    assert!(m.tls_secret.is_none() && tls_volume(&m).is_some());
}

#[test]
fn an_issuer_ref_renders_certificates_and_projects_their_secrets_into_the_tls_files() {
    let m = manifests(
        "  engine: postgres\n  instances: 2\n  tls:\n    issuerRef:\n      name: ca-issuer\n      kind: Issuer\n",
    );
    assert!(m.tls_secret.is_none(), "cert-manager fills NAME-tls");
    let [server, client] = &m.certificates[..] else {
        panic!("two Certificates: {:?}", m.certificates);
    };
    assert_eq!(server.spec.secret_name, "shop-db-tls");
    assert_eq!(server.spec.issuer_ref.group, "cert-manager.io");
    let db = database("  engine: postgres\n  instances: 2\n");
    let mut sans = server.spec.dns_names.clone();
    sans.extend(server.spec.ip_addresses.iter().cloned());
    sans.sort();
    let mut expected = kube_sans(&db);
    expected.sort();
    assert_eq!(
        sans, expected,
        "the server certificate covers what clients dial"
    );
    assert_eq!(client.spec.secret_name, "shop-db-replication-tls");
    assert_eq!(client.spec.usages, ["client auth", "digital signature"]);
    // The pods see the five files of TLS_SECRET_KEYS, from the two Secrets.
    let volume = pod_spec(&m)
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "tls")
        .unwrap();
    assert!(volume.secret.is_none());
    let projected = volume.projected.as_ref().unwrap();
    assert_eq!(projected.default_mode, Some(0o440));
    let mut files: Vec<(String, String, String)> = projected
        .sources
        .iter()
        .flatten()
        .flat_map(|s| {
            let secret = s.secret.as_ref().unwrap();
            secret
                .items
                .iter()
                .flatten()
                .map(|i| (i.path.clone(), secret.name.clone(), i.key.clone()))
        })
        .collect();
    files.sort();
    let mut paths: Vec<&str> = files.iter().map(|(p, _, _)| p.as_str()).collect();
    paths.sort_unstable();
    let mut wanted = TLS_SECRET_KEYS.to_vec();
    wanted.sort_unstable();
    assert_eq!(paths, wanted);
    assert!(files.contains(&(
        "client.key".into(),
        "shop-db-replication-tls".into(),
        "tls.key".into()
    )));
    let names: Vec<&str> = m.files().unwrap().iter().map(|f| f.name).collect();
    assert!(names.contains(&CERTIFICATES_FILE));
    let certificates = m.files().unwrap()[2].contents.clone();
    assert!(certificates.contains("apiVersion: cert-manager.io/v1\nkind: Certificate\n"));
}

const S3_BACKUP: &str = "  engine: postgres\n  instances: 2\n  backup:\n    repository:\n      s3:\n        endpoint: s3.example.test:9443\n        bucket: shop-backups\n        region: us-east-1\n        credentialsSecretName: shop-s3\n        caSecretName: shop-s3-ca\n    schedule: \"15 2 * * *\"\n    encryption:\n      secretName: shop-s3\n";

/// An encryption Secret of its own (not the credentials one) is mounted beside the others, read
/// only, 0400, where the instance manager looks for `SECRET/passphrase`.
#[test]
fn a_separate_encryption_secret_is_mounted_with_the_repository_secrets() {
    let m = manifests(&S3_BACKUP.replace(
        "    encryption:\n      secretName: shop-s3\n",
        "    encryption:\n      secretName: shop-backup-key\n",
    ));
    let volumes = pod_spec(&m).volumes.as_ref().unwrap();
    let key = volumes
        .iter()
        .find_map(|v| {
            v.secret
                .as_ref()
                .filter(|s| s.secret_name.as_deref() == Some("shop-backup-key"))
                .map(|s| (v.name.clone(), s))
        })
        .expect("a volume of the encryption Secret");
    assert_eq!(key.1.default_mode, Some(0o400));
    let mounts = database_container(&m).volume_mounts.as_ref().unwrap();
    let mount = mounts
        .iter()
        .find(|v| v.name == key.0)
        .expect("mounted in the database container");
    assert_eq!(
        mount.mount_path,
        format!("{BACKUP_SECRETS_DIR}/shop-backup-key")
    );
    assert_eq!(mount.read_only, Some(true));
    let stream = m.to_yaml_stream().unwrap();
    assert!(!stream.contains("passphrase"), "a key name in a manifest");
}

/// spec.backup on S3: the repository's Secrets as 0400 files at a documented path (never env,
/// never a literal), pgbackrest copied by the init container, egress to the endpoint's port,
/// and the NAME-backup CronJob asking the managers for a backup with a token read from a file.
#[test]
fn an_s3_backup_renders_its_secrets_as_files_a_cron_job_and_egress() {
    let m = manifests(S3_BACKUP);
    let stream = m.to_yaml_stream().unwrap();
    // Two Secrets (credentials, CA; the encryption Secret is the credentials one: mounted once).
    let volumes = pod_spec(&m).volumes.as_ref().unwrap();
    let backup: Vec<_> = volumes
        .iter()
        .filter_map(|v| v.secret.as_ref().filter(|_| v.name.starts_with("backup-")))
        .collect();
    assert_eq!(backup.len(), 2, "{backup:?}");
    for secret in &backup {
        assert_eq!(secret.default_mode, Some(0o400));
    }
    let mounts = database_container(&m).volume_mounts.as_ref().unwrap();
    for name in ["shop-s3", "shop-s3-ca"] {
        let path = format!("{BACKUP_SECRETS_DIR}/{name}");
        assert!(
            mounts
                .iter()
                .any(|v| v.mount_path == path && v.read_only == Some(true)),
            "{path} not mounted read-only"
        );
    }
    // No environment variable comes from a Secret, anywhere.
    assert!(
        !stream.contains("secretKeyRef"),
        "a Secret as env:\n{stream}"
    );
    assert!(!stream.contains("access-key"), "a key name in a manifest");
    // The init container copies pgbackrest next to stator.
    let init = &pod_spec(&m).init_containers.as_ref().unwrap()[0];
    let command = init.command.as_ref().unwrap();
    assert!(
        command.contains(&STATOR_IMAGE_PGBACKREST.to_string()),
        "{command:?}"
    );
    assert_eq!(command.last().map(String::as_str), Some("/stator/"));
    // Egress to the repository's port.
    let egress = m
        .network_policy
        .spec
        .as_ref()
        .unwrap()
        .egress
        .as_ref()
        .unwrap();
    let ports: Vec<_> = egress
        .iter()
        .flat_map(|r| r.ports.iter().flatten())
        .filter_map(|p| p.port.clone())
        .collect();
    assert!(
        ports.contains(&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(9443)),
        "{ports:?}"
    );
    // The CronJob: Forbid, the spec's schedule in UTC, the stator image, no API token, the
    // token as a 0400 file, hardened, and its pods never selected as the database's.
    let cron = m.cron_job.as_ref().expect("a CronJob");
    assert_eq!(cron.metadata.name.as_deref(), Some("shop-db-backup"));
    let spec = cron.spec.as_ref().unwrap();
    assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
    assert_eq!(spec.schedule, "15 2 * * *");
    assert_eq!(spec.time_zone.as_deref(), Some("Etc/UTC"));
    let job = spec.job_template.spec.as_ref().unwrap();
    let pod = job.template.spec.as_ref().unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    let container = &pod.containers[0];
    assert_eq!(container.image.as_deref(), Some(DEFAULT_STATOR_IMAGE));
    assert!(container.env.is_none());
    let sc = container.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let command = container.command.as_ref().unwrap().join(" ");
    assert!(command.contains("backup request"), "{command}");
    assert!(
        command.contains("--token-file /etc/stator/token/api-token"),
        "{command}"
    );
    let token = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "token")
        .and_then(|v| v.secret.as_ref())
        .unwrap();
    assert_eq!(token.default_mode, Some(0o400));
    assert_eq!(token.items.as_ref().unwrap()[0].key, secret_keys::API_TOKEN);
    let labels = backup::backup_job_labels(&database(S3_BACKUP));
    assert_eq!(
        job.template.metadata.as_ref().unwrap().labels.as_ref(),
        Some(&labels)
    );
    assert!(!labels.contains_key(LABEL_DATABASE), "{labels:?}");
    // The database's pods admit the job's pods to the instance manager.
    let ingress = m
        .network_policy
        .spec
        .as_ref()
        .unwrap()
        .ingress
        .as_ref()
        .unwrap();
    assert!(ingress.iter().any(|r| {
        r.from.iter().flatten().any(|p| {
            p.pod_selector
                .as_ref()
                .and_then(|s| s.match_labels.as_ref())
                == Some(&labels)
        })
    }));
    // Operator mode: no CronJob (the operator schedules backups).
    let operated = render(
        &database(S3_BACKUP),
        &RenderOptions {
            operator: Some(super::OperatorMode {
                database_uid: "0f6b".into(),
                operator_namespace: "stator-system".into(),
            }),
            ..RenderOptions::default()
        },
        Some(&credentials()),
    )
    .unwrap();
    assert!(operated.cron_job.is_none());
}

#[test]
fn a_local_repository_is_refused_naming_the_field() {
    let db = database(
        "  engine: postgres\n  backup:\n    repository:\n      local:\n        path: /srv/backups\n",
    );
    let err = render(&db, &RenderOptions::default(), Some(&credentials())).unwrap_err();
    assert!(matches!(err, RenderError::LocalRepository { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("spec.backup.repository.local"), "{text}");
    assert!(text.contains("local runtime only"), "{text}");
}

/// --volume-snapshot: a VolumeSnapshot of the last instance's (a replica's) volume;
/// --restore-from-snapshot: the volume claim template's dataSource. Not in operator mode.
#[test]
fn volume_snapshots_of_a_replica_and_restores_from_one() {
    let db = database(THREE_POSTGRES);
    let options = RenderOptions {
        snapshots: SnapshotOptions {
            take: Some("snap-1".into()),
            class: Some("csi-snapclass".into()),
            restore_from: Some("snap-0".into()),
        },
        ..RenderOptions::default()
    };
    let m = render(&db, &options, Some(&credentials())).unwrap();
    let snapshot = m.volume_snapshot.as_ref().unwrap();
    assert_eq!(snapshot.api_version, VOLUME_SNAPSHOT_API_VERSION);
    assert_eq!(
        snapshot.spec.source.persistent_volume_claim_name,
        "data-shop-db-2"
    );
    assert_eq!(
        snapshot.spec.volume_snapshot_class_name.as_deref(),
        Some("csi-snapclass")
    );
    let claim = &claim_templates(&m)[0];
    let source = claim.spec.as_ref().unwrap().data_source.as_ref().unwrap();
    assert_eq!(
        (
            source.api_group.as_deref(),
            source.kind.as_str(),
            source.name.as_str()
        ),
        (Some("snapshot.storage.k8s.io"), "VolumeSnapshot", "snap-0")
    );
    let files = m.files().unwrap();
    assert!(files.iter().any(|f| f.name == "volumesnapshot.yaml"));
    // Without the options: neither.
    let plain = manifests(THREE_POSTGRES);
    assert!(plain.volume_snapshot.is_none());
    assert!(!plain.to_yaml_stream().unwrap().contains("dataSource"));
    let operator = RenderOptions {
        operator: Some(super::OperatorMode {
            database_uid: "0f6b".into(),
            operator_namespace: "stator-system".into(),
        }),
        ..options
    };
    assert!(matches!(
        render(&db, &operator, Some(&credentials())),
        Err(RenderError::SnapshotsInOperatorMode { .. })
    ));
}
