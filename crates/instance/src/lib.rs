//! The instance manager (`stator instance`): runs next to one database server — locally under
//! the supervisor of `stator up`, and as the entrypoint of every pod. From an
//! [`InstanceConfig`] it initializes or clones the data directory, writes the configuration,
//! starts (or adopts) and supervises the server, and serves its HTTP endpoints.
//!
//! It must not decide anything about the cluster: promotion and demotion happen only when asked
//! over HTTP (with the token), by the `control` decisions a runtime carries out. It never starts
//! a second server on a data directory that already has one, and never logs a secret.
//!
//! # Layout
//! - [`supervisor`]: the life of the server: bootstrap, start or adopt, restart, promote, demote.
//! - [`status`]: the shared facts and the `/status` report, readiness.
//! - [`http`]: the endpoints, including `/backup` (the MySQL family's physical copy for a
//!   replica being cloned).
//! - [`https`]: the endpoints over TLS with the database's certificate (plain HTTP refused).
//! - [`metrics`]: `/metrics` in the Prometheus text format.
//! - [`peers`]: never an empty primary: a new primary's empty data dir is initialised only
//!   when no peer holds (or may hold) the database's data; otherwise it is cloned.
//! - [`managed`]: the managed mode (the operator's pods): no role of its own; the orders
//!   `/bootstrap`, `/role`, `/fence`, `/rebuild`, and `/status?fresh=1`.
//! - [`lease`]: the write lease's bookkeeping (pure): grants, terms, the failsafe.
//! - [`self_fencing`]: lease mode (`--managed --lease`): `POST /lease`, `POST /confirm`, the
//!   clock and incarnation, the persisted term, the watchdog thread that kills a primary whose
//!   lease expired, the failsafe rounds.
//! - [`api_token`]: the bearer token of the mutating endpoints.
//! - [`backups`]: pgBackRest backups on the primary, the stanza, a full backup after a promotion.
//! - [`binlogs`]: a MariaDB primary's binary log archive (`FLUSH`, archive the closed logs).
//! - [`error`]: why the manager stopped.

pub mod api_token;
pub mod backups;
pub mod binlogs;
pub mod deadman;
pub mod error;
pub mod http;
pub mod https;
pub mod lease;
pub mod managed;
pub mod metrics;
pub mod peers;
pub mod self_fencing;
pub mod status;
pub mod supervisor;

use std::sync::Arc;
use std::time::Duration;

use stator_api::Engine;
use stator_api::instance::InstanceConfig;
use stator_api::names::secret_keys;
use stator_engine::credentials::read_secret;
use stator_engine::tls::TlsFiles;
use stator_engine::{Credentials, MysqlFamily, Postgres, ServerEngine};
use tokio::sync::mpsc;

pub use error::InstanceError;

use crate::http::Endpoints;
use crate::status::InstanceStatus;
use crate::supervisor::{Command, Supervisor};

/// How long a fast shutdown may take before an immediate one.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Checks what can be checked before anything is touched.
fn check_config(config: &InstanceConfig) -> Result<(), InstanceError> {
    let report = stator_api::validate(&config.database);
    if let Some(first) = report.errors.first() {
        return Err(InstanceError::Config {
            field: format!("database.{}", first.path),
            message: first.message.clone(),
        });
    }
    if config.port == config.http_port {
        return Err(InstanceError::Config {
            field: "httpPort".into(),
            message: format!("is the server's port {}; give it another", config.port),
        });
    }
    Ok(())
}

/// Whether the manager picks its role itself or takes orders.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// From the config's `bootstrap` and `peers` (the local runtime, plain `stator render` pods).
    Plain,
    /// Only on orders ([`managed`]); the config's `bootstrap` and `peers` are not used.
    Managed,
    /// [`Mode::Managed`], and a primary serves only under the operator's write lease
    /// ([`self_fencing`]); the config's `peers` are asked to confirm the failsafe.
    Leased,
}

/// Runs the instance manager until SIGTERM or SIGINT (Ok, server stopped cleanly) or until the
/// server cannot run (Err, naming why). The engine follows `spec.engine`.
pub async fn run(config: InstanceConfig) -> Result<(), InstanceError> {
    run_in(config, Mode::Plain).await
}

/// [`run`] in `mode`.
pub async fn run_in(config: InstanceConfig, mode: Mode) -> Result<(), InstanceError> {
    check_config(&config)?;
    let name = config.database.instance_name(config.ordinal);
    let engine_error = |source| InstanceError::Engine {
        instance: name.clone(),
        source,
    };
    match config.database.spec.engine {
        Engine::Postgres => {
            let engine = Arc::new(Postgres::new(&config).map_err(engine_error)?);
            let backs_up = engine.backs_up().then(|| engine.clone());
            run_engine(config, engine, None, mode, backs_up).await
        }
        Engine::Mariadb | Engine::Mysql => {
            let engine = Arc::new(MysqlFamily::new(&config).map_err(engine_error)?);
            let backup = (config.database.spec.engine == Engine::Mariadb).then(|| engine.clone());
            run_engine(config, engine, backup, mode, None).await
        }
    }
}

/// The manager around one engine; `backup` serves `/backup` when the engine clones that way;
/// `backs_up` takes pgBackRest backups (`POST /backups`).
async fn run_engine<E: ServerEngine>(
    config: InstanceConfig,
    engine: Arc<E>,
    backup: Option<Arc<MysqlFamily>>,
    mode: Mode,
    backs_up: Option<Arc<Postgres>>,
) -> Result<(), InstanceError> {
    let name = config.database.instance_name(config.ordinal);
    let engine_error = |source| InstanceError::Engine {
        instance: name.clone(),
        source,
    };
    let creds = Credentials::read(&config.secrets_dir).map_err(engine_error)?;
    let tls_files = config.tls_dir.as_ref().map(TlsFiles::new);
    let tls = match &tls_files {
        Some(files) => Some(files.server_config().map_err(engine_error)?),
        None => None,
    };
    // Its peers and its upstream's manager are of the same database: the same CA.
    if let Some(files) = &tls_files {
        stator_engine::tls::trust_by_default(files).map_err(engine_error)?;
    }
    read_secret(&config.secrets_dir, secret_keys::API_TOKEN).map_err(engine_error)?;

    let address = if config.listen_address.contains(':') {
        format!("[{}]:{}", config.listen_address, config.http_port)
    } else {
        format!("{}:{}", config.listen_address, config.http_port)
    };
    let listener =
        tokio::net::TcpListener::bind((config.listen_address.as_str(), config.http_port))
            .await
            .map_err(|source| InstanceError::Listen {
                instance: name.clone(),
                address: address.clone(),
                source,
            })?;
    tracing::info!(instance = %name, address = %address, tls = tls.is_some(), "instance manager listening");

    let status = Arc::new(InstanceStatus::new(name.clone()));
    status.set_query(fresh_query(engine.clone(), creds.clone()));
    let (commands_tx, commands_rx) = mpsc::channel(8);
    let lease = match mode {
        Mode::Leased => Some(self_fencing::SelfFencing::open(
            &name,
            &config.data_dir,
            config.peers.clone(),
            config.secrets_dir.clone(),
        )?),
        Mode::Plain | Mode::Managed => None,
    };
    let watchdog = match &lease {
        Some(l) => {
            let engine = engine.clone();
            let may_be_primary = Box::new(move || match engine.inspect_data_dir() {
                Ok(stator_engine::DataDirState::Ready(m)) => m.follows.is_none(),
                Ok(stator_engine::DataDirState::Empty) => false,
                Err(_) => true,
            });
            let thread = l
                .spawn_watchdog(status.clone(), config.data_dir.clone(), may_be_primary)
                .map_err(|e| InstanceError::Failed {
                    instance: name.clone(),
                    message: format!("cannot start the lease watchdog thread: {e}"),
                })?;
            Some((thread, tokio::spawn(l.clone().failsafe_forever())))
        }
        None => None,
    };

    let observer = tokio::spawn(supervisor::observe_forever(
        engine.clone(),
        creds.clone(),
        status.clone(),
        Duration::from_secs(1),
    ));
    let backups =
        backs_up.map(|pg| Arc::new(backups::Backups::new(pg, creds.clone(), status.clone())));
    let backup_watch = backups
        .clone()
        .map(|b| tokio::spawn(b.watch_forever(Duration::from_secs(2))));
    let binlogs = binlog_archiver(&config, backup.as_ref(), &status);
    let binlog_watch = binlogs.clone().map(|b| tokio::spawn(b.run_forever()));

    let (http_stop_tx, http_stop_rx) = tokio::sync::oneshot::channel::<()>();
    let endpoints = Endpoints {
        status: status.clone(),
        commands: commands_tx.clone(),
        secrets_dir: config.secrets_dir.clone(),
        engine: config.database.spec.engine,
        backup,
        backups,
        binlogs,
        lease: lease.clone(),
    };
    let app = match mode {
        Mode::Plain => http::router(endpoints),
        Mode::Managed | Mode::Leased => {
            http::router(endpoints.clone()).merge(managed::router(endpoints))
        }
    };
    let stopped = async move {
        let _ = http_stop_rx.await;
    };
    let http = match tls {
        Some(config) => {
            let listener = https::TlsListener::new(listener, config).map_err(|source| {
                InstanceError::Listen {
                    instance: name.clone(),
                    address: address.clone(),
                    source,
                }
            })?;
            tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(stopped)
                    .await;
            })
        }
        None => tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await;
        }),
    };

    let signals = tokio::spawn(forward_signals(commands_tx));
    let reaper = (std::process::id() == 1).then(|| tokio::spawn(reap_orphans_forever()));

    let supervisor = Supervisor {
        engine,
        creds,
        bootstrap: config.bootstrap.clone(),
        peers: config.peers.clone(),
        status: status.clone(),
        commands: commands_rx,
        stop_timeout: STOP_TIMEOUT,
    };
    let result = match mode {
        Mode::Plain => supervisor.run().await,
        Mode::Managed | Mode::Leased => {
            tracing::info!(instance = %name, "managed: the server starts only on orders");
            managed::ManagedSupervisor::new(supervisor, config.data_dir.clone())
                .with_lease(lease.clone())
                .run()
                .await
        }
    };
    if let Some(l) = &lease {
        l.stop();
    }
    if let Some((thread, failsafe)) = watchdog {
        failsafe.abort();
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }

    signals.abort();
    if let Some(reaper) = reaper {
        reaper.abort();
    }
    observer.abort();
    if let Some(watch) = backup_watch {
        watch.abort();
    }
    if let Some(watch) = binlog_watch {
        watch.abort();
    }
    status.close();
    let _ = http_stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(5), http).await;
    match &result {
        Ok(()) => tracing::info!(instance = %name, "instance manager stopped"),
        Err(e) => tracing::error!(error = %e, "instance manager failed"),
    }
    result
}

/// The binlog archiver of a MariaDB instance whose spec has a backup repository (local or S3).
fn binlog_archiver(
    config: &InstanceConfig,
    engine: Option<&Arc<MysqlFamily>>,
    status: &Arc<InstanceStatus>,
) -> Option<Arc<binlogs::BinlogArchiver>> {
    let db = &config.database;
    let engine = engine?;
    let path = stator_engine::postgres::backrest::repository_path_of(db, db.name())?;
    let store = match engine.repository_store(&path) {
        Ok(store) => store,
        Err(e) => {
            tracing::error!(error = %e, "the backup repository cannot be used: binary logs are not archived");
            return None;
        }
    };
    let timeout = db
        .spec
        .backup
        .as_ref()
        .and_then(|b| stator_api::duration::parse_duration(&b.archive_timeout))
        .unwrap_or(Duration::from_secs(60));
    Some(Arc::new(binlogs::BinlogArchiver::new(
        engine.clone(),
        status.clone(),
        store,
        (db.namespace().to_string(), db.name().to_string()),
        timeout,
    )))
}

/// How `/status?fresh=1` queries the server: one observation, within [`managed::FRESH_TIMEOUT`].
fn fresh_query<E: ServerEngine>(engine: Arc<E>, creds: Credentials) -> status::Query {
    Box::new(move || {
        let (engine, creds) = (engine.clone(), creds.clone());
        Box::pin(async move {
            match tokio::time::timeout(managed::FRESH_TIMEOUT, engine.observe(&creds)).await {
                Ok(Ok(observation)) => Ok(observation),
                Ok(Err(e)) => Err(format!("the server did not answer just now: {e}")),
                Err(_) => Err(format!(
                    "the server did not answer within {} ms just now",
                    managed::FRESH_TIMEOUT.as_millis()
                )),
            }
        })
    })
}

/// As PID 1 (a pod's entrypoint), waits for the orphans the kernel hands over, on every
/// SIGCHLD and every few seconds.
async fn reap_orphans_forever() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut child = signal(SignalKind::child()).ok();
    loop {
        match &mut child {
            Some(sig) => {
                let _ = tokio::time::timeout(Duration::from_secs(5), sig.recv()).await;
            }
            None => tokio::time::sleep(Duration::from_secs(5)).await,
        }
        let n = stator_engine::process::reap_orphans();
        if n > 0 {
            tracing::debug!(reaped = n, "reaped orphaned processes");
        }
    }
}

/// Turns SIGTERM and SIGINT into a shutdown request.
async fn forward_signals(commands: mpsc::Sender<Command>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: stopping the server"),
        _ = int.recv() => tracing::info!("SIGINT: stopping the server"),
    }
    let _ = commands.send(Command::Shutdown).await;
}

/// True when this process runs as root (and so must run the server as another user).
pub fn running_as_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}
