//! `stator bench backup` and `stator bench rpo` (PostgreSQL with pgBackRest; benchmarks, not
//! tests: nothing here asserts a time, the figures are printed).
//!
//! `bench backup`: a 1-instance database with a local repository is filled with about
//! `--size-mib` of pgbench data; then, as ratios against pgBackRest run by hand with the same
//! settings (compression, process-max, start-fast), on the same server and the same data:
//! 1. a full backup: `stator backup create --type full` (the CLI orders it from the primary's
//!    instance manager, which runs pgBackRest) vs `pgbackrest backup --type=full` by hand with
//!    the instance manager's own `pgbackrest.conf` (same repository, same settings, the same
//!    archive check);
//! 2. a restore of that backup to the end of the archive: `stator restore --from` (verify,
//!    restore, recovery, promotion, the new database up and ready) vs `pgbackrest restore` +
//!    `pg_ctl start` until the recovery ended;
//! 3. the bytes each stored.
//!
//! `bench rpo`: for each archive timeout (60 s and 5 s by default), a 2-instance database, a
//! writer that commits a row every 10 ms through `rw`, then the database destroyed (the keeper,
//! supervisor, instance managers and servers killed with SIGKILL, the state dir removed), and
//! an archive-only restore to the latest point: the seconds and the rows lost.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use stator_local::LocalError;
use stator_local::preflight::{self, ServerUser};

use crate::bench::{
    BENCH_FAILOVER, Work, as_user, run_step, stator_command, stator_output, stop_immediately,
    wait_port, which,
};
use crate::error::CheckError;

/// Options of `stator bench backup`.
#[derive(clap::Args, Debug, Clone)]
pub struct BackupBenchArgs {
    /// First of 100 free ports the benchmark may use.
    #[arg(long, default_value_t = 25200)]
    pub port_base: u16,
    /// About how much data to back up, in MiB (pgbench scale = size / 15).
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// spec.backup.compression (and pgBackRest's compress-type by hand).
    #[arg(long, default_value = "zst", value_parser = ["zst", "lz4", "gz", "none"])]
    pub compression: String,
    /// spec.backup.parallel (and pgBackRest's process-max by hand).
    #[arg(long, default_value_t = 2)]
    pub parallel: u32,
    /// Work directory (default: a new one under /tmp, removed afterwards).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Which engine to measure (MariaDB: a full backup and its restore; `--parallel` and
    /// `--compression` do not apply: Stator stores MariaDB backups with zstd -3, one stream).
    #[arg(long, default_value = "postgres", value_parser = ["postgres", "mariadb"])]
    pub engine: String,
    /// Rounds of each pair (Stator and by hand), the order alternating between rounds
    /// so that neither side always runs on the other's leftovers (dirty pages, a busy
    /// server); the ratio is the median of the rounds' ratios.
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
}

/// Options of `stator bench rpo`.
#[derive(clap::Args, Debug, Clone)]
pub struct RpoBenchArgs {
    /// First of 100 free ports the benchmark may use.
    #[arg(long, default_value_t = 25300)]
    pub port_base: u16,
    /// spec.backup.archiveTimeout values to measure, one database each.
    #[arg(long, value_delimiter = ',', default_value = "60s,5s")]
    pub archive_timeouts: Vec<String>,
    /// Seconds the writer commits before the database is destroyed.
    #[arg(long, default_value_t = 90)]
    pub write_seconds: u64,
    /// Work directory (default: a new one under /tmp, removed afterwards).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

/// One operation timed in rounds, Stator's and by hand side by side.
#[derive(Default)]
struct Pairs {
    /// (Stator, by hand), one per round.
    rounds: Vec<(Duration, Duration)>,
}

impl Pairs {
    fn median(mut values: Vec<f64>) -> f64 {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        match n {
            0 => f64::NAN,
            _ if n % 2 == 1 => values[n / 2],
            _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
        }
    }

    fn stator(&self) -> f64 {
        Self::median(self.rounds.iter().map(|r| r.0.as_secs_f64()).collect())
    }

    fn hand(&self) -> f64 {
        Self::median(self.rounds.iter().map(|r| r.1.as_secs_f64()).collect())
    }

    /// Stator's time over the time by hand: the median of the rounds' ratios.
    fn ratio(&self) -> f64 {
        Self::median(
            self.rounds
                .iter()
                .map(|(s, h)| s.as_secs_f64() / h.as_secs_f64())
                .collect(),
        )
    }

    /// Each round's times, when there was more than one.
    fn detail(&self) -> String {
        if self.rounds.len() < 2 {
            return String::new();
        }
        let each: Vec<String> = self
            .rounds
            .iter()
            .map(|(s, h)| format!("{:.2}/{:.2}", s.as_secs_f64(), h.as_secs_f64()))
            .collect();
        format!("  (rounds, stator/by hand s: {})", each.join(", "))
    }
}

/// What `bench backup` measured, Stator's and by hand.
struct Figures {
    backup: Pairs,
    restore_what: &'static str,
    restore: Pairs,
    stator_size: u64,
    hand_size: u64,
}

impl Figures {
    /// The table of times (medians over the rounds), bytes and ratios (Stator / by hand),
    /// then `note`.
    fn print(&self, note: &str) {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        println!(
            "{:<34} {:>10} {:>10} {:>8}",
            "", "stator", "by hand", "ratio"
        );
        for (what, pairs) in [
            ("full backup (time)", &self.backup),
            (self.restore_what, &self.restore),
        ] {
            println!(
                "{what:<34} {:>9.2}s {:>9.2}s {:>7.2}x{}",
                pairs.stator(),
                pairs.hand(),
                pairs.ratio(),
                pairs.detail()
            );
        }
        println!(
            "{:<34} {:>7.1}MiB {:>7.1}MiB {:>7.2}x",
            "bytes stored (the full backup)",
            mib(self.stator_size),
            mib(self.hand_size),
            self.stator_size as f64 / self.hand_size.max(1) as f64
        );
        println!(
            "speed vs by hand (target >= 0.9): backup {:.2}, restore {:.2}",
            1.0 / self.backup.ratio(),
            1.0 / self.restore.ratio()
        );
        println!("{note}");
    }
}

/// Databases this benchmark made (removed with their data on drop) and a server started by
/// hand (stopped immediately on drop).
struct Made<'a> {
    exe: &'a Path,
    state: PathBuf,
    specs: Vec<PathBuf>,
    hand: Option<(PathBuf, PathBuf, Option<ServerUser>)>,
}

impl Drop for Made<'_> {
    fn drop(&mut self) {
        if let Some((bin, data, user)) = self.hand.take() {
            stop_immediately(&bin, &data, user.as_ref());
        }
        for spec in self.specs.drain(..).rev() {
            let _ = Command::new(self.exe)
                .args(["delete", "--purge", "-f"])
                .arg(&spec)
                .arg("--state-dir")
                .arg(&self.state)
                .output();
        }
    }
}

/// A database spec with a local repository (failover slow to trigger, as in every benchmark's
/// cluster: a starved manager on a loaded machine is not a lost primary).
fn write_spec(
    path: &Path,
    name: &str,
    instances: u32,
    port_base: u16,
    backup: &str,
    extra: &str,
) -> Result<(), CheckError> {
    std::fs::write(
        path,
        format!(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: {name}\nspec:\n  engine: postgres\n  instances: {instances}\n  local:\n    portBase: {port_base}\n{BENCH_FAILOVER}{extra}  backup:\n{backup}"
        ),
    )
    .map_err(|e| LocalError::io(path, "cannot write", e).into())
}

/// `stator backup list -o json`, once it lists at least one backup (the schedule takes the
/// first at once).
fn wait_first_backup(exe: &Path, spec: &Path, state: &Path) -> Result<(), CheckError> {
    let started = Instant::now();
    loop {
        if !listed_backups(exe, spec, state)?.is_empty() {
            return Ok(());
        }
        if started.elapsed() > Duration::from_secs(300) {
            return Err(CheckError::Command {
                what: "waiting for the first scheduled backup".into(),
                output: "no backup listed after 300 s".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The backups `stator backup list -o json` lists, oldest first.
fn listed_backups(
    exe: &Path,
    spec: &Path,
    state: &Path,
) -> Result<Vec<serde_json::Value>, CheckError> {
    let list = stator_output(exe, spec, state, &["backup", "list", "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&list).unwrap_or_default();
    Ok(v["backups"].as_array().cloned().unwrap_or_default())
}

/// The application password in `stator uri`.
fn app_password(exe: &Path, spec: &Path, state: &Path) -> Result<String, CheckError> {
    let uri = stator_output(exe, spec, state, &["uri"])?;
    uri.trim()
        .split_once("://")
        .and_then(|(_, rest)| rest.rsplit_once('@'))
        .and_then(|(creds, _)| creds.split_once(':'))
        .map(|(_, p)| p.to_string())
        .ok_or_else(|| CheckError::Command {
            what: "stator uri".into(),
            output: "no password in the URI".into(),
        })
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match entry.file_type() {
            Ok(t) if t.is_dir() => total += dir_bytes(&entry.path()),
            Ok(_) => total += entry.metadata().map_or(0, |m| m.len()),
            Err(_) => {}
        }
    }
    total
}

fn private_dir(path: &Path, user: Option<&ServerUser>) -> Result<(), CheckError> {
    std::fs::create_dir_all(path).map_err(|e| LocalError::io(path, "cannot create", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| LocalError::io(path, "cannot set permissions", e))?;
    if let Some(u) = user {
        nix::unistd::chown(
            path,
            Some(nix::unistd::Uid::from_raw(u.uid)),
            Some(nix::unistd::Gid::from_raw(u.gid)),
        )
        .map_err(|e| LocalError::io(path, "cannot chown", std::io::Error::from(e)))?;
    }
    Ok(())
}

pub fn run_backup(args: &BackupBenchArgs, exe: &Path) -> Result<(), CheckError> {
    if args.engine == "mariadb" {
        return run_backup_mariadb(args, exe);
    }
    let bin = preflight::find_bin_dir(stator_api::Engine::Postgres, "15")?;
    let pgbackrest = preflight::find_pgbackrest()?;
    if which("pgbench").is_none() {
        return Err(CheckError::from(LocalError::BinariesMissing(
            "`pgbench` not found on PATH; install it (Debian/Ubuntu: apt-get install postgresql-client-15)".into(),
        )));
    }
    let user = preflight::server_user(stator_api::Engine::Postgres)?;
    let work = Work::in_dir(args.work_dir.as_ref(), "stator-bench-backup")?;
    let root = &work.root;
    let state = root.join("state");
    let repo = root.join("repo");
    std::fs::create_dir_all(&repo).map_err(|e| LocalError::io(&repo, "cannot create", e))?;
    let backup = format!(
        "    repository:\n      local:\n        path: {}\n    compression: {}\n    parallel: {}\n",
        repo.display(),
        args.compression,
        args.parallel
    );
    let spec = root.join("bb.yaml");
    write_spec(&spec, "bb", 1, args.port_base, &backup, "")?;
    let mut made = Made {
        exe,
        state: state.clone(),
        specs: vec![spec.clone()],
        hand: None,
    };
    println!("stator up (1 instance, repository {})", repo.display());
    stator_command(exe, &spec, &state, &["up"])?;
    wait_first_backup(exe, &spec, &state)?;

    let scale = (args.size_mib / 15).max(1);
    println!("pgbench -i -s {scale} (about {} MiB)", args.size_mib);
    let password = app_password(exe, &spec, &state)?;
    run_step(
        Command::new("pgbench")
            .args(["-i", "-q", "-s", &scale.to_string()])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", args.port_base.to_string())
            .env("PGUSER", "app")
            .env("PGDATABASE", "app")
            .env("PGSSLMODE", "require")
            .env("PGPASSWORD", &password),
        "pgbench -i",
    )?;

    // 1. Full backups, in rounds: Stator's, then by hand, and the other way round in the next.
    let db_dir = state.join("default").join("bb");
    let run_dir = db_dir.join("instances/bb-0/run");
    let data_dir = db_dir.join("data-bb-0");
    let hand_work = root.join("hand-work");
    private_dir(&hand_work, user.as_ref())?;
    // By hand with the very settings the instance manager uses: its pgbackrest.conf (same
    // repository, stanza, compression, process-max, start-fast, and the archive check, which
    // waits for the backup's WAL to reach the archive).
    let config = run_dir.join(stator_engine::postgres::backrest::CONFIG_FILE);
    let mut backups = Pairs::default();
    let mut stator_label = String::new();
    for round in 0..args.rounds.max(1) {
        let mut times = (Duration::ZERO, Duration::ZERO);
        for stator_turn in turns(round) {
            settle();
            if stator_turn {
                times.0 =
                    stator_command(exe, &spec, &state, &["backup", "create", "--type", "full"])?;
                let last = listed_backups(exe, &spec, &state)?
                    .pop()
                    .unwrap_or_default();
                stator_label = last["label"].as_str().unwrap_or_default().to_string();
            } else {
                let started = Instant::now();
                run_step(
                    as_user(
                        Command::new(&pgbackrest)
                            .arg(format!("--config={}", config.display()))
                            .arg("--stanza=bb")
                            .args(["backup", "--type=full"])
                            .env_clear()
                            .env("PATH", "/usr/bin:/bin")
                            .env(
                                "PGPASSFILE",
                                run_dir.join(stator_engine::postgres::backrest::SUPERUSER_PASSFILE),
                            ),
                        user.as_ref(),
                    ),
                    "pgbackrest backup (by hand)",
                )?;
                times.1 = started.elapsed();
            }
        }
        backups.rounds.push(times);
    }
    // Bytes stored: the full backup's directory in each repository.
    let full_dir_bytes = |backups: &Path| {
        std::fs::read_dir(backups)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with('F'))
            .map(|e| e.path())
            .max()
            .map_or(0, |d| dir_bytes(&d))
    };
    // The newest full backup is the last one by hand or Stator's; both are the same data.
    let hand_size = full_dir_bytes(&repo.join("default/bb/backup/bb"));
    let stator_size = dir_bytes(&repo.join("default/bb/backup/bb").join(&stator_label));

    // 2. Restores of Stator's last full backup, to the end of the archive, in rounds the same
    // way.
    let restored = root.join("rb.yaml");
    write_spec(&restored, "rb", 1, args.port_base + 50, &backup, "")?;
    let mut restores = Pairs::default();
    for round in 0..args.rounds.max(1) {
        let mut times = (Duration::ZERO, Duration::ZERO);
        for stator_turn in turns(round) {
            settle();
            if stator_turn {
                times.0 = stator_restore(&mut made, &restored, "bb", &stator_label)?;
            } else {
                times.1 = hand_restore_postgres(
                    &HandRestorePostgres {
                        bin: &bin,
                        pgbackrest: &pgbackrest,
                        repo: &repo.join("default/bb"),
                        lock: &hand_work,
                        label: &stator_label,
                        parallel: args.parallel,
                        dir: &root.join(format!("hand-restore-{round}")),
                        port: args.port_base + 90,
                        user: user.as_ref(),
                    },
                    &mut made,
                )?;
            }
        }
        restores.rounds.push(times);
    }

    println!();
    println!(
        "Backup benchmark: about {} MiB (pgbench scale {scale}; base/ holds {} MiB), compression {}, parallel {}",
        args.size_mib,
        dir_bytes(&data_dir.join("base")) / (1024 * 1024),
        args.compression,
        args.parallel
    );
    Figures {
        backup: backups,
        restore_what: "restore to the end of the archive",
        restore: restores,
        stator_size,
        hand_size,
    }
    .print(
        "(stator restore includes reading back the archived WAL it replays, beside the recovery (pgBackRest's restore checks the set's files), and bringing the new database up: TLS, roles, proxies, ready; by hand: restore + recovery + promotion only, timed once the restored database's first backup ended and it was removed. The backup by hand runs pgbackrest with the instance manager's own pgbackrest.conf.)",
    );
    Ok(())
}

/// `stator restore -f restored --from FROM --backup ID`: the time it took. The restored
/// database takes its first backup at once; that backup finishes, and the database is removed,
/// before anything else is timed (`made` removes it if this fails half-way).
fn stator_restore(
    made: &mut Made,
    restored: &Path,
    from: &str,
    id: &str,
) -> Result<Duration, CheckError> {
    made.specs.push(restored.to_path_buf());
    let took = stator_command(
        made.exe,
        restored,
        &made.state,
        &["restore", "--from", from, "--backup", id],
    )?;
    wait_first_backup(made.exe, restored, &made.state)?;
    stator_command(made.exe, restored, &made.state, &["delete", "--purge"])?;
    made.specs.retain(|s| s != restored);
    Ok(took)
}

/// A PostgreSQL restore by hand: what it needs.
struct HandRestorePostgres<'a> {
    bin: &'a Path,
    pgbackrest: &'a Path,
    /// The repository path (`repo1-path`).
    repo: &'a Path,
    lock: &'a Path,
    label: &'a str,
    parallel: u32,
    /// A new directory for this restore: the data dir and the socket (removed afterwards).
    dir: &'a Path,
    port: u16,
    user: Option<&'a ServerUser>,
}

/// `pgbackrest restore` of set `label`, then `pg_ctl start` until the recovery ended and the
/// server promoted: the time it took. The server is stopped and the directory removed
/// afterwards (`made` stops it if this fails half-way).
fn hand_restore_postgres(h: &HandRestorePostgres, made: &mut Made) -> Result<Duration, CheckError> {
    let data = h.dir.join("data");
    let socket = h.dir.join("socket");
    private_dir(h.dir, h.user)?;
    private_dir(&data, h.user)?;
    private_dir(&socket, h.user)?;
    let started = Instant::now();
    run_step(
        as_user(
            Command::new(h.pgbackrest)
                .arg("--config=/dev/null")
                .arg("--stanza=bb")
                .arg(format!("--repo1-path={}", h.repo.display()))
                .arg(format!("--pg1-path={}", data.display()))
                .arg(format!("--process-max={}", h.parallel))
                .arg(format!("--lock-path={}", h.lock.display()))
                .arg("--log-level-file=off")
                .arg("--log-level-console=warn")
                .arg(format!("--set={}", h.label))
                .args(["--type=default", "--archive-mode=off", "restore"])
                .env_clear()
                .env("PATH", "/usr/bin:/bin"),
            h.user,
        ),
        "pgbackrest restore (by hand)",
    )?;
    // Its own port and socket, as a second server on the machine needs.
    let auto = data.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    text.push_str(&format!(
        "port = {}\nunix_socket_directories = '{}'\nlisten_addresses = '127.0.0.1'\n",
        h.port,
        socket.display()
    ));
    std::fs::write(&auto, text).map_err(|e| LocalError::io(&auto, "cannot write", e))?;
    made.hand = Some((h.bin.to_path_buf(), data.clone(), h.user.cloned()));
    run_step(
        as_user(
            Command::new(h.bin.join("pg_ctl"))
                .args(["start", "-w", "-s", "-t", "3600", "-D"])
                .arg(&data)
                .arg("-l")
                .arg(socket.join("server.log")),
            h.user,
        ),
        "pg_ctl start (by hand)",
    )?;
    // Recovery ended and the server promoted: recovery.signal is gone.
    while data.join("recovery.signal").exists() {
        if started.elapsed() > Duration::from_secs(3600) {
            return Err(CheckError::Command {
                what: "the restore by hand".into(),
                output: "recovery did not end within an hour".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = started.elapsed();
    if let Some((bin, data, user)) = made.hand.take() {
        stop_immediately(&bin, &data, user.as_ref());
    }
    let _ = std::fs::remove_dir_all(h.dir);
    Ok(took)
}

/// Kills every process of the local database at `db_dir` with SIGKILL: the keeper and the
/// supervisor first (so nothing restarts the rest), then the instance managers and the servers.
fn destroy(exe: &Path, spec: &Path, state: &Path, db_dir: &Path) -> Result<(), CheckError> {
    let status: serde_json::Value =
        serde_json::from_str(&stator_output(exe, spec, state, &["status", "-o", "json"])?)
            .unwrap_or_default();
    let mut pids: Vec<i32> = Vec::new();
    for file in ["keeper.pid", "supervisor.pid"] {
        if let Some(pid) = std::fs::read_to_string(db_dir.join(file))
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            pids.push(pid);
        }
    }
    for row in status["instances"].as_array().into_iter().flatten() {
        for pid in [&row["managerPid"], &row["report"]["pid"]] {
            if let Some(pid) = pid.as_i64() {
                pids.push(pid as i32);
            }
        }
    }
    // And whatever else runs on the database's dir (a server whose manager died first).
    let dir = db_dir.to_string_lossy().into_owned();
    pids.extend(processes_on(&dir));
    for pid in pids {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    // Once more: anything started while the first round was being killed.
    std::thread::sleep(Duration::from_millis(200));
    for pid in processes_on(&dir) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// Processes whose command line names `dir`.
fn processes_on(dir: &str) -> Vec<i32> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(dir) {
            pids.push(pid);
        }
    }
    pids
}

pub fn run_rpo(args: &RpoBenchArgs, exe: &Path) -> Result<(), CheckError> {
    let work = Work::in_dir(args.work_dir.as_ref(), "stator-bench-rpo")?;
    let root = &work.root;
    let state = root.join("state");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| LocalError::Failed(format!("cannot start a runtime: {e}")))?;
    let mut lines = Vec::new();
    for (n, timeout) in args.archive_timeouts.iter().enumerate() {
        let base = args.port_base + (n as u16) * 40;
        let repo = root.join(format!("repo-{n}"));
        std::fs::create_dir_all(&repo).map_err(|e| LocalError::io(&repo, "cannot create", e))?;
        let backup = format!(
            "    repository:\n      local:\n        path: {}\n    archiveTimeout: {timeout}\n",
            repo.display()
        );
        let name = format!("rpo{n}");
        let spec = root.join(format!("{name}.yaml"));
        // Plain connections: the writer measures the archive, not TLS.
        write_spec(
            &spec,
            &name,
            2,
            base,
            &backup,
            "  tls:\n    enabled: false\n",
        )?;
        let restored_name = format!("rr{n}");
        let restored = root.join(format!("{restored_name}.yaml"));
        write_spec(
            &restored,
            &restored_name,
            1,
            base + 20,
            &backup,
            "  tls:\n    enabled: false\n",
        )?;
        let _made = Made {
            exe,
            state: state.clone(),
            specs: vec![spec.clone(), restored.clone()],
            hand: None,
        };
        println!("archiveTimeout {timeout}: stator up (2 instances)");
        stator_command(exe, &spec, &state, &["up"])?;
        wait_first_backup(exe, &spec, &state)?;
        let password = app_password(exe, &spec, &state)?;
        let connect = |port: u16| {
            let mut c = tokio_postgres::Config::new();
            c.host("127.0.0.1")
                .port(port)
                .user("app")
                .password(password.clone())
                .dbname("app")
                .connect_timeout(Duration::from_secs(5));
            c
        };
        let writer_started_ms = stator_failover::clock::wall_ms();
        let (acked, last_ack_ms) = runtime.block_on(async {
            let (client, conn) = connect(base)
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| LocalError::Failed(format!("connecting to rw: {e}")))?;
            tokio::spawn(conn);
            client
                .batch_execute("CREATE TABLE rpo (id bigint PRIMARY KEY, at timestamptz NOT NULL)")
                .await
                .map_err(|e| LocalError::Failed(format!("creating the table: {e}")))?;
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let until = Instant::now() + Duration::from_secs(args.write_seconds);
            let mut acked: Vec<i64> = Vec::new();
            let mut last_ack_ms = 0u64;
            let mut id = 0i64;
            while Instant::now() < until {
                tick.tick().await;
                id += 1;
                if client
                    .execute("INSERT INTO rpo VALUES ($1, clock_timestamp())", &[&id])
                    .await
                    .is_ok()
                {
                    acked.push(id);
                    last_ack_ms = stator_failover::clock::wall_ms();
                }
            }
            Ok::<_, CheckError>((acked, last_ack_ms))
        })?;
        // Destroyed right after the last acknowledged commit: primary and replica killed,
        // the state dir (data, config, secrets) removed.
        let db_dir = state.join("default").join(&name);
        destroy(exe, &spec, &state, &db_dir)?;
        let destroyed_ms = stator_failover::clock::wall_ms();
        std::fs::remove_dir_all(&db_dir)
            .map_err(|e| LocalError::io(&db_dir, "cannot remove", e))?;
        println!(
            "archiveTimeout {timeout}: destroyed; restoring from the archive to the latest point"
        );
        let started = Instant::now();
        stator_output(exe, &restored, &state, &["restore", "--from", &name])?;
        let restore_seconds = started.elapsed().as_secs_f64();
        let restored_password = app_password(exe, &restored, &state)?;
        let (count, max_id, max_at_ms) = runtime.block_on(async {
            let mut c = connect(base + 20);
            c.password(restored_password);
            let (client, conn) = c
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(|e| LocalError::Failed(format!("connecting to the restored rw: {e}")))?;
            tokio::spawn(conn);
            // The table itself is lost when its creation never reached the archive.
            let exists: bool = client
                .query_one("SELECT to_regclass('public.rpo') IS NOT NULL", &[])
                .await
                .map_err(|e| LocalError::Failed(format!("reading the restored rows: {e:?}")))?
                .get(0);
            if !exists {
                return Ok((0, 0, 0));
            }
            let row = client
                .query_one(
                    "SELECT count(*), coalesce(max(id), 0), coalesce((extract(epoch FROM max(at)) * 1000)::bigint, 0) FROM rpo",
                    &[],
                )
                .await
                .map_err(|e| LocalError::Failed(format!("reading the restored rows: {e:?}")))?;
            Ok::<_, CheckError>((row.get::<_, i64>(0), row.get::<_, i64>(1), row.get::<_, i64>(2)))
        })?;
        let lost = acked.iter().filter(|id| **id > max_id).count();
        // From the last commit restored (or the writer's start, when nothing was) to the last
        // one acknowledged.
        let reference_ms = if max_at_ms > 0 {
            max_at_ms as u64
        } else {
            writer_started_ms
        };
        let seconds_lost = last_ack_ms.saturating_sub(reference_ms) as f64 / 1000.0;
        let line = format!(
            "archiveTimeout {timeout:>4}: {} rows acknowledged in {} s, {} restored, {lost} lost ({seconds_lost:.2} s of commits; destroyed {:.2} s after the last one); restore {restore_seconds:.1} s",
            acked.len(),
            args.write_seconds,
            count,
            destroyed_ms.saturating_sub(last_ack_ms) as f64 / 1000.0,
        );
        println!("{line}");
        lines.push(line);
    }
    println!();
    println!("RPO of an archive-only restore (a writer committing every 10 ms):");
    for line in lines {
        println!("  {line}");
    }
    Ok(())
}

/// Runs `script` with `bash -c` as `user`: a pipeline as an operator types it.
fn shell(script: &str, user: Option<&ServerUser>, what: &str) -> Result<Duration, CheckError> {
    let started = Instant::now();
    run_step(
        as_user(Command::new("bash").arg("-c").arg(script), user),
        what,
    )?;
    Ok(started.elapsed())
}

/// `bench backup --engine mariadb`: `stator backup create` vs `mariadb-backup --backup
/// --stream=xbstream | zstd -3` + `sha256sum` by hand; `stator restore` vs `zstd -d | mbstream
/// -x`, `--prepare`, `--copy-back` and a server start by hand.
fn run_backup_mariadb(args: &BackupBenchArgs, exe: &Path) -> Result<(), CheckError> {
    let engine = stator_api::Engine::Mariadb;
    let bin = preflight::find_bin_dir(engine, engine.default_version())?;
    let tool = |name: &str| {
        preflight::find_tool(&bin, name).ok_or_else(|| {
            LocalError::BinariesMissing(format!(
                "`{name}` not found; install it (Debian/Ubuntu: apt-get install mariadb-server mariadb-backup zstd)"
            ))
        })
    };
    let (backup_tool, mbstream, client) =
        (tool("mariadb-backup")?, tool("mbstream")?, tool("mariadb")?);
    let zstd = stator_engine::mysql_family::repository::ZSTD;
    let user = preflight::server_user(engine)?;
    let work = Work::in_dir(args.work_dir.as_ref(), "stator-bench-backup")?;
    let root = &work.root;
    let state = root.join("state");
    let repo = root.join("repo");
    std::fs::create_dir_all(&repo).map_err(|e| LocalError::io(&repo, "cannot create", e))?;
    let backup = format!(
        "    repository:\n      local:\n        path: {}\n",
        repo.display()
    );
    let spec = root.join("mb.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: mb\nspec:\n  engine: mariadb\n  instances: 1\n  local:\n    portBase: {}\n{BENCH_FAILOVER}  backup:\n{backup}",
            args.port_base
        ),
    )
    .map_err(|e| LocalError::io(&spec, "cannot write", e))?;
    let mut made = Made {
        exe,
        state: state.clone(),
        specs: vec![spec.clone()],
        hand: None,
    };
    println!(
        "stator up (MariaDB, 1 instance, repository {})",
        repo.display()
    );
    stator_command(exe, &spec, &state, &["up"])?;
    wait_first_backup(exe, &spec, &state)?;
    let run_dir = state.join("default/mb/instances/mb-0/run");
    let socket = run_dir.join("mariadb.sock");
    let data_dir = state.join("default/mb/data-mb-0");
    // About 250 bytes a row in InnoDB.
    let rows = (args.size_mib * 1024 * 1024 / 250).max(1000);
    println!("loading {rows} rows (about {} MiB)", args.size_mib);
    run_step(
        Command::new(&client)
            .args(["--no-defaults", "-u", "root"])
            .arg(format!("--socket={}", socket.display()))
            .arg("-e")
            .arg(format!(
                "CREATE TABLE app.b (id INT PRIMARY KEY, pad CHAR(200) NOT NULL) ENGINE=InnoDB; \
                 INSERT INTO app.b SELECT seq, REPEAT(MD5(seq), 6) FROM app.seq_1_to_{rows}"
            )),
        "loading the data",
    )?;

    // 1. Full backups, in rounds: Stator's, then by hand, and the other way round in the next.
    let hand = root.join("hand");
    private_dir(&hand, user.as_ref())?;
    let object = hand.join("full.xbstream.zst");
    let login = user.as_ref().map_or("root", |u| u.name.as_str());
    let mut backups = Pairs::default();
    let mut stator_id = String::new();
    for round in 0..args.rounds.max(1) {
        let mut times = (Duration::ZERO, Duration::ZERO);
        for stator_turn in turns(round) {
            settle();
            if stator_turn {
                times.0 = stator_command(exe, &spec, &state, &["backup", "create"])?;
                let last = listed_backups(exe, &spec, &state)?
                    .pop()
                    .unwrap_or_default();
                stator_id = last["id"].as_str().unwrap_or_default().to_string();
            } else {
                times.1 = shell(
                    &format!(
                        "set -e -o pipefail; rm -rf {hand}/tmp; {tool} --no-defaults --backup --stream=xbstream --datadir={data} --socket={socket} --user={login} --target-dir={hand}/tmp --tmpdir={hand} 2>{hand}/backup.log | {zstd} -q -c -3 > {object}; sha256sum {object} > {object}.sha256",
                        tool = backup_tool.display(),
                        data = data_dir.display(),
                        socket = socket.display(),
                        hand = hand.display(),
                        object = object.display(),
                    ),
                    user.as_ref(),
                    "mariadb-backup | zstd (by hand)",
                )?;
            }
        }
        backups.rounds.push(times);
    }
    let stator_size = dir_bytes(&stator_engine::mysql_family::repository::backup_dir(
        &repo.join("default/mb"),
        &stator_id,
    ));
    let hand_size = std::fs::metadata(&object).map_or(0, |m| m.len());

    // 2. Restores, in rounds the same way.
    let restored = root.join("mr.yaml");
    std::fs::write(
        &restored,
        format!(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: mr\nspec:\n  engine: mariadb\n  instances: 1\n  local:\n    portBase: {}\n{BENCH_FAILOVER}  backup:\n{backup}",
            args.port_base + 50
        ),
    )
    .map_err(|e| LocalError::io(&restored, "cannot write", e))?;
    let port = args.port_base + 90;
    let mut restores = Pairs::default();
    for round in 0..args.rounds.max(1) {
        let mut times = (Duration::ZERO, Duration::ZERO);
        for stator_turn in turns(round) {
            settle();
            if stator_turn {
                times.0 = stator_restore(&mut made, &restored, "mb", &stator_id)?;
            } else {
                times.1 = hand_restore(&HandRestore {
                    bin: &bin,
                    backup_tool: &backup_tool,
                    mbstream: &mbstream,
                    zstd,
                    object: &object,
                    dir: &hand.join(format!("restore-{round}")),
                    port,
                    user: user.as_ref(),
                })?;
            }
        }
        restores.rounds.push(times);
    }

    println!();
    println!(
        "Backup benchmark (MariaDB): about {} MiB ({rows} rows; the data dir holds {} MiB), zstd -3, {} rounds",
        args.size_mib,
        dir_bytes(&data_dir) / (1024 * 1024),
        args.rounds.max(1),
    );
    Figures {
        backup: backups,
        restore_what: "restore (until the server listens)",
        restore: restores,
        stator_size,
        hand_size,
    }
    .print(
        "(by hand: mariadb-backup --backup --stream=xbstream | zstd -3, then sha256sum; restore: zstd -d | mbstream -x, --prepare, --copy-back, mariadbd until it listens. stator restore also verifies the backup's hash, sets the GTID state, creates the users and brings the new database up. Rounds alternate which side runs first.)",
    );
    Ok(())
}

/// Flushes the page cache's dirty pages to disk before a timed step, so that neither side pays
/// for the writeback of what the step before it wrote (a restore writes the whole data dir: the
/// same restore by hand measured 1.5 to 2.9 s depending on what was still being written back).
fn settle() {
    nix::unistd::sync();
}

/// The order of a round's pair: Stator first in even rounds, by hand first in odd ones.
fn turns(round: u32) -> [bool; 2] {
    let stator_first = round.is_multiple_of(2);
    [stator_first, !stator_first]
}

/// A MariaDB restore by hand: what it needs.
struct HandRestore<'a> {
    bin: &'a Path,
    backup_tool: &'a Path,
    mbstream: &'a Path,
    zstd: &'a str,
    object: &'a Path,
    /// A new directory for this restore (removed afterwards).
    dir: &'a Path,
    port: u16,
    user: Option<&'a ServerUser>,
}

/// `zstd -d | mbstream -x`, `--prepare`, `--copy-back`, then `mariadbd` until it listens: the
/// time it took. The server is stopped and the directory removed afterwards.
fn hand_restore(h: &HandRestore) -> Result<Duration, CheckError> {
    private_dir(h.dir, h.user)?;
    let dir = h.dir.display();
    let unpacked = shell(
        &format!(
            "set -e; mkdir {dir}/staging {dir}/data; {zstd} -q -d -c {object} | {mbstream} -x -C {dir}/staging; \
             {tool} --no-defaults --prepare --target-dir={dir}/staging 2>{dir}/prepare.log; \
             {tool} --no-defaults --copy-back --target-dir={dir}/staging --datadir={dir}/data 2>{dir}/copy-back.log",
            zstd = h.zstd,
            tool = h.backup_tool.display(),
            mbstream = h.mbstream.display(),
            object = h.object.display(),
        ),
        h.user,
        "zstd -d | mbstream -x, --prepare, --copy-back (by hand)",
    )?;
    let started = Instant::now();
    let mut server = as_user(
        Command::new(h.bin.join("mariadbd"))
            .arg("--no-defaults")
            .arg(format!("--datadir={dir}/data"))
            .arg(format!("--socket={dir}/s.sock"))
            .arg(format!("--pid-file={dir}/s.pid"))
            .arg(format!("--log-error={dir}/server.log"))
            .arg(format!("--port={}", h.port))
            .arg("--bind-address=127.0.0.1"),
        h.user,
    )
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .map_err(|e| LocalError::io(h.bin.join("mariadbd"), "cannot start", e))?;
    let waited = wait_port(h.port, Duration::from_secs(600));
    let took = unpacked + started.elapsed();
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(h.dir);
    waited?;
    Ok(took)
}
