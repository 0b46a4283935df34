//! `/metrics`: the report in the Prometheus text exposition format (checked by
//! `promtool check metrics`). Every sample carries the `instance_name` label.

use std::fmt::Write;

use stator_api::Role;
use stator_api::instance::InstanceReport;

/// Extra facts the report does not carry.
#[derive(Clone, Copy, Debug, Default)]
pub struct MetricFacts {
    /// Seconds since the epoch (ages are measured from it).
    pub now: f64,
    /// The position as a number (PostgreSQL: LSN bytes).
    pub position_bytes: Option<u64>,
    pub manager_uptime_seconds: u64,
    /// The engine counts lag in transactions (the MySQL family's GTIDs), not WAL bytes.
    pub lag_in_transactions: bool,
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders the metrics of one instance.
pub fn render_metrics(r: &InstanceReport, facts: MetricFacts) -> String {
    let label = format!("instance_name=\"{}\"", escape_label(&r.name));
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (extra, value) in samples {
            let labels = if extra.is_empty() {
                label.clone()
            } else {
                format!("{label},{extra}")
            };
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    };
    let b = |v: bool| if v { 1.0 } else { 0.0 };
    let running = r.state == stator_api::instance::ServerState::Running;
    metric(
        "stator_up",
        "gauge",
        "1 when the server accepts connections.",
        vec![(String::new(), b(running && r.role.is_some()))],
    );
    metric(
        "stator_ready",
        "gauge",
        "1 when the instance is ready for traffic (a replica: streaming from its upstream).",
        vec![(String::new(), b(r.ready))],
    );
    metric(
        "stator_is_primary",
        "gauge",
        "1 when the server is the primary.",
        vec![(String::new(), b(r.role == Some(Role::Primary)))],
    );
    metric(
        "stator_role",
        "gauge",
        "The server's role: 1 on the label of the current role.",
        [Role::Primary, Role::Replica]
            .into_iter()
            .map(|role| (format!("role=\"{role}\""), b(r.role == Some(role))))
            .collect(),
    );
    metric(
        "stator_server_restarts_total",
        "counter",
        "Times the instance manager restarted the server after it died.",
        vec![(String::new(), f64::from(r.restarts))],
    );
    metric(
        "stator_manager_uptime_seconds",
        "gauge",
        "Seconds since the instance manager started.",
        vec![(String::new(), facts.manager_uptime_seconds as f64)],
    );
    if let Some(up) = r.uptime_seconds {
        metric(
            "stator_server_uptime_seconds",
            "gauge",
            "Seconds since the server started.",
            vec![(String::new(), up as f64)],
        );
    }
    if let Some(pos) = facts.position_bytes {
        metric(
            "stator_wal_position_bytes",
            "gauge",
            "The primary's write position or the replica's replay position, as a byte offset (LSN).",
            vec![(String::new(), pos as f64)],
        );
    }
    if let Some(tl) = r.timeline {
        metric(
            "stator_timeline",
            "gauge",
            "The server's timeline.",
            vec![(String::new(), f64::from(tl))],
        );
    }
    if let Some(lag) = r.lag {
        if facts.lag_in_transactions {
            metric(
                "stator_replication_lag_transactions",
                "gauge",
                "Transactions (GTIDs) the upstream holds that the replica has not applied (0 on the primary).",
                vec![(String::new(), lag as f64)],
            );
        } else {
            metric(
                "stator_replication_lag_bytes",
                "gauge",
                "Bytes of WAL the replica has not replayed yet (0 on the primary).",
                vec![(String::new(), lag as f64)],
            );
        }
    }
    metric(
        "stator_read_only",
        "gauge",
        "1 when the server refuses writes from clients.",
        vec![(String::new(), b(r.read_only))],
    );
    if r.role == Some(Role::Replica) {
        metric(
            "stator_replication_receiver_running",
            "gauge",
            "1 when the replica's receiver (IO thread, walreceiver) runs.",
            vec![(String::new(), b(r.receiver_running.unwrap_or(false)))],
        );
        metric(
            "stator_replication_applier_running",
            "gauge",
            "1 when the replica's applier (SQL thread, replay) runs.",
            vec![(String::new(), b(r.applier_running.unwrap_or(false)))],
        );
        metric(
            "stator_replication_error",
            "gauge",
            "1 when the replica reports a replication error (see /status).",
            vec![(String::new(), b(r.replication_error.is_some()))],
        );
    }
    metric(
        "stator_errant_transactions",
        "gauge",
        "1 when the instance holds transactions its upstream does not have (errant GTIDs); it must be rebuilt.",
        vec![(String::new(), b(r.errant.is_some()))],
    );
    if let Some(lag) = r.lag_seconds {
        metric(
            "stator_replication_lag_seconds",
            "gauge",
            "Seconds since the replica last replayed a transaction while behind.",
            vec![(String::new(), lag)],
        );
    }
    if let Some(backup) = &r.backup {
        render_backup_metrics(&mut metric, backup, facts.now);
    }
    out
}

/// The backup and archive samples (`backup` in `/status`).
fn render_backup_metrics(
    metric: &mut impl FnMut(&str, &str, &str, Vec<(String, f64)>),
    backup: &stator_api::backup_report::BackupReport,
    now: f64,
) {
    let one = |v: f64| vec![(String::new(), v)];
    let a = &backup.archive;
    if let Some(t) = a.last_success {
        metric(
            "stator_archive_last_success_timestamp_seconds",
            "gauge",
            "When the last WAL segment or binlog reached the repository (seconds since the epoch).",
            one(t),
        );
    }
    metric(
        "stator_archive_pending_files",
        "gauge",
        "Closed WAL segments or binlogs waiting to be archived.",
        one(a.pending_files as f64),
    );
    metric(
        "stator_archive_pending_bytes",
        "gauge",
        "Bytes of the files waiting to be archived.",
        one(a.pending_bytes as f64),
    );
    metric(
        "stator_archive_oldest_pending_age_seconds",
        "gauge",
        "Seconds the oldest file waiting to be archived has waited (0 when none waits).",
        one(a.oldest_pending_since.map_or(0.0, |t| (now - t).max(0.0))),
    );
    metric(
        "stator_archive_failures_total",
        "counter",
        "Failed archive attempts the server counted.",
        one(a.failures as f64),
    );
    metric(
        "stator_archive_failing",
        "gauge",
        "1 when the last archive attempt failed or archiving stopped on a conflict (see backup.archive in /status).",
        one(if a.failing_now() { 1.0 } else { 0.0 }),
    );
    if let Some(last) = &backup.last_backup {
        metric(
            "stator_backup_last_timestamp_seconds",
            "gauge",
            "When the last finished backup started (seconds since the epoch).",
            one(last.started as f64),
        );
        metric(
            "stator_backup_last_duration_seconds",
            "gauge",
            "How long the last finished backup took.",
            one(last.duration_seconds),
        );
        metric(
            "stator_backup_last_size_bytes",
            "gauge",
            "Bytes the last finished backup stored in the repository.",
            one(last.size as f64),
        );
    }
    metric(
        "stator_backup_running",
        "gauge",
        "1 while a backup runs.",
        one(if backup.running { 1.0 } else { 0.0 }),
    );
    if let Some(free) = backup.free_bytes {
        metric(
            "stator_data_volume_free_bytes",
            "gauge",
            "Free bytes on the data volume.",
            one(free as f64),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_api::instance::ServerState;

    fn report() -> InstanceReport {
        InstanceReport {
            name: "db-1".into(),
            state: ServerState::Running,
            role: Some(Role::Replica),
            ready: true,
            pid: Some(10),
            manager_pid: 9,
            server_version: Some("15.14".into()),
            uptime_seconds: Some(12),
            timeline: Some(1),
            position: Some("0/3000060".into()),
            received_position: Some("0/3000060".into()),
            lag: Some(0),
            lag_seconds: Some(0.0),
            upstream: Some("db-0".into()),
            message: None,
            restarts: 2,
            read_only: false,
            receiver_running: None,
            applier_running: None,
            replication_error: None,
            errant: None,
            holds_data: Some(true),
            backup: None,
        }
    }

    #[test]
    fn metrics_name_role_restarts_and_position() {
        let text = render_metrics(
            &report(),
            MetricFacts {
                position_bytes: Some(0x300_0060),
                manager_uptime_seconds: 5,
                lag_in_transactions: false,
                now: 0.0,
            },
        );
        assert!(
            text.contains("stator_is_primary{instance_name=\"db-1\"} 0\n"),
            "{text}"
        );
        assert!(text.contains("stator_role{instance_name=\"db-1\",role=\"replica\"} 1\n"));
        assert!(text.contains("stator_server_restarts_total{instance_name=\"db-1\"} 2\n"));
        assert!(text.contains("stator_wal_position_bytes{instance_name=\"db-1\"} 50331744\n"));
        assert!(text.contains("# TYPE stator_server_restarts_total counter\n"));
    }

    #[test]
    fn a_mysql_family_replica_shows_lag_in_transactions_threads_and_errant() {
        let mut r = report();
        r.lag = Some(3);
        r.receiver_running = Some(true);
        r.applier_running = Some(false);
        r.errant = Some("0-1002-5".into());
        let text = render_metrics(
            &r,
            MetricFacts {
                lag_in_transactions: true,
                ..MetricFacts::default()
            },
        );
        for line in [
            "stator_replication_lag_transactions{instance_name=\"db-1\"} 3\n",
            "stator_replication_receiver_running{instance_name=\"db-1\"} 1\n",
            "stator_replication_applier_running{instance_name=\"db-1\"} 0\n",
            "stator_errant_transactions{instance_name=\"db-1\"} 1\n",
            "stator_read_only{instance_name=\"db-1\"} 0\n",
        ] {
            assert!(text.contains(line), "missing {line}: {text}");
        }
        assert!(!text.contains("lag_bytes"), "{text}");
    }

    fn backup_report() -> stator_api::backup_report::BackupReport {
        use stator_api::backup_report::{ArchiveState, BackupOutcome, BackupReport};
        BackupReport {
            stanza_ready: true,
            last_backup: Some(BackupOutcome {
                label: "20261126-101500F".into(),
                kind: "full".into(),
                started: 1_700_000_000,
                duration_seconds: 4.5,
                size: 5_000_000,
            }),
            last_error: None,
            running: false,
            archive: ArchiveState {
                last_success: Some(1_700_000_050.0),
                pending_files: 3,
                pending_bytes: 3 * 16 * 1024 * 1024,
                oldest_pending_since: Some(1_700_000_060.0),
                failures: 7,
                last_failure: Some(1_700_000_090.0),
                last_error: Some("archiving 000000010000000000000005 failed".into()),
                ..ArchiveState::default()
            },
            free_bytes: Some(10_000_000_000),
        }
    }

    #[test]
    fn a_primary_with_backups_shows_its_archive_last_backup_and_free_bytes() {
        let mut r = report();
        r.role = Some(Role::Primary);
        r.backup = Some(backup_report());
        let text = render_metrics(
            &r,
            MetricFacts {
                now: 1_700_000_100.0,
                ..MetricFacts::default()
            },
        );
        for line in [
            "stator_archive_last_success_timestamp_seconds{instance_name=\"db-1\"} 1700000050\n",
            "stator_archive_pending_files{instance_name=\"db-1\"} 3\n",
            "stator_archive_pending_bytes{instance_name=\"db-1\"} 50331648\n",
            "stator_archive_oldest_pending_age_seconds{instance_name=\"db-1\"} 40\n",
            "stator_archive_failures_total{instance_name=\"db-1\"} 7\n",
            "stator_archive_failing{instance_name=\"db-1\"} 1\n",
            "stator_backup_last_timestamp_seconds{instance_name=\"db-1\"} 1700000000\n",
            "stator_backup_last_duration_seconds{instance_name=\"db-1\"} 4.5\n",
            "stator_backup_last_size_bytes{instance_name=\"db-1\"} 5000000\n",
            "stator_data_volume_free_bytes{instance_name=\"db-1\"} 10000000000\n",
        ] {
            assert!(text.contains(line), "missing {line}: {text}");
        }
        assert!(!render_metrics(&report(), MetricFacts::default()).contains("stator_archive"));
    }

    #[test]
    fn label_values_are_escaped() {
        let mut r = report();
        r.name = "a\"b".into();
        let text = render_metrics(&r, MetricFacts::default());
        assert!(text.contains("instance_name=\"a\\\"b\""), "{text}");
    }

    #[test]
    fn metrics_pass_promtool_when_it_is_installed() {
        let mut mysql_replica = report();
        mysql_replica.receiver_running = Some(true);
        mysql_replica.applier_running = Some(false);
        mysql_replica.replication_error = Some("Duplicate entry".into());
        mysql_replica.errant = Some("0-1002-5".into());
        let mut primary = report();
        primary.role = Some(Role::Primary);
        primary.backup = Some(backup_report());
        let texts = [
            render_metrics(
                &primary,
                MetricFacts {
                    now: 1_700_000_100.0,
                    ..MetricFacts::default()
                },
            ),
            render_metrics(
                &report(),
                MetricFacts {
                    position_bytes: Some(1),
                    manager_uptime_seconds: 1,
                    lag_in_transactions: false,
                    now: 0.0,
                },
            ),
            render_metrics(
                &mysql_replica,
                MetricFacts {
                    lag_in_transactions: true,
                    ..MetricFacts::default()
                },
            ),
        ];
        for text in texts {
            let Ok(mut child) = std::process::Command::new("promtool")
                .args(["check", "metrics"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
            else {
                // scripts/test installs promtool, so in CI a missing one is a failure, not a skip.
                assert!(
                    std::env::var_os("CI").is_none(),
                    "promtool is missing (apt-get install prometheus)"
                );
                eprintln!("promtool not installed; skipped");
                return;
            };
            use std::io::Write as _;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
