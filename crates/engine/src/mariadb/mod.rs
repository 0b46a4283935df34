//! MariaDB (10.11 and later) as a flavor of the MySQL family: `mariadbd`, strict GTIDs in one
//! replication domain, `CHANGE MASTER … MASTER_USE_GTID=slave_pos`, the built-in lossless
//! semi-synchronous replication, replicas cloned with `mariadb-backup` streamed from the
//! upstream's instance manager. The engine itself is [`crate::mysql_family::MysqlFamily`].

use sha1::{Digest, Sha1};
use stator_api::Engine;
use stator_api::instance::Endpoint;

use crate::credentials::Secret;
use crate::error::EngineError;
use crate::mysql_family::config::{SEMI_SYNC_TIMEOUT_MS, ServerSettings, quote_literal};
use crate::mysql_family::dialect::{Dialect, ReplicaStatusColumns};
use crate::tls::ServerTlsPaths;

/// MariaDB's words.
pub const DIALECT: Dialect = Dialect {
    engine: Engine::Mariadb,
    server_program: "mariadbd",
    package: "mariadb-server",
    pid_file: "mariadb.pid",
    socket_file: "mariadb.sock",
    managed_options,
    replica_status: "SHOW SLAVE STATUS",
    columns: ReplicaStatusColumns {
        source_host: "Master_Host",
        source_port: "Master_Port",
        io_running: "Slave_IO_Running",
        sql_running: "Slave_SQL_Running",
        seconds_behind: "Seconds_Behind_Master",
        retrieved: "Gtid_IO_Pos",
    },
    executed_position: "@@GLOBAL.gtid_current_pos",
    logged_position: "@@GLOBAL.gtid_binlog_state",
    start_replica: "START SLAVE",
    stop_replica: "STOP SLAVE",
    reset_replica_all: "RESET SLAVE ALL",
    make_writable: &["SET GLOBAL read_only = OFF"],
    enable_semi_sync_source: "SET GLOBAL rpl_semi_sync_master_enabled = ON",
    change_source,
    // LOCAL: a FLUSH is written to the binary log otherwise, an errant transaction on a replica.
    reload_tls: "FLUSH LOCAL SSL",
    replication_privileges: "REPLICATION SLAVE, BINLOG MONITOR",
    monitor_privileges: "SLAVE MONITOR, BINLOG MONITOR, PROCESS",
    identified_by,
};

/// The GTID and replication keys of `my.cnf`.
fn managed_options(s: &ServerSettings) -> Vec<(&'static str, String)> {
    let mut o = vec![
        ("log_slave_updates", "ON".to_string()),
        ("gtid_strict_mode", "ON".into()),
        ("gtid_domain_id", "0".into()),
        // Replication starts only once the instance manager pointed it at the upstream the
        // data directory's marker names.
        ("skip_slave_start", "ON".into()),
    ];
    if !s.parameters.contains_key("slave_net_timeout") {
        o.push(("slave_net_timeout", "10".into()));
    }
    // The replica side on every instance; the primary side only on a primary: a replica with
    // it on would make its own SQL thread wait (log_slave_updates) for an acknowledgement
    // nobody sends. Promotion switches it on ([`DIALECT`]`.enable_semi_sync_source`), so a
    // promoted replica keeps lossless replication; its wait point and timeout are already set.
    let on_off = |b: bool| if b { "ON" } else { "OFF" }.to_string();
    o.push((
        "rpl_semi_sync_master_enabled",
        on_off(s.synchronous && !s.read_only),
    ));
    o.push(("rpl_semi_sync_slave_enabled", on_off(s.synchronous)));
    if s.synchronous {
        o.push(("rpl_semi_sync_master_wait_point", "AFTER_SYNC".into()));
        o.push((
            "rpl_semi_sync_master_timeout",
            SEMI_SYNC_TIMEOUT_MS.to_string(),
        ));
        o.push(("rpl_semi_sync_master_wait_no_slave", "ON".into()));
    }
    o
}

/// `CHANGE MASTER TO …, MASTER_USE_GTID=slave_pos`: the replica asks for what follows its
/// `gtid_slave_pos` — the position of the last transaction it applied from a primary. A former
/// primary rejoining gets `gtid_slave_pos` set to its `gtid_binlog_pos` first (see
/// [`crate::mysql_family`]), which is what `current_pos` would use, without the risk of
/// `current_pos` silently including local transactions on a replica that was never a primary.
fn change_source(
    upstream: &Endpoint,
    user: &str,
    password: &Secret,
    tls: Option<&ServerTlsPaths>,
) -> Result<Vec<String>, EngineError> {
    let tls = match tls {
        Some(t) => {
            let mut s = format!(
                ", MASTER_SSL=1, MASTER_SSL_VERIFY_SERVER_CERT=1, MASTER_SSL_CA={}",
                quote_literal(&t.ca)
            );
            if let Some((cert, key)) = &t.client {
                s.push_str(&format!(
                    ", MASTER_SSL_CERT={}, MASTER_SSL_KEY={}",
                    quote_literal(cert),
                    quote_literal(key)
                ));
            }
            s
        }
        None => ", MASTER_SSL=0".into(),
    };
    Ok(vec![format!(
        "CHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={}, MASTER_USER={}, MASTER_PASSWORD={}, MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1{tls}",
        quote_literal(&upstream.host),
        upstream.port,
        quote_literal(user),
        quote_literal(password.expose())
    )])
}

/// `IDENTIFIED BY PASSWORD '*…'`: the mysql_native_password hash (SHA1 of SHA1), computed here
/// so the password itself is never in a statement.
fn identified_by(password: &Secret) -> String {
    format!(
        "IDENTIFIED BY PASSWORD {}",
        quote_literal(&native_password_hash(password))
    )
}

/// `*` and the upper-case hex of SHA1(SHA1(password)).
pub fn native_password_hash(password: &Secret) -> String {
    let inner = Sha1::digest(password.expose().as_bytes());
    let outer = Sha1::digest(inner);
    let hex: String = outer.iter().map(|b| format!("{b:02X}")).collect();
    format!("*{hex}")
}

/// The file mariadb-backup writes the backup's binary log coordinates to: `FILE\tPOS\tGTID`
/// (10.x names it `xtrabackup_binlog_info`, 11.x `mariadb_backup_binlog_info`).
pub const BACKUP_BINLOG_INFO: [&str; 2] = ["mariadb_backup_binlog_info", "xtrabackup_binlog_info"];

/// The GTID position of a backup from its binlog info text (`binlog.000001\t762\t0-1000-3`);
/// empty when the upstream had written no transaction.
pub fn gtid_of_backup(binlog_info: &str) -> String {
    binlog_info
        .lines()
        .next()
        .and_then(|l| l.split('\t').nth(2))
        .map(|g| g.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mysql_family::config::render_server_options;
    use std::collections::BTreeMap;

    fn settings(read_only: bool, synchronous: bool) -> ServerSettings {
        let mut parameters = BTreeMap::new();
        parameters.insert("character_set_server".into(), "utf8mb4".into());
        ServerSettings {
            parameters,
            data_dir: "/d".into(),
            socket: "/r/mariadb.sock".into(),
            pid_file: "/d/mariadb.pid".into(),
            tmp_dir: "/r".into(),
            log_error: "/l/server.log".into(),
            port: 13310,
            bind_address: "127.0.0.1".into(),
            server_id: 1002,
            read_only,
            synchronous,
            tls: None,
        }
    }

    #[test]
    fn a_replica_option_file_has_strict_gtids_binlog_and_read_only() {
        let text = render_server_options(&DIALECT, &settings(true, false)).unwrap();
        for line in [
            "[mysqld]",
            "character_set_server = \"utf8mb4\"",
            "server_id = \"1002\"",
            "log_bin = \"binlog\"",
            "log_slave_updates = \"ON\"",
            "gtid_strict_mode = \"ON\"",
            "gtid_domain_id = \"0\"",
            "binlog_format = \"ROW\"",
            "read_only = \"ON\"",
            "socket = \"/r/mariadb.sock\"",
            "pid_file = \"/d/mariadb.pid\"",
            "bind_address = \"127.0.0.1\"",
            "rpl_semi_sync_master_enabled = \"OFF\"",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}: {text}");
        }
    }

    #[test]
    fn synchronous_replication_is_lossless_on_both_sides_and_never_times_out_silently() {
        let replica = render_server_options(&DIALECT, &settings(true, true)).unwrap();
        for line in [
            "rpl_semi_sync_master_enabled = \"OFF\"",
            "rpl_semi_sync_slave_enabled = \"ON\"",
            "rpl_semi_sync_master_wait_point = \"AFTER_SYNC\"",
        ] {
            assert!(
                replica.lines().any(|l| l == line),
                "missing {line}: {replica}"
            );
        }
        let text = render_server_options(&DIALECT, &settings(false, true)).unwrap();
        for line in [
            "read_only = \"OFF\"",
            "rpl_semi_sync_master_enabled = \"ON\"",
            "rpl_semi_sync_slave_enabled = \"ON\"",
            "rpl_semi_sync_master_wait_point = \"AFTER_SYNC\"",
            "rpl_semi_sync_master_timeout = \"86400000\"",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}: {text}");
        }
    }

    #[test]
    fn with_tls_the_server_refuses_plaintext_and_replication_verifies_the_primary() {
        let mut s = settings(true, false);
        s.tls = Some(ServerTlsPaths::example());
        let text = render_server_options(&DIALECT, &s).unwrap();
        for line in [
            "ssl_ca = \"/r/tls-ca.crt\"",
            "ssl_cert = \"/r/tls-tls.crt\"",
            "ssl_key = \"/r/tls-tls.key\"",
            "require_secure_transport = \"ON\"",
            "tls_version = \"TLSv1.2,TLSv1.3\"",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}: {text}");
        }
        let up = Endpoint {
            instance: "db-0".into(),
            host: "127.0.0.1".into(),
            port: 13310,
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
                "MASTER_SSL=1, MASTER_SSL_VERIFY_SERVER_CERT=1, MASTER_SSL_CA='/r/tls-ca.crt', MASTER_SSL_CERT='/r/tls-client.crt'"
            ),
            "{}",
            sql[0]
        );
        // A binlogged FLUSH would be an errant transaction on a replica.
        assert_eq!(DIALECT.reload_tls, "FLUSH LOCAL SSL");
    }

    #[test]
    fn change_master_uses_slave_pos_and_quotes_the_password() {
        let up = Endpoint {
            instance: "db-0".into(),
            host: "127.0.0.1".into(),
            port: 13310,
        };
        let sql = change_source(&up, "stator_replication", &Secret::new("p'w"), None).unwrap();
        assert_eq!(sql.len(), 1);
        assert!(
            sql[0].contains("MASTER_HOST='127.0.0.1', MASTER_PORT=13310"),
            "{}",
            sql[0]
        );
        assert!(sql[0].contains("MASTER_PASSWORD='p''w'"), "{}", sql[0]);
        assert!(sql[0].contains("MASTER_USE_GTID=slave_pos"), "{}", sql[0]);
    }

    #[test]
    fn the_native_password_hash_matches_the_server_and_hides_the_password() {
        // SELECT PASSWORD('secret') on MariaDB 10.11.
        let hash = native_password_hash(&Secret::new("secret"));
        assert_eq!(hash, "*14E65567ABDB5135D0CFD9A70B3032C179A49EE7");
        assert!(!identified_by(&Secret::new("secret")).contains("secret"));
    }

    #[test]
    fn the_backup_gtid_is_read_from_binlog_info() {
        assert_eq!(gtid_of_backup("binlog.000001\t762\t0-1000-3\n"), "0-1000-3");
        assert_eq!(gtid_of_backup("binlog.000001\t330\t\n"), "");
        assert_eq!(gtid_of_backup(""), "");
    }
}
