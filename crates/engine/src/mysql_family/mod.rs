//! The MySQL family (MariaDB 10.11+, MySQL 8) behind [`ServerEngine`]: one engine,
//! [`MysqlFamily`], whose flavor-specific words come from a [`Dialect`]
//! ([`crate::mariadb::DIALECT`], [`crate::mysql::DIALECT`]).
//!
//! The server runs as the server user (`mysql`) with `--defaults-file=RUN_DIR/my.cnf`; its pid
//! file is `DATA_DIR/<flavor>.pid` and its socket `RUN_DIR/<flavor>.sock`. The instance manager
//! talks to it over that socket as the OS user it runs as (root), which the server authenticates
//! by the socket's peer credentials (`unix_socket` / `auth_socket`): no administrator password
//! exists at all, and root cannot log in over TCP. Passwords of the other users reach the server
//! only inside statements on that socket — as a hash where the flavor allows it — never on a
//! command line or in a log.
//!
//! A replica's data directory marker names the upstream it follows; every observation makes sure
//! replication points there (`CHANGE MASTER … MASTER_USE_GTID=slave_pos` / `CHANGE REPLICATION
//! SOURCE … SOURCE_AUTO_POSITION=1`), starting from the GTID position a clone or a rejoin left
//! in `DATA_DIR/stator-start-position`.
//!
//! # Layout
//! - [`dialect`]: what differs between MariaDB and MySQL.
//! - [`config`]: the option files, as text; SQL quoting.
//! - [`binaries`]: finding the programs.
//! - [`gtid`]: errant-transaction detection.
//! - [`backup`]: a physical copy streamed from the upstream's instance manager (MariaDB).
//! - [`repository`]: full backups in a repository (directory or S3): stored through zstd and SHA-256,
//!   manifest last; list, verify, restore and the binlog replay after it (MariaDB).
//! - [`binlog`]: the transactions of a binary log file (GTID, second), read from its bytes.
//! - [`binlog_archive`]: the binary log archive (terms, keys written once, the index), the
//!   primary's queries for it, the recoverable range and a restore's plan.
//! - [`binlog_path`]: the pure GTID path selection across failovers.

pub mod backup;
pub mod binaries;
pub mod binlog;
pub mod binlog_archive;
pub mod binlog_path;
pub mod config;
pub mod dialect;
pub mod gtid;
pub mod repository;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, OptsBuilder, Row};
use nix::sys::signal::Signal;
use stator_api::instance::{Endpoint, InstanceConfig};
use stator_api::names::secret_keys;
use stator_api::parameters::effective_parameters;
use stator_api::position::MariadbGtidPosition;
use stator_api::{DatabaseSpec, Engine, Role};
use tokio::sync::Mutex;

use crate::credentials::{Credentials, Secret, read_secret};
use crate::data_dir::{
    DataDirMarker, DataDirState, discard_staging, install_staging, is_empty_dir, marker_mismatch,
    read_marker, staging_dir, write_marker,
};
use crate::error::EngineError;
use crate::process::{Invocation, ServerProcess, process_serves_data_dir};
use crate::server_engine::{Observation, ServerEngine};
use crate::server_user::ServerUser;
use crate::tls::{ServerTls, ServerTlsPaths};

use self::binaries::{Binaries, major_of};
use self::config::{
    MONITOR_USER, REPLICATION_USER, SERVER_ID_BASE, ServerSettings, quote_ident, quote_literal,
    render_server_options,
};
pub use self::dialect::Dialect;

/// The server's option file, in the run directory.
pub const OPTION_FILE: &str = "my.cnf";
/// Where a clone or a rejoin leaves the GTID position replication starts from.
pub const START_POSITION_FILE: &str = "stator-start-position";
/// A replica lagging more than this many seconds is not ready.
pub const MAX_READY_LAG_SECONDS: f64 = 30.0;
/// Longest Unix socket path the kernel accepts, less the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a replica's report waits for its upstream's positions (see `with_upstream`): well
/// within the managed manager's fresh-status bound (1 s), so a frozen upstream leaves time for
/// the replica's own facts.
const UPSTREAM_TIMEOUT: Duration = Duration::from_millis(400);
/// How long one use of the binlog archiver's session may take.
const ARCHIVE_STATEMENT_TIMEOUT: Duration = Duration::from_secs(8);

/// One MariaDB or MySQL instance.
pub struct MysqlFamily {
    dialect: &'static Dialect,
    spec: DatabaseSpec,
    database: String,
    instance: String,
    ordinal: u32,
    major: String,
    data_dir: PathBuf,
    run_dir: PathBuf,
    secrets_dir: PathBuf,
    log_file: PathBuf,
    listen_address: String,
    port: u16,
    http_port: u16,
    user: ServerUser,
    /// The account the manager uses over the socket: its own OS user's name.
    admin: String,
    binaries: Binaries,
    session: Mutex<Option<Conn>>,
    /// The binlog archiver's own session ([`MysqlFamily::with_archive_session`]): never the
    /// observation's, so neither waits on the other's statements.
    archive_session: Mutex<Option<Conn>>,
    upstream_session: Mutex<Option<(Endpoint, Conn)>>,
    /// The effective parameters the option file is written with (changed by a reload).
    parameters: std::sync::Mutex<BTreeMap<String, String>>,
    /// The certificates the server serves; `None`: TLS is off.
    tls: Option<ServerTls>,
    /// The bucket of an S3 backup repository (`spec.backup.repository.s3`), whose Secrets
    /// are read from the instance's Secrets root; `None`: a local one, or none.
    s3: Option<crate::postgres::backrest::S3Settings>,
}

impl std::fmt::Debug for MysqlFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MysqlFamily")
            .field("engine", &self.dialect.engine)
            .field("instance", &self.instance)
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// What `SHOW SLAVE STATUS` / `SHOW REPLICA STATUS` said.
#[derive(Clone, Debug, Default, PartialEq)]
struct ReplicaStatus {
    host: String,
    port: u16,
    io_running: String,
    sql_running: String,
    seconds_behind: Option<f64>,
    retrieved: String,
    error: Option<String>,
}

/// A parameter value as `SET GLOBAL` takes it: option files accept `64M` and `on`, `SET` wants
/// a number, `ON`/`OFF` or a quoted string.
fn global_value(value: &str) -> String {
    let v = value.trim();
    let suffix = v.chars().last().map(|c| c.to_ascii_uppercase());
    let shift = match suffix {
        Some('K') => Some(10),
        Some('M') => Some(20),
        Some('G') => Some(30),
        Some('T') => Some(40),
        _ => None,
    };
    if let Some(shift) = shift
        && let Ok(n) = v[..v.len() - 1].parse::<u64>()
    {
        return n.saturating_mul(1 << shift).to_string();
    }
    if v.parse::<f64>().is_ok() {
        return v.to_string();
    }
    match v.to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" => "ON".into(),
        "off" | "false" | "no" => "OFF".into(),
        _ => format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''")),
    }
}

/// The text of a column (the text protocol sends every value as text), empty when NULL.
fn column(row: &Row, name: &str) -> String {
    row.get_opt::<Option<String>, &str>(name)
        .and_then(|r| r.ok())
        .flatten()
        .unwrap_or_default()
}

/// A session opened with `opts`, within [`CONNECT_TIMEOUT`].
pub(crate) async fn connect(opts: OptsBuilder) -> Result<Conn, EngineError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, Conn::new(opts)).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(EngineError::Connect(e.to_string())),
        Err(_) => Err(EngineError::Connect(format!(
            "the server did not answer within {}s",
            CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// The first row of `sql`, `N` columns as text (empty when NULL); `what` names the query in
/// errors.
async fn texts<const N: usize>(
    c: &mut Conn,
    what: &'static str,
    sql: &str,
) -> Result<[String; N], EngineError> {
    let row: Option<Row> = c
        .query_first(sql)
        .await
        .map_err(|e| EngineError::mysql(what, e))?;
    let row = row.ok_or_else(|| EngineError::State(format!("{what}: no row")))?;
    Ok(std::array::from_fn(|i| {
        row.get_opt::<Option<String>, usize>(i)
            .and_then(|v| v.ok())
            .flatten()
            .unwrap_or_default()
    }))
}

/// A boolean system variable as the text protocol sends it.
fn is_on(value: &str) -> bool {
    value == "1" || value.eq_ignore_ascii_case("on")
}

fn is_running(thread: &str) -> bool {
    thread.eq_ignore_ascii_case("yes")
}

impl MysqlFamily {
    /// Checks the configuration, the server user and the binaries; touches nothing.
    pub fn new(config: &InstanceConfig) -> Result<MysqlFamily, EngineError> {
        let db = &config.database;
        let dialect = match db.spec.engine {
            Engine::Mariadb => &crate::mariadb::DIALECT,
            Engine::Mysql => &crate::mysql::DIALECT,
            Engine::Postgres => {
                return Err(EngineError::Config {
                    field: "database.spec.engine".into(),
                    message: "is postgres, this engine runs the MySQL family".into(),
                });
            }
        };
        let major = db.version().to_string();
        let user = ServerUser::resolve(config.server_user.as_deref())?;
        let binaries = Binaries::find(config.bin_dir.as_deref(), dialect)?;
        let found = major_of(&binaries.server_version()?);
        if found != major {
            return Err(EngineError::Config {
                field: "database.spec.version".into(),
                message: format!(
                    "is {major}, but {} is {} {found}; install {} {major} or set binDir",
                    binaries.server.display(),
                    dialect.engine,
                    dialect.engine
                ),
            });
        }
        let socket = config.run_dir.join(dialect.socket_file);
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(EngineError::Config {
                field: "runDir".into(),
                message: format!(
                    "{} is too long for a Unix socket path ({MAX_SOCKET_PATH} bytes at most); use a shorter run directory",
                    socket.display()
                ),
            });
        }
        user.check_reachable(&config.data_dir)?;
        user.check_reachable(&config.run_dir)?;
        let admin = nix::unistd::User::from_uid(nix::unistd::Uid::effective())
            .ok()
            .flatten()
            .map(|u| u.name)
            .ok_or_else(|| EngineError::ServerUser {
                user: nix::unistd::Uid::effective().to_string(),
                message: "the instance manager's own user has no name; the server authenticates it over the socket by name".into(),
            })?;
        Ok(MysqlFamily {
            dialect,
            spec: db.spec.clone(),
            database: db.name().to_string(),
            instance: db.instance_name(config.ordinal),
            ordinal: config.ordinal,
            major,
            data_dir: config.data_dir.clone(),
            run_dir: config.run_dir.clone(),
            secrets_dir: config.secrets_dir.clone(),
            log_file: config.log_file.clone(),
            listen_address: config.listen_address.clone(),
            port: config.port,
            http_port: config.http_port,
            user,
            admin,
            binaries,
            session: Mutex::new(None),
            archive_session: Mutex::new(None),
            upstream_session: Mutex::new(None),
            parameters: std::sync::Mutex::new(effective_parameters(&db.spec)),
            tls: ServerTls::for_config(config),
            s3: crate::postgres::backrest::S3Settings::of(db, config.secrets_root.as_deref())?,
        })
    }

    /// The store of the backup repository at `path` (this database's, or a restore source's
    /// in the same `spec.backup.repository`): a directory, or a path in the S3 bucket.
    pub fn repository_store(&self, path: &Path) -> Result<crate::object_store::Store, EngineError> {
        crate::object_store::Store::open(path, self.s3.as_ref()).map_err(|message| {
            EngineError::Config {
                field: "spec.backup.repository".into(),
                message,
            }
        })
    }

    fn tls_paths(&self) -> Option<ServerTlsPaths> {
        self.tls.as_ref().map(ServerTls::paths)
    }

    /// Installs renewed certificates and has the server read them (`FLUSH SSL`, `ALTER
    /// INSTANCE RELOAD TLS`): new connections get the new certificate, nothing restarts.
    async fn refresh_tls(&self) -> Result<(), EngineError> {
        let Some(tls) = self.tls.as_ref().filter(|t| t.changed()) else {
            return Ok(());
        };
        tls.install(&self.user)?;
        let statement = self.dialect.reload_tls;
        self.with_session(async |c: &mut Conn| {
            Self::exec(c, "reloading the certificates", statement).await
        })
        .await?;
        tracing::info!(instance = %self.instance, "renewed certificates installed and reloaded");
        Ok(())
    }

    pub fn dialect(&self) -> &'static Dialect {
        self.dialect
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn user(&self) -> &ServerUser {
        &self.user
    }

    /// The server's Unix socket.
    pub fn socket(&self) -> PathBuf {
        self.run_dir.join(self.dialect.socket_file)
    }

    /// The server's pid file.
    pub fn pid_file(&self) -> PathBuf {
        self.data_dir.join(self.dialect.pid_file)
    }

    fn option_file(&self) -> PathBuf {
        self.run_dir.join(OPTION_FILE)
    }

    fn start_position_file(&self) -> PathBuf {
        self.data_dir.join(START_POSITION_FILE)
    }

    /// `server_id` of this instance: stable, unique within the database.
    pub fn server_id(&self) -> u32 {
        SERVER_ID_BASE + self.ordinal
    }

    fn invocation(&self, program: PathBuf, args: Vec<OsString>) -> Invocation {
        Invocation {
            program,
            args,
            env: Vec::new(),
            user: self.user.clone(),
            log_file: self.log_file.clone(),
            cwd: Some(self.run_dir.clone()),
        }
    }

    fn marker(&self, follows: Option<Endpoint>) -> DataDirMarker {
        DataDirMarker {
            engine: self.dialect.engine.as_str().into(),
            major_version: self.major.clone(),
            database: self.database.clone(),
            follows,
        }
    }

    fn prepare_dirs(&self) -> Result<(), EngineError> {
        self.user.create_private_dir(&self.run_dir)?;
        if let Some(parent) = self.log_file.parent() {
            std::fs::create_dir_all(parent).map_err(|e| EngineError::io(parent, "create", e))?;
        }
        self.user.create_log_file(&self.log_file)
    }

    fn follows(&self) -> Option<Endpoint> {
        read_marker(&self.data_dir)
            .ok()
            .flatten()
            .and_then(|m| m.follows)
    }

    /// The instance manager of `upstream`: its server port shifted by this instance's own
    /// distance between server and manager ports (locally base+10+N → base+30+N; in a pod
    /// 3306 → 8008 on the same host).
    pub fn upstream_manager_port(&self, upstream: &Endpoint) -> Result<u16, EngineError> {
        let port = i32::from(upstream.port) + i32::from(self.http_port) - i32::from(self.port);
        u16::try_from(port).map_err(|_| EngineError::Config {
            field: "bootstrap.upstream.port".into(),
            message: format!(
                "{} gives no valid instance-manager port ({port}) at this instance's offset",
                upstream.port
            ),
        })
    }

    fn api_token(&self) -> Result<Secret, EngineError> {
        read_secret(&self.secrets_dir, secret_keys::API_TOKEN)
    }

    fn render_options(&self, read_only: bool) -> Result<String, EngineError> {
        let parameters = self
            .parameters
            .lock()
            .map(|p| p.clone())
            .unwrap_or_else(|_| effective_parameters(&self.spec));
        let settings = ServerSettings {
            parameters,
            data_dir: self.data_dir.to_string_lossy().into_owned(),
            socket: self.socket().to_string_lossy().into_owned(),
            pid_file: self.pid_file().to_string_lossy().into_owned(),
            tmp_dir: self.run_dir.to_string_lossy().into_owned(),
            log_error: self.log_file.to_string_lossy().into_owned(),
            port: self.port,
            bind_address: self.listen_address.clone(),
            server_id: self.server_id(),
            read_only,
            synchronous: self.spec.replication.synchronous,
            tls: self.tls_paths(),
        };
        render_server_options(self.dialect, &settings)
    }

    /// Connects over the socket as the manager's own OS user.
    async fn connect_admin(&self) -> Result<Conn, EngineError> {
        connect(self.admin_opts()).await
    }

    /// How the administrator reaches this server: over its socket, by the OS user.
    pub(crate) fn admin_opts(&self) -> OptsBuilder {
        OptsBuilder::default()
            .socket(Some(self.socket().to_string_lossy().into_owned()))
            .user(Some(self.admin.clone()))
            .prefer_socket(true)
            .stmt_cache_size(0)
    }

    /// The cached administrator session, (re)connected when needed; dropped after an error.
    async fn with_session<T>(
        &self,
        work: impl AsyncFnOnce(&mut Conn) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let mut guard = self.session.lock().await;
        if guard.is_none() {
            *guard = Some(self.connect_admin().await?);
        }
        let conn = guard
            .as_mut()
            .ok_or_else(|| EngineError::Connect("no session".into()))?;
        let result = work(conn).await;
        if result.is_err() {
            *guard = None;
        }
        result
    }

    /// The binlog archiver's session: its own connection, (re)connected when needed, each
    /// use bounded by [`ARCHIVE_STATEMENT_TIMEOUT`] and dropped after an error or a timeout
    /// (a connection abandoned mid-statement is never reused).
    pub(crate) async fn with_archive_session<T>(
        &self,
        work: impl AsyncFnOnce(&mut Conn) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let mut guard = self.archive_session.lock().await;
        if guard.is_none() {
            *guard = Some(self.connect_admin().await?);
        }
        let conn = guard
            .as_mut()
            .ok_or_else(|| EngineError::Connect("no session".into()))?;
        let result = match tokio::time::timeout(ARCHIVE_STATEMENT_TIMEOUT, work(conn)).await {
            Ok(r) => r,
            Err(_) => Err(EngineError::Connect(format!(
                "the server did not answer the archiver within {} s",
                ARCHIVE_STATEMENT_TIMEOUT.as_secs()
            ))),
        };
        if result.is_err() {
            *guard = None;
        }
        result
    }

    async fn drop_sessions(&self) {
        *self.archive_session.lock().await = None;
        *self.session.lock().await = None;
        *self.upstream_session.lock().await = None;
    }

    pub(crate) async fn exec(
        conn: &mut Conn,
        what: &'static str,
        query: &str,
    ) -> Result<(), EngineError> {
        conn.query_drop(query)
            .await
            .map_err(|e| EngineError::mysql(what, e))
    }

    async fn replica_status(&self, conn: &mut Conn) -> Result<Option<ReplicaStatus>, EngineError> {
        let row: Option<Row> = conn
            .query_first(self.dialect.replica_status)
            .await
            .map_err(|e| EngineError::mysql("reading the replica status", e))?;
        let c = &self.dialect.columns;
        Ok(row.map(|row| {
            let errors: Vec<String> = ["Last_IO_Error", "Last_SQL_Error"]
                .iter()
                .map(|n| column(&row, n))
                .filter(|e| !e.is_empty())
                .collect();
            ReplicaStatus {
                host: column(&row, c.source_host),
                port: column(&row, c.source_port).parse().unwrap_or(0),
                io_running: column(&row, c.io_running),
                sql_running: column(&row, c.sql_running),
                seconds_behind: column(&row, c.seconds_behind).parse().ok(),
                retrieved: column(&row, c.retrieved),
                error: (!errors.is_empty()).then(|| errors.join("; ")),
            }
        }))
    }

    /// Makes replication follow `upstream`: re-points it (from the start position a clone or
    /// rejoin left) when it follows nothing or another server, and starts it when stopped.
    async fn ensure_replication(
        &self,
        conn: &mut Conn,
        upstream: &Endpoint,
        creds: &Credentials,
    ) -> Result<(), EngineError> {
        let d = self.dialect;
        let status = self.replica_status(conn).await?;
        let points_there = status
            .as_ref()
            .is_some_and(|s| s.host == upstream.host && s.port == upstream.port);
        if points_there {
            let s = status
                .as_ref()
                .map(|s| (s.io_running.clone(), s.sql_running.clone()));
            if let Some((io, sql)) = s
                && io.eq_ignore_ascii_case("no")
                && sql.eq_ignore_ascii_case("no")
            {
                tracing::info!(upstream = %upstream.instance, "starting replication");
                Self::exec(conn, "starting replication", d.start_replica).await?;
            }
            return Ok(());
        }
        tracing::info!(upstream = %upstream.instance, host = %upstream.host, port = upstream.port, "pointing replication at the upstream");
        if status.is_some() {
            Self::exec(conn, "stopping replication", d.stop_replica).await?;
        }
        let start_file = self.start_position_file();
        let start = match std::fs::read_to_string(&start_file) {
            Ok(t) => Some(t.trim().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(EngineError::io(start_file, "read", e)),
        };
        if let Some(position) = &start
            && d.engine == Engine::Mariadb
        {
            // Validate before it goes into a statement.
            let parsed: MariadbGtidPosition = position.parse()?;
            Self::exec(
                conn,
                "setting gtid_slave_pos",
                &format!(
                    "SET GLOBAL gtid_slave_pos = {}",
                    quote_literal(&parsed.to_string())
                ),
            )
            .await?;
        }
        // The statement holds the replication password: it is never logged.
        let tls = self.tls_paths();
        for statement in
            (d.change_source)(upstream, REPLICATION_USER, &creds.replication, tls.as_ref())?
        {
            Self::exec(conn, "pointing replication at the upstream", &statement)
                .await
                .map_err(|e| e.without(creds.replication.expose()))?;
        }
        Self::exec(conn, "starting replication", d.start_replica).await?;
        if start.is_some() {
            let _ = std::fs::remove_file(&start_file);
        }
        Ok(())
    }

    /// A session with the upstream as the monitoring user, over TCP; the whole exchange (the
    /// session's lock, connecting, the work) within [`UPSTREAM_TIMEOUT`]. What it serves is
    /// extra (errant transactions, the lag in transactions): a frozen or cut-off upstream
    /// must not hold up this instance's own report, which the failover that replaces that
    /// upstream needs (the node-freeze drill found a replica's `/status?fresh=1` timing out on
    /// a 3 s connect to its frozen primary, so no replica could be promoted). A session that
    /// failed or ran out of time is dropped.
    async fn with_upstream<T>(
        &self,
        upstream: &Endpoint,
        creds: &Credentials,
        work: impl AsyncFnOnce(&mut Conn) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let late = || {
            EngineError::Connect(format!(
                "{} did not answer within {} ms",
                upstream.instance,
                UPSTREAM_TIMEOUT.as_millis()
            ))
        };
        let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
        let mut guard = tokio::time::timeout_at(deadline, self.upstream_session.lock())
            .await
            .map_err(|_| late())?;
        if guard.as_ref().is_some_and(|(e, _)| e != upstream) {
            *guard = None;
        }
        let exchange = async {
            if guard.is_none() {
                let opts = OptsBuilder::default()
                    .ip_or_hostname(upstream.host.clone())
                    .tcp_port(upstream.port)
                    .user(Some(MONITOR_USER))
                    .pass(Some(creds.monitor.expose().to_string()))
                    .prefer_socket(false)
                    .ssl_opts(self.tls.as_ref().map(|t| t.files().mysql_ssl_opts()))
                    .stmt_cache_size(0);
                let conn = Conn::new(opts)
                    .await
                    .map_err(|e| EngineError::Connect(e.to_string()))?;
                *guard = Some((upstream.clone(), conn));
            }
            let Some((_, conn)) = guard.as_mut() else {
                return Err(EngineError::Connect("no upstream session".into()));
            };
            work(conn).await
        };
        let result = tokio::time::timeout_at(deadline, exchange)
            .await
            .unwrap_or_else(|_| Err(late()));
        if result.is_err() {
            *guard = None;
        }
        result
    }

    /// The upstream's logged transactions, slave position and write position.
    async fn upstream_positions(
        &self,
        upstream: &Endpoint,
        creds: &Credentials,
    ) -> Result<(String, String, String), EngineError> {
        let d = self.dialect;
        let slave_pos = if d.engine == Engine::Mariadb {
            "@@GLOBAL.gtid_slave_pos"
        } else {
            "''"
        };
        let query = format!(
            "SELECT {}, {slave_pos}, {}",
            d.logged_position, d.executed_position
        );
        self.with_upstream(upstream, creds, async |c: &mut Conn| {
            let [logged, slave_pos, executed] =
                texts(c, "reading the upstream's GTIDs", &query).await?;
            Ok((logged, slave_pos, executed))
        })
        .await
    }

    /// This server's executed and logged GTID sets (MariaDB: `gtid_current_pos`,
    /// `gtid_binlog_pos`).
    async fn local_gtids(&self, c: &mut Conn) -> Result<[String; 2], EngineError> {
        let d = self.dialect;
        texts(
            c,
            "reading the local GTIDs",
            &format!("SELECT {}, {}", d.executed_position, d.logged_position),
        )
        .await
    }

    /// The errant transactions of this instance against its upstream's positions, in words.
    fn errant(
        &self,
        local_logged: &str,
        upstream_logged: &str,
        upstream_slave_pos: &str,
        upstream_name: &str,
    ) -> Result<Option<String>, EngineError> {
        let found = match self.dialect.engine {
            Engine::Mariadb => {
                let e = gtid::mariadb_errant(local_logged, upstream_logged, upstream_slave_pos)?;
                (!e.is_empty()).then(|| gtid::join_gtids(&e))
            }
            _ => {
                let e = gtid::mysql_errant(local_logged, upstream_logged)?;
                (!e.is_empty()).then(|| e.to_string())
            }
        };
        Ok(found.map(|g| gtid::describe_errant(&g, upstream_name)))
    }

    /// Transactions `upstream_executed` holds beyond `local_executed`.
    fn transactions_behind(&self, upstream_executed: &str, local_executed: &str) -> Option<u64> {
        stator_api::position::ReplicationPosition::parse(
            self.dialect.engine,
            upstream_executed,
            None,
        )
        .ok()
        .zip(
            stator_api::position::ReplicationPosition::parse(
                self.dialect.engine,
                local_executed,
                None,
            )
            .ok(),
        )
        .and_then(|(up, local)| up.ahead_of(&local))
    }

    /// Starts the server on the socket alone (no TCP), for a check while the instance is
    /// supposed to be stopped; stops it again after `work`.
    async fn with_private_server<T>(
        &self,
        work: impl AsyncFnOnce(&mut Conn) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let args: Vec<OsString> = vec![
            Self::defaults_arg(&self.option_file()),
            "--skip-networking".into(),
        ];
        self.with_socket_server(args, &self.data_dir, work).await
    }

    /// Starts the server with `args` (which must keep it off TCP) on data dir `dir`, runs
    /// `work` as the administrator over the socket, and stops it again.
    pub(crate) async fn with_socket_server<T>(
        &self,
        args: Vec<OsString>,
        dir: &Path,
        work: impl AsyncFnOnce(&mut Conn) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let mut server = self
            .invocation(self.binaries.server.clone(), args)
            .spawn_server(dir)?;
        let mut conn = None;
        let mut last = String::new();
        for _ in 0..600 {
            if !server.is_alive() {
                break;
            }
            match self.connect_admin().await {
                Ok(c) => {
                    conn = Some(c);
                    break;
                }
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let result = match conn {
            Some(mut c) => {
                let r = work(&mut c).await;
                let _ = c.disconnect().await;
                r
            }
            None => Err(EngineError::State(format!(
                "the server did not start on its socket (see {}): {last}",
                self.log_file.display()
            ))),
        };
        server
            .stop(Signal::SIGTERM, Signal::SIGKILL, Duration::from_secs(60))
            .await;
        result
    }

    fn defaults_arg(path: &Path) -> OsString {
        let mut arg = OsString::from("--defaults-file=");
        arg.push(path);
        arg
    }
}

impl ServerEngine for MysqlFamily {
    fn kind(&self) -> Engine {
        self.dialect.engine
    }

    fn inspect_data_dir(&self) -> Result<DataDirState, EngineError> {
        if is_empty_dir(&self.data_dir)? {
            return Ok(DataDirState::Empty);
        }
        let foreign = |message: String| EngineError::ForeignDataDir {
            path: self.data_dir.clone(),
            message,
        };
        let looks_like_server = self.data_dir.join("mysql").is_dir();
        match read_marker(&self.data_dir)? {
            None if looks_like_server => Err(foreign(format!(
                "is a {} data directory that Stator did not create (no {} marker); it may belong to another server",
                self.dialect.engine,
                crate::data_dir::MARKER_FILE
            ))),
            None => Err(foreign(format!(
                "is not empty and is not a {} data directory; give the instance an empty or absent directory",
                self.dialect.engine
            ))),
            Some(m) => {
                if let Some(why) = marker_mismatch(
                    &m,
                    self.dialect.engine.as_str(),
                    &self.major,
                    &self.database,
                ) {
                    return Err(foreign(why));
                }
                if !looks_like_server {
                    return Err(foreign(
                        "has a Stator marker but no mysql system schema; the directory is incomplete"
                            .into(),
                    ));
                }
                Ok(DataDirState::Ready(m))
            }
        }
    }

    async fn initialize(&self, _creds: &Credentials) -> Result<(), EngineError> {
        self.prepare_dirs()?;
        let staging = staging_dir(&self.data_dir, &self.user)?;
        let mut datadir = OsString::from("--datadir=");
        datadir.push(&staging);
        let mut tmpdir = OsString::from("--tmpdir=");
        tmpdir.push(&self.run_dir);
        let inv = match self.dialect.engine {
            Engine::Mariadb => self.invocation(
                self.binaries.tool("mariadb-install-db")?,
                vec![
                    "--no-defaults".into(),
                    format!("--user={}", self.user.name).into(),
                    datadir,
                    "--auth-root-authentication-method=socket".into(),
                    "--skip-test-db".into(),
                    // Passed on to the bootstrap server: temporary tables in the instance's
                    // own directory, not a /tmp shared with every other server.
                    tmpdir,
                ],
            ),
            _ => self.invocation(
                self.binaries.server.clone(),
                vec![
                    "--no-defaults".into(),
                    "--initialize-insecure".into(),
                    format!("--user={}", self.user.name).into(),
                    datadir,
                ],
            ),
        };
        let result = inv
            .run()
            .await
            .and_then(|()| write_marker(&staging, &self.marker(None), &self.user))
            .and_then(|()| install_staging(&staging, &self.data_dir, &self.user));
        if result.is_err() {
            discard_staging(&staging, &self.data_dir);
        }
        result
    }

    async fn clone_upstream(
        &self,
        upstream: &Endpoint,
        creds: &Credentials,
    ) -> Result<(), EngineError> {
        self.prepare_dirs()?;
        let staging = staging_dir(&self.data_dir, &self.user)?;
        let result = match self.dialect.engine {
            Engine::Mariadb => self.receive_backup(upstream, &staging).await,
            _ => self.clone_with_plugin(upstream, creds, &staging).await,
        }
        .and_then(|()| write_marker(&staging, &self.marker(Some(upstream.clone())), &self.user))
        .and_then(|()| install_staging(&staging, &self.data_dir, &self.user));
        if result.is_err() {
            discard_staging(&staging, &self.data_dir);
        }
        result
    }

    async fn restore_from(
        &self,
        source: &stator_api::instance::RestoreSource,
        _creds: &Credentials,
    ) -> Result<(), EngineError> {
        if self.dialect.engine != Engine::Mariadb {
            return Err(EngineError::Config {
                field: "spec.bootstrap.restoreFrom".into(),
                message: format!("{} cannot restore from a backup yet", self.dialect.engine),
            });
        }
        let store = self.repository_store(&source.repository)?;
        let plan = crate::mysql_family::binlog_archive::plan_for(&store, source)
            .await
            .map_err(|message| EngineError::Config {
                field: "spec.bootstrap.restoreFrom".into(),
                message,
            })?;
        self.restore_full_backup(&store, &plan.backup.id, &plan.runs)
            .await
    }

    fn write_config(&self, _creds: &Credentials) -> Result<(), EngineError> {
        self.user.create_private_dir(&self.run_dir)?;
        self.user.own(&self.data_dir, 0o700)?;
        if let Some(tls) = &self.tls {
            tls.install(&self.user)?;
        }
        let read_only = self.follows().is_some();
        self.user
            .write_file(&self.option_file(), &self.render_options(read_only)?, 0o600)
    }

    fn find_running(&self) -> Result<Option<ServerProcess>, EngineError> {
        let pidfile = self.pid_file();
        let text = match std::fs::read_to_string(&pidfile) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(EngineError::io(pidfile, "read", e)),
        };
        let Some(pid) = text.trim().parse::<u32>().ok().filter(|p| *p > 0) else {
            return Ok(None);
        };
        // mariadbd and mysqld chdir into their data directory.
        if process_serves_data_dir(pid, &self.data_dir) {
            Ok(Some(ServerProcess::adopt(pid, &self.data_dir)))
        } else {
            Ok(None)
        }
    }

    fn reload_config(&self, _server: &ServerProcess) -> Result<(), EngineError> {
        // The family reads its option file only at start; what changes at runtime (read_only)
        // is set with SET GLOBAL by promote and by the next start.
        Ok(())
    }

    async fn apply_parameters(
        &self,
        creds: &Credentials,
        parameters: BTreeMap<String, String>,
    ) -> Result<Vec<String>, EngineError> {
        let before = match self.parameters.lock() {
            Ok(mut p) => std::mem::replace(&mut *p, parameters.clone()),
            Err(_) => effective_parameters(&self.spec),
        };
        self.write_config(creds)?;
        // The option file is read only at start; what is dynamic is set on the running server.
        let mut statements: Vec<(String, String)> = Vec::new();
        for (key, value) in &parameters {
            if before.get(key) != Some(value) {
                statements.push((
                    key.clone(),
                    format!(
                        "SET GLOBAL {} = {}",
                        key.replace('-', "_"),
                        global_value(value)
                    ),
                ));
            }
        }
        for key in before.keys().filter(|k| !parameters.contains_key(*k)) {
            statements.push((
                key.clone(),
                format!("SET GLOBAL {} = DEFAULT", key.replace('-', "_")),
            ));
        }
        self.with_session(async |conn: &mut Conn| {
            let mut needs_restart = Vec::new();
            for (key, statement) in &statements {
                match conn.query_drop(statement).await {
                    Ok(()) => {}
                    // ER_INCORRECT_GLOBAL_LOCAL_VAR: a read-only (start-time) variable.
                    Err(mysql_async::Error::Server(e)) if e.code == 1238 => {
                        needs_restart.push(key.clone());
                    }
                    Err(e) => return Err(EngineError::mysql("setting a parameter", e)),
                }
            }
            Ok(needs_restart)
        })
        .await
    }

    fn start(&self) -> Result<ServerProcess, EngineError> {
        if let Some(running) = self.find_running()? {
            return Err(EngineError::State(format!(
                "a {} server (pid {}) already runs on {}; refusing to start a second one",
                self.dialect.server_program,
                running.pid(),
                self.data_dir.display()
            )));
        }
        let args: Vec<OsString> = vec![Self::defaults_arg(&self.option_file())];
        self.invocation(self.binaries.server.clone(), args)
            .spawn_server(&self.data_dir)
    }

    async fn stop(&self, server: &mut ServerProcess, timeout: Duration) -> String {
        self.drop_sessions().await;
        server.stop(Signal::SIGTERM, Signal::SIGKILL, timeout).await
    }

    async fn probe(&self, _creds: &Credentials) -> Result<(), EngineError> {
        self.with_session(async |c: &mut Conn| {
            c.ping()
                .await
                .map_err(|e| EngineError::Connect(e.to_string()))
        })
        .await
    }

    async fn ensure_users(&self, creds: &Credentials) -> Result<(), EngineError> {
        let d = self.dialect;
        let owner = self.spec.bootstrap.owner.clone();
        let dbname = self.spec.bootstrap.database.clone();
        let users = [
            (
                REPLICATION_USER.to_string(),
                &creds.replication,
                d.replication_privileges,
            ),
            (
                MONITOR_USER.to_string(),
                &creds.monitor,
                d.monitor_privileges,
            ),
        ];
        let admin = self.admin.clone();
        self.with_session(async |c: &mut Conn| {
            // Users are local to each server, like its configuration: not in the binary log,
            // so they never wait for a semi-synchronous acknowledgement and never hold a
            // GTID a replica lacks. Replicas get them with the physical copy.
            Self::exec(
                c,
                "disabling the binary log for user management",
                "SET SESSION sql_log_bin = 0",
            )
            .await?;
            if d.engine == Engine::Mysql {
                // --initialize-insecure left root without a password: tie it to the socket.
                Self::exec(
                    c,
                    "restricting root to the socket",
                    &format!(
                        "ALTER USER 'root'@'localhost' IDENTIFIED WITH auth_socket AS {}",
                        quote_literal(&admin)
                    ),
                )
                .await?;
            }
            let mut all: Vec<(String, &Secret, String)> = users
                .iter()
                .map(|(u, p, privs)| {
                    (
                        u.clone(),
                        *p,
                        format!("GRANT {privs} ON *.* TO {}@'%'", quote_literal(u)),
                    )
                })
                .collect();
            all.push((
                owner.clone(),
                &creds.app,
                format!(
                    "GRANT ALL PRIVILEGES ON {}.* TO {}@'%'",
                    quote_ident(&dbname),
                    quote_literal(&owner)
                ),
            ));
            for (user, password, grant) in &all {
                let account = format!("{}@'%'", quote_literal(user));
                let identified = (d.identified_by)(password);
                Self::exec(
                    c,
                    "creating a user",
                    &format!("CREATE USER IF NOT EXISTS {account} {identified}"),
                )
                .await
                .map_err(|e| e.without(password.expose()))?;
                Self::exec(
                    c,
                    "setting a user's password",
                    &format!("ALTER USER {account} {identified}"),
                )
                .await
                .map_err(|e| e.without(password.expose()))?;
                if user == &owner {
                    Self::exec(
                        c,
                        "creating the application database",
                        &format!(
                            "CREATE DATABASE IF NOT EXISTS {} CHARACTER SET utf8mb4",
                            quote_ident(&dbname)
                        ),
                    )
                    .await?;
                }
                Self::exec(c, "granting privileges", grant).await?;
            }
            Self::exec(
                c,
                "re-enabling the binary log",
                "SET SESSION sql_log_bin = 1",
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn observe(&self, creds: &Credentials) -> Result<Observation, EngineError> {
        if let Err(e) = self.refresh_tls().await {
            tracing::warn!(instance = %self.instance, error = %e, "renewed certificates not installed");
        }
        let d = self.dialect;
        let local = self
            .with_session(async |c: &mut Conn| {
                // Read under the session lock: a promotion (which holds it) changes the marker.
                let follows = self.follows();
                if let Some(upstream) = &follows
                    && let Err(e) = self.ensure_replication(c, upstream, creds).await
                {
                    tracing::warn!(error = %e, upstream = %upstream.instance, "setting up replication");
                    if !matches!(e, EngineError::Sql { .. }) {
                        return Err(e);
                    }
                }
                let [version, read_only, executed, logged] = texts(
                    c,
                    "reading the server state",
                    &format!(
                        "SELECT VERSION(), @@GLOBAL.read_only, {}, {}",
                        d.executed_position, d.logged_position
                    ),
                )
                .await?;
                let uptime: Option<Row> = c
                    .query_first("SHOW GLOBAL STATUS LIKE 'Uptime'")
                    .await
                    .map_err(|e| EngineError::mysql("reading the uptime", e))?;
                let uptime = uptime.map(|r| column(&r, "Value")).and_then(|v| v.parse::<u64>().ok());
                let status = self.replica_status(c).await?;
                Ok((
                    version,
                    is_on(&read_only),
                    executed,
                    logged,
                    uptime,
                    status,
                    follows,
                ))
            })
            .await?;
        let (version, read_only, executed, logged, uptime, status, follows) = local;
        let mut o = Observation {
            server_version: version.split('-').next().map(str::to_string),
            uptime_seconds: uptime,
            position: Some(executed.replace('\n', "")),
            read_only,
            ..Observation::default()
        };
        // No upstream recorded and none configured: a primary, possibly fenced read-only.
        if status.is_none() && follows.is_none() {
            o.role = Some(Role::Primary);
            o.lag = Some(0);
            return Ok(o);
        }
        o.role = Some(Role::Replica);
        o.upstream = follows.as_ref().map(|e| e.instance.clone());
        let Some(status) = status else {
            o.replication_error = Some("replication is not configured yet".into());
            o.receiver_running = Some(false);
            o.applier_running = Some(false);
            return Ok(o);
        };
        let io = is_running(&status.io_running);
        let sql = is_running(&status.sql_running);
        o.receiver_running = Some(io);
        o.applier_running = Some(sql);
        o.replication_error = status.error.clone();
        o.lag_seconds = status.seconds_behind;
        o.received_position = Some(status.retrieved.replace('\n', "")).filter(|r| !r.is_empty());
        let mut upstream_seen = false;
        if let Some(upstream) = &follows {
            match self.upstream_positions(upstream, creds).await {
                Ok((up_logged, up_slave_pos, up_executed)) => {
                    upstream_seen = true;
                    o.errant =
                        self.errant(&logged, &up_logged, &up_slave_pos, &upstream.instance)?;
                    o.lag = self.transactions_behind(&up_executed, &executed);
                }
                Err(e) => {
                    tracing::debug!(error = %e, upstream = %upstream.instance, "cannot read the upstream's GTIDs");
                }
            }
        }
        if !upstream_seen {
            o.lag = self.transactions_behind(&status.retrieved, &executed);
        }
        o.streaming = io
            && sql
            && o.errant.is_none()
            && o.lag_seconds.is_some_and(|s| s <= MAX_READY_LAG_SECONDS);
        Ok(o)
    }

    async fn promote(&self, _creds: &Credentials) -> Result<(), EngineError> {
        let d = self.dialect;
        let synchronous = self.spec.replication.synchronous;
        self.with_session(async |c: &mut Conn| {
            if self.replica_status(c).await?.is_some() {
                Self::exec(c, "stopping replication", d.stop_replica).await?;
                Self::exec(c, "forgetting the upstream", d.reset_replica_all).await?;
            }
            // Under the session lock, so no observation re-points replication in between.
            let _ = std::fs::remove_file(self.start_position_file());
            write_marker(&self.data_dir, &self.marker(None), &self.user)?;
            if synchronous {
                Self::exec(
                    c,
                    "enabling semi-synchronous replication",
                    d.enable_semi_sync_source,
                )
                .await?;
            }
            for statement in d.make_writable {
                Self::exec(c, "making the server writable", statement).await?;
            }
            Ok(())
        })
        .await?;
        *self.upstream_session.lock().await = None;
        tracing::info!(instance = %self.instance, "promoted to primary");
        self.write_config(_creds)
    }

    async fn set_read_only(&self, _creds: &Credentials, on: bool) -> Result<(), EngineError> {
        if self.find_running()?.is_none() {
            // A stopped server's next start takes read_only from the option file (its role).
            return Ok(());
        }
        let sql = if on {
            "SET GLOBAL read_only = ON"
        } else {
            "SET GLOBAL read_only = OFF"
        };
        self.with_session(async |c: &mut Conn| Self::exec(c, "setting read_only", sql).await)
            .await
    }

    async fn rejoin(&self, upstream: &Endpoint, creds: &Credentials) -> Result<(), EngineError> {
        if self.find_running()?.is_some() {
            return Err(EngineError::State(
                "the server still runs; stop it before rejoining".into(),
            ));
        }
        // Read what this data directory holds with the server private (socket only) and
        // read-only, so nothing can write meanwhile.
        self.prepare_dirs()?;
        if let Some(tls) = &self.tls {
            tls.install(&self.user)?;
        }
        self.user
            .write_file(&self.option_file(), &self.render_options(true)?, 0o600)?;
        let d = self.dialect;
        let (executed, logged) = self
            .with_private_server(async |c: &mut Conn| {
                let [executed, logged] = self.local_gtids(c).await?;
                // Forget the old upstream, if any: the next start points at the new one.
                if self.replica_status(c).await?.is_some() {
                    Self::exec(c, "stopping replication", d.stop_replica).await?;
                    Self::exec(c, "forgetting the upstream", d.reset_replica_all).await?;
                }
                Ok((executed, logged))
            })
            .await?;
        let (up_logged, up_slave_pos, _) = self.upstream_positions(upstream, creds).await?;
        if let Some(errant) = self.errant(&logged, &up_logged, &up_slave_pos, &upstream.instance)? {
            return Err(EngineError::Errant {
                instance: self.instance.clone(),
                upstream: upstream.instance.clone(),
                errant: errant.to_string(),
            });
        }
        if d.engine == Engine::Mariadb {
            // gtid_current_pos: a former primary's own transactions are in its binary log but
            // not in its gtid_slave_pos; starting from slave_pos would ask the new upstream for
            // them again. With no errant transaction, current_pos is exactly what it holds.
            let position: MariadbGtidPosition = executed.parse()?;
            self.user
                .write_file(&self.start_position_file(), &position.to_string(), 0o600)?;
        }
        write_marker(
            &self.data_dir,
            &self.marker(Some(upstream.clone())),
            &self.user,
        )?;
        self.write_config(creds)
    }

    /// MariaDB: a running read-only replica is re-pointed in place (a failover's surviving
    /// replicas; with semi-sync, the new primary's first commit waits for one of them, so a
    /// restart here is write outage). Under the session lock, so no observation re-points
    /// replication meanwhile: replication is stopped (its GTIDs then move no more: `read_only`
    /// keeps clients out), its binary log is checked against the upstream's exactly as
    /// [`rejoin`](Self::rejoin) does, and only without errant transactions is the old upstream
    /// forgotten and the new one followed from `gtid_current_pos`. MySQL, a primary, a server
    /// that is not read-only or errant transactions: `Ok(false)`, the offline rejoin decides.
    async fn repoint_running(
        &self,
        upstream: &Endpoint,
        creds: &Credentials,
    ) -> Result<bool, EngineError> {
        let d = self.dialect;
        if d.engine != Engine::Mariadb || self.follows().is_none() {
            return Ok(false);
        }
        let repointed = self
            .with_session(async |c: &mut Conn| {
                let [read_only] =
                    texts(c, "reading read_only", "SELECT @@GLOBAL.read_only").await?;
                if !is_on(&read_only) || self.follows().is_none() {
                    return Ok(false);
                }
                if self.replica_status(c).await?.is_some() {
                    Self::exec(c, "stopping replication", d.stop_replica).await?;
                }
                // Read with replication stopped: nothing applies any more.
                let [executed, logged] = self.local_gtids(c).await?;
                let (up_logged, up_slave_pos, _) = self.upstream_positions(upstream, creds).await?;
                if self
                    .errant(&logged, &up_logged, &up_slave_pos, &upstream.instance)?
                    .is_some()
                {
                    return Ok(false);
                }
                Self::exec(c, "forgetting the upstream", d.reset_replica_all).await?;
                let position: MariadbGtidPosition = executed.parse()?;
                self.user
                    .write_file(&self.start_position_file(), &position.to_string(), 0o600)?;
                write_marker(
                    &self.data_dir,
                    &self.marker(Some(upstream.clone())),
                    &self.user,
                )?;
                self.ensure_replication(c, upstream, creds).await?;
                Ok(true)
            })
            .await?;
        if repointed {
            tracing::info!(instance = %self.instance, upstream = %upstream.instance, "re-pointed replication without a restart");
            self.write_config(creds)?;
        }
        Ok(repointed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_thread_is_yes_only() {
        assert!(is_running("Yes"));
        assert!(!is_running("Connecting"));
        assert!(!is_running("No"));
        assert!(!is_running(""));
    }
}
