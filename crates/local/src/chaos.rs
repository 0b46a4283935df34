//! Fault injection for `stator chaos kill|stop|resume` and the consistency checker: `kill -9` of
//! an instance's database server (what `kubectl delete pod --grace-period=0` does to a pod),
//! SIGSTOP / SIGCONT of the server's whole process tree (a hang), and the same with its instance
//! manager as well (a lost node: nothing of it answers).
//!
//! Processes are found from the state dir only: the manager's pid file (trusted when its command
//! line names the instance's config file) and the server's pid file in the data dir (trusted
//! when the process works in, or names, that data dir). A hang is recorded in
//! `instances/NAME-N/chaos-stopped.json` (pid and start time of every stopped process), so
//! `resume` continues exactly those, even after the supervisor fenced the server and its
//! backends were orphaned. Nothing here reads a secret.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::PathBuf;

use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};
use stator_api::Database;

use crate::error::LocalError;
use crate::process;
use crate::runtime::running_supervisor;
use crate::state::DatabaseDir;
use stator_engine::procfs::{descendants, is_stopped, start_time};

/// What a process was to the instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessRole {
    InstanceManager,
    Server,
    /// A child of the server (a PostgreSQL backend or auxiliary process).
    ServerChild,
}

impl ProcessRole {
    fn describe(self, count: usize) -> &'static str {
        match (self, count > 1) {
            (ProcessRole::InstanceManager, false) => "instance manager",
            (ProcessRole::InstanceManager, true) => "instance managers",
            (ProcessRole::Server, false) => "server",
            (ProcessRole::Server, true) => "servers",
            (ProcessRole::ServerChild, false) => "server child",
            (ProcessRole::ServerChild, true) => "server children",
        }
    }
}

/// One process a chaos command signalled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Signalled {
    pub pid: u32,
    pub role: ProcessRole,
    /// `SIGKILL`, `SIGSTOP`, `SIGCONT`.
    pub signal: String,
}

/// What a chaos command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Injected {
    /// `NAME-N`.
    pub instance: String,
    /// `kill`, `kill-node`, `stop`, `stop-node` or `resume`.
    pub action: String,
    pub processes: Vec<Signalled>,
}

impl Injected {
    /// One line a person reads, e.g. `kill pg-0: SIGKILL server 1234`.
    pub fn summary(&self) -> String {
        let mut by_role: Vec<((&str, ProcessRole), Vec<u32>)> = Vec::new();
        for p in &self.processes {
            let key = (p.signal.as_str(), p.role);
            match by_role.iter_mut().find(|(k, _)| *k == key) {
                Some((_, pids)) => pids.push(p.pid),
                None => by_role.push((key, vec![p.pid])),
            }
        }
        let parts: Vec<String> = by_role
            .iter()
            .map(|((signal, role), pids)| {
                let list: Vec<String> = pids.iter().map(u32::to_string).collect();
                format!("{signal} {} {}", role.describe(pids.len()), list.join(" "))
            })
            .collect();
        if parts.is_empty() {
            format!(
                "{} {}: nothing to signal (no process of it is stopped: the held ones were killed or continued)",
                self.action, self.instance
            )
        } else {
            format!("{} {}: {}", self.action, self.instance, parts.join("; "))
        }
    }
}

/// The processes of one instance, found from the state dir.
#[derive(Clone, Debug)]
pub struct InstanceProcesses {
    pub name: String,
    pub ordinal: u32,
    pub data_dir: PathBuf,
    pub manager: Option<u32>,
    pub server: Option<u32>,
}

/// `NAME-N` → N, checked against the applied spec's instances.
pub fn ordinal_in(db: &Database, dir: &DatabaseDir, instance: &str) -> Result<u32, LocalError> {
    let valid = || {
        let names: Vec<String> = (0..db.spec.instances)
            .map(|o| db.instance_name(o))
            .collect();
        names.join(", ")
    };
    let ordinal = instance
        .strip_prefix(&format!("{}-", db.name()))
        .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|n| n.parse::<u32>().ok())
        .ok_or_else(|| {
            LocalError::Invalid(format!(
                "{instance:?} is not an instance of {} (its instances are {})",
                dir.key(),
                valid()
            ))
        })?;
    if ordinal >= db.spec.instances {
        return Err(LocalError::Invalid(format!(
            "{instance:?}: {} has {} instance(s): {}",
            dir.key(),
            db.spec.instances,
            valid()
        )));
    }
    Ok(ordinal)
}

/// The applied spec of `dir`, or a clear error when the database was never started here.
fn applied_database(dir: &DatabaseDir) -> Result<Database, LocalError> {
    if !dir.exists() {
        return Err(LocalError::NotFound(dir.key()));
    }
    dir.read_applied()?
        .map(|a| a.database)
        .ok_or_else(|| LocalError::NotFound(dir.key()))
}

/// Finds the manager and the server of `instance`.
pub fn locate(dir: &DatabaseDir, instance: &str) -> Result<InstanceProcesses, LocalError> {
    let db = applied_database(dir)?;
    let ordinal = ordinal_in(&db, dir, instance)?;
    let marker = dir.config_file(ordinal).display().to_string();
    let manager = process::live_pid_from_file(&dir.manager_pid_file(ordinal), &marker);
    let data_dir = dir.data_dir(ordinal);
    let server = process::server_of(db.spec.engine, &data_dir);
    Ok(InstanceProcesses {
        name: instance.to_string(),
        ordinal,
        data_dir,
        manager,
        server,
    })
}

/// Why a fault cannot be injected.
#[derive(Debug, thiserror::Error)]
pub enum FaultError {
    #[error(
        "{database} is stopped (no supervisor, no instance manager of {instance} runs): there is no {what} to signal; `stator up -f FILE` starts it"
    )]
    DatabaseStopped {
        database: String,
        instance: String,
        what: &'static str,
    },
    #[error(
        "{instance} has no running database server (no live process in {}'s pid file); there is no {what} to signal — `stator status` shows its state",
        .data_dir.display()
    )]
    NoServer {
        instance: String,
        data_dir: PathBuf,
        what: &'static str,
    },
}

/// Why nothing can be signalled: the database or the instance is not running.
fn not_running(dir: &DatabaseDir, procs: &InstanceProcesses, what: &'static str) -> LocalError {
    if running_supervisor(dir).is_none() && procs.manager.is_none() {
        FaultError::DatabaseStopped {
            database: dir.key(),
            instance: procs.name.clone(),
            what,
        }
        .into()
    } else {
        FaultError::NoServer {
            instance: procs.name.clone(),
            data_dir: procs.data_dir.clone(),
            what,
        }
        .into()
    }
}

/// `kill -9` of the server of `instance`, and with `with_manager` of its instance manager too
/// (the manager first, so it cannot react in between).
pub fn kill(dir: &DatabaseDir, instance: &str, with_manager: bool) -> Result<Injected, LocalError> {
    let procs = locate(dir, instance)?;
    let Some(server) = procs.server else {
        return Err(not_running(dir, &procs, "server"));
    };
    let mut processes = Vec::new();
    if with_manager && let Some(manager) = procs.manager {
        process::signal(manager, Signal::SIGKILL);
        processes.push(signalled(manager, ProcessRole::InstanceManager, "SIGKILL"));
    }
    process::signal(server, Signal::SIGKILL);
    processes.push(signalled(server, ProcessRole::Server, "SIGKILL"));
    Ok(Injected {
        instance: procs.name,
        action: if with_manager { "kill-node" } else { "kill" }.into(),
        processes,
    })
}

/// SIGSTOP of the server's process tree (and with `with_manager` of the instance manager
/// first): the instance hangs. Recorded for [`resume`].
pub fn stop(dir: &DatabaseDir, instance: &str, with_manager: bool) -> Result<Injected, LocalError> {
    let procs = locate(dir, instance)?;
    let Some(server) = procs.server else {
        return Err(not_running(dir, &procs, "server"));
    };
    let mut processes = Vec::new();
    if with_manager && let Some(manager) = procs.manager {
        process::signal(manager, Signal::SIGSTOP);
        processes.push(signalled(manager, ProcessRole::InstanceManager, "SIGSTOP"));
    }
    // The server first, so it forks no new child; then its children until no new one appears.
    process::signal(server, Signal::SIGSTOP);
    processes.push(signalled(server, ProcessRole::Server, "SIGSTOP"));
    let mut seen: BTreeSet<u32> = BTreeSet::from([server]);
    for _ in 0..20 {
        let fresh: Vec<u32> = descendants(server)
            .into_iter()
            .filter(|p| !seen.contains(p))
            .collect();
        if fresh.is_empty() {
            break;
        }
        for pid in fresh {
            process::signal(pid, Signal::SIGSTOP);
            seen.insert(pid);
            processes.push(signalled(pid, ProcessRole::ServerChild, "SIGSTOP"));
        }
    }
    let mut record = read_stopped(dir, procs.ordinal);
    for p in &processes {
        if let Some(start) = start_time(p.pid) {
            record.processes.push(StoppedProcess {
                pid: p.pid,
                start_time: start,
                role: p.role,
            });
        }
    }
    crate::state::write_json(&stopped_file(dir, procs.ordinal), &record)?;
    Ok(Injected {
        instance: procs.name,
        action: if with_manager { "stop-node" } else { "stop" }.into(),
        processes,
    })
}

/// SIGCONT of everything [`stop`] stopped (still the same processes), and of the instance's
/// current manager and server tree.
pub fn resume(dir: &DatabaseDir, instance: &str) -> Result<Injected, LocalError> {
    let procs = locate(dir, instance)?;
    let record = read_stopped(dir, procs.ordinal);
    let mut targets: BTreeMap<u32, ProcessRole> = BTreeMap::new();
    for p in &record.processes {
        if start_time(p.pid) == Some(p.start_time) && process::is_alive(p.pid) {
            targets.insert(p.pid, p.role);
        }
    }
    if let Some(manager) = procs.manager {
        targets
            .entry(manager)
            .or_insert(ProcessRole::InstanceManager);
    }
    if let Some(server) = procs.server {
        targets.entry(server).or_insert(ProcessRole::Server);
        for child in descendants(server) {
            targets.entry(child).or_insert(ProcessRole::ServerChild);
        }
    }
    if targets.is_empty() && record.processes.is_empty() {
        return Err(not_running(dir, &procs, "process"));
    }
    // A record whose processes are all gone: they were fenced (killed) while held. Nothing to
    // continue, and not an error.
    // Only processes that are stopped are continued; report those.
    let mut processes = Vec::new();
    for (pid, role) in targets {
        if is_stopped(pid) {
            process::signal(pid, Signal::SIGCONT);
            processes.push(signalled(pid, role, "SIGCONT"));
        }
    }
    let file = stopped_file(dir, procs.ordinal);
    if file.exists() {
        fs::remove_file(&file).map_err(|e| LocalError::io(&file, "cannot remove", e))?;
    }
    Ok(Injected {
        instance: procs.name,
        action: "resume".into(),
        processes,
    })
}

fn signalled(pid: u32, role: ProcessRole, signal: &str) -> Signalled {
    Signalled {
        pid,
        role,
        signal: signal.into(),
    }
}

/// Processes held stopped by `stop`, by pid and start time.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoppedRecord {
    processes: Vec<StoppedProcess>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoppedProcess {
    pid: u32,
    start_time: u64,
    role: ProcessRole,
}

fn stopped_file(dir: &DatabaseDir, ordinal: u32) -> PathBuf {
    dir.instance_dir(ordinal).join("chaos-stopped.json")
}

fn read_stopped(dir: &DatabaseDir, ordinal: u32) -> StoppedRecord {
    crate::state::read_json(&stopped_file(dir, ordinal))
        .ok()
        .flatten()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_api::Engine;
    use std::path::Path;
    use std::process::Command;

    fn database(name: &str, instances: u32) -> Database {
        let text = format!(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: {name}\nspec:\n  engine: postgres\n  instances: {instances}\n"
        );
        stator_api::load_database(&text).unwrap().database
    }

    fn dir_of(root: &Path, name: &str) -> DatabaseDir {
        crate::StateDir {
            root: root.to_path_buf(),
        }
        .database("default", name)
    }

    #[test]
    fn instance_names_outside_the_database_are_refused_with_the_valid_ones() {
        let db = database("pg", 3);
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir_of(tmp.path(), "pg");
        assert_eq!(ordinal_in(&db, &dir, "pg-2").unwrap(), 2);
        for bad in ["pg-3", "pg", "pg-", "other-0", "pg-+1", "pg-1x", "pg--1"] {
            let e = ordinal_in(&db, &dir, bad).unwrap_err().to_string();
            assert!(e.contains("pg-0, pg-1, pg-2"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_database_never_started_here_is_not_found() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir_of(tmp.path(), "pg");
        let e = kill(&dir, "pg-0", false).unwrap_err();
        assert!(matches!(e, LocalError::NotFound(_)), "{e}");
    }

    #[test]
    fn a_stopped_database_is_named_and_nothing_is_signalled() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir_of(tmp.path(), "pg");
        crate::state::create_dir(&dir.root, 0o755).unwrap();
        dir.write_applied(&crate::state::AppliedSpec {
            generation: 1,
            database: database("pg", 2),
        })
        .unwrap();
        for result in [
            kill(&dir, "pg-1", true),
            stop(&dir, "pg-1", false),
            resume(&dir, "pg-1"),
        ] {
            let e = result.unwrap_err().to_string();
            assert!(e.contains("default/pg is stopped"), "{e}");
        }
    }

    #[test]
    fn resuming_processes_that_were_fenced_while_held_is_not_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = dir_of(tmp.path(), "pg");
        crate::state::create_dir(&dir.instance_dir(0), 0o755).unwrap();
        dir.write_applied(&crate::state::AppliedSpec {
            generation: 1,
            database: database("pg", 2),
        })
        .unwrap();
        let mut child = Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        let record = StoppedRecord {
            processes: vec![StoppedProcess {
                pid: gone,
                start_time: 1,
                role: ProcessRole::Server,
            }],
        };
        crate::state::write_json(&stopped_file(&dir, 0), &record).unwrap();
        let done = resume(&dir, "pg-0").unwrap();
        assert!(done.processes.is_empty(), "{done:?}");
        assert!(done.summary().contains("nothing to signal"));
        assert!(!stopped_file(&dir, 0).exists());
    }

    #[test]
    fn a_pid_file_naming_a_foreign_process_is_not_trusted() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        fs::create_dir(&data).unwrap();
        // Our own pid: alive, but neither working in nor naming the data dir.
        fs::write(
            data.join("postmaster.pid"),
            format!("{}\n", std::process::id()),
        )
        .unwrap();
        assert_eq!(process::server_of(Engine::Postgres, &data), None);
        let mut child = Command::new("sleep")
            .arg("30")
            .current_dir(&data)
            .spawn()
            .unwrap();
        fs::write(data.join("postmaster.pid"), format!("{}\n", child.id())).unwrap();
        assert_eq!(
            process::server_of(Engine::Postgres, &data),
            Some(child.id())
        );
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn a_process_tree_is_found_stopped_and_continued() {
        let mut child = Command::new("/bin/sh")
            .args(["-c", "sleep 30 & sleep 30 & wait"])
            .spawn()
            .unwrap();
        let root = child.id();
        let mut kids = Vec::new();
        for _ in 0..100 {
            kids = descendants(root);
            if kids.len() == 2 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(kids.len(), 2, "{kids:?}");
        process::signal(root, Signal::SIGSTOP);
        for _ in 0..100 {
            if is_stopped(root) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(is_stopped(root));
        process::signal(root, Signal::SIGCONT);
        for _ in 0..100 {
            if !is_stopped(root) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(!is_stopped(root));
        for k in kids {
            process::signal(k, Signal::SIGKILL);
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }

    #[test]
    fn the_summary_lists_pids_by_signal_and_role() {
        let injected = Injected {
            instance: "pg-0".into(),
            action: "stop-node".into(),
            processes: vec![
                signalled(10, ProcessRole::InstanceManager, "SIGSTOP"),
                signalled(11, ProcessRole::Server, "SIGSTOP"),
                signalled(12, ProcessRole::ServerChild, "SIGSTOP"),
                signalled(13, ProcessRole::ServerChild, "SIGSTOP"),
            ],
        };
        let text = injected.summary();
        assert!(text.starts_with("stop-node pg-0: "), "{text}");
        assert!(text.contains("SIGSTOP instance manager 10"), "{text}");
        assert!(text.contains("SIGSTOP server children 12 13"), "{text}");
    }
}
