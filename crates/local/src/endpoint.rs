//! The supervisor's HTTP endpoint, on axum as the instance manager's is: `GET /status` (JSON
//! [`SupervisorReport`]), `GET /healthz`, and `POST /switchover` (body `{"to": "NAME-N"}` or
//! `{"to": null}`, with `Authorization: Bearer <api-token>`, checked by the instance manager's
//! own token check), which answers the queued request's ticket; its outcome then shows in
//! `/status` under `failover.switchover`. Every answer is JSON; anything else is 404.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;
use stator_failover::SwitchoverDesk;
use tokio::net::TcpListener;

use crate::report::SupervisorReport;
use crate::state::DatabaseDir;

/// Largest request body accepted.
const MAX_REQUEST_BODY: usize = 4096;

/// What the supervisor's HTTP endpoint shares with the supervisor.
#[derive(Clone)]
pub struct StatusEndpoint {
    pub report: Arc<Mutex<SupervisorReport>>,
    pub desk: Arc<Mutex<SwitchoverDesk>>,
    pub secrets_dir: PathBuf,
    /// `metadata.name`: `POST /switchover` names `NAME-N`.
    pub database: String,
    /// Where the applied spec says how many instances there are (a target must be one).
    pub dir: DatabaseDir,
}

/// The endpoint's routes.
pub fn router(endpoint: StatusEndpoint) -> Router {
    Router::new()
        .route("/status", get(status))
        .route("/healthz", get(healthz))
        .route("/switchover", post(switchover))
        .fallback(not_found)
        .method_not_allowed_fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_REQUEST_BODY))
        .with_state(endpoint)
}

/// Serves `listener` until the task is aborted; over TLS only when `tls` is given (a plaintext
/// request then gets no answer, so the token of `POST /switchover` never crosses in clear).
pub async fn serve(
    listener: TcpListener,
    endpoint: StatusEndpoint,
    tls: Option<Arc<rustls::ServerConfig>>,
) {
    let served = match tls {
        Some(config) => match stator_instance::https::TlsListener::new(listener, config) {
            Ok(listener) => axum::serve(listener, router(endpoint)).await,
            Err(e) => Err(e),
        },
        None => axum::serve(listener, router(endpoint)).await,
    };
    if let Err(e) = served {
        tracing::error!("the supervisor's status endpoint stopped: {e}");
    }
}

/// `body`, already JSON, as the answer with `code`.
fn json_text(code: StatusCode, body: String) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn error(code: StatusCode, message: String) -> Response {
    json_text(code, json!({ "error": message }).to_string())
}

async fn status(State(e): State<StatusEndpoint>) -> Response {
    let body = e
        .report
        .lock()
        .ok()
        .and_then(|r| serde_json::to_string(&*r).ok())
        .unwrap_or_else(|| "{}".into());
    json_text(StatusCode::OK, body)
}

async fn healthz() -> Response {
    json_text(StatusCode::OK, "\"ok\"".into())
}

async fn not_found() -> Response {
    json_text(StatusCode::NOT_FOUND, "\"not found\"".into())
}

async fn switchover(State(e): State<StatusEndpoint>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refusal) = stator_instance::api_token::refusal(&e.secrets_dir, &headers) {
        return refusal;
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct SwitchoverBody {
        #[serde(default)]
        to: Option<String>,
    }
    let parsed: SwitchoverBody = match serde_json::from_slice(&body) {
        Ok(b) => b,
        Err(err) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("body: {err}; expected {{\"to\": \"NAME-N\"}} or {{\"to\": null}}"),
            );
        }
    };
    let to = match parsed.to {
        None => None,
        Some(name) => match target(&e, &name) {
            Ok(ordinal) => Some((name, ordinal)),
            Err(why) => return error(StatusCode::BAD_REQUEST, why.to_string()),
        },
    };
    let ticket = match e.desk.lock() {
        Ok(mut desk) => desk.request(to),
        Err(_) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the desk is broken".into(),
            );
        }
    };
    tracing::info!(
        "switchover requested (#{}, to {})",
        ticket.id,
        ticket.to.as_deref().unwrap_or("the most advanced replica")
    );
    json_text(
        StatusCode::ACCEPTED,
        serde_json::to_string(&ticket).unwrap_or_default(),
    )
}

/// A switchover target that is no instance of the database.
#[derive(Debug, thiserror::Error)]
#[error("to: {name:?} is not an instance of {database} (expected one of {})", expected(.valid))]
struct UnknownInstance {
    name: String,
    database: String,
    /// The instances the applied spec has.
    valid: Vec<String>,
}

fn expected(valid: &[String]) -> String {
    if valid.is_empty() {
        "none: no spec is applied".to_string()
    } else {
        valid.join(", ")
    }
}

/// The ordinal of `name`, an instance the applied spec has.
fn target(e: &StatusEndpoint, name: &str) -> Result<u32, UnknownInstance> {
    let instances = e
        .dir
        .read_applied()
        .ok()
        .flatten()
        .map_or(0, |a| a.database.spec.instances);
    name.strip_prefix(&e.database)
        .and_then(|r| r.strip_prefix('-'))
        .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|r| r.parse::<u32>().ok())
        .filter(|o| *o < instances)
        .ok_or_else(|| UnknownInstance {
            name: name.to_string(),
            database: e.database.clone(),
            valid: (0..instances)
                .map(|o| format!("{}-{o}", e.database))
                .collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use std::path::Path;
    use std::time::Duration;

    use stator_failover::client;

    use crate::state::{AppliedSpec, create_dir};

    fn endpoint(tmp: &Path) -> StatusEndpoint {
        let secrets = tmp.join("secrets");
        std::fs::create_dir(&secrets).unwrap();
        let token = secrets.join("api-token");
        std::fs::write(&token, "s3cret\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        let db = stator_api::load_database(
            "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: pg}\nspec: {engine: postgres, instances: 3}\n",
        )
        .unwrap()
        .database;
        let dir = crate::state::StateDir {
            root: tmp.to_path_buf(),
        }
        .database_of(&db);
        let applied = AppliedSpec {
            generation: 1,
            database: db,
        };
        create_dir(&dir.root, 0o700).unwrap();
        dir.write_applied(&applied).unwrap();
        StatusEndpoint {
            report: Arc::new(Mutex::new(crate::supervisor::initial_report(
                &applied, &dir,
            ))),
            desk: Arc::new(Mutex::new(SwitchoverDesk::default())),
            secrets_dir: secrets,
            database: "pg".into(),
            dir,
        }
    }

    /// `POST /switchover` with `body` (and the token, when given); status and body.
    async fn post(port: u16, token: Option<&str>, body: &str) -> (u16, String) {
        let (code, answer) = client::request(
            "127.0.0.1",
            port,
            "POST",
            "/switchover",
            token,
            Some(body),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        (code, String::from_utf8(answer).unwrap())
    }

    #[tokio::test]
    async fn a_switchover_request_needs_the_token_and_names_an_instance_of_the_database() {
        let tmp = tempfile::tempdir().unwrap();
        let e = endpoint(tmp.path());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(serve(listener, e.clone(), None));
        assert_eq!(post(port, None, "{}").await.0, 401);
        assert_eq!(post(port, Some("wrong"), "{}").await.0, 401);
        let (code, body) = post(port, Some("s3cret"), "{\"to\": \"other-1\"}").await;
        assert_eq!(code, 400);
        assert!(
            body.contains("to: \\\"other-1\\\" is not an instance of pg"),
            "{body}"
        );
        // An instance the database never had: refused, naming the ones it has.
        let (code, body) = post(port, Some("s3cret"), "{\"to\": \"pg-7\"}").await;
        assert_eq!(code, 400);
        assert!(
            body.contains(
                "to: \\\"pg-7\\\" is not an instance of pg (expected one of pg-0, pg-1, pg-2)"
            ),
            "{body}"
        );
        let (code, _) = post(port, Some("s3cret"), "{\"to\": 3").await;
        assert_eq!(code, 400);
        assert!(
            e.desk.lock().unwrap().last().is_none(),
            "nothing was queued"
        );
        let (code, body) = post(port, Some("s3cret"), "{\"to\": \"pg-2\"}").await;
        assert_eq!(code, 202, "{body}");
        let ticket: stator_failover::SwitchoverTicket = serde_json::from_str(&body).unwrap();
        assert_eq!((ticket.id, ticket.to.as_deref()), (1, Some("pg-2")));
        assert_eq!(ticket.state, stator_failover::TicketState::Queued);
        server.abort();
    }

    #[tokio::test]
    async fn status_and_unknown_paths_answer_json() {
        let tmp = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(serve(listener, endpoint(tmp.path()), None));
        let report: SupervisorReport =
            client::get_json("127.0.0.1", port, "/status", Duration::from_secs(5))
                .await
                .unwrap();
        assert_eq!(report.engine, "postgres");
        let healthz: String =
            client::get_json("127.0.0.1", port, "/healthz", Duration::from_secs(5))
                .await
                .unwrap();
        assert_eq!(healthz, "ok");
        let missing = client::get_json::<serde_json::Value>(
            "127.0.0.1",
            port,
            "/nothing",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&missing, client::ClientError::Status(_, 404, body) if body == "\"not found\""),
            "{missing}"
        );
        // A known path asked with the wrong method is not found either.
        let wrong = client::get_json::<serde_json::Value>(
            "127.0.0.1",
            port,
            "/switchover",
            Duration::from_secs(5),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(&wrong, client::ClientError::Status(_, 404, _)),
            "{wrong}"
        );
        server.abort();
    }
}
