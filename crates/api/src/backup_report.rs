//! What an instance manager reports of its backups and its archive (`backup` in `/status`):
//! the facts the decision core judges ([`crate`]'s users: `control::backup_health`) and
//! `stator status` and `/metrics` show. Engine-neutral: PostgreSQL's WAL archive (pgBackRest
//! `archive-push`) and the MySQL family's binlog archive report into the same
//! [`ArchiveState`].

use serde::{Deserialize, Serialize};

/// The archive (WAL segments or binlogs) as the primary's instance manager sees it. Times are
/// seconds since the Unix epoch.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveState {
    /// The last file that reached the repository.
    #[serde(default)]
    pub last_success: Option<f64>,
    /// Files closed and waiting to be archived (PostgreSQL: `archive_status/*.ready`, which
    /// also counts failures `pg_stat_archiver` misses), and their bytes.
    #[serde(default)]
    pub pending_files: u64,
    #[serde(default)]
    pub pending_bytes: u64,
    /// When the oldest waiting file became ready to archive.
    #[serde(default)]
    pub oldest_pending_since: Option<f64>,
    /// Failed attempts counted by the server (or the archiver), and the last one's time.
    #[serde(default)]
    pub failures: u64,
    #[serde(default)]
    pub last_failure: Option<f64>,
    /// The last failure, in words.
    #[serde(default)]
    pub last_error: Option<String>,
    /// ArchiveFailing that archiving cannot get past by retrying (MariaDB: an archive key holds
    /// other content than the binary log of that name); it stops until someone looks.
    #[serde(default)]
    pub failing: Option<String>,
    /// The term this primary archives in (MariaDB's binlog archive).
    #[serde(default)]
    pub term: Option<u64>,
    /// Files archived by this manager since it started (MariaDB's binlog archive).
    #[serde(default)]
    pub archived_files: u64,
    /// The newest GTID archived (MariaDB's binlog archive).
    #[serde(default)]
    pub last_gtid: Option<String>,
}

impl ArchiveState {
    /// The archive does not work now: its last attempt failed (a failure newer than the last
    /// success), or it stopped on a conflict.
    pub fn failing_now(&self) -> bool {
        let last_failed = match (self.last_failure, self.last_success) {
            (Some(failure), Some(success)) => failure > success,
            (Some(_), None) => true,
            (None, _) => false,
        };
        last_failed || self.failing.is_some()
    }
}

/// The last backup that finished.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupOutcome {
    pub label: String,
    pub kind: String,
    /// Seconds since the epoch.
    pub started: i64,
    pub duration_seconds: f64,
    pub size: u64,
}

/// `backup` in an instance manager's `/status`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupReport {
    /// The repository is tied to this cluster and ready (PostgreSQL: the stanza exists).
    #[serde(default)]
    pub stanza_ready: bool,
    #[serde(default)]
    pub last_backup: Option<BackupOutcome>,
    /// The last failed backup or stanza creation, in words.
    #[serde(default)]
    pub last_error: Option<String>,
    /// A backup runs now.
    #[serde(default)]
    pub running: bool,
    #[serde(default)]
    pub archive: ArchiveState,
    /// Free bytes on the data volume (what the archive's waiting files fill).
    #[serde(default)]
    pub free_bytes: Option<u64>,
}
