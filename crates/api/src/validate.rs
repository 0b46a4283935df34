//! Semantic validation of a parsed `Database`: every problem at once, each naming its field path
//! and what would be valid. Structural problems (unknown fields, wrong types) are found by
//! [`crate::load`]; this module sees a well-typed value.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::duration::parse_duration;
use crate::names::{
    MAX_NAME_LEN, dns1035_label_problem, dns1123_label_problem, sql_identifier_problem,
};
use crate::parameters::{log_rule_violation, managed_keys, managed_reason, normalize_key};
use crate::quantity::Quantity;
use crate::schedule::cron_problem;
use crate::spec::{AntiAffinity, BackupSpec, Database, Engine, S3Repository};

/// One problem with a spec, at a field path such as `spec.storage.size`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// The outcome of validation: errors make the spec unusable, warnings are worth a look.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub errors: Vec<FieldError>,
    pub warnings: Vec<FieldError>,
}

impl Report {
    pub fn is_valid(&self) -> bool {
        self.errors.is_empty()
    }

    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(FieldError::new(path, message));
    }

    fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.warnings.push(FieldError::new(path, message));
    }
}

/// Detection timeouts outside this range are refused.
pub const DETECTION_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(300));

/// `backup.archiveTimeout` outside this range is refused: below 1 s the server would archive
/// near-empty segments all the time; above 1 h the archive-only RPO is no longer a bound anyone
/// wants.
pub const ARCHIVE_TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(3600));

/// `backup.parallel` outside this range is refused.
pub const BACKUP_PARALLEL_RANGE: (u32, u32) = (1, 32);

/// Users Stator creates itself; the application owner may not take these names.
pub const RESERVED_USERS: &[&str] = &[
    "postgres",
    "root",
    "mysql",
    "mariadb.sys",
    "stator_replication",
    "stator_monitor",
    "pg_monitor",
    "public",
];

/// The smallest memory limit a database server is given.
const MIN_MEMORY: u64 = 256 << 20;

/// Validates everything about `db` that its types cannot express.
pub fn validate(db: &Database) -> Report {
    let mut r = Report::default();
    validate_metadata(db, &mut r);
    validate_engine(db, &mut r);
    validate_storage_and_resources(db, &mut r);
    validate_parameters(db, &mut r);
    validate_bootstrap(db, &mut r);
    validate_availability(db, &mut r);
    validate_network(db, &mut r);
    validate_local(db, &mut r);
    validate_backup(db, &mut r);
    validate_tls(db, &mut r);
    r
}

fn validate_tls(db: &Database, r: &mut Report) {
    let tls = &db.spec.tls;
    if !tls.enabled {
        r.warn(
            "spec.tls.enabled",
            "is false: clients, replication and the instance managers' bearer token travel in plaintext, and plaintext TCP is accepted; remove it to turn TLS on",
        );
    }
    let Some(issuer) = &tls.issuer_ref else {
        return;
    };
    if !tls.enabled {
        r.error(
            "spec.tls.issuerRef",
            "is set while spec.tls.enabled is false: no certificate is used without TLS; remove one of the two",
        );
    }
    if let Some(problem) = crate::names::dns1123_subdomain_problem(&issuer.name) {
        r.error(
            "spec.tls.issuerRef.name",
            format!(
                "{:?} {problem} (the name of a cert-manager Issuer or ClusterIssuer, e.g. ca-issuer)",
                issuer.name
            ),
        );
    }
    if let Some(problem) = crate::names::dns1123_subdomain_problem(&issuer.group) {
        r.error(
            "spec.tls.issuerRef.group",
            format!(
                "{:?} {problem} (an API group such as {})",
                issuer.group,
                crate::spec::CERT_MANAGER_GROUP
            ),
        );
    }
}

fn validate_metadata(db: &Database, r: &mut Report) {
    let spec = &db.spec;
    match db.metadata.name.as_deref() {
        None => r.error(
            "metadata.name",
            "is required (a lowercase DNS label, e.g. shop-db)",
        ),
        Some(name) => {
            if let Some(problem) = dns1035_label_problem(name) {
                r.error(
                    "metadata.name",
                    format!("{name:?} {problem} (e.g. shop-db)"),
                );
            } else if name.len() > MAX_NAME_LEN {
                r.error(
                    "metadata.name",
                    format!(
                        "{name:?} is {} characters long; at most {MAX_NAME_LEN} fit, because pods are \
                         labelled NAME-<revision hash> and labels hold 63 characters",
                        name.len()
                    ),
                );
            } else {
                let longest = db.instance_name(spec.instances.saturating_sub(1));
                if longest.len() > 63 {
                    r.error(
                        "metadata.name",
                        format!("instance name {longest:?} would exceed 63 characters"),
                    );
                }
            }
        }
    }
    if let Some(ns) = db.metadata.namespace.as_deref()
        && let Some(problem) = dns1123_label_problem(ns)
    {
        r.error("metadata.namespace", format!("{ns:?} {problem}"));
    }
}

fn validate_engine(db: &Database, r: &mut Report) {
    let spec = &db.spec;
    if let Some(v) = &spec.version
        && !spec.engine.supported_versions().contains(&v.as_str())
    {
        r.error(
            "spec.version",
            format!(
                "{v:?} is not a supported {} version (one of: {})",
                spec.engine,
                spec.engine.supported_versions().join(", ")
            ),
        );
    }
    if let Some(image) = &spec.image
        && let Some(problem) = image_problem(image)
    {
        r.error("spec.image", format!("{image:?} {problem}"));
    }
    if !(1..=16).contains(&spec.instances) {
        r.error(
            "spec.instances",
            format!("{} is out of range (1 to 16)", spec.instances),
        );
    }
}

/// Why an image reference is unacceptable: it must name an explicit tag or digest, not `latest`.
pub fn image_problem(image: &str) -> Option<&'static str> {
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("is not an image reference (e.g. postgres:15.8)");
    }
    if image.contains("@sha256:") {
        return None;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        None => Some("has no tag; name one explicitly (e.g. postgres:15.8), never rely on latest"),
        Some((_, "")) => Some("has an empty tag (e.g. postgres:15.8)"),
        Some((_, "latest")) => {
            Some("uses the latest tag, which changes under you; pin a version (e.g. postgres:15.8)")
        }
        Some(_) => None,
    }
}

fn quantity(r: &mut Report, path: &str, text: &str, example: &str) -> Option<Quantity> {
    match Quantity::parse(text) {
        Some(q) if q.0 > 0.0 => Some(q),
        Some(_) => {
            r.error(
                path,
                format!("{text:?} must be greater than zero (e.g. {example})"),
            );
            None
        }
        None => {
            r.error(path, format!("{text:?} is not a quantity (e.g. {example})"));
            None
        }
    }
}

fn validate_storage_and_resources(db: &Database, r: &mut Report) {
    let spec = &db.spec;
    quantity(r, "spec.storage.size", &spec.storage.size, "10Gi");
    if let Some(class) = &spec.storage.storage_class_name
        && let Some(problem) = dns1123_subdomain_problem(class)
    {
        r.error(
            "spec.storage.storageClassName",
            format!("{class:?} {problem}"),
        );
    }
    let res = &spec.resources;
    let req_cpu = quantity(r, "spec.resources.requests.cpu", &res.requests.cpu, "250m");
    let lim_cpu = quantity(r, "spec.resources.limits.cpu", &res.limits.cpu, "1");
    let req_mem = quantity(
        r,
        "spec.resources.requests.memory",
        &res.requests.memory,
        "512Mi",
    );
    let lim_mem = quantity(r, "spec.resources.limits.memory", &res.limits.memory, "1Gi");
    if let (Some(req), Some(lim)) = (req_cpu, lim_cpu)
        && req.0 > lim.0
    {
        r.error(
            "spec.resources.requests.cpu",
            format!(
                "{:?} is more than the limit {:?}; a request may not exceed its limit",
                res.requests.cpu, res.limits.cpu
            ),
        );
    }
    if let (Some(req), Some(lim)) = (req_mem, lim_mem)
        && req.0 > lim.0
    {
        r.error(
            "spec.resources.requests.memory",
            format!(
                "{:?} is more than the limit {:?}; a request may not exceed its limit",
                res.requests.memory, res.limits.memory
            ),
        );
    }
    if let Some(lim) = lim_mem
        && lim.bytes() < MIN_MEMORY
    {
        r.error(
            "spec.resources.limits.memory",
            format!(
                "{:?} is too small for a {} server (at least 256Mi)",
                res.limits.memory, spec.engine
            ),
        );
    }
}

fn validate_parameters(db: &Database, r: &mut Report) {
    let engine = db.spec.engine;
    for (key, value) in &db.spec.config.parameters {
        let path = format!("spec.config.parameters.{key}");
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            r.error(
                path,
                "is not a parameter name (letters, digits, '_', '-' and '.' only)",
            );
            continue;
        }
        if let Some(why) = managed_reason(engine, key) {
            r.error(
                path,
                format!(
                    "is managed by Stator and cannot be set: {why} (Stator sets: {})",
                    managed_keys(engine)
                        .iter()
                        .map(|m| m.key)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            continue;
        }
        if value.0.chars().any(|c| c.is_control()) {
            r.error(path, "must be one line without control characters");
            continue;
        }
        if let Some(rule) = log_rule_violation(engine, key, &value.0) {
            r.error(
                path,
                format!(
                    "{:?} is refused: only {} keeps statement text out of the server log ({}); \
                     Stator keeps literals (passwords, personal data) out of its logs",
                    value.0, rule.valid, rule.why
                ),
            );
            continue;
        }
        if engine == Engine::Postgres && normalize_key(engine, key) == "max_wal_senders" {
            let needed = db.spec.instances + 1;
            match value.0.trim().parse::<u32>() {
                Ok(n) if n >= needed => {}
                _ => r.error(
                    path,
                    format!(
                        "{:?} leaves too few WAL senders: each of the {} replica(s) streams from \
                         one, and cloning or rewinding an instance takes one more; use at least \
                         {needed}",
                        value.0,
                        db.spec.instances.saturating_sub(1)
                    ),
                ),
            }
        }
    }
}

fn validate_bootstrap(db: &Database, r: &mut Report) {
    let b = &db.spec.bootstrap;
    if let Some(problem) = sql_identifier_problem(&b.database) {
        r.error(
            "spec.bootstrap.database",
            format!("{:?} {problem}", b.database),
        );
    }
    if let Some(problem) = sql_identifier_problem(&b.owner) {
        r.error("spec.bootstrap.owner", format!("{:?} {problem}", b.owner));
    } else if RESERVED_USERS.contains(&b.owner.as_str()) {
        r.error(
            "spec.bootstrap.owner",
            format!(
                "{:?} is reserved for the server or Stator itself; pick an application user name (e.g. app)",
                b.owner
            ),
        );
    }
    if let Some(secret) = &b.secret_name
        && let Some(problem) = dns1123_subdomain_problem(secret)
    {
        r.error("spec.bootstrap.secretName", format!("{secret:?} {problem}"));
    }
    if let Some(from) = &b.restore_from {
        validate_restore_from(db, from, r);
    }
}

fn validate_restore_from(db: &Database, from: &crate::spec::RestoreFromSpec, r: &mut Report) {
    if let Some(problem) = crate::names::dns1123_label_problem(&from.database) {
        r.error(
            "spec.bootstrap.restoreFrom.database",
            format!("{:?} {problem}", from.database),
        );
    } else if from.database == db.name() {
        r.error(
            "spec.bootstrap.restoreFrom.database",
            format!(
                "{:?} is this database itself; restore into a new database (another metadata.name)",
                from.database
            ),
        );
    }
    if !matches!(
        db.spec.engine,
        crate::Engine::Postgres | crate::Engine::Mariadb
    ) {
        r.error(
            "spec.bootstrap.restoreFrom",
            format!(
                "{} cannot be restored from a backup yet (PostgreSQL and MariaDB only)",
                db.spec.engine
            ),
        );
    }
    if db
        .spec
        .backup
        .as_ref()
        .is_none_or(|b| b.repository.local.is_none() && b.repository.s3.is_none())
    {
        r.error(
            "spec.bootstrap.restoreFrom",
            "needs spec.backup.repository (local or s3): the repository that holds the backups of the database restored from",
        );
    }
    let targets = [&from.target_time, &from.target_lsn, &from.target_gtid];
    if targets.iter().filter(|t| t.is_some()).count() > 1 {
        r.error(
            "spec.bootstrap.restoreFrom",
            "gives more than one of targetTime, targetLsn and targetGtid; give at most one",
        );
    }
    if let Some(gtid) = &from.target_gtid
        && gtid
            .parse::<crate::position::MariadbGtidPosition>()
            .map_or(true, |p| p.gtids().count() != 1)
    {
        r.error(
            "spec.bootstrap.restoreFrom.targetGtid",
            format!("{gtid:?} is not one GTID (e.g. 0-1000-42)"),
        );
    }
    if let Some(lsn) = &from.target_lsn
        && lsn.parse::<crate::position::Lsn>().is_err()
    {
        r.error(
            "spec.bootstrap.restoreFrom.targetLsn",
            format!("{lsn:?} is not an LSN (e.g. 0/3000060)"),
        );
    }
    if let Some(backup) = &from.backup
        && (backup.is_empty()
            || !backup
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'))
    {
        r.error(
            "spec.bootstrap.restoreFrom.backup",
            format!(
                "{backup:?} is not a backup label (e.g. 20261126-120000F, see `stator backup list`)"
            ),
        );
    }
}

fn validate_availability(db: &Database, r: &mut Report) {
    let spec = &db.spec;
    let n = spec.instances;
    if spec.replication.synchronous && n < 2 {
        r.error(
            "spec.replication.synchronous",
            "needs at least 2 instances: with one, no replica could ever confirm a write",
        );
    }
    match parse_duration(&spec.failover.detection_timeout) {
        None => r.error(
            "spec.failover.detectionTimeout",
            format!(
                "{:?} is not a duration (e.g. 2s, 1500ms, 1m)",
                spec.failover.detection_timeout
            ),
        ),
        Some(d) if d < DETECTION_TIMEOUT_RANGE.0 || d > DETECTION_TIMEOUT_RANGE.1 => r.error(
            "spec.failover.detectionTimeout",
            format!(
                "{:?} is out of range (1s to 5m)",
                spec.failover.detection_timeout
            ),
        ),
        Some(_) => {}
    }
    let d = &spec.disruption;
    match (d.max_unavailable, d.min_available) {
        (Some(_), Some(_)) => r.error(
            "spec.disruption",
            "set maxUnavailable or minAvailable, not both",
        ),
        (Some(0), None) => r.error(
            "spec.disruption.maxUnavailable",
            "0 blocks every drain forever; use 1 or more",
        ),
        (None, Some(min)) if min >= n => r.error(
            "spec.disruption.minAvailable",
            format!(
                "{min} with {n} instance(s) blocks every drain forever; use at most {}",
                n.saturating_sub(1)
            ),
        ),
        _ => {}
    }
    if n == 1 {
        r.warn(
            "spec.instances",
            "a 1-instance database is unavailable while its node is drained or its pod restarts; \
             use 2 or more instances for availability",
        );
    }
    if spec.failover.lease && n == 1 {
        r.warn(
            "spec.failover.lease",
            "with 1 instance no replica can confirm that the operator, not the primary, is gone: \
             an operator outage longer than spec.failover.detectionTimeout stops the primary",
        );
    }
    if spec.scheduling.anti_affinity == AntiAffinity::Required && n > 1 {
        r.warn(
            "spec.scheduling.antiAffinity",
            format!("required anti-affinity needs at least {n} schedulable nodes"),
        );
    }
    for (i, t) in spec.scheduling.topology_spread.iter().enumerate() {
        if t.max_skew < 1 {
            r.error(
                format!("spec.scheduling.topologySpread[{i}].maxSkew"),
                format!("{} must be 1 or more", t.max_skew),
            );
        }
        if let Some(problem) = label_key_problem(&t.topology_key) {
            r.error(
                format!("spec.scheduling.topologySpread[{i}].topologyKey"),
                format!(
                    "{:?} {problem} (e.g. topology.kubernetes.io/zone)",
                    t.topology_key
                ),
            );
        }
    }
    for key in spec.scheduling.node_selector.keys() {
        if let Some(problem) = label_key_problem(key) {
            r.error(
                format!("spec.scheduling.nodeSelector.{key}"),
                format!("{key:?} {problem}"),
            );
        }
    }
}

fn validate_network(db: &Database, r: &mut Report) {
    for (i, peer) in db.spec.network.allow_from.iter().enumerate() {
        let path = format!("spec.network.allowFrom[{i}]");
        if peer.pod_selector.is_none()
            && peer.namespace_selector.is_none()
            && peer.ip_block.is_none()
        {
            r.error(
                path.clone(),
                "names no peer; give podSelector, namespaceSelector or ipBlock",
            );
        }
        if let Some(block) = &peer.ip_block
            && !is_cidr(&block.cidr)
        {
            r.error(
                format!("{path}.ipBlock.cidr"),
                format!("{:?} is not a CIDR (e.g. 10.0.0.0/8)", block.cidr),
            );
        }
    }
}

fn validate_local(db: &Database, r: &mut Report) {
    let local = &db.spec.local;
    match local.listen_address.parse::<IpAddr>() {
        Err(_) => r.error(
            "spec.local.listenAddress",
            format!(
                "{:?} is not an IP address (e.g. 127.0.0.1)",
                local.listen_address
            ),
        ),
        Ok(ip) if !ip.is_loopback() => r.warn(
            "spec.local.listenAddress",
            format!("{ip} is reachable from other machines; the default 127.0.0.1 is not"),
        ),
        Ok(_) => {}
    }
    if let Some(base) = local.port_base
        && !(1024..=65535 - PORT_SPAN).contains(&base)
    {
        r.error(
            "spec.local.portBase",
            format!(
                "{base} is out of range (1024 to {}; the database uses {PORT_SPAN} ports from it)",
                65535 - PORT_SPAN
            ),
        );
    }
}

fn validate_backup(db: &Database, r: &mut Report) {
    let Some(backup) = &db.spec.backup else {
        return;
    };
    // MariaDB keeps its binary logs by default (no expiry); with the binlog archive an expiry
    // could drop a binary log before it is archived.
    if db.spec.engine == crate::Engine::Mariadb {
        for (key, value) in &db.spec.config.parameters {
            let normal = normalize_key(db.spec.engine, key);
            if matches!(
                normal.as_str(),
                "expire_logs_days" | "binlog_expire_logs_seconds"
            ) && value.0.trim().trim_matches('"').parse::<f64>() != Ok(0.0)
            {
                r.error(
                    format!("spec.config.parameters.{key}"),
                    "would let the server drop binary logs before they are archived (spec.backup archives them); remove it or set 0",
                );
            }
        }
    }
    let implemented = matches!(
        db.spec.engine,
        crate::Engine::Postgres | crate::Engine::Mariadb
    );
    if !implemented {
        r.warn(
            "spec.backup",
            "backups are implemented only for PostgreSQL and MariaDB (local or S3 repository) \
             under `stator up`: `stator up` refuses this spec (`stator render` renders an s3 \
             repository, and refuses a local one)",
        );
    }
    let BackupSpec {
        repository,
        schedule,
        retention,
        archive_timeout,
        compression: _,
        parallel,
        encryption,
    } = backup;
    match (&repository.local, &repository.s3) {
        (Some(_), Some(_)) => r.error(
            "spec.backup.repository",
            "gives both local and s3; give exactly one",
        ),
        (None, None) => r.error(
            "spec.backup.repository",
            "names no repository; give exactly one of local (e.g. {path: /srv/backups}) or s3 \
             (endpoint, bucket, region, credentialsSecretName)",
        ),
        _ => {}
    }
    if let Some(local) = &repository.local
        && let Some(problem) = repository_path_problem(&local.path)
    {
        r.error(
            "spec.backup.repository.local.path",
            format!("{:?} {problem} (e.g. /srv/backups)", local.path),
        );
    }
    if let Some(s3) = &repository.s3 {
        validate_s3(s3, r);
    }
    if let Some(problem) = cron_problem(schedule) {
        r.error("spec.backup.schedule", format!("{schedule:?}: {problem}"));
    }
    if retention.full < 1 {
        r.error(
            "spec.backup.retention.full",
            "0 would delete every backup; keep at least 1 (the default is 2)",
        );
    }
    let (low, high) = ARCHIVE_TIMEOUT_RANGE;
    match parse_duration(archive_timeout) {
        None => r.error(
            "spec.backup.archiveTimeout",
            format!("{archive_timeout:?} is not a duration (e.g. 60s, 5m)"),
        ),
        Some(d) if d < low || d > high => r.error(
            "spec.backup.archiveTimeout",
            format!("{archive_timeout:?} is out of range (1s to 1h)"),
        ),
        Some(d) if d.subsec_millis() != 0 => r.error(
            "spec.backup.archiveTimeout",
            format!(
                "{archive_timeout:?} is not a whole number of seconds, the server's resolution \
                 (e.g. 2s)"
            ),
        ),
        Some(_) => {}
    }
    let (low, high) = BACKUP_PARALLEL_RANGE;
    if !(low..=high).contains(parallel) {
        r.error(
            "spec.backup.parallel",
            format!("{parallel} is out of range ({low} to {high})"),
        );
    }
    if let Some(encryption) = encryption {
        if db.spec.engine.is_mysql_family() {
            r.error(
                "spec.backup.encryption",
                format!(
                    "is supported for postgres only for now (pgBackRest encrypts its \
                     repository); {} backups cannot be encrypted by Stator yet: remove it, or \
                     encrypt the bucket on the server side",
                    db.spec.engine
                ),
            );
        }
        if let Some(problem) = dns1123_subdomain_problem(&encryption.secret_name) {
            r.error(
                "spec.backup.encryption.secretName",
                format!("{:?} {problem}", encryption.secret_name),
            );
        }
    }
}

fn validate_s3(s3: &S3Repository, r: &mut Report) {
    if let Some(problem) = endpoint_problem(&s3.endpoint) {
        r.error(
            "spec.backup.repository.s3.endpoint",
            format!(
                "{:?} {problem} (expected host:port, e.g. s3.eu-west-1.amazonaws.com:443)",
                s3.endpoint
            ),
        );
    }
    if let Some(problem) = bucket_problem(&s3.bucket) {
        r.error(
            "spec.backup.repository.s3.bucket",
            format!("{:?} {problem}", s3.bucket),
        );
    }
    if s3.region.is_empty()
        || !s3
            .region
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        r.error(
            "spec.backup.repository.s3.region",
            format!(
                "{:?} is not a region (letters, digits and '-', e.g. eu-west-1; stores without \
                 regions accept us-east-1)",
                s3.region
            ),
        );
    }
    if let Some(problem) = repository_path_problem(&s3.path) {
        r.error(
            "spec.backup.repository.s3.path",
            format!("{:?} {problem} (e.g. /stator)", s3.path),
        );
    }
    for (field, name) in [
        ("caSecretName", s3.ca_secret_name.as_deref()),
        (
            "credentialsSecretName",
            Some(s3.credentials_secret_name.as_str()),
        ),
    ] {
        if let Some(name) = name
            && let Some(problem) = dns1123_subdomain_problem(name)
        {
            r.error(
                format!("spec.backup.repository.s3.{field}"),
                format!("{name:?} {problem}"),
            );
        }
    }
}

/// Why `path` cannot hold a repository: it must be absolute and plain.
fn repository_path_problem(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        Some("is not an absolute path")
    } else if path.chars().any(char::is_control) {
        Some("holds control characters")
    } else if path.split('/').any(|part| part == "..") {
        Some("climbs out with '..'; give the path itself")
    } else {
        None
    }
}

/// Why `endpoint` is not `host:port`.
fn endpoint_problem(endpoint: &str) -> Option<&'static str> {
    if endpoint.contains("://") {
        return Some("has a scheme; give host:port only (TLS is always used)");
    }
    if endpoint.contains('/') {
        return Some("has a path; put it in s3.path");
    }
    let (host, port) = if let Some(rest) = endpoint.strip_prefix('[') {
        // [IPv6]:port
        let Some((ip, port)) = rest.split_once("]:") else {
            return Some("has no port");
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Some("has an invalid IPv6 address");
        }
        ("ipv6", port)
    } else {
        match endpoint.rsplit_once(':') {
            None => return Some("has no port"),
            Some((host, port)) => (host, port),
        }
    };
    if host.is_empty() {
        return Some("has no host");
    }
    if host != "ipv6"
        && host.parse::<IpAddr>().is_err()
        && dns1123_subdomain_problem(host).is_some()
    {
        return Some("has a host that is neither a DNS name nor an IP address");
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => None,
        _ => Some("has a port that is not a number from 1 to 65535"),
    }
}

/// Why `bucket` breaks the S3 bucket naming rules.
fn bucket_problem(bucket: &str) -> Option<&'static str> {
    if !(3..=63).contains(&bucket.len()) {
        return Some("must be 3 to 63 characters (S3 bucket naming rules)");
    }
    if !bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
    {
        return Some(
            "may hold only lowercase letters, digits, '-' and '.' (S3 bucket naming rules)",
        );
    }
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !edge_ok(bucket.chars().next()) || !edge_ok(bucket.chars().last()) {
        return Some("must begin and end with a letter or digit (S3 bucket naming rules)");
    }
    if bucket.contains("..") {
        return Some("may not hold two dots in a row (S3 bucket naming rules)");
    }
    if bucket.parse::<std::net::Ipv4Addr>().is_ok() {
        return Some("may not look like an IP address (S3 bucket naming rules)");
    }
    None
}

/// How many ports from `local.portBase` a database may use.
pub const PORT_SPAN: u16 = 50;

/// The default `local.portBase` for an engine.
pub fn default_port_base(engine: Engine) -> u16 {
    match engine {
        Engine::Postgres => 15400,
        Engine::Mysql | Engine::Mariadb => 13300,
    }
}

fn dns1123_subdomain_problem(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 253 {
        return Some("must be 1 to 253 characters".into());
    }
    name.split('.').find_map(dns1123_label_problem)
}

fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && dns1123_subdomain_problem(p).is_some()
    {
        return Some("has an invalid prefix (a DNS subdomain)".into());
    }
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    (!ok).then(|| "is not a label key".into())
}

fn is_cidr(text: &str) -> bool {
    let Some((ip, bits)) = text.split_once('/') else {
        return false;
    };
    let Ok(ip) = ip.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    bits.parse::<u8>().is_ok_and(|b| b <= max)
}
