//! `stator up --service`: a systemd unit that runs a database's keeper (`stator keep`), for
//! users who want the OS to own it. systemd restarts the keeper if it dies; the keeper restarts
//! the supervisor; `systemctl stop` (SIGTERM to the keeper) stops the database cleanly, as
//! `stator down` does. Only the keeper is signalled (`KillMode=process`): the instance
//! managers and servers are stopped by the supervisor, cleanly, never killed by systemd, and
//! survive a restart of the keeper (the next supervisor adopts them).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::error::LocalError;
use crate::keeper::running_keeper;
use crate::state::{DatabaseDir, StateDir, write_atomic};
use crate::supervisor::FAST_SHUTDOWN_TIMEOUT;

/// Where systemd looks for units the administrator installs.
pub const SYSTEM_UNIT_DIR: &str = "/etc/systemd/system";

/// A unit file written for one database.
#[derive(Clone, Debug)]
pub struct Unit {
    /// `stator-NAMESPACE-NAME.service`.
    pub name: String,
    pub path: PathBuf,
}

/// `stator-NAMESPACE-NAME.service`.
pub fn unit_name(dir: &DatabaseDir) -> String {
    format!("stator-{}-{}.service", dir.namespace, dir.name)
}

/// The unit's text. No secret is in it: the keeper reads nothing but the state dir.
pub fn render(dir: &DatabaseDir, state: &StateDir, exe: &Path) -> String {
    let stop_timeout = FAST_SHUTDOWN_TIMEOUT.as_secs() + 60;
    format!(
        "# Written by `stator up --service` for {key}. `systemctl stop {unit}` stops the database\n\
         # cleanly (as `stator down`); its data is kept.\n\
         [Unit]\n\
         Description=Stator database {key}\n\
         After=network.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         ExecStart={exe} keep --state-dir {state} --database {key}\n\
         Environment=NO_COLOR=1\n\
         StandardOutput=append:{log}\n\
         StandardError=append:{log}\n\
         Restart=on-failure\n\
         RestartSec=1\n\
         KillMode=process\n\
         TimeoutStopSec={stop_timeout}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        key = dir.key(),
        unit = unit_name(dir),
        exe = quote(&exe.display().to_string()),
        state = quote(&state.root.display().to_string()),
        log = dir.supervisor_log().display(),
    )
}

/// A word of a systemd command line: quoted, with `\`, `"` and `%` escaped.
fn quote(word: &str) -> String {
    let escaped = word
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%");
    format!("\"{escaped}\"")
}

/// Writes the unit into `unit_dir` (0644, as systemd units are).
pub fn install(
    unit_dir: &Path,
    dir: &DatabaseDir,
    state: &StateDir,
    exe: &Path,
) -> Result<Unit, LocalError> {
    if !unit_dir.is_dir() {
        return Err(LocalError::Invalid(format!(
            "--unit-dir {}: not a directory (systemd units go to {SYSTEM_UNIT_DIR})",
            unit_dir.display()
        )));
    }
    let unit = Unit {
        name: unit_name(dir),
        path: unit_dir.join(unit_name(dir)),
    };
    write_atomic(&unit.path, render(dir, state, exe).as_bytes(), 0o644)?;
    Ok(unit)
}

/// What `systemctl is-system-running` says (`running`, `degraded`, `offline`, …).
pub fn systemd_state() -> String {
    std::process::Command::new("systemctl")
        .arg("is-system-running")
        .stdin(std::process::Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "not installed".into())
}

/// Enables and starts `unit` when systemd runs and the unit is where it looks, and waits for
/// its keeper; otherwise says why not (the caller then starts the keeper itself).
pub fn start(unit: &Unit, dir: &DatabaseDir) -> String {
    let state = systemd_state();
    if !matches!(state.as_str(), "running" | "degraded") {
        return format!(
            "systemd is not running here (`systemctl is-system-running`: {state}): {} is written but not enabled; this `up` starts the keeper itself",
            unit.name
        );
    }
    if unit.path.parent() != Some(Path::new(SYSTEM_UNIT_DIR)) {
        return format!(
            "{} is not in {SYSTEM_UNIT_DIR}: not enabled; this `up` starts the keeper itself",
            unit.path.display()
        );
    }
    let systemctl = |args: &[&str]| {
        std::process::Command::new("systemctl")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
    };
    let _ = systemctl(&["daemon-reload"]);
    match systemctl(&["enable", "--now", &unit.name]) {
        Ok(out) if out.status.success() => {
            let started = Instant::now();
            while running_keeper(dir).is_none() && started.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(50));
            }
            format!("enabled and started {} with systemd", unit.name)
        }
        Ok(out) => format!(
            "systemctl enable --now {} failed ({}); this `up` starts the keeper itself",
            unit.name,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => format!("cannot run systemctl ({e}); this `up` starts the keeper itself"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_the_keeper_with_no_secret_and_leaves_the_servers_to_the_supervisor() {
        let state = StateDir {
            root: "/var/lib/stator".into(),
        };
        let dir = state.database("default", "pg");
        let unit = render(&dir, &state, Path::new("/usr/local/bin/stator"));
        for line in [
            "Description=Stator database default/pg\n",
            "ExecStart=\"/usr/local/bin/stator\" keep --state-dir \"/var/lib/stator\" --database default/pg\n",
            "StandardOutput=append:/var/lib/stator/default/pg/supervisor.log\n",
            "Restart=on-failure\n",
            "KillMode=process\n",
            "TimeoutStopSec=120\n",
            "WantedBy=multi-user.target\n",
        ] {
            assert!(unit.contains(line), "{line:?} missing in:\n{unit}");
        }
        assert!(!unit.contains("password"), "{unit}");
        assert_eq!(unit_name(&dir), "stator-default-pg.service");
    }

    #[test]
    fn words_with_quotes_and_percent_signs_are_escaped() {
        assert_eq!(quote("/a b/\"x\"%"), "\"/a b/\\\"x\\\"%%\"");
    }
}
