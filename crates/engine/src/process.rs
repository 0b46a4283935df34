//! Processes an engine starts: the server itself (in its own process group, so it outlives a
//! killed instance manager and can be adopted by the next one) and the engine's tools (initdb,
//! pg_basebackup, pg_rewind). Both run as the server user, with a minimal environment, stdin
//! closed and output appended to the instance's log file. Arguments never carry a secret.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

use crate::error::EngineError;
use crate::server_user::ServerUser;

/// How to run one program: what, with which arguments and extra environment, as whom, and
/// where its output goes.
#[derive(Clone, Debug)]
pub struct Invocation {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// Extra environment (no secrets: a password file's path, never a password).
    pub env: Vec<(String, OsString)>,
    pub user: ServerUser,
    pub log_file: PathBuf,
    /// Working directory (the server user must be able to enter it).
    pub cwd: Option<PathBuf>,
}

impl Invocation {
    fn command(&self) -> Result<Command, EngineError> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600) // server logs may quote statements: readable by no one else
            .open(&self.log_file)
            .map_err(|e| EngineError::io(&self.log_file, "open the log file", e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| EngineError::io(&self.log_file, "open the log file", e))?;
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("LC_ALL", "C.UTF-8")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .kill_on_drop(false);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if let Some(dir) = &self.cwd {
            cmd.current_dir(dir);
        } else {
            cmd.current_dir("/");
        }
        if self.user.switch {
            // std clears supplementary groups when root sets a uid.
            cmd.uid(self.user.uid).gid(self.user.gid);
        }
        Ok(cmd)
    }

    /// The command for messages: program name and arguments (which hold no secret).
    pub fn describe(&self) -> String {
        let name = self
            .program
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let args: Vec<String> = self
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        format!("{name} {}", args.join(" "))
    }

    /// Runs a tool to completion; an error when it exits non-zero.
    pub async fn run(&self) -> Result<(), EngineError> {
        tracing::info!(command = %self.describe(), user = %self.user.name, "running");
        let mut cmd = self.command()?;
        cmd.process_group(0).kill_on_drop(true);
        let mut child =
            spawn_owned(&mut cmd).map_err(|e| EngineError::io(&self.program, "run", e))?;
        let pid = child.id();
        let status = child.wait().await;
        if let Some(pid) = pid {
            forget_owned(pid);
        }
        let status = status.map_err(|e| EngineError::io(&self.program, "run", e))?;
        if status.success() {
            Ok(())
        } else {
            Err(EngineError::Command {
                command: self.describe(),
                status: status.to_string(),
                log: self.log_file.clone(),
            })
        }
    }

    /// Runs a tool to completion, `input` (if any) on its standard input, and returns its
    /// standard output; an error when it exits non-zero.
    pub async fn output(&self, input: Option<&str>) -> Result<String, EngineError> {
        let (out, ended) = self.output_and_end(input).await?;
        ended.map(|()| out)
    }

    /// [`Self::output`], the output kept whether or not the tool exits zero (a tool that
    /// reports what it found wrong on stdout, and fails): the output and how the tool ended.
    pub async fn output_and_end(
        &self,
        input: Option<&str>,
    ) -> Result<(String, Result<(), EngineError>), EngineError> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tool = self.spawn_piped(input.is_some(), true)?;
        if let (Some(text), Some(mut stdin)) = (input, tool.child.stdin.take()) {
            // Small inputs (a few lines): written whole, then closed, before the output is read.
            stdin
                .write_all(text.as_bytes())
                .await
                .map_err(|e| EngineError::io(&self.program, "write to", e))?;
        }
        let mut out = String::new();
        if let Some(stdout) = tool.child.stdout.as_mut() {
            stdout
                .read_to_string(&mut out)
                .await
                .map_err(|e| EngineError::io(&self.program, "read the output of", e))?;
        }
        Ok((out, tool.finish().await))
    }

    /// Starts a tool whose standard input and/or output are pipes the caller feeds or drains
    /// (a backup stream); wait for it with [`PipedTool::finish`]. Its stderr goes to the log.
    pub fn spawn_piped(&self, stdin: bool, stdout: bool) -> Result<PipedTool, EngineError> {
        self.spawn_with(stdin.then(Stdio::piped), stdout)
    }

    /// [`Self::spawn_piped`] reading `stdin`: another tool's output (a pipe between two
    /// tools that nothing here copies through).
    pub fn spawn_reading(&self, stdin: Stdio, stdout: bool) -> Result<PipedTool, EngineError> {
        self.spawn_with(Some(stdin), stdout)
    }

    fn spawn_with(&self, stdin: Option<Stdio>, stdout: bool) -> Result<PipedTool, EngineError> {
        tracing::info!(command = %self.describe(), user = %self.user.name, "running");
        let mut cmd = self.command()?;
        if let Some(stdin) = stdin {
            cmd.stdin(stdin);
        }
        if stdout {
            cmd.stdout(Stdio::piped());
        }
        cmd.process_group(0).kill_on_drop(true);
        let child = spawn_owned(&mut cmd).map_err(|e| EngineError::io(&self.program, "run", e))?;
        Ok(PipedTool {
            pid: child.id(),
            child,
            invocation: self.clone(),
        })
    }

    /// Starts a server in its own process group and returns without waiting.
    pub fn spawn_server(&self, data_dir: &Path) -> Result<ServerProcess, EngineError> {
        tracing::info!(command = %self.describe(), user = %self.user.name, "starting the server");
        let mut cmd = self.command()?;
        cmd.process_group(0);
        let child =
            spawn_owned(&mut cmd).map_err(|e| EngineError::io(&self.program, "start", e))?;
        let pid = child
            .id()
            .ok_or_else(|| EngineError::State("the server exited as it started".into()))?;
        Ok(ServerProcess {
            pid,
            child: Some(child),
            data_dir: data_dir.to_path_buf(),
        })
    }
}

/// A tool started with pipes ([`Invocation::spawn_piped`]). Dropping it kills the tool.
#[derive(Debug)]
pub struct PipedTool {
    pub child: Child,
    pid: Option<u32>,
    invocation: Invocation,
}

impl PipedTool {
    /// Waits for the tool; an error naming it when it exits non-zero.
    pub async fn finish(mut self) -> Result<(), EngineError> {
        drop(self.child.stdin.take());
        let status = self.child.wait().await;
        if let Some(pid) = self.pid.take() {
            forget_owned(pid);
        }
        let inv = &self.invocation;
        let status = status.map_err(|e| EngineError::io(&inv.program, "run", e))?;
        if status.success() {
            Ok(())
        } else {
            Err(EngineError::Command {
                command: inv.describe(),
                status: status.to_string(),
                log: inv.log_file.clone(),
            })
        }
    }
}

impl Drop for PipedTool {
    fn drop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = self.child.start_kill();
            forget_owned(pid);
        }
    }
}

/// A running server: either our child, or one adopted from a previous instance manager.
#[derive(Debug)]
pub struct ServerProcess {
    pid: u32,
    child: Option<Child>,
    data_dir: PathBuf,
}

impl ServerProcess {
    /// A server this manager did not start, found running on `data_dir`.
    pub fn adopt(pid: u32, data_dir: &Path) -> ServerProcess {
        ServerProcess {
            pid,
            child: None,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// True when adopted rather than started by this manager.
    pub fn is_adopted(&self) -> bool {
        self.child.is_none()
    }

    /// Still running (for an adopted server: a live, non-zombie process whose working
    /// directory is the data directory — the server chdirs there, which tells it from a
    /// process that reused the pid).
    pub fn is_alive(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => process_serves_data_dir(self.pid, &self.data_dir),
        }
    }

    /// Waits until the server is gone; says how it ended.
    pub async fn exited(&mut self) -> String {
        match &mut self.child {
            Some(child) => {
                let how = match child.wait().await {
                    Ok(status) => status.to_string(),
                    Err(e) => format!("unknown exit ({e})"),
                };
                forget_owned(self.pid);
                how
            }
            None => {
                while process_serves_data_dir(self.pid, &self.data_dir) {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                "exited (adopted process, status unknown)".into()
            }
        }
    }

    /// Sends `signal` to the server process.
    pub fn signal(&self, signal: Signal) -> Result<(), EngineError> {
        let pid = i32::try_from(self.pid)
            .map_err(|_| EngineError::State(format!("pid {} out of range", self.pid)))?;
        match kill(Pid::from_raw(pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(EngineError::State(format!(
                "cannot send {signal} to the server (pid {pid}): {e}"
            ))),
        }
    }

    /// Sends SIGKILL to the server and every process under it (collected first, so none is
    /// lost to init), and waits until the server is gone: a fence that must work on a hung
    /// or stopped server too.
    pub async fn kill_tree(&mut self) -> String {
        kill_tree_now(self.pid);
        self.exited().await
    }

    /// Stops the server: `gentle` first, then `hard` after `timeout`, then SIGKILL.
    pub async fn stop(&mut self, gentle: Signal, hard: Signal, timeout: Duration) -> String {
        for (sig, wait) in [
            (gentle, timeout),
            (hard, timeout),
            (Signal::SIGKILL, timeout),
        ] {
            if !self.is_alive() {
                break;
            }
            tracing::info!(pid = self.pid, signal = %sig, "stopping the server");
            if self.signal(sig).is_err() {
                continue;
            }
            if let Ok(how) = tokio::time::timeout(wait, self.exited()).await {
                return how;
            }
        }
        self.exited().await
    }
}

/// SIGKILL to `root` and every process under it (collected first, so none is lost to init),
/// without waiting: the kill fence's signals, for a caller that cannot await (the lease's
/// self-fencing thread). [`ServerProcess::kill_tree`] sends these and waits.
///
/// The server's process group (a server is started as its leader) is stopped first, in one
/// signal, before anything else: collecting the tree reads all of `/proc`, milliseconds a
/// server thawed past its lease (a frozen node resuming) would otherwise spend answering
/// queries as a primary (the stand-in's node-freeze drill caught one such answer).
pub fn kill_tree_now(root: u32) {
    let Ok(leader) = i32::try_from(root).map(Pid::from_raw) else {
        return;
    };
    let group = nix::unistd::getpgid(Some(leader)) == Ok(leader);
    if group {
        let _ = nix::sys::signal::killpg(leader, Signal::SIGSTOP);
    } else {
        let _ = kill(leader, Signal::SIGSTOP);
    }
    let mut doomed = vec![root];
    doomed.extend(descendants(root));
    for pid in doomed {
        if let Ok(pid) = i32::try_from(pid) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    if group {
        // Members that were not children of the tree (none a server starts) are not left
        // stopped.
        let _ = nix::sys::signal::killpg(leader, Signal::SIGKILL);
    }
}

/// Pids of the children this process spawned and waits for itself; [`reap_orphans`] leaves
/// them alone.
static OWN_CHILDREN: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());

fn own_children() -> MutexGuard<'static, BTreeSet<u32>> {
    OWN_CHILDREN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Spawns and records the child under one lock, so the reaper never takes it for an orphan.
fn spawn_owned(cmd: &mut Command) -> std::io::Result<Child> {
    let mut own = own_children();
    let child = cmd.spawn()?;
    if let Some(pid) = child.id() {
        own.insert(pid);
    }
    Ok(child)
}

fn forget_owned(pid: u32) {
    own_children().remove(&pid);
}

/// Waits for exited children this process did not spawn: the orphans a PID 1 inherits (the
/// backends of a killed postmaster, for instance). Returns how many were reaped.
pub fn reap_orphans() -> usize {
    let me = std::process::id();
    let own = own_children();
    let mut reaped = 0;
    for pid in crate::procfs::pids() {
        if own.contains(&pid) {
            continue;
        }
        if let Some(stat) = crate::procfs::stat(pid)
            && stat.state == 'Z'
            && stat.ppid == me
            && let Ok(pid) = i32::try_from(pid)
            && waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)).is_ok()
        {
            reaped += 1;
        }
    }
    reaped
}

/// Every live descendant of `root`. (A PostgreSQL backend leads its own process group, so
/// signalling the postmaster's group does not reach it.)
pub use crate::procfs::descendants;

/// True when `pid` is a live (non-zombie) process whose working directory is `data_dir`.
pub fn process_serves_data_dir(pid: u32, data_dir: &Path) -> bool {
    if crate::procfs::stat(pid).is_none_or(|s| s.exited()) {
        return false;
    }
    let Some(cwd) = crate::procfs::cwd(pid) else {
        return false;
    };
    let wanted = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    cwd == wanted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_orphan_is_reaped_but_an_own_child_is_left_to_its_waiter() {
        // A child spawned outside spawn_owned stands for an inherited orphan.
        let orphan = std::process::Command::new("true").spawn().unwrap();
        let orphan_pid = orphan.id();
        std::mem::forget(orphan);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _entered = rt.enter();
        let mut own = spawn_owned(Command::new("true").kill_on_drop(false)).unwrap();
        let own_pid = own.id().unwrap();
        let zombie = |pid: u32| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(false)
        };
        for _ in 0..200 {
            if zombie(orphan_pid) && zombie(own_pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(reap_orphans() >= 1);
        assert!(!zombie(orphan_pid), "the orphan was reaped");
        assert!(zombie(own_pid), "the own child is left for its waiter");
        assert!(rt.block_on(own.wait()).unwrap().success());
        forget_owned(own_pid);
    }

    #[test]
    fn our_own_process_serves_its_cwd_only() {
        let me = std::process::id();
        let cwd = std::env::current_dir().unwrap();
        assert!(process_serves_data_dir(me, &cwd));
        assert!(!process_serves_data_dir(me, Path::new("/nonexistent-dir")));
        assert!(!process_serves_data_dir(u32::MAX, &cwd));
    }
}
