//! The HTTP endpoints: `/healthz`, `/readyz`, `/status`, `/metrics` for anyone who can reach the
//! port; `/promote`, `/demote`, `/reload` (changed parameters, applied without a restart where
//! the engine allows it) and `GET /backup` (a MariaDB instance's physical copy, streamed
//! as `mariadb-backup --stream=xbstream` for a replica being cloned, or with
//! `?compression=zstd` compressed for a repository) only with the bearer token.
//! A managed instance manager adds its order endpoints ([`crate::managed::router`]).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use stator_api::instance::{DemoteRequest, ReloadRequest, ServerState};
use stator_engine::MysqlFamily;
use stator_engine::mysql_family::backup::{BackupStream, COMPRESSED_QUERY, GTID_TRAILER};
use tokio::io::AsyncReadExt;
use tokio::sync::{Semaphore, SemaphorePermit, mpsc, oneshot};

use crate::metrics::{MetricFacts, render_metrics};
use crate::status::{InstanceStatus, unready_reason};
use crate::supervisor::Command;

/// How long a mutating request waits for the supervisor.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// What the handlers share.
#[derive(Clone)]
pub struct Endpoints {
    pub status: Arc<InstanceStatus>,
    pub commands: mpsc::Sender<Command>,
    pub secrets_dir: PathBuf,
    /// The database's engine.
    pub engine: stator_api::Engine,
    /// The engine that streams `/backup` (MariaDB); `None`: the endpoint answers 404.
    pub backup: Option<Arc<MysqlFamily>>,
    /// pgBackRest backups (`spec.backup`, PostgreSQL): `POST /backups` and `backup` in
    /// `/status`; `None`: the endpoint answers 404.
    pub backups: Option<Arc<crate::backups::Backups>>,
    /// A MariaDB primary's binlog archive: its state in `/status` under `backup.archive`.
    pub binlogs: Option<Arc<crate::binlogs::BinlogArchiver>>,
    /// Lease mode (`--managed --lease`): the write lease, whose facts `/status` adds and
    /// without which `/promote` is refused.
    pub lease: Option<Arc<crate::self_fencing::SelfFencing>>,
}

/// One backup at a time: mariadb-backup's backup locks do not nest.
static BACKUP_SLOT: Semaphore = Semaphore::const_new(1);
/// Bytes read from mariadb-backup per chunk of the response.
const BACKUP_CHUNK: usize = 256 * 1024;

/// The router of all endpoints.
pub fn router(endpoints: Endpoints) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/changes", get(changes))
        .route("/metrics", get(metrics))
        .route("/promote", post(promote))
        .route("/demote", post(demote))
        .route("/reload", post(reload))
        .route("/backup", get(backup))
        .route("/backups", post(create_backup))
        .with_state(endpoints)
}

async fn healthz(State(e): State<Endpoints>) -> Response {
    let s = e.status.snapshot();
    if s.state == ServerState::Failed {
        let why = s.message.unwrap_or_else(|| "failed".into());
        (StatusCode::SERVICE_UNAVAILABLE, format!("failed: {why}\n")).into_response()
    } else {
        (StatusCode::OK, "ok\n").into_response()
    }
}

async fn readyz(State(e): State<Endpoints>) -> Response {
    match unready_reason(&e.status.snapshot(), Instant::now()) {
        None => (StatusCode::OK, "ready\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

/// The report; `?fresh=1` queries the server first (bounded) instead of the last periodic
/// observation ([`InstanceStatus::refresh`]). With backups, their facts under `backup`.
async fn status(State(e): State<Endpoints>, uri: axum::http::Uri) -> Response {
    if crate::managed::asks_fresh(uri.query()) {
        e.status.refresh().await;
    }
    match &e.lease {
        None => axum::Json(report_with_backups(&e)).into_response(),
        Some(lease) => {
            let mut report =
                serde_json::to_value(report_with_backups(&e)).unwrap_or_else(|_| json!({}));
            lease.add_facts(&mut report);
            axum::Json(report).into_response()
        }
    }
}

/// Longest wait of a `GET /changes` long poll.
pub const MAX_CHANGES_WAIT: Duration = Duration::from_secs(30);

/// `GET /changes?since=N&wait=SECONDS`: `{"changes": M}`, the count of headline changes
/// (state, role, readiness, server pid), once it differs from `N`, after `wait` seconds (at
/// most [`MAX_CHANGES_WAIT`]) or when the manager stops, whichever comes first. Without
/// `since`: the count now. The supervisor long-polls it to act on a change when it happens.
async fn changes(State(e): State<Endpoints>, uri: axum::http::Uri) -> Response {
    let mut since = None;
    let mut wait = Duration::ZERO;
    for pair in uri.query().unwrap_or_default().split('&') {
        match pair.split_once('=') {
            Some(("since", v)) => since = v.parse::<u64>().ok(),
            Some(("wait", v)) => {
                wait = v.parse::<u64>().map_or(Duration::ZERO, |s| {
                    Duration::from_secs(s).min(MAX_CHANGES_WAIT)
                })
            }
            _ => {}
        }
    }
    let count = match since {
        Some(since) => e.status.changed_since(since, wait).await,
        None => e.status.changes(),
    };
    axum::Json(json!({ "changes": count })).into_response()
}

/// The report, with the backup facts when this instance takes backups (PostgreSQL) or
/// archives binary logs (MariaDB: the archive, and the runtime's full backups as the
/// repository holds them).
pub(crate) fn report_with_backups(e: &Endpoints) -> stator_api::instance::InstanceReport {
    let mut report = e.status.report();
    report.backup = match (&e.backups, &e.binlogs) {
        (Some(b), _) => Some(b.facts()),
        (None, Some(b)) => b.report(),
        (None, None) => None,
    };
    report
}

/// Body of `POST /backups`: `{"type": "full"|"diff"|"incr"}` (optional; default incremental,
/// the first one is full).
#[derive(serde::Deserialize, Default)]
struct BackupRequest {
    #[serde(default, rename = "type")]
    kind: Option<stator_engine::postgres::backrest::BackupKind>,
}

/// Runs one pgBackRest backup on this primary and answers when it is done.
async fn create_backup(State(e): State<Endpoints>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = check_token(&e, &headers) {
        return refused;
    }
    let Some(backups) = e.backups.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "this instance takes no backups: spec.backup names no local repository (or the engine is not PostgreSQL)",
        );
    };
    let request: BackupRequest = if body.is_empty() {
        BackupRequest::default()
    } else {
        match json_body(&body, r#"{"type": "full"|"diff"|"incr"}"#) {
            Ok(r) => r,
            Err(why) => return error(StatusCode::BAD_REQUEST, why),
        }
    };
    tracing::info!("backup requested");
    match backups.run(request.kind).await {
        Ok(outcome) => (StatusCode::OK, axum::Json(outcome)).into_response(),
        Err(why) => error(StatusCode::CONFLICT, why),
    }
}

async fn metrics(State(e): State<Endpoints>) -> Response {
    let snapshot = e.status.snapshot();
    let report = report_with_backups(&e);
    let facts = MetricFacts {
        position_bytes: snapshot.observation.as_ref().and_then(|o| o.position_bytes),
        manager_uptime_seconds: e.status.started.elapsed().as_secs(),
        lag_in_transactions: e.engine.is_mysql_family(),
        now: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
    };
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render_metrics(&report, facts),
    )
        .into_response()
}

pub(crate) fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, axum::Json(json!({ "error": message.into() }))).into_response()
}

/// The refusal to send, when the request does not carry the token.
pub(crate) fn check_token(e: &Endpoints, headers: &HeaderMap) -> Option<Response> {
    crate::api_token::refusal(&e.secrets_dir, headers)
}

pub(crate) async fn ask(
    e: &Endpoints,
    make: impl FnOnce(oneshot::Sender<Result<String, String>>) -> Command,
) -> Response {
    let (tx, rx) = oneshot::channel();
    if e.commands.send(make(tx)).await.is_err() {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the instance manager is shutting down",
        );
    }
    match tokio::time::timeout(COMMAND_TIMEOUT, rx).await {
        Ok(Ok(Ok(done))) => (StatusCode::OK, axum::Json(json!({ "result": done }))).into_response(),
        Ok(Ok(Err(why))) => error(StatusCode::CONFLICT, why),
        Ok(Err(_)) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the instance manager is shutting down",
        ),
        Err(_) => error(
            StatusCode::GATEWAY_TIMEOUT,
            "the request did not finish in time; see /status",
        ),
    }
}

/// The JSON request body, or why it is refused: the parse error and the shape expected.
pub(crate) fn json_body<T: serde::de::DeserializeOwned>(
    body: &[u8],
    expected: &str,
) -> Result<T, String> {
    serde_json::from_slice(body).map_err(|err| format!("body: {err}; expected {expected}"))
}

async fn promote(State(e): State<Endpoints>, headers: HeaderMap) -> Response {
    if let Some(refused) = check_token(&e, &headers) {
        return refused;
    }
    if let Some(lease) = &e.lease
        && !lease.holds_write_lease()
    {
        return error(
            StatusCode::CONFLICT,
            "lease mode: this instance holds no valid write lease; POST /lease naming it as the writer first",
        );
    }
    tracing::info!("promotion requested");
    ask(&e, Command::Promote).await
}

async fn demote(State(e): State<Endpoints>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = check_token(&e, &headers) {
        return refused;
    }
    let request: DemoteRequest = match json_body(
        &body,
        r#"{"upstream": {"instance": "NAME-N", "host": "…", "port": N}}"#,
    ) {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    tracing::info!(upstream = %request.upstream.instance, "demotion requested");
    ask(&e, |r| Command::Demote(request.upstream, r)).await
}

/// Applies changed parameters to the running server without a restart: 200 when every one
/// took effect, 409 naming those only a restart applies (the file holds them for the next start).
async fn reload(State(e): State<Endpoints>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = check_token(&e, &headers) {
        return refused;
    }
    let request: ReloadRequest = match json_body(&body, r#"{"parameters": {"name": "value", …}}"#)
    {
        Ok(r) => r,
        Err(why) => return error(StatusCode::BAD_REQUEST, why),
    };
    tracing::info!("reload of the parameters requested");
    ask(&e, |r| Command::Reload(request.parameters, r)).await
}

/// Streams a physical copy of this instance's data directory. A failed backup ends the response
/// without its final chunk, so the receiver sees an incomplete transfer, never a short copy.
///
/// With `?compression=zstd` (a full backup for a repository) the stream is compressed here and
/// ends with trailer `stator-backup-gtid`, the copy's GTID position.
async fn backup(
    State(e): State<Endpoints>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    if let Some(refused) = check_token(&e, &headers) {
        return refused;
    }
    let Some(engine) = e.backup.clone() else {
        return error(
            StatusCode::NOT_FOUND,
            "this engine does not serve backups over HTTP (PostgreSQL replicas clone with pg_basebackup, MySQL 8 with the clone plugin)",
        );
    };
    if e.status.snapshot().state != ServerState::Running {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is not running; a backup needs it",
        );
    }
    let Ok(permit) = BACKUP_SLOT.try_acquire() else {
        return error(
            StatusCode::CONFLICT,
            "a backup is already streaming from this instance; retry when it is done",
        );
    };
    let compressed = match query.as_deref() {
        None | Some("") => false,
        Some(COMPRESSED_QUERY) => true,
        Some(other) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("query {other:?}: /backup takes {COMPRESSED_QUERY:?} or no query"),
            );
        }
    };
    if compressed {
        return compressed_backup(&engine, permit);
    }
    let stream = match engine.start_backup_stream() {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(error = %err, "starting a backup");
            return error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string());
        }
    };
    tracing::info!("streaming a backup");
    let body = futures_util::stream::unfold(
        Some(BackupState {
            stream,
            _permit: permit,
        }),
        |state| async move {
            let mut state = state?;
            let mut buf = vec![0u8; BACKUP_CHUNK];
            match state.stream.stdout.read(&mut buf).await {
                Ok(0) => match state.stream.finish().await {
                    Ok(()) => {
                        tracing::info!("backup streamed");
                        None
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "the backup failed; aborting the stream");
                        Some((Err(std::io::Error::other(err.to_string())), None))
                    }
                },
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(Bytes::from(buf)), Some(state)))
                }
                Err(err) => Some((Err(err), None)),
            }
        },
    );
    (
        [(header::CONTENT_TYPE, "application/octet-stream")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

/// A backup in flight and the slot it holds.
struct BackupState {
    stream: BackupStream,
    _permit: SemaphorePermit<'static>,
}

/// `GET /backup?compression=zstd`: zstd's output as the body, then the GTID trailer; a failed
/// backup ends the body without its final chunk, as the plain stream does.
fn compressed_backup(engine: &MysqlFamily, permit: SemaphorePermit<'static>) -> Response {
    let stream = match engine.start_compressed_backup_stream() {
        Ok(s) => s,
        Err(err) => {
            tracing::error!(error = %err, "starting a backup");
            return error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string());
        }
    };
    tracing::info!("streaming a compressed backup");
    let frames = futures_util::stream::unfold(Some((stream, permit)), |state| async move {
        let (mut stream, permit) = state?;
        let mut buf = vec![0u8; BACKUP_CHUNK];
        match stream.stdout.read(&mut buf).await {
            Ok(0) => match stream.finish().await {
                Ok(gtid) => {
                    drop(permit);
                    tracing::info!(gtid, "compressed backup streamed");
                    let mut trailers = HeaderMap::new();
                    match header::HeaderValue::from_str(&gtid) {
                        Ok(value) => {
                            trailers.insert(GTID_TRAILER, value);
                            Some((Ok(http_body::Frame::trailers(trailers)), None))
                        }
                        Err(_) => Some((
                            Err(std::io::Error::other(format!(
                                "the copy's GTID position {gtid:?} cannot be sent"
                            ))),
                            None,
                        )),
                    }
                }
                Err(err) => {
                    tracing::error!(error = %err, "the backup failed; aborting the stream");
                    Some((Err(std::io::Error::other(err.to_string())), None))
                }
            },
            Ok(n) => {
                buf.truncate(n);
                Some((
                    Ok(http_body::Frame::data(Bytes::from(buf))),
                    Some((stream, permit)),
                ))
            }
            Err(err) => Some((Err(err), None)),
        }
    });
    (
        [
            (header::CONTENT_TYPE, "application/zstd"),
            (header::TRAILER, GTID_TRAILER),
        ],
        axum::body::Body::new(http_body_util::StreamBody::new(frames)),
    )
        .into_response()
}
