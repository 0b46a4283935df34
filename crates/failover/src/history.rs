//! What the shell records of failovers and switchovers: `failover.json`'s content (the core's
//! memory, the event history, the timelines seen), each event's write outage, and the
//! failover part of the status report and of the `stator status` table.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use stator_control::{Memory, TransitionKind};

use crate::ticket::SwitchoverTicket;

/// What `failover.json` holds.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverState {
    /// The decision core's memory, passed back into every decision.
    #[serde(default)]
    pub memory: Memory,
    /// Finished failovers and switchovers, oldest first.
    #[serde(default)]
    pub history: Vec<FailoverEvent>,
    /// The transition in progress, as people read it.
    #[serde(default)]
    pub current: Option<FailoverEvent>,
    /// PostgreSQL: the newest timeline each instance was seen on (as a primary, or streaming
    /// as a replica). A replica whose walreceiver stopped (its upstream died) reports the
    /// timeline of its last restartpoint, which may be older than the WAL it holds; its
    /// positions are read on this timeline instead, so it is not taken for diverged.
    #[serde(default)]
    pub timelines: BTreeMap<u32, u32>,
}

/// One failover or switchover.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverEvent {
    pub kind: EventKind,
    /// The primary replaced.
    #[serde(default)]
    pub from: Option<String>,
    /// The new primary (the old one when it took writes again); `None` while in progress.
    #[serde(default)]
    pub to: Option<String>,
    pub outcome: EventOutcome,
    /// The term the new primary started.
    #[serde(default)]
    pub term: u64,
    /// Wall clock (ms since the Unix epoch): the primary first looked unhealthy (failover).
    #[serde(default)]
    pub unhealthy_since_ms: Option<u64>,
    /// Wall clock: the core started the transition (detection ran out, or the request).
    pub started_at_ms: u64,
    /// Wall clock: `rw` lost its target.
    #[serde(default)]
    pub rw_lost_at_ms: Option<u64>,
    /// Wall clock: the new primary accepted writes and `rw` pointed at it.
    #[serde(default)]
    pub finished_at_ms: Option<u64>,
    /// Wall clock: the last moment clients could still write. A failover: the last sighting
    /// of the old primary serving (the detection clock starts there; it may have stopped any
    /// time after it, so this errs on the long side). A switchover: the fence order or `rw`
    /// losing its target, whichever came first.
    #[serde(default)]
    pub writes_stopped_at_ms: Option<u64>,
    /// Wall clock: the first write accepted through `rw` afterwards, as the supervisor's own
    /// write check saw it (see [`write_through`](crate::server::write_through)).
    #[serde(default)]
    pub write_accepted_at_ms: Option<u64>,
    /// From `writes_stopped_at_ms` to `write_accepted_at_ms`, and the part `rw` had no target.
    #[serde(flatten)]
    pub outage: WriteOutage,
    /// The last status message of the transition.
    #[serde(default)]
    pub message: String,
}

/// The failover part of the supervisor's report (`stator status -o json`, key `failover`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FailoverReport {
    /// The current term (counts promotions).
    pub term: u64,
    /// The primary the core holds (`NAME-N`).
    #[serde(default)]
    pub primary: Option<String>,
    /// The decision's reason (`Healthy`, `PrimaryUnhealthy`, `FailoverBlocked`, …).
    pub reason: String,
    /// The decision's message: what is happening and why.
    pub message: String,
    /// Instances fenced (kept from accepting writes) until they rejoin.
    #[serde(default)]
    pub fenced: Vec<String>,
    /// Instances held down (drained, or held by a drill) and why.
    #[serde(default)]
    pub held: BTreeMap<String, String>,
    /// The transition in progress.
    #[serde(default)]
    pub current: Option<FailoverEvent>,
    /// The last finished failover or switchover.
    #[serde(default)]
    pub last: Option<FailoverEvent>,
    /// Every finished failover and switchover this state dir remembers (at most 20).
    #[serde(default)]
    pub history: Vec<FailoverEvent>,
    /// The last switchover request and what became of it.
    #[serde(default)]
    pub switchover: Option<SwitchoverTicket>,
}

/// What a [`FailoverEvent`] records.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum EventKind {
    /// The primary was lost and replaced.
    #[default]
    Failover,
    /// A planned change of primary.
    Switchover,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Failover => "failover",
            EventKind::Switchover => "switchover",
        }
    }
}

impl From<TransitionKind> for EventKind {
    fn from(kind: TransitionKind) -> Self {
        match kind {
            TransitionKind::Failover => EventKind::Failover,
            TransitionKind::Switchover => EventKind::Switchover,
        }
    }
}

/// How a [`FailoverEvent`] ended, or that it has not yet.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum EventOutcome {
    #[default]
    InProgress,
    /// A new primary took the writes.
    Done,
    /// The old primary takes writes again.
    Abandoned,
}

impl EventOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            EventOutcome::InProgress => "inProgress",
            EventOutcome::Done => "done",
            EventOutcome::Abandoned => "abandoned",
        }
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
display_as_str!(EventKind, EventOutcome);

/// The write outage of a failover or switchover.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WriteOutage {
    /// What clients saw (ms): from the last moment the old primary took writes to the first
    /// write accepted through `rw` (see [`FailoverEvent::writes_stopped_at_ms`] and
    /// [`FailoverEvent::write_accepted_at_ms`]). A client adds its own reconnect and retry.
    #[serde(default)]
    pub client_write_outage_ms: Option<u64>,
    /// How long `rw` had no target (ms): only the part of the client outage after the core
    /// gave up on the old primary and before it routed to the new one.
    #[serde(default, alias = "writeOutageMs")]
    pub rw_unrouted_ms: Option<u64>,
}

impl WriteOutage {
    /// `clients could not write for 2315 ms (rw had no target for 237 ms)`; empty when not
    /// measured.
    pub fn describe(&self) -> String {
        match (self.client_write_outage_ms, self.rw_unrouted_ms) {
            (Some(client), Some(rw)) => {
                format!("clients could not write for {client} ms (rw had no target for {rw} ms)")
            }
            (Some(client), None) => format!("clients could not write for {client} ms"),
            (None, Some(rw)) => format!(
                "rw had no target for {rw} ms (the first write on the new primary is not confirmed yet)"
            ),
            (None, None) => String::new(),
        }
    }
}

/// The failover lines of the `stator status` table (the core's message is the report's
/// message): fences, holds, the last failover or switchover.
pub fn render_failover(f: &FailoverReport) -> String {
    let mut out = String::new();
    if !f.fenced.is_empty() {
        out.push_str(&format!(
            "fenced (kept from taking writes until it rejoins): {}\n",
            f.fenced.join(", ")
        ));
    }
    for (name, why) in &f.held {
        out.push_str(&format!(
            "{name}: held down ({why}); `stator drain -f FILE {name} --uncordon` lets it run again\n"
        ));
    }
    if let Some(e) = &f.last {
        out.push_str(&format!(
            "last {}: {} -> {} ({}, term {}){}\n",
            e.kind,
            e.from.as_deref().unwrap_or("?"),
            e.to.as_deref().unwrap_or("?"),
            e.outcome,
            e.term,
            match e.outage.describe() {
                d if d.is_empty() => d,
                d => format!(", {d}"),
            }
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_names_its_outages_and_reads_the_old_rw_figure_as_what_it_was() {
        let old: FailoverEvent = serde_json::from_str(
            r#"{"kind":"failover","outcome":"done","startedAtMs":5,"writeOutageMs":254}"#,
        )
        .unwrap();
        assert_eq!(old.outage.rw_unrouted_ms, Some(254));
        assert_eq!(old.outage.client_write_outage_ms, None);
        let mut event = old;
        event.outage.client_write_outage_ms = Some(5300);
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["clientWriteOutageMs"], 5300);
        assert_eq!(json["rwUnroutedMs"], 254);
        assert!(json.get("writeOutageMs").is_none(), "{json}");
        assert_eq!(
            event.outage.describe(),
            "clients could not write for 5300 ms (rw had no target for 254 ms)"
        );
    }

    #[test]
    fn event_states_are_written_as_before() {
        let event = FailoverEvent {
            kind: EventKind::Switchover,
            outcome: EventOutcome::InProgress,
            ..FailoverEvent::default()
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(
            (json["kind"].as_str(), json["outcome"].as_str()),
            (Some("switchover"), Some("inProgress"))
        );
        for (outcome, text) in [
            (EventOutcome::Done, "done"),
            (EventOutcome::Abandoned, "abandoned"),
        ] {
            assert_eq!(serde_json::to_value(outcome).unwrap(), text);
            assert_eq!(outcome.to_string(), text);
        }
        assert_eq!(
            serde_json::to_value(EventKind::Failover).unwrap(),
            "failover"
        );
    }
}
