//! `stator bench local`: the local runtime measured against a peer run side by side, printed as
//! ratios (a benchmark, not a test; nothing here asserts a time).
//!
//! PostgreSQL (`--engine postgres`, the default):
//! 1. Bring-up of a 3-instance PostgreSQL cluster with `stator up` vs the bare sequence by hand:
//!    `initdb`, `pg_ctl start`, two `pg_basebackup`s, two `pg_ctl start`s.
//! 2. `pgbench -S`, the default write mix (TPC-B-like) and `sysbench oltp_read_only` (pgsql
//!    driver) through the `rw` proxy vs directly to the primary and vs HAProxy (TCP mode, TLS
//!    passed through) in front of the same primary; the `--direct` URI vs the primary's address;
//!    new connections per second (`pgbench -C`) through `rw` vs direct. With TLS (the default)
//!    every client verifies the server fully.
//! 3. Resident memory (VmRSS) of the supervisor and of one instance manager.
//!
//! MariaDB (`--engine mariadb`):
//! 1. Bring-up of a 3-instance MariaDB 10.11 cluster vs by hand: `mariadb-install-db`, start,
//!    a replication user, then twice `mariadb-backup --backup` + `--prepare` + start +
//!    `CHANGE MASTER TO … MASTER_USE_GTID=slave_pos` + `START SLAVE`, until both replicate.
//! 2. `sysbench oltp_read_only` (and `oltp_read_write`) through the `rw` proxy vs directly to the
//!    primary and vs HAProxy (TCP mode).
//! 3. Resident memory, as for PostgreSQL.
//!
//! Both end with a table of the ratios against their targets. Needs PostgreSQL 15, `pgbench`,
//! `sysbench` and `haproxy` (`apt-get install postgresql-15 sysbench haproxy`), or for MariaDB `mariadb-server`,
//! `mariadb-backup`, `sysbench` and `haproxy`. Passwords reach the tools through the environment
//! (`PGPASSWORD`), stdin, or 0600 files (sysbench's `--config-file`), never a command line.
//! Run: `stator bench local [--engine mariadb]` (see `--help` for durations and ports).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stator_api::names::secret_keys;

use stator_local::LocalError;

use crate::error::CheckError;
use stator_engine::procfs::rss_mib;
use stator_local::preflight::{self, ServerUser};
use stator_local::secrets::read_secret;

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
    /// Which engine to measure.
    #[arg(long, default_value = "postgres", value_parser = ["postgres", "mariadb"])]
    pub engine: String,
}

/// The benchmark's clusters detect a lost primary after 30 s, not the default 2 s: on a loaded
/// machine a starved instance manager misses its checks for seconds, and a failover in the middle
/// of a throughput run (it fences the primary: every client aborts) measures nothing.
pub(crate) const BENCH_FAILOVER: &str = "  failover:\n    detectionTimeout: 30s\n";

/// The work directory; removed on drop when the benchmark made it.
pub(crate) struct Work {
    pub(crate) root: PathBuf,
    remove: bool,
}

impl Drop for Work {
    fn drop(&mut self) {
        if self.remove {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }
}

pub fn run(args: &BenchArgs, exe: &Path) -> Result<(), CheckError> {
    match args.engine.as_str() {
        "mariadb" => run_mariadb(args, exe),
        _ => run_postgres(args, exe),
    }
}

fn run_postgres(args: &BenchArgs, exe: &Path) -> Result<(), CheckError> {
    let bin = preflight::find_bin_dir(stator_api::Engine::Postgres, "15")?;
    for (tool, package) in [
        ("pgbench", "postgresql-client-15"),
        ("haproxy", "haproxy"),
        ("sysbench", "sysbench"),
    ] {
        if which(tool).is_none() {
            return Err(CheckError::from(LocalError::BinariesMissing(format!(
                "`{tool}` not found on PATH; install it (Debian/Ubuntu: apt-get install {package})"
            ))));
        }
    }
    let user = preflight::server_user(stator_api::Engine::Postgres)?;
    let work = Work::create(args)?;
    let stator_base = args.port_base;
    let hand_base = args.port_base + 50;
    let spec = work.root.join("bench.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: bench\nspec:\n  engine: postgres\n  instances: 3\n{BENCH_FAILOVER}  local:\n    portBase: {stator_base}\n"
        ),
    )
    .map_err(|e| LocalError::io(&spec, "cannot write", e))?;
    let state = work.root.join("state");
    let stator = |verb: &[&str]| -> Result<Duration, CheckError> {
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
            return Err(CheckError::Command {
                what: format!("stator {verb:?}"),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            });
        }
        Ok(started.elapsed())
    };
    let mut cleanup = Cleanup {
        exe: exe.to_path_buf(),
        spec: spec.clone(),
        state: state.clone(),
        hand: Vec::new(),
        hand_servers: Vec::new(),
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
    let mut summary = Vec::new();
    if !args.skip_bring_up {
        println!(
            "  bring-up ratio stator/by-hand = {:.2}x (median {:.2}s vs {:.2}s; target <= 1.5x)",
            ours_median / hand_median,
            ours_median,
            hand_median
        );
        summary.push(SummaryRow {
            measurement: format!("bring-up, 3 instances (median of {bring_up_rounds})"),
            ours: format!("{ours_median:.2} s"),
            peer: format!("{hand_median:.2} s by hand (initdb, start, 2x pg_basebackup, starts)"),
            ratio: ours_median / hand_median,
            target: Target::AtMost(1.5),
        });
    }

    // 2. Throughput through the proxy, directly and through HAProxy, on the cluster `up` left.
    let dir = stator_local::state::StateDir {
        root: state.clone(),
    }
    .database("default", "bench");
    let password = read_secret(&dir.secrets_dir(), secret_keys::APP_PASSWORD)?;
    let rw = stator_base;
    let primary = stator_base + 10;
    let haproxy_port = hand_base + 2;
    cleanup.haproxy = Some(start_haproxy(&work.root, haproxy_port, primary)?);
    wait_port(haproxy_port, Duration::from_secs(10))?;
    // With TLS (the default) every run verifies the server fully, as `stator uri` tells clients.
    let ca = dir.tls_dir().join(stator_engine::tls::CA_CERT);
    let tls_env: Vec<(&str, std::ffi::OsString)> = if ca.exists() {
        vec![
            ("PGSSLMODE", "verify-full".into()),
            ("PGSSLROOTCERT", ca.clone().into()),
        ]
    } else {
        Vec::new()
    };
    // `--direct rw`: every instance in one conninfo, libpq finding the primary.
    let direct_uri = {
        let hosts: Vec<String> = (0..3).map(|_| "127.0.0.1".to_string()).collect();
        let ports: Vec<String> = (0..3).map(|o| (stator_base + 10 + o).to_string()).collect();
        format!(
            "host={} port={} user=app dbname=app target_session_attrs=read-write",
            hosts.join(","),
            ports.join(",")
        )
    };
    let pgbench_on = |target: Option<u16>, extra: &[&str]| -> Result<f64, CheckError> {
        let mut command = Command::new("pgbench");
        command.args(["-U", "app", "-n"]).args(extra);
        match target {
            Some(port) => command
                .args(["-h", "127.0.0.1", "-p"])
                .arg(port.to_string())
                .arg("app"),
            None => command.arg(&direct_uri),
        };
        let out = command
            .envs(tls_env.iter().map(|(k, v)| (k, v)))
            .env("PGPASSWORD", &password)
            .output()
            .map_err(|e| LocalError::io("pgbench", "cannot run", e))?;
        let port = target.map_or_else(|| "the direct URI".to_string(), |p| p.to_string());
        let text = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            return Err(CheckError::Command {
                what: format!("pgbench {extra:?} on port {port}"),
                output: format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
            });
        }
        Ok(parse_tps(&text).unwrap_or(0.0))
    };
    let pgbench = |port: u16, extra: &[&str]| pgbench_on(Some(port), extra);
    pgbench(rw, &["-i", "-s", "10", "-q"]).or_else(|_| {
        // `-i` with -n is refused by some versions; without it is fine too.
        let out = Command::new("pgbench")
            .args(["-h", "127.0.0.1", "-U", "app", "-i", "-s", "10", "-q", "-p"])
            .arg(rw.to_string())
            .arg("app")
            .envs(tls_env.iter().map(|(k, v)| (k, v)))
            .env("PGPASSWORD", &password)
            .output()
            .map_err(|e| LocalError::io("pgbench", "cannot run", e))?;
        if out.status.success() {
            Ok(0.0)
        } else {
            Err(CheckError::Command {
                what: "pgbench -i".into(),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
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
        let [direct, proxied, haproxy] =
            measure_three(args.rounds, [primary, rw, haproxy_port], |port| {
                pgbench(port, &run_args)
            })?;
        let load = format!("{clients} clients");
        report_three(&mut summary, label, &load, [direct, proxied, haproxy], true);
    }

    // sysbench oltp_read_only over the same three paths (its pgsql driver is libpq, which takes
    // the verify-full TLS settings from the environment, as pgbench does).
    let sysbench_config = work.root.join("sysbench.cfg");
    write_private(
        &sysbench_config,
        &format!(
            "db-driver=pgsql\npgsql-host=127.0.0.1\npgsql-user=app\npgsql-password={password}\npgsql-db=app\ntables=4\ntable-size=20000\n"
        ),
    )?;
    let sysbench = |verb: &str, port: u16, extra: &[&str]| {
        let sysbench = Sysbench {
            config: &sysbench_config,
            port_option: "--pgsql-port",
            env: &tls_env,
            dir: &work.root,
        };
        sysbench.run("oltp_read_only", port, verb, extra)
    };
    sysbench("prepare", rw, &[])?;
    let threads = format!("--threads={clients}");
    let time = format!("--time={seconds}");
    println!(
        "== sysbench oltp_read_only (pgsql driver), {clients} threads, {seconds}s per run, {} rounds (order rotated; medians)",
        args.rounds.max(1)
    );
    let [direct, proxied, haproxy] =
        measure_three(args.rounds, [primary, rw, haproxy_port], |port| {
            let text = sysbench("run", port, &[&threads, &time, "--report-interval=0"])?;
            Ok(parse_sysbench_tps(&text).unwrap_or(0.0))
        })?;
    report_three(
        &mut summary,
        "sysbench oltp_read_only",
        &format!("{clients} threads"),
        [direct, proxied, haproxy],
        true,
    );

    // The `--direct rw` URI (libpq finds the primary: no hop) vs a client given the primary's
    // address, and new TLS connections per second (`-C`: a connection per transaction) through
    // rw vs direct.
    let select_only: Vec<&str> = vec!["-c", &clients, "-j", "2", "-T", &seconds, "-S"];
    let mut connect_each: Vec<&str> = select_only.clone();
    connect_each.push("-C");
    println!(
        "== pgbench -S: the --direct URI vs the primary's address; pgbench -S -C (new connections) rw vs direct, {} rounds",
        args.rounds.max(1)
    );
    // Paired runs, the order alternating A B B A so neither side always runs first (after
    // another section's load) or second; the connection-churning `-C` runs come after every
    // select-only pair, so their closed connections never weigh on one side only. The ratio
    // is the median of the rounds' ratios: load that drifts during the run (other work on
    // the machine) moves both runs of a pair alike.
    let rounds = args.rounds.max(1) as usize;
    let (mut uri, mut plain, mut c_rw, mut c_direct) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        if round % 2 == 0 {
            uri.push(pgbench_on(None, &select_only)?);
            plain.push(pgbench(primary, &select_only)?);
        } else {
            plain.push(pgbench(primary, &select_only)?);
            uri.push(pgbench_on(None, &select_only)?);
        }
    }
    for round in 0..rounds {
        if round % 2 == 0 {
            c_rw.push(pgbench(rw, &connect_each)?);
            c_direct.push(pgbench(primary, &connect_each)?);
        } else {
            c_direct.push(pgbench(primary, &connect_each)?);
            c_rw.push(pgbench(rw, &connect_each)?);
        }
    }
    let uri_ratio = median_ratio(&uri, &plain);
    let c_ratio = median_ratio(&c_rw, &c_direct);
    let [uri, plain, c_rw, c_direct] = [uri, plain, c_rw, c_direct].map(|mut v| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    });
    println!("  --direct URI           {uri:>10.0} tps");
    println!("  primary's address      {plain:>10.0} tps");
    println!("  -C through rw          {c_rw:>10.0} connections/s");
    println!("  -C direct              {c_direct:>10.0} connections/s");
    summary.push(SummaryRow {
        measurement: "pgbench -S: --direct URI vs the primary's address".into(),
        ours: format!("{uri:.0} tps"),
        peer: format!("{plain:.0} tps direct"),
        ratio: uri_ratio,
        target: Target::AtLeast(0.97),
    });
    summary.push(SummaryRow {
        measurement: "pgbench -S -C (a TLS connection per transaction): rw vs direct".into(),
        ours: format!("{c_rw:.0} conn/s"),
        peer: format!("{c_direct:.0} conn/s direct"),
        ratio: c_ratio,
        target: Target::AtLeast(0.9),
    });

    // 3. Memory.
    print_memory(&dir, &mut summary)?;
    println!();
    print!("{}", render_summary("PostgreSQL 15", &summary));
    drop(cleanup);
    Ok(())
}

/// Stops whatever the benchmark started, also when it fails half-way.
struct Cleanup {
    exe: PathBuf,
    spec: PathBuf,
    state: PathBuf,
    /// PostgreSQL clusters made by hand: (bin dir, dir, server user).
    hand: Vec<(PathBuf, PathBuf, Option<ServerUser>)>,
    /// MariaDB servers started by hand.
    hand_servers: Vec<Child>,
    haproxy: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut h) = self.haproxy.take() {
            let _ = h.kill();
            let _ = h.wait();
        }
        for mut server in std::mem::take(&mut self.hand_servers) {
            let _ = server.kill();
            let _ = server.wait();
        }
        for (bin, dir, user) in std::mem::take(&mut self.hand) {
            for n in 0..3 {
                let data = dir.join(format!("d{n}"));
                if data.join("postmaster.pid").exists() {
                    stop_immediately(&bin, &data, user.as_ref());
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

/// `pg_ctl stop -m immediate` of a PostgreSQL server started by hand on `data` (as `user`);
/// a server already gone is fine.
pub(crate) fn stop_immediately(bin: &Path, data: &Path, user: Option<&ServerUser>) {
    let _ = as_user(
        Command::new(bin.join("pg_ctl"))
            .args(["stop", "-m", "immediate", "-D"])
            .arg(data),
        user,
    )
    .output();
}

pub(crate) fn as_user<'a>(command: &'a mut Command, user: Option<&ServerUser>) -> &'a mut Command {
    if let Some(u) = user {
        command.uid(u.uid).gid(u.gid);
    }
    command.stdin(Stdio::null())
}

pub(crate) fn run_step(command: &mut Command, what: &str) -> Result<(), CheckError> {
    let out = command.output().map_err(|source| CheckError::Spawn {
        what: what.to_string(),
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CheckError::Command {
            what: what.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
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
) -> Result<Duration, CheckError> {
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
    std::fs::write(&pwfile, stator_local::secrets::generate_secret())
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

fn start_by_hand(bin: &Path, data: &Path, user: Option<&ServerUser>) -> Result<(), CheckError> {
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

// MariaDB: the same comparisons with MariaDB's tools and sysbench.

fn run_mariadb(args: &BenchArgs, exe: &Path) -> Result<(), CheckError> {
    let engine = stator_api::Engine::Mariadb;
    let version = engine.default_version();
    let bin = preflight::find_bin_dir(engine, version)?;
    let tool = |name: &str| {
        preflight::find_tool(&bin, name).ok_or_else(|| {
            LocalError::BinariesMissing(format!(
                "`{name}` not found; install it (Debian/Ubuntu: apt-get install mariadb-server mariadb-backup)"
            ))
        })
    };
    let hand = HandMariadb {
        server: bin.join("mariadbd"),
        install_db: tool("mariadb-install-db")?,
        backup: tool("mariadb-backup")?,
        client: tool("mariadb")?,
        user: preflight::server_user(engine)?,
        parameters: BTreeMap::new(),
    };
    for (program, package) in [("sysbench", "sysbench"), ("haproxy", "haproxy")] {
        if which(program).is_none() {
            return Err(CheckError::from(LocalError::BinariesMissing(format!(
                "`{program}` not found on PATH; install it (Debian/Ubuntu: apt-get install {package})"
            ))));
        }
    }
    let work = Work::create(args)?;
    let stator_base = args.port_base;
    let hand_base = args.port_base + 50;
    let spec_text = format!(
        "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: bench\nspec:\n  engine: mariadb\n  version: \"{version}\"\n  instances: 3\n{BENCH_FAILOVER}  local:\n    portBase: {stator_base}\n"
    );
    let db = stator_api::load_database(&spec_text)
        .map_err(|e| CheckError::OwnSpec(e.to_string()))?
        .database;
    // The servers made by hand run with the very settings stator gives its own.
    let hand = HandMariadb {
        parameters: stator_api::parameters::effective_parameters(&db.spec),
        ..hand
    };
    let spec = work.root.join("bench.yaml");
    std::fs::write(&spec, &spec_text).map_err(|e| LocalError::io(&spec, "cannot write", e))?;
    let state = work.root.join("state");
    let stator = |verb: &[&str]| stator_command(exe, &spec, &state, verb);
    let mut cleanup = Cleanup {
        exe: exe.to_path_buf(),
        spec: spec.clone(),
        state: state.clone(),
        hand: Vec::new(),
        hand_servers: Vec::new(),
        haproxy: None,
    };
    let mut summary = Vec::new();

    // 1. Bring-up, alternating the two so drift hits both alike.
    println!(
        "== bring-up of a 3-instance MariaDB {version} cluster ({} rounds)",
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
        let took = hand.bring_up(&hand_dir, hand_base, &mut cleanup);
        hand.stop(&hand_dir, &mut cleanup);
        by_hand.push(took?);
        ours.push(stator(&["up"])?);
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
    if !args.skip_bring_up {
        let (ours, hand) = (median(&ours), median(&by_hand));
        println!(
            "  bring-up ratio stator/by-hand = {:.2}x (median {ours:.2}s vs {hand:.2}s; target <= 1.5x)",
            ours / hand
        );
        summary.push(SummaryRow {
            measurement: format!("bring-up, 3 instances (median of {bring_up_rounds})"),
            ours: format!("{ours:.2} s"),
            peer: format!(
                "{hand:.2} s by hand (install-db, start, 2x mariadb-backup + prepare + start + CHANGE MASTER)"
            ),
            ratio: ours / hand,
            target: Target::AtMost(1.5),
        });
    }

    // 2. sysbench through the proxy, directly and through HAProxy, on the cluster `up` left.
    let dir = stator_local::state::StateDir {
        root: state.clone(),
    }
    .database("default", "bench");
    let password = read_secret(&dir.secrets_dir(), secret_keys::APP_PASSWORD)?;
    let rw = stator_base;
    let primary = stator_base + 10;
    let haproxy_port = hand_base + 2;
    cleanup.haproxy = Some(start_haproxy(&work.root, haproxy_port, primary)?);
    wait_port(haproxy_port, Duration::from_secs(10))?;
    // sysbench reads its options, the password among them, from a 0600 file; with TLS (the
    // default; the server refuses plaintext) it connects over TLS with the database's CA.
    let config = work.root.join("sysbench.cfg");
    // Debian's sysbench 1.0 knows no --mysql-ssl-ca: with --mysql-ssl=on it reads cacert.pem,
    // client-cert.pem and client-key.pem from its working directory (a missing one fails the
    // connection). It runs in a 0700 directory holding links to the database's CA and client pair.
    let sysbench_dir = work.root.join("sysbench");
    std::fs::create_dir_all(&sysbench_dir)
        .and_then(|()| {
            std::fs::set_permissions(&sysbench_dir, std::fs::Permissions::from_mode(0o700))
        })
        .map_err(|e| LocalError::io(&sysbench_dir, "cannot create", e))?;
    let tls_dir = dir.tls_dir();
    let tls = if tls_dir.join(stator_engine::tls::CA_CERT).exists() {
        for (file, name) in [
            (stator_engine::tls::CA_CERT, "cacert.pem"),
            (stator_engine::tls::CLIENT_CERT, "client-cert.pem"),
            (stator_engine::tls::CLIENT_KEY, "client-key.pem"),
        ] {
            let link = sysbench_dir.join(name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(tls_dir.join(file), &link)
                .map_err(|e| LocalError::io(&link, "cannot create", e))?;
        }
        "mysql-ssl=on\n"
    } else {
        ""
    };
    write_private(
        &config,
        &format!(
            "mysql-host=127.0.0.1\nmysql-user={}\nmysql-password={password}\nmysql-db={}\ntables=4\ntable-size=20000\n{tls}",
            db.spec.bootstrap.owner, db.spec.bootstrap.database
        ),
    )?;
    let sysbench = |test: &str, port: u16, verb: &str, extra: &[&str]| {
        let sysbench = Sysbench {
            config: &config,
            port_option: "--mysql-port",
            env: &[],
            dir: &sysbench_dir,
        };
        sysbench.run(test, port, verb, extra)
    };
    sysbench("oltp_read_write", rw, "prepare", &[])?;
    let seconds = format!("--time={}", args.seconds.max(1));
    let threads = format!("--threads={}", args.clients.max(1));
    for (test, targeted) in [("oltp_read_only", true), ("oltp_read_write", false)] {
        println!(
            "== sysbench {test}, {} threads, {}s per run, {} rounds (order rotated; medians)",
            args.clients.max(1),
            args.seconds.max(1),
            args.rounds.max(1)
        );
        let [direct, proxied, haproxy] =
            measure_three(args.rounds, [primary, rw, haproxy_port], |port| {
                let text = sysbench(
                    test,
                    port,
                    "run",
                    &[&threads, &seconds, "--report-interval=0"],
                )?;
                Ok(parse_sysbench_tps(&text).unwrap_or(0.0))
            })?;
        report_three(
            &mut summary,
            &format!("sysbench {test}"),
            &format!("{} threads", args.clients.max(1)),
            [direct, proxied, haproxy],
            targeted,
        );
    }

    // 3. Memory.
    print_memory(&dir, &mut summary)?;
    println!();
    print!(
        "{}",
        render_summary(&format!("MariaDB {version}"), &summary)
    );
    drop(cleanup);
    Ok(())
}

/// Runs `measure(port)` on the primary, the `rw` proxy and HAProxy, `rounds` times each, the
/// order rotated every round so drift (checkpoints, other load) hits all three alike; the medians,
/// in that order.
/// The median of `ours[i] / theirs[i]`: runs paired back to back, so a load that drifts over
/// the benchmark moves both of a pair alike.
fn median_ratio(ours: &[f64], theirs: &[f64]) -> f64 {
    let mut ratios: Vec<f64> = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| a / b.max(1.0))
        .collect();
    if ratios.is_empty() {
        return 0.0;
    }
    ratios.sort_by(|a, b| a.total_cmp(b));
    ratios[ratios.len() / 2]
}

fn measure_three(
    rounds: u32,
    ports: [u16; 3],
    mut measure: impl FnMut(u16) -> Result<f64, CheckError>,
) -> Result<[f64; 3], CheckError> {
    let mut samples: [Vec<f64>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    for round in 0..rounds.max(1) as usize {
        for k in 0..3 {
            let which = (round + k) % 3;
            samples[which].push(measure(ports[which])?);
        }
    }
    Ok(samples.map(|mut v| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    }))
}

/// Prints the three medians of [`measure_three`] and their ratios, and adds the two comparisons
/// of `what` under `load` to the summary: rw vs direct (target >= 0.9x) and rw vs HAProxy
/// (target >= 1.0x), or for information only when not `targeted`.
fn report_three(
    summary: &mut Vec<SummaryRow>,
    what: &str,
    load: &str,
    [direct, proxied, haproxy]: [f64; 3],
    targeted: bool,
) {
    let target = |t: f64| {
        if targeted {
            Target::AtLeast(t)
        } else {
            Target::None
        }
    };
    for (measurement, peer, tps, at_least) in [
        (
            format!("{what}, {load}: rw proxy vs direct"),
            "direct to the primary",
            direct,
            0.9,
        ),
        (
            format!("{what}: rw proxy vs HAProxy (TCP)"),
            "through HAProxy",
            haproxy,
            1.0,
        ),
    ] {
        summary.push(SummaryRow {
            measurement,
            ours: format!("{proxied:.0} tps"),
            peer: format!("{tps:.0} tps {peer}"),
            ratio: proxied / tps.max(1.0),
            target: target(at_least),
        });
    }
    println!("  direct to the primary  {direct:>10.0} tps");
    println!("  stator rw proxy        {proxied:>10.0} tps");
    println!("  HAProxy (TCP mode)     {haproxy:>10.0} tps");
    println!(
        "  ratio rw/direct = {:.2}x; rw/HAProxy = {:.2}x; HAProxy/direct = {:.2}x",
        proxied / direct.max(1.0),
        proxied / haproxy.max(1.0),
        haproxy / direct.max(1.0)
    );
}

/// sysbench with its options, the password among them, in a 0600 file.
struct Sysbench<'a> {
    config: &'a Path,
    /// `--mysql-port` or `--pgsql-port`.
    port_option: &'a str,
    /// Extra environment (libpq's TLS settings for the pgsql driver).
    env: &'a [(&'a str, std::ffi::OsString)],
    /// Working directory (the mysql driver's TLS files).
    dir: &'a Path,
}

impl Sysbench<'_> {
    /// `sysbench --config-file=CONFIG TEST --PORT-OPTION=PORT EXTRA VERB`; its stdout.
    fn run(&self, test: &str, port: u16, verb: &str, extra: &[&str]) -> Result<String, CheckError> {
        let out = Command::new("sysbench")
            .arg(format!("--config-file={}", self.config.display()))
            .arg(test)
            .arg(format!("{}={port}", self.port_option))
            .args(extra)
            .arg(verb)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .current_dir(self.dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| LocalError::io("sysbench", "cannot run", e))?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            return Err(CheckError::Command {
                what: format!("sysbench {test} {verb} on port {port}"),
                output: format!("{text}{}", String::from_utf8_lossy(&out.stderr)),
            });
        }
        Ok(text)
    }
}

/// Runs `stator VERB -f SPEC --state-dir STATE`; how long it took.
pub(crate) fn stator_command(
    exe: &Path,
    spec: &Path,
    state: &Path,
    verb: &[&str],
) -> Result<Duration, CheckError> {
    let started = Instant::now();
    stator_output(exe, spec, state, verb)?;
    Ok(started.elapsed())
}

/// `stator VERB -f SPEC --state-dir STATE`, which must succeed: its standard output.
pub(crate) fn stator_output(
    exe: &Path,
    spec: &Path,
    state: &Path,
    verb: &[&str],
) -> Result<String, CheckError> {
    let out = Command::new(exe)
        .args(verb)
        .arg("-f")
        .arg(spec)
        .arg("--state-dir")
        .arg(state)
        .output()
        .map_err(|e| LocalError::io(exe, "cannot run", e))?;
    if !out.status.success() {
        return Err(CheckError::Command {
            what: format!("stator {verb:?}"),
            output: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Work {
    fn create(args: &BenchArgs) -> Result<Work, CheckError> {
        Work::in_dir(args.work_dir.as_ref(), "stator-bench")
    }

    /// `dir`, kept afterwards; or a new `/tmp/PREFIX-PID`, removed afterwards.
    pub(crate) fn in_dir(dir: Option<&PathBuf>, prefix: &str) -> Result<Work, CheckError> {
        let work = match dir {
            Some(dir) => Work {
                root: dir.clone(),
                remove: false,
            },
            None => Work {
                root: PathBuf::from(format!("/tmp/{prefix}-{}", std::process::id())),
                remove: true,
            },
        };
        std::fs::create_dir_all(&work.root)
            .map_err(|e| LocalError::io(&work.root, "cannot create", e))?;
        std::fs::set_permissions(&work.root, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| LocalError::io(&work.root, "cannot set permissions", e))?;
        Ok(work)
    }
}

/// A file only its owner reads (0600), created so from the start.
fn write_private(path: &Path, text: &str) -> Result<(), CheckError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| LocalError::io(path, "cannot write", e).into())
}

/// Prints the supervisor's and one instance manager's VmRSS and adds them to the summary.
fn print_memory(
    dir: &stator_local::state::DatabaseDir,
    summary: &mut Vec<SummaryRow>,
) -> Result<(), CheckError> {
    println!("== resident memory (VmRSS; target <= 15 MiB each)");
    for (what, mib) in resident_memory(dir)? {
        println!(
            "  {what}: {}",
            mib.map_or("unknown".into(), |m| format!("{m:.1} MiB"))
        );
        if let Some(m) = mib {
            summary.push(SummaryRow {
                measurement: format!("VmRSS, {what}"),
                ours: format!("{m:.1} MiB"),
                peer: "15 MiB budget".into(),
                ratio: m / 15.0,
                target: Target::AtMost(1.0),
            });
        }
    }
    Ok(())
}

/// The supervisor's and one instance manager's VmRSS.
fn resident_memory(
    dir: &stator_local::state::DatabaseDir,
) -> Result<Vec<(String, Option<f64>)>, CheckError> {
    let db = stator_local::state::read_json::<stator_local::state::AppliedSpec>(&dir.spec_file())?
        .ok_or_else(|| LocalError::NotFound(dir.key()))?
        .database;
    let report = stator_local::runtime::fetch_report(dir, &db)?;
    let mut out = Vec::new();
    if let Some(pid) = report.supervisor_pid {
        out.push((
            format!("supervisor (pid {pid}, after serving the runs above)"),
            rss_mib(pid),
        ));
    }
    if let Some(row) = report.instances.first()
        && let Some(pid) = row.manager_pid
    {
        out.push((
            format!("instance manager {} (pid {pid})", row.name),
            rss_mib(pid),
        ));
    }
    Ok(out)
}

/// What a ratio is held against.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    AtMost(f64),
    AtLeast(f64),
    /// Shown for information.
    None,
}

impl Target {
    fn describe(self, ratio: f64) -> String {
        let verdict = self.verdict(ratio);
        // A miss by less than the rounding of the ratio column shows the exact figure.
        match self {
            Target::AtMost(t) | Target::AtLeast(t)
                if verdict == "MISSED" && format!("{ratio:.2}") == format!("{t:.2}") =>
            {
                format!("{} (at {ratio:.4}x)", self.verdict_line(ratio))
            }
            _ => self.verdict_line(ratio),
        }
    }

    fn verdict(self, ratio: f64) -> &'static str {
        match self {
            Target::AtMost(t) if ratio <= t => "met",
            Target::AtLeast(t) if ratio >= t => "met",
            Target::None => "",
            _ => "MISSED",
        }
    }

    fn verdict_line(self, ratio: f64) -> String {
        // One decimal unless the target has two (0.97x).
        let shown = |t: f64| {
            if (t * 10.0).fract().abs() < 1e-9 {
                format!("{t:.1}")
            } else {
                format!("{t:.2}")
            }
        };
        match self {
            Target::AtMost(t) => {
                format!(
                    "<= {}x: {}",
                    shown(t),
                    if ratio <= t { "met" } else { "MISSED" }
                )
            }
            Target::AtLeast(t) => {
                format!(
                    ">= {}x: {}",
                    shown(t),
                    if ratio >= t { "met" } else { "MISSED" }
                )
            }
            Target::None => "(information)".into(),
        }
    }
}

/// One line of the closing table.
struct SummaryRow {
    measurement: String,
    ours: String,
    peer: String,
    ratio: f64,
    target: Target,
}

/// The closing table: each measurement, stator's figure, the peer's, the ratio and the target.
fn render_summary(title: &str, rows: &[SummaryRow]) -> String {
    let mut table = vec![[
        "measurement".to_string(),
        "stator".into(),
        "peer".into(),
        "ratio".into(),
        "target".into(),
    ]];
    for r in rows {
        table.push([
            r.measurement.clone(),
            r.ours.clone(),
            r.peer.clone(),
            format!("{:.2}x", r.ratio),
            r.target.describe(r.ratio),
        ]);
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = format!("== summary, {title}\n");
    for (i, row) in table.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(&format!("| {} |\n", cells.join(" | ")));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&format!("|-{}-|\n", rule.join("-|-")));
        }
    }
    out
}

/// The tools of a MariaDB cluster made by hand, and the settings its servers get.
struct HandMariadb {
    server: PathBuf,
    install_db: PathBuf,
    backup: PathBuf,
    client: PathBuf,
    user: Option<ServerUser>,
    /// Server parameters: the same as stator's instances get.
    parameters: BTreeMap<String, String>,
}

impl HandMariadb {
    /// The account `mariadb-install-db` makes for the OS user that ran it (unix_socket).
    fn login(&self) -> String {
        match &self.user {
            Some(u) => u.name.clone(),
            None => nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| "root".into()),
        }
    }

    fn option_file(&self, dir: &Path, n: u16, base: u16) -> Result<PathBuf, CheckError> {
        let mut text = String::from("[mariadbd]\n");
        for (key, value) in &self.parameters {
            text.push_str(&format!("{key} = {value}\n"));
        }
        text.push_str(&format!(
            "datadir = {dir}/d{n}\nsocket = {dir}/s{n}.sock\npid_file = {dir}/d{n}/mariadb.pid\nlog_error = {dir}/s{n}.log\nport = {}\nbind_address = 127.0.0.1\nserver_id = {}\nlog_bin = binlog\nrelay_log = relay-bin\nbinlog_format = ROW\nlog_slave_updates = ON\ngtid_strict_mode = ON\ngtid_domain_id = 0\nskip_slave_start = ON\nread_only = {}\n",
            base + 10 + n,
            1000 + u32::from(n),
            if n == 0 { "OFF" } else { "ON" },
            dir = dir.display(),
        ));
        let path = dir.join(format!("c{n}.cnf"));
        std::fs::write(&path, text).map_err(|e| LocalError::io(&path, "cannot write", e))?;
        Ok(path)
    }

    /// Runs `sql` (on stdin, so no password is on a command line) over server N's socket.
    fn sql(&self, dir: &Path, n: u16, sql: &str) -> Result<String, CheckError> {
        use std::io::Write;
        let mut command = Command::new(&self.client);
        command
            .arg("--no-defaults")
            .arg(format!("--socket={}/s{n}.sock", dir.display()))
            .args(["-u", &self.login(), "-N", "-B"]);
        let mut child = as_user(&mut command, self.user.as_ref())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| LocalError::io(&self.client, "cannot run", e))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(sql.as_bytes())
                .map_err(|e| LocalError::io(&self.client, "cannot write to", e))?;
        }
        let out = child
            .wait_with_output()
            .map_err(|e| LocalError::io(&self.client, "cannot run", e))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(CheckError::Command {
                what: format!("mariadb on s{n}.sock"),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }

    fn start(
        &self,
        dir: &Path,
        n: u16,
        base: u16,
        cleanup: &mut Cleanup,
    ) -> Result<(), CheckError> {
        let cnf = dir.join(format!("c{n}.cnf"));
        let mut command = Command::new(&self.server);
        command.arg(format!("--defaults-file={}", cnf.display()));
        let child = as_user(&mut command, self.user.as_ref())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| LocalError::io(&self.server, "cannot start", e))?;
        cleanup.hand_servers.push(child);
        wait_port(base + 10 + n, Duration::from_secs(120))
    }

    /// install-db, start, then for each replica: backup, prepare, start, CHANGE MASTER, START
    /// SLAVE; returns once both replicas replicate.
    fn bring_up(
        &self,
        dir: &Path,
        base: u16,
        cleanup: &mut Cleanup,
    ) -> Result<Duration, CheckError> {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| LocalError::io(dir, "cannot create", e))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| LocalError::io(dir, "cannot chmod", e))?;
        if let Some(u) = &self.user {
            nix::unistd::chown(
                dir,
                Some(nix::unistd::Uid::from_raw(u.uid)),
                Some(nix::unistd::Gid::from_raw(u.gid)),
            )
            .map_err(|e| LocalError::io(dir, "cannot chown", e.into()))?;
        }
        let replication = stator_local::secrets::generate_secret();
        let app = stator_local::secrets::generate_secret();
        let started = Instant::now();
        let cnf = self.option_file(dir, 0, base)?;
        run_step(
            as_user(
                Command::new(&self.install_db)
                    .arg(format!("--defaults-file={}", cnf.display()))
                    // The unix_socket account of this OS user, which the steps below log in as.
                    .arg(format!("--user={}", self.login()))
                    .args(["--auth-root-authentication-method=socket", "--skip-test-db"]),
                self.user.as_ref(),
            ),
            "mariadb-install-db",
        )?;
        self.start(dir, 0, base, cleanup)?;
        self.sql(
            dir,
            0,
            &format!(
                "CREATE USER 'repl'@'127.0.0.1' IDENTIFIED BY '{replication}';\n\
                 GRANT REPLICATION SLAVE ON *.* TO 'repl'@'127.0.0.1';\n\
                 CREATE DATABASE app;\n\
                 CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY '{app}';\n\
                 GRANT ALL ON app.* TO 'app'@'127.0.0.1';\n"
            ),
        )?;
        for n in 1..3u16 {
            let target = dir.join(format!("d{n}"));
            let source = format!("--socket={}/s0.sock", dir.display());
            run_step(
                as_user(
                    Command::new(&self.backup)
                        .arg("--backup")
                        .arg(format!("--target-dir={}", target.display()))
                        .arg(&source)
                        .arg(format!("--user={}", self.login())),
                    self.user.as_ref(),
                ),
                "mariadb-backup --backup",
            )?;
            run_step(
                as_user(
                    Command::new(&self.backup)
                        .arg("--prepare")
                        .arg(format!("--target-dir={}", target.display())),
                    self.user.as_ref(),
                ),
                "mariadb-backup --prepare",
            )?;
            let info = std::fs::read_to_string(target.join("xtrabackup_binlog_info"))
                .or_else(|_| std::fs::read_to_string(target.join("mariadb_backup_binlog_info")))
                .unwrap_or_default();
            let gtid = info
                .lines()
                .next()
                .and_then(|l| l.split('\t').nth(2))
                .unwrap_or("")
                .trim()
                .to_string();
            self.option_file(dir, n, base)?;
            self.start(dir, n, base, cleanup)?;
            self.sql(
                dir,
                n,
                &format!(
                    "SET GLOBAL gtid_slave_pos = '{gtid}';\n\
                     CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT={}, MASTER_USER='repl', MASTER_PASSWORD='{replication}', MASTER_USE_GTID=slave_pos;\n\
                     START SLAVE;\n",
                    base + 10
                ),
            )?;
        }
        for n in 1..3u16 {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                // `Slave_running` is ON once both the IO and the SQL thread run.
                let status = self.sql(
                    dir,
                    n,
                    "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'SLAVE_RUNNING'",
                )?;
                if status.trim() == "ON" {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(CheckError::NotReplicating {
                        port: base + 10 + n,
                        status,
                    });
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(started.elapsed())
    }

    /// Stops the servers (a clean shutdown) and removes the directory.
    fn stop(&self, dir: &Path, cleanup: &mut Cleanup) {
        for server in cleanup.hand_servers.iter().rev() {
            stator_local::process::signal(server.id(), nix::sys::signal::Signal::SIGTERM);
        }
        for mut server in std::mem::take(&mut cleanup.hand_servers) {
            let _ = server.wait();
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// `transactions:  36310  (3630.18 per sec.)` in sysbench's output → 3630.18.
pub fn parse_sysbench_tps(output: &str) -> Option<f64> {
    let line = output
        .lines()
        .find(|l| l.trim_start().starts_with("transactions:"))?;
    line.split_once('(')?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn append(path: &Path, text: &str) -> Result<(), CheckError> {
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|e| LocalError::io(path, "cannot append", e).into())
}

fn start_haproxy(dir: &Path, port: u16, primary: u16) -> Result<Child, CheckError> {
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\nlisten db\n  bind 127.0.0.1:{port}\n  server primary 127.0.0.1:{primary}\n"
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
        .map_err(|e| LocalError::io("haproxy", "cannot start", e).into())
}

pub(crate) fn wait_port(port: u16, timeout: Duration) -> Result<(), CheckError> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(CheckError::NothingListens(port))
}

pub(crate) fn which(program: &str) -> Option<PathBuf> {
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
    fn the_ratio_of_paired_runs_is_their_median_ratio() {
        // A load that halves both runs of the second pair leaves the ratio alone; the ratio
        // of the medians (1000/1900) would not.
        assert_eq!(
            median_ratio(&[1000.0, 500.0, 990.0], &[1000.0, 500.0, 1900.0]),
            1.0
        );
        assert_eq!(median_ratio(&[], &[]), 0.0);
        // A peer of 0 (a failed parse) is no division by zero.
        assert_eq!(median_ratio(&[5.0], &[0.0]), 5.0);
    }

    #[test]
    fn tps_is_read_from_sysbench_output() {
        let text = "SQL statistics:\n    queries performed:\n        read:  508340\n    transactions:                        36310  (3630.18 per sec.)\n    queries:                             580960 (58082.91 per sec.)\n";
        assert_eq!(parse_sysbench_tps(text), Some(3630.18));
        assert_eq!(parse_sysbench_tps("FATAL: no"), None);
    }

    #[test]
    fn the_summary_says_which_targets_are_met() {
        let table = render_summary(
            "MariaDB 10.11",
            &[
                SummaryRow {
                    measurement: "bring-up".into(),
                    ours: "6.00 s".into(),
                    peer: "5.00 s".into(),
                    ratio: 1.2,
                    target: Target::AtMost(1.5),
                },
                SummaryRow {
                    measurement: "read-only".into(),
                    ours: "800 tps".into(),
                    peer: "1000 tps".into(),
                    ratio: 0.8,
                    target: Target::AtLeast(0.9),
                },
            ],
        );
        assert!(table.contains("| 1.20x | <= 1.5x: met"), "{table}");
        assert!(table.contains("| 0.80x | >= 0.9x: MISSED"), "{table}");
        assert_eq!(
            Target::AtLeast(1.0).describe(0.998),
            ">= 1.0x: MISSED (at 0.9980x)"
        );
        assert_eq!(Target::AtLeast(1.0).describe(1.0), ">= 1.0x: met");
    }
}
