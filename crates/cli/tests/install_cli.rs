//! `stator install`: the install as one YAML stream on stdout, `-o DIR` writes exactly the committed `deploy/`,
//! and a bad `--namespace` or `--image` is refused with exit 2.

use std::path::Path;
use std::process::Command;

fn stator() -> Command {
    Command::new(env!("CARGO_BIN_EXE_stator"))
}

fn deploy_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// The objects and their order are the library's (crates/kube/src/install/tests.rs pins them).
#[test]
fn install_prints_the_install_as_one_stream() {
    let out = stator().arg("install").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = stator_kube::install::install(&Default::default())
        .unwrap()
        .to_yaml_stream()
        .unwrap();
    assert!(String::from_utf8(out.stdout).unwrap() == expected);
}

#[test]
fn install_into_a_directory_writes_the_committed_deploy() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("deploy");
    let out = stator()
        .args(["install", "-o"])
        .arg(&target)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut written: Vec<String> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    written.sort();
    assert_eq!(
        written,
        [
            "crd.yaml",
            "kustomization.yaml",
            "namespace.yaml",
            "operator.yaml",
            "rbac.yaml"
        ]
    );
    for name in written {
        let committed = std::fs::read_to_string(deploy_dir().join(&name)).unwrap();
        let generated = std::fs::read_to_string(target.join(&name)).unwrap();
        assert!(
            committed == generated,
            "deploy/{name} is stale: run `cargo run -p stator -- install -o deploy/` and commit it"
        );
    }
}

#[test]
fn install_names_the_namespace_and_image_it_is_given() {
    let out = stator()
        .args([
            "install",
            "--namespace",
            "ops",
            "--image",
            "registry.example/stator:1.2.3",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stream = String::from_utf8(out.stdout).unwrap();
    assert!(!stream.contains("stator-system"));
    assert!(stream.contains("namespace: ops\n"));
    assert!(stream.contains("image: registry.example/stator:1.2.3\n"));
    // The operator gives the database pods' init container the same image.
    assert!(
        stream
            .contains("args:\n        - --stator-image\n        - registry.example/stator:1.2.3\n"),
        "{stream}"
    );
}

#[test]
fn install_refuses_a_bad_namespace_or_image_with_exit_2() {
    for args in [
        ["--namespace", "Not_A_Label"],
        ["--image", "registry.example/stator:latest"],
    ] {
        let out = stator().arg("install").args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(out.stdout.is_empty(), "{args:?} printed objects");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(args[0]), "{args:?}: {stderr}");
    }
}
