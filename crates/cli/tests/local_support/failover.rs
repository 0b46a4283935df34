//! For the failover tests (PostgreSQL and MariaDB): who the core holds as primary, holding an
//! instance down and killing it, a writer that records every acknowledged row, and a watcher
//! that counts moments with two writable instances.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

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
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// Inserts 1, 2, 3 … into `table` through `port` (one connection per row) until stopped;
/// records every number whose INSERT was acknowledged.
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    thread: Option<JoinHandle<()>>,
}

impl Writer {
    pub fn start(engine: &'static str, password: String, port: u16, table: &str) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let table = table.to_string();
        let thread = {
            let stop = stop.clone();
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    n += 1;
                    let sql = format!("INSERT INTO {table} VALUES ({n})");
                    if quick_sql(engine, &password, port, &sql).is_ok() {
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
            thread: Some(thread),
        }
    }

    pub fn acked(&self) -> usize {
        self.acked.lock().unwrap().len()
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
