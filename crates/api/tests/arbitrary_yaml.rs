//! Property tests: no input makes loading a spec panic, and every refusal names a problem.

use proptest::prelude::*;
use serde_norway::{Mapping, Value};
use stator_api::load_database;

/// Arbitrary YAML values: scalars of every kind, nested sequences and mappings.
fn any_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        any::<f64>().prop_map(|f| Value::Number(f.into())),
        "[a-zA-Z0-9_.:/ -]{0,12}".prop_map(Value::String),
        prop::sample::select(vec![
            "postgres",
            "mysql",
            "mariadb",
            "10Gi",
            "250m",
            "2s",
            "127.0.0.1",
            "required",
            "0",
            "-1",
        ])
        .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Sequence),
            prop::collection::vec((field_name(), inner), 0..6).prop_map(|entries| {
                let mut m = Mapping::new();
                for (k, v) in entries {
                    m.insert(Value::String(k), v);
                }
                Value::Mapping(m)
            }),
        ]
    })
}

/// Mostly real field names, so the generator reaches deep into the spec.
fn field_name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "engine",
            "version",
            "image",
            "instances",
            "storage",
            "size",
            "storageClassName",
            "resources",
            "requests",
            "limits",
            "cpu",
            "memory",
            "config",
            "parameters",
            "bootstrap",
            "database",
            "owner",
            "secretName",
            "replication",
            "synchronous",
            "failover",
            "enabled",
            "detectionTimeout",
            "scheduling",
            "antiAffinity",
            "topologySpread",
            "topologyKey",
            "maxSkew",
            "nodeSelector",
            "tolerations",
            "disruption",
            "maxUnavailable",
            "minAvailable",
            "network",
            "allowFrom",
            "ipBlock",
            "cidr",
            "podSelector",
            "local",
            "listenAddress",
            "portBase",
            "port",
        ])
        .prop_map(String::from),
        "[a-z]{1,8}",
    ]
}

/// A document with a correct envelope and an arbitrary spec.
fn any_database_document() -> impl Strategy<Value = String> {
    (any_value(), any_value()).prop_map(|(spec, name)| {
        let mut doc = Mapping::new();
        doc.insert("apiVersion".into(), "stator.dev/v1alpha1".into());
        doc.insert("kind".into(), "Database".into());
        let mut meta = Mapping::new();
        meta.insert("name".into(), name);
        doc.insert("metadata".into(), Value::Mapping(meta));
        doc.insert("spec".into(), spec);
        serde_norway::to_string(&Value::Mapping(doc)).unwrap_or_default()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}") {
        if let Err(e) = load_database(&text) {
            prop_assert!(!e.errors.is_empty());
        }
    }

    #[test]
    fn arbitrary_yaml_values_never_panic(value in any_value()) {
        let text = serde_norway::to_string(&value).unwrap_or_default();
        if let Err(e) = load_database(&text) {
            prop_assert!(!e.errors.is_empty());
        }
    }

    #[test]
    fn arbitrary_specs_never_panic_and_refusals_say_why(text in any_database_document()) {
        match load_database(&text) {
            Ok(loaded) => prop_assert!(stator_api::validate(&loaded.database).is_valid()),
            Err(e) => {
                prop_assert!(!e.errors.is_empty());
                for error in &e.errors {
                    prop_assert!(!error.message.is_empty());
                }
            }
        }
    }
}
