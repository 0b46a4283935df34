//! Invalid specs, one per row: `stator render` and `stator validate` exit 2, name the field path
//! in the message, and write nothing.

use std::path::Path;
use std::process::Command;

const STATOR: &str = env!("CARGO_BIN_EXE_stator");

/// A document with the usual envelope around `spec` (indented lines under `spec:`).
fn with_spec(spec: &str) -> String {
    let body: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: shop\nspec:\n{body}"
    )
}

/// (row name, file content, the path the message must name, a word the message must contain)
fn rows() -> Vec<(&'static str, String, &'static str, &'static str)> {
    let long_name = "a".repeat(53);
    vec![
        ("unknown engine", with_spec("engine: oracle"), "spec.engine", "unknown variant"),
        ("engine missing", with_spec("instances: 1"), "spec", "engine"),
        ("zero instances", with_spec("engine: postgres\ninstances: 0"), "spec.instances", "1 to 16"),
        ("too many instances", with_spec("engine: postgres\ninstances: 17"), "spec.instances", "1 to 16"),
        ("negative instances", with_spec("engine: postgres\ninstances: -1"), "spec.instances", "whole number"),
        ("instances not a number", with_spec("engine: postgres\ninstances: three"), "spec.instances", "whole number"),
        ("storage size not a quantity", with_spec("engine: postgres\nstorage: {size: 10Q}"), "spec.storage.size", "not a quantity"),
        ("storage size zero", with_spec("engine: postgres\nstorage: {size: \"0\"}"), "spec.storage.size", "greater than zero"),
        ("storage class not a DNS name", with_spec("engine: postgres\nstorage: {size: 1Gi, storageClassName: Fast_SSD}"), "spec.storage.storageClassName", "only lowercase"),
        ("cpu request above limit", with_spec("engine: postgres\nresources:\n  requests: {cpu: \"2\", memory: 512Mi}\n  limits: {cpu: \"1\", memory: 1Gi}"), "spec.resources.requests.cpu", "exceed its limit"),
        ("memory limit too small", with_spec("engine: postgres\nresources:\n  requests: {cpu: 100m, memory: 64Mi}\n  limits: {cpu: \"1\", memory: 64Mi}"), "spec.resources.limits.memory", "at least 256Mi"),
        ("memory not a quantity", with_spec("engine: postgres\nresources:\n  requests: {cpu: 100m, memory: lots}"), "spec.resources.requests.memory", "not a quantity"),
        ("managed postgres parameter", with_spec("engine: postgres\nconfig: {parameters: {port: 5433}}"), "spec.config.parameters.port", "managed by Stator"),
        ("managed mysql parameter with dashes", with_spec("engine: mysql\nconfig: {parameters: {server-id: 7}}"), "spec.config.parameters.server-id", "managed by Stator"),
        ("include file", with_spec("engine: postgres\nconfig: {parameters: {include_if_exists: /etc/x.conf}}"), "spec.config.parameters.include_if_exists", "managed by Stator"),
        ("no WAL senders", with_spec("engine: postgres\ninstances: 2\nconfig: {parameters: {max_wal_senders: 0}}"), "spec.config.parameters.max_wal_senders", "at least 3"),
        ("statement logging", with_spec("engine: postgres\nconfig: {parameters: {log_statement: all}}"), "spec.config.parameters.log_statement", "only none"),
        ("slow statement logging", with_spec("engine: postgres\nconfig: {parameters: {log_min_duration_statement: 0}}"), "spec.config.parameters.log_min_duration_statement", "literals"),
        ("mariadb general log", with_spec("engine: mariadb\nconfig: {parameters: {general-log: \"ON\"}}"), "spec.config.parameters.general-log", "statement text"),
        ("parameter value with a newline", with_spec("engine: postgres\nconfig: {parameters: {work_mem: \"4MB\\nport = 1\"}}"), "spec.config.parameters.work_mem", "one line"),
        ("parameter value is a list", with_spec("engine: postgres\nconfig: {parameters: {work_mem: [1, 2]}}"), "spec.config.parameters.work_mem", "scalar"),
        ("reserved owner", with_spec("engine: postgres\nbootstrap: {owner: postgres}"), "spec.bootstrap.owner", "reserved"),
        ("database name with a dash", with_spec("engine: postgres\nbootstrap: {database: my-db}"), "spec.bootstrap.database", "only lowercase"),
        ("secret name invalid", with_spec("engine: postgres\nbootstrap: {secretName: Bad_Secret}"), "spec.bootstrap.secretName", "only lowercase"),
        ("synchronous with one instance", with_spec("engine: postgres\nreplication: {synchronous: true}"), "spec.replication.synchronous", "at least 2"),
        ("detection timeout without unit", with_spec("engine: postgres\nfailover: {detectionTimeout: \"2\"}"), "spec.failover.detectionTimeout", "not a duration"),
        ("detection timeout too long", with_spec("engine: postgres\nfailover: {detectionTimeout: 10m}"), "spec.failover.detectionTimeout", "1s to 5m"),
        ("budget that blocks drains", with_spec("engine: postgres\ndisruption: {maxUnavailable: 0}"), "spec.disruption.maxUnavailable", "blocks every drain"),
        ("minAvailable equal to instances", with_spec("engine: postgres\ninstances: 3\ndisruption: {minAvailable: 3}"), "spec.disruption.minAvailable", "blocks every drain"),
        ("both budget fields", with_spec("engine: postgres\ninstances: 3\ndisruption: {minAvailable: 1, maxUnavailable: 1}"), "spec.disruption", "not both"),
        ("unknown anti-affinity", with_spec("engine: postgres\nscheduling: {antiAffinity: always}"), "spec.scheduling.antiAffinity", "unknown variant"),
        ("topology skew zero", with_spec("engine: postgres\nscheduling:\n  topologySpread: [{topologyKey: topology.kubernetes.io/zone, maxSkew: 0}]"), "spec.scheduling.topologySpread[0].maxSkew", "1 or more"),
        ("node selector key invalid", with_spec("engine: postgres\nscheduling: {nodeSelector: {\"-bad\": x}}"), "spec.scheduling.nodeSelector.-bad", "label key"),
        ("empty network peer", with_spec("engine: postgres\nnetwork: {allowFrom: [{}]}"), "spec.network.allowFrom[0]", "names no peer"),
        ("CIDR out of range", with_spec("engine: postgres\nnetwork: {allowFrom: [{ipBlock: {cidr: 10.0.0.0/40}}]}"), "spec.network.allowFrom[0].ipBlock.cidr", "not a CIDR"),
        ("listen address not an IP", with_spec("engine: postgres\nlocal: {listenAddress: localhost}"), "spec.local.listenAddress", "not an IP"),
        ("privileged port base", with_spec("engine: postgres\nlocal: {portBase: 80}"), "spec.local.portBase", "out of range"),
        ("unsupported version", with_spec("engine: postgres\nversion: \"9.6\""), "spec.version", "15"),
        ("image with latest tag", with_spec("engine: postgres\nimage: postgres:latest"), "spec.image", "latest"),
        ("image without tag", with_spec("engine: postgres\nimage: registry.local:5000/postgres"), "spec.image", "no tag"),
        ("unknown spec field", with_spec("engine: postgres\nreplicas: 3"), "spec.replicas", "not a known field"),
        ("unknown nested field", with_spec("engine: postgres\nstorage: {sizee: 1Gi}"), "spec.storage.sizee", "not a known field"),
        ("backup schedule minute out of range", with_spec("engine: postgres\nbackup:\n  repository: {local: {path: /srv/b}}\n  schedule: \"61 * * * *\""), "spec.backup.schedule", "minute 61 is out of range (expected 0-59)"),
        ("backup with two repositories", with_spec("engine: postgres\nbackup:\n  repository: {local: {path: /srv/b}, s3: {endpoint: \"h:443\", bucket: bbb, region: r, credentialsSecretName: k}}"), "spec.backup.repository", "give exactly one"),
        ("backup without a repository", with_spec("engine: postgres\nbackup: {schedule: \"0 3 * * *\"}"), "spec.backup.repository", "names no repository"),
        ("backup local path relative", with_spec("engine: postgres\nbackup:\n  repository: {local: {path: backups}}"), "spec.backup.repository.local.path", "not an absolute path"),
        ("backup s3 endpoint without port", with_spec("engine: postgres\nbackup:\n  repository: {s3: {endpoint: s3.example.com, bucket: bbb, region: r, credentialsSecretName: k}}"), "spec.backup.repository.s3.endpoint", "has no port"),
        ("backup bucket uppercase", with_spec("engine: postgres\nbackup:\n  repository: {s3: {endpoint: \"h:443\", bucket: Backups, region: r, credentialsSecretName: k}}"), "spec.backup.repository.s3.bucket", "bucket naming rules"),
        ("backup retention zero", with_spec("engine: postgres\nbackup:\n  repository: {local: {path: /srv/b}}\n  retention: {full: 0}"), "spec.backup.retention.full", "at least 1"),
        ("backup archive timeout too long", with_spec("engine: postgres\nbackup:\n  repository: {local: {path: /srv/b}}\n  archiveTimeout: 2h"), "spec.backup.archiveTimeout", "1s to 1h"),
        ("backup parallel too high", with_spec("engine: postgres\nbackup:\n  repository: {local: {path: /srv/b}}\n  parallel: 64"), "spec.backup.parallel", "1 to 32"),
        ("backup unknown compression", with_spec("engine: postgres\nbackup:\n  repository: {local: {path: /srv/b}}\n  compression: brotli"), "spec.backup.compression", "unknown variant"),
        ("backup encryption on mariadb", with_spec("engine: mariadb\nbackup:\n  repository: {local: {path: /srv/b}}\n  encryption: {secretName: e}"), "spec.backup.encryption", "postgres only"),
        ("backup unknown field", with_spec("engine: postgres\nbackup:\n  repository: {local: {path: /srv/b}}\n  retension: {full: 3}"), "spec.backup.retension", "not a known field"),
        ("uppercase name", "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: Shop}\nspec: {engine: postgres}\n".into(), "metadata.name", "lowercase"),
        ("name too long for pod labels", format!("apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {{name: {long_name}}}\nspec: {{engine: postgres}}\n"), "metadata.name", "at most 52"),
        ("name missing", "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {}\nspec: {engine: postgres}\n".into(), "metadata.name", "required"),
        ("namespace invalid", "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: shop, namespace: Prod}\nspec: {engine: postgres}\n".into(), "metadata.namespace", "only lowercase"),
        ("metadata typo", "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: shop, lables: {a: b}}\nspec: {engine: postgres}\n".into(), "metadata.lables", "not a known field"),
        ("wrong apiVersion", "apiVersion: stator.dev/v1\nkind: Database\nmetadata: {name: shop}\nspec: {engine: postgres}\n".into(), "apiVersion", "stator.dev/v1alpha1"),
        ("wrong kind", "apiVersion: stator.dev/v1alpha1\nkind: Cluster\nmetadata: {name: shop}\nspec: {engine: postgres}\n".into(), "kind", "Database"),
        ("top-level typo", "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: shop}\nspec: {engine: postgres}\nspecs: {}\n".into(), "specs", "not a known field"),
        ("two documents", format!("{}---\n{}", with_spec("engine: postgres"), with_spec("engine: mysql")), "", "2 documents"),
        ("not YAML", "spec: [engine: postgres\n".into(), "", "not valid YAML"),
    ]
}

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(STATOR)
        .args(args)
        .output()
        .expect("stator runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_rejects(name: &str, stderr: &str, code: i32, path: &str, word: &str) {
    assert_eq!(code, 2, "{name}: exit code, stderr:\n{stderr}");
    let wanted = if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    };
    let line = stderr
        .lines()
        .find(|l| l.contains(&wanted) && l.contains(word))
        .unwrap_or_else(|| panic!("{name}: no line with {wanted:?} and {word:?} in:\n{stderr}"));
    assert!(
        line.contains("spec.yaml"),
        "{name}: the message names the file: {line}"
    );
}

#[test]
fn at_least_25_invalid_specs_are_covered() {
    assert!(rows().len() >= 25);
}

#[test]
fn validate_rejects_each_invalid_spec_with_its_path() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content, path, word) in rows() {
        let file = dir.path().join("spec.yaml");
        std::fs::write(&file, &content).unwrap();
        let (code, stderr) = run(&["validate", "-f", file.to_str().unwrap()]);
        assert_rejects(name, &stderr, code, path, word);
    }
}

#[test]
fn render_rejects_each_invalid_spec_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for (name, content, path, word) in rows() {
        let file = dir.path().join("spec.yaml");
        std::fs::write(&file, &content).unwrap();
        let out = dir.path().join("out");
        let (code, stderr) = run(&[
            "render",
            "-f",
            file.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ]);
        assert_rejects(name, &stderr, code, path, word);
        assert!(!out.exists(), "{name}: render wrote {}", out.display());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "{name}: only the spec file is in the directory"
        );
    }
}

#[test]
fn every_problem_of_a_spec_is_reported_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spec.yaml");
    // Unknown fields at three levels, two wrong types, a bad enum value, a bad quantity, a bad
    // duration: serde alone stops at the first type error.
    std::fs::write(
        &file,
        "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: shop, lables: {a: b}}\n\
         spec:\n  engine: postgres\n  replicas: 3\n  instances: three\n  storage: {size: 10Q, sizee: 1Gi}\n\
         \x20 scheduling: {antiAffinity: always}\n  failover: {detectionTimeout: soon}\n\
         \x20 replication: {synchronous: maybe}\n",
    )
    .unwrap();
    let (code, stderr) = run(&["validate", "-f", file.to_str().unwrap()]);
    assert_eq!(code, 2);
    for path in [
        "metadata.lables: ",
        "spec.replicas: ",
        "spec.storage.sizee: ",
        "spec.instances: ",
        "spec.replication.synchronous: ",
        "spec.scheduling.antiAffinity: ",
        "spec.storage.size: ",
        "spec.failover.detectionTimeout: ",
    ] {
        assert!(stderr.contains(path), "{path} missing from:\n{stderr}");
    }
}

#[test]
fn a_missing_file_is_named() {
    let (code, stderr) = run(&["validate", "-f", "/nonexistent/db.yaml"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("/nonexistent/db.yaml"), "{stderr}");
    assert!(!Path::new("/nonexistent").exists());
}

/// Parameters are checked against the installed server itself: a misspelled name gets the nearest
/// valid one, a value the server would refuse is quoted with the server's own words, and every
/// problem comes at once, the spec's other problems included (PostgreSQL 15 and MariaDB 10.11
/// binaries on this machine).
#[test]
fn misspelled_and_invalid_parameters_are_refused_by_the_servers_own_list() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spec.yaml");
    let cases = [
        (
            "engine: postgres\nreplicas: 2\nconfig:\n  parameters: {max_connectons: 50, shared_buffers: lots, work_mem: 8MB}",
            vec![
                ("spec.replicas: ", "not a known field"),
                (
                    "spec.config.parameters.max_connectons: ",
                    "did you mean max_connections?",
                ),
                (
                    "spec.config.parameters.shared_buffers: ",
                    "invalid value for parameter \"shared_buffers\"",
                ),
            ],
        ),
        (
            "engine: mariadb\nconfig:\n  parameters: {max-connectons: 50, innodb_buffer_pool_size: lots, sort_buffer_size: 4M}",
            vec![
                (
                    "spec.config.parameters.max-connectons: ",
                    "did you mean max_connections?",
                ),
                ("spec.config.parameters.innodb_buffer_pool_size: ", "'lots'"),
            ],
        ),
    ];
    for (spec, wanted) in cases {
        std::fs::write(&file, with_spec(spec)).unwrap();
        let (code, stderr) = run(&["validate", "-f", file.to_str().unwrap()]);
        assert_eq!(code, 2, "{stderr}");
        for (path, words) in &wanted {
            assert!(
                stderr
                    .lines()
                    .any(|l| l.contains(path) && l.contains(words)),
                "{path} {words:?} missing from:\n{stderr}"
            );
        }
        assert!(
            !stderr.contains("work_mem") && !stderr.contains("sort_buffer_size"),
            "{stderr}"
        );
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// A valid `spec.backup` is accepted by `validate`; what is not implemented is refused with
/// exit 2, naming the field, writing nothing: `render` a local repository, `up` for MySQL and for an s3
/// repository (PostgreSQL with a local repository runs: see local_backup.rs). No one may
/// believe they have backups when they do not.
#[test]
fn a_backup_section_is_refused_where_backups_are_not_implemented() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("spec.yaml");
    std::fs::write(
        &file,
        with_spec("engine: postgres\nbackup:\n  repository: {local: {path: /srv/backups}}"),
    )
    .unwrap();
    let spec = file.to_str().unwrap();

    let (code, stderr) = run(&["validate", "-f", spec]);
    assert_eq!(code, 0, "validate accepts a valid spec:\n{stderr}");
    assert!(
        !stderr.contains("spec.backup"),
        "no warning for what runs:\n{stderr}"
    );

    let out = dir.path().join("out");
    let (code, stderr) = run(&["render", "-f", spec, "-o", out.to_str().unwrap()]);
    assert_eq!(code, 2, "render refuses a local repository:\n{stderr}");
    assert!(
        stderr.contains("spec.backup.repository.local is for the local runtime only"),
        "{stderr}"
    );
    assert!(!out.exists(), "render wrote {}", out.display());

    let state = dir.path().join("state");
    for (body, field) in [
        (
            "engine: mysql\nbackup:\n  repository: {local: {path: /srv/backups}}",
            "spec.backup: backups of mysql are not implemented yet",
        ),
        (
            "engine: mariadb\nbackup:\n  repository: {s3: {endpoint: 's3.example:443', bucket: backups, region: r, credentialsSecretName: k}}",
            "spec.backup.repository.s3.caSecretName: required for an S3 repository of MariaDB",
        ),
        // PostgreSQL on S3 runs, but not without its keys: the local Secret `k` is missing.
        (
            "engine: postgres\nbackup:\n  repository: {s3: {endpoint: 's3.example:443', bucket: backups, region: r, credentialsSecretName: k}}",
            "spec.backup.repository.s3.credentialsSecretName",
        ),
    ] {
        std::fs::write(&file, with_spec(body)).unwrap();
        let (code, stderr) = run(&["up", "-f", spec, "--state-dir", state.to_str().unwrap()]);
        assert_eq!(code, 2, "up refuses:\n{stderr}");
        assert!(stderr.contains(field), "{field}: {stderr}");
        assert!(!state.exists(), "up wrote {}", state.display());
    }
}
