//! `stator crd`: prints the CRD, and the committed `deploy/crd.yaml` is exactly that output.

use std::path::Path;
use std::process::Command;

#[test]
fn crd_output_is_the_committed_deploy_crd_yaml() {
    let out = Command::new(env!("CARGO_BIN_EXE_stator"))
        .arg("crd")
        .output()
        .unwrap();
    assert!(out.status.success());
    let printed = String::from_utf8(out.stdout).unwrap();
    let committed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/crd.yaml"),
    )
    .unwrap();
    assert!(
        printed == committed,
        "deploy/crd.yaml is stale: run `cargo run -p stator -- crd > deploy/crd.yaml` and commit it"
    );
    assert!(printed.contains("kind: CustomResourceDefinition"));
    assert!(printed.contains("name: databases.stator.dev"));
}
