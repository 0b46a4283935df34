//! Figures of the operator on a real API server with 100 Databases whose pods stay Pending (no
//! kubelet): its RSS, the time until all 100 are observed, spec change → observedGeneration,
//! and the API writes per minute while they sit idle. Printed, never asserted:
//!
//!   cargo build --release -p stator --bin stator
//!   STATOR_BIN=$CARGO_TARGET_DIR/release/stator \
//!     cargo test -p stator-operator --test operator_bench -- --ignored --nocapture
//!
//! The operator is the binary users run, the release `stator` (`deploy/Dockerfile` builds
//! `--release`), named by `STATOR_BIN`; the test around it may be a debug build (its own
//! profile changes no figure of the operator's, and a release build of the stand-in and its
//! dependencies only for this run costs many minutes). Without `STATOR_BIN` it runs the
//! `stator` of its own profile directory.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube::api::{Api, ListParams, Patch, PatchParams};
use stator_api::Database;
use stator_kube::install::LEASE_NAME;
use stator_kubelet_standin::harness::ControlPlane;
use support::*;

const COUNT: usize = 100;

/// Field `field` (kB) of `/proc/PID/status`.
fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The process's RSS, and what it is made of: anonymous memory (heap, stacks) and the
/// binary's and libraries' pages read in (file-backed, shared with the page cache).
fn rss(pid: u32) -> String {
    let mib = |field| status_kib(pid, field) as f64 / 1024.0;
    format!(
        "{:.1} MiB (anonymous {:.1} MiB, file-backed {:.1} MiB; {} threads)",
        mib("VmRSS:"),
        mib("RssAnon:"),
        mib("RssFile:"),
        status_kib(pid, "Threads:")
    )
}

/// What the resident set is made of, from `/proc/PID/smaps`: the `stator` binary's own pages,
/// other files (the C library, the loader), the `[heap]` (glibc's main arena), thread stacks
/// (the mapping each thread's stack pointer, from `/proc/PID/task/TID/syscall`, lies in) and
/// other anonymous mappings (large allocations, other arenas), in MiB.
fn smaps(pid: u32) -> String {
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    // (start, end, path, rss kB, anonymous kB)
    let mut maps: Vec<(u64, u64, String, u64, u64)> = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            let path = words.nth(4).unwrap_or("").to_string();
            maps.push((a, b, path, 0, 0));
        } else if let Some(last) = maps.last_mut() {
            let mut kib = || {
                words
                    .next()
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            match first {
                "Rss:" => last.3 = kib(),
                "Anonymous:" => last.4 = kib(),
                _ => {}
            }
        }
    }
    let mut stack_pointers = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let syscall = std::fs::read_to_string(task.path().join("syscall")).unwrap_or_default();
        let words: Vec<&str> = syscall.split_whitespace().collect();
        if words.len() >= 9
            && let Some(sp) = words[words.len() - 2].strip_prefix("0x")
            && let Ok(sp) = u64::from_str_radix(sp, 16)
        {
            stack_pointers.push(sp);
        }
    }
    let threads = stack_pointers.len();
    let (mut binary, mut files, mut heap, mut stacks, mut anon, mut count) = (0, 0, 0, 0, 0, 0);
    for (start, end, path, rss, anonymous) in &maps {
        let file_backed = rss - anonymous.min(rss);
        if stack_pointers.iter().any(|sp| (start..end).contains(&sp)) || path == "[stack]" {
            stacks += rss;
        } else if path == "[heap]" {
            heap += rss;
        } else if Path::new(path) == exe {
            binary += file_backed;
            anon += anonymous;
        } else if path.starts_with('/') {
            files += file_backed;
            anon += anonymous;
        } else {
            anon += rss;
            count += usize::from(*rss > 0);
        }
    }
    let mib = |k: u64| k as f64 / 1024.0;
    format!(
        "binary {:.1}, other files {:.1}, [heap] {:.1}, thread stacks {:.1} ({threads} threads), \
         other anonymous {:.1} ({count} mappings) MiB",
        mib(binary),
        mib(files),
        mib(heap),
        mib(stacks),
        mib(anon)
    )
}

/// Write requests (POST, PUT, PATCH, DELETE) the API server served so far, by resource.
fn writes(cp: &ControlPlane) -> std::collections::BTreeMap<String, f64> {
    let metrics = kubectl(cp, &["get", "--raw", "/metrics"]);
    let mut by = std::collections::BTreeMap::new();
    for line in metrics
        .lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
    {
        let field = |k: &str| {
            line.split(&format!("{k}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("")
                .to_string()
        };
        if !matches!(
            field("verb").as_str(),
            "POST" | "PUT" | "PATCH" | "DELETE" | "APPLY"
        ) {
            continue;
        }
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        *by.entry(field("resource")).or_insert(0.0) += value;
    }
    by
}

/// Event writes so far by reporting controller: each Event is one create, and each repeat
/// folded into its series one patch (`series.count` in all).
fn event_writes_by_reporter(cp: &ControlPlane) -> std::collections::BTreeMap<String, f64> {
    let listed = kubectl(cp, &["get", "events.events.k8s.io", "-A", "-o", "json"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap_or_default();
    let mut by = std::collections::BTreeMap::new();
    for e in listed["items"].as_array().into_iter().flatten() {
        let reporter = e["reportingController"]
            .as_str()
            .or(e["deprecatedSource"]["component"].as_str())
            .unwrap_or("?")
            .to_string();
        let count = e["series"]["count"]
            .as_f64()
            .or(e["deprecatedCount"].as_f64())
            .unwrap_or(1.0);
        *by.entry(reporter).or_insert(0.0) += count;
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: prints figures (about 3 minutes)"]
async fn operator_with_100_idle_databases() {
    let cp = ControlPlane::start();
    install(&cp);
    let kubeconfig = operator_kubeconfig(&cp);
    let stator = stator_kubelet_standin::harness::stator_binary();
    println!(
        "test profile: {}; operator binary {} ({:.1} MiB)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        stator.display(),
        std::fs::metadata(&stator).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0
    );
    let mut operator = Command::new(&stator)
        .args([
            "operator",
            "--identity",
            "bench",
            "--health-port",
            "0",
            "--tick-ms",
            "2000",
        ])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run stator operator (cargo build --workspace --bin stator first)");
    let pid = operator.id();
    let client = client_of(&kubeconfig).await;
    let dbs: Api<Database> = Api::namespaced(client.clone(), "apps");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), NS);
    until("the operator leads", || async {
        let lease = leases.get_opt(LEASE_NAME).await.ok()??;
        (lease.spec?.holder_identity?.as_str() == "bench").then_some(())
    })
    .await;
    // Its watches listed (nothing yet): what it costs before any Database.
    tokio::time::sleep(Duration::from_secs(3)).await;
    println!("operator RSS leading, no Database: {}", rss(pid));
    println!("  smaps: {}", smaps(pid));

    let items: Vec<serde_json::Value> = (0..COUNT)
        .map(|i| {
            serde_json::json!({
                "apiVersion": "stator.dev/v1alpha1", "kind": "Database",
                "metadata": {"name": format!("db{i}"), "namespace": "apps"},
                "spec": {"engine": "postgres", "instances": 2, "storage": {"size": "1Gi"}},
            })
        })
        .collect();
    let path = cp.dir().join("dbs.json");
    std::fs::write(
        &path,
        serde_json::json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string(),
    )
    .unwrap();
    let start = Instant::now();
    kubectl(
        &cp,
        &["apply", "--server-side", "-f", path.to_str().unwrap()],
    );
    until("all 100 Databases observed", || async {
        let list = dbs.list(&ListParams::default()).await.ok()?;
        let observed = list
            .items
            .iter()
            .filter(|d| {
                d.status.as_ref().and_then(|s| s.observed_generation) == d.metadata.generation
            })
            .count();
        (observed == COUNT).then_some(())
    })
    .await;
    println!(
        "100 new Databases until all observed: {:.1} s",
        start.elapsed().as_secs_f64()
    );
    println!(
        "operator RSS with 100 Databases (all observed): {}",
        rss(pid)
    );
    println!("  smaps: {}", smaps(pid));

    let mut samples = Vec::new();
    for i in 0..20 {
        let name = format!("db{i}");
        let db = dbs
            .patch(
                &name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"instances": 3}})),
            )
            .await
            .unwrap();
        let changed = Instant::now();
        let generation = db.metadata.generation;
        loop {
            let db = dbs.get(&name).await.unwrap();
            if db.status.and_then(|s| s.observed_generation) == generation {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        samples.push(changed.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    println!(
        "spec change -> observedGeneration over {} changes: p50 {:.0} ms, max {:.0} ms",
        samples.len(),
        samples[samples.len() / 2],
        samples[samples.len() - 1]
    );

    // Idle: let the changes settle (the StatefulSet controller has made every pod the 20
    // changes ask for, 2 per Database and 1 more for each changed one), then count a minute of
    // writes.
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), "apps");
    until("every pod created", || async {
        let n = pods.list(&ListParams::default()).await.ok()?.items.len();
        (n == 2 * COUNT + samples.len()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;
    let before = writes(&cp);
    let events_before = event_writes_by_reporter(&cp);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = writes(&cp);
    let events_after = event_writes_by_reporter(&cp);
    let mut total = 0.0;
    let mut parts = Vec::new();
    for (resource, n) in &after {
        let d = n - before.get(resource).copied().unwrap_or(0.0);
        if d > 0.0 {
            parts.push(format!("{resource} {d}"));
            if resource != "leases" {
                total += d;
            }
        }
    }
    println!(
        "API writes in one idle minute with 100 Databases, besides Lease renewals (the operator's and the controller-manager's): {total} ({})",
        parts.join(", ")
    );
    // The Events in that total are mostly the control plane's (PVCs that no volume binds):
    // who wrote them.
    let mut reporters = Vec::new();
    for (reporter, n) in &events_after {
        let d = n - events_before.get(reporter).copied().unwrap_or(0.0);
        if d > 0.0 {
            reporters.push(format!("{reporter} {d}"));
        }
    }
    println!(
        "Event writes in that minute by reporter (the operator's is \"stator\"): {}",
        if reporters.is_empty() {
            "none".to_string()
        } else {
            reporters.join(", ")
        }
    );
    println!("operator RSS after the idle minute: {}", rss(pid));
    println!("  smaps: {}", smaps(pid));
    let _ = operator.kill();
    let _ = operator.wait();
}
