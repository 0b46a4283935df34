//! The Services: `NAME-headless` (stable pod DNS `NAME-N.NAME-headless`), `NAME-rw` (the
//! primary) and `NAME-ro` (the replicas), selecting on `stator.dev/role`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use stator_api::names::{INSTANCE_MANAGER_PORT, LABEL_ROLE};
use stator_api::{Database, Role};

use super::meta::{object_meta, selector_labels};
use super::statefulset::{MANAGER_PORT_NAME, engine_port_name};

fn database_port(db: &Database) -> ServicePort {
    let engine = db.spec.engine;
    ServicePort {
        name: Some(engine_port_name(engine).into()),
        port: i32::from(engine.port()),
        target_port: Some(IntOrString::String(engine_port_name(engine).into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// Every pod, ready or not, gets its DNS name: replicas find their primary while starting.
pub fn render_headless_service(db: &Database) -> Service {
    Service {
        metadata: object_meta(db, db.headless_service_name()),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(db)),
            ports: Some(vec![
                database_port(db),
                ServicePort {
                    name: Some(MANAGER_PORT_NAME.into()),
                    port: i32::from(INSTANCE_MANAGER_PORT),
                    target_port: Some(IntOrString::String(MANAGER_PORT_NAME.into())),
                    protocol: Some("TCP".into()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

/// `NAME-rw` for [`Role::Primary`], `NAME-ro` for [`Role::Replica`]: the ready pods of that role.
pub fn render_role_service(db: &Database, role: Role) -> Service {
    let name = match role {
        Role::Primary => db.rw_service_name(),
        Role::Replica => db.ro_service_name(),
    };
    let mut selector: BTreeMap<String, String> = selector_labels(db);
    selector.insert(LABEL_ROLE.to_string(), role.as_str().to_string());
    Service {
        metadata: object_meta(db, name),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector),
            ports: Some(vec![database_port(db)]),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}
