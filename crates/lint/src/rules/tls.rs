//! Database servers that serve without TLS: every byte, passwords included, crosses the pod
//! network in clear (issue 13: TLS by default).
//!
//! A server counts as serving TLS when its container's command or args switch it on (`-c
//! ssl=on`; `--require-secure-transport=ON`), when a ConfigMap of its namespace sets it
//! (`ssl = on` in a postgresql.conf; `require_secure_transport = ON` in a my.cnf), or when it is
//! run by Stator's instance manager with the certificate Secret mounted (which then configures
//! both).

use crate::finding::{Finding, Rule, Severity};
use crate::node::Node;
use crate::object::{Container, Manifests, Object, image_repository};

pub const POSTGRES_WITHOUT_SSL: Rule = Rule {
    id: "STATOR-TLS-001",
    name: "postgres-without-ssl",
    severity: Severity::Warning,
    summary: "A PostgreSQL server runs without `ssl = on`: clients, replication and passwords cross the pod network in plaintext.",
    rationale: "Issue 13: TLS by default, as CloudNativePG and the Zalando operator do; the guide never mentions it.",
    fix: "set `ssl = on` (args `-c ssl=on`, or postgresql.conf in a ConfigMap) with a certificate from a Secret, and only `hostssl` lines in pg_hba.conf",
};

pub const MYSQL_WITHOUT_SECURE_TRANSPORT: Rule = Rule {
    id: "STATOR-TLS-002",
    name: "mysql-without-require-secure-transport",
    severity: Severity::Warning,
    summary: "A MariaDB/MySQL server runs without `require_secure_transport = ON`: it accepts plaintext connections, passwords included.",
    rationale: "Issue 13: TLS by default, as mariadb-operator does; the guide never mentions it.",
    fix: "set `require_secure_transport = ON` (args `--require-secure-transport=ON`, or my.cnf in a ConfigMap) with ssl_cert/ssl_key from a Secret",
};

pub const RULES: &[&Rule] = &[&POSTGRES_WITHOUT_SSL, &MYSQL_WITHOUT_SECURE_TRANSPORT];

/// Where Stator's rendered pods mount the certificate Secret (`stator_kube::render::TLS_DIR`).
const STATOR_TLS_DIR: &str = "/etc/stator/tls";

/// Lower case, without spaces, quotes or the `-`/`_` difference of option names.
fn normalized(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_whitespace() && *c != '\'' && *c != '"')
        .map(|c| {
            if c == '-' {
                '_'
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// Whether one of `lines` sets `setting` to an on value.
fn sets_on(lines: &[String], setting: &str) -> bool {
    lines.iter().any(|line| {
        let line = normalized(line);
        ["on", "1", "true"]
            .iter()
            .any(|on| line.contains(&format!("{setting}={on}")))
    })
}

fn strings(node: Option<&Node>) -> Vec<String> {
    node.map(Node::items)
        .unwrap_or(&[])
        .iter()
        .filter_map(Node::text)
        .collect()
}

/// The command and args of a container: `-c` and `ssl=on` joined, so both spellings match.
fn command_lines(container: &Container) -> Vec<String> {
    let mut words = strings(container.node.get("command"));
    words.extend(strings(container.node.get("args")));
    let mut lines = words.clone();
    lines.push(words.join(""));
    lines
}

/// The lines of every ConfigMap value in `object`'s namespace.
fn config_map_lines(manifests: &Manifests, object: &Object) -> Vec<String> {
    manifests
        .of_kind("ConfigMap")
        .filter(|cm| cm.shares_namespace_with(object))
        .filter_map(|cm| cm.node.get("data"))
        .flat_map(|data| data.entries().iter().filter_map(|e| e.value.text()))
        .flat_map(|text| text.lines().map(str::to_string).collect::<Vec<_>>())
        .collect()
}

/// Run by `stator instance` with the certificate Secret mounted: the manager configures TLS.
fn stator_managed_with_tls(container: &Container) -> bool {
    let words = strings(container.node.get("command"));
    let runs_instance =
        words.iter().any(|w| w.ends_with("stator")) && words.iter().any(|w| w == "instance");
    let mounts_tls = container
        .node
        .get("volumeMounts")
        .map(Node::items)
        .unwrap_or(&[])
        .iter()
        .any(|m| m.get("mountPath").and_then(Node::as_str) == Some(STATOR_TLS_DIR));
    runs_instance && mounts_tls
}

pub fn check(manifests: &Manifests, out: &mut Vec<Finding>) {
    for workload in manifests.databases() {
        for container in workload.database_containers() {
            let Some(image) = container.image() else {
                continue;
            };
            let repository = image_repository(image);
            let base = repository.rsplit('/').next().unwrap_or(repository);
            let (rule, setting, what) = if ["postgres", "postgis", "timescaledb", "pgvector"]
                .iter()
                .any(|p| base.starts_with(p))
            {
                (&POSTGRES_WITHOUT_SSL, "ssl", "ssl = on")
            } else if ["mysql", "mariadb", "percona"]
                .iter()
                .any(|p| base.starts_with(p))
            {
                (
                    &MYSQL_WITHOUT_SECURE_TRANSPORT,
                    "require_secure_transport",
                    "require_secure_transport = ON",
                )
            } else {
                continue;
            };
            if stator_managed_with_tls(&container)
                || sets_on(&command_lines(&container), setting)
                || sets_on(&config_map_lines(manifests, workload.object), setting)
            {
                continue;
            }
            out.push(rule.at(
                workload.object,
                container.line(),
                format!(
                    "{}: no `{what}` in its args or a ConfigMap of its namespace; it serves in plaintext",
                    container.describe()
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_support::{GOOD_DATABASE, lines_of, lint};

    #[test]
    fn postgres_needs_ssl_on_in_args_or_a_config_map() {
        assert_eq!(
            lines_of(&lint(GOOD_DATABASE), POSTGRES_WITHOUT_SSL.id),
            Vec::<usize>::new()
        );
        let plain = GOOD_DATABASE.replace(
            "        args: [-c, ssl=on]\n",
            "        args: [-c, ssl=off]\n",
        );
        assert_eq!(lines_of(&lint(&plain), POSTGRES_WITHOUT_SSL.id), vec![27]);
        let by_config_map = format!(
            "{plain}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: pg, namespace: prod}}\ndata:\n  postgresql.conf: |\n    ssl = 'on'\n"
        );
        assert_eq!(
            lines_of(&lint(&by_config_map), POSTGRES_WITHOUT_SSL.id),
            Vec::<usize>::new()
        );
    }

    #[test]
    fn mariadb_needs_require_secure_transport() {
        let maria = GOOD_DATABASE
            .replace("image: postgres:15", "image: mariadb:10.11")
            .replace(
                "args: [-c, ssl=on]",
                "args: [--require-secure-transport=ON]",
            );
        assert_eq!(
            lines_of(&lint(&maria), MYSQL_WITHOUT_SECURE_TRANSPORT.id),
            Vec::<usize>::new()
        );
        let plain = maria.replace("args: [--require-secure-transport=ON]", "args: []");
        assert_eq!(
            lines_of(&lint(&plain), MYSQL_WITHOUT_SECURE_TRANSPORT.id),
            vec![27]
        );
        let by_cnf = format!(
            "{plain}---\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: my, namespace: prod}}\ndata:\n  my.cnf: |\n    [mysqld]\n    require_secure_transport = ON\n"
        );
        assert_eq!(
            lines_of(&lint(&by_cnf), MYSQL_WITHOUT_SECURE_TRANSPORT.id),
            Vec::<usize>::new()
        );
    }
}
