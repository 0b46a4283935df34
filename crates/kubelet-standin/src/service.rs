//! Service forwarding (kube-proxy's part): each Service with a cluster IP gets an address of
//! its own (`198.18.S.200` and up, on the host end of the stand-in's veth, see `net`, so pods
//! reach it through the veth and the test directly), where the stand-in listens on its TCP
//! ports; a connection goes to a ready endpoint of the Service's EndpointSlices (which the real
//! EndpointSlice controller keeps from the pods' labels and readiness), in turn. No ready
//! endpoint: the connection is closed. Pods find the address through `/etc/hosts` (`NAME`,
//! `NAME.NS`, `NAME.NS.svc`, `NAME.NS.svc.cluster.local`).
//!
//! Departures: the Service's real cluster IP (10.96.x.y) is not served, only that address;
//! UDP and SCTP ports, session affinity, `internalTrafficPolicy`, NodePorts and headless
//! Service names (their pods' own names are in `/etc/hosts`) are not done.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::net::{TcpListener, TcpStream};

/// Ready endpoints by Service port name ("" for an unnamed port).
type Endpoints = Arc<Mutex<HashMap<String, Vec<SocketAddr>>>>;

/// One forwarded Service.
pub(crate) struct Forward {
    pub ip: Ipv4Addr,
    uid: String,
    endpoints: Endpoints,
    listeners: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Forward {
    fn drop(&mut self) {
        for l in &self.listeners {
            l.abort();
        }
    }
}

/// Services by `(namespace, name)`.
pub(crate) type Forwards = Mutex<HashMap<(String, String), Forward>>;

fn key(meta: &kube::api::ObjectMeta) -> (String, String) {
    (
        meta.namespace.clone().unwrap_or_default(),
        meta.name.clone().unwrap_or_default(),
    )
}

fn ready_endpoints(
    service: &str,
    ns: &str,
    slices: &[EndpointSlice],
) -> HashMap<String, Vec<SocketAddr>> {
    let mut out: HashMap<String, Vec<SocketAddr>> = HashMap::new();
    for slice in slices {
        let owner = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get("kubernetes.io/service-name"));
        if owner.map(String::as_str) != Some(service)
            || slice.metadata.namespace.as_deref() != Some(ns)
            || slice.address_type != "IPv4"
        {
            continue;
        }
        for port in slice.ports.iter().flatten() {
            let (Some(number), name) = (port.port, port.name.clone().unwrap_or_default()) else {
                continue;
            };
            for ep in &slice.endpoints {
                let ready = ep.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true);
                if !ready {
                    continue;
                }
                for addr in &ep.addresses {
                    if let Ok(ip) = addr.parse::<Ipv4Addr>() {
                        out.entry(name.clone())
                            .or_default()
                            .push(SocketAddr::from((ip, number as u16)));
                    }
                }
            }
        }
    }
    for v in out.values_mut() {
        v.sort();
    }
    out
}

async fn forward(listener: TcpListener, port_name: String, endpoints: Endpoints) {
    let mut next = 0usize;
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let targets = endpoints
            .lock()
            .unwrap()
            .get(&port_name)
            .cloned()
            .unwrap_or_default();
        if targets.is_empty() {
            continue;
        }
        let target = targets[next % targets.len()];
        next = next.wrapping_add(1);
        tokio::spawn(async move {
            if let Ok(mut outbound) = TcpStream::connect(target).await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

/// Brings the forwards in line with the Services and EndpointSlices.
pub(crate) async fn sync(
    forwards: &Forwards,
    subnet: u8,
    services: &[Service],
    slices: &[EndpointSlice],
) {
    let wanted: Vec<&Service> = services
        .iter()
        .filter(|s| {
            let spec = s.spec.as_ref();
            let ip = spec.and_then(|s| s.cluster_ip.as_deref());
            ip.is_some_and(|ip| !ip.is_empty() && ip != "None")
                && spec.and_then(|s| s.type_.as_deref()) != Some("ExternalName")
        })
        .collect();
    // Gone or replaced Services stop listening.
    forwards.lock().unwrap().retain(|k, f| {
        wanted
            .iter()
            .any(|s| &key(&s.metadata) == k && s.metadata.uid.as_deref() == Some(f.uid.as_str()))
    });
    for s in wanted {
        let k = key(&s.metadata);
        let eps = ready_endpoints(&k.1, &k.0, slices);
        if let Some(f) = forwards.lock().unwrap().get(&k) {
            *f.endpoints.lock().unwrap() = eps;
            continue;
        }
        let used: Vec<Ipv4Addr> = forwards.lock().unwrap().values().map(|f| f.ip).collect();
        let Some(ip) = crate::net::SERVICES
            .map(|o| crate::address(subnet, o))
            .find(|ip| !used.contains(ip))
        else {
            tracing::warn!(service = %k.1, "no address left for the Service");
            continue;
        };
        let endpoints: Endpoints = Arc::new(Mutex::new(eps));
        let mut listeners = Vec::new();
        for port in s
            .spec
            .as_ref()
            .and_then(|s| s.ports.clone())
            .unwrap_or_default()
        {
            if port.protocol.as_deref().is_some_and(|p| p != "TCP") {
                continue;
            }
            match TcpListener::bind((ip, port.port as u16)).await {
                Ok(l) => listeners.push(tokio::spawn(forward(
                    l,
                    port.name.clone().unwrap_or_default(),
                    endpoints.clone(),
                ))),
                Err(e) => tracing::warn!(service = %k.1, "listen on {ip}:{}: {e}", port.port),
            }
        }
        forwards.lock().unwrap().insert(
            k,
            Forward {
                ip,
                uid: s.metadata.uid.clone().unwrap_or_default(),
                endpoints,
                listeners,
            },
        );
    }
}

/// `/etc/hosts` lines for the forwarded Services, seen from a pod in `namespace`.
pub(crate) fn hosts_lines(forwards: &Forwards, namespace: &str) -> String {
    let mut lines: Vec<String> = forwards
        .lock()
        .unwrap()
        .iter()
        .map(|((ns, name), f)| {
            let short = if ns == namespace {
                format!("\t{name}")
            } else {
                String::new()
            };
            format!(
                "{}\t{name}.{ns}.svc.cluster.local\t{name}.{ns}.svc\t{name}.{ns}{short}\n",
                f.ip
            )
        })
        .collect();
    lines.sort();
    lines.concat()
}
