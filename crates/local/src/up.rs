//! `stator up`: check everything, write the state dir, start (or reuse) the supervisor, and wait,
//! showing progress, until the database matches the spec.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use stator_api::Database;
use stator_api::instance::{LocalPorts, ServerState};
use stator_api::names::secret_keys;

use nix::fcntl::{Flock, FlockArg};

use crate::error::LocalError;
use crate::keeper::running_keeper;
use crate::plan::{immutable_changes, instance_ports, shared_ports};
use crate::preflight;
use crate::process;
use crate::report::SupervisorReport;
use crate::runtime::{fetch_report, running_supervisor};
use crate::secrets::ensure_secrets;
use crate::state::{AppliedSpec, DatabaseDir, Marker, StateDir, create_dir, lock_down};

/// How `up` runs.
#[derive(Clone, Debug)]
pub struct UpOptions {
    pub state: StateDir,
    /// Stay attached: the keeper and supervisor run as children; Ctrl-C stops the database.
    pub foreground: bool,
    /// Also install a systemd unit (in this directory) that runs the keeper, so the OS owns it.
    pub service_unit_dir: Option<PathBuf>,
    /// The `stator` binary the supervisor and instance managers are started from.
    pub exe: PathBuf,
    /// How long to wait for the database to become ready.
    pub timeout: Duration,
}

/// What `up` leaves behind.
pub struct UpOutcome {
    pub report: SupervisorReport,
    /// In `--foreground` mode, the keeper to wait for.
    pub foreground: Option<Child>,
}

/// Creates or resumes `db` and waits until it is ready. Every check runs before anything is
/// written, so a failed `up` changes nothing.
///
/// Two `up` of one database at once start one keeper: each holds `up.lock` from its checks
/// until the keeper runs, and the later one then finds it running and waits for the same
/// supervisor. In `--foreground` mode Ctrl-C ([`process::interrupted`]) while waiting stops
/// the database again.
pub fn up(db: &Database, options: &UpOptions) -> Result<UpOutcome, LocalError> {
    // What is not implemented is refused, never ignored: no one may believe they have
    // backups when they do not.
    let dir = options.state.database_of(db);
    crate::backup::check_spec(db, &dir.namespace_secrets())?;
    // A new database restored from a backup: the target is checked and the backup chosen
    // before anything is written; an existing one never restores again.
    let resolved;
    let restoring = db.spec.bootstrap.restore_from.is_some() && !dir.spec_file().exists();
    let db = if restoring {
        resolved = crate::backup::resolve_restore(db, &dir.namespace_secrets())?.map(|(db, _)| db);
        resolved.as_ref().unwrap_or(db)
    } else {
        db
    };
    dir.check_access()?;
    let (lock, created) = lock_up(&dir)?;
    let mut result = up_locked(db, options, &dir, lock, !created.is_empty());
    if restoring
        && dir.spec_file().exists()
        && let Err(e) = &result
        && !matches!(e, LocalError::NotReady(_))
    {
        // A restore that failed (a damaged repository the instance manager's verify refused,
        // a restore or recovery that failed) leaves nothing behind: the new database is
        // stopped and removed; it never served the restored data.
        result = Err(match crate::stop::delete(&dir, true) {
            Ok(_) => LocalError::Failed(format!(
                "{e}\n{} was removed again: nothing was created",
                dir.key()
            )),
            Err(d) => LocalError::Failed(format!(
                "{e}\nremoving {} again failed too: {d}; remove it with `stator delete --purge`",
                dir.key()
            )),
        });
    }
    if result.is_err() {
        // A failed `up` of a new database leaves nothing behind, not even its lock.
        if !dir.spec_file().exists() {
            let _ = std::fs::remove_file(dir.up_lock());
        }
        for created in &created {
            let _ = std::fs::remove_dir(created); // only when empty
        }
    }
    result
}

/// Takes `up.lock` (waiting for another `up` to start the database); the directories it had
/// to create for it, deepest first.
fn lock_up(dir: &DatabaseDir) -> Result<(Flock<std::fs::File>, Vec<PathBuf>), LocalError> {
    let mut created = Vec::new();
    let mut missing = Some(dir.root.as_path());
    while let Some(path) = missing.filter(|p| !p.exists()) {
        created.push(path.to_path_buf());
        missing = path.parent();
    }
    // 0755 as the checks expect a directory the server user can enter; holding only this
    // 0600 lock until `lock_down` closes it (or removed again when `up` fails).
    if !created.is_empty() {
        create_dir(&dir.root, 0o755)?;
    }
    let path = dir.up_lock();
    let file = crate::state::open_lock_file(&path)?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err((file, _)) => {
            eprintln!(
                "another `stator up` of {} is starting it; waiting",
                dir.key()
            );
            Flock::lock(file, FlockArg::LockExclusive)
                .map_err(|(_, e)| LocalError::io(&path, "cannot lock", e.into()))?
        }
    };
    Ok((lock, created))
}

fn up_locked(
    db: &Database,
    options: &UpOptions,
    dir: &DatabaseDir,
    lock: Flock<std::fs::File>,
    fresh: bool,
) -> Result<UpOutcome, LocalError> {
    let dir = dir.clone();
    let progress = Progress::new();
    let previous = dir.read_applied()?;
    if let Some(previous) = &previous {
        let problems = immutable_changes(&previous.database, db);
        if !problems.is_empty() {
            return Err(LocalError::Invalid(format!(
                "cannot apply this spec to {} (nothing was changed):\n  {}",
                dir.key(),
                problems.join("\n  ")
            )));
        }
    }
    let marker = dir.read_marker()?;
    if let Some(m) = &marker
        && (m.engine != db.spec.engine.as_str() || m.version != db.version())
    {
        return Err(LocalError::DataDirForeign(format!(
            "{}: holds {} {} data of {}; this spec asks for {} {} (delete it with `stator delete --purge`, or keep {} {})",
            dir.root.display(),
            m.engine,
            m.version,
            dir.key(),
            db.spec.engine,
            db.version(),
            m.engine,
            m.version
        )));
    }
    let bin_dir = preflight::find_bin_dir(db.spec.engine, db.version())?;
    let server_user = preflight::server_user(db.spec.engine)?;
    if let Some(user) = &server_user {
        preflight::check_reachable(&dir.root, user)?;
    }
    let problems = preflight::parameter_problems(db, &bin_dir)?;
    if !problems.is_empty() {
        return Err(LocalError::Invalid(format!(
            "the server would refuse spec.config.parameters (nothing was changed):\n  {}",
            problems.join("\n  ")
        )));
    }
    let server_gid = server_user.as_ref().map(|u| u.gid);
    // Made just now by `lock_up` for a new database: nothing older to tighten.
    let existed = !fresh;
    if existed {
        // Before the lock is looked at: a lock file others could open is replaced.
        let changed = lock_down(&dir, server_gid)?;
        if !changed.is_empty() {
            progress.line(&format!(
                "tightened the permissions of {} path(s) in {} (an older version let other users read its logs and take its lock)",
                changed.len(),
                dir.root.display()
            ));
        }
    }
    let supervisor = running_supervisor(&dir).or_else(|| running_keeper(&dir));
    let report = match supervisor {
        Some(_) => fetch_report(&dir, db).ok(),
        None => None,
    };
    check_ports(db, &dir, supervisor.is_some(), report.as_ref())?;
    let system_id = marker.as_ref().and_then(|m| m.system_identifier);
    for ordinal in 0..db.spec.instances {
        preflight::check_data_dir(
            &dir.data_dir(ordinal),
            &db.instance_name(ordinal),
            db.spec.engine,
            db.version(),
            system_id,
        )?;
    }
    let recovery = match supervisor {
        // A running supervisor may be moving a data dir aside for a rebuild right now.
        Some(_) => None,
        None => check_data_kept(db, &dir, marker.as_ref())?,
    };
    tracing::debug!("{} binaries in {}", db.spec.engine, bin_dir.display());

    // Everything checked: write the state dir.
    for ancestor in [
        &options.state.root,
        &options.state.root.join(&dir.namespace),
    ] {
        if !ancestor.exists() {
            create_dir(ancestor, 0o755)?;
        }
    }
    if !existed {
        create_dir(&dir.root, 0o700)?;
        lock_down(&dir, server_gid)?;
    }
    if marker.is_none() {
        dir.write_marker(&Marker {
            namespace: dir.namespace.clone(),
            name: dir.name.clone(),
            engine: db.spec.engine.to_string(),
            version: db.version().to_string(),
            system_identifier: None,
            initialized: false,
        })?;
    }
    if let Some(recovery) = &recovery {
        progress.line(recovery);
    }
    let generated = ensure_secrets(&dir.secrets_dir())?;
    if !generated.is_empty() {
        progress.line(&format!(
            "generated credentials in {} (mode 0600)",
            dir.secrets_dir().display()
        ));
    }
    if crate::transport::ensure_certificates(db, &dir)? {
        progress.line(&format!(
            "issued a CA and TLS certificates in {} (keys mode 0600)",
            dir.tls_dir().display()
        ));
    }
    let generation = match &previous {
        Some(p) if same_spec(&p.database, db) => p.generation,
        Some(p) => p.generation + 1,
        None => 1,
    };
    if previous.as_ref().is_none_or(|p| p.generation != generation) {
        dir.write_applied(&AppliedSpec {
            generation,
            database: db.clone(),
        })?;
    }
    if !dir.primary_file().exists() {
        dir.write_primary(&db.instance_name(0))?;
    }
    // `up` asks for every instance: drained (held) ones run again, as replicas.
    for released in crate::failover::release_all(&dir)? {
        progress.line(&format!("{released}: was drained; starting it again"));
    }
    let mut foreground = None;
    if let Some(unit_dir) = &options.service_unit_dir {
        let unit = crate::service::install(unit_dir, &dir, &options.state, &options.exe)?;
        progress.line(&format!("wrote the systemd unit {}", unit.path.display()));
        if supervisor.is_none() {
            progress.line(&crate::service::start(&unit, &dir));
        }
    }
    match supervisor {
        Some(pid) => progress.line(&format!(
            "supervisor already running (pid {pid}); applying spec generation {generation}"
        )),
        None if running_keeper(&dir).is_some() => {
            progress.line(&format!(
                "started by systemd; applying spec generation {generation}"
            ));
        }
        None => {
            let child = start_keeper(&options.state, &dir, &options.exe, options.foreground)?;
            progress.line(&format!(
                "started the supervisor and its keeper (keeper pid {})",
                child.id()
            ));
            if options.foreground {
                foreground = Some(child);
            }
        }
    }
    // The keeper runs: a concurrent `up` may check now, and finds it.
    drop(lock);
    let report = wait_settled(
        db,
        &dir,
        generation,
        options.timeout,
        &progress,
        &mut foreground,
    )?;
    progress.finish();
    Ok(UpOutcome { report, foreground })
}

/// An empty data dir is initialised only as the first primary of a database that never had
/// data; otherwise it is cloned from an instance that holds the data. Refuses (before anything
/// is written) when the database had data and no instance holds any; when the recorded primary
/// lost its data and another instance holds it, says what will happen (the decision core fails
/// over to the most advanced holder, and the lost instance is cloned from it).
fn check_data_kept(
    db: &Database,
    dir: &DatabaseDir,
    marker: Option<&Marker>,
) -> Result<Option<String>, LocalError> {
    let wanted = 0..db.spec.instances;
    if !dir.had_data(marker, wanted.clone()) {
        return Ok(None);
    }
    let (holders, gone): (Vec<u32>, Vec<u32>) = wanted.partition(|o| dir.holds_data(*o));
    if gone.is_empty() {
        return Ok(None);
    }
    let dirs = |ordinals: &[u32]| {
        ordinals
            .iter()
            .map(|o| dir.data_dir(*o).display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let names = |ordinals: &[u32]| {
        ordinals
            .iter()
            .map(|o| db.instance_name(*o))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if holders.is_empty() {
        let beyond: Vec<u32> = dir
            .known_ordinals()
            .into_iter()
            .filter(|o| *o >= db.spec.instances && dir.holds_data(*o))
            .collect();
        let beyond = if beyond.is_empty() {
            String::new()
        } else {
            format!(
                " ({} beyond spec.instances={} still hold data: raise spec.instances to start from them)",
                dirs(&beyond),
                db.spec.instances
            )
        };
        return Err(LocalError::DataGone(format!(
            "{} had data, but the data dirs of all its instances are gone or empty: {}{beyond}. Nothing was changed: starting now would initialise an empty database in their place. Restore these directories from a copy (with `stator down` run first, files owned by the server user, mode 0700), or start over and lose the data with `stator delete --purge` and `stator up`",
            dir.key(),
            dirs(&gone)
        )));
    }
    let primary = crate::plan::ordinal_of(&dir.read_primary()).unwrap_or(0);
    let lost_primary = if gone.contains(&primary) {
        format!(
            "; the most advanced of {} becomes the primary, then ",
            names(&holders)
        )
    } else {
        "; ".to_string()
    };
    let (what, are) = match gone.len() {
        1 => ("data dir", "is"),
        _ => ("data dirs", "are"),
    };
    Ok(Some(format!(
        "the {what} of {} {are} gone or empty ({}){lost_primary}each is cloned from an instance that holds the data, never initialised empty",
        names(&gone),
        dirs(&gone)
    )))
}

fn same_spec(a: &Database, b: &Database) -> bool {
    serde_json::to_value(a).ok() == serde_json::to_value(b).ok()
}

/// Ports that must be free: the proxies' (unless the supervisor runs) and every instance's that
/// does not run yet (neither supervised, nor a surviving manager or server).
fn check_ports(
    db: &Database,
    dir: &DatabaseDir,
    supervisor_runs: bool,
    report: Option<&SupervisorReport>,
) -> Result<(), LocalError> {
    let mut wanted = Vec::new();
    if !supervisor_runs {
        wanted.extend(shared_ports(db));
    }
    for ordinal in 0..db.spec.instances {
        let supervised = report.is_some_and(|r| {
            r.instances
                .iter()
                .any(|i| i.ordinal == ordinal && i.manager_pid.is_some())
        });
        let marker = dir.config_file(ordinal).display().to_string();
        let survivor = process::live_pid_from_file(&dir.manager_pid_file(ordinal), &marker)
            .is_some()
            || process::live_server_pid(&dir.data_dir(ordinal)).is_some();
        if !supervised && !survivor {
            wanted.extend(instance_ports(db, ordinal));
        }
    }
    preflight::check_ports(&db.spec.local.listen_address, &wanted)
}

/// Starts `stator keep`, which starts the supervisor and restarts it when it crashes.
fn start_keeper(
    state: &StateDir,
    dir: &DatabaseDir,
    exe: &std::path::Path,
    foreground: bool,
) -> Result<Child, LocalError> {
    let state_arg = state.root.display().to_string();
    let key = dir.key();
    let args = ["keep", "--state-dir", &state_arg, "--database", &key];
    if foreground {
        // Same session and terminal: Ctrl-C reaches it, and it stops the database.
        std::process::Command::new(exe)
            .args(args)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|e| LocalError::io(exe, "cannot start the supervisor", e))
    } else {
        process::spawn_detached(exe, &args, &dir.supervisor_log())
    }
}

/// A server that exited at start this many times (its manager retries after 1 s, then 2 s) is
/// quoted by `up` and not waited for: once can be a passing clash (a port taken for a moment).
const START_FAILURES_QUOTED: u32 = 2;

/// Polls the supervisor until it has acted on `generation` and every instance is ready.
fn wait_settled(
    db: &Database,
    dir: &DatabaseDir,
    generation: u64,
    timeout: Duration,
    progress: &Progress,
    foreground: &mut Option<Child>,
) -> Result<SupervisorReport, LocalError> {
    let started = Instant::now();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    let mut last_error = String::new();
    // Instances whose server ran during this wait: a later crash is not a start-up refusal.
    let mut ever_ran: std::collections::BTreeSet<u32> = std::collections::BTreeSet::new();
    loop {
        if started.elapsed() > timeout {
            return Err(LocalError::NotReady(format!(
                "{} is not ready after {timeout:?}{}; it keeps trying in the background: see `stator status` and `stator logs`",
                dir.key(),
                if last_error.is_empty() {
                    String::new()
                } else {
                    format!(" ({last_error})")
                }
            )));
        }
        let exited = match foreground {
            Some(child) => !matches!(child.try_wait(), Ok(None)),
            None => false,
        };
        if let Some(child) = foreground
            && process::interrupted()
        {
            progress.line("interrupted: stopping the database (fast shutdown)");
            process::signal(child.id(), nix::sys::signal::Signal::SIGTERM);
            let _ = child.wait();
            return Err(LocalError::Failed(format!(
                "interrupted: {} stopped; all data kept",
                dir.key()
            )));
        }
        match fetch_report(dir, db) {
            Ok(report) => {
                last_error.clear();
                for row in &report.instances {
                    let has_data = preflight::data_files(&dir.data_dir(row.ordinal)).is_some();
                    let text = describe(db, row, &report.primary, has_data);
                    if seen.get(&row.name) != Some(&text) {
                        progress.line(&format!("{}: {text}", row.name));
                        seen.insert(row.name.clone(), text);
                    }
                    if row.manager_crashes >= 3 && row.report.is_none() && !row.excess {
                        return Err(LocalError::Failed(format!(
                            "{}'s instance manager keeps exiting ({} crashes in a row); the supervisor keeps retrying. The end of {}:\n{}",
                            row.name,
                            row.manager_crashes,
                            dir.manager_log(row.ordinal).display(),
                            tail(&dir.manager_log(row.ordinal), 15)
                        )));
                    }
                    if let Some(r) = &row.report
                        && r.state == ServerState::Crashed
                        && r.restarts >= START_FAILURES_QUOTED
                        && !ever_ran.contains(&row.ordinal)
                    {
                        let log = std::fs::read_to_string(dir.server_log(row.ordinal))
                            .unwrap_or_default();
                        let reason = stator_engine::parameter_check::exit_reason(&log);
                        if !reason.is_empty() {
                            return Err(LocalError::Failed(format!(
                                "{}'s server exits at start: {}\n(from {}; the supervisor keeps retrying: fix the spec and run up again, or `stator down`)",
                                row.name,
                                reason.join(" "),
                                dir.server_log(row.ordinal).display()
                            )));
                        }
                    }
                    if row
                        .report
                        .as_ref()
                        .is_some_and(|r| r.state == ServerState::Running)
                    {
                        ever_ran.insert(row.ordinal);
                    }
                    if let Some(r) = &row.report
                        && r.state == ServerState::Failed
                    {
                        return Err(LocalError::Failed(format!(
                            "{} failed: {}; see `stator logs -f FILE {}`",
                            row.name,
                            r.message
                                .clone()
                                .unwrap_or_else(|| "no reason given".into()),
                            row.name
                        )));
                    }
                }
                progress.waiting(&report);
                if report.generation == generation && report.is_settled() {
                    return Ok(report);
                }
            }
            Err(e) => {
                last_error = e.to_string();
                if running_supervisor(dir).is_none()
                    && running_keeper(dir).is_none()
                    && (exited || started.elapsed() > Duration::from_secs(3))
                {
                    return Err(LocalError::Failed(format!(
                        "the supervisor of {} exited; the end of {}:\n{}",
                        dir.key(),
                        dir.supervisor_log().display(),
                        tail(&dir.supervisor_log(), 15)
                    )));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn describe(
    db: &Database,
    row: &crate::report::InstanceRow,
    primary: &str,
    has_data: bool,
) -> String {
    let Some(r) = &row.report else {
        return row.state.clone();
    };
    let role = r.role.map(|r| r.to_string());
    let mut text = r.state.to_string();
    if r.state == ServerState::Initializing && !has_data {
        let (init, clone) = preflight::bootstrap_tools(db.spec.engine);
        text = if row.name == primary {
            format!("initializing ({init})")
        } else {
            format!("cloning from {primary} ({clone})")
        };
    }
    if let Some(role) = role {
        text.push_str(&format!(", {role}"));
    }
    if r.ready {
        text.push_str(", ready");
    }
    text
}

/// The last `lines` lines of a file, for error messages.
pub fn tail(path: &std::path::Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Steps on stderr: a spinner on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new() -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{elapsed}]") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress { bar }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("  {text}")),
            None => eprintln!("{text}"),
        }
    }

    fn waiting(&self, report: &SupervisorReport) {
        if let Some(bar) = &self.bar {
            let pending: Vec<&str> = report
                .instances
                .iter()
                .filter(|i| !i.ready() || i.excess)
                .map(|i| i.name.as_str())
                .collect();
            bar.set_message(if pending.is_empty() {
                "settling".to_string()
            } else {
                format!("waiting for {}", pending.join(", "))
            });
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// Connection details `up` prints after the table. Never the password: PostgreSQL's hint uses
/// `stator uri`, MariaDB's client (which takes no URI) reads it at its prompt or from the 0600
/// secret file through the environment, never from its command line.
pub fn connection_help(db: &Database, dir: &DatabaseDir, file: &str) -> String {
    let ports = LocalPorts::of(db);
    let host = &db.spec.local.listen_address;
    let user = &db.spec.bootstrap.owner;
    let database = &db.spec.bootstrap.database;
    let rw = ports.rw();
    // With TLS (the default) the client verifies the server against the database's CA.
    let ca = db.spec.tls.enabled.then(|| {
        dir.tls_dir()
            .join(stator_engine::tls::CA_CERT)
            .display()
            .to_string()
    });
    let pg_tls = ca
        .as_ref()
        .map(|ca| format!(" sslmode=verify-full sslrootcert={ca}"))
        .unwrap_or_default();
    let my_tls = ca
        .as_ref()
        .map(|ca| format!(" --ssl-ca={ca} --ssl-verify-server-cert"))
        .unwrap_or_default();
    let how = match db.spec.engine {
        stator_api::Engine::Postgres => format!(
            "  psql \"host={host} port={rw} user={user} dbname={database}{pg_tls}\"\n  The password is not shown here: `stator uri -f {file} [rw|ro]` prints a URI with it, e.g.\n  psql \"$(stator uri -f {file})\"\n"
        ),
        stator_api::Engine::Mariadb | stator_api::Engine::Mysql => {
            let client = match db.spec.engine {
                stator_api::Engine::Mysql => "mysql",
                _ => "mariadb",
            };
            let secret = dir.secrets_dir().join(secret_keys::APP_PASSWORD);
            let secret = secret.display();
            format!(
                "  {client} -h {host} -P {rw}{my_tls} -u {user} -p {database}\n  The password is not shown here: {client} asks for it; it is in {secret} (mode 0600).\n  Without the prompt (the password goes through the environment, not the command line):\n  MYSQL_PWD=\"$(cat {secret})\" {client} -h {host} -P {rw}{my_tls} -u {user} {database}\n  `stator uri -f {file} [rw|ro]` prints a mysql:// URI with the password.\n"
            )
        }
    };
    format!(
        "Connect:\n  rw (primary):  host={host} port={rw} user={user} database={database}\n  ro (replicas): host={host} port={} user={user} database={database}\n{how}",
        ports.ro(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(engine: &str) -> Database {
        stator_api::load_database(&format!(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {{name: m}}\nspec: {{engine: {engine}, local: {{portBase: 20000}}}}\n"
        ))
        .unwrap()
        .database
    }

    #[test]
    fn the_mariadb_connect_hint_names_the_secret_file_and_puts_no_password_on_a_command_line() {
        let db = db("mariadb");
        let dir = StateDir { root: "/s".into() }.database_of(&db);
        let help = connection_help(&db, &dir, "m.yaml");
        assert!(
            help.contains("mariadb -h 127.0.0.1 -P 20000 --ssl-ca=/s/default/m/tls/ca.crt --ssl-verify-server-cert -u app -p app\n"),
            "{help}"
        );
        assert!(
            help.contains("MYSQL_PWD=\"$(cat /s/default/m/secrets/app-password)\" mariadb -h 127.0.0.1 -P 20000 --ssl-ca=/s/default/m/tls/ca.crt --ssl-verify-server-cert -u app app"),
            "{help}"
        );
        assert!(help.contains("port=20001"), "{help}");
        assert!(!help.contains("psql"), "{help}");
    }

    #[test]
    fn the_postgres_connect_hint_uses_psql_and_stator_uri() {
        let db = db("postgres");
        let dir = StateDir { root: "/s".into() }.database_of(&db);
        let help = connection_help(&db, &dir, "p.yaml");
        assert!(
            help.contains("psql \"host=127.0.0.1 port=20000 user=app dbname=app sslmode=verify-full sslrootcert=/s/default/m/tls/ca.crt\""),
            "{help}"
        );
        assert!(help.contains("psql \"$(stator uri -f p.yaml)\""), "{help}");
    }
}
