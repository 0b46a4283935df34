//! Switchover requests: the ticket a request gets, its state, and the desk the supervisor's
//! HTTP endpoint (or the operator's annotation) queues requests on and the tick takes them from.

use serde::{Deserialize, Serialize};

use crate::history::WriteOutage;

/// Where a switchover request stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum TicketState {
    /// Waiting for the next decision.
    #[default]
    Queued,
    /// Given to the decision core; the switchover runs.
    Running,
    /// The requested primary (or the most advanced replica) took the writes.
    Done,
    /// The decision core would not start it; the message says why.
    Refused,
    /// Started, then given up: the old primary takes writes again, or it turned into a failover.
    Abandoned,
}

impl TicketState {
    pub fn as_str(self) -> &'static str {
        match self {
            TicketState::Queued => "queued",
            TicketState::Running => "running",
            TicketState::Done => "done",
            TicketState::Refused => "refused",
            TicketState::Abandoned => "abandoned",
        }
    }

    pub fn finished(self) -> bool {
        matches!(
            self,
            TicketState::Done | TicketState::Refused | TicketState::Abandoned
        )
    }
}

impl std::fmt::Display for TicketState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A switchover request (`POST /switchover` on the supervisor) and its outcome.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverTicket {
    pub id: u64,
    /// The instance asked for; `None`: the most advanced replica.
    #[serde(default)]
    pub to: Option<String>,
    pub state: TicketState,
    pub message: String,
    /// The primary when the request was taken.
    #[serde(default)]
    pub from: Option<String>,
    /// The primary after it finished.
    #[serde(default)]
    pub primary: Option<String>,
    /// The switchover's write outage, once measured.
    #[serde(flatten)]
    pub outage: WriteOutage,
}

impl SwitchoverTicket {
    pub fn finished(&self) -> bool {
        self.state.finished()
    }

    /// The outcome for a person: `switchover STATE: REASON`. The decision core's refusals
    /// carry `switchover refused: ` already; it is said once, not twice.
    pub fn outcome(&self) -> String {
        let prefix = format!("switchover {}: ", self.state);
        let reason = self.message.strip_prefix(&prefix).unwrap_or(&self.message);
        format!("{prefix}{reason}")
    }
}

/// The switchover requests the HTTP endpoint takes and the tick consumes.
#[derive(Debug, Default)]
pub struct SwitchoverDesk {
    next_id: u64,
    pub(crate) queued: Option<(SwitchoverTicket, Option<u32>)>,
    pub(crate) last: Option<SwitchoverTicket>,
}

impl SwitchoverDesk {
    /// Queues a request for the next tick; its ticket.
    pub fn request(&mut self, to: Option<(String, u32)>) -> SwitchoverTicket {
        self.next_id += 1;
        let ticket = SwitchoverTicket {
            id: self.next_id,
            to: to.as_ref().map(|(name, _)| name.clone()),
            state: TicketState::Queued,
            message: "waiting for the next decision".into(),
            ..SwitchoverTicket::default()
        };
        self.queued = Some((ticket.clone(), to.map(|(_, o)| o)));
        self.last = Some(ticket.clone());
        ticket
    }

    pub fn last(&self) -> Option<SwitchoverTicket> {
        self.last.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_switchover_says_refused_once() {
        let ticket = SwitchoverTicket {
            state: TicketState::Refused,
            message: "switchover refused: pg-1 is already the primary".into(),
            ..SwitchoverTicket::default()
        };
        assert_eq!(
            ticket.outcome(),
            "switchover refused: pg-1 is already the primary"
        );
        let abandoned = SwitchoverTicket {
            state: TicketState::Abandoned,
            message: "the primary was lost: turned into a failover".into(),
            ..SwitchoverTicket::default()
        };
        assert_eq!(
            abandoned.outcome(),
            "switchover abandoned: the primary was lost: turned into a failover"
        );
    }

    #[test]
    fn the_desk_queues_one_request_and_remembers_the_last() {
        let mut desk = SwitchoverDesk::default();
        let first = desk.request(None);
        let second = desk.request(Some(("db-2".into(), 2)));
        assert_eq!((first.id, second.id), (1, 2));
        assert_eq!(desk.queued.as_ref().map(|(_, to)| *to), Some(Some(2)));
        assert_eq!(desk.last().map(|t| t.id), Some(2));
    }

    #[test]
    fn ticket_states_are_written_as_before() {
        for (state, text) in [
            (TicketState::Queued, "queued"),
            (TicketState::Running, "running"),
            (TicketState::Done, "done"),
            (TicketState::Refused, "refused"),
            (TicketState::Abandoned, "abandoned"),
        ] {
            assert_eq!(serde_json::to_value(state).unwrap(), text);
            assert_eq!(
                serde_json::from_value::<TicketState>(text.into()).unwrap(),
                state
            );
        }
    }
}
