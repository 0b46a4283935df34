//! `stator snapshot`: the local runtime's VolumeSnapshot. A replica is drained (held down by
//! the supervisor: it leaves the `ro` route and its server is stopped cleanly), its data dir is
//! copied with `cp -a --reflink=auto` (a copy-on-write clone where the filesystem can), and it
//! is uncordoned and waited for until it is back in the `ro` route.
//!
//! Never copies a running server's data dir: the primary is refused, and the copy starts only
//! once the server's pid file is gone (a clean shutdown removes it).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use stator_api::Database;
use stator_api::spec::Engine;

use crate::error::LocalError;
use crate::runtime::fetch_report;
use crate::state::DatabaseDir;
use crate::switchover::{drain, instance_ordinal, uncordon};

/// A snapshot taken.
#[derive(Debug)]
pub struct Snapshot {
    /// The replica copied.
    pub instance: String,
    /// The copy of its data dir.
    pub path: PathBuf,
    /// How long the replica was out of the `ro` route (drain to back in the route).
    pub out_of_route: Duration,
    /// False when the replica was drained before: it is left drained.
    pub uncordoned: bool,
}

/// The directory holding a database's snapshots: `STATE/NAMESPACE/NAME/snapshots`.
pub fn snapshots_dir(dir: &DatabaseDir) -> PathBuf {
    dir.root.join("snapshots")
}

/// The file a server writes in its data dir while it runs, and removes on a clean stop.
fn pid_file(engine: Engine) -> &'static str {
    match engine {
        Engine::Postgres => "postmaster.pid",
        Engine::Mariadb => "mariadb.pid",
        Engine::Mysql => "mysqld.pid",
    }
}

/// Takes a snapshot of `instance` (`None`: the replica with the highest ordinal). Refuses the
/// primary and a database with one instance, naming the instance; waits at most `timeout` for
/// each of the stop and the return to the `ro` route.
pub fn snapshot(
    dir: &DatabaseDir,
    db: &Database,
    instance: Option<&str>,
    timeout: Duration,
) -> Result<Snapshot, LocalError> {
    if db.spec.instances < 2 {
        return Err(LocalError::Invalid(format!(
            "{} is the only instance of {} and so its primary: a snapshot stops a replica while \
             it copies, never the primary (run 2 instances: spec.instances: 2); nothing was \
             changed",
            db.instance_name(0),
            db.name()
        )));
    }
    let report = fetch_report(dir, db)?;
    let primary = report
        .failover
        .as_ref()
        .and_then(|f| f.primary.clone())
        .unwrap_or_else(|| report.primary.clone());
    let instance = match instance {
        Some(name) => {
            instance_ordinal(db, "--instance", name)?;
            name.to_string()
        }
        None => (0..db.spec.instances)
            .rev()
            .map(|o| db.instance_name(o))
            .find(|name| *name != primary)
            .ok_or_else(|| {
                LocalError::Invalid(format!(
                    "{primary} is the only instance of {} and its primary: a snapshot stops a \
                     replica while it copies, never the primary (run 2 instances: \
                     spec.instances: 2); nothing was changed",
                    db.name()
                ))
            })?,
    };
    if instance == primary {
        return Err(LocalError::Invalid(format!(
            "--instance {instance}: is the primary; a snapshot stops a replica while it copies, \
             never the primary (name a replica, or leave --instance out); nothing was changed"
        )));
    }
    let ordinal = instance_ordinal(db, "--instance", &instance)?;
    let started = Instant::now();
    let drained = drain(dir, db, &instance, timeout)?;
    let copied = copy_stopped(dir, db, ordinal, &instance);
    if drained.already {
        let path = copied?;
        return Ok(Snapshot {
            instance,
            path,
            out_of_route: started.elapsed(),
            uncordoned: false,
        });
    }
    // Uncordoned whatever the copy did: a failed copy must not leave the replica down.
    uncordon(dir, db, &instance)?;
    let path = copied?;
    let deadline = Instant::now() + timeout;
    loop {
        let report = fetch_report(dir, db)?;
        if report.proxies.ro.targets.contains(&instance) {
            break;
        }
        if Instant::now() >= deadline {
            return Err(LocalError::Failed(format!(
                "the snapshot of {instance} is in {}, but {instance} was not back in the ro \
                 route within {} s (see `stator status`)",
                path.display(),
                timeout.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(Snapshot {
        instance,
        path,
        out_of_route: started.elapsed(),
        uncordoned: true,
    })
}

/// Copies the data dir of the stopped instance `ordinal` into a new directory under
/// [`snapshots_dir`]; refuses when its server still runs (its pid file is there).
fn copy_stopped(
    dir: &DatabaseDir,
    db: &Database,
    ordinal: u32,
    instance: &str,
) -> Result<PathBuf, LocalError> {
    let data = dir.data_dir(ordinal);
    let pid = data.join(pid_file(db.spec.engine));
    if pid.exists() {
        return Err(LocalError::Failed(format!(
            "{instance}: {} is still there after the drain, so its server may still run; \
             nothing was copied (a running server's data dir is never copied)",
            pid.display()
        )));
    }
    // Shared like the data dirs: the server's user may enter it (to start a copy).
    let root = snapshots_dir(dir);
    dir.create_shared_dir(&root)?;
    let stamp = crate::failover::rfc3339(crate::failover::wall_ms())
        .replace([':', '-'], "")
        .replace('.', "");
    // Two snapshots within one second get `-2`, `-3`, …: never a copy into an earlier one.
    let target = (1..)
        .map(|n| match n {
            1 => root.join(format!("{instance}-{stamp}")),
            n => root.join(format!("{instance}-{stamp}-{n}")),
        })
        .find(|p| !p.exists())
        .unwrap_or_else(|| root.join(format!("{instance}-{stamp}")));
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(&data)
        .arg(&target)
        .output()
        .map_err(|e| LocalError::Failed(format!("cannot run cp: {e}")))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&target);
        return Err(LocalError::Failed(format!(
            "cp -a --reflink=auto {} {}: {}",
            data.display(),
            target.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(target)
}
