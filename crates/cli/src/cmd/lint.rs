//! `stator lint`: check database manifests against the guide's operations checklist and
//! failure table. The rules live in `stator-lint`; this module reads arguments, prints and
//! chooses the exit code.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use stator_lint::{Finding, LoadError, Severity, Source};

use crate::error::{CliError, CliResult, EXIT_FAILED};

/// Check Kubernetes manifests of a database against the operations checklist (exit 1 on errors).
///
/// Reads files and directories (walked for *.yaml and *.yml; multi-document YAML and
/// `kind: List` are fine; `-` reads stdin) and reports, for every problem, the file and line,
/// the severity, the rule id, the object and a one-line fix. Works on any manifests, not only
/// Stator's: it recognises database workloads by image (postgres, mysql, mariadb, percona, …)
/// or as StatefulSets with volume claims.
///
/// Exit codes: 0 no error-level finding (warnings and info may be printed), 1 at least one
/// error-level finding, 2 a path could not be read or a file is not valid YAML (named with its
/// line; nothing is linted then).
///
/// To silence a rule for one object, annotate it:
/// `lint.stator.dev/ignore: "STATOR-AVL-004"`; for a whole run, use --ignore.
#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  \
    stator lint out/                                        rendered manifests\n  \
    stator lint db/mysql/ db/postgres/pg-statefulset.yaml   files and directories\n  \
    stator render -f db.yaml -o - | stator lint -           a render, without writing it\n  \
    stator lint -o json k8s/ > findings.json                for machines\n  \
    stator lint --list-rules                                what is checked, and why")]
pub struct LintArgs {
    /// Manifest files or directories to check; `-` for stdin.
    #[arg(value_name = "PATH", required_unless_present = "list_rules")]
    pub paths: Vec<PathBuf>,
    /// Output format: `human` (one `file:line: severity rule object: message` line per
    /// finding, grouped by file, with a summary) or `json`.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Human)]
    pub output: Format,
    /// Skip a rule, by id (STATOR-CTX-006) or name (writable-root-filesystem). Repeatable.
    #[arg(long = "ignore", value_name = "RULE")]
    pub ignore: Vec<String>,
    /// List every rule with its severity, what it checks, why, and the fix; then exit.
    #[arg(long)]
    pub list_rules: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

pub fn run(args: LintArgs) -> CliResult {
    let known: BTreeSet<&str> = stator_lint::rules()
        .iter()
        .flat_map(|r| [r.id, r.name])
        .collect();
    if let Some(unknown) = args
        .ignore
        .iter()
        .find(|i| !known.contains(i.to_ascii_uppercase().as_str()) && !known.contains(i.as_str()))
    {
        return Err(CliError::Invalid(format!(
            "--ignore {unknown}: no such rule (see stator lint --list-rules)"
        )));
    }
    if args.list_rules {
        print(&rules_text(args.output)?)?;
        return Ok(ExitCode::SUCCESS);
    }

    let sources = read_sources(&args.paths).map_err(load_failure)?;
    let manifests = stator_lint::parse_sources(&sources).map_err(load_failure)?;
    let mut findings = stator_lint::lint_manifests(&manifests);
    findings.retain(|f| {
        !args
            .ignore
            .iter()
            .any(|i| i.eq_ignore_ascii_case(f.rule) || i == f.name)
    });
    let summary = Summary::of(&findings, sources.len(), manifests.objects.len());
    let text = match args.output {
        Format::Human => human(&findings, &summary),
        Format::Json => {
            let doc = serde_json::json!({ "findings": findings, "summary": summary });
            format!("{}\n", to_json(&doc)?)
        }
    };
    print(&text)?;
    Ok(if summary.errors > 0 {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

fn read_sources(paths: &[PathBuf]) -> Result<Vec<Source>, Vec<LoadError>> {
    let mut sources = Vec::new();
    let mut errors = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            let mut text = String::new();
            match std::io::stdin().read_to_string(&mut text) {
                Ok(_) => sources.push(Source {
                    file: "<stdin>".into(),
                    text,
                }),
                Err(source) => errors.push(LoadError::Unreadable {
                    path: path.clone(),
                    source,
                }),
            }
            continue;
        }
        match stator_lint::read_paths(std::slice::from_ref(path)) {
            Ok(mut found) => sources.append(&mut found),
            Err(mut failed) => errors.append(&mut failed),
        }
    }
    if errors.is_empty() {
        Ok(sources)
    } else {
        Err(errors)
    }
}

fn load_failure(errors: Vec<LoadError>) -> CliError {
    let lines: Vec<String> = errors.iter().map(ToString::to_string).collect();
    CliError::Invalid(lines.join("\nerror: "))
}

fn to_json(value: &impl serde::Serialize) -> Result<String, CliError> {
    serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Failed(format!("cannot write JSON: {e}")))
}

#[derive(Debug, serde::Serialize)]
struct Summary {
    errors: usize,
    warnings: usize,
    info: usize,
    files: usize,
    objects: usize,
}

impl Summary {
    fn of(findings: &[Finding], files: usize, objects: usize) -> Summary {
        let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
        Summary {
            errors: count(Severity::Error),
            warnings: count(Severity::Warning),
            info: count(Severity::Info),
            files,
            objects,
        }
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// Writes to stdout; a closed pipe (`stator lint … | head`) is not an error.
fn print(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CliError::Failed(format!("cannot write to stdout: {e}")))
        }
        _ => Ok(()),
    }
}

fn human(findings: &[Finding], summary: &Summary) -> String {
    let mut out = String::new();
    let mut last_file = None;
    for finding in findings {
        if last_file.is_some_and(|f| f != &finding.file) {
            out.push('\n');
        }
        last_file = Some(&finding.file);
        out.push_str(&format!("{finding}\n"));
    }
    let checked = format!(
        "{} in {}",
        plural(summary.objects, "object"),
        plural(summary.files, "file")
    );
    if findings.is_empty() {
        out.push_str(&format!("no findings ({checked})\n"));
    } else {
        out.push_str(&format!(
            "\n{}, {}, {} info ({checked})\n",
            plural(summary.errors, "error"),
            plural(summary.warnings, "warning"),
            summary.info
        ));
    }
    out
}

fn rules_text(format: Format) -> Result<String, CliError> {
    let rules = stator_lint::rules();
    if format == Format::Json {
        return Ok(format!("{}\n", to_json(&rules)?));
    }
    let mut out = String::new();
    for rule in rules {
        out.push_str(&format!(
            "{}  {:<7}  {}\n    {}\n    why: {}\n    fix: {}\n\n",
            rule.id,
            rule.severity.to_string(),
            rule.name,
            rule.summary,
            rule.rationale,
            rule.fix
        ));
    }
    Ok(out)
}
