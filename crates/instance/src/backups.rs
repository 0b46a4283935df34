//! Backups of a PostgreSQL instance with pgBackRest (`spec.backup`): one at a time, on the
//! primary only, asked for over `POST /backups` (the local supervisor's schedule, `stator
//! backup create`). While the server runs it also watches the role: when the instance is a
//! primary it ties the repository to the cluster and creates the stanza; when it became one by
//! promotion, it starts a full backup on the new timeline. The facts (last backup, archive
//! state) go into `/status` under `backup`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use stator_api::Role;
use stator_api::instance::ServerState;
use stator_engine::postgres::backrest::{BackupKind, BackupOutcome};
use stator_engine::{Credentials, Postgres};

use crate::status::InstanceStatus;

/// What `/status` reports under `backup` (engine-neutral, shared with the runtimes).
pub use stator_api::backup_report::{ArchiveState, BackupReport as BackupFacts};

/// The backup runner of one instance.
pub struct Backups {
    engine: Arc<Postgres>,
    creds: Credentials,
    status: Arc<InstanceStatus>,
    slot: tokio::sync::Mutex<()>,
    stanza: tokio::sync::Mutex<()>,
    facts: Mutex<BackupFacts>,
}

impl Backups {
    pub fn new(engine: Arc<Postgres>, creds: Credentials, status: Arc<InstanceStatus>) -> Self {
        Backups {
            engine,
            creds,
            status,
            slot: tokio::sync::Mutex::new(()),
            stanza: tokio::sync::Mutex::new(()),
            facts: Mutex::new(BackupFacts::default()),
        }
    }

    pub fn facts(&self) -> BackupFacts {
        self.facts.lock().map(|f| f.clone()).unwrap_or_default()
    }

    fn update(&self, change: impl FnOnce(&mut BackupFacts)) {
        if let Ok(mut f) = self.facts.lock() {
            change(&mut f);
        }
    }

    fn role(&self) -> Option<Role> {
        let s = self.status.snapshot();
        (s.state == ServerState::Running)
            .then_some(s.observation.and_then(|o| o.role))
            .flatten()
    }

    /// Runs one backup now: refused unless this instance is the running primary, or while
    /// another runs. `kind` `None`: incremental (pgBackRest makes the first one full).
    pub async fn run(&self, kind: Option<BackupKind>) -> Result<BackupOutcome, String> {
        if self.role() != Some(Role::Primary) {
            return Err(
                "this instance is not the running primary; backups run on the primary".into(),
            );
        }
        let Ok(_slot) = self.slot.try_lock() else {
            return Err("a backup is already running on this instance".into());
        };
        if !self.facts().stanza_ready {
            self.ensure_stanza().await?;
        }
        self.update(|f| f.running = true);
        let result = self
            .engine
            .backup(kind.unwrap_or(BackupKind::Incr))
            .await
            .map_err(|e| e.to_string());
        self.update(|f| {
            f.running = false;
            match &result {
                Ok(outcome) => {
                    f.last_backup = Some(outcome.clone());
                    f.last_error = None;
                }
                Err(e) => f.last_error = Some(e.clone()),
            }
        });
        match &result {
            Ok(o) => {
                tracing::info!(label = %o.label, kind = %o.kind, seconds = o.duration_seconds, "backup done")
            }
            Err(e) => tracing::error!(error = %e, "backup failed"),
        }
        result
    }

    /// Creates the stanza, retried a few times: a concurrent `archive-push` holds the
    /// stanza's archive lock for a moment (pgBackRest error 050).
    async fn ensure_stanza(&self) -> Result<(), String> {
        let _one = self.stanza.lock().await;
        if self.facts().stanza_ready {
            return Ok(());
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.engine.stanza_create(&self.creds).await {
                Ok(()) => {
                    self.update(|f| f.stanza_ready = true);
                    return Ok(());
                }
                Err(e) if attempt < 10 => {
                    tracing::debug!(error = %e, attempt, "creating the pgBackRest stanza; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, "creating the pgBackRest stanza");
                    self.update(|f| f.last_error = Some(e.to_string()));
                    return Err(e.to_string());
                }
            }
        }
    }

    /// Watches the role and the archive: on a primary, the stanza; after a promotion, a full
    /// backup on the new timeline; every period, the archive facts.
    pub async fn watch_forever(self: Arc<Self>, period: Duration) {
        let mut last_role: Option<Role> = None;
        let mut looked_up_last_backup = false;
        loop {
            let role = self.role();
            if role == Some(Role::Primary) {
                if !self.facts().stanza_ready {
                    let _ = self.ensure_stanza().await;
                }
                if last_role == Some(Role::Replica) {
                    tracing::info!("promoted: starting a full backup on the new timeline");
                    let this = self.clone();
                    tokio::spawn(async move {
                        let _ = this.run(Some(BackupKind::Full)).await;
                    });
                }
                if !looked_up_last_backup {
                    // What the repository holds, once: a backup from before this manager
                    // started (or on the former primary) is the last backup too.
                    if let Ok(newest) = self.engine.newest_backup().await {
                        looked_up_last_backup = true;
                        self.update(|f| {
                            if f.last_backup.is_none() {
                                f.last_backup = newest;
                            }
                        });
                    }
                }
                if let Ok((last_success, failures, last_failure, last_wal)) =
                    self.engine.archiver(&self.creds).await
                {
                    let pending = self.engine.archive_pending();
                    let failing = last_failure > last_success;
                    let told = failing
                        .then(|| self.engine.last_archive_push_error())
                        .flatten();
                    self.update(|f| {
                        f.archive = ArchiveState {
                            last_success,
                            pending_files: pending.files,
                            pending_bytes: pending.bytes,
                            oldest_pending_since: pending.oldest_since,
                            failures: failures.max(0) as u64,
                            last_failure,
                            last_error: last_wal.filter(|_| failing).map(|w| match &told {
                                Some(why) => format!("archiving {w} failed: {why}"),
                                None => format!("archiving {w} failed; see the server log"),
                            }),
                            ..ArchiveState::default()
                        };
                    });
                }
            }
            let free = self.engine.free_bytes();
            self.update(|f| f.free_bytes = free);
            if role.is_some() {
                last_role = role;
            }
            tokio::time::sleep(period).await;
        }
    }
}
