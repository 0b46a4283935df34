//! What `decide` is given: the spec facts that matter for failover, what was observed of each
//! instance, and an optional operator request (a planned switchover).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use stator_api::duration::parse_duration;
use stator_api::instance::{InstanceReport, ServerState};
use stator_api::position::{PositionError, ReplicationPosition};
use stator_api::{Database, Engine, Role};

use crate::lease::LeaseLedger;
use crate::memory::Memory;

/// The part of the `Database` spec the decision core needs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    /// `metadata.name`; instance N is `NAME-N`.
    pub name: String,
    pub engine: Engine,
    /// `spec.instances`: ordinals `0..instances` should exist.
    pub instances: u32,
    /// `spec.replication.synchronous`: never promote a replica that may lack an acknowledged write.
    pub synchronous: bool,
    /// `spec.failover.enabled`: when false, a lost primary is reported, never replaced.
    pub failover_enabled: bool,
    /// `spec.failover.detectionTimeout` in milliseconds: how long the primary must look
    /// unhealthy, continuously, before it is failed over.
    pub detection_timeout_ms: u64,
    /// How long a planned switchover may wait for its candidate to catch up before it is
    /// abandoned and the old primary takes writes again.
    pub switchover_timeout_ms: u64,
}

/// A spec the core cannot use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error(
        "spec.failover.detectionTimeout: {value:?} is not a duration (expected e.g. 2s, 1500ms or 1m)"
    )]
    DetectionTimeout { value: String },
}

impl ClusterSpec {
    /// The default for [`ClusterSpec::switchover_timeout_ms`].
    pub const DEFAULT_SWITCHOVER_TIMEOUT_MS: u64 = 30_000;

    /// The facts of a (validated) `Database`.
    pub fn from_database(db: &Database) -> Result<ClusterSpec, SpecError> {
        let value = &db.spec.failover.detection_timeout;
        let timeout = parse_duration(value).ok_or_else(|| SpecError::DetectionTimeout {
            value: value.clone(),
        })?;
        Ok(ClusterSpec {
            name: db.name().to_string(),
            engine: db.spec.engine,
            instances: db.spec.instances,
            synchronous: db.spec.replication.synchronous,
            failover_enabled: db.spec.failover.enabled,
            detection_timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
            switchover_timeout_ms: Self::DEFAULT_SWITCHOVER_TIMEOUT_MS,
        })
    }

    /// `NAME-N`.
    pub fn instance_name(&self, ordinal: u32) -> String {
        format!("{}-{ordinal}", self.name)
    }

    /// N of `NAME-N`, when `name` is an instance of this database.
    pub fn ordinal_of(&self, name: &str) -> Option<u32> {
        let rest = name.strip_prefix(&self.name)?.strip_prefix('-')?;
        if rest.is_empty() || !rest.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        rest.parse().ok()
    }
}

/// What a runtime knows about one instance at the moment it asks for a decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "presence")]
pub enum Presence {
    /// Never created, or deleted with its data: no data directory / no PVC.
    Absent,
    /// Exists, and the runtime knows its server is not running (the process is gone, the pod is
    /// not running). A fenced instance is held down: it is not started again as a writable
    /// server without an order from the core.
    Down { reason: String },
    /// Exists, but nothing could be learned: the instance manager does not answer, or the server
    /// hangs. It may still be accepting writes.
    Unreachable { reason: String },
    /// The instance manager answered (`GET /status`).
    Reported(InstanceFacts),
}

/// The facts of an instance report the core decides on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceFacts {
    pub state: ServerState,
    /// `None` while unknown.
    #[serde(default)]
    pub role: Option<Role>,
    /// Ready for traffic.
    pub ready: bool,
    /// A primary that refuses writes (`read_only`/`super_read_only`, or PostgreSQL
    /// `default_transaction_read_only` after a fence).
    #[serde(default)]
    pub read_only: bool,
    /// A primary's write position, a replica's applied (replayed) position.
    #[serde(default)]
    pub position: Option<ReplicationPosition>,
    /// A replica's received (flushed) position: WAL flushed, or the retrieved GTID set.
    #[serde(default)]
    pub received_position: Option<ReplicationPosition>,
    /// The instance a replica follows.
    #[serde(default)]
    pub upstream: Option<u32>,
    /// The replica's last replication error, if it is not replicating.
    #[serde(default)]
    pub replication_error: Option<String>,
    /// It holds transactions the primary's history does not: an errant GTID set (MySQL
    /// family) or WAL past the point where the primary's timeline forked (PostgreSQL).
    #[serde(default)]
    pub diverged: bool,
    /// Its manager reports an empty data dir (never bootstrapped, or cloned again after a
    /// rebuild): it holds no transaction, acknowledged or not.
    #[serde(default)]
    pub empty: bool,
    /// Why it is not ready, in words.
    #[serde(default)]
    pub message: Option<String>,
}

impl InstanceFacts {
    /// Reads an instance manager's `/status` report. Positions are parsed for the spec's
    /// engine; an upstream that is not an instance of this database is dropped.
    pub fn from_report(
        spec: &ClusterSpec,
        report: &InstanceReport,
    ) -> Result<InstanceFacts, PositionError> {
        let parse = |text: &Option<String>| {
            text.as_deref()
                .map(|t| ReplicationPosition::parse(spec.engine, t, report.timeline))
                .transpose()
        };
        Ok(InstanceFacts {
            state: report.state,
            role: report.role,
            ready: report.ready,
            read_only: report.read_only,
            position: parse(&report.position)?,
            received_position: parse(&report.received_position)?,
            upstream: report.upstream.as_deref().and_then(|u| spec.ordinal_of(u)),
            replication_error: report.replication_error.clone(),
            diverged: report.errant.is_some(),
            empty: report.holds_data == Some(false),
            message: report.message.clone(),
        })
    }

    /// Accepts writes: a running primary that is not read-only.
    pub fn writable(&self) -> bool {
        self.state == ServerState::Running && self.role == Some(Role::Primary) && !self.read_only
    }

    /// Everything the instance holds: the furthest of its received and applied positions.
    pub fn held(&self) -> Option<ReplicationPosition> {
        match (&self.position, &self.received_position) {
            (Some(a), Some(b)) => Some(furthest(a, b)),
            (Some(a), None) | (None, Some(a)) => Some(a.clone()),
            (None, None) => None,
        }
    }
}

/// The position holding both: the later WAL position, the union of GTID sets. With positions
/// of different engines, `a`.
pub(crate) fn furthest(a: &ReplicationPosition, b: &ReplicationPosition) -> ReplicationPosition {
    match (a, b) {
        (ReplicationPosition::Wal(x), ReplicationPosition::Wal(y)) => {
            ReplicationPosition::Wal(*x.max(y))
        }
        (ReplicationPosition::Mariadb { gtid: x }, ReplicationPosition::Mariadb { gtid: y }) => {
            ReplicationPosition::Mariadb { gtid: x.union(y) }
        }
        (ReplicationPosition::Mysql { gtid: x }, ReplicationPosition::Mysql { gtid: y }) => {
            ReplicationPosition::Mysql { gtid: x.union(y) }
        }
        _ => a.clone(),
    }
}

impl Presence {
    /// The report, when the instance manager answered.
    pub fn facts(&self) -> Option<&InstanceFacts> {
        match self {
            Presence::Reported(facts) => Some(facts),
            _ => None,
        }
    }

    /// Known not to accept writes: absent, down, stopped or failed, a replica, or read-only.
    /// An unreachable instance, or a primary that is starting or crashed (and may be restarted),
    /// is not known.
    pub fn cannot_write(&self) -> bool {
        match self {
            Presence::Absent | Presence::Down { .. } => true,
            Presence::Unreachable { .. } => false,
            Presence::Reported(f) => {
                matches!(f.state, ServerState::Stopped | ServerState::Failed)
                    || f.role == Some(Role::Replica)
                    || (f.state == ServerState::Running && f.read_only)
            }
        }
    }

    /// Reported as accepting writes.
    pub fn writable(&self) -> bool {
        self.facts().is_some_and(InstanceFacts::writable)
    }

    /// In words, for status messages.
    pub fn describe(&self) -> String {
        match self {
            Presence::Absent => "absent".to_string(),
            Presence::Down { reason } => format!("down ({reason})"),
            Presence::Unreachable { reason } => format!("unreachable ({reason})"),
            Presence::Reported(f) => {
                let role = f.role.map_or("unknown role", |r| r.as_str());
                let mut text = format!("{} {role}", f.state.as_str());
                if f.read_only {
                    text.push_str(", read-only");
                }
                if let Some(m) = f.message.as_deref().or(f.replication_error.as_deref()) {
                    text.push_str(&format!(" ({m})"));
                }
                text
            }
        }
    }
}

/// An operator's request, passed once; the core remembers it until it is done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum Request {
    /// Planned switchover (`stator switchover`, `stator drain` of the primary): fence writes on
    /// the primary, wait until the candidate holds the primary's final position, promote it.
    /// `to: None` picks the most advanced replica.
    Switchover {
        #[serde(default)]
        to: Option<u32>,
    },
}

/// Everything `decide` looks at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Input {
    pub spec: ClusterSpec,
    /// By ordinal. An ordinal missing from the map is [`Presence::Absent`].
    pub observed: BTreeMap<u32, Presence>,
    /// The time now in milliseconds, from any clock that does not go backwards (the shells use
    /// a monotonic clock). Only differences matter.
    pub now_ms: u64,
    /// The previous decision's memory (`Memory::default()` the first time).
    pub memory: Memory,
    #[serde(default)]
    pub request: Option<Request>,
    /// The write leases the shell sent, when it sends them ([`LeaseLedger`]). With a ledger,
    /// an instance the shell knows only as down or absent (not from its manager's own report)
    /// counts as unable to write only once no lease of it can be valid
    /// ([`LeaseLedger::lease_void`]), and a replica is promoted over such an instance only once
    /// it has answered continuously for the Down bound ([`LeaseLedger::candidate_verdict`]).
    /// For down and absent instances it can only delay a fence's confirmation or a promotion;
    /// an unreachable instance, which without a ledger never counts as unable to write, counts
    /// so once no lease of it can be valid (a frozen node, a partition). `None`: no leases (the
    /// local runtime today), the core decides as without them.
    #[serde(default)]
    pub leases: Option<LeaseLedger>,
    /// Instances the runtime cannot route clients to yet (on Kubernetes, a pod its kubelet
    /// does not count Ready: Services leave it out until a readiness probe passes, up to a
    /// startup probe's period after the pod started). Among replicas that hold the same, one
    /// clients can reach is promoted first. Empty: every instance is routable (the local
    /// runtime's proxies follow the core at once).
    #[serde(default)]
    pub unroutable: BTreeSet<u32>,
}

impl Input {
    /// What was observed of instance `ordinal`.
    pub fn presence(&self, ordinal: u32) -> &Presence {
        static ABSENT: Presence = Presence::Absent;
        self.observed.get(&ordinal).unwrap_or(&ABSENT)
    }

    /// The report of instance `ordinal`, when it answered.
    pub fn facts(&self, ordinal: u32) -> Option<&InstanceFacts> {
        self.presence(ordinal).facts()
    }

    /// `ordinal` is known unable to write: [`Presence::cannot_write`], and, when it was not its
    /// manager that said so (down or absent), no lease of it can be valid any more. With a
    /// lease ledger, an unreachable instance is unable to write once no lease of it can be
    /// valid (its manager kills its server when the lease ends); without one, never.
    pub fn cannot_write(&self, ordinal: u32) -> bool {
        let presence = self.presence(ordinal);
        match presence {
            Presence::Unreachable { .. } => self.leases.is_some() && self.lease_void(ordinal),
            _ => {
                presence.cannot_write() && (presence.facts().is_some() || self.lease_void(ordinal))
            }
        }
    }

    /// No lease naming `ordinal` the writer can be valid now; always true without a ledger.
    pub fn lease_void(&self, ordinal: u32) -> bool {
        self.leases
            .as_ref()
            .is_none_or(|l| l.lease_void(ordinal, self.now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(engine: Engine) -> ClusterSpec {
        ClusterSpec {
            name: "demo".into(),
            engine,
            instances: 3,
            synchronous: false,
            failover_enabled: true,
            detection_timeout_ms: 2_000,
            switchover_timeout_ms: ClusterSpec::DEFAULT_SWITCHOVER_TIMEOUT_MS,
        }
    }

    fn report() -> InstanceReport {
        InstanceReport {
            name: "demo-1".into(),
            state: ServerState::Running,
            role: Some(Role::Replica),
            ready: true,
            pid: Some(10),
            manager_pid: 9,
            server_version: None,
            uptime_seconds: None,
            timeline: Some(2),
            position: Some("0/3000060".into()),
            received_position: Some("0/3000100".into()),
            lag: None,
            lag_seconds: None,
            upstream: Some("demo-0".into()),
            message: None,
            restarts: 0,
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
    fn a_report_becomes_facts_with_parsed_positions_and_upstream_ordinal() {
        let facts = InstanceFacts::from_report(&spec(Engine::Postgres), &report()).unwrap();
        assert_eq!(facts.upstream, Some(0));
        assert_eq!(
            facts.held().map(|p| p.to_string()),
            Some("0/3000100 on timeline 2".to_string())
        );
        assert!(!facts.writable());
    }

    #[test]
    fn a_report_with_an_unparseable_position_is_refused_naming_the_text() {
        let mut bad = report();
        bad.position = Some("3000060".into());
        let error = InstanceFacts::from_report(&spec(Engine::Postgres), &bad).unwrap_err();
        assert!(error.to_string().contains("\"3000060\""), "{error}");
        let mut foreign = report();
        foreign.upstream = Some("other-0".into());
        let facts = InstanceFacts::from_report(&spec(Engine::Postgres), &foreign).unwrap();
        assert_eq!(facts.upstream, None);
    }

    #[test]
    fn only_a_running_writable_primary_is_writable_and_unreachable_is_never_known_safe() {
        let mut facts = InstanceFacts::from_report(&spec(Engine::Postgres), &report()).unwrap();
        facts.role = Some(Role::Primary);
        assert!(Presence::Reported(facts.clone()).writable());
        facts.read_only = true;
        assert!(Presence::Reported(facts.clone()).cannot_write());
        facts.read_only = false;
        facts.state = ServerState::Starting;
        assert!(!Presence::Reported(facts.clone()).cannot_write());
        facts.state = ServerState::Stopped;
        assert!(Presence::Reported(facts).cannot_write());
        let unreachable = Presence::Unreachable {
            reason: "timeout".into(),
        };
        assert!(!unreachable.cannot_write() && !unreachable.writable());
    }
}
