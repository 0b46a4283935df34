//! Reading a `Database` from YAML text: exactly one document, the right `apiVersion` and `kind`,
//! no unknown fields (each one reported with its path), then [`crate::validate`].

use std::collections::BTreeSet;

use serde::Deserialize;
use serde_norway::Value;
use serde_path_to_error::Segment;

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

/// How many structural problems one pass reports at most (each costs one more deserialization).
const MAX_STRUCTURAL_PROBLEMS: usize = 64;

/// Fields a type error may leave missing, and a stand-in that lets the semantic checks run on
/// the rest; problems under a stand-in's path (or the engine's, for an unknown engine) are not
/// reported twice.
const STAND_INS: [(&str, &str); 9] = [
    ("engine", "postgres"),
    ("cpu", "1"),
    ("memory", "1Gi"),
    // spec.backup: the repository's and the encryption's required fields.
    ("path", "/"),
    ("endpoint", "stand-in:443"),
    ("bucket", "stand-in"),
    ("region", "stand-in"),
    ("credentialsSecretName", "stand-in"),
    ("secretName", "stand-in"),
];

/// Paths whose checks depend on the engine: meaningless when the engine itself was wrong.
const ENGINE_DEPENDENT: [&str; 3] = ["spec.version", "spec.config.parameters", "spec.image"];

/// Deserializes `value` into a `Database`, collecting every unknown field and every type error
/// in one pass: serde stops at the first error, so each erroneous node is reported, cut out of
/// the document (its default applies, or a stand-in when it is required) and the rest read
/// again. Semantic validation then runs on what is left, so a spec with an unknown field, a wrong
/// type and a bad quantity is told about all three at once.
fn parse_value(value: Value) -> Result<Database, InvalidSpec> {
    let Structural {
        database,
        mut errors,
        stood_in,
    } = structural(value)?;
    let Some(database) = database else {
        return Err(InvalidSpec { errors });
    };
    if errors.is_empty() {
        return Ok(database);
    }
    // The spec is invalid already; add what the semantic checks find in the rest.
    let engine_stood_in = stood_in.iter().any(|p| p == "spec.engine");
    let Report {
        errors: semantic, ..
    } = validate(&database);
    let guessed = |path: &str| {
        stood_in.iter().any(|p| path.starts_with(p.as_str()))
            || (engine_stood_in && ENGINE_DEPENDENT.iter().any(|p| path.starts_with(p)))
    };
    errors.extend(semantic.into_iter().filter(|f| !guessed(&f.path)));
    Err(InvalidSpec { errors })
}

/// What of an invalid spec could still be read, for the checks that need a `Database` (the
/// parameters against the server binary): `None` when not even that, or when its engine is
/// unknown.
pub fn readable_database(text: &str) -> Option<Database> {
    let structural = structural(single_document(text).ok()?).ok()?;
    if structural.stood_in.iter().any(|p| p == "spec.engine") {
        return None;
    }
    structural.database
}

/// The structural pass: the database that could be read (bad nodes cut, stand-ins for required
/// ones), every structural problem, and the paths that got a stand-in.
struct Structural {
    database: Option<Database>,
    errors: Vec<FieldError>,
    stood_in: Vec<String>,
}

fn structural(mut value: Value) -> Result<Structural, InvalidSpec> {
    let mut errors = check_envelope(&value)?;
    let mut unknown: BTreeSet<String> = BTreeSet::new();
    let mut stood_in: Vec<String> = Vec::new();
    let mut database = None;
    for _ in 0..MAX_STRUCTURAL_PROBLEMS {
        let mut record = |path: serde_ignored::Path<'_>| {
            let path = path.to_string();
            // The envelope was checked above; kube's derive skips these two keys.
            if path != "apiVersion" && path != "kind" {
                unknown.insert(path);
            }
        };
        let result: Result<Database, _> = serde_path_to_error::deserialize(
            serde_ignored::Deserializer::new(value.clone(), &mut record),
        );
        let e = match result {
            Ok(db) => {
                database = Some(db);
                break;
            }
            Err(e) => e,
        };
        let path = display_path(&e.path().to_string());
        let message = e.inner().to_string();
        let mut segments: Vec<Segment> = e.path().iter().cloned().collect();
        if let Some(field) = missing_field(&message) {
            let full = join_path(&path, field);
            let stand_in = STAND_INS.iter().find(|(name, _)| *name == field);
            let cut_by_us = errors.iter().any(|f| f.path == full);
            if !cut_by_us {
                errors.push(FieldError::new(path.clone(), clean_message(&message)));
            }
            match stand_in {
                Some((name, text)) if insert_at(&mut value, &segments, name, text) => {
                    stood_in.push(full);
                    continue;
                }
                _ => break,
            }
        }
        errors.push(FieldError::new(path, clean_message(&message)));
        // An unknown enum variant or a wrong type at a leaf: cut the leaf. A path that cannot
        // be followed (serde lost track of it) ends the structural pass.
        if segments.is_empty() || !remove_at(&mut value, &mut segments) {
            break;
        }
    }
    for path in unknown {
        let path = display_path(&without_option_segments(&path));
        // The envelope's own check named unknown metadata keys already.
        if errors.iter().any(|f| f.path == path) {
            continue;
        }
        errors.push(FieldError::new(
            path,
            "is not a known field (check its spelling; `stator crd` lists the fields)",
        ));
    }
    Ok(Structural {
        database,
        errors,
        stood_in,
    })
}

/// The field of a serde "missing field `x`" message.
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
}

fn join_path(parent: &str, field: &str) -> String {
    if parent.is_empty() {
        field.to_string()
    } else {
        format!("{parent}.{field}")
    }
}

/// The node at `segments` (a mapping key or a sequence index at each step).
fn node_at<'v>(value: &'v mut Value, segments: &[Segment]) -> Option<&'v mut Value> {
    let mut node = value;
    for segment in segments {
        node = match (segment, node) {
            (Segment::Map { key }, Value::Mapping(map)) => map.get_mut(key.as_str())?,
            (Segment::Seq { index }, Value::Sequence(seq)) => seq.get_mut(*index)?,
            (Segment::Enum { .. }, node) => node,
            _ => return None,
        };
    }
    Some(node)
}

/// Removes the node at `segments`; false when there is none.
fn remove_at(value: &mut Value, segments: &mut Vec<Segment>) -> bool {
    while matches!(segments.last(), Some(Segment::Enum { .. })) {
        segments.pop();
    }
    let Some(last) = segments.pop() else {
        return false;
    };
    match (last, node_at(value, segments)) {
        (Segment::Map { key }, Some(Value::Mapping(map))) => map.remove(key.as_str()).is_some(),
        (Segment::Seq { index }, Some(Value::Sequence(seq))) if index < seq.len() => {
            seq.remove(index);
            true
        }
        _ => false,
    }
}

/// Sets `name: text` in the mapping at `segments`; false when there is none.
fn insert_at(value: &mut Value, segments: &[Segment], name: &str, text: &str) -> bool {
    match node_at(value, segments) {
        Some(Value::Mapping(map)) if !map.contains_key(name) => {
            map.insert(Value::String(name.into()), Value::String(text.into()));
            true
        }
        _ => false,
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

/// `serde_ignored` writes `?` for the inside of an `Option` (`spec.backup.?.retension`); a
/// user's path has no such step.
fn without_option_segments(path: &str) -> String {
    path.split('.')
        .filter(|segment| *segment != "?")
        .collect::<Vec<_>>()
        .join(".")
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
