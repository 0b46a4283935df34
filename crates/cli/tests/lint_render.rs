//! `stator lint` finds nothing in what `stator render` writes, for every example spec: the
//! render is the hardened setup the rules describe.

use std::path::{Path, PathBuf};
use std::process::Command;

fn examples() -> Vec<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut specs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    specs.sort();
    assert!(!specs.is_empty(), "no specs in {}", dir.display());
    specs
}

/// Lints `path` with `-o json`; panics with the findings unless there are none and exit is 0.
fn assert_lints_clean(path: &Path, what: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_stator"))
        .args(["lint", "-o", "json"])
        .arg(path)
        .output()
        .expect("stator lint runs");
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{what}: no JSON ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert_eq!(
        doc["findings"],
        serde_json::json!([]),
        "{what}: lint findings on the render"
    );
    assert!(
        doc["summary"]["objects"].as_u64().is_some_and(|n| n >= 5),
        "{what}: too few objects linted: {doc}"
    );
    assert_eq!(out.status.code(), Some(0), "{what}");
}

#[test]
fn every_example_renders_to_a_stream_lint_finds_nothing_in() {
    let dir = tempfile::tempdir().unwrap();
    for spec in examples() {
        let render = Command::new(env!("CARGO_BIN_EXE_stator"))
            .args(["render", "-o", "-", "-f"])
            .arg(&spec)
            .output()
            .expect("stator render runs");
        assert_eq!(
            render.status.code(),
            Some(0),
            "{}: {}",
            spec.display(),
            String::from_utf8_lossy(&render.stderr)
        );
        let stream = dir.path().join(spec.file_name().expect("spec file name"));
        std::fs::write(&stream, &render.stdout).unwrap();
        assert_lints_clean(&stream, &spec.display().to_string());
    }
}

#[test]
fn every_example_renders_to_a_directory_lint_finds_nothing_in() {
    let dir = tempfile::tempdir().unwrap();
    for spec in examples() {
        let out = dir.path().join(spec.file_stem().expect("spec file name"));
        let render = Command::new(env!("CARGO_BIN_EXE_stator"))
            .args(["render", "-f"])
            .arg(&spec)
            .arg("-o")
            .arg(&out)
            .output()
            .expect("stator render runs");
        assert_eq!(
            render.status.code(),
            Some(0),
            "{}: {}",
            spec.display(),
            String::from_utf8_lossy(&render.stderr)
        );
        assert_lints_clean(&out, &spec.display().to_string());
    }
}
