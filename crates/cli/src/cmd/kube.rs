//! `stator status|switchover|uri --kube`: the same commands against a cluster. They read the
//! `Database` the operator keeps the status of (kubeconfig as kubectl finds it) and print what
//! the local commands print: the failover part with the same code, `render_failover`.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use stator_api::Database;
use stator_api::names::secret_keys;
use stator_failover::TicketState;
use stator_operator::kube_cli;

use crate::cmd::local::{Output, UriEndpoint};
use crate::error::{CliError, CliResult};

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

fn block_on<T>(f: impl Future<Output = Result<T, CliError>>) -> Result<T, CliError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| CliError::Failed(format!("cannot start the async runtime: {e}")))?
        .block_on(f)
}

/// The table `stator status` prints, from the Database's status.
pub fn render_status(db: &Database) -> String {
    let status = db.status.clone().unwrap_or_default();
    let mut out = format!(
        "{}/{}  {} {}  phase {}  generation {}/{}\nprimary: {}\n",
        db.namespace(),
        db.name(),
        db.spec.engine.as_str(),
        db.version(),
        status
            .phase
            .map(|p| format!("{p:?}"))
            .unwrap_or_else(|| "-".into()),
        status.observed_generation.unwrap_or(0),
        db.metadata.generation.unwrap_or(0),
        status.current_primary.as_deref().unwrap_or("-"),
    );
    out.push_str(&format!(
        "{:<24} {:<8} {:<6} {:<14} {:<4} {:<10} {}\n",
        "NAME", "ROLE", "READY", "POSITION", "TL", "LAG", "MESSAGE"
    ));
    for i in &status.instances {
        out.push_str(&format!(
            "{:<24} {:<8} {:<6} {:<14} {:<4} {:<10} {}\n",
            i.name,
            i.role.map(|r| r.as_str()).unwrap_or("-"),
            if i.ready { "yes" } else { "no" },
            i.position.as_deref().unwrap_or("-"),
            i.timeline
                .map(|t| t.to_string())
                .unwrap_or_else(|| "-".into()),
            i.lag.map(|l| l.to_string()).unwrap_or_else(|| "-".into()),
            i.message.as_deref().unwrap_or(""),
        ));
    }
    for c in &status.conditions {
        out.push_str(&format!(
            "condition {}={} ({}){}\n",
            c.type_,
            c.status,
            c.reason,
            if c.message.is_empty() {
                String::new()
            } else {
                format!(": {}", c.message)
            }
        ));
    }
    if let Some(report) = stator_operator::ha::saved_report(db) {
        out.push_str(&stator_failover::render_failover(&report));
    }
    out
}

pub fn status(spec: &Database, output: Output) -> CliResult {
    let db = block_on(async {
        let client = kube_cli::client().await.map_err(failed)?;
        kube_cli::get(&client, spec).await.map_err(failed)
    })?;
    let encode =
        |e: &dyn std::fmt::Display| CliError::Failed(format!("cannot encode the status: {e}"));
    match output {
        Output::Table => print!("{}", render_status(&db)),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(&db.status).map_err(|e| encode(&e))?
        ),
        Output::Yaml => print!(
            "{}",
            serde_norway::to_string(&db.status).map_err(|e| encode(&e))?
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// The URI through the `NAME-rw` / `NAME-ro` Service (its cluster DNS name), with the app
/// password read from the credentials Secret.
pub fn uri(spec: &Database, endpoint: UriEndpoint) -> CliResult {
    let password = block_on(async {
        let client = kube_cli::client().await.map_err(failed)?;
        let name = spec.credentials_secret_name();
        let secret = Api::<Secret>::namespaced(client, spec.namespace())
            .get(&name)
            .await
            .map_err(|e| CliError::Failed(format!("Secret {}/{name}: {e}", spec.namespace())))?;
        secret
            .data
            .unwrap_or_default()
            .get(secret_keys::APP_PASSWORD)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .ok_or_else(|| {
                CliError::Failed(format!(
                    "Secret {}/{name} holds no {}",
                    spec.namespace(),
                    secret_keys::APP_PASSWORD
                ))
            })
    })?;
    let service = match endpoint {
        UriEndpoint::Rw => spec.rw_service_name(),
        UriEndpoint::Ro => spec.ro_service_name(),
    };
    let host = format!("{service}.{}.svc", spec.namespace());
    // The Service's DNS name; TLS verification needs the database's CA (in NAME-tls), which
    // this URI does not name yet.
    let scheme = match spec.spec.engine {
        stator_api::Engine::Postgres => "postgresql",
        stator_api::Engine::Mysql | stator_api::Engine::Mariadb => "mysql",
    };
    let enc = stator_local::inspect::percent_encode;
    println!(
        "{scheme}://{}:{}@{host}:{}/{}",
        enc(&spec.spec.bootstrap.owner),
        enc(&password),
        spec.spec.engine.port(),
        enc(&spec.spec.bootstrap.database)
    );
    Ok(ExitCode::SUCCESS)
}

/// Sets the switchover annotation and waits for the operator to report the request's outcome.
pub fn switchover(spec: &Database, to: Option<&str>, timeout: Duration) -> CliResult {
    block_on(async {
        let client = kube_cli::client().await.map_err(failed)?;
        let id = kube_cli::request_switchover(&client, spec, to)
            .await
            .map_err(failed)?;
        let start = Instant::now();
        loop {
            let db = kube_cli::get(&client, spec).await.map_err(failed)?;
            let taken = db
                .status
                .as_ref()
                .and_then(|s| s.switchover.clone())
                .filter(|s| s.id == id);
            if let Some(s) = taken {
                let done = TicketState::Done.as_str();
                let refused = TicketState::Refused.as_str();
                let abandoned = TicketState::Abandoned.as_str();
                match s.state.as_str() {
                    state if state == done => {
                        println!(
                            "switchover done: primary {}",
                            db.status
                                .and_then(|s| s.current_primary)
                                .unwrap_or_default()
                        );
                        return Ok(ExitCode::SUCCESS);
                    }
                    state if state == refused || state == abandoned => {
                        return Err(CliError::Failed(s.message.unwrap_or(s.state)));
                    }
                    _ => {}
                }
            }
            if start.elapsed() > timeout {
                return Err(CliError::Failed(format!(
                    "switchover {id}: no outcome within {}s (the operator may still carry it out; see stator status --kube)",
                    timeout.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_shows_instances_conditions_and_the_last_failover() {
        let db: Database = serde_json::from_value(serde_json::json!({
            "apiVersion": "stator.dev/v1alpha1", "kind": "Database",
            "metadata": {"name": "pg", "namespace": "apps", "generation": 2},
            "spec": {"engine": "postgres", "instances": 2},
            "status": {
                "phase": "Ready", "observedGeneration": 2, "currentPrimary": "pg-1", "readyInstances": 2,
                "instances": [
                    {"name": "pg-0", "role": "replica", "ready": true, "position": "0/3000060", "timeline": 2, "lag": 0},
                    {"name": "pg-1", "role": "primary", "ready": true, "position": "0/3000060", "timeline": 2}
                ],
                "conditions": [{"type": "Ready", "status": "True", "reason": "Healthy", "message": "",
                                "lastTransitionTime": "2026-01-01T00:00:00Z"}],
                "failover": {"report": {"term": 2, "primary": "pg-1", "reason": "Healthy", "message": "",
                    "last": {"kind": "failover", "from": "pg-0", "to": "pg-1", "outcome": "done", "term": 2, "startedAtMs": 1}}}
            }
        }))
        .unwrap();
        let table = render_status(&db);
        assert!(table.contains("apps/pg"), "{table}");
        assert!(table.contains("primary: pg-1"), "{table}");
        assert!(
            table
                .lines()
                .any(|l| l.starts_with("pg-0") && l.contains("replica") && l.contains("yes")),
            "{table}"
        );
        assert!(table.contains("condition Ready=True (Healthy)"), "{table}");
        assert!(table.contains("last failover: pg-0 -> pg-1"), "{table}");
    }
}
