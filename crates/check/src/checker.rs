//! The consistency checker behind `stator chaos run`: real writes, real faults, and an account
//! of what the database promised and what it kept.
//!
//! Three things run at once against a running database, reached through a [`Target`] (the
//! local runtime's is [`LocalTarget`](crate::LocalTarget)):
//! - a **writer** inserts numbered rows through `rw` (one every 20 ms while it can; on any error
//!   it drops the connection and reconnects, with a 500 ms connect timeout and a 1 s statement
//!   timeout) and records every number the server acknowledged, with the server that did;
//! - a **chaos loop** waits until the cluster is Ready and writes flow, fails the current
//!   primary with a [`Fault`], waits for the first write sent after the fault to be
//!   acknowledged (the write outage: fault → that acknowledgement), resumes
//!   a held fault, and waits until the cluster is Ready again; then the next round;
//! - a **watcher** probes every instance directly, all at once, five times a second, each probe
//!   on a fresh connection that must answer within 500 ms.
//!
//! **Writable**, as the watcher judges it: the instance accepts a new connection and, in that
//! session, PostgreSQL (as the application user) says `NOT pg_is_in_recovery()` and
//! `transaction_read_only = off` (what an ordinary client gets: not a standby, and not fenced
//! with `default_transaction_read_only`); MariaDB/MySQL (as the monitor user) says
//! `@@read_only = 0` and `SHOW ALL SLAVES STATUS` shows no running IO or SQL thread (not a
//! replica; a replica whose threads stopped and that is not read-only counts as writable). A probe round in which two or more instances were
//! writable is a **moment with two writable instances** (split brain). Rounds in which two
//! instances were out of recovery, one of them read-only, are counted apart: fenced, not split.
//!
//! At the end every row is read back from the final primary: acknowledged numbers missing there
//! are **lost writes**. Then the table is dropped (also when the run was aborted), so the
//! application database is left as it was. This module owns no database and no process: it
//! only drives the running database through its ports and its target's faults.
//!
//! A round **counts as a failover** only when the runtime recorded another primary. A fault
//! after which the primary came back in place (e.g. `kill-node`, restarted by the supervisor
//! before the detection timeout ran out) is reported as such and followed by another round,
//! until the number of failovers asked for is made (or, after as many extra rounds plus
//! three, the run stops and says why).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};
use stator_api::Engine;
use stator_engine::tls::Dial;

use crate::error::{CheckError, NotReady, SqlError};
use crate::fault::Fault;
use crate::target::{Observation, Target};

/// The table the writer fills (in the application database, as the application user).
pub const TABLE: &str = "stator_chaos";

/// What `stator chaos run` is asked to do.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Rounds of fault → recovery.
    pub failovers: u32,
    pub fault: Fault,
    /// Pause of the writer after an acknowledged write.
    pub write_interval: Duration,
    /// Pause between the watcher's probe rounds.
    pub probe_interval: Duration,
    /// How long one round may take to get a write acknowledged, and then to be Ready again.
    pub round_timeout: Duration,
    /// Seed of the random pause before each fault (so the fault lands at a random phase of
    /// the supervisor's loop).
    pub seed: u64,
    /// Only rounds that made a failover count towards `failovers` (`stator chaos run`); off,
    /// every round counts, whether the primary moved or came back in place (the benchmark's
    /// kill-node rounds measure both).
    pub require_failover: bool,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            failovers: 5,
            fault: Fault::StopNode,
            write_interval: Duration::from_millis(20),
            probe_interval: Duration::from_millis(200),
            round_timeout: Duration::from_secs(180),
            seed: 1,
            require_failover: true,
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// One round of fault → recovery.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Round {
    pub round: u32,
    pub fault: Fault,
    /// The primary that was failed.
    pub failed: String,
    /// Pids the fault signalled.
    pub pids: Vec<u32>,
    /// Seconds from the fault to the next acknowledged write; `None` when none came in time.
    pub outage_seconds: Option<f64>,
    /// The instance that acknowledged that write.
    pub writes_resumed_on: Option<String>,
    /// Seconds from the fault until the supervisor recorded another primary (`None`: it kept
    /// the same one, e.g. restarted in place).
    pub primary_moved_seconds: Option<f64>,
    /// Seconds from the fault until the cluster was Ready again (every instance ready).
    pub ready_again_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Whether the round made a failover (the supervisor recorded another primary); a round
    /// whose primary came back in place does not count and is followed by another.
    #[serde(default)]
    pub failover: bool,
}

/// A probe round in which more than one instance claimed the primary role.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Moment {
    /// Seconds since the check started.
    pub at_seconds: f64,
    /// Instances that were writable (or, for a fenced moment, out of recovery).
    pub instances: Vec<String>,
}

/// p50/p95/max of a series, in seconds.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Spread {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(Spread {
            count: v.len(),
            p50: percentile(&v, 50.0),
            p95: percentile(&v, 95.0),
            max: v[v.len() - 1],
        })
    }
}

/// Linear interpolation between closest ranks (as numpy and the Patroni baseline script do);
/// `sorted` must be sorted and non-empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let k = (sorted.len() - 1) as f64 * p / 100.0;
    let lo = k.floor() as usize;
    let hi = (lo + 1).min(sorted.len() - 1);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (k - lo as f64)
}

/// The checker's findings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    /// `NAMESPACE/NAME`.
    pub database: String,
    pub engine: String,
    pub instances: u32,
    pub synchronous: bool,
    pub fault: Fault,
    pub detection_timeout: String,
    /// Failovers asked for, and made (rounds whose primary came back in place do not count).
    #[serde(default)]
    pub failovers_asked: u32,
    #[serde(default)]
    pub failovers: u32,
    pub rounds: Vec<Round>,
    pub outage: Option<Spread>,
    pub writes_attempted: u64,
    pub writes_acknowledged: u64,
    /// Acknowledged numbers not found on the final primary.
    pub writes_lost: u64,
    /// The first lost numbers (at most 50).
    pub lost_sample: Vec<u64>,
    /// Rows present that were never acknowledged (in flight at a fault: allowed).
    pub unacknowledged_present: u64,
    /// Where the rows were read back from.
    pub read_back_from: Option<String>,
    pub probe_rounds: u64,
    /// Moments with two writable instances.
    pub split_brain: Vec<Moment>,
    /// Moments with two instances out of recovery, all but one of them read-only (fenced).
    pub fenced_overlap: Vec<Moment>,
    pub duration_seconds: f64,
    /// Whether the table was dropped at the end; `None` when it never existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_dropped: Option<bool>,
    /// Why the check could not finish all rounds, if it could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted: Option<String>,
    /// Drills someone else ran under the writer ([`Writing`]), instead of rounds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drills: Vec<Drill>,
}

impl CheckReport {
    /// No lost write, no split brain, every round done.
    pub fn passed(&self) -> bool {
        self.writes_lost == 0 && self.split_brain.is_empty() && self.aborted.is_none()
    }

    /// The text `stator chaos run` prints.
    pub fn render(&self) -> String {
        let mut out = if self.drills.is_empty() {
            self.render_rounds()
        } else {
            self.render_drills()
        };
        self.render_findings(&mut out);
        out
    }

    fn replication(&self) -> &'static str {
        if self.synchronous {
            "synchronous"
        } else {
            "asynchronous"
        }
    }

    fn render_drills(&self) -> String {
        let mut out = format!(
            "Consistency check of {} ({}, {} instances, {} replication): {} drill(s) under one writer\n\n",
            self.database,
            self.engine,
            self.instances,
            self.replication(),
            self.drills.len()
        );
        let mut rows = vec![
            ["DRILL", "LASTED", "OUTAGE", "WRITES ACKNOWLEDGED"]
                .map(String::from)
                .to_vec(),
        ];
        for d in &self.drills {
            rows.push(vec![
                d.name.clone(),
                format!("{:.1}s", d.seconds),
                format!("{:.3}s", d.outage_seconds),
                d.writes_acknowledged.to_string(),
            ]);
        }
        out.push_str(&align(&rows));
        out.push_str("(outage: the longest stretch without an acknowledged write while the drill lasted)\n\n");
        out
    }

    fn render_rounds(&self) -> String {
        let mut out = format!(
            "Consistency check of {} ({}, {} instances, {} replication, detection timeout {}): fault {}, {} of {} failover(s) in {} round(s)\n\n",
            self.database,
            self.engine,
            self.instances,
            self.replication(),
            self.detection_timeout,
            self.fault,
            self.failovers,
            self.failovers_asked,
            self.rounds.len()
        );
        let secs = |v: Option<f64>| v.map(|s| format!("{s:.3}s")).unwrap_or_else(|| "-".into());
        let mut rows = vec![
            [
                "ROUND",
                "FAILED",
                "FAILOVER",
                "WRITES RESUMED ON",
                "OUTAGE",
                "PRIMARY MOVED",
                "READY AGAIN",
                "PIDS",
            ]
            .map(String::from)
            .to_vec(),
        ];
        for r in &self.rounds {
            rows.push(vec![
                r.round.to_string(),
                r.failed.clone(),
                if r.failover {
                    "yes".into()
                } else {
                    "no: back in place".into()
                },
                r.writes_resumed_on.clone().unwrap_or_else(|| "-".into()),
                secs(r.outage_seconds),
                secs(r.primary_moved_seconds),
                secs(r.ready_again_seconds),
                r.pids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ]);
        }
        out.push_str(&align(&rows));
        for r in &self.rounds {
            if let Some(p) = &r.problem {
                out.push_str(&format!("round {}: {p}\n", r.round));
            }
        }
        out.push('\n');
        match &self.outage {
            Some(s) => out.push_str(&format!(
                "write outage (fault -> next acknowledged write): p50 {:.3}s  p95 {:.3}s  max {:.3}s  (n={})\n",
                s.p50, s.p95, s.max, s.count
            )),
            None => out.push_str("write outage: no round completed\n"),
        }
        out
    }

    fn render_findings(&self, out: &mut String) {
        out.push_str(&format!(
            "writes: {} attempted, {} acknowledged, {} acknowledged but LOST{}; {} unacknowledged present (in flight at a fault)\n",
            self.writes_attempted,
            self.writes_acknowledged,
            self.writes_lost,
            match &self.read_back_from {
                Some(i) => format!(" (read back from {i})"),
                None => " (could not read back)".into(),
            },
            self.unacknowledged_present
        ));
        if !self.lost_sample.is_empty() {
            let list: Vec<String> = self.lost_sample.iter().map(u64::to_string).collect();
            out.push_str(&format!("  lost numbers: {}\n", list.join(" ")));
        }
        out.push_str(&format!(
            "watcher: {} probe rounds, {} moment(s) with two writable instances, {} with a fenced second primary\n",
            self.probe_rounds,
            self.split_brain.len(),
            self.fenced_overlap.len()
        ));
        for m in self.split_brain.iter().take(20) {
            out.push_str(&format!(
                "  SPLIT BRAIN at {:.3}s: {}\n",
                m.at_seconds,
                m.instances.join(", ")
            ));
        }
        match self.table_dropped {
            Some(true) => out.push_str(&format!("table {TABLE}: dropped\n")),
            Some(false) => out.push_str(&format!(
                "table {TABLE}: could NOT be dropped; drop it by hand (DROP TABLE {TABLE})\n"
            )),
            None => {}
        }
        if let Some(reason) = &self.aborted {
            out.push_str(&format!("aborted: {reason}\n"));
        }
        out.push_str(&format!(
            "verdict: {} ({:.0}s)\n",
            if self.passed() {
                "OK"
            } else if self.aborted.is_some() {
                "INCOMPLETE"
            } else {
                "FAILED"
            },
            self.duration_seconds
        ));
    }
}

fn align(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            line.push_str(cell);
            if c + 1 < row.len() {
                line.push_str(&" ".repeat(widths[c].saturating_sub(cell.chars().count()) + 3));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// How to reach the database: the application user for writes; for MariaDB/MySQL probes the
/// monitor user (`SHOW ALL SLAVES STATUS` needs its privilege). Passwords stay in memory.
#[derive(Clone)]
pub struct Access {
    pub engine: Engine,
    pub user: String,
    pub password: String,
    pub database: String,
    pub monitor_user: String,
    pub monitor_password: String,
}

/// Who a connection logs in as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Login {
    App,
    Monitor,
}

/// The server process a session reached: who it is, as the server itself says (instances of
/// a Kubernetes database share one port on different addresses, so the port alone does not
/// tell them apart), and when it started (milliseconds since the epoch). A killed PostgreSQL
/// postmaster's orphaned backends may still acknowledge a write for a few milliseconds; the
/// start time tells that server from the one restarted in place.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Server {
    id: ServerId,
    started: i64,
}

/// Who a server is: PostgreSQL's address the session arrived at (`inet_server_addr()`) and
/// port; MariaDB/MySQL's `server_id` (unique per instance) and port. Through `rw` it names the
/// server behind the proxy; the watcher learns which instance each one is.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ServerId {
    at: String,
    port: u16,
}

/// One connection, of either engine, with the server behind it (asked once at connect:
/// through `rw`, the server behind the proxy).
enum Session {
    Postgres {
        client: tokio_postgres::Client,
        server: Server,
        /// Held for its Drop.
        _connection: ConnectionTask,
    },
    Mysql {
        conn: mysql_async::Conn,
        server: Server,
    },
}

/// The task driving a PostgreSQL connection, stopped with its session.
struct ConnectionTask(tokio::task::JoinHandle<()>);

impl Drop for ConnectionTask {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What one probe saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Writability {
    /// PostgreSQL: out of recovery. MariaDB/MySQL: no replication thread runs.
    primary: bool,
    /// A primary whose ordinary sessions may write (not read-only).
    writable: bool,
}

fn text(e: impl std::fmt::Display) -> SqlError {
    SqlError::Query(e.to_string())
}

impl Access {
    async fn connect(
        &self,
        dial: &Dial,
        timeout: Duration,
        login: Login,
    ) -> Result<Session, SqlError> {
        let port = dial.port;
        let (user, password) = match login {
            Login::App => (&self.user, &self.password),
            Login::Monitor => (&self.monitor_user, &self.monitor_password),
        };
        match self.engine {
            Engine::Postgres => {
                let mut config = tokio_postgres::Config::new();
                config
                    .user(&self.user)
                    .password(&self.password)
                    .dbname(&self.database)
                    .application_name("stator-chaos")
                    .connect_timeout(timeout);
                let tls = dial
                    .postgres(&mut config)
                    .map_err(|e| SqlError::at(port, e))?;
                let (client, connection) = tokio::time::timeout(timeout, config.connect(tls))
                    .await
                    .map_err(|_| SqlError::Timeout { port, timeout })?
                    .map_err(|e| SqlError::at(port, e))?;
                let connection = ConnectionTask(tokio::spawn(async move {
                    let _ = connection.await;
                }));
                let row = tokio::time::timeout(
                    timeout,
                    client.query_one(
                        "SELECT coalesce(host(inet_server_addr()), ''), inet_server_port(), (extract(epoch FROM pg_postmaster_start_time()) * 1000)::bigint",
                        &[],
                    ),
                )
                .await
                .map_err(|_| SqlError::Timeout { port, timeout })?
                .map_err(|e| SqlError::at(port, e))?;
                let at: String = row.try_get(0).map_err(text)?;
                let own: Option<i32> = row.try_get(1).map_err(text)?;
                let started: i64 = row.try_get(2).map_err(text)?;
                Ok(Session::Postgres {
                    client,
                    server: Server {
                        id: ServerId {
                            at,
                            port: own.and_then(|p| u16::try_from(p).ok()).unwrap_or(0),
                        },
                        started,
                    },
                    _connection: connection,
                })
            }
            Engine::Mysql | Engine::Mariadb => {
                use mysql_async::prelude::Queryable;
                let mut opts = mysql_async::OptsBuilder::default()
                    .ip_or_hostname(dial.host.clone())
                    .tcp_port(port)
                    .user(Some(user.clone()))
                    .pass(Some(password.clone()))
                    .ssl_opts(dial.mysql())
                    // Never switch to the server's Unix socket: that would bypass `rw`.
                    .prefer_socket(false)
                    .stmt_cache_size(0);
                if login == Login::App {
                    opts = opts.db_name(Some(self.database.clone()));
                }
                let connect = async {
                    let mut conn = mysql_async::Conn::new(opts).await.map_err(text)?;
                    let own: Option<(i64, i64, i64)> = conn
                        .query_first(
                            "SELECT @@server_id, @@port, CAST(UNIX_TIMESTAMP() - VARIABLE_VALUE AS SIGNED) * 1000 FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME = 'UPTIME'",
                        )
                        .await
                        .map_err(text)?;
                    let (server_id, own, started) = own.unwrap_or((0, 0, 0));
                    let server = Server {
                        id: ServerId {
                            at: format!("server_id {server_id}"),
                            port: u16::try_from(own).unwrap_or(0),
                        },
                        started,
                    };
                    Ok::<_, SqlError>((conn, server))
                };
                let (conn, server) = tokio::time::timeout(timeout, connect)
                    .await
                    .map_err(|_| SqlError::Timeout { port, timeout })?
                    .map_err(|e| SqlError::at(port, e))?;
                Ok(Session::Mysql { conn, server })
            }
        }
    }
}

impl Session {
    fn server(&self) -> &Server {
        match self {
            Session::Postgres { server, .. } | Session::Mysql { server, .. } => server,
        }
    }

    /// Ends the session politely (MariaDB logs every connection dropped without COM_QUIT).
    async fn close(self) {
        if let Session::Mysql { conn, .. } = self {
            let _ = tokio::time::timeout(Duration::from_millis(200), conn.disconnect()).await;
        }
    }

    async fn create_table(&mut self) -> Result<(), SqlError> {
        match self {
            Session::Postgres { client, .. } => client
                .batch_execute(&format!(
                    "SET client_min_messages = warning; CREATE TABLE IF NOT EXISTS {TABLE} (id bigint PRIMARY KEY, at timestamptz NOT NULL DEFAULT now())"
                ))
                .await
                .map_err(text),
            Session::Mysql { conn, .. } => {
                use mysql_async::prelude::Queryable;
                conn.query_drop(format!(
                    "CREATE TABLE IF NOT EXISTS {TABLE} (id BIGINT PRIMARY KEY, at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)) ENGINE=InnoDB"
                ))
                .await
                .map_err(text)
            }
        }
    }

    async fn drop_table(&mut self) -> Result<(), SqlError> {
        let sql = format!("DROP TABLE IF EXISTS {TABLE}");
        match self {
            Session::Postgres { client, .. } => client.batch_execute(&sql).await.map_err(text),
            Session::Mysql { conn, .. } => {
                use mysql_async::prelude::Queryable;
                conn.query_drop(sql).await.map_err(text)
            }
        }
    }

    /// The highest number written so far (by an earlier run on the same database).
    async fn max_id(&mut self) -> Result<u64, SqlError> {
        match self {
            Session::Postgres { client, .. } => {
                let row = client
                    .query_one(&format!("SELECT coalesce(max(id), 0) FROM {TABLE}"), &[])
                    .await
                    .map_err(text)?;
                let max: i64 = row.try_get(0).map_err(text)?;
                Ok(u64::try_from(max).unwrap_or(0))
            }
            Session::Mysql { conn, .. } => {
                use mysql_async::prelude::Queryable;
                let max: Option<i64> = conn
                    .query_first(format!("SELECT coalesce(max(id), 0) FROM {TABLE}"))
                    .await
                    .map_err(text)?;
                Ok(max.and_then(|m| u64::try_from(m).ok()).unwrap_or(0))
            }
        }
    }

    /// Inserts `id` (autocommit); returns the server that acknowledged it.
    async fn insert(&mut self, id: u64) -> Result<Server, SqlError> {
        match self {
            Session::Postgres { client, server, .. } => {
                client
                    .execute(
                        &format!("INSERT INTO {TABLE} (id) VALUES ($1)"),
                        &[&(id as i64)],
                    )
                    .await
                    .map_err(text)?;
                Ok(server.clone())
            }
            Session::Mysql { conn, server } => {
                use mysql_async::prelude::Queryable;
                conn.query_drop(format!("INSERT INTO {TABLE} (id) VALUES ({id})"))
                    .await
                    .map_err(text)?;
                Ok(server.clone())
            }
        }
    }

    async fn writability(&mut self) -> Result<Writability, SqlError> {
        match self {
            Session::Postgres { client, .. } => {
                let row = client
                    .query_one(
                        "SELECT NOT pg_is_in_recovery(), current_setting('transaction_read_only') = 'off'",
                        &[],
                    )
                    .await
                    .map_err(text)?;
                let primary: bool = row.try_get(0).map_err(text)?;
                let read_write: bool = row.try_get(1).map_err(text)?;
                Ok(Writability {
                    primary,
                    writable: primary && read_write,
                })
            }
            Session::Mysql { conn, .. } => {
                use mysql_async::prelude::Queryable;
                let read_only: Option<i64> =
                    conn.query_first("SELECT @@read_only").await.map_err(text)?;
                let rows: Vec<mysql_async::Row> =
                    conn.query("SHOW ALL SLAVES STATUS").await.map_err(text)?;
                let replicating = rows.iter().any(|r| {
                    ["Slave_IO_Running", "Slave_SQL_Running"].iter().any(|c| {
                        r.get_opt::<String, _>(*c)
                            .and_then(Result::ok)
                            .is_some_and(|v| v.eq_ignore_ascii_case("yes"))
                    })
                });
                Ok(Writability {
                    primary: !replicating,
                    writable: !replicating && read_only == Some(0),
                })
            }
        }
    }

    async fn read_ids(&mut self) -> Result<Vec<u64>, SqlError> {
        match self {
            Session::Postgres { client, .. } => {
                let rows = client
                    .query(&format!("SELECT id FROM {TABLE}"), &[])
                    .await
                    .map_err(text)?;
                rows.iter()
                    .map(|r| r.try_get::<_, i64>(0).map(|v| v as u64).map_err(text))
                    .collect()
            }
            Session::Mysql { conn, .. } => {
                use mysql_async::prelude::Queryable;
                let ids: Vec<i64> = conn
                    .query(format!("SELECT id FROM {TABLE}"))
                    .await
                    .map_err(text)?;
                Ok(ids.into_iter().map(|v| v as u64).collect())
            }
        }
    }
}

/// An acknowledged write.
#[derive(Clone, Debug)]
struct Ack {
    id: u64,
    /// When the insert was sent, and when it was acknowledged.
    sent: Instant,
    at: Instant,
    server: Server,
}

#[derive(Default)]
struct WriterLog {
    acks: Vec<Ack>,
    attempts: u64,
    last_error: Option<String>,
}

impl WriterLog {
    /// The first write sent after `t0` and acknowledged, neither by the `held` server nor by
    /// the `dead` server process. (A write in flight at the fault may still be acknowledged,
    /// and a killed postmaster's orphaned backends may acknowledge one more: neither says
    /// that the database takes writes again.)
    fn first_after(
        &self,
        t0: Instant,
        held: Option<&ServerId>,
        dead: Option<&Server>,
    ) -> Option<Ack> {
        let start = self.acks.partition_point(|a| a.at <= t0);
        self.acks[start..]
            .iter()
            .find(|a| a.sent >= t0 && Some(&a.server.id) != held && Some(&a.server) != dead)
            .cloned()
    }

    /// The server process that acknowledged the last write before `t0` as server `id`.
    fn server_before(&self, t0: Instant, id: &ServerId) -> Option<Server> {
        let end = self.acks.partition_point(|a| a.at <= t0);
        self.acks[..end]
            .iter()
            .rev()
            .find(|a| a.server.id == *id)
            .map(|a| a.server.clone())
    }

    /// The longest stretch of `[from, to]` without an acknowledgement (from `from` to the
    /// first, between two, from the last to `to`): a drill's write outage.
    fn longest_gap(&self, from: Instant, to: Instant) -> (f64, u64) {
        let start = self.acks.partition_point(|a| a.at <= from);
        let end = self.acks.partition_point(|a| a.at <= to);
        let mut last = from;
        let mut longest = Duration::ZERO;
        for a in &self.acks[start..end] {
            longest = longest.max(a.at.duration_since(last));
            last = a.at;
        }
        longest = longest.max(to.duration_since(last));
        (longest.as_secs_f64(), (end - start) as u64)
    }

    fn acked_since(&self, t: Instant) -> bool {
        self.acks.last().is_some_and(|a| a.at > t)
    }
}

async fn write_loop(
    access: Access,
    rw: Dial,
    first: u64,
    interval: Duration,
    log: Arc<Mutex<WriterLog>>,
    stop: Arc<AtomicBool>,
) {
    let mut session: Option<Session> = None;
    let mut next = first;
    while !stop.load(Ordering::SeqCst) {
        if session.is_none() {
            match access.connect(&rw, CONNECT_TIMEOUT, Login::App).await {
                Ok(s) => session = Some(s),
                Err(e) => {
                    if let Ok(mut l) = log.lock() {
                        l.last_error = Some(e.to_string());
                    }
                    tokio::time::sleep(RETRY_PAUSE).await;
                    continue;
                }
            }
        }
        let Some(s) = session.as_mut() else {
            continue;
        };
        next += 1;
        let id = next;
        if let Ok(mut l) = log.lock() {
            l.attempts += 1;
        }
        let sent = Instant::now();
        match tokio::time::timeout(STATEMENT_TIMEOUT, s.insert(id)).await {
            Ok(Ok(server)) => {
                let at = Instant::now();
                if let Ok(mut l) = log.lock() {
                    l.acks.push(Ack {
                        id,
                        sent,
                        at,
                        server,
                    });
                }
                tokio::time::sleep(interval).await;
            }
            Ok(Err(e)) => {
                if let Ok(mut l) = log.lock() {
                    l.last_error = Some(e.to_string());
                }
                session = None;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            Err(_) => {
                if let Ok(mut l) = log.lock() {
                    l.last_error = Some(format!(
                        "insert {id}: no answer within {STATEMENT_TIMEOUT:?}"
                    ));
                }
                session = None;
            }
        }
    }
    if let Some(s) = session {
        s.close().await;
    }
}

#[derive(Default)]
struct WatchLog {
    rounds: u64,
    split_brain: Vec<Moment>,
    fenced_overlap: Vec<Moment>,
    /// Which instance each server is, as the probes found them (latest first-found wins).
    names: std::collections::BTreeMap<ServerId, String>,
}

impl WatchLog {
    /// The instance server `id` is, as last probed.
    fn name_of(&self, id: &ServerId) -> String {
        self.names
            .get(id)
            .cloned()
            .unwrap_or_else(|| format!("{}:{}", id.at, id.port))
    }

    /// The server instance `name` was, as last probed.
    fn id_of(&self, name: &str) -> Option<ServerId> {
        self.names
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(id, _)| id.clone())
    }
}

async fn probe_one(access: &Access, dial: &Dial) -> Option<(ServerId, Writability)> {
    let attempt = async {
        let mut s = access
            .connect(dial, PROBE_TIMEOUT, Login::Monitor)
            .await
            .ok()?;
        let id = s.server().id.clone();
        let seen = s.writability().await.ok();
        s.close().await;
        Some((id, seen?))
    };
    tokio::time::timeout(PROBE_TIMEOUT, attempt)
        .await
        .ok()
        .flatten()
}

async fn watch_loop<T: Target + Clone + Send + 'static>(
    target: T,
    interval: Duration,
    started: Instant,
    log: Arc<Mutex<WatchLog>>,
    stop: Arc<AtomicBool>,
) {
    let access = target.access().clone();
    let mut instances = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        // Where the instances are now (a recreated pod may have another address); the last
        // known ones while the runtime cannot say.
        if let Ok(now) = target.instances().await {
            instances = now;
        }
        let at = started.elapsed().as_secs_f64();
        let probes = instances.iter().map(|(name, dial)| {
            let access = access.clone();
            let name = name.clone();
            let dial = dial.clone();
            async move { (name, probe_one(&access, &dial).await) }
        });
        let mut handles = Vec::new();
        for p in probes {
            handles.push(tokio::spawn(p));
        }
        let mut writable = Vec::new();
        let mut primaries = Vec::new();
        let mut seen = Vec::new();
        for h in handles {
            if let Ok((name, Some((id, w)))) = h.await {
                seen.push((id, name.clone()));
                if w.primary {
                    primaries.push(name.clone());
                }
                if w.writable {
                    writable.push(name);
                }
            }
        }
        if let Ok(mut l) = log.lock() {
            l.rounds += 1;
            for (id, name) in seen {
                // A name's server changes when its pod comes back at another address.
                l.names.retain(|k, n| *n != name || *k == id);
                l.names.insert(id, name);
            }
            if writable.len() > 1 {
                l.split_brain.push(Moment {
                    at_seconds: at,
                    instances: writable,
                });
            } else if primaries.len() > 1 {
                l.fenced_overlap.push(Moment {
                    at_seconds: at,
                    instances: primaries,
                });
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Runs the check on `target` (it must be running); `progress` gets one line per step.
pub fn check<T: Target + Clone + Send + 'static>(
    target: &T,
    options: &CheckOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<CheckReport, CheckError> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(CheckError::AsyncRuntime)?;
    runtime.block_on(check_async(target, options, progress))
}

/// While waiting: when the runtime first records a primary other than `from`.
struct PrimaryMove<'a> {
    from: &'a str,
    t0: Instant,
    seconds: &'a mut Option<f64>,
}

/// Waits until the cluster is ready and the writer had an acknowledged write after `since`.
async fn wait_ready(
    target: &impl Target,
    writer: &Arc<Mutex<WriterLog>>,
    since: Instant,
    timeout: Duration,
    mut moved: Option<PrimaryMove<'_>>,
) -> Result<Observation, NotReady> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match target.observe().await {
            Ok(report) => {
                if let Some(m) = moved.as_mut()
                    && m.seconds.is_none()
                    && report.primary != m.from
                {
                    *m.seconds = Some(m.t0.elapsed().as_secs_f64());
                }
                let acked = writer.lock().map(|l| l.acked_since(since)).unwrap_or(false);
                if report.ready && acked {
                    return Ok(report);
                }
                if report.ready {
                    let error = writer
                        .lock()
                        .ok()
                        .and_then(|l| l.last_error.clone())
                        .unwrap_or_default();
                    format!("ready, but no write acknowledged through rw (last error: {error})")
                } else {
                    report.unready
                }
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            return Err(NotReady { timeout, last });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The writer and the watcher of a check, running against a target while someone else acts
/// on it: a round of [`check`] or a test's own drills ([`Writing::drill`] names each; its
/// write outage is the longest stretch without an acknowledged write while it lasts).
pub struct Writing {
    started: Instant,
    /// The highest number written before this run.
    first: u64,
    stop: Arc<AtomicBool>,
    writer: Arc<Mutex<WriterLog>>,
    watch: Arc<Mutex<WatchLog>>,
    writer_task: tokio::task::JoinHandle<()>,
    watch_task: tokio::task::JoinHandle<()>,
    drills: Vec<Drill>,
    current: Option<(String, Instant)>,
}

/// One drill a test ran under the writer, and the writes it cost.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Drill {
    pub name: String,
    /// How long it lasted (until the next drill or the end).
    pub seconds: f64,
    /// The longest stretch without an acknowledged write while it lasted.
    pub outage_seconds: f64,
    pub writes_acknowledged: u64,
}

impl Writing {
    /// Creates the table through `rw` once the database takes writes, then starts the writer
    /// and the watcher (in the current tokio runtime).
    pub async fn start<T: Target + Clone + Send + 'static>(
        target: &T,
        options: &CheckOptions,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<Writing, CheckError> {
        let started = Instant::now();
        let access = target.access();
        let rw = target.rw();

        // The table, through rw, once the cluster takes writes.
        progress(&format!("creating table {TABLE} through rw"));
        let deadline = Instant::now() + options.round_timeout;
        let first = loop {
            let attempt = async {
                let mut s = access
                    .connect(&rw, Duration::from_secs(2), Login::App)
                    .await?;
                let max = tokio::time::timeout(Duration::from_secs(10), async {
                    s.create_table().await?;
                    s.max_id().await
                })
                .await
                .map_err(|_| SqlError::Slow("10s"))??;
                s.close().await;
                Ok::<_, SqlError>(max)
            };
            match attempt.await {
                Ok(max) => break max,
                Err(e) if Instant::now() > deadline => {
                    // It may exist (created, then no answer): the run leaves nothing behind.
                    let dropped = drop_table(target, Duration::from_secs(5)).await;
                    return Err(CheckError::NoTable {
                        database: target.key(),
                        port: rw.port,
                        cause: e,
                        left: dropped.err(),
                    });
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        };

        let stop = Arc::new(AtomicBool::new(false));
        let writer = Arc::new(Mutex::new(WriterLog::default()));
        let watch = Arc::new(Mutex::new(WatchLog::default()));
        let writer_task = tokio::spawn(write_loop(
            access.clone(),
            rw,
            first,
            options.write_interval,
            writer.clone(),
            stop.clone(),
        ));
        let watch_task = tokio::spawn(watch_loop(
            target.clone(),
            options.probe_interval,
            started,
            watch.clone(),
            stop.clone(),
        ));
        Ok(Writing {
            started,
            first,
            stop,
            writer,
            watch,
            writer_task,
            watch_task,
            drills: Vec::new(),
            current: None,
        })
    }

    /// Whether a write was acknowledged since the drill under way started (false without
    /// one): a test that waits for it before its next drill measures each drill's whole
    /// outage, not the part of it before the next drill began.
    pub fn acknowledged_in_drill(&self) -> bool {
        let Some((_, from)) = &self.current else {
            return false;
        };
        self.writer.lock().is_ok_and(|l| l.acked_since(*from))
    }

    /// The writer's last error, if any (why it does not write, while it does not).
    pub fn last_error(&self) -> Option<String> {
        self.writer.lock().ok().and_then(|l| l.last_error.clone())
    }

    /// Ends the drill under way, if any, and starts `name`.
    pub fn drill(&mut self, name: &str) {
        self.end_drill();
        self.current = Some((name.to_string(), Instant::now()));
    }

    fn end_drill(&mut self) {
        if let Some((name, from)) = self.current.take() {
            let to = Instant::now();
            let (outage, acked) = self
                .writer
                .lock()
                .map(|l| l.longest_gap(from, to))
                .unwrap_or_default();
            self.drills.push(Drill {
                name,
                seconds: to.duration_since(from).as_secs_f64(),
                outage_seconds: outage,
                writes_acknowledged: acked,
            });
        }
    }

    /// Ends the drill under way, stops the writer and the watcher, reads every row back
    /// through `rw` and drops the table: the report (its `drills` filled, no rounds).
    pub async fn finish<T: Target>(
        mut self,
        target: &T,
        progress: &(dyn Fn(&str) + Sync),
    ) -> CheckReport {
        self.end_drill();
        self.report(target, Fault::Kill, 0, Vec::new(), None, progress)
            .await
    }

    async fn report<T: Target>(
        self,
        target: &T,
        fault: Fault,
        asked: u32,
        rounds: Vec<Round>,
        mut aborted: Option<String>,
        progress: &(dyn Fn(&str) + Sync),
    ) -> CheckReport {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.writer_task.await;
        let _ = self.watch_task.await;
        let (started, first, writer, watch, drills) = (
            self.started,
            self.first,
            self.writer,
            self.watch,
            self.drills,
        );
        let db = target.database();
        let (access, rw) = (target.access(), target.rw());

        // Read every row back from the primary, through rw.
        let mut read_back_from = None;
        let mut present: BTreeSet<u64> = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut read_error = String::new();
        while Instant::now() < deadline {
            let attempt = async {
                let mut s = access
                    .connect(&rw, Duration::from_secs(2), Login::App)
                    .await?;
                let ids = tokio::time::timeout(Duration::from_secs(30), s.read_ids())
                    .await
                    .map_err(|_| SqlError::Slow("30s"))??;
                s.close().await;
                Ok::<_, SqlError>(ids)
            };
            match attempt.await {
                Ok(ids) => {
                    // Rows of an earlier run on the same table are not this run's business.
                    present = ids.into_iter().filter(|id| *id > first).collect();
                    read_back_from = target.observe().await.ok().map(|r| r.primary);
                    break;
                }
                Err(e) => {
                    read_error = e.to_string();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
        let (acks, attempts) = writer
            .lock()
            .map(|l| (l.acks.clone(), l.attempts))
            .unwrap_or_default();
        let acked: BTreeSet<u64> = acks.iter().map(|a| a.id).collect();
        let (lost, unacknowledged_present) = if read_back_from.is_some() {
            let lost: Vec<u64> = acked.difference(&present).copied().collect();
            (lost, present.difference(&acked).count() as u64)
        } else {
            if aborted.is_none() {
                aborted = Some(format!(
                    "cannot read the rows back through rw: {read_error}"
                ));
            }
            (Vec::new(), 0)
        };
        let (probe_rounds, split_brain, fenced_overlap) = watch
            .lock()
            .map(|l| (l.rounds, l.split_brain.clone(), l.fenced_overlap.clone()))
            .unwrap_or_default();
        let table_dropped = match drop_table(target, Duration::from_secs(60)).await {
            Ok(()) => {
                progress(&format!("dropped table {TABLE}"));
                true
            }
            Err(e) => {
                progress(&format!("cannot drop table {TABLE}: {e}"));
                false
            }
        };
        let outages: Vec<f64> = rounds.iter().filter_map(|r| r.outage_seconds).collect();
        CheckReport {
            database: target.key(),
            engine: db.spec.engine.to_string(),
            instances: db.spec.instances,
            synchronous: db.spec.replication.synchronous,
            fault,
            detection_timeout: db.spec.failover.detection_timeout.clone(),
            failovers_asked: asked,
            failovers: rounds.iter().filter(|r| r.failover).count() as u32,
            outage: Spread::of(&outages),
            rounds,
            writes_attempted: attempts,
            writes_acknowledged: acked.len() as u64,
            writes_lost: lost.len() as u64,
            lost_sample: lost.into_iter().take(50).collect(),
            unacknowledged_present,
            read_back_from,
            probe_rounds,
            split_brain,
            fenced_overlap,
            duration_seconds: started.elapsed().as_secs_f64(),
            table_dropped: Some(table_dropped),
            aborted,
            drills,
        }
    }
}

async fn check_async<T: Target + Clone + Send + 'static>(
    target: &T,
    options: &CheckOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<CheckReport, CheckError> {
    let running = Writing::start(target, options, progress).await?;
    let (started, writer, watch) = (
        running.started,
        running.writer.clone(),
        running.watch.clone(),
    );
    let db = target.database();
    let mut rng = rand::rngs::StdRng::seed_from_u64(options.seed);
    let mut rounds: Vec<Round> = Vec::new();
    let mut aborted = None;
    let mut since = started;
    let mut made = 0;
    // Rounds whose primary comes back in place are run again, up to this many rounds in all.
    let limit = options.failovers.saturating_mul(2).saturating_add(3);
    let mut number = 0;
    while made < options.failovers {
        number += 1;
        if number > limit {
            let in_place: Vec<String> = rounds
                .iter()
                .filter(|r| !r.failover)
                .map(|r| r.round.to_string())
                .collect();
            aborted = Some(format!(
                "{made} of {} failover(s) in {} rounds: in round(s) {} the failed primary came back in place (its supervisor restarted it within the detection timeout {}); a fault that holds it down (stop-node) always fails over",
                options.failovers,
                rounds.len(),
                in_place.join(", "),
                db.spec.failover.detection_timeout
            ));
            break;
        }
        let report = match wait_ready(target, &writer, since, options.round_timeout, None).await {
            Ok(r) => r,
            Err(e) => {
                aborted = Some(format!("before round {number}: {e}"));
                break;
            }
        };
        let pause = Duration::from_millis(rng.random_range(500..2000));
        tokio::time::sleep(pause).await;
        let primary = match target.observe().await {
            Ok(r) if r.ready => r.primary,
            _ => report.primary,
        };
        let failed = watch.lock().ok().and_then(|l| l.id_of(&primary));
        let t0 = Instant::now();
        let injected = match target.inject(&primary, options.fault) {
            Ok(i) => i,
            Err(e) => {
                aborted = Some(format!(
                    "round {number}: cannot {} {primary}: {e}",
                    options.fault
                ));
                break;
            }
        };
        progress(&format!("round {number}: {}", injected.summary));
        let mut round = Round {
            round: number,
            fault: options.fault,
            failed: primary.clone(),
            pids: injected.pids,
            outage_seconds: None,
            writes_resumed_on: None,
            primary_moved_seconds: None,
            ready_again_seconds: None,
            problem: None,
            failover: false,
        };
        // A held instance cannot acknowledge; a killed one's orphaned backends may, once.
        let held = if options.fault.holds() {
            failed.as_ref()
        } else {
            None
        };
        let dead = failed
            .as_ref()
            .and_then(|id| writer.lock().ok().and_then(|l| l.server_before(t0, id)));
        let deadline = t0 + options.round_timeout;
        let mut next_report = Instant::now();
        loop {
            let first = writer
                .lock()
                .ok()
                .and_then(|l| l.first_after(t0, held, dead.as_ref()));
            if let Some(ack) = first {
                round.outage_seconds = Some(ack.at.duration_since(t0).as_secs_f64());
                round.writes_resumed_on = watch.lock().ok().map(|l| l.name_of(&ack.server.id));
                break;
            }
            if Instant::now() > deadline {
                let error = writer
                    .lock()
                    .ok()
                    .and_then(|l| l.last_error.clone())
                    .unwrap_or_default();
                round.problem = Some(format!(
                    "no write acknowledged within {:?} of the fault (last error: {error})",
                    options.round_timeout
                ));
                break;
            }
            if round.primary_moved_seconds.is_none() && Instant::now() >= next_report {
                next_report = Instant::now() + Duration::from_millis(100);
                if let Ok(r) = target.observe().await
                    && r.primary != primary
                {
                    round.primary_moved_seconds = Some(t0.elapsed().as_secs_f64());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if round.primary_moved_seconds.is_none()
            && let Ok(r) = target.observe().await
            && r.primary != primary
        {
            round.primary_moved_seconds = Some(t0.elapsed().as_secs_f64());
        }
        if options.fault.holds() {
            match target.resume(&primary) {
                Ok(i) => progress(&format!("round {number}: {}", i.summary)),
                Err(e) => progress(&format!("round {number}: resume {primary}: {e}")),
            }
        }
        if let Some(o) = round.outage_seconds {
            progress(&format!(
                "round {number}: writes resumed on {} after {o:.3}s",
                round.writes_resumed_on.as_deref().unwrap_or("?")
            ));
        }
        let failed_round = round.outage_seconds.is_none();
        since = Instant::now();
        let moved = PrimaryMove {
            from: &primary,
            t0,
            seconds: &mut round.primary_moved_seconds,
        };
        match wait_ready(target, &writer, since, options.round_timeout, Some(moved)).await {
            Ok(_) => {
                round.ready_again_seconds = Some(t0.elapsed().as_secs_f64());
                progress(&format!(
                    "round {number}: ready again after {:.1}s",
                    t0.elapsed().as_secs_f64()
                ));
            }
            Err(e) => {
                round.problem = Some(match round.problem.take() {
                    Some(p) => format!("{p}; {e}"),
                    None => e.to_string(),
                });
                rounds.push(round);
                aborted = Some(format!("round {number}: {e}"));
                break;
            }
        }
        round.failover = round.primary_moved_seconds.is_some();
        if round.failover || !options.require_failover {
            made += 1;
        } else {
            progress(&format!(
                "round {number}: not a failover: {primary} came back in place as the primary; another round follows"
            ));
        }
        rounds.push(round);
        if failed_round {
            aborted = Some(format!("round {number}: writes never resumed"));
            break;
        }
    }

    Ok(running
        .report(
            target,
            options.fault,
            options.failovers,
            rounds,
            aborted,
            progress,
        )
        .await)
}

/// Drops the checker's table through `rw`, retrying until `timeout` (a failover may be under
/// way when the run ends).
async fn drop_table(target: &impl Target, timeout: Duration) -> Result<(), SqlError> {
    let (access, rw) = (target.access(), target.rw());
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = async {
            let mut s = access
                .connect(&rw, Duration::from_secs(2), Login::App)
                .await?;
            tokio::time::timeout(Duration::from_secs(10), s.drop_table())
                .await
                .map_err(|_| SqlError::Slow("10s"))??;
            s.close().await;
            Ok::<_, SqlError>(())
        };
        match attempt.await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_between_ranks() {
        let v = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&v, 50.0), 2.5);
        assert_eq!(percentile(&v, 100.0), 4.0);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
        let s = Spread::of(&[3.0, 1.0, 2.0, f64::NAN]).unwrap();
        assert_eq!((s.count, s.p50, s.max), (3, 2.0, 3.0));
        assert!(Spread::of(&[]).is_none());
    }

    #[test]
    fn the_outage_ends_with_a_write_sent_after_the_fault_by_a_live_server_not_a_held_or_killed_one()
    {
        let base = Instant::now();
        let at = |ms| base + Duration::from_millis(ms);
        let t0 = at(100);
        // Pods share one port on different addresses.
        let id = |at: &str| ServerId {
            at: at.into(),
            port: 5432,
        };
        let old = Server {
            id: id("127.0.0.2"),
            started: 1,
        };
        let restarted = Server {
            id: id("127.0.0.2"),
            started: 2,
        };
        let other = Server {
            id: id("127.0.0.3"),
            started: 1,
        };
        let ack = |id, sent, acked, server| Ack {
            id,
            sent: at(sent),
            at: at(acked),
            server,
        };
        let log = WriterLog {
            acks: vec![
                ack(1, 0, 50, old.clone()),
                ack(2, 90, 105, old.clone()),
                ack(3, 106, 110, old.clone()),
                ack(4, 300, 800, restarted),
                ack(5, 850, 900, other),
            ],
            attempts: 5,
            last_error: None,
        };
        assert_eq!(log.server_before(t0, &id("127.0.0.2")), Some(old.clone()));
        assert_eq!(log.server_before(t0, &id("127.0.0.3")), None);
        // Write 2 was in flight at the fault: acknowledged after it, but sent before.
        assert_eq!(log.first_after(t0, None, None).map(|a| a.id), Some(3));
        // Write 3 was acknowledged by the killed server's orphaned backend; write 4 by the
        // server restarted in place.
        assert_eq!(log.first_after(t0, None, Some(&old)).map(|a| a.id), Some(4));
        // A held server acknowledges nothing that counts.
        assert_eq!(
            log.first_after(t0, Some(&id("127.0.0.2")), None)
                .map(|a| a.id),
            Some(5)
        );
        assert!(log.first_after(at(900), None, None).is_none());
        assert!(log.acked_since(at(10)) && !log.acked_since(at(900)));
        // A drill from 100 to 1000 ms: acknowledged at 105, 110, 800, 900; the longest
        // stretch without one is 110 -> 800.
        let (gap, acked) = log.longest_gap(at(100), at(1000));
        assert!((gap - 0.690).abs() < 1e-9, "{gap}");
        assert_eq!(acked, 4);
        // Nothing acknowledged in it: the whole drill.
        let (gap, acked) = log.longest_gap(at(1000), at(1500));
        assert!((gap - 0.5).abs() < 1e-9 && acked == 0, "{gap}");
    }

    fn report(lost: u64, split: usize, aborted: Option<&str>) -> CheckReport {
        CheckReport {
            database: "default/pg".into(),
            engine: "postgres".into(),
            instances: 3,
            synchronous: true,
            fault: Fault::Stop,
            detection_timeout: "2s".into(),
            failovers_asked: 1,
            failovers: 1,
            rounds: vec![Round {
                round: 1,
                fault: Fault::Stop,
                failed: "pg-0".into(),
                pids: vec![1, 2],
                outage_seconds: Some(2.5),
                writes_resumed_on: Some("pg-1".into()),
                primary_moved_seconds: Some(2.2),
                ready_again_seconds: Some(9.0),
                problem: None,
                failover: true,
            }],
            outage: Spread::of(&[2.5]),
            writes_attempted: 100,
            writes_acknowledged: 90,
            writes_lost: lost,
            lost_sample: (1..=lost).collect(),
            unacknowledged_present: 1,
            read_back_from: Some("pg-1".into()),
            probe_rounds: 50,
            split_brain: (0..split)
                .map(|i| Moment {
                    at_seconds: i as f64,
                    instances: vec!["pg-0".into(), "pg-1".into()],
                })
                .collect(),
            fenced_overlap: Vec::new(),
            duration_seconds: 12.0,
            table_dropped: Some(true),
            aborted: aborted.map(String::from),
            drills: Vec::new(),
        }
    }

    #[test]
    fn a_report_passes_only_without_loss_split_brain_or_abort() {
        assert!(report(0, 0, None).passed());
        assert!(!report(1, 0, None).passed());
        assert!(!report(0, 1, None).passed());
        assert!(!report(0, 0, Some("x")).passed());
    }

    #[test]
    fn the_rendered_report_names_losses_and_split_brain_moments() {
        let text = report(2, 1, None).render();
        assert!(text.contains("2 acknowledged but LOST"), "{text}");
        assert!(text.contains("lost numbers: 1 2"), "{text}");
        assert!(text.contains("SPLIT BRAIN at 0.000s: pg-0, pg-1"), "{text}");
        assert!(text.contains("p50 2.500s"), "{text}");
        assert!(text.contains("verdict: FAILED"), "{text}");
        assert!(text.contains("1 of 1 failover(s) in 1 round(s)"), "{text}");
        assert!(text.contains("table stator_chaos: dropped"), "{text}");
        assert!(report(0, 0, None).render().contains("verdict: OK"));
    }

    #[test]
    fn a_report_of_drills_lists_each_drill_s_outage() {
        let mut r = report(0, 0, None);
        r.drills = vec![Drill {
            name: "primary pod deleted".into(),
            seconds: 12.0,
            outage_seconds: 3.25,
            writes_acknowledged: 300,
        }];
        let text = r.render();
        assert!(text.contains("1 drill(s) under one writer"), "{text}");
        assert!(
            text.contains("primary pod deleted   12.0s    3.250s"),
            "{text}"
        );
        assert!(text.contains("verdict: OK"), "{text}");
    }

    #[test]
    fn the_report_round_trips_through_json() {
        let r = report(0, 0, None);
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains("\"writesLost\":0"), "{text}");
        assert!(text.contains("\"fault\":\"stop\""), "{text}");
        let back: CheckReport = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }
}
