//! The managed instance manager (`--managed`, the operator's pods) with real PostgreSQL 15 and
//! MariaDB 10.11: it takes its role only from orders (`/bootstrap`, `/role`), holds fences
//! until released, rebuilds keeping the old data until the clone succeeded, answers
//! `/status?fresh=1` from its server, and reports a stopped primary's final checkpoint.

mod common;

use std::time::Duration;

use common::{Cluster, Manager, free_port, maria_sql, postmasters_on, sql};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use stator_api::instance::Bootstrap;
use stator_api::names::secret_keys;

fn token(c: &Cluster) -> String {
    c.secret(secret_keys::API_TOKEN)
}

/// Sends `signal` to the server and every process under it (each PostgreSQL backend leads a
/// process group of its own).
fn signal_server(m: &Manager, signal: Signal) {
    let pid = m.postmaster_pid().expect("a server pid");
    let mut tree = vec![pid];
    tree.extend(stator_engine::process::descendants(pid));
    for pid in tree {
        let _ = kill(Pid::from_raw(pid as i32), signal);
    }
}

/// Waits for an order's answer that is not 200, and returns it.
fn refused(m: &Manager, path: &str, token: Option<&str>, body: &str, code: u16) -> String {
    let (got, text) = m.post(path, token, body);
    assert_eq!(got, code, "{path} {body}: {text}\n{}", m.logs());
    text
}

fn ordered(m: &Manager, path: &str, token: &str, body: &str) -> String {
    let (code, text) = m.post(path, Some(token), body);
    assert_eq!(code, 200, "{path} {body}: {text}\n{}", m.logs());
    text
}

/// Waits until `m` says it waits for the order `order` (e.g. `POST /role`); its status.
fn waits_for(m: &Manager, order: &str) -> serde_json::Value {
    m.wait_status(&format!("waiting for {order}"), |s| {
        s["message"].as_str().is_some_and(|m| m.contains(order))
    })
}

/// Orders `replica` to clone `primary` and waits until it is a ready replica; its status.
fn bootstrap_as_replica(replica: &Manager, primary: &Manager, token: &str) -> serde_json::Value {
    ordered(
        replica,
        "/bootstrap",
        token,
        &format!(
            r#"{{"kind": "clone", "upstream": {}}}"#,
            primary.endpoint_json()
        ),
    );
    let status = replica.wait_ready();
    assert_eq!(status["role"], "replica", "{status}");
    assert_eq!(status["upstream"], primary.name().as_str(), "{status}");
    status
}

#[test]
fn a_managed_postgres_pair_takes_its_roles_fences_and_rebuilds_only_on_orders() {
    let c = Cluster::new("mg");
    let t = token(&c);
    let su = c.secret(secret_keys::SUPERUSER_PASSWORD);
    // The bootstrap in the config is what a plain manager would do; a managed one ignores it.
    let p_cfg = c.config(0, Bootstrap::InitPrimary);
    let primary = c.start_managed(&p_cfg);

    // An empty data dir waits for /bootstrap: no initdb.
    let waiting = waits_for(&primary, "POST /bootstrap");
    assert_eq!(waiting["state"], "stopped", "{waiting}");
    assert_eq!(waiting["holdsData"], false, "{waiting}");
    assert!(!p_cfg.data_dir.join("PG_VERSION").exists());
    assert!(postmasters_on(&p_cfg.data_dir).is_empty());

    // Orders need the token; bad bodies are refused naming the field.
    for path in ["/bootstrap", "/role", "/fence", "/rebuild"] {
        refused(&primary, path, None, r#"{"kind": "init"}"#, 401);
        refused(&primary, path, Some("wrong"), r#"{"kind": "init"}"#, 401);
    }
    assert_eq!(
        common::http(p_cfg.http_port, "DELETE", "/fence", None, "").0,
        401
    );
    let why = refused(
        &primary,
        "/bootstrap",
        Some(&t),
        r#"{"kind": "initdb"}"#,
        400,
    );
    assert!(why.contains("kind"), "{why}");
    let why = refused(&primary, "/fence", Some(&t), r#"{"kind": "stop"}"#, 400);
    assert!(why.contains("kind"), "{why}");
    // An empty data dir has no role to take.
    refused(&primary, "/role", Some(&t), r#"{"role": "primary"}"#, 409);
    assert!(!p_cfg.data_dir.join("PG_VERSION").exists());

    // Bootstrap init: a primary.
    ordered(&primary, "/bootstrap", &t, r#"{"kind": "init"}"#);
    let status = primary.wait_ready();
    assert_eq!(status["role"], "primary", "{status}");
    sql(
        p_cfg.port,
        "postgres",
        &su,
        "app",
        "CREATE TABLE t (v int); INSERT INTO t VALUES (1)",
    )
    .unwrap();
    // A second /bootstrap on data is refused.
    refused(&primary, "/bootstrap", Some(&t), r#"{"kind": "init"}"#, 409);

    // A second managed manager, bootstrapped as a clone of the first: a streaming replica.
    let r_cfg = c.config(1, Bootstrap::InitPrimary);
    let replica = c.start_managed(&r_cfg);
    waits_for(&replica, "POST /bootstrap");
    assert!(!r_cfg.data_dir.join("PG_VERSION").exists());
    let status = bootstrap_as_replica(&replica, &primary, &t);
    assert_eq!(status["receiverRunning"], true, "{status}");

    // /status?fresh=1 queries the server now: a hung server (every process stopped) is seen
    // at once, where the cached report still holds the last observation.
    signal_server(&replica, Signal::SIGSTOP);
    let fresh = replica.fresh_status();
    signal_server(&replica, Signal::SIGCONT);
    eprintln!("/status?fresh=1 of a stopped (SIGSTOP) server: {fresh:#}");
    assert_eq!(fresh["ready"], false, "{fresh}");
    assert!(
        fresh["message"]
            .as_str()
            .is_some_and(|m| m.contains("did not answer")),
        "{fresh}"
    );
    replica.wait_ready();
    assert_eq!(replica.fresh_status()["ready"], true);

    // Fence read-only on the primary: writes refused until released.
    ordered(&primary, "/fence", &t, r#"{"kind": "read-only"}"#);
    let fresh = primary.fresh_status();
    assert_eq!(fresh["readOnly"], true, "{fresh}");
    let write = sql(
        p_cfg.port,
        "postgres",
        &su,
        "app",
        "INSERT INTO t VALUES (2)",
    );
    assert!(
        write.as_ref().is_err_and(|e| e.contains("read-only")),
        "{write:?}"
    );
    ordered(&primary, "/fence", &t, r#"{"release": true}"#);
    assert_eq!(primary.fresh_status()["readOnly"], false);
    sql(
        p_cfg.port,
        "postgres",
        &su,
        "app",
        "INSERT INTO t VALUES (2)",
    )
    .unwrap();

    // Fence kill on the replica: its server is gone and stays down (a plain manager restarts
    // a killed server after 1 s), until DELETE /fence; then the replica starts on its own.
    let killed = ordered(&replica, "/fence", &t, r#"{"kind": "kill"}"#);
    eprintln!("fence kill: {killed}");
    assert!(postmasters_on(&r_cfg.data_dir).is_empty());
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        postmasters_on(&r_cfg.data_dir).is_empty(),
        "a fenced manager restarted its server\n{}",
        replica.logs()
    );
    let status = replica.status();
    assert_eq!(status["state"], "stopped", "{status}");
    assert_eq!(status["restarts"], 0, "{status}");
    let (code, body) = common::http(r_cfg.http_port, "DELETE", "/fence", Some(&t), "");
    assert_eq!(code, 200, "{body}");
    replica.wait_ready();

    // /status?fresh=1 reflects a server killed a moment ago.
    signal_server(&replica, Signal::SIGKILL);
    let fresh = replica.fresh_status();
    eprintln!("/status?fresh=1 right after kill -9 of the server: {fresh:#}");
    assert_eq!(fresh["ready"], false, "{fresh}");
    replica.wait_ready();

    // Rebuild: the old data is kept until a clone succeeded. An upstream nobody serves: the
    // clone fails and the old data (with a file planted in it) is back in place.
    std::fs::write(r_cfg.data_dir.join("planted-before-rebuild"), "old").unwrap();
    let nobody = format!(
        r#"{{"upstream": {{"instance": "mg-0", "host": "127.0.0.1", "port": {}}}}}"#,
        free_port()
    );
    let why = refused(&replica, "/rebuild", Some(&t), &nobody, 409);
    eprintln!("rebuild from nobody: {why}");
    assert!(why.contains("old data is back in place"), "{why}");
    assert!(r_cfg.data_dir.join("planted-before-rebuild").exists());
    assert!(r_cfg.data_dir.join("PG_VERSION").exists());
    let aside = r_cfg.data_dir.with_file_name(".data.stator-old");
    assert!(!aside.exists());
    replica.wait_ready();
    // From the primary: a new copy, the old one gone, streaming again.
    let rebuilt = ordered(
        &replica,
        "/rebuild",
        &t,
        &format!(r#"{{"upstream": {}}}"#, primary.endpoint_json()),
    );
    eprintln!("rebuild: {rebuilt}");
    assert!(!r_cfg.data_dir.join("planted-before-rebuild").exists());
    assert!(!aside.exists());
    let status = replica.wait_ready();
    assert_eq!(status["role"], "replica", "{status}");
    replica.wait_status("both rows on the rebuilt replica", |_| {
        sql(r_cfg.port, "postgres", &su, "app", "SELECT count(*) FROM t").ok()
            == Some(vec!["2".into()])
    });

    // Fence shutdown on the primary: stopped cleanly, its final checkpoint reported.
    let stopped = ordered(&primary, "/fence", &t, r#"{"kind": "shutdown"}"#);
    eprintln!("fence shutdown: {stopped}");
    assert!(stopped.contains("final checkpoint"), "{stopped}");
    let status = primary.status();
    eprintln!("/status of a primary fenced by shutdown: {status:#}");
    assert_eq!(status["state"], "stopped", "{status}");
    assert_eq!(status["role"], "primary", "{status}");
    assert_eq!(status["timeline"], 1, "{status}");
    let checkpoint = status["position"].as_str().expect("a position").to_string();
    assert!(stopped.contains(&checkpoint), "{stopped} vs {checkpoint}");

    // The former primary's manager restarted without an order: the server stays down, the
    // final checkpoint is reported, and only /role primary starts it.
    let mut primary = primary;
    primary.kill9();
    let primary = c.start_managed(&p_cfg);
    let status = waits_for(&primary, "POST /role");
    assert_eq!(status["role"], "primary", "{status}");
    assert_eq!(status["position"], checkpoint.as_str(), "{status}");
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        postmasters_on(&p_cfg.data_dir).is_empty(),
        "a former primary started without an order\n{}",
        primary.logs()
    );
    ordered(&primary, "/role", &t, r#"{"role": "primary"}"#);
    let status = primary.wait_ready();
    assert_eq!(status["role"], "primary", "{status}");
    sql(
        p_cfg.port,
        "postgres",
        &su,
        "app",
        "INSERT INTO t VALUES (3)",
    )
    .unwrap();

    // Its manager killed while the primary runs (the server survives it): the next managed
    // manager stops that server cleanly and waits for an order, never serving on its own.
    let mut primary = primary;
    primary.kill9();
    assert!(!postmasters_on(&p_cfg.data_dir).is_empty());
    let primary = c.start_managed(&p_cfg);
    let status = waits_for(&primary, "POST /role");
    assert!(
        postmasters_on(&p_cfg.data_dir).is_empty(),
        "{status}\n{}",
        primary.logs()
    );
    assert_eq!(status["role"], "primary", "{status}");
}

#[test]
fn a_managed_mariadb_pair_is_bootstrapped_and_fenced_read_only_on_orders() {
    let c = Cluster::new("mgm");
    let t = token(&c);
    let app = c.secret(secret_keys::APP_PASSWORD);
    let primary = c.start_managed(&c.mariadb_config(0, Bootstrap::InitPrimary, ""));
    let waiting = waits_for(&primary, "POST /bootstrap");
    assert_eq!(waiting["holdsData"], false, "{waiting}");
    refused(&primary, "/bootstrap", None, r#"{"kind": "init"}"#, 401);
    ordered(&primary, "/bootstrap", &t, r#"{"kind": "init"}"#);
    assert_eq!(primary.wait_ready()["role"], "primary");
    for statement in [
        "CREATE TABLE app.items (id INT PRIMARY KEY)",
        "INSERT INTO app.items VALUES (1)",
    ] {
        maria_sql(primary.config.port, "app", &app, statement).unwrap();
    }

    let replica = c.start_managed(&c.mariadb_config(1, Bootstrap::InitPrimary, ""));
    waits_for(&replica, "POST /bootstrap");
    bootstrap_as_replica(&replica, &primary, &t);

    // Fence read-only: the primary keeps running and refuses the application's writes.
    refused(&primary, "/fence", None, r#"{"kind": "read-only"}"#, 401);
    ordered(&primary, "/fence", &t, r#"{"kind": "read-only"}"#);
    let fresh = primary.fresh_status();
    assert_eq!(fresh["readOnly"], true, "{fresh}");
    assert_eq!(fresh["state"], "running", "{fresh}");
    let write = maria_sql(
        primary.config.port,
        "app",
        &app,
        "INSERT INTO app.items VALUES (2)",
    );
    assert!(
        write.as_ref().is_err_and(|e| e.contains("read-only")),
        "{write:?}"
    );
    let (code, body) = common::http(primary.config.http_port, "DELETE", "/fence", Some(&t), "");
    assert_eq!(code, 200, "{body}");
    assert_eq!(primary.fresh_status()["readOnly"], false);
    maria_sql(
        primary.config.port,
        "app",
        &app,
        "INSERT INTO app.items VALUES (2)",
    )
    .unwrap();
}
