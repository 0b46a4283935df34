//! The binary log archive of a MariaDB primary (`spec.backup`, local repository): while this
//! instance is the running primary, every `archiveTimeout` with writes it closes the binary
//! log being written (`FLUSH LOCAL BINARY LOGS`) and archives every closed one not archived
//! yet, in its term ([`stator_engine::mysql_family::binlog_archive`]). The instance manager does
//! it, not the local supervisor, because only the server's own host reads its binary logs (in a
//! pod the data volume is the pod's). Binary logs are never purged here: the server keeps them
//! (no expiry; `spec.backup` refuses one), so none is dropped before it is archived.
//!
//! The state (`ArchiveState`) goes into `/status` under `backup.archive`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stator_api::Role;
use stator_api::instance::ServerState;
use stator_engine::MysqlFamily;
use stator_engine::mysql_family::binlog_archive::{self, ArchiveError, ArchiveState};

use crate::status::InstanceStatus;

/// The archiver of one MariaDB instance.
pub struct BinlogArchiver {
    engine: Arc<MysqlFamily>,
    status: Arc<InstanceStatus>,
    repository: PathBuf,
    /// `namespace/name` of the database: the repository's marker must name it.
    owner: (String, String),
    timeout: Duration,
    state: Mutex<ArchiveState>,
}

impl BinlogArchiver {
    pub fn new(
        engine: Arc<MysqlFamily>,
        status: Arc<InstanceStatus>,
        repository: PathBuf,
        owner: (String, String),
        timeout: Duration,
    ) -> Self {
        BinlogArchiver {
            engine,
            status,
            repository,
            owner,
            timeout,
            state: Mutex::new(ArchiveState::default()),
        }
    }

    pub fn state(&self) -> ArchiveState {
        self.state.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn update(&self, change: impl FnOnce(&mut ArchiveState)) {
        if let Ok(mut s) = self.state.lock() {
            change(&mut s);
        }
    }

    fn is_running_primary(&self) -> bool {
        let s = self.status.snapshot();
        s.state == ServerState::Running && s.observation.and_then(|o| o.role) == Some(Role::Primary)
    }

    /// Runs while the manager runs; archives only while this instance is the running primary.
    pub async fn run_forever(self: Arc<Self>) {
        let mut flushed_at: Option<(Instant, String)> = None;
        let mut archived: HashSet<(u64, String)> = HashSet::new();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if !self.is_running_primary() {
                flushed_at = None;
                continue;
            }
            if let Err(e) = self.tick(&mut flushed_at, &mut archived).await {
                tracing::warn!(error = %e, "archiving binary logs");
                self.update(|s| {
                    s.failures += 1;
                    s.last_failure = Some(stator_engine::mysql_family::repository::now());
                    s.last_error = Some(e);
                });
            }
        }
    }

    async fn tick(
        &self,
        flushed_at: &mut Option<(Instant, String)>,
        archived: &mut HashSet<(u64, String)>,
    ) -> Result<(), String> {
        let server = self
            .engine
            .server_binlogs()
            .await
            .map_err(|e| e.to_string())?;
        let (repository, id, instance, replicated) = (
            self.repository.clone(),
            self.engine.server_id(),
            self.engine.instance_name().to_string(),
            server.replicated.clone(),
        );
        let (namespace, name) = self.owner.clone();
        let term = tokio::task::spawn_blocking(move || {
            binlog_archive::claim_repository(&repository, &namespace, &name)?;
            binlog_archive::ensure_term(&repository, id, &instance, &replicated)
        })
        .await
        .map_err(|e| e.to_string())??;
        self.update(|s| s.term = Some(term));
        // Writes since the last flush (or since this primary took office) and archiveTimeout
        // passed: close the current binary log.
        let due = match flushed_at {
            None => !server.logged.is_empty(),
            Some((at, logged)) => *logged != server.logged && at.elapsed() >= self.timeout,
        };
        let server = if due {
            self.engine
                .flush_binlogs()
                .await
                .map_err(|e| e.to_string())?;
            *flushed_at = Some((Instant::now(), server.logged.clone()));
            self.engine
                .server_binlogs()
                .await
                .map_err(|e| e.to_string())?
        } else {
            server
        };
        let closed = &server.files[..server.files.len().saturating_sub(1)];
        let waiting: Vec<&(String, u64)> = closed
            .iter()
            .filter(|(name, _)| !archived.contains(&(term, name.clone())))
            .collect();
        self.update(|s| {
            s.pending_files = waiting.len() as u64;
            s.pending_bytes = waiting.iter().map(|(_, size)| size).sum();
        });
        for (name, size) in waiting {
            let (repository, source, id) = (
                self.repository.clone(),
                self.engine.binlog_path(name),
                self.engine.server_id(),
            );
            let result = tokio::task::spawn_blocking(move || {
                binlog_archive::archive_log(&repository, term, id, &source)
            })
            .await
            .map_err(|e| e.to_string())?;
            match result {
                Ok(record) => {
                    archived.insert((term, name.clone()));
                    let last = record
                        .as_ref()
                        .and_then(|r| r.transactions.last())
                        .map(|&(d, s, q, _)| format!("{d}-{s}-{q}"));
                    if record.is_some() {
                        tracing::info!(file = %name, term, "binary log archived");
                    }
                    self.update(|s| {
                        s.last_success = Some(stator_engine::mysql_family::repository::now());
                        s.pending_files = s.pending_files.saturating_sub(1);
                        s.pending_bytes = s.pending_bytes.saturating_sub(*size);
                        if record.is_some() {
                            s.archived_files += 1;
                        }
                        if last.is_some() {
                            s.last_gtid = last;
                        }
                        s.failing = None;
                    });
                }
                Err(ArchiveError::Conflict(e)) => {
                    tracing::error!(error = %e, "ArchiveFailing");
                    self.update(|s| {
                        s.failing = Some(e.clone());
                        s.failures += 1;
                        s.last_error = Some(e.clone());
                    });
                    return Ok(());
                }
                Err(ArchiveError::Failed(e)) => return Err(e),
            }
        }
        Ok(())
    }
}
