//! The dead man's switch of lease mode: a process of its own beside the instance manager that
//! kills the server when the write lease runs out, so that a frozen or starved manager (the
//! watchdog thread of [`crate::self_fencing`] stopped with it) cannot leave a primary serving
//! past its lease. It plays the part of Patroni's hardware watchdog, without a device: the
//! manager tells it, on a pipe, which server may write until when, and it needs nothing of
//! the manager afterwards.
//!
//! Protocol: the manager writes lines `PID UNTIL` to the switch's stdin, `UNTIL` in
//! milliseconds of `CLOCK_BOOTTIME` ([`crate::self_fencing::clock`], the same clock as the
//! lease), each time either changes: the server `PID` may write until `UNTIL`; `0 0` disarms.
//! When the clock reaches `UNTIL` and no later line came, the switch sends SIGKILL to `PID` and
//! every process under it, if `PID` still serves the data directory it was started for (a
//! reused pid is never killed), and waits, disarmed, for the next line. Its stdin closed (the
//! manager exited or was killed), it keeps the last deadline while that server still runs,
//! then exits.
//!
//! The manager's own watchdog stays the one that records the fence and holds the server down;
//! the switch only makes sure the server stops at the lease's end whatever the manager does.
//! An extension of the lease reaches the switch at the manager's next look (at most 100 ms
//! later): a manager frozen in between makes the switch fire up to that much early, never late.
//! Limit: a switch frozen or killed together with the manager (a whole frozen node freezes the
//! server too) covers nothing.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use crate::lease::Millis;
use crate::self_fencing::clock;

/// The argument that makes the manager's own program the switch: `PROGRAM deadman
/// --data-dir DIR` (`stator deadman`, hidden; `instance_manager deadman` in tests).
pub const SUBCOMMAND: &str = "deadman";

/// How often a switch whose manager is gone looks whether the server it guards still runs.
const ORPHAN_LOOK: Duration = Duration::from_millis(200);

/// One armed deadline: server `pid` may write until `until`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guard {
    pub pid: u32,
    pub until: Millis,
}

/// Parses one protocol line; `Ok(None)` disarms.
pub fn parse(line: &str) -> Result<Option<Guard>, String> {
    let mut words = line.split_whitespace();
    let (Some(pid), Some(until), None) = (words.next(), words.next(), words.next()) else {
        return Err(format!("{line:?}: expected two numbers, `PID UNTIL`"));
    };
    let pid: u32 = pid
        .parse()
        .map_err(|_| format!("{line:?}: PID {pid:?} is not a process id"))?;
    let until: Millis = until
        .parse()
        .map_err(|_| format!("{line:?}: UNTIL {until:?} is not a clock reading in ms"))?;
    Ok((pid != 0).then_some(Guard { pid, until }))
}

/// The switch's side: reads `input` until it closes, killing the guarded server at its
/// deadline (see the module documentation). Returns when `input` closed and no deadline is
/// left.
pub fn run(data_dir: &Path, input: impl BufRead + Send + 'static) {
    raise_priority();
    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in input.lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut armed: Option<Guard> = None;
    let mut open = true;
    loop {
        let now = clock();
        if let Some(guard) = armed
            && now >= guard.until
        {
            if stator_engine::process::process_serves_data_dir(guard.pid, data_dir) {
                tracing::error!(
                    pid = guard.pid,
                    "dead man's switch: the write lease ended at clock {} (now {now}) and the \
                     server still runs: killing it and every process under it (the instance \
                     manager's watchdog, unless frozen, does the same)",
                    guard.until
                );
                stator_engine::process::kill_tree_now(guard.pid);
            }
            armed = None;
        }
        if !open {
            // The manager is gone: the deadline holds while the server it guards still runs
            // (a next manager stops that server, and the switch need not outlive it).
            match armed {
                Some(guard)
                    if stator_engine::process::process_serves_data_dir(guard.pid, data_dir) =>
                {
                    let left = Duration::from_millis(guard.until.saturating_sub(now));
                    std::thread::sleep(left.min(ORPHAN_LOOK));
                    continue;
                }
                _ => return,
            }
        }
        let wait = armed.map_or(Duration::from_secs(3600), |g| {
            Duration::from_millis(g.until.saturating_sub(now))
        });
        match rx.recv_timeout(wait) {
            Ok(line) => match parse(&line) {
                Ok(guard) => armed = guard,
                Err(why) => tracing::warn!("dead man's switch: ignored line {why}"),
            },
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
    }
}

/// Asks for the highest CPU priority: when a frozen node resumes, the switch and the server it
/// guards become runnable at the same moment, and the switch should run first. Needs
/// CAP_SYS_NICE (root on one machine; a pod whose capabilities are all dropped has none):
/// without it the switch runs at the priority it was given.
fn raise_priority() {
    // SAFETY: setpriority(2) on this process only; it reads and writes no memory of ours.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, -20) };
    if rc != 0 {
        tracing::debug!(
            "dead man's switch: keeps its CPU priority ({})",
            std::io::Error::last_os_error()
        );
    }
}

/// The manager's side: the switch process and the last guard it was told.
pub struct Deadman {
    child: Child,
    stdin: ChildStdin,
    told: Option<Option<Guard>>,
}

impl Deadman {
    /// Starts `program deadman --data-dir DATA_DIR` (the manager's own program), its stdin a
    /// pipe from this process, its output this process's stderr.
    pub fn spawn(program: &Path, data_dir: &Path) -> std::io::Result<Deadman> {
        let mut child = Command::new(program)
            .arg(SUBCOMMAND)
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()?;
        let Some(stdin) = child.stdin.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("the switch's stdin is not a pipe"));
        };
        Ok(Deadman {
            child,
            stdin,
            told: None,
        })
    }

    /// Tells the switch `guard` (`None`: disarmed) unless it already knows it. An error: the
    /// switch is gone (the caller starts another).
    pub fn tell(&mut self, guard: Option<Guard>) -> std::io::Result<()> {
        if self.told == Some(guard) {
            return Ok(());
        }
        let line = match guard {
            Some(g) => format!("{} {}\n", g.pid, g.until),
            None => "0 0\n".to_string(),
        };
        self.stdin.write_all(line.as_bytes())?;
        self.stdin.flush()?;
        self.told = Some(guard);
        Ok(())
    }
}

impl Drop for Deadman {
    /// A manager that ends cleanly disarms it first; the switch then exits at the closed pipe.
    fn drop(&mut self) {
        let _ = self.tell(None);
        let _ = self.child.try_wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_a_pid_and_a_deadline_and_zero_disarms() {
        assert_eq!(
            parse("4242 123456"),
            Ok(Some(Guard {
                pid: 4242,
                until: 123456
            }))
        );
        assert_eq!(parse(" 0 0 "), Ok(None));
        for bad in ["", "1", "1 2 3", "x 2", "1 -2"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    /// A process serving the data dir (a `sleep` whose working directory it is) is killed at
    /// the deadline; an extension in time keeps it; a stranger's pid is never killed.
    #[test]
    fn the_switch_kills_the_guarded_server_at_its_deadline_only() {
        let dir = tempfile::tempdir().expect("temp dir");
        let spawn = |cwd: &Path| {
            Command::new("sleep")
                .arg("30")
                .current_dir(cwd)
                .spawn()
                .expect("sleep")
        };
        let mut server = spawn(dir.path());
        let other = tempfile::tempdir().expect("temp dir");
        let mut stranger = spawn(other.path());
        let (mut feed, input) = std::os::unix::net::UnixStream::pair().expect("pipe");
        let data_dir = dir.path().to_path_buf();
        let switch = std::thread::spawn(move || run(&data_dir, std::io::BufReader::new(input)));
        let pid = server.id();
        // A pid that does not serve the data dir (a reused one) is left alone at its deadline.
        writeln!(feed, "{} {}", stranger.id(), clock() + 50).unwrap();
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            stranger.try_wait().unwrap().is_none(),
            "a stranger was killed"
        );
        // Extended before each deadline: still alive after 600 ms.
        for _ in 0..3 {
            writeln!(feed, "{pid} {}", clock() + 300).unwrap();
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            server.try_wait().unwrap().is_none(),
            "killed before its deadline"
        );
        // No extension: killed at the deadline, and the pipe closing ends the switch.
        writeln!(feed, "{pid} {}", clock() + 200).unwrap();
        drop(feed);
        let status = server.wait().expect("wait");
        assert!(!status.success(), "killed: {status:?}");
        switch.join().expect("the switch ends");
        let _ = stranger.kill();
        let _ = stranger.wait();
    }
}
