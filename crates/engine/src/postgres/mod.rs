//! PostgreSQL (15 and later) behind [`ServerEngine`]: initdb, pg_basebackup, pg_rewind and
//! `postgres` run as the server user; SQL over the instance's Unix socket with scram-sha-256.
//!
//! # Layout
//! - [`config`]: `postgresql.conf`, `pg_hba.conf`, conninfo and password file, as text.
//! - [`binaries`]: finding the programs.
//! - [`controldata`]: `pg_controldata`: a stopped data directory's last checkpoint.

pub mod backrest;
pub mod binaries;
pub mod config;
pub mod controldata;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use stator_api::instance::{Endpoint, InstanceConfig};
use stator_api::parameters::effective_parameters;
use stator_api::position::Lsn;
use stator_api::{DatabaseSpec, Engine, Role};
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};

use crate::credentials::{Credentials, Secret};
use crate::data_dir::staging_dir;
use crate::data_dir::{
    DataDirMarker, DataDirState, discard_staging, install_staging, is_empty_dir, marker_mismatch,
    read_marker, write_marker,
};
use crate::error::EngineError;
use crate::process::{Invocation, ServerProcess, process_serves_data_dir};
use crate::server_engine::{Observation, ServerEngine};
use crate::server_user::ServerUser;
use crate::tls::{ServerTls, ServerTlsPaths};

use self::binaries::Binaries;
use self::config::{
    MONITOR_USER, REPLICATION_USER, SUPERUSER, ServerSettings, render_passfile, render_pg_hba,
    render_postgresql_conf, upstream_conninfo,
};

/// How long a replica re-pointed in place may take to stream from its new upstream before it
/// is rejoined offline ([`ServerEngine::repoint_running`]).
const REPOINT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// Whether the WAL receiver streams, from whom, and whether that is proven. PostgreSQL 15
/// reports `streaming` from the moment the receiver starts, and names the sender once
/// connected, both before the sender accepted `START_REPLICATION`: a sender that refuses our
/// history ("highest timeline 1 of the primary is behind recovery timeline 2") shows as
/// streaming for a moment (CI caught that window). So it also takes a message from the sender
/// (the receiver starts with equal send and receipt times; the sender's first message sets
/// both), and a receive timeline no older than the newest timeline history this server
/// holds: the receiver fetches the upstream's histories on connecting, and one that streams
/// an old timeline up to a switch point it already replayed past never gets onto the new one.
const RECEIVER_STREAMS: &str = "SELECT status, sender_host, sender_port, \
     last_msg_send_time IS DISTINCT FROM last_msg_receipt_time, \
     received_tli >= (SELECT coalesce(max(('x' || substr(name, 1, 8))::bit(32)::int), 1) \
        FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{8}\\.history$') \
     FROM pg_stat_wal_receiver";

/// Name of the password file (in the run directory) replication and pg_rewind read.
pub const PASSFILE: &str = "replication.pgpass";
/// The setting a read-only fence turns on: every new transaction is read-only.
const READ_ONLY_PARAMETER: &str = "default_transaction_read_only";
/// Longest Unix socket path the kernel accepts, less the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

/// One PostgreSQL instance.
pub struct Postgres {
    spec: DatabaseSpec,
    namespace: String,
    database: String,
    instance: String,
    major: String,
    data_dir: PathBuf,
    run_dir: PathBuf,
    log_file: PathBuf,
    listen_address: String,
    port: u16,
    user: ServerUser,
    binaries: Binaries,
    session: Mutex<Option<Client>>,
    /// The effective parameters `postgresql.conf` is written with (changed by a reload).
    parameters: std::sync::Mutex<BTreeMap<String, String>>,
    /// Fenced read-only: `postgresql.conf` also sets `default_transaction_read_only = on`.
    read_only_fence: std::sync::atomic::AtomicBool,
    /// pgBackRest, when `spec.backup` names a local repository: its settings and program.
    backrest: Option<(backrest::BackrestSettings, PathBuf)>,
    /// The certificates the server serves; `None`: TLS is off.
    tls: Option<ServerTls>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("instance", &self.instance)
            .field("data_dir", &self.data_dir)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Postgres {
    /// Checks the configuration, the server user and the binaries; touches nothing.
    pub fn new(config: &InstanceConfig) -> Result<Postgres, EngineError> {
        let db = &config.database;
        if db.spec.engine != Engine::Postgres {
            return Err(EngineError::Config {
                field: "database.spec.engine".into(),
                message: format!("is {}, this engine runs postgres", db.spec.engine),
            });
        }
        let major = db.version().to_string();
        let user = ServerUser::resolve(config.server_user.as_deref())?;
        let binaries = Binaries::find(config.bin_dir.as_deref(), &major)?;
        let found = binaries.major_version()?;
        if found != major {
            return Err(EngineError::Config {
                field: "database.spec.version".into(),
                message: format!(
                    "is {major}, but {} is PostgreSQL {found}; install postgresql-{major} or set binDir",
                    binaries.dir.display()
                ),
            });
        }
        let socket = config.run_dir.join(format!(".s.PGSQL.{}", config.port));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(EngineError::Config {
                field: "runDir".into(),
                message: format!(
                    "{} is too long for a Unix socket path ({} bytes at most); use a shorter run directory",
                    socket.display(),
                    MAX_SOCKET_PATH
                ),
            });
        }
        user.check_reachable(&config.data_dir)?;
        user.check_reachable(&config.run_dir)?;
        let s3 = backrest::S3Settings::of(db, config.secrets_root.as_deref())?;
        let encryption = backrest::Encryption::of(db, config.secrets_root.as_deref())?;
        let backrest = match backrest::BackrestSettings::of(
            db,
            &config.data_dir,
            config.port,
            &config.run_dir,
            s3,
            encryption,
        ) {
            None => None,
            Some(settings) => {
                let program = backrest::find_program().ok_or_else(|| EngineError::Config {
                    field: "database.spec.backup".into(),
                    message: "needs pgBackRest, which is not installed (looked for /usr/bin/pgbackrest and on PATH); install it: apt-get install pgbackrest".into(),
                })?;
                Some((settings, program))
            }
        };
        Ok(Postgres {
            spec: db.spec.clone(),
            namespace: db.namespace().to_string(),
            database: db.name().to_string(),
            instance: db.instance_name(config.ordinal),
            major,
            data_dir: config.data_dir.clone(),
            run_dir: config.run_dir.clone(),
            log_file: config.log_file.clone(),
            listen_address: config.listen_address.clone(),
            port: config.port,
            user,
            binaries,
            session: Mutex::new(None),
            parameters: std::sync::Mutex::new(effective_parameters(&db.spec)),
            read_only_fence: std::sync::atomic::AtomicBool::new(false),
            backrest,
            tls: ServerTls::for_config(config),
        })
    }

    fn tls_paths(&self) -> Option<ServerTlsPaths> {
        self.tls.as_ref().map(ServerTls::paths)
    }

    fn conninfo(&self, upstream: &Endpoint, dbname: Option<&str>) -> String {
        upstream_conninfo(
            upstream,
            &self.passfile(),
            &self.instance,
            dbname,
            self.tls_paths().as_ref(),
        )
    }

    /// Installs renewed certificates and has the server read them (`pg_reload_conf()`): new
    /// connections get the new certificate, open ones keep theirs, nothing restarts.
    async fn refresh_tls(&self, creds: &Credentials) -> Result<(), EngineError> {
        let Some(tls) = self.tls.as_ref().filter(|t| t.changed()) else {
            return Ok(());
        };
        tls.install(&self.user)?;
        self.with_session(creds, async |c: &Client| {
            c.simple_query("SELECT pg_reload_conf()")
                .await
                .map_err(|e| EngineError::sql("reloading the certificates", &e))
        })
        .await?;
        tracing::info!(instance = %self.instance, "renewed certificates installed and reloaded");
        Ok(())
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    pub fn user(&self) -> &ServerUser {
        &self.user
    }

    fn passfile(&self) -> PathBuf {
        self.run_dir.join(PASSFILE)
    }

    fn invocation(&self, program: &str, args: Vec<OsString>) -> Invocation {
        Invocation {
            program: self.binaries.program(program),
            args,
            env: Vec::new(),
            user: self.user.clone(),
            log_file: self.log_file.clone(),
            cwd: Some(self.run_dir.clone()),
        }
    }

    fn marker(&self, follows: Option<Endpoint>) -> DataDirMarker {
        DataDirMarker {
            engine: Engine::Postgres.as_str().into(),
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

    fn staging_dir(&self) -> Result<PathBuf, EngineError> {
        staging_dir(&self.data_dir, &self.user)
    }

    fn install_staging(&self, staging: &Path) -> Result<(), EngineError> {
        install_staging(staging, &self.data_dir, &self.user)
    }

    fn discard_staging(&self, staging: &Path) {
        discard_staging(staging, &self.data_dir)
    }

    fn write_passfile(&self, creds: &Credentials) -> Result<(), EngineError> {
        self.user.write_file(
            &self.passfile(),
            &render_passfile(REPLICATION_USER, creds.replication.expose()),
            0o600,
        )
    }

    fn write_standby_signal(&self, data_dir: &Path) -> Result<(), EngineError> {
        self.user
            .write_file(&data_dir.join("standby.signal"), "", 0o600)
    }

    /// The cached superuser session over the Unix socket, (re)connected when needed.
    async fn with_session<T>(
        &self,
        creds: &Credentials,
        work: impl AsyncFnOnce(&Client) -> Result<T, EngineError>,
    ) -> Result<T, EngineError> {
        let mut guard = self.session.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(self.connect(&creds.superuser).await?);
        }
        let client = guard
            .as_ref()
            .ok_or_else(|| EngineError::Connect("no session".into()))?;
        let result = work(client).await;
        if result.is_err() && client.is_closed() {
            *guard = None;
        }
        result
    }

    async fn connect(&self, password: &Secret) -> Result<Client, EngineError> {
        let mut cfg = tokio_postgres::Config::new();
        cfg.host_path(&self.run_dir)
            .port(self.port)
            .user(SUPERUSER)
            .password(password.expose())
            .dbname("postgres")
            .application_name("stator-instance")
            .connect_timeout(Duration::from_secs(3));
        let (client, connection) = cfg.connect(NoTls).await.map_err(|e| {
            EngineError::Connect(match e.as_db_error() {
                Some(db) => db.message().to_string(),
                None => e.to_string(),
            })
        })?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    async fn drop_session(&self) {
        *self.session.lock().await = None;
    }
}

/// `"name"` with embedded quotes doubled.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled.
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The SCRAM verifier of `password`: what the server stores, so the password itself never
/// travels in a statement (nor in a statement the server might log).
fn scram_verifier(password: &Secret) -> String {
    postgres_protocol::password::scram_sha_256(password.expose().as_bytes())
}

/// The timeline in a WAL file name (`000000020000000000000003` → 2).
fn timeline_of_walfile(name: &str) -> Option<u32> {
    name.get(0..8).and_then(|t| u32::from_str_radix(t, 16).ok())
}

impl ServerEngine for Postgres {
    fn kind(&self) -> Engine {
        Engine::Postgres
    }

    fn inspect_data_dir(&self) -> Result<DataDirState, EngineError> {
        if is_empty_dir(&self.data_dir)? {
            return Ok(DataDirState::Empty);
        }
        let foreign = |message: String| EngineError::ForeignDataDir {
            path: self.data_dir.clone(),
            message,
        };
        let pg_version = std::fs::read_to_string(self.data_dir.join("PG_VERSION"))
            .ok()
            .map(|v| v.trim().to_string());
        let marker = read_marker(&self.data_dir)?;
        let marker = match (marker, pg_version) {
            (None, None) => {
                return Err(foreign(
                    "is not empty and is not a PostgreSQL data directory; give the instance an empty or absent directory".into(),
                ));
            }
            (None, Some(v)) => {
                return Err(foreign(format!(
                    "is a PostgreSQL {v} data directory that Stator did not create (no {} marker); it may belong to another server",
                    crate::data_dir::MARKER_FILE
                )));
            }
            (Some(m), v) => {
                if let Some(why) = marker_mismatch(&m, "postgres", &self.major, &self.database) {
                    return Err(foreign(why));
                }
                match v {
                    Some(v) if v == self.major => m,
                    Some(v) => {
                        return Err(foreign(format!(
                            "holds PostgreSQL {v} files (PG_VERSION), this instance runs PostgreSQL {}",
                            self.major
                        )));
                    }
                    None => {
                        return Err(foreign(
                            "has a Stator marker but no PG_VERSION; the directory is incomplete"
                                .into(),
                        ));
                    }
                }
            }
        };
        Ok(DataDirState::Ready(marker))
    }

    async fn initialize(&self, creds: &Credentials) -> Result<(), EngineError> {
        self.prepare_dirs()?;
        let staging = self.staging_dir()?;
        let pwfile = self.run_dir.join("initdb.pw");
        self.user
            .write_file(&pwfile, creds.superuser.expose(), 0o600)?;
        let mut args: Vec<OsString> = vec![
            "-D".into(),
            staging.clone().into(),
            "-U".into(),
            SUPERUSER.into(),
        ];
        let mut pw_arg = OsString::from("--pwfile=");
        pw_arg.push(&pwfile);
        args.push(pw_arg);
        for a in [
            "--auth-local=scram-sha-256",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--locale=C.UTF-8",
            "--data-checksums",
        ] {
            args.push(a.into());
        }
        let result = self.invocation("initdb", args).run().await;
        let _ = std::fs::remove_file(&pwfile);
        let result = result
            .and_then(|()| write_marker(&staging, &self.marker(None), &self.user))
            .and_then(|()| self.install_staging(&staging));
        if result.is_err() {
            self.discard_staging(&staging);
        }
        result
    }

    async fn clone_upstream(
        &self,
        upstream: &Endpoint,
        creds: &Credentials,
    ) -> Result<(), EngineError> {
        self.prepare_dirs()?;
        let staging = self.staging_dir()?;
        self.write_passfile(creds)?;
        if let Some(tls) = &self.tls {
            tls.install(&self.user)?;
        }
        let conninfo = self.conninfo(upstream, None);
        let args: Vec<OsString> = vec![
            "-D".into(),
            staging.clone().into(),
            format!("--dbname={conninfo}").into(),
            "-X".into(),
            "stream".into(),
            "-c".into(),
            "fast".into(),
            "--no-password".into(),
        ];
        let mut inv = self.invocation("pg_basebackup", args);
        inv.env.push(("PGPASSFILE".into(), self.passfile().into()));
        // The copy carries the upstream's marker and config; this instance's replace them.
        let result = inv
            .run()
            .await
            .and_then(|()| self.write_standby_signal(&staging))
            .and_then(|()| write_marker(&staging, &self.marker(Some(upstream.clone())), &self.user))
            .and_then(|()| self.install_staging(&staging));
        if result.is_err() {
            self.discard_staging(&staging);
        }
        result
    }

    async fn restore_from(
        &self,
        source: &stator_api::instance::RestoreSource,
        creds: &Credentials,
    ) -> Result<(), EngineError> {
        self.restore_backup(source, creds).await
    }

    fn write_config(&self, creds: &Credentials) -> Result<(), EngineError> {
        self.user.create_private_dir(&self.run_dir)?;
        self.user.own(&self.data_dir, 0o700)?;
        self.write_passfile(creds)?;
        if let Some(tls) = &self.tls {
            tls.install(&self.user)?;
        }
        let follows = read_marker(&self.data_dir)?.and_then(|m| m.follows);
        let primary_conninfo = match &follows {
            Some(upstream) => {
                self.write_standby_signal(&self.data_dir)?;
                Some(self.conninfo(upstream, None))
            }
            None => None,
        };
        let mut parameters = self
            .parameters
            .lock()
            .map(|p| p.clone())
            .unwrap_or_else(|_| effective_parameters(&self.spec));
        if self
            .read_only_fence
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            parameters.insert(READ_ONLY_PARAMETER.into(), "on".into());
        }
        let archive = self.write_backrest_config(creds)?;
        let settings = ServerSettings {
            parameters,
            port: self.port,
            listen_address: self.listen_address.clone(),
            socket_dir: self.run_dir.to_string_lossy().into_owned(),
            cluster_name: self.instance.clone(),
            synchronous: self.spec.replication.synchronous,
            primary_conninfo,
            archive,
            tls: self.tls_paths(),
        };
        self.user.write_file(
            &self.data_dir.join("postgresql.conf"),
            &render_postgresql_conf(&settings)?,
            0o600,
        )?;
        self.user.write_file(
            &self.data_dir.join("pg_hba.conf"),
            &render_pg_hba(self.tls.is_some()),
            0o600,
        )
    }

    fn find_running(&self) -> Result<Option<ServerProcess>, EngineError> {
        let pidfile = self.data_dir.join("postmaster.pid");
        let text = match std::fs::read_to_string(&pidfile) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(EngineError::io(pidfile, "read", e)),
        };
        let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
        else {
            return Ok(None);
        };
        if pid > 0 && process_serves_data_dir(pid, &self.data_dir) {
            Ok(Some(ServerProcess::adopt(pid, &self.data_dir)))
        } else {
            Ok(None)
        }
    }

    fn reload_config(&self, server: &ServerProcess) -> Result<(), EngineError> {
        server.signal(Signal::SIGHUP)
    }

    async fn apply_parameters(
        &self,
        creds: &Credentials,
        parameters: BTreeMap<String, String>,
    ) -> Result<Vec<String>, EngineError> {
        if let Ok(mut p) = self.parameters.lock() {
            *p = parameters;
        }
        self.write_config(creds)?;
        self.with_session(creds, async |c: &Client| {
            c.simple_query("SELECT pg_reload_conf()")
                .await
                .map_err(|e| EngineError::sql("reloading the configuration", &e))
        })
        .await?;
        // The postmaster passes the reload on to every backend, this session's included; the
        // session reads the file again before its next statement.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.with_session(creds, async |c: &Client| {
            let rows = c
                .query(
                    "SELECT name FROM pg_settings WHERE pending_restart ORDER BY name",
                    &[],
                )
                .await
                .map_err(|e| EngineError::sql("reading pg_settings", &e))?;
            Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
        })
        .await
    }

    fn start(&self) -> Result<ServerProcess, EngineError> {
        if let Some(running) = self.find_running()? {
            return Err(EngineError::State(format!(
                "a postmaster (pid {}) already runs on {}; refusing to start a second one",
                running.pid(),
                self.data_dir.display()
            )));
        }
        let args: Vec<OsString> = vec!["-D".into(), self.data_dir.clone().into()];
        self.invocation("postgres", args)
            .spawn_server(&self.data_dir)
    }

    async fn stop(&self, server: &mut ServerProcess, timeout: Duration) -> String {
        self.drop_session().await;
        server.stop(Signal::SIGINT, Signal::SIGQUIT, timeout).await
    }

    async fn probe(&self, creds: &Credentials) -> Result<(), EngineError> {
        self.with_session(creds, async |c: &Client| {
            c.simple_query("SELECT 1")
                .await
                .map(|_| ())
                .map_err(|e| EngineError::Connect(e.to_string()))
        })
        .await
    }

    async fn ensure_users(&self, creds: &Credentials) -> Result<(), EngineError> {
        let owner = self.spec.bootstrap.owner.clone();
        let dbname = self.spec.bootstrap.database.clone();
        let roles = [
            (
                REPLICATION_USER.to_string(),
                "LOGIN REPLICATION",
                &creds.replication,
            ),
            (MONITOR_USER.to_string(), "LOGIN", &creds.monitor),
            (owner.clone(), "LOGIN", &creds.app),
        ];
        self.with_session(creds, async |c: &Client| {
            // With synchronous replication, a commit waits for a replica; the replicas need the
            // replication role first, so these commits must not wait.
            c.batch_execute("SET synchronous_commit TO local")
                .await
                .map_err(|e| EngineError::sql("setting synchronous_commit", &e))?;
            for (role, attrs, password) in &roles {
                let exists = c
                    .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[role])
                    .await
                    .map_err(|e| EngineError::sql("looking up a role", &e))?
                    .is_some();
                let verb = if exists { "ALTER" } else { "CREATE" };
                let sql = format!(
                    "{verb} ROLE {} {attrs} PASSWORD {}",
                    quote_ident(role),
                    quote_literal(&scram_verifier(password))
                );
                c.batch_execute(&sql)
                    .await
                    .map_err(|e| EngineError::sql("creating a role", &e))?;
            }
            let grants = format!(
                "GRANT pg_monitor TO {m};
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_ls_dir(text, boolean, boolean) TO {r};
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_stat_file(text, boolean) TO {r};
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text) TO {r};
                 GRANT EXECUTE ON FUNCTION pg_catalog.pg_read_binary_file(text, bigint, bigint, boolean) TO {r};",
                m = quote_ident(MONITOR_USER),
                r = quote_ident(REPLICATION_USER)
            );
            c.batch_execute(&grants)
                .await
                .map_err(|e| EngineError::sql("granting the monitoring and rewind rights", &e))?;
            let db_exists = c
                .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&dbname])
                .await
                .map_err(|e| EngineError::sql("looking up the database", &e))?
                .is_some();
            if !db_exists {
                c.batch_execute(&format!(
                    "CREATE DATABASE {} OWNER {}",
                    quote_ident(&dbname),
                    quote_ident(&owner)
                ))
                .await
                .map_err(|e| EngineError::sql("creating the application database", &e))?;
            }
            Ok(())
        })
        .await
    }

    async fn observe(&self, creds: &Credentials) -> Result<Observation, EngineError> {
        if let Err(e) = self.refresh_tls(creds).await {
            tracing::warn!(instance = %self.instance, error = %e, "renewed certificates not installed");
        }
        let upstream = read_marker(&self.data_dir)
            .ok()
            .flatten()
            .and_then(|m| m.follows)
            .map(|e| e.instance);
        self.with_session(creds, async |c: &Client| {
            let row = c
                .query_one(
                    "SELECT pg_is_in_recovery(), current_setting('server_version'),
                            EXTRACT(EPOCH FROM now() - pg_postmaster_start_time())::float8,
                            current_setting('default_transaction_read_only') = 'on'",
                    &[],
                )
                .await
                .map_err(|e| EngineError::sql("reading the server state", &e))?;
            let in_recovery: bool = row.get(0);
            let version: String = row.get(1);
            let uptime: f64 = row.get(2);
            let default_read_only: bool = row.get(3);
            let mut o = Observation {
                server_version: version.split_whitespace().next().map(str::to_string),
                uptime_seconds: Some(uptime.max(0.0) as u64),
                read_only: in_recovery || default_read_only,
                ..Observation::default()
            };
            if !in_recovery {
                let row = c
                    .query_one(
                        "SELECT pg_current_wal_lsn()::text, pg_walfile_name(pg_current_wal_lsn())",
                        &[],
                    )
                    .await
                    .map_err(|e| EngineError::sql("reading the WAL position", &e))?;
                let lsn: String = row.get(0);
                let walfile: String = row.get(1);
                o.role = Some(Role::Primary);
                o.timeline = timeline_of_walfile(&walfile);
                o.position_bytes = lsn.parse::<Lsn>().ok().map(|l| l.0);
                o.position = Some(lsn);
                o.lag = Some(0);
                return Ok(o);
            }
            let row = c
                .query_one(
                    "SELECT pg_last_wal_replay_lsn()::text, pg_last_wal_receive_lsn()::text,
                            r.status, r.latest_end_lsn::text, r.received_tli,
                            EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp())::float8,
                            (SELECT timeline_id FROM pg_control_checkpoint())
                     FROM (SELECT 1) AS one LEFT JOIN pg_stat_wal_receiver r ON true",
                    &[],
                )
                .await
                .map_err(|e| EngineError::sql("reading the replication state", &e))?;
            let replay: Option<String> = row.get(0);
            let receive: Option<String> = row.get(1);
            let status: Option<String> = row.get(2);
            let latest_end: Option<String> = row.get(3);
            let received_tli: Option<i32> = row.get(4);
            let since_replay: Option<f64> = row.get(5);
            let checkpoint_tli: Option<i32> = row.get(6);
            let parse = |t: &Option<String>| t.as_deref().and_then(|t| t.parse::<Lsn>().ok());
            let (replay_lsn, receive_lsn, end_lsn) =
                (parse(&replay), parse(&receive), parse(&latest_end));
            o.role = Some(Role::Replica);
            o.streaming = status.as_deref() == Some("streaming");
            // The walreceiver runs (streaming, or starting/catching up); replay always runs
            // while the server is in recovery.
            o.receiver_running = Some(status.is_some());
            o.applier_running = Some(true);
            o.timeline = received_tli
                .or(checkpoint_tli)
                .and_then(|t| u32::try_from(t).ok());
            o.position_bytes = replay_lsn.map(|l| l.0);
            o.position = replay;
            o.received_position = receive;
            if let Some(replay_lsn) = replay_lsn {
                let head = receive_lsn.max(end_lsn).unwrap_or(replay_lsn);
                let lag = head.bytes_after(replay_lsn);
                o.lag = Some(lag);
                o.lag_seconds = Some(if lag == 0 {
                    0.0
                } else {
                    since_replay.unwrap_or(0.0).max(0.0)
                });
            }
            o.upstream = upstream.clone();
            Ok(o)
        })
        .await
    }

    async fn promote(&self, creds: &Credentials) -> Result<(), EngineError> {
        let promoted = self
            .with_session(creds, async |c: &Client| {
                let in_recovery: bool = c
                    .query_one("SELECT pg_is_in_recovery()", &[])
                    .await
                    .map_err(|e| EngineError::sql("reading the role", &e))?
                    .get(0);
                if !in_recovery {
                    return Ok(false);
                }
                let done: bool = c
                    .query_one("SELECT pg_promote(true, 60)", &[])
                    .await
                    .map_err(|e| EngineError::sql("promoting", &e))?
                    .get(0);
                if done {
                    // pg_rewind reads the source's timeline from its control file, which only
                    // shows the new timeline after a checkpoint.
                    c.batch_execute("CHECKPOINT")
                        .await
                        .map_err(|e| EngineError::sql("checkpointing after promotion", &e))?;
                    Ok(true)
                } else {
                    Err(EngineError::State(
                        "pg_promote did not finish within 60 seconds".into(),
                    ))
                }
            })
            .await?;
        if promoted {
            tracing::info!(instance = %self.instance, "promoted to primary");
        }
        write_marker(&self.data_dir, &self.marker(None), &self.user)?;
        self.write_config(creds)
    }

    async fn set_read_only(&self, creds: &Credentials, on: bool) -> Result<(), EngineError> {
        self.read_only_fence
            .store(on, std::sync::atomic::Ordering::SeqCst);
        self.write_config(creds)?;
        if self.find_running()?.is_none() {
            // The configuration written is what the next start uses.
            return Ok(());
        }
        let wanted = if on { "on" } else { "off" };
        // The reload reaches each backend (this session's too) before its next statement.
        for _ in 0..30 {
            let now = self
                .with_session(creds, async |c: &Client| {
                    c.simple_query("SELECT pg_reload_conf()")
                        .await
                        .map_err(|e| EngineError::sql("reloading the configuration", &e))?;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let row = c
                        .query_one(
                            "SELECT current_setting('default_transaction_read_only')",
                            &[],
                        )
                        .await
                        .map_err(|e| {
                            EngineError::sql("reading default_transaction_read_only", &e)
                        })?;
                    Ok(row.get::<_, String>(0))
                })
                .await?;
            if now == wanted {
                return Ok(());
            }
        }
        Err(EngineError::State(format!(
            "default_transaction_read_only did not become {wanted} after a reload"
        )))
    }

    async fn final_checkpoint(&self) -> Option<controldata::ControlData> {
        let marker = read_marker(&self.data_dir).ok().flatten()?;
        if marker.follows.is_some() || self.find_running().ok().flatten().is_some() {
            return None;
        }
        controldata::read_control_data(Some(&self.binaries.dir), &self.data_dir)
            .await
            .filter(|c| c.clean)
    }

    /// A running replica re-pointed in place: the marker and `primary_conninfo` name
    /// `upstream`, and a reload applies it (PostgreSQL restarts the WAL receiver on a changed
    /// `primary_conninfo` since 13). With `recovery_target_timeline = latest` the receiver
    /// follows the upstream's new timeline from its fork point. Whether that is safe is
    /// PostgreSQL's own check, the one `pg_rewind` would act on: a replica whose WAL went past
    /// the fork point is refused by the upstream ("not in this server's history") and never
    /// streams it. So this returns `Ok(true)` only once the receiver streams from `upstream`,
    /// within [`REPOINT_WAIT`]; otherwise `Ok(false)`, and the caller stops the server and
    /// rejoins with `pg_rewind` as before (towards the same upstream the files now name).
    ///
    /// Why: the stop, `pg_rewind` and start took 0.5-0.8 s after each failover (0.54 s of
    /// `pg_rewind` alone, with nothing diverged), and with synchronous replication the new
    /// primary's first commit waits for that replica.
    async fn repoint_running(
        &self,
        upstream: &Endpoint,
        creds: &Credentials,
    ) -> Result<bool, EngineError> {
        if read_marker(&self.data_dir)?
            .and_then(|m| m.follows)
            .is_none()
        {
            return Ok(false);
        }
        let replica = self
            .with_session(creds, async |c: &Client| {
                c.query_one("SELECT pg_is_in_recovery()", &[])
                    .await
                    .map(|r| r.get::<_, bool>(0))
                    .map_err(|e| EngineError::sql("reading the role", &e))
            })
            .await?;
        if !replica {
            return Ok(false);
        }
        write_marker(
            &self.data_dir,
            &self.marker(Some(upstream.clone())),
            &self.user,
        )?;
        self.write_config(creds)?;
        let port = i32::from(upstream.port);
        let streaming = self
            .with_session(creds, async |c: &Client| {
                c.batch_execute("SELECT pg_reload_conf()")
                    .await
                    .map_err(|e| EngineError::sql("reloading the configuration", &e))?;
                let started = std::time::Instant::now();
                while started.elapsed() < REPOINT_WAIT {
                    let row = c
                        .query_opt(RECEIVER_STREAMS, &[])
                        .await
                        .map_err(|e| EngineError::sql("reading the WAL receiver", &e))?;
                    if let Some(row) = row {
                        let status: Option<String> = row.get(0);
                        let host: Option<String> = row.get(1);
                        let sender_port: Option<i32> = row.get(2);
                        let heard: Option<bool> = row.get(3);
                        let on_latest: Option<bool> = row.get(4);
                        if status.as_deref() == Some("streaming")
                            && host.as_deref() == Some(upstream.host.as_str())
                            && sender_port == Some(port)
                            && heard == Some(true)
                            && on_latest == Some(true)
                        {
                            return Ok(true);
                        }
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Ok(false)
            })
            .await?;
        if streaming {
            tracing::info!(instance = %self.instance, upstream = %upstream.instance, "re-pointed replication without a restart");
        } else {
            tracing::info!(instance = %self.instance, upstream = %upstream.instance, "the WAL receiver does not stream from the new upstream: rejoining offline");
        }
        Ok(streaming)
    }

    async fn rejoin(&self, upstream: &Endpoint, creds: &Credentials) -> Result<(), EngineError> {
        if self.find_running()?.is_some() {
            return Err(EngineError::State(
                "the server still runs; stop it before rejoining".into(),
            ));
        }
        self.write_passfile(creds)?;
        if let Some(tls) = &self.tls {
            tls.install(&self.user)?;
        }
        let conninfo = self.conninfo(upstream, Some("postgres"));
        let mut inv = self.invocation(
            "pg_rewind",
            vec![
                "--target-pgdata".into(),
                self.data_dir.clone().into(),
                format!("--source-server={conninfo}").into(),
            ],
        );
        inv.env.push(("PGPASSFILE".into(), self.passfile().into()));
        // pg_rewind copies every non-relation file of the source's data dir, our marker
        // included: one that fails part-way can leave it truncated, and a manager that cannot
        // read its marker refuses every later order (seen on the stand-in: an empty stator.json
        // after a pg_rewind whose source went away). The marker is put back as it was, so
        // the rejoin can be ordered again.
        let before = read_marker(&self.data_dir).ok().flatten();
        if let Err(e) = inv.run().await {
            if let Some(before) = &before
                && read_marker(&self.data_dir).ok().flatten().as_ref() != Some(before)
            {
                tracing::warn!(
                    instance = %self.instance,
                    "pg_rewind failed part-way and left the marker changed; it is restored"
                );
                if let Err(w) = write_marker(&self.data_dir, before, &self.user) {
                    tracing::error!(instance = %self.instance, "restoring the marker: {w}");
                }
            }
            return Err(e);
        }
        self.write_standby_signal(&self.data_dir)?;
        write_marker(
            &self.data_dir,
            &self.marker(Some(upstream.clone())),
            &self.user,
        )?;
        self.write_config(creds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_is_read_from_a_wal_file_name() {
        assert_eq!(timeline_of_walfile("000000020000000000000003"), Some(2));
        assert_eq!(timeline_of_walfile("zz"), None);
    }

    #[test]
    fn identifiers_and_literals_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }

    #[test]
    fn a_verifier_does_not_contain_the_password() {
        let v = scram_verifier(&Secret::new("hunter2-hunter2"));
        assert!(v.starts_with("SCRAM-SHA-256$4096:"), "{v}");
        assert!(!v.contains("hunter2"));
    }
}
