//! The binary log archive of a MariaDB primary (`spec.backup`, a local or S3 repository): while this
//! instance is the running primary, every `archiveTimeout` with writes it closes the binary
//! log being written (`FLUSH LOCAL BINARY LOGS`) and archives every closed one not archived
//! yet, in its term ([`stator_engine::mysql_family::binlog_archive`]). The instance manager does
//! it, not the local supervisor, because only the server's own host reads its binary logs (in a
//! pod the data volume is the pod's).
//!
//! Binary logs are purged here, and only here (the server has no expiry; `spec.backup` refuses
//! one): after each pass, the oldest closed logs go (`PURGE BINARY LOGS TO`) while every one of
//! them is (a) archived in this term with the same SHA-256 as the file on the server, (b) wholly
//! inside the newest full backup of the repository (each of its GTIDs at or below the backup's
//! position in its domain), so a replica cloned from that backup, or one restarting from any
//! later point, finds what it needs on the server, and (c) not among the last
//! [`KEEP_CLOSED`] closed logs. The primary does not know a disconnected replica's position; a
//! connected one is protected by the server itself, which never purges the log a `Binlog Dump`
//! thread is reading nor any later one. No backup yet: nothing is purged.
//!
//! The state (`ArchiveState`) goes into `/status` under `backup.archive`, with what the
//! decision core needs to judge an overdue backup: the full backups are the runtime's (it
//! streams them into the repository), so the last one comes from the repository's manifests,
//! a backup runs while an unfinished one's stream still grows, and the free bytes are the data
//! volume's ([`backup_facts`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use stator_api::Role;
use stator_api::backup_report::{BackupOutcome, BackupReport};
use stator_api::instance::ServerState;
use stator_engine::MysqlFamily;
use stator_engine::mysql_family::binlog_archive::{self, ArchiveError, ArchiveState, LogRecord};
use stator_engine::mysql_family::repository::Manifest;
use stator_engine::mysql_family::{gtid, repository};
use stator_engine::object_store::Store;

use crate::status::InstanceStatus;

/// The archiver of one MariaDB instance.
pub struct BinlogArchiver {
    engine: Arc<MysqlFamily>,
    status: Arc<InstanceStatus>,
    /// The repository: a directory or a path in an S3 bucket.
    store: Arc<Store>,
    /// `namespace/name` of the database: the repository's marker must name it.
    owner: (String, String),
    timeout: Duration,
    state: Mutex<ArchiveState>,
    /// Last backup, a backup running, free bytes: `None` until first read.
    backups: Mutex<Option<BackupReport>>,
}

impl BinlogArchiver {
    pub fn new(
        engine: Arc<MysqlFamily>,
        status: Arc<InstanceStatus>,
        store: Store,
        owner: (String, String),
        timeout: Duration,
    ) -> Self {
        BinlogArchiver {
            engine,
            status,
            store: Arc::new(store),
            owner,
            timeout,
            state: Mutex::new(ArchiveState::default()),
            backups: Mutex::new(None),
        }
    }

    /// `backup` in `/status`: the archive and the full backups of the repository; `None`
    /// until the repository was read once (a report without its last backup would read as
    /// "never backed up", hence overdue).
    pub fn report(&self) -> Option<BackupReport> {
        let mut report = self.backups.lock().ok()?.clone()?;
        report.archive = self.state();
        Some(report)
    }

    /// Reads the repository's backups and the data volume's free bytes.
    async fn refresh_backups(&self) {
        let data_dir = self.engine.data_dir().to_path_buf();
        let window = (2 * self.timeout).max(BACKUP_STREAM_QUIET).as_secs_f64();
        let read = async {
            let manifests = repository::list(&*self.store).await?;
            let unfinished = repository::unfinished(&*self.store).await;
            let free = stator_engine::postgres::backrest::free_bytes(&data_dir);
            Ok::<_, String>(backup_facts(
                &manifests,
                &unfinished,
                repository::now(),
                window,
                free,
            ))
        };
        // Bounded: an unreachable store must not hold up archiving.
        match tokio::time::timeout(STORE_READ_TIMEOUT, read).await {
            Ok(Ok(facts)) => {
                if let Ok(mut r) = self.backups.lock() {
                    *r = Some(facts);
                }
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "reading the repository's backups"),
            Err(_) => tracing::warn!("reading the repository's backups: no answer within 10 s"),
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

    /// Whether this instance is the running primary now; `before`: what the last pass said.
    fn is_running_primary(&self, before: bool) -> bool {
        let s = self.status.snapshot();
        let observed = s.observation.is_some();
        acts_as_primary(
            s.state,
            s.observation.and_then(|o| o.role),
            observed,
            before,
        )
    }

    /// Runs while the manager runs; archives only while this instance is the running primary.
    pub async fn run_forever(self: Arc<Self>) {
        let mut flushed_at: Option<(Instant, String)> = None;
        let mut archived: HashSet<(u64, String)> = HashSet::new();
        let mut pass: u64 = 0;
        let mut primary = false;
        loop {
            // The repository's backups: at once, then every few seconds, on every instance
            // (the next primary reports them from its first pass).
            if pass.is_multiple_of(BACKUPS_EVERY) {
                self.refresh_backups().await;
            }
            pass += 1;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now_primary = self.is_running_primary(primary);
            if now_primary != primary {
                tracing::info!(
                    primary = now_primary,
                    "the binlog archiver {}",
                    if now_primary {
                        "starts: this instance is the running primary"
                    } else {
                        "pauses: this instance is not the running primary"
                    }
                );
                primary = now_primary;
            }
            if !primary {
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
        // Writes since the last flush (or since this primary took office) and archiveTimeout
        // passed: close the current binary log. Before the repository is touched, so that
        // while it is unreachable the closed logs pile up on the server and show as pending.
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
        let pending = |term: Option<u64>| -> Vec<&(String, u64)> {
            closed
                .iter()
                .filter(|(name, _)| match term {
                    Some(t) => !archived.contains(&(t, name.clone())),
                    None => !archived.iter().any(|(_, n)| n == name),
                })
                .collect()
        };
        let show = |waiting: &[&(String, u64)]| {
            self.update(|s| {
                s.pending_files = waiting.len() as u64;
                s.pending_bytes = waiting.iter().map(|(_, size)| size).sum();
            });
        };
        // As far as known before the repository answers: not archived in any term.
        show(&pending(None));
        let (id, instance) = (
            self.engine.server_id(),
            self.engine.instance_name().to_string(),
        );
        let (namespace, name) = &self.owner;
        binlog_archive::claim_repository(&*self.store, namespace, name).await?;
        let term =
            binlog_archive::ensure_term(&*self.store, id, &instance, &server.replicated).await?;
        self.update(|s| s.term = Some(term));
        let waiting = pending(Some(term));
        show(&waiting);
        for (name, size) in waiting {
            let (source, id) = (self.engine.binlog_path(name), self.engine.server_id());
            let result = binlog_archive::archive_log(&*self.store, term, id, &source).await;
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
        // A purge that fails drops nothing: the logs stay until the next pass. Bounded, so
        // that it never holds up archiving.
        match tokio::time::timeout(PURGE_TIMEOUT, self.purge(term, &server.files, archived)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "purging the archived binary logs"),
            Err(_) => tracing::warn!("purging the archived binary logs: no answer within 10 s"),
        }
        Ok(())
    }

    /// Purges the closed binary logs [`purge_to`] allows.
    async fn purge(
        &self,
        term: u64,
        files: &[(String, u64)],
        archived: &HashSet<(u64, String)>,
    ) -> Result<(), String> {
        let closed = &files[..files.len().saturating_sub(1)];
        if closed.len() <= KEEP_CLOSED
            || !closed
                .iter()
                .take(closed.len() - KEEP_CLOSED)
                .any(|(name, _)| archived.contains(&(term, name.clone())))
        {
            return Ok(());
        }
        let id = self.engine.server_id();
        let backup = repository::list(&*self.store).await?.pop().map(|m| m.gtid);
        let records: HashMap<String, LogRecord> = binlog_archive::read_logs(&*self.store)
            .await?
            .into_iter()
            .filter(|r| r.term == term && r.server_id == id)
            .map(|r| (r.file.clone(), r))
            .collect();
        let Some(backup) = backup else {
            return Ok(());
        };
        let names: Vec<String> = files.iter().map(|(n, _)| n.clone()).collect();
        let verified: HashMap<String, LogRecord> = records
            .into_iter()
            .filter(|(name, _)| archived.contains(&(term, name.clone())))
            .collect();
        let Some(to) = purge_to(&names, &verified, &backup)? else {
            return Ok(());
        };
        self.engine
            .purge_binlogs_to(&to)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(to = %to, backup = %backup, "archived binary logs purged");
        Ok(())
    }
}

/// Whether the archiver acts for the running primary. The server must be running; its role is
/// the last observation's. Without an observation (a `/status?fresh=1` query that got no
/// answer within its 2 s clears it until the next periodic observation) the role is what it
/// was (`before`): a slow answer is no evidence of a role change, and pausing on it stalled
/// the archive after a promotion, silently, whenever fresh queries kept timing out. A
/// demotion always shows: the server is stopped (not running) or observed as a replica.
pub fn acts_as_primary(
    state: ServerState,
    role: Option<Role>,
    observed: bool,
    before: bool,
) -> bool {
    if state != ServerState::Running {
        return false;
    }
    if observed {
        role == Some(Role::Primary)
    } else {
        before
    }
}

/// Passes (seconds) between two reads of the repository's backups.
const BACKUPS_EVERY: u64 = 5;

/// How long one purge may take.
const PURGE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one read of the repository's backups may take.
const STORE_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A backup whose stream grew this recently runs (at least this long, or 2×archiveTimeout).
const BACKUP_STREAM_QUIET: Duration = Duration::from_secs(60);

/// The backup facts of a MariaDB repository: the last complete backup (the newest manifest),
/// whether one runs (an unfinished backup, one without a manifest, whose stream was written
/// within `window` seconds of `now`: an abandoned one does not hide an overdue backup for
/// long), and the data volume's free bytes. `unfinished` holds the modification times of the
/// unfinished backups' streams.
pub fn backup_facts(
    manifests: &[Manifest],
    unfinished: &[f64],
    now: f64,
    window: f64,
    free_bytes: Option<u64>,
) -> BackupReport {
    let last_backup = manifests
        .iter()
        .max_by(|a, b| a.stopped.total_cmp(&b.stopped))
        .map(|m| BackupOutcome {
            label: m.id.clone(),
            kind: "full".into(),
            started: m.started as i64,
            duration_seconds: m.stopped - m.started,
            size: m.size,
        });
    BackupReport {
        stanza_ready: true,
        last_backup,
        running: unfinished.iter().any(|&at| now - at <= window),
        free_bytes,
        ..Default::default()
    }
}

/// Closed binary logs always kept on the server, archived or not: slack for a replica that
/// restarts a little behind.
pub const KEEP_CLOSED: usize = 2;

/// The binary log to `PURGE BINARY LOGS TO` (every log before it goes), or `None`. `files` are
/// the server's logs oldest first, the last one being written; `verified` holds the archive
/// records of the closed logs archived in this term with the file's own SHA-256 (a log not in
/// it is not, or not verifiably, archived); `backup` is the newest full backup's GTID position. Only a prefix of
/// logs each archived, each wholly inside the backup, and none of the last [`KEEP_CLOSED`]
/// closed ones goes: a log that may not go keeps every later one too.
pub fn purge_to(
    files: &[String],
    verified: &HashMap<String, LogRecord>,
    backup: &str,
) -> Result<Option<String>, String> {
    let position: BTreeMap<u32, u64> = gtid::parse_binlog_state(backup)
        .map_err(|e| format!("the newest backup's GTID position {backup:?}: {e}"))?
        .into_iter()
        .fold(BTreeMap::new(), |mut m, g| {
            let seq = m.entry(g.domain).or_insert(0);
            *seq = (*seq).max(g.sequence);
            m
        });
    let closed = files.len().saturating_sub(1);
    let mut purged = 0;
    for name in files.iter().take(closed.saturating_sub(KEEP_CLOSED)) {
        let Some(record) = verified.get(name) else {
            break;
        };
        let inside = record
            .transactions
            .iter()
            .all(|&(domain, _, sequence, _)| position.get(&domain).is_some_and(|&s| sequence <= s));
        if !inside {
            break;
        }
        purged += 1;
    }
    Ok((purged > 0).then(|| files[purged].clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(file: &str, sequences: &[u64]) -> LogRecord {
        LogRecord {
            term: 1,
            server_id: 1000,
            file: file.into(),
            size: 1,
            sha256: String::new(),
            source_size: 1,
            source_sha256: String::new(),
            closed: 0.0,
            transactions: sequences.iter().map(|&q| (0, 1000, q, 0)).collect(),
            parts: 1,
        }
    }

    #[test]
    fn an_unanswered_fresh_query_does_not_pause_the_archiver_but_a_stop_or_a_demotion_does() {
        use ServerState::{Running, Stopped};
        let primary = Some(Role::Primary);
        assert!(acts_as_primary(Running, primary, true, false));
        // No observation now (a fresh query timed out): as before.
        assert!(acts_as_primary(Running, None, false, true));
        assert!(!acts_as_primary(Running, None, false, false));
        // Observed as a replica, or not running: never.
        assert!(!acts_as_primary(Running, Some(Role::Replica), true, true));
        assert!(!acts_as_primary(Stopped, primary, true, true));
    }

    #[test]
    fn the_last_backup_is_the_newest_manifest_and_only_a_growing_stream_runs() {
        let manifest = |id: &str, started: f64| Manifest {
            id: id.into(),
            source: "db-1".into(),
            gtid: "0-1000-5".into(),
            started,
            stopped: started + 30.0,
            size: 123,
            sha256: String::new(),
            object: repository::OBJECT.into(),
            parts: 1,
        };
        let now = 10_000.0;
        let r = backup_facts(
            &[manifest("B", 5_000.0), manifest("A", 1_000.0)],
            &[now - 200.0],
            now,
            60.0,
            Some(7),
        );
        let last = r.last_backup.unwrap();
        assert_eq!((last.label.as_str(), last.started), ("B", 5_000));
        assert_eq!((last.duration_seconds, last.size), (30.0, 123));
        // An unfinished backup written 200 s ago was abandoned: none runs.
        assert!(!r.running);
        assert_eq!(r.free_bytes, Some(7));
        // One written 10 s ago runs.
        assert!(backup_facts(&[], &[now - 10.0], now, 60.0, None).running);
        // No backup at all: no last backup, which the decision core judges due at once.
        assert_eq!(backup_facts(&[], &[], now, 60.0, None).last_backup, None);
    }

    #[test]
    fn only_archived_logs_inside_the_newest_backup_and_before_the_kept_ones_are_purged() {
        let files: Vec<String> = (1..=7).map(|i| format!("binlog.00000{i}")).collect();
        let all: HashMap<String, LogRecord> = (1..=6u64)
            .map(|i| {
                let name = &files[i as usize - 1];
                (name.clone(), record(name, &[2 * i - 1, 2 * i]))
            })
            .collect();
        let to = |verified: &HashMap<String, LogRecord>, backup: &str| {
            purge_to(&files, verified, backup).unwrap()
        };
        // The backup holds through sequence 6: logs 1..3 go, log 4 (7, 8) stays.
        assert_eq!(to(&all, "0-1000-6"), Some("binlog.000004".into()));
        // A log half inside the backup stays, and so does every later one.
        assert_eq!(to(&all, "0-1000-5"), Some("binlog.000003".into()));
        // Everything inside the backup: still the last two closed logs (5, 6) and the one
        // being written (7) stay.
        assert_eq!(to(&all, "0-1000-99"), Some("binlog.000005".into()));
        // A backup of another domain holds none of them.
        assert_eq!(to(&all, "1-1000-99"), None);
        // An unarchived (or not verifiably archived) log stays, and so does every later one.
        let mut gap = all.clone();
        gap.remove("binlog.000002");
        assert_eq!(to(&gap, "0-1000-99"), Some("binlog.000002".into()));
        assert_eq!(to(&HashMap::new(), "0-1000-99"), None);
        // Too few closed logs: nothing.
        assert_eq!(purge_to(&files[..3], &all, "0-1000-99").unwrap(), None);
        // An unreadable position is an error naming it, never a purge.
        let err = purge_to(&files, &all, "garbage").unwrap_err();
        assert!(err.contains("\"garbage\""), "{err}");
    }
}
