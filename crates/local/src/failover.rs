//! The local runtime's part of failover: [`LocalRuntime`] implements the shared shell's
//! [`Runtime`](stator_failover::Runtime) with what only this machine has — the state dir
//! (`failover.json`, the `primary` record, hold files), processes (a fence is kill -9 of the
//! manager and the whole server process tree, a clean shutdown by SIGTERM, or `read_only` set
//! over the server's Unix socket), data dirs (moved aside for a rebuild, read with
//! `pg_controldata` for a stopped primary's final checkpoint) and the `rw` / `ro` proxies.
//!
//! It decides nothing: the shell ([`stator_failover::Failover`]) asks the decision core and
//! calls these for its actions. Holds (`stator drain`, drills) are files here too.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use stator_api::Database;
use stator_api::instance::{Endpoint, LocalPorts};
use stator_api::names::secret_keys;
use stator_control::FenceMethod;
use stator_engine::procfs;
use stator_engine::tls::Dial;
use stator_failover::{FailoverState, FinalCheckpoint, Runtime, Work};

pub use stator_failover::clock::{monotonic_ms, rfc3339, wall_ms};
pub use stator_failover::{
    FailoverEvent, FailoverReport, Sighting, SwitchoverDesk, SwitchoverTicket, Tick,
    render_failover, ro_falls_back,
};

use crate::error::LocalError;
use crate::process;
use crate::proxy::Routes;
use crate::secrets::read_secret;
use crate::state::{DatabaseDir, read_json, write_atomic, write_json};

/// The failover shell of a local database.
pub type Failover = stator_failover::Failover<LocalRuntime>;

/// `failover.json` in the database's directory.
pub fn failover_file(dir: &DatabaseDir) -> PathBuf {
    dir.root.join("failover.json")
}

/// `instances/NAME-N/hold`: while it exists the supervisor does not start instance N (a drain,
/// or a fault-injection drill that keeps a killed instance down). Its content says why.
/// `stator drain --uncordon` and `stator up` remove it.
pub fn hold_file(dir: &DatabaseDir, ordinal: u32) -> PathBuf {
    dir.instance_dir(ordinal).join("hold")
}

/// Holds instance `ordinal` down: the supervisor stops starting it until [`release`].
pub fn hold(dir: &DatabaseDir, ordinal: u32, why: &str) -> Result<(), LocalError> {
    dir.create_shared_dir(&dir.instance_dir(ordinal))?;
    write_atomic(
        &hold_file(dir, ordinal),
        format!("{why}\n").as_bytes(),
        crate::state::PRIVATE_FILE,
    )
}

/// Lets the supervisor start instance `ordinal` again; true when it was held.
pub fn release(dir: &DatabaseDir, ordinal: u32) -> Result<bool, LocalError> {
    let path = hold_file(dir, ordinal);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(LocalError::io(&path, "cannot remove", e)),
    }
}

/// Releases every held instance (`stator up` asks for all of them); their names.
pub fn release_all(dir: &DatabaseDir) -> Result<Vec<String>, LocalError> {
    let mut released = Vec::new();
    for ordinal in dir.known_ordinals() {
        if release(dir, ordinal)? {
            released.push(dir.instance_name(ordinal));
        }
    }
    Ok(released)
}

/// Why instance `ordinal` is held, when it is.
pub fn held(dir: &DatabaseDir, ordinal: u32) -> Option<String> {
    std::fs::read_to_string(hold_file(dir, ordinal))
        .ok()
        .map(|s| s.trim().to_string())
}

/// What the failover shell acts through on this machine.
pub struct LocalRuntime {
    dir: DatabaseDir,
    routes: Arc<Routes>,
    /// The engine's binaries (`pg_controldata`, the `mariadb` client).
    bin_dir: Option<PathBuf>,
}

impl LocalRuntime {
    pub fn new(dir: &DatabaseDir, routes: Arc<Routes>, bin_dir: Option<PathBuf>) -> Self {
        LocalRuntime {
            dir: dir.clone(),
            routes,
            bin_dir,
        }
    }
}

impl Runtime for LocalRuntime {
    type Error = LocalError;

    fn server_endpoint(&self, db: &Database, ordinal: u32) -> Endpoint {
        Endpoint {
            instance: db.instance_name(ordinal),
            host: db.spec.local.listen_address.clone(),
            port: LocalPorts::of(db).server(ordinal),
        }
    }

    fn manager_address(&self, db: &Database, ordinal: u32) -> Dial {
        Dial::registered(
            db.spec.local.listen_address.clone(),
            LocalPorts::of(db).manager(ordinal),
        )
    }

    fn rw_address(&self, db: &Database) -> Dial {
        Dial::registered(
            db.spec.local.listen_address.clone(),
            LocalPorts::of(db).rw(),
        )
    }

    fn api_token(&self) -> Result<String, LocalError> {
        read_secret(&self.dir.secrets_dir(), secret_keys::API_TOKEN)
    }

    fn monitor_password(&self) -> Option<String> {
        read_secret(&self.dir.secrets_dir(), secret_keys::MONITOR_PASSWORD).ok()
    }

    fn load_state(&self) -> Result<Option<FailoverState>, LocalError> {
        read_json(&failover_file(&self.dir))
    }

    fn save_state(&mut self, state: &FailoverState) -> Result<(), LocalError> {
        write_json(&failover_file(&self.dir), state)
    }

    fn recorded_primary(&self) -> Option<u32> {
        crate::plan::ordinal_of(&self.dir.read_primary())
    }

    fn record_primary(&mut self, _ordinal: u32, name: &str) -> Result<(), LocalError> {
        self.dir.write_primary(name)
    }

    fn known_ordinals(&self) -> Vec<u32> {
        self.dir.known_ordinals()
    }

    fn server_pid(&self, db: &Database, ordinal: u32) -> Option<u32> {
        process::server_of(db.spec.engine, &self.dir.data_dir(ordinal))
    }

    fn holds_data(&self, ordinal: u32) -> bool {
        std::fs::read_dir(self.dir.data_dir(ordinal))
            .is_ok_and(|mut entries| entries.next().is_some())
    }

    fn data_lost(&self, ordinal: u32, instances: u32) -> bool {
        !self.dir.holds_data(ordinal)
            && self
                .dir
                .had_data(self.dir.read_marker().ok().flatten().as_ref(), 0..instances)
    }

    fn data_location(&self, ordinal: u32) -> String {
        self.dir.data_dir(ordinal).display().to_string()
    }

    async fn final_checkpoint(&self, ordinal: u32) -> Option<FinalCheckpoint> {
        let data_dir = self.dir.data_dir(ordinal);
        if marker_follows(&data_dir).is_some() {
            return None;
        }
        stator_engine::postgres::controldata::read_control_data(self.bin_dir.as_deref(), &data_dir)
            .await
    }

    fn held(&self, ordinal: u32) -> Option<String> {
        held(&self.dir, ordinal)
    }

    fn set_rw(&mut self, db: &Database, rw: Option<u32>) {
        self.routes.set_rw(rw.and_then(|o| server_addr(db, o)));
    }

    fn set_ro(&mut self, db: &Database, ro: &[u32]) {
        self.routes
            .set_ro(ro.iter().filter_map(|o| server_addr(db, *o)).collect());
    }

    fn cut(&mut self, db: &Database, ordinal: u32) -> usize {
        server_addr(db, ordinal).map_or(0, |addr| self.routes.cut(addr))
    }

    fn unroute(&mut self, db: &Database, ordinal: u32) {
        if let Some(addr) = server_addr(db, ordinal) {
            if self.routes.rw() == Some(addr) {
                self.routes.set_rw(None);
            }
            let ro: Vec<SocketAddr> = self
                .routes
                .ro()
                .into_iter()
                .filter(|a| *a != addr)
                .collect();
            self.routes.set_ro(ro);
            self.routes.cut(addr);
        }
    }

    fn fence(
        &mut self,
        db: &Database,
        ordinal: u32,
        method: FenceMethod,
        manager: Option<u32>,
    ) -> Option<Work> {
        let name = db.instance_name(ordinal);
        match method {
            FenceMethod::Kill => {
                let server = self.server_pid(db, ordinal);
                if manager.is_some() || server.is_some() {
                    tracing::warn!(
                        "{name}: fencing: kill -9 of its instance manager ({}) and its server's process tree ({})",
                        manager.map_or("-".to_string(), |p| p.to_string()),
                        server.map_or("-".to_string(), |p| p.to_string())
                    );
                }
                // Everything the manager started (a server it is just starting has no pid
                // file yet) and everything under the server, collected before any is killed
                // (orphans are adopted by init and would be lost from sight).
                let mut doomed: Vec<u32> = manager.map(procfs::process_tree).unwrap_or_default();
                doomed.extend(server.map(procfs::process_tree).unwrap_or_default());
                doomed.dedup();
                for pid in doomed {
                    process::signal(pid, Signal::SIGKILL);
                }
                None
            }
            FenceMethod::Shutdown => {
                let pid = manager?;
                tracing::info!("{name}: fencing: clean shutdown of its server");
                process::signal(pid, Signal::SIGTERM);
                Some(Work {
                    what: "shutdown".into(),
                    task: tokio::spawn(wait_gone(pid)),
                })
            }
            FenceMethod::ReadOnly => {
                // The server keeps running, refusing writes, so the replicas can fetch the rest
                // of its binary log; its manager keeps reporting its final GTID position.
                manager?;
                tracing::info!("{name}: fencing: read_only=ON");
                self.set_read_only(db, ordinal, true)
            }
        }
    }

    /// `SET GLOBAL read_only` on a MySQL-family server, as `root` over its Unix socket (root
    /// logs in only there, by the OS user: no password anywhere), with the `mariadb` client.
    fn set_read_only(&mut self, db: &Database, ordinal: u32, on: bool) -> Option<Work> {
        let socket = self.dir.run_dir(ordinal).join("mariadb.sock");
        let client = self
            .bin_dir
            .as_deref()
            .and_then(|b| crate::preflight::find_tool(b, "mariadb"))
            .unwrap_or_else(|| PathBuf::from("mariadb"));
        let sql = format!("SET GLOBAL read_only={}", if on { "ON" } else { "OFF" });
        let name = db.instance_name(ordinal);
        let what = sql.clone();
        let task = tokio::spawn(async move {
            let run = tokio::process::Command::new(client)
                .args(["--no-defaults", "-u", "root", "-N", "-B"])
                .arg(format!("--socket={}", socket.display()))
                .args(["-e", &sql])
                .stdin(std::process::Stdio::null())
                .output();
            match tokio::time::timeout(Duration::from_secs(10), run).await {
                Ok(Ok(out)) if out.status.success() => tracing::info!("{name}: {sql}: done"),
                Ok(Ok(out)) => tracing::warn!(
                    "{name}: {sql} failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                Ok(Err(e)) => tracing::warn!("{name}: {sql}: cannot run the client: {e}"),
                Err(_) => tracing::warn!("{name}: {sql}: no answer within 10 s"),
            }
        });
        Some(Work { what, task })
    }

    /// Stops the manager (SIGTERM: its server stops cleanly); the supervisor then leaves the
    /// instance down until its data dir is moved aside.
    fn stop_for_rebuild(&mut self, _ordinal: u32, manager: Option<u32>) {
        if let Some(pid) = manager {
            process::signal(pid, Signal::SIGTERM);
        }
    }

    /// Renames the data dir to `data-NAME-N.diverged-SECONDS` next to it.
    fn move_data_aside(&mut self, ordinal: u32) -> Result<String, LocalError> {
        let data_dir = self.dir.data_dir(ordinal);
        let aside = data_dir.with_file_name(format!(
            "{}.diverged-{}",
            data_dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            self.wall_ms() / 1000
        ));
        std::fs::rename(&data_dir, &aside)
            .map_err(|e| LocalError::io(&data_dir, "cannot move aside", e))?;
        Ok(aside.display().to_string())
    }

    /// The supervisor starts instances itself, in ordinal order (a StatefulSet's
    /// OrderedReady), from `spec.instances`: nothing to do here.
    fn create(&mut self, _db: &Database, _ordinal: u32) {}

    /// The supervisor stops instances beyond `spec.instances` itself, the highest first: nothing
    /// to do here.
    fn remove(&mut self, _db: &Database, _ordinal: u32) {}
}

/// The address of instance `ordinal`'s server.
fn server_addr(db: &Database, ordinal: u32) -> Option<SocketAddr> {
    format!(
        "{}:{}",
        db.spec.local.listen_address,
        LocalPorts::of(db).server(ordinal)
    )
    .parse()
    .ok()
}

async fn wait_gone(pid: u32) {
    while process::is_alive(pid) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The instance a data dir follows, from its Stator marker.
fn marker_follows(data_dir: &Path) -> Option<String> {
    stator_engine::data_dir::read_marker(data_dir)
        .ok()
        .flatten()
        .and_then(|m| m.follows)
        .map(|f| f.instance)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stator_api::Engine;
    use stator_control::ClusterSpec;
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    #[test]
    fn a_hold_is_kept_until_released() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = crate::state::StateDir {
            root: tmp.path().to_path_buf(),
        }
        .database("ns", "db");
        assert_eq!(held(&dir, 1), None);
        hold(&dir, 1, "drained").unwrap();
        assert_eq!(held(&dir, 1).as_deref(), Some("drained"));
        assert!(release(&dir, 1).unwrap());
        assert!(!release(&dir, 1).unwrap());
        assert_eq!(held(&dir, 1), None);
    }

    #[test]
    fn a_fenced_instance_stays_down_until_a_new_primary_is_confirmed_and_recorded() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = crate::state::StateDir {
            root: tmp.path().to_path_buf(),
        }
        .database("ns", "db");
        crate::state::create_dir(&dir.root, 0o755).unwrap();
        let spec = ClusterSpec {
            name: "db".into(),
            engine: Engine::Postgres,
            instances: 3,
            synchronous: false,
            failover_enabled: true,
            detection_timeout_ms: 2000,
            switchover_timeout_ms: 30_000,
        };
        // The state file stands for the shell's memory: a fenced db-0, db-1 the primary.
        let fence = stator_control::Fence {
            method: FenceMethod::Kill,
            confirmed: true,
            floor: None,
        };
        let mut state = FailoverState::default();
        state.memory.fenced.insert(0, fence);
        state.memory.primary = Some(1);
        state.memory.primary_confirmed = false;
        write_json(&failover_file(&dir), &state).unwrap();
        let load = || {
            Failover::load(
                LocalRuntime::new(&dir, Arc::new(Routes::default()), None),
                Arc::new(Mutex::new(SwitchoverDesk::default())),
            )
        };
        assert!(load().keep_down(&spec, &[]).contains(&0));
        state.memory.primary_confirmed = true;
        write_json(&failover_file(&dir), &state).unwrap();
        // Confirmed, but the primary record still names db-0: its config would say primary.
        assert!(load().keep_down(&spec, &[]).contains(&0));
        dir.write_primary("db-1").unwrap();
        assert!(!load().keep_down(&spec, &[]).contains(&0));
        hold(&dir, 2, "drained").unwrap();
        assert_eq!(load().keep_down(&spec, &[]), BTreeSet::from([2]));
    }
}
