//! Snapshot tests: the rendered objects of every spec in `examples/`, pinned with `insta`. The
//! generated passwords are masked, so the snapshots hold no secret and stay stable.

use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use serde::Serialize;
use stator_api::load_database;
use stator_kube::render::{Credentials, OperatorMode, RenderOptions, TlsMaterial, render};

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples")
}

/// The stream of `examples/NAME.yaml` with each generated value replaced by `<masked>`.
fn rendered_example(name: &str) -> String {
    rendered_example_with(name, &RenderOptions::default())
}

/// The same in operator mode, owned by a Database of a fixed uid.
fn rendered_for_the_operator(name: &str) -> String {
    let options = RenderOptions {
        operator: Some(OperatorMode {
            database_uid: "0b5e1a7c-4f7d-4c1e-9a57-5a1f2d3c4b5e".into(),
            operator_namespace: "stator-system".into(),
        }),
        ..RenderOptions::default()
    };
    rendered_example_with(name, &options)
}

fn rendered_example_with(name: &str, options: &RenderOptions) -> String {
    let path = examples_dir().join(format!("{name}.yaml"));
    let text = std::fs::read_to_string(&path).unwrap();
    let db = load_database(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .database;
    let mut credentials = Credentials::random();
    if db.spec.tls.enabled && db.spec.tls.issuer_ref.is_none() {
        credentials = credentials.with_tls(TlsMaterial::issue(&db).unwrap());
    }
    let manifests = render(&db, options, Some(&credentials)).unwrap();
    let mut stream = manifests.to_yaml_stream().unwrap();
    for (_, value) in credentials.iter() {
        let encoded = base64_of(value);
        assert!(
            db.spec.bootstrap.secret_name.is_some() || stream.contains(&encoded),
            "the Secret holds the generated value"
        );
        stream = stream.replace(&encoded, "<masked>");
    }
    for (_, pem) in credentials.tls().iter().flat_map(|t| t.iter()) {
        let encoded = base64_of(pem);
        assert!(
            stream.contains(&encoded),
            "the Secret NAME-tls holds the certificates"
        );
        stream = stream.replace(&encoded, "<masked>");
    }
    stream
}

/// Base64 as Kubernetes (and k8s-openapi's `ByteString`) writes it.
fn base64_of(value: &str) -> String {
    #[derive(Serialize)]
    struct Holder(ByteString);
    serde_json::to_value(Holder(ByteString(value.as_bytes().to_vec())))
        .unwrap()
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn every_example_has_a_snapshot_test() {
    let mut names: Vec<String> = std::fs::read_dir(examples_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names, EXAMPLES,
        "add a snapshot test below for each file in examples/"
    );
}

const EXAMPLES: [&str; 7] = [
    "mariadb",
    "mysql",
    "postgres-1",
    "postgres-3",
    "postgres-backup-s3",
    "postgres-cert-manager",
    "postgres-sync",
];

#[test]
fn postgres_1_renders_as_pinned() {
    insta::assert_snapshot!("postgres-1", rendered_example("postgres-1"));
}

#[test]
fn postgres_3_renders_as_pinned() {
    insta::assert_snapshot!("postgres-3", rendered_example("postgres-3"));
}

#[test]
fn postgres_sync_renders_as_pinned_without_a_secret() {
    let stream = rendered_example("postgres-sync");
    // Its passwords are in an existing Secret: only the certificate Secret is rendered.
    assert_eq!(stream.matches("kind: Secret\n").count(), 1);
    assert!(stream.contains("name: ledger-db-tls\n"));
    insta::assert_snapshot!("postgres-sync", stream);
}

/// `spec.tls.issuerRef`: cert-manager Certificates instead of generated certificates, and the
/// pods' TLS volume projected from the Secrets they fill; in operator mode too.
#[test]
fn postgres_cert_manager_renders_certificates_instead_of_generating_them() {
    let stream = rendered_example("postgres-cert-manager");
    assert_eq!(stream.matches("kind: Certificate\n").count(), 2);
    assert!(!stream.contains("name: billing-db-tls\n  namespace: billing\ntype:"));
    assert!(
        !stream.contains("BEGIN"),
        "no certificate material is rendered"
    );
    assert!(stream.contains("secretName: billing-db-replication-tls\n"));
    insta::assert_snapshot!("postgres-cert-manager", stream);
    let operated = rendered_for_the_operator("postgres-cert-manager");
    assert_eq!(operated.matches("kind: Certificate\n").count(), 2);
    assert_eq!(operated.matches("  ownerReferences:\n").count(), 11);
}

/// spec.backup on S3: the CronJob (plain mode only), the repository's Secrets as files.
#[test]
fn postgres_backup_s3_renders_as_pinned() {
    let stream = rendered_example("postgres-backup-s3");
    assert_eq!(stream.matches("kind: CronJob\n").count(), 1);
    insta::assert_snapshot!("postgres-backup-s3", stream);
    let operated = rendered_for_the_operator("postgres-backup-s3");
    assert_eq!(operated.matches("kind: CronJob\n").count(), 0);
}

#[test]
fn mysql_renders_as_pinned() {
    insta::assert_snapshot!("mysql", rendered_example("mysql"));
}

#[test]
fn mariadb_renders_as_pinned() {
    insta::assert_snapshot!("mariadb", rendered_example("mariadb"));
}

#[test]
fn masked_snapshots_hold_no_generated_value() {
    let stream = rendered_example("postgres-3");
    // 5 passwords and 5 certificate files.
    assert_eq!(stream.matches("<masked>").count(), 10);
}

#[test]
fn postgres_3_renders_as_pinned_for_the_operator() {
    insta::assert_snapshot!(
        "postgres-3-operator",
        rendered_for_the_operator("postgres-3")
    );
}

#[test]
fn mariadb_renders_as_pinned_for_the_operator() {
    insta::assert_snapshot!("mariadb-operator", rendered_for_the_operator("mariadb"));
}

/// Operator mode differs from the plain render only where it must: owner references on every
/// object, the StatefulSet's pod management and update strategy, the managed instance manager,
/// and one more ingress rule (the operator to the instance managers).
#[test]
fn operator_mode_changes_only_what_the_operator_needs() {
    let plain = rendered_example("postgres-3");
    let operated = rendered_for_the_operator("postgres-3");
    let objects = plain.matches("\nkind: ").count();
    assert_eq!(operated.matches("\nkind: ").count(), objects);
    assert_eq!(operated.matches("  ownerReferences:\n").count(), objects);
    assert_eq!(operated.matches("    kind: Database\n").count(), objects);
    assert_eq!(operated.matches("controller: true").count(), objects);
    assert_eq!(
        operated.matches("blockOwnerDeletion: true").count(),
        objects
    );
    assert!(!plain.contains("ownerReferences"));
    assert!(plain.contains("podManagementPolicy: OrderedReady"));
    assert!(operated.contains("podManagementPolicy: Parallel"));
    assert!(operated.contains("type: OnDelete"));
    assert!(operated.contains("- --managed\n"));
    assert!(!plain.contains("--managed"));
    assert!(operated.contains("kubernetes.io/metadata.name: stator-system"));
}
