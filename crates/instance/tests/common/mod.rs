//! Test harness: real PostgreSQL 15 instance managers in temp dirs, on free ports, run as the
//! `postgres` user, killed (manager and postmaster process groups) when a test ends, pass or fail.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::Value;
use stator_api::instance::{Bootstrap, Endpoint, InstanceConfig};
use stator_api::names::secret_keys;

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Distance between a MariaDB test instance's server port and its manager's port.
pub const MARIADB_MANAGER_OFFSET: u16 = 20;

/// Two free ports `offset` apart: (server, manager).
pub fn free_port_pair(offset: u16) -> (u16, u16) {
    for _ in 0..200 {
        let port = free_port();
        if port > u16::MAX - offset {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port + offset)).is_ok() {
            return (port, port + offset);
        }
    }
    panic!("no two free ports {offset} apart");
}

/// A random hex string from the kernel.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("urandom");
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The path of the instance manager program (this crate's `instance_manager` binary, which
/// cargo builds for the integration tests).
pub fn manager_program() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_instance_manager"))
}

/// One database's shared secrets and a place for its instances.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub name: String,
    pub secrets_dir: PathBuf,
}

impl Cluster {
    pub fn new(name: &str) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("stator-it-")
            .tempdir()
            .expect("tempdir");
        // The postgres user must traverse into it.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let secrets_dir = dir.path().join("secrets");
        std::fs::create_dir(&secrets_dir).unwrap();
        std::fs::set_permissions(&secrets_dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        for key in secret_keys::ALL {
            let path = secrets_dir.join(key);
            std::fs::write(&path, random_hex(16)).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        Cluster {
            dir,
            name: name.to_string(),
            secrets_dir,
        }
    }

    pub fn secret(&self, key: &str) -> String {
        std::fs::read_to_string(self.secrets_dir.join(key)).unwrap()
    }

    pub fn secrets(&self) -> Vec<String> {
        secret_keys::ALL.iter().map(|k| self.secret(k)).collect()
    }

    /// The config of instance `ordinal`, with fresh ports.
    pub fn config(&self, ordinal: u32, bootstrap: Bootstrap) -> InstanceConfig {
        self.config_with(ordinal, bootstrap, "")
    }

    /// The config of instance `ordinal`, with `extra` appended to the spec (YAML, indented
    /// by two spaces).
    pub fn config_with(&self, ordinal: u32, bootstrap: Bootstrap, extra: &str) -> InstanceConfig {
        let yaml = format!(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: {}\nspec:\n  engine: postgres\n  instances: 2\n  resources:\n    requests: {{cpu: 100m, memory: 128Mi}}\n    limits: {{cpu: '1', memory: 256Mi}}\n  config:\n    parameters:\n      max_connections: 30\n      wal_keep_size: 64MB\n{extra}",
            self.name
        );
        let database = stator_api::load_database(&yaml)
            .expect("valid spec")
            .database;
        let inst = self.dir.path().join(format!("{}-{ordinal}", self.name));
        InstanceConfig {
            database,
            ordinal,
            data_dir: inst.join("data"),
            run_dir: inst.join("run"),
            secrets_dir: self.secrets_dir.clone(),
            secrets_root: None,
            log_file: inst.join("server.log"),
            listen_address: "127.0.0.1".into(),
            port: free_port(),
            http_port: free_port(),
            bootstrap,
            server_user: Some("postgres".into()),
            bin_dir: None,
            peers: Vec::new(),
            tls_dir: None,
        }
    }

    /// The config of MariaDB instance `ordinal`. Every instance of the cluster keeps the same
    /// distance between its server and manager ports, as both runtimes do, so a replica finds
    /// its upstream's manager (for `/backup`) from the upstream's server port.
    pub fn mariadb_config(
        &self,
        ordinal: u32,
        bootstrap: Bootstrap,
        extra: &str,
    ) -> InstanceConfig {
        let yaml = format!(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: {}\nspec:\n  engine: mariadb\n  instances: 2\n  resources:\n    requests: {{cpu: 100m, memory: 128Mi}}\n    limits: {{cpu: '1', memory: 256Mi}}\n  config:\n    parameters:\n      max_connections: 30\n{extra}",
            self.name
        );
        let database = stator_api::load_database(&yaml)
            .expect("valid spec")
            .database;
        let inst = self.dir.path().join(format!("{}-{ordinal}", self.name));
        let (port, http_port) = free_port_pair(MARIADB_MANAGER_OFFSET);
        InstanceConfig {
            database,
            ordinal,
            data_dir: inst.join("data"),
            run_dir: inst.join("run"),
            secrets_dir: self.secrets_dir.clone(),
            secrets_root: None,
            log_file: inst.join("server.log"),
            listen_address: "127.0.0.1".into(),
            port,
            http_port,
            bootstrap,
            server_user: Some("mysql".into()),
            bin_dir: None,
            peers: Vec::new(),
            tls_dir: None,
        }
    }

    /// Writes the config and starts a manager for it.
    pub fn start(&self, config: &InstanceConfig) -> Manager {
        Manager::start(config.clone(), self.dir.path())
    }

    /// The same, managed (`--managed`): it takes its role only from orders.
    pub fn start_managed(&self, config: &InstanceConfig) -> Manager {
        Manager::start_with(config.clone(), self.dir.path(), &["--managed"])
    }

    /// The same in lease mode (`--managed --lease`): a primary serves only under a write lease.
    pub fn start_leased(&self, config: &InstanceConfig) -> Manager {
        Manager::start_with(config.clone(), self.dir.path(), &["--managed", "--lease"])
    }
}

/// An instance manager process; killed with its server when dropped.
pub struct Manager {
    pub config: InstanceConfig,
    pub child: Option<Child>,
    pub stderr_path: PathBuf,
}

impl Manager {
    pub fn start(config: InstanceConfig, dir: &Path) -> Manager {
        Manager::start_with(config, dir, &[])
    }

    /// Starts the manager with `args` after the config file.
    pub fn start_with(config: InstanceConfig, dir: &Path, args: &[&str]) -> Manager {
        let name = config.database.instance_name(config.ordinal);
        std::fs::create_dir_all(dir.join(&name)).unwrap();
        let config_path = dir.join(format!("{name}.json"));
        std::fs::write(&config_path, serde_json::to_string_pretty(&config).unwrap()).unwrap();
        let stderr_path = dir.join(format!("{name}.manager.log"));
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&stderr_path)
            .unwrap();
        let child = Command::new(manager_program())
            .arg(&config_path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .expect("start the instance manager");
        Manager {
            config,
            child: Some(child),
            stderr_path,
        }
    }

    pub fn name(&self) -> String {
        self.config.database.instance_name(self.config.ordinal)
    }

    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            instance: self.name(),
            host: "127.0.0.1".into(),
            port: self.config.port,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Logs of the manager and the server, for failure messages.
    pub fn logs(&self) -> String {
        let tail = |p: &Path| {
            let t = std::fs::read_to_string(p).unwrap_or_default();
            let lines: Vec<&str> = t.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        format!(
            "--- manager {} ---\n{}\n--- server ---\n{}",
            self.name(),
            tail(&self.stderr_path),
            tail(&self.config.log_file)
        )
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http(self.config.http_port, "GET", path, None, "")
    }

    pub fn status(&self) -> Value {
        let (code, body) = self.get("/status");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    pub fn post(&self, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        http(self.config.http_port, "POST", path, token, body)
    }

    /// `GET /status?fresh=1`: the report after the manager queried its server now.
    pub fn fresh_status(&self) -> Value {
        let (code, body) = self.get("/status?fresh=1");
        assert_eq!(code, 200, "{body}");
        serde_json::from_str(&body).expect("status JSON")
    }

    /// The JSON of this instance's server endpoint, as orders name an upstream.
    pub fn endpoint_json(&self) -> String {
        serde_json::to_string(&self.endpoint()).unwrap()
    }

    /// Waits until `/status` satisfies `check`.
    pub fn wait_status(&self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (code, body) = self.get("/status");
            if code == 200
                && let Ok(v) = serde_json::from_str::<Value>(&body)
                && check(&v)
            {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}; last status {code} {body}\n{}",
                self.name(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Waits until `/readyz` answers 200.
    pub fn wait_ready(&self) -> Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let (code, body) = self.get("/readyz");
            if code == 200 {
                return self.status();
            }
            assert!(
                Instant::now() < deadline,
                "{}: not ready in time: {code} {body}\n{}",
                self.name(),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The pid in postmaster.pid (PostgreSQL) or mariadb.pid (MariaDB).
    pub fn postmaster_pid(&self) -> Option<u32> {
        let file = if self.config.database.spec.engine.is_mysql_family() {
            "mariadb.pid"
        } else {
            "postmaster.pid"
        };
        std::fs::read_to_string(self.config.data_dir.join(file))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Kills the manager with SIGKILL (its server survives) and reaps it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        child.wait().ok().and_then(|s| s.code())
    }

    /// Waits for the manager to exit on its own.
    pub fn wait_exit(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return s.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit\n{}", self.name(), self.logs());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.kill9();
        // Then the server, with its whole process group (backends, walsender…).
        if let Some(pid) = self.postmaster_pid()
            && stator_engine::process::process_serves_data_dir(pid, &self.config.data_dir)
        {
            let _ = killpg(Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }
}

/// A minimal HTTP/1.1 request; (status, body). Status 0 when nothing answers.
pub fn http(port: u16, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(150)));
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(req.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Runs SQL over TCP as `user`; returns the first column of every row as text.
pub fn sql(
    port: u16,
    user: &str,
    password: &str,
    db: &str,
    query: &str,
) -> Result<Vec<String>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host("127.0.0.1")
            .port(port)
            .user(user)
            .password(password)
            .dbname(db)
            .connect_timeout(Duration::from_secs(5));
        let (client, conn) = cfg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        let msgs = client.simple_query(query).await.map_err(|e| {
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or(e.to_string())
        })?;
        Ok(msgs
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect())
    })
}

/// Runs SQL on a MariaDB server over TCP as `user`; the first column of every row as text.
pub fn maria_sql(
    port: u16,
    user: &str,
    password: &str,
    query: &str,
) -> Result<Vec<String>, String> {
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname("127.0.0.1")
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(password))
        .prefer_socket(false);
    maria_run(opts.into(), query)
}

/// Runs SQL on a MariaDB server over its Unix socket as root (the test runs as root, which the
/// server authenticates by the socket's peer credentials).
pub fn maria_root(socket: &Path, query: &str) -> Result<Vec<String>, String> {
    let opts = mysql_async::OptsBuilder::default()
        .socket(Some(socket.to_string_lossy().into_owned()))
        .user(Some("root"));
    maria_run(opts.into(), query)
}

fn maria_run(opts: mysql_async::Opts, query: &str) -> Result<Vec<String>, String> {
    use mysql_async::prelude::Queryable;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // A statement that blocks (a lock, a semi-sync wait) fails the test instead of hanging it.
    let work = async {
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .map_err(|e| e.to_string())?;
        let rows: Vec<mysql_async::Row> = conn.query(query).await.map_err(|e| e.to_string())?;
        let _ = conn.disconnect().await;
        Ok::<_, String>(rows)
    };
    let rows = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), work).await })
        .map_err(|_| format!("{query}: no answer within 30s"))??;
    Ok(rows
        .into_iter()
        .map(|r| {
            r.get_opt::<Option<String>, usize>(0)
                .and_then(|v| v.ok())
                .flatten()
                .unwrap_or_default()
        })
        .collect())
}

/// Postmasters (the `postgres -D DIR` process, not its children) running on `data_dir`.
pub fn postmasters_on(data_dir: &Path) -> Vec<u32> {
    let wanted = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let is_postmaster = args.first().is_some_and(|a| a.ends_with("/postgres"))
            && args.iter().any(|a| a == "-D");
        if is_postmaster
            && std::fs::read_link(format!("/proc/{pid}/cwd")).ok() == Some(wanted.clone())
        {
            found.push(pid);
        }
    }
    found
}

/// Scans every process's command line for any of `secrets` until stopped; the hits.
pub struct CmdlineWatch {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl CmdlineWatch {
    pub fn start(secrets: Vec<String>) -> CmdlineWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut hits = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                        continue;
                    };
                    let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
                    for s in &secrets {
                        if text.contains(s.as_str()) {
                            hits.push(format!("{}: {text}", entry.path().display()));
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            hits
        });
        CmdlineWatch {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops scanning; the command lines that held a secret.
    pub fn finish(mut self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default()
    }
}

impl Drop for CmdlineWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
