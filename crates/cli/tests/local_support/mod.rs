//! Shared by the `local_*` integration tests: a database in a temporary state dir on a free port
//! range, driven through the real `stator` binary, with real PostgreSQL 15 or MariaDB 10.11
//! servers. Dropping a [`Cluster`] runs `stator delete --purge` and kills anything left that
//! mentions its state dir.

#![allow(dead_code)]

pub mod failover;
pub mod s3;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

pub const STATOR: &str = env!("CARGO_BIN_EXE_stator");

static NEXT_BASE: AtomicU16 = AtomicU16::new(0);

/// The ports bases are taken from: below Linux's ephemeral range (32768–60999), which the
/// kernel hands to outgoing connections (proxies, probes, clients). A base inside it could be
/// taken by one of those between the check here and the server's bind ("Address already in
/// use", seen when many clusters run side by side).
const PORTS: std::ops::Range<u16> = 10000..32700;

/// A base port whose 50 ports are all free now (ranges are handed out once per process, and
/// start at a pid-dependent place so parallel test binaries rarely meet).
pub fn free_port_base() -> u16 {
    let span = PORTS.end - PORTS.start;
    let start = (std::process::id() % u32::from(span / 100)) as u16 * 100;
    loop {
        let offset = NEXT_BASE.fetch_add(50, Ordering::SeqCst);
        let base = PORTS.start + (start + offset % span) % span;
        if (base..base + 50).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
}

/// A finished command's trimmed stdout, or its stderr when it failed.
pub fn output_text(out: &Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub base: u16,
    pub spec: PathBuf,
    /// `postgres` or `mariadb`, as the spec spells it.
    pub engine: &'static str,
}

impl Cluster {
    /// A PostgreSQL database `name` with `instances` instances, not started yet.
    pub fn new(name: &str, instances: u32) -> Cluster {
        Cluster::of_engine("postgres", name, instances)
    }

    /// A MariaDB 10.11 database `name` with `instances` instances, not started yet.
    pub fn mariadb(name: &str, instances: u32) -> Cluster {
        Cluster::of_engine("mariadb", name, instances)
    }

    fn of_engine(engine: &'static str, name: &str, instances: u32) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("stl")
            .tempdir()
            .expect("temp dir");
        // The servers run as `postgres` / `mysql` and must be able to enter the state dir.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cluster = Cluster {
            spec: dir.path().join(format!("{name}.yaml")),
            dir,
            name: name.to_string(),
            base: free_port_base(),
            engine,
        };
        cluster.write_spec(instances, "");
        cluster
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn db_dir(&self) -> PathBuf {
        self.state_dir().join("default").join(&self.name)
    }

    /// The database's CA certificate (TLS is on by default).
    pub fn ca(&self) -> PathBuf {
        self.db_dir().join("tls").join("ca.crt")
    }

    /// Writes the spec with `instances` and `extra` lines under `spec:`.
    pub fn write_spec(&self, instances: u32, extra: &str) {
        let text = format!(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: {}\nspec:\n  engine: {}\n  instances: {instances}\n  local:\n    portBase: {}\n{extra}",
            self.name, self.engine, self.base
        );
        std::fs::write(&self.spec, text).unwrap();
    }

    /// `stator ARGS -f SPEC --state-dir STATE`, not started yet.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(STATOR);
        command
            .args(args)
            .arg("-f")
            .arg(&self.spec)
            .arg("--state-dir")
            .arg(self.state_dir());
        command
    }

    /// Runs `stator ARGS -f SPEC --state-dir STATE`.
    pub fn stator(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run stator")
    }

    /// `stator ARGS`, which must succeed; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.stator(args);
        assert!(
            out.status.success(),
            "stator {args:?} failed ({}):\n{}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.logs_for_failure()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn up(&self) -> String {
        self.ok(&["up"])
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["status", "-o", "json"])).expect("status JSON")
    }

    /// The instances' rows in `stator status -o json`.
    pub fn instances(&self) -> Vec<serde_json::Value> {
        self.status()["instances"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    pub fn row(&self, instance: &str) -> serde_json::Value {
        self.instances()
            .into_iter()
            .find(|r| r["name"] == instance)
            .unwrap_or_else(|| panic!("{instance} not in status"))
    }

    /// The application password, from `stator uri`.
    pub fn password(&self) -> String {
        let uri = self.ok(&["uri"]);
        let after_user = uri.split_once("://").unwrap().1;
        let credentials = after_user.rsplit_once('@').unwrap().0;
        credentials.split_once(':').unwrap().1.to_string()
    }

    pub fn rw(&self) -> u16 {
        self.base
    }
    pub fn ro(&self) -> u16 {
        self.base + 1
    }
    pub fn server_port(&self, ordinal: u32) -> u16 {
        self.base + 10 + ordinal as u16
    }

    /// Runs SQL through `psql` on `port` as the application user; the password goes through
    /// the environment, never the command line. With TLS (the default), verify-full against the
    /// database's CA.
    pub fn psql(&self, port: u16, sql: &str) -> Result<String, String> {
        let mut command = Command::new("psql");
        if self.ca().exists() {
            command
                .env("PGSSLMODE", "verify-full")
                .env("PGSSLROOTCERT", self.ca());
        }
        let out = command
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1"])
            .arg("-p")
            .arg(port.to_string())
            .args(["-U", "app", "-d", "app", "-c", sql])
            .env("PGPASSWORD", self.password())
            .env("PGCONNECT_TIMEOUT", "5")
            .output()
            .map_err(|e| e.to_string())?;
        output_text(&out)
    }

    /// Runs SQL through `mysql_async` on `port` as the application user (MariaDB); every row as
    /// its columns' text, `NULL` for null. Statements separated by `;` run in turn; the rows of
    /// the last are returned.
    pub fn sql(&self, port: u16, sql: &str) -> Result<Vec<Vec<String>>, String> {
        let ca = Some(self.ca()).filter(|ca| ca.exists());
        let ssl = ca.map(|ca| mysql_async::SslOpts::default().with_root_certs(vec![ca.into()]));
        self.sql_with(port, ssl, sql)
    }

    /// [`Cluster::sql`] with the TLS options given (`None`: plaintext).
    pub fn sql_with(
        &self,
        port: u16,
        ssl: Option<mysql_async::SslOpts>,
        sql: &str,
    ) -> Result<Vec<Vec<String>>, String> {
        use mysql_async::prelude::Queryable;
        let password = self.password();
        let sql = sql.to_string();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async move {
            let opts = mysql_async::OptsBuilder::default()
                .ip_or_hostname("127.0.0.1")
                .tcp_port(port)
                .user(Some("app"))
                .pass(Some(password))
                .db_name(Some("app"))
                .ssl_opts(ssl)
                .prefer_socket(false);
            let connect = mysql_async::Conn::new(opts);
            let mut conn = tokio::time::timeout(Duration::from_secs(5), connect)
                .await
                .map_err(|_| format!("connecting to port {port} timed out"))?
                .map_err(|e| e.to_string())?;
            let mut rows = Vec::new();
            for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                let found: Vec<mysql_async::Row> =
                    tokio::time::timeout(Duration::from_secs(60), conn.query(statement))
                        .await
                        .map_err(|_| format!("{statement:?} timed out"))?
                        .map_err(|e| e.to_string())?;
                rows = found
                    .into_iter()
                    .map(|row| row.unwrap().into_iter().map(value_text).collect())
                    .collect();
            }
            let _ = conn.disconnect().await;
            Ok(rows)
        })
    }

    /// The single value `sql` returns (MariaDB, as the application user); `a|b` for two columns.
    pub fn value(&self, port: u16, sql: &str) -> Result<String, String> {
        let rows = self.sql(port, sql)?;
        Ok(rows.first().map(|r| r.join("|")).unwrap_or_default())
    }

    /// Instance N's server socket (MariaDB: root may log in only through it).
    pub fn socket(&self, ordinal: u32) -> PathBuf {
        self.db_dir()
            .join("instances")
            .join(format!("{}-{ordinal}", self.name))
            .join("run")
            .join("mariadb.sock")
    }

    /// Runs SQL as MariaDB's `root` over instance N's Unix socket (we are root; no password).
    pub fn root_sql(&self, ordinal: u32, sql: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .args(["--no-defaults", "-N", "-B", "-u", "root"])
            .arg(format!("--socket={}", self.socket(ordinal).display()))
            .args(["-e", sql])
            .output()
            .map_err(|e| e.to_string())?;
        output_text(&out)
    }

    /// Retries `check` until it returns Some or `timeout` passes.
    pub fn eventually<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let started = Instant::now();
        loop {
            if let Some(v) = check() {
                return v;
            }
            if started.elapsed() > timeout {
                panic!(
                    "{what}: not reached within {timeout:?}\n{}",
                    self.logs_for_failure()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    pub fn logs_for_failure(&self) -> String {
        let mut out = String::new();
        for file in walk(&self.db_dir()) {
            let name = file.display().to_string();
            if name.ends_with(".log") {
                let text = std::fs::read_to_string(&file).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                out.push_str(&format!(
                    "--- {name}\n{}\n",
                    lines[lines.len().saturating_sub(20)..].join("\n")
                ));
            }
        }
        out
    }

    /// The secrets as they are on disk now.
    pub fn secrets(&self) -> Vec<String> {
        std::fs::read_dir(self.db_dir().join("secrets"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Starts scanning every process's command line for this database's secrets as soon as
    /// they exist (call it before the `up` that generates them), until `stop`.
    pub fn watch_command_lines(
        &self,
        stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    ) -> std::thread::JoinHandle<(usize, Vec<String>)> {
        let token = self.db_dir().join("secrets").join("api-token");
        let secrets_dir = self.db_dir().join("secrets");
        std::thread::spawn(move || {
            let started = Instant::now();
            while !token.exists() && started.elapsed() < Duration::from_secs(60) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let secrets: Vec<String> = std::fs::read_dir(&secrets_dir)
                .map(|d| {
                    d.flatten()
                        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                        .map(|s| s.trim().to_string())
                        .filter(|s| !s.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            scan_cmdlines(secrets, stop).join().unwrap_or_default()
        })
    }

    /// Every log of the database, whole: the supervisor's, the managers' and the servers'.
    pub fn all_logs(&self) -> String {
        walk(&self.db_dir())
            .into_iter()
            .filter(|f| f.extension().is_some_and(|e| e == "log"))
            .map(|f| std::fs::read_to_string(f).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Pids of processes whose command line or working directory is inside this state dir.
    pub fn own_processes(&self) -> Vec<u32> {
        let root = self.dir.path().display().to_string();
        all_pids()
            .into_iter()
            .filter(|pid| *pid != std::process::id())
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
                String::from_utf8_lossy(&cmdline).contains(&root) || cwd.starts_with(&root)
            })
            .collect()
    }

    /// Postmasters serving `data-NAME-N`: processes working in that directory whose parent
    /// does not.
    pub fn postmasters(&self, ordinal: u32) -> Vec<u32> {
        let data_dir = self.db_dir().join(format!("data-{}-{ordinal}", self.name));
        let in_dir =
            |pid: u32| std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == data_dir);
        all_pids()
            .into_iter()
            .filter(|pid| in_dir(*pid) && !parent(*pid).is_some_and(in_dir))
            .collect()
    }

    /// `mariadbd` processes serving `data-NAME-N` (the server works in its data dir).
    pub fn mariadbds(&self, ordinal: u32) -> Vec<u32> {
        let data_dir = self.db_dir().join(format!("data-{}-{ordinal}", self.name));
        all_pids()
            .into_iter()
            .filter(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/comm"))
                    .is_ok_and(|c| c.trim() == "mariadbd")
                    && std::fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|c| c == data_dir)
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // A failing test's state dir (logs, status, events) is copied out before it is purged
        // when STATOR_TEST_KEEP names a directory: the flakes worth a look are the rare ones.
        if std::thread::panicking()
            && let Some(keep) = std::env::var_os("STATOR_TEST_KEEP")
        {
            let to = PathBuf::from(keep).join(format!("{}-{}", self.name, std::process::id()));
            let _ = std::fs::create_dir_all(&to);
            let _ = Command::new("cp")
                .arg("-a")
                .arg(self.state_dir())
                .arg(&to)
                .status();
        }
        let _ = Command::new(STATOR)
            .args(["delete", "--purge", "-f"])
            .arg(&self.spec)
            .arg("--state-dir")
            .arg(self.state_dir())
            .output();
        for pid in self.own_processes() {
            unsafe_kill(pid);
        }
    }
}

pub fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

pub fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

pub fn kill9(pid: u32) {
    let status = Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill -9 {pid}");
}

fn unsafe_kill(pid: u32) {
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
}

pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim().starts_with('Z')))
        .is_some_and(|zombie| !zombie)
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("data-"))
            {
                stack.push(p);
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out
}

fn value_text(value: mysql_async::Value) -> String {
    match value {
        mysql_async::Value::NULL => "NULL".into(),
        mysql_async::Value::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
        mysql_async::Value::Int(i) => i.to_string(),
        mysql_async::Value::UInt(u) => u.to_string(),
        mysql_async::Value::Float(f) => f.to_string(),
        mysql_async::Value::Double(d) => d.to_string(),
        other => format!("{other:?}"),
    }
}

/// Reads every process's command line until `stop`, returning how often it scanned and the
/// processes whose command line held one of `secrets`.
pub fn scan_cmdlines(
    secrets: Vec<String>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(usize, Vec<String>)> {
    std::thread::spawn(move || {
        let mut scans = 0;
        let mut found = Vec::new();
        while !stop.load(Ordering::SeqCst) {
            for pid in all_pids() {
                let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                    continue;
                };
                let text = String::from_utf8_lossy(&raw).replace('\0', " ");
                for secret in &secrets {
                    if text.contains(secret.as_str()) {
                        found.push(format!("pid {pid}: {text}"));
                    }
                }
            }
            scans += 1;
            std::thread::sleep(Duration::from_millis(20));
        }
        (scans, found)
    })
}

/// Every distinct pid seen.
pub fn pid_set(values: &[serde_json::Value], field: &str) -> BTreeSet<u64> {
    values.iter().filter_map(|v| v[field].as_u64()).collect()
}
