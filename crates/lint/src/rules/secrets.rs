//! Secrets: passwords on command lines, literal and weak secrets, secrets where they do not
//! belong, and authentication switched off.
//!
//! Generated Secrets (such as `stator render`'s, whose values are long random strings) are
//! fine: only values a person evidently chose (placeholders, dictionary passwords, short or
//! single-class strings) are reported. Whether a Secret file should be in version control at
//! all is outside what a linter can see, so no rule guesses at it.

use base64::Engine as _;

use crate::finding::{Finding, Rule, Severity};
use crate::node::Node;
use crate::object::{Manifests, Object};

pub const SECRET_ON_COMMAND_LINE: Rule = Rule {
    id: "STATOR-SEC-001",
    name: "secret-on-command-line",
    severity: Severity::Error,
    summary: "A password or secret is passed on a probe, command or args line, where `ps` and /proc/PID/cmdline show it.",
    rationale: "Guide: `mysqladmin ping -uroot -p$MYSQL_ROOT_PASSWORD` in both probes; issue 3: probes never carry a password.",
    fix: "probe over HTTP (or a socket) and let tools read credentials from a file (--defaults-extra-file, PGPASSFILE) or the environment",
};

pub const WEAK_SECRET_VALUE: Rule = Rule {
    id: "STATOR-SEC-002",
    name: "weak-secret-value",
    severity: Severity::Error,
    summary: "A Secret holds a placeholder or well-known password (changeme, password, admin, secret, 123456, …) or an empty password.",
    rationale: "Guide: `MYSQL_ROOT_PASSWORD: \"changeme-root\"`; a placeholder that reaches a cluster is a known password.",
    fix: "generate a random value (e.g. `openssl rand -base64 24`) or reference an existing Secret, and keep it out of the repository",
};

pub const HAND_CHOSEN_SECRET_VALUE: Rule = Rule {
    id: "STATOR-SEC-003",
    name: "hand-chosen-secret-value",
    severity: Severity::Warning,
    summary: "A password in a Secret is short or uses one kind of character: it was typed by a person, not generated.",
    rationale: "Issue 3: generated passwords are random; a typed password committed with the manifests is shared with everyone who can read them.",
    fix: "use a generated value of at least 16 random characters, created outside the repository (stator render does this)",
};

pub const SECRET_IN_CONFIG_MAP: Rule = Rule {
    id: "STATOR-SEC-004",
    name: "secret-in-configmap",
    severity: Severity::Error,
    summary: "A ConfigMap holds a password or secret (a password-named key, or `password=` in a config file).",
    rationale: "Guide: ConfigMap for non-sensitive, Secret for sensitive values; ConfigMaps are readable without Secret RBAC.",
    fix: "move the value into a Secret and mount it as a file",
};

pub const SECRET_IN_ENV_VALUE: Rule = Rule {
    id: "STATOR-SEC-005",
    name: "secret-in-env-value",
    severity: Severity::Error,
    summary: "A container's environment sets a password-named variable to a literal `value:`.",
    rationale: "Issue 3: never a literal secret in a manifest; the pod spec is readable by anyone who can read the workload.",
    fix: "mount the Secret as a file (e.g. POSTGRES_PASSWORD_FILE) or use valueFrom.secretKeyRef",
};

pub const AUTHENTICATION_DISABLED: Rule = Rule {
    id: "STATOR-SEC-006",
    name: "authentication-disabled",
    severity: Severity::Error,
    summary: "The database image is told to accept connections without a password (POSTGRES_HOST_AUTH_METHOD=trust, MYSQL_ALLOW_EMPTY_PASSWORD, …).",
    rationale: "Guide: Secret with the DB password, limited by RBAC and NetworkPolicy; with trust or an empty password any pod that reaches the port is superuser.",
    fix: "remove the setting and provide a password from a Secret file",
};

pub const RULES: &[&Rule] = &[
    &SECRET_ON_COMMAND_LINE,
    &WEAK_SECRET_VALUE,
    &HAND_CHOSEN_SECRET_VALUE,
    &SECRET_IN_CONFIG_MAP,
    &SECRET_IN_ENV_VALUE,
    &AUTHENTICATION_DISABLED,
];

pub fn check(manifests: &Manifests, out: &mut Vec<Finding>) {
    for object in &manifests.objects {
        match object.kind.as_str() {
            "Secret" => check_secret(object, out),
            "ConfigMap" => check_config_map(object, out),
            _ => {}
        }
    }
    for workload in manifests.workloads() {
        for container in workload.containers() {
            let who = container.describe();
            check_command_lines(workload.object, container.node, &who, out);
            check_env(workload.object, container.node, &who, out);
        }
    }
}

// ---------------------------------------------------------------- command lines

fn check_command_lines(object: &Object, container: &Node, who: &str, out: &mut Vec<Finding>) {
    let mut lines: Vec<(String, &Node)> = Vec::new();
    for key in ["command", "args"] {
        if let Some(node) = container.get(key) {
            lines.push((format!("{who} {key}"), node));
        }
    }
    for probe in ["readinessProbe", "livenessProbe", "startupProbe"] {
        if let Some(node) = container.path(&[probe, "exec", "command"]) {
            lines.push((format!("{who} {probe}"), node));
        }
    }
    for hook in ["postStart", "preStop"] {
        if let Some(node) = container.path(&["lifecycle", hook, "exec", "command"]) {
            lines.push((format!("{who} {hook} hook"), node));
        }
    }
    for (place, node) in lines {
        let items: Vec<(String, &Node)> = node
            .items()
            .iter()
            .filter_map(|item| item.text().map(|t| (t, item)))
            .collect();
        // A direct exec (no shell) of a MySQL client: every argument belongs to it.
        let argv_is_mysql = items
            .iter()
            .any(|(t, _)| !t.contains(char::is_whitespace) && is_mysql_client(t));
        for (text, item) in &items {
            if let Some(leak) = command_line_leak(text, argv_is_mysql) {
                out.push(SECRET_ON_COMMAND_LINE.at(
                    object,
                    leak_line(text, item, &leak.word),
                    format!("{place} puts a password on the command line: {}", leak.why),
                ));
                break;
            }
        }
    }
}

/// The source line of `word` inside a scalar: the scalar's own line, or for a multi-line
/// script (a `|` block, whose node starts at its first text line) the line that holds it.
fn leak_line(text: &str, item: &Node, word: &str) -> usize {
    if !text.contains('\n') {
        return item.line;
    }
    let index = text.lines().position(|l| l.contains(word)).unwrap_or(0);
    (item.line + index).min(item.end_line.max(item.line))
}

/// What puts a secret on a command line, and the word that does it.
struct Leak {
    why: String,
    word: String,
}

const MYSQL_CLIENTS: [&str; 12] = [
    "mysql",
    "mysqladmin",
    "mysqldump",
    "mysqlcheck",
    "mysqlshow",
    "mysqlimport",
    "mysqlpump",
    "mariadb",
    "mariadb-admin",
    "mariadb-dump",
    "mariadb-backup",
    "xtrabackup",
];

fn is_mysql_client(word: &str) -> bool {
    let word = word.trim_start_matches(['(', '"', '\'']);
    let base = word.rsplit('/').next().unwrap_or(word);
    MYSQL_CLIENTS.contains(&base) || base == "mariabackup"
}

fn shell_words(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| c.is_whitespace() || matches!(c, ';' | '|' | '&' | '`'))
        .filter(|w| !w.is_empty())
}

/// The simple commands of a shell script, split at `;`, `&&`, `||`, `|` and newlines, so that
/// `cp -pR a b; mysql …` does not read cp's `-pR` as a MySQL password.
fn shell_commands(text: &str) -> impl Iterator<Item = &str> {
    text.split([';', '&', '|', '\n'])
}

/// Why `text` (one argv element, or a whole `sh -c` script) would put a secret on some
/// process's command line, if it would.
fn command_line_leak(text: &str, argv_is_mysql: bool) -> Option<Leak> {
    // A backslash-newline continues the command on the next line.
    let joined = text.replace("\\\n", " ");
    shell_commands(&joined).find_map(|command| {
        let words: Vec<&str> = shell_words(command).collect();
        let mysql_client = argv_is_mysql || words.iter().any(|w| is_mysql_client(w));
        let (index, why) = leak_in_command(&words, mysql_client)?;
        Some(Leak {
            why,
            word: words[index].to_string(),
        })
    })
}

fn leak_in_command(words: &[&str], mysql_client: bool) -> Option<(usize, String)> {
    for (i, word) in words.iter().enumerate() {
        let bare = word.trim_matches(|c| c == '"' || c == '\'');
        // MySQL-family clients take the password glued to -p; PostgreSQL's -p is a port.
        if let Some(rest) = bare.strip_prefix("-p")
            && !rest.is_empty()
        {
            let password_var = rest.contains('$') && is_secret_name(rest);
            let not_a_port = !rest.chars().all(|c| c.is_ascii_digit());
            if (mysql_client && not_a_port) || password_var {
                return Some((i, format!("`-p{}`", masked(rest))));
            }
        }
        if let Some(rest) = bare.strip_prefix("--password=")
            && !rest.is_empty()
        {
            return Some((i, format!("`--password={}`", masked(rest))));
        }
        if bare == "--password"
            && let Some(next) = words.get(i + 1)
            && !next.starts_with('-')
            && (next.contains('$') || !mysql_client)
        {
            return Some((i, format!("`--password {}`", masked(next))));
        }
        for var in ["PGPASSWORD=", "MYSQL_PWD="] {
            if let Some(rest) = bare.strip_prefix(var) {
                let value = rest.trim_matches(|c| c == '"' || c == '\'');
                // `PGPASSWORD="$X" psql` hands the value over in the environment: fine.
                if !value.is_empty() && !value.starts_with('$') {
                    return Some((i, format!("a literal `{var}…`")));
                }
            }
        }
        if let Some(var) = kubernetes_reference(bare)
            && is_secret_name(var)
        {
            return Some((
                i,
                format!("`$({var})` is expanded by Kubernetes into the argument list"),
            ));
        }
        if let Some(uri) = uri_with_password(bare) {
            return Some((i, format!("a connection URI with a password (`{uri}`)")));
        }
        if conninfo_password(bare) {
            return Some((i, "a literal `password=` in a connection string".into()));
        }
    }
    None
}

/// Whether `word` holds a literal `password=` value of a libpq conninfo
/// (`"host=db password=x"`) or a URI query (`?password=x`).
fn conninfo_password(word: &str) -> bool {
    let Some(at) = word.find("password=") else {
        return false;
    };
    if at > 0 && !matches!(word.as_bytes()[at - 1], b'?' | b'&' | b' ' | b'"' | b'\'') {
        return false;
    }
    let value = word[at + "password=".len()..]
        .split('&')
        .next()
        .unwrap_or("");
    let value = value.trim_matches(|c| c == '"' || c == '\'');
    !value.is_empty() && !value.starts_with('$')
}

/// A command-line value as findings may show it: variable references as written (they are
/// names, not secrets), literal values never.
fn masked(value: &str) -> String {
    if value.trim_start_matches(['"', '\'']).starts_with('$') {
        value.to_string()
    } else {
        "***".to_string()
    }
}

/// `VAR` from a Kubernetes `$(VAR)` reference inside `word`.
fn kubernetes_reference(word: &str) -> Option<&str> {
    let start = word.find("$(")? + 2;
    let len = word[start..].find(')')?;
    Some(&word[start..start + len])
}

/// `scheme://user:password@host` → the URI with the password elided, when a password is present.
fn uri_with_password(word: &str) -> Option<String> {
    let scheme_end = word.find("://")?;
    let rest = &word[scheme_end + 3..];
    let authority = rest.split('/').next().unwrap_or(rest);
    let at = authority.rfind('@')?;
    let userinfo = &authority[..at];
    let (user, password) = userinfo.split_once(':')?;
    if password.is_empty() {
        return None;
    }
    Some(format!("{}://{user}:***@…", &word[..scheme_end]))
}

// ---------------------------------------------------------------- secret names and values

/// Whether a key or variable name is for a secret value (`MYSQL_ROOT_PASSWORD`,
/// `app-password`, `api_token`), and not a setting about one (`POSTGRES_PASSWORD_FILE`,
/// `password_encryption`, `MYSQL_RANDOM_ROOT_PASSWORD`).
pub(crate) fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace(['-', '.'], "_");
    const SECRET: [&str; 9] = [
        "password",
        "passwd",
        "pwd",
        "secret",
        "token",
        "api_key",
        "apikey",
        "private_key",
        "credential",
    ];
    const ABOUT_A_SECRET: [&str; 17] = [
        "_file",
        "file_",
        "_path",
        "_dir",
        "encryption",
        "random",
        "allow_empty",
        "secret_name",
        "secretname",
        "secret_ref",
        "validate_password",
        "lifetime",
        "history",
        "reuse",
        "require",
        "expire",
        "length",
    ];
    SECRET.iter().any(|s| n.contains(s)) && !ABOUT_A_SECRET.iter().any(|s| n.contains(s))
}

const PLACEHOLDERS: [&str; 7] = [
    "changeme",
    "change-me",
    "change_me",
    "changeit",
    "replaceme",
    "replace-me",
    "replace_me",
];

const WELL_KNOWN: [&str; 23] = [
    "example",
    "password",
    "passw0rd",
    "p@ssw0rd",
    "p@ssword",
    "admin",
    "root",
    "toor",
    "secret",
    "123456",
    "1234567",
    "12345678",
    "123456789",
    "1234567890",
    "qwerty",
    "letmein",
    "test",
    "default",
    "mysql",
    "postgres",
    "mariadb",
    "pass",
    "welcome",
];

/// Why a value is a placeholder or well-known password, if it is. Placeholders count under
/// any key; dictionary passwords only under secret-named keys (a user called `admin` is fine).
fn weakness(key: &str, value: &str) -> Option<String> {
    let lower = value.to_ascii_lowercase();
    if let Some(p) = PLACEHOLDERS.iter().find(|p| lower.contains(*p)) {
        return Some(format!("\"{value}\" is a placeholder (contains \"{p}\")"));
    }
    if lower.starts_with('<') && lower.ends_with('>') || lower.starts_with("${") {
        return Some(format!("\"{value}\" is an unfilled template placeholder"));
    }
    if !is_secret_name(key) {
        return None;
    }
    if value.is_empty() {
        return Some("the password is empty".into());
    }
    if WELL_KNOWN.contains(&lower.as_str()) {
        return Some(format!(
            "\"{value}\" is one of the first passwords anyone tries"
        ));
    }
    None
}

/// Why a password looks typed by a person rather than generated, if it does.
fn hand_chosen(value: &str) -> Option<String> {
    let length = value.chars().count();
    if length < 16 {
        return Some(format!(
            "{length} characters; a generated password has at least 16"
        ));
    }
    let classes = [
        value.chars().any(|c| c.is_ascii_lowercase()),
        value.chars().any(|c| c.is_ascii_uppercase()),
        value.chars().any(|c| c.is_ascii_digit()),
        value.chars().any(|c| !c.is_ascii_alphanumeric()),
    ]
    .iter()
    .filter(|b| **b)
    .count();
    if classes < 2 {
        return Some("a single kind of character".into());
    }
    None
}

fn check_secret(object: &Object, out: &mut Vec<Finding>) {
    let kind = object
        .node
        .get("type")
        .and_then(Node::as_str)
        .unwrap_or("Opaque");
    // Tokens the cluster fills in and registry credentials are not database passwords.
    if kind == "kubernetes.io/service-account-token" {
        return;
    }
    let mut values: Vec<(&str, usize, String)> = Vec::new();
    if let Some(data) = object.node.get("stringData") {
        for e in data.entries() {
            values.push((&e.key, e.key_line, e.value.text().unwrap_or_default()));
        }
    }
    if let Some(data) = object.node.get("data") {
        for e in data.entries() {
            let encoded = e.value.text().unwrap_or_default();
            // Undecodable data is the API server's to refuse; nothing to judge here.
            let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
                continue;
            };
            let Ok(text) = String::from_utf8(bytes) else {
                continue;
            };
            values.push((&e.key, e.key_line, text));
        }
    }
    for (key, line, value) in values {
        if let Some(why) = weakness(key, &value) {
            out.push(WEAK_SECRET_VALUE.at(object, line, format!("key \"{key}\": {why}")));
        } else if is_secret_name(key)
            && let Some(why) = hand_chosen(&value)
        {
            out.push(HAND_CHOSEN_SECRET_VALUE.at(
                object,
                line,
                format!("key \"{key}\" looks hand-chosen: {why}"),
            ));
        }
    }
}

// ---------------------------------------------------------------- ConfigMaps and env

fn is_falsy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "" | "no" | "false" | "0" | "off"
    )
}

fn is_switch(value: &str) -> bool {
    !is_falsy(value)
        && matches!(
            value.trim().to_ascii_lowercase().as_str(),
            "yes" | "true" | "1" | "on"
        )
}

/// Why an environment-style setting turns authentication off, if it does.
fn disables_authentication(name: &str, value: &str) -> Option<String> {
    let upper = name.to_ascii_uppercase();
    if upper == "POSTGRES_HOST_AUTH_METHOD" && value.trim().eq_ignore_ascii_case("trust") {
        return Some("POSTGRES_HOST_AUTH_METHOD=trust lets anyone connect as any user".into());
    }
    if upper.contains("ALLOW_EMPTY") && upper.contains("PASSWORD") && !is_falsy(value) {
        return Some(format!(
            "{name}={value} creates accounts without a password"
        ));
    }
    None
}

/// A `password = value` line in a config file held in a ConfigMap value, if any: the key is a
/// bare password key (`password`, `passwd`, `*_password`), the value not a switch.
fn password_line(text: &str) -> Option<(usize, String)> {
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once(['=', ':']) else {
            continue;
        };
        let key = key.trim().to_ascii_lowercase().replace('-', "_");
        let value = value.trim().trim_matches(|c| c == '"' || c == '\'');
        let bare = matches!(key.as_str(), "password" | "passwd" | "pwd" | "pass")
            || key.ends_with("_password")
            || key.ends_with(".password");
        if bare
            && is_secret_name(&key)
            && !value.is_empty()
            && !is_switch(value)
            && !is_falsy(value)
        {
            return Some((i, key));
        }
        if let Some(uri) = shell_words(value).find_map(uri_with_password) {
            return Some((i, format!("{key} (URI {uri})")));
        }
        if value.contains("password=") && !value.contains("password=$") {
            return Some((i, format!("{key} (connection string with password=)")));
        }
    }
    None
}

fn check_config_map(object: &Object, out: &mut Vec<Finding>) {
    let Some(data) = object.node.get("data") else {
        return;
    };
    for e in data.entries() {
        let value = e.value.text().unwrap_or_default();
        if let Some(why) = disables_authentication(&e.key, &value) {
            out.push(AUTHENTICATION_DISABLED.at(object, e.key_line, why));
            continue;
        }
        if is_secret_name(&e.key) && !value.trim().is_empty() && !value.starts_with('/') {
            out.push(SECRET_IN_CONFIG_MAP.at(
                object,
                e.key_line,
                format!("key \"{}\" holds a secret in a ConfigMap", e.key),
            ));
        } else if let Some((offset, what)) = password_line(&value) {
            // In a `|` block the value's node starts at its first line of text.
            let line = if value.contains('\n') {
                (e.value.line + offset).min(e.value.end_line.max(e.value.line))
            } else {
                e.key_line
            };
            out.push(SECRET_IN_CONFIG_MAP.at(
                object,
                line,
                format!("key \"{}\" sets {what}", e.key),
            ));
        }
    }
}

fn check_env(object: &Object, container: &Node, who: &str, out: &mut Vec<Finding>) {
    let Some(env) = container.get("env") else {
        return;
    };
    for var in env.items() {
        let Some(name) = var.get("name").and_then(Node::text) else {
            continue;
        };
        let Some(value) = var.get("value").and_then(Node::text) else {
            continue;
        };
        let line = var.line_of("value");
        if let Some(why) = disables_authentication(&name, &value) {
            out.push(AUTHENTICATION_DISABLED.at(object, line, format!("{who}: {why}")));
            continue;
        }
        let reference_only = value.starts_with("$(") && value.ends_with(')');
        if is_secret_name(&name) && !value.is_empty() && !reference_only && !value.starts_with('/')
        {
            out.push(SECRET_IN_ENV_VALUE.at(
                object,
                line,
                format!("{who}: env {name} is a literal value"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_support::{lines_of, lint};

    fn pod(container: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: p}}\nspec:\n  containers:\n{container}"
        )
    }

    #[test]
    fn mysql_password_on_probe_command_is_found_at_its_line() {
        let yaml = pod(
            "  - name: db\n    image: mysql:8.0\n    readinessProbe:\n      exec:\n        command: [\"sh\",\"-c\",\"mysqladmin ping -uroot -p$MYSQL_ROOT_PASSWORD\"]\n",
        );
        assert_eq!(lines_of(&lint(&yaml), SECRET_ON_COMMAND_LINE.id), vec![10]);
    }

    #[test]
    fn postgres_port_flag_and_password_from_environment_are_not_leaks() {
        let yaml = pod(
            "  - name: db\n    image: postgres:15\n    readinessProbe:\n      exec:\n        command: [\"sh\",\"-c\",\"PGPASSWORD=\\\"$POSTGRES_PASSWORD\\\" pg_isready -h 127.0.0.1 -p 5432 -p$PGPORT\"]\n",
        );
        assert_eq!(
            lines_of(&lint(&yaml), SECRET_ON_COMMAND_LINE.id),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn other_command_line_leaks_are_found() {
        for (line, why) in [
            ("psql postgres://app:hunter2@db/app", "URI"),
            ("PGPASSWORD=hunter2 psql -h db", "PGPASSWORD"),
            ("mysqldump --password=hunter2 app", "--password="),
            ("mysql -uroot -phunter2", "-p"),
        ] {
            assert!(command_line_leak(line, false).is_some(), "{why}");
        }
        assert!(command_line_leak("mysql -uroot -p", true).is_none());
        assert!(command_line_leak("cp -pR /a /b; mysqld --user=mysql", false).is_none());
        assert!(command_line_leak("cp -pR /a /b && mysql -p\"$P\" -e 'select 1'", false).is_some());
        assert!(command_line_leak("psql 'host=db password=hunter2'", false).is_some());
        assert!(
            command_line_leak("jdbc:postgresql://db/app?user=a&password=hunter2", false).is_some()
        );
        assert!(command_line_leak("psql \"password=$PGPASS host=db\"", false).is_none());
        assert!(command_line_leak("pg_isready -p5432", false).is_none());
        let yaml = pod(
            "  - name: x\n    image: busybox:1.36\n    args:\n    - --user=app\n    - --pw=$(DB_PASSWORD)\n",
        );
        assert_eq!(lines_of(&lint(&yaml), SECRET_ON_COMMAND_LINE.id), vec![10]);
    }

    #[test]
    fn a_leak_in_a_block_script_points_at_its_own_line_and_hides_literals() {
        let yaml = pod(
            "  - name: db\n    image: mariadb:11\n    livenessProbe:\n      exec:\n        command:\n        - /bin/bash\n        - -ec\n        - |\n          p=\"$(cat /secret)\"\n          mysqladmin status \\\n            -uroot -p\"${p}\"\n",
        );
        let findings = lint(&yaml);
        assert_eq!(lines_of(&findings, SECRET_ON_COMMAND_LINE.id), vec![16]);
        let literal = pod(
            "  - name: db\n    image: mariadb:11\n    command: [mysqldump, --password=hunter2]\n",
        );
        let findings = lint(&literal);
        assert_eq!(lines_of(&findings, SECRET_ON_COMMAND_LINE.id), vec![8]);
        assert!(
            findings.iter().all(|f| !f.message.contains("hunter2")),
            "{findings:?}"
        );
    }

    #[test]
    fn placeholder_and_dictionary_secrets_are_errors_at_the_key_line() {
        let yaml = "kind: Secret\nmetadata: {name: s}\nstringData:\n  username: admin\n  MYSQL_ROOT_PASSWORD: \"changeme-root\"\n  app-password: password\ndata:\n  other-password: MTIzNDU2\n";
        let findings = lint(yaml);
        assert_eq!(lines_of(&findings, WEAK_SECRET_VALUE.id), vec![5, 6, 8]);
        assert_eq!(findings[0].object, "Secret/s");
    }

    #[test]
    fn generated_secret_values_are_not_flagged() {
        let yaml = "kind: Secret\nmetadata: {name: s}\nstringData:\n  superuser-password: \"q7Rk2mXv9LpT4wZs8NbY3cHd\"\n  username: app\ndata:\n  api-token: cTdSazJtWHY5THBUNHdaczhOYlkzY0hk\n";
        assert_eq!(lint(yaml), vec![]);
    }

    #[test]
    fn short_typed_passwords_are_warnings() {
        let yaml = "kind: Secret\nmetadata: {name: s}\nstringData:\n  db-password: Winter2024\n  other-password: aaaaaaaaaaaaaaaaaaaaaaaa\n";
        assert_eq!(
            lines_of(&lint(yaml), HAND_CHOSEN_SECRET_VALUE.id),
            vec![4, 5]
        );
    }

    #[test]
    fn secrets_in_config_maps_are_found_by_key_and_in_config_files() {
        let yaml = "kind: ConfigMap\nmetadata: {name: c}\ndata:\n  MYSQL_USER: app\n  MYSQL_PASSWORD: x9\n  POSTGRES_PASSWORD_FILE: /run/secrets/pw\n  password_encryption: scram-sha-256\n  my.cnf: |\n    [client]\n    password=hunter2\n  ok.cnf: |\n    [mysqld]\n    disconnect_on_expired_password = ON\n";
        let findings = lint(yaml);
        assert_eq!(lines_of(&findings, SECRET_IN_CONFIG_MAP.id), vec![5, 10]);
        assert!(
            findings[1].message.contains("my.cnf"),
            "{}",
            findings[1].message
        );
    }

    #[test]
    fn literal_password_env_values_are_errors_but_files_and_references_are_not() {
        let yaml = pod(
            "  - name: db\n    image: postgres:15\n    env:\n    - {name: POSTGRES_PASSWORD, value: hunter2hunter2}\n    - {name: POSTGRES_PASSWORD_FILE, value: /run/secrets/pw}\n    - {name: MYSQL_RANDOM_ROOT_PASSWORD, value: \"yes\"}\n    - name: PGPASSWORD\n      valueFrom: {secretKeyRef: {name: s, key: k}}\n",
        );
        assert_eq!(lines_of(&lint(&yaml), SECRET_IN_ENV_VALUE.id), vec![9]);
    }

    #[test]
    fn trust_and_empty_passwords_disable_authentication() {
        let yaml = pod(
            "  - name: db\n    image: postgres:15\n    env:\n    - {name: POSTGRES_HOST_AUTH_METHOD, value: trust}\n    - {name: MYSQL_ALLOW_EMPTY_PASSWORD, value: \"yes\"}\n    - {name: MARIADB_ALLOW_EMPTY_ROOT_PASSWORD, value: \"no\"}\n",
        );
        assert_eq!(
            lines_of(&lint(&yaml), AUTHENTICATION_DISABLED.id),
            vec![9, 10]
        );
        let cm = "kind: ConfigMap\nmetadata: {name: c}\ndata:\n  POSTGRES_HOST_AUTH_METHOD: scram-sha-256\n";
        assert_eq!(lint(cm), vec![]);
    }
}
