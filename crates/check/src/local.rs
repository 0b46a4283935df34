//! The local runtime as a check's [`Target`]: its ports on the listen address, its secrets, the
//! supervisor's report for the primary and readiness, and [`stator_local::chaos`] for faults.

use std::time::Duration;

use stator_api::instance::LocalPorts;
use stator_api::names::secret_keys;
use stator_api::{Database, Phase, Role};
// The monitoring user the MariaDB/MySQL probes log in as (the instance manager creates it).
use stator_engine::mysql_family::config::MONITOR_USER;
use stator_engine::tls::Dial;
use stator_failover::client;
use stator_local::chaos::{self, Injected};
use stator_local::report::SupervisorReport;
use stator_local::secrets::read_secret;
use stator_local::{DatabaseDir, LocalError};

use crate::checker::Access;
use crate::error::CheckError;
use crate::fault::Fault;
use crate::target::{Injection, Observation, Target};

/// A database running under its supervisor in a local state dir.
#[derive(Clone)]
pub struct LocalTarget {
    dir: DatabaseDir,
    db: Database,
    /// Where `rw` and every instance's server listen.
    host: String,
    access: Access,
    ports: LocalPorts,
}

impl LocalTarget {
    /// The database of `dir`: it must exist, have at least 2 instances and run.
    pub fn open(dir: &DatabaseDir) -> Result<LocalTarget, CheckError> {
        if !dir.exists() {
            return Err(LocalError::NotFound(dir.key()).into());
        }
        let db = dir
            .read_applied()?
            .ok_or_else(|| LocalError::NotFound(dir.key()))?
            .database;
        stator_local::transport::register(&db, dir)?;
        if db.spec.instances < 2 {
            return Err(LocalError::Invalid(format!(
                "{}: spec.instances is {}; a failover needs at least 2 instances",
                dir.key(),
                db.spec.instances
            ))
            .into());
        }
        if stator_local::runtime::running_supervisor(dir).is_none() {
            return Err(CheckError::NotRunning {
                database: dir.key(),
            });
        }
        let password = read_secret(&dir.secrets_dir(), secret_keys::APP_PASSWORD)?;
        let monitor_password = read_secret(&dir.secrets_dir(), secret_keys::MONITOR_PASSWORD)?;
        let access = Access {
            engine: db.spec.engine,
            user: db.spec.bootstrap.owner.clone(),
            password,
            database: db.spec.bootstrap.database.clone(),
            monitor_user: MONITOR_USER.into(),
            monitor_password,
        };
        let ports = LocalPorts::of(&db);
        Ok(LocalTarget {
            dir: dir.clone(),
            host: db.spec.local.listen_address.clone(),
            db,
            access,
            ports,
        })
    }
}

impl Target for LocalTarget {
    fn key(&self) -> String {
        self.dir.key()
    }

    fn database(&self) -> &Database {
        &self.db
    }

    fn access(&self) -> &Access {
        &self.access
    }

    fn rw(&self) -> Dial {
        Dial::registered(&self.host, self.ports.rw())
    }

    async fn instances(&self) -> Result<Vec<(String, Dial)>, CheckError> {
        Ok((0..self.db.spec.instances)
            .map(|o| {
                let port = self.ports.server(o);
                (self.db.instance_name(o), Dial::registered(&self.host, port))
            })
            .collect())
    }

    async fn observe(&self) -> Result<Observation, CheckError> {
        let report = client::get_json::<SupervisorReport>(
            &self.host,
            self.ports.supervisor(),
            "/status",
            Duration::from_secs(2),
        )
        .await
        .map_err(CheckError::Unobservable)?;
        Ok(Observation {
            ready: cluster_ready(&report),
            unready: describe_unready(&report),
            primary: report.primary,
        })
    }

    fn inject(&self, instance: &str, fault: Fault) -> Result<Injection, CheckError> {
        let injected = match fault {
            Fault::Kill => chaos::kill(&self.dir, instance, false),
            Fault::KillNode => chaos::kill(&self.dir, instance, true),
            Fault::Stop => chaos::stop(&self.dir, instance, false),
            Fault::StopNode => chaos::stop(&self.dir, instance, true),
        }?;
        Ok(injection(&injected))
    }

    fn resume(&self, instance: &str) -> Result<Injection, CheckError> {
        Ok(injection(&chaos::resume(&self.dir, instance)?))
    }
}

fn injection(injected: &Injected) -> Injection {
    Injection {
        summary: injected.summary(),
        pids: injected.processes.iter().map(|p| p.pid).collect(),
    }
}

/// Ready: the supervisor says so, every instance is ready, the recorded primary reports the
/// primary role.
fn cluster_ready(report: &SupervisorReport) -> bool {
    report.phase == Phase::Ready
        && report.is_settled()
        && report
            .instances
            .iter()
            .filter(|i| !i.excess)
            .all(|i| i.ready())
        && report.instances.iter().any(|i| {
            i.name == report.primary
                && i.report
                    .as_ref()
                    .is_some_and(|r| r.role == Some(Role::Primary))
        })
}

fn describe_unready(report: &SupervisorReport) -> String {
    let states: Vec<String> = report
        .instances
        .iter()
        .map(|i| {
            let role = i
                .report
                .as_ref()
                .and_then(|r| r.role)
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into());
            format!(
                "{} {} {} {}",
                i.name,
                role,
                i.state,
                if i.ready() { "ready" } else { "not ready" }
            )
        })
        .collect();
    format!(
        "phase {:?}, primary {}: {}{}",
        report.phase,
        report.primary,
        states.join("; "),
        report
            .message
            .as_ref()
            .map(|m| format!(" ({m})"))
            .unwrap_or_default()
    )
}
