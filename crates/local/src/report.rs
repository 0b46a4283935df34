//! What the supervisor reports (`GET /status` on its port, and `supervisor.json`) and how
//! `stator status` shows it: a table like kubectl's and patronictl's, or JSON / YAML.

use serde::{Deserialize, Serialize};
use stator_api::instance::InstanceReport;
use stator_api::position::ReplicationPosition;
use stator_api::{Engine, Phase, Role};

/// The state of one local database as its supervisor sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SupervisorReport {
    /// `NAMESPACE/NAME`.
    pub database: String,
    pub engine: String,
    pub version: String,
    pub phase: Phase,
    /// Generation of the applied spec and the one the supervisor has acted on.
    pub generation: u64,
    pub observed_generation: u64,
    /// `None` when no supervisor runs.
    #[serde(default)]
    pub supervisor_pid: Option<u32>,
    /// `NAME-N` recorded as primary.
    pub primary: String,
    pub instances: Vec<InstanceRow>,
    /// Instances beyond `spec.instances` whose servers are stopped. Their data dirs are kept
    /// (as a StatefulSet's PVCs are after a scale-down) for a later scale-up; they are not in
    /// `instances` and make nothing degraded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<RemovedInstance>,
    pub proxies: Proxies,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The decision core's view: term, primary, fences, holds, the failover in progress, the
    /// last ones and the last switchover request (see [`crate::failover::FailoverReport`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<crate::failover::FailoverReport>,
    /// The `BackupsHealthy` condition, with `spec.backup` (`stator_control::backup_health`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backups_healthy: Option<BackupsCondition>,
}

/// The `BackupsHealthy` condition: the decision core's verdict on the primary's archive and
/// backups.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackupsCondition {
    pub status: bool,
    /// `Healthy`, `ArchiveFailing`, `ArchiveStalled`, `BackupOverdue`.
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// While the archive fails: when the waiting files fill the data volume, at their growth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_full_in_seconds: Option<f64>,
    /// The phase is `Degraded` only because of this condition (every instance is ready).
    #[serde(default)]
    pub degrades_phase: bool,
}

/// One instance: what the supervisor did with it and what its manager last reported.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceRow {
    pub name: String,
    pub ordinal: u32,
    /// The server's port.
    pub port: u16,
    /// The instance manager's HTTP port.
    pub manager_port: u16,
    #[serde(default)]
    pub manager_pid: Option<u32>,
    /// `pending`, `starting`, `stopping`, `stopped`, `removed`, or the server state the
    /// manager reports (`initializing`, `running`, `crashed`, …).
    pub state: String,
    /// Beyond `spec.instances`: being stopped, its data dir kept.
    #[serde(default)]
    pub excess: bool,
    /// Times the supervisor restarted this instance's manager.
    pub manager_restarts: u32,
    /// Crashes of its manager in a row since it was last ready (fences are not crashes).
    #[serde(default)]
    pub manager_crashes: u32,
    #[serde(default)]
    pub report: Option<InstanceReport>,
    /// A replica's distance from the primary, from both reports (see
    /// [`SupervisorReport::measure_lag`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<ReplicaLag>,
}

/// An instance removed by a scale-down: stopped, its data dir kept.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RemovedInstance {
    pub name: String,
    pub data_dir: String,
}

/// How far a replica is behind the primary, as the primary's current position minus the
/// replica's: what it has not received yet, and what it has not replayed (applied) yet. A
/// replica that receives everything but does not replay shows `0` received and the backlog as
/// replayed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaLag {
    pub unit: LagUnit,
    /// Primary position − received (flushed) position; `None` when the replica reports none.
    #[serde(default)]
    pub received: Option<u64>,
    /// Primary position − replayed (applied) position.
    #[serde(default)]
    pub replayed: Option<u64>,
}

/// PostgreSQL lag is WAL bytes (from LSNs); the MySQL family's is transactions (from GTIDs).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum LagUnit {
    Bytes,
    Transactions,
}

impl LagUnit {
    /// `22 MB`, `0 B`; `3 tx`.
    pub fn format(self, amount: u64) -> String {
        match self {
            LagUnit::Bytes => format_bytes(amount),
            LagUnit::Transactions => format!("{amount} tx"),
        }
    }
}

/// Bytes as PostgreSQL's `pg_size_pretty` writes them (units of 1024, a unit is used from 10
/// of it, rounded): `0 B`, `9000 B`, `22 MB`.
pub fn format_bytes(bytes: u64) -> String {
    let mut value = bytes;
    for unit in ["B", "kB", "MB", "GB"] {
        if value < 10 * 1024 {
            return format!("{value} {unit}");
        }
        value = (value + 512) / 1024;
    }
    format!("{value} TB")
}

impl InstanceRow {
    pub fn ready(&self) -> bool {
        self.report.as_ref().is_some_and(|r| r.ready)
    }
}

/// Where the proxies send connections.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Proxies {
    pub host: String,
    pub rw: ProxyRoute,
    pub ro: ProxyRoute,
}

impl Proxies {
    /// The two proxies on `host` with no target yet.
    pub fn unrouted(host: String, ports: stator_api::instance::LocalPorts) -> Proxies {
        let route = |port| ProxyRoute {
            port,
            targets: Vec::new(),
            fallback_to_primary: false,
        };
        Proxies {
            host,
            rw: route(ports.rw()),
            ro: route(ports.ro()),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyRoute {
    pub port: u16,
    /// `NAME-N` of every target, in round-robin order.
    pub targets: Vec<String>,
    /// `ro` only: no replica is ready, so reads go to the primary.
    #[serde(default)]
    pub fallback_to_primary: bool,
}

impl SupervisorReport {
    /// Every desired instance ready, nothing beyond `spec.instances` left running, and the
    /// latest spec seen.
    pub fn is_settled(&self) -> bool {
        self.generation == self.observed_generation
            && (self.phase == Phase::Ready
                || self.phase == Phase::Degraded
                    && self
                        .backups_healthy
                        .as_ref()
                        .is_some_and(|b| b.degrades_phase))
    }

    /// Fills each replica's [`ReplicaLag`] from the primary's reported position and the
    /// replica's received and replayed positions. The two reports are observed at slightly
    /// different moments, so a figure may be off by what was written in between; it is never
    /// negative.
    pub fn measure_lag(&mut self) {
        let Some(engine) = Engine::ALL.into_iter().find(|e| e.as_str() == self.engine) else {
            return;
        };
        let unit = match engine {
            Engine::Postgres => LagUnit::Bytes,
            Engine::Mysql | Engine::Mariadb => LagUnit::Transactions,
        };
        let position = |text: Option<&String>, timeline: Option<u32>| {
            // Bytes are counted by LSN alone; the timeline only has to be present.
            ReplicationPosition::parse(engine, text?, Some(timeline.unwrap_or(1))).ok()
        };
        let head = self
            .instances
            .iter()
            .filter_map(|i| i.report.as_ref().map(|r| (i, r)))
            .find(|(i, r)| i.name == self.primary && r.role == Some(Role::Primary))
            .and_then(|(_, r)| position(r.position.as_ref(), r.timeline));
        for row in &mut self.instances {
            row.lag = None;
            let (Some(head), Some(r)) = (&head, &row.report) else {
                continue;
            };
            if r.role != Some(Role::Replica) {
                continue;
            }
            let behind =
                |text: Option<&String>| position(text, r.timeline).and_then(|p| head.ahead_of(&p));
            let replayed = behind(r.position.as_ref());
            // What is replayed was received: after a restart PostgreSQL reports the received
            // position as where streaming started, behind what it replayed from its own WAL.
            let received = match (behind(r.received_position.as_ref()), replayed) {
                (Some(received), Some(replayed)) => Some(received.min(replayed)),
                (received, _) => received,
            };
            row.lag = Some(ReplicaLag {
                unit,
                received,
                replayed,
            });
        }
    }
}

/// The table `stator status` prints.
pub fn render_table(report: &SupervisorReport) -> String {
    // PostgreSQL positions are LSNs on a timeline, the MySQL family's GTID sets (no timeline);
    // lag is bytes or transactions behind the primary, received / replayed.
    let postgres = report.engine == "postgres";
    let position = if postgres { "LSN" } else { "GTID" };
    let mut rows = vec![
        [
            "INSTANCE",
            "ROLE",
            "STATE",
            "PID",
            "PORT",
            "TL",
            position,
            "LAG (recv/replay)",
            "READY",
            "RESTARTS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let fenced = |name: &str| {
        report
            .failover
            .as_ref()
            .is_some_and(|f| f.fenced.iter().any(|n| n == name))
    };
    for i in &report.instances {
        let r = i.report.as_ref();
        // A primary that refuses writes (fenced read-only, or not yet writable) is not what
        // clients reach as the primary: said so, and not ready.
        let read_only_primary = r.is_some_and(|r| r.role == Some(Role::Primary) && r.read_only);
        let role = r
            .and_then(|r| r.role)
            .map(|role| role.to_string())
            .map(|role| {
                if read_only_primary {
                    format!("{role} (read-only)")
                } else {
                    role
                }
            })
            .unwrap_or_else(|| "-".into());
        let pid = r
            .and_then(|r| r.pid)
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        let timeline = r
            .and_then(|r| r.timeline)
            .filter(|_| postgres)
            .map(|t| t.to_string())
            .unwrap_or_else(|| "-".into());
        let lag = match &i.lag {
            Some(l) => {
                let part =
                    |v: Option<u64>| v.map(|v| l.unit.format(v)).unwrap_or_else(|| "-".into());
                let mut text = format!("{} / {}", part(l.received), part(l.replayed));
                if let Some(seconds) = r.and_then(|r| r.lag_seconds).filter(|s| *s > 0.0) {
                    text.push_str(&format!(" ({seconds:.0}s)"));
                }
                text
            }
            None => "-".into(),
        };
        let restarts = r.map(|r| r.restarts).unwrap_or(0) + i.manager_restarts;
        let mut state = i.state.clone();
        if i.excess {
            state.push_str(" (removed)");
        }
        if fenced(&i.name) {
            state.push_str(" (fenced)");
        }
        rows.push(vec![
            i.name.clone(),
            role,
            state,
            pid,
            i.port.to_string(),
            timeline,
            r.and_then(|r| r.position.clone())
                .unwrap_or_else(|| "-".into()),
            lag,
            match (i.ready(), r.and_then(|r| r.errant.as_ref())) {
                (_, Some(_)) => "no (errant)",
                (true, None) if read_only_primary => "no (read-only)",
                (true, None) => "yes",
                (false, None) => "no",
            }
            .into(),
            restarts.to_string(),
        ]);
    }
    let mut out = format!(
        "Database {} ({} {}): {:?}, primary {}, spec generation {}{}\n\n",
        report.database,
        report.engine,
        report.version,
        report.phase,
        report.primary,
        report.generation,
        match report.supervisor_pid {
            Some(pid) => format!(", supervisor pid {pid}"),
            None => ", no supervisor running".into(),
        }
    );
    if let Some(b) = report.backups_healthy.as_ref().filter(|b| !b.status) {
        out.push_str(&format!(
            "BackupsHealthy: False ({}): {}\n\n",
            b.reason, b.message
        ));
    }
    out.push_str(&align(&rows));
    if !report.removed.is_empty() {
        let removed: Vec<String> = report
            .removed
            .iter()
            .map(|r| format!("{} ({})", r.name, r.data_dir))
            .collect();
        out.push_str(&format!(
            "removed, data kept (beyond spec.instances, stopped): {}\n",
            removed.join(", ")
        ));
    }
    let p = &report.proxies;
    out.push('\n');
    out.push_str(&align(&[
        vec!["PROXY".into(), "ADDRESS".into(), "TARGETS".into()],
        vec![
            "rw".into(),
            format!("{}:{}", p.host, p.rw.port),
            list_or_none(&p.rw.targets),
        ],
        vec![
            "ro".into(),
            format!("{}:{}", p.host, p.ro.port),
            if p.ro.fallback_to_primary && !p.ro.targets.is_empty() {
                format!(
                    "{} (no replica is ready: reads go to the primary)",
                    list_or_none(&p.ro.targets)
                )
            } else {
                list_or_none(&p.ro.targets)
            },
        ],
    ]));
    if let Some(message) = &report.message {
        out.push_str(&format!("\n{message}\n"));
    }
    if let Some(f) = &report.failover {
        out.push_str(&crate::failover::render_failover(f));
    }
    for i in &report.instances {
        let Some(r) = i.report.as_ref() else {
            continue;
        };
        if let Some(message) = &r.message
            && !i.ready()
        {
            out.push_str(&format!("{}: {message}\n", i.name));
        }
        if let Some(error) = &r.replication_error
            && r.message
                .as_ref()
                .is_none_or(|m| !m.contains(error.as_str()))
        {
            out.push_str(&format!("{}: replication error: {error}\n", i.name));
        }
        if let Some(errant) = &r.errant {
            out.push_str(&format!(
                "{}: ERRANT transactions its upstream does not have: {errant}\n  it is out of the ro proxy and never a failover candidate; rebuild it from the primary (its data dir would be replaced)\n",
                i.name
            ));
        }
    }
    out
}

fn list_or_none(targets: &[String]) -> String {
    if targets.is_empty() {
        "none (connections are refused)".into()
    } else {
        targets.join(", ")
    }
}

fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                let pad = widths[c].saturating_sub(cell.chars().count()) + 3;
                line.push_str(&" ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_api::Role;
    use stator_api::instance::ServerState;

    fn sample() -> SupervisorReport {
        SupervisorReport {
            database: "default/pg".into(),
            engine: "postgres".into(),
            version: "15".into(),
            phase: Phase::Ready,
            generation: 1,
            observed_generation: 1,
            supervisor_pid: Some(42),
            primary: "pg-0".into(),
            instances: vec![InstanceRow {
                name: "pg-0".into(),
                ordinal: 0,
                port: 15410,
                manager_port: 15430,
                manager_pid: Some(7),
                state: "running".into(),
                excess: false,
                manager_restarts: 0,
                manager_crashes: 0,
                report: Some(InstanceReport {
                    name: "pg-0".into(),
                    state: ServerState::Running,
                    role: Some(Role::Primary),
                    ready: true,
                    pid: Some(8),
                    manager_pid: 7,
                    server_version: Some("15.8".into()),
                    uptime_seconds: Some(3),
                    timeline: Some(1),
                    position: Some("0/3000060".into()),
                    received_position: None,
                    lag: None,
                    lag_seconds: None,
                    upstream: None,
                    message: None,
                    restarts: 0,
                    read_only: false,
                    receiver_running: None,
                    applier_running: None,
                    replication_error: None,
                    errant: None,
                    holds_data: Some(true),
                    backup: None,
                }),
                lag: None,
            }],
            removed: Vec::new(),
            proxies: Proxies {
                host: "127.0.0.1".into(),
                rw: ProxyRoute {
                    port: 15400,
                    targets: vec!["pg-0".into()],
                    fallback_to_primary: false,
                },
                ro: ProxyRoute {
                    port: 15401,
                    targets: vec!["pg-0".into()],
                    fallback_to_primary: true,
                },
            },
            message: None,
            failover: None,
            backups_healthy: None,
        }
    }

    #[test]
    fn table_shows_role_position_and_routes() {
        let table = render_table(&sample());
        assert!(table.contains("pg-0       primary   running"), "{table}");
        assert!(table.contains("0/3000060"), "{table}");
        assert!(table.contains("no replica is ready"), "{table}");
    }

    /// A replica of `report`'s primary at replay position `replayed`, received `received`.
    fn replica(
        report: &SupervisorReport,
        name: &str,
        replayed: &str,
        received: &str,
    ) -> InstanceRow {
        let mut row = report.instances[0].clone();
        row.name = name.into();
        if let Some(r) = row.report.as_mut() {
            r.name = name.into();
            r.role = Some(Role::Replica);
            r.timeline = Some(2);
            r.position = Some(replayed.into());
            r.received_position = Some(received.into());
            r.upstream = Some("pg-0".into());
        }
        row
    }

    #[test]
    fn lag_shows_received_and_replayed_bytes_behind_the_primary_and_the_timeline() {
        let mut report = sample();
        if let Some(r) = report.instances[0].report.as_mut() {
            r.timeline = Some(2);
            r.position = Some("0/3000000".into());
        }
        // 22 MiB (0x1600000) received but not replayed; another fully caught up.
        let paused = replica(&report, "pg-1", "0/1A00000", "0/3000000");
        let current = replica(&report, "pg-2", "0/3000000", "0/3000000");
        // Restarted: streaming starts at a segment's start, behind what it replayed already.
        let restarted = replica(&report, "pg-3", "0/3000000", "0/2000000");
        report.instances.extend([paused, current, restarted]);
        report.measure_lag();
        let lag = report.instances[1].lag.clone().unwrap();
        assert_eq!(lag.unit, LagUnit::Bytes);
        assert_eq!(lag.received, Some(0));
        assert_eq!(lag.replayed, Some(22 * 1024 * 1024));
        assert_eq!(report.instances[0].lag, None, "the primary has no lag");
        let table = render_table(&report);
        let header = table.lines().nth(2).unwrap();
        for column in ["TL", "LSN", "LAG (recv/replay)"] {
            assert!(header.contains(column), "{table}");
        }
        let row = |name: &str| {
            table
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap()
                .to_string()
        };
        assert!(row("pg-1").contains("0 B / 22 MB"), "{table}");
        assert!(row("pg-2").contains("0 B / 0 B"), "{table}");
        assert!(row("pg-3").contains("0 B / 0 B"), "{table}");
        // The timeline column, between PORT and LSN.
        let paused = row("pg-1");
        let words: Vec<&str> = paused.split_whitespace().collect();
        assert_eq!(words[5..7], ["2", "0/1A00000"], "{table}");
        assert_eq!(
            row("pg-0").split_whitespace().nth(5),
            Some("2"),
            "the primary's timeline: {table}"
        );
    }

    #[test]
    fn mariadb_lag_is_in_transactions_with_no_timeline() {
        let mut report = sample();
        report.engine = "mariadb".into();
        if let Some(r) = report.instances[0].report.as_mut() {
            r.timeline = None;
            r.position = Some("0-1-120".into());
        }
        let mut behind = replica(&report, "pg-1", "0-1-100", "0-1-117");
        if let Some(r) = behind.report.as_mut() {
            r.timeline = None;
            r.lag_seconds = Some(4.0);
        }
        report.instances.push(behind);
        report.measure_lag();
        let lag = report.instances[1].lag.clone().unwrap();
        assert_eq!(
            (lag.unit, lag.received, lag.replayed),
            (LagUnit::Transactions, Some(3), Some(20))
        );
        let table = render_table(&report);
        let row = table.lines().find(|l| l.starts_with("pg-1")).unwrap();
        assert!(row.contains("3 tx / 20 tx (4s)"), "{table}");
        assert_eq!(row.split_whitespace().nth(5), Some("-"), "{table}");
    }

    #[test]
    fn a_fenced_read_only_primary_is_not_shown_as_a_ready_primary() {
        let mut report = sample();
        if let Some(r) = report.instances[0].report.as_mut() {
            r.read_only = true;
        }
        report.failover = Some(crate::failover::FailoverReport {
            fenced: vec!["pg-0".into()],
            ..Default::default()
        });
        let table = render_table(&report);
        let row = table.lines().find(|l| l.starts_with("pg-0")).unwrap();
        assert!(row.contains("primary (read-only)"), "{table}");
        assert!(row.contains("running (fenced)"), "{table}");
        assert!(row.contains("no (read-only)"), "{table}");
        assert!(!row.contains(" yes "), "{table}");
    }

    #[test]
    fn removed_instances_are_listed_apart_with_their_kept_data() {
        let mut report = sample();
        report.removed = vec![RemovedInstance {
            name: "pg-2".into(),
            data_dir: "/state/data-pg-2".into(),
        }];
        let table = render_table(&report);
        assert!(
            table.contains(
                "removed, data kept (beyond spec.instances, stopped): pg-2 (/state/data-pg-2)"
            ),
            "{table}"
        );
        assert!(!table.lines().any(|l| l.starts_with("pg-2 ")), "{table}");
    }

    #[test]
    fn bytes_are_written_as_pg_size_pretty_does() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(10 * 1024 - 1), "10239 B");
        assert_eq!(format_bytes(10 * 1024), "10 kB");
        assert_eq!(format_bytes(22 * 1024 * 1024), "22 MB");
        assert_eq!(format_bytes(3 << 30), "3072 MB");
        assert_eq!(format_bytes(30 << 30), "30 GB");
    }

    #[test]
    fn an_errant_replica_is_shown_as_such_with_its_gtids() {
        let mut report = sample();
        report.engine = "mariadb".into();
        let mut replica = report.instances[0].clone();
        replica.name = "pg-1".into();
        if let Some(r) = replica.report.as_mut() {
            r.role = Some(Role::Replica);
            r.ready = false;
            r.position = Some("0-1-12,0-2-1".into());
            r.errant = Some("0-2-1".into());
            r.message = Some("errant transactions: 0-2-1".into());
        }
        report.instances.push(replica);
        let table = render_table(&report);
        assert!(table.contains("GTID"), "{table}");
        assert!(!table.contains("LSN"), "{table}");
        assert!(table.contains("no (errant)"), "{table}");
        assert!(
            table.contains("pg-1: ERRANT transactions its upstream does not have: 0-2-1"),
            "{table}"
        );
        // The healthy primary is not flagged.
        assert!(!table.contains("pg-0: ERRANT"), "{table}");
    }

    #[test]
    fn unhealthy_backups_show_in_the_table_and_a_database_degraded_only_by_them_is_settled() {
        let mut report = sample();
        report.phase = Phase::Degraded;
        report.backups_healthy = Some(BackupsCondition {
            status: false,
            reason: "ArchiveFailing".into(),
            message: "the archive is failing: archiving 000000010000000000000003 failed".into(),
            disk_full_in_seconds: Some(3600.0),
            degrades_phase: true,
        });
        let table = render_table(&report);
        assert!(
            table.contains("BackupsHealthy: False (ArchiveFailing): the archive is failing"),
            "{table}"
        );
        assert!(report.is_settled(), "up returns: every instance is ready");
        report.backups_healthy.as_mut().unwrap().degrades_phase = false;
        assert!(
            !report.is_settled(),
            "Degraded by an instance is not settled"
        );
    }

    #[test]
    fn report_round_trips_through_json() {
        let report = sample();
        let text = serde_json::to_string(&report).unwrap();
        let back: SupervisorReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report);
        assert!(back.is_settled());
    }
}
