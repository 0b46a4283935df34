//! `spec.backup`: its defaults, and every refusal naming its field path and what would be valid.

use stator_api::load_database;
use stator_api::spec::{BackupCompression, DEFAULT_BACKUP_SCHEDULE};

fn doc(engine: &str, backup: &str) -> String {
    let body: String = backup.lines().map(|l| format!("    {l}\n")).collect();
    format!(
        "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {{name: shop}}\nspec:\n  engine: {engine}\n  backup:\n{body}"
    )
}

fn errors(yaml: &str) -> Vec<String> {
    match load_database(yaml) {
        Ok(_) => panic!("accepted:\n{yaml}"),
        Err(e) => e.errors.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn a_repository_alone_gets_the_documented_defaults() {
    let db = load_database(&doc(
        "postgres",
        "repository: {local: {path: /srv/backups}}",
    ))
    .unwrap()
    .database;
    let backup = db.spec.backup.expect("backup is set");
    assert_eq!(backup.schedule, DEFAULT_BACKUP_SCHEDULE);
    assert_eq!(backup.retention.full, 2);
    assert_eq!(backup.archive_timeout, "60s");
    assert_eq!(backup.compression, BackupCompression::Zst);
    assert_eq!(backup.parallel, 2);
    assert_eq!(backup.encryption, None);
}

#[test]
fn the_issues_full_example_is_accepted() {
    let yaml = doc(
        "postgres",
        "repository:\n  s3: {endpoint: \"h:443\", bucket: b-1, region: r, path: /stator, caSecretName: c, credentialsSecretName: k}\n\
         schedule: \"0 3 * * *\"\nretention: {full: 2}\narchiveTimeout: 60s\ncompression: lz4\nparallel: 4\nencryption: {secretName: e}",
    );
    let db = load_database(&yaml).unwrap().database;
    let backup = db.spec.backup.unwrap();
    assert_eq!(backup.compression, BackupCompression::Lz4);
    assert_eq!(backup.repository.s3.unwrap().bucket, "b-1");
}

/// (engine, `spec.backup` body, the exact start of the message it must produce)
const ROWS: &[(&str, &str, &str)] = &[
    (
        "postgres",
        "repository: {local: {path: /b}}\nschedule: \"61 * * * *\"",
        "spec.backup.schedule: \"61 * * * *\": minute 61 is out of range (expected 0-59)",
    ),
    (
        "postgres",
        "repository: {local: {path: /b}}\nschedule: \"0 3 * *\"",
        "spec.backup.schedule: \"0 3 * *\": has 4 field(s); expected 5",
    ),
    (
        "postgres",
        "repository: {local: {path: /b}}\nschedule: \"@daily\"",
        "spec.backup.schedule: \"@daily\": has 1 field(s); expected 5",
    ),
    (
        "postgres",
        "repository: {local: {path: /b}}\nschedule: \"0 0 31 2 *\"",
        "spec.backup.schedule: \"0 0 31 2 *\": never runs: day-of-month 31 does not occur in month 2",
    ),
    (
        "postgres",
        "repository: {local: {path: /b}, s3: {endpoint: \"h:443\", bucket: bbb, region: r, credentialsSecretName: k}}",
        "spec.backup.repository: gives both local and s3; give exactly one",
    ),
    (
        "postgres",
        "repository: {}",
        "spec.backup.repository: names no repository; give exactly one of local",
    ),
    (
        "postgres",
        "schedule: \"0 3 * * *\"",
        "spec.backup.repository: names no repository",
    ),
    (
        "postgres",
        "repository: {local: {path: srv/backups}}",
        "spec.backup.repository.local.path: \"srv/backups\" is not an absolute path (e.g. /srv/backups)",
    ),
    (
        "postgres",
        "repository: {local: {path: /srv/../etc}}",
        "spec.backup.repository.local.path: \"/srv/../etc\" climbs out",
    ),
    (
        "postgres",
        "repository: {local: {}}",
        "spec.backup.repository.local: missing field `path`",
    ),
    (
        "postgres",
        "repository: {s3: {endpoint: s3.example.com, bucket: bbb, region: r, credentialsSecretName: k}}",
        "spec.backup.repository.s3.endpoint: \"s3.example.com\" has no port (expected host:port",
    ),
    (
        "postgres",
        "repository: {s3: {endpoint: \":443\", bucket: bbb, region: r, credentialsSecretName: k}}",
        "spec.backup.repository.s3.endpoint: \":443\" has no host",
    ),
    (
        "postgres",
        "repository: {s3: {endpoint: \"https://s3.example.com:443\", bucket: bbb, region: r, credentialsSecretName: k}}",
        "spec.backup.repository.s3.endpoint: \"https://s3.example.com:443\" has a scheme",
    ),
    (
        "postgres",
        "repository: {s3: {endpoint: \"h:99999\", bucket: bbb, region: r, credentialsSecretName: k}}",
        "spec.backup.repository.s3.endpoint: \"h:99999\" has a port that is not a number from 1 to 65535",
    ),
    (
        "postgres",
        "repository: {s3: {endpoint: \"h:443\", bucket: My_Bucket, region: r, credentialsSecretName: k}}",
        "spec.backup.repository.s3.bucket: \"My_Bucket\" may hold only lowercase letters",
    ),
    (
        "postgres",
        "repository: {s3: {endpoint: \"h:443\", bucket: ab, region: r, credentialsSecretName: k}}",
        "spec.backup.repository.s3.bucket: \"ab\" must be 3 to 63 characters",
    ),
    (
        "postgres",
        "repository: {s3: {endpoint: \"h:443\", bucket: -bucket, region: r, credentialsSecretName: k}}",
        "spec.backup.repository.s3.bucket: \"-bucket\" must begin and end with a letter or digit",
    ),
    (
        "postgres",
        "repository: {s3: {endpoint: \"h:443\", bucket: 192.168.1.1, region: r, credentialsSecretName: k}}",
        "spec.backup.repository.s3.bucket: \"192.168.1.1\" may not look like an IP address",
    ),
    (
        "postgres",
        "repository: {s3: {endpoint: \"h:443\", bucket: bbb, region: \"\", credentialsSecretName: k}}",
        "spec.backup.repository.s3.region: \"\" is not a region",
    ),
    (
        "postgres",
        "repository: {s3: {endpoint: \"h:443\", bucket: bbb, region: r, path: stator, credentialsSecretName: k}}",
        "spec.backup.repository.s3.path: \"stator\" is not an absolute path",
    ),
    (
        "postgres",
        "repository: {s3: {endpoint: \"h:443\", bucket: bbb, region: r, credentialsSecretName: Keys_1}}",
        "spec.backup.repository.s3.credentialsSecretName: \"Keys_1\"",
    ),
    (
        "postgres",
        "repository: {s3: {endpoint: \"h:443\", bucket: bbb, region: r}}",
        "spec.backup.repository.s3: missing field `credentialsSecretName`",
    ),
    (
        "postgres",
        "repository: {local: {path: /b}}\nretention: {full: 0}",
        "spec.backup.retention.full: 0 would delete every backup; keep at least 1",
    ),
    (
        "postgres",
        "repository: {local: {path: /b}}\narchiveTimeout: \"60\"",
        "spec.backup.archiveTimeout: \"60\" is not a duration (e.g. 60s, 5m)",
    ),
    (
        "postgres",
        "repository: {local: {path: /b}}\narchiveTimeout: 2h",
        "spec.backup.archiveTimeout: \"2h\" is out of range (1s to 1h)",
    ),
    (
        "postgres",
        "repository: {local: {path: /b}}\narchiveTimeout: 500ms",
        "spec.backup.archiveTimeout: \"500ms\" is out of range (1s to 1h)",
    ),
    (
        "postgres",
        "repository: {local: {path: /b}}\narchiveTimeout: 1500ms",
        "spec.backup.archiveTimeout: \"1500ms\" is not a whole number of seconds",
    ),
    (
        "postgres",
        "repository: {local: {path: /b}}\nparallel: 0",
        "spec.backup.parallel: 0 is out of range (1 to 32)",
    ),
    (
        "postgres",
        "repository: {local: {path: /b}}\nparallel: 33",
        "spec.backup.parallel: 33 is out of range (1 to 32)",
    ),
    (
        "postgres",
        "repository: {local: {path: /b}}\ncompression: brotli",
        "spec.backup.compression: unknown variant `brotli`, expected one of `zst`, `lz4`, `gz`, `none`",
    ),
    (
        "mariadb",
        "repository: {local: {path: /b}}\nencryption: {secretName: e}",
        "spec.backup.encryption: is supported for postgres only for now",
    ),
    (
        "mysql",
        "repository: {local: {path: /b}}\nencryption: {secretName: e}",
        "spec.backup.encryption: is supported for postgres only for now",
    ),
    (
        "postgres",
        "repository: {local: {path: /b}}\nencryption: {}",
        "spec.backup.encryption: missing field `secretName`",
    ),
    (
        "postgres",
        "repository: {local: {path: /b}}\nencryption: {secretName: E}",
        "spec.backup.encryption.secretName: \"E\"",
    ),
    (
        "postgres",
        "repository: {local: {path: /b}}\nretension: {full: 3}",
        "spec.backup.retension: is not a known field",
    ),
];

#[test]
fn every_backup_problem_names_its_field_and_what_is_valid() {
    let mut failures = Vec::new();
    for (engine, body, expected) in ROWS {
        let yaml = doc(engine, body);
        match load_database(&yaml) {
            Ok(_) => failures.push(format!("{engine} {body:?}: accepted, want {expected:?}")),
            Err(e) => {
                let got: Vec<String> = e.errors.iter().map(ToString::to_string).collect();
                if !got.iter().any(|m| m.starts_with(expected)) {
                    failures.push(format!("{engine} {body:?}: got {got:?}, want {expected:?}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Unknown fields, wrong types, a missing required field and semantic problems inside
/// `spec.backup` are all named in one pass, next to a problem elsewhere in the spec.
#[test]
fn every_backup_problem_is_named_in_one_pass() {
    let yaml = "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: shop}\nspec:\n  engine: mariadb\n  instances: 0\n  backup:\n    repository:\n      s3: {endpoint: nohost, bucket: B, region: r, credentialsSecretName: k, sessionToken: x}\n      local: {}\n    schedule: \"0 25 * * *\"\n    parallel: many\n    compression: brotli\n    retention: {full: 0}\n    archiveTimeout: forever\n    encryption: {secretName: e}\n";
    let e = errors(yaml);
    let expected = [
        "spec.instances:",
        "spec.backup.repository.s3.sessionToken: is not a known field",
        "spec.backup.repository.local: missing field `path`",
        "spec.backup.repository: gives both local and s3",
        "spec.backup.repository.s3.endpoint: \"nohost\" has no port",
        "spec.backup.repository.s3.bucket: \"B\"",
        "spec.backup.schedule: \"0 25 * * *\": hour 25 is out of range (expected 0-23)",
        "spec.backup.parallel: invalid type",
        "spec.backup.compression: unknown variant `brotli`",
        "spec.backup.retention.full: 0 would delete every backup",
        "spec.backup.archiveTimeout: \"forever\" is not a duration",
        "spec.backup.encryption: is supported for postgres only",
    ];
    let missing: Vec<&str> = expected
        .iter()
        .copied()
        .filter(|want| !e.iter().any(|m| m.starts_with(want)))
        .collect();
    assert!(missing.is_empty(), "missing {missing:?} in {e:#?}");
    // The stand-in for the missing local path is not reported as a problem of its own.
    assert!(
        !e.iter()
            .any(|m| m.starts_with("spec.backup.repository.local.path")),
        "{e:#?}"
    );
}

#[test]
fn a_mariadb_binlog_expiry_and_a_bad_gtid_target_are_refused_naming_the_field() {
    let expiring = "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: shop}\nspec:\n  engine: mariadb\n  config:\n    parameters: {binlog_expire_logs_seconds: \"3600\"}\n  backup:\n    repository: {local: {path: /b}}\n";
    let e = errors(expiring);
    assert!(
        e.iter().any(|m| m.starts_with(
            "spec.config.parameters.binlog_expire_logs_seconds: would let the server drop binary logs before they are archived"
        )),
        "{e:?}"
    );
    // 0 keeps them: accepted.
    assert!(load_database(&expiring.replace("3600", "0")).is_ok());
    let restore = |target: &str| {
        format!(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {{name: shop}}\nspec:\n  engine: mariadb\n  bootstrap:\n    restoreFrom: {{database: old, {target}}}\n  backup:\n    repository: {{local: {{path: /b}}}}\n"
        )
    };
    assert!(load_database(&restore("targetGtid: 0-1000-42")).is_ok());
    let e = errors(&restore("targetGtid: \"0-1000-42,1-1000-3\""));
    assert!(
        e.iter()
            .any(|m| m.starts_with("spec.bootstrap.restoreFrom.targetGtid: ")),
        "{e:?}"
    );
    let e = errors(&restore(
        "targetGtid: 0-1000-42, targetTime: \"2026-11-26T12:00:00Z\"",
    ));
    assert!(e.iter().any(|m| m.contains("give at most one")), "{e:?}");
}
