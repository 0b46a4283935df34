//! Who may touch a database's state dir, with real PostgreSQL 15 and MariaDB 10.11 servers: the
//! state dir belongs to root (the tests run as root) and the servers run as `postgres`/`mysql`;
//! every other user (`nobody` here) can read no log, open no lock, list no secret, and every
//! command it runs on the database is refused as "permission denied" instead of calling a
//! running database stopped. A state dir of an older version (0755 dirs, 0644 files, a lock
//! another user holds) is tightened by the next `up`, which then starts.

mod local_support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use local_support::{Cluster, STATOR};

const OTHER_USER: &str = "nobody";
const DENIED: &str = "permission denied: run as root or the state dir's owner";

/// `ARGS` run as [`OTHER_USER`] (we are root).
fn as_other(program: &str, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", OTHER_USER, "--", program])
        .args(args)
        .current_dir("/")
        .output()
        .expect("run runuser")
}

/// `stator ARGS -f SPEC --state-dir STATE` as [`OTHER_USER`].
fn stator_as_other(cluster: &Cluster, args: &[&str]) -> Output {
    let spec = cluster.spec.display().to_string();
    let state = cluster.state_dir().display().to_string();
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["-f", &spec, "--state-dir", &state]);
    as_other(STATOR, &all)
}

fn text(out: &Output) -> String {
    format!(
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every path under the database's dir, not inside a data dir or a run dir (the server's own,
/// owned by it, 0700).
fn walk_state(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        out.push(path.clone());
        let name = entry.file_name().to_string_lossy().into_owned();
        if path.is_dir() && !name.starts_with("data-") && name != "run" {
            out.extend(walk_state(&path));
        }
    }
    out
}

/// What another user can and cannot do once the database runs.
fn assert_locked_down(cluster: &Cluster) {
    let db_dir = cluster.db_dir();
    // Modes: nothing under the database's dir grants anything to others.
    for path in std::iter::once(db_dir.clone()).chain(walk_state(&db_dir)) {
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            meta.mode() & 0o007,
            0,
            "{} is mode {:o}",
            path.display(),
            meta.mode() & 0o7777
        );
    }
    let lock = db_dir.join("supervisor.lock");
    assert_eq!(
        std::fs::metadata(&lock).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // As another user: no log can be read, whoever wrote it.
    let mut logs: Vec<PathBuf> = walk_state(&db_dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    let names: Vec<String> = logs
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for wanted in ["supervisor.log", "manager.log", "server.log"] {
        assert!(names.iter().any(|n| n == wanted), "{wanted} in {names:?}");
    }
    for log in &logs {
        let out = as_other("cat", &[&log.display().to_string()]);
        assert!(
            !out.status.success(),
            "{} is readable: {}",
            log.display(),
            text(&out)
        );
        assert!(out.stdout.is_empty(), "{}", log.display());
    }
    // … the lock cannot be opened (exit 200 would be "held by someone else"), …
    let out = as_other(
        "flock",
        &["-n", "-E", "200", &lock.display().to_string(), "true"],
    );
    assert!(
        !out.status.success() && out.status.code() != Some(200),
        "another user could open the lock: {}",
        text(&out)
    );
    // … and neither the secrets nor the database's dir can be listed.
    for dir in [db_dir.join("secrets"), db_dir.clone()] {
        let out = as_other("ls", &[&dir.display().to_string()]);
        assert!(
            !out.status.success(),
            "{} is listable: {}",
            dir.display(),
            text(&out)
        );
    }
    // No log is coloured (they are files).
    for log in &logs {
        let bytes = std::fs::read(log).unwrap();
        assert!(!bytes.contains(&0x1b), "{} has escape codes", log.display());
    }
}

/// Every command another user runs on the database is refused, naming the path; the database
/// is still running afterwards.
fn assert_commands_refused(cluster: &Cluster) {
    let instance = format!("{}-0", cluster.name);
    for args in [
        vec!["down"],
        vec!["status"],
        vec!["uri"],
        vec!["switchover"],
        vec!["drain", instance.as_str()],
        vec!["delete"],
        vec!["up"],
    ] {
        let out = stator_as_other(cluster, &args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "stator {args:?}: {}", text(&out));
        assert!(stderr.contains(DENIED), "stator {args:?}: {}", text(&out));
        assert!(
            stderr.contains(&cluster.db_dir().display().to_string()),
            "stator {args:?} names the path: {}",
            text(&out)
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("stopped"),
            "{}",
            text(&out)
        );
    }
    let row = cluster.row(&instance);
    assert_eq!(row["report"]["ready"], true, "{row:#}");
}

#[test]
fn another_user_can_read_no_log_take_no_lock_and_is_refused_by_every_command() {
    let cluster = Cluster::new("lkd", 1);
    // `up` with debug logs on a pipe, NO_COLOR unset: no colour codes either.
    let out = Command::new(STATOR)
        .args(["-v", "up", "-f"])
        .arg(&cluster.spec)
        .arg("--state-dir")
        .arg(cluster.state_dir())
        .env_remove("NO_COLOR")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out),
        cluster.logs_for_failure()
    );
    assert!(
        !out.stderr.contains(&0x1b),
        "colour codes on a pipe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A statement that fails quotes its text in the server log: readable by root only.
    let leaked = cluster
        .psql(
            cluster.rw(),
            "ALTER ROLE no_such_role PASSWORD 'not-for-others'",
        )
        .unwrap_err();
    assert!(leaked.contains("no_such_role"), "{leaked}");
    assert_locked_down(&cluster);
    assert_commands_refused(&cluster);

    // A state dir as an older version left it: 0755 dirs, 0644 files, and another user holding
    // the lock. The next `up` tightens it (and says so) and starts regardless of that holder.
    cluster.ok(&["down"]);
    let db_dir = cluster.db_dir();
    for path in std::iter::once(db_dir.clone()).chain(walk_state(&db_dir)) {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("data-") || name == "run" || name == "secrets" {
            continue;
        }
        let mode = if path.is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
    let lock = db_dir.join("supervisor.lock").display().to_string();
    let mut holder = Command::new("runuser")
        .args(["-u", OTHER_USER, "--", "flock", "-x", &lock, "sleep", "600"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    cluster.eventually(
        "the other user holds the old lock",
        std::time::Duration::from_secs(10),
        || {
            let out = Command::new("flock")
                .args(["-n", "-E", "200", &lock, "true"])
                .output()
                .ok()?;
            (out.status.code() == Some(200)).then_some(())
        },
    );
    let out = cluster.stator(&["up", "--timeout", "120"]);
    let _ = holder.kill();
    let _ = holder.wait();
    assert!(
        out.status.success(),
        "{}\n{}",
        text(&out),
        cluster.logs_for_failure()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("tightened the permissions of"), "{stderr}");
    assert!(!stderr.contains("supervisor already running"), "{stderr}");
    assert_locked_down(&cluster);
}

#[test]
fn mariadb_logs_and_lock_are_closed_to_other_users() {
    let cluster = Cluster::mariadb("lkdm", 1);
    cluster.up();
    assert_locked_down(&cluster);
    let out = stator_as_other(&cluster, &["down"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(DENIED),
        "{}",
        text(&out)
    );
}
