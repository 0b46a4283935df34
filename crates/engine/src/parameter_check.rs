//! Checking `spec.config.parameters` against the server binary itself, before a server starts
//! with them: names against the server's own list (PostgreSQL's `postgres --describe-config`,
//! MariaDB's `mariadbd --no-defaults --verbose --help`), with the nearest valid name for a
//! misspelled one; values by letting the binary parse them without starting (PostgreSQL's
//! `postgres -C NAME -c NAME=VALUE` on an empty configuration, MariaDB's
//! `mariadbd --no-defaults --NAME=VALUE --help`), quoting its own error and hint.
//!
//! The list is read once per check: both programs print it in about 20 ms, so nothing is cached.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use stator_api::Engine;
use stator_api::parameters::{ParameterValue, nearest_name, normalize_key};

use crate::error::EngineError;
use crate::server_user::ServerUser;

/// One setting the server knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Setting {
    /// PostgreSQL's `pg_settings.context` (`postmaster`, `sighup`, `user`, …); `None` for the
    /// MySQL family, whose list does not say.
    pub context: Option<String>,
    /// PostgreSQL's type (`integer`, `enum`, …) and range, for messages.
    pub kind: Option<String>,
}

impl Setting {
    /// PostgreSQL applies a change of this setting on reload (no restart).
    pub fn reloads(&self) -> bool {
        matches!(
            self.context.as_deref(),
            Some("user" | "superuser" | "sighup" | "backend" | "superuser-backend")
        )
    }
}

/// The settings a server binary knows, by normalized name.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    pub program: PathBuf,
    pub settings: BTreeMap<String, Setting>,
}

/// A parameter the server would refuse: its key as written and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParameterProblem {
    pub key: String,
    pub message: String,
}

/// Reads the catalog of `program` (`postgres` or `mariadbd`/`mysqld`), run as `user`.
pub fn read_catalog(
    engine: Engine,
    program: &Path,
    user: &ServerUser,
) -> Result<Catalog, EngineError> {
    let settings = if engine.is_mysql_family() {
        let out = run(
            program,
            user,
            &["--no-defaults", "--verbose", "--help"],
            None,
        )?;
        parse_mysql_help(&out.stdout)
    } else {
        let out = run(program, user, &["--describe-config"], None)?;
        parse_describe_config(&out.stdout)
    };
    if settings.is_empty() {
        return Err(EngineError::State(format!(
            "{} listed no settings; cannot check spec.config.parameters against it",
            program.display()
        )));
    }
    Ok(Catalog {
        program: program.to_path_buf(),
        settings,
    })
}

/// Checks every parameter of `parameters` against `catalog` and the binary: every problem at
/// once, in key order.
pub fn check_parameters(
    engine: Engine,
    catalog: &Catalog,
    user: &ServerUser,
    parameters: &BTreeMap<String, ParameterValue>,
) -> Result<Vec<ParameterProblem>, EngineError> {
    let mut problems = Vec::new();
    let mut known = Vec::new();
    for (key, value) in parameters {
        match lookup(engine, catalog, key) {
            Lookup::Known(setting) => {
                if setting.context.as_deref() == Some("internal") {
                    problems.push(ParameterProblem {
                        key: key.clone(),
                        message: "is read-only: the server reports it, nobody can set it".into(),
                    });
                } else {
                    known.push((key, value, setting));
                }
            }
            Lookup::Unchecked => {}
            Lookup::Unknown => {
                let normalized = normalize_key(engine, key);
                let hint = match nearest_name(&normalized, catalog.settings.keys()) {
                    Some(near) => format!("did you mean {near}?"),
                    None => "check its spelling".into(),
                };
                problems.push(ParameterProblem {
                    key: key.clone(),
                    message: format!(
                        "is not a {} parameter; {hint} (checked against {})",
                        engine_title(engine),
                        catalog.program.display()
                    ),
                });
            }
        }
    }
    if known.is_empty() {
        return Ok(problems);
    }
    let scratch = Scratch::new(engine, user)?;
    // Usually every value is fine: one run says so; otherwise one run per value names each.
    let all: Vec<(&str, &str)> = known
        .iter()
        .map(|(k, v, _)| (k.as_str(), v.as_str()))
        .collect();
    if scratch.refusal(&catalog.program, user, &all)?.is_some() {
        for (key, value, setting) in &known {
            if let Some(refusal) =
                scratch.refusal(&catalog.program, user, &[(key.as_str(), value.as_str())])?
            {
                let kind = setting
                    .kind
                    .as_deref()
                    .map(|k| format!(" (the parameter is {k})"))
                    .unwrap_or_default();
                problems.push(ParameterProblem {
                    key: (*key).clone(),
                    message: format!(
                        "{:?} is refused by {}: {refusal}{kind}",
                        value.as_str(),
                        catalog
                            .program
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default()
                    ),
                });
            }
        }
    }
    problems.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(problems)
}

enum Lookup<'a> {
    Known(&'a Setting),
    /// Not checkable here: an extension's `prefix.name` (PostgreSQL), a `loose_` option
    /// (MySQL family, which itself ignores it when unknown).
    Unchecked,
    Unknown,
}

fn lookup<'a>(engine: Engine, catalog: &'a Catalog, key: &str) -> Lookup<'a> {
    let key = normalize_key(engine, key);
    if let Some(setting) = catalog.settings.get(&key) {
        return Lookup::Known(setting);
    }
    if engine.is_mysql_family() {
        if key.starts_with("loose_") {
            return Lookup::Unchecked;
        }
        for prefix in ["skip_", "enable_", "disable_", "maximum_"] {
            if let Some(rest) = key.strip_prefix(prefix)
                && let Some(setting) = catalog.settings.get(rest)
            {
                return Lookup::Known(setting);
            }
        }
    } else if key.contains('.') {
        return Lookup::Unchecked;
    }
    Lookup::Unknown
}

fn engine_title(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "PostgreSQL",
        Engine::Mariadb => "MariaDB",
        Engine::Mysql => "MySQL",
    }
}

/// `postgres --describe-config`: tab-separated name, context, group, type, then for numbers
/// reset value, min and max.
pub fn parse_describe_config(text: &str) -> BTreeMap<String, Setting> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            let vartype = f[3].to_ascii_lowercase();
            let kind = match (f.get(5), f.get(6)) {
                (Some(min), Some(max))
                    if (vartype == "integer" || vartype == "real") && !min.is_empty() =>
                {
                    format!("{vartype}, {min} to {max} in its base unit")
                }
                _ => vartype,
            };
            Some((
                f[0].to_string(),
                Setting {
                    context: Some(f[1].to_string()),
                    kind: Some(kind),
                },
            ))
        })
        .collect()
}

/// `mysqld --verbose --help`: the table after "Variables (--variable-name=value)", one
/// `name value` per line, names with dashes.
pub fn parse_mysql_help(text: &str) -> BTreeMap<String, Setting> {
    let mut settings = BTreeMap::new();
    let mut in_table = false;
    for line in text.lines() {
        if !in_table {
            in_table = line.starts_with("-----");
            continue;
        }
        if line.trim().is_empty() {
            break;
        }
        if let Some(name) = line.split_whitespace().next() {
            settings.insert(
                name.replace('-', "_"),
                Setting {
                    context: None,
                    kind: None,
                },
            );
        }
    }
    settings
}

/// The error lines of a server that refused its options: PostgreSQL's FATAL/ERROR and their
/// DETAIL/HINT, the MySQL family's `[ERROR]` lines; timestamps and pids cut off.
pub fn server_error_lines(text: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for line in text.lines() {
        let found = ["FATAL:", "PANIC:", "ERROR:", "DETAIL:", "HINT:"]
            .iter()
            .find_map(|tag| line.find(tag).map(|i| line[i..].to_string()))
            .or_else(|| {
                line.find("[ERROR] ").map(|i| {
                    let rest = &line[i + "[ERROR] ".len()..];
                    rest.strip_prefix("Buffered error: ")
                        .unwrap_or(rest)
                        .to_string()
                })
            });
        if let Some(found) = found {
            let found = found.split_whitespace().collect::<Vec<_>>().join(" ");
            if !lines.contains(&found) {
                lines.push(found);
            }
        }
    }
    lines
}

/// Why a server exited at start, from the end of its log: the last FATAL/PANIC line with the
/// DETAIL/HINT after it (PostgreSQL), else the last `[ERROR]` lines (MySQL family). Empty when
/// the log says nothing.
pub fn exit_reason(log: &str) -> Vec<String> {
    let recent: Vec<&str> = log.lines().rev().take(200).collect();
    let recent: String = recent.into_iter().rev().collect::<Vec<_>>().join("\n");
    // A session's FATAL (a client turned away, a connection ended) says nothing about why the
    // server itself stopped.
    const SESSION_ENDS: [&str; 8] = [
        "the database system is",
        "terminating connection",
        "password authentication failed",
        "no pg_hba.conf entry",
        "could not connect to the primary server",
        "does not exist",
        "canceling",
        "terminating walreceiver",
    ];
    let lines: Vec<String> = server_error_lines(&recent)
        .into_iter()
        .filter(|l| !SESSION_ENDS.iter().any(|s| l.contains(s)))
        .collect();
    if let Some(last) = lines
        .iter()
        .rposition(|l| l.starts_with("FATAL:") || l.starts_with("PANIC:"))
    {
        let mut reason = vec![lines[last].clone()];
        reason.extend(
            lines[last + 1..]
                .iter()
                .take_while(|l| l.starts_with("DETAIL:") || l.starts_with("HINT:"))
                .cloned(),
        );
        return reason;
    }
    let untagged: Vec<String> = lines
        .into_iter()
        .filter(|l| {
            !["ERROR:", "DETAIL:", "HINT:"]
                .iter()
                .any(|t| l.starts_with(t))
        })
        .collect();
    untagged[untagged.len().saturating_sub(3)..].to_vec()
}

struct Output {
    stdout: String,
    stderr: String,
    success: bool,
}

fn run(
    program: &Path,
    user: &ServerUser,
    args: &[&str],
    extra: Option<&[OsString]>,
) -> Result<Output, EngineError> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .args(extra.unwrap_or_default())
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("LC_ALL", "C.UTF-8")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if user.switch {
        // std clears supplementary groups when root sets a uid.
        use std::os::unix::process::CommandExt;
        cmd.uid(user.uid).gid(user.gid);
    }
    let out = cmd
        .output()
        .map_err(|e| EngineError::io(program, "run", e))?;
    Ok(Output {
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        success: out.status.success(),
    })
}

/// A scratch configuration directory for PostgreSQL's `-C` (which needs one, holding a
/// `postgresql.conf`), owned by the server user and removed afterwards.
struct Scratch {
    dir: Option<PathBuf>,
}

impl Scratch {
    fn new(engine: Engine, user: &ServerUser) -> Result<Scratch, EngineError> {
        if engine.is_mysql_family() {
            return Ok(Scratch { dir: None });
        }
        let dir = std::env::temp_dir().join(format!(
            "stator-parameter-check-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default()
        ));
        user.create_private_dir(&dir)?;
        let scratch = Scratch {
            dir: Some(dir.clone()),
        };
        user.write_file(&dir.join("postgresql.conf"), "", 0o600)?;
        Ok(scratch)
    }

    /// What the binary says against `pairs`, or `None` when it accepts them.
    fn refusal(
        &self,
        program: &Path,
        user: &ServerUser,
        pairs: &[(&str, &str)],
    ) -> Result<Option<String>, EngineError> {
        let (args, extra): (Vec<&str>, Vec<OsString>) = match &self.dir {
            Some(dir) => {
                let mut extra: Vec<OsString> = vec!["-D".into(), dir.clone().into()];
                extra.push("-C".into());
                extra.push(pairs[0].0.into());
                for (k, v) in pairs {
                    extra.push("-c".into());
                    extra.push(format!("{k}={v}").into());
                }
                (Vec::new(), extra)
            }
            None => {
                let mut extra: Vec<OsString> = vec!["--no-defaults".into()];
                for (k, v) in pairs {
                    extra.push(format!("--{k}={v}").into());
                }
                extra.push("--verbose".into());
                extra.push("--help".into());
                (Vec::new(), extra)
            }
        };
        let out = run(program, user, &args, Some(&extra))?;
        let lines = server_error_lines(&out.stderr);
        if out.success && lines.is_empty() {
            return Ok(None);
        }
        if lines.is_empty() {
            return Ok(Some(out.stderr.trim().to_string()));
        }
        Ok(Some(lines.join(" ")))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_config_lines_give_context_and_range() {
        let text = "work_mem\tuser\tResource Usage / Memory\tINTEGER\t0\t64\t2147483647\tSets…\t\n\
                    log_statement\tsuperuser\tReporting\tENUM\tnone\t\t\tSets…\t\n\
                    block_size\tinternal\tPreset\tINTEGER\t8192\t8192\t8192\tShows…\t\n";
        let s = parse_describe_config(text);
        assert!(s["work_mem"].reloads());
        assert_eq!(
            s["work_mem"].kind.as_deref(),
            Some("integer, 64 to 2147483647 in its base unit")
        );
        assert_eq!(s["log_statement"].kind.as_deref(), Some("enum"));
        assert!(!s["block_size"].reloads());
    }

    #[test]
    fn mysql_help_table_names_use_underscores() {
        let text = "Starts the server.\n\nVariables (--variable-name=value)\n\
                    and boolean options {FALSE|TRUE}  Value (after reading options)\n\
                    ------------------------------- -------------\n\
                    max-connections                 151\n\
                    general-log                     FALSE\n\n\
                    To see what values a running server is using, type\n";
        let s = parse_mysql_help(text);
        assert_eq!(
            s.keys().collect::<Vec<_>>(),
            vec!["general_log", "max_connections"]
        );
    }

    #[test]
    fn the_exit_reason_is_the_last_fatal_line_and_its_hint() {
        let log = "2026-11-26 10:00:00.000 GMT [1] FATAL:  the database system is starting up\n\
                   2026-11-26 10:00:01.000 GMT [2] LOG:  database system is ready\n\
                   2026-11-26 10:05:00.000 GMT [3] FATAL:  could not load server certificate file \"server.crt\": No such file or directory\n\
                   2026-11-26 10:05:00.000 GMT [3] LOG:  database system is shut down\n";
        assert_eq!(
            exit_reason(log),
            vec![
                "FATAL: could not load server certificate file \"server.crt\": No such file or directory"
            ]
        );
        let maria = "2026-11-26 10:05:00 0 [ERROR] mariadbd: unknown variable 'x=1'\n\
                     2026-11-26 10:05:00 0 [ERROR] Aborting\n";
        assert_eq!(
            exit_reason(maria),
            vec!["mariadbd: unknown variable 'x=1'", "Aborting"]
        );
    }

    #[test]
    fn error_lines_lose_their_timestamps() {
        let pg = "2026-11-26 10:03:25.517 GMT [21072] FATAL:  invalid value for parameter \"log_statement\": \"bogus\"\n\
                  2026-11-26 10:03:25.517 GMT [21072] HINT:  Available values: none, ddl, mod, all.\n";
        assert_eq!(
            server_error_lines(pg),
            vec![
                "FATAL: invalid value for parameter \"log_statement\": \"bogus\"",
                "HINT: Available values: none, ddl, mod, all."
            ]
        );
        let maria = "2026-11-26 10:03:25 0 [ERROR] Buffered error: mariadbd: Error while setting value 'lots' to 'max_connections'\n";
        assert_eq!(
            server_error_lines(maria),
            vec!["mariadbd: Error while setting value 'lots' to 'max_connections'"]
        );
    }
}
