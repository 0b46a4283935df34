//! Seeding a replica with a physical copy of its upstream.
//!
//! MariaDB: `mariadb-backup` reads the data files, so it must run where the upstream's data
//! directory is. The upstream's instance manager serves `GET /backup` (bearer token): it runs
//! `mariadb-backup --backup --stream=xbstream` on its own data directory, connected to its own
//! server over the socket as the server's OS user (unix_socket, no password), and streams the
//! output. The cloning side ([`MysqlFamily::receive_backup`]) pipes the response into
//! `mbstream -x`, runs `mariadb-backup --prepare`, and reads the GTID position of the copy from
//! its binlog info. The same works locally and between pods; no data directory is ever read
//! across instances.
//!
//! MySQL 8: the clone plugin pulls the copy through the upstream server itself
//! ([`MysqlFamily::clone_with_plugin`]).

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use mysql_async::Conn;
use stator_api::instance::Endpoint;
use tokio::io::AsyncWriteExt;

use crate::credentials::Credentials;
use crate::error::EngineError;
use crate::manager_client;
use crate::mysql_family::config::REPLICATION_USER;
use crate::mysql_family::{MysqlFamily, connect};
use crate::process::PipedTool;
use crate::task::AbortOnDrop;

/// The path of the backup endpoint on an instance manager.
pub const BACKUP_PATH: &str = "/backup";
/// The query that asks `/backup` for the stream compressed where it is taken
/// ([`CompressedBackupStream`]), the copy's GTID position in trailer [`GTID_TRAILER`].
pub const COMPRESSED_QUERY: &str = "compression=zstd";
/// The trailer of a compressed `/backup` answer: the copy's GTID position, known only once
/// the stream has ended.
pub const GTID_TRAILER: &str = "stator-backup-gtid";

/// A backup being streamed out: read `stdout` to the end, then [`BackupStream::finish`].
#[derive(Debug)]
pub struct BackupStream {
    pub stdout: tokio::process::ChildStdout,
    tool: PipedTool,
    /// A synchronous primary: [`release_commit_barrier`], for as long as the backup runs.
    _barrier: Option<AbortOnDrop>,
}

impl BackupStream {
    /// Waits for mariadb-backup; an error when it failed (the stream is then incomplete).
    pub async fn finish(self) -> Result<(), EngineError> {
        self.tool.finish().await
    }
}

/// How often the commit barrier of a running backup is checked, and how long a client must have
/// waited for an acknowledgement before it is cut.
const BARRIER_CHECK: Duration = Duration::from_millis(500);
const ACK_WAIT_CUT_SECONDS: u32 = 2;

/// The client sessions to cut: each has waited [`ACK_WAIT_CUT_SECONDS`] or more for a
/// semi-synchronous acknowledgement while no semi-synchronous replica is connected and the
/// backup's `BACKUP STAGE BLOCK_COMMIT` waits for their commits.
const STUCK_ACK_WAITS: &str = "SELECT p.ID FROM information_schema.PROCESSLIST p \
     WHERE p.STATE = 'Waiting for semi-sync ACK from slave' AND p.TIME >= ? \
     AND (SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS \
          WHERE VARIABLE_NAME = 'RPL_SEMI_SYNC_MASTER_CLIENTS') = '0' \
     AND EXISTS (SELECT 1 FROM information_schema.PROCESSLIST b \
                 WHERE b.INFO LIKE 'BACKUP STAGE BLOCK_COMMIT%')";

/// Synchronous mode, while a backup of this server runs: a commit that waits for an
/// acknowledgement no replica can give (none is connected) holds up mariadb-backup's
/// `BACKUP STAGE BLOCK_COMMIT`, and with it the clone that would bring a replica back to give
/// it: a deadlock that lasts until the semi-sync timeout (a day). Found with a 2-instance
/// synchronous MariaDB whose only replica was rebuilt after a failover (it held the frozen
/// primary's unacknowledged tail) while a client wrote. Such a client session is cut
/// (`KILL CONNECTION`): its write was never acknowledged, which synchronous mode allows to be
/// kept or lost, and the barrier passes. Nothing is cut while a replica is connected.
async fn release_commit_barrier(admin: mysql_async::OptsBuilder, instance: String) {
    use mysql_async::prelude::Queryable;
    let mut session: Option<Conn> = None;
    loop {
        tokio::time::sleep(BARRIER_CHECK).await;
        if session.is_none() {
            session = connect(admin.clone()).await.ok();
        }
        let Some(c) = session.as_mut() else {
            continue;
        };
        let stuck: Result<Vec<u64>, _> = c.exec(STUCK_ACK_WAITS, (ACK_WAIT_CUT_SECONDS,)).await;
        let Ok(stuck) = stuck else {
            session = None;
            continue;
        };
        for id in stuck {
            // The id comes from the server as a number: nothing else goes into the statement.
            if c.query_drop(format!("KILL CONNECTION {id}")).await.is_ok() {
                tracing::warn!(
                    instance = %instance,
                    session = id,
                    "cut a client session that waited for a semi-synchronous acknowledgement no \
                     replica can give (none is connected): its write is not acknowledged, and \
                     the backup that brings a replica back needed its commit to end"
                );
            }
        }
    }
}

/// A full backup compressed where it is taken, for a repository: `mariadb-backup --backup
/// --stream=xbstream | zstd -q -c -3`, read `stdout` (zstd's) to the end, then
/// [`CompressedBackupStream::finish`]. Only the compressed stream leaves the instance (an eighth
/// of the copy or less, measured with `stator bench backup --engine mariadb`); the copy's GTID
/// position is read from the stream on its way into zstd, since the compressed stream that
/// leaves cannot be read without undoing the compression.
#[derive(Debug)]
pub struct CompressedBackupStream {
    pub stdout: tokio::process::ChildStdout,
    zstd: PipedTool,
    /// Copies mariadb-backup's stream into zstd; ends with the copy's GTID position. Aborted
    /// (and mariadb-backup killed with it) when the stream is dropped.
    pump: AbortOnDrop<Result<String, EngineError>>,
}

impl CompressedBackupStream {
    /// Waits for both tools: the copy's GTID position, or why the stream is incomplete.
    pub async fn finish(mut self) -> Result<String, EngineError> {
        let pumped = (&mut self.pump.0)
            .await
            .map_err(|e| EngineError::State(format!("the backup's copy task ended: {e}")))?;
        let zipped = self.zstd.finish().await;
        let gtid = pumped?;
        zipped?;
        Ok(gtid)
    }
}

/// How much of mariadb-backup's stream is read at a time.
const PUMP_CHUNK: usize = 256 * 1024;

impl MysqlFamily {
    /// [`Self::start_backup_stream`], compressed here by `zstd -3` (the repository's format).
    pub fn start_compressed_backup_stream(&self) -> Result<CompressedBackupStream, EngineError> {
        use crate::mysql_family::repository::{XbstreamScanner, ZSTD};
        use tokio::io::AsyncReadExt;
        let backup = self.start_backup_stream()?;
        let mut zstd = self
            .invocation(
                std::path::PathBuf::from(ZSTD),
                vec!["-q".into(), "-c".into(), "-3".into()],
            )
            .spawn_piped(true, true)?;
        let mut sink = zstd
            .child
            .stdin
            .take()
            .ok_or_else(|| EngineError::State("zstd has no input pipe".into()))?;
        let stdout = zstd
            .child
            .stdout
            .take()
            .ok_or_else(|| EngineError::State("zstd has no output pipe".into()))?;
        let pump = tokio::spawn(async move {
            let mut backup = backup;
            let mut scanner = XbstreamScanner::default();
            let mut buf = vec![0u8; PUMP_CHUNK];
            let mut copied = 0u64;
            loop {
                let n = backup
                    .stdout
                    .read(&mut buf)
                    .await
                    .map_err(|e| EngineError::io(ZSTD, "read the backup stream for", e))?;
                if n == 0 {
                    break;
                }
                scanner.feed(&buf[..n]);
                sink.write_all(&buf[..n])
                    .await
                    .map_err(|e| EngineError::io(ZSTD, "feed", e))?;
                copied += n as u64;
            }
            drop(sink);
            backup.finish().await?;
            scanner.gtid().ok_or_else(|| {
                EngineError::State(format!(
                    "the backup stream ({copied} bytes) holds no mariadb_backup_binlog_info: incomplete"
                ))
            })
        });
        Ok(CompressedBackupStream {
            stdout,
            zstd,
            pump: AbortOnDrop(pump),
        })
    }

    /// Starts `mariadb-backup --backup --stream=xbstream` of this instance's data directory.
    pub fn start_backup_stream(&self) -> Result<BackupStream, EngineError> {
        if self.dialect.engine != stator_api::Engine::Mariadb {
            return Err(EngineError::State(
                "a MySQL replica clones with the clone plugin, not from /backup".into(),
            ));
        }
        let mut datadir = OsString::from("--datadir=");
        datadir.push(&self.data_dir);
        let mut socket = OsString::from("--socket=");
        socket.push(self.socket());
        let mut target = OsString::from("--target-dir=");
        target.push(self.run_dir.join("backup-tmp"));
        let mut tmpdir = OsString::from("--tmpdir=");
        tmpdir.push(&self.run_dir);
        let args: Vec<OsString> = vec![
            "--no-defaults".into(),
            "--backup".into(),
            "--stream=xbstream".into(),
            datadir,
            socket,
            format!("--user={}", self.user.name).into(),
            target,
            tmpdir,
        ];
        let mut tool = self
            .invocation(self.binaries.tool("mariadb-backup")?, args)
            .spawn_piped(false, true)?;
        let stdout = tool
            .child
            .stdout
            .take()
            .ok_or_else(|| EngineError::State("mariadb-backup has no output pipe".into()))?;
        // Only a primary waits for acknowledgements (a replica's backup has nothing to cut).
        let primary = self.follows().is_none();
        let barrier = (self.spec.replication.synchronous && primary).then(|| {
            AbortOnDrop(tokio::spawn(release_commit_barrier(
                self.admin_opts(),
                self.instance.clone(),
            )))
        });
        Ok(BackupStream {
            stdout,
            tool,
            _barrier: barrier,
        })
    }

    /// Fills `staging` with a prepared copy of `upstream`, streamed from its instance manager,
    /// and records the copy's GTID position as where replication starts.
    pub(crate) async fn receive_backup(
        &self,
        upstream: &Endpoint,
        staging: &Path,
    ) -> Result<(), EngineError> {
        let port = self.upstream_manager_port(upstream)?;
        let token = self.api_token()?;
        let mut target = OsString::from("--directory=");
        target.push(staging);
        let mut unpack = self
            .invocation(self.binaries.tool("mbstream")?, vec!["-x".into(), target])
            .spawn_piped(true, false)?;
        let sink = unpack
            .child
            .stdin
            .take()
            .ok_or_else(|| EngineError::State("mbstream has no input pipe".into()))?;
        tracing::info!(upstream = %upstream.instance, host = %upstream.host, port, "receiving a backup stream");
        let fetched = fetch_backup(
            &upstream.host,
            port,
            BACKUP_PATH,
            token.expose(),
            sink,
            "mbstream",
        )
        .await;
        let unpacked = unpack.finish().await;
        fetched?;
        unpacked?;
        let mut target = OsString::from("--target-dir=");
        target.push(staging);
        self.invocation(
            self.binaries.tool("mariadb-backup")?,
            vec!["--no-defaults".into(), "--prepare".into(), target],
        )
        .run()
        .await?;
        let mut gtid = String::new();
        for name in crate::mariadb::BACKUP_BINLOG_INFO {
            if let Ok(text) = std::fs::read_to_string(staging.join(name)) {
                gtid = crate::mariadb::gtid_of_backup(&text);
                break;
            }
        }
        // Validate: it goes into SET GLOBAL gtid_slave_pos at the first start.
        let position: stator_api::position::MariadbGtidPosition = gtid.parse()?;
        self.user.write_file(
            &staging.join(super::START_POSITION_FILE),
            &position.to_string(),
            0o600,
        )?;
        tracing::info!(upstream = %upstream.instance, gtid = %position, "backup prepared");
        Ok(())
    }

    /// MySQL: initializes `staging`, starts it privately and pulls the upstream's data into it
    /// with `CLONE INSTANCE FROM`; the server stops itself when the copy is in place.
    pub(crate) async fn clone_with_plugin(
        &self,
        upstream: &Endpoint,
        creds: &Credentials,
        staging: &Path,
    ) -> Result<(), EngineError> {
        // The clone statements name the CA the donor is verified against.
        if let Some(tls) = &self.tls {
            tls.install(&self.user)?;
        }
        let mut datadir = OsString::from("--datadir=");
        datadir.push(staging);
        self.invocation(
            self.binaries.server.clone(),
            vec![
                "--no-defaults".into(),
                "--initialize-insecure".into(),
                format!("--user={}", self.user.name).into(),
                datadir.clone(),
            ],
        )
        .run()
        .await?;
        let mut socket = OsString::from("--socket=");
        socket.push(self.socket());
        let mut server = self
            .invocation(
                self.binaries.server.clone(),
                vec![
                    "--no-defaults".into(),
                    datadir,
                    socket,
                    "--skip-networking".into(),
                    "--plugin-load-add=clone.so".into(),
                ],
            )
            .spawn_server(staging)?;
        let mut conn: Option<Conn> = None;
        for _ in 0..600 {
            if let Ok(c) = self.connect_admin().await {
                conn = Some(c);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some(mut conn) = conn else {
            server
                .stop(
                    nix::sys::signal::Signal::SIGTERM,
                    nix::sys::signal::Signal::SIGKILL,
                    Duration::from_secs(30),
                )
                .await;
            return Err(EngineError::State(
                "the recipient server did not start for the clone".into(),
            ));
        };
        let mut result = Ok(());
        for statement in crate::mysql::clone_statements(
            upstream,
            REPLICATION_USER,
            &creds.replication,
            self.tls_paths().as_ref(),
        ) {
            if let Err(e) = Self::exec(&mut conn, "cloning the upstream", &statement)
                .await
                .map_err(|e| e.without(creds.replication.expose()))
            {
                // The server restarts once CLONE is done: without a supervising mysqld_safe it
                // exits, ending the connection or answering 3707 (restart failed).
                let restarted = match &e {
                    EngineError::Connect(_) => true,
                    EngineError::Sql { message, .. } => message.ends_with("(3707)"),
                    _ => false,
                };
                if !restarted {
                    result = Err(e);
                }
                break;
            }
        }
        drop(conn);
        server
            .stop(
                nix::sys::signal::Signal::SIGTERM,
                nix::sys::signal::Signal::SIGKILL,
                Duration::from_secs(60),
            )
            .await;
        result
    }
}

/// GETs `path` (the backup stream, plain or compressed) from an instance manager (over TLS when
/// the database has it) and writes it into `sink` (program or store `reader`), closing it at
/// the end. The bytes received, and the answer, whose trailers can be read now.
pub(crate) async fn fetch_backup(
    host: &str,
    port: u16,
    path: &str,
    token: &str,
    mut sink: impl tokio::io::AsyncWrite + Unpin,
    reader: &str,
) -> Result<(u64, manager_client::Streaming), EngineError> {
    let failed = |message: String| {
        EngineError::Connect(format!("backup stream from {host}:{port}{path}: {message}"))
    };
    let mut answer =
        manager_client::get_stream(host, port, path, Some(token), Duration::from_secs(10))
            .await
            .map_err(|e| failed(e.detail()))?;
    if !(200..300).contains(&answer.status) {
        let status = answer.status;
        let text = answer.text().await;
        return Err(failed(format!("HTTP {status}: {text}")));
    }
    let mut received: u64 = 0;
    while let Some(data) = answer.chunk().await {
        let data = data.map_err(|e| {
            failed(format!(
                "interrupted after {received} bytes: {}",
                e.detail()
            ))
        })?;
        received += data.len() as u64;
        sink.write_all(&data)
            .await
            .map_err(|e| failed(format!("{reader} stopped reading: {e}")))?;
    }
    sink.shutdown().await.ok();
    drop(sink);
    tracing::info!(bytes = received, "backup stream received");
    Ok((received, answer))
}
