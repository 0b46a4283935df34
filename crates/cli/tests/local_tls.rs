//! TLS by default in the local runtime, with real PostgreSQL 15 and MariaDB 10.11 (two
//! instances each): plaintext TCP is refused; the verify-full URI `stator uri` prints works
//! through `rw` and `ro`; a client that trusts another CA is refused; replication runs over TLS;
//! the instance managers and the supervisor refuse plain HTTP; a certificate renewed while a
//! writer runs is served to new connections without a restart and without a failed statement.
//! And a `--direct` URI keeps a writer going through a failover, losing no acknowledged write.

mod local_support;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use local_support::Cluster;
use local_support::failover::{Writer, psql_uri, quick_sql};

const WAIT: Duration = Duration::from_secs(120);

/// A CA that is not the database's (a client trusting it must be refused).
fn other_ca(dir: &Path) -> PathBuf {
    let (key, cert) = (dir.join("other-ca.key"), dir.join("other-ca.crt"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=not the database's CA", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    cert
}

/// The serial of the certificate in `file`.
fn file_serial(file: &Path) -> String {
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The serial of the certificate the server on `port` presents to a new connection, verified
/// against `ca` (`starttls`: `postgres` or `mysql`, the protocols' own TLS upgrade).
fn served_serial(port: u16, starttls: &str, ca: &Path) -> Option<String> {
    let script = format!(
        "openssl s_client -starttls {starttls} -connect 127.0.0.1:{port} -CAfile '{}' -verify_return_error -verify_ip 127.0.0.1 </dev/null 2>/dev/null | openssl x509 -noout -serial",
        ca.display()
    );
    let out = Command::new("timeout")
        .args(["10", "sh", "-c", &script])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && text.starts_with("serial=")).then_some(text)
}

/// What an HTTP/1.1 request in plaintext gets from `port`: the first bytes of the answer.
fn plain_http_answer(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Checks the instance managers and the supervisor: plain HTTP gets no HTTP answer, and
/// `stator status` (over HTTPS, verified against the CA) still reads them.
fn assert_endpoints_refuse_plain_http(cluster: &Cluster) {
    for port in [cluster.base + 30, cluster.base + 31, cluster.base + 2] {
        let answer = plain_http_answer(port);
        assert!(
            !answer.contains("HTTP/1.1") && !answer.contains("primary"),
            "port {port} answered plain HTTP: {answer:?}"
        );
    }
    let status = cluster.status();
    assert_eq!(status["phase"], "Ready", "{status:#}");
}

/// Runs `stator tls renew` while a writer runs through `rw`; returns once a new connection to
/// every server and proxy is served the new certificate. The writer never failed, no server
/// restarted.
fn renew_under_a_writer(
    cluster: &Cluster,
    password: &str,
    starttls: &str,
    pids: &dyn Fn() -> Vec<u32>,
) {
    quick_sql(
        cluster.engine,
        password,
        cluster.rw(),
        "CREATE TABLE r (n bigint PRIMARY KEY)",
    )
    .unwrap();
    let before = pids();
    let old = file_serial(&cluster.db_dir().join("tls/tls.crt"));
    let writer = Writer::start(cluster.engine, password.to_string(), cluster.rw(), "r");
    cluster.eventually("the writer writes", WAIT, || {
        (writer.acked() >= 5).then_some(())
    });
    let out = cluster.ok(&["tls", "renew"]);
    assert!(out.contains("renewed"), "{out}");
    let new = file_serial(&cluster.db_dir().join("tls/tls.crt"));
    assert_ne!(old, new, "renew issued no new certificate");
    let ports = [
        cluster.server_port(0),
        cluster.server_port(1),
        cluster.rw(),
        cluster.ro(),
    ];
    for port in ports {
        cluster.eventually(
            &format!("port {port} serves the new certificate"),
            WAIT,
            || {
                (served_serial(port, starttls, &cluster.ca()).as_deref() == Some(new.as_str()))
                    .then_some(())
            },
        );
    }
    let acked_before = writer.acked();
    cluster.eventually("the writer writes after the renewal", WAIT, || {
        (writer.acked() >= acked_before + 5).then_some(())
    });
    let gap = writer.longest_gap();
    let attempts_failed = writer.failed();
    let acked = writer.finish();
    println!(
        "renewal under a writer: {} rows acknowledged, {attempts_failed} failed attempts, longest gap {} ms",
        acked.len(),
        gap.as_millis()
    );
    assert_eq!(attempts_failed, 0, "a statement failed during the renewal");
    assert_eq!(pids(), before, "a server restarted for the renewal");
}

#[test]
fn postgres_serves_only_verified_tls_to_clients_replication_and_endpoints_and_renews_without_a_restart()
 {
    let cluster = Cluster::new("tlspg", 2);
    cluster.up();
    let password = cluster.password();
    let superuser =
        std::fs::read_to_string(cluster.db_dir().join("secrets/superuser-password")).unwrap();

    // Plaintext TCP is refused, to a server and through the proxies.
    for port in [
        cluster.server_port(0),
        cluster.server_port(1),
        cluster.rw(),
        cluster.ro(),
    ] {
        let out = Command::new("psql")
            .args(["-X", "-A", "-t", "-h", "127.0.0.1", "-p", &port.to_string()])
            .args(["-U", "app", "-d", "app", "-c", "SELECT 1"])
            .env("PGPASSWORD", &password)
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "plaintext accepted on {port}");
        assert!(err.contains("no encryption"), "port {port}: {err}");
    }

    // The URIs of `stator uri` verify the server fully and work through rw and ro.
    for (endpoint, recovery) in [("rw", "f"), ("ro", "t")] {
        let uri = cluster.ok(&["uri", endpoint]);
        let uri = uri.trim();
        assert!(uri.contains("sslmode=verify-full&sslrootcert="), "{uri}");
        let out = Command::new("psql")
            .args(["-X", "-A", "-t", "-c"])
            .arg("SELECT ssl, pg_is_in_recovery() FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .arg(uri)
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .unwrap();
        assert!(out.status.success(), "{endpoint}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            format!("t|{recovery}")
        );
    }

    // A client that trusts another CA is refused.
    let other = other_ca(cluster.dir.path());
    let out = Command::new("psql")
        .args(["-X", "-h", "127.0.0.1", "-p", &cluster.rw().to_string()])
        .args(["-U", "app", "-d", "app", "-c", "SELECT 1"])
        .env("PGPASSWORD", &password)
        .env("PGSSLMODE", "verify-full")
        .env("PGSSLROOTCERT", &other)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("certificate verify failed"), "{err}");

    // Replication runs over TLS, with the replication user's client certificate.
    let socket_dir = cluster
        .db_dir()
        .join(format!("instances/{}-0/run", cluster.name));
    let out = Command::new("psql")
        .args(["-X", "-A", "-t", "-h"])
        .arg(&socket_dir)
        .args(["-p", &cluster.server_port(0).to_string(), "-U", "postgres", "-d", "postgres"])
        .arg("-c")
        .arg("SELECT s.ssl, s.version, s.client_dn FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)")
        .env("PGPASSWORD", superuser.trim())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let walsenders = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(walsenders.starts_with("t|TLSv1."), "{walsenders}");
    assert!(
        walsenders.ends_with("/CN=stator_replication"),
        "{walsenders}"
    );

    assert_endpoints_refuse_plain_http(&cluster);

    let postmasters = || {
        let mut pids = cluster.postmasters(0);
        pids.extend(cluster.postmasters(1));
        pids
    };
    renew_under_a_writer(&cluster, &password, "postgres", &postmasters);
}

#[test]
fn mariadb_serves_only_verified_tls_to_clients_replication_and_endpoints_and_renews_without_a_restart()
 {
    let cluster = Cluster::mariadb("tlsmy", 2);
    // performance_schema (off by default in MariaDB, and not dynamic) shows each connection's
    // session status, the replication sessions' Ssl_cipher among them.
    cluster.write_spec(
        2,
        "  config:\n    parameters:\n      performance_schema: \"ON\"\n",
    );
    cluster.up();
    let password = cluster.password();
    let ca = cluster.ca();

    // The TLS cipher of the session and whether the server is read-only, as the app user.
    let connect = |port: u16, ssl: Option<mysql_async::SslOpts>| -> Result<String, String> {
        cluster
            .sql_with(
                port,
                ssl,
                "SELECT VARIABLE_VALUE, @@read_only FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher'",
            )
            .map(|rows| rows.first().map(|r| r.join("|")).unwrap_or_default())
    };

    // Plaintext TCP is refused, to a server and through the proxies.
    for port in [
        cluster.server_port(0),
        cluster.server_port(1),
        cluster.rw(),
        cluster.ro(),
    ] {
        // MariaDB 10.11 answers a plaintext login under require_secure_transport with "Access
        // denied"; the same password gets in over TLS below.
        let err = connect(port, None).unwrap_err();
        assert!(
            err.contains("insecure transport") || err.contains("Access denied"),
            "port {port}: {err}"
        );
    }

    // The URIs of `stator uri` name the CA and ask for the host to be verified; a client that
    // does so gets in through rw and ro.
    for (endpoint, read_only) in [("rw", "0"), ("ro", "1")] {
        let uri = cluster.ok(&["uri", endpoint]);
        let (base, query) = uri.trim().split_once('?').unwrap();
        assert!(
            query.starts_with("ssl-mode=VERIFY_IDENTITY&ssl-ca="),
            "{uri}"
        );
        let ca_in_uri = query.split("ssl-ca=").nth(1).unwrap().replace("%2F", "/");
        assert_eq!(Path::new(&ca_in_uri), ca);
        let port: u16 = base
            .rsplit_once(':')
            .unwrap()
            .1
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let ssl =
            mysql_async::SslOpts::default().with_root_certs(vec![PathBuf::from(ca_in_uri).into()]);
        let answer = connect(port, Some(ssl)).unwrap();
        let (cipher, ro) = answer.split_once('|').unwrap();
        assert!(!cipher.is_empty(), "{endpoint}: no TLS cipher");
        assert_eq!(ro, read_only, "{endpoint}");
    }
    // The command-line client with the CA, verifying the server's certificate.
    let out = Command::new("mariadb")
        .args([
            "--no-defaults",
            "-N",
            "-B",
            "-h",
            "127.0.0.1",
            "-P",
            &cluster.rw().to_string(),
        ])
        .arg(format!("--ssl-ca={}", ca.display()))
        .args([
            "--ssl-verify-server-cert",
            "-u",
            "app",
            "-e",
            "SELECT 1",
            "app",
        ])
        .env("MYSQL_PWD", &password)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // A client that trusts another CA is refused.
    let other = other_ca(cluster.dir.path());
    let ssl = mysql_async::SslOpts::default().with_root_certs(vec![other.into()]);
    assert!(connect(cluster.rw(), Some(ssl)).is_err());

    // Replication: the replica's session to the primary is TLS, verifying the primary's
    // certificate (and plaintext could not have connected: require_secure_transport).
    let out = Command::new("mariadb")
        .args([
            "--no-defaults",
            "-u",
            "root",
            "--vertical",
            "-e",
            "SHOW SLAVE STATUS",
        ])
        .arg(format!("--socket={}", cluster.socket(1).display()))
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout).into_owned();
    for line in [
        "Slave_IO_Running: Yes",
        "Master_SSL_Allowed: Yes",
        "Master_SSL_Verify_Server_Cert: Yes",
    ] {
        assert!(status.contains(line), "{line}: {status}");
    }
    let secure = cluster
        .root_sql(0, "SELECT @@require_secure_transport")
        .unwrap();
    assert_eq!(secure, "1");
    // The live session, seen from the primary: its Binlog Dump thread (the replica's connection)
    // has a TLS cipher. A plaintext session would show an empty Ssl_cipher (LEFT JOIN: a row
    // still), and no replication no row at all.
    let sessions = cluster
        .root_sql(
            0,
            "SELECT t.PROCESSLIST_USER, COALESCE(s.VARIABLE_VALUE, '') \
             FROM performance_schema.threads t LEFT JOIN performance_schema.status_by_thread s \
             ON s.THREAD_ID = t.THREAD_ID AND s.VARIABLE_NAME = 'Ssl_cipher' \
             WHERE t.PROCESSLIST_COMMAND LIKE 'Binlog Dump%'",
        )
        .unwrap();
    let sessions: Vec<&str> = sessions.lines().collect();
    assert_eq!(sessions.len(), 1, "one replica, one session: {sessions:?}");
    let (user, cipher) = sessions[0].split_once('\t').unwrap_or((sessions[0], ""));
    assert_eq!(user, "stator_replication");
    assert!(
        !cipher.trim().is_empty(),
        "the replication session has no TLS cipher: {sessions:?}"
    );
    println!("replication session (Binlog Dump on the primary): Ssl_cipher {cipher}");

    assert_endpoints_refuse_plain_http(&cluster);

    let servers = || {
        let mut pids = cluster.mariadbds(0);
        pids.extend(cluster.mariadbds(1));
        pids
    };
    renew_under_a_writer(&cluster, &password, "mysql", &servers);
}

#[test]
fn a_direct_uri_keeps_a_writer_going_through_a_failover_and_loses_no_acknowledged_write() {
    let cluster = Cluster::new("tlsdr", 3);
    cluster.write_spec(3, "  replication:\n    synchronous: true\n");
    cluster.up();
    let direct = cluster.ok(&["uri", "--direct", "rw"]);
    let direct = direct.trim().to_string();
    assert!(
        direct.contains("target_session_attrs=read-write"),
        "{direct}"
    );
    assert!(direct.contains("sslmode=verify-full"), "{direct}");
    let run = |sql: &str| psql_uri(&direct, sql);
    run("CREATE TABLE d (n bigint PRIMARY KEY)").unwrap();

    // One connection per row through the direct URI: libpq finds the writable instance.
    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = {
        let (stop, failed, acked, direct) =
            (stop.clone(), failed.clone(), acked.clone(), direct.clone());
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                if psql_uri(&direct, &format!("INSERT INTO d VALUES ({n})")).is_ok() {
                    acked.lock().unwrap().push(n);
                } else {
                    failed.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
    };
    let count = || acked.lock().unwrap().len();
    cluster.eventually("the direct writer writes", WAIT, || {
        (count() >= 10).then_some(())
    });

    let old = cluster.core_primary().unwrap();
    let old_ordinal: u32 = old.rsplit_once('-').unwrap().1.parse().unwrap();
    cluster.hold_and_kill(old_ordinal);
    let new = cluster.eventually("a new primary", WAIT, || {
        cluster.core_primary().filter(|p| *p != old)
    });
    let at_failover = count();
    cluster.eventually("the direct writer writes on the new primary", WAIT, || {
        (count() >= at_failover + 10).then_some(())
    });
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let acked = acked.lock().unwrap().clone();
    let failed = failed.load(Ordering::SeqCst);

    // Every acknowledged row is on the new primary, read through the same direct URI.
    let rows: Vec<u64> = run("SELECT n FROM d ORDER BY n")
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|n| rows.binary_search(n).is_err())
        .collect();
    println!(
        "direct URI through a failover from {old} to {new}: {} rows acknowledged, {failed} attempts failed during the outage, {} lost",
        acked.len(),
        lost.len()
    );
    assert!(lost.is_empty(), "acknowledged rows lost: {lost:?}");
    let writable = run("SELECT inet_server_port()").unwrap();
    let new_ordinal: u16 = new.rsplit_once('-').unwrap().1.parse().unwrap();
    assert_eq!(writable, (cluster.base + 10 + new_ordinal).to_string());
}
