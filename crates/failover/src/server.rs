//! Asking a database server directly, as the monitor user, past its instance manager: whether
//! the primary (or a replica being promoted) accepts writes and what it received — a hung
//! server still looks fine in its manager's last observation — and the write check through
//! `rw` that ends a transition's client write outage.

use std::time::Duration;

use stator_api::Engine;
use stator_engine::tls::Dial;

/// How long the direct query to the primary's server may take before the primary counts as
/// hung for this tick.
pub const SERVER_PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// How long one write check through `rw` may take: a write on a synchronous primary waits for
/// a standby, as clients' writes do.
pub const WRITE_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// What a direct query to a server found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerAnswer {
    /// Accepts writes; `None`: not known.
    pub writable: Option<bool>,
    /// A replica's received (flushed) position.
    pub received: Option<String>,
}

/// Why a server gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("query failed: {0}")]
    Query(String),
    #[error("no answer to a query within {} ms", .0.as_millis())]
    QueryTimeout(Duration),
    #[error("no greeting: {0}")]
    NoGreeting(std::io::Error),
    #[error("no greeting within {} ms", .0.as_millis())]
    GreetingTimeout(Duration),
}

/// Why a write through `rw` was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum WriteCheckError {
    #[error("the write failed: {0}")]
    Failed(ServerError),
    #[error("cannot connect: {0}")]
    Connect(String),
    #[error("cannot read read_only: {0}")]
    ReadOnlyUnknown(String),
    #[error("the server behind rw is read-only")]
    ReadOnly,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// A real query on the server at `host:port` within `limit` (at most [`SERVER_PROBE_TIMEOUT`]
/// but for a primary at its detection deadline): whether it accepts
/// writes and what it received, when the engine tells.
/// PostgreSQL without a monitor password known: nothing is asked, nothing is known.
/// MariaDB/MySQL without a password: only its greeting is read (a hung server sends none);
/// with one, `@@global.read_only` is read as the monitor user, which tells a promoted
/// replica's `read_only` off as soon as it is, not at its manager's next observation.
pub async fn query_server(
    engine: Engine,
    dial: &Dial,
    monitor_password: Option<&str>,
    limit: Duration,
) -> Result<ServerAnswer, ServerError> {
    match engine {
        Engine::Postgres => {
            let Some(password) = monitor_password else {
                return Ok(ServerAnswer::default());
            };
            let query = async {
                let row = monitor_query(
                    dial,
                    password,
                    "stator-supervisor",
                    "SELECT NOT pg_is_in_recovery() AND \
                     current_setting('default_transaction_read_only') = 'off', \
                     pg_last_wal_receive_lsn()::text",
                )
                .await?;
                Ok(ServerAnswer {
                    writable: Some(row.get::<_, bool>(0)),
                    received: row.get::<_, Option<String>>(1),
                })
            };
            match tokio::time::timeout(limit, query).await {
                Ok(answer) => answer,
                Err(_) => Err(ServerError::QueryTimeout(limit)),
            }
        }
        Engine::Mysql | Engine::Mariadb => {
            if let Some(password) = monitor_password {
                let query = async {
                    let read_only = mysql_read_only(dial, password).await.map_err(|e| match e {
                        WriteCheckError::Connect(e) => ServerError::Connect(e),
                        other => ServerError::Query(other.to_string()),
                    })?;
                    Ok(ServerAnswer {
                        writable: Some(read_only == Some(0)),
                        received: None,
                    })
                };
                return match tokio::time::timeout(limit, query).await {
                    Ok(answer) => answer,
                    Err(_) => Err(ServerError::QueryTimeout(limit)),
                };
            }
            use tokio::io::AsyncReadExt;
            let greet = async {
                let mut stream = tokio::net::TcpStream::connect((dial.host.as_str(), dial.port))
                    .await
                    .map_err(|e| ServerError::Connect(e.to_string()))?;
                let mut b = [0u8; 5];
                stream
                    .read_exact(&mut b)
                    .await
                    .map_err(ServerError::NoGreeting)?;
                Ok(ServerAnswer::default())
            };
            match tokio::time::timeout(limit, greet).await {
                Ok(answer) => answer,
                Err(_) => Err(ServerError::GreetingTimeout(limit)),
            }
        }
    }
}

/// One query on a PostgreSQL server as the monitor user, on a connection of its own.
async fn monitor_query(
    dial: &Dial,
    password: &str,
    application_name: &str,
    sql: &str,
) -> Result<tokio_postgres::Row, ServerError> {
    let mut config = tokio_postgres::Config::new();
    config
        .user(stator_engine::postgres::config::MONITOR_USER)
        .password(password)
        .dbname("postgres")
        .application_name(application_name)
        .connect_timeout(SERVER_PROBE_TIMEOUT);
    // TLS verified against the database's CA where the dial trusts one (verify-full).
    let tls = dial.postgres(&mut config).map_err(ServerError::Connect)?;
    let (client, connection) = config
        .connect(tls)
        .await
        .map_err(|e| ServerError::Connect(e.to_string()))?;
    let task = tokio::spawn(connection);
    let row = client
        .query_one(sql, &[])
        .await
        .map_err(|e| ServerError::Query(e.to_string()));
    drop(client);
    let _ = task.await;
    row
}

/// One write check through the `rw` proxy at `dial`, as the monitor user; `Ok` when the
/// server behind it accepted it.
///
/// PostgreSQL: a read-write transaction that takes a transaction id and commits it
/// (`pg_current_xact_id()`): a commit record is written to WAL, and a synchronous primary
/// waits for its standby, exactly as for a client's write. A replica refuses it ("cannot
/// assign TransactionIds during recovery"), a fenced primary returns no id.
/// MariaDB: the server behind `rw` has `read_only` off. It is a read, not a write (Stator keeps
/// no table of its own to write to), so it shows the server would accept the application's
/// writes, not that one was committed.
pub async fn write_through(
    engine: Engine,
    dial: &Dial,
    password: &str,
) -> Result<(), WriteCheckError> {
    let check = async {
        match engine {
            Engine::Postgres => {
                let row = monitor_query(
                    dial,
                    password,
                    "stator-write-check",
                    "SELECT CASE WHEN current_setting('transaction_read_only') = 'off' \
                     THEN pg_current_xact_id()::text END",
                )
                .await
                .map_err(WriteCheckError::Failed)?;
                match row.get::<_, Option<String>>(0) {
                    Some(_) => Ok(()),
                    None => Err(WriteCheckError::ReadOnly),
                }
            }
            Engine::Mysql | Engine::Mariadb => match mysql_read_only(dial, password).await? {
                Some(0) => Ok(()),
                _ => Err(WriteCheckError::ReadOnly),
            },
        }
    };
    tokio::time::timeout(WRITE_CHECK_TIMEOUT, check)
        .await
        .map_err(|_| WriteCheckError::Timeout(WRITE_CHECK_TIMEOUT))?
}

/// `@@global.read_only` of the MariaDB/MySQL server at `dial`, as the monitor user, on a
/// connection of its own over TCP (never the server's Unix socket: that would bypass `rw`).
async fn mysql_read_only(dial: &Dial, password: &str) -> Result<Option<i64>, WriteCheckError> {
    use mysql_async::prelude::Queryable;
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(dial.host.clone())
        .tcp_port(dial.port)
        .user(Some(stator_engine::mysql_family::config::MONITOR_USER))
        .pass(Some(password.to_string()))
        .ssl_opts(dial.mysql())
        .prefer_socket(false);
    let mut conn = mysql_async::Conn::new(opts)
        .await
        .map_err(|e| WriteCheckError::Connect(e.to_string()))?;
    let read_only: Option<i64> = conn
        .query_first("SELECT @@global.read_only")
        .await
        .map_err(|e| WriteCheckError::ReadOnlyUnknown(e.to_string()))?;
    let _ = conn.disconnect().await;
    Ok(read_only)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_named_as_before() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let why = query_server(
            Engine::Mariadb,
            &Dial::registered("127.0.0.1", port),
            None,
            SERVER_PROBE_TIMEOUT,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(why.starts_with("cannot connect: "), "{why}");
        // PostgreSQL without the monitor password is not asked.
        assert_eq!(
            query_server(
                Engine::Postgres,
                &Dial::registered("127.0.0.1", port),
                None,
                SERVER_PROBE_TIMEOUT
            )
            .await
            .unwrap(),
            ServerAnswer::default()
        );
        assert_eq!(
            ServerError::QueryTimeout(SERVER_PROBE_TIMEOUT).to_string(),
            "no answer to a query within 400 ms"
        );
    }
}
