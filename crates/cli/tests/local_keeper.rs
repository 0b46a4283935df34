//! The supervisor survives: its keeper restarts it at once after `kill -9` (PostgreSQL and
//! MariaDB, under a writer through `rw`: no acknowledged write lost, writes resume, the outage
//! printed), also in the middle of a MariaDB switchover (exactly one writable primary after it);
//! `up --service` writes a systemd unit; switchovers do not count as crashes for `up`; two
//! concurrent `up` start one database; Ctrl-C stops `up --foreground` cleanly.

mod local_support;

use std::collections::BTreeSet;
use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use local_support::failover::{Writer, quick_sql, signal, writable_query};
use local_support::{Cluster, alive, kill9};

const WAIT: Duration = Duration::from_secs(180);

fn pid_in(cluster: &Cluster, file: &str) -> Option<u32> {
    std::fs::read_to_string(cluster.db_dir().join(file))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Starts `stator ARGS -f SPEC --state-dir STATE` with its output piped.
fn spawn_stator(cluster: &Cluster, args: &[&str]) -> std::process::Child {
    cluster
        .command(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Processes of this database still running.
fn running(cluster: &Cluster) -> Vec<u32> {
    cluster
        .own_processes()
        .into_iter()
        .filter(|p| alive(*p))
        .collect()
}

/// Processes of this database whose command line holds `word` (`keep`, `supervise`).
fn processes_with(cluster: &Cluster, word: &str) -> Vec<u32> {
    running(cluster)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == word.as_bytes()))
        })
        .collect()
}

/// Kills the supervisor with SIGKILL while `writer` writes through `rw`; waits for the keeper's
/// new supervisor and the first write sent after the kill and acknowledged; returns the time
/// from the kill to that acknowledgement (the writer's 50 ms pause after a failed write and a
/// client process start included).
fn kill_supervisor_under_writes(cluster: &Cluster, writer: &Writer, round: usize) -> Duration {
    let before = writer.acked();
    cluster.eventually("writes flowing through rw", WAIT, || {
        (writer.acked() >= before + 5).then_some(())
    });
    let old = pid_in(cluster, "supervisor.pid").expect("supervisor.pid");
    kill9(old);
    let killed = Instant::now();
    let new = cluster.eventually("a new supervisor started by the keeper", WAIT, || {
        pid_in(cluster, "supervisor.pid").filter(|p| *p != old && alive(*p))
    });
    let resumed = cluster.eventually("writes resume through rw", WAIT, || {
        writer.first_ack_after(killed)
    });
    let outage = resumed - killed;
    println!(
        "{}: round {round}: supervisor {old} killed with SIGKILL, {new} took over; writes through rw resumed after {} ms",
        cluster.engine,
        outage.as_millis()
    );
    outage
}

/// Every number `acked` is in `table` (read through `rw`).
fn assert_none_lost(cluster: &Cluster, password: &str, table: &str, acked: &[u64]) {
    let stored = cluster.eventually("the table read through rw", WAIT, || {
        quick_sql(
            cluster.engine,
            password,
            cluster.rw(),
            &format!("SELECT n FROM {table}"),
        )
        .ok()
    });
    let stored: BTreeSet<u64> = stored
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    let lost: Vec<u64> = acked
        .iter()
        .filter(|n| !stored.contains(n))
        .copied()
        .collect();
    assert!(!acked.is_empty(), "the writer wrote nothing");
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes lost: {lost:?}",
        lost.len(),
        acked.len()
    );
    println!(
        "{}: {} acknowledged writes, 0 lost",
        cluster.engine,
        acked.len()
    );
}

fn print_outages(engine: &str, outages: &[Duration]) {
    let ms: Vec<u128> = outages.iter().map(Duration::as_millis).collect();
    println!(
        "{engine}: write outage of a supervisor kill -9 (kill to the first acknowledged write through rw), ms: {ms:?}"
    );
}

#[test]
fn a_postgres_supervisor_killed_with_sigkill_is_restarted_by_its_keeper_without_losing_a_write() {
    let cluster = Cluster::new("kpg", 2);
    let units = tempfile::tempdir().unwrap();
    let out = cluster.stator(&[
        "up",
        "--service",
        "--unit-dir",
        units.path().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{stderr}\n{}",
        cluster.logs_for_failure()
    );
    // systemd does not run here: the unit is written and `up` starts the keeper itself.
    let unit = std::fs::read_to_string(units.path().join("stator-default-kpg.service")).unwrap();
    assert!(
        unit.contains(&format!(
            "keep --state-dir \"{}\" --database default/kpg\n",
            cluster.state_dir().display()
        )),
        "{unit}"
    );
    assert!(unit.contains("\nKillMode=process\n"), "{unit}");
    assert!(unit.contains("\nRestart=on-failure\n"), "{unit}");
    assert!(
        stderr.contains("systemd is not running here") || stderr.contains("with systemd"),
        "{stderr}"
    );
    for secret in cluster.secrets() {
        assert!(!unit.contains(&secret), "a secret is in the unit");
    }
    let keeper = pid_in(&cluster, "keeper.pid").expect("keeper.pid");
    assert!(alive(keeper));
    assert_eq!(processes_with(&cluster, "keep"), vec![keeper]);

    let password = cluster.app_password();
    quick_sql(
        "postgres",
        &password,
        cluster.rw(),
        "CREATE TABLE keeper_writes (n bigint PRIMARY KEY)",
    )
    .unwrap();
    let writer = Writer::start("postgres", password.clone(), cluster.rw(), "keeper_writes");
    let outages: Vec<Duration> = (1..=3)
        .map(|round| kill_supervisor_under_writes(&cluster, &writer, round))
        .collect();
    let acked = writer.finish();
    print_outages("postgres", &outages);
    assert_none_lost(&cluster, &password, "keeper_writes", &acked);
    assert_eq!(pid_in(&cluster, "keeper.pid"), Some(keeper), "one keeper");
    assert_eq!(cluster.status()["phase"], "Ready");

    // Five switchovers fence each instance two or three times: fences are not crashes, so a
    // spec change (a rolling restart) afterwards is applied, not given up.
    for n in 1..=5 {
        cluster.eventually(&format!("switchover {n}"), WAIT, || {
            let out = cluster.stator(&["switchover"]);
            out.status.success().then_some(())
        });
    }
    cluster.write_spec(
        2,
        "  config:\n    parameters:\n      max_connections: \"120\"\n",
    );
    let out = cluster.up();
    assert!(out.contains("Ready"), "{out}");

    // `down` stops the keeper too: nothing of the database runs afterwards.
    cluster.ok(&["down"]);
    assert!(!alive(keeper), "the keeper outlived `down`");
    assert!(pid_in(&cluster, "keeper.pid").is_none());
    let left = running(&cluster);
    assert!(left.is_empty(), "still running after down: {left:?}");
}

#[test]
fn a_mariadb_supervisor_killed_mid_switchover_leaves_exactly_one_writable_primary() {
    let cluster = Cluster::mariadb("kmy", 2);
    cluster.up();
    let password = cluster.app_password();
    quick_sql(
        "mariadb",
        &password,
        cluster.rw(),
        "CREATE TABLE keeper_writes (n BIGINT PRIMARY KEY)",
    )
    .unwrap();
    let writer = Writer::start("mariadb", password.clone(), cluster.rw(), "keeper_writes");
    let mut outages: Vec<Duration> = (1..=2)
        .map(|round| kill_supervisor_under_writes(&cluster, &writer, round))
        .collect();

    // A switchover, and the supervisor killed as soon as it fenced the primary read-only.
    let log = cluster.db_dir().join("supervisor.log");
    let seen = std::fs::read_to_string(&log).unwrap_or_default().len();
    let mut switchover = spawn_stator(&cluster, &["switchover"]);
    let old = pid_in(&cluster, "supervisor.pid").unwrap();
    cluster.eventually("the primary fenced read-only", WAIT, || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.get(seen..)
            .is_some_and(|new| new.contains("fencing: read_only=ON"))
            .then_some(())
    });
    kill9(old);
    let killed = Instant::now();
    let mut said = String::new();
    let _ = switchover.wait();
    if let Some(mut e) = switchover.stderr.take() {
        let _ = e.read_to_string(&mut said);
    }
    println!("switchover whose supervisor was killed: {}", said.trim());
    // Exactly one writable server, the one `status` and the core call primary, and writes
    // resume through rw.
    let ports = [cluster.server_port(0), cluster.server_port(1)];
    let writable = |password: &str| -> Vec<usize> {
        ports
            .iter()
            .enumerate()
            .filter(|(_, p)| {
                quick_sql("mariadb", password, **p, writable_query("mariadb"))
                    .is_ok_and(|v| v == "1")
            })
            .map(|(i, _)| i)
            .collect()
    };
    let primary = cluster.eventually("exactly one writable primary, as status says", WAIT, || {
        let status = cluster.status();
        let named = status["primary"].as_str()?.to_string();
        let w = writable(&password);
        println!(
            "writable: {w:?}, status: {} primary {named}",
            status["phase"]
        );
        (status["phase"] == "Ready"
            && w.len() == 1
            && named == format!("kmy-{}", w[0])
            && status["failover"]["primary"] == named.as_str())
        .then_some(named)
    });
    let resumed = cluster.eventually("writes resume through rw", WAIT, || {
        writer.first_ack_after(killed)
    });
    outages.push(resumed - killed);
    println!(
        "mariadb: killed mid-switchover; {primary} is the one writable primary; writes resumed after {} ms",
        (resumed - killed).as_millis()
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(writable(&password).len(), 1, "still exactly one writable");
    let acked = writer.finish();
    print_outages("mariadb", &outages);
    assert_none_lost(&cluster, &password, "keeper_writes", &acked);
}

#[test]
fn two_concurrent_ups_start_one_database_and_ctrl_c_stops_a_foreground_up() {
    let cluster = Cluster::new("kup", 1);
    let spawn_up = |extra: &[&str]| spawn_stator(&cluster, &[&["up"], extra].concat());
    let first = spawn_up(&[]);
    let second = spawn_up(&[]);
    for up in [first, second] {
        let out = up.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "a concurrent up failed:\n{stdout}\n{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.logs_for_failure()
        );
        assert!(stdout.contains("Ready"), "{stdout}");
    }
    assert_eq!(processes_with(&cluster, "keep").len(), 1, "one keeper");
    assert_eq!(
        processes_with(&cluster, "supervise").len(),
        1,
        "one supervisor"
    );
    cluster.ok(&["down"]);

    // `up --foreground`, then SIGINT to it alone (as a terminal's Ctrl-C reaches it).
    let mut up = spawn_up(&["--foreground"]);
    cluster.eventually("the foreground database ready", WAIT, || {
        let out = cluster.stator(&["status", "-o", "json"]);
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        (status["phase"] == "Ready").then_some(())
    });
    std::thread::sleep(Duration::from_millis(500)); // past `up`'s wait, into its foreground wait
    signal(up.id(), "INT");
    let started = Instant::now();
    let code = loop {
        if let Some(status) = up.try_wait().unwrap() {
            break status.code();
        }
        if started.elapsed() > Duration::from_secs(120) {
            let _ = up.kill();
            panic!("`up --foreground` ignored SIGINT");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    up.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        matches!(code, Some(130) | Some(0)),
        "exit {code:?}: {stderr}"
    );
    assert!(stderr.contains("stopped; all data kept"), "{stderr}");
    let left = running(&cluster);
    assert!(left.is_empty(), "still running after Ctrl-C: {left:?}");
    assert_eq!(cluster.status()["phase"], "Stopped");
}
