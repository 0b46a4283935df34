//! `stator operator`: the Kubernetes runtime of Stator. It reconciles each `Database` into the
//! objects render's operator mode builds, and runs one high-availability loop per `Database`
//! that drives the shared failover shell ([`stator_failover::Failover`]) with pods as its
//! runtime.
//!
//! It must not decide a failover (every promotion, fence and route comes from
//! `stator_control::decide` through the shell), copy render code (it calls
//! [`stator_kube::render`] in operator mode), force-delete pods, rewrite the credentials
//! Secret, delete a PVC unless `spec.storage.reclaim: Delete`, or write a secret anywhere but
//! the Secret it creates once.
//!
//! # Layout
//! - [`controller`]: the kube-runtime `Controller`, its [`Context`](controller::Context), the
//!   finalizer and the per-step pipeline `validate → build → apply → status`.
//! - [`steps`]: the steps, each its own function and error type.
//! - [`conditions`]: `Ready`, `Progressing`, `Degraded`, `SpecValid` and the status writer
//!   both the controller and the loops use.
//! - [`ha`]: the per-`Database` high-availability loop and its [`Runtime`](stator_failover::Runtime)
//!   of pods (`ha::runtime`), the rollout of a spec change (`ha::rollout`) and the replicas
//!   held over the primary on a scale-down (`ha::scale`).
//! - [`stores`]: the watch caches of Databases, pods, PVCs and Services the loops read.
//! - [`lease`]: leader election on a `coordination.k8s.io` `Lease`.
//! - [`health`]: the probes of the operator pod.
//! - [`kube_cli`]: what `stator status|switchover|uri --kube` read and write.

pub mod conditions;
pub mod controller;
pub mod ha;
pub mod health;
pub mod kube_cli;
pub mod lease;
pub mod steps;
pub mod stores;

#[cfg(test)]
mod fixtures;

pub use controller::{OperatorOptions, run};

/// The field manager of every server-side apply, and the Event reporter.
pub const FIELD_MANAGER: &str = "stator";
/// The finalizer the operator puts on each `Database`.
pub const FINALIZER: &str = "stator.dev/cleanup";
/// The annotation `stator switchover --kube` sets: `ID` or `ID:NAME-N` (the target).
pub const SWITCHOVER_ANNOTATION: &str = "stator.dev/switchover";
