//! Whether a database's backups are healthy: a pure function of what the primary's instance
//! manager reports (`backup` in its `/status`, [`BackupReport`]), the schedule, the archive
//! timeout and the time now (no clock is read here). The shells turn the verdict into the
//! condition `BackupsHealthy` and, when it is false on an otherwise ready database, the phase
//! `Degraded`.
//!
//! The rules it keeps:
//! - The archive is failing when its last attempt failed (a failure newer than the last
//!   success) or it stopped on a conflict (MariaDB: a key holding another binary log), or when
//!   a closed file has waited longer than `archiveTimeout` (PostgreSQL counts
//!   `archive_status/*.ready`, which also sees failures `pg_stat_archiver` misses: an
//!   `archive_command` killed by a signal or exiting over 125). A segment closes at most
//!   `archiveTimeout` after a write, so an archive that stopped working is seen within
//!   2×`archiveTimeout` of it (plus the shells' polling).
//! - A backup is overdue when its due time (the first slot after the last backup's start;
//!   for a database that never had one, the time backups were first expected: it is due at
//!   once) passed more than 2×`archiveTimeout` ago and no backup runs now.
//! - No primary reporting its backups is not judged here (the database is unavailable, which
//!   its phase already says): the verdict is healthy with nothing to say.
//! - While the archive fails, the files waiting grow: from the first sample of the episode (the
//!   [`ArchiveBaseline`] the shell keeps and passes back) and the one now, the growth rate, and
//!   from the free bytes, when the data volume fills. An archive that works again resets it.

use serde::{Deserialize, Serialize};
use stator_api::backup_report::BackupReport;

use crate::backup_due::BackupSchedule;

/// The first sample of a failing episode: when, and the bytes waiting then.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveBaseline {
    pub at_ms: u64,
    pub pending_bytes: u64,
}

/// What [`backup_health`] is given.
#[derive(Clone, Copy, Debug)]
pub struct BackupHealthInput<'a> {
    pub now_ms: u64,
    /// `spec.backup.archiveTimeout`.
    pub archive_timeout_ms: u64,
    /// `spec.backup.schedule`; `None`: backups are taken on demand only, never overdue.
    pub schedule: Option<&'a BackupSchedule>,
    /// Since when backups are expected (the database first had a ready primary): the first
    /// backup is due then.
    pub expected_since_ms: u64,
    /// The primary's report; `None` when no primary reports backups now.
    pub report: Option<&'a BackupReport>,
    /// What the previous call returned as [`BackupHealth::baseline`].
    pub baseline: Option<ArchiveBaseline>,
}

/// Why backups are not healthy.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum BackupProblem {
    /// The last archive attempt failed.
    ArchiveFailing { error: Option<String> },
    /// A closed file has waited longer than the archive timeout (no failure was counted:
    /// the archiver may have been killed, or cannot keep up).
    ArchiveStalled {
        waiting_seconds: f64,
        pending_files: u64,
    },
    /// A due backup did not run: `due_ms` is when it was due (`None` for a first backup).
    BackupOverdue {
        due_ms: u64,
        last_backup_ms: Option<u64>,
    },
}

impl BackupProblem {
    /// The condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            BackupProblem::ArchiveFailing { .. } => "ArchiveFailing",
            BackupProblem::ArchiveStalled { .. } => "ArchiveStalled",
            BackupProblem::BackupOverdue { .. } => "BackupOverdue",
        }
    }

    /// In words.
    pub fn describe(&self, now_ms: u64) -> String {
        match self {
            BackupProblem::ArchiveFailing { error } => format!(
                "the archive is failing{}",
                error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ),
            BackupProblem::ArchiveStalled {
                waiting_seconds,
                pending_files,
            } => format!(
                "{pending_files} file(s) wait to be archived, the oldest for {waiting_seconds:.0} s"
            ),
            BackupProblem::BackupOverdue {
                due_ms,
                last_backup_ms,
            } => format!(
                "a backup was due {} s ago and none runs{}",
                now_ms.saturating_sub(*due_ms) / 1000,
                match last_backup_ms {
                    Some(_) => "",
                    None => " (this database has no backup yet)",
                }
            ),
        }
    }
}

/// The verdict: the `BackupsHealthy` condition and what the shell keeps for the next call.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupHealth {
    pub healthy: bool,
    /// The first problem's reason (`Healthy` when there is none).
    pub reason: String,
    pub message: String,
    pub problems: Vec<BackupProblem>,
    /// While the archive fails: seconds until the waiting files fill the data volume at the
    /// rate they grew since the episode began (`None` when they do not grow or it is unknown).
    pub disk_full_in_seconds: Option<f64>,
    /// Keep and pass back as [`BackupHealthInput::baseline`].
    pub baseline: Option<ArchiveBaseline>,
}

fn seconds_to_ms(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 {
        (seconds * 1000.0) as u64
    } else {
        0
    }
}

/// Judges the backups of one database (see the module's rules).
pub fn backup_health(input: BackupHealthInput<'_>) -> BackupHealth {
    let now = input.now_ms;
    let healthy = |baseline| BackupHealth {
        healthy: true,
        reason: "Healthy".into(),
        message: String::new(),
        problems: Vec::new(),
        disk_full_in_seconds: None,
        baseline,
    };
    let Some(report) = input.report else {
        return healthy(input.baseline);
    };
    let archive = &report.archive;
    let mut problems = Vec::new();

    let last_failed = archive.failing_now();
    if last_failed {
        problems.push(BackupProblem::ArchiveFailing {
            error: archive
                .failing
                .clone()
                .or_else(|| archive.last_error.clone()),
        });
    }
    let waiting_ms = archive
        .oldest_pending_since
        .filter(|_| archive.pending_files > 0)
        .map(|since| now.saturating_sub(seconds_to_ms(since)));
    if let Some(waiting) = waiting_ms.filter(|w| *w > input.archive_timeout_ms)
        && !last_failed
    {
        problems.push(BackupProblem::ArchiveStalled {
            waiting_seconds: waiting as f64 / 1000.0,
            pending_files: archive.pending_files,
        });
    }
    let archive_failing = !problems.is_empty();

    let grace = input.archive_timeout_ms.saturating_mul(2);
    if let Some(schedule) = input.schedule
        && !report.running
    {
        let last_ms = report
            .last_backup
            .as_ref()
            .and_then(|b| u64::try_from(b.started).ok())
            .map(|s| s.saturating_mul(1000));
        let due_ms = match last_ms {
            None => Some(input.expected_since_ms),
            Some(last) => schedule.next_slot_after(last).ok(),
        };
        if let Some(due_ms) = due_ms
            && now > due_ms.saturating_add(grace)
        {
            problems.push(BackupProblem::BackupOverdue {
                due_ms,
                last_backup_ms: last_ms,
            });
        }
    }

    let baseline = if archive_failing {
        Some(input.baseline.unwrap_or(ArchiveBaseline {
            at_ms: now,
            pending_bytes: archive.pending_bytes,
        }))
    } else {
        None
    };
    let disk_full_in_seconds = baseline.and_then(|b| {
        let elapsed = now.checked_sub(b.at_ms).filter(|e| *e > 0)? as f64 / 1000.0;
        let grown = archive.pending_bytes.checked_sub(b.pending_bytes)? as f64;
        let rate = grown / elapsed;
        (rate > 0.0).then(|| report.free_bytes.map(|free| free as f64 / rate))?
    });
    if problems.is_empty() {
        return healthy(None);
    }
    let mut message = problems
        .iter()
        .map(|p| p.describe(now))
        .collect::<Vec<_>>()
        .join("; ");
    if let Some(s) = disk_full_in_seconds {
        message.push_str(&format!(
            "; at this rate the data volume fills in {}",
            human_duration(s)
        ));
    }
    BackupHealth {
        healthy: false,
        reason: problems[0].reason().into(),
        message,
        problems,
        disk_full_in_seconds,
        baseline,
    }
}

/// `s` seconds in words: `45 s`, `12 min`, `3.5 h`, `4.2 days`.
pub fn human_duration(s: f64) -> String {
    if s < 120.0 {
        format!("{s:.0} s")
    } else if s < 7200.0 {
        format!("{:.0} min", s / 60.0)
    } else if s < 172_800.0 {
        format!("{:.1} h", s / 3600.0)
    } else {
        format!("{:.1} days", s / 86_400.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_api::backup_report::{ArchiveState, BackupOutcome};

    const NOW: u64 = 1_800_000_000_000;
    const TIMEOUT: u64 = 60_000;

    /// A primary whose archive works and whose last backup started `backup_age_s` ago.
    fn report(backup_age_s: Option<u64>) -> BackupReport {
        BackupReport {
            stanza_ready: true,
            last_backup: backup_age_s.map(|age| BackupOutcome {
                label: "L".into(),
                kind: "full".into(),
                started: ((NOW / 1000) - age) as i64,
                duration_seconds: 3.0,
                size: 1,
            }),
            last_error: None,
            running: false,
            archive: ArchiveState {
                last_success: Some((NOW / 1000) as f64 - 10.0),
                ..ArchiveState::default()
            },
            free_bytes: Some(1_000_000_000),
        }
    }

    fn judge(
        report: Option<&BackupReport>,
        schedule: Option<&str>,
        baseline: Option<ArchiveBaseline>,
        now: u64,
    ) -> BackupHealth {
        let schedule = schedule.map(|s| BackupSchedule::parse(s).unwrap());
        backup_health(BackupHealthInput {
            now_ms: now,
            archive_timeout_ms: TIMEOUT,
            schedule: schedule.as_ref(),
            expected_since_ms: NOW - 3_600_000,
            report,
            baseline,
        })
    }

    fn failing(mut r: BackupReport) -> BackupReport {
        r.archive.last_failure = Some((NOW / 1000) as f64 - 1.0);
        r.archive.last_error = Some("archiving 00000001000000000000000A failed".into());
        r.archive.pending_files = 2;
        r.archive.pending_bytes = 32 << 20;
        r.archive.oldest_pending_since = Some((NOW / 1000) as f64 - 5.0);
        r
    }

    /// (name, the primary's report, schedule, now, the reasons expected).
    type Row = (
        &'static str,
        Option<BackupReport>,
        Option<&'static str>,
        u64,
        Vec<&'static str>,
    );

    #[test]
    fn situations() {
        let hourly = Some("0 * * * *");
        let mut stalled = report(Some(600));
        stalled.archive.pending_files = 1;
        stalled.archive.pending_bytes = 16 << 20;
        stalled.archive.oldest_pending_since = Some((NOW / 1000) as f64 - 61.0);
        let mut just_closed = stalled.clone();
        just_closed.archive.oldest_pending_since = Some((NOW / 1000) as f64 - 59.0);
        let mut recovered = failing(report(Some(600)));
        recovered.archive.last_success = Some((NOW / 1000) as f64);
        recovered.archive.pending_files = 0;
        recovered.archive.oldest_pending_since = None;
        let mut running_late = report(Some(3 * 3600));
        running_late.running = true;
        let mut never_running = report(None);
        never_running.running = true;
        let rows: Vec<Row> = vec![
            (
                "no primary reports: nothing to judge",
                None,
                hourly,
                NOW,
                vec![],
            ),
            (
                "archive works, backup recent",
                Some(report(Some(600))),
                hourly,
                NOW,
                vec![],
            ),
            (
                "the last attempt failed: failing at once",
                Some(failing(report(Some(600)))),
                hourly,
                NOW,
                vec!["ArchiveFailing"],
            ),
            (
                "a segment waits longer than archiveTimeout, no failure counted (a signal, exit > 125)",
                Some(stalled),
                hourly,
                NOW,
                vec!["ArchiveStalled"],
            ),
            (
                "a segment just closed: not yet",
                Some(just_closed),
                hourly,
                NOW,
                vec![],
            ),
            (
                "archived again after failures: healthy",
                Some(recovered),
                hourly,
                NOW,
                vec![],
            ),
            (
                "hourly, last backup 3 h ago, none runs: overdue",
                Some(report(Some(3 * 3600))),
                hourly,
                NOW,
                vec!["BackupOverdue"],
            ),
            (
                "hourly, last backup 3 h ago, one runs now: not overdue",
                Some(running_late),
                hourly,
                NOW,
                vec![],
            ),
            (
                "no schedule: never overdue",
                Some(report(Some(30 * 86_400))),
                None,
                NOW,
                vec![],
            ),
            (
                "never backed up, expected for an hour: overdue",
                Some(report(None)),
                hourly,
                NOW,
                vec!["BackupOverdue"],
            ),
            (
                "never backed up, the first one runs: not overdue",
                Some(never_running),
                hourly,
                NOW,
                vec![],
            ),
            (
                "never backed up, expected for less than 2x archiveTimeout: not yet",
                Some(report(None)),
                hourly,
                NOW - 3_600_000 + 2 * TIMEOUT,
                vec![],
            ),
            (
                "both: the archive first",
                Some(failing(report(Some(3 * 3600)))),
                hourly,
                NOW,
                vec!["ArchiveFailing", "BackupOverdue"],
            ),
        ];
        let mut wrong = Vec::new();
        for (name, report, schedule, now, expected) in rows {
            let h = judge(report.as_ref(), schedule, None, now);
            let got: Vec<&str> = h.problems.iter().map(|p| p.reason()).collect();
            if got != expected || h.healthy != expected.is_empty() {
                wrong.push(format!("{name}: got {got:?} ({})", h.message));
            }
            if let Some(first) = expected.first()
                && h.reason != *first
            {
                wrong.push(format!("{name}: reason {}", h.reason));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn the_fill_estimate_follows_the_growth_of_the_waiting_files_since_the_episode_began() {
        let first = failing(report(Some(600)));
        let h = judge(Some(&first), None, None, NOW);
        assert!(!h.healthy);
        let baseline = h.baseline.expect("the episode's first sample is kept");
        assert_eq!(baseline.at_ms, NOW);
        assert_eq!(h.disk_full_in_seconds, None, "no growth seen yet");

        // 100 s later, 100 MB more wait; 1 GB free: 1 MB/s, full in 1000 s.
        let mut later = first.clone();
        later.archive.pending_bytes += 100_000_000;
        let h = judge(Some(&later), None, Some(baseline), NOW + 100_000);
        assert_eq!(h.baseline, Some(baseline), "the baseline stays");
        let eta = h.disk_full_in_seconds.unwrap();
        assert!((eta - 1000.0).abs() < 1e-6, "{eta}");
        assert!(h.message.contains("fills in 17 min"), "{}", h.message);

        // Archived again: healthy, the baseline dropped.
        let mut fixed = later;
        fixed.archive.last_success = Some((NOW / 1000 + 200) as f64);
        fixed.archive.pending_files = 0;
        fixed.archive.oldest_pending_since = None;
        let h = judge(Some(&fixed), None, Some(baseline), NOW + 200_000);
        assert!(h.healthy, "{}", h.message);
        assert_eq!(h.baseline, None);
    }

    #[test]
    fn the_message_names_the_error_and_how_late_the_backup_is() {
        let h = judge(
            Some(&failing(report(Some(3 * 3600)))),
            Some("0 * * * *"),
            None,
            NOW,
        );
        assert!(
            h.message.contains("00000001000000000000000A") && h.message.contains("was due"),
            "{}",
            h.message
        );
    }

    #[test]
    fn durations_read_as_a_person_says_them() {
        assert_eq!(human_duration(45.0), "45 s");
        assert_eq!(human_duration(1000.0), "17 min");
        assert_eq!(human_duration(3.5 * 3600.0), "3.5 h");
        assert_eq!(human_duration(4.2 * 86_400.0), "4.2 days");
    }
}
