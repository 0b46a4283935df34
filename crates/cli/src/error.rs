//! Errors of the command line and their exit codes.

use std::process::ExitCode;

/// Exit code for invalid input: a bad spec, file or argument. Nothing was changed.
pub const EXIT_INVALID: u8 = 2;
/// Exit code for a failure while acting, or lint findings at error level.
pub const EXIT_FAILED: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The input can never work as given; exit 2, nothing written.
    #[error("{0}")]
    Invalid(String),
    /// Something failed while doing the work; exit 1.
    #[error("{0}")]
    Failed(String),
}

impl From<stator_check::CheckError> for CliError {
    fn from(e: stator_check::CheckError) -> Self {
        if e.is_invalid() {
            CliError::Invalid(e.to_string())
        } else {
            CliError::Failed(e.to_string())
        }
    }
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        match self {
            CliError::Invalid(_) => ExitCode::from(EXIT_INVALID),
            CliError::Failed(_) => ExitCode::from(EXIT_FAILED),
        }
    }
}

pub type CliResult = Result<ExitCode, CliError>;
