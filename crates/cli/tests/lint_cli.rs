//! `stator lint`'s command line: exit codes, input forms, JSON, rule listing.

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn stator(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stator"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("stator starts");
    let written = child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes());
    // A refused command line (exit 2) ends before stdin is read: the pipe is closed then, and
    // the exit code and output are what the test holds it to.
    if let Err(e) = written {
        assert_eq!(
            e.kind(),
            std::io::ErrorKind::BrokenPipe,
            "stdin written: {e}"
        );
    }
    child.wait_with_output().expect("stator finishes")
}

const WEAK_SECRET: &str =
    "apiVersion: v1\nkind: Secret\nmetadata: {name: s}\nstringData:\n  password: changeme\n";

#[test]
fn a_missing_path_exits_2_naming_it() {
    let out = stator(&["lint", "/nonexistent/manifests"], "");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/manifests: cannot read"), "{err}");
}

#[test]
fn invalid_yaml_exits_2_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, "kind: Secret\nmetadata:\n  name: [oops\n").unwrap();
    let out = stator(&["lint", file.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.yaml:"), "{err}");
    assert!(err.contains("not valid YAML"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn stdin_is_read_with_a_dash_and_errors_exit_1() {
    let out = stator(&["lint", "-"], WEAK_SECRET);
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("<stdin>:5: error STATOR-SEC-002 Secret/s:"),
        "{text}"
    );
}

#[test]
fn warnings_alone_exit_0() {
    let class = "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: fast}\nprovisioner: x\n";
    let out = stator(&["lint", "-"], class);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("STATOR-STO-002"));
}

#[test]
fn ignored_rules_do_not_count() {
    let out = stator(&["lint", "--ignore", "weak-secret-value", "-"], WEAK_SECRET);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("no findings"));
    let out = stator(&["lint", "--ignore", "STATOR-NOPE-001", "-"], WEAK_SECRET);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn json_output_has_findings_and_a_summary() {
    let out = stator(&["lint", "-o", "json", "-"], WEAK_SECRET);
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(doc["summary"]["errors"], 1);
    let finding = &doc["findings"][0];
    assert_eq!(finding["rule"], "STATOR-SEC-002");
    assert_eq!(finding["severity"], "error");
    assert_eq!(finding["file"], "<stdin>");
    assert_eq!(finding["line"], 5);
    assert_eq!(finding["object"], "Secret/s");
    assert!(finding["fix"].as_str().is_some_and(|f| !f.is_empty()));
}

#[test]
fn list_rules_describes_every_rule() {
    let out = stator(&["lint", "--list-rules", "-o", "json"], "");
    assert_eq!(out.status.code(), Some(0));
    let rules: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(rules.len() >= 25);
    assert!(
        rules
            .iter()
            .any(|r| r["id"] == "STATOR-SEC-001" && r["severity"] == "error")
    );
    let human = stator(&["lint", "--list-rules"], "");
    assert!(String::from_utf8_lossy(&human.stdout).contains("fix: "));
}

#[test]
fn help_explains_with_an_example() {
    let out = stator(&["lint", "--help"], "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Examples:") && text.contains("stator lint out/"),
        "{text}"
    );
}
