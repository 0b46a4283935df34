//! Starting one container process: its own session (so its process group can be signalled
//! whole), its pod's network namespace (see `net`), its own mount namespace with the pod's
//! volumes bind-mounted at their mount paths, and the user and groups its security context
//! names. That mount namespace is how the stand-in finds every process of a container
//! ([`signal_container`]).
//!
//! Everything the forked child needs is computed before the fork; between fork and exec the
//! child only makes system calls (no allocation), as `pre_exec` requires.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Mutex;

/// One bind mount inside the container's mount namespace.
#[derive(Clone, Debug)]
pub(crate) struct Mount {
    /// Host path (a directory or a file).
    pub source: PathBuf,
    /// Path inside the container.
    pub target: PathBuf,
    pub read_only: bool,
}

/// A process to start as a container (or an exec probe in one).
#[derive(Clone, Debug)]
pub(crate) struct Launch {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    pub mounts: Vec<Mount>,
    /// The network namespace joined before exec (`/run/netns/NAME`).
    pub netns: PathBuf,
    /// The stand-in (its subnet octet) that owns the mount points this launch creates.
    pub standin: u8,
}

/// Host paths the stand-ins of this process created as mount points, with the stand-ins
/// using each: one removed only when the last stand-in using it stops, so a stand-in that stops
/// never takes a mount point from under a parallel test's pods (removing a mount point detaches
/// the mounts on it in every namespace).
static MOUNT_POINTS: Mutex<BTreeMap<PathBuf, BTreeSet<u8>>> = Mutex::new(BTreeMap::new());

/// Creates `path` (a directory, or an empty file) on the host if missing, and records that
/// stand-in `standin` uses it if a stand-in created it.
fn claim_mount_point(path: &Path, file: bool, standin: u8) -> io::Result<()> {
    let mut points = MOUNT_POINTS.lock().unwrap_or_else(|e| e.into_inner());
    if !path.exists() {
        if file {
            std::fs::File::create(path)?;
        } else {
            std::fs::create_dir(path)?;
        }
        points.insert(path.to_path_buf(), BTreeSet::new());
    }
    if let Some(users) = points.get_mut(path) {
        users.insert(standin);
    }
    Ok(())
}

/// Stand-in `standin` stops: removes the mount points no other stand-in uses (deepest first).
pub(crate) fn release_mount_points(standin: u8) {
    let mut points = MOUNT_POINTS.lock().unwrap_or_else(|e| e.into_inner());
    // This process's stand-ins are counted above; another process's (a parallel test binary)
    // are not, and removing a mount point its pods use detaches their volumes: a stopping
    // stand-in wiped the data and Secret files of every pod of a concurrent test process.
    // While another process holds a stand-in subnet, the mount points stay (empty paths).
    let ours: BTreeSet<u8> = points
        .values()
        .flatten()
        .copied()
        .chain([standin])
        .collect();
    if other_process_runs_a_standin(&ours) {
        for users in points.values_mut() {
            users.remove(&standin);
        }
        return;
    }
    let mut unused: Vec<PathBuf> = Vec::new();
    points.retain(|path, users| {
        users.remove(&standin);
        if users.is_empty() {
            unused.push(path.clone());
        }
        !users.is_empty()
    });
    unused.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in unused {
        if p.is_dir() {
            let _ = std::fs::remove_dir(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Whether a stand-in subnet other than `ours` is held (its abstract socket bound, see
/// `harness::claim_subnet`): another process runs a stand-in.
fn other_process_runs_a_standin(ours: &BTreeSet<u8>) -> bool {
    use std::os::linux::net::SocketAddrExt;
    (100..=250u8).filter(|o| !ours.contains(o)).any(|octet| {
        let name = format!("stator-kubelet-standin-198.18.{octet}");
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .is_ok_and(|addr| std::os::unix::net::UnixListener::bind_addr(&addr).is_err())
    })
}

/// Where the child keeps its mount sources open while it mounts (closed before exec).
const SOURCE_FD_BASE: libc::c_int = 900;

/// A mount target prepared for the child: the components to create after the mounts before it.
struct ChildMount {
    /// The host path, opened (`O_PATH`) onto descriptor `fd` in the child.
    host: CString,
    fd: libc::c_int,
    /// `/proc/self/fd/FD`.
    source: CString,
    target: CString,
    read_only: bool,
    create_dirs: Vec<CString>,
    create_file: Option<CString>,
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)
}

impl Launch {
    /// The host path a container path resolves to through the mounts (longest mount prefix).
    pub(crate) fn host_path(&self, inside: &Path) -> PathBuf {
        let best = self
            .mounts
            .iter()
            .filter(|m| inside.starts_with(&m.target))
            .max_by_key(|m| m.target.as_os_str().len());
        match best {
            Some(m) => m
                .source
                .join(inside.strip_prefix(&m.target).unwrap_or(inside)),
            None => inside.to_path_buf(),
        }
    }

    /// `argv[0]` as an absolute path inside the container, searched on the container's `PATH`.
    fn program(&self) -> io::Result<PathBuf> {
        let name = self
            .argv
            .first()
            .ok_or_else(|| io::Error::other("no command and no image entrypoint"))?;
        if name.contains('/') {
            return Ok(PathBuf::from(name));
        }
        let path = self
            .env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())
            .unwrap_or("/usr/local/bin:/usr/bin:/bin");
        for dir in path.split(':').filter(|d| !d.is_empty()) {
            let candidate = Path::new(dir).join(name);
            if self.host_path(&candidate).is_file() {
                return Ok(candidate);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("executable {name:?} not found in $PATH {path:?}"),
        ))
    }

    /// Spawns the process. Missing mount points are created on the host (removed when the
    /// last stand-in using them stops, see [`release_mount_points`]).
    pub(crate) fn spawn(&self, stdout: Stdio, stderr: Stdio) -> io::Result<tokio::process::Child> {
        let program = self.program()?;
        let mut mounts = self.mounts.clone();
        mounts.sort_by_key(|m| m.target.components().count());
        let mut child_mounts = Vec::new();
        for (i, m) in mounts.iter().enumerate() {
            let is_file = m.source.is_file();
            // A mount point under an earlier mount is created inside that volume, in the child
            // (as a container runtime does); any other one on the host, remembered for removal.
            let nested = mounts[..i].iter().any(|p| m.target.starts_with(&p.target));
            let mut create_dirs = Vec::new();
            let mut create_file = None;
            let dir = if is_file {
                m.target.parent().unwrap_or(Path::new("/"))
            } else {
                m.target.as_path()
            };
            let mut prefix = PathBuf::from("/");
            for comp in dir.components().skip(1) {
                prefix.push(comp);
                if nested {
                    create_dirs.push(cstring(&prefix)?);
                } else {
                    claim_mount_point(&prefix, false, self.standin)?;
                }
            }
            if is_file {
                if nested {
                    create_file = Some(cstring(&m.target)?);
                } else {
                    claim_mount_point(&m.target, true, self.standin)?;
                }
            }
            // The source by descriptor, opened in the child before any mount (a mount over a
            // parent of the host path, a pod's `/tmp` over a root in the host's /tmp, must not
            // hide the later mounts' sources; a descriptor opened before `unshare` would name
            // a mount of the old namespace, which `mount` refuses).
            let fd = SOURCE_FD_BASE + i as libc::c_int;
            child_mounts.push(ChildMount {
                host: cstring(&m.source)?,
                fd,
                source: CString::new(format!("/proc/self/fd/{fd}")).map_err(io::Error::other)?,
                target: cstring(&m.target)?,
                read_only: m.read_only,
                create_dirs,
                create_file,
            });
        }
        let cwd = self.working_dir.as_deref().map(cstring).transpose()?;
        let root = CString::new("/").map_err(io::Error::other)?;
        let (uid, gid) = (self.uid, self.gid);
        let groups: Vec<libc::gid_t> = self.groups.clone();
        // Opened close-on-exec: the child joins it, the program never sees the descriptor.
        let netns = std::fs::File::open(&self.netns)?;
        let netns_fd = std::os::fd::AsRawFd::as_raw_fd(&netns);

        let mut cmd = tokio::process::Command::new(&program);
        cmd.arg0(&self.argv[0])
            .args(&self.argv[1..])
            .env_clear()
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true);
        // SAFETY: the closure only makes system calls on memory prepared before the fork.
        unsafe {
            cmd.pre_exec(move || {
                fn check(rc: libc::c_int) -> io::Result<()> {
                    if rc == -1 {
                        Err(io::Error::last_os_error())
                    } else {
                        Ok(())
                    }
                }
                check(libc::setsid())?;
                check(libc::setns(netns_fd, libc::CLONE_NEWNET))?;
                check(libc::unshare(libc::CLONE_NEWNS))?;
                check(libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ))?;
                for m in &child_mounts {
                    let fd = libc::open(m.host.as_ptr(), libc::O_PATH);
                    check(fd)?;
                    check(libc::dup2(fd, m.fd))?;
                    libc::close(fd);
                }
                for m in &child_mounts {
                    for d in &m.create_dirs {
                        if libc::mkdir(d.as_ptr(), 0o755) == -1
                            && *libc::__errno_location() != libc::EEXIST
                        {
                            return Err(io::Error::last_os_error());
                        }
                    }
                    if let Some(f) = &m.create_file {
                        let fd = libc::open(f.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
                        check(fd)?;
                        libc::close(fd);
                    }
                    check(libc::mount(
                        m.source.as_ptr(),
                        m.target.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ))?;
                    if m.read_only {
                        check(libc::mount(
                            std::ptr::null(),
                            m.target.as_ptr(),
                            std::ptr::null(),
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                            std::ptr::null(),
                        ))?;
                    }
                }
                for m in &child_mounts {
                    libc::close(m.fd);
                }
                check(libc::setgroups(groups.len(), groups.as_ptr()))?;
                check(libc::setgid(gid))?;
                check(libc::setuid(uid))?;
                if let Some(cwd) = &cwd {
                    check(libc::chdir(cwd.as_ptr()))?;
                }
                Ok(())
            });
        }
        let child = cmd.spawn();
        // The parent's copies are closed only after the fork (the closure uses their numbers).
        drop(netns);
        child
    }
}

/// Sends `signal` to the whole process group `pgid` (a container's session); gone is fine.
pub(crate) fn signal_group(pgid: i32, signal: libc::c_int) {
    if pgid > 1 {
        // SAFETY: kill(2) on a negative pid signals a process group; no memory is involved.
        unsafe {
            libc::kill(-pgid, signal);
        }
    }
}

/// A container's mount namespace, held open: while it is held, the kernel cannot give its id
/// to another container's namespace, so signalling by id never reaches another container.
#[derive(Debug)]
pub(crate) struct Namespace {
    id: u64,
    _held: std::fs::File,
}

impl Namespace {
    /// The mount namespace of process `pid`, if it still runs.
    pub(crate) fn of(pid: i32) -> Option<std::sync::Arc<Namespace>> {
        let path = format!("/proc/{pid}/ns/mnt");
        let held = std::fs::File::open(&path).ok()?;
        let id = mount_namespace_id(pid)?;
        Some(std::sync::Arc::new(Namespace { id, _held: held }))
    }
}

fn mount_namespace_id(pid: i32) -> Option<u64> {
    let link = std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()?;
    link.to_str()?
        .strip_prefix("mnt:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Sends `signal` to a container's processes: its process group `pgid`, and every process in
/// its mount namespace `mnt` (each container has its own, inherited by all it starts), so a
/// server the container's main process started in a session of its own goes too, as it does
/// with a container's PID namespace.
pub(crate) fn signal_container(pgid: i32, mnt: Option<&Namespace>, signal: libc::c_int) {
    signal_group(pgid, signal);
    let Some(mnt) = mnt else { return };
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid > 1 && mount_namespace_id(pid) == Some(mnt.id) {
            // SAFETY: kill(2) on one pid; no memory is involved.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }
}
