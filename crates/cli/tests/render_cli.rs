//! `stator render` as a user runs it: exit codes, files and their modes, the stdout stream, the
//! existing-Secret case, refusing to clobber, and byte-for-byte determinism apart from passwords.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use stator_api::names::secret_keys;

fn stator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stator"))
        .args(args)
        .output()
        .expect("stator runs")
}

fn example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

const ALL_FILES: [&str; 7] = [
    "configmap.yaml",
    "networkpolicy.yaml",
    "pdb.yaml",
    "secret.yaml",
    "serviceaccount.yaml",
    "services.yaml",
    "statefulset.yaml",
];

#[test]
fn render_to_a_directory_writes_one_file_per_kind_and_the_secret_0600() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let out = stator(&[
        "render",
        "-f",
        &example("postgres-3.yaml"),
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(entries(&out_dir), ALL_FILES);
    assert_eq!(mode(&out_dir.join("secret.yaml")), 0o600);
    assert_eq!(mode(&out_dir.join("statefulset.yaml")), 0o644);
    assert_eq!(
        mode(&out_dir),
        0o700,
        "a directory holding secrets is private"
    );
    assert!(
        stderr(&out).contains("secret.yaml holds generated passwords"),
        "{}",
        stderr(&out)
    );
    // Nothing but the target is left in the parent: the staging directory was moved.
    assert_eq!(entries(tmp.path()), ["out"]);
    let statefulset = fs::read_to_string(out_dir.join("statefulset.yaml")).unwrap();
    assert!(statefulset.contains("kind: StatefulSet"));
    assert!(statefulset.contains("namespace: shop"));
}

#[test]
fn an_existing_secret_renders_no_secret_file_and_no_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    // Without TLS: with it, secret.yaml holds the certificate Secret.
    let spec = tmp.path().join("sync.yaml");
    let text = fs::read_to_string(example("postgres-sync.yaml")).unwrap();
    fs::write(&spec, format!("{text}  tls:\n    enabled: false\n")).unwrap();
    let out = stator(&[
        "render",
        "-f",
        spec.to_str().unwrap(),
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let files = entries(&out_dir);
    assert!(!files.contains(&"secret.yaml".to_string()), "{files:?}");
    assert_eq!(files.len(), ALL_FILES.len() - 1);
    assert_eq!(mode(&out_dir), 0o755);
    assert!(!stderr(&out).contains("passwords"), "{}", stderr(&out));
    let statefulset = fs::read_to_string(out_dir.join("statefulset.yaml")).unwrap();
    assert!(statefulset.contains("secretName: ledger-credentials"));
}

fn documents(stream: &str) -> Vec<serde_norway::Value> {
    serde_norway::Deserializer::from_str(stream)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_norway::Value| !v.is_null())
        .collect()
}

#[test]
fn dash_output_writes_one_multi_document_stream_to_stdout() {
    let out = stator(&["render", "-f", &example("mysql.yaml"), "-o", "-"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stream = String::from_utf8(out.stdout.clone()).unwrap();
    let kinds: Vec<String> = documents(&stream)
        .iter()
        .map(|d| d["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Secret",
            "Secret",
            "ConfigMap",
            "Service",
            "Service",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "StatefulSet"
        ]
    );
    assert!(stderr(&out).contains("generated passwords"));
    assert!(stderr(&out).contains("certificate keys"));
}

#[test]
fn an_invalid_spec_exits_2_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("bad.yaml");
    fs::write(
        &spec,
        "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: bad\nspec:\n  engine: postgres\n  storage:\n    size: 10Q\n",
    )
    .unwrap();
    let out_dir = tmp.path().join("out");
    let out = stator(&[
        "render",
        "-f",
        spec.to_str().unwrap(),
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("spec.storage.size"),
        "{}",
        stderr(&out)
    );
    assert_eq!(entries(tmp.path()), ["bad.yaml"], "nothing was created");
    assert!(out.stdout.is_empty());

    let to_stdout = stator(&["render", "-f", spec.to_str().unwrap(), "-o", "-"]);
    assert_eq!(to_stdout.status.code(), Some(2));
    assert!(to_stdout.stdout.is_empty(), "no partial stream");
}

#[test]
fn a_missing_spec_file_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let out = stator(&[
        "render",
        "-f",
        tmp.path().join("absent.yaml").to_str().unwrap(),
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("absent.yaml"), "{}", stderr(&out));
    assert!(!out_dir.exists());
}

#[test]
fn a_latest_stator_image_exits_2_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    let out = stator(&[
        "render",
        "-f",
        &example("postgres-1.yaml"),
        "-o",
        out_dir.to_str().unwrap(),
        "--stator-image",
        "ghcr.io/stator-dev/stator:latest",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--stator-image"), "{}", stderr(&out));
    assert!(!out_dir.exists());
}

#[test]
fn a_directory_with_foreign_files_is_refused_and_left_untouched() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    fs::write(out_dir.join("notes.txt"), "mine").unwrap();
    fs::write(out_dir.join("statefulset.yaml"), "hand written\n").unwrap();
    let out = stator(&[
        "render",
        "-f",
        &example("postgres-1.yaml"),
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("notes.txt") && err.contains("statefulset.yaml"),
        "{err}"
    );
    assert_eq!(entries(&out_dir), ["notes.txt", "statefulset.yaml"]);
    assert_eq!(
        fs::read_to_string(out_dir.join("statefulset.yaml")).unwrap(),
        "hand written\n"
    );
    assert_eq!(entries(tmp.path()), ["out"], "no staging directory left");
}

#[test]
fn an_output_path_that_is_a_file_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("out");
    fs::write(&file, "x").unwrap();
    let out = stator(&[
        "render",
        "-f",
        &example("postgres-1.yaml"),
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(fs::read_to_string(&file).unwrap(), "x");
}

#[test]
fn an_earlier_render_is_replaced_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir: PathBuf = tmp.path().join("out");
    let dir = out_dir.to_str().unwrap();
    let first = stator(&["render", "-f", &example("postgres-3.yaml"), "-o", dir]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(out_dir.join("secret.yaml").exists());
    // The next render names an existing Secret and has no TLS: the old secret.yaml must not
    // survive.
    let specs = tempfile::tempdir().unwrap();
    let spec = specs.path().join("sync.yaml");
    let text = fs::read_to_string(example("postgres-sync.yaml")).unwrap();
    fs::write(&spec, format!("{text}  tls:\n    enabled: false\n")).unwrap();
    let second = stator(&["render", "-f", spec.to_str().unwrap(), "-o", dir]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert!(!out_dir.join("secret.yaml").exists());
    let statefulset = fs::read_to_string(out_dir.join("statefulset.yaml")).unwrap();
    assert!(statefulset.contains("name: ledger-db"));
    assert_eq!(entries(tmp.path()), ["out"]);
}

#[test]
fn a_relative_output_with_a_trailing_slash_is_written_in_the_working_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_stator"))
        .args(["render", "-f", &example("postgres-1.yaml"), "-o", "out/"])
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(entries(tmp.path()), ["out"]);
    assert_eq!(entries(&tmp.path().join("out")), ALL_FILES);
}

#[test]
fn an_empty_existing_directory_is_filled() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    fs::create_dir(&out_dir).unwrap();
    let out = stator(&[
        "render",
        "-f",
        &example("mariadb.yaml"),
        "-o",
        out_dir.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(entries(&out_dir), ALL_FILES);
}

/// The stream with the values of the Secret's keys replaced, and those values.
fn masked(stream: &str) -> (String, Vec<String>) {
    let mut values = Vec::new();
    let lines: Vec<String> = stream
        .lines()
        .map(|line| {
            for key in secret_keys::ALL {
                if let Some(value) = line.strip_prefix(&format!("  {key}: ")) {
                    values.push(value.to_string());
                    return format!("  {key}: <masked>");
                }
            }
            // The certificates of NAME-tls are issued anew too.
            for key in stator_kube::render::TLS_SECRET_KEYS {
                if line.starts_with(&format!("  {key}: ")) {
                    return format!("  {key}: <masked>");
                }
            }
            line.to_string()
        })
        .collect();
    (lines.join("\n"), values)
}

#[test]
fn rendering_twice_gives_the_same_bytes_apart_from_passwords() {
    for name in ["postgres-3.yaml", "mysql.yaml", "mariadb.yaml"] {
        let a = stator(&["render", "-f", &example(name), "-o", "-"]);
        let b = stator(&["render", "-f", &example(name), "-o", "-"]);
        assert!(a.status.success() && b.status.success());
        let (a_text, a_values) = masked(&String::from_utf8(a.stdout).unwrap());
        let (b_text, b_values) = masked(&String::from_utf8(b.stdout).unwrap());
        assert_eq!(a_text, b_text, "{name}");
        assert_eq!(a_values.len(), secret_keys::ALL.len(), "{name}");
        for (x, y) in a_values.iter().zip(&b_values) {
            assert_ne!(x, y, "{name}: passwords are generated anew");
        }
    }
}

#[test]
fn rendered_directories_are_identical_apart_from_the_secret() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    for dir in [&a, &b] {
        let out = stator(&[
            "render",
            "-f",
            &example("postgres-3.yaml"),
            "-o",
            dir.to_str().unwrap(),
        ]);
        assert!(out.status.success());
    }
    for file in ALL_FILES.iter().filter(|f| **f != "secret.yaml") {
        assert_eq!(
            fs::read(a.join(file)).unwrap(),
            fs::read(b.join(file)).unwrap(),
            "{file}"
        );
    }
    assert_ne!(
        fs::read(a.join("secret.yaml")).unwrap(),
        fs::read(b.join("secret.yaml")).unwrap()
    );
}

#[test]
fn render_help_explains_with_an_example() {
    let out = stator(&["render", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("Examples:"), "{help}");
    assert!(help.contains("stator render -f"), "{help}");
    assert!(help.contains("--stator-image"), "{help}");
}

/// The hidden operator-mode flags (what scripts/check-render.sh validates): every object owned
/// by the Database, the pods running a managed instance manager; an empty uid exits 2.
#[test]
fn operator_mode_renders_owned_objects_and_managed_pods() {
    let uid = "0b5e1a7c-4f7d-4c1e-9a57-5a1f2d3c4b5e";
    let out = stator(&[
        "render",
        "-f",
        &example("postgres-3.yaml"),
        "-o",
        "-",
        "--operator-owner-uid",
        uid,
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stream = String::from_utf8(out.stdout.clone()).unwrap();
    for doc in documents(&stream) {
        let owner = &doc["metadata"]["ownerReferences"][0];
        assert_eq!(owner["kind"].as_str(), Some("Database"), "{doc:?}");
        assert_eq!(owner["uid"].as_str(), Some(uid), "{doc:?}");
    }
    assert!(stream.contains("- --managed\n"));

    let out = stator(&[
        "render",
        "-f",
        &example("postgres-3.yaml"),
        "-o",
        "-",
        "--operator-owner-uid",
        "",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("metadata.uid"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

/// The backup CronJob's command (`stator backup request`, as cronjob.yaml runs it) reads the
/// token and the CA from files, naming the option whose file is missing (exit 2), before it
/// asks anything of the network.
#[test]
fn the_backup_jobs_command_names_a_missing_token_or_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("out");
    let spec = example("postgres-backup-s3.yaml");
    let out = stator(&["render", "-f", &spec, "-o", out_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cron = fs::read_to_string(out_dir.join("cronjob.yaml")).unwrap();
    assert!(cron.contains("- request\n"), "{cron}");
    let token = dir.path().join("api-token");
    let missing = dir.path().join("none").join("ca.crt");
    let run = |token: &Path| {
        stator(&[
            "backup",
            "request",
            "--database",
            &spec,
            "--token-file",
            token.to_str().unwrap(),
            "--ca-file",
            missing.to_str().unwrap(),
        ])
    };
    let out = run(&token);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--token-file"), "{}", stderr(&out));
    fs::write(&token, "t0ken\n").unwrap();
    let out = run(&token);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--ca-file"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("t0ken"), "{}", stderr(&out));
}
