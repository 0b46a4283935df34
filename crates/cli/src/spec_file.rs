//! Reading a `Database` spec file for a subcommand.

use std::path::Path;

use stator_api::{Loaded, load_database};

use crate::error::CliError;

/// Which warnings a command shows: those about the runtime it acts on, once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Warnings {
    /// Everything (`validate`).
    All,
    /// Kubernetes placement, budgets and storage; not `spec.local` (`render`).
    Kubernetes,
    /// The local runtime's; not scheduling, disruption or storage, which only a cluster uses (`up`).
    Local,
    /// None: commands that read a spec already applied (`status`, `uri`, `down`, …).
    Quiet,
}

impl Warnings {
    fn shows(self, path: &str) -> bool {
        let kubernetes_only = ["spec.scheduling", "spec.disruption", "spec.storage"]
            .iter()
            .any(|p| path.starts_with(p));
        match self {
            Warnings::All => true,
            Warnings::Kubernetes => !path.starts_with("spec.local"),
            Warnings::Local => !kubernetes_only,
            Warnings::Quiet => false,
        }
    }
}

/// Reads and validates the spec at `path` (`-` for stdin). Every problem is reported at once,
/// prefixed by the file name; the warnings `warnings` selects go to stderr.
pub fn load_for(path: &Path, warnings: Warnings) -> Result<Loaded, CliError> {
    let text = read(path)?;
    load_text(path, &text, warnings)
}

/// The text of the spec at `path` (`-` for stdin).
pub fn read(path: &Path) -> Result<String, CliError> {
    if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
            .map_err(|e| CliError::Invalid(format!("cannot read the spec from stdin: {e}")))
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CliError::Invalid(format!("{}: cannot read: {e}", path.display())))
    }
}

/// As [`load_for`], on the `text` read from `path`.
pub fn load_text(path: &Path, text: &str, warnings: Warnings) -> Result<Loaded, CliError> {
    let shown = path.display();
    match load_database(text) {
        Ok(loaded) => {
            for w in loaded.warnings.iter().filter(|w| warnings.shows(&w.path)) {
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

#[cfg(test)]
mod tests {
    use super::Warnings;

    #[test]
    fn each_runtime_shows_only_the_warnings_about_itself() {
        let scheduling = "spec.scheduling.antiAffinity";
        let local = "spec.local.listenAddress";
        let both = "spec.instances";
        assert!(Warnings::All.shows(scheduling) && Warnings::All.shows(local));
        assert!(!Warnings::Local.shows(scheduling) && Warnings::Local.shows(local));
        assert!(Warnings::Kubernetes.shows(scheduling) && !Warnings::Kubernetes.shows(local));
        assert!(Warnings::Local.shows(both) && Warnings::Kubernetes.shows(both));
        assert!(!Warnings::Quiet.shows(both));
    }
}
