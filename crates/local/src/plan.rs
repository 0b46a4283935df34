//! Pure functions from a spec and the state dir's names to what should exist: each instance's
//! [`InstanceConfig`], the ports the database needs, and which spec changes can be applied.

use stator_api::Database;
use stator_api::instance::{Bootstrap, Endpoint, InstanceConfig, LocalPorts};

use crate::error::PortUse;
use crate::state::DatabaseDir;

/// Facts about this machine that go into every instance's config.
#[derive(Clone, Debug, Default)]
pub struct Host {
    pub server_user: Option<String>,
    pub bin_dir: Option<std::path::PathBuf>,
}

/// The config of instance `ordinal`. The recorded primary initialises a new cluster when its
/// data dir is empty; every other instance clones from the primary.
pub fn instance_config(
    db: &Database,
    dir: &DatabaseDir,
    ordinal: u32,
    primary: &str,
    host: &Host,
) -> InstanceConfig {
    let ports = LocalPorts::of(db);
    let name = db.instance_name(ordinal);
    let restore = crate::backup::restore_source(db);
    let bootstrap = if name == primary {
        match restore {
            Some(source) => Bootstrap::RestoreFrom { source },
            None => Bootstrap::InitPrimary,
        }
    } else {
        Bootstrap::CloneFrom {
            upstream: Endpoint {
                instance: primary.to_string(),
                host: db.spec.local.listen_address.clone(),
                port: ports.server(ordinal_of(primary).unwrap_or(0)),
            },
        }
    };
    InstanceConfig {
        database: db.clone(),
        ordinal,
        data_dir: dir.data_dir(ordinal),
        run_dir: dir.run_dir(ordinal),
        secrets_dir: dir.secrets_dir(),
        secrets_root: Some(dir.namespace_secrets()),
        log_file: dir.server_log(ordinal),
        listen_address: db.spec.local.listen_address.clone(),
        port: ports.server(ordinal),
        http_port: ports.manager(ordinal),
        bootstrap,
        server_user: host.server_user.clone(),
        bin_dir: host.bin_dir.clone(),
        peers: Vec::new(),
        tls_dir: db.spec.tls.enabled.then(|| dir.tls_dir()),
    }
}

/// N of `NAME-N`.
pub fn ordinal_of(instance: &str) -> Option<u32> {
    instance.rsplit_once('-')?.1.parse().ok()
}

/// The proxies' and the supervisor's ports.
pub fn shared_ports(db: &Database) -> Vec<PortUse> {
    let ports = LocalPorts::of(db);
    vec![
        PortUse {
            port: ports.rw(),
            purpose: format!("the {} proxy", db.rw_service_name()),
        },
        PortUse {
            port: ports.ro(),
            purpose: format!("the {} proxy", db.ro_service_name()),
        },
        PortUse {
            port: ports.supervisor(),
            purpose: "the supervisor's status endpoint".into(),
        },
    ]
}

/// Instance `ordinal`'s server and manager ports.
pub fn instance_ports(db: &Database, ordinal: u32) -> Vec<PortUse> {
    let ports = LocalPorts::of(db);
    let name = db.instance_name(ordinal);
    vec![
        PortUse {
            port: ports.server(ordinal),
            purpose: format!("{name}'s server"),
        },
        PortUse {
            port: ports.manager(ordinal),
            purpose: format!("{name}'s instance manager"),
        },
    ]
}

/// Why `new` cannot replace `old` on an existing database, one line per field; empty when it can.
/// The number of instances and server parameters may change; what the data was created with
/// (engine, version, initial database and owner) and where it listens may not.
pub fn immutable_changes(old: &Database, new: &Database) -> Vec<String> {
    let mut problems = Vec::new();
    let mut compare = |field: &str, a: String, b: String| {
        if a != b {
            problems.push(format!(
                "{field}: cannot change from {a:?} to {b:?} on an existing database (`stator delete` it first, or keep {a:?})"
            ));
        }
    };
    compare(
        "spec.engine",
        old.spec.engine.to_string(),
        new.spec.engine.to_string(),
    );
    compare(
        "spec.version",
        old.version().to_string(),
        new.version().to_string(),
    );
    compare(
        "spec.bootstrap.database",
        old.spec.bootstrap.database.clone(),
        new.spec.bootstrap.database.clone(),
    );
    compare(
        "spec.bootstrap.owner",
        old.spec.bootstrap.owner.clone(),
        new.spec.bootstrap.owner.clone(),
    );
    compare(
        "spec.local.listenAddress",
        old.spec.local.listen_address.clone(),
        new.spec.local.listen_address.clone(),
    );
    compare(
        "spec.local.portBase",
        LocalPorts::of(old).base.to_string(),
        LocalPorts::of(new).base.to_string(),
    );
    problems
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateDir;

    fn db(text: &str) -> Database {
        stator_api::load_database(text).unwrap().database
    }

    const PG3: &str = "apiVersion: stator.dev/v1alpha1\nkind: Database\nmetadata: {name: pg}\nspec: {engine: postgres, instances: 3, local: {portBase: 20000}}\n";

    #[test]
    fn the_primary_initialises_and_replicas_clone_from_it() {
        let db = db(PG3);
        let dir = StateDir { root: "/s".into() }.database_of(&db);
        let host = Host::default();
        let first = instance_config(&db, &dir, 0, "pg-0", &host);
        assert_eq!(first.bootstrap, Bootstrap::InitPrimary);
        assert_eq!((first.port, first.http_port), (20010, 20030));
        let second = instance_config(&db, &dir, 2, "pg-0", &host);
        assert_eq!(
            second.bootstrap,
            Bootstrap::CloneFrom {
                upstream: Endpoint {
                    instance: "pg-0".into(),
                    host: "127.0.0.1".into(),
                    port: 20010
                }
            }
        );
        assert_eq!(
            second.data_dir,
            std::path::PathBuf::from("/s/default/pg/data-pg-2")
        );
        // After a promotion recorded elsewhere, NAME-0 clones from the new primary.
        let demoted = instance_config(&db, &dir, 0, "pg-1", &host);
        assert!(
            matches!(demoted.bootstrap, Bootstrap::CloneFrom { upstream } if upstream.port == 20011)
        );
    }

    #[test]
    fn instance_count_may_change_but_engine_and_version_may_not() {
        let old = db(PG3);
        let more = db(&PG3.replace("instances: 3", "instances: 5"));
        assert!(immutable_changes(&old, &more).is_empty());
        let other = db(&PG3.replace("engine: postgres", "engine: postgres, version: \"16\""));
        let problems = immutable_changes(&old, &other);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("spec.version: cannot change from \"15\" to \"16\""));
        let moved = db(&PG3.replace("20000", "21000"));
        assert!(immutable_changes(&old, &moved)[0].starts_with("spec.local.portBase"));
    }

    #[test]
    fn ports_name_their_purpose() {
        let db = db(PG3);
        let shared = shared_ports(&db);
        assert_eq!(shared[0].port, 20000);
        assert_eq!(shared[0].purpose, "the pg-rw proxy");
        let one = instance_ports(&db, 1);
        assert_eq!(one[0].purpose, "pg-1's server");
        assert_eq!(one[1].port, 20031);
    }
}
