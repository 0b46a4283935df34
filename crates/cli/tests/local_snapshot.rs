//! `stator snapshot` with real PostgreSQL 15: a replica is drained, its data dir copied while
//! its server is stopped, and uncordoned. The copy starts as a standalone server holding the
//! rows written before; the replica is back in the `ro` route; the primary is refused.

mod local_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use local_support::{Cluster, free_port_base, output_text};

const WAIT: Duration = Duration::from_secs(120);
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// A standalone server on a snapshot's copy, stopped (fast) when dropped.
struct Standalone {
    data: PathBuf,
}

impl Standalone {
    /// Starts the copy in `data` on 127.0.0.1:`port` as a server of its own: without
    /// `standby.signal` it ends recovery and takes writes; no Unix socket (its run dir is the
    /// replica's).
    fn start(data: &Path, port: u16) -> Standalone {
        std::fs::remove_file(data.join("standby.signal")).expect("the copy is a replica's");
        let server = Standalone {
            data: data.to_path_buf(),
        };
        let options =
            format!("-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories=''");
        let out = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(data)
            .args(["-w", "-t", "120", "-o", &options, "-l"])
            .arg(data.join("standalone.log"))
            .arg("start")
            .output()
            .expect("run pg_ctl");
        if let Err(e) = output_text(&out) {
            let log = std::fs::read_to_string(data.join("standalone.log")).unwrap_or_default();
            panic!("the snapshot does not start: {e}\n{log}");
        }
        server
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .output();
    }
}

fn ro_targets(cluster: &Cluster) -> Vec<String> {
    cluster.status()["proxies"]["ro"]["targets"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_snapshot_of_a_replica_starts_as_a_standalone_server_and_the_replica_returns_to_ro() {
    let cluster = Cluster::new("sn", 2);
    cluster.up();
    cluster
        .psql(
            cluster.rw(),
            "CREATE TABLE kept (id int); INSERT INTO kept SELECT generate_series(1, 500)",
        )
        .unwrap();
    cluster.eventually("the replica has the rows", WAIT, || {
        (cluster
            .psql(cluster.ro(), "SELECT count(*) FROM kept")
            .ok()?
            == "500")
            .then_some(())
    });
    assert_eq!(ro_targets(&cluster), vec!["sn-1".to_string()]);

    // The primary is refused, by name, and nothing happens to it.
    let out = cluster.stator(&["snapshot", "--instance", "sn-0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("sn-0") && stderr.contains("is the primary"),
        "{stderr}"
    );
    assert!(!cluster.db_dir().join("snapshots").exists());

    let started = Instant::now();
    let printed = cluster.ok(&["snapshot"]);
    let took = started.elapsed();
    println!(
        "stator snapshot: {printed}(took {:.1} s)",
        took.as_secs_f64()
    );
    let path = printed
        .split(" in ")
        .nth(1)
        .and_then(|rest| rest.split(" (").next())
        .map(PathBuf::from)
        .unwrap_or_else(|| panic!("no path in {printed:?}"));
    assert!(printed.starts_with("snapshot of sn-1 in "), "{printed}");
    assert!(
        path.starts_with(cluster.db_dir().join("snapshots")),
        "{printed}"
    );

    // The replica is back in the ro route, and serves reads there.
    assert!(ro_targets(&cluster).contains(&"sn-1".to_string()));
    assert_eq!(cluster.row("sn-1")["report"]["role"], "replica");
    assert_eq!(
        cluster
            .psql(cluster.ro(), "SELECT count(*) FROM kept")
            .unwrap(),
        "500"
    );
    // Rows written after the snapshot are not in it.
    cluster
        .psql(
            cluster.rw(),
            "INSERT INTO kept SELECT generate_series(501, 600)",
        )
        .unwrap();

    let port = free_port_base();
    let _server = Standalone::start(&path, port);
    assert_eq!(
        cluster.psql(port, "SELECT count(*) FROM kept").unwrap(),
        "500"
    );
    assert_eq!(
        cluster
            .psql(port, "SELECT pg_is_in_recovery()::text")
            .unwrap(),
        "false",
        "the copy runs as a server of its own"
    );
    cluster
        .psql(port, "INSERT INTO kept VALUES (-1)")
        .expect("the standalone copy takes writes");
    assert_eq!(
        cluster
            .psql(cluster.rw(), "SELECT count(*) FROM kept WHERE id = -1")
            .unwrap(),
        "0",
        "the copy is not the database"
    );
}

/// One instance is its primary: refused by name before anything is asked of the runtime.
#[test]
fn a_one_instance_database_is_refused_naming_its_primary() {
    let cluster = Cluster::new("one", 1);
    let out = cluster.stator(&["snapshot"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("one-0 is the only instance") && stderr.contains("spec.instances: 2"),
        "{stderr}"
    );
    assert!(!cluster.db_dir().join("snapshots").exists());
}
