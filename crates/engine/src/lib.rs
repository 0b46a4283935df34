//! What differs between PostgreSQL and the MySQL family, behind one trait ([`ServerEngine`]):
//! creating a data directory (initdb, pg_basebackup), writing the server's configuration,
//! starting, probing, observing roles and replication positions, promoting, rejoining after a
//! failover (pg_rewind), and ordering positions. The instance manager drives a server only
//! through this trait.
//!
//! It must not know anything of Kubernetes, decide anything (failover is the `control` crate's
//! decision), or let a secret reach a command line or a log: passwords come from 0600 files and go
//! to the server as SCRAM verifiers, to initdb through a 0600 `--pwfile`, and to replication
//! through a 0600 libpq password file.
//!
//! # Layout
//! - [`server_engine`]: the [`ServerEngine`] trait and the [`Observation`] it returns.
//! - [`postgres`]: PostgreSQL's implementation, its config files and binaries.
//! - [`data_dir`]: the marker naming the database a data directory belongs to.
//! - [`credentials`]: passwords read from the secrets directory, redacted in `Debug`.
//! - [`server_user`]: the unprivileged OS user a server runs as, and file ownership.
//! - [`process`]: starting tools and the server as that user; adopting a running server.
//! - [`error`]: the error type, naming files, users and fields.

pub mod credentials;
pub mod data_dir;
pub mod error;
pub mod postgres;
pub mod process;
pub mod server_engine;
pub mod server_user;

pub use credentials::{Credentials, Secret};
pub use data_dir::{DataDirMarker, DataDirState};
pub use error::EngineError;
pub use postgres::Postgres;
pub use process::ServerProcess;
pub use server_engine::{Observation, ServerEngine};
pub use server_user::ServerUser;
pub use stator_api::position::{Lsn, ReplicationPosition};
