//! The `Database` resource (`stator.dev/v1alpha1`): spec and status types, their defaults, the
//! names derived from them, and validation whose errors name the field path and what is valid.
//!
//! This crate owns the contract between users and both runtimes. It does no I/O: no files, no
//! network, no clock, no processes. Everything here is a pure function of its arguments.
//!
//! # Layout
//! - [`spec`]: the `Database` custom resource and its spec types.
//! - [`status`]: the status subresource: phase, conditions, instances and their roles.
//! - [`load`]: YAML text → a validated `Database` (unknown fields and type errors with paths).
//! - [`validate`]: semantic checks, all problems at once, plus warnings.
//! - [`parameters`]: engine defaults, keys Stator manages, the effective configuration.
//! - [`instance`]: the runtime ↔ instance-manager contract: config file and `/status` report.
//! - [`backup_report`]: the backups and archive an instance manager reports (`backup` in
//!   `/status`), engine-neutral.
//! - [`orders`]: the orders a runtime gives a managed instance manager (bootstrap, role, fence,
//!   rebuild).
//! - [`position`]: replication positions (LSN on a timeline, MariaDB GTID position, MySQL GTID
//!   set), their parsing and their order.
//! - [`names`]: names derived from a database (`NAME-N`, `NAME-rw`, …), labels, name rules.
//! - [`quantity`], [`duration`], [`schedule`]: the small value syntaxes specs use (a backup
//!   schedule is 5-field cron).

pub mod backup_report;
pub mod duration;
pub mod instance;
pub mod load;
pub mod names;
pub mod orders;
pub mod parameters;
pub mod position;
pub mod quantity;
pub mod schedule;
pub mod spec;
pub mod status;
pub mod validate;

pub use load::{API_VERSION, InvalidSpec, KIND, Loaded, load_database};
pub use spec::{Database, DatabaseSpec, Engine, Reclaim};
pub use status::{DatabaseStatus, InstanceStatus, Phase, Role, SwitchoverStatus};
pub use validate::{FieldError, Report, validate};
