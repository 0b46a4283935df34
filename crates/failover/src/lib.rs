//! The shell half of failover that both runtimes share: instance reports into the decision
//! core's input (PostgreSQL timelines included), orders to the instance managers over HTTP,
//! switchover tickets, orders in flight, the history of failovers and switchovers with their
//! write outage. What only a runtime can do (fence, hold down, rebuild, route, create and
//! remove instances, keep the state) sits behind [`Runtime`]: the local runtime implements it
//! with processes, the operator with pods.
//!
//! It must not decide anything: every failover, switchover, fence and route comes from
//! [`stator_control::decide`]. It never touches a process, a file or a Kubernetes object
//! itself; that is the runtime's part.
//!
//! # Layout
//! - [`shell`]: [`Failover`] and its [`Failover::tick`]: observe, decide, act, route, record.
//! - [`runtime`]: the [`Runtime`] trait, and what the runtime tells a tick ([`Sighting`]).
//! - [`history`]: what is kept (`failover.json`): the core's memory, events, write outages;
//!   the failover part of the status report.
//! - [`ticket`]: switchover requests and their [`TicketState`].
//! - [`client`]: the HTTP client for instance managers (and the local supervisor), which is
//!   `stator_engine::manager_client`: the instance managers use it to ask each other too.
//! - [`server`]: the direct query to a primary's server and the write check through `rw`.
//! - [`clock`]: monotonic and wall clocks, RFC 3339.

pub mod clock;
pub mod history;
pub mod runtime;
pub mod server;
pub mod shell;
pub mod ticket;

#[cfg(test)]
mod fake;

pub use stator_engine::manager_client as client;

pub use history::{
    EventKind, EventOutcome, FailoverEvent, FailoverReport, FailoverState, WriteOutage,
    render_failover,
};
pub use runtime::{FinalCheckpoint, Runtime, Sighting, Work};
pub use shell::{Failover, Tick, ro_falls_back};
pub use ticket::{SwitchoverDesk, SwitchoverTicket, TicketState};
