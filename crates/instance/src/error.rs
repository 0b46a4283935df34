//! Why the instance manager stopped, naming the file, port or instance involved.

use stator_engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// The engine refused or failed (foreign data dir, missing binaries, secrets, initdb…).
    #[error("instance {instance}: {source}")]
    Engine {
        instance: String,
        #[source]
        source: EngineError,
    },
    /// The HTTP endpoint could not be served.
    #[error(
        "instance {instance}: cannot listen on {address} (the instance manager's httpPort): {source}"
    )]
    Listen {
        instance: String,
        address: String,
        source: std::io::Error,
    },
    /// The configuration cannot work.
    #[error("instance config: {field}: {message}")]
    Config { field: String, message: String },
    /// Something else that stops the manager.
    #[error("instance {instance}: {message}")]
    Failed { instance: String, message: String },
}
