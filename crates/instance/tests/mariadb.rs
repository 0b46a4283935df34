//! The instance manager running real MariaDB 10.11 servers: a primary, a replica cloned with
//! mariadb-backup through the primary's `/backup`, GTID replication, read-only replicas,
//! errant transactions, promotion, rejoin of a former primary, adoption after `kill -9` — with no
//! password on any command line meanwhile.

mod common;

use common::{Cluster, CmdlineWatch, maria_root, maria_sql};
use stator_api::instance::Bootstrap;
use stator_api::names::secret_keys;

fn app(cluster: &Cluster) -> String {
    cluster.secret(secret_keys::APP_PASSWORD)
}

fn token(cluster: &Cluster) -> String {
    cluster.secret(secret_keys::API_TOKEN)
}

/// Waits until `query` on the server at `port` (as the app user) returns `want`.
fn wait_rows(m: &common::Manager, cluster: &Cluster, query: &str, want: &[&str]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let got = maria_sql(m.config.port, "app", &app(cluster), query);
        if got.as_ref().is_ok_and(|rows| rows == want) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{}: {query} gave {got:?}, wanted {want:?}\n{}",
            m.name(),
            m.logs()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn a_replica_is_cloned_with_mariadb_backup_replicates_refuses_app_writes_and_reports_errant_gtids()
{
    let cluster = Cluster::new("mcl");
    let watch = CmdlineWatch::start(cluster.secrets());
    let primary = cluster.start(&cluster.mariadb_config(0, Bootstrap::InitPrimary, ""));
    let status = primary.wait_ready();
    assert_eq!(status["role"], "primary", "{status}");
    assert_eq!(status["readOnly"], false, "{status}");
    let pw = app(&cluster);
    maria_sql(
        primary.config.port,
        "app",
        &pw,
        "CREATE TABLE app.items (id INT PRIMARY KEY, name TEXT)",
    )
    .unwrap();
    maria_sql(
        primary.config.port,
        "app",
        &pw,
        "INSERT INTO app.items VALUES (1, 'before the clone')",
    )
    .unwrap();

    // /backup needs the token.
    let (code, _) = primary.get("/backup");
    assert_eq!(code, 401);

    let replica = cluster.start(&cluster.mariadb_config(
        1,
        Bootstrap::CloneFrom {
            upstream: primary.endpoint(),
        },
        "",
    ));
    let status = replica.wait_ready();
    assert_eq!(status["role"], "replica", "{status}");
    assert_eq!(status["upstream"], "mcl-0", "{status}");
    assert_eq!(status["readOnly"], true, "{status}");
    assert_eq!(status["receiverRunning"], true, "{status}");
    assert_eq!(status["applierRunning"], true, "{status}");
    assert!(status["errant"].is_null(), "{status}");
    wait_rows(
        &replica,
        &cluster,
        "SELECT name FROM app.items ORDER BY id",
        &["before the clone"],
    );

    // New writes flow with GTIDs; the replica reaches the primary's position.
    maria_sql(
        primary.config.port,
        "app",
        &pw,
        "INSERT INTO app.items VALUES (2, 'after the clone')",
    )
    .unwrap();
    wait_rows(&replica, &cluster, "SELECT COUNT(*) FROM app.items", &["2"]);
    let primary_pos = primary.status()["position"].as_str().unwrap().to_string();
    assert!(primary_pos.starts_with("0-1000-"), "{primary_pos}");
    let caught_up = replica.wait_status("the primary's position and no lag", |s| {
        s["position"] == primary_pos.as_str() && s["lag"] == 0
    });
    assert!(caught_up["lagSeconds"].as_f64().is_some(), "{caught_up}");

    // The application cannot write on a replica.
    let refused = maria_sql(
        replica.config.port,
        "app",
        &pw,
        "INSERT INTO app.items VALUES (3, 'on the replica')",
    )
    .unwrap_err();
    assert!(
        refused.contains("read-only") || refused.contains("read_only"),
        "{refused}"
    );

    let (code, metrics) = replica.get("/metrics");
    assert_eq!(code, 200);
    assert!(
        metrics.contains("stator_replication_lag_transactions{instance_name=\"mcl-1\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("stator_errant_transactions{instance_name=\"mcl-1\"} 0"));

    // An errant transaction: root writes on the replica with the binary log on.
    let socket = replica.config.run_dir.join("mariadb.sock");
    maria_root(
        &socket,
        "SET SESSION sql_log_bin = 1; SET GLOBAL read_only = OFF; INSERT INTO app.items VALUES (9, 'errant'); SET GLOBAL read_only = ON",
    )
    .unwrap();
    let status = replica.wait_status("the errant GTID", |s| s["errant"].is_string());
    let errant = status["errant"].as_str().unwrap();
    assert!(errant.contains("0-1001-"), "{status}");
    assert_eq!(status["ready"], false, "{status}");
    let (code, why) = replica.get("/readyz");
    assert_eq!(code, 503);
    assert!(why.contains("0-1001-") && why.contains("mcl-0"), "{why}");
    // Even once the primary writes past that sequence number.
    for id in 10..13 {
        maria_sql(
            primary.config.port,
            "app",
            &pw,
            &format!("INSERT INTO app.items VALUES ({id}, 'more')"),
        )
        .unwrap();
    }
    let status = replica.wait_status("an SQL thread stopped by strict mode, errant still", |s| {
        s["errant"].is_string() && s["applierRunning"] == false
    });
    assert!(status["replicationError"].is_string(), "{status}");

    let hits = watch.finish();
    assert!(hits.is_empty(), "secrets on command lines: {hits:?}");
    // Nor in any log: the managers' and the servers'.
    for m in [&primary, &replica] {
        for log in [&m.stderr_path, &m.config.log_file] {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            for secret in cluster.secrets() {
                assert!(!text.contains(&secret), "a secret in {}", log.display());
            }
        }
    }
}

#[test]
fn a_replica_is_promoted_and_the_former_primary_rejoins_it() {
    let cluster = Cluster::new("mpr");
    let watch = CmdlineWatch::start(cluster.secrets());
    let old = cluster.start(&cluster.mariadb_config(0, Bootstrap::InitPrimary, ""));
    old.wait_ready();
    let pw = app(&cluster);
    maria_sql(
        old.config.port,
        "app",
        &pw,
        "CREATE TABLE app.t (id INT PRIMARY KEY); INSERT INTO app.t VALUES (1)",
    )
    .unwrap();
    let new = cluster.start(&cluster.mariadb_config(
        1,
        Bootstrap::CloneFrom {
            upstream: old.endpoint(),
        },
        "",
    ));
    new.wait_ready();
    wait_rows(&new, &cluster, "SELECT COUNT(*) FROM app.t", &["1"]);

    // Switchover: promote the replica, then demote the old primary onto it.
    let (code, body) = new.post("/promote", Some(&token(&cluster)), "");
    assert_eq!(code, 200, "{body}\n{}", new.logs());
    let status = new.wait_status("primary", |s| s["role"] == "primary");
    assert_eq!(status["readOnly"], false, "{status}");
    maria_sql(new.config.port, "app", &pw, "INSERT INTO app.t VALUES (2)").unwrap();

    let demote = serde_json::json!({ "upstream": new.endpoint() }).to_string();
    let (code, body) = old.post("/demote", Some(&token(&cluster)), &demote);
    assert_eq!(code, 200, "{body}\n{}", old.logs());
    let status = old.wait_ready();
    assert_eq!(status["role"], "replica", "{status}");
    assert_eq!(status["upstream"], "mpr-1", "{status}");
    wait_rows(&old, &cluster, "SELECT COUNT(*) FROM app.t", &["2"]);
    maria_sql(new.config.port, "app", &pw, "INSERT INTO app.t VALUES (3)").unwrap();
    wait_rows(&old, &cluster, "SELECT COUNT(*) FROM app.t", &["3"]);
    assert!(
        maria_sql(old.config.port, "app", &pw, "INSERT INTO app.t VALUES (4)").is_err(),
        "the former primary is read-only"
    );

    let hits = watch.finish();
    assert!(hits.is_empty(), "secrets on command lines: {hits:?}");
}

#[test]
fn a_former_primary_with_unreplicated_writes_is_refused_as_a_replica() {
    let cluster = Cluster::new("mer");
    let old = cluster.start(&cluster.mariadb_config(0, Bootstrap::InitPrimary, ""));
    old.wait_ready();
    let pw = app(&cluster);
    maria_sql(
        old.config.port,
        "app",
        &pw,
        "CREATE TABLE app.t (id INT PRIMARY KEY); INSERT INTO app.t VALUES (1)",
    )
    .unwrap();
    let new = cluster.start(&cluster.mariadb_config(
        1,
        Bootstrap::CloneFrom {
            upstream: old.endpoint(),
        },
        "",
    ));
    new.wait_ready();
    wait_rows(&new, &cluster, "SELECT COUNT(*) FROM app.t", &["1"]);
    let (code, body) = new.post("/promote", Some(&token(&cluster)), "");
    assert_eq!(code, 200, "{body}");
    new.wait_status("primary", |s| s["role"] == "primary");
    // Split brain: the old primary takes a write the new one never sees.
    maria_sql(old.config.port, "app", &pw, "INSERT INTO app.t VALUES (2)").unwrap();

    let demote = serde_json::json!({ "upstream": new.endpoint() }).to_string();
    let (code, body) = old.post("/demote", Some(&token(&cluster)), &demote);
    assert_eq!(code, 409, "{body}\n{}", old.logs());
    assert!(
        body.contains("0-1000-") && body.contains("mer-1") && body.contains("rebuild"),
        "{body}"
    );
    let status = old.wait_status("failed, stopped", |s| s["state"] == "failed");
    assert!(status["pid"].is_null(), "{status}");
}

#[test]
fn a_killed_manager_is_replaced_by_one_that_adopts_the_running_server() {
    let cluster = Cluster::new("mad");
    let config = cluster.mariadb_config(0, Bootstrap::InitPrimary, "");
    let mut first = cluster.start(&config);
    let before = first.wait_ready();
    let pid = before["pid"].as_u64().unwrap();
    first.kill9();
    let second = cluster.start(&config);
    let after = second.wait_ready();
    assert_eq!(after["pid"].as_u64(), Some(pid), "{after}");
    assert_eq!(after["role"], "primary");
    maria_sql(
        config.port,
        "app",
        &app(&cluster),
        "CREATE TABLE app.still_here (id INT)",
    )
    .unwrap();
    drop(first);
}

#[test]
fn synchronous_replication_is_lossless_and_a_promoted_replica_keeps_it() {
    let cluster = Cluster::new("msy");
    let sync = "  replication:\n    synchronous: true\n";
    let primary = cluster.start(&cluster.mariadb_config(0, Bootstrap::InitPrimary, sync));
    primary.wait_ready();
    let replica = cluster.start(&cluster.mariadb_config(
        1,
        Bootstrap::CloneFrom {
            upstream: primary.endpoint(),
        },
        sync,
    ));
    replica.wait_ready();
    let semi_sync = |m: &common::Manager| {
        maria_root(
            &m.config.run_dir.join("mariadb.sock"),
            "SELECT CONCAT_WS(',', @@rpl_semi_sync_master_enabled, @@rpl_semi_sync_slave_enabled, @@rpl_semi_sync_master_wait_point, @@rpl_semi_sync_master_timeout, @@gtid_strict_mode, @@log_slave_updates)",
        )
        .unwrap()
    };
    assert_eq!(semi_sync(&primary), ["ON,ON,AFTER_SYNC,86400000,ON,ON"]);
    // A replica's own binary log must not wait for acknowledgements: only the replica side.
    assert_eq!(semi_sync(&replica), ["OFF,ON,AFTER_SYNC,86400000,ON,ON"]);
    // The primary acknowledges a commit once the replica has it.
    let pw = app(&cluster);
    maria_sql(
        primary.config.port,
        "app",
        &pw,
        "CREATE TABLE app.s (id INT PRIMARY KEY); INSERT INTO app.s VALUES (1)",
    )
    .unwrap();
    let acked = maria_root(
        &primary.config.run_dir.join("mariadb.sock"),
        "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_YES_TX'",
    )
    .unwrap();
    assert_ne!(acked, ["0"], "commits were acknowledged by the replica");
    wait_rows(&replica, &cluster, "SELECT COUNT(*) FROM app.s", &["1"]);
    // A promoted replica waits for acknowledgements as the primary did.
    let (code, body) = replica.post("/promote", Some(&token(&cluster)), "");
    assert_eq!(code, 200, "{body}");
    assert_eq!(semi_sync(&replica), ["ON,ON,AFTER_SYNC,86400000,ON,ON"]);
}

/// Synchronous mode, no replica connected: a client's commit waits for an acknowledgement
/// nobody can give, and mariadb-backup's commit barrier waits for that commit, so the clone
/// that would bring a replica back (a 2-instance database rebuilding its replica after a
/// failover) hung for the semi-sync timeout, a day. The primary's manager cuts the waiting
/// client session; the clone finishes and the replica acknowledges from then on.
#[test]
fn a_clone_of_a_synchronous_primary_with_no_replica_is_not_held_up_by_a_commit_waiting_for_an_ack()
{
    let cluster = Cluster::new("mbk");
    let sync = "  replication:\n    synchronous: true\n";
    let primary = cluster.start(&cluster.mariadb_config(0, Bootstrap::InitPrimary, sync));
    primary.wait_ready();
    let socket = primary.config.run_dir.join("mariadb.sock");
    // Not binary-logged, so not waiting for an acknowledgement: the table is in the data files.
    maria_root(
        &socket,
        "SET SESSION sql_log_bin = 0; CREATE TABLE app.w (id INT PRIMARY KEY)",
    )
    .unwrap();
    let port = primary.config.port;
    let pw = app(&cluster);
    let writer =
        std::thread::spawn(move || maria_sql(port, "app", &pw, "INSERT INTO app.w VALUES (1)"));
    // The write waits for an acknowledgement.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while maria_root(
        &socket,
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE STATE = 'Waiting for semi-sync ACK from slave'",
    )
    .unwrap()
        != ["1"]
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the write never waited for an acknowledgement"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let replica = cluster.start(&cluster.mariadb_config(
        1,
        Bootstrap::CloneFrom {
            upstream: primary.endpoint(),
        },
        sync,
    ));
    replica.wait_ready();
    // The cut client got no acknowledgement (its connection was closed), not a success.
    let answer = writer.join().unwrap();
    assert!(
        answer
            .as_ref()
            .is_err_and(|e| !e.contains("no answer within")),
        "{answer:?}\n{}",
        primary.logs()
    );
    assert!(
        primary.logs().contains("cut a client session"),
        "{}",
        primary.logs()
    );
    // From now on the replica acknowledges: a new write returns, and it is on the replica.
    maria_sql(port, "app", &app(&cluster), "INSERT INTO app.w VALUES (2)").unwrap();
    wait_rows(
        &replica,
        &cluster,
        "SELECT COUNT(*) FROM app.w WHERE id = 2",
        &["1"],
    );
}

#[test]
fn a_running_replica_follows_a_promoted_sibling_without_a_restart_unless_it_holds_errant_writes() {
    let cluster = Cluster::new("mrp");
    let sync = "  replication:\n    synchronous: true\n";
    let mut old = cluster.start(&cluster.mariadb_config(0, Bootstrap::InitPrimary, sync));
    old.wait_ready();
    let replica = |ordinal: u32| {
        let m = cluster.start(&cluster.mariadb_config(
            ordinal,
            Bootstrap::CloneFrom {
                upstream: old.endpoint(),
            },
            sync,
        ));
        m.wait_ready();
        m
    };
    let new = replica(1);
    let other = replica(2);
    // Synchronous: a commit waits for a replica, so the first one comes once they run.
    let pw = app(&cluster);
    maria_sql(
        old.config.port,
        "app",
        &pw,
        "CREATE TABLE app.t (id INT PRIMARY KEY); INSERT INTO app.t VALUES (1)",
    )
    .unwrap();
    for m in [&new, &other] {
        wait_rows(m, &cluster, "SELECT COUNT(*) FROM app.t", &["1"]);
    }
    let pid = other.status()["pid"].as_u64().unwrap();

    // A failover: the primary is gone, a replica is promoted, the other one follows it.
    old.terminate();
    let (code, body) = new.post("/promote", Some(&token(&cluster)), "");
    assert_eq!(code, 200, "{body}\n{}", new.logs());
    let demote = serde_json::json!({ "upstream": new.endpoint() }).to_string();
    let (code, body) = other.post("/demote", Some(&token(&cluster)), &demote);
    assert_eq!(code, 200, "{body}\n{}", other.logs());
    assert!(body.contains("without a restart"), "{body}");
    let status = other.wait_status("following mrp-1", |s| s["upstream"] == "mrp-1");
    assert_eq!(
        status["pid"].as_u64(),
        Some(pid),
        "the same server: {status}"
    );
    assert_eq!(status["readOnly"], true, "{status}");
    // The new primary's semi-synchronous commit is acknowledged by it, and it has the row.
    maria_sql(new.config.port, "app", &pw, "INSERT INTO app.t VALUES (2)").unwrap();
    wait_rows(&other, &cluster, "SELECT COUNT(*) FROM app.t", &["2"]);

    // A write of its own (root passes read_only) is an errant transaction: not re-pointed in
    // place, the offline rejoin refuses it as before.
    maria_root(
        &other.config.run_dir.join("mariadb.sock"),
        "INSERT INTO app.t VALUES (100)",
    )
    .unwrap();
    let (code, body) = other.post("/demote", Some(&token(&cluster)), &demote);
    assert_eq!(code, 409, "{body}\n{}", other.logs());
    assert!(
        body.contains("0-1002-") && body.contains("mrp-1") && body.contains("rebuild"),
        "{body}"
    );
    let status = other.wait_status("failed, stopped", |s| s["state"] == "failed");
    assert!(status["pid"].is_null(), "{status}");
}
