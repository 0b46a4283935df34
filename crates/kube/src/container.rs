//! Pieces of a hardened container that the database pods (render) and the operator's Deployment
//! (install) share, so both are hardened the same way and a fix lands in both.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, EnvVar, EnvVarSource, HTTPGetAction, ObjectFieldSelector, Probe,
    ResourceRequirements, SeccompProfile, SecurityContext, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use stator_api::spec::{ResourceAmounts, ResourcesSpec};

/// The container runtime's default seccomp profile.
pub fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        localhost_profile: None,
    }
}

/// No privilege escalation, no capabilities, nothing written outside the mounted volumes.
pub fn hardened_security_context(uid: i64) -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(uid),
        run_as_group: Some(uid),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        seccomp_profile: Some(runtime_default_seccomp()),
        ..SecurityContext::default()
    }
}

fn quantities(amounts: &ResourceAmounts) -> BTreeMap<String, Quantity> {
    BTreeMap::from([
        ("cpu".to_string(), Quantity(amounts.cpu.clone())),
        ("memory".to_string(), Quantity(amounts.memory.clone())),
    ])
}

/// CPU and memory requests and limits.
pub fn resources(spec: &ResourcesSpec) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(quantities(&spec.requests)),
        limits: Some(quantities(&spec.limits)),
        ..ResourceRequirements::default()
    }
}

/// `ResourcesSpec` from literals: requests `cpu`/`memory`, limits `cpu`/`memory`.
pub fn resources_of(requests: (&str, &str), limits: (&str, &str)) -> ResourceRequirements {
    let amounts = |(cpu, memory): (&str, &str)| ResourceAmounts {
        cpu: cpu.into(),
        memory: memory.into(),
    };
    resources(&ResourcesSpec {
        requests: amounts(requests),
        limits: amounts(limits),
    })
}

/// A volume mounted at `path`.
pub fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

/// An environment variable from the pod's own fields (`metadata.name`, …).
pub fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: field_path.into(),
            }),
            ..EnvVarSource::default()
        }),
    }
}

/// An HTTP GET probe of `path` on the named container port `port`.
/// `tls`: the endpoint serves HTTPS (the kubelet does not verify the certificate, and sends no
/// token).
pub fn http_probe(path: &str, port: &str, tls: bool, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(port.into()),
            scheme: Some(if tls { "HTTPS" } else { "HTTP" }.into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(5),
        failure_threshold: Some(failure_threshold),
        success_threshold: Some(1),
        ..Probe::default()
    }
}
