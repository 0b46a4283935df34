//! Reading a `Database` from YAML text: exactly one document, the right `apiVersion` and `kind`,
//! no unknown fields (each one reported with its path), then [`crate::validate`].

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_norway::Value;

use crate::spec::Database;
use crate::validate::{FieldError, Report, validate};

pub const API_VERSION: &str = "stator.dev/v1alpha1";
pub const KIND: &str = "Database";

/// A spec that could not be used: every problem found, and warnings for a spec that could.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_problems(&self.errors))]
pub struct InvalidSpec {
    pub errors: Vec<FieldError>,
}

fn render_problems(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

/// A valid database and the warnings its validation raised.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub database: Database,
    pub warnings: Vec<FieldError>,
}

/// Parses and validates one `Database` from YAML `text`.
pub fn load_database(text: &str) -> Result<Loaded, InvalidSpec> {
    let value = single_document(text)?;
    let database = parse_value(value)?;
    let Report { errors, warnings } = validate(&database);
    if errors.is_empty() {
        Ok(Loaded { database, warnings })
    } else {
        Err(InvalidSpec { errors })
    }
}

fn invalid(path: &str, message: impl Into<String>) -> InvalidSpec {
    InvalidSpec {
        errors: vec![FieldError::new(path, message)],
    }
}

fn single_document(text: &str) -> Result<Value, InvalidSpec> {
    let mut documents = Vec::new();
    for document in serde_norway::Deserializer::from_str(text) {
        let value = Value::deserialize(document)
            .map_err(|e| invalid("", format!("not valid YAML: {e}")))?;
        if !value.is_null() {
            documents.push(value);
        }
    }
    match documents.len() {
        1 => Ok(documents.remove(0)),
        0 => Err(invalid(
            "",
            "holds no document; expected one Database (apiVersion: stator.dev/v1alpha1, kind: Database)",
        )),
        n => Err(invalid(
            "",
            format!("holds {n} documents; expected exactly one Database"),
        )),
    }
}

const TOP_LEVEL: [&str; 5] = ["apiVersion", "kind", "metadata", "spec", "status"];
/// `ObjectMeta` fields: a spec copied from `kubectl get -o yaml` carries the server-set ones too.
const METADATA: [&str; 13] = [
    "name",
    "namespace",
    "labels",
    "annotations",
    "generateName",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "finalizers",
    "ownerReferences",
    "managedFields",
];

fn parse_value(value: Value) -> Result<Database, InvalidSpec> {
    let mut errors = check_envelope(&value)?;
    if !errors.is_empty() {
        return Err(InvalidSpec { errors });
    }
    let mut unknown: BTreeSet<String> = BTreeSet::new();
    let mut record = |path: serde_ignored::Path<'_>| {
        let path = path.to_string();
        // The envelope was checked above; kube's derive skips these two keys.
        if path != "apiVersion" && path != "kind" {
            unknown.insert(path);
        }
    };
    let result: Result<Database, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut record));
    let database = match result {
        Ok(db) => Some(db),
        Err(e) => {
            errors.push(FieldError::new(
                display_path(&e.path().to_string()),
                clean_message(&e.inner().to_string()),
            ));
            None
        }
    };
    for path in unknown {
        errors.push(FieldError::new(
            display_path(&path),
            "is not a known field (check its spelling; `stator crd` lists the fields)",
        ));
    }
    match database {
        Some(db) if errors.is_empty() => Ok(db),
        _ => Err(InvalidSpec { errors }),
    }
}

/// apiVersion, kind, the presence of spec, and unknown keys outside `spec`.
fn check_envelope(value: &Value) -> Result<Vec<FieldError>, InvalidSpec> {
    let Value::Mapping(map) = value else {
        return Err(invalid(
            "",
            "must be a mapping with apiVersion, kind, metadata and spec",
        ));
    };
    let mut errors = Vec::new();
    let field = |key: &str| map.get(Value::String(key.to_string()));
    match field("apiVersion").and_then(Value::as_str) {
        Some(API_VERSION) => {}
        Some(other) => errors.push(FieldError::new(
            "apiVersion",
            format!("{other:?} is not supported; use {API_VERSION}"),
        )),
        None => errors.push(FieldError::new(
            "apiVersion",
            format!("is required ({API_VERSION})"),
        )),
    }
    match field("kind").and_then(Value::as_str) {
        Some(KIND) => {}
        Some(other) => errors.push(FieldError::new("kind", format!("{other:?} is not {KIND}"))),
        None => errors.push(FieldError::new("kind", format!("is required ({KIND})"))),
    }
    if field("spec").is_none() {
        errors.push(FieldError::new(
            "spec",
            "is required (at least spec.engine)",
        ));
    }
    unknown_keys(map, "", &TOP_LEVEL, &mut errors);
    if let Some(Value::Mapping(meta)) = field("metadata") {
        unknown_keys(meta, "metadata.", &METADATA, &mut errors);
    }
    Ok(errors)
}

fn unknown_keys(
    map: &serde_norway::Mapping,
    prefix: &str,
    known: &[&str],
    errors: &mut Vec<FieldError>,
) {
    for key in map.keys() {
        let name = match key {
            Value::String(s) => s.clone(),
            other => format!("{other:?}"),
        };
        if !known.contains(&name.as_str()) {
            errors.push(FieldError::new(
                format!("{prefix}{name}"),
                format!(
                    "is not a known field (expected one of: {})",
                    known.join(", ")
                ),
            ));
        }
    }
}

/// `serde_path_to_error` writes `.` for the root and `spec.tolerations[0]`-style paths; the root
/// becomes the empty path.
fn display_path(path: &str) -> String {
    if path == "." {
        String::new()
    } else {
        path.to_string()
    }
}

/// serde's messages name Rust types (`u32`); say what a user writes instead.
fn clean_message(message: &str) -> String {
    message
        .replace("expected u32", "expected a whole number ≥ 0")
        .replace("expected i32", "expected a whole number")
        .replace("expected u16", "expected a port number (0 to 65535)")
        .replace("expected a boolean", "expected true or false")
        .replace(
            "expected a string",
            "expected text (quote numbers, e.g. \"15\")",
        )
}
