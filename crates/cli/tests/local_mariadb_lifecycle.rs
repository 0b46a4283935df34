//! The lifecycle of a local MariaDB 10.11 database: down/up keeps rows, users and the primary;
//! scaling adds replicas cloned with mariadb-backup and stops the highest ordinals; delete with
//! and without purge. The MariaDB twin of `local_lifecycle.rs`.

mod local_support;

use std::time::Duration;

use local_support::Cluster;

const WAIT: Duration = Duration::from_secs(180);

const USERS: &str =
    "SELECT GROUP_CONCAT(CONCAT(user, '@', host) ORDER BY user, host) FROM mysql.user";

#[test]
fn mariadb_down_then_up_gives_back_the_same_rows_users_and_primary() {
    let cluster = Cluster::mariadb("mdu", 2);
    cluster.up();
    cluster
        .sql(
            cluster.rw(),
            "CREATE TABLE kept (id INT PRIMARY KEY); INSERT INTO kept SELECT seq FROM seq_1_to_1234",
        )
        .unwrap();
    let password = cluster.password();
    let users = cluster.root_sql(0, USERS).unwrap();
    assert!(users.contains("app@"), "{users}");
    let out = cluster.ok(&["down"]);
    assert!(out.contains("stopped"), "{out}");
    assert!(
        cluster.own_processes().is_empty(),
        "processes left after down: {:?}",
        cluster.own_processes()
    );
    assert!(cluster.mariadbds(0).is_empty() && cluster.mariadbds(1).is_empty());
    assert_eq!(cluster.status()["phase"], "Stopped");
    assert!(cluster.sql(cluster.rw(), "SELECT 1").is_err());

    cluster.up();
    let status = cluster.status();
    assert_eq!(status["primary"], "mdu-0");
    assert_eq!(cluster.row("mdu-0")["report"]["role"], "primary");
    assert_eq!(cluster.row("mdu-1")["report"]["role"], "replica");
    assert_eq!(
        cluster.password(),
        password,
        "credentials are generated once"
    );
    assert_eq!(cluster.root_sql(0, USERS).unwrap(), users);
    assert_eq!(
        cluster
            .value(cluster.rw(), "SELECT COUNT(*) FROM kept")
            .unwrap(),
        "1234"
    );
    cluster.eventually("replica has the rows", WAIT, || {
        (cluster
            .value(cluster.ro(), "SELECT COUNT(*) FROM kept")
            .ok()?
            == "1234")
            .then_some(())
    });
    // Replication resumed: a row written now reaches the replica.
    cluster
        .sql(cluster.rw(), "INSERT INTO kept VALUES (5000)")
        .unwrap();
    cluster.eventually("replica has the new row", WAIT, || {
        (cluster
            .value(cluster.ro(), "SELECT COUNT(*) FROM kept")
            .ok()?
            == "1235")
            .then_some(())
    });
}

#[test]
fn mariadb_scaling_three_to_five_to_two_adds_clones_and_stops_the_highest_ordinals_keeping_their_data()
 {
    let cluster = Cluster::mariadb("msc", 3);
    cluster.up();
    cluster
        .sql(
            cluster.rw(),
            "CREATE TABLE s (id INT PRIMARY KEY); INSERT INTO s SELECT seq FROM seq_1_to_300",
        )
        .unwrap();

    cluster.write_spec(5, "");
    cluster.up();
    let rows = cluster.instances();
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r["report"]["ready"] == true));
    for ordinal in [3, 4] {
        assert_eq!(rows[ordinal]["report"]["role"], "replica");
        cluster.eventually("new replica has the rows", WAIT, || {
            (cluster
                .value(
                    cluster.server_port(ordinal as u32),
                    "SELECT COUNT(*) FROM s",
                )
                .ok()?
                == "300")
                .then_some(())
        });
    }
    // Every instance has its own server id.
    let ids: std::collections::BTreeSet<String> = (0..5)
        .map(|o| {
            cluster
                .value(cluster.server_port(o), "SELECT @@server_id")
                .unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 5, "{ids:?}");

    cluster.write_spec(2, "");
    cluster.up();
    let status = cluster.status();
    let names: Vec<&str> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["msc-0", "msc-1"]);
    assert_eq!(
        status["proxies"]["ro"]["targets"],
        serde_json::json!(["msc-1"])
    );
    for ordinal in [2, 3, 4] {
        assert!(
            cluster.mariadbds(ordinal).is_empty(),
            "msc-{ordinal} still runs"
        );
        assert!(
            cluster
                .db_dir()
                .join(format!("data-msc-{ordinal}"))
                .join("ibdata1")
                .exists(),
            "data-msc-{ordinal} kept"
        );
    }
    assert_eq!(
        cluster
            .value(cluster.rw(), "SELECT COUNT(*) FROM s")
            .unwrap(),
        "300"
    );
}

#[test]
fn mariadb_delete_keeps_data_dirs_for_the_next_up_and_purge_removes_everything() {
    let cluster = Cluster::mariadb("mdl", 1);
    let out = cluster.up();
    assert!(
        out.contains("no replica is ready: reads go to the primary"),
        "{out}"
    );
    assert_eq!(
        cluster.value(cluster.ro(), "SELECT @@read_only").unwrap(),
        "0"
    );
    cluster
        .sql(
            cluster.rw(),
            "CREATE TABLE d (id INT PRIMARY KEY); INSERT INTO d VALUES (7)",
        )
        .unwrap();
    let out = cluster.ok(&["delete"]);
    assert!(out.contains("data-mdl-0"), "{out}");
    assert!(cluster.own_processes().is_empty());
    assert!(cluster.db_dir().join("data-mdl-0/ibdata1").exists());
    let missing = cluster.stator(&["status"]);
    assert_eq!(
        missing.status.code(),
        Some(2),
        "status of a deleted database"
    );
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));

    cluster.up();
    assert_eq!(
        cluster.value(cluster.rw(), "SELECT id FROM d").unwrap(),
        "7"
    );

    cluster.ok(&["delete", "--purge"]);
    assert!(!cluster.db_dir().exists());
    assert!(cluster.own_processes().is_empty());
}

/// A misspelled option is refused by `up` with the nearest valid name and changes nothing; a
/// dynamic variable (`max_connections`) reaches every server with `SET GLOBAL`, restarting none
/// (same mariadbd pids), and stays in the option file for the next start.
#[test]
fn changed_mariadb_settings_apply_without_restarting_the_servers() {
    let cluster = Cluster::mariadb("mru", 2);
    cluster.up();
    assert_eq!(
        cluster
            .value(cluster.ro(), "SELECT @@max_connections")
            .unwrap(),
        "151"
    );
    let servers = |c: &Cluster| [c.mariadbds(0), c.mariadbds(1)];
    let before = servers(&cluster);

    cluster.write_spec(2, "  config:\n    parameters:\n      max-connectons: 180\n");
    let refused = cluster.stator(&["up"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("did you mean max_connections?"), "{stderr}");
    assert_eq!(cluster.status()["generation"], 1, "nothing applied");

    cluster.write_spec(
        2,
        "  config:\n    parameters:\n      max_connections: 180\n",
    );
    cluster.up();
    for port in [cluster.rw(), cluster.ro()] {
        assert_eq!(
            cluster.value(port, "SELECT @@max_connections").unwrap(),
            "180"
        );
    }
    assert_eq!(
        servers(&cluster),
        before,
        "a dynamic change restarted a server"
    );
    let option_file = cluster.db_dir().join("instances/mru-1/run/my.cnf");
    let option_file = std::fs::read_to_string(&option_file).unwrap();
    let status = cluster.status();
    assert_eq!(status["generation"], 2);
    assert_eq!(status["primary"], "mru-0");
    assert_eq!(cluster.row("mru-1")["report"]["role"], "replica");
    assert!(
        option_file.contains("max_connections = \"180\""),
        "{option_file}"
    );
}
