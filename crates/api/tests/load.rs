//! Loading specs from YAML: what is accepted, and the path every refusal names.

use stator_api::{Engine, load_database};

fn errors(yaml: &str) -> Vec<String> {
    match load_database(yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn the_smallest_spec_gets_the_guides_defaults() {
    let loaded = load_database(
        "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: shop}\nspec: {engine: postgres}\n",
    )
    .unwrap();
    let db = loaded.database;
    assert_eq!(db.spec.engine, Engine::Postgres);
    assert_eq!(db.spec.instances, 1);
    assert_eq!(db.spec.storage.size, "10Gi");
    assert_eq!(db.spec.resources.requests.cpu, "250m");
    assert_eq!(db.spec.resources.limits.memory, "1Gi");
    assert_eq!(db.image(), "postgres:15");
    assert_eq!(db.namespace(), "default");
    assert!(loaded.warnings.iter().any(|w| w.path == "spec.instances"));
}

#[test]
fn tls_is_on_by_default_and_turning_it_off_is_warned_about() {
    let on = load_database(
        "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: shop}\nspec: {engine: postgres}\n",
    )
    .unwrap();
    assert!(on.database.spec.tls.enabled);
    assert!(!on.warnings.iter().any(|w| w.path == "spec.tls.enabled"));
    let off = load_database(
        "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: shop}\nspec: {engine: postgres, tls: {enabled: false}}\n",
    )
    .unwrap();
    assert!(!off.database.spec.tls.enabled);
    let warning = off
        .warnings
        .iter()
        .find(|w| w.path == "spec.tls.enabled")
        .expect("a warning on spec.tls.enabled");
    assert!(warning.to_string().contains("plaintext"), "{warning}");
    assert!(
        errors("apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: shop}\nspec: {engine: postgres, tls: {enabled: 1, x: 2}}\n")
            .iter()
            .any(|e| e.contains("spec.tls")),
    );
}

#[test]
fn a_tls_issuer_ref_names_a_cert_manager_issuer_and_every_mistake_its_field() {
    let spec = |tls: &str| {
        format!(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {{name: shop}}\nspec: {{engine: postgres, tls: {tls}}}\n"
        )
    };
    let db = load_database(&spec("{issuerRef: {name: ca-issuer, kind: ClusterIssuer}}"))
        .unwrap()
        .database;
    let issuer = db.spec.tls.issuer_ref.unwrap();
    assert_eq!(
        (
            issuer.name.as_str(),
            issuer.kind.as_str(),
            issuer.group.as_str()
        ),
        ("ca-issuer", "ClusterIssuer", "cert-manager.io")
    );
    let cases = [
        (
            "{issuerRef: {name: ca-issuer, kind: Issuers}}",
            "spec.tls.issuerRef.kind",
            "ClusterIssuer",
        ),
        ("{issuerRef: {kind: Issuer}}", "spec.tls.issuerRef", "name"),
        (
            "{issuerRef: {name: CA_Issuer, kind: Issuer}}",
            "spec.tls.issuerRef.name",
            "only lowercase letters",
        ),
        (
            "{issuerRef: {name: ca, kind: Issuer, group: ''}}",
            "spec.tls.issuerRef.group",
            "cert-manager.io",
        ),
        (
            "{enabled: false, issuerRef: {name: ca, kind: Issuer}}",
            "spec.tls.issuerRef",
            "spec.tls.enabled is false",
        ),
    ];
    for (tls, path, hint) in cases {
        let errors = errors(&spec(tls));
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with(&format!("{path}:")) && e.contains(hint)),
            "{tls}: {errors:?}"
        );
    }
}

#[test]
fn every_unknown_field_is_reported_with_its_path() {
    let e = errors(
        "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: shop}\nspec:\n  engine: postgres\n  instnaces: 3\n  storage: {size: 1Gi, clas: fast}\n",
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("spec.instnaces: is not a known field")),
        "{e:?}"
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("spec.storage.clas: is not a known field")),
        "{e:?}"
    );
}

#[test]
fn a_wrong_type_names_its_path() {
    let e = errors(
        "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: shop}\nspec: {engine: postgres, instances: three}\n",
    );
    assert!(e[0].starts_with("spec.instances:"), "{e:?}");
}

/// serde stops at the first error; `validate` promises every problem at once. Eight different
/// problems in one document (unknown fields at three levels, two wrong types, a bad enum value,
/// a bad quantity, a bad duration) are all named, each with its path.
#[test]
fn every_problem_of_a_spec_is_named_in_one_pass() {
    let e = errors(
        "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: shop, lables: {a: b}}\n\
         spec:\n  engine: postgres\n  replicas: 3\n  instances: three\n  storage: {size: 10Q, sizee: 1Gi}\n\
         \x20 scheduling: {antiAffinity: always}\n  failover: {detectionTimeout: \"2\"}\n\
         \x20 replication: {synchronous: maybe}\n",
    );
    let wanted = [
        ("metadata.lables:", "not a known field"),
        ("spec.replicas:", "not a known field"),
        ("spec.storage.sizee:", "not a known field"),
        ("spec.instances:", "whole number"),
        ("spec.replication.synchronous:", "true or false"),
        (
            "spec.scheduling.antiAffinity:",
            "expected one of `required`, `preferred`, `none`",
        ),
        ("spec.storage.size:", "not a quantity"),
        ("spec.failover.detectionTimeout:", "not a duration"),
    ];
    for (path, words) in wanted {
        assert!(
            e.iter().any(|m| m.starts_with(path) && m.contains(words)),
            "{path} ({words}) missing from {e:#?}"
        );
    }
    assert_eq!(e.len(), wanted.len(), "each problem once: {e:#?}");
}

/// An unknown engine cannot stop the checks of everything else; the checks that depend on the
/// engine (version, parameters) are left out rather than guessed.
#[test]
fn an_unknown_engine_does_not_hide_the_other_problems() {
    let e = errors(
        "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: shop}\n\
         spec: {engine: oracle, version: \"19\", storage: {size: 10Q}, instances: 0}\n",
    );
    assert!(
        e.iter()
            .any(|m| m.starts_with("spec.engine: unknown variant")),
        "{e:?}"
    );
    assert!(
        e.iter().any(|m| m.starts_with("spec.storage.size:")),
        "{e:?}"
    );
    assert!(e.iter().any(|m| m.starts_with("spec.instances:")), "{e:?}");
    assert!(!e.iter().any(|m| m.starts_with("spec.version")), "{e:?}");
}

#[test]
fn write_leases_are_off_by_default_and_a_bad_value_names_the_field() {
    let spec = |failover: &str| {
        format!(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {{name: shop}}\nspec: {{engine: postgres, instances: {failover}}}\n"
        )
    };
    let off = load_database(&spec("3")).unwrap();
    assert!(!off.database.spec.failover.lease);
    // Absent, it is not written back: specs without it serialise as before.
    let json = serde_json::to_value(&off.database.spec.failover).unwrap();
    assert!(json.get("lease").is_none(), "{json}");
    let on = load_database(&spec("3, failover: {lease: true}")).unwrap();
    assert!(on.database.spec.failover.lease);
    assert!(!on.warnings.iter().any(|w| w.path == "spec.failover.lease"));
    // One instance: no replica can vouch for it when the operator is gone.
    let single = load_database(&spec("1, failover: {lease: true}")).unwrap();
    assert!(
        single
            .warnings
            .iter()
            .any(|w| w.path == "spec.failover.lease")
    );
    assert!(
        errors(&spec("3, failover: {lease: sometimes}"))
            .iter()
            .any(|e| e.contains("spec.failover")),
    );
}
