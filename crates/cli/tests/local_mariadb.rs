//! `stator up` with real MariaDB 10.11: a 3-instance cluster, data through the proxies, recovery
//! from `kill -9` of a server and of an instance manager, an errant transaction on a replica,
//! and the errors `up` must give. The MariaDB twin of `local_cluster.rs` and `local_errors.rs`.

mod local_support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use local_support::{Cluster, kill9};

const WAIT: Duration = Duration::from_secs(180);

#[test]
fn three_mariadb_instances_serve_rows_written_through_rw_and_read_through_ro_with_no_password_on_any_command_line()
 {
    let cluster = Cluster::mariadb("mtrio", 3);
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = cluster.watch_command_lines(stop.clone());
    let out = cluster.up();
    let password = cluster.password();
    assert!(out.contains("mariadb -h 127.0.0.1"), "{out}");
    assert!(out.contains("--ssl-verify-server-cert"), "{out}");
    assert!(out.contains("secrets/app-password"), "{out}");
    assert!(!out.contains(&password), "up must not print the password");
    let uri = cluster.ok(&["uri"]);
    assert_eq!(
        uri.trim(),
        format!(
            "mysql://app:{password}@127.0.0.1:{}/app?ssl-mode=VERIFY_IDENTITY&ssl-ca={}",
            cluster.rw(),
            cluster.ca().display().to_string().replace('/', "%2F")
        )
    );

    let status = cluster.status();
    assert_eq!(status["phase"], "Ready", "{status:#}");
    assert_eq!(status["engine"], "mariadb");
    assert_eq!(status["primary"], "mtrio-0");
    let rows = status["instances"].as_array().unwrap();
    assert_eq!(rows.len(), 3);
    assert!(
        rows.iter().all(|r| r["report"]["ready"] == true),
        "{status:#}"
    );
    assert_eq!(rows[0]["report"]["role"], "primary");
    assert_eq!(rows[1]["report"]["role"], "replica");
    assert_eq!(rows[2]["report"]["role"], "replica");
    assert_eq!(
        status["proxies"]["ro"]["targets"],
        serde_json::json!(["mtrio-1", "mtrio-2"])
    );
    let table = cluster.ok(&["status"]);
    assert!(table.contains("GTID"), "{table}");
    // Lag behind the primary in transactions, received and replayed; no timeline.
    for row in &rows[1..] {
        assert_eq!(row["lag"]["unit"], "transactions", "{status:#}");
        assert!(row["lag"]["replayed"].is_u64(), "{status:#}");
    }
    assert!(table.contains("LAG (recv/replay)"), "{table}");
    let replica_row = table.lines().find(|l| l.starts_with("mtrio-1")).unwrap();
    assert!(replica_row.contains(" tx"), "{table}");

    cluster
        .sql(
            cluster.rw(),
            "CREATE TABLE items (id INT PRIMARY KEY, note VARCHAR(40)); \
             INSERT INTO items SELECT seq, CONCAT('row ', seq) FROM seq_1_to_10000",
        )
        .unwrap();
    assert_eq!(
        cluster
            .value(cluster.rw(), "SELECT @@read_only, @@port")
            .unwrap(),
        format!("0|{}", cluster.server_port(0))
    );
    // Each ro connection goes to the next replica; both must have every row, read-only.
    let mut ports = BTreeSet::new();
    for _ in 0..4 {
        let answer = cluster.eventually("rows on a replica", WAIT, || {
            // (A subquery: MariaDB 10.11 answers 0 for `SELECT @@read_only, COUNT(*) FROM t`.)
            let answer = cluster.value(
                cluster.ro(),
                "SELECT @@read_only, (SELECT COUNT(*) FROM items), @@port",
            );
            match answer {
                Ok(a) if a.starts_with("1|10000|") => Some(a),
                other => {
                    eprintln!("through ro: {other:?}");
                    None
                }
            }
        });
        ports.insert(answer.rsplit('|').next().unwrap().to_string());
    }
    assert_eq!(
        ports,
        BTreeSet::from([
            cluster.server_port(1).to_string(),
            cluster.server_port(2).to_string()
        ])
    );
    // Replicas refuse the application's writes.
    let refused = cluster.sql(cluster.ro(), "INSERT INTO items VALUES (0, 'no')");
    assert!(
        refused.as_ref().is_err_and(|e| e.contains("read-only")),
        "{refused:?}"
    );

    stop.store(true, Ordering::SeqCst);
    let (scans, found) = watcher.join().unwrap();
    assert!(scans > 10, "the scan ran {scans} times");
    assert!(
        found.is_empty(),
        "secrets on command lines:\n{}",
        found.join("\n")
    );
    let secrets = cluster.secrets();
    assert_eq!(secrets.len(), 5);
    let logs = cluster.all_logs();
    assert!(logs.contains("ready for connections"), "server logs read");
    for secret in secrets {
        assert!(!logs.contains(&secret), "a secret is in a log");
    }
    let log = cluster.ok(&["logs", "mtrio-1"]);
    assert!(log.contains("ready for connections"), "{log}");
}

#[test]
fn a_replica_mariadbd_killed_with_sigkill_comes_back_and_catches_up() {
    let cluster = Cluster::mariadb("mkr", 2);
    cluster.up();
    cluster
        .sql(cluster.rw(), "CREATE TABLE t (id INT PRIMARY KEY)")
        .unwrap();
    let old = cluster.row("mkr-1")["report"]["pid"].as_u64().unwrap() as u32;
    assert_eq!(cluster.mariadbds(1), vec![old]);
    kill9(old);
    cluster
        .sql(cluster.rw(), "INSERT INTO t SELECT seq FROM seq_1_to_500")
        .unwrap();
    cluster.eventually("mkr-1 restarted and ready", WAIT, || {
        let row = cluster.row("mkr-1");
        let pid = row["report"]["pid"].as_u64()?;
        (pid != u64::from(old) && row["report"]["ready"] == true).then_some(())
    });
    cluster.eventually("mkr-1 caught up", WAIT, || {
        (cluster
            .value(cluster.server_port(1), "SELECT COUNT(*) FROM t")
            .ok()?
            == "500")
            .then_some(())
    });
    assert_eq!(cluster.mariadbds(1).len(), 1);
    assert!(cluster.row("mkr-1")["report"]["restarts"].as_u64() >= Some(1));
}

#[test]
fn a_mariadb_instance_manager_killed_with_sigkill_comes_back_without_a_second_mariadbd() {
    let cluster = Cluster::mariadb("mkm", 2);
    cluster.up();
    for ordinal in [1u32, 0] {
        let name = format!("mkm-{ordinal}");
        let row = cluster.row(&name);
        let manager = row["managerPid"].as_u64().unwrap() as u32;
        let server = row["report"]["pid"].as_u64().unwrap();
        kill9(manager);
        cluster.eventually("a new instance manager, ready", WAIT, || {
            let row = cluster.row(&name);
            let pid = row["managerPid"].as_u64()?;
            (pid != u64::from(manager) && row["report"]["ready"] == true).then_some(())
        });
        // Give a duplicate the chance to appear, then count.
        std::thread::sleep(Duration::from_secs(2));
        let servers = cluster.mariadbds(ordinal);
        assert_eq!(servers.len(), 1, "{name}: mariadbd processes {servers:?}");
        assert_eq!(
            u64::from(servers[0]),
            server,
            "{name}: the running server is adopted"
        );
    }
    cluster
        .sql(cluster.rw(), "CREATE TABLE after_restart (id INT)")
        .unwrap();
}

/// What a thread polling `stator status -o json` saw of one instance.
#[derive(Default, Debug)]
struct Sightings {
    /// The errant GTID set its report carried, when it did.
    errant: Option<String>,
    /// The status named it with errant / missing transactions somewhere (report or failover).
    reported: bool,
    /// Snapshots where it was reported errant or not ready but still a target of `ro`.
    routed_while_errant: Vec<String>,
}

fn watch_instance(
    cluster: &Cluster,
    name: &'static str,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<Sightings> {
    let stator = local_support::STATOR;
    let spec = cluster.spec.clone();
    let state = cluster.state_dir();
    std::thread::spawn(move || {
        let mut seen = Sightings::default();
        while !stop.load(Ordering::SeqCst) {
            let out = std::process::Command::new(stator)
                .args(["status", "-o", "json", "-f"])
                .arg(&spec)
                .arg("--state-dir")
                .arg(&state)
                .output();
            let Ok(status) = out.map(|o| {
                serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap_or_default()
            }) else {
                continue;
            };
            let row = status["instances"]
                .as_array()
                .and_then(|rows| rows.iter().find(|r| r["name"] == name).cloned())
                .unwrap_or_default();
            let errant = row["report"]["errant"].as_str().map(str::to_string);
            let text = status.to_string();
            if errant.is_some()
                || (text.contains(name) && (text.contains("errant") || text.contains("lacks")))
            {
                seen.reported = true;
            }
            let routed = status["proxies"]["ro"]["targets"]
                .as_array()
                .is_some_and(|t| t.iter().any(|x| x == name));
            if routed && (errant.is_some() || row["report"]["ready"] != true) {
                seen.routed_while_errant.push(text);
            }
            if seen.errant.is_none() {
                seen.errant = errant;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        seen
    })
}

#[test]
fn an_errant_transaction_on_a_replica_is_reported_and_takes_it_out_of_ro() {
    let cluster = Cluster::mariadb("mer", 3);
    cluster.up();
    cluster
        .sql(
            cluster.rw(),
            "CREATE TABLE e (id INT PRIMARY KEY); INSERT INTO e VALUES (1), (2)",
        )
        .unwrap();
    cluster.eventually("mer-2 has the rows", WAIT, || {
        (cluster
            .value(cluster.server_port(2), "SELECT COUNT(*) FROM e")
            .ok()?
            == "2")
            .then_some(())
    });
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_instance(&cluster, "mer-2", stop.clone());
    // A write made on the replica itself, as root over its socket: a transaction with the
    // replica's own server id that the primary never had.
    cluster
        .root_sql(
            2,
            "SET GLOBAL read_only = OFF; INSERT INTO app.e VALUES (999); SET GLOBAL read_only = ON",
        )
        .unwrap();
    let errant_gtid = cluster.root_sql(2, "SELECT @@gtid_binlog_pos").unwrap();
    // Detected: mer-2 leaves ro (it is no longer ready), whatever the supervisor does next.
    cluster.eventually("mer-2 out of ro", WAIT, || {
        let status = cluster.status();
        (status["proxies"]["ro"]["targets"] == serde_json::json!(["mer-1"])).then_some(())
    });
    let table = cluster.ok(&["status"]);
    // From now on, reads through ro never see the errant row.
    for _ in 0..10 {
        assert_eq!(
            cluster
                .value(
                    cluster.ro(),
                    "SELECT (SELECT COUNT(*) FROM e WHERE id = 999), @@port"
                )
                .unwrap(),
            format!("0|{}", cluster.server_port(1))
        );
    }
    // Not replicated over: the primary never gets the row, and goes on.
    cluster
        .sql(cluster.rw(), "INSERT INTO e VALUES (3)")
        .unwrap();
    assert_eq!(
        cluster
            .value(cluster.rw(), "SELECT COUNT(*) FROM e WHERE id = 999")
            .unwrap(),
        "0"
    );
    std::thread::sleep(Duration::from_secs(2));
    stop.store(true, Ordering::SeqCst);
    let seen = watcher.join().unwrap();
    assert!(
        seen.reported,
        "stator status never said mer-2 holds errant transactions ({errant_gtid}); last table:\n{table}"
    );
    assert!(
        seen.routed_while_errant.is_empty(),
        "ro routed to mer-2 while it was errant: {:?}",
        seen.routed_while_errant
    );
    if let Some(errant) = &seen.errant {
        // The errant set is the replica's own transaction, which the primary lacks.
        let primary = cluster
            .value(cluster.rw(), "SELECT @@gtid_binlog_pos")
            .unwrap();
        assert!(errant.contains("0-1002-"), "errant {errant}");
        assert!(!primary.contains(errant.as_str()), "{errant} vs {primary}");
    }
    // Either it stays out, shown as errant, or it was rebuilt from the primary: then it is
    // ready again without the errant row, its old data dir kept aside.
    let row = cluster.row("mer-2");
    if row["report"]["errant"].is_string() {
        let table = cluster.ok(&["status"]);
        assert!(table.contains("no (errant)"), "{table}");
        assert!(
            table.contains("mer-2: ERRANT transactions its upstream does not have"),
            "{table}"
        );
    } else {
        cluster.eventually("mer-2 rebuilt and replicating", WAIT, || {
            let row = cluster.row("mer-2");
            (row["report"]["ready"] == true
                && cluster
                    .value(
                        cluster.server_port(2),
                        "SELECT GROUP_CONCAT(id ORDER BY id) FROM e",
                    )
                    .ok()?
                    == "1,2,3")
                .then_some(())
        });
        let aside = std::fs::read_dir(cluster.db_dir())
            .unwrap()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("data-mer-2."));
        assert!(aside, "the errant data dir is kept aside");
    }
}

#[test]
fn a_missing_mariadb_server_binary_says_how_to_install_it_and_writes_nothing() {
    let cluster = Cluster::mariadb("mnb", 1);
    // MariaDB 11.4 is a supported version, but this machine has only 10.11's mariadbd.
    cluster.write_spec(1, "  version: \"11.4\"\n");
    let out = cluster.stator(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("MariaDB 11.4 binaries not found"), "{err}");
    assert!(err.contains("mariadbd is 10.11"), "{err}");
    assert!(
        err.contains("apt-get install mariadb-server mariadb-backup"),
        "{err}"
    );
    assert!(!cluster.state_dir().exists(), "nothing written");
}

#[test]
fn a_port_in_use_is_named_with_its_mariadb_instance_and_nothing_is_written() {
    let cluster = Cluster::mariadb("mpu", 3);
    let _held = std::net::TcpListener::bind(("127.0.0.1", cluster.server_port(1))).unwrap();
    let out = cluster.stator(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "port {} (mpu-1's server) is already in use",
            cluster.server_port(1)
        )),
        "{err}"
    );
    assert!(!cluster.state_dir().exists(), "nothing written");
    assert!(cluster.own_processes().is_empty());
}

#[test]
fn a_mariadb_data_dir_of_another_version_is_refused_before_anything_is_written() {
    let cluster = Cluster::mariadb("mov", 1);
    let data = cluster.db_dir().join("data-mov-0");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("mysql_upgrade_info"), "10.6.12-MariaDB").unwrap();
    let out = cluster.stator(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("holds MariaDB 10.6.12 data"), "{err}");
    assert!(err.contains("this database is MariaDB 10.11"), "{err}");
    assert!(
        !cluster.db_dir().join("spec.json").exists(),
        "nothing written"
    );
    assert!(!cluster.db_dir().join("secrets").exists());
}

#[test]
fn a_mariadb_data_dir_of_another_database_is_refused_and_a_killed_supervisor_is_adopted() {
    let a = Cluster::mariadb("mfa", 1);
    let b = Cluster::mariadb("mfb", 1);
    a.up();
    b.up();
    // The supervisor killed with SIGKILL: its instance keeps running and the next up adopts it.
    let before = a.status();
    let supervisor = before["supervisorPid"].as_u64().unwrap() as u32;
    let manager = before["instances"][0]["managerPid"].as_u64().unwrap();
    let server = a.mariadbds(0);
    kill9(supervisor);
    a.eventually("the supervisor gone", WAIT, || {
        (!local_support::alive(supervisor)).then_some(())
    });
    a.up();
    let after = a.status();
    assert_ne!(after["supervisorPid"].as_u64().unwrap() as u32, supervisor);
    assert_eq!(
        after["instances"][0]["managerPid"].as_u64().unwrap(),
        manager
    );
    assert_eq!(a.mariadbds(0), server, "the same mariadbd, adopted");

    a.ok(&["down"]);
    b.ok(&["down"]);
    // Put a's data dir where b's belongs.
    let b_data = b.db_dir().join("data-mfb-0");
    std::fs::remove_dir_all(&b_data).unwrap();
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(a.db_dir().join("data-mfa-0"))
        .arg(&b_data)
        .status()
        .unwrap();
    assert!(status.success());
    let out = b.stator(&["up"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("belongs to the database \"mfa\""), "{err}");
    assert!(b.own_processes().is_empty(), "nothing started");
}
