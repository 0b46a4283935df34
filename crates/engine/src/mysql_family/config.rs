//! The MySQL family's files, rendered as text: the server's option file (`my.cnf`: Stator's
//! defaults, the user's parameters, then the keys Stator manages — binary log with GTIDs, a
//! unique `server_id`, read-only replicas, lossless semi-synchronous replication when asked) and
//! the 0600 client option file that hands a password to a tool without a command line. Pure
//! functions, no I/O.

use std::collections::BTreeMap;

use crate::error::EngineError;
use crate::mysql_family::dialect::Dialect;
use crate::tls::ServerTlsPaths;

/// The user replicas connect as (and clone from, on MySQL).
pub const REPLICATION_USER: &str = "stator_replication";
/// The user monitoring (and a replica's errant-transaction check on its upstream) connects as.
pub const MONITOR_USER: &str = "stator_monitor";
/// `server_id` of ordinal N is `SERVER_ID_BASE + N`: stable across restarts, clones and
/// failovers, unique within a database.
pub const SERVER_ID_BASE: u32 = 1000;
/// Semi-synchronous replication waits this long (one day, in ms) for a replica's
/// acknowledgement before falling back to asynchronous: in practice, never silently.
pub const SEMI_SYNC_TIMEOUT_MS: u64 = 86_400_000;

/// Everything the server's option file is made of.
#[derive(Clone, Debug)]
pub struct ServerSettings {
    /// Effective parameters: Stator's defaults overlaid with `spec.config.parameters`.
    pub parameters: BTreeMap<String, String>,
    pub data_dir: String,
    pub socket: String,
    pub pid_file: String,
    /// Temporary files: the instance's private run directory, not a shared /tmp.
    pub tmp_dir: String,
    pub log_error: String,
    pub port: u16,
    pub bind_address: String,
    pub server_id: u32,
    /// A replica: the server refuses writes from clients.
    pub read_only: bool,
    /// `spec.replication.synchronous`.
    pub synchronous: bool,
    /// The certificate files: TLS on, and a client without TLS refused
    /// (`require_secure_transport`).
    pub tls: Option<ServerTlsPaths>,
}

/// Quotes an option-file value: double quotes, `\` and `"` escaped. Refuses what could end the
/// line.
pub fn quote_option_value(field: &str, value: &str) -> Result<String, EngineError> {
    if value.contains(['\n', '\r', '\0']) {
        return Err(EngineError::Config {
            field: field.into(),
            message: "must be a single line (no newline or NUL characters)".into(),
        });
    }
    Ok(format!(
        "\"{}\"",
        value.replace('\\', "\\\\").replace('"', "\\\"")
    ))
}

fn check_key(key: &str) -> Result<(), EngineError> {
    let ok = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        && !key.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(EngineError::Config {
            field: format!("spec.config.parameters.{key}"),
            message: "is not a server option name (lowercase letters, digits, '_' and '-')".into(),
        })
    }
}

/// Renders the server's option file (`[mysqld]` group; MariaDB reads it as well).
pub fn render_server_options(d: &Dialect, s: &ServerSettings) -> Result<String, EngineError> {
    let mut out = String::from(
        "# Written by Stator at every start; edit spec.config.parameters instead.\n[mysqld]\n\n# Parameters (Stator's defaults and spec.config.parameters)\n",
    );
    for (key, value) in &s.parameters {
        check_key(key)?;
        let field = format!("spec.config.parameters.{key}");
        out.push_str(&format!("{key} = {}\n", quote_option_value(&field, value)?));
    }
    let on_off = |b: bool| if b { "ON" } else { "OFF" }.to_string();
    let mut managed: Vec<(&str, String)> = vec![
        ("datadir", s.data_dir.clone()),
        ("port", s.port.to_string()),
        ("bind_address", s.bind_address.clone()),
        ("socket", s.socket.clone()),
        ("pid_file", s.pid_file.clone()),
        ("tmpdir", s.tmp_dir.clone()),
        ("log_error", s.log_error.clone()),
        ("server_id", s.server_id.to_string()),
        ("log_bin", "binlog".into()),
        ("relay_log", "relay-bin".into()),
        ("binlog_format", "ROW".into()),
        ("read_only", on_off(s.read_only)),
    ];
    if let Some(tls) = &s.tls {
        managed.extend([
            ("ssl_ca", tls.ca.clone()),
            ("ssl_cert", tls.cert.clone()),
            ("ssl_key", tls.key.clone()),
            ("require_secure_transport", "ON".into()),
            ("tls_version", "TLSv1.2,TLSv1.3".into()),
        ]);
    }
    managed.extend((d.managed_options)(s));
    out.push_str("\n# Managed by Stator\n");
    for (key, value) in managed {
        out.push_str(&format!("{key} = {}\n", quote_option_value(key, &value)?));
    }
    Ok(out)
}

/// A client option file (`--defaults-extra-file`, mode 0600) holding `user` and `password` for
/// the `[client]` group of every client program, including mariadb-backup.
pub fn render_client_options(user: &str, password: &str) -> Result<String, EngineError> {
    Ok(format!(
        "[client]\nuser = {}\npassword = {}\n",
        quote_option_value("user", user)?,
        quote_option_value("password", password)?
    ))
}

/// `'text'` as an SQL string literal, `\` and `'` escaped (the server's default sql_mode reads
/// backslash escapes; doubling `'` works under NO_BACKSLASH_ESCAPES too, and `\` never appears
/// unescaped).
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "''"))
}

/// `` `name` `` with embedded backticks doubled.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_values_are_quoted_and_newlines_refused_naming_the_field() {
        assert_eq!(quote_option_value("f", r#"a"b\c"#).unwrap(), r#""a\"b\\c""#);
        let e = quote_option_value("spec.config.parameters.x", "a\nport=1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("spec.config.parameters.x"), "{e}");
    }

    #[test]
    fn a_key_that_could_inject_an_option_is_refused() {
        assert!(check_key("max_connections").is_ok());
        assert!(check_key("innodb-buffer-pool-size").is_ok());
        for bad in ["a = 1\nb", "[client]", "", "-x", "A"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sql_literals_and_identifiers_are_escaped() {
        assert_eq!(quote_literal(r"it's\"), r"'it''s\\'");
        assert_eq!(quote_ident("a`b"), "`a``b`");
    }

    #[test]
    fn the_client_option_file_quotes_the_password() {
        let text = render_client_options("u", "p\"w").unwrap();
        assert_eq!(text, "[client]\nuser = \"u\"\npassword = \"p\\\"w\"\n");
    }
}
