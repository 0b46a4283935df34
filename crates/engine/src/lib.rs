//! What differs between PostgreSQL and the MySQL family, behind one trait ([`ServerEngine`]):
//! creating a data directory (initdb, pg_basebackup; mariadb-install-db, mariadb-backup),
//! writing the server's configuration, starting, probing, observing roles, replication positions
//! and errant transactions, promoting, rejoining after a failover (pg_rewind; a GTID check and
//! re-point), and ordering positions. The instance manager drives a server only through this
//! trait.
//!
//! It must not know anything of Kubernetes, decide anything (failover is the `control` crate's
//! decision), or let a secret reach a command line or a log: passwords come from 0600 files and go
//! to PostgreSQL as SCRAM verifiers, to initdb through a 0600 `--pwfile`, to replication through
//! a 0600 libpq password file; to the MySQL family as password hashes (MariaDB) or inside
//! statements over the Unix socket, where the manager authenticates by its OS user.
//!
//! # Layout
//! - [`server_engine`]: the [`ServerEngine`] trait and the [`Observation`] it returns.
//! - [`postgres`]: PostgreSQL's implementation, its config files and binaries.
//! - [`mysql_family`]: the MySQL family's implementation, shared by its flavors.
//! - [`mariadb`], [`mysql`]: what is MariaDB's and MySQL 8's own (the [`mysql_family::Dialect`]s).
//! - [`object_store`]: a repository's objects in a directory or an S3 bucket (put-if-absent,
//!   get, list, delete).
//! - [`data_dir`]: the marker naming the database a data directory belongs to.
//! - [`credentials`]: passwords read from the secrets directory, redacted in `Debug`.
//! - [`server_user`]: the unprivileged OS user a server runs as, and file ownership.
//! - [`parameter_check`]: `spec.config.parameters` checked against the server binary itself.
//! - [`process`]: starting tools and the server as that user; adopting a running server.
//! - [`procfs`]: what `/proc` says of a process (state, parent, command line, tree), read once.
//! - [`manager_client`]: the HTTP client for instance managers (status, orders, backup stream).
//! - [`tls`]: the database's certificates (issued or provided) and the rustls configurations
//!   servers and clients use.
//! - [`error`]: the error type, naming files, users and fields.

pub mod credentials;
pub mod data_dir;
pub mod error;
pub mod manager_client;
pub mod mariadb;
pub mod mysql;
pub mod mysql_family;
pub mod object_store;
pub mod parameter_check;
pub mod postgres;
pub mod process;
pub mod procfs;
pub mod server_engine;
pub mod server_user;
pub mod task;
pub mod tls;

pub use credentials::{Credentials, Secret};
pub use data_dir::{DataDirMarker, DataDirState};
pub use error::EngineError;
pub use mysql_family::MysqlFamily;
pub use postgres::Postgres;
pub use process::ServerProcess;
pub use server_engine::{Observation, ServerEngine};
pub use server_user::ServerUser;
pub use stator_api::position::{Lsn, ReplicationPosition};
