//! Processes the runtime starts and finds again: pid files, liveness, detached spawning and
//! stopping with a grace period.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use stator_api::Engine;

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
    stator_engine::procfs::stat(pid).is_none_or(|s| !s.exited())
}

pub use stator_engine::procfs::cmdline;

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
    crate::state::write_atomic(
        path,
        format!("{pid}\n").as_bytes(),
        crate::state::PRIVATE_FILE,
    )
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
/// /dev/null, stdout and stderr appended to `log` (mode 0600: logs may quote statements).
pub fn spawn_detached(program: &Path, args: &[&str], log: &Path) -> Result<Child, LocalError> {
    let out = open_private_log(log)?;
    let err = out
        .try_clone()
        .map_err(|e| LocalError::io(log, "cannot open log", e))?;
    let mut command = Command::new(program);
    command
        .args(args)
        .env("NO_COLOR", "1") // logs go to a file: no terminal colour codes
        .env_remove(crate::keeper::LISTEN_FDS_ENV)
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

/// Opens `log` for appending, created 0600; an existing one others could read is made 0600.
pub fn open_private_log(log: &Path) -> Result<fs::File, LocalError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let file = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(crate::state::PRIVATE_FILE)
        .open(log)
        .map_err(|e| LocalError::io(log, "cannot open log", e))?;
    let mode = file
        .metadata()
        .map_err(|e| LocalError::io(log, "cannot open log", e))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        file.set_permissions(fs::Permissions::from_mode(crate::state::PRIVATE_FILE))
            .map_err(|e| LocalError::io(log, "cannot set permissions", e))?;
    }
    Ok(file)
}

/// Sends `signal` to `pid`; a process that is gone already is not an error.
pub fn signal(pid: u32, signal: Signal) {
    if let Ok(raw) = i32::try_from(pid) {
        let _ = kill(Pid::from_raw(raw), signal);
    }
}

/// Sends SIGTERM: a supervisor or keeper then stops every instance cleanly and exits.
pub fn ask_to_stop(pid: u32) {
    signal(pid, Signal::SIGTERM);
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

static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// From now on Ctrl-C (SIGINT) and SIGTERM only set a flag that [`interrupted`] reads:
/// `up --foreground` then stops the database cleanly instead of dying and leaving it running.
pub fn watch_interrupts() {
    let action = nix::sys::signal::SigAction::new(
        nix::sys::signal::SigHandler::Handler(on_interrupt),
        nix::sys::signal::SaFlags::empty(),
        nix::sys::signal::SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { nix::sys::signal::sigaction(signal, &action) };
    }
}

/// Whether Ctrl-C or SIGTERM arrived since [`watch_interrupts`].
pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// A database server program as the runtime finds and stops it without its instance manager:
/// the pid file it writes in its data dir, the name on its command line, and the signals of a
/// clean and of an immediate shutdown. The one place these engine differences live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServerProgram {
    pub engine: Engine,
    /// The pid file, relative to the data dir.
    pub pid_file: &'static str,
    /// Appears in the server's command line (so a recycled pid is not taken for it).
    pub name: &'static str,
    /// PostgreSQL: SIGINT (fast shutdown). MariaDB: SIGTERM (clean shutdown).
    pub stop_signal: Signal,
    /// PostgreSQL: SIGQUIT (immediate shutdown, recovery at the next start). MariaDB has no
    /// immediate mode (SIGQUIT is a clean shutdown too): SIGKILL, InnoDB recovers at the next start.
    pub immediate_signal: Signal,
}

impl ServerProgram {
    pub fn of(engine: Engine) -> ServerProgram {
        match engine {
            Engine::Postgres => ServerProgram {
                engine,
                pid_file: "postmaster.pid",
                name: "postgres",
                stop_signal: Signal::SIGINT,
                immediate_signal: Signal::SIGQUIT,
            },
            Engine::Mariadb => ServerProgram {
                engine,
                pid_file: "mariadb.pid",
                name: "mariadbd",
                stop_signal: Signal::SIGTERM,
                immediate_signal: Signal::SIGKILL,
            },
            Engine::Mysql => ServerProgram {
                engine,
                pid_file: "mysqld.pid",
                name: "mysqld",
                stop_signal: Signal::SIGTERM,
                immediate_signal: Signal::SIGKILL,
            },
        }
    }
}

/// A server found running on a data dir.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LiveServer {
    pub pid: u32,
    pub program: ServerProgram,
}

/// The server (postmaster, mariadbd, mysqld) whose pid file in `data_dir` names a live process
/// with that program's name on its command line.
pub fn live_server(data_dir: &Path) -> Option<LiveServer> {
    Engine::ALL.into_iter().find_map(|engine| {
        let program = ServerProgram::of(engine);
        let pid = read_pid_file(&data_dir.join(program.pid_file))?;
        let runs = is_alive(pid)
            && cmdline(pid)?
                .first()
                .is_some_and(|arg0| arg0.contains(program.name));
        runs.then_some(LiveServer { pid, program })
    })
}

/// The live `engine` server of `data_dir`: the pid in its pid file, when that process works in
/// the data dir or names it on its command line (so a recycled pid is never signalled).
pub fn server_of(engine: Engine, data_dir: &Path) -> Option<u32> {
    let pid_file = data_dir.join(ServerProgram::of(engine).pid_file);
    let pid = read_pid_file(&pid_file)?;
    if !is_alive(pid) {
        return None;
    }
    let works_there = stator_engine::procfs::cwd(pid).is_some_and(|cwd| cwd == data_dir);
    let named = cmdline(pid).is_some_and(|args| {
        let wanted = data_dir.display().to_string();
        args.iter().any(|a| a.contains(&wanted))
    });
    (works_there || named).then_some(pid)
}

/// The pid of the server running on `data_dir`, of any engine (`postmaster.pid`,
/// `mariadb.pid`).
pub fn live_server_pid(data_dir: &Path) -> Option<u32> {
    live_server(data_dir).map(|s| s.pid)
}

/// Stops the server on `data_dir` at once, with its engine's immediate signal (PostgreSQL
/// SIGQUIT, MariaDB SIGKILL); the pid it signalled, if any.
pub fn stop_server_immediately(data_dir: &Path) -> Option<u32> {
    let server = live_server(data_dir)?;
    signal(server.pid, server.program.immediate_signal);
    Some(server.pid)
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
    fn a_server_is_found_by_its_engines_pid_file_and_command_line() {
        let tmp = tempfile::tempdir().unwrap();
        let mut child = Command::new("sleep").arg("30").spawn().unwrap();
        // A pid file naming a live process that is not a server does not count.
        write_pid_file(&tmp.path().join("mariadb.pid"), child.id()).unwrap();
        assert_eq!(live_server(tmp.path()), None);
        assert_eq!(live_server_pid(tmp.path()), None);
        // Our own process, named like a server through a symlink.
        let link = tmp.path().join("mariadbd");
        std::os::unix::fs::symlink("/bin/sleep", &link).unwrap();
        let mut server = Command::new(&link).arg("30").spawn().unwrap();
        write_pid_file(&tmp.path().join("mariadb.pid"), server.id()).unwrap();
        let found = live_server(tmp.path()).unwrap();
        assert_eq!(found.pid, server.id());
        assert_eq!(found.program.engine, Engine::Mariadb);
        assert_eq!(found.program.immediate_signal, Signal::SIGKILL);
        assert_eq!(live_server_pid(tmp.path()), Some(server.id()));
        assert_eq!(stop_server_immediately(tmp.path()), Some(server.id()));
        server.wait().unwrap();
        assert_eq!(live_server(tmp.path()), None);
        child.kill().unwrap();
        child.wait().unwrap();
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
