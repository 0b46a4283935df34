//! `stator chaos` with real PostgreSQL 15 and MariaDB 10.11: fault injection by pid from the
//! state dir, and short runs of the consistency checker (the long ones live in
//! `stator bench failover` and `stator chaos run --failovers 20`).
//!
//! The checker's verdicts are asserted, not its timings: synchronous replication loses no
//! acknowledged write over forced failovers, and no run ever has two writable instances.

mod local_support;

use std::time::Duration;

use local_support::{Cluster, alive};

const WAIT: Duration = Duration::from_secs(120);

/// `stator chaos run … -o json`, parsed; the run's own stderr is kept for failure messages.
fn check(cluster: &Cluster, failovers: u32, fault: &str) -> (serde_json::Value, String) {
    let out = cluster.stator(&[
        "chaos",
        "run",
        "--failovers",
        &failovers.to_string(),
        "--fault",
        fault,
        "--round-timeout",
        "120",
        "-o",
        "json",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "chaos run printed no report ({e}):\n{stdout}\n{stderr}\n{}",
            cluster.logs_for_failure()
        )
    });
    (report, format!("{stderr}\n{}", cluster.logs_for_failure()))
}

fn assert_completed(report: &serde_json::Value, rounds: usize, context: &str) {
    assert!(
        report["aborted"].is_null(),
        "the run did not finish: {}\n{report:#}\n{context}",
        report["aborted"]
    );
    let done = report["rounds"].as_array().map(Vec::len).unwrap_or(0);
    assert_eq!(done, rounds, "{report:#}\n{context}");
    assert!(
        report["writesAcknowledged"].as_u64().unwrap_or(0) > 0,
        "{report:#}"
    );
    assert!(
        report["probeRounds"].as_u64().unwrap_or(0) > 0,
        "{report:#}"
    );
    assert!(report["readBackFrom"].is_string(), "{report:#}");
}

/// The run left no table in the application database.
fn assert_table_dropped(cluster: &Cluster, report: &serde_json::Value) {
    assert_eq!(report["tableDropped"], true, "{report:#}");
    let left = if cluster.engine == "postgres" {
        cluster
            .psql(
                cluster.rw(),
                "SELECT count(*) FROM pg_tables WHERE tablename = 'stator_chaos'",
            )
            .unwrap()
    } else {
        cluster
            .value(
                cluster.rw(),
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'stator_chaos'",
            )
            .unwrap()
    };
    assert_eq!(
        left, "0",
        "stator_chaos was left in the application database"
    );
}

fn assert_no_split_brain(report: &serde_json::Value, context: &str) {
    assert_eq!(
        report["splitBrain"].as_array().map(Vec::len),
        Some(0),
        "two writable instances at once:\n{report:#}\n{context}"
    );
}

/// Synchronous replication, the primary hung (SIGSTOP of its server) `rounds` times.
fn synchronous_hangs_lose_nothing(cluster: &Cluster, rounds: u32) {
    cluster.write_spec(3, "  replication:\n    synchronous: true\n");
    cluster.up();
    let (report, context) = check(cluster, rounds, "stop");
    assert_completed(&report, rounds as usize, &context);
    assert_eq!(report["synchronous"], true);
    assert_eq!(
        report["writesLost"], 0,
        "acknowledged writes lost:\n{report:#}\n{context}"
    );
    assert_no_split_brain(&report, &context);
    // A hang is a real failover: writes resumed on another instance every time.
    for round in report["rounds"].as_array().unwrap() {
        assert_ne!(
            round["writesResumedOn"], round["failed"],
            "{round:#}\n{context}"
        );
        assert!(round["outageSeconds"].is_f64(), "{round:#}");
    }
    assert!(report["outage"]["p50"].is_f64(), "{report:#}");
    assert_table_dropped(cluster, &report);
    cluster.assert_status_matches_clients(&cluster.app_password());
}

/// Asynchronous replication, the primary's whole node hung `rounds` times.
fn asynchronous_lost_nodes_never_split(cluster: &Cluster, rounds: u32) {
    cluster.up();
    let (report, context) = check(cluster, rounds, "stop-node");
    assert_completed(&report, rounds as usize, &context);
    assert_eq!(report["synchronous"], false);
    // Asynchronous replication may lose what the lost primary had not sent yet: reported,
    // not asserted.
    assert!(report["writesLost"].is_u64(), "{report:#}");
    assert_no_split_brain(&report, &context);
    assert_table_dropped(cluster, &report);
    cluster.assert_status_matches_clients(&cluster.app_password());
}

#[test]
fn synchronous_failovers_of_a_hung_primary_lose_no_acknowledged_write_and_never_leave_two_writable()
{
    synchronous_hangs_lose_nothing(&Cluster::new("chks", 3), 3);
}

#[test]
fn asynchronous_failovers_of_a_lost_node_never_leave_two_writable_instances() {
    asynchronous_lost_nodes_never_split(&Cluster::new("chka", 3), 3);
}

#[test]
fn mariadb_synchronous_failovers_of_a_hung_primary_lose_no_acknowledged_write_and_never_leave_two_writable()
 {
    synchronous_hangs_lose_nothing(&Cluster::mariadb("chkms", 3), 3);
}

#[test]
fn mariadb_asynchronous_failovers_of_a_lost_node_never_leave_two_writable_instances() {
    asynchronous_lost_nodes_never_split(&Cluster::mariadb("chkma", 3), 3);
}

/// `kill -9` of the primary's manager and server: the supervisor may restart it in place before
/// the detection timeout runs out. Such a round is said not to be a failover and another round
/// follows, so the run makes exactly the failovers asked for; the table is dropped at the end.
#[test]
fn killed_nodes_make_exactly_the_failovers_asked_and_leave_no_table() {
    let cluster = Cluster::new("chkk", 2);
    cluster.up();
    let asked = 2;
    let (report, context) = check(&cluster, asked, "kill-node");
    assert!(
        report["aborted"].is_null(),
        "the run did not finish: {}\n{report:#}\n{context}",
        report["aborted"]
    );
    let rounds = report["rounds"].as_array().unwrap();
    let failovers = rounds.iter().filter(|r| r["failover"] == true).count();
    assert_eq!(failovers, asked as usize, "{report:#}\n{context}");
    assert_eq!(report["failovers"], asked, "{report:#}");
    assert_eq!(report["failoversAsked"], asked, "{report:#}");
    for round in rounds.iter().filter(|r| r["failover"] == true) {
        assert!(round["primaryMovedSeconds"].is_f64(), "{round:#}");
    }
    // Measured, not asserted: how many rounds came back in place.
    eprintln!(
        "kill-node: {failovers} failovers in {} rounds ({} back in place)",
        rounds.len(),
        rounds.len() - failovers
    );
    assert_no_split_brain(&report, &context);
    assert_table_dropped(&cluster, &report);

    // A detection timeout far longer than a restart: every killed node comes back in place.
    // No round counts; the run says so, gives up after a bounded number of rounds, exits 1.
    cluster.write_spec(2, "  failover:\n    detectionTimeout: 2m\n");
    cluster.up();
    let (report, context) = check(&cluster, 1, "kill-node");
    let aborted = report["aborted"].as_str().unwrap_or_default();
    assert!(
        aborted.contains("0 of 1 failover(s)") && aborted.contains("came back in place"),
        "{report:#}\n{context}"
    );
    let rounds = report["rounds"].as_array().unwrap();
    assert!(
        rounds.len() > 1,
        "a round that did not count was retried: {report:#}"
    );
    assert!(rounds.iter().all(|r| r["failover"] == false), "{report:#}");
    assert!(
        context.contains("not a failover"),
        "each such round is reported as it happens: {context}"
    );
    assert_table_dropped(&cluster, &report);
}

#[test]
fn chaos_names_unknown_instances_and_stopped_databases_and_signals_only_the_instance_asked() {
    let cluster = Cluster::new("chkf", 2);

    // Never started: the database is not found (exit 2), nothing is signalled.
    let out = cluster.stator(&["chaos", "kill", "chkf-0"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not exist here"),
        "{out:?}"
    );

    cluster.up();
    let out = cluster.stator(&["chaos", "kill", "chkf-5"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("chkf-0, chkf-1"), "{stderr}");

    // kill -9 of the replica's server: the pid printed is the one that was running, and the
    // instance manager starts a new one.
    let before = cluster.row("chkf-1")["report"]["pid"].as_u64().unwrap() as u32;
    let printed = cluster.ok(&["chaos", "kill", "chkf-1"]);
    assert!(
        printed.contains(&format!("SIGKILL server {before}")),
        "{printed}"
    );
    cluster.eventually("a new server for chkf-1", WAIT, || {
        let row = cluster.row("chkf-1");
        let pid = row["report"]["pid"].as_u64()?;
        (pid as u32 != before && row["report"]["ready"] == true).then_some(())
    });
    assert!(!alive(before));

    // A hang of the replica, by pid, and its end.
    let stopped: serde_json::Value =
        serde_json::from_str(&cluster.ok(&["chaos", "stop", "chkf-1", "-o", "json"])).unwrap();
    let pids: Vec<u32> = stopped["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_u64().unwrap() as u32)
        .collect();
    assert!(pids.len() > 1, "the server and its children: {stopped:#}");
    for pid in &pids {
        cluster.eventually(&format!("pid {pid} stopped"), WAIT, || {
            state_of(*pid).is_some_and(|s| s == "T").then_some(())
        });
    }
    let primary_pid = cluster.row("chkf-0")["report"]["pid"].as_u64().unwrap() as u32;
    assert!(
        !pids.contains(&primary_pid),
        "the primary was not asked for"
    );
    let resumed: serde_json::Value =
        serde_json::from_str(&cluster.ok(&["chaos", "resume", "chkf-1", "-o", "json"])).unwrap();
    assert_eq!(
        resumed["processes"].as_array().map(Vec::len),
        Some(pids.len()),
        "{resumed:#}"
    );
    for pid in &pids {
        cluster.eventually(&format!("pid {pid} running again"), WAIT, || {
            state_of(*pid).is_none_or(|s| s != "T").then_some(())
        });
    }

    // Stopped database: a clear error, exit 1.
    cluster.ok(&["down"]);
    let out = cluster.stator(&["chaos", "stop", "chkf-0"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is stopped"),
        "{out:?}"
    );
}

/// The state letter of `pid` in /proc (R, S, T, Z, …).
fn state_of(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .next()?
            .to_string(),
    )
}
