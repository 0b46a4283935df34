//! `stator operator`: the Kubernetes operator (crates/operator). It runs in the pod `stator
//! install` deploys, on that pod's ServiceAccount token, or anywhere a kubeconfig points.

use std::time::Duration;

use stator_kube::install::{DEFAULT_NAMESPACE, HEALTH_PORT};
use stator_kube::render::DEFAULT_STATOR_IMAGE;
use stator_operator::OperatorOptions;

use crate::error::{CliError, CliResult};

/// Run the Kubernetes operator: reconcile every Database, and keep each one available (the
/// same failover core as `stator up`). Only the holder of the Lease acts; others wait.
#[derive(clap::Args, Debug)]
pub struct OperatorArgs {
    /// Namespace the operator runs in (its Lease lives there).
    #[arg(long, env = "POD_NAMESPACE", default_value = DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// This operator's name in the Lease and in Events (default: the host name).
    #[arg(long, env = "POD_NAME")]
    pub identity: Option<String>,
    /// The Stator image the database pods copy the binary from.
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_STATOR_IMAGE)]
    pub stator_image: String,
    /// Seconds a Lease holder may go without renewing before another takes over.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    pub lease_seconds: u64,
    /// Milliseconds between two rounds of a Database's failover loop.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=60000))]
    pub tick_ms: u64,
    /// Port of /healthz and /readyz (0: none).
    #[arg(long, default_value_t = HEALTH_PORT)]
    pub health_port: u16,
}

pub fn run(args: OperatorArgs) -> CliResult {
    let identity = args.identity.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_else(|_| "stator-operator".into())
    });
    let options = OperatorOptions {
        namespace: args.namespace,
        stator_image: args.stator_image,
        identity,
        lease_duration: Duration::from_secs(args.lease_seconds),
        tick: Duration::from_millis(args.tick_ms),
        ha_loops: true,
    };
    one_malloc_arena();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(async move {
        let client = stator_operator::kube_cli::client()
            .await
            .map_err(|e| CliError::Failed(e.to_string()))?;
        if args.health_port != 0 {
            let port = args.health_port;
            tokio::spawn(async move {
                if let Err(e) = stator_operator::health::serve(port).await {
                    tracing::error!("cannot serve /healthz on port {port}: {e}");
                }
            });
        }
        trim_heap_periodically();
        stator_operator::run(client, options).await;
        // The Lease was lost: stop, so the Deployment starts a fresh, passive process.
        Err(CliError::Failed("lost the leader Lease; stopping".into()))
    })
}

/// glibc gives each thread that allocates its own malloc arena and keeps what each one freed:
/// the operator's worker threads took turns on the same small, short-lived allocations (API
/// answers, probes) and its RSS grew by the arenas' fragments. One arena: the allocations are
/// the same, only their home is shared (the operator's work is I/O, not contended malloc).
fn one_malloc_arena() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; it is called before any other thread
    // of this process exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

/// glibc keeps the pages of freed allocations in its arena (the burst of API answers while
/// every Database is first listed and reconciled, a list after a watch restarts) and gives
/// them back to the kernel only when asked: asked every 10 s, so the resident set follows
/// what the operator holds rather than its busiest moment.
fn trim_heap_periodically() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(async {
        let mut every = tokio::time::interval(Duration::from_secs(10));
        loop {
            every.tick().await;
            // SAFETY: malloc_trim only hands free pages of the heap back to the kernel; it
            // takes the arena's lock as any allocation does.
            unsafe {
                libc::malloc_trim(0);
            }
        }
    });
}
