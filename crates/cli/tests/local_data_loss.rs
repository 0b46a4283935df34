//! A lost data dir never becomes an empty primary (issue 14, item 1), on real PostgreSQL 15 and
//! MariaDB 10.11 servers: after `down`, the data dirs of every instance but `NAME-1` are deleted,
//! the primary's among them. With `NAME-1`'s gone too, `up` refuses, names every dir, exits
//! non-zero and changes nothing. With it kept, `up` makes `NAME-1` the primary and clones the
//! lost instances from it: every row is behind `rw` at every moment `rw` answers, and every
//! instance holds the same data. PostgreSQL runs three instances (two lost: the empty replica
//! must wait for the new primary rather than block the choice), MariaDB two.

mod local_support;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use local_support::{Cluster, walk};

const WAIT: Duration = Duration::from_secs(180);
const ROWS: &str = "500";

/// `SELECT COUNT(*) FROM kept` on `port`, for either engine.
fn count(cluster: &Cluster, port: u16) -> Result<String, String> {
    match cluster.engine {
        "postgres" => cluster.psql(port, "SELECT count(*) FROM kept"),
        _ => cluster.value(port, "SELECT COUNT(*) FROM kept"),
    }
}

fn write(cluster: &Cluster, port: u16, sql_pg: &str, sql_maria: &str) {
    match cluster.engine {
        "postgres" => cluster.psql(port, sql_pg).map(|_| ()),
        _ => cluster.sql(port, sql_maria).map(|_| ()),
    }
    .unwrap_or_else(|e| panic!("write on port {port}: {e}"));
}

/// PostgreSQL's system identifier of a data dir (the first 8 bytes of `global/pg_control`).
fn system_identifier(data_dir: &Path) -> Option<u64> {
    let bytes = std::fs::read(data_dir.join("global/pg_control")).ok()?;
    Some(u64::from_ne_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// Every file of the database's dir (data dirs' contents left out) with its size and time, and
/// the names in the database's dir: what a refused `up` must leave as it was.
fn snapshot(cluster: &Cluster) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut files: Vec<(PathBuf, u64, Option<SystemTime>)> = walk(&cluster.db_dir())
        .into_iter()
        .map(|p| {
            let meta = std::fs::metadata(&p).ok();
            let len = meta.as_ref().map_or(0, |m| m.len());
            let time = meta.and_then(|m| m.modified().ok());
            (p, len, time)
        })
        .collect();
    for entry in std::fs::read_dir(cluster.db_dir()).unwrap().flatten() {
        files.push((entry.path(), 0, None));
    }
    files.sort();
    files
}

fn a_lost_primary_data_dir_is_cloned_from_the_replica_never_initialised_empty(
    engine: &str,
    instances: u32,
) {
    let name = if engine == "postgres" { "dlp" } else { "dlm" };
    let cluster = match engine {
        "postgres" => Cluster::new(name, instances),
        _ => Cluster::mariadb(name, instances),
    };
    let lost: Vec<u32> = (0..instances).filter(|o| *o != 1).collect();
    let (first, second) = (format!("{name}-0"), format!("{name}-1"));
    cluster.up();
    write(
        &cluster,
        cluster.rw(),
        "CREATE TABLE kept (id int PRIMARY KEY); INSERT INTO kept SELECT generate_series(1, 500)",
        "CREATE TABLE kept (id INT PRIMARY KEY); INSERT INTO kept SELECT seq FROM seq_1_to_500",
    );
    assert_eq!(cluster.status()["primary"], first.as_str());
    cluster.eventually("every replica has every row", WAIT, || {
        (1..instances)
            .all(|o| count(&cluster, cluster.server_port(o)).ok().as_deref() == Some(ROWS))
            .then_some(())
    });
    let marker: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(cluster.db_dir().join("database.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        marker["initialized"], true,
        "database.json records that the database has data: {marker}"
    );
    let data = |ordinal: u32| cluster.db_dir().join(format!("data-{name}-{ordinal}"));
    let identity = system_identifier(&data(0));
    if engine == "postgres" {
        assert!(identity.is_some());
        assert_eq!(marker["systemIdentifier"].as_u64(), identity, "{marker}");
        for o in 1..instances {
            assert_eq!(system_identifier(&data(o)), identity);
        }
    }
    cluster.ok(&["down"]);

    // Every data dir gone: refused, both named, nothing changed.
    for o in &lost {
        std::fs::remove_dir_all(data(*o)).unwrap();
    }
    let saved = cluster.dir.path().join("saved-replica");
    std::fs::rename(data(1), &saved).unwrap();
    let before = snapshot(&cluster);
    let out = cluster.stator(&["up"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "up with every data dir gone must fail:\n{stderr}"
    );
    for gone in (0..instances).map(data) {
        assert!(
            stderr.contains(&gone.display().to_string()),
            "the refusal names {}:\n{stderr}",
            gone.display()
        );
    }
    assert!(
        stderr.contains("Restore") && stderr.contains("stator delete --purge"),
        "the refusal says how to restore or start over:\n{stderr}"
    );
    assert_eq!(
        snapshot(&cluster),
        before,
        "a refused up changed the state dir"
    );
    assert!((0..instances).all(|o| !data(o).exists()));
    assert!(
        cluster.own_processes().is_empty(),
        "a refused up started {:?}",
        cluster.own_processes()
    );

    // The replica's data back: it becomes the primary; the lost one is cloned from it.
    std::fs::rename(&saved, data(1)).unwrap();
    let done = AtomicBool::new(false);
    let seen_by_rw: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let (stderr, took) = std::thread::scope(|scope| {
        scope.spawn(|| {
            // Whenever rw answers during the recovery, it answers with every row.
            while !done.load(Ordering::SeqCst) {
                match count(&cluster, cluster.rw()) {
                    Ok(n) => seen_by_rw.lock().unwrap().push(n),
                    Err(e) if e.contains("kept") => seen_by_rw.lock().unwrap().push(e),
                    Err(_) => {} // no target, or not accepting connections yet
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        let started = std::time::Instant::now();
        let out = cluster.stator(&["up"]);
        let took = started.elapsed();
        done.store(true, Ordering::SeqCst);
        assert!(
            out.status.success(),
            "up with the replica's data kept must succeed:\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs_for_failure()
        );
        (String::from_utf8_lossy(&out.stderr).into_owned(), took)
    });
    let seen = seen_by_rw.into_inner().unwrap();
    assert!(
        seen.iter().all(|n| n == ROWS),
        "rw answered without every row during the recovery: {seen:?}\n{stderr}"
    );
    println!(
        "{engine}: up rebuilt {} lost data dir(s) in {:.1} s; rw answered {} times meanwhile, always with {ROWS} rows",
        lost.len(),
        took.as_secs_f64(),
        seen.len()
    );
    let status = cluster.status();
    assert_eq!(status["primary"], second.as_str(), "{status}");
    assert_eq!(cluster.row(&second)["report"]["role"], "primary");
    for o in &lost {
        assert_eq!(
            cluster.row(&format!("{name}-{o}"))["report"]["role"],
            "replica"
        );
    }
    assert_eq!(count(&cluster, cluster.rw()).unwrap(), ROWS);
    for o in &lost {
        assert_eq!(
            count(&cluster, cluster.server_port(*o)).unwrap(),
            ROWS,
            "the lost instance {name}-{o} was cloned with every row"
        );
    }
    if engine == "postgres" {
        for o in 0..instances {
            assert_eq!(system_identifier(&data(o)), identity, "same database");
        }
    }
    assert!(
        stderr.contains(&format!(" of {first}")) && stderr.contains("gone or empty"),
        "up says what it does about the lost data dir:\n{stderr}"
    );
    // The clone follows the new primary: a row written now reaches it.
    write(
        &cluster,
        cluster.rw(),
        "INSERT INTO kept VALUES (501)",
        "INSERT INTO kept VALUES (501)",
    );
    cluster.eventually("the cloned instances have the new row", WAIT, || {
        lost.iter()
            .all(|o| count(&cluster, cluster.server_port(*o)).ok().as_deref() == Some("501"))
            .then_some(())
    });
}

#[test]
fn postgres_lost_primary_data_dir_is_cloned_from_the_replica_or_refused() {
    a_lost_primary_data_dir_is_cloned_from_the_replica_never_initialised_empty("postgres", 3);
}

#[test]
fn mariadb_lost_primary_data_dir_is_cloned_from_the_replica_or_refused() {
    a_lost_primary_data_dir_is_cloned_from_the_replica_never_initialised_empty("mariadb", 2);
}
