//! MySQL 8 as a flavor of the MySQL family: `mysqld`, `gtid_mode=ON` with
//! `enforce_gtid_consistency`, `super_read_only` replicas, `CHANGE REPLICATION SOURCE TO …
//! SOURCE_AUTO_POSITION=1`, the `rpl_semi_sync_source_*` plugin for lossless replication, and
//! the clone plugin to seed a replica (`CLONE INSTANCE FROM` the upstream, as the replication
//! user). The engine itself is [`crate::mysql_family::MysqlFamily`].
//!
//! No MySQL 8 server can be installed where Stator is developed: this flavor's configuration and
//! statements are unit-tested, and its live tests run only where a `mysqld` 8 is on PATH.

use stator_api::Engine;
use stator_api::instance::Endpoint;

use crate::credentials::Secret;
use crate::error::EngineError;
use crate::mysql_family::config::{SEMI_SYNC_TIMEOUT_MS, ServerSettings, quote_literal};
use crate::mysql_family::dialect::{Dialect, ReplicaStatusColumns};
use crate::tls::ServerTlsPaths;

/// MySQL 8's words.
pub const DIALECT: Dialect = Dialect {
    engine: Engine::Mysql,
    server_program: "mysqld",
    package: "mysql-server-8.0 (from the MySQL APT repository)",
    pid_file: "mysqld.pid",
    socket_file: "mysqld.sock",
    managed_options,
    replica_status: "SHOW REPLICA STATUS",
    columns: ReplicaStatusColumns {
        source_host: "Source_Host",
        source_port: "Source_Port",
        io_running: "Replica_IO_Running",
        sql_running: "Replica_SQL_Running",
        seconds_behind: "Seconds_Behind_Source",
        retrieved: "Retrieved_Gtid_Set",
    },
    executed_position: "@@GLOBAL.gtid_executed",
    logged_position: "@@GLOBAL.gtid_executed",
    start_replica: "START REPLICA",
    stop_replica: "STOP REPLICA",
    reset_replica_all: "RESET REPLICA ALL",
    make_writable: &[
        "SET GLOBAL super_read_only = OFF",
        "SET GLOBAL read_only = OFF",
    ],
    enable_semi_sync_source: "SET GLOBAL rpl_semi_sync_source_enabled = ON",
    change_source,
    reload_tls: "ALTER INSTANCE RELOAD TLS",
    replication_privileges: "REPLICATION SLAVE, REPLICATION CLIENT, BACKUP_ADMIN",
    monitor_privileges: "REPLICATION CLIENT, PROCESS",
    identified_by,
};

fn managed_options(s: &ServerSettings) -> Vec<(&'static str, String)> {
    let on_off = |b: bool| if b { "ON" } else { "OFF" }.to_string();
    let mut plugins = vec!["clone.so", "auth_socket.so"];
    if s.synchronous {
        plugins.extend(["semisync_source.so", "semisync_replica.so"]);
    }
    let mut o = vec![
        ("plugin_load_add", plugins.join(";")),
        ("gtid_mode", "ON".to_string()),
        ("enforce_gtid_consistency", "ON".into()),
        ("log_replica_updates", "ON".into()),
        ("super_read_only", on_off(s.read_only)),
        ("skip_replica_start", "ON".into()),
    ];
    if !s.parameters.contains_key("replica_net_timeout") {
        o.push(("replica_net_timeout", "10".into()));
    }
    if s.synchronous {
        // The source side only on a primary; promotion switches it on.
        o.push(("rpl_semi_sync_source_enabled", on_off(!s.read_only)));
        o.push(("rpl_semi_sync_replica_enabled", "ON".into()));
        o.push(("rpl_semi_sync_source_wait_point", "AFTER_SYNC".into()));
        o.push((
            "rpl_semi_sync_source_timeout",
            SEMI_SYNC_TIMEOUT_MS.to_string(),
        ));
        o.push(("rpl_semi_sync_source_wait_for_replica_count", "1".into()));
    }
    o
}

/// `CHANGE REPLICATION SOURCE TO …, SOURCE_AUTO_POSITION=1`: the replica sends its
/// `gtid_executed` and receives every transaction missing from it.
fn change_source(
    upstream: &Endpoint,
    user: &str,
    password: &Secret,
    tls: Option<&ServerTlsPaths>,
) -> Result<Vec<String>, EngineError> {
    let tls = match tls {
        Some(t) => {
            let mut s = format!(
                ", SOURCE_SSL=1, SOURCE_SSL_VERIFY_SERVER_CERT=1, SOURCE_SSL_CA={}",
                quote_literal(&t.ca)
            );
            if let Some((cert, key)) = &t.client {
                s.push_str(&format!(
                    ", SOURCE_SSL_CERT={}, SOURCE_SSL_KEY={}",
                    quote_literal(cert),
                    quote_literal(key)
                ));
            }
            s
        }
        None => ", SOURCE_SSL=0".into(),
    };
    Ok(vec![format!(
        "CHANGE REPLICATION SOURCE TO SOURCE_HOST={}, SOURCE_PORT={}, SOURCE_USER={}, SOURCE_PASSWORD={}, SOURCE_AUTO_POSITION=1, SOURCE_CONNECT_RETRY=1, GET_SOURCE_PUBLIC_KEY=1{tls}",
        quote_literal(&upstream.host),
        upstream.port,
        quote_literal(user),
        quote_literal(password.expose())
    )])
}

/// MySQL 8 stores salted caching_sha2_password hashes; the password goes in the statement,
/// which MySQL masks in every log it writes.
fn identified_by(password: &Secret) -> String {
    format!("IDENTIFIED BY {}", quote_literal(password.expose()))
}

/// The statements that seed an empty, running recipient from `upstream` with the clone
/// plugin; the server restarts itself on the copied data when it is done.
/// With TLS files, the clone connection verifies the donor against the database's CA.
pub fn clone_statements(
    upstream: &Endpoint,
    user: &str,
    password: &Secret,
    tls: Option<&ServerTlsPaths>,
) -> Vec<String> {
    let mut statements = Vec::new();
    if let Some(t) = tls {
        statements.push(format!(
            "SET GLOBAL clone_ssl_ca = {}",
            quote_literal(&t.ca)
        ));
        if let Some((cert, key)) = &t.client {
            statements.push(format!(
                "SET GLOBAL clone_ssl_cert = {}",
                quote_literal(cert)
            ));
            statements.push(format!("SET GLOBAL clone_ssl_key = {}", quote_literal(key)));
        }
    }
    statements.extend([
        format!(
            "SET GLOBAL clone_valid_donor_list = {}",
            quote_literal(&format!("{}:{}", upstream.host, upstream.port))
        ),
        format!(
            "CLONE INSTANCE FROM {}@{}:{} IDENTIFIED BY {}",
            quote_literal(user),
            quote_literal(&upstream.host),
            upstream.port,
            quote_literal(password.expose())
        ),
    ]);
    statements
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mysql_family::config::render_server_options;
    use std::collections::BTreeMap;

    fn settings(read_only: bool, synchronous: bool) -> ServerSettings {
        ServerSettings {
            parameters: BTreeMap::new(),
            data_dir: "/d".into(),
            socket: "/r/mysqld.sock".into(),
            pid_file: "/d/mysqld.pid".into(),
            tmp_dir: "/r".into(),
            log_error: "/l/server.log".into(),
            port: 13310,
            bind_address: "127.0.0.1".into(),
            server_id: 1001,
            read_only,
            synchronous,
            tls: None,
        }
    }

    #[test]
    fn a_mysql_replica_has_gtid_mode_and_super_read_only() {
        let text = render_server_options(&DIALECT, &settings(true, false)).unwrap();
        for line in [
            "gtid_mode = \"ON\"",
            "enforce_gtid_consistency = \"ON\"",
            "log_replica_updates = \"ON\"",
            "super_read_only = \"ON\"",
            "read_only = \"ON\"",
            "server_id = \"1001\"",
            "plugin_load_add = \"clone.so;auth_socket.so\"",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}: {text}");
        }
        assert!(!text.contains("gtid_strict_mode"), "{text}");
        assert!(!text.contains("rpl_semi_sync"), "{text}");
    }

    #[test]
    fn mysql_semi_sync_is_after_sync_with_the_source_plugin() {
        let text = render_server_options(&DIALECT, &settings(false, true)).unwrap();
        for line in [
            "super_read_only = \"OFF\"",
            "plugin_load_add = \"clone.so;auth_socket.so;semisync_source.so;semisync_replica.so\"",
            "rpl_semi_sync_source_enabled = \"ON\"",
            "rpl_semi_sync_replica_enabled = \"ON\"",
            "rpl_semi_sync_source_wait_point = \"AFTER_SYNC\"",
            "rpl_semi_sync_source_timeout = \"86400000\"",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}: {text}");
        }
    }

    #[test]
    fn mysql_with_tls_verifies_the_source_and_the_donor() {
        // The option file's TLS lines are the family's (tested with MariaDB).
        let up = Endpoint {
            instance: "db-0".into(),
            host: "db-0.db-headless".into(),
            port: 3306,
        };
        let sql = change_source(
            &up,
            "r",
            &Secret::new("x"),
            Some(&ServerTlsPaths::example()),
        )
        .unwrap();
        assert!(
            sql[0].contains(
                "SOURCE_SSL=1, SOURCE_SSL_VERIFY_SERVER_CERT=1, SOURCE_SSL_CA='/r/tls-ca.crt'"
            ),
            "{}",
            sql[0]
        );
        let clone = clone_statements(
            &up,
            "r",
            &Secret::new("x"),
            Some(&ServerTlsPaths::example()),
        );
        assert_eq!(clone[0], "SET GLOBAL clone_ssl_ca = '/r/tls-ca.crt'");
        assert!(clone.last().unwrap().starts_with("CLONE INSTANCE FROM"));
        assert_eq!(DIALECT.reload_tls, "ALTER INSTANCE RELOAD TLS");
    }

    #[test]
    fn mysql_replication_uses_source_auto_position() {
        let up = Endpoint {
            instance: "db-0".into(),
            host: "db-0.db-headless".into(),
            port: 3306,
        };
        let sql = change_source(&up, "stator_replication", &Secret::new("x"), None).unwrap();
        assert!(
            sql[0].starts_with(
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST='db-0.db-headless', SOURCE_PORT=3306"
            ),
            "{}",
            sql[0]
        );
        assert!(sql[0].contains("SOURCE_AUTO_POSITION=1"), "{}", sql[0]);
        let clone = clone_statements(&up, "stator_replication", &Secret::new("x"), None);
        assert_eq!(
            clone[0],
            "SET GLOBAL clone_valid_donor_list = 'db-0.db-headless:3306'"
        );
        assert!(
            clone[1]
                .starts_with("CLONE INSTANCE FROM 'stator_replication'@'db-0.db-headless':3306")
        );
    }

    #[test]
    fn making_a_mysql_replica_writable_clears_super_read_only_first() {
        assert_eq!(DIALECT.make_writable[0], "SET GLOBAL super_read_only = OFF");
    }
}
