//! Finding a database's running processes from the state dir and asking them how they are:
//! the supervisor (its lock and `/status`) and, without one, the instance managers directly.

use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};
use stator_api::instance::{InstanceReport, LocalPorts};
use stator_api::{Database, Phase};

use crate::error::LocalError;
use crate::process;
use crate::report::{InstanceRow, Proxies, RemovedInstance, SupervisorReport};
use crate::state::DatabaseDir;
use stator_failover::client;

/// The pid of the supervisor holding `dir`'s lock, if one does.
pub fn running_supervisor(dir: &DatabaseDir) -> Option<u32> {
    lock_holder(&dir.supervisor_lock(), &dir.supervisor_pid_file())
}

/// The pid in `pid_file` when a process holds the flock on `lock` (0 when the pid file is
/// unreadable); `None` when no one does.
pub fn lock_holder(lock: &std::path::Path, pid_file: &std::path::Path) -> Option<u32> {
    let file = std::fs::OpenOptions::new().write(true).open(lock).ok()?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(_free) => None, // released when dropped
        Err(_) => Some(process::read_pid_file(pid_file).unwrap_or(0)),
    }
}

/// Runs `future` on a small runtime of its own (the commands are otherwise synchronous).
pub fn block_on<F: std::future::Future>(future: F) -> Result<F::Output, LocalError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map(|rt| rt.block_on(future))
        .map_err(LocalError::AsyncRuntime)
}

/// The running supervisor's report.
pub fn fetch_report(dir: &DatabaseDir, db: &Database) -> Result<SupervisorReport, LocalError> {
    crate::transport::register(db, dir)?;
    let port = LocalPorts::of(db).supervisor();
    let address = db.spec.local.listen_address.clone();
    block_on(async move {
        client::get_json::<SupervisorReport>(&address, port, "/status", Duration::from_secs(3))
            .await
    })?
    .map_err(|source| LocalError::SupervisorSilent {
        database: dir.key(),
        source,
    })
}

/// The database's state whether or not a supervisor runs. Without one, each instance manager
/// that still runs is asked directly.
pub fn current_report(dir: &DatabaseDir, db: &Database) -> Result<SupervisorReport, LocalError> {
    if running_supervisor(dir).is_some()
        && let Ok(report) = fetch_report(dir, db)
    {
        return Ok(report);
    }
    let applied = dir
        .read_applied()?
        .ok_or_else(|| LocalError::NotFound(dir.key()))?;
    let db = &applied.database;
    crate::transport::register(db, dir)?;
    let ports = LocalPorts::of(db);
    let address = db.spec.local.listen_address.clone();
    let mut ordinals = dir.known_ordinals();
    ordinals.retain(|o| *o < db.spec.instances);
    let mut rows = Vec::new();
    let mut alive = 0;
    for ordinal in 0..db.spec.instances {
        let marker = dir.config_file(ordinal).display().to_string();
        let pid = process::live_pid_from_file(&dir.manager_pid_file(ordinal), &marker);
        let report: Option<InstanceReport> = match pid {
            Some(_) => {
                let port = ports.manager(ordinal);
                let address = address.clone();
                block_on(async move {
                    client::get_json(&address, port, "/status", Duration::from_secs(2)).await
                })?
                .ok()
            }
            None => None,
        };
        if pid.is_some() {
            alive += 1;
        }
        rows.push(InstanceRow {
            name: dir.instance_name(ordinal),
            ordinal,
            port: ports.server(ordinal),
            manager_port: ports.manager(ordinal),
            manager_pid: pid,
            state: match (&report, pid) {
                (Some(r), _) => r.state.to_string(),
                (None, Some(_)) => "starting".into(),
                (None, None) => "stopped".into(),
            },
            excess: false,
            manager_restarts: 0,
            manager_crashes: 0,
            report,
            lag: None,
        });
    }
    let primary = dir.read_primary();
    let mut report = SupervisorReport {
        database: dir.key(),
        engine: db.spec.engine.to_string(),
        version: db.version().to_string(),
        phase: if alive == 0 {
            Phase::Stopped
        } else {
            Phase::Unavailable
        },
        generation: applied.generation,
        observed_generation: applied.generation,
        supervisor_pid: None,
        primary,
        instances: rows,
        removed: removed_instances(dir, db.spec.instances, |o| {
            let marker = dir.config_file(o).display().to_string();
            process::live_pid_from_file(&dir.manager_pid_file(o), &marker).is_some()
        }),
        proxies: Proxies::unrouted(address, ports),
        message: Some(if alive == 0 {
            "stopped: `stator up -f FILE` starts it again with the same data".into()
        } else {
            format!(
                "no supervisor runs, so the proxies are down; {alive} instance(s) still run: `stator up -f FILE` adopts them"
            )
        }),
        failover: None,
        backups_healthy: None,
    };
    report.measure_lag();
    Ok(report)
}

/// Instances beyond `desired` that are not `running` and still have a data dir: removed by a
/// scale-down, their data kept.
pub fn removed_instances(
    dir: &DatabaseDir,
    desired: u32,
    running: impl Fn(u32) -> bool,
) -> Vec<RemovedInstance> {
    dir.known_ordinals()
        .into_iter()
        .filter(|o| *o >= desired && !running(*o))
        .filter_map(|o| {
            let data_dir = dir.data_dir(o);
            std::fs::read_dir(&data_dir)
                .is_ok_and(|mut entries| entries.next().is_some())
                .then(|| RemovedInstance {
                    name: dir.instance_name(o),
                    data_dir: data_dir.display().to_string(),
                })
        })
        .collect()
}
