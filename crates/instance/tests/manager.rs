//! The instance manager with real PostgreSQL 15: bootstrap, endpoints, replication, restarts,
//! adoption, promotion, demotion, refusals, and no secret on any command line.

mod common;

use common::{Cluster, CmdlineWatch, Manager, free_port, postmasters_on, sql};
use stator_api::instance::{Bootstrap, DemoteRequest, Endpoint, Peer};
use stator_api::names::secret_keys;

fn token(c: &Cluster) -> String {
    c.secret(secret_keys::API_TOKEN)
}

#[test]
fn a_primary_initializes_serves_status_and_its_application_database() {
    let c = Cluster::new("solo");
    let cfg = c.config(0, Bootstrap::InitPrimary);
    let m = c.start(&cfg);
    let status = m.wait_ready();
    eprintln!("/status of a primary: {status:#}");
    assert_eq!(status["name"], "solo-0");
    assert_eq!(status["state"], "running");
    assert_eq!(status["role"], "primary");
    assert_eq!(status["ready"], true);
    assert_eq!(status["timeline"], 1);
    assert!(status["position"].as_str().is_some_and(|p| p.contains('/')));
    assert!(
        status["serverVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("15."))
    );
    assert_eq!(status["restarts"], 0);
    assert_eq!(m.get("/healthz").0, 200);

    // The application owner and database from spec.bootstrap, over TCP with scram.
    let app = c.secret(secret_keys::APP_PASSWORD);
    m.wait_status("the roles to exist", |_| {
        sql(cfg.port, "app", &app, "app", "SELECT 1").is_ok()
    });
    let owner = sql(
        cfg.port,
        "app",
        &app,
        "app",
        "SELECT pg_catalog.pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'app'",
    )
    .unwrap();
    assert_eq!(owner, vec!["app".to_string()]);
    assert!(sql(cfg.port, "app", "wrong-password", "app", "SELECT 1").is_err());
    // The superuser is refused without its password, and no trust anywhere.
    let hba = std::fs::read_to_string(cfg.data_dir.join("pg_hba.conf")).unwrap();
    assert!(
        hba.lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| !l.contains("trust"))
    );

    // Data dir belongs to postgres, mode 0700.
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&cfg.data_dir).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o700);
    let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    assert_eq!(meta.uid(), postgres.uid.as_raw());
}

#[test]
fn metrics_are_prometheus_text_and_pass_promtool() {
    let c = Cluster::new("metrics");
    let cfg = c.config(0, Bootstrap::InitPrimary);
    let m = c.start(&cfg);
    m.wait_ready();
    let (code, text) = m.get("/metrics");
    assert_eq!(code, 200);
    for name in [
        "stator_up{instance_name=\"metrics-0\"} 1",
        "stator_is_primary{instance_name=\"metrics-0\"} 1",
        "stator_server_restarts_total{instance_name=\"metrics-0\"} 0",
        "stator_replication_lag_bytes{instance_name=\"metrics-0\"} 0",
        "stator_wal_position_bytes{instance_name=\"metrics-0\"}",
        "stator_server_uptime_seconds{instance_name=\"metrics-0\"}",
    ] {
        assert!(text.contains(name), "missing {name} in\n{text}");
    }
    if let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "promtool check metrics: {}{}\n{text}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        // scripts/test installs promtool, so in CI a missing one is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "promtool is missing (apt-get install prometheus)"
        );
        eprintln!("promtool not installed (apt-get install prometheus); format check skipped");
    }
}

#[test]
fn mutating_endpoints_refuse_requests_without_the_right_token() {
    let c = Cluster::new("auth");
    let cfg = c.config(0, Bootstrap::InitPrimary);
    let m = c.start(&cfg);
    m.wait_ready();
    let body = serde_json::to_string(&DemoteRequest {
        upstream: m.endpoint(),
    })
    .unwrap();
    assert_eq!(m.post("/promote", None, "").0, 401);
    assert_eq!(m.post("/promote", Some("not-the-token"), "").0, 401);
    assert_eq!(m.post("/demote", None, &body).0, 401);
    assert_eq!(m.post("/demote", Some("x"), &body).0, 401);
    // Refused requests changed nothing.
    let status = m.status();
    assert_eq!(status["role"], "primary");
    assert_eq!(status["state"], "running");
    // With the token, promoting a primary is a no-op that succeeds.
    let (code, body) = m.post("/promote", Some(&token(&c)), "");
    assert_eq!(code, 200, "{body}");
}

#[test]
fn a_replica_clones_streams_is_promoted_and_the_old_primary_rejoins() {
    let c = Cluster::new("repl");
    let watch = CmdlineWatch::start(c.secrets());
    let p_cfg = c.config(0, Bootstrap::InitPrimary);
    let primary = c.start(&p_cfg);
    primary.wait_ready();
    let su = c.secret(secret_keys::SUPERUSER_PASSWORD);
    sql(
        p_cfg.port,
        "postgres",
        &su,
        "app",
        "CREATE TABLE t (v int); INSERT INTO t VALUES (1)",
    )
    .unwrap();

    let r_cfg = c.config(
        1,
        Bootstrap::CloneFrom {
            upstream: primary.endpoint(),
        },
    );
    let replica = c.start(&r_cfg);
    let status = replica.wait_ready();
    eprintln!("/status of a replica: {status:#}");
    assert_eq!(status["role"], "replica");
    assert_eq!(status["upstream"], "repl-0");
    sql(
        p_cfg.port,
        "postgres",
        &su,
        "app",
        "INSERT INTO t VALUES (2)",
    )
    .unwrap();
    replica.wait_status("row 2 on the replica", |_| {
        sql(r_cfg.port, "postgres", &su, "app", "SELECT count(*) FROM t").ok()
            == Some(vec!["2".into()])
    });
    assert!(
        sql(
            r_cfg.port,
            "postgres",
            &su,
            "app",
            "INSERT INTO t VALUES (3)"
        )
        .is_err(),
        "a replica is read-only"
    );
    // No password in what pg_basebackup or the server wrote.
    for file in ["postgresql.auto.conf", "postgresql.conf"] {
        let text = std::fs::read_to_string(r_cfg.data_dir.join(file)).unwrap_or_default();
        for secret in c.secrets() {
            assert!(!text.contains(&secret), "{file} holds a secret");
        }
    }

    // Promote the replica.
    let (code, body) = replica.post("/promote", Some(&token(&c)), "");
    assert_eq!(code, 200, "{body}\n{}", replica.logs());
    let promoted = replica.wait_status("the replica to be primary", |s| {
        s["role"] == "primary" && s["ready"] == true
    });
    assert_eq!(promoted["timeline"], 2);
    sql(
        r_cfg.port,
        "postgres",
        &su,
        "app",
        "INSERT INTO t VALUES (3)",
    )
    .unwrap();

    // The old primary (which took a write of its own meanwhile) rejoins with pg_rewind.
    sql(
        p_cfg.port,
        "postgres",
        &su,
        "app",
        "INSERT INTO t VALUES (99)",
    )
    .unwrap();
    let body = serde_json::to_string(&DemoteRequest {
        upstream: replica.endpoint(),
    })
    .unwrap();
    let (code, text) = primary.post("/demote", Some(&token(&c)), &body);
    assert_eq!(code, 200, "{text}\n{}", primary.logs());
    let rejoined = primary.wait_status("the old primary to stream from the new one", |s| {
        s["role"] == "replica" && s["ready"] == true
    });
    assert_eq!(rejoined["upstream"], "repl-1");
    sql(
        r_cfg.port,
        "postgres",
        &su,
        "app",
        "INSERT INTO t VALUES (4)",
    )
    .unwrap();
    primary.wait_status(
        "the old primary to have the new primary's rows only",
        |_| {
            sql(
                p_cfg.port,
                "postgres",
                &su,
                "app",
                "SELECT string_agg(v::text, ',' ORDER BY v) FROM t",
            )
            .ok()
                == Some(vec!["1,2,3,4".into()])
        },
    );

    let hits = watch.finish();
    assert!(hits.is_empty(), "secrets on command lines: {hits:#?}");
    // Nor in any log.
    for m in [&primary, &replica] {
        for log in [&m.stderr_path, &m.config.log_file] {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            assert!(!text.is_empty(), "{} is empty", log.display());
            for secret in c.secrets() {
                assert!(!text.contains(&secret), "{} holds a secret", log.display());
            }
        }
    }
}

/// A failover with two replicas: the one that is not promoted follows the new primary
/// without a restart (its WAL receiver re-pointed by a reload; no `pg_rewind`), and streams
/// its writes. A replica that took WAL past the new primary's fork point cannot follow it in
/// place (PostgreSQL refuses that history) and is rejoined offline with `pg_rewind`.
#[test]
fn a_replica_follows_a_new_primary_without_a_restart_unless_its_history_diverged() {
    let c = Cluster::new("rp");
    let t = token(&c);
    let su = c.secret(secret_keys::SUPERUSER_PASSWORD);
    let p_cfg = c.config(0, Bootstrap::InitPrimary);
    let mut primary = c.start(&p_cfg);
    primary.wait_ready();
    sql(
        p_cfg.port,
        "postgres",
        &su,
        "app",
        "CREATE TABLE t (v int); INSERT INTO t VALUES (1)",
    )
    .unwrap();
    let clone = |ordinal| {
        let cfg = c.config(
            ordinal,
            Bootstrap::CloneFrom {
                upstream: primary.endpoint(),
            },
        );
        let m = c.start(&cfg);
        m.wait_ready();
        (cfg, m)
    };
    let (n_cfg, new) = clone(1);
    let (o_cfg, other) = clone(2);
    let count = |port| sql(port, "postgres", &su, "app", "SELECT count(*) FROM t").ok();
    other.wait_status("row 1 on both replicas", |_| {
        count(n_cfg.port) == Some(vec!["1".into()]) && count(o_cfg.port) == Some(vec!["1".into()])
    });
    let pid = other.postmaster_pid().expect("a postmaster");

    // The primary gone, one replica promoted, the other told to follow it.
    primary.terminate();
    let (code, body) = new.post("/promote", Some(&t), "");
    assert_eq!(code, 200, "{body}\n{}", new.logs());
    new.wait_status("promoted", |s| s["role"] == "primary" && s["ready"] == true);
    let follow = serde_json::to_string(&DemoteRequest {
        upstream: new.endpoint(),
    })
    .unwrap();
    let (code, body) = other.post("/demote", Some(&t), &follow);
    assert_eq!(code, 200, "{body}\n{}", other.logs());
    assert!(
        body.contains("without a restart"),
        "{body}\n{}",
        other.logs()
    );
    assert_eq!(other.postmaster_pid(), Some(pid), "the same server");
    assert!(!other.logs().contains("pg_rewind"), "{}", other.logs());
    let s = other.wait_status("following rp-1", |s| s["upstream"] == "rp-1");
    assert_eq!(s["role"], "replica", "{s}");
    sql(
        n_cfg.port,
        "postgres",
        &su,
        "app",
        "INSERT INTO t VALUES (2)",
    )
    .unwrap();
    other.wait_status("row 2 streamed from the new primary", |_| {
        count(o_cfg.port) == Some(vec!["2".into()])
    });

    // Diverged: the old primary back (still on timeline 1, without row 2), and `other`, a
    // replica on the new primary's timeline 2 past their fork point, told to follow it. Its
    // WAL receiver cannot stream that history, so it is not re-pointed in place: after the
    // wait it is rejoined offline with pg_rewind, and holds the old primary's rows only.
    let old = c.start(&p_cfg);
    old.wait_status("the old primary serving", |s| {
        s["role"] == "primary" && s["ready"] == true
    });
    let back = serde_json::to_string(&DemoteRequest {
        upstream: old.endpoint(),
    })
    .unwrap();
    let (code, body) = other.post("/demote", Some(&t), &back);
    assert_eq!(code, 200, "{body}\n{}", other.logs());
    assert!(!body.contains("without a restart"), "{body}");
    assert!(
        other
            .logs()
            .contains("does not stream from the new upstream"),
        "{}",
        other.logs()
    );
    other.wait_status("rejoined rp-0 offline", |s| {
        s["upstream"] == "rp-0" && s["role"] == "replica" && s["ready"] == true
    });
    assert!(other.logs().contains("pg_rewind"), "{}", other.logs());
    assert_ne!(other.postmaster_pid(), Some(pid), "restarted");
    other.wait_status("the old primary's rows only", |_| {
        count(o_cfg.port) == Some(vec!["1".into()])
    });
}

#[test]
fn a_killed_postmaster_is_restarted_and_counted() {
    let c = Cluster::new("crash");
    let cfg = c.config(0, Bootstrap::InitPrimary);
    let m = c.start(&cfg);
    let before = m.wait_ready();
    let pid = before["pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let after = m.wait_status("a restarted, ready server", |s| {
        s["restarts"] == 1 && s["ready"] == true
    });
    assert_ne!(after["pid"], before["pid"]);
    assert_eq!(postmasters_on(&cfg.data_dir).len(), 1);
}

#[test]
fn a_new_manager_adopts_the_postmaster_of_a_killed_one_and_reloads_its_config() {
    let c = Cluster::new("adopt");
    let cfg = c.config(0, Bootstrap::InitPrimary);
    let mut first = c.start(&cfg);
    let before = first.wait_ready();
    first.kill9();
    let postmaster = before["pid"].as_u64().unwrap() as u32;
    assert_eq!(
        postmasters_on(&cfg.data_dir),
        vec![postmaster],
        "the server outlives its manager"
    );

    // The new manager comes with a changed parameter, which the adopted server reloads.
    let mut changed = cfg.clone();
    changed.database.spec.config.parameters.insert(
        "work_mem".into(),
        stator_api::parameters::ParameterValue("4321kB".into()),
    );
    let mut second = Manager::start(changed, c.dir.path());
    let after = second.wait_ready();
    assert_eq!(
        after["pid"].as_u64(),
        Some(u64::from(postmaster)),
        "adopted, not restarted"
    );
    assert_eq!(after["restarts"], 0);
    assert_eq!(
        postmasters_on(&cfg.data_dir),
        vec![postmaster],
        "never two postmasters"
    );
    let su = c.secret(secret_keys::SUPERUSER_PASSWORD);
    second.wait_status("the changed parameter to be reloaded", |_| {
        sql(cfg.port, "postgres", &su, "postgres", "SHOW work_mem").ok()
            == Some(vec!["4321kB".into()])
    });

    // SIGTERM stops the adopted server cleanly and exits 0.
    assert_eq!(second.terminate(), Some(0), "{}", second.logs());
    assert!(postmasters_on(&cfg.data_dir).is_empty());
    drop(first);
}

#[test]
fn sigterm_stops_the_server_cleanly_and_exits_zero() {
    let c = Cluster::new("term");
    let cfg = c.config(0, Bootstrap::InitPrimary);
    let mut m = c.start(&cfg);
    m.wait_ready();
    assert_eq!(m.terminate(), Some(0), "{}", m.logs());
    assert!(postmasters_on(&cfg.data_dir).is_empty());
    let log = std::fs::read_to_string(&cfg.log_file).unwrap();
    assert!(log.contains("database system is shut down"), "{log}");
}

#[test]
fn a_data_dir_of_another_database_is_refused_and_left_unchanged() {
    let c = Cluster::new("mine");
    let cfg = c.config(0, Bootstrap::InitPrimary);
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    std::fs::write(cfg.data_dir.join("PG_VERSION"), "15\n").unwrap();
    std::fs::write(
        cfg.data_dir.join("stator.json"),
        r#"{"engine":"postgres","majorVersion":"15","database":"theirs"}"#,
    )
    .unwrap();
    let listing = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = listing(&cfg.data_dir);
    let mut m = c.start(&cfg);
    assert_ne!(m.wait_exit(), Some(0));
    let log = std::fs::read_to_string(&m.stderr_path).unwrap();
    assert!(log.contains("belongs to the database \"theirs\""), "{log}");
    assert!(log.contains("nothing was changed"), "{log}");
    assert_eq!(listing(&cfg.data_dir), before);
    assert!(postmasters_on(&cfg.data_dir).is_empty());
}

#[test]
fn a_data_dir_of_another_major_version_is_refused() {
    let c = Cluster::new("major");
    let cfg = c.config(0, Bootstrap::InitPrimary);
    std::fs::create_dir_all(&cfg.data_dir).unwrap();
    std::fs::write(cfg.data_dir.join("PG_VERSION"), "14\n").unwrap();
    let mut m = c.start(&cfg);
    assert_ne!(m.wait_exit(), Some(0));
    let log = std::fs::read_to_string(&m.stderr_path).unwrap();
    assert!(log.contains("PostgreSQL 14 data directory"), "{log}");
}

#[test]
fn a_synchronous_primary_creates_its_roles_before_any_replica_and_then_commits_through_one() {
    let c = Cluster::new("sync");
    let extra = "  replication:\n    synchronous: true\n";
    let p_cfg = c.config_with(0, Bootstrap::InitPrimary, extra);
    let primary = c.start(&p_cfg);
    primary.wait_ready();
    let app = c.secret(secret_keys::APP_PASSWORD);
    primary.wait_status("the roles to exist without a replica", |_| {
        sql(p_cfg.port, "app", &app, "app", "SELECT 1").is_ok()
    });
    let r_cfg = c.config_with(
        1,
        Bootstrap::CloneFrom {
            upstream: primary.endpoint(),
        },
        extra,
    );
    let replica = c.start(&r_cfg);
    replica.wait_ready();
    // This commit waits for the replica: it returns once the replica holds it.
    sql(
        p_cfg.port,
        "app",
        &app,
        "app",
        "CREATE TABLE s (v int); INSERT INTO s VALUES (1)",
    )
    .unwrap();
    let su = c.secret(secret_keys::SUPERUSER_PASSWORD);
    let sync = sql(
        p_cfg.port,
        "postgres",
        &su,
        "postgres",
        "SELECT sync_state FROM pg_stat_replication",
    )
    .unwrap();
    assert_eq!(sync, vec!["quorum".to_string()]);
}

#[test]
fn a_failed_demotion_leaves_the_server_stopped_never_back_as_primary() {
    let c = Cluster::new("fence");
    let cfg = c.config(0, Bootstrap::InitPrimary);
    let mut m = c.start(&cfg);
    m.wait_ready();
    let nowhere = stator_api::instance::Endpoint {
        instance: "fence-9".into(),
        host: "127.0.0.1".into(),
        port: common::free_port(),
    };
    let body = serde_json::to_string(&DemoteRequest { upstream: nowhere }).unwrap();
    let (code, text) = m.post("/demote", Some(&token(&c)), &body);
    assert_eq!(code, 409, "{text}");
    assert!(text.contains("pg_rewind"), "{text}");
    let status = m.wait_status("the failed state", |s| s["state"] == "failed");
    assert!(
        status["message"].as_str().unwrap_or("").contains("fence-9"),
        "{status}"
    );
    assert_eq!(status["pid"], serde_json::Value::Null);
    assert!(
        postmasters_on(&cfg.data_dir).is_empty(),
        "the old primary stays down"
    );
    assert_eq!(m.get("/healthz").0, 503);
    assert_eq!(m.get("/readyz").0, 503);
    assert_eq!(m.terminate(), Some(0), "{}", m.logs());
}

#[test]
fn an_http_port_in_use_is_named_and_nothing_is_created() {
    let c = Cluster::new("busy");
    let cfg = c.config(0, Bootstrap::InitPrimary);
    let _holder = std::net::TcpListener::bind(("127.0.0.1", cfg.http_port)).unwrap();
    let mut m = c.start(&cfg);
    assert_ne!(m.wait_exit(), Some(0));
    let log = std::fs::read_to_string(&m.stderr_path).unwrap();
    let address = format!("127.0.0.1:{}", cfg.http_port);
    assert!(log.contains(&address) && log.contains("busy-0"), "{log}");
    assert!(!cfg.data_dir.exists(), "nothing was created");
}

#[test]
fn a_replica_whose_upstream_stops_is_alive_but_not_ready() {
    let c = Cluster::new("orphan");
    let p_cfg = c.config(0, Bootstrap::InitPrimary);
    let mut primary = c.start(&p_cfg);
    primary.wait_ready();
    let r_cfg = c.config(
        1,
        Bootstrap::CloneFrom {
            upstream: primary.endpoint(),
        },
    );
    let replica = c.start(&r_cfg);
    replica.wait_ready();
    assert_eq!(primary.terminate(), Some(0));
    let status = replica.wait_status("the replica to notice", |s| s["ready"] == false);
    assert_eq!(status["state"], "running");
    assert_eq!(status["role"], "replica");
    assert!(
        status["message"]
            .as_str()
            .is_some_and(|m| m.contains("not streaming") && m.contains("orphan-0")),
        "{status}"
    );
    let (code, body) = replica.get("/readyz");
    assert_eq!(code, 503, "{body}");
    assert_eq!(replica.get("/healthz").0, 200);
}

/// A peer of instance `name` on 127.0.0.1 (or `host`).
fn peer(name: &str, host: &str, port: u16, http_port: u16) -> Peer {
    Peer {
        server: Endpoint {
            instance: name.into(),
            host: host.into(),
            port,
        },
        http_port,
    }
}

/// A pod whose volume was lost (an empty data dir, configured as the new primary) never
/// initialises while a peer may hold the data: a peer that exists but does not answer makes it
/// wait with the data dir left empty; a peer that is a running primary holding data is cloned.
#[test]
fn an_empty_data_dir_is_never_initialised_while_a_peer_may_hold_the_data() {
    let c = Cluster::new("lostpvc");
    let su = c.secret(secret_keys::SUPERUSER_PASSWORD);
    // Ordinal 1 holds the data (the primary after a failover, say).
    let p_cfg = c.config(1, Bootstrap::InitPrimary);
    let primary = c.start(&p_cfg);
    primary.wait_ready();
    sql(
        p_cfg.port,
        "postgres",
        &su,
        "app",
        "CREATE TABLE t (v int); INSERT INTO t SELECT generate_series(1, 500)",
    )
    .unwrap();
    let missing = peer(
        "lostpvc-3",
        "lostpvc-3.lostpvc-headless.nowhere.invalid",
        5432,
        8008,
    );

    // A peer exists (its address is known) but nothing answers there: wait, never initialise.
    let mut lost_cfg = c.config(0, Bootstrap::InitPrimary);
    lost_cfg.peers = vec![
        missing.clone(),
        peer("lostpvc-2", "127.0.0.1", free_port(), free_port()),
    ];
    let mut waiting = c.start(&lost_cfg);
    let status = waiting.wait_status("the manager to wait for its silent peer", |s| {
        s["message"]
            .as_str()
            .is_some_and(|m| m.contains("lostpvc-2") && m.contains("do not answer"))
    });
    assert_eq!(status["state"], "initializing", "{status}");
    assert_eq!(status["holdsData"], false, "{status}");
    std::thread::sleep(std::time::Duration::from_secs(4));
    let empty = std::fs::read_dir(&lost_cfg.data_dir).map_or(true, |mut d| d.next().is_none());
    assert!(
        empty,
        "the data dir was filled while a peer may hold the data\n{}",
        waiting.logs()
    );
    assert_eq!(waiting.terminate(), Some(0), "{}", waiting.logs());

    // The peer holding the data answers as a running primary: clone it, follow it.
    lost_cfg.peers = vec![
        missing,
        peer("lostpvc-1", "127.0.0.1", p_cfg.port, p_cfg.http_port),
    ];
    let rebuilt = c.start(&lost_cfg);
    let status = rebuilt.wait_ready();
    assert_eq!(status["role"], "replica", "{status}\n{}", rebuilt.logs());
    assert_eq!(status["upstream"], "lostpvc-1", "{status}");
    assert_eq!(status["holdsData"], true, "{status}");
    assert_eq!(
        sql(
            lost_cfg.port,
            "postgres",
            &su,
            "app",
            "SELECT count(*) FROM t"
        )
        .unwrap(),
        vec!["500".to_string()]
    );
    let identifier = |data: &std::path::Path| {
        std::fs::read(data.join("global/pg_control")).unwrap()[..8].to_vec()
    };
    assert_eq!(
        identifier(&lost_cfg.data_dir),
        identifier(&p_cfg.data_dir),
        "the same database system identifier"
    );
}

/// With a TLS directory the manager serves its endpoints over HTTPS only: a plain HTTP request
/// gets no answer, a client verifying against the database's CA reads `/status` (the peers'
/// question a pod asks before initialising), one that trusts another CA is refused; the server
/// refuses plaintext TCP and accepts a verified TLS connection.
#[test]
fn with_tls_the_endpoints_answer_only_https_verified_against_the_database_ca() {
    use stator_engine::tls::{TlsFiles, local_sans, trust_endpoints};
    use stator_instance::peers::{PeerAnswer, ask};

    let c = Cluster::new("tlsim");
    let files = TlsFiles::new(c.dir.path().join("tls"));
    files
        .issue("tlsim", &local_sans(&[]), "stator_replication")
        .unwrap();
    let other = TlsFiles::new(c.dir.path().join("other"));
    other
        .issue("other", &local_sans(&[]), "stator_replication")
        .unwrap();
    let mut cfg = c.config(0, Bootstrap::InitPrimary);
    cfg.tls_dir = Some(files.dir().to_path_buf());
    let manager = c.start(&cfg);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let me = peer("tlsim-0", "127.0.0.1", cfg.port, cfg.http_port);
    trust_endpoints("127.0.0.1", [cfg.http_port], &files).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        match rt.block_on(ask(&me)) {
            PeerAnswer::Report(r) if r.ready => break,
            answer => assert!(
                std::time::Instant::now() < deadline,
                "not ready over HTTPS: {answer:?}\n{}",
                manager.logs()
            ),
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    }

    let (code, body) = manager.get("/status");
    assert_eq!(code, 0, "plain HTTP answered: {body}");
    // A client of this process that trusts another CA for that endpoint.
    trust_endpoints("127.0.0.1", [cfg.http_port], &other).unwrap();
    match rt.block_on(ask(&me)) {
        PeerAnswer::Silent(why) => assert!(why.contains("certificate"), "{why}"),
        answer => panic!("a client trusting another CA got {answer:?}"),
    }

    let su = c.secret(secret_keys::SUPERUSER_PASSWORD);
    // Refused in plaintext; the same login gets in over verified TLS below.
    assert!(sql(cfg.port, "postgres", &su, "postgres", "SELECT 1").is_err());
    let verified = rt.block_on(async {
        let mut pg = tokio_postgres::Config::new();
        pg.host("127.0.0.1")
            .port(cfg.port)
            .user("postgres")
            .password(su.as_str())
            .dbname("postgres")
            .ssl_mode(tokio_postgres::config::SslMode::Require);
        let (client, conn) = pg.connect(files.postgres_connector().unwrap()).await?;
        tokio::spawn(conn);
        let row = client
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .await?;
        Ok::<bool, tokio_postgres::Error>(row.get(0))
    });
    assert!(verified.unwrap(), "the verified session is not TLS");
}
