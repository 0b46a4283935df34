//! What the supervisor reports (`GET /status` on its port, and `supervisor.json`) and how
//! `stator status` shows it: a table like kubectl's and patronictl's, or JSON / YAML.

use serde::{Deserialize, Serialize};
use stator_api::Phase;
use stator_api::instance::InstanceReport;

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
    pub proxies: Proxies,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The decision core's view: term, primary, fences, holds, the failover in progress, the
    /// last ones and the last switchover request (see [`crate::failover::FailoverReport`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover: Option<crate::failover::FailoverReport>,
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
    #[serde(default)]
    pub report: Option<InstanceReport>,
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
        self.generation == self.observed_generation && self.phase == Phase::Ready
    }
}

/// The table `stator status` prints.
pub fn render_table(report: &SupervisorReport) -> String {
    // PostgreSQL positions are LSNs, the MySQL family's GTID sets; lag is bytes or transactions.
    let position = if report.engine == "postgres" {
        "LSN"
    } else {
        "GTID"
    };
    let mut rows = vec![
        [
            "INSTANCE", "ROLE", "STATE", "PID", "PORT", position, "LAG", "READY", "RESTARTS",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for i in &report.instances {
        let r = i.report.as_ref();
        let role = r
            .and_then(|r| r.role)
            .map(|role| role.to_string())
            .unwrap_or_else(|| "-".into());
        let pid = r
            .and_then(|r| r.pid)
            .map(|p| p.to_string())
            .unwrap_or_else(|| "-".into());
        let lag = r
            .and_then(|r| r.lag)
            .map(|l| l.to_string())
            .unwrap_or_else(|| "-".into());
        let restarts = r.map(|r| r.restarts).unwrap_or(0) + i.manager_restarts;
        let mut state = i.state.clone();
        if i.excess {
            state.push_str(" (removed)");
        }
        rows.push(vec![
            i.name.clone(),
            role,
            state,
            pid,
            i.port.to_string(),
            r.and_then(|r| r.position.clone())
                .unwrap_or_else(|| "-".into()),
            lag,
            match (i.ready(), r.and_then(|r| r.errant.as_ref())) {
                (_, Some(_)) => "no (errant)",
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
    out.push_str(&align(&rows));
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
                }),
            }],
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
        }
    }

    #[test]
    fn table_shows_role_position_and_routes() {
        let table = render_table(&sample());
        assert!(table.contains("pg-0       primary   running"), "{table}");
        assert!(table.contains("0/3000060"), "{table}");
        assert!(table.contains("no replica is ready"), "{table}");
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
    fn report_round_trips_through_json() {
        let report = sample();
        let text = serde_json::to_string(&report).unwrap();
        let back: SupervisorReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, report);
        assert!(back.is_settled());
    }
}
