//! `stator down` and `stator delete`: stop every process of a database (its keeper, the
//! supervisor, and instance managers or servers that outlived it), then forget the database if asked.

use std::path::PathBuf;
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::error::LocalError;
use crate::keeper::running_keeper;
use crate::process;
use crate::runtime::running_supervisor;
use crate::state::DatabaseDir;
use crate::supervisor::{FAST_SHUTDOWN_TIMEOUT, stop_instances};

/// What `down` stopped.
#[derive(Debug, Default)]
pub struct Stopped {
    pub supervisor: Option<u32>,
    /// Instance managers or servers found running without a supervisor.
    pub orphans: Vec<String>,
}

/// Stops the database cleanly (fast shutdown; immediate after a timeout), keeping all data.
pub fn down(dir: &DatabaseDir) -> Result<Stopped, LocalError> {
    if !dir.exists() || dir.read_applied()?.is_none() {
        return Err(LocalError::NotFound(dir.key()));
    }
    stop_everything(dir)
}

fn stop_everything(dir: &DatabaseDir) -> Result<Stopped, LocalError> {
    let mut stopped = Stopped::default();
    // The keeper first, so it does not restart the supervisor stopped below; it passes
    // SIGTERM on to the supervisor and exits when the supervisor has.
    let keeper = running_keeper(dir);
    if let Some(pid) = keeper {
        process::signal(pid, Signal::SIGTERM);
    }
    if let Some(pid) = running_supervisor(dir) {
        stopped.supervisor = Some(pid);
        process::signal(pid, Signal::SIGTERM);
        let deadline = FAST_SHUTDOWN_TIMEOUT + Duration::from_secs(30);
        let started = std::time::Instant::now();
        while running_supervisor(dir).is_some() {
            if started.elapsed() > deadline {
                tracing::warn!("the supervisor (pid {pid}) did not stop; killing it");
                process::signal(pid, Signal::SIGKILL);
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    if let Some(pid) = keeper
        && !process::wait_gone(pid, Duration::from_secs(10))
    {
        tracing::warn!("the keeper (pid {pid}) did not stop; killing it");
        process::signal(pid, Signal::SIGKILL);
    }
    // Whatever outlived the supervisor (it was killed, or never ran after a crash).
    let mut managers: Vec<(u32, PathBuf)> = Vec::new();
    for ordinal in dir.known_ordinals() {
        let marker = dir.config_file(ordinal).display().to_string();
        if let Some(pid) = process::live_pid_from_file(&dir.manager_pid_file(ordinal), &marker) {
            stopped.orphans.push(format!(
                "{}'s instance manager (pid {pid})",
                dir.instance_name(ordinal)
            ));
            managers.push((pid, dir.data_dir(ordinal)));
        }
    }
    stop_instances(&managers, FAST_SHUTDOWN_TIMEOUT);
    for ordinal in dir.known_ordinals() {
        let data_dir = dir.data_dir(ordinal);
        // Its engine's clean shutdown (PostgreSQL fast, MariaDB normal), immediate after a timeout.
        if let Some(server) = process::live_server(&data_dir) {
            let pid = server.pid;
            stopped.orphans.push(format!(
                "{}'s server (pid {pid})",
                dir.instance_name(ordinal)
            ));
            process::signal(pid, server.program.stop_signal);
            if !process::wait_gone(pid, FAST_SHUTDOWN_TIMEOUT) {
                process::signal(pid, server.program.immediate_signal);
                process::wait_gone(pid, Duration::from_secs(10));
            }
        }
    }
    mark_stopped(dir);
    Ok(stopped)
}

fn mark_stopped(dir: &DatabaseDir) {
    let Ok(Some(mut report)) =
        crate::state::read_json::<crate::report::SupervisorReport>(&dir.supervisor_report())
    else {
        return;
    };
    report.phase = stator_api::Phase::Stopped;
    report.supervisor_pid = None;
    for row in &mut report.instances {
        row.state = "stopped".into();
        row.manager_pid = None;
        row.report = None;
    }
    let _ = crate::state::write_json(&dir.supervisor_report(), &report);
}

/// What `delete` removed and kept.
#[derive(Debug, Default)]
pub struct Deleted {
    pub stopped: Stopped,
    pub removed: Vec<PathBuf>,
    /// Data dirs (and the credentials they were made with) left in place.
    pub kept: Vec<PathBuf>,
}

/// Stops the database and removes it. Without `purge` the data dirs stay (as a StatefulSet's
/// PVCs do), with the secrets and the record of the primary they need; `up` reuses them.
pub fn delete(dir: &DatabaseDir, purge: bool) -> Result<Deleted, LocalError> {
    if !dir.exists() {
        return Err(LocalError::NotFound(dir.key()));
    }
    let stopped = stop_everything(dir)?;
    let mut deleted = Deleted {
        stopped,
        ..Deleted::default()
    };
    if purge {
        std::fs::remove_dir_all(&dir.root)
            .map_err(|e| LocalError::io(&dir.root, "cannot remove", e))?;
        deleted.removed.push(dir.root.clone());
        if let Some(namespace_dir) = dir.root.parent() {
            let _ = std::fs::remove_dir(namespace_dir); // only when empty
        }
        return Ok(deleted);
    }
    let entries =
        std::fs::read_dir(&dir.root).map_err(|e| LocalError::io(&dir.root, "cannot read", e))?;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let keep = name.starts_with("data-")
            || name == "secrets"
            || name == "primary"
            || name == "database.json";
        if keep {
            if name.starts_with("data-") {
                deleted.kept.push(path);
            }
            continue;
        }
        let result = if path.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        result.map_err(|e| LocalError::io(&path, "cannot remove", e))?;
        deleted.removed.push(path);
    }
    deleted.kept.sort();
    Ok(deleted)
}
