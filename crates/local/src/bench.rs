//! `stator bench local`: the local runtime measured against a peer run side by side, printed as
//! ratios (a benchmark, not a test; nothing here asserts a time).
//!
//! 1. Bring-up of a 3-instance PostgreSQL cluster with `stator up` vs the bare sequence by hand:
//!    `initdb`, `pg_ctl start`, two `pg_basebackup`s, two `pg_ctl start`s.
//! 2. `pgbench -S` and the default write mix (TPC-B-like) through the `rw` proxy vs directly to
//!    the primary and vs HAProxy (TCP mode) in front of the same primary.
//! 3. Resident memory (VmRSS) of the supervisor and of one instance manager.
//!
//! Needs PostgreSQL 15, `pgbench` and `haproxy` (`apt-get install postgresql-15 haproxy`).
//! Run: `stator bench local` (see `--help` for durations and ports).

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stator_api::names::secret_keys;

use crate::error::LocalError;
use crate::preflight::{self, ServerUser};
use crate::secrets::read_secret;

/// Options of `stator bench local`.
#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// First of 100 free ports the benchmark may use (50 for stator's cluster, 50 for the
    /// cluster made by hand and HAProxy).
    #[arg(long, default_value_t = 25000)]
    pub port_base: u16,
    /// Seconds per pgbench run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u32,
    /// pgbench clients.
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// Rounds of each measurement (bring-ups, pgbench runs); medians are compared.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Measure only the proxies and memory (one `stator up`, no bring-up comparison).
    #[arg(long)]
    pub skip_bring_up: bool,
    /// Work directory (default: a new one under /tmp, removed afterwards).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

struct Work {
    root: PathBuf,
    remove: bool,
}

impl Drop for Work {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

pub fn run(args: &BenchArgs, exe: &Path) -> Result<(), LocalError> {
    let bin = preflight::find_bin_dir(stator_api::Engine::Postgres, "15")?;
    for tool in ["pgbench", "haproxy"] {
        if which(tool).is_none() {
            return Err(LocalError::BinariesMissing(format!(
                "`{tool}` not found on PATH; install it (Debian/Ubuntu: apt-get install {})",
                if tool == "pgbench" {
                    "postgresql-client-15"
                } else {
                    "haproxy"
                }
            )));
        }
    }
    let user = preflight::server_user(stator_api::Engine::Postgres)?;
    let work = match &args.work_dir {
        Some(dir) => Work {
            root: dir.clone(),
            remove: false,
        },
        None => Work {
            root: PathBuf::from(format!("/tmp/stator-bench-{}", std::process::id())),
            remove: true,
        },
    };
    std::fs::create_dir_all(&work.root)
        .map_err(|e| LocalError::io(&work.root, "cannot create", e))?;
    std::fs::set_permissions(&work.root, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| LocalError::io(&work.root, "cannot set permissions", e))?;
    let stator_base = args.port_base;
    let hand_base = args.port_base + 50;
    let spec = work.root.join("bench.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: bench\nspec:\n  engine: postgres\n  instances: 3\n  local:\n    portBase: {stator_base}\n"
        ),
    )
    .map_err(|e| LocalError::io(&spec, "cannot write", e))?;
    let state = work.root.join("state");
    let stator = |verb: &[&str]| -> Result<Duration, LocalError> {
        let started = Instant::now();
        let out = Command::new(exe)
            .args(verb)
            .arg("-f")
            .arg(&spec)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .map_err(|e| LocalError::io(exe, "cannot run", e))?;
        if !out.status.success() {
            return Err(LocalError::Failed(format!(
                "stator {verb:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(started.elapsed())
    };
    let mut cleanup = Cleanup {
        exe: exe.to_path_buf(),
        spec: spec.clone(),
        state: state.clone(),
        hand: Vec::new(),
        haproxy: None,
    };

    // 1. Bring-up, alternating the two so drift hits both alike.
    println!(
        "== bring-up of a 3-instance PostgreSQL 15 cluster ({} rounds)",
        args.rounds
    );
    let mut ours = Vec::new();
    let mut by_hand = Vec::new();
    let bring_up_rounds = if args.skip_bring_up {
        stator(&["up"])?;
        0
    } else {
        args.rounds.max(1)
    };
    for round in 0..bring_up_rounds {
        let hand_dir = work.root.join(format!("hand-{round}"));
        let took = bring_up_by_hand(&bin, &hand_dir, hand_base, user.as_ref(), &mut cleanup)?;
        stop_by_hand(&bin, &hand_dir, user.as_ref(), &mut cleanup);
        by_hand.push(took);
        let took = stator(&["up"])?;
        ours.push(took);
        if round + 1 < bring_up_rounds {
            stator(&["delete", "--purge"])?;
        }
        println!(
            "  round {}: stator up {:.2}s, by hand {:.2}s",
            round + 1,
            ours[round as usize].as_secs_f64(),
            by_hand[round as usize].as_secs_f64()
        );
    }
    let (ours_median, hand_median) = (median(&ours), median(&by_hand));
    if !args.skip_bring_up {
        println!(
            "  bring-up ratio stator/by-hand = {:.2}x (median {:.2}s vs {:.2}s; target <= 1.5x)",
            ours_median / hand_median,
            ours_median,
            hand_median
        );
    }

    // 2. Throughput through the proxy, directly and through HAProxy, on the cluster `up` left.
    let dir = crate::state::StateDir {
        root: state.clone(),
    }
    .database("default", "bench");
    let password = read_secret(&dir.secrets_dir(), secret_keys::APP_PASSWORD)?;
    let rw = stator_base;
    let primary = stator_base + 10;
    let haproxy_port = hand_base + 2;
    cleanup.haproxy = Some(start_haproxy(&work.root, haproxy_port, primary)?);
    wait_port(haproxy_port)?;
    let pgbench = |port: u16, extra: &[&str]| -> Result<f64, LocalError> {
        let out = Command::new("pgbench")
            .args(["-h", "127.0.0.1", "-U", "app", "-n"])
            .arg("-p")
            .arg(port.to_string())
            .args(extra)
            .arg("app")
            .env("PGPASSWORD", &password)
            .output()
            .map_err(|e| LocalError::io("pgbench", "cannot run", e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(LocalError::Failed(format!(
                "pgbench {extra:?} on port {port} failed: {}{}",
                text,
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(parse_tps(&text).unwrap_or(0.0))
    };
    pgbench(rw, &["-i", "-s", "10", "-q"]).or_else(|_| {
        // `-i` with -n is refused by some versions; without it is fine too.
        let out = Command::new("pgbench")
            .args(["-h", "127.0.0.1", "-U", "app", "-i", "-s", "10", "-q", "-p"])
            .arg(rw.to_string())
            .arg("app")
            .env("PGPASSWORD", &password)
            .output()
            .map_err(|e| LocalError::io("pgbench", "cannot run", e))?;
        if out.status.success() {
            Ok(0.0)
        } else {
            Err(LocalError::Failed(format!(
                "pgbench -i failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )))
        }
    })?;
    let seconds = args.seconds.max(1).to_string();
    let clients = args.clients.max(1).to_string();
    for (label, mode) in [
        ("pgbench -S (select only)", vec!["-S"]),
        ("pgbench write mix (TPC-B-like)", vec![]),
    ] {
        let mut run_args: Vec<&str> = vec!["-c", &clients, "-j", "2", "-T", &seconds];
        run_args.extend(mode.iter().copied());
        println!(
            "== {label}, {clients} clients, {seconds}s per run, {} rounds (order rotated; medians)",
            args.rounds.max(1)
        );
        // Rotating the order each round spreads drift (checkpoints, other load) over all three.
        let targets = [primary, rw, haproxy_port];
        let mut samples: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
        for round in 0..args.rounds.max(1) as usize {
            for k in 0..3 {
                let which = (round + k) % 3;
                samples[which].push(pgbench(targets[which], &run_args)?);
            }
        }
        let [direct, proxied, haproxy] = samples.map(|mut v| {
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        });
        println!("  direct to the primary  {direct:>10.0} tps");
        println!("  stator rw proxy        {proxied:>10.0} tps");
        println!("  HAProxy (TCP mode)     {haproxy:>10.0} tps");
        println!(
            "  ratio rw/direct = {:.2}x (target >= 0.9x); rw/HAProxy = {:.2}x (target >= 1.0x)",
            proxied / direct.max(1.0),
            proxied / haproxy.max(1.0)
        );
    }

    // 3. Memory.
    let report = crate::runtime::fetch_report(
        &dir,
        &crate::state::read_json::<crate::state::AppliedSpec>(&dir.spec_file())?
            .ok_or_else(|| LocalError::NotFound(dir.key()))?
            .database,
    )?;
    println!("== resident memory (VmRSS; target <= 15 MiB each)");
    if let Some(pid) = report.supervisor_pid {
        println!(
            "  supervisor (pid {pid}, after serving the runs above): {}",
            rss_text(pid)
        );
    }
    for row in report.instances.iter().take(1) {
        if let Some(pid) = row.manager_pid {
            println!(
                "  instance manager {} (pid {pid}): {}",
                row.name,
                rss_text(pid)
            );
        }
    }
    drop(cleanup);
    Ok(())
}

/// Stops whatever the benchmark started, also when it fails half-way.
struct Cleanup {
    exe: PathBuf,
    spec: PathBuf,
    state: PathBuf,
    hand: Vec<(PathBuf, PathBuf, Option<ServerUser>)>,
    haproxy: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut h) = self.haproxy.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
        for (bin, dir, user) in std::mem::take(&mut self.hand) {
            for n in 0..3 {
                let data = dir.join(format!("d{n}"));
                if data.join("postmaster.pid").exists() {
                    let _ = as_user(
                        Command::new(bin.join("pg_ctl"))
                            .args(["stop", "-m", "immediate", "-D"])
                            .arg(&data),
                        user.as_ref(),
                    )
                    .output();
                }
            }
        }
        let _ = Command::new(&self.exe)
            .args(["delete", "--purge", "-f"])
            .arg(&self.spec)
            .arg("--state-dir")
            .arg(&self.state)
            .output();
    }
}

fn as_user<'a>(command: &'a mut Command, user: Option<&ServerUser>) -> &'a mut Command {
    if let Some(u) = user {
        command.uid(u.uid).gid(u.gid);
    }
    command.stdin(Stdio::null())
}

fn run_step(command: &mut Command, what: &str) -> Result<(), LocalError> {
    let out = command
        .output()
        .map_err(|e| LocalError::Failed(format!("{what}: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(LocalError::Failed(format!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// initdb, start, two pg_basebackups, two starts — what an operator types, with the same
/// authentication stator sets up (scram-sha-256 on TCP, a replication role with a password).
fn bring_up_by_hand(
    bin: &Path,
    dir: &Path,
    base: u16,
    user: Option<&ServerUser>,
    cleanup: &mut Cleanup,
) -> Result<Duration, LocalError> {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| LocalError::io(dir, "cannot create", e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| LocalError::io(dir, "cannot chmod", e))?;
    if let Some(u) = user {
        nix::unistd::chown(
            dir,
            Some(nix::unistd::Uid::from_raw(u.uid)),
            Some(nix::unistd::Gid::from_raw(u.gid)),
        )
        .map_err(|e| LocalError::io(dir, "cannot chown", e.into()))?;
    }
    let pwfile = dir.join("pw");
    std::fs::write(&pwfile, crate::secrets::generate_secret())
        .map_err(|e| LocalError::io(&pwfile, "cannot write", e))?;
    if let Some(u) = user {
        let _ = nix::unistd::chown(&pwfile, Some(nix::unistd::Uid::from_raw(u.uid)), None);
    }
    std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| LocalError::io(&pwfile, "cannot chmod", e))?;
    cleanup
        .hand
        .push((bin.to_path_buf(), dir.to_path_buf(), user.cloned()));
    let pw = std::fs::read_to_string(&pwfile).unwrap_or_default();
    let started = Instant::now();
    let d0 = dir.join("d0");
    run_step(
        as_user(
            Command::new(bin.join("initdb"))
                .args([
                    "-U",
                    "postgres",
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C.UTF-8",
                    "--data-checksums",
                    "--pwfile",
                ])
                .arg(&pwfile)
                .arg("-D")
                .arg(&d0),
            user,
        ),
        "initdb",
    )?;
    let conf = format!(
        "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\nwal_level = replica\nmax_wal_senders = 10\nhot_standby = on\n",
        base + 10,
        dir.display()
    );
    append(&d0.join("postgresql.conf"), &conf)?;
    append(
        &d0.join("pg_hba.conf"),
        "host replication postgres 127.0.0.1/32 scram-sha-256\n",
    )?;
    start_by_hand(bin, &d0, user)?;
    for n in 1..3u16 {
        let dn = dir.join(format!("d{n}"));
        run_step(
            as_user(
                Command::new(bin.join("pg_basebackup"))
                    .args([
                        "-h",
                        "127.0.0.1",
                        "-U",
                        "postgres",
                        "-R",
                        "-X",
                        "stream",
                        "-c",
                        "fast",
                        "-p",
                    ])
                    .arg((base + 10).to_string())
                    .arg("-D")
                    .arg(&dn)
                    .env("PGPASSWORD", &pw),
                user,
            ),
            "pg_basebackup",
        )?;
        append(
            &dn.join("postgresql.conf"),
            &format!("port = {}\n", base + 10 + n),
        )?;
        start_by_hand(bin, &dn, user)?;
    }
    Ok(started.elapsed())
}

fn start_by_hand(bin: &Path, data: &Path, user: Option<&ServerUser>) -> Result<(), LocalError> {
    let log = data.join("server.log");
    run_step(
        as_user(
            Command::new(bin.join("pg_ctl"))
                .args(["start", "-w", "-s", "-D"])
                .arg(data)
                .arg("-l")
                .arg(&log),
            user,
        ),
        "pg_ctl start",
    )
}

fn stop_by_hand(bin: &Path, dir: &Path, user: Option<&ServerUser>, cleanup: &mut Cleanup) {
    for n in (0..3).rev() {
        let data = dir.join(format!("d{n}"));
        let _ = as_user(
            Command::new(bin.join("pg_ctl"))
                .args(["stop", "-m", "fast", "-s", "-D"])
                .arg(&data),
            user,
        )
        .output();
    }
    cleanup.hand.retain(|(_, d, _)| d != dir);
    let _ = std::fs::remove_dir_all(dir);
}

fn append(path: &Path, text: &str) -> Result<(), LocalError> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| LocalError::io(path, "cannot append", e))
}

fn start_haproxy(dir: &Path, port: u16, primary: u16) -> Result<Child, LocalError> {
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\nlisten pg\n  bind 127.0.0.1:{port}\n  server primary 127.0.0.1:{primary}\n"
        ),
    )
    .map_err(|e| LocalError::io(&cfg, "cannot write", e))?;
    Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| LocalError::io("haproxy", "cannot start", e))
}

fn wait_port(port: u16) -> Result<(), LocalError> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(10) {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(LocalError::Failed(format!(
        "nothing listens on port {port}"
    )))
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

fn median(values: &[Duration]) -> f64 {
    let mut secs: Vec<f64> = values.iter().map(Duration::as_secs_f64).collect();
    secs.sort_by(|a, b| a.total_cmp(b));
    secs.get(secs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `tps = 1234.5 (without initial connection time)` → 1234.5.
pub fn parse_tps(output: &str) -> Option<f64> {
    output
        .lines()
        .find(|l| l.starts_with("tps = ") && l.contains("without initial connection time"))
        .or_else(|| output.lines().find(|l| l.starts_with("tps = ")))?
        .trim_start_matches("tps = ")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// VmRSS of `pid` in MiB, from /proc/PID/status.
pub fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn rss_text(pid: u32) -> String {
    match rss_mib(pid) {
        Some(mib) => format!("{mib:.1} MiB"),
        None => "unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tps_is_read_from_pgbench_output() {
        let text = "latency average = 0.5 ms\ninitial connection time = 3.1 ms\ntps = 15890.123456 (without initial connection time)\n";
        assert_eq!(parse_tps(text), Some(15890.123456));
        assert_eq!(parse_tps("nothing"), None);
    }

    #[test]
    fn own_resident_memory_is_readable() {
        assert!(rss_mib(std::process::id()).is_some_and(|m| m > 0.0));
    }
}
