//! `stator lint` on the guide's own manifests (tests/fixtures/guide): it must find what is
//! wrong with them, at the right file and line, and fail.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

fn guide() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/guide")
}

/// Runs `stator lint -o json` on the guide and returns the exit code and the findings.
fn lint_guide() -> (i32, Vec<Value>) {
    let out = Command::new(env!("CARGO_BIN_EXE_stator"))
        .args(["lint", "-o", "json"])
        .arg(guide())
        .output()
        .expect("stator runs");
    let doc: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let findings = doc["findings"].as_array().expect("findings").clone();
    (out.status.code().expect("exit code"), findings)
}

/// The findings of `rule` in the file ending with `file`, as (line, object) pairs.
fn at(findings: &[Value], rule: &str, file: &str) -> Vec<(u64, String)> {
    findings
        .iter()
        .filter(|f| f["rule"] == rule && f["file"].as_str().is_some_and(|p| p.ends_with(file)))
        .map(|f| {
            (
                f["line"].as_u64().expect("line"),
                f["object"].as_str().expect("object").to_string(),
            )
        })
        .collect()
}

fn obj(line: u64, object: &str) -> (u64, String) {
    (line, object.to_string())
}

#[test]
fn the_guide_fails_lint_with_exit_code_1() {
    let (code, findings) = lint_guide();
    assert_eq!(code, 1);
    assert!(findings.iter().any(|f| f["severity"] == "error"));
    for f in &findings {
        assert!(f["line"].as_u64().is_some_and(|l| l > 0), "{f}");
        assert!(!f["fix"].as_str().unwrap_or("").is_empty(), "{f}");
    }
}

#[test]
fn the_password_on_the_mysql_probe_command_lines_is_found() {
    let (_, findings) = lint_guide();
    assert_eq!(
        at(
            &findings,
            "STATOR-SEC-001",
            "db/mysql/mysql-statefulset.yaml"
        ),
        vec![obj(40, "StatefulSet/mysql"), obj(47, "StatefulSet/mysql")]
    );
    // pg_isready's -p is a port, not a password.
    assert_eq!(
        at(
            &findings,
            "STATOR-SEC-001",
            "db/postgres/pg-statefulset.yaml"
        ),
        vec![]
    );
}

#[test]
fn the_changeme_secrets_are_found_at_their_keys() {
    let (_, findings) = lint_guide();
    assert_eq!(
        at(&findings, "STATOR-SEC-002", "db/mysql/mysql-config.yaml"),
        vec![
            obj(19, "Secret/mysql-secret"),
            obj(20, "Secret/mysql-secret")
        ]
    );
    assert_eq!(
        at(&findings, "STATOR-SEC-002", "db/postgres/pg-config.yaml"),
        vec![obj(18, "Secret/pg-secret")]
    );
}

#[test]
fn the_missing_security_context_is_found_on_each_container() {
    let (_, findings) = lint_guide();
    for rule in [
        "STATOR-CTX-001",
        "STATOR-CTX-002",
        "STATOR-CTX-004",
        "STATOR-CTX-005",
        "STATOR-CTX-006",
    ] {
        assert_eq!(
            at(&findings, rule, "db/mysql/mysql-statefulset.yaml"),
            vec![obj(18, "StatefulSet/mysql")],
            "{rule}"
        );
        assert_eq!(
            at(&findings, rule, "db/postgres/pg-statefulset.yaml"),
            vec![obj(17, "StatefulSet/postgres")],
            "{rule}"
        );
    }
    // The guide does set fsGroup: the EACCES rule stays quiet.
    assert!(findings.iter().all(|f| f["rule"] != "STATOR-CTX-007"));
}

#[test]
fn no_network_policy_is_found_for_either_database() {
    let (_, findings) = lint_guide();
    assert_eq!(
        at(
            &findings,
            "STATOR-NET-001",
            "db/mysql/mysql-statefulset.yaml"
        ),
        vec![obj(5, "StatefulSet/mysql")]
    );
    assert_eq!(
        at(
            &findings,
            "STATOR-NET-001",
            "db/postgres/pg-statefulset.yaml"
        ),
        vec![obj(5, "StatefulSet/postgres")]
    );
}

#[test]
fn the_pdb_that_blocks_every_drain_and_the_missing_one_are_found() {
    let (_, findings) = lint_guide();
    assert_eq!(
        at(&findings, "STATOR-AVL-004", "db/mysql/mysql-pdb.yaml"),
        vec![obj(7, "PodDisruptionBudget/mysql-pdb")]
    );
    // mysql has the guide's PDB; postgres has none.
    assert_eq!(
        at(
            &findings,
            "STATOR-AVL-003",
            "db/mysql/mysql-statefulset.yaml"
        ),
        vec![]
    );
    assert_eq!(
        at(
            &findings,
            "STATOR-AVL-003",
            "db/postgres/pg-statefulset.yaml"
        ),
        vec![obj(5, "StatefulSet/postgres")]
    );
}

#[test]
fn the_snapshot_class_that_deletes_backups_is_found() {
    let (_, findings) = lint_guide();
    assert_eq!(
        at(&findings, "STATOR-STO-006", "db/backup/csi-snapclass.yaml"),
        vec![obj(6, "VolumeSnapshotClass/csi-snapclass")]
    );
}

#[test]
fn the_human_output_names_file_line_rule_and_fix() {
    let out = Command::new(env!("CARGO_BIN_EXE_stator"))
        .arg("lint")
        .arg(guide())
        .output()
        .expect("stator runs");
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    let probe_line = text
        .lines()
        .find(|l| l.contains("mysql-statefulset.yaml:40: error STATOR-SEC-001 StatefulSet/mysql:"))
        .unwrap_or_else(|| panic!("no probe finding in:\n{text}"));
    assert!(probe_line.contains("(fix: "), "{probe_line}");
    let summary = text.lines().last().unwrap_or_default();
    assert!(
        summary.contains("errors") && summary.contains("objects in 10 files"),
        "{summary}"
    );
}

#[test]
fn the_guide_s_servers_serve_without_tls() {
    let (_, findings) = lint_guide();
    assert_eq!(
        at(
            &findings,
            "STATOR-TLS-001",
            "db/postgres/pg-statefulset.yaml"
        ),
        vec![obj(17, "StatefulSet/postgres")]
    );
    assert_eq!(
        at(
            &findings,
            "STATOR-TLS-002",
            "db/mysql/mysql-statefulset.yaml"
        ),
        vec![obj(18, "StatefulSet/mysql")]
    );
}
