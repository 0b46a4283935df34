//! Proof and measurement of a running database: the consistency checker behind `stator chaos
//! run` (a writer, a fault loop and a watcher; lost writes and moments with two writable
//! instances counted) and the benchmarks `stator bench local`, `failover`, `backup` and `rpo`.
//!
//! The checker drives a database only through a [`Target`]: where to connect, which instance
//! is the primary, how to fail one. The local runtime is [`LocalTarget`]; a Kubernetes database
//! can be another. It must not decide or repair anything: it writes, watches, injects the
//! fault it was asked for, and reports. Nothing here asserts a time; figures are printed.
//!
//! # Layout
//! - [`checker`]: the check itself and its [`CheckReport`](checker::CheckReport).
//! - [`target`]: the [`Target`] trait; [`local`]: the local runtime's [`LocalTarget`].
//! - [`fault`]: the [`Fault`]s a round injects.
//! - [`bench`]: `stator bench local`, against the same steps by hand and HAProxy.
//! - [`bench_failover`]: `stator bench failover`, the failover write outage against Patroni.
//! - [`bench_backup`]: `stator bench backup` against pgBackRest by hand, and `stator bench rpo`,
//!   the seconds and rows an archive-only restore loses.
//! - [`error`]: [`CheckError`] and the checker's SQL errors.

pub mod bench;
pub mod bench_backup;
pub mod bench_failover;
pub mod checker;
pub mod error;
pub mod fault;
pub mod local;
pub mod target;

pub use error::CheckError;
pub use fault::Fault;
pub use local::LocalTarget;
pub use target::{Injection, Observation, Target};
