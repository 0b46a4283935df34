//! The local runtime: runs a `Database` on this machine with real database processes — the
//! StatefulSet's ordered instances, its PVCs, its `-rw`/`-ro` Services — and the commands
//! `up`, `status`, `uri`, `logs`, `down` and `delete` behind them.
//!
//! It owns the state dir (one directory per database: spec, 0600 secrets, data dirs, logs, pid
//! files), the supervisor process (`stator supervise`) that starts instance managers
//! (`stator instance --config FILE`) in ordinal order, restarts and adopts them, and the TCP
//! proxies. It must not decide a failover (the primary is what the state dir records; the
//! decision core will change it), must not touch a data dir itself (the instance manager does),
//! and never puts a secret on a command line or in a log.
//!
//! # Layout
//! - [`state`]: the state dir's layout, the applied spec, the primary record, atomic writes.
//! - [`secrets`]: generated credentials, 0600 files, created once.
//! - [`plan`]: pure: instance configs, ports, which spec changes may be applied.
//! - [`preflight`]: checks before anything changes: binaries, OS user, ports, foreign data dirs.
//! - [`process`]: pid files, liveness, detached spawning, stopping.
//! - [`proxy`]: the `rw` / `ro` TCP proxies, and cutting live connections to a fenced primary.
//! - [`failover`]: the local runtime's part of the shared failover shell (`stator-failover`):
//!   fences by signals, data dirs moved aside, `failover.json`, holds (drain), the proxies'
//!   routes.
//! - [`switchover`]: `stator switchover` and `stator drain` (with the disruption budget).
//! - [`snapshot`]: `stator snapshot`: a drained replica's data dir copied, then uncordoned.
//! - [`report`]: the supervisor's report and the `status` table.
//! - [`supervisor`]: the background process that runs it all; [`endpoint`]: its HTTP endpoint
//!   (`/status`, `POST /switchover`).
//! - [`keeper`]: the minimal process that restarts a crashed supervisor and owns the proxies'
//!   listening sockets; [`service`]: the systemd unit for `up --service`.
//! - [`runtime`]: finding and asking the running supervisor and instance managers.
//! - [`transport`]: which endpoints speak TLS; the connector every client here uses.
//! - [`up`], [`stop`], [`inspect`]: the commands.
//! - [`chaos`]: fault injection (`stator chaos kill|stop|resume`): kill -9, SIGSTOP/SIGCONT.
//!   The consistency checker and the benchmarks that use it live in `stator-check`.

pub mod backup;
pub mod backup_mariadb;
mod changes;
pub mod chaos;
pub mod endpoint;
pub mod error;
pub mod failover;
pub mod inspect;
pub mod keeper;
pub mod plan;
pub mod preflight;
pub mod process;
pub mod proxy;
pub mod report;
pub mod runtime;
pub mod secrets;
pub mod service;
pub mod snapshot;
pub mod state;
pub mod stop;
pub mod supervisor;
pub mod switchover;
pub mod transport;
pub mod up;

pub use error::LocalError;
pub use state::{DatabaseDir, StateDir};
