//! Processes the runtime starts and finds again: pid files, liveness, detached spawning and
//! stopping with a grace period.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::error::LocalError;

/// Whether `pid` names a live process (not a zombie).
pub fn is_alive(pid: u32) -> bool {
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    if raw <= 0 {
        return false;
    }
    match kill(Pid::from_raw(raw), None) {
        Ok(()) | Err(nix::errno::Errno::EPERM) => {}
        Err(_) => return false,
    }
    // A zombie still answers kill(0); its state in /proc/PID/stat is `Z`.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| state != "Z" && state != "X"),
        Err(_) => true,
    }
}

/// The arguments of a process, as `/proc/PID/cmdline` shows them.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The pid in `path`, when the file holds one.
pub fn read_pid_file(path: &Path) -> Option<u32> {
    fs::read_to_string(path)
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

pub fn write_pid_file(path: &Path, pid: u32) -> Result<(), LocalError> {
    crate::state::write_atomic(path, format!("{pid}\n").as_bytes(), 0o644)
}

/// The pid in `pid_file` when it is alive and its command line mentions `marker` (so a recycled
/// pid is not mistaken for ours).
pub fn live_pid_from_file(pid_file: &Path, marker: &str) -> Option<u32> {
    let pid = read_pid_file(pid_file)?;
    if !is_alive(pid) {
        return None;
    }
    let args = cmdline(pid)?;
    args.iter().any(|a| a.contains(marker)).then_some(pid)
}

/// Starts `program args` in its own session (no terminal, no signals from ours), stdin from
/// /dev/null, stdout and stderr appended to `log`.
pub fn spawn_detached(program: &Path, args: &[&str], log: &Path) -> Result<Child, LocalError> {
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| LocalError::io(log, "cannot open log", e))?;
    let err = out
        .try_clone()
        .map_err(|e| LocalError::io(log, "cannot open log", e))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env("NO_COLOR", "1") // logs go to a file: no terminal colour codes
        .current_dir("/") // hold no directory of whoever started it
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        command.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(|e| LocalError::io(program, "cannot start", e))
}

/// Sends `signal` to `pid`; a process that is gone already is not an error.
pub fn signal(pid: u32, signal: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), signal);
    }
}

/// Waits until `pid` is gone or `timeout` passes; true when it is gone.
pub fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !is_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    !is_alive(pid)
}

/// Ignores Ctrl-C (SIGINT) in this process from now on: `up --foreground` waits for its
/// supervisor, which gets the Ctrl-C itself and stops the database.
pub fn ignore_interrupts() {
    // SAFETY: SIG_IGN installs no handler code.
    let _ =
        unsafe { nix::sys::signal::signal(Signal::SIGINT, nix::sys::signal::SigHandler::SigIgn) };
}

/// The pid a PostgreSQL postmaster recorded in its data dir, when that process still runs.
pub fn live_postmaster(data_dir: &Path) -> Option<u32> {
    let pid = read_pid_file(&data_dir.join("postmaster.pid"))?;
    is_alive(pid).then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_process_is_alive_and_an_unused_pid_is_not() {
        assert!(is_alive(std::process::id()));
        assert!(!is_alive(0));
        assert!(!is_alive(u32::MAX));
    }

    #[test]
    fn a_reaped_child_is_not_alive() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!is_alive(pid));
    }

    #[test]
    fn pid_file_is_trusted_only_with_a_matching_command_line() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("x.pid");
        write_pid_file(&file, std::process::id()).unwrap();
        let me = cmdline(std::process::id()).unwrap();
        let marker = me[0].rsplit('/').next().unwrap().to_string();
        assert_eq!(live_pid_from_file(&file, &marker), Some(std::process::id()));
        assert_eq!(live_pid_from_file(&file, "no-such-marker-here"), None);
    }

    #[test]
    fn detached_child_runs_in_its_own_session() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("log");
        let mut child = spawn_detached(Path::new("/bin/sh"), &["-c", "echo hello"], &log).unwrap();
        child.wait().unwrap();
        assert_eq!(fs::read_to_string(&log).unwrap(), "hello\n");
    }
}
