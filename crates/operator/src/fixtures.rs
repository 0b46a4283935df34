//! Test fixtures in the shape of controller-rs' `fixtures.rs`: a mock API server (a tower
//! service) that records every request, in order, and answers through a [`Server`] the test
//! chooses; and a `Database` builder with defaults.

use std::sync::{Arc, Mutex};

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};
use stator_api::Database;

/// One request the mock API server received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query.
    pub uri: String,
    pub body: Value,
}

impl Seen {
    /// `METHOD path` without the query, e.g. `PATCH /api/v1/namespaces/ns/services/db-rw`.
    pub fn line(&self) -> String {
        let path = self.uri.split('?').next().unwrap_or_default();
        format!("{} {path}", self.method)
    }
}

/// How the mock API server answers.
pub type Server = dyn Fn(&Seen) -> (u16, Value) + Send + Sync;

/// A client whose every request is recorded in the returned log and answered by `server`.
pub fn mock(server: Arc<Server>) -> (Client, Arc<Mutex<Vec<Seen>>>) {
    let log: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let record = log.clone();
    let service = tower::service_fn(move |req: Request<Body>| {
        let record = record.clone();
        let server = server.clone();
        async move {
            let method = req.method().to_string();
            let uri = req
                .uri()
                .path_and_query()
                .map(|p| p.to_string())
                .unwrap_or_default();
            let bytes = req.into_body().collect().await?.to_bytes();
            let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let seen = Seen { method, uri, body };
            let (code, answer) = server(&seen);
            record.lock().unwrap().push(seen);
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                Response::builder()
                    .status(code)
                    .header("content-type", "application/json")
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            )
        }
    });
    (Client::new(service, "default"), log)
}

/// The usual API server: applies and patches answer with what was sent, creates too, GETs
/// of single objects 404, lists are empty.
pub fn echo(seen: &Seen) -> (u16, Value) {
    if seen.uri.contains("/databases/") && seen.method != "GET" {
        // A Database answers as the whole object, with the status that was written.
        let mut db = serde_json::to_value(DatabaseBuilder::test().finalized().build()).unwrap();
        if let Some(status) = seen.body.get("status") {
            db["status"] = status.clone();
        }
        return (200, db);
    }
    match seen.method.as_str() {
        "PATCH" | "PUT" => (200, seen.body.clone()),
        "POST" => (201, seen.body.clone()),
        "GET" if is_list(&seen.uri) => (
            200,
            json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": []}),
        ),
        "GET" => not_found(),
        _ => (200, json!({})),
    }
}

/// `/api/v1/namespaces/NS/KIND` or `/apis/GROUP/VERSION/namespaces/NS/KIND`: a list.
fn is_list(uri: &str) -> bool {
    let path = uri.split('?').next().unwrap_or_default();
    let segments = path.split('/').filter(|s| !s.is_empty()).count();
    (path.starts_with("/api/") && segments == 5) || (path.starts_with("/apis/") && segments == 6)
}

pub fn not_found() -> (u16, Value) {
    (
        404,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

/// A `Database` the API server holds: PostgreSQL, 3 instances, uid and generation set.
pub struct DatabaseBuilder(pub Database);

impl DatabaseBuilder {
    pub fn test() -> DatabaseBuilder {
        let db: Database = serde_json::from_value(json!({
            "apiVersion": "stator.dev/v1alpha1",
            "kind": "Database",
            "metadata": {"name": "db", "namespace": "ns", "uid": "0b5e1f1e-0000-4000-8000-000000000001",
                         "generation": 1, "resourceVersion": "1"},
            "spec": {"engine": "postgres", "instances": 3},
        }))
        .expect("a valid Database");
        DatabaseBuilder(db)
    }

    /// The operator's finalizer is on it.
    pub fn finalized(mut self) -> Self {
        self.0.metadata.finalizers = Some(vec![crate::FINALIZER.into()]);
        self
    }

    /// `spec.instances: 0`: never valid.
    pub fn invalid(mut self) -> Self {
        self.0.spec.instances = 0;
        self
    }

    pub fn build(self) -> Database {
        self.0
    }
}
