//! For the failover tests (PostgreSQL and MariaDB): who the core holds as primary, holding an
//! instance down and killing it, a writer that records every acknowledged row, and a watcher
//! that counts moments with two writable instances.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::Cluster;

impl Cluster {
    /// The primary the decision core holds (`failover.primary` in `stator status -o json`).
    pub fn core_primary(&self) -> Option<String> {
        self.status()["failover"]["primary"]
            .as_str()
            .map(str::to_string)
    }

    /// The hold file of instance N: the supervisor does not start it while it exists.
    pub fn hold_file(&self, ordinal: u32) -> std::path::PathBuf {
        self.db_dir()
            .join("instances")
            .join(format!("{}-{ordinal}", self.name))
            .join("hold")
    }

    /// The pid of instance N's instance manager, from its pid file.
    pub fn manager_pid(&self, ordinal: u32) -> Option<u32> {
        std::fs::read_to_string(
            self.db_dir()
                .join("instances")
                .join(format!("{}-{ordinal}", self.name))
                .join("manager.pid"),
        )
        .ok()?
        .trim()
        .parse()
        .ok()
    }

    /// Instance N's server processes (PostgreSQL: the postmaster; MariaDB: mariadbd).
    pub fn servers(&self, ordinal: u32) -> Vec<u32> {
        if self.engine == "mariadb" {
            self.mariadbds(ordinal)
        } else {
            self.postmasters(ordinal)
        }
    }

    /// Holds instance N down, then kills its instance manager and its server with SIGKILL.
    pub fn hold_and_kill(&self, ordinal: u32) {
        std::fs::write(self.hold_file(ordinal), "held by the test\n").unwrap();
        if let Some(pid) = self.manager_pid(ordinal) {
            signal(pid, "KILL");
        }
        for pid in self.servers(ordinal) {
            signal(pid, "KILL");
        }
    }

    /// The application password, read once from its file (not through `stator uri`).
    pub fn app_password(&self) -> String {
        std::fs::read_to_string(self.db_dir().join("secrets").join("app-password"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// After a drill, once it settles, `stator status` says what clients see: the primary it
    /// shows (the recorded one, the core's, the only `rw` target, its row a running, ready
    /// writable primary) is the server a client reaches through `rw`, and that server takes
    /// writes; no other instance is shown as a ready, writable primary (a fenced or held one
    /// never is).
    pub fn assert_status_matches_clients(&self, password: &str) {
        let port_query = if self.engine == "mariadb" {
            "SELECT @@port"
        } else {
            "SELECT inet_server_port()"
        };
        let started = Instant::now();
        loop {
            let status = self.status();
            let mismatch = (|| {
                let primary = status["primary"].as_str().unwrap_or_default();
                if status["failover"]["primary"] != primary {
                    return format!(
                        "the core holds {} as primary",
                        status["failover"]["primary"]
                    );
                }
                if status["proxies"]["rw"]["targets"] != serde_json::json!([primary]) {
                    return format!("rw routes to {}", status["proxies"]["rw"]["targets"]);
                }
                let rows = status["instances"].as_array().cloned().unwrap_or_default();
                // As the table shows it: a read-only primary is shown as such, not ready.
                let shown_primary = |r: &serde_json::Value| {
                    r["report"]["role"] == "primary"
                        && r["report"]["ready"] == true
                        && r["report"]["readOnly"] != true
                };
                let Some(row) = rows.iter().find(|r| r["name"] == primary) else {
                    return format!("{primary} has no row");
                };
                if !shown_primary(row) || row["state"] != "running" {
                    return format!("{primary} is not shown as a running, ready primary");
                }
                if let Some(other) = rows
                    .iter()
                    .find(|r| r["name"] != primary && shown_primary(r))
                {
                    return format!("{} is shown as a ready primary too", other["name"]);
                }
                let ordinal: u32 = primary
                    .rsplit_once('-')
                    .map_or(u32::MAX, |(_, o)| o.parse().unwrap_or(u32::MAX));
                match self.quick_sql(password, self.rw(), port_query) {
                    Ok(port) if port == self.server_port(ordinal).to_string() => {}
                    other => return format!("rw reaches {other:?}, not {primary}"),
                }
                match self.quick_sql(password, self.rw(), writable_query(self.engine)) {
                    Ok(w) if w == "1" => String::new(),
                    other => format!("the server behind rw is not writable: {other:?}"),
                }
            })();
            if mismatch.is_empty() {
                return;
            }
            if started.elapsed() > Duration::from_secs(120) {
                panic!(
                    "stator status does not match what clients see: {mismatch}\n{status:#}\n{}",
                    self.logs_for_failure()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// SQL on `port` as the application user with the engine's client (`psql`, `mariadb`),
    /// a connect timeout and an overall timeout; the password through the environment.
    pub fn quick_sql(&self, password: &str, port: u16, sql: &str) -> Result<String, String> {
        quick_sql(self.engine, password, port, sql)
    }
}

/// The query that answers `1` on a writable server and `0` on a read-only one.
pub fn writable_query(engine: &str) -> &'static str {
    if engine == "mariadb" {
        "SELECT 1 - @@GLOBAL.read_only"
    } else {
        "SELECT CASE WHEN pg_is_in_recovery() THEN 0 ELSE 1 END"
    }
}

pub fn quick_sql(engine: &str, password: &str, port: u16, sql: &str) -> Result<String, String> {
    let port = port.to_string();
    let mut command = Command::new("timeout");
    if engine == "mariadb" {
        command
            .args([
                "5",
                "mariadb",
                "--no-defaults",
                "-N",
                "-B",
                "--connect-timeout=2",
            ])
            .args([
                "-h",
                "127.0.0.1",
                "-P",
                &port,
                "-u",
                "app",
                "-e",
                sql,
                "app",
            ])
            .env("MYSQL_PWD", password);
    } else {
        command
            .args(["5", "psql", "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "app",
                "-d",
                "app",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "2");
    }
    let out = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    super::output_text(&out)
}

/// SQL through `psql` on a connection URI (the password in it), with a connect timeout and an
/// overall timeout.
pub fn psql_uri(uri: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("timeout")
        .args([
            "10",
            "psql",
            "-X",
            "-A",
            "-t",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ])
        .arg(uri)
        .env("PGCONNECT_TIMEOUT", "2")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    super::output_text(&out)
}

pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Inserts 1, 2, 3 … into `table` through `port` (one connection per row) until stopped;
/// records every number whose INSERT was acknowledged, and when each attempt started and
/// ended and whether it was acknowledged.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    attempts: Arc<Mutex<Vec<(Instant, Instant, bool)>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn start(engine: &'static str, password: String, port: u16, table: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let table = table.to_string();
        let thread = {
            let stop = stop.clone();
            let acked = acked.clone();
            let attempts = attempts.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let sql = format!("INSERT INTO {table} VALUES ({n})");
                    let started = Instant::now();
                    let ok = quick_sql(engine, &password, port, &sql).is_ok();
                    attempts.lock().unwrap().push((started, Instant::now(), ok));
                    if ok {
                        acked.lock().unwrap().push(n);
                    } else {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            })
        };
        Writer {
            stop,
            acked,
            attempts,
            thread: Some(thread),
        }
    }

    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// How many attempts failed.
    pub fn failed(&self) -> usize {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, _, ok)| !ok)
            .count()
    }

    /// The longest time the writer knows it could not write: from the end of an acknowledged
    /// INSERT to the start of the last attempt after it that failed. A lower bound of the
    /// outage it saw, free of its own retry pauses.
    pub fn longest_gap(&self) -> Duration {
        let mut last_ack: Option<Instant> = None;
        let mut longest = Duration::ZERO;
        for (started, ended, ok) in self.attempts.lock().unwrap().iter() {
            if *ok {
                last_ack = Some(*ended);
            } else if let Some(ack) = last_ack {
                longest = longest.max(started.saturating_duration_since(ack));
            }
        }
        longest
    }

    /// When the first write sent after `moment` was acknowledged, if one was.
    pub fn first_ack_after(&self, moment: Instant) -> Option<Instant> {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .find(|(started, _, ok)| *ok && *started > moment)
            .map(|(_, ended, _)| *ended)
    }

    /// Stops and returns every acknowledged number.
    pub fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.acked.lock().unwrap().clone()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Probes every server for writability ([`writable_query`]) several times a second and counts
/// rounds in which two or more said yes.
pub struct Watcher {
    stop: Arc<AtomicBool>,
    both: Arc<AtomicUsize>,
    rounds: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    pub fn start(engine: &'static str, password: String, ports: Vec<u16>) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let both = Arc::new(AtomicUsize::new(0));
        let rounds = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, both, rounds) = (stop.clone(), both.clone(), rounds.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let probes: Vec<_> = ports
                        .iter()
                        .map(|port| {
                            let password = password.clone();
                            let port = *port;
                            std::thread::spawn(move || {
                                quick_sql(engine, &password, port, writable_query(engine))
                                    .is_ok_and(|v| v == "1")
                            })
                        })
                        .collect();
                    let writable = probes
                        .into_iter()
                        .map(|p| p.join().unwrap_or(false))
                        .filter(|w| *w)
                        .count();
                    rounds.fetch_add(1, Ordering::SeqCst);
                    if writable > 1 {
                        both.fetch_add(1, Ordering::SeqCst);
                    }
                    std::thread::sleep(Duration::from_millis(150));
                }
            })
        };
        Watcher {
            stop,
            both,
            rounds,
            thread: Some(thread),
        }
    }

    /// Stops; (rounds, rounds with two or more writable servers).
    pub fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        (
            self.rounds.load(Ordering::SeqCst),
            self.both.load(Ordering::SeqCst),
        )
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}
