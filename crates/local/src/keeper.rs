//! The keeper (`stator keep`, started by `stator up`): a minimal process that keeps one
//! database's supervisor running. The supervisor hosts the `rw`/`ro` proxies; when it crashes
//! (killed with SIGKILL, a panic) the keeper starts it again at once, and the new supervisor
//! adopts the running instance managers and resumes the failover or switchover recorded in
//! `failover.json`.
//!
//! The keeper owns the proxies' and the status endpoint's listening sockets and hands them to
//! each supervisor it starts (inherited file descriptors, named in `STATOR_LISTEN_FDS`): while
//! a supervisor is restarted, clients connecting to `rw` wait in the listen backlog instead of
//! being refused. It holds `keeper.lock` for its whole life (a second keeper exits at once) and
//! records its pid in `keeper.pid`. SIGTERM or SIGINT stops it: it passes SIGTERM to the
//! supervisor (which stops every instance cleanly) and exits when the supervisor has. A
//! supervisor that exits by itself (stopped on purpose, or an error it reported) is not
//! restarted either: only a crash is.
//!
//! It does nothing else: no secret reaches it, none is on its command line.

use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use stator_api::instance::LocalPorts;

use crate::error::LocalError;
use crate::process;
use crate::runtime::running_supervisor;
use crate::state::DatabaseDir;

/// The environment variable that names the listening sockets a supervisor inherits:
/// `rw=FD,ro=FD,status=FD`.
pub const LISTEN_FDS_ENV: &str = "STATOR_LISTEN_FDS";

/// How often the keeper looks at its supervisor: a crash is noticed within this.
const POLL: Duration = Duration::from_millis(10);
/// A supervisor that crashes sooner than this after its start counts towards the back-off.
const QUICK_CRASH: Duration = Duration::from_secs(10);
/// Quick crashes in a row restarted at once before the back-off starts: a supervisor killed
/// again soon after its restart is still brought back at once, one that crashes at every start
/// is not restarted in a hot loop.
const QUICK_CRASHES_AT_ONCE: u32 = 3;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// The pid of the keeper holding `dir`'s `keeper.lock`, if one does.
pub fn running_keeper(dir: &DatabaseDir) -> Option<u32> {
    crate::runtime::lock_holder(&dir.keeper_lock(), &dir.keeper_pid_file())
}

/// Whether a supervisor's exit is a crash the keeper repairs: killed by a signal, or a panic
/// (Rust's exit code 101). Exit 0 (stopped on purpose) and the codes of errors it reported are
/// not.
pub fn is_crash(status: &ExitStatus) -> bool {
    status.signal().is_some() || status.code() == Some(101)
}

/// The pause before restarting a supervisor after `quick_crashes` crashes in a row, each soon
/// after its start: none for the first [`QUICK_CRASHES_AT_ONCE`], then one more second each,
/// at most 10 s.
pub fn restart_delay(quick_crashes: u32) -> Duration {
    Duration::from_secs(u64::from(
        quick_crashes.saturating_sub(QUICK_CRASHES_AT_ONCE).min(10),
    ))
}

/// Runs the keeper of `dir` until SIGTERM or SIGINT, or until its supervisor exits on purpose.
/// Returns at once when another keeper holds the lock.
pub fn run(dir: DatabaseDir, exe: PathBuf) -> Result<(), LocalError> {
    let lock_path = dir.keeper_lock();
    let file = crate::state::open_lock_file(&lock_path)?;
    let _lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => lock,
        Err(_) => {
            tracing::info!(
                "a keeper already runs for {}; leaving it in charge",
                dir.key()
            );
            return Ok(());
        }
    };
    process::write_pid_file(&dir.keeper_pid_file(), std::process::id())?;
    let result = keep(&dir, &exe);
    let _ = std::fs::remove_file(dir.keeper_pid_file());
    result
}

fn keep(dir: &DatabaseDir, exe: &Path) -> Result<(), LocalError> {
    watch_stop_signals()?;
    if !outlive_running_supervisor(dir) {
        return Ok(());
    }
    let applied = dir
        .read_applied()?
        .ok_or_else(|| LocalError::NotFound(dir.key()))?;
    let db = &applied.database;
    let ports = LocalPorts::of(db);
    let address = db.spec.local.listen_address.as_str();
    let bind = |port: u16, purpose: &str| {
        std::net::TcpListener::bind((address, port)).map_err(|e| {
            LocalError::Failed(format!(
                "cannot listen on {address}:{port} for {purpose}: {e}"
            ))
        })
    };
    let sockets = [
        ("rw", bind(ports.rw(), "the rw proxy")?),
        ("ro", bind(ports.ro(), "the ro proxy")?),
        (
            "status",
            bind(ports.supervisor(), "the supervisor's status")?,
        ),
    ];
    let fds: Vec<RawFd> = sockets.iter().map(|(_, s)| s.as_raw_fd()).collect();
    let named = sockets
        .iter()
        .map(|(name, s)| format!("{name}={}", s.as_raw_fd()))
        .collect::<Vec<_>>()
        .join(",");
    tracing::info!(
        "keeping the supervisor of {} running (keeper pid {})",
        dir.key(),
        std::process::id()
    );
    let mut quick_crashes = 0u32;
    while !STOP.load(Ordering::SeqCst) {
        let started = Instant::now();
        let mut child = start_supervisor(dir, exe, &named, &fds)?;
        let pid = child.id();
        let status = loop {
            if STOP.load(Ordering::SeqCst) {
                tracing::info!("stopping: asking the supervisor (pid {pid}) to stop");
                process::signal(pid, Signal::SIGTERM);
                let status = child.wait();
                match status {
                    Ok(status) => {
                        tracing::info!("the supervisor stopped ({status}); the keeper exits")
                    }
                    Err(e) => {
                        tracing::warn!("cannot wait for the supervisor: {e}; the keeper exits")
                    }
                }
                return Ok(());
            }
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => std::thread::sleep(POLL),
                Err(e) => {
                    return Err(LocalError::Failed(format!(
                        "cannot watch the supervisor (pid {pid}): {e}"
                    )));
                }
            }
        };
        if !is_crash(&status) {
            tracing::info!("the supervisor (pid {pid}) exited ({status}); the keeper exits");
            return Ok(());
        }
        quick_crashes = if started.elapsed() < QUICK_CRASH {
            quick_crashes + 1
        } else {
            1
        };
        let delay = restart_delay(quick_crashes);
        tracing::warn!(
            "the supervisor (pid {pid}) crashed ({status}); starting it again{}",
            if delay.is_zero() {
                " at once".to_string()
            } else {
                format!(" in {delay:?}")
            }
        );
        let resume = Instant::now() + delay;
        while Instant::now() < resume && !STOP.load(Ordering::SeqCst) {
            std::thread::sleep(POLL);
        }
    }
    Ok(())
}

/// A supervisor that runs without this keeper (this keeper was restarted by systemd, or the
/// supervisor was started by an older `stator`) keeps its sockets: waits until it is gone.
/// True when the keeper should then take over (it crashed), false when it stopped on purpose
/// (its last report says Stopped) or the keeper is asked to stop (it then stops it too).
fn outlive_running_supervisor(dir: &DatabaseDir) -> bool {
    let Some(pid) = running_supervisor(dir) else {
        return true;
    };
    tracing::info!("the supervisor (pid {pid}) runs without a keeper; taking over when it exits");
    while running_supervisor(dir).is_some() {
        if STOP.load(Ordering::SeqCst) {
            process::signal(pid, Signal::SIGTERM);
            while running_supervisor(dir).is_some() {
                std::thread::sleep(POLL);
            }
            return false;
        }
        std::thread::sleep(POLL);
    }
    let stopped =
        crate::state::read_json::<crate::report::SupervisorReport>(&dir.supervisor_report())
            .ok()
            .flatten()
            .is_some_and(|r| r.phase == stator_api::Phase::Stopped);
    !stopped
}

/// SIGTERM and SIGINT set [`STOP`]; blocking calls are not restarted, so they are seen at once.
fn watch_stop_signals() -> Result<(), LocalError> {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, sigaction};
    let action = SigAction::new(
        SigHandler::Handler(on_stop),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { sigaction(signal, &action) }
            .map_err(|e| LocalError::Failed(format!("cannot watch {signal}: {e}")))?;
    }
    Ok(())
}

/// Starts `stator supervise` with the listening sockets `fds` inherited (named in
/// [`LISTEN_FDS_ENV`]) and the keeper's stdout and stderr (its log, or the terminal).
fn start_supervisor(
    dir: &DatabaseDir,
    exe: &Path,
    named: &str,
    fds: &[RawFd],
) -> Result<Child, LocalError> {
    let state = dir
        .root
        .parent()
        .and_then(Path::parent)
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let key = dir.key();
    let mut command = Command::new(exe);
    command
        .args(["supervise", "--state-dir", &state, "--database", &key])
        .env(LISTEN_FDS_ENV, named)
        .stdin(Stdio::null());
    let fds = fds.to_vec();
    // SAFETY: fcntl is async-signal-safe; it only clears close-on-exec on sockets we own, in
    // the child, so the supervisor inherits them and nothing else does.
    unsafe {
        command.pre_exec(move || {
            for fd in &fds {
                if libc::fcntl(*fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(|e| LocalError::io(exe, "cannot start the supervisor", e))
}

/// The listening socket named `name` in [`LISTEN_FDS_ENV`], when this process inherited one
/// bound to `port`. It is made close-on-exec again, so the processes the supervisor starts do
/// not hold it.
pub fn inherited_listener(name: &str, port: u16) -> Option<std::net::TcpListener> {
    use std::os::fd::FromRawFd;
    let value = std::env::var(LISTEN_FDS_ENV).ok()?;
    let fd: RawFd = value
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .find(|(n, _)| *n == name)
        .and_then(|(_, fd)| fd.parse().ok())?;
    // SAFETY: fstat only reads the descriptor's metadata.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    if fd < 3
        || unsafe { libc::fstat(fd, &mut stat) } != 0
        || stat.st_mode & libc::S_IFMT != libc::S_IFSOCK
    {
        tracing::warn!("{LISTEN_FDS_ENV}: {name}={fd} is not a socket; binding anew");
        return None;
    }
    // SAFETY: the keeper passed this descriptor for us alone; it is a socket (checked above)
    // and nothing else in this process owns it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    // SAFETY: F_SETFD on a descriptor we own.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    match listener.local_addr() {
        Ok(addr) if addr.port() == port => {
            listener.set_nonblocking(true).ok()?;
            Some(listener)
        }
        other => {
            tracing::warn!(
                "{LISTEN_FDS_ENV}: {name}={fd} is bound to {other:?}, not port {port}; binding anew"
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_signal_death_or_a_panic_is_a_crash() {
        assert!(is_crash(&ExitStatus::from_raw(9))); // killed by SIGKILL
        assert!(is_crash(&ExitStatus::from_raw(6))); // SIGABRT
        assert!(is_crash(&ExitStatus::from_raw(101 << 8)));
        assert!(!is_crash(&ExitStatus::from_raw(0)));
        assert!(!is_crash(&ExitStatus::from_raw(1 << 8)));
    }

    #[test]
    fn the_first_crash_restarts_at_once_and_repeated_quick_crashes_back_off() {
        assert_eq!(restart_delay(1), Duration::ZERO);
        assert_eq!(restart_delay(3), Duration::ZERO);
        assert_eq!(restart_delay(4), Duration::from_secs(1));
        assert_eq!(restart_delay(50), Duration::from_secs(10));
    }
}
