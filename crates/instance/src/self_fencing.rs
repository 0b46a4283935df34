//! Lease mode of the managed instance manager (`--managed --lease`): the operator grants the
//! write lease over HTTP, and a primary whose lease ran out kills its own server. The
//! bookkeeping is [`crate::lease`] (pure); this is its shell:
//!
//! - the clock: milliseconds of `CLOCK_BOOTTIME` ([`clock`]), which counts a suspended or
//!   frozen machine's time too; an incarnation ([`SelfFencing::incarnation`], 16 random hex
//!   digits) chosen at every start. `GET /status` and every answer of `POST /lease` and
//!   `POST /confirm` carry `clock` (the reading when answering), `incarnation` and `lease`
//!   (the term, writer, write lease, L, failsafe and fence), beside the usual report;
//! - `POST /lease {"term", "writer", "expiresAt", "incarnation", "quietMs"}` (bearer token;
//!   `quietMs`, optional, is how long a peer must not hear the operator before it confirms a
//!   writer's failsafe): 200 with the
//!   report and `result`, or 409 with the report and `error` naming the field (another
//!   incarnation, a lower term, another writer at the same term, an expiry not later than
//!   the clock or than the lease held). A higher term is written to the term file first
//!   ([`term_file`]: beside the data directory, on its volume, 0600, replaced atomically)
//!   with its writer, so it binds the next incarnation too;
//! - `POST /confirm {"term", "writer"}` (bearer token): a writer's peer answers 200 when it
//!   confirms (see [`LeaseBook::confirm`]), 409 saying why not;
//! - the watchdog ([`SelfFencing::spawn_watchdog`]): a thread that does nothing else. When
//!   this instance may not write ([`LeaseBook::may_write`]) while a server that may be a
//!   primary runs (its last observation or its data dir's marker says primary, or the
//!   marker cannot be read), it records the fence and sends SIGKILL to the server and every
//!   process under it (the `kill` fence's signals). The managed supervisor then holds the
//!   server down as under `POST /fence {"kind": "kill"}`, and reports "fenced (kill) by lease
//!   expiry"; `DELETE /fence` releases it, after which a former primary waits for
//!   `POST /role` and a write lease again;
//! - the failsafe ([`SelfFencing::failsafe_forever`]): from half a lease before its right to
//!   write ends, the writer asks every peer (`peers` of the config, their managers) to
//!   confirm, every [`ROUND_EVERY`]; a round every peer confirmed, started at `t0`, lets it
//!   write until `t0 + L`. No peers: the failsafe never holds (a stale, empty list after a
//!   scale-up must not keep a cut-off primary serving);
//! - without a write lease a managed primary does not start (the supervisor waits for one).
//!
//! - the dead man's switch ([`crate::deadman`]): a process of its own, started by the
//!   watchdog from this program, told each deadline; it kills the server at the end of the
//!   right to write when this manager is frozen or starved and its watchdog cannot.
//!
//! What it does not cover: the manager and its switch frozen together while the server runs.
//! The peers are the config's, fixed at the manager's start.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use stator_api::Role;
use stator_api::instance::Peer;
use stator_api::names::secret_keys;
use stator_engine::credentials::read_secret;
use stator_engine::manager_client;

use crate::deadman::{self, Deadman, Guard};
use crate::error::InstanceError;
use crate::http::{Endpoints, check_token, json_body};
use crate::lease::{Confirmation, Grant, Granted, LeaseBook, Millis, Unconfirmed};
use crate::status::InstanceStatus;

/// How often the failsafe asks the peers while a round is due.
pub const ROUND_EVERY: Duration = Duration::from_millis(100);
/// The watchdog looks again at least this often (a server that starts, a lease that changes
/// wake it at once).
const WATCH_EVERY: Duration = Duration::from_millis(100);

/// Milliseconds since boot on `CLOCK_BOOTTIME` (which keeps counting while the machine is
/// suspended). A clock that cannot be read reads as `u64::MAX`: every lease has expired.
pub fn clock() -> Millis {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(t) => {
            let secs = u64::try_from(t.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(t.tv_nsec()).unwrap_or(0);
            secs.saturating_mul(1000).saturating_add(nanos / 1_000_000)
        }
        Err(_) => u64::MAX,
    }
}

/// 16 random hex digits from the kernel (the clock and pid when it cannot give them).
fn new_incarnation() -> String {
    use std::io::Read;
    let mut buf = [0u8; 8];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    if random.is_err() {
        let mix = clock() ^ (u64::from(std::process::id()) << 32);
        buf = mix.to_be_bytes();
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

/// The file that keeps the highest term and its writer: beside the data directory, on its
/// volume (`.data.stator-lease` for `…/data`), never inside it (initdb and a clone need it
/// empty, a rebuild replaces it).
pub fn term_file(data_dir: &Path) -> PathBuf {
    let name = data_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data".into());
    data_dir.with_file_name(format!(".{name}.stator-lease"))
}

#[derive(serde::Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TermRecord {
    term: u64,
    writer: String,
}

/// The persisted term and writer; `None` when no term was ever recorded. A file that cannot
/// be read is an error: starting over at term 0 would accept leases of older terms.
pub fn read_term(path: &Path) -> Result<Option<(u64, String)>, String> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice::<TermRecord>(&bytes)
            .map(|r| Some((r.term, r.writer)))
            .map_err(|e| {
                format!("not a term record ({e}); expected {{\"term\": N, \"writer\": \"NAME-N\"}}")
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.to_string()),
    }
}

/// Replaces the term file atomically: a 0600 temporary file, synced, renamed over it, and
/// the directory synced.
pub fn write_term(path: &Path, term: u64, writer: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let body = serde_json::to_vec(&TermRecord {
        term,
        writer: writer.to_string(),
    })
    .map_err(std::io::Error::other)?;
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&body)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

struct Inner {
    book: LeaseBook,
    /// Why the watchdog killed the server, until the fence is released.
    fenced: Option<String>,
    /// The last failsafe round's outcome, in words.
    failsafe: Option<String>,
    stopping: bool,
}

/// The write lease of one managed instance manager, shared by the HTTP endpoints, the
/// supervisor, the watchdog thread and the failsafe task.
pub struct SelfFencing {
    name: String,
    inner: Mutex<Inner>,
    /// Wakes the watchdog when the book changes.
    changed: Condvar,
    /// Wakes a supervisor waiting for a write lease.
    granted: tokio::sync::Notify,
    /// One `POST /lease` at a time (the term is persisted before it is taken).
    serial: tokio::sync::Mutex<()>,
    term_file: PathBuf,
    peers: Vec<Peer>,
    secrets_dir: PathBuf,
}

impl SelfFencing {
    /// Lease mode for instance `name` on `data_dir`: the persisted term, a new incarnation.
    pub fn open(
        name: &str,
        data_dir: &Path,
        peers: Vec<Peer>,
        secrets_dir: PathBuf,
    ) -> Result<Arc<SelfFencing>, InstanceError> {
        let term_file = term_file(data_dir);
        let persisted = read_term(&term_file).map_err(|message| InstanceError::Config {
            field: term_file.display().to_string(),
            message,
        })?;
        let incarnation = new_incarnation();
        tracing::info!(
            incarnation = %incarnation,
            term = persisted.as_ref().map_or(0, |p| p.0),
            peers = peers.len(),
            "lease mode: a primary serves only under the operator's write lease"
        );
        Ok(Arc::new(SelfFencing {
            name: name.to_string(),
            inner: Mutex::new(Inner {
                book: LeaseBook::new(name, &incarnation, persisted),
                fenced: None,
                failsafe: None,
                stopping: false,
            }),
            changed: Condvar::new(),
            granted: tokio::sync::Notify::new(),
            serial: tokio::sync::Mutex::new(()),
            term_file,
            peers,
            secrets_dir,
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn incarnation(&self) -> String {
        self.lock().book.incarnation().to_string()
    }

    /// Holds a write lease valid now.
    pub fn holds_write_lease(&self) -> bool {
        self.lock().book.holds_write(clock())
    }

    /// Why the watchdog fenced the server, while the fence holds.
    pub fn fenced(&self) -> Option<String> {
        self.lock().fenced.clone()
    }

    /// The fence is released (`DELETE /fence`).
    pub fn release(&self) {
        self.lock().fenced = None;
        self.changed.notify_all();
    }

    /// Waits until a grant was taken.
    pub async fn granted(&self) {
        self.granted.notified().await;
    }

    /// Ends the watchdog.
    pub fn stop(&self) {
        self.lock().stopping = true;
        self.changed.notify_all();
    }

    /// Takes a grant: the new term persisted first, then the book updated.
    pub async fn take(&self, grant: Grant) -> Result<Granted, (StatusCode, String)> {
        let _one = self.serial.lock().await;
        let now = clock();
        let raises = self
            .lock()
            .book
            .check(&grant, now)
            .map_err(|r| (StatusCode::CONFLICT, r.to_string()));
        let raises = match raises {
            Ok(r) => r,
            Err(refused) => {
                // Still: the operator was heard.
                let _ = self.lock().book.accept(&grant, now);
                return Err(refused);
            }
        };
        if raises {
            let (path, term, writer) = (self.term_file.clone(), grant.term, grant.writer.clone());
            let written =
                tokio::task::spawn_blocking(move || write_term(&path, term, &writer)).await;
            match written {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    return Err((
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!(
                            "term: cannot record term {term} in {}: {e}; the lease is not taken",
                            self.term_file.display()
                        ),
                    ));
                }
                Err(e) => {
                    return Err((
                        StatusCode::INTERNAL_SERVER_ERROR,
                        format!("term: recording term {term} failed: {e}"),
                    ));
                }
            }
        }
        // At the arrival reading the check passed on: a slow fsync of the term must not turn
        // it into ExpiredOnArrival after the term was written (memory and file would disagree,
        // and a second writer at that term could pass the check).
        let result = self.lock().book.accept(&grant, now);
        self.changed.notify_all();
        match result {
            Ok(granted) => {
                if matches!(granted, Granted::WriteLease { .. }) {
                    self.granted.notify_one();
                }
                Ok(granted)
            }
            Err(r) => Err((StatusCode::CONFLICT, r.to_string())),
        }
    }

    /// A writer's `POST /confirm`.
    pub fn confirm(&self, asked: &Confirmation) -> Result<(), Unconfirmed> {
        self.lock().book.confirm(asked, clock())
    }

    /// `clock`, `incarnation` and `lease`, added to a report.
    pub fn add_facts(&self, report: &mut Value) {
        let g = self.lock();
        let b = &g.book;
        let now = clock();
        if let Some(map) = report.as_object_mut() {
            map.insert("clock".into(), json!(now));
            map.insert("incarnation".into(), json!(b.incarnation()));
            map.insert(
                "lease".into(),
                json!({
                    "term": b.term(),
                    "writer": b.writer(),
                    "expiresAt": b.write_expires(),
                    "holdsWriteLease": b.holds_write(now),
                    "lengthMs": b.length(),
                    "heardAt": b.heard_at(),
                    "failsafeUntil": b.failsafe_until(),
                    "failsafe": g.failsafe,
                    "fenced": g.fenced,
                }),
            );
        }
    }

    /// Starts the watchdog thread: kills the server when this instance may not write while
    /// a server that may be a primary runs. `may_be_primary` tells from the data dir.
    pub fn spawn_watchdog(
        self: &Arc<Self>,
        status: Arc<InstanceStatus>,
        data_dir: PathBuf,
        may_be_primary: Box<dyn Fn() -> bool + Send>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("lease-watchdog".into())
            .spawn(move || me.watch(&status, &data_dir, may_be_primary.as_ref()))
    }

    fn watch(&self, status: &InstanceStatus, data_dir: &Path, may_be_primary: &dyn Fn() -> bool) {
        let mut switch = Switch::new(data_dir);
        let mut g = self.lock();
        loop {
            if g.stopping {
                return;
            }
            // The dead man's switch learns the deadline first: a manager frozen from here on
            // still has its server stopped when the right to write ends. (The status is read
            // without the lease's lock held, as below.)
            let until = g.book.writes_until();
            drop(g);
            switch.tell(until.and_then(|until| {
                Some(Guard {
                    pid: status.pid()?,
                    until,
                })
            }));
            g = self.lock();
            if g.stopping {
                return;
            }
            // Not only while unfenced: a fence recorded while a clean stop was under way does
            // not stop the server a rejoin starts next, and that one may be promoted later.
            if !g.book.may_write(clock()) {
                // Looked at without the lock (the /proc and marker reads must not hold up a
                // grant), then checked again under it: a grant taken meanwhile wins.
                drop(g);
                let snapshot = status.snapshot();
                let observed_primary = snapshot
                    .observation
                    .as_ref()
                    .is_some_and(|o| o.role == Some(Role::Primary));
                let doomed = snapshot.pid.filter(|pid| {
                    stator_engine::process::process_serves_data_dir(*pid, data_dir)
                        && (observed_primary || may_be_primary())
                });
                g = self.lock();
                let now = clock();
                if let Some(pid) = doomed
                    && !g.book.may_write(now)
                    && !g.stopping
                {
                    let why = self.why_fenced(&g, now);
                    if g.fenced.is_none() {
                        g.fenced = Some(why.clone());
                    }
                    drop(g);
                    tracing::error!(pid, "{why}: killing the server and every process under it");
                    stator_engine::process::kill_tree_now(pid);
                    g = self.lock();
                    continue;
                }
            }
            let now = clock();
            let wait = match g.book.writes_until() {
                Some(until) if until > now => Duration::from_millis(until - now).min(WATCH_EVERY),
                _ => WATCH_EVERY,
            };
            g = match self.changed.wait_timeout(g, wait) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
    }

    fn why_fenced(&self, g: &Inner, now: Millis) -> String {
        let b = &g.book;
        let lease = match (b.is_writer(), b.write_expires()) {
            (true, Some(e)) => format!("its write lease (term {}) expired at clock {e}", b.term()),
            _ => match b.writer() {
                Some(w) if !b.is_writer() => {
                    format!(
                        "term {} names {w} as the writer, not {}",
                        b.term(),
                        self.name
                    )
                }
                _ => format!("{} holds no write lease", self.name),
            },
        };
        let failsafe = match (&g.failsafe, b.failsafe_until()) {
            (Some(last), Some(until)) => {
                format!("; the failsafe ended at clock {until} (last round: {last})")
            }
            (Some(last), None) => format!("; the failsafe did not hold ({last})"),
            (None, _) => String::new(),
        };
        format!("fenced (kill) by lease expiry at clock {now}: {lease}{failsafe}")
    }

    /// The failsafe rounds, forever: while one is due, every [`ROUND_EVERY`].
    pub async fn failsafe_forever(self: Arc<Self>) {
        loop {
            tokio::time::sleep(ROUND_EVERY).await;
            let (asked, length) = {
                let g = self.lock();
                if g.fenced.is_some() {
                    continue;
                }
                (g.book.failsafe_round(clock()), g.book.length())
            };
            let Some(asked) = asked else { continue };
            let started_at = clock();
            let outcome = self.ask_peers(&asked, length.unwrap_or(1000)).await;
            let mut g = self.lock();
            let note = match outcome {
                Ok(names) => {
                    if g.book.failsafe_confirmed(&asked, started_at) {
                        format!("{names} confirmed at clock {started_at}")
                    } else {
                        format!("{names} confirmed at clock {started_at}, too late")
                    }
                }
                Err(why) => why,
            };
            if g.failsafe.as_deref() != Some(note.as_str()) {
                let changed_kind = g
                    .failsafe
                    .as_deref()
                    .is_none_or(|old| old.contains("confirmed") != note.contains("confirmed"));
                if changed_kind {
                    tracing::warn!(term = asked.term, "failsafe: {note}");
                }
                g.failsafe = Some(note);
            }
            drop(g);
            self.changed.notify_all();
        }
    }

    /// Asks every peer; `Ok(names)` when all confirmed, else who did not and why.
    async fn ask_peers(&self, asked: &Confirmation, length: Millis) -> Result<String, String> {
        if self.peers.is_empty() {
            return Err("no peers to confirm: the failsafe cannot hold".into());
        }
        let token = read_secret(&self.secrets_dir, secret_keys::API_TOKEN)
            .map_err(|e| format!("the API token cannot be read: {e}"))?;
        let timeout = Duration::from_millis((length / 4).clamp(100, 3000));
        let body = json!({"term": asked.term, "writer": asked.writer}).to_string();
        let asks = self.peers.iter().map(|peer| {
            let body = body.clone();
            let token = token.expose().to_string();
            async move {
                let name = peer.server.instance.clone();
                let answer = manager_client::post(
                    &peer.server.host,
                    peer.http_port,
                    "/confirm",
                    &token,
                    &body,
                    timeout,
                )
                .await;
                match answer {
                    Ok((200, _)) => Ok(name),
                    Ok((code, text)) => Err(format!(
                        "{name} did not confirm (HTTP {code}): {}",
                        manager_client::answer_text(&text)
                    )),
                    Err(e) => Err(format!("{name} did not answer: {}", e.detail())),
                }
            }
        });
        let answers = futures_util::future::join_all(asks).await;
        let (confirmed, refused): (Vec<_>, Vec<_>) = answers.into_iter().partition(Result::is_ok);
        if refused.is_empty() {
            let names: Vec<String> = confirmed.into_iter().flatten().collect();
            Ok(format!("every peer ({})", names.join(", ")))
        } else {
            let why: Vec<String> = refused.into_iter().filter_map(Result::err).collect();
            Err(why.join("; "))
        }
    }
}

// ---- Endpoints ------------------------------------------------------------------------------

const LEASE_SHAPE: &str =
    r#"{"term": N, "writer": "NAME-N", "expiresAt": MS, "incarnation": "…", "quietMs": MS}"#;
const CONFIRM_SHAPE: &str = r#"{"term": N, "writer": "NAME-N"}"#;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct LeaseBody {
    term: Option<u64>,
    writer: Option<String>,
    expires_at: Option<u64>,
    incarnation: Option<String>,
    quiet_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfirmBody {
    term: Option<u64>,
    writer: Option<String>,
}

fn missing(field: &str, shape: &str) -> String {
    format!("{field}: missing; expected {shape}")
}

fn checked_writer(writer: Option<String>, shape: &str) -> Result<String, String> {
    match writer {
        None => Err(missing("writer", shape)),
        Some(w) if w.trim().is_empty() => Err("writer: empty; expected NAME-N".into()),
        Some(w) => Ok(w),
    }
}

/// `POST /lease`.
pub fn parse_lease(body: &[u8]) -> Result<Grant, String> {
    let b: LeaseBody = json_body(body, LEASE_SHAPE)?;
    let term = b.term.ok_or_else(|| missing("term", LEASE_SHAPE))?;
    let writer = checked_writer(b.writer, LEASE_SHAPE)?;
    let expires_at = b
        .expires_at
        .ok_or_else(|| missing("expiresAt", LEASE_SHAPE))?;
    let incarnation = match b.incarnation {
        None => return Err(missing("incarnation", LEASE_SHAPE)),
        Some(i) if i.trim().is_empty() => {
            return Err("incarnation: empty; expected the incarnation /status reports".into());
        }
        Some(i) => i,
    };
    Ok(Grant {
        term,
        writer,
        expires_at,
        incarnation,
        quiet: b.quiet_ms,
    })
}

/// `POST /confirm`.
pub fn parse_confirm(body: &[u8]) -> Result<Confirmation, String> {
    let b: ConfirmBody = json_body(body, CONFIRM_SHAPE)?;
    let term = b.term.ok_or_else(|| missing("term", CONFIRM_SHAPE))?;
    let writer = checked_writer(b.writer, CONFIRM_SHAPE)?;
    Ok(Confirmation { term, writer })
}

/// The report with the lease facts, and `key: text`.
fn answer(
    e: &Endpoints,
    lease: &SelfFencing,
    code: StatusCode,
    key: &str,
    text: String,
) -> Response {
    let mut report =
        serde_json::to_value(crate::http::report_with_backups(e)).unwrap_or_else(|_| json!({}));
    lease.add_facts(&mut report);
    if let Some(map) = report.as_object_mut() {
        map.insert(key.into(), json!(text));
    }
    (code, axum::Json(report)).into_response()
}

/// `POST /lease`: 200 with the report and what the grant did, 409 with the report and why
/// it was refused, 400 naming the field.
pub async fn lease(State(e): State<Endpoints>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = check_token(&e, &headers) {
        return refused;
    }
    let Some(lease) = e.lease.clone() else {
        return crate::http::error(StatusCode::NOT_FOUND, "this manager is not in lease mode");
    };
    let grant = match parse_lease(&body) {
        Ok(g) => g,
        Err(why) => return answer(&e, &lease, StatusCode::BAD_REQUEST, "error", why),
    };
    match lease.take(grant.clone()).await {
        Ok(Granted::WriteLease { expires_at }) => answer(
            &e,
            &lease,
            StatusCode::OK,
            "result",
            format!(
                "{} holds the write lease of term {} until clock {expires_at}",
                lease.name, grant.term
            ),
        ),
        Ok(Granted::Follows { writer }) => answer(
            &e,
            &lease,
            StatusCode::OK,
            "result",
            format!(
                "term {}: {writer} is the writer; {} follows",
                grant.term, lease.name
            ),
        ),
        Err((code, why)) => {
            tracing::info!(term = grant.term, writer = %grant.writer, "lease refused: {why}");
            answer(&e, &lease, code, "error", why)
        }
    }
}

/// `POST /confirm`: 200 when this peer confirms, 409 saying why not.
pub async fn confirm(State(e): State<Endpoints>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = check_token(&e, &headers) {
        return refused;
    }
    let Some(lease) = e.lease.clone() else {
        return crate::http::error(StatusCode::NOT_FOUND, "this manager is not in lease mode");
    };
    let asked = match parse_confirm(&body) {
        Ok(c) => c,
        Err(why) => return answer(&e, &lease, StatusCode::BAD_REQUEST, "error", why),
    };
    match lease.confirm(&asked) {
        Ok(()) => answer(
            &e,
            &lease,
            StatusCode::OK,
            "result",
            format!(
                "confirmed: {} follows {} at term {} and has not heard the operator for its quiet time",
                lease.name, asked.writer, asked.term
            ),
        ),
        Err(why) => answer(&e, &lease, StatusCode::CONFLICT, "error", why.to_string()),
    }
}

/// The watchdog's dead man's switch ([`crate::deadman`]): started from this program, started
/// again (at most every [`SWITCH_RETRY`]) when it cannot be told.
struct Switch {
    data_dir: PathBuf,
    program: Option<PathBuf>,
    running: Option<Deadman>,
    tried: Option<std::time::Instant>,
}

/// How soon a switch that failed to start or went away is started again.
const SWITCH_RETRY: Duration = Duration::from_secs(5);

impl Switch {
    fn new(data_dir: &Path) -> Switch {
        // This process's own executable: `stator`, or `instance_manager` in tests.
        let program = match std::env::current_exe() {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::error!(
                    "no dead man's switch: this program's path is unknown ({e}); a frozen \
                     instance manager would leave its server serving past the lease"
                );
                None
            }
        };
        Switch {
            data_dir: data_dir.to_path_buf(),
            program,
            running: None,
            tried: None,
        }
    }

    fn tell(&mut self, guard: Option<Guard>) {
        if self.running.is_none() {
            let Some(program) = &self.program else { return };
            if self.tried.is_some_and(|t| t.elapsed() < SWITCH_RETRY) {
                return;
            }
            self.tried = Some(std::time::Instant::now());
            match Deadman::spawn(program, &self.data_dir) {
                Ok(d) => self.running = Some(d),
                Err(e) => {
                    tracing::error!(
                        "cannot start the dead man's switch ({} {} --data-dir …): {e}; retrying",
                        program.display(),
                        deadman::SUBCOMMAND
                    );
                    return;
                }
            }
        }
        if let Some(running) = self.running.as_mut()
            && let Err(e) = running.tell(guard)
        {
            tracing::error!("the dead man's switch is gone ({e}); starting another");
            self.running = None;
            self.tried = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_bodies_parse_and_bad_ones_name_the_field() {
        assert_eq!(
            parse_lease(
                br#"{"term": 3, "writer": "db-0", "expiresAt": 12000, "incarnation": "ab"}"#
            ),
            Ok(Grant {
                term: 3,
                writer: "db-0".into(),
                expires_at: 12000,
                incarnation: "ab".into(),
                quiet: None,
            })
        );
        for (body, field) in [
            (
                r#"{"writer": "db-0", "expiresAt": 1, "incarnation": "ab"}"#,
                "term",
            ),
            (
                r#"{"term": 1, "expiresAt": 1, "incarnation": "ab"}"#,
                "writer",
            ),
            (
                r#"{"term": 1, "writer": " ", "expiresAt": 1, "incarnation": "ab"}"#,
                "writer",
            ),
            (
                r#"{"term": 1, "writer": "db-0", "incarnation": "ab"}"#,
                "expiresAt",
            ),
            (
                r#"{"term": 1, "writer": "db-0", "expiresAt": 1}"#,
                "incarnation",
            ),
            (
                r#"{"term": -1, "writer": "db-0", "expiresAt": 1, "incarnation": "ab"}"#,
                "body",
            ),
            (
                r#"{"term": 1, "writer": "db-0", "expiresAt": 1, "incarnation": "ab", "x": 1}"#,
                "x",
            ),
            ("", "body"),
        ] {
            let why = parse_lease(body.as_bytes()).expect_err(body);
            assert!(why.contains(field), "{body}: {why} does not name {field}");
        }
        // What the operator sends (stator_api's order types) is what the manager reads.
        let order = stator_api::orders::LeaseOrder {
            term: 9,
            writer: "db-1".into(),
            expires_at: 77,
            incarnation: "cd".into(),
            quiet_ms: Some(1_500),
        };
        let grant = parse_lease(&serde_json::to_vec(&order).unwrap()).unwrap();
        assert_eq!(
            (grant.term, grant.expires_at, grant.quiet),
            (9, 77, Some(1_500))
        );
        let asked = stator_api::orders::ConfirmOrder {
            term: 9,
            writer: "db-1".into(),
        };
        let parsed = parse_confirm(&serde_json::to_vec(&asked).unwrap()).unwrap();
        assert_eq!(parsed.writer, "db-1");
        assert!(
            parse_confirm(br#"{"term": 1}"#)
                .unwrap_err()
                .contains("writer")
        );
        assert!(
            parse_confirm(br#"{"writer": "db-0"}"#)
                .unwrap_err()
                .contains("term")
        );
    }

    #[test]
    fn the_term_survives_in_a_private_file_beside_the_data_dir() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let path = term_file(&data);
        assert_eq!(path, dir.path().join(".data.stator-lease"));
        assert_eq!(read_term(&path), Ok(None));
        write_term(&path, 4, "db-1").unwrap();
        write_term(&path, 5, "db-0").unwrap();
        assert_eq!(read_term(&path), Ok(Some((5, "db-0".into()))));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!path.with_extension("tmp").exists());
        std::fs::write(&path, "garbage").unwrap();
        assert!(read_term(&path).unwrap_err().contains("term record"));
    }

    #[test]
    fn the_clock_counts_forward() {
        let a = clock();
        let b = clock();
        assert!(a > 0 && a != u64::MAX && b >= a, "{a} {b}");
    }
}
