//! Each pod's `/etc/hosts` (bind-mounted over the host's in its mount namespace): the
//! kubelet's own lines, then the headless names of every pod with a `hostname` and a
//! `subdomain` (`name-0.name-headless`, with and without `NAMESPACE.svc.cluster.local`), since
//! there is no cluster DNS; then every forwarded Service's names. Rewritten in place when pods come and go, so running containers see
//! the change.

use std::net::Ipv4Addr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use crate::Shared;

/// The kubelet-managed part of a pod's hosts file.
pub(crate) fn base(pod: &Pod, ip: Ipv4Addr) -> String {
    let spec = pod.spec.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let hostname = spec
        .hostname
        .clone()
        .or(pod.metadata.name.clone())
        .unwrap_or_default();
    let mut out = String::from(
        "# Kubernetes-managed hosts file (kubelet stand-in).\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    );
    match &spec.subdomain {
        Some(sub) => out.push_str(&format!(
            "{ip}\t{hostname}.{sub}.{ns}.svc.cluster.local\t{hostname}\n"
        )),
        None => out.push_str(&format!("{ip}\t{hostname}\n")),
    }
    out
}

fn headless_lines(pods: &[Pod], namespace: &str) -> String {
    let mut out = String::new();
    for p in pods {
        let Some(spec) = &p.spec else { continue };
        let (Some(host), Some(sub)) = (spec.hostname.as_deref(), spec.subdomain.as_deref()) else {
            continue;
        };
        let Some(ip) = p.status.as_ref().and_then(|s| s.pod_ip.as_deref()) else {
            continue;
        };
        if p.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = p.metadata.namespace.as_deref().unwrap_or_default();
        let fqdn = format!("{host}.{sub}.{ns}.svc.cluster.local");
        if ns == namespace {
            out.push_str(&format!(
                "{ip}\t{fqdn}\t{host}.{sub}.{ns}.svc\t{host}.{sub}.{ns}\t{host}.{sub}\n"
            ));
        } else {
            out.push_str(&format!(
                "{ip}\t{fqdn}\t{host}.{sub}.{ns}.svc\t{host}.{sub}.{ns}\n"
            ));
        }
    }
    out
}

/// Rewrites the hosts file of every pod the stand-in runs, in place, where it changed.
pub(crate) fn write_all(shared: &Arc<Shared>, pods: &[Pod]) {
    let running: Vec<(String, Ipv4Addr)> = shared
        .pods
        .lock()
        .unwrap()
        .iter()
        .map(|(uid, h)| (uid.clone(), h.ip))
        .collect();
    for (uid, ip) in running {
        let Some(pod) = pods
            .iter()
            .find(|p| p.metadata.uid.as_deref() == Some(uid.as_str()))
        else {
            continue;
        };
        let path = shared.config.root.join("pods").join(&uid).join("hosts");
        if !path.exists() {
            continue;
        }
        let ns = pod.metadata.namespace.clone().unwrap_or_default();
        let content = format!(
            "{}{}{}",
            base(pod, ip),
            headless_lines(pods, &ns),
            crate::service::hosts_lines(&shared.services, &ns)
        );
        if std::fs::read_to_string(&path).ok().as_deref() != Some(content.as_str()) {
            // In place (not a rename): the file is bind-mounted by inode.
            let _ = std::fs::write(&path, content);
        }
    }
}
