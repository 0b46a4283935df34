//! `stator bench failover`: the write outage of a failover, Stator against Patroni, in one run
//! on this machine (a benchmark, not a test; nothing here asserts a time).
//!
//! 1. Stator: a 3-instance PostgreSQL 15 cluster from `stator up`, and the consistency checker
//!    ([`crate::checker`]) with its writer inserting a numbered row every 20 ms through `rw`:
//!    - **lost node** (`stop-node`): SIGSTOP of the primary's instance manager and server tree,
//!      held until writes resume elsewhere — the node is gone as far as anyone can tell, as in
//!      Patroni's round; a killed node would be restarted in place by the supervisor at once;
//!    - **node killed** (`kill-node`): kill -9 of the primary's manager and server together; the
//!      supervisor restarts the manager (or fails over, whichever is first).
//! 2. Patroni 3 + etcd 3.4 + HAProxy with the baseline script (`scripts/bench/patroni_baseline.sh`:
//!    kill -9 of the leader's Patroni and postmaster, the node held down until writes resume on
//!    another), at its defaults and tuned to Stator's detection timeout (ttl, and HAProxy's
//!    check interval with it).
//!
//! Outage = from the fault to the acknowledgement of the next write (Stator: the first write
//! sent after the fault; Patroni: the first write acknowledged by another node). p50/p95/max
//! over the rounds; ratios of the p50s.
//!
//! Needs PostgreSQL 15 and, for the peer, `patroni`, `etcd-server`, `haproxy` and
//! `python3-psycopg2` (the script installs the missing ones with apt-get).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::checker::{self, CheckOptions, CheckReport, Spread};
use crate::fault::Fault;
use crate::local::LocalTarget;
use stator_local::LocalError;

use crate::error::CheckError;

/// Options of `stator bench failover`.
#[derive(clap::Args, Debug, Clone)]
pub struct FailoverBenchArgs {
    /// Failovers per measurement (Stator's lost-node rounds and each Patroni setting).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Stator's in-place rounds (kill -9 of the primary's manager and server); 0 skips them.
    #[arg(long, default_value_t = 5)]
    pub in_place_rounds: u32,
    /// First of 50 free ports for Stator's cluster.
    #[arg(long, default_value_t = 26000)]
    pub port_base: u16,
    /// Stator's spec.failover.detectionTimeout.
    #[arg(long, default_value = "2s")]
    pub detection_timeout: String,
    /// Synchronous replication for Stator (the Patroni baseline runs asynchronous).
    #[arg(long)]
    pub synchronous: bool,
    /// The Patroni baseline script.
    #[arg(long, default_value = "scripts/bench/patroni_baseline.sh")]
    pub patroni_script: PathBuf,
    /// Patroni's tuned setting as TTL/LOOP_WAIT/RETRY_TIMEOUT (seconds). Patroni 3.0.2 with
    /// etcd3 cannot reach its DCS with retry_timeout below 2, so 2 is its floor.
    #[arg(long, default_value = "2/1/2")]
    pub patroni_tuned: String,
    /// HAProxy's health check for the tuned Patroni run.
    #[arg(long, default_value = "inter 500ms fall 2 rise 1")]
    pub patroni_tuned_haproxy: String,
    /// Skip Patroni (Stator's figures only).
    #[arg(long)]
    pub skip_patroni: bool,
    /// Skip Patroni at its defaults (its rounds take a minute each).
    #[arg(long)]
    pub skip_patroni_defaults: bool,
    /// Seed of the random pause before each fault (both sides).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Work directory (default: a new one under /tmp, removed afterwards).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
}

/// One line of the comparison.
#[derive(Clone, Debug)]
pub struct Measured {
    pub system: String,
    pub fault: String,
    pub outage: Option<Spread>,
    /// Acknowledged writes lost over all rounds, when known.
    pub lost: Option<u64>,
    pub note: Option<String>,
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

/// Deletes Stator's cluster, also when the benchmark fails half-way.
struct Cluster {
    exe: PathBuf,
    spec: PathBuf,
    state: PathBuf,
}

impl Cluster {
    fn stator(&self, verb: &[&str]) -> Result<(), CheckError> {
        let out = Command::new(&self.exe)
            .args(verb)
            .arg("-f")
            .arg(&self.spec)
            .arg("--state-dir")
            .arg(&self.state)
            .output()
            .map_err(|e| LocalError::io(&self.exe, "cannot run", e))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(CheckError::Command {
                what: format!("stator {}", verb.join(" ")),
                output: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stator(&["delete", "--purge"]);
    }
}

pub fn run(args: &FailoverBenchArgs, exe: &Path) -> Result<(), CheckError> {
    stator_local::preflight::find_bin_dir(stator_api::Engine::Postgres, "15")?;
    let tuned = parse_patroni_setting(&args.patroni_tuned)?;
    if !args
        .patroni_tuned_haproxy
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b' ')
    {
        return Err(CheckError::from(LocalError::Invalid(format!(
            "--patroni-tuned-haproxy {:?}: only words and numbers, e.g. \"inter 500ms fall 2 rise 1\"",
            args.patroni_tuned_haproxy
        ))));
    }
    if !args.skip_patroni && !args.patroni_script.is_file() {
        return Err(CheckError::from(LocalError::Invalid(format!(
            "--patroni-script {}: no such file (run from the repository root, or pass its path; --skip-patroni measures Stator only)",
            args.patroni_script.display()
        ))));
    }
    let work = match &args.work_dir {
        Some(dir) => Work {
            root: dir.clone(),
            remove: false,
        },
        None => Work {
            root: PathBuf::from(format!("/tmp/stator-bench-failover-{}", std::process::id())),
            remove: true,
        },
    };
    std::fs::create_dir_all(&work.root)
        .map_err(|e| LocalError::io(&work.root, "cannot create", e))?;
    std::fs::set_permissions(&work.root, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| LocalError::io(&work.root, "cannot set permissions", e))?;

    let mut lines = Vec::new();
    let stator = measure_stator(args, exe, &work.root)?;
    lines.extend(stator);

    if !args.skip_patroni {
        let mut settings = Vec::new();
        if !args.skip_patroni_defaults {
            settings.push((
                "patroni defaults".to_string(),
                "a".to_string(),
                "ttl 30, loop_wait 10, retry_timeout 10; haproxy inter 3s fall 3 rise 2"
                    .to_string(),
                "inter 3s fall 3 rise 2".to_string(),
            ));
        }
        settings.push((
            "patroni tuned".to_string(),
            format!("t={}/{}/{}", tuned.0, tuned.1, tuned.2),
            format!(
                "ttl {}, loop_wait {}, retry_timeout {}; haproxy {}",
                tuned.0, tuned.1, tuned.2, args.patroni_tuned_haproxy
            ),
            args.patroni_tuned_haproxy.clone(),
        ));
        for (name, mode, described, haproxy) in settings {
            eprintln!("== {name} ({described}): {} rounds", args.rounds);
            let results = work
                .root
                .join(format!("patroni-{}.json", mode.replace(['=', '/'], "-")));
            let status = Command::new("bash")
                .arg(&args.patroni_script)
                .arg(args.rounds.to_string())
                .env("MODES", &mode)
                .env("PM_ROUNDS", "0")
                .env("SEED", args.seed.to_string())
                .env("HAPROXY_CHECK", &haproxy)
                .env("RESULTS", &results)
                .status()
                .map_err(|e| LocalError::io(&args.patroni_script, "cannot run", e))?;
            let parsed = std::fs::read(&results)
                .ok()
                .and_then(|b| serde_json::from_slice::<PatroniResults>(&b).ok());
            let mut line = match parsed {
                Some(r) => summarize_patroni(&r),
                None => Measured {
                    system: String::new(),
                    fault: String::new(),
                    outage: None,
                    lost: None,
                    note: Some(format!("the script wrote no results ({status})")),
                },
            };
            line.system = format!("{name} ({described})");
            line.fault = "kill -9 Patroni + postmaster, node held down".into();
            if !status.success() && line.note.is_none() {
                line.note = Some(format!("the script exited with {status}"));
            }
            lines.push(line);
        }
    }

    println!();
    println!(
        "== failover write outage: 3-instance PostgreSQL 15 on this machine, a write every 20 ms; outage = fault -> next acknowledged write"
    );
    print!("{}", render_table(&lines));
    println!("{}", render_ratios(&lines));
    Ok(())
}

fn measure_stator(
    args: &FailoverBenchArgs,
    exe: &Path,
    root: &Path,
) -> Result<Vec<Measured>, CheckError> {
    let spec = root.join("bench-failover.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata:\n  name: benchfo\nspec:\n  engine: postgres\n  instances: 3\n  replication:\n    synchronous: {}\n  failover:\n    detectionTimeout: {}\n  local:\n    portBase: {}\n",
            args.synchronous, args.detection_timeout, args.port_base
        ),
    )
    .map_err(|e| LocalError::io(&spec, "cannot write", e))?;
    let cluster = Cluster {
        exe: exe.to_path_buf(),
        spec: spec.clone(),
        state: root.join("state"),
    };
    eprintln!("== stator: bringing up a 3-instance cluster");
    cluster.stator(&["up"])?;
    let dir = stator_local::state::StateDir {
        root: cluster.state.clone(),
    }
    .database("default", "benchfo");
    let progress = |line: &str| eprintln!("  {line}");
    let replication = if args.synchronous {
        "synchronous"
    } else {
        "asynchronous"
    };
    let mut out = Vec::new();
    eprintln!("== stator, lost node (stop-node): {} rounds", args.rounds);
    let target = LocalTarget::open(&dir)?;
    let lost_node = checker::check(
        &target,
        &CheckOptions {
            failovers: args.rounds,
            fault: Fault::StopNode,
            seed: args.seed,
            ..CheckOptions::default()
        },
        &progress,
    )?;
    eprint!("{}", lost_node.render());
    keep_logs_if_incomplete(&lost_node, &dir, "stop-node");
    out.push(stator_line(
        &lost_node,
        format!(
            "stator (detectionTimeout {}, {replication})",
            args.detection_timeout
        ),
        "SIGSTOP manager + server tree, node held until writes resume".into(),
    ));
    if args.in_place_rounds > 0 {
        eprintln!(
            "== stator, node killed (kill-node): {} rounds",
            args.in_place_rounds
        );
        let in_place = checker::check(
            &target,
            &CheckOptions {
                failovers: args.in_place_rounds,
                fault: Fault::KillNode,
                seed: args.seed,
                require_failover: false,
                ..CheckOptions::default()
            },
            &progress,
        )?;
        eprint!("{}", in_place.render());
        keep_logs_if_incomplete(&in_place, &dir, "kill-node");
        let completed: Vec<_> = in_place
            .rounds
            .iter()
            .filter(|r| r.outage_seconds.is_some())
            .collect();
        let moved = completed
            .iter()
            .filter(|r| r.primary_moved_seconds.is_some())
            .count();
        let mut line = stator_line(
            &in_place,
            format!(
                "stator, node killed (detectionTimeout {}, {replication})",
                args.detection_timeout
            ),
            "kill -9 manager + server (the supervisor restarts them unless a failover is first)"
                .into(),
        );
        line.note = Some(format!(
            "{moved} of {} completed rounds were failovers, the rest restarts in place{}",
            completed.len(),
            line.note.map(|n| format!("; {n}")).unwrap_or_default()
        ));
        out.push(line);
    }
    drop(cluster);
    Ok(out)
}

/// An incomplete check is a finding: its supervisor's and instances' logs are copied to
/// `/tmp/stator-bench-failover-logs-PID-FAULT/` (the cluster itself is deleted afterwards).
fn keep_logs_if_incomplete(
    report: &CheckReport,
    dir: &stator_local::state::DatabaseDir,
    fault: &str,
) {
    if report.aborted.is_none() {
        return;
    }
    let dest = PathBuf::from(format!(
        "/tmp/stator-bench-failover-logs-{}-{fault}",
        std::process::id()
    ));
    let mut copied = 0;
    let mut sources = vec![(dir.root.clone(), dest.clone())];
    if let Ok(entries) = std::fs::read_dir(dir.root.join("instances")) {
        for e in entries.flatten() {
            sources.push((e.path(), dest.join(e.file_name())));
        }
    }
    for (from, to) in sources {
        let Ok(entries) = std::fs::read_dir(&from) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let wanted = path.extension().is_some_and(|x| x == "log" || x == "json");
            if wanted && path.is_file() {
                let _ = std::fs::create_dir_all(&to);
                if std::fs::copy(&path, to.join(e.file_name())).is_ok() {
                    copied += 1;
                }
            }
        }
    }
    if copied > 0 {
        eprintln!(
            "  the check is incomplete: {copied} logs kept in {}",
            dest.display()
        );
    }
}

fn stator_line(report: &CheckReport, system: String, fault: String) -> Measured {
    let mut notes = Vec::new();
    if !report.split_brain.is_empty() {
        notes.push(format!(
            "{} moments with two writable instances",
            report.split_brain.len()
        ));
    }
    if let Some(a) = &report.aborted {
        notes.push(format!("incomplete: {a}"));
    }
    Measured {
        system,
        fault,
        outage: report.outage.clone(),
        lost: Some(report.writes_lost),
        note: (!notes.is_empty()).then(|| notes.join("; ")),
    }
}

/// `TTL/LOOP_WAIT/RETRY_TIMEOUT` in whole seconds.
pub fn parse_patroni_setting(text: &str) -> Result<(u32, u32, u32), CheckError> {
    let parts: Vec<Option<u32>> = text.split('/').map(|p| p.trim().parse().ok()).collect();
    match parts.as_slice() {
        [Some(ttl), Some(lw), Some(rt)] if *ttl > 0 && *lw > 0 && *rt > 0 => Ok((*ttl, *lw, *rt)),
        _ => Err(CheckError::from(LocalError::Invalid(format!(
            "--patroni-tuned {text:?}: expected TTL/LOOP_WAIT/RETRY_TIMEOUT in whole seconds above 0, e.g. 2/1/2"
        )))),
    }
}

/// What the baseline script writes to `RESULTS`.
#[derive(Deserialize, Debug)]
pub struct PatroniResults {
    pub rounds: Vec<PatroniRound>,
}

#[derive(Deserialize, Debug)]
pub struct PatroniRound {
    pub kind: String,
    pub outage_s: f64,
    #[serde(default)]
    pub acked_lost: Option<i64>,
}

pub fn summarize_patroni(results: &PatroniResults) -> Measured {
    let node_loss: Vec<&PatroniRound> = results
        .rounds
        .iter()
        .filter(|r| r.kind == "node-loss")
        .collect();
    let outages: Vec<f64> = node_loss.iter().map(|r| r.outage_s).collect();
    let lost = node_loss
        .iter()
        .map(|r| r.acked_lost.map(|l| l.max(0) as u64))
        .sum::<Option<u64>>();
    Measured {
        system: String::new(),
        fault: String::new(),
        outage: Spread::of(&outages),
        lost,
        note: None,
    }
}

pub fn render_table(lines: &[Measured]) -> String {
    let secs = |s: &Option<Spread>, f: fn(&Spread) -> f64| {
        s.as_ref()
            .map(|s| format!("{:.3}s", f(s)))
            .unwrap_or_else(|| "-".into())
    };
    let mut rows = vec![
        ["SYSTEM", "FAULT", "N", "P50", "P95", "MAX", "LOST WRITES"]
            .map(String::from)
            .to_vec(),
    ];
    for l in lines {
        rows.push(vec![
            l.system.clone(),
            l.fault.clone(),
            l.outage
                .as_ref()
                .map(|s| s.count.to_string())
                .unwrap_or_else(|| "0".into()),
            secs(&l.outage, |s| s.p50),
            secs(&l.outage, |s| s.p95),
            secs(&l.outage, |s| s.max),
            l.lost.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
        ]);
    }
    let columns = rows[0].len();
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < columns {
                line.push_str(&" ".repeat(widths[c] - cell.chars().count() + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for l in lines {
        if let Some(note) = &l.note {
            out.push_str(&format!("  {}: {note}\n", l.system));
        }
    }
    out
}

/// Ratios of each Stator p50 to each Patroni p50, and the targets (judged on the lost node, the
/// slower of Stator's two faults).
pub fn render_ratios(lines: &[Measured]) -> String {
    let ours: Vec<(&str, &Spread)> = lines
        .iter()
        .filter(|l| l.system.starts_with("stator"))
        .filter_map(|l| Some((short(&l.system), l.outage.as_ref()?)))
        .collect();
    let Some((_, lost_node)) = ours.first().copied() else {
        return "no Stator figure to compare".into();
    };
    let mut out = String::new();
    let mut below_tuned = None;
    for l in lines.iter().filter(|l| l.system.starts_with("patroni")) {
        let Some(theirs) = &l.outage else {
            continue;
        };
        for (name, spread) in &ours {
            let ratio = spread.p50 / theirs.p50.max(1e-9);
            out.push_str(&format!(
                "ratio of p50s {name} / {} = {ratio:.2}x ({:.3}s vs {:.3}s)\n",
                short(&l.system),
                spread.p50,
                theirs.p50
            ));
        }
        if l.system.starts_with("patroni tuned") {
            below_tuned = Some(lost_node.p50 < theirs.p50);
        }
    }
    out.push_str(&format!(
        "target stator p50 <= 3s (lost node): {} ({:.3}s); below tuned Patroni: {}",
        if lost_node.p50 <= 3.0 {
            "met"
        } else {
            "NOT met"
        },
        lost_node.p50,
        match below_tuned {
            Some(true) => "met",
            Some(false) => "NOT met",
            None => "not measured",
        }
    ));
    out
}

/// `stator (detectionTimeout 2s, …)` → `stator`.
fn short(system: &str) -> &str {
    system.split(" (").next().unwrap_or(system)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patroni_settings_are_three_whole_seconds() {
        assert_eq!(parse_patroni_setting("2/1/2").unwrap(), (2, 1, 2));
        for bad in ["2/1", "a/b/c", "0/1/2", "2/1/2/3", ""] {
            assert!(parse_patroni_setting(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn patroni_results_are_summarized_over_node_loss_rounds_only() {
        let text = r#"{"rounds":[
            {"mode":"a","kind":"node-loss","outage_s":31.0,"acked_lost":0},
            {"mode":"a","kind":"node-loss","outage_s":33.0,"acked_lost":2},
            {"mode":"a","kind":"postmaster-only","outage_s":1.0,"acked_lost":0}
        ],"rss":[]}"#;
        let r: PatroniResults = serde_json::from_str(text).unwrap();
        let m = summarize_patroni(&r);
        let s = m.outage.unwrap();
        assert_eq!((s.count, s.p50, s.max), (2, 32.0, 33.0));
        assert_eq!(m.lost, Some(2));
    }

    #[test]
    fn the_table_prints_ratios_against_each_patroni_setting() {
        let line = |system: &str, values: &[f64]| Measured {
            system: system.into(),
            fault: "f".into(),
            outage: Spread::of(values),
            lost: Some(0),
            note: None,
        };
        let lines = vec![
            line(
                "stator (detectionTimeout 2s, asynchronous)",
                &[2.0, 2.5, 3.0],
            ),
            line("stator, node killed (detectionTimeout 2s)", &[1.0]),
            line("patroni defaults (x)", &[30.0]),
            line("patroni tuned (y)", &[5.0]),
        ];
        let table = render_table(&lines);
        assert!(table.contains("P50"), "{table}");
        assert!(table.contains("2.500s"), "{table}");
        let ratios = render_ratios(&lines);
        assert!(
            ratios.contains("stator / patroni defaults = 0.08x"),
            "{ratios}"
        );
        assert!(
            ratios.contains("stator / patroni tuned = 0.50x"),
            "{ratios}"
        );
        assert!(ratios.contains("p50 <= 3s (lost node): met"), "{ratios}");
        assert!(ratios.contains("below tuned Patroni: met"), "{ratios}");
        assert!(
            ratios.contains("stator, node killed / patroni tuned = 0.20x"),
            "{ratios}"
        );
    }
}
