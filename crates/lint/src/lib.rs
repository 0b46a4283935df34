//! `stator lint`'s rules: checks any Kubernetes manifests of a database — Stator's own render
//! or hand-written ones — against the guide's operations checklist and failure table and what
//! issue 3 requires of a hardened database. Every finding names a rule, a severity, a file and
//! the line of the offending key, the object (`StatefulSet/mysql`), and a one-line fix.
//!
//! This crate reads files and nothing else: no cluster, no network, no processes. It decides
//! nothing about exit codes or output format; that is the command line's business.
//!
//! Findings about one object can be silenced with the annotation
//! `lint.stator.dev/ignore: "STATOR-AVL-004, STATOR-CTX-006"` on that object.
//!
//! # Layout
//! - [`node`]: a YAML tree with line numbers, parsed with `saphyr`.
//! - [`source`]: reading files and directories; parse errors with file and line.
//! - [`object`]: Kubernetes objects, workloads and their pod templates, selectors, database detection.
//! - [`finding`]: [`Rule`], [`Severity`], [`Finding`].
//! - [`rules`]: the rules, one module per area (`SEC`, `CTX`, `RES`, `PRB`, `STO`, `AVL`, `NET`, `IMG`).

pub mod finding;
pub mod node;
pub mod object;
pub mod rules;
pub mod source;

use std::path::PathBuf;

pub use finding::{Finding, Rule, Severity};
pub use object::Manifests;
pub use rules::rules;
pub use source::{LoadError, Source, parse_sources, read_paths};

/// The annotation that silences rules for one object: a comma- or space-separated list of ids.
pub const IGNORE_ANNOTATION: &str = "lint.stator.dev/ignore";

/// Lints files and directories: reads them, parses every document, runs every rule.
/// Findings are sorted by file, line and rule.
pub fn lint_paths(paths: &[PathBuf]) -> Result<Vec<Finding>, Vec<LoadError>> {
    let sources = read_paths(paths)?;
    lint_sources(&sources)
}

/// Lints manifests already in memory (e.g. read from stdin).
pub fn lint_sources(sources: &[Source]) -> Result<Vec<Finding>, Vec<LoadError>> {
    let manifests = parse_sources(sources)?;
    Ok(lint_manifests(&manifests))
}

/// Runs every rule over parsed manifests, drops findings their object's
/// [`IGNORE_ANNOTATION`] silences, and sorts the rest.
pub fn lint_manifests(manifests: &Manifests) -> Vec<Finding> {
    let mut findings = rules::check_all(manifests);
    let silenced = silenced_rules(manifests);
    if !silenced.is_empty() {
        findings.retain(|f| {
            !silenced.iter().any(|(file, object, ids)| {
                *file == f.file
                    && *object == f.object
                    && ids
                        .iter()
                        .any(|id| id.eq_ignore_ascii_case(f.rule) || *id == f.name)
            })
        });
    }
    findings.sort_by(|a, b| {
        (&a.file, a.line, a.rule, &a.object, &a.message)
            .cmp(&(&b.file, b.line, b.rule, &b.object, &b.message))
    });
    findings.dedup();
    findings
}

/// (file, `Kind/name`, rule ids) for every object carrying [`IGNORE_ANNOTATION`].
fn silenced_rules(manifests: &Manifests) -> Vec<(&std::path::Path, String, Vec<&str>)> {
    manifests
        .objects
        .iter()
        .filter_map(|o| {
            let list = o
                .node
                .path(&["metadata", "annotations", IGNORE_ANNOTATION])
                .and_then(node::Node::as_str)?;
            let ids = list
                .split([',', ' '])
                .map(str::trim)
                .filter(|id| !id.is_empty())
                .collect();
            Some((o.file.as_path(), o.display(), ids))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ignore_annotation_silences_only_the_listed_rules_of_its_object() {
        let text = "kind: Secret\nmetadata:\n  name: s\n  annotations:\n    lint.stator.dev/ignore: STATOR-SEC-002\nstringData:\n  password: changeme\n---\nkind: Secret\nmetadata: {name: t}\nstringData:\n  password: changeme\n";
        let findings = lint_sources(&[Source {
            file: "x.yaml".into(),
            text: text.into(),
        }])
        .unwrap();
        assert_eq!(findings.len(), 1);
        assert_eq!(findings[0].object, "Secret/t");
    }
}
