//! What a rule is and what it reports: rule ids, severities and findings.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

/// How bad a finding is. `Error` fails `stator lint` (exit 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        })
    }
}

/// A rule: a stable id (`STATOR-<AREA>-<NNN>`), a short slug, the severity of its findings,
/// what it checks, where the requirement comes from, and the usual fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub id: &'static str,
    pub name: &'static str,
    pub severity: Severity,
    pub summary: &'static str,
    /// Why the rule exists: the guide's checklist item or failure-table row, or issue 3.
    pub rationale: &'static str,
    pub fix: &'static str,
}

impl Rule {
    /// A finding of this rule at `line` of `object`, with the rule's usual fix.
    pub fn at(&self, object: &crate::object::Object, line: usize, message: String) -> Finding {
        Finding {
            rule: self.id,
            name: self.name,
            severity: self.severity,
            file: object.file.clone(),
            line,
            object: object.display(),
            message,
            fix: self.fix.to_string(),
        }
    }
}

/// One problem at one line of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub rule: &'static str,
    pub name: &'static str,
    pub severity: Severity,
    pub file: PathBuf,
    pub line: usize,
    /// `Kind/name` of the object the finding is about.
    pub object: String,
    pub message: String,
    pub fix: String,
}

impl Finding {
    /// Replaces the rule's usual fix with one specific to this finding.
    pub fn with_fix(mut self, fix: impl Into<String>) -> Finding {
        self.fix = fix.into();
        self
    }
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}: {} {} {}: {} (fix: {})",
            self.file.display(),
            self.line,
            self.severity,
            self.rule,
            self.object,
            self.message,
            self.fix
        )
    }
}
