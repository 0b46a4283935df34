//! A runtime of the tests: instead of processes, pods and proxies it keeps what it was told
//! (routes, the primary record, the state) and a log of what it was asked to do; the clocks
//! move only when a test moves them. The decision core stays the real one.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;

use stator_api::Database;
use stator_api::instance::{Endpoint, InstanceReport, ServerState};
use stator_api::{Engine, Role};
use stator_control::FenceMethod;
use stator_engine::tls::Dial;

use crate::history::FailoverState;
use crate::runtime::{FinalCheckpoint, Runtime, Sighting, Work};

/// What the shell asked the fake runtime to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Did {
    Fence(u32, FenceMethod),
    ReadOnly(u32, bool),
    Unroute(u32),
    Cut(u32),
    StopForRebuild(u32),
    MoveAside(u32),
    RecordPrimary(u32),
    Create(u32),
    Remove(u32),
}

#[derive(Debug)]
pub struct FakeRuntime {
    pub monotonic_ms: u64,
    pub saved: Option<FailoverState>,
    pub recorded: Option<u32>,
    /// Instances whose data dir holds data.
    pub data: BTreeSet<u32>,
    /// Servers running without their manager: ordinal → pid.
    pub servers: BTreeMap<u32, u32>,
    pub held: BTreeMap<u32, String>,
    pub checkpoints: BTreeMap<u32, FinalCheckpoint>,
    pub rw: Option<u32>,
    pub ro: Vec<u32>,
    pub did: Vec<Did>,
    /// Where every server is reached (the shell asks a MySQL-family primary for its greeting
    /// directly); nothing listens on port 1.
    pub server_port: u16,
    /// A kill fence is work that never ends (an order over HTTP to an address nothing
    /// answers), as the operator's are; otherwise it is done at once (a signal), as locally.
    pub hanging_kills: bool,
}

/// The wall clock is the monotonic one moved by this much.
const WALL_OFFSET_MS: u64 = 1_764_000_000_000;

impl FakeRuntime {
    /// Instances `0..instances` hold data; `primary` is recorded.
    pub fn new(instances: u32, primary: Option<u32>) -> Self {
        FakeRuntime {
            monotonic_ms: 1_000_000,
            saved: None,
            recorded: primary,
            data: (0..instances).collect(),
            servers: BTreeMap::new(),
            held: BTreeMap::new(),
            checkpoints: BTreeMap::new(),
            rw: None,
            ro: Vec::new(),
            did: Vec::new(),
            server_port: 1,
            hanging_kills: false,
        }
    }

    /// Everything done since the last call.
    pub fn take_did(&mut self) -> Vec<Did> {
        std::mem::take(&mut self.did)
    }
}

impl Runtime for FakeRuntime {
    type Error = String;

    fn monotonic_ms(&self) -> u64 {
        self.monotonic_ms
    }

    fn wall_ms(&self) -> u64 {
        WALL_OFFSET_MS + self.monotonic_ms
    }

    fn server_endpoint(&self, db: &Database, ordinal: u32) -> Endpoint {
        Endpoint {
            instance: db.instance_name(ordinal),
            host: "127.0.0.1".into(),
            port: self.server_port,
        }
    }

    /// Nothing listens there: an order fails at once, and stays in flight for its settle time.
    fn manager_address(&self, _db: &Database, _ordinal: u32) -> Dial {
        Dial::registered("127.0.0.1", 1)
    }

    fn rw_address(&self, _db: &Database) -> Dial {
        Dial::registered("127.0.0.1", 1)
    }

    fn api_token(&self) -> Result<String, String> {
        Ok("token".into())
    }

    /// No direct query, no write check: what the managers report is all there is.
    fn monitor_password(&self) -> Option<String> {
        None
    }

    fn load_state(&self) -> Result<Option<FailoverState>, String> {
        Ok(self.saved.clone())
    }

    fn save_state(&mut self, state: &FailoverState) -> Result<(), String> {
        self.saved = Some(state.clone());
        Ok(())
    }

    fn recorded_primary(&self) -> Option<u32> {
        self.recorded
    }

    fn record_primary(&mut self, ordinal: u32, _name: &str) -> Result<(), String> {
        self.recorded = Some(ordinal);
        self.did.push(Did::RecordPrimary(ordinal));
        Ok(())
    }

    fn known_ordinals(&self) -> Vec<u32> {
        self.data.iter().copied().collect()
    }

    fn server_pid(&self, _db: &Database, ordinal: u32) -> Option<u32> {
        self.servers.get(&ordinal).copied()
    }

    fn holds_data(&self, ordinal: u32) -> bool {
        self.data.contains(&ordinal)
    }

    fn data_lost(&self, ordinal: u32, _instances: u32) -> bool {
        !self.data.contains(&ordinal)
    }

    fn data_location(&self, ordinal: u32) -> String {
        format!("data-{ordinal}")
    }

    fn final_checkpoint(
        &self,
        ordinal: u32,
    ) -> impl Future<Output = Option<FinalCheckpoint>> + Send {
        let found = self.checkpoints.get(&ordinal).cloned();
        async move { found }
    }

    fn held(&self, ordinal: u32) -> Option<String> {
        self.held.get(&ordinal).cloned()
    }

    fn set_rw(&mut self, _db: &Database, rw: Option<u32>) {
        self.rw = rw;
    }

    fn set_ro(&mut self, _db: &Database, ro: &[u32]) {
        self.ro = ro.to_vec();
    }

    fn cut(&mut self, _db: &Database, ordinal: u32) -> usize {
        self.did.push(Did::Cut(ordinal));
        0
    }

    fn unroute(&mut self, _db: &Database, ordinal: u32) {
        if self.rw == Some(ordinal) {
            self.rw = None;
        }
        self.ro.retain(|o| *o != ordinal);
        self.did.push(Did::Unroute(ordinal));
    }

    fn fence(
        &mut self,
        _db: &Database,
        ordinal: u32,
        method: FenceMethod,
        _manager: Option<u32>,
    ) -> Option<Work> {
        self.did.push(Did::Fence(ordinal, method));
        match method {
            FenceMethod::Shutdown => Some(Work {
                what: "shutdown".into(),
                task: tokio::spawn(async {}),
            }),
            FenceMethod::Kill if self.hanging_kills => Some(Work {
                what: "kill".into(),
                task: tokio::spawn(std::future::pending()),
            }),
            _ => None,
        }
    }

    fn set_read_only(&mut self, _db: &Database, ordinal: u32, on: bool) -> Option<Work> {
        self.did.push(Did::ReadOnly(ordinal, on));
        None
    }

    fn stop_for_rebuild(&mut self, ordinal: u32, _manager: Option<u32>) {
        self.did.push(Did::StopForRebuild(ordinal));
    }

    fn move_data_aside(&mut self, ordinal: u32) -> Result<String, String> {
        self.data.remove(&ordinal);
        self.did.push(Did::MoveAside(ordinal));
        Ok(format!("data-{ordinal}.diverged"))
    }

    fn create(&mut self, _db: &Database, ordinal: u32) {
        self.did.push(Did::Create(ordinal));
    }

    fn remove(&mut self, _db: &Database, ordinal: u32) {
        self.did.push(Did::Remove(ordinal));
    }
}

/// A database of `instances`, detection timeout 2 s.
pub fn database(engine: Engine, instances: u32) -> Database {
    let yaml = format!(
        "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {{name: db}}\n\
         spec: {{engine: {engine}, instances: {instances}, failover: {{detectionTimeout: 2s}}}}\n"
    );
    stator_api::load_database(&yaml).unwrap().database
}

/// A running instance's report: a ready primary, or a ready replica of `db-0` streaming.
pub fn report(ordinal: u32, role: Role, position: &str, timeline: u32) -> InstanceReport {
    InstanceReport {
        name: format!("db-{ordinal}"),
        state: ServerState::Running,
        role: Some(role),
        ready: true,
        pid: Some(100 + ordinal),
        manager_pid: 10 + ordinal,
        server_version: None,
        uptime_seconds: None,
        timeline: Some(timeline),
        position: Some(position.into()),
        received_position: (role == Role::Replica).then(|| position.into()),
        lag: None,
        lag_seconds: None,
        upstream: (role == Role::Replica).then(|| "db-0".into()),
        message: None,
        restarts: 0,
        read_only: role == Role::Replica,
        receiver_running: (role == Role::Replica).then_some(true),
        applier_running: None,
        replication_error: None,
        errant: None,
        holds_data: Some(true),
        backup: None,
    }
}

/// Instance `ordinal` with its manager running and reporting `report`.
pub fn seen(ordinal: u32, report: InstanceReport) -> Sighting {
    Sighting {
        ordinal,
        manager_pid: Some(report.manager_pid),
        report: Some(report),
        probe_error: None,
    }
}

/// Instance `ordinal` with no manager running.
pub fn gone(ordinal: u32) -> Sighting {
    Sighting {
        ordinal,
        manager_pid: None,
        report: None,
        probe_error: None,
    }
}

/// A port where every connection gets a server's first bytes, as a MySQL-family server greets.
pub async fn greeter() -> u16 {
    use tokio::io::AsyncWriteExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let _ = stream.write_all(b"\x4a\0\0\0\x0a").await;
        }
    });
    port
}
