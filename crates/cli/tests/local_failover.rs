//! Failover and switchover in the local runtime with real PostgreSQL 15 and MariaDB 10.11,
//! three instances: a primary killed and held down is replaced and comes back as a replica with
//! every row; a hung (SIGSTOPped) primary is failed over and never writable alongside the new
//! one; a switchover under a running writer loses no acknowledged write; draining the primary
//! moves it away first and honours the disruption budget.

mod local_support;

use std::time::Duration;

use local_support::Cluster;
use local_support::failover::{Watcher, Writer, signal, writable_query};

const WAIT: Duration = Duration::from_secs(120);

fn name(cluster: &Cluster, ordinal: u32) -> String {
    format!("{}-{ordinal}", cluster.name)
}

fn ordinal(instance: &str) -> u32 {
    instance.rsplit_once('-').unwrap().1.parse().unwrap()
}

/// A ready three-instance cluster of `engine` with table `t (n bigint primary key)`.
fn ready_cluster(engine: &str, prefix: &str) -> (Cluster, String) {
    let cluster = if engine == "mariadb" {
        Cluster::mariadb(prefix, 3)
    } else {
        Cluster::new(prefix, 3)
    };
    cluster.up();
    let password = cluster.app_password();
    cluster
        .quick_sql(
            &password,
            cluster.rw(),
            "CREATE TABLE t (n bigint PRIMARY KEY)",
        )
        .unwrap();
    (cluster, password)
}

/// Waits until the core holds a primary other than `old` and `rw` reaches it, writable.
fn wait_for_new_primary(cluster: &Cluster, password: &str, old: &str) -> String {
    cluster.eventually("a new primary behind rw", WAIT, || {
        let status = cluster.status();
        let primary = status["failover"]["primary"].as_str()?.to_string();
        let rw = status["proxies"]["rw"]["targets"].as_array()?.clone();
        (primary != old
            && rw == vec![serde_json::json!(primary)]
            && cluster
                .quick_sql(password, cluster.rw(), writable_query(cluster.engine))
                .is_ok_and(|v| v == "1"))
        .then_some(primary)
    })
}

/// Waits until `instance` is a ready replica following `primary`.
fn wait_for_replica_of(cluster: &Cluster, instance: &str, primary: &str) {
    cluster.eventually(
        &format!("{instance} back as a replica of {primary}"),
        WAIT,
        || {
            let row = cluster.row(instance);
            let report = &row["report"];
            (report["role"] == "replica"
                && report["ready"] == true
                && report["upstream"] == primary)
                .then_some(())
        },
    );
}

fn insert_range(cluster: &Cluster, password: &str, from: u64, to: u64) {
    let sql = if cluster.engine == "mariadb" {
        format!("INSERT INTO t SELECT seq FROM seq_{from}_to_{to}")
    } else {
        format!("INSERT INTO t SELECT generate_series({from}, {to})")
    };
    cluster.quick_sql(password, cluster.rw(), &sql).unwrap();
}

/// The transition `last` (a `failover.last` of the status) reports the write outage clients
/// saw, consistently: its timestamps in order, the rw-unrouted part inside it, and covering the
/// longest gap `writer` saw (less 100 ms for the two clocks' sampling). No timing target.
fn assert_client_outage_covers(cluster: &Cluster, kind: &str, writer_gap: Duration) {
    let status = cluster.eventually("the client write outage measured", WAIT, || {
        let status = cluster.status();
        status["failover"]["last"]["clientWriteOutageMs"]
            .as_u64()
            .is_some()
            .then_some(status)
    });
    let last = &status["failover"]["last"];
    assert_eq!(last["kind"], kind, "{status:#}");
    let ms = |key: &str| {
        last[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} missing: {status:#}"))
    };
    let (client, unrouted) = (ms("clientWriteOutageMs"), ms("rwUnroutedMs"));
    let (stopped, started, finished, accepted) = (
        ms("writesStoppedAtMs"),
        ms("startedAtMs"),
        ms("finishedAtMs"),
        ms("writeAcceptedAtMs"),
    );
    println!(
        "{kind}: clientWriteOutageMs {client}, rwUnroutedMs {unrouted}, the writer's longest gap {} ms",
        writer_gap.as_millis()
    );
    assert!(
        stopped <= started && started <= finished && finished <= accepted,
        "{status:#}"
    );
    assert_eq!(client, accepted - stopped, "{status:#}");
    assert!(unrouted <= client, "{status:#}");
    assert!(
        u128::from(client) + 100 >= writer_gap.as_millis(),
        "the reported client outage ({client} ms) is shorter than what the writer saw ({} ms)",
        writer_gap.as_millis()
    );
    let table = cluster.ok(&["status"]);
    assert!(
        table.contains(&format!("clients could not write for {client} ms")),
        "{table}"
    );
}

fn count_on(cluster: &Cluster, password: &str, ordinal: u32) -> u64 {
    cluster
        .quick_sql(
            password,
            cluster.server_port(ordinal),
            "SELECT count(*) FROM t",
        )
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Kill -9 of the primary's manager and server, held down: a replica is promoted, rw reaches
/// it, ro holds only the remaining replica; released, the old primary rejoins with every row.
fn killed_primary_is_replaced_and_rejoins(engine: &str, prefix: &str) {
    let (cluster, password) = ready_cluster(engine, prefix);
    insert_range(&cluster, &password, 1, 100);
    let old = name(&cluster, 0);
    assert_eq!(cluster.core_primary().as_deref(), Some(old.as_str()));
    cluster
        .quick_sql(
            &password,
            cluster.rw(),
            "CREATE TABLE w (n bigint PRIMARY KEY)",
        )
        .unwrap();
    let writer = Writer::start(cluster.engine, password.clone(), cluster.rw(), "w");
    cluster.eventually("the writer writes", WAIT, || {
        (writer.acked() >= 10).then_some(())
    });

    cluster.hold_and_kill(0);
    let new = wait_for_new_primary(&cluster, &password, &old);
    let before = writer.acked();
    cluster.eventually("the writer writes to the new primary", WAIT, || {
        (writer.acked() >= before + 10).then_some(())
    });
    let gap = writer.longest_gap();
    writer.finish();
    assert_client_outage_covers(&cluster, "failover", gap);
    let third = name(&cluster, 3 - ordinal(&new));
    // ro: only the remaining replica, once it follows the new primary; never the new primary
    // nor the fenced one.
    let status = cluster.eventually("ro on the remaining replica", WAIT, || {
        let status = cluster.status();
        let ro = status["proxies"]["ro"]["targets"].as_array()?.clone();
        assert!(
            !ro.contains(&serde_json::json!(new)) && !ro.contains(&serde_json::json!(old)),
            "ro must hold neither the new primary nor the fenced one: {status:#}"
        );
        (ro == vec![serde_json::json!(third)]).then_some(status)
    });
    let last = &status["failover"]["last"];
    assert_eq!(last["kind"], "failover", "{status:#}");
    assert_eq!(last["from"], old.as_str());
    assert_eq!(last["to"], new.as_str());
    assert_eq!(last["outcome"], "done");
    assert!(last["startedAtMs"].as_u64().is_some() && last["finishedAtMs"].as_u64().is_some());
    assert!(
        status["failover"]["fenced"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(old)),
        "{status:#}"
    );
    let table = cluster.ok(&["status"]);
    assert!(
        table.contains(&format!("last failover: {old} -> {new}")),
        "{table}"
    );
    assert!(table.contains(&format!("{old}: held down")), "{table}");
    // While it is held down, status shows the new primary as the one clients write to.
    cluster.assert_status_matches_clients(&password);

    insert_range(&cluster, &password, 101, 200);
    cluster.ok(&["drain", &old, "--uncordon"]);
    wait_for_replica_of(&cluster, &old, &new);
    cluster.eventually("every row on the former primary", WAIT, || {
        (count_on(&cluster, &password, 0) == 200).then_some(())
    });
    assert_eq!(count_on(&cluster, &password, ordinal(&new)), 200);
    let status = cluster.status();
    assert!(
        status["failover"]["fenced"].as_array().unwrap().is_empty(),
        "{status:#}"
    );
    cluster.assert_status_matches_clients(&password);
}

/// A switchover to NAME-2 while a writer inserts through rw: every acknowledged row is on the
/// new primary, the write outage is printed, the old primary rejoins.
fn switchover_under_a_writer_loses_nothing(engine: &'static str, prefix: &str) {
    let (cluster, password) = ready_cluster(engine, prefix);
    let target = name(&cluster, 2);
    let writer = Writer::start(engine, password.clone(), cluster.rw(), "t");
    cluster.eventually("the writer writes", WAIT, || {
        (writer.acked() >= 20).then_some(())
    });
    let out = cluster.ok(&["switchover", "--to", &target]);
    assert!(out.contains("switchover done"), "{out}");
    assert!(out.contains("write outage"), "{out}");
    let before = writer.acked();
    cluster.eventually("the writer writes to the new primary", WAIT, || {
        (writer.acked() >= before + 20).then_some(())
    });
    let gap = writer.longest_gap();
    let acked = writer.finish();
    let status = cluster.status();
    assert_eq!(status["failover"]["primary"], target.as_str(), "{status:#}");
    assert_eq!(status["failover"]["switchover"]["state"], "done");
    assert!(out.contains("clients could not write for"), "{out}");
    assert_client_outage_covers(&cluster, "switchover", gap);
    let stored: Vec<u64> = cluster
        .quick_sql(&password, cluster.rw(), "SELECT n FROM t ORDER BY n")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let missing: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|n| stored.binary_search(n).is_err())
        .collect();
    assert!(missing.is_empty(), "acknowledged rows lost: {missing:?}");
    wait_for_replica_of(&cluster, &name(&cluster, 0), &target);
    cluster.assert_status_matches_clients(&password);

    // Refusals name the reason: the primary itself, and an instance that does not exist.
    let same = cluster.stator(&["switchover", "--to", &target]);
    assert!(!same.status.success());
    let said = String::from_utf8_lossy(&same.stderr);
    assert!(said.contains("already the primary"), "{said}");
    assert_eq!(said.matches("switchover refused").count(), 1, "{said}");
    let absent = format!("{prefix}-7");
    let bad = cluster.stator(&["switchover", "--to", &absent]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains(&format!("--to: \"{absent}\"")));
}

/// SIGSTOP of the primary's server: failed over; after SIGCONT the old one comes back only as
/// a replica; at no probe were two instances writable.
fn hung_primary_is_failed_over_without_two_writers(engine: &'static str, prefix: &str) {
    let (cluster, password) = ready_cluster(engine, prefix);
    insert_range(&cluster, &password, 1, 50);
    let old = name(&cluster, 0);
    let ports = (0..3).map(|o| cluster.server_port(o)).collect();
    let watcher = Watcher::start(engine, password.clone(), ports);
    let hung = cluster.servers(0);
    assert_eq!(hung.len(), 1, "one server process on {old}");
    for pid in &hung {
        signal(*pid, "STOP");
    }
    let new = wait_for_new_primary(&cluster, &password, &old);
    insert_range(&cluster, &password, 51, 100);
    for pid in &hung {
        signal(*pid, "CONT");
    }
    // The fence killed the hung server; the old primary comes back only as a replica.
    wait_for_replica_of(&cluster, &old, &new);
    cluster.eventually("every row on the former primary", WAIT, || {
        (count_on(&cluster, &password, 0) == 100).then_some(())
    });
    cluster.assert_status_matches_clients(&password);
    let (rounds, two_writable) = watcher.finish();
    assert!(rounds > 0);
    assert_eq!(
        two_writable, 0,
        "two writable instances in {two_writable} of {rounds} rounds"
    );
}

#[test]
fn a_killed_primary_held_down_is_replaced_and_rejoins_as_a_replica_with_every_row() {
    killed_primary_is_replaced_and_rejoins("postgres", "fok");
}

#[test]
fn a_killed_mariadb_primary_held_down_is_replaced_and_rejoins_as_a_replica_with_every_row() {
    killed_primary_is_replaced_and_rejoins("mariadb", "fmk");
}

#[test]
fn a_hung_primary_is_failed_over_and_never_writable_alongside_the_new_one() {
    hung_primary_is_failed_over_without_two_writers("postgres", "fos");
}

#[test]
fn a_hung_mariadb_primary_is_failed_over_and_never_writable_alongside_the_new_one() {
    hung_primary_is_failed_over_without_two_writers("mariadb", "fms");
}

#[test]
fn a_switchover_to_a_named_replica_under_a_running_writer_loses_no_acknowledged_write() {
    switchover_under_a_writer_loses_nothing("postgres", "fow");
}

#[test]
fn a_mariadb_switchover_to_a_named_replica_under_a_running_writer_loses_no_acknowledged_write() {
    switchover_under_a_writer_loses_nothing("mariadb", "fmw");
}

#[test]
fn draining_the_primary_switches_over_first_the_budget_refuses_a_second_drain_and_up_brings_it_back()
 {
    let (cluster, password) = ready_cluster("postgres", "fod");
    insert_range(&cluster, &password, 1, 10);
    let old = name(&cluster, 0);
    let out = cluster.ok(&["drain", &old]);
    assert!(out.contains("switchover done first"), "{out}");
    let status = cluster.status();
    let new = status["failover"]["primary"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    let row = cluster.row(&old);
    assert_eq!(row["state"], "held", "{status:#}");
    // Why it is held, with a time a person reads (not milliseconds since the epoch).
    let table = cluster.ok(&["status"]);
    assert!(table.contains("drained by `stator drain` at 20"), "{table}");
    assert!(!table.contains("epoch"), "{table}");
    assert!(row["managerPid"].is_null());
    cluster.assert_status_matches_clients(&password);
    insert_range(&cluster, &password, 11, 20);

    let other = (0..3)
        .map(|o| name(&cluster, o))
        .find(|n| *n != old && *n != new)
        .unwrap();
    let refused = cluster.stator(&["drain", &other]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("maxUnavailable: 1") && stderr.contains(&old),
        "{stderr}"
    );
    assert!(cluster.row(&other)["managerPid"].as_u64().is_some());

    // The next `up` asks for every instance: the drained one runs again, as a replica.
    cluster.up();
    wait_for_replica_of(&cluster, &old, &new);
    cluster.eventually("every row on the drained instance", WAIT, || {
        (count_on(&cluster, &password, 0) == 20).then_some(())
    });
    cluster.assert_status_matches_clients(&password);
}
