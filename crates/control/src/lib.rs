//! The decision core: from the spec, the observed instances, the time now and what it decided
//! before, the next actions — create, wait, fence, promote, repoint, rejoin, rebuild, remove —
//! plus the status a person reads. Failover and switchover are decided here and nowhere else;
//! the local runtime and the Kubernetes operator only observe and execute.
//!
//! It must not do I/O: no clock (time is an argument), no sleeps, no files, sockets, processes
//! or randomness. [`decide()`] is a pure, deterministic function, tested on tables of situations
//! and on properties over random situations and sequences of observations.
//!
//! The rules it keeps:
//! - Never two writable primaries: an instance is promoted only when every other instance that
//!   could accept writes has been seen fenced (stopped, down or read-only) after being ordered
//!   fenced; any other writable instance is fenced at once.
//! - A primary is failed over only after it looked unhealthy (unreachable, down, hung, not
//!   ready, refusing writes) for the whole detection timeout; one healthy observation resets the
//!   clock. With failover disabled the loss is reported, nothing is done.
//! - With write leases ([`Input::leases`], a [`LeaseLedger`]): an instance known only
//!   through the runtime as down or absent (a deleted pod, a pod not running, a node lost), or
//!   not known at all (unreachable: a frozen node, a partition), counts as unable to write only
//!   once no lease naming it can be valid on its own clock: [`down_after_ms`] = L/0.99 +
//!   max(L/10, 250 ms) after the answer carrying the reading of the last one, L being the
//!   detection timeout; and a replica is promoted over such an instance only once it has
//!   itself answered its leases for that long. For down and absent instances the ledger only
//!   ever delays; an unreachable one, which without leases never counts as unable to write
//!   (it blocks every promotion), counts so by the lease rule alone: its manager kills its
//!   server when its lease ends. Without a ledger the core decides as it always did.
//! - A primary whose data is gone ([`Presence::Absent`]: no data dir / no PVC) while other
//!   instances hold data is failed over at once, confirmed or not, once every one of them
//!   reports what it holds: an empty primary would lose every write. It is created again as a
//!   replica of the new primary; an instance is initialised empty only as a database's first.
//! - The most advanced eligible replica is promoted (see [`candidate`]); in synchronous mode
//!   only one known to hold every acknowledged write, else the database stays unavailable and
//!   the status says why. A failover that cannot finish keeps trying and says why each time.
//! - A planned switchover fences the primary's writes, waits until the target holds the
//!   primary's final position, then promotes it: no write is lost.
//! - A former primary rejoins as a replica (after `pg_rewind` when it may have diverged; a
//!   MySQL-family one with errant GTIDs is rebuilt). Diverged replicas are never candidates.
//!
//! # What the shells must do
//! - Call [`decide()`] after every observation round (a few times a second), passing the
//!   previous decision's [`Memory`] back and persisting it; honour `Wait::recheck_at_ms`.
//! - Apply a decision's actions in order before taking the next observation. Actions are
//!   level-triggered: an order is repeated until its effect is observed, so each must be
//!   idempotent and must not restart work in progress.
//! - `Fence` is recorded by the shell even when the instance cannot be reached, and held: a
//!   fenced instance is never started as a writable server again until `Unfence`, `Rejoin` or
//!   `Rebuild`. Report [`Presence::Down`] only when the server is known not to run.
//! - Fill [`InstanceFacts`] truthfully: `read_only` for a read-only primary, `diverged` when the
//!   instance manager sees errant GTIDs or a timeline it cannot follow, and for a stopped,
//!   fenced primary its final position (PostgreSQL: the latest checkpoint location from
//!   `pg_controldata`, with its timeline).
//! - Route `rw` and `ro` by [`Status::rw`] and [`Status::ro`].
//! - A shell that sends write leases keeps one [`LeaseLedger`] per database on the clock it
//!   passes as `now_ms`, calls [`LeaseLedger::send`] for each lease before sending it, reports
//!   every answer and failure, names as writer only the instance the core authorises (the
//!   unfenced primary outside a transition, the candidate while it is being promoted), and
//!   passes the ledger in [`Input::leases`].
//!
//! # Layout
//! - [`input`]: what `decide` is given: [`ClusterSpec`], [`Presence`] and [`InstanceFacts`] per
//!   instance, the time, the [`Memory`], an optional [`Request`].
//! - [`memory`]: what the core remembers between decisions: primary, term, detection clock,
//!   fences, the transition in progress, synchronous standbys, the timeline fork.
//! - [`action`]: what it returns: [`Action`]s, the new memory and a [`Status`].
//! - [`candidate`]: choosing the replica to promote and the checks that make it safe.
//! - [`decide`](mod@decide): the pipeline of one decision.
//! - [`lease`]: the write-lease ledger the shells keep and the Down rule: an unreachable
//!   instance that may hold a write lease counts as unable to write only once no lease of it
//!   can be valid on its own clock. Given to `decide` as the optional [`Input::leases`], it
//!   only ever delays a fence's confirmation and a promotion.
//! - [`backup_due`](mod@backup_due): whether a scheduled backup is due, from the schedule, the
//!   last run and the time; missed slots give one run, never a burst.
//! - [`backup_health`](mod@backup_health): whether backups are healthy (archive failing or
//!   stalled, backup overdue) and when the data volume fills, from the primary's report.

pub mod action;
pub mod backup_due;
pub mod backup_health;
pub mod candidate;
pub mod decide;
pub mod input;
pub mod lease;
pub mod memory;

pub use action::{Action, Bootstrap, Decision, Reason, Status};
pub use backup_due::{BackupSchedule, Due, ScheduleError, backup_due};
pub use backup_health::{
    ArchiveBaseline, BackupHealth, BackupHealthInput, BackupProblem, backup_health,
};
pub use decide::decide;
pub use input::{ClusterSpec, Input, InstanceFacts, Presence, Request, SpecError};
pub use lease::{
    DownVerdict, Lease, LeaseLedger, LeaseOrder, down_after_ms, lease_length_ms, max_silence_ms,
    quiet_ms,
};
pub use memory::{Fence, FenceMethod, Memory, Transition, TransitionKind, TransitionPhase};
