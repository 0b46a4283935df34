//! What only a runtime can do, behind one trait: where an instance's server and manager are
//! reached, where the shell's state is kept, what it sees of an instance whose manager is not
//! running, and the actions on processes, pods and data: fence, hold down, rebuild, route,
//! create and remove. The local runtime implements it with processes, signals, directories and
//! its TCP proxies; the operator implements it with pods, PVCs, labels and the instance
//! managers' fence endpoints. A fake implements it in the tests of [`crate::Failover::tick`].
//!
//! An implementation decides nothing: every method carries out or reports one thing the shell
//! asked for, so the same decision core drives every runtime.

use std::future::Future;

use stator_api::Database;
use stator_api::instance::{Endpoint, InstanceReport};
use stator_control::{FenceMethod, LeaseLedger, Memory};
use stator_engine::tls::Dial;

use crate::history::FailoverState;

/// What the runtime knows of one instance at the start of a tick.
#[derive(Clone, Debug)]
pub struct Sighting {
    pub ordinal: u32,
    /// The instance manager runs: its pid (0 where the runtime cannot know it).
    pub manager_pid: Option<u32>,
    /// Its `/status`, when it answered.
    pub report: Option<InstanceReport>,
    /// Why `/status` did not answer.
    pub probe_error: Option<String>,
}

/// The final checkpoint of a cleanly stopped PostgreSQL data dir (what `pg_controldata` says).
pub type FinalCheckpoint = stator_engine::postgres::controldata::ControlData;

/// Work started for an instance and not finished yet (an order, a clean shutdown, a
/// `read_only` switch): no other order goes to that instance meanwhile.
pub struct Work {
    /// What it is, for logs (`promote (term 3)`, `shutdown`).
    pub what: String,
    pub task: tokio::task::JoinHandle<()>,
}

/// What a runtime does for the failover shell. Methods that act are idempotent: the core
/// repeats an action until its effect is observed.
pub trait Runtime: Send {
    /// Why a runtime's own step failed (a file, a process, an API call).
    type Error: std::fmt::Display;

    // ----------------------------------------------------------------------------- clocks

    /// Milliseconds of a clock that never goes backwards, shared by every process that may
    /// continue the core's timers.
    fn monotonic_ms(&self) -> u64 {
        crate::clock::monotonic_ms()
    }

    /// Milliseconds since the Unix epoch.
    fn wall_ms(&self) -> u64 {
        crate::clock::wall_ms()
    }

    // ----------------------------------------------------------------------------- addresses

    /// Where instance `ordinal`'s database server is reached (by the shell's direct query, and
    /// by replicas told to follow it).
    fn server_endpoint(&self, db: &Database, ordinal: u32) -> Endpoint;

    /// Where this process reaches instance `ordinal`'s server for the shell's direct query,
    /// and how it trusts it: by default [`Runtime::server_endpoint`] as this process
    /// registered it.
    fn server_dial(&self, db: &Database, ordinal: u32) -> Dial {
        let endpoint = self.server_endpoint(db, ordinal);
        Dial::registered(endpoint.host, endpoint.port)
    }

    /// Where instance `ordinal`'s manager HTTP endpoint is reached, and how it is trusted.
    fn manager_address(&self, db: &Database, ordinal: u32) -> Dial;

    /// Where the `rw` service is reached, for the write check that ends an outage.
    fn rw_address(&self, db: &Database) -> Dial;

    // ----------------------------------------------------------------------------- secrets

    /// The api-token the instance managers take orders with.
    fn api_token(&self) -> Result<String, Self::Error>;

    /// The monitor user's password, for the direct query to the primary and the write check.
    fn monitor_password(&self) -> Option<String>;

    // ----------------------------------------------------------------------------- state

    /// The shell's state as last saved; `None` when none was ever saved.
    fn load_state(&self) -> Result<Option<FailoverState>, Self::Error>;

    fn save_state(&mut self, state: &FailoverState) -> Result<(), Self::Error>;

    /// Write-ahead: `state`, just decided, persisted where a next shell loads it from, before
    /// any of its actions is carried out. A runtime whose [`Runtime::save_state`] already
    /// persists (a file) needs nothing here. The operator's store is the Database's status,
    /// written at the end of its round: an operator killed between a decision's orders (a
    /// candidate's lease of a new term, `/promote`) and that write left a next leader an older
    /// state than the managers had acted on, and it undid a switchover's promotion it did
    /// not know of (found by the restart-during-hand-over drill).
    fn persist_state(
        &mut self,
        state: &FailoverState,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send {
        let _ = state;
        async { Ok(()) }
    }

    /// The primary the runtime starts instances against (the local `primary` record).
    fn recorded_primary(&self) -> Option<u32>;

    /// Records `name` (instance `ordinal`) as the primary, once the core confirmed it.
    fn record_primary(&mut self, ordinal: u32, name: &str) -> Result<(), Self::Error>;

    // ----------------------------------------------------------------------------- what it sees

    /// Instances the runtime holds anything of (a data dir, a PVC), beyond `spec.instances`
    /// too.
    fn known_ordinals(&self) -> Vec<u32>;

    /// The pid of a server running on instance `ordinal`'s data, as the runtime sees it
    /// without asking its manager (a server left running by a dead manager; one that must be
    /// gone before its data is moved). `Some(0)` where it runs and its pid is not known.
    fn server_pid(&self, db: &Database, ordinal: u32) -> Option<u32>;

    /// Whether instance `ordinal`'s data dir (volume) holds data.
    fn holds_data(&self, ordinal: u32) -> bool;

    /// Whether the recorded primary `ordinal` lost its data while the database had data: it
    /// must not be initialised empty.
    fn data_lost(&self, ordinal: u32, instances: u32) -> bool;

    /// Where instance `ordinal`'s data lives, for messages.
    fn data_location(&self, ordinal: u32) -> String;

    /// The final checkpoint of instance `ordinal`'s stopped PostgreSQL data dir, when it can
    /// be read and the data dir follows no other instance.
    fn final_checkpoint(
        &self,
        ordinal: u32,
    ) -> impl Future<Output = Option<FinalCheckpoint>> + Send;

    // ----------------------------------------------------------------------------- leases

    /// The write leases this runtime sends, as they stand before a decision (on the clock of
    /// [`Runtime::monotonic_ms`]); `None`: it sends none, and the core decides without them.
    fn leases(&self) -> Option<LeaseLedger> {
        None
    }

    /// Whether clients can be routed to instance `ordinal` now, were it made the primary (a
    /// pod that Kubernetes counts Ready); among equally advanced replicas the core promotes a
    /// routable one first ([`stator_control::Input::unroutable`]). By default every instance
    /// is.
    fn routable(&self, _ordinal: u32) -> bool {
        true
    }

    /// The core decided `memory` (its actions not carried out yet): a runtime that sends
    /// leases names [`Memory::lease_writer`] at [`Memory::lease_term`] from now on, and when
    /// the writer changed it grants before returning, so that a promotion ordered next finds
    /// its lease in place; leases last [`stator_control::lease_length_ms`] of the detection
    /// timeout. Nothing by default.
    fn lease_to(
        &mut self,
        db: &Database,
        detection_timeout_ms: u64,
        memory: &Memory,
    ) -> impl Future<Output = ()> + Send {
        let _ = (db, detection_timeout_ms, memory);
        async {}
    }

    // ----------------------------------------------------------------------------- hold down

    /// Why instance `ordinal` is held down (drained, held by a drill), when it is.
    fn held(&self, ordinal: u32) -> Option<String>;

    // ----------------------------------------------------------------------------- routes

    /// Points `rw` at `rw` (none: it refuses connections).
    fn set_rw(&mut self, db: &Database, rw: Option<u32>);

    /// Points `ro` at `ro`.
    fn set_ro(&mut self, db: &Database, ro: &[u32]);

    /// Cuts the live connections routed to instance `ordinal`; how many.
    fn cut(&mut self, db: &Database, ordinal: u32) -> usize;

    /// Takes instance `ordinal` out of `rw` and `ro` and cuts its connections (the first step
    /// of a fence).
    fn unroute(&mut self, db: &Database, ordinal: u32);

    // ----------------------------------------------------------------------------- actions

    /// Fences instance `ordinal` (already unrouted) by `method`; `manager` is its manager's
    /// pid when it runs. Work that goes on after the call (a clean shutdown) is returned and
    /// counts as in flight.
    fn fence(
        &mut self,
        db: &Database,
        ordinal: u32,
        method: FenceMethod,
        manager: Option<u32>,
    ) -> Option<Work>;

    /// Switches a MySQL-family server's `read_only` (a read-only fence, and its release).
    fn set_read_only(&mut self, db: &Database, ordinal: u32, on: bool) -> Option<Work>;

    /// Stops instance `ordinal` to rebuild it (`manager`: its pid when it runs).
    fn stop_for_rebuild(&mut self, ordinal: u32, manager: Option<u32>);

    /// Moves instance `ordinal`'s data aside (kept, never deleted) so it is cloned again;
    /// where it was kept.
    fn move_data_aside(&mut self, ordinal: u32) -> Result<String, Self::Error>;

    /// Whether an instance's own manager carries a rebuild out once ordered (stop, move
    /// aside, clone, start), so the shell has nothing to wait for or finish, and nothing to
    /// keep down: the operator's pods. The local runtime stops the instance and starts it
    /// again itself.
    fn rebuilds_in_place(&self) -> bool {
        false
    }

    /// The core asked for instance `ordinal` to exist.
    fn create(&mut self, db: &Database, ordinal: u32);

    /// The core asked for instance `ordinal` to be removed (its data is kept).
    fn remove(&mut self, db: &Database, ordinal: u32);
}
