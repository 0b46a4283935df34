//! Lease mode of the managed instance manager (`--managed --lease`) with real PostgreSQL 15
//! and MariaDB 10.11: a primary serves only under the operator's write lease; when it expires
//! the manager's watchdog kills the server and holds it down, unless every peer confirms the
//! operator is gone (the failsafe); late, lower-term and foreign-incarnation leases are
//! refused; a restarted primary without a lease stays down.

mod common;

use std::time::Duration;

use common::{Cluster, Manager, postmasters_on, sql};
use serde_json::Value;
use stator_api::instance::{Bootstrap, Peer};
use stator_api::names::secret_keys;

fn token(c: &Cluster) -> String {
    c.secret(secret_keys::API_TOKEN)
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn ordered(m: &Manager, path: &str, token: &str, body: &str) -> String {
    let (code, text) = m.post(path, Some(token), body);
    assert_eq!(code, 200, "{path} {body}: {text}\n{}", m.logs());
    text
}

/// Waits until `m` says it waits for `order`; its status.
fn waits_for(m: &Manager, order: &str) -> Value {
    m.wait_status(&format!("waiting for {order}"), |s| {
        s["message"].as_str().is_some_and(|m| m.contains(order))
    })
}

/// `POST /lease` of `term` naming `writer`, expiring `ms` after the manager's clock now, for
/// `incarnation` (the manager's own when `None`): the code and the answer.
fn lease(
    m: &Manager,
    token: &str,
    term: u64,
    writer: &str,
    ms: u64,
    incarnation: Option<&str>,
) -> (u16, Value) {
    let s = m.status();
    let clock = s["clock"].as_u64().expect("a clock in lease mode");
    let incarnation = incarnation
        .map(str::to_string)
        .unwrap_or_else(|| s["incarnation"].as_str().expect("an incarnation").into());
    lease_at(m, token, term, writer, clock + ms, &incarnation)
}

fn lease_at(
    m: &Manager,
    token: &str,
    term: u64,
    writer: &str,
    expires_at: u64,
    incarnation: &str,
) -> (u16, Value) {
    let body = format!(
        r#"{{"term": {term}, "writer": "{writer}", "expiresAt": {expires_at}, "incarnation": "{incarnation}"}}"#
    );
    let (code, text) = m.post("/lease", Some(token), &body);
    (code, json(&text))
}

/// A lease that must be taken.
fn granted(m: &Manager, token: &str, term: u64, writer: &str, ms: u64) -> Value {
    let (code, answer) = lease(m, token, term, writer, ms, None);
    assert_eq!(code, 200, "{answer}\n{}", m.logs());
    answer
}

/// A lease answer refused with 409, naming `field`; every answer carries the clock and the
/// incarnation.
fn refused(answer: (u16, Value), field: &str) -> Value {
    let (code, a) = answer;
    assert_eq!(code, 409, "{a}");
    let why = a["error"].as_str().unwrap_or_default();
    assert!(
        why.starts_with(&format!("{field}:")),
        "{why} does not name {field}"
    );
    assert!(a["clock"].as_u64().is_some(), "{a}");
    assert!(a["incarnation"].as_str().is_some(), "{a}");
    a
}

/// The pid is gone, or no longer a server on `m`'s data dir.
fn gone(m: &Manager, pid: u32) -> bool {
    !stator_engine::process::process_serves_data_dir(pid, &m.config.data_dir)
}

fn fenced_by_lease(m: &Manager) -> Value {
    m.wait_status("fenced by lease expiry", |s| {
        s["state"] == "stopped"
            && s["message"]
                .as_str()
                .is_some_and(|m| m.contains("fenced (kill) by lease expiry"))
    })
}

#[test]
fn a_postgres_primary_serves_only_under_its_lease_and_is_killed_and_held_when_it_expires() {
    let c = Cluster::new("ls");
    let t = token(&c);
    let su = c.secret(secret_keys::SUPERUSER_PASSWORD);
    let cfg = c.config(0, Bootstrap::InitPrimary);
    let p = c.start_leased(&cfg);
    let name = p.name();

    // /status carries the clock and the incarnation; /lease needs the token and a good body.
    let s = waits_for(&p, "POST /bootstrap");
    let incarnation = s["incarnation"].as_str().expect("incarnation").to_string();
    assert_eq!(incarnation.len(), 16, "{s}");
    assert!(s["clock"].as_u64().is_some(), "{s}");
    assert_eq!(p.post("/lease", None, "{}").0, 401);
    assert_eq!(p.post("/confirm", Some("wrong"), "{}").0, 401);
    let (code, text) = p.post("/lease", Some(&t), r#"{"term": 1, "writer": "ls-0"}"#);
    assert_eq!(code, 400, "{text}");
    assert!(
        json(&text)["error"].as_str().unwrap().contains("expiresAt"),
        "{text}"
    );

    // A lease for another incarnation is refused.
    refused(
        lease(&p, &t, 1, &name, 600_000, Some("0000000000000000")),
        "incarnation",
    );

    // A new primary does not start before a lease names it.
    ordered(&p, "/bootstrap", &t, r#"{"kind": "init"}"#);
    waits_for(&p, "POST /lease");
    std::thread::sleep(Duration::from_secs(1));
    assert!(postmasters_on(&cfg.data_dir).is_empty(), "{}", p.logs());
    // A lease naming another writer does not start it either.
    granted(&p, &t, 1, "ls-1", 600_000);
    let s = waits_for(&p, "POST /lease");
    assert_eq!(s["lease"]["holdsWriteLease"], false, "{s}");
    assert!(postmasters_on(&cfg.data_dir).is_empty(), "{}", p.logs());
    granted(&p, &t, 2, &name, 600_000);
    let s = p.wait_ready();
    assert_eq!(s["role"], "primary", "{s}");
    assert_eq!(s["lease"]["holdsWriteLease"], true, "{s}");
    sql(
        cfg.port,
        "postgres",
        &su,
        "app",
        "CREATE TABLE t (v int); INSERT INTO t VALUES (1)",
    )
    .unwrap();

    // Late, duplicated, lower-term and other-writer leases are refused and change nothing.
    let held = p.status()["lease"]["expiresAt"].as_u64().unwrap();
    refused(lease_at(&p, &t, 2, &name, held, &incarnation), "expiresAt");
    refused(
        lease_at(&p, &t, 2, &name, held - 1000, &incarnation),
        "expiresAt",
    );
    refused(lease(&p, &t, 1, &name, 900_000, None), "term");
    refused(lease(&p, &t, 2, "ls-1", 900_000, None), "writer");
    let expired = p.status()["clock"].as_u64().unwrap() - 1;
    refused(
        lease_at(&p, &t, 3, &name, expired, &incarnation),
        "expiresAt",
    );
    let s = p.status();
    assert_eq!(s["lease"]["expiresAt"], held, "{s}");
    assert_eq!(s["lease"]["term"], 2, "{s}");
    // The term is kept beside the data dir, owner-only.
    let file = cfg.data_dir.with_file_name(".data.stator-lease");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // A short lease of a higher term replaces the long one; when it expires (no peers: no
    // failsafe) the server is killed.
    let pid = p.postmaster_pid().expect("a postmaster");
    granted(&p, &t, 3, &name, 1500);
    let s = fenced_by_lease(&p);
    eprintln!("/status of a primary whose lease expired: {s:#}");
    assert!(gone(&p, pid), "pid {pid} still serves\n{}", p.logs());
    assert!(postmasters_on(&cfg.data_dir).is_empty(), "{}", p.logs());
    assert!(
        s["lease"]["fenced"]
            .as_str()
            .is_some_and(|f| f.contains("term 3")),
        "{s}"
    );
    // It stays down: not restarted, not even by a new lease naming it.
    granted(&p, &t, 4, &name, 600_000);
    std::thread::sleep(Duration::from_secs(3));
    assert!(postmasters_on(&cfg.data_dir).is_empty(), "{}", p.logs());
    let s = p.status();
    assert_eq!(s["state"], "stopped", "{s}");
    assert_eq!(s["restarts"], 0, "{s}");
    // Released, it waits for /role as after a kill fence, and starts under the lease held.
    let (code, body) = common::http(cfg.http_port, "DELETE", "/fence", Some(&t), "");
    assert_eq!(code, 200, "{body}");
    waits_for(&p, "POST /role");
    ordered(&p, "/role", &t, r#"{"role": "primary"}"#);
    p.wait_ready();
    sql(cfg.port, "postgres", &su, "app", "INSERT INTO t VALUES (2)").unwrap();

    // The manager killed (its server survives): the next one stops that server, waits for
    // /role, and then for a lease of its own incarnation and at least the persisted term.
    let mut p = p;
    p.kill9();
    let p = c.start_leased(&cfg);
    waits_for(&p, "POST /role");
    assert!(postmasters_on(&cfg.data_dir).is_empty(), "{}", p.logs());
    let s = p.status();
    assert_ne!(s["incarnation"], incarnation.as_str(), "{s}");
    assert_eq!(s["lease"]["term"], 4, "{s}");
    ordered(&p, "/role", &t, r#"{"role": "primary"}"#);
    waits_for(&p, "POST /lease");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        postmasters_on(&cfg.data_dir).is_empty(),
        "a restarted primary started without a lease\n{}",
        p.logs()
    );
    refused(
        lease(&p, &t, 5, &name, 600_000, Some(&incarnation)),
        "incarnation",
    );
    refused(lease(&p, &t, 3, &name, 600_000, None), "term");
    assert!(postmasters_on(&cfg.data_dir).is_empty(), "{}", p.logs());
    granted(&p, &t, 5, &name, 600_000);
    p.wait_ready();
    let rows = sql(cfg.port, "postgres", &su, "app", "SELECT count(*) FROM t").unwrap();
    assert_eq!(rows, vec!["2".to_string()]);
}

/// The manager frozen (SIGSTOP: its watchdog thread stops with it) while its primary runs
/// under a short lease: its dead man's switch, a process of its own, kills the server when the
/// lease ends; thawed, the manager does not start it again without a new lease.
#[test]
fn a_frozen_managers_primary_is_killed_by_its_dead_mans_switch_when_the_lease_ends() {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let c = Cluster::new("dm");
    let t = token(&c);
    let cfg = c.config(0, Bootstrap::InitPrimary);
    let p = c.start_leased(&cfg);
    let name = p.name();
    waits_for(&p, "POST /bootstrap");
    ordered(&p, "/bootstrap", &t, r#"{"kind": "init"}"#);
    waits_for(&p, "POST /lease");
    granted(&p, &t, 1, &name, 600_000);
    p.wait_ready();
    let server = p.postmaster_pid().expect("a postmaster");
    let manager = Pid::from_raw(p.child.as_ref().expect("the manager").id() as i32);
    let s = granted(&p, &t, 2, &name, 1_500);
    let expires = s["lease"]["expiresAt"].as_u64().expect("a write lease");
    // The watchdog tells the switch at once (woken by the grant); give it that moment.
    std::thread::sleep(Duration::from_millis(200));
    kill(manager, Signal::SIGSTOP).expect("SIGSTOP the manager");
    let frozen = std::time::Instant::now();
    while !gone(&p, server) && frozen.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let killed = gone(&p, server);
    let now = stator_instance::self_fencing::clock();
    kill(manager, Signal::SIGCONT).expect("SIGCONT the manager");
    assert!(
        killed,
        "the server of a frozen manager served 10 s past a 1.5 s lease\n{}",
        p.logs()
    );
    assert!(
        now >= expires,
        "killed at clock {now}, before its lease ended at {expires}"
    );
    eprintln!(
        "frozen manager: server killed {} ms after the lease ended (clock {now}, lease {expires})",
        now - expires
    );
    assert!(p.logs().contains("dead man's switch"), "{}", p.logs());
    // Thawed: not started again without a lease.
    std::thread::sleep(Duration::from_secs(2));
    assert!(postmasters_on(&cfg.data_dir).is_empty(), "{}", p.logs());
}

#[test]
fn the_failsafe_keeps_a_primary_while_every_peer_confirms_and_ends_when_one_hears_the_operator() {
    let c = Cluster::new("lf");
    let t = token(&c);
    let su = c.secret(secret_keys::SUPERUSER_PASSWORD);
    // Two peers in lease mode (their data dirs stay empty: confirming needs no server).
    let peers: Vec<Manager> = (1..=2)
        .map(|o| c.start_leased(&c.config(o, Bootstrap::InitPrimary)))
        .collect();
    let mut cfg = c.config(0, Bootstrap::InitPrimary);
    cfg.peers = peers
        .iter()
        .map(|m| Peer {
            server: m.endpoint(),
            http_port: m.config.http_port,
        })
        .collect();
    let p = c.start_leased(&cfg);
    let writer = p.name();
    for peer in &peers {
        waits_for(peer, "POST /bootstrap");
    }
    waits_for(&p, "POST /bootstrap");
    ordered(&p, "/bootstrap", &t, r#"{"kind": "init"}"#);
    for m in peers.iter().chain([&p]) {
        granted(m, &t, 1, &writer, 600_000);
    }
    p.wait_ready();

    // A peer that heard the operator lately does not confirm; nor one asked about another
    // term or writer; the writer does not confirm itself.
    let confirm = |m: &Manager, body: &str| {
        let (code, text) = m.post("/confirm", Some(&t), body);
        (code, json(&text))
    };
    let asked = format!(r#"{{"term": 1, "writer": "{writer}"}}"#);
    let (code, a) = confirm(&peers[0], &asked);
    assert_eq!(code, 409, "{a}");
    assert!(
        a["error"].as_str().unwrap().contains("heard the operator"),
        "{a}"
    );
    let (code, a) = confirm(
        &peers[0],
        &format!(r#"{{"term": 7, "writer": "{writer}"}}"#),
    );
    assert_eq!(code, 409, "{a}");
    assert!(a["error"].as_str().unwrap().starts_with("term:"), "{a}");
    let (code, a) = confirm(&p, &asked);
    assert_eq!(code, 409, "{a}");
    assert!(a["error"].as_str().unwrap().starts_with("writer:"), "{a}");

    // The operator's last leases: the peers' end first, then the writer's. When the writer's
    // runs out, every peer has not heard the operator for its lease length and confirms.
    for peer in &peers {
        granted(peer, &t, 2, &writer, 1000);
    }
    granted(&p, &t, 2, &writer, 4000);
    let expires = p.status()["lease"]["expiresAt"].as_u64().unwrap();
    let pid = p.postmaster_pid().expect("a postmaster");
    let s = p.wait_status("serving on the failsafe well past its lease", |s| {
        s["clock"].as_u64().is_some_and(|c| c > expires + 3000)
            && s["lease"]["fenced"].is_null()
            && s["lease"]["failsafeUntil"].as_u64() > s["clock"].as_u64()
    });
    eprintln!("/status of a primary kept by the failsafe: {s:#}");
    assert_eq!(s["state"], "running", "{s}");
    assert!(!gone(&p, pid), "{}", p.logs());
    sql(
        cfg.port,
        "postgres",
        &su,
        "app",
        "CREATE TABLE t (v int); INSERT INTO t VALUES (1)",
    )
    .unwrap();
    let (code, a) = confirm(
        &peers[1],
        &format!(r#"{{"term": 2, "writer": "{writer}"}}"#),
    );
    assert_eq!(code, 200, "{a}");

    // One peer hears the operator again: it stops confirming, and the failsafe ends.
    granted(&peers[0], &t, 2, &writer, 600_000);
    let s = fenced_by_lease(&p);
    eprintln!("/status once a peer heard the operator: {s:#}");
    let why = s["message"].as_str().unwrap();
    assert!(why.contains("failsafe ended"), "{why}");
    assert!(
        why.contains(&peers[0].name()) && why.contains("heard the operator"),
        "{why}"
    );
    assert!(gone(&p, pid), "pid {pid} still serves\n{}", p.logs());
    assert!(postmasters_on(&cfg.data_dir).is_empty(), "{}", p.logs());
    std::thread::sleep(Duration::from_secs(2));
    assert!(postmasters_on(&cfg.data_dir).is_empty(), "{}", p.logs());
}

#[test]
fn a_mariadb_primary_is_killed_and_held_when_its_lease_expires() {
    let c = Cluster::new("lm");
    let t = token(&c);
    let app = c.secret(secret_keys::APP_PASSWORD);
    let p = c.start_leased(&c.mariadb_config(0, Bootstrap::InitPrimary, ""));
    let name = p.name();
    waits_for(&p, "POST /bootstrap");
    ordered(&p, "/bootstrap", &t, r#"{"kind": "init"}"#);
    waits_for(&p, "POST /lease");
    assert!(
        p.postmaster_pid().is_none_or(|pid| gone(&p, pid)),
        "{}",
        p.logs()
    );
    granted(&p, &t, 1, &name, 600_000);
    assert_eq!(p.wait_ready()["role"], "primary");
    common::maria_sql(
        p.config.port,
        "app",
        &app,
        "CREATE TABLE app.items (id INT PRIMARY KEY)",
    )
    .unwrap();
    refused(lease(&p, &t, 0, &name, 900_000, None), "term");

    let pid = p.postmaster_pid().expect("a mariadbd pid");
    granted(&p, &t, 2, &name, 1500);
    fenced_by_lease(&p);
    assert!(gone(&p, pid), "pid {pid} still serves\n{}", p.logs());
    std::thread::sleep(Duration::from_secs(3));
    assert!(gone(&p, pid), "{}", p.logs());
    let s = p.status();
    assert_eq!(s["state"], "stopped", "{s}");
    assert_eq!(s["pid"], Value::Null, "{s}");
    let write = common::maria_sql(
        p.config.port,
        "app",
        &app,
        "INSERT INTO app.items VALUES (1)",
    );
    assert!(write.is_err(), "{write:?}");
}
