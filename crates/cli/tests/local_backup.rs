//! Backups and point-in-time restore of a local PostgreSQL database with pgBackRest, against
//! real PostgreSQL 15 servers and a real repository (and of MariaDB 10.11: full backups and the
//! binlog archive): rows written, a point T marked on the
//! server's clock, more rows written; a restore to T into a new database holds exactly the rows
//! committed before T. Targets outside the recoverable range, an existing name and a damaged
//! repository are refused, naming the range or the file, and nothing is created.

mod local_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use local_support::{Cluster, walk};

/// `spec.backup` with a repository in `repo` and a short archiveTimeout (the archive keeps up
/// within a second of a write).
fn backup_spec(repo: &Path) -> String {
    format!(
        "  backup:\n    repository:\n      local:\n        path: {}\n    archiveTimeout: 1s\n",
        repo.display()
    )
}

fn repository(c: &Cluster) -> PathBuf {
    let repo = c.dir.path().join("repo");
    std::fs::create_dir_all(&repo).unwrap();
    repo
}

/// A new 1-instance database `name` whose spec shares `source`'s state dir and repository.
fn sibling(source: &Cluster, name: &str, repo: &Path) -> PathBuf {
    sibling_of(source, name, repo, 1)
}

/// A new database `name` of `instances` instances sharing `source`'s state dir and repository.
fn sibling_of(source: &Cluster, name: &str, repo: &Path, instances: u32) -> PathBuf {
    sibling_with(source, name, &backup_spec(repo), instances)
}

/// A new database `name` of `instances` instances sharing `source`'s state dir, with `backup`
/// (its `spec.backup` lines).
fn sibling_with(source: &Cluster, name: &str, backup: &str, instances: u32) -> PathBuf {
    let spec = source.dir.path().join(format!("{name}.yaml"));
    let base = local_support::free_port_base();
    std::fs::write(
        &spec,
        format!(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: {name}\nspec:\n  engine: {}\n  instances: {instances}\n  local:\n    portBase: {base}\n{}",
            source.engine,
            backup
        ),
    )
    .unwrap();
    spec
}

fn stator(c: &Cluster, args: &[&str], spec: &Path) -> std::process::Output {
    let mut args = args.to_vec();
    if args[0] == "restore" {
        args.extend(["--timeout", "180"]);
    }
    std::process::Command::new(local_support::STATOR)
        .args(args)
        .arg("-f")
        .arg(spec)
        .arg("--state-dir")
        .arg(c.state_dir())
        .output()
        .unwrap()
}

/// The tails of a sibling database's logs, for failures.
fn logs_of(c: &Cluster, name: &str) -> String {
    walk(&c.state_dir().join("default").join(name))
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "log"))
        .map(|f| {
            let t = std::fs::read_to_string(&f).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            format!(
                "--- {}\n{}\n",
                f.display(),
                lines[lines.len().saturating_sub(25)..].join("\n")
            )
        })
        .collect()
}

/// `stator ARGS` (a restore into the database of `spec`, named `name`) must succeed, else the
/// output and the new database's logs are shown; prints how long it took, as `what`.
fn restore_ok(c: &Cluster, args: &[&str], spec: &Path, name: &str, what: &str) {
    let started = Instant::now();
    let out = stator(c, args, spec);
    assert!(out.status.success(), "{}\n{}", text(&out), logs_of(c, name));
    println!("{what}: {:.2} s", started.elapsed().as_secs_f64());
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Waits until the archive holds the WAL written up to `after` (seconds since the epoch): a
/// segment archived later holds everything written before it.
///
/// A write to a side table at each look: archive_timeout closes a segment only when WAL was
/// written since the last switch, so when its switch fell between the last write to `t` and
/// the reading of `after`, no segment would ever be archived after `after` (seen in CI: 60 s
/// of waiting on an idle primary). One write is not enough either: an object store dates a
/// segment to the second, so one archived in the same second as `after` reads as older (CI
/// again, on S3); the next write's segment comes a switch later.
fn wait_archived(c: &Cluster, after: f64) {
    c.psql(
        c.rw(),
        "CREATE TABLE IF NOT EXISTS archive_tick (at timestamptz)",
    )
    .unwrap();
    c.eventually(
        "the WAL after T is archived",
        Duration::from_secs(60),
        || {
            c.psql(c.rw(), "INSERT INTO archive_tick VALUES (now())")
                .ok()?;
            let list = c.ok(&["backup", "list", "-o", "json"]);
            let v: serde_json::Value = serde_json::from_str(&list).ok()?;
            let latest = v["recoverable"]["latestTime"].as_f64()?;
            (latest > after).then_some(())
        },
    );
}

/// Writes with `write` until `stator status` says the archive fails (Degraded, BackupsHealthy
/// false for an Archive… reason); the status then.
fn wait_archive_failing(c: &Cluster, write: &mut impl FnMut()) -> serde_json::Value {
    c.eventually(
        "the status says the archive fails",
        Duration::from_secs(120),
        || {
            write();
            let s = c.status();
            let b = &s["backupsHealthy"];
            (s["phase"] == "Degraded"
                && b["status"] == false
                && b["reason"].as_str()?.starts_with("Archive"))
            .then_some(s)
        },
    )
}

fn server_now(c: &Cluster) -> (String, f64, String) {
    let row = c
        .psql(
            c.rw(),
            "SELECT now() AT TIME ZONE 'UTC', extract(epoch from now()), pg_current_wal_lsn()",
        )
        .unwrap();
    let parts: Vec<&str> = row.split('|').collect();
    (
        format!("{}+00", parts[0]),
        parts[1].parse().unwrap(),
        parts[2].to_string(),
    )
}

/// The rows of table `t` in the sibling database of `spec`, as its own application user.
fn rows_in(c: &Cluster, spec: &Path) -> Vec<i64> {
    rows_through(c, spec, rw_of(spec))
}

/// The rows of table `t` in the sibling database of `spec`, through `port`.
fn rows_through(c: &Cluster, spec: &Path, port: u16) -> Vec<i64> {
    let uri = String::from_utf8(stator(c, &["uri"], spec).stdout).unwrap();
    let out = std::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg("-c")
        .arg("SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM t")
        .arg("-d")
        .arg("postgres://")
        .env("PGDATABASE", "app")
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string())
        .env("PGUSER", "app")
        .env(
            "PGPASSWORD",
            uri.trim()
                .split_once("://")
                .unwrap()
                .1
                .rsplit_once('@')
                .unwrap()
                .0
                .split_once(':')
                .unwrap()
                .1,
        )
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect()
}

/// Port of a sibling database's rw proxy (its spec's portBase).
fn rw_of(spec: &Path) -> u16 {
    let text = std::fs::read_to_string(spec).unwrap();
    text.lines()
        .find_map(|l| l.trim().strip_prefix("portBase: "))
        .unwrap()
        .parse()
        .unwrap()
}

fn cleanup(c: &Cluster, spec: &Path) {
    let _ = std::process::Command::new(local_support::STATOR)
        .args(["delete", "--purge", "-f"])
        .arg(spec)
        .arg("--state-dir")
        .arg(c.state_dir())
        .output();
}

#[test]
fn a_restore_to_a_time_or_an_lsn_holds_exactly_the_rows_committed_before_it() {
    let c = Cluster::new("bk", 1);
    let repo = repository(&c);
    c.write_spec(1, &backup_spec(&repo));
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = c.watch_command_lines(stop.clone());
    c.up();

    // pgbackrest.conf: 0600, the server user's, its own paths, no password.
    let conf = walk(&c.db_dir())
        .into_iter()
        .find(|p| p.ends_with("pgbackrest.conf"))
        .expect("a pgbackrest.conf");
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&conf).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    let conf_text = std::fs::read_to_string(&conf).unwrap();
    assert!(
        conf_text.contains(&format!("repo1-path={}", repo.join("default/bk").display())),
        "{conf_text}"
    );
    assert!(!conf_text.contains("archive-push-queue-max"), "{conf_text}");
    for secret in c.secrets() {
        assert!(!conf_text.contains(&secret), "a secret in pgbackrest.conf");
    }
    assert_eq!(
        c.psql(c.rw(), "SELECT current_setting('archive_mode')")
            .unwrap(),
        "on"
    );

    c.psql(
        c.rw(),
        "CREATE TABLE t (id bigint primary key); INSERT INTO t SELECT generate_series(1, 10)",
    )
    .unwrap();
    first_backup(&c);
    let started = Instant::now();
    let created = c.ok(&["backup", "create", "--type", "incr"]);
    assert!(created.contains("(incr)"), "{created}");
    println!(
        "backup create (incr, ~empty database): {:.2} s: {created}",
        started.elapsed().as_secs_f64()
    );
    c.psql(c.rw(), "INSERT INTO t SELECT generate_series(11, 20)")
        .unwrap();
    let (t_text, t_epoch, t_lsn) = server_now(&c);
    std::thread::sleep(Duration::from_millis(300));
    c.psql(c.rw(), "INSERT INTO t SELECT generate_series(21, 30)")
        .unwrap();
    wait_archived(&c, t_epoch);

    // `stator status`: the last backup, the recoverable range, the archive as the primary's
    // manager sees it (pg_stat_archiver and the `.ready` files).
    let table = c.ok(&["status"]);
    assert!(
        table.contains("last backup:  2") && table.contains("recoverable:  2"),
        "{table}"
    );
    c.eventually(
        "the archive's last success in status",
        Duration::from_secs(30),
        || {
            let s = c.status();
            let a = &s["backup"]["archive"];
            (a["lastSuccess"].as_f64()? > 0.0 && a["pendingFiles"].as_u64().is_some()).then_some(())
        },
    );
    let list = c.ok(&["backup", "list"]);
    assert!(
        list.contains("full") && list.contains("recoverable:"),
        "{list}"
    );
    let verified = c.ok(&["backup", "verify"]);
    assert!(verified.contains("intact"), "{verified}");

    // To the time T: rows 1..20, not 21..30.
    let by_time = sibling(&c, "bt", &repo);
    restore_ok(
        &c,
        &["restore", "--from", "bk", "--to-time", &t_text],
        &by_time,
        "bt",
        "restore to a time",
    );
    assert_eq!(rows_in(&c, &by_time), (1..=20).collect::<Vec<_>>());

    // To the LSN at T: the same rows.
    let by_lsn = sibling(&c, "bl", &repo);
    restore_ok(
        &c,
        &["restore", "--from", "bk", "--to-lsn", &t_lsn],
        &by_lsn,
        "bl",
        "restore to an LSN",
    );
    assert_eq!(rows_in(&c, &by_lsn), (1..=20).collect::<Vec<_>>());
    cleanup(&c, &by_lsn);

    // Onto an existing name, or onto the source itself: refused, nothing changed.
    let again = stator(
        &c,
        &["restore", "--from", "bk", "--to-time", &t_text],
        &by_time,
    );
    assert!(!again.status.success());
    assert!(text(&again).contains("exists already"), "{}", text(&again));
    assert_eq!(rows_in(&c, &by_time), (1..=20).collect::<Vec<_>>());
    let itself = stator(&c, &["restore", "--from", "bk"], &c.spec);
    assert!(!itself.status.success());
    assert!(text(&itself).contains("--from bk"), "{}", text(&itself));
    cleanup(&c, &by_time);

    // Outside the recoverable range (before the first backup, after the last archive): the
    // error names the range, and nothing is created.
    for target in ["2001-01-01T00:00:00Z", "2099-01-01T00:00:00Z"] {
        let spec = sibling(&c, "bo", &repo);
        let out = stator(&c, &["restore", "--from", "bk", "--to-time", target], &spec);
        assert!(!out.status.success(), "{target}");
        let said = text(&out);
        assert!(
            said.contains("outside the recoverable range of bk"),
            "{said}"
        );
        assert!(said.contains(" .. "), "names the range: {said}");
        assert!(
            !c.state_dir().join("default/bo").exists(),
            "nothing created for {target}"
        );
        assert!(
            !repo.join("default/bo").exists(),
            "nothing created for {target}"
        );
    }

    stop.store(true, Ordering::SeqCst);
    let (scans, found) = watcher.join().unwrap();
    assert!(scans > 0);
    assert!(found.is_empty(), "secrets on command lines: {found:?}");

    // A flipped byte in an archived WAL segment the restore would replay (the newest):
    // pgBackRest's restore does not check the WAL it fetches, and PostgreSQL would take the
    // damage for the end of the WAL. Verify fails, and a restore refuses, naming the file.
    let wal = walk(&repo.join("default/bk/archive/bk"))
        .into_iter()
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            name.len() > 25 && name.as_bytes()[24] == b'-' && name.ends_with(".zst")
        })
        .max_by_key(|p| p.file_name().unwrap().to_os_string())
        .expect("an archived WAL segment");
    let good = std::fs::read(&wal).unwrap();
    let mut bad = good.clone();
    bad[good.len() / 2] ^= 0xff;
    std::fs::write(&wal, &bad).unwrap();
    let wal_name = wal.file_name().unwrap().to_string_lossy().into_owned();
    let verify = c.stator(&["backup", "verify"]);
    assert!(!verify.status.success(), "{}", text(&verify));
    let spec = sibling(&c, "bw", &repo);
    let out = stator(&c, &["restore", "--from", "bk"], &spec);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&wal_name) && text(&out).contains("the archived WAL is damaged"),
        "names {wal_name}: {}",
        text(&out)
    );
    refused_after_start(&c, &repo, "bw", &text(&out));
    std::fs::write(&wal, &good).unwrap();

    // A flipped byte in a backup file: verify fails and a restore refuses, naming the file.
    let label_dir = std::fs::read_dir(repo.join("default/bk/backup/bk"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with('F'))
        .unwrap()
        .path();
    let victim = walk(&label_dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("pg_data/base/"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap();
    let mut bytes = std::fs::read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    let name = victim.file_name().unwrap().to_string_lossy().into_owned();
    let stem = name.split('.').next().unwrap().to_string();
    let verify = c.stator(&["backup", "verify"]);
    assert!(!verify.status.success(), "{}", text(&verify));
    assert!(
        text(&verify).contains(&stem),
        "names {stem}: {}",
        text(&verify)
    );
    let spec = sibling(&c, "bc", &repo);
    let out = stator(&c, &["restore", "--from", "bk"], &spec);
    assert!(!out.status.success());
    assert!(text(&out).contains(&stem), "names {stem}: {}", text(&out));
    refused_after_start(&c, &repo, "bc", &text(&out));
}

/// A restore the instance manager's `pgbackrest verify` (run beside the restore) refused: the
/// new database `name` was started and is gone again: no state dir, no repository path, no
/// process left.
fn refused_after_start(c: &Cluster, repo: &Path, name: &str, said: &str) {
    assert!(
        said.contains(&format!(
            "default/{name} was removed again: nothing was created"
        )),
        "{said}"
    );
    let dir = c.state_dir().join("default").join(name);
    assert!(!dir.exists(), "{}", dir.display());
    assert!(!repo.join("default").join(name).exists(), "{name}");
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter_map(|e| {
            let cmdline = String::from_utf8_lossy(&std::fs::read(e.path().join("cmdline")).ok()?)
                .replace('\0', " ");
            let cwd = std::fs::read_link(e.path().join("cwd")).unwrap_or_default();
            (cmdline.contains(&*dir.to_string_lossy()) || cwd.starts_with(&dir)).then_some(cmdline)
        })
        .collect();
    assert!(left.is_empty(), "processes of {name} left: {left:?}");
}

/// Waits for the first backup, which the supervisor's schedule takes at once (a database that
/// never had one is due now), and for it to finish.
fn first_backup(c: &Cluster) {
    c.eventually(
        "the scheduled first backup",
        Duration::from_secs(120),
        || {
            let l = listing(c);
            let b = l["backups"].as_array()?.first()?.clone();
            (b["kind"] == "full").then_some(())
        },
    );
}

/// The archive as `stator backup list -o json` shows it.
fn listing(c: &Cluster) -> serde_json::Value {
    serde_json::from_str(&c.ok(&["backup", "list", "-o", "json"])).unwrap()
}

#[test]
fn after_a_failover_the_new_primary_archives_on_its_timeline_and_restores_before_and_after_it_are_exact()
 {
    let c = Cluster::new("fb", 2);
    let repo = repository(&c);
    c.write_spec(2, &backup_spec(&repo));
    c.up();
    c.psql(
        c.rw(),
        "CREATE TABLE t (id bigint primary key); INSERT INTO t SELECT generate_series(1, 10)",
    )
    .unwrap();
    first_backup(&c);
    c.psql(c.rw(), "INSERT INTO t SELECT generate_series(11, 20)")
        .unwrap();
    let (before, before_epoch, _) = server_now(&c);
    std::thread::sleep(Duration::from_millis(300));
    c.psql(c.rw(), "INSERT INTO t SELECT generate_series(21, 30)")
        .unwrap();
    let (_, written, _) = server_now(&c);
    assert!(written > before_epoch);
    wait_archived(&c, written);

    // The primary dies; fb-1 takes over on timeline 2.
    c.hold_and_kill(0);
    c.eventually(
        "fb-1 is the writable primary",
        Duration::from_secs(120),
        || {
            (c.core_primary().as_deref() == Some("fb-1")
                && c.psql(c.rw(), "SELECT NOT pg_is_in_recovery()").ok()? == "t")
                .then_some(())
        },
    );
    // The new timeline shows in the archive, and a full backup was started on the new
    // primary by itself.
    c.eventually(
        "timeline 2 in pgbackrest info and a full backup on it",
        Duration::from_secs(120),
        || {
            let l = listing(&c);
            let tl2 = l["archiveMax"].as_str()?.starts_with("00000002");
            let fulls = l["backups"]
                .as_array()?
                .iter()
                .filter(|b| b["kind"] == "full")
                .count();
            (tl2 && fulls >= 2).then_some(())
        },
    );
    c.psql(c.rw(), "INSERT INTO t SELECT generate_series(31, 40)")
        .unwrap();
    let (after, after_epoch, _) = server_now(&c);
    std::thread::sleep(Duration::from_millis(300));
    c.psql(c.rw(), "INSERT INTO t SELECT generate_series(41, 50)")
        .unwrap();
    let (_, written, _) = server_now(&c);
    assert!(written > after_epoch);
    wait_archived(&c, written);

    // The last one has a replica: it clones the restored primary as any replica does (`up`
    // returns once both are ready).
    for (name, target, expected, instances) in [
        ("rb", Some(before.as_str()), 20, 1),
        ("ra", Some(after.as_str()), 40, 1),
        ("rl", None, 50, 2),
    ] {
        let spec = sibling_of(&c, name, &repo, instances);
        let mut args = vec!["restore", "--from", "fb"];
        if let Some(t) = target {
            args.extend(["--to-time", t]);
        }
        restore_ok(
            &c,
            &args,
            &spec,
            name,
            &format!(
                "restore {name} ({}) across a failover",
                target.unwrap_or("latest")
            ),
        );
        assert_eq!(
            rows_in(&c, &spec),
            (1..=expected).collect::<Vec<_>>(),
            "{name}: to {}",
            target.unwrap_or("latest")
        );
        if instances > 1 {
            // ro: the replica cloned from the restored primary.
            let ro = rw_of(&spec) + 1;
            c.eventually(
                "the replica holds the restored rows",
                Duration::from_secs(60),
                || {
                    (rows_through(&c, &spec, ro) == (1..=expected).collect::<Vec<_>>())
                        .then_some(())
                },
            );
        }
        cleanup(&c, &spec);
    }
}

/// The primary instance manager's `/metrics` (HTTPS, verified against the database's CA).
fn metrics(c: &Cluster) -> String {
    let port = c.instances()[0]["managerPort"].as_u64().unwrap();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "5", "--cacert"])
        .arg(c.ca())
        .arg(format!("https://127.0.0.1:{port}/metrics"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn an_unwritable_repository_degrades_the_database_and_once_fixed_the_archive_catches_up_and_a_restore_inside_the_outage_is_exact()
 {
    let c = Cluster::new("ur", 1);
    let repo = repository(&c);
    c.write_spec(
        1,
        &backup_spec(&repo).replace("archiveTimeout: 1s", "archiveTimeout: 5s"),
    );
    c.up();
    c.psql(
        c.rw(),
        "CREATE TABLE t (id bigint primary key); INSERT INTO t SELECT generate_series(1, 10);
         CREATE TABLE noise (at timestamptz)",
    )
    .unwrap();
    first_backup(&c);
    // The first backup finished in the primary's manager too (it reads the repository after
    // the backup: breaking the repository before would fail that backup).
    c.eventually(
        "backups healthy, the first backup done",
        Duration::from_secs(60),
        || {
            let s = c.status();
            (s["backupsHealthy"]["status"] == true && s["backup"]["running"] == false).then_some(())
        },
    );
    let label = std::fs::read_dir(repo.join("default/ur/backup/ur"))
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with('F'))
        .unwrap()
        .file_name();

    // The repository's directory replaced by a file (root ignores chmod): archive-push fails.
    let own = repo.join("default/ur");
    let moved = repo.join("default/ur.moved");
    std::fs::rename(&own, &moved).unwrap();
    std::fs::write(&own, "not a directory").unwrap();
    let broken = Instant::now();
    let mut write = || {
        c.psql(c.rw(), "INSERT INTO noise VALUES (now())").unwrap();
    };
    let seen = wait_archive_failing(&c, &mut write);
    println!(
        "unwritable repository: Degraded/{} in stator status after {:.1} s (2 x archiveTimeout = 10 s): {}",
        seen["backupsHealthy"]["reason"],
        broken.elapsed().as_secs_f64(),
        seen["backupsHealthy"]["message"]
    );
    assert!(
        seen["backup"]["archive"]["pendingFiles"].as_u64().unwrap() > 0,
        "{seen}"
    );
    // pgBackRest's own words say why (the repository's path is a file now).
    c.eventually(
        "the archive's error says why",
        Duration::from_secs(60),
        || {
            write();
            let s = c.status();
            s["backup"]["archive"]["lastError"]
                .as_str()?
                .contains("Not a directory")
                .then_some(())
        },
    );
    let table = c.ok(&["status"]);
    assert!(
        table.contains("BackupsHealthy: False (Archive") && table.contains("lag "),
        "{table}"
    );
    let exposed = c.eventually("the metrics say so", Duration::from_secs(60), || {
        write();
        let m = metrics(&c);
        (m.contains("stator_archive_failing{instance_name=\"ur-0\"} 1")
            && !m.contains("stator_archive_pending_files{instance_name=\"ur-0\"} 0\n"))
        .then_some(m)
    });
    println!(
        "unwritable repository: in /metrics after {:.1} s",
        broken.elapsed().as_secs_f64()
    );
    for name in [
        "stator_archive_pending_bytes",
        "stator_archive_oldest_pending_age_seconds",
        "stator_archive_failures_total",
        "stator_backup_last_timestamp_seconds",
        "stator_data_volume_free_bytes",
    ] {
        assert!(exposed.contains(name), "{name} missing: {exposed}");
    }

    // T inside the outage.
    c.psql(c.rw(), "INSERT INTO t SELECT generate_series(11, 20)")
        .unwrap();
    let (t_text, _, _) = server_now(&c);
    std::thread::sleep(Duration::from_millis(300));
    c.psql(c.rw(), "INSERT INTO t SELECT generate_series(21, 30)")
        .unwrap();
    let (_, written, _) = server_now(&c);

    // Fixed: the archive catches up (nothing was dropped) and the database is healthy again.
    std::fs::remove_file(&own).unwrap();
    std::fs::rename(&moved, &own).unwrap();
    let fixed = Instant::now();
    wait_archived(&c, written);
    c.eventually("healthy again", Duration::from_secs(60), || {
        let s = c.status();
        (s["phase"] == "Ready" && s["backupsHealthy"]["status"] == true).then_some(())
    });
    println!(
        "repository fixed: archive caught up and healthy after {:.1} s",
        fixed.elapsed().as_secs_f64()
    );
    let spec = sibling(&c, "uo", &repo);
    restore_ok(
        &c,
        &["restore", "--from", "ur", "--to-time", &t_text],
        &spec,
        "uo",
        "restore to a time inside the outage",
    );
    assert_eq!(rows_in(&c, &spec), (1..=20).collect::<Vec<_>>());
    cleanup(&c, &spec);

    // A truncated file, a backup without its manifest, a stanza without backup.info: verify
    // fails and a restore refuses, naming the file; nothing is created.
    let backup_dir = own.join("backup/ur");
    let victim = walk(&backup_dir.join(&label))
        .into_iter()
        .filter(|p| p.to_string_lossy().contains("pg_data/base/"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .unwrap();
    let good = std::fs::read(&victim).unwrap();
    let manifest = backup_dir.join(&label).join("backup.manifest");
    let info = backup_dir.join("backup.info");
    let aside = c.dir.path().join("aside");
    std::fs::create_dir_all(&aside).unwrap();
    for (damage, named) in [
        ("truncated", &victim),
        ("no backup.manifest", &manifest),
        ("no backup.info", &info),
    ] {
        // pgBackRest falls back to the `.copy` of a manifest or info file: both go.
        let both = |p: &PathBuf| [p.clone(), PathBuf::from(format!("{}.copy", p.display()))];
        match damage {
            "truncated" => std::fs::write(&victim, &good[..good.len() / 2]).unwrap(),
            _ => {
                for f in both(named) {
                    std::fs::rename(&f, aside.join(f.file_name().unwrap())).unwrap();
                }
            }
        }
        let named_text = named.display().to_string();
        let verify = c.stator(&["backup", "verify"]);
        assert!(!verify.status.success(), "{damage}: {}", text(&verify));
        assert!(
            text(&verify).contains(&named_text),
            "{damage}: names {named_text}: {}",
            text(&verify)
        );
        let spec = sibling(&c, "ud", &repo);
        let out = stator(&c, &["restore", "--from", "ur"], &spec);
        assert!(!out.status.success(), "{damage}: {}", text(&out));
        assert!(
            text(&out).contains(&named_text),
            "{damage}: names {named_text}: {}",
            text(&out)
        );
        assert!(!c.state_dir().join("default/ud").exists(), "{damage}");
        assert!(!repo.join("default/ud").exists(), "{damage}");
        if damage != "no backup.info" {
            // A backup can still be chosen: the restore started, and its verify refused it.
            refused_after_start(&c, &repo, "ud", &text(&out));
        }
        match damage {
            "truncated" => std::fs::write(&victim, &good).unwrap(),
            _ => {
                for f in both(named) {
                    std::fs::rename(aside.join(f.file_name().unwrap()), &f).unwrap();
                }
            }
        }
    }
    let verified = c.ok(&["backup", "verify"]);
    assert!(verified.contains("intact"), "{verified}");
}

/// What `sql` prints, run as root over the socket of sibling MariaDB database `name`'s primary.
fn mariadb_root(c: &Cluster, name: &str, sql: &str) -> String {
    let socket = c.state_dir().join(format!(
        "default/{name}/instances/{name}-0/run/mariadb.sock"
    ));
    let out = std::process::Command::new("mariadb")
        .args(["--no-defaults", "-N", "-B", "-u", "root"])
        .arg(format!("--socket={}", socket.display()))
        .args(["-e", sql])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out), logs_of(c, name));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The ids in table `t` of sibling MariaDB database `name`.
fn mariadb_rows(c: &Cluster, name: &str) -> Vec<i64> {
    mariadb_root(c, name, "SELECT id FROM app.t ORDER BY id")
        .split_whitespace()
        .map(|s| s.parse().unwrap())
        .collect()
}

/// The repository of a MariaDB test: a directory, or a bucket on SeaweedFS (TLS, the keys and
/// the CA in local Secrets of the cluster's state dir). The test reads and damages objects
/// through the engine's own object store, so the same assertions run on both.
struct TestRepo {
    /// The local repository's directory (`spec.backup.repository.local.path`).
    dir: PathBuf,
    s3: Option<local_support::s3::S3Server>,
}

impl TestRepo {
    fn local(c: &Cluster) -> TestRepo {
        TestRepo {
            dir: repository(c),
            s3: None,
        }
    }

    fn s3(c: &Cluster) -> TestRepo {
        let server = local_support::s3::S3Server::start();
        server.write_secrets(&c.state_dir(), "s3-keys", "s3-ca");
        TestRepo {
            dir: repository(c),
            s3: Some(server),
        }
    }

    fn what(&self) -> &'static str {
        if self.s3.is_some() { "S3" } else { "local" }
    }

    /// Its `spec.backup` lines.
    fn spec(&self) -> String {
        match &self.s3 {
            Some(s3) => s3.backup_spec("s3-keys", "s3-ca"),
            None => backup_spec(&self.dir),
        }
    }

    /// The store at the repository root (keys `default/NAME/...`).
    fn store(&self) -> stator_engine::object_store::Store {
        use stator_engine::object_store::{DirStore, S3Store, Store};
        match &self.s3 {
            None => Store::Dir(DirStore {
                root: self.dir.clone(),
            }),
            Some(s3) => {
                let secrets = s3.dir.path().join("client");
                std::fs::create_dir_all(&secrets).unwrap();
                std::fs::copy(s3.ca(), secrets.join("ca.crt")).unwrap();
                for (key, value) in [
                    ("access-key-id", &s3.access_key),
                    ("secret-access-key", &s3.secret_key),
                ] {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::write(secrets.join(key), value).unwrap();
                    std::fs::set_permissions(
                        secrets.join(key),
                        std::fs::Permissions::from_mode(0o600),
                    )
                    .unwrap();
                }
                let settings = stator_engine::postgres::backrest::S3Settings {
                    host: "127.0.0.1".into(),
                    port: s3.port,
                    bucket: local_support::s3::BUCKET.into(),
                    region: "us-east-1".into(),
                    ca_file: Some(secrets.join("ca.crt")),
                    credentials_dir: secrets.clone(),
                };
                let tls = stator_engine::tls::TlsFiles::new(&secrets)
                    .client_config()
                    .unwrap();
                Store::S3(Box::new(
                    S3Store::new(&settings, Path::new("/stator"), tls).unwrap(),
                ))
            }
        }
    }

    fn run<T>(&self, f: impl AsyncFnOnce(&stator_engine::object_store::Store) -> T) -> T {
        let store = self.store();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f(&store))
    }

    /// Where `key` is, as the errors name it: a file's path, or `s3://stator/stator/KEY`.
    fn location(&self, key: &str) -> String {
        use stator_engine::object_store::ObjectStore;
        self.store().location(key)
    }

    fn read(&self, key: &str) -> Option<Vec<u8>> {
        use stator_engine::object_store::ObjectStore;
        self.run(async |s| s.get(key).await.unwrap())
    }

    /// Replaces what is under `key` (the test damaging the repository).
    fn write(&self, key: &str, bytes: &[u8]) {
        use stator_engine::object_store::ObjectStore;
        self.run(async |s| {
            s.delete(key).await.unwrap();
            s.put_if_absent(key, bytes.to_vec()).await.unwrap();
        })
    }

    fn remove(&self, key: &str) {
        use stator_engine::object_store::ObjectStore;
        self.run(async |s| s.delete(key).await.unwrap())
    }

    fn keys(&self, prefix: &str) -> Vec<String> {
        use stator_engine::object_store::ObjectStore;
        self.run(async |s| s.list(prefix).await.unwrap())
    }

    fn holds(&self, prefix: &str) -> bool {
        !self.keys(prefix).is_empty()
    }

    /// The S3 keys, which must never show on a command line or in a log.
    fn secrets(&self) -> Vec<String> {
        self.s3
            .as_ref()
            .map(|s| vec![s.secret_key.clone(), s.access_key.clone()])
            .unwrap_or_default()
    }
}

/// A new 1-instance database `name` sharing `source`'s state dir and `repo`.
fn sibling_in(source: &Cluster, name: &str, repo: &TestRepo) -> PathBuf {
    sibling_with(source, name, &repo.spec(), 1)
}

#[test]
fn mariadb_full_backups_restore_exactly_and_a_damaged_one_is_refused_naming_the_file() {
    let c = Cluster::mariadb("mb", 2);
    let repo = TestRepo::local(&c);
    mariadb_full_backups(c, repo);
}

/// The same on S3 (SeaweedFS, TLS): and a wrong key is refused, naming credentialsSecretName.
#[test]
fn mariadb_full_backups_on_s3_restore_exactly_refuse_a_damaged_one_and_a_wrong_key() {
    let c = Cluster::mariadb("mb", 2);
    let repo = TestRepo::s3(&c);
    mariadb_full_backups(c, repo);
}

fn mariadb_full_backups(c: Cluster, repo: TestRepo) {
    c.write_spec(2, &repo.spec());
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = c.watch_command_lines(stop.clone());
    let s3_stop = Arc::new(AtomicBool::new(false));
    let s3_watcher = local_support::scan_cmdlines(repo.secrets(), s3_stop.clone());
    c.up();
    // The supervisor's schedule takes the first backup at once (none yet means due).
    let scheduled = c.eventually(
        "the scheduled first backup",
        Duration::from_secs(120),
        || listing(&c)["backups"].as_array()?.first().cloned(),
    );
    c.sql(
        c.rw(),
        "CREATE TABLE t (id bigint primary key); INSERT INTO t VALUES (1),(2),(3)",
    )
    .unwrap();
    for rows in ["(4),(5)", "(6)"] {
        std::thread::sleep(Duration::from_millis(1100)); // IDs are per second
        let started = Instant::now();
        let created = c.ok(&["backup", "create"]);
        println!(
            "mariadb backup create (full, from a replica, small database): {:.2} s: {created}",
            started.elapsed().as_secs_f64()
        );
        c.sql(c.rw(), &format!("INSERT INTO t VALUES {rows}"))
            .unwrap();
    }
    // retention.full (2 by default): the scheduled one, the oldest, is gone.
    let backups = listing(&c)["backups"].as_array().unwrap().clone();
    assert_eq!(backups.len(), 2, "{backups:?}");
    assert!(
        !backups.iter().any(|b| b["id"] == scheduled["id"]),
        "{backups:?}"
    );
    let (first, newest) = (&backups[0], &backups[1]);
    assert_eq!(newest["source"], "mb-1", "from the ready replica: {newest}");
    assert!(!newest["gtid"].as_str().unwrap().is_empty(), "{newest}");
    let table = c.ok(&["backup", "list"]);
    assert!(
        table.contains("GTID") && table.contains("recoverable:"),
        "{table}"
    );
    assert!(c.ok(&["backup", "verify"]).contains("intact"));
    assert!(c.ok(&["status"]).contains("last backup:  2"));

    // Each backup's own end, by its ID and its GTID: the restored primary continues the copy's
    // GTID history (no binary log replayed past it).
    for (name, backup, expected) in [
        ("ml", newest, vec![1, 2, 3, 4, 5]),
        ("mf", first, vec![1, 2, 3]),
    ] {
        let spec = sibling_in(&c, name, &repo);
        let (id, gtid) = (
            backup["id"].as_str().unwrap(),
            backup["gtid"].as_str().unwrap(),
        );
        let args = ["restore", "--from", "mb", "--backup", id, "--to-gtid", gtid];
        let what = format!("mariadb restore {name} ({})", repo.what());
        restore_ok(&c, &args, &spec, name, &what);
        assert_eq!(mariadb_rows(&c, name), expected, "{name}");
        assert_eq!(
            mariadb_root(&c, name, "SELECT @@gtid_binlog_pos"),
            gtid,
            "{name}"
        );
        cleanup(&c, &spec);
    }

    // A time target before the first backup: the error names the range.
    let spec = sibling_in(&c, "mo", &repo);
    let out = stator(
        &c,
        &[
            "restore",
            "--from",
            "mb",
            "--to-time",
            "2026-01-01T00:00:00Z",
        ],
        &spec,
    );
    assert!(!out.status.success());
    assert!(
        text(&out).contains("outside the recoverable range of mb")
            && text(&out).contains(first["id"].as_str().unwrap()),
        "{}",
        text(&out)
    );
    assert!(!c.state_dir().join("default/mo").exists());
    assert!(!repo.holds("default/mo/"));
    stop.store(true, Ordering::SeqCst);
    let (scans, found) = watcher.join().unwrap();
    assert!(scans > 0);
    assert!(found.is_empty(), "secrets on command lines: {found:?}");
    s3_stop.store(true, Ordering::SeqCst);
    let (_, found) = s3_watcher.join().unwrap();
    assert!(found.is_empty(), "S3 keys on command lines: {found:?}");

    // A flipped byte, a truncated object, a missing manifest: verify fails and a restore
    // refuses, naming the file; nothing is created.
    let dir = format!("default/mb/full/{}", newest["id"].as_str().unwrap());
    let object = format!("{dir}/full.xbstream.zst");
    if repo.s3.is_none() {
        // The copy holds the password hashes: its owner's alone.
        use std::os::unix::fs::MetadataExt;
        let file = repo.dir.join(&object);
        assert_eq!(std::fs::metadata(&file).unwrap().mode() & 0o777, 0o600);
    }
    let good = repo.read(&object).unwrap();
    let mut flipped = good.clone();
    flipped[good.len() / 2] ^= 0xff;
    let manifest = format!("{dir}/manifest.json");
    let manifest_bytes = repo.read(&manifest).unwrap();
    for (damage, named) in [
        ("flipped", &object),
        ("truncated", &object),
        ("no manifest", &manifest),
    ] {
        match damage {
            "flipped" => repo.write(&object, &flipped),
            "truncated" => repo.write(&object, &good[..good.len() / 2]),
            _ => {
                repo.write(&object, &good);
                repo.remove(&manifest);
            }
        }
        let verify = c.stator(&["backup", "verify"]);
        assert!(!verify.status.success(), "{damage}");
        assert!(
            text(&verify).contains(&repo.location(named)),
            "{damage}: {}",
            text(&verify)
        );
        let out = stator(
            &c,
            &[
                "restore",
                "--from",
                "mb",
                "--backup",
                newest["id"].as_str().unwrap(),
            ],
            &spec,
        );
        assert!(!out.status.success(), "{damage}");
        let said = text(&out);
        assert!(
            said.contains(&repo.location(&object)) || said.contains("not in the repository"),
            "{damage}: {said}"
        );
        assert!(!c.state_dir().join("default/mo").exists(), "{damage}");
        if damage != "no manifest" {
            // Checked as it was restored: the new database was started, then removed again.
            assert!(
                said.contains("default/mo was removed again: nothing was created"),
                "{damage}: {said}"
            );
        }
    }
    // Without its manifest the backup is not listed.
    assert_eq!(listing(&c)["backups"].as_array().unwrap().len(), 1);
    repo.write(&manifest, &manifest_bytes);
    assert_eq!(listing(&c)["backups"].as_array().unwrap().len(), 2);
    if repo.s3.is_none() {
        return;
    }
    let logs = c.all_logs();
    for secret in repo.secrets() {
        assert!(!logs.contains(&secret), "an S3 key in a log");
    }
    // A wrong key: the listing and a restore are refused, naming the Secret; nothing created.
    let s3 = repo.s3.as_ref().unwrap();
    s3.write_keys(&c.state_dir(), "s3-keys", "not-the-key");
    let out = c.stator(&["backup", "list"]);
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    println!("a wrong key: {said}");
    assert!(
        said.contains("403") && said.contains("credentialsSecretName"),
        "{said}"
    );
    assert!(!said.contains("not-the-key"), "{said}");
    let refused = sibling_in(&c, "mw", &repo);
    let out = stator(&c, &["restore", "--from", "mb"], &refused);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("403") && text(&out).contains("credentialsSecretName"),
        "{}",
        text(&out)
    );
    assert!(!c.state_dir().join("default/mw").exists());
}

/// The server's clock through `rw` (seconds since the epoch, and as RFC 3339 in UTC) and its
/// `@@gtid_binlog_pos`.
fn mariadb_now(c: &Cluster) -> (f64, String, String) {
    let v = c
        .value(
            c.rw(),
            "SELECT UNIX_TIMESTAMP(NOW(6)), DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%dT%H:%i:%s.%fZ'), @@gtid_binlog_pos",
        )
        .unwrap();
    let parts: Vec<&str> = v.split('|').collect();
    (
        parts[0].parse().unwrap(),
        parts[1].to_string(),
        parts[2].to_string(),
    )
}

/// `INSERT INTO t` of ids `from..=to` through `rw`.
fn mariadb_insert(c: &Cluster, from: i64, to: i64) {
    let values: Vec<String> = (from..=to).map(|i| format!("({i})")).collect();
    c.sql(
        c.rw(),
        &format!("INSERT INTO t VALUES {}", values.join(",")),
    )
    .unwrap();
}

/// Waits until the binlog archive covers `after` (the server's clock): a binary log closed
/// later holds everything logged before it.
///
/// Or once the archive holds every transaction the server had logged when this was called
/// (the test writes nothing meanwhile): a log's close time has a one-second resolution, so a
/// flush in the same second as `after` reads as no later than it, and with no write after it
/// no later log ever came (CI: 60 s of waiting, on a directory and on S3).
fn wait_binlogs_archived(c: &Cluster, after: f64) -> serde_json::Value {
    let logged = c
        .value(c.rw(), "SELECT @@gtid_binlog_pos")
        .unwrap_or_default();
    c.eventually(
        "the binary logs after T are archived",
        Duration::from_secs(60),
        || {
            let r = listing(c)["recoverable"].clone();
            let covered = gtid_covers(r["latestGtid"].as_str().unwrap_or(""), &logged);
            (covered || r["latestTime"].as_f64()? > after).then_some(r)
        },
    )
}

/// The archive's latest GTID holds every transaction of `logged` (both MariaDB GTID
/// positions); false when `logged` holds nothing or either cannot be read.
fn gtid_covers(archived: &str, logged: &str) -> bool {
    use stator_api::position::MariadbGtidPosition;
    match (
        archived.parse::<MariadbGtidPosition>(),
        logged.parse::<MariadbGtidPosition>(),
    ) {
        (Ok(archived), Ok(logged)) => !logged.is_empty() && logged.is_subset_of(&archived),
        _ => false,
    }
}

/// Rows written, T marked on the server clock with 2 s of quiet around it, more rows; the
/// primary dies and the replica takes over (a new term of the archive), T2 marked the same way.
/// Restores to T (before the failover), to its GTID, to T2 (after it) and to the latest point
/// hold exactly the rows committed by then; targets outside the range are refused naming it; a
/// flipped byte in an archived binary log fails verify and the restore, naming the file.
#[test]
fn mariadb_binlog_archive_restores_to_a_time_or_gtid_exactly_across_a_failover() {
    let c = Cluster::mariadb("mp", 2);
    let repo = TestRepo::local(&c);
    mariadb_binlog_archive(c, repo);
}

/// The same with the repository on S3 (SeaweedFS, TLS).
#[test]
fn mariadb_binlog_archive_on_s3_restores_to_a_time_or_gtid_exactly_across_a_failover() {
    let c = Cluster::mariadb("mp", 2);
    let repo = TestRepo::s3(&c);
    mariadb_binlog_archive(c, repo);
}

fn mariadb_binlog_archive(c: Cluster, repo: TestRepo) {
    c.write_spec(2, &repo.spec());
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = c.watch_command_lines(stop.clone());
    c.up();
    c.eventually(
        "the scheduled first backup",
        Duration::from_secs(120),
        || listing(&c)["backups"].as_array()?.first().cloned(),
    );
    c.sql(c.rw(), "CREATE TABLE t (id bigint primary key)")
        .unwrap();
    mariadb_insert(&c, 1, 10);
    std::thread::sleep(Duration::from_secs(2));
    let (_, t1_text, g1) = mariadb_now(&c);
    std::thread::sleep(Duration::from_secs(2));
    mariadb_insert(&c, 11, 20);
    let (written, _, _) = mariadb_now(&c);
    wait_binlogs_archived(&c, written);
    // The archive as the primary's manager reports it.
    let archive = c.eventually("the archive in status", Duration::from_secs(30), || {
        let a = c.status()["backup"]["archive"].clone();
        (a["lastSuccess"].as_f64()? > 0.0).then_some(a)
    });
    assert_eq!(archive["term"], 1, "{archive}");
    assert!(archive["failing"].is_null(), "{archive}");
    let shown = c.ok(&["status"]);
    assert!(shown.contains("archive:      last success 2"), "{shown}");

    // Purge: a second full backup holds rows 1..20; writes after it (to another table) close
    // three more binary logs. The archived logs inside that backup leave the primary; the one
    // that was being written during the backup holds a later write and stays, and so does every
    // later one.
    c.eventually(
        "the replica holds rows 1..20",
        Duration::from_secs(60),
        || (c.value(c.ro(), "SELECT count(*) FROM t").ok()? == "20").then_some(()),
    );
    let before = binlog_names(&c, 0);
    c.ok(&["backup", "create"]);
    c.sql(c.rw(), "CREATE TABLE u (id bigint primary key)")
        .unwrap();
    for i in 1..=3 {
        std::thread::sleep(Duration::from_millis(1500));
        c.sql(c.rw(), &format!("INSERT INTO u VALUES ({i})"))
            .unwrap();
    }
    let (written, _, _) = mariadb_now(&c);
    wait_binlogs_archived(&c, written);
    let (inside, during) = before.split_at(before.len() - 1);
    let left = c.eventually(
        "the archived binary logs inside the backup are purged",
        Duration::from_secs(30),
        || {
            let now = binlog_names(&c, 0);
            (!now.iter().any(|n| inside.contains(n))).then_some(now)
        },
    );
    println!("binary logs before the backup {before:?}, after the purge {left:?}");
    assert_eq!(left.first(), during.first(), "{before:?} -> {left:?}");

    // The primary dies once the replica holds every row; mp-1 takes over: term 2.
    c.eventually(
        "the replica holds rows 1..20",
        Duration::from_secs(60),
        || (c.value(c.ro(), "SELECT count(*) FROM t").ok()? == "20").then_some(()),
    );
    c.hold_and_kill(0);
    c.eventually(
        "mp-1 is the writable primary",
        Duration::from_secs(120),
        || {
            (c.core_primary().as_deref() == Some("mp-1")
                && c.sql(c.rw(), "INSERT INTO t VALUES (21)").is_ok())
            .then_some(())
        },
    );
    mariadb_insert(&c, 22, 30);
    std::thread::sleep(Duration::from_secs(2));
    let (_, t2_text, _) = mariadb_now(&c);
    std::thread::sleep(Duration::from_secs(2));
    mariadb_insert(&c, 31, 40);
    let (written, _, _) = mariadb_now(&c);
    let range = wait_binlogs_archived(&c, written);
    println!("recoverable after the failover: {range}");
    let terms = listing(&c)["binlogTerms"].clone();
    assert_eq!(terms.as_array().map(Vec::len), Some(2), "{terms}");
    assert_eq!(terms[1]["instance"], "mp-1", "{terms}");
    let table = c.ok(&["backup", "list"]);
    assert!(
        table.contains("binlog archive:")
            && table.contains(&format!("GTID {}", range["latestGtid"].as_str().unwrap())),
        "{table}"
    );
    let verified = c.ok(&["backup", "verify"]);
    assert!(
        verified.contains("binlog term 2") && verified.contains("intact"),
        "{verified}"
    );

    for (name, flag, target, expected) in [
        ("pa", Some("--to-time"), t1_text.as_str(), 10),
        ("pg", Some("--to-gtid"), g1.as_str(), 10),
        ("pb", Some("--to-time"), t2_text.as_str(), 30),
        ("pl", None, "latest", 40),
    ] {
        let spec = sibling_in(&c, name, &repo);
        let mut args = vec!["restore", "--from", "mp"];
        if let Some(flag) = flag {
            args.extend([flag, target]);
        }
        restore_ok(
            &c,
            &args,
            &spec,
            name,
            &format!(
                "mariadb point-in-time restore {name} (to {target}, {})",
                repo.what()
            ),
        );
        assert_eq!(
            mariadb_rows(&c, name),
            (1..=expected).collect::<Vec<_>>(),
            "{name}: to {target}"
        );
        if name == "pg" {
            assert_eq!(mariadb_root(&c, name, "SELECT @@gtid_binlog_pos"), g1);
        }
        if name == "pb" {
            // Term 1's binary logs up to the promotion GTID, then term 2's: two replays.
            let logs: String = walk(&c.state_dir().join("default").join(name))
                .into_iter()
                .filter(|f| f.extension().is_some_and(|e| e == "log"))
                .map(|f| std::fs::read_to_string(f).unwrap_or_default())
                .collect();
            assert!(logs.contains("replays=2"), "{}", logs_of(&c, name));
        }
        cleanup(&c, &spec);
    }

    // Outside the recoverable range (before the first backup, after the last archive): the
    // error names the range, and nothing is created.
    for target in ["2001-01-01T00:00:00Z", "2099-01-01T00:00:00Z"] {
        let spec = sibling_in(&c, "po", &repo);
        let out = stator(&c, &["restore", "--from", "mp", "--to-time", target], &spec);
        assert!(!out.status.success(), "{target}");
        let said = text(&out);
        assert!(
            said.contains("outside the recoverable range of mp") && said.contains(" .. "),
            "{said}"
        );
        assert!(!c.state_dir().join("default/po").exists(), "{target}");
        assert!(!repo.holds("default/po/"), "{target}");
    }
    stop.store(true, Ordering::SeqCst);
    let (scans, found) = watcher.join().unwrap();
    assert!(scans > 0);
    assert!(found.is_empty(), "secrets on command lines: {found:?}");

    // A flipped byte in an archived binary log of term 2: verify fails and a restore after the
    // failover refuses, naming the file; nothing is created. The victim must be a log the
    // restore replays: one holding a transaction term 2 itself wrote (its record lists the
    // writing server), not one of mp-1's logs from before its promotion, which hold only term
    // 1's replicated transactions that the replay takes from term 1 (picking the largest log
    // picked one of those whenever the rotation fell that way, and the restore rightly passed).
    let victim = repo
        .keys("default/mp/binlog/000002-")
        .into_iter()
        .filter(|k| k.ends_with(".zst"))
        .filter(|k| {
            let record: serde_json::Value = serde_json::from_slice(
                &repo
                    .read(&format!("{}.json", k.trim_end_matches(".zst")))
                    .unwrap(),
            )
            .unwrap();
            record["transactions"]
                .as_array()
                .is_some_and(|t| t.iter().any(|gtid| gtid[1] == record["serverId"]))
        })
        .max_by_key(|k| repo.read(k).map_or(0, |b| b.len()))
        .expect("an archived binary log holding a transaction of term 2");
    let mut bytes = repo.read(&victim).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    repo.write(&victim, &bytes);
    let named = repo.location(&victim);
    let verify = c.stator(&["backup", "verify"]);
    assert!(!verify.status.success(), "{}", text(&verify));
    assert!(text(&verify).contains(&named), "{}", text(&verify));
    let spec = sibling_in(&c, "pc", &repo);
    let out = stator(&c, &["restore", "--from", "mp"], &spec);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&named), "{}", text(&out));
    assert!(!c.state_dir().join("default/pc").exists());

    // The key of the binary log mp-1 writes now already holds another log (a reused name):
    // once it is closed, archiving it is refused and the state says ArchiveFailing.
    let active = c
        .root_sql(1, "SHOW BINARY LOGS")
        .unwrap()
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_string();
    let zeros = "0".repeat(64);
    repo.write(
        &format!("default/mp/binlog/000002-1001/{active}.json"),
        format!(
            "{{\"term\":2,\"serverId\":1001,\"file\":\"{active}\",\"size\":1,\"sha256\":\"{zeros}\",\"sourceSize\":1,\"sourceSha256\":\"{zeros}\",\"closed\":0,\"transactions\":[]}}"
        )
        .as_bytes(),
    );
    mariadb_insert(&c, 41, 41);
    let failing = c.eventually("ArchiveFailing in status", Duration::from_secs(30), || {
        c.status()["backup"]["archive"]["failing"]
            .as_str()
            .map(str::to_string)
    });
    assert!(
        failing.contains(&format!("000002-1001/{active}")),
        "{failing}"
    );
    let shown = c.ok(&["status"]);
    assert!(shown.contains("ArchiveFailing"), "{shown}");
    // The unarchived log stays on the server, behind newer ones.
    mariadb_insert(&c, 42, 42);
    std::thread::sleep(Duration::from_secs(3));
    let names = binlog_names(&c, 1);
    assert!(
        names.contains(&active) && names.last() != Some(&active),
        "{active} in {names:?}"
    );
}

/// A MariaDB repository made unwritable (its directory replaced by a file, since root ignores
/// chmod; on S3 the server stopped): the status says so (Degraded, BackupsHealthy Archive…)
/// within 2×archiveTimeout; the binary logs wait on the server; once fixed the archive catches
/// up and a restore to a time inside the outage holds exactly the rows committed before it.
#[test]
fn mariadb_an_unwritable_repository_degrades_the_database_and_the_archive_catches_up() {
    let c = Cluster::mariadb("mu", 1);
    let repo = TestRepo::local(&c);
    mariadb_unwritable(c, repo);
}

#[test]
fn mariadb_an_unwritable_s3_repository_degrades_the_database_and_the_archive_catches_up() {
    let c = Cluster::mariadb("mu", 1);
    let repo = TestRepo::s3(&c);
    mariadb_unwritable(c, repo);
}

fn mariadb_unwritable(c: Cluster, mut repo: TestRepo) {
    c.write_spec(
        1,
        &repo
            .spec()
            .replace("archiveTimeout: 1s", "archiveTimeout: 5s"),
    );
    c.up();
    c.eventually(
        "the scheduled first backup",
        Duration::from_secs(120),
        || listing(&c)["backups"].as_array()?.first().cloned(),
    );
    c.sql(c.rw(), "CREATE TABLE t (id bigint primary key)")
        .unwrap();
    mariadb_insert(&c, 1, 10);
    let (written, _, _) = mariadb_now(&c);
    wait_binlogs_archived(&c, written);
    c.eventually(
        "backups healthy, the first backup done",
        Duration::from_secs(60),
        || {
            let s = c.status();
            (s["backupsHealthy"]["status"] == true && s["backup"]["running"] == false).then_some(())
        },
    );

    let own = repo.dir.join("default/mu");
    let moved = repo.dir.join("default/mu.moved");
    match repo.s3.as_mut() {
        Some(s3) => s3.stop(),
        None => {
            std::fs::rename(&own, &moved).unwrap();
            std::fs::write(&own, "not a directory").unwrap();
        }
    }
    let broken = Instant::now();
    let mut n = 100;
    let mut write = || {
        n += 1;
        c.sql(c.rw(), &format!("CREATE TABLE IF NOT EXISTS noise (id bigint primary key); INSERT INTO noise VALUES ({n})"))
            .unwrap();
    };
    let seen = wait_archive_failing(&c, &mut write);
    println!(
        "unwritable MariaDB repository ({}): Degraded/{} in stator status after {:.1} s (2 x archiveTimeout = 10 s): {}; last error: {}",
        repo.what(),
        seen["backupsHealthy"]["reason"],
        broken.elapsed().as_secs_f64(),
        seen["backupsHealthy"]["message"],
        seen["backup"]["archive"]["lastError"]
    );
    // The binary logs closed meanwhile wait on the server and show as pending.
    let pending = c.eventually(
        "the closed binary logs show as pending",
        Duration::from_secs(60),
        || {
            write();
            let a = c.status()["backup"]["archive"].clone();
            (a["pendingFiles"].as_u64()? > 0).then_some(a)
        },
    );
    println!(
        "pending after {:.1} s: {} files, {} bytes",
        broken.elapsed().as_secs_f64(),
        pending["pendingFiles"],
        pending["pendingBytes"]
    );

    // T inside the outage, with 2 s of quiet around it.
    mariadb_insert(&c, 11, 20);
    std::thread::sleep(Duration::from_secs(2));
    let (_, t_text, _) = mariadb_now(&c);
    std::thread::sleep(Duration::from_secs(2));
    mariadb_insert(&c, 21, 30);
    let (written, _, _) = mariadb_now(&c);

    // Fixed: the archive catches up (nothing was dropped) and the database is healthy again.
    match repo.s3.as_mut() {
        Some(s3) => s3.restart(),
        None => {
            std::fs::remove_file(&own).unwrap();
            std::fs::rename(&moved, &own).unwrap();
        }
    }
    let fixed = Instant::now();
    wait_binlogs_archived(&c, written);
    c.eventually("healthy again", Duration::from_secs(60), || {
        let s = c.status();
        (s["phase"] == "Ready" && s["backupsHealthy"]["status"] == true).then_some(())
    });
    println!(
        "repository fixed ({}): archive caught up and healthy after {:.1} s",
        repo.what(),
        fixed.elapsed().as_secs_f64()
    );
    let spec = sibling_in(&c, "mv", &repo);
    restore_ok(
        &c,
        &["restore", "--from", "mu", "--to-time", &t_text],
        &spec,
        "mv",
        &format!(
            "mariadb restore to a time inside the outage ({})",
            repo.what()
        ),
    );
    assert_eq!(mariadb_rows(&c, "mv"), (1..=20).collect::<Vec<_>>());
    cleanup(&c, &spec);
}

/// The binary logs `SHOW BINARY LOGS` lists on instance `ordinal`, oldest first.
fn binlog_names(c: &Cluster, ordinal: u32) -> Vec<String> {
    c.root_sql(ordinal, "SHOW BINARY LOGS")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// PostgreSQL with its repository in S3 (SeaweedFS on 127.0.0.1, TLS): `pgbackrest.conf`
/// (0600) names the bucket and holds the keys, which never reach a command line or a log; the
/// marker ties `/stator/default/s3pg` to the database; restores to T and to the latest point
/// hold exactly the rows committed before them; a wrong key is refused, naming the Secret, and
/// nothing is created.
#[test]
fn an_s3_repository_restores_to_a_time_and_to_the_latest_point_and_refuses_a_wrong_key() {
    let s3 = local_support::s3::S3Server::start();
    let c = Cluster::new("s3pg", 2);
    s3.write_secrets(&c.state_dir(), "s3-keys", "s3-ca");
    let backup = s3.backup_spec("s3-keys", "s3-ca");
    c.write_spec(2, &backup);
    let stop = Arc::new(AtomicBool::new(false));
    let secrets = vec![s3.secret_key.clone(), s3.access_key.clone()];
    let watcher = local_support::scan_cmdlines(secrets, stop.clone());
    c.up();

    let conf = walk(&c.db_dir())
        .into_iter()
        .find(|p| p.ends_with("pgbackrest.conf"))
        .expect("a pgbackrest.conf");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&conf).unwrap().mode() & 0o777, 0o600);
    let conf_text = std::fs::read_to_string(&conf).unwrap();
    for line in [
        "repo1-type=s3".to_string(),
        format!("repo1-storage-port={}", s3.port),
        "repo1-s3-uri-style=path".into(),
        "repo1-path=/stator/default/s3pg".into(),
        format!("repo1-s3-key-secret={}", s3.secret_key),
    ] {
        assert!(conf_text.contains(&line), "{line} not in {conf_text}");
    }

    c.psql(
        c.rw(),
        "CREATE TABLE t (id bigint primary key); INSERT INTO t SELECT generate_series(1, 10)",
    )
    .unwrap();
    let started = Instant::now();
    first_backup(&c);
    println!(
        "first backup to S3 (scheduled, waited for): {:.2} s",
        started.elapsed().as_secs_f64()
    );
    c.psql(c.rw(), "INSERT INTO t SELECT generate_series(11, 20)")
        .unwrap();
    let (t_text, t_epoch, _) = server_now(&c);
    std::thread::sleep(Duration::from_millis(300));
    c.psql(c.rw(), "INSERT INTO t SELECT generate_series(21, 30)")
        .unwrap();
    wait_archived(&c, t_epoch);
    let verified = c.ok(&["backup", "verify"]);
    assert!(verified.contains("intact"), "{verified}");

    let by_time = sibling_with(&c, "s3t", &backup, 1);
    restore_ok(
        &c,
        &["restore", "--from", "s3pg", "--to-time", &t_text],
        &by_time,
        "s3t",
        "restore from S3 to a time",
    );
    assert_eq!(rows_in(&c, &by_time), (1..=20).collect::<Vec<_>>());
    cleanup(&c, &by_time);
    let latest = sibling_with(&c, "s3l", &backup, 1);
    restore_ok(
        &c,
        &["restore", "--from", "s3pg"],
        &latest,
        "s3l",
        "restore from S3 to the latest point",
    );
    assert_eq!(rows_in(&c, &latest), (1..=30).collect::<Vec<_>>());
    cleanup(&c, &latest);

    stop.store(true, Ordering::SeqCst);
    let found = watcher.join().unwrap();
    assert!(found.0 > 0);
    assert!(
        found.1.is_empty(),
        "S3 keys on command lines: {:?}",
        found.1
    );
    let logs = c.all_logs() + &logs_of(&c, "s3t") + &logs_of(&c, "s3l");
    assert!(!logs.contains(&s3.secret_key), "the secret key in a log");

    // A wrong key: the listing and a restore are refused, naming the Secret; nothing created.
    s3.write_keys(&c.state_dir(), "s3-keys", "not-the-key");
    let out = c.stator(&["backup", "list"]);
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    println!("a wrong key: {said}");
    assert!(
        said.contains("403") && said.contains("credentialsSecretName"),
        "{said}"
    );
    let refused = sibling_with(&c, "s3w", &backup, 1);
    let out = stator(&c, &["restore", "--from", "s3pg"], &refused);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("403"), "{}", text(&out));
    assert!(!c.state_dir().join("default/s3w").exists());
}

/// The repository storage a MariaDB repository moves onto (`stator_engine::object_store`): on a
/// directory and on S3 (SeaweedFS, TLS), a key is written only when absent (S3: one `PUT` with
/// `If-None-Match: *`), so different content under it is never stored; get, list and delete
/// behave alike; a wrong key is refused with HTTP 403, naming the Secret.
#[test]
fn the_object_stores_write_a_key_only_once_on_a_directory_and_on_s3() {
    use stator_engine::object_store::{DirStore, ObjectStore, Put, S3Store};
    async fn exercise(store: &impl ObjectStore, what: &str) {
        assert_eq!(store.get("b/1.json").await.unwrap(), None, "{what}");
        assert_eq!(
            store
                .put_if_absent("b/1.json", b"one".to_vec())
                .await
                .unwrap(),
            Put::Written,
            "{what}"
        );
        assert_eq!(
            store
                .put_if_absent("b/1.json", b"two".to_vec())
                .await
                .unwrap(),
            Put::Exists,
            "{what}: a second put under a key changes nothing"
        );
        assert_eq!(
            store.get("b/1.json").await.unwrap().as_deref(),
            Some(&b"one"[..]),
            "{what}"
        );
        store
            .put_if_absent("b/2.json", b"2".to_vec())
            .await
            .unwrap();
        store
            .put_if_absent("c/3.json", b"3".to_vec())
            .await
            .unwrap();
        assert_eq!(
            store.list("b").await.unwrap(),
            vec!["b/1.json".to_string(), "b/2.json".into()],
            "{what}"
        );
        store.delete("b/1.json").await.unwrap();
        assert_eq!(store.get("b/1.json").await.unwrap(), None, "{what}");
        assert_eq!(
            store
                .put_if_absent("b/1.json", b"three".to_vec())
                .await
                .unwrap(),
            Put::Written,
            "{what}: a deleted key can be written again"
        );
    }
    let s3 = local_support::s3::S3Server::start();
    let state = s3.dir.path().join("state");
    s3.write_secrets(&state, "s3-keys", "s3-ca");
    let secrets = state.join("default/.secrets");
    let settings = stator_engine::postgres::backrest::S3Settings {
        host: "127.0.0.1".into(),
        port: s3.port,
        bucket: local_support::s3::BUCKET.into(),
        region: "us-east-1".into(),
        ca_file: None,
        credentials_dir: secrets.join("s3-keys"),
    };
    let tls = stator_engine::tls::TlsFiles::new(secrets.join("s3-ca"))
        .client_config()
        .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        exercise(
            &DirStore {
                root: dir.path().to_path_buf(),
            },
            "directory",
        )
        .await;
        println!("directory store: {:.3} s", started.elapsed().as_secs_f64());
        let store = S3Store::new(&settings, Path::new("/stator/default/md"), tls.clone()).unwrap();
        let started = Instant::now();
        exercise(&store, "S3").await;
        println!("S3 store: {:.3} s", started.elapsed().as_secs_f64());
        // Another database's prefix sees none of it.
        let other =
            S3Store::new(&settings, Path::new("/stator/default/other"), tls.clone()).unwrap();
        assert!(other.list("b").await.unwrap().is_empty());

        s3.write_keys(&state, "s3-keys", "not-the-key");
        let wrong = S3Store::new(&settings, Path::new("/stator/default/md"), tls).unwrap();
        let e = wrong
            .put_if_absent("b/9.json", b"9".to_vec())
            .await
            .unwrap_err();
        println!("a wrong key: {e}");
        assert!(
            e.contains("403") && e.contains("credentialsSecretName"),
            "{e}"
        );
        assert!(
            !e.contains("not-the-key") && !e.contains("X-Amz-Signature"),
            "{e}"
        );
    });
}

/// Writes the local Secret `name` (`STATE/default/.secrets/NAME/passphrase`, 0600, its
/// directories 0700) holding `passphrase`.
fn write_passphrase(c: &Cluster, name: &str, passphrase: &str) {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let secrets = c.state_dir().join("default/.secrets");
    let dir = secrets.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    for d in [&secrets, &dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let file = dir.join("passphrase");
    let _ = std::fs::remove_file(&file);
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
        .unwrap()
        .write_all(format!("{passphrase}\n").as_bytes())
        .unwrap();
}

/// `spec.backup` on the local repository `repo`, uncompressed (so that only the encryption
/// stands between a row's bytes and the repository's files), encrypted with the Secret `key`.
fn encrypted_spec(repo: &Path, key: Option<&str>) -> String {
    let mut spec = backup_spec(repo) + "    compression: none\n";
    if let Some(key) = key {
        spec.push_str(&format!("    encryption:\n      secretName: {key}\n"));
    }
    spec
}

/// A row value no file of an encrypted repository may show.
const PLAIN_ROW: &str = "stator-plaintext-row-5b1e0c";

#[test]
fn an_encrypted_repository_restores_to_a_time_exactly_and_holds_no_plaintext_or_passphrase() {
    let c = Cluster::new("enc", 1);
    let repo = repository(&c);
    let passphrase = "enc-passphrase-7d3f9a1c0b";
    let backup = encrypted_spec(&repo, Some("backup-key"));
    c.write_spec(1, &backup);

    // No Secret yet: refused naming the field and the file expected; nothing created.
    let out = c.stator(&["up"]);
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    println!("the passphrase missing: {said}");
    let expected = c.state_dir().join("default/.secrets/backup-key/passphrase");
    assert!(
        said.contains("spec.backup.encryption.secretName")
            && said.contains(&expected.display().to_string()),
        "{said}"
    );
    assert!(!c.db_dir().exists(), "nothing created");
    assert!(!repo.join("default/enc").exists(), "nothing created");

    write_passphrase(&c, "backup-key", passphrase);
    let stop = Arc::new(AtomicBool::new(false));
    let argv_watcher = local_support::scan_cmdlines(vec![passphrase.to_string()], stop.clone());
    let watcher = c.watch_command_lines(stop.clone());
    c.up();

    // The passphrase is in the 0600 pgbackrest.conf only.
    let conf = walk(&c.db_dir())
        .into_iter()
        .find(|p| p.ends_with("pgbackrest.conf"))
        .expect("a pgbackrest.conf");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&conf).unwrap().mode() & 0o777, 0o600);
    let conf_text = std::fs::read_to_string(&conf).unwrap();
    for line in [
        "repo1-cipher-type=aes-256-cbc\n".to_string(),
        format!("repo1-cipher-pass={passphrase}\n"),
        "compress-type=none\n".into(),
    ] {
        assert!(conf_text.contains(&line), "{line:?} not in {conf_text}");
    }

    c.psql(
        c.rw(),
        &format!(
            "CREATE TABLE t (id bigint primary key, v text); INSERT INTO t SELECT i, '{PLAIN_ROW}' FROM generate_series(1, 10) i"
        ),
    )
    .unwrap();
    first_backup(&c);
    c.psql(
        c.rw(),
        &format!("INSERT INTO t SELECT i, '{PLAIN_ROW}' FROM generate_series(11, 20) i"),
    )
    .unwrap();
    let (t_text, t_epoch, _) = server_now(&c);
    std::thread::sleep(Duration::from_millis(300));
    c.psql(
        c.rw(),
        &format!("INSERT INTO t SELECT i, '{PLAIN_ROW}' FROM generate_series(21, 30) i"),
    )
    .unwrap();
    wait_archived(&c, t_epoch);
    let list = c.ok(&["backup", "list"]);
    assert!(list.contains("full"), "{list}");
    let verified = c.ok(&["backup", "verify"]);
    assert!(verified.contains("intact"), "{verified}");

    // Every file pgBackRest wrote is OpenSSL ciphertext (`Salted__`): the info files, the
    // manifest, the backup's files and the archived WAL; no file holds the row's bytes (the
    // repository is uncompressed: without encryption they would be there).
    let stanza_files: Vec<PathBuf> = walk(&repo.join("default/enc"))
        .into_iter()
        .filter(|p| !p.ends_with("stator-repository.json"))
        .filter(|p| std::fs::metadata(p).map(|m| m.len() > 0).unwrap_or(false))
        .collect();
    let of_kind = |what: &str| {
        stanza_files
            .iter()
            .filter(|p| p.to_string_lossy().contains(what))
            .count()
    };
    for what in [
        "backup.info",
        "archive.info",
        "backup.manifest",
        "pg_data/base/",
        "archive/enc/15-1/",
    ] {
        assert!(of_kind(what) > 0, "no {what} in {stanza_files:?}");
    }
    let mut checked = 0;
    for file in &stanza_files {
        // The archive keeps going: a temporary file may be renamed away meanwhile.
        let Ok(bytes) = std::fs::read(file) else {
            continue;
        };
        checked += 1;
        assert!(
            bytes.starts_with(b"Salted__"),
            "{} is not encrypted",
            file.display()
        );
        assert!(
            !bytes
                .windows(PLAIN_ROW.len())
                .any(|w| w == PLAIN_ROW.as_bytes()),
            "{} holds a row in plain text",
            file.display()
        );
    }
    println!("{checked} files in the repository, all encrypted");
    // pgBackRest itself, without the passphrase, cannot read the repository.
    let plain = std::process::Command::new("/usr/bin/pgbackrest")
        .arg("--config=/dev/null")
        .arg(format!(
            "--repo1-path={}",
            repo.join("default/enc").display()
        ))
        .args([
            "--stanza=enc",
            "--log-level-file=off",
            "info",
            "--output=json",
        ])
        .output()
        .unwrap();
    let plain = String::from_utf8_lossy(&plain.stdout);
    assert!(
        plain.contains("unable to load info file") && !plain.contains("\"label\""),
        "{plain}"
    );

    // Restored to T with the same Secret: rows 1..20, not 21..30.
    let by_time = sibling_with(&c, "et", &backup, 1);
    restore_ok(
        &c,
        &["restore", "--from", "enc", "--to-time", &t_text],
        &by_time,
        "et",
        "restore from an encrypted repository to a time",
    );
    assert_eq!(rows_in(&c, &by_time), (1..=20).collect::<Vec<_>>());
    cleanup(&c, &by_time);

    stop.store(true, Ordering::SeqCst);
    let (scans, found) = argv_watcher.join().unwrap();
    assert!(scans > 0);
    assert!(
        found.is_empty(),
        "the passphrase on a command line: {found:?}"
    );
    let (scans, found) = watcher.join().unwrap();
    assert!(scans > 0);
    assert!(found.is_empty(), "secrets on command lines: {found:?}");

    // Nowhere but in the Secret and the 0600 pgbackrest.conf: no log, no spec.json, no status.
    let status = c.ok(&["status", "-o", "json"]);
    assert!(!status.contains(passphrase), "the passphrase in status");
    for file in walk(&c.state_dir()) {
        let Ok(bytes) = std::fs::read(&file) else {
            continue;
        };
        if bytes
            .windows(passphrase.len())
            .any(|w| w == passphrase.as_bytes())
        {
            let mode = std::fs::metadata(&file).unwrap().mode() & 0o777;
            assert!(
                file.ends_with(".secrets/backup-key/passphrase")
                    || file.ends_with("pgbackrest.conf") && mode == 0o600,
                "the passphrase in {} (mode {mode:o})",
                file.display()
            );
        }
    }

    // A passphrase that does not decrypt it, or none: refused saying so, nothing created.
    write_passphrase(&c, "other-key", "not-the-passphrase");
    for (name, spec, expected) in [
        (
            "ew",
            encrypted_spec(&repo, Some("other-key")),
            "does not decrypt it",
        ),
        (
            "en",
            backup_spec(&repo),
            "spec.backup.encryption is not set",
        ),
    ] {
        let spec = sibling_with(&c, name, &spec, 1);
        let out = stator(
            &c,
            &["restore", "--from", "enc", "--to-time", &t_text],
            &spec,
        );
        assert!(!out.status.success(), "{}", text(&out));
        let said = text(&out);
        println!("restore {name}: {said}");
        assert!(
            said.contains(expected) && said.contains("spec.backup.encryption"),
            "{said}"
        );
        assert!(said.contains("nothing was created"), "{said}");
        assert!(!said.contains("not-the-passphrase") && !said.contains(passphrase));
        assert!(!c.state_dir().join("default").join(name).exists());
        assert!(!repo.join("default").join(name).exists());
    }
    // `backup list` with the wrong passphrase says so too.
    write_passphrase(&c, "backup-key", "not-the-passphrase");
    let out = c.stator(&["backup", "list"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("does not decrypt it"), "{}", text(&out));
}

/// The objects of an S3 repository as stored: `pgbackrest repo-get --raw` of each of `paths`
/// (relative to the database's repository path) with a configuration that has the bucket's
/// keys and no passphrase.
fn s3_objects_as_stored(
    s3: &local_support::s3::S3Server,
    repo_path: &str,
    stanza: &str,
    paths: &[String],
) -> Vec<(String, Vec<u8>)> {
    use std::os::unix::fs::OpenOptionsExt;
    let config = s3.dir.path().join(format!("raw-{stanza}.conf"));
    let conf = format!(
        "[global]\nrepo1-type=s3\nrepo1-s3-endpoint=127.0.0.1\nrepo1-storage-port={}\nrepo1-s3-bucket={}\nrepo1-s3-region=us-east-1\nrepo1-s3-uri-style=path\nrepo1-s3-key={}\nrepo1-s3-key-secret={}\nrepo1-storage-ca-file={}\nrepo1-path={repo_path}\nlog-level-file=off\n",
        s3.port,
        local_support::s3::BUCKET,
        s3.access_key,
        s3.secret_key,
        s3.ca().display()
    );
    use std::io::Write;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&config)
        .unwrap()
        .write_all(conf.as_bytes())
        .unwrap();
    let pgbackrest = |args: &[&str]| {
        std::process::Command::new("/usr/bin/pgbackrest")
            .arg(format!("--config={}", config.display()))
            .arg(format!("--stanza={stanza}"))
            .args(args)
            .output()
            .unwrap()
    };
    let mut out = Vec::new();
    for path in paths {
        let got = pgbackrest(&["repo-get", "--raw", path]);
        assert!(got.status.success(), "repo-get {path}: {}", text(&got));
        out.push((path.clone(), got.stdout));
    }
    out
}

#[test]
fn an_encrypted_s3_repository_restores_to_a_time_exactly_and_stores_only_ciphertext() {
    let s3 = local_support::s3::S3Server::start();
    let c = Cluster::new("encs3", 2);
    s3.write_secrets(&c.state_dir(), "s3-keys", "s3-ca");
    let passphrase = "s3-passphrase-41c8e07d";
    write_passphrase(&c, "backup-key", passphrase);
    let backup = s3.backup_spec("s3-keys", "s3-ca")
        + "    compression: none\n    encryption:\n      secretName: backup-key\n";
    c.write_spec(2, &backup);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = local_support::scan_cmdlines(
        vec![passphrase.to_string(), s3.secret_key.clone()],
        stop.clone(),
    );
    c.up();

    c.psql(
        c.rw(),
        &format!(
            "CREATE TABLE t (id bigint primary key, v text); INSERT INTO t SELECT i, '{PLAIN_ROW}' FROM generate_series(1, 10) i"
        ),
    )
    .unwrap();
    first_backup(&c);
    c.psql(
        c.rw(),
        &format!("INSERT INTO t SELECT i, '{PLAIN_ROW}' FROM generate_series(11, 20) i"),
    )
    .unwrap();
    let (t_text, t_epoch, _) = server_now(&c);
    std::thread::sleep(Duration::from_millis(300));
    c.psql(
        c.rw(),
        &format!("INSERT INTO t SELECT i, '{PLAIN_ROW}' FROM generate_series(21, 30) i"),
    )
    .unwrap();
    wait_archived(&c, t_epoch);
    let verified = c.ok(&["backup", "verify"]);
    assert!(verified.contains("intact"), "{verified}");

    // As stored in the bucket: the info files, the backup's manifest and archived WAL are
    // ciphertext, and none holds the row's bytes.
    let label = listing(&c)["backups"][0]["label"]
        .as_str()
        .expect("a backup label")
        .to_string();
    let mut paths = vec![
        "backup/encs3/backup.info".to_string(),
        "archive/encs3/archive.info".into(),
        format!("backup/encs3/{label}/backup.manifest"),
    ];
    let stored = s3_objects_as_stored(&s3, "/stator/default/encs3", "encs3", &paths);
    // And the WAL segments archived: listed, then fetched the same way.
    let config_dir = s3.dir.path().join("raw-encs3.conf");
    let ls = std::process::Command::new("/usr/bin/pgbackrest")
        .arg(format!("--config={}", config_dir.display()))
        .args([
            "--stanza=encs3",
            "repo-ls",
            "--recurse",
            "--output=json",
            "archive/encs3",
        ])
        .output()
        .unwrap();
    let listing_json: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    let segments: Vec<String> = listing_json
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, v)| v["type"] == "file" && k.contains("/0000"))
        .map(|(k, _)| format!("archive/encs3/{k}"))
        .take(20)
        .collect();
    assert!(!segments.is_empty(), "no archived WAL: {listing_json}");
    paths = segments;
    let stored: Vec<_> = stored
        .into_iter()
        .chain(s3_objects_as_stored(
            &s3,
            "/stator/default/encs3",
            "encs3",
            &paths,
        ))
        .collect();
    for (path, bytes) in &stored {
        assert!(bytes.starts_with(b"Salted__"), "{path} is not encrypted");
        assert!(
            !bytes
                .windows(PLAIN_ROW.len())
                .any(|w| w == PLAIN_ROW.as_bytes()),
            "{path} holds a row in plain text"
        );
    }
    println!(
        "{} objects fetched from the bucket, all encrypted",
        stored.len()
    );

    let by_time = sibling_with(&c, "encs3t", &backup, 1);
    restore_ok(
        &c,
        &["restore", "--from", "encs3", "--to-time", &t_text],
        &by_time,
        "encs3t",
        "restore from an encrypted S3 repository to a time",
    );
    assert_eq!(rows_in(&c, &by_time), (1..=20).collect::<Vec<_>>());
    cleanup(&c, &by_time);

    stop.store(true, Ordering::SeqCst);
    let (scans, found) = watcher.join().unwrap();
    assert!(scans > 0);
    assert!(found.is_empty(), "a secret on a command line: {found:?}");
    let logs = c.all_logs() + &logs_of(&c, "encs3t");
    assert!(!logs.contains(passphrase), "the passphrase in a log");

    // A passphrase that does not decrypt it: refused saying so, nothing created.
    write_passphrase(&c, "other-key", "not-the-passphrase");
    let wrong = s3.backup_spec("s3-keys", "s3-ca")
        + "    compression: none\n    encryption:\n      secretName: other-key\n";
    let spec = sibling_with(&c, "encs3w", &wrong, 1);
    let out = stator(&c, &["restore", "--from", "encs3"], &spec);
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    println!("a wrong passphrase: {said}");
    assert!(
        said.contains("does not decrypt it") && said.contains("nothing was created"),
        "{said}"
    );
    assert!(!c.state_dir().join("default/encs3w").exists());
}
