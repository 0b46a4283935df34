//! The managed instance manager (`stator instance --pod --managed`, the operator's pods): it
//! never picks its role. The runtime that manages it (the operator) gives orders over HTTP,
//! with the bearer token; their bodies are [`stator_api::orders`]:
//!
//! - an empty data directory stays empty (no initdb, no clone) until `POST /bootstrap`
//!   (`init`, or `clone` from a named upstream);
//! - a data directory that was a primary's is started only on `POST /role` (`primary`: as it
//!   is; `replica`: made to follow the named upstream first, pg_rewind / a GTID re-point). A
//!   server still running on it when the manager starts is stopped cleanly first. While it
//!   waits, a cleanly stopped PostgreSQL primary reports its final checkpoint as its role and
//!   position in `/status`. A replica's data directory starts on its own (it is read-only and
//!   follows the upstream its marker names);
//! - `POST /fence` (`kill`: SIGKILL of the server and every process under it; `shutdown`: a clean stop;
//!   `read-only`: it keeps running, refusing writes) is held until `POST /fence
//!   {"release": true}` or `DELETE /fence`; a fenced manager never starts or restarts its
//!   server. After a fence that stopped the server (or a server that died while fenced) a
//!   former primary waits for `POST /role` again once released;
//! - `POST /rebuild` stops the server, moves the data directory aside within its volume
//!   (`.NAME.stator-old` beside it), clones the named upstream into its place, and deletes the
//!   old copy only once the clone succeeded; a failed clone puts the old copy back. A manager
//!   killed during a rebuild finds the old copy at its next start and puts it back (the clone
//!   was not complete) or deletes it (it was);
//! - `GET /status?fresh=1` queries the server now, within [`FRESH_TIMEOUT`] (for every
//!   manager, managed or not).
//!
//! A refused order answers 409 saying why and what would be accepted; a bad body 400 naming
//! the field. `/promote`, `/demote` and `/reload` work as for every manager.
//!
//! In lease mode (`--managed --lease`, [`crate::self_fencing`]) it also takes `POST /lease`
//! and `POST /confirm`; a primary's data directory starts only while this instance holds a
//! valid write lease (after `/role primary` or `/bootstrap init`, it waits for one), a
//! crashed primary is not restarted without one, `/promote` needs one, and a server killed
//! by the lease's watchdog is held as under a `kill` fence, reported "fenced (kill) by lease
//! expiry".

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde::Deserialize;
use stator_api::instance::{Endpoint, ServerState};
use stator_api::orders::{BootstrapOrder, FenceKind, RoleOrder};
use stator_engine::{DataDirState, ServerEngine, ServerProcess};

use crate::error::InstanceError;
use crate::http::{Endpoints, ask, check_token, error, json_body};
use crate::self_fencing::SelfFencing;
use crate::supervisor::{Backoff, Command, Reply, Served, Supervisor};

/// How long `GET /status?fresh=1` waits for the server's answer: within the operator's probe
/// timeout (1.5 s), so a hung server is reported as hung rather than its manager taken for
/// unreachable, and short, since the operator's loop waits for the slowest pod each tick
/// (a healthy server answers in milliseconds).
pub const FRESH_TIMEOUT: Duration = Duration::from_secs(1);

/// An order, parsed and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Order {
    Bootstrap(BootstrapOrder),
    Role(RoleOrder),
    Fence(FenceKind),
    Release,
    Rebuild(Endpoint),
}

/// True when a `/status` query string asks for a fresh report (`fresh=1` or `fresh=true`).
pub fn asks_fresh(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|pair| matches!(pair, "fresh" | "fresh=1" | "fresh=true"))
    })
}

// ---- Request bodies -------------------------------------------------------------------------

const ENDPOINT_SHAPE: &str = r#"{"instance": "NAME-N", "host": "…", "port": N}"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BootstrapBody {
    kind: Option<String>,
    upstream: Option<Endpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleBody {
    role: Option<String>,
    upstream: Option<Endpoint>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FenceBody {
    kind: Option<String>,
    release: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RebuildBody {
    upstream: Option<Endpoint>,
}

/// An upstream that can be connected to, or why not (naming `field`).
fn checked_upstream(field: &str, upstream: Option<Endpoint>) -> Result<Endpoint, String> {
    let Some(u) = upstream else {
        return Err(format!("{field}: missing; expected {ENDPOINT_SHAPE}"));
    };
    if u.instance.trim().is_empty() {
        return Err(format!("{field}.instance: empty; expected NAME-N"));
    }
    if u.host.trim().is_empty() {
        return Err(format!(
            "{field}.host: empty; expected a host name or address"
        ));
    }
    if u.port == 0 {
        return Err(format!("{field}.port: 0 is not a port; expected 1-65535"));
    }
    Ok(u)
}

/// One of two choices named by `field`: `plain.0` (refused with an upstream, saying
/// `plain.2`) or `follows.0` (which needs one).
fn choose(
    field: &str,
    given: Option<&str>,
    upstream: Option<Endpoint>,
    plain: (&str, Order, &str),
    follows: (&str, fn(Endpoint) -> Order),
) -> Result<Order, String> {
    let (plain_name, plain_order, no_upstream) = plain;
    let (follows_name, follows_order) = follows;
    match given {
        None => Err(format!(
            "{field}: missing; expected {plain_name:?} or {follows_name:?}"
        )),
        Some(v) if v == plain_name && upstream.is_some() => Err(format!(
            "upstream: only with {field} {follows_name:?}; {no_upstream}"
        )),
        Some(v) if v == plain_name => Ok(plain_order),
        Some(v) if v == follows_name => Ok(follows_order(checked_upstream("upstream", upstream)?)),
        Some(other) => Err(format!(
            "{field}: {other:?} is not {plain_name:?} or {follows_name:?}"
        )),
    }
}

/// `POST /bootstrap`.
pub fn parse_bootstrap(body: &[u8]) -> Result<Order, String> {
    let b: BootstrapBody = json_body(
        body,
        &format!(r#"{{"kind": "init"}} or {{"kind": "clone", "upstream": {ENDPOINT_SHAPE}}}"#),
    )?;
    choose(
        "kind",
        b.kind.as_deref(),
        b.upstream,
        (
            "init",
            Order::Bootstrap(BootstrapOrder::Init),
            r#""init" creates a new primary"#,
        ),
        ("clone", |upstream| {
            Order::Bootstrap(BootstrapOrder::Clone { upstream })
        }),
    )
}

/// `POST /role`.
pub fn parse_role(body: &[u8]) -> Result<Order, String> {
    let b: RoleBody = json_body(
        body,
        &format!(r#"{{"role": "primary"}} or {{"role": "replica", "upstream": {ENDPOINT_SHAPE}}}"#),
    )?;
    choose(
        "role",
        b.role.as_deref(),
        b.upstream,
        (
            "primary",
            Order::Role(RoleOrder::Primary),
            "a primary follows no one",
        ),
        ("replica", |upstream| {
            Order::Role(RoleOrder::Replica { upstream })
        }),
    )
}

/// `POST /fence`.
pub fn parse_fence(body: &[u8]) -> Result<Order, String> {
    let b: FenceBody = json_body(
        body,
        r#"{"kind": "kill" | "shutdown" | "read-only"} or {"release": true}"#,
    )?;
    match (b.kind.as_deref(), b.release) {
        (Some(_), Some(_)) => Err(
            r#"kind, release: give one: {"kind": …} sets a fence, {"release": true} releases it"#
                .into(),
        ),
        (None, Some(true)) => Ok(Order::Release),
        (None, Some(false)) => {
            Err(r#"release: false releases nothing; send {"release": true} or {"kind": …}"#.into())
        }
        (None, None) => Err(
            r#"kind: missing; expected "kill", "shutdown" or "read-only" (or "release": true)"#
                .into(),
        ),
        (Some("kill"), None) => Ok(Order::Fence(FenceKind::Kill)),
        (Some("shutdown"), None) => Ok(Order::Fence(FenceKind::Shutdown)),
        (Some("read-only"), None) => Ok(Order::Fence(FenceKind::ReadOnly)),
        (Some(other), None) => Err(format!(
            r#"kind: {other:?} is not "kill", "shutdown" or "read-only""#
        )),
    }
}

/// `POST /rebuild`.
pub fn parse_rebuild(body: &[u8]) -> Result<Order, String> {
    let b: RebuildBody = json_body(body, &format!(r#"{{"upstream": {ENDPOINT_SHAPE}}}"#))?;
    Ok(Order::Rebuild(checked_upstream("upstream", b.upstream)?))
}

// ---- Endpoints ------------------------------------------------------------------------------

/// The order endpoints, merged into [`crate::http::router`]'s in managed mode.
pub fn router(endpoints: Endpoints) -> Router {
    let orders = Router::new()
        .route("/bootstrap", post(bootstrap))
        .route("/role", post(role))
        .route("/fence", post(fence).delete(release))
        .route("/rebuild", post(rebuild));
    let orders = if endpoints.lease.is_some() {
        orders
            .route("/lease", post(crate::self_fencing::lease))
            .route("/confirm", post(crate::self_fencing::confirm))
    } else {
        orders
    };
    orders.with_state(endpoints)
}

async fn order(
    e: &Endpoints,
    headers: &HeaderMap,
    parsed: impl FnOnce() -> Result<Order, String>,
) -> Response {
    if let Some(refused) = check_token(e, headers) {
        return refused;
    }
    let order = match parsed() {
        Ok(o) => o,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    tracing::info!(order = ?order, "order received");
    ask(e, |r| Command::Order(order, r)).await
}

async fn bootstrap(State(e): State<Endpoints>, headers: HeaderMap, body: Bytes) -> Response {
    order(&e, &headers, || parse_bootstrap(&body)).await
}

async fn role(State(e): State<Endpoints>, headers: HeaderMap, body: Bytes) -> Response {
    order(&e, &headers, || parse_role(&body)).await
}

async fn fence(State(e): State<Endpoints>, headers: HeaderMap, body: Bytes) -> Response {
    order(&e, &headers, || parse_fence(&body)).await
}

async fn release(State(e): State<Endpoints>, headers: HeaderMap) -> Response {
    order(&e, &headers, || Ok(Order::Release)).await
}

async fn rebuild(State(e): State<Endpoints>, headers: HeaderMap, body: Bytes) -> Response {
    order(&e, &headers, || parse_rebuild(&body)).await
}

// ---- The life of a managed server -----------------------------------------------------------

/// Where a rebuild keeps the old data directory until the clone succeeded: beside it, on the
/// same volume (a rename, never a copy).
pub fn aside_dir(data_dir: &Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    data_dir.with_file_name(format!(".{name}.stator-old"))
}

/// Waits for a grant in lease mode; never otherwise.
async fn lease_granted(lease: Option<&SelfFencing>) {
    match lease {
        Some(l) => l.granted().await,
        None => std::future::pending().await,
    }
}

/// What to do next.
enum Next {
    Start,
    /// The server stopped on an order (fence, rebuild): decide again.
    Decide,
    Exit,
}

/// The supervisor of a managed server: the plain [`Supervisor`]'s steps (start, serve,
/// promote, demote), run only as the orders say.
pub struct ManagedSupervisor<E: ServerEngine> {
    inner: Supervisor<E>,
    data_dir: PathBuf,
    /// The fence held, if any.
    fence: Option<FenceKind>,
    /// The data directory may start as the primary it was (a `/role primary` or a `/bootstrap
    /// init` said so since the last fence or start of the manager).
    primary_allowed: bool,
    /// Lease mode: a primary starts only under a valid write lease.
    lease: Option<Arc<SelfFencing>>,
}

impl<E: ServerEngine> ManagedSupervisor<E> {
    pub fn new(inner: Supervisor<E>, data_dir: PathBuf) -> Self {
        ManagedSupervisor {
            inner,
            data_dir,
            fence: None,
            primary_allowed: false,
            lease: None,
        }
    }

    /// In lease mode.
    pub fn with_lease(mut self, lease: Option<Arc<SelfFencing>>) -> Self {
        self.lease = lease;
        self
    }

    /// Why the lease's watchdog killed the server, when it did: the fence is held as a `kill`
    /// fence from then on.
    fn lease_fence(&mut self) -> Option<String> {
        let why = self.lease.as_ref()?.fenced()?;
        if self.fence.is_none() {
            self.fence = Some(FenceKind::Kill);
            self.primary_allowed = false;
        }
        Some(why)
    }

    /// Lease mode without a valid write lease: a primary must not start.
    fn lacks_write_lease(&self) -> bool {
        self.lease.as_ref().is_some_and(|l| !l.holds_write_lease())
    }

    /// Runs until shut down (Ok) or until the data directory cannot be used (Err).
    pub async fn run(mut self) -> Result<(), InstanceError> {
        self.recover_interrupted_rebuild();
        loop {
            match self.hold().await? {
                Next::Exit => return Ok(()),
                Next::Decide => continue,
                Next::Start => {}
            }
            match self.run_server().await? {
                Next::Exit => return Ok(()),
                Next::Start | Next::Decide => continue,
            }
        }
    }

    fn status(&self) -> &crate::status::InstanceStatus {
        &self.inner.status
    }

    /// A rebuild interrupted by the manager's death: the old copy goes back in place when the
    /// clone did not finish, and is deleted when it did.
    fn recover_interrupted_rebuild(&self) {
        let aside = aside_dir(&self.data_dir);
        if !aside.exists() {
            return;
        }
        match self.inner.engine.inspect_data_dir() {
            Ok(DataDirState::Empty) => {
                let _ = std::fs::remove_dir(&self.data_dir);
                match std::fs::rename(&aside, &self.data_dir) {
                    Ok(()) => tracing::warn!(
                        aside = %aside.display(),
                        "a rebuild was interrupted before its clone completed: the old data directory is back in place"
                    ),
                    Err(e) => tracing::error!(
                        error = %e,
                        aside = %aside.display(),
                        "cannot put the old data directory of an interrupted rebuild back"
                    ),
                }
            }
            Ok(DataDirState::Ready(_)) => {
                tracing::info!(aside = %aside.display(), "removing the old data directory of a completed rebuild");
                if let Err(e) = std::fs::remove_dir_all(&aside) {
                    tracing::warn!(error = %e, "cannot remove the old data directory");
                }
            }
            Err(_) => {}
        }
    }

    /// Keeps the server stopped until it may start, carrying out the orders meanwhile.
    async fn hold(&mut self) -> Result<Next, InstanceError> {
        let state = self
            .inner
            .engine
            .inspect_data_dir()
            .map_err(|e| self.inner.fail(e))?;
        let holds_data = matches!(state, DataDirState::Ready(_));
        let was_primary = matches!(&state, DataDirState::Ready(m) if m.follows.is_none());
        self.status().update(|s| s.holds_data = Some(holds_data));
        let by_lease = self.lease_fence();
        let mut waits_for_lease = false;
        let waiting = match (&self.fence, &state) {
            (Some(_), _) if by_lease.is_some() => format!(
                "{}; the server stays stopped until POST /fence {{\"release\": true}} or DELETE /fence",
                by_lease.as_deref().unwrap_or_default()
            ),
            (Some(kind), _) => format!(
                "fenced ({}): the server stays stopped until POST /fence {{\"release\": true}} or DELETE /fence",
                kind.as_str()
            ),
            (None, DataDirState::Empty) => {
                "the data dir is empty: waiting for POST /bootstrap (init, or clone from an upstream)".into()
            }
            (None, DataDirState::Ready(_)) if was_primary && !self.primary_allowed => {
                "the data dir was a primary's: waiting for POST /role (primary, or replica of an upstream)".into()
            }
            (None, DataDirState::Ready(_)) if was_primary && self.lacks_write_lease() => {
                waits_for_lease = true;
                format!(
                    "the data dir is a primary's and this manager is in lease mode: waiting for POST /lease naming {} as the writer",
                    self.status().name
                )
            }
            (None, DataDirState::Ready(_)) => return Ok(Next::Start),
        };
        if was_primary {
            self.stop_leftover_server().await?;
        }
        // The final checkpoint first, the waiting state after it: a report that says it waits
        // for its role carries the position the core decides on (it read `role: null` for a
        // moment under load before).
        let checkpoint = if was_primary {
            self.inner.engine.final_checkpoint().await
        } else {
            None
        };
        self.status().update(|s| s.final_checkpoint = checkpoint);
        self.status()
            .set_state(ServerState::Stopped, Some(waiting.clone()));
        tracing::info!("{waiting}");
        let lease = self.lease.clone();
        loop {
            let command = tokio::select! {
                command = self.inner.commands.recv() => command,
                _ = lease_granted(lease.as_deref()), if waits_for_lease => {
                    if self.lacks_write_lease() {
                        continue;
                    }
                    tracing::info!("a write lease names this instance: starting its primary");
                    return Ok(Next::Decide);
                }
            };
            let Some(command) = command else {
                return Ok(Next::Exit);
            };
            let (order, reply) = match command {
                Command::Shutdown => return Ok(Next::Exit),
                Command::Promote(r) | Command::Demote(_, r) | Command::Reload(_, r) => {
                    let _ = r.send(Err(format!("the server is not running: {waiting}")));
                    continue;
                }
                Command::Order(order, reply) => (order, reply),
            };
            match order {
                Order::Fence(kind) => {
                    self.fence = Some(kind);
                    self.primary_allowed = false;
                    let _ = reply.send(Ok(format!(
                        "fenced ({}); the server is not running and stays stopped",
                        kind.as_str()
                    )));
                    return Ok(Next::Decide);
                }
                Order::Release => {
                    if holds_data {
                        // A read-only fence must not outlive its release in the next start's
                        // configuration.
                        if let Err(e) = self
                            .inner
                            .engine
                            .set_read_only(&self.inner.creds, false)
                            .await
                        {
                            let _ = reply.send(Err(format!("releasing the fence failed: {e}")));
                            continue;
                        }
                    }
                    if let Some(lease) = &self.lease {
                        lease.release();
                    }
                    let _ = reply.send(Ok(match self.fence.take() {
                        Some(kind) => format!("released the {} fence", kind.as_str()),
                        None => "not fenced".into(),
                    }));
                    return Ok(Next::Decide);
                }
                _ if self.fence.is_some() => {
                    let _ = reply.send(Err(waiting.clone()));
                }
                Order::Bootstrap(how) => {
                    if holds_data {
                        let _ = reply.send(Err(
                            "the data dir holds data; POST /rebuild replaces it".into(),
                        ));
                        continue;
                    }
                    let result = self.bootstrap(how).await;
                    let done = result.is_ok();
                    let _ = reply.send(result);
                    if done {
                        return Ok(Next::Decide);
                    }
                    self.status()
                        .set_state(ServerState::Stopped, Some(waiting.clone()));
                }
                Order::Role(role) => {
                    let waits_for_role = was_primary && !self.primary_allowed;
                    if !waits_for_role {
                        let _ = reply.send(Err(format!(
                            "not waiting for a role ({waiting}); /promote and /demote change a running server's role"
                        )));
                        continue;
                    }
                    match role {
                        RoleOrder::Primary => {
                            self.primary_allowed = true;
                            let _ = reply.send(Ok("starting as the primary".into()));
                            return Ok(Next::Start);
                        }
                        RoleOrder::Replica { upstream } => {
                            match self.inner.engine.rejoin(&upstream, &self.inner.creds).await {
                                Ok(()) => {
                                    let _ = reply.send(Ok(format!(
                                        "now follows {}; starting as a replica",
                                        upstream.instance
                                    )));
                                    return Ok(Next::Start);
                                }
                                Err(e) => {
                                    // Errant transactions never go away by asking again: the
                                    // report says so (`errant`), so the core orders a rebuild
                                    // instead of the same rejoin (the node-freeze drill found
                                    // a thawed MariaDB primary refused /role every minute).
                                    if crate::supervisor::holds_errant_transactions(&e) {
                                        self.status().record_errant(
                                            Some(stator_api::Role::Primary),
                                            e.to_string(),
                                        );
                                    }
                                    let _ = reply.send(Err(e.to_string()));
                                }
                            }
                        }
                    }
                }
                Order::Rebuild(upstream) => {
                    if !holds_data {
                        let _ = reply
                            .send(Err("the data dir is empty: POST /bootstrap fills it".into()));
                        continue;
                    }
                    let _ = reply.send(self.rebuild(&upstream).await);
                    return Ok(Next::Decide);
                }
            }
        }
    }

    /// A server still running on a primary's data directory (left by a killed manager) is
    /// stopped cleanly: a primary runs only when the orders say so.
    async fn stop_leftover_server(&mut self) -> Result<(), InstanceError> {
        if let Some(mut running) = self
            .inner
            .engine
            .find_running()
            .map_err(|e| self.inner.fail(e))?
        {
            tracing::warn!(
                pid = running.pid(),
                "a server runs on a primary's data dir without an order: stopping it cleanly"
            );
            let how = self
                .inner
                .engine
                .stop(&mut running, self.inner.stop_timeout)
                .await;
            tracing::info!(how = %how, "stopped");
        }
        Ok(())
    }

    /// `/bootstrap` on an empty data directory.
    async fn bootstrap(&mut self, how: BootstrapOrder) -> Result<String, String> {
        let engine = self.inner.engine.clone();
        let creds = self.inner.creds.clone();
        let result = match &how {
            BootstrapOrder::Init => {
                self.status().set_state(
                    ServerState::Initializing,
                    Some("initializing a new primary".into()),
                );
                engine
                    .initialize(&creds)
                    .await
                    .map(|()| "initialized a new primary; starting it".to_string())
            }
            BootstrapOrder::Clone { upstream } => {
                self.status().set_state(
                    ServerState::Initializing,
                    Some(format!("cloning {}", upstream.instance)),
                );
                engine
                    .clone_upstream(upstream, &creds)
                    .await
                    .map(|()| format!("cloned {}; starting as its replica", upstream.instance))
            }
        };
        match result {
            Ok(done) => {
                self.primary_allowed = how == BootstrapOrder::Init;
                self.status().update(|s| s.holds_data = Some(true));
                Ok(done)
            }
            Err(e) => {
                tracing::warn!(error = %e, "bootstrap failed; the data dir stays empty");
                Err(e.to_string())
            }
        }
    }

    /// `/rebuild` with the server stopped: the old data aside, a clone of `upstream` in its
    /// place, the old data deleted only then (put back when the clone failed).
    async fn rebuild(&mut self, upstream: &Endpoint) -> Result<String, String> {
        // Never move a data dir from under a live server, whatever this manager believes of
        // its child (a server it lost track of, one restarting after a crash): checked on the
        // data dir itself (postmaster.pid / the server's working directory).
        match self.inner.engine.find_running() {
            Ok(None) => {}
            Ok(Some(running)) => {
                return Err(format!(
                    "a server (pid {}) still runs on {}: the data is not moved; fence it first",
                    running.pid(),
                    self.data_dir.display()
                ));
            }
            Err(e) => return Err(format!("cannot tell whether a server runs: {e}")),
        }
        let aside = aside_dir(&self.data_dir);
        if aside.exists() {
            // A completed earlier rebuild's leftover (the data dir holds data).
            std::fs::remove_dir_all(&aside)
                .map_err(|e| format!("cannot remove {}: {e}", aside.display()))?;
        }
        std::fs::rename(&self.data_dir, &aside).map_err(|e| {
            format!(
                "cannot move {} aside to {} (it must be on the same volume): {e}",
                self.data_dir.display(),
                aside.display()
            )
        })?;
        self.status().update(|s| {
            s.holds_data = Some(false);
            s.final_checkpoint = None;
        });
        self.status().set_state(
            ServerState::Initializing,
            Some(format!(
                "rebuilding: cloning {}; the old data is kept at {} until the clone succeeded",
                upstream.instance,
                aside.display()
            )),
        );
        tracing::info!(upstream = %upstream.instance, aside = %aside.display(), "rebuilding");
        match self
            .inner
            .engine
            .clone_upstream(upstream, &self.inner.creds)
            .await
        {
            Ok(()) => {
                self.status().update(|s| s.holds_data = Some(true));
                self.primary_allowed = false;
                if let Err(e) = std::fs::remove_dir_all(&aside) {
                    tracing::warn!(error = %e, aside = %aside.display(), "cannot remove the old data directory");
                }
                Ok(format!(
                    "rebuilt: cloned {}; the old data was removed",
                    upstream.instance
                ))
            }
            Err(e) => {
                let _ = std::fs::remove_dir(&self.data_dir);
                let back = std::fs::rename(&aside, &self.data_dir);
                self.status().update(|s| s.holds_data = Some(back.is_ok()));
                Err(match back {
                    Ok(()) => format!(
                        "cloning {} failed, the old data is back in place: {e}",
                        upstream.instance
                    ),
                    Err(back) => format!(
                        "cloning {} failed: {e}; the old data is kept at {} (cannot move it back: {back})",
                        upstream.instance,
                        aside.display()
                    ),
                })
            }
        }
    }

    /// Starts (or adopts) the server and serves it until it stops.
    async fn run_server(&mut self) -> Result<Next, InstanceError> {
        let mut backoff = Backoff::default();
        let mut pending: Option<Reply> = None;
        loop {
            // A lease fence the watchdog recorded while no server ran (a clean stop under
            // way): held as any fence, never a start.
            if self.lease_fence().is_some() {
                if let Some(reply) = pending.take() {
                    let _ = reply.send(Err(
                        "fenced by lease expiry: the server stays stopped".into()
                    ));
                }
                return Ok(Next::Decide);
            }
            if self.lacks_write_lease() {
                let primary = matches!(
                    self.inner.engine.inspect_data_dir(),
                    Ok(DataDirState::Ready(m)) if m.follows.is_none()
                );
                if primary {
                    // hold() says it waits for a lease.
                    if let Some(reply) = pending.take() {
                        let _ =
                            reply.send(Err("no write lease: the primary is not started".into()));
                    }
                    return Ok(Next::Decide);
                }
            }
            let mut server = self.start_server()?;
            if let Some(reply) = pending.take() {
                let _ = reply.send(Ok("rejoined; the server is starting as a replica".into()));
            }
            let started = Instant::now();
            let served = loop {
                match self.inner.serve(&mut server).await {
                    Served::Order(order, reply) => {
                        if let Some(next) = self.obey_while_running(&mut server, order, reply).await
                        {
                            return Ok(next);
                        }
                    }
                    other => break other,
                }
            };
            match served {
                Served::Order(_, reply) => {
                    let _ = reply.send(Err("not carried out".into()));
                }
                Served::Shutdown => {
                    self.status()
                        .set_state(ServerState::Stopped, Some("shutting down".into()));
                    let how = self
                        .inner
                        .engine
                        .stop(&mut server, self.inner.stop_timeout)
                        .await;
                    tracing::info!(how = %how, "server stopped");
                    self.status().update(|s| s.pid = None);
                    return Ok(Next::Exit);
                }
                Served::Exited(how) => {
                    self.status().update(|s| s.pid = None);
                    let by_lease = self.lease_fence();
                    if let Some(kind) = self.fence {
                        tracing::warn!(how = %how, "the server died while fenced; it is not restarted");
                        self.primary_allowed = false;
                        let message = match by_lease {
                            Some(why) => {
                                format!("{why}; the server {how} and stays down until released")
                            }
                            None => format!(
                                "server {how} while fenced ({}); not restarted",
                                kind.as_str()
                            ),
                        };
                        self.status().set_state(ServerState::Stopped, Some(message));
                        return Ok(Next::Decide);
                    }
                    let delay = backoff.next_delay(started.elapsed());
                    tracing::warn!(how = %how, delay_ms = delay.as_millis() as u64, "the server died; restarting it");
                    self.status()
                        .update(|s| s.restarts = s.restarts.saturating_add(1));
                    self.status().set_state(
                        ServerState::Crashed,
                        Some(format!("server {how}; restarting in {}s", delay.as_secs())),
                    );
                    if let Some(next) = self.pause(delay).await {
                        return Ok(next);
                    }
                }
                Served::Rejoin(upstream, reply) => {
                    match self
                        .inner
                        .demote_stopping(&mut server, upstream, reply)
                        .await
                    {
                        Some(reply) => pending = Some(reply),
                        None => {
                            self.status().set_state(ServerState::Stopped, None);
                            return Ok(Next::Exit);
                        }
                    }
                }
            }
        }
    }

    fn start_server(&mut self) -> Result<ServerProcess, InstanceError> {
        let engine = self.inner.engine.clone();
        engine
            .write_config(&self.inner.creds)
            .map_err(|e| self.inner.fail(e))?;
        let server = match engine.find_running().map_err(|e| self.inner.fail(e))? {
            Some(running) => {
                tracing::info!(
                    pid = running.pid(),
                    "adopting the server already running on the data directory"
                );
                if let Err(e) = engine.reload_config(&running) {
                    tracing::warn!(error = %e, "reloading the adopted server's configuration");
                }
                running
            }
            None => engine.start().map_err(|e| self.inner.fail(e))?,
        };
        let adopted = server.is_adopted();
        self.status().update(|s| {
            s.pid = Some(server.pid());
            s.adopted = adopted;
            s.state = ServerState::Starting;
            s.message = None;
            s.final_checkpoint = None;
        });
        Ok(server)
    }

    /// The restart delay after a crash, carrying out orders meanwhile: `Some` when the server
    /// must not be restarted now (a fence, a rebuild, a shutdown).
    async fn pause(&mut self, delay: Duration) -> Option<Next> {
        let until = tokio::time::Instant::now() + delay;
        loop {
            let command = tokio::select! {
                _ = tokio::time::sleep_until(until) => return None,
                command = self.inner.commands.recv() => command,
            };
            match command {
                None | Some(Command::Shutdown) => return Some(Next::Exit),
                Some(Command::Promote(r))
                | Some(Command::Demote(_, r))
                | Some(Command::Reload(_, r)) => {
                    let _ = r.send(Err(
                        "the server is not running (restarting after a crash)".into()
                    ));
                }
                Some(Command::Order(order @ (Order::Fence(_) | Order::Rebuild(_)), reply)) => {
                    // The server is down: the same as an order while it waits.
                    self.status().set_state(ServerState::Stopped, None);
                    return Some(self.obey_while_stopped(order, reply).await);
                }
                Some(Command::Order(Order::Release, reply)) => {
                    let _ = reply.send(Ok("not fenced".into()));
                }
                Some(Command::Order(_, reply)) => {
                    let _ = reply.send(Err(
                        "the data dir holds data and its server is restarting after a crash".into(),
                    ));
                }
            }
        }
    }

    /// A fence or rebuild ordered while the server is down.
    async fn obey_while_stopped(&mut self, order: Order, reply: Reply) -> Next {
        match order {
            Order::Fence(kind) => {
                self.fence = Some(kind);
                self.primary_allowed = false;
                let _ = reply.send(Ok(format!(
                    "fenced ({}); the server is not running and stays stopped",
                    kind.as_str()
                )));
            }
            Order::Rebuild(upstream) => {
                let _ = reply.send(self.rebuild(&upstream).await);
            }
            _ => {
                let _ = reply.send(Err("not carried out".into()));
            }
        }
        Next::Decide
    }

    /// An order while the server runs: `None` to go on serving it, `Some` when it stopped.
    async fn obey_while_running(
        &mut self,
        server: &mut ServerProcess,
        order: Order,
        reply: Reply,
    ) -> Option<Next> {
        match order {
            Order::Fence(FenceKind::Kill) => {
                let pid = server.pid();
                tracing::warn!(pid, "fence: killing the server and every process under it");
                let how = server.kill_tree().await;
                self.stopped_by_fence(FenceKind::Kill);
                let _ = reply.send(Ok(format!(
                    "fenced (kill): the server (pid {pid}) {how}; it stays down until released"
                )));
                Some(Next::Decide)
            }
            Order::Fence(FenceKind::Shutdown) => {
                tracing::info!("fence: stopping the server cleanly");
                let how = self
                    .inner
                    .engine
                    .stop(server, self.inner.stop_timeout)
                    .await;
                self.stopped_by_fence(FenceKind::Shutdown);
                let checkpoint = self.inner.engine.final_checkpoint().await;
                let said = match &checkpoint {
                    Some(c) => format!("; final checkpoint {} on timeline {}", c.lsn, c.timeline),
                    None => String::new(),
                };
                self.status().update(|s| s.final_checkpoint = checkpoint);
                let _ = reply.send(Ok(format!(
                    "fenced (shutdown): the server {how}{said}; it stays down until released"
                )));
                Some(Next::Decide)
            }
            Order::Fence(FenceKind::ReadOnly) => {
                let result = self
                    .inner
                    .engine
                    .set_read_only(&self.inner.creds, true)
                    .await;
                let _ = reply.send(match result {
                    Ok(()) => {
                        self.fence = Some(FenceKind::ReadOnly);
                        Ok(
                            "fenced (read-only): the server runs and refuses writes until released"
                                .into(),
                        )
                    }
                    Err(e) => Err(format!("fencing read-only failed: {e}")),
                });
                None
            }
            Order::Release => {
                let result = match self.fence {
                    Some(FenceKind::ReadOnly) => self
                        .inner
                        .engine
                        .set_read_only(&self.inner.creds, false)
                        .await
                        .map(|()| "released the read-only fence: the server takes writes as its role allows".to_string())
                        .map_err(|e| format!("releasing the read-only fence failed: {e}")),
                    _ => Ok("not fenced".into()),
                };
                if result.is_ok() {
                    self.fence = None;
                }
                let _ = reply.send(result);
                None
            }
            Order::Bootstrap(_) => {
                let _ = reply.send(Err(
                    "the data dir holds data and its server runs; POST /rebuild replaces the data"
                        .into(),
                ));
                None
            }
            Order::Role(_) => {
                let _ = reply.send(Err(
                    "the server runs; POST /promote or /demote change its role".into(),
                ));
                None
            }
            Order::Rebuild(upstream) => {
                self.status().set_state(
                    ServerState::Stopped,
                    Some(format!(
                        "rebuilding from {}: stopping the server",
                        upstream.instance
                    )),
                );
                let how = self
                    .inner
                    .engine
                    .stop(server, self.inner.stop_timeout)
                    .await;
                tracing::info!(how = %how, "stopped for a rebuild");
                self.status().update(|s| s.pid = None);
                let _ = reply.send(self.rebuild(&upstream).await);
                Some(Next::Decide)
            }
        }
    }

    /// The server was stopped by a fence of `kind`: held, and a former primary waits for
    /// `/role` once released.
    fn stopped_by_fence(&mut self, kind: FenceKind) {
        self.fence = Some(kind);
        self.primary_allowed = false;
        self.status().update(|s| s.pid = None);
        self.status().set_state(
            ServerState::Stopped,
            Some(format!("fenced ({})", kind.as_str())),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Endpoint {
        Endpoint {
            instance: "db-0".into(),
            host: "db-0.db-headless".into(),
            port: 5432,
        }
    }

    const UPSTREAM: &str = r#"{"instance": "db-0", "host": "db-0.db-headless", "port": 5432}"#;

    #[test]
    fn bootstrap_bodies_parse_into_orders() {
        assert_eq!(
            parse_bootstrap(br#"{"kind": "init"}"#),
            Ok(Order::Bootstrap(BootstrapOrder::Init))
        );
        assert_eq!(
            parse_bootstrap(format!(r#"{{"kind": "clone", "upstream": {UPSTREAM}}}"#).as_bytes()),
            Ok(Order::Bootstrap(BootstrapOrder::Clone {
                upstream: endpoint()
            }))
        );
    }

    /// Each bad body is refused with the field it is about.
    fn refused(result: Result<Order, String>, field: &str) {
        let why = result.expect_err("refused");
        assert!(why.contains(field), "{why:?} does not name {field:?}");
    }

    #[test]
    fn bad_bootstrap_bodies_name_the_field() {
        refused(parse_bootstrap(b"{}"), "kind");
        refused(parse_bootstrap(br#"{"kind": "initdb"}"#), "kind");
        refused(parse_bootstrap(br#"{"kind": "clone"}"#), "upstream");
        refused(
            parse_bootstrap(format!(r#"{{"kind": "init", "upstream": {UPSTREAM}}}"#).as_bytes()),
            "upstream",
        );
        refused(
            parse_bootstrap(
                br#"{"kind": "clone", "upstream": {"instance": "db-0", "host": "", "port": 5432}}"#,
            ),
            "upstream.host",
        );
        refused(
            parse_bootstrap(
                br#"{"kind": "clone", "upstream": {"instance": "db-0", "host": "h", "port": 0}}"#,
            ),
            "upstream.port",
        );
        refused(
            parse_bootstrap(br#"{"kind": "clone", "upstream": {"instance": "db-0", "host": "h"}}"#),
            "port",
        );
        refused(
            parse_bootstrap(br#"{"kind": "init", "force": true}"#),
            "force",
        );
        refused(parse_bootstrap(b"not json"), "body");
    }

    #[test]
    fn role_bodies_parse_and_bad_ones_name_the_field() {
        assert_eq!(
            parse_role(br#"{"role": "primary"}"#),
            Ok(Order::Role(RoleOrder::Primary))
        );
        assert_eq!(
            parse_role(format!(r#"{{"role": "replica", "upstream": {UPSTREAM}}}"#).as_bytes()),
            Ok(Order::Role(RoleOrder::Replica {
                upstream: endpoint()
            }))
        );
        refused(parse_role(b"{}"), "role");
        refused(parse_role(br#"{"role": "leader"}"#), "role");
        refused(parse_role(br#"{"role": "replica"}"#), "upstream");
        refused(
            parse_role(format!(r#"{{"role": "primary", "upstream": {UPSTREAM}}}"#).as_bytes()),
            "upstream",
        );
    }

    #[test]
    fn fence_bodies_parse_and_bad_ones_name_the_field() {
        for (kind, want) in [
            ("kill", FenceKind::Kill),
            ("shutdown", FenceKind::Shutdown),
            ("read-only", FenceKind::ReadOnly),
        ] {
            assert_eq!(
                parse_fence(format!(r#"{{"kind": "{kind}"}}"#).as_bytes()),
                Ok(Order::Fence(want))
            );
        }
        assert_eq!(parse_fence(br#"{"release": true}"#), Ok(Order::Release));
        refused(parse_fence(b"{}"), "kind");
        refused(parse_fence(br#"{"kind": "readonly"}"#), "kind");
        refused(
            parse_fence(br#"{"kind": "kill", "release": true}"#),
            "release",
        );
        refused(parse_fence(br#"{"release": false}"#), "release");
        refused(parse_fence(br#"{"release": "yes"}"#), "body");
        refused(parse_fence(b""), "body");
    }

    #[test]
    fn rebuild_bodies_need_an_upstream() {
        assert_eq!(
            parse_rebuild(format!(r#"{{"upstream": {UPSTREAM}}}"#).as_bytes()),
            Ok(Order::Rebuild(endpoint()))
        );
        refused(parse_rebuild(b"{}"), "upstream");
        refused(
            parse_rebuild(br#"{"upstream": {"instance": "", "host": "h", "port": 1}}"#),
            "upstream.instance",
        );
    }

    #[test]
    fn fresh_is_asked_by_the_query_string() {
        assert!(asks_fresh(Some("fresh=1")));
        assert!(asks_fresh(Some("a=b&fresh=true")));
        assert!(asks_fresh(Some("fresh")));
        assert!(!asks_fresh(Some("fresh=0")));
        assert!(!asks_fresh(Some("refresh=1")));
        assert!(!asks_fresh(None));
    }

    #[test]
    fn the_old_data_is_kept_beside_the_data_dir() {
        assert_eq!(
            aside_dir(Path::new("/var/lib/stator/data")),
            PathBuf::from("/var/lib/stator/.data.stator-old")
        );
    }
}
