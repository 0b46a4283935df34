//! Readiness and liveness probes as declared: `exec` (run in the container's network and mount
//! namespaces as its user), `httpGet` (HTTP/1.1 GET, success on 200–399, as `kube-probe`) and
//! `tcpSocket`; the last two connect from the host to the pod's address, through the veth
//! into the pods' network namespace, from the address of the pod's node, as a kubelet
//! connects from its node.
//! Periods, delays, timeouts and thresholds are the pod's, with the Kubernetes defaults.
//!
//! `httpGet` with `scheme: HTTPS` speaks TLS without verifying the server's certificate, as a
//! kubelet does. A `startupProbe` runs first; liveness and readiness start once it has
//! succeeded, and its failure threshold restarts the container (see `pod`).
//!
//! Not done: `grpc` probes (they count as failures).

use std::net::Ipv4Addr;
use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::launch::{Launch, signal_group};

/// Which probe a result belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Startup,
    Readiness,
    Liveness,
}

/// The timing of a probe, with Kubernetes' defaults.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

pub(crate) fn timing(probe: &Probe) -> Timing {
    let secs =
        |v: Option<i32>, default: u64| Duration::from_secs(v.map_or(default, |v| v.max(0) as u64));
    Timing {
        initial_delay: secs(probe.initial_delay_seconds, 0),
        period: secs(probe.period_seconds, 10),
        timeout: secs(probe.timeout_seconds, 1),
        success_threshold: probe.success_threshold.map_or(1, |v| v.max(1) as u32),
        failure_threshold: probe.failure_threshold.map_or(3, |v| v.max(1) as u32),
    }
}

fn port_number(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(p) => u16::try_from(*p).ok(),
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name))
            .and_then(|p| u16::try_from(p.container_port).ok()),
    }
}

/// Runs `probe` once; true on success.
pub(crate) async fn run_once(
    probe: &Probe,
    container: &Container,
    pod_ip: Ipv4Addr,
    node_ip: Ipv4Addr,
    launch: &Launch,
) -> bool {
    let timeout = timing(probe).timeout;
    if let Some(exec) = &probe.exec {
        let mut launch = launch.clone();
        launch.argv = exec.command.clone().unwrap_or_default();
        let Ok(mut child) = launch.spawn(Stdio::null(), Stdio::null()) else {
            return false;
        };
        let pgid = child.id().map_or(0, |p| p as i32);
        return match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => status.success(),
            _ => {
                signal_group(pgid, libc::SIGKILL);
                let _ = child.wait().await;
                false
            }
        };
    }
    if let Some(http) = &probe.http_get {
        let Some(port) = port_number(&http.port, container) else {
            return false;
        };
        let host = http.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.36\r\nAccept: */*\r\nConnection: close\r\n"
        );
        for h in http.http_headers.iter().flatten() {
            request.push_str(&format!("{}: {}\r\n", h.name, h.value));
        }
        request.push_str("\r\n");
        let https = http
            .scheme
            .as_deref()
            .is_some_and(|s| s.eq_ignore_ascii_case("HTTPS"));
        let exchange = crate::http::exchange(&host, port, Some(node_ip), https, &request);
        return matches!(
            tokio::time::timeout(timeout, exchange).await,
            Ok(Ok((200..=399, _)))
        );
    }
    if let Some(tcp) = &probe.tcp_socket {
        let Some(port) = port_number(&tcp.port, container) else {
            return false;
        };
        let host = tcp.host.clone().unwrap_or_else(|| pod_ip.to_string());
        let connect = crate::http::connect(&host, port, Some(node_ip));
        return matches!(tokio::time::timeout(timeout, connect).await, Ok(Ok(_)));
    }
    false
}
