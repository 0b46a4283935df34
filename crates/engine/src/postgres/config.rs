//! PostgreSQL's files, rendered as text: `postgresql.conf` (Stator's defaults, the user's
//! parameters and the keys Stator manages), `pg_hba.conf` (scram-sha-256 everywhere, no `trust`),
//! the replication conninfo and the password file libpq reads. Pure functions, no I/O.

use std::collections::BTreeMap;
use std::path::Path;

use stator_api::instance::Endpoint;

use crate::error::EngineError;
use crate::tls::ServerTlsPaths;

/// The superuser initdb creates.
pub const SUPERUSER: &str = "postgres";
/// The role replicas (and pg_rewind) connect as.
pub const REPLICATION_USER: &str = "stator_replication";
/// The role monitoring tools connect as (member of `pg_monitor`).
pub const MONITOR_USER: &str = "stator_monitor";

/// Everything `postgresql.conf` is made of.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// Effective parameters: Stator's defaults overlaid with `spec.config.parameters`.
    pub parameters: BTreeMap<String, String>,
    pub port: u16,
    pub listen_address: String,
    pub socket_dir: String,
    /// `NAME-N`: shown in `ps` and used as the replication `application_name`.
    pub cluster_name: String,
    /// `spec.replication.synchronous`.
    pub synchronous: bool,
    /// For a replica: the conninfo of its upstream.
    pub primary_conninfo: Option<String>,
    /// WAL archiving (`spec.backup`): the `archive_command` and `archive_timeout` in seconds.
    /// `None`: `archive_mode = off`.
    pub archive: Option<(String, u64)>,
    /// The certificate files: TLS on (and plaintext TCP refused by `pg_hba.conf`).
    pub tls: Option<ServerTlsPaths>,
}

/// Quotes a `postgresql.conf` value: single quotes, with `'` doubled and `\` escaped.
pub fn quote_conf_value(field: &str, value: &str) -> Result<String, EngineError> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(EngineError::Config {
            field: field.into(),
            message: "must be a single line (no newline or NUL characters)".into(),
        });
    }
    Ok(format!(
        "'{}'",
        value.replace('\\', "\\\\").replace('\'', "''")
    ))
}

fn check_key(key: &str) -> Result<(), EngineError> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '.')
        && !key.starts_with('.')
        && !key.ends_with('.');
    if ok {
        Ok(())
    } else {
        Err(EngineError::Config {
            field: format!("spec.config.parameters.{key}"),
            message: "is not a PostgreSQL parameter name (lowercase letters, digits, '_' and '.')"
                .into(),
        })
    }
}

/// Renders `postgresql.conf`.
pub fn render_postgresql_conf(s: &ServerSettings) -> Result<String, EngineError> {
    let mut out = String::from(
        "# Written by Stator at every start; edit spec.config.parameters instead.\n\n# Parameters (Stator's defaults and spec.config.parameters)\n",
    );
    for (key, value) in &s.parameters {
        check_key(key)?;
        let field = format!("spec.config.parameters.{key}");
        out.push_str(&format!("{key} = {}\n", quote_conf_value(&field, value)?));
    }
    let mut managed: Vec<(&str, String)> = vec![
        ("port", s.port.to_string()),
        ("listen_addresses", s.listen_address.clone()),
        ("unix_socket_directories", s.socket_dir.clone()),
        ("unix_socket_permissions", "0700".into()),
        ("cluster_name", s.cluster_name.clone()),
        ("wal_level", "replica".into()),
        ("hot_standby", "on".into()),
        ("hot_standby_feedback", "on".into()),
        ("wal_log_hints", "on".into()),
        ("password_encryption", "scram-sha-256".into()),
        ("logging_collector", "off".into()),
        ("log_file_mode", "0600".into()),
        // Statement text (and so its literals: a password in ALTER ROLE, personal data) never
        // reaches the log; validation refuses the settings that would write it.
        ("log_min_error_statement", "panic".into()),
        ("log_parameter_max_length_on_error", "0".into()),
    ];
    match &s.archive {
        // `on`, not `always`: only the primary archives; a replica starts when promoted.
        Some((command, timeout)) => {
            managed.push(("archive_mode", "on".into()));
            managed.push(("archive_command", command.clone()));
            managed.push(("archive_timeout", format!("{timeout}s")));
        }
        None => managed.push(("archive_mode", "off".into())),
    }
    if !s.parameters.contains_key("max_wal_senders") {
        managed.push(("max_wal_senders", "10".into()));
    }
    if s.synchronous {
        managed.push(("synchronous_standby_names", "ANY 1 (*)".into()));
        managed.push(("synchronous_commit", "on".into()));
    }
    match &s.tls {
        Some(tls) => managed.extend([
            ("ssl", "on".into()),
            ("ssl_min_protocol_version", "TLSv1.2".into()),
            ("ssl_ca_file", tls.ca.clone()),
            ("ssl_cert_file", tls.cert.clone()),
            ("ssl_key_file", tls.key.clone()),
        ]),
        None => managed.push(("ssl", "off".into())),
    }
    if let Some(conninfo) = &s.primary_conninfo {
        managed.push(("primary_conninfo", conninfo.clone()));
    }
    out.push_str("\n# Managed by Stator\n");
    for (key, value) in managed {
        out.push_str(&format!("{key} = {}\n", quote_conf_value(key, &value)?));
    }
    Ok(out)
}

/// Renders `pg_hba.conf`: every connection authenticates with scram-sha-256; the superuser only
/// over the socket and loopback; replication only as the replication role. With TLS, every TCP
/// line is `hostssl`: a plaintext TCP connection matches none and is refused.
pub fn render_pg_hba(tls: bool) -> String {
    let hba = format!(
        "# Written by Stator at every start. scram-sha-256 everywhere; no trust.\n\
# TYPE  DATABASE     USER               ADDRESS        METHOD\n\
local   all          all                               scram-sha-256\n\
host    replication  {REPLICATION_USER} all            scram-sha-256\n\
host    postgres     {REPLICATION_USER} all            scram-sha-256\n\
host    all          {REPLICATION_USER} all            reject\n\
host    all          {SUPERUSER}           127.0.0.1/32   scram-sha-256\n\
host    all          {SUPERUSER}           ::1/128        scram-sha-256\n\
host    all          {SUPERUSER}           all            reject\n\
host    all          all                all            scram-sha-256\n"
    );
    if tls {
        hba.replace("\nhost    ", "\nhostssl ")
    } else {
        hba
    }
}

/// Quotes a libpq conninfo value: single quotes, `\` and `'` escaped with a backslash.
pub fn quote_conninfo_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The conninfo a replica (or pg_rewind, with `dbname`) uses to reach `upstream`: the password
/// comes from `passfile`, never from the conninfo itself. With `tls`, the upstream must present
/// a certificate of the database's CA valid for its host (`sslmode=verify-full`), and the
/// replication user shows its client certificate.
pub fn upstream_conninfo(
    upstream: &Endpoint,
    passfile: &Path,
    application_name: &str,
    dbname: Option<&str>,
    tls: Option<&ServerTlsPaths>,
) -> String {
    let mut parts = vec![
        format!("host={}", quote_conninfo_value(&upstream.host)),
        format!("port={}", upstream.port),
        format!("user={}", quote_conninfo_value(REPLICATION_USER)),
        format!(
            "passfile={}",
            quote_conninfo_value(&passfile.to_string_lossy())
        ),
        format!(
            "application_name={}",
            quote_conninfo_value(application_name)
        ),
        "connect_timeout=5".to_string(),
    ];
    if let Some(db) = dbname {
        parts.push(format!("dbname={}", quote_conninfo_value(db)));
    }
    if let Some(tls) = tls {
        parts.push("sslmode=verify-full".into());
        parts.push(format!("sslrootcert={}", quote_conninfo_value(&tls.ca)));
        if let Some((cert, key)) = &tls.client {
            parts.push(format!("sslcert={}", quote_conninfo_value(cert)));
            parts.push(format!("sslkey={}", quote_conninfo_value(key)));
        }
    }
    parts.join(" ")
}

fn escape_passfile_field(value: &str) -> String {
    value.replace('\\', "\\\\").replace(':', "\\:")
}

/// A libpq password file line for `user` on any host, port and database.
pub fn render_passfile(user: &str, password: &str) -> String {
    format!(
        "*:*:*:{}:{}\n",
        escape_passfile_field(user),
        escape_passfile_field(password)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ServerSettings {
        let mut parameters = BTreeMap::new();
        parameters.insert("shared_buffers".into(), "128MB".into());
        parameters.insert("log_line_prefix".into(), "%m [%p] it's ".into());
        ServerSettings {
            parameters,
            port: 15410,
            listen_address: "127.0.0.1".into(),
            socket_dir: "/run/stator/db-0".into(),
            cluster_name: "db-0".into(),
            synchronous: false,
            primary_conninfo: None,
            archive: None,
            tls: None,
        }
    }

    #[test]
    fn with_backups_every_instance_archives_through_its_own_config() {
        let mut s = settings();
        assert!(
            render_postgresql_conf(&s)
                .unwrap()
                .contains("archive_mode = 'off'")
        );
        s.archive = Some((
            "/usr/bin/pgbackrest --config=/r/pgbackrest.conf --stanza=db archive-push %p".into(),
            60,
        ));
        let text = render_postgresql_conf(&s).unwrap();
        assert!(text.contains("archive_mode = 'on'\n"), "{text}");
        assert!(text.contains("archive_timeout = '60s'\n"), "{text}");
        assert!(
            text.contains("archive_command = '/usr/bin/pgbackrest --config=/r/pgbackrest.conf --stanza=db archive-push %p'\n"),
            "{text}"
        );
    }

    #[test]
    fn tls_turns_ssl_on_with_tls_1_2_at_least() {
        let mut s = settings();
        assert!(render_postgresql_conf(&s).unwrap().contains("ssl = 'off'"));
        s.tls = Some(ServerTlsPaths::example());
        let text = render_postgresql_conf(&s).unwrap();
        for line in [
            "ssl = 'on'",
            "ssl_min_protocol_version = 'TLSv1.2'",
            "ssl_cert_file = '/r/tls-tls.crt'",
            "ssl_key_file = '/r/tls-tls.key'",
            "ssl_ca_file = '/r/tls-ca.crt'",
        ] {
            assert!(text.contains(line), "missing {line}: {text}");
        }
    }

    #[test]
    fn with_tls_every_tcp_line_is_hostssl() {
        let hba = render_pg_hba(true);
        for line in hba.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.starts_with("local ") || line.starts_with("hostssl "),
                "{line}"
            );
        }
        assert!(render_pg_hba(false).contains("\nhost    replication"));
    }

    #[test]
    fn replication_with_tls_verifies_the_upstream_fully() {
        let upstream = Endpoint {
            instance: "db-0".into(),
            host: "127.0.0.1".into(),
            port: 15410,
        };
        let c = upstream_conninfo(
            &upstream,
            Path::new("/p"),
            "db-1",
            None,
            Some(&ServerTlsPaths::example()),
        );
        assert!(c.contains("sslmode=verify-full"), "{c}");
        assert!(c.contains("sslrootcert='/r/tls-ca.crt'"), "{c}");
        assert!(c.contains("sslcert='/r/tls-client.crt'"), "{c}");
        let plain = upstream_conninfo(&upstream, Path::new("/p"), "db-1", None, None);
        assert!(!plain.contains("ssl"), "{plain}");
    }

    #[test]
    fn conf_quotes_values_and_sets_the_managed_keys() {
        let text = render_postgresql_conf(&settings()).unwrap();
        assert!(text.contains("shared_buffers = '128MB'\n"), "{text}");
        assert!(
            text.contains("log_line_prefix = '%m [%p] it''s '\n"),
            "{text}"
        );
        for line in [
            "port = '15410'",
            "listen_addresses = '127.0.0.1'",
            "unix_socket_directories = '/run/stator/db-0'",
            "wal_level = 'replica'",
            "hot_standby = 'on'",
            "wal_log_hints = 'on'",
            "password_encryption = 'scram-sha-256'",
            "max_wal_senders = '10'",
        ] {
            assert!(text.contains(line), "missing {line}: {text}");
        }
        assert!(!text.contains("primary_conninfo"));
    }

    #[test]
    fn conf_escapes_backslashes() {
        assert_eq!(quote_conf_value("f", r"a\b").unwrap(), r"'a\\b'");
    }

    #[test]
    fn a_value_with_a_newline_is_refused_naming_the_parameter() {
        let mut s = settings();
        s.parameters
            .insert("search_path".into(), "a\nport = 1".into());
        let e = render_postgresql_conf(&s).unwrap_err().to_string();
        assert!(e.contains("spec.config.parameters.search_path"), "{e}");
    }

    #[test]
    fn a_key_that_could_inject_a_line_is_refused() {
        let mut s = settings();
        s.parameters.insert("a = 1\nb".into(), "x".into());
        assert!(render_postgresql_conf(&s).is_err());
    }

    #[test]
    fn a_replica_conf_carries_its_conninfo_without_a_password() {
        let mut s = settings();
        let upstream = Endpoint {
            instance: "db-0".into(),
            host: "127.0.0.1".into(),
            port: 15410,
        };
        s.primary_conninfo = Some(upstream_conninfo(
            &upstream,
            Path::new("/run/x/pgpass"),
            "db-1",
            None,
            None,
        ));
        let text = render_postgresql_conf(&s).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("primary_conninfo"))
            .unwrap();
        assert!(line.contains("passfile=''/run/x/pgpass''"), "{line}");
        assert!(line.contains("user=''stator_replication''"), "{line}");
        assert!(!line.contains("password"), "{line}");
    }

    #[test]
    fn hba_has_no_trust_and_scram_everywhere() {
        let hba = render_pg_hba(false);
        assert!(!hba.contains("trust\n") && !hba.contains(" trust "));
        for line in hba.lines().filter(|l| !l.starts_with('#')) {
            assert!(
                line.ends_with("scram-sha-256") || line.ends_with("reject"),
                "{line}"
            );
        }
        assert!(hba.contains("replication  stator_replication"));
    }

    #[test]
    fn passfile_escapes_colons_and_backslashes() {
        assert_eq!(render_passfile("u", r"a:b\c"), "*:*:*:u:a\\:b\\\\c\n");
    }
}
