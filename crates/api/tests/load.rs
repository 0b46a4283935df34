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
