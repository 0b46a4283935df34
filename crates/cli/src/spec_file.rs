//! Reading a `Database` spec file for a subcommand.

use std::path::Path;

use stator_api::{Loaded, load_database};

use crate::error::CliError;

/// Reads and validates the spec at `path` (`-` for stdin). Every problem is reported at once,
/// prefixed by the file name; warnings go to stderr.
pub fn load(path: &Path) -> Result<Loaded, CliError> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| CliError::Invalid(format!("cannot read the spec from stdin: {e}")))?
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::Invalid(format!("{}: cannot read: {e}", path.display())))?
    };
    let shown = path.display();
    match load_database(&text) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                eprintln!("warning: {shown}: {w}");
            }
            Ok(loaded)
        }
        Err(invalid) => {
            let lines: Vec<String> = invalid
                .errors
                .iter()
                .map(|e| format!("{shown}: {e}"))
                .collect();
            Err(CliError::Invalid(format!(
                "{} is not a valid Database spec:\n  {}",
                shown,
                lines.join("\n  ")
            )))
        }
    }
}
