//! What can go wrong in an engine, each variant naming the file, binary, user or field involved.

use std::path::PathBuf;

/// An engine failure. Messages never contain a secret.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// A binary of the engine is not installed.
    #[error(
        "{binary} not found (looked in {searched}); install PostgreSQL {version}: apt-get install postgresql-{version}, or set binDir in the instance config"
    )]
    MissingBinary {
        binary: String,
        searched: String,
        version: String,
    },
    /// A program of the MySQL family is not installed.
    #[error(
        "{program} not found (looked in {searched}); install {package}, or set binDir in the instance config"
    )]
    MissingProgram {
        program: String,
        searched: String,
        package: String,
    },
    /// The data directory holds something this instance must not touch.
    #[error("{}: {message}; nothing was changed", path.display())]
    ForeignDataDir { path: PathBuf, message: String },
    /// A file or directory operation failed.
    #[error("{}: cannot {action}: {source}", path.display())]
    Io {
        path: PathBuf,
        action: &'static str,
        source: std::io::Error,
    },
    /// A credential file is missing, unreadable or too open.
    #[error("{}: {message}", path.display())]
    Secret { path: PathBuf, message: String },
    /// The OS user the server runs as is unusable.
    #[error("server user {user:?}: {message}")]
    ServerUser { user: String, message: String },
    /// An engine tool exited with an error.
    #[error("{command} failed ({status}); its output is in {}", log.display())]
    Command {
        command: String,
        status: String,
        log: PathBuf,
    },
    /// The server does not accept connections (yet).
    #[error("cannot connect to the server: {0}")]
    Connect(String),
    /// A statement failed.
    #[error("{what}: {message}")]
    Sql { what: &'static str, message: String },
    /// A configuration value cannot be written (the field path names it).
    #[error("{field}: {message}")]
    Config { field: String, message: String },

    /// A certificate or key that cannot be made, read or used.
    #[error("{}: {message}", path.display())]
    Tls { path: PathBuf, message: String },
    /// A replication position could not be read.
    #[error(transparent)]
    Position(#[from] stator_api::position::PositionError),
    /// The operation does not fit the server's current state.
    #[error("{0}")]
    State(String),
    /// This data directory cannot follow `upstream`: it holds transactions the upstream does
    /// not have (errant GTIDs). It must be rebuilt (cloned again), never replicated over.
    #[error(
        "{instance} cannot follow {upstream}: it holds transactions {upstream} does not have: {errant}; rebuild it (clone it again from {upstream})"
    )]
    Errant {
        instance: String,
        upstream: String,
        errant: String,
    },
}

impl EngineError {
    pub(crate) fn io(
        path: impl Into<PathBuf>,
        action: &'static str,
        source: std::io::Error,
    ) -> Self {
        EngineError::Io {
            path: path.into(),
            action,
            source,
        }
    }

    pub(crate) fn sql(what: &'static str, e: &tokio_postgres::Error) -> Self {
        let message = match e.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => e.to_string(),
        };
        EngineError::Sql { what, message }
    }

    pub(crate) fn mysql(what: &'static str, e: mysql_async::Error) -> Self {
        match e {
            mysql_async::Error::Server(s) => EngineError::Sql {
                what,
                message: format!("{} ({})", s.message, s.code),
            },
            mysql_async::Error::Io(e) => EngineError::Connect(e.to_string()),
            mysql_async::Error::Driver(e) => EngineError::Connect(e.to_string()),
            other => EngineError::Sql {
                what,
                message: other.to_string(),
            },
        }
    }

    /// The same error with `secret` blanked out of its message: for statements that carry a
    /// password, whose server error may quote them.
    pub(crate) fn without(self, secret: &str) -> Self {
        let blank = |m: String| {
            if secret.is_empty() {
                m
            } else {
                m.replace(secret, "<redacted>")
            }
        };
        match self {
            EngineError::Sql { what, message } => EngineError::Sql {
                what,
                message: blank(message),
            },
            EngineError::Connect(m) => EngineError::Connect(blank(m)),
            other => other,
        }
    }

    /// True when the failure only means "not accepting connections yet".
    pub fn is_connect(&self) -> bool {
        matches!(self, EngineError::Connect(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_quoted_by_a_server_error_is_blanked() {
        let e = EngineError::Sql {
            what: "pointing replication at the upstream",
            message: "syntax error near 's3cret', MASTER_USE_GTID".into(),
        }
        .without("s3cret");
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert!(e.to_string().contains("<redacted>"), "{e}");
    }
}
