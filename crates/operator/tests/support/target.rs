//! A `Database` on Kubernetes as the consistency checker's target, shared by the stand-in suite
//! and the real-cluster suite: writes go through `NAME-rw` where the test reaches it, each pod
//! is probed and verified as its DNS name, the primary and readiness are what the `Database`
//! status says. The tests run the drills themselves: this target injects no fault.

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams};
use stator_api::names::{LABEL_DATABASE, secret_keys};
use stator_api::{Database, Engine, Phase};
use stator_check::checker::{Access, CheckOptions, CheckReport, Writing};
use stator_check::{CheckError, Fault, Injection, Observation, Target};
use stator_engine::tls::{CaTrust, Dial, Trust};

/// How the test reaches a pod's server.
#[derive(Clone)]
pub enum Reach {
    /// At the pod's IP and the engine's port (the stand-in's pods have loopback addresses).
    PodIp,
    /// At `127.0.0.1` and a local port per pod name (a real cluster, whose pod IPs the test
    /// cannot reach: a port forwarded to the pod).
    Forwarded(Arc<BTreeMap<String, u16>>),
}

#[derive(Clone)]
pub struct KubeTarget {
    db: Database,
    dbs: Api<Database>,
    pods: Api<Pod>,
    access: Access,
    ca: CaTrust,
    namespace: String,
    /// Where `NAME-rw` answers the test: host and port.
    rw: (String, u16),
    reach: Reach,
}

impl KubeTarget {
    /// The Database `name` in `namespace` (read with `op`, the operator's or a user's client;
    /// its pods listed with `admin`), the app login and the monitor's password from its
    /// credentials Secret, trusted through `ca`.
    pub async fn new(
        op: &kube::Client,
        admin: &kube::Client,
        namespace: &str,
        name: &str,
        ca: CaTrust,
        rw: (String, u16),
        reach: Reach,
    ) -> KubeTarget {
        let dbs: Api<Database> = Api::namespaced(op.clone(), namespace);
        let db = dbs.get(name).await.expect("the Database");
        let secrets: Api<Secret> = Api::namespaced(op.clone(), namespace);
        let credentials = secrets
            .get(&format!("{name}-credentials"))
            .await
            .expect("the credentials")
            .data
            .expect("data");
        let value = |key: &str| {
            credentials
                .get(key)
                .map(|v| String::from_utf8_lossy(&v.0).to_string())
                .unwrap_or_default()
        };
        let engine: Engine = db.spec.engine;
        KubeTarget {
            access: Access {
                engine,
                user: "app".into(),
                password: value(secret_keys::APP_PASSWORD),
                database: "app".into(),
                monitor_user: stator_engine::mysql_family::config::MONITOR_USER.into(),
                monitor_password: value(secret_keys::MONITOR_PASSWORD),
            },
            db,
            dbs,
            pods: Api::namespaced(admin.clone(), namespace),
            ca,
            namespace: namespace.into(),
            rw,
            reach,
        }
    }

    fn name(&self) -> String {
        self.db.metadata.name.clone().unwrap_or_default()
    }
}

impl Target for KubeTarget {
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name())
    }

    fn database(&self) -> &Database {
        &self.db
    }

    fn access(&self) -> &Access {
        &self.access
    }

    fn rw(&self) -> Dial {
        Dial {
            host: self.rw.0.clone(),
            port: self.rw.1,
            trust: Trust::Verified {
                ca: self.ca.clone(),
                server_name: format!("{}-rw.{}.svc", self.name(), self.namespace),
            },
        }
    }

    async fn instances(&self) -> Result<Vec<(String, Dial)>, CheckError> {
        let name = self.name();
        let pods = self
            .pods
            .list(&ListParams::default().labels(&format!("{LABEL_DATABASE}={name}")))
            .await
            .map_err(|e| CheckError::Target(format!("list the pods of {name}: {e}")))?;
        Ok(pods
            .items
            .into_iter()
            .filter_map(|p| {
                let pod = p.metadata.name?;
                let (host, port) = match &self.reach {
                    Reach::PodIp => (p.status?.pod_ip?, self.access.engine.port()),
                    Reach::Forwarded(ports) => ("127.0.0.1".to_string(), *ports.get(&pod)?),
                };
                let dial = Dial {
                    host,
                    port,
                    trust: Trust::Verified {
                        ca: self.ca.clone(),
                        server_name: format!("{pod}.{name}-headless.{}.svc", self.namespace),
                    },
                };
                Some((pod, dial))
            })
            .collect())
    }

    async fn observe(&self) -> Result<Observation, CheckError> {
        let db = self
            .dbs
            .get(&self.name())
            .await
            .map_err(|e| CheckError::Target(format!("get the Database: {e}")))?;
        let status = db.status.unwrap_or_default();
        Ok(Observation {
            primary: status.current_primary.clone().unwrap_or_default(),
            ready: status.phase == Some(Phase::Ready),
            unready: format!("phase {:?}", status.phase),
        })
    }

    fn inject(&self, _: &str, _: Fault) -> Result<Injection, CheckError> {
        Err(CheckError::Target("the test runs the drills".into()))
    }

    fn resume(&self, _: &str) -> Result<Injection, CheckError> {
        Err(CheckError::Target("the test runs the drills".into()))
    }
}

/// The checker's writer and watcher over `target`, started once rows go through rw.
pub async fn start_writing(target: &KubeTarget) -> Writing {
    Writing::start(target, &CheckOptions::default(), &|line| {
        println!("checker: {line}")
    })
    .await
    .expect("the checker's table through rw")
}

/// Stops the checker, prints its report and holds it to its verdict: no moment with two
/// writable instances, no acknowledged write lost (replication is synchronous).
pub async fn finish_writing(writing: Writing, target: &KubeTarget) -> CheckReport {
    let report = finish_writing_asynchronous(writing, target).await;
    assert_eq!(report.writes_lost, 0, "{}", report.render());
    report
}

/// [`finish_writing`] for asynchronous replication, which may lose the acknowledged writes a
/// lost primary had not sent yet: never two writable instances, and the checker saw writes
/// and probed throughout; the writes lost are printed, not held to zero.
pub async fn finish_writing_asynchronous(writing: Writing, target: &KubeTarget) -> CheckReport {
    let report = writing
        .finish(target, &|line| println!("checker: {line}"))
        .await;
    println!("{}", report.render());
    assert!(
        report.split_brain.is_empty(),
        "moments with two writable instances:\n{}",
        report.render()
    );
    assert!(report.aborted.is_none(), "{}", report.render());
    assert!(report.writes_acknowledged > 0, "{}", report.render());
    assert!(report.probe_rounds > 0, "{}", report.render());
    report
}
