//! What `/proc` says of a process, read in one place: its state and parent (`/proc/PID/stat`),
//! its start time, command line, working directory, resident memory, and the tree of its
//! descendants. The instance manager (reaping orphans, adopting a server), the local runtime
//! (liveness, fencing, fault injection) and the benchmarks all read processes through these.
//!
//! Every function answers `None` (or an empty list) for a process that is gone or cannot be
//! read: a process may exit between any two reads, and that is never an error.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// The fields of `/proc/PID/stat` this code uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// `R`, `S`, `D`, `T` (stopped by a signal), `Z` (zombie), `X` (dead), …
    pub state: char,
    pub ppid: u32,
    /// Clock ticks since boot (field 22): with the pid, it names one process for good.
    pub start_time: u64,
}

impl Stat {
    /// Exited: a zombie waiting to be reaped, or dead.
    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X')
    }

    /// Stopped by a signal (SIGSTOP).
    pub fn stopped(&self) -> bool {
        self.state == 'T'
    }
}

/// `/proc/PID/stat`, parsed.
pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The fields after the command name (which may hold spaces and parentheses): index 0 is the
/// state, 1 the parent, 19 the start time.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The start time of `pid` in clock ticks since boot.
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid).map(|s| s.start_time)
}

/// Whether `pid` is stopped by a signal (state `T`).
pub fn is_stopped(pid: u32) -> bool {
    stat(pid).is_some_and(|s| s.stopped())
}

/// The arguments of a process, as `/proc/PID/cmdline` shows them.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The working directory of a process.
pub fn cwd(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/cwd")).ok()
}

/// VmRSS of `pid` in MiB, from `/proc/PID/status`.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Every pid `/proc` lists now.
pub fn pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()))
        .collect()
}

/// Every live descendant of `root`, found by walking `/proc`.
pub fn descendants(root: u32) -> Vec<u32> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    for pid in pids() {
        if let Some(s) = stat(pid) {
            children.entry(s.ppid).or_default().push(pid);
        }
    }
    let mut out = Vec::new();
    let mut stack = vec![root];
    while let Some(p) = stack.pop() {
        for c in children.get(&p).into_iter().flatten() {
            out.push(*c);
            stack.push(*c);
        }
    }
    out
}

/// `root` and all its descendants, root first.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut tree = vec![root];
    tree.extend(descendants(root));
    tree
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_command_name_with_spaces_and_parentheses_is_skipped() {
        let text = "42 (a (b) c) S 7 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 12345 1000 10";
        assert_eq!(
            parse_stat(text),
            Some(Stat {
                state: 'S',
                ppid: 7,
                start_time: 12345
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn this_process_reads_as_running_with_its_own_command_line() {
        let me = std::process::id();
        let s = stat(me).unwrap();
        assert!(!s.exited() && !s.stopped());
        assert_eq!(s.ppid, std::os::unix::process::parent_id());
        assert!(!cmdline(me).unwrap().is_empty());
        assert_eq!(cwd(me).unwrap(), std::env::current_dir().unwrap());
        assert!(rss_mib(me).is_some_and(|m| m > 0.0));
        assert_eq!(stat(u32::MAX), None);
    }

    #[test]
    fn a_process_tree_holds_the_children_of_its_root() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let tree = process_tree(std::process::id());
        assert_eq!(tree[0], std::process::id());
        assert!(tree.contains(&child.id()));
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
