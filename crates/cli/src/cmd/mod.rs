//! One module per subcommand.

pub mod chaos;
pub mod crd;
pub mod instance;
pub mod lint;
pub mod local;
pub mod render;
pub mod switchover;
pub mod validate;

use tracing_subscriber::EnvFilter;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Logs go to stderr: human-readable by default, JSON with `--log-format json`. `RUST_LOG`
/// overrides the level chosen by `-v`.
pub fn init_logging(format: LogFormat, verbose: u8) {
    let level = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
