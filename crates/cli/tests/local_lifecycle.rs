//! The lifecycle of a local database with real PostgreSQL 15: down/up keeps rows, roles and the
//! primary; scaling adds replicas and stops the highest ordinals; delete with and without purge.

mod local_support;

use std::time::Duration;

use local_support::Cluster;

const WAIT: Duration = Duration::from_secs(120);

#[test]
fn down_then_up_gives_back_the_same_rows_roles_and_primary() {
    let cluster = Cluster::new("du", 2);
    cluster.up();
    cluster
        .psql(
            cluster.rw(),
            "CREATE TABLE kept (id int); INSERT INTO kept SELECT generate_series(1, 1234)",
        )
        .unwrap();
    let password = cluster.password();
    let log = cluster.ok(&["logs", "du-0"]);
    assert!(log.contains("ready to accept connections"), "{log}");
    let unknown = cluster.stator(&["logs", "other-0"]);
    assert_eq!(unknown.status.code(), Some(2));
    let out = cluster.ok(&["down"]);
    assert!(out.contains("stopped"), "{out}");
    assert!(
        cluster.own_processes().is_empty(),
        "processes left after down: {:?}",
        cluster.own_processes()
    );
    assert_eq!(cluster.status()["phase"], "Stopped");
    assert!(cluster.psql(cluster.rw(), "SELECT 1").is_err());

    cluster.up();
    let status = cluster.status();
    assert_eq!(status["primary"], "du-0");
    assert_eq!(cluster.row("du-0")["report"]["role"], "primary");
    assert_eq!(cluster.row("du-1")["report"]["role"], "replica");
    assert_eq!(
        cluster.password(),
        password,
        "credentials are generated once"
    );
    assert_eq!(
        cluster
            .psql(cluster.rw(), "SELECT count(*) FROM kept")
            .unwrap(),
        "1234"
    );
    cluster.eventually("replica has the rows", WAIT, || {
        (cluster
            .psql(cluster.ro(), "SELECT count(*) FROM kept")
            .ok()?
            == "1234")
            .then_some(())
    });
    cluster.assert_status_matches_clients(&password);
}

#[test]
fn scaling_three_to_five_to_two_adds_clones_and_stops_the_highest_ordinals_keeping_their_data() {
    let cluster = Cluster::new("sc", 3);
    cluster.up();
    cluster
        .psql(
            cluster.rw(),
            "CREATE TABLE s (id int); INSERT INTO s SELECT generate_series(1, 300)",
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
                .psql(
                    cluster.server_port(ordinal as u32),
                    "SELECT count(*) FROM s",
                )
                .ok()?
                == "300")
                .then_some(())
        });
    }

    cluster.write_spec(2, "");
    cluster.up();
    let status = cluster.status();
    let names: Vec<&str> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sc-0", "sc-1"]);
    assert_eq!(
        status["proxies"]["ro"]["targets"],
        serde_json::json!(["sc-1"])
    );
    // Settled: Ready for a reason, not "Degraded / being removed"; the removed instances are
    // listed apart with their kept data.
    let status = cluster.eventually("the removed instances listed apart", WAIT, || {
        let status = cluster.status();
        (status["removed"].as_array()?.len() == 3).then_some(status)
    });
    assert_eq!(status["phase"], "Ready", "{status:#}");
    assert_eq!(status["failover"]["reason"], "Healthy", "{status:#}");
    assert!(status["message"].is_null(), "{status:#}");
    let removed: Vec<&str> = status["removed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(removed, ["sc-2", "sc-3", "sc-4"]);
    let table = cluster.ok(&["status"]);
    assert!(!table.contains("being removed"), "{table}");
    assert!(!table.contains("Degraded"), "{table}");
    assert!(
        table.contains("removed, data kept (beyond spec.instances, stopped): sc-2"),
        "{table}"
    );
    for ordinal in [2, 3, 4] {
        assert!(
            cluster.postmasters(ordinal).is_empty(),
            "sc-{ordinal} still runs"
        );
        assert!(
            cluster
                .db_dir()
                .join(format!("data-sc-{ordinal}"))
                .join("PG_VERSION")
                .exists(),
            "data-sc-{ordinal} kept"
        );
    }
    assert_eq!(
        cluster
            .psql(cluster.rw(), "SELECT count(*) FROM s")
            .unwrap(),
        "300"
    );
    cluster.assert_status_matches_clients(&cluster.password());
}

#[test]
fn delete_keeps_data_dirs_for_the_next_up_and_purge_removes_everything() {
    let cluster = Cluster::new("dl", 1);
    let out = cluster.up();
    // With no replica, reads go to the primary, and status says so.
    assert!(
        out.contains("no replica is ready: reads go to the primary"),
        "{out}"
    );
    let status = cluster.status();
    assert_eq!(status["proxies"]["ro"]["fallbackToPrimary"], true);
    assert_eq!(
        status["proxies"]["ro"]["targets"],
        serde_json::json!(["dl-0"])
    );
    assert_eq!(
        cluster
            .psql(cluster.ro(), "SELECT pg_is_in_recovery()")
            .unwrap(),
        "f"
    );
    cluster
        .psql(
            cluster.rw(),
            "CREATE TABLE d (id int); INSERT INTO d VALUES (7)",
        )
        .unwrap();
    let out = cluster.ok(&["delete"]);
    assert!(out.contains("data-dl-0"), "{out}");
    assert!(cluster.own_processes().is_empty());
    assert!(cluster.db_dir().join("data-dl-0/PG_VERSION").exists());
    let missing = cluster.stator(&["status"]);
    assert_eq!(
        missing.status.code(),
        Some(2),
        "status of a deleted database"
    );
    assert!(String::from_utf8_lossy(&missing.stderr).contains("does not exist"));

    cluster.up();
    assert_eq!(cluster.psql(cluster.rw(), "SELECT id FROM d").unwrap(), "7");

    cluster.ok(&["delete", "--purge"]);
    assert!(!cluster.db_dir().exists());
    assert!(cluster.own_processes().is_empty());
}

/// A misspelled parameter is refused by `up` with the nearest valid name and changes nothing; a
/// reloadable change (`work_mem`) reaches every server without restarting any (same postmaster
/// pids and start times); a restart-only change (`shared_buffers`) still rolls through them.
#[test]
fn parameter_changes_reload_when_they_can_and_roll_only_when_they_must() {
    let cluster = Cluster::new("ru", 2);
    cluster.up();
    assert_eq!(cluster.psql(cluster.ro(), "SHOW work_mem").unwrap(), "4MB");
    let postmasters = |c: &Cluster| [c.postmasters(0), c.postmasters(1)];
    let started = |c: &Cluster| {
        [0, 1].map(|o| {
            c.psql(c.server_port(o), "SELECT pg_postmaster_start_time()")
                .unwrap()
        })
    };
    let before = (postmasters(&cluster), started(&cluster));

    cluster.write_spec(2, "  config:\n    parameters:\n      max_connectons: 50\n");
    let refused = cluster.stator(&["up"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("spec.config.parameters.max_connectons")
            && stderr.contains("did you mean max_connections?"),
        "{stderr}"
    );
    assert_eq!(cluster.status()["generation"], 1, "nothing applied");

    cluster.write_spec(2, "  config:\n    parameters:\n      work_mem: 8MB\n");
    cluster.up();
    assert_eq!(cluster.psql(cluster.rw(), "SHOW work_mem").unwrap(), "8MB");
    assert_eq!(cluster.psql(cluster.ro(), "SHOW work_mem").unwrap(), "8MB");
    assert_eq!(
        (postmasters(&cluster), started(&cluster)),
        before,
        "a reloadable change restarted a server"
    );
    assert_eq!(cluster.status()["generation"], 2);

    cluster.write_spec(
        2,
        "  config:\n    parameters:\n      work_mem: 8MB\n      shared_buffers: 64MB\n",
    );
    cluster.up();
    for o in [0, 1] {
        assert_eq!(
            cluster
                .psql(cluster.server_port(o), "SHOW shared_buffers")
                .unwrap(),
            "64MB"
        );
        assert_ne!(
            cluster.postmasters(o),
            before.0[o as usize],
            "ru-{o} restarted for shared_buffers"
        );
    }
    let status = cluster.status();
    assert_eq!(status["generation"], 3);
    assert_eq!(status["primary"], "ru-0");
    assert_eq!(cluster.row("ru-0")["report"]["role"], "primary");
}
