//! The pods' network, as a CNI bridge plugin makes it: a switch namespace of the stand-in's own
//! (`stator-standin-S`) holding a bridge `br0`, a veth pair from the host into it (`sth-S` on
//! the host, `stn-S` on the bridge), and for each pod a network namespace of its own
//! (`stator-standin-S-K`, where `198.18.S.K` is the pod's address) whose `eth0` is a veth on
//! the bridge. The host end (`sth-S`) holds the host's own address (`198.18.S.9/24`, [`HOST`]:
//! the source of every connection from the host that binds none: the test, an operator run by
//! it, the Service forwarders), the node addresses (`.1` to `.8` as /32: a kubelet's probes
//! come from its node's address, so a drill can cut the host's address from a pod without
//! cutting its probes) and the Service addresses (`.200`–`.254` as /32, where the stand-in's
//! forwarders listen). So the host (the test, the stand-in's probes and forwarders) reaches a pod through
//! the veth, a pod reaches another pod over the bridge, and a pod reaches a Service or its
//! node through the on-link /24; each pod has its own `127.0.0.1` and its own ports (two pods
//! both listen on `0.0.0.0:5432`). Nothing of `198.18.S.0/24` is an address of the host outside
//! the veth the stand-in made, and everything is deleted when it stops (with `/run/netns`,
//! which `ip netns add` makes, if this process made it and it is empty).
//!
//! Departures: no NetworkPolicy is enforced; there is no route out of the subnet (a pod
//! reaches only pods, Services and node addresses of its stand-in).

use std::ffi::CString;
use std::io;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

use crate::address;

/// The first and last pod address octets.
pub(crate) const PODS: std::ops::RangeInclusive<u8> = 10..=199;
/// The host's own address octet (the /24 on the host end: the default source address).
pub(crate) const HOST: u8 = 9;
/// The most nodes: their addresses are `.1` up to below [`HOST`].
pub(crate) const MAX_NODES: usize = HOST as usize - 1;
/// The first and last Service address octets.
pub(crate) const SERVICES: std::ops::RangeInclusive<u8> = 200..=254;

/// The namespace and the veth pair; deleted on drop.
pub(crate) struct Network {
    subnet: u8,
}

fn namespace(subnet: u8) -> String {
    format!("stator-standin-{subnet}")
}

fn host_end(subnet: u8) -> String {
    format!("sth-{subnet}")
}

fn ns_end(subnet: u8) -> String {
    format!("stn-{subnet}")
}

/// The bridge in the switch namespace.
const BRIDGE: &str = "br0";

/// The switch namespace's path (`/run/netns/NAME`).
pub(crate) fn namespace_path(subnet: u8) -> PathBuf {
    PathBuf::from(RUN_NETNS_PATH).join(namespace(subnet))
}

/// The network namespace of the pod at `198.18.S.K`.
fn pod_namespace(subnet: u8, k: u8) -> String {
    format!("stator-standin-{subnet}-{k}")
}

/// The path a pod's processes open to join its network namespace (`setns`).
pub(crate) fn pod_namespace_path(subnet: u8, k: u8) -> PathBuf {
    PathBuf::from(RUN_NETNS_PATH).join(pod_namespace(subnet, k))
}

/// Makes the network namespace of the pod at `198.18.S.K` (replacing a stale one): `lo` and
/// `eth0` with its address, `eth0` a veth on the switch's bridge.
pub(crate) fn add_pod(subnet: u8, k: u8) -> io::Result<()> {
    let _run_netns = RUN_NETNS.lock().unwrap_or_else(|e| e.into_inner());
    let (pod, switch, port) = (pod_namespace(subnet, k), namespace(subnet), format!("p{k}"));
    let _ = ip(&["netns", "del", &pod], None);
    let made = ip(&["netns", "add", &pod], None)
        .and_then(|()| {
            ip(
                &[
                    "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &pod,
                ],
                None,
            )
        })
        .and_then(|()| {
            ip(
                &["-n", &switch, "-batch", "-"],
                Some(&format!(
                    "link set {port} master {BRIDGE}\nlink set {port} up\n"
                )),
            )
        })
        .and_then(|()| {
            ip(
                &["-n", &pod, "-batch", "-"],
                Some(&format!(
                    "link set lo up\naddr add {}/24 dev eth0\nlink set eth0 up\n",
                    address(subnet, k)
                )),
            )
        });
    if made.is_err() {
        let _ = ip(&["netns", "del", &pod], None);
    }
    made
}

/// Fault drill: in the network namespace of the pod at `198.18.S.K`, every TCP segment from
/// its `port` to the host's own address is dropped (`ip rule … blackhole`): a partition
/// between the pod's `port` and whatever on the host connects from that address (the test's
/// operator), while the kubelet's probes (from node addresses) and every other port still pass.
/// `cut: false` heals it; healing what is not cut is fine.
pub(crate) fn cut_host(subnet: u8, k: u8, port: u16, cut: bool) -> io::Result<()> {
    let rule = format!(
        "rule {} to {}/32 ipproto tcp sport {port} blackhole\n",
        if cut { "add" } else { "del" },
        address(subnet, HOST)
    );
    match ip(
        &["-n", &pod_namespace(subnet, k), "-batch", "-"],
        Some(&rule),
    ) {
        Err(_) if !cut => Ok(()),
        other => other,
    }
}

/// Deletes the pod's network namespace (its veth goes with it); gone is fine.
pub(crate) fn remove_pod(subnet: u8, k: u8) {
    let _run_netns = RUN_NETNS.lock().unwrap_or_else(|e| e.into_inner());
    let _ = ip(&["netns", "del", &pod_namespace(subnet, k)], None);
}

/// Runs `ip ARGS` (with `input` as its batch on stdin when given); an error with its stderr.
fn ip(args: &[&str], input: Option<&str>) -> io::Result<()> {
    use std::io::Write;
    use std::process::Stdio;
    let mut child = Command::new("ip")
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(input) = input {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Whether `/run/netns` existed before this process first made a namespace (`None`: not yet
/// asked). `ip netns add` creates that directory and bind-mounts it onto itself; what this
/// process created it removes again once empty. The lock also keeps the stand-ins of parallel
/// tests from making and removing it at once.
static RUN_NETNS: Mutex<Option<bool>> = Mutex::new(None);

const RUN_NETNS_PATH: &str = "/run/netns";

/// Deletes the veth pair and the namespace of subnet `S`, whatever of them exists; then
/// `/run/netns` if this process created it and it is empty.
fn remove(subnet: u8, run_netns: &Option<bool>) {
    // Every pod's namespace first (their veths go with them).
    let prefix = format!("{}-", namespace(subnet));
    for entry in std::fs::read_dir(RUN_NETNS_PATH)
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name
            .strip_prefix(&prefix)
            .is_some_and(|k| k.parse::<u8>().is_ok())
        {
            let _ = ip(&["netns", "del", &name], None);
        }
    }
    // Deleting either end deletes the pair; the namespace end also goes with its namespace.
    let _ = ip(&["link", "del", &host_end(subnet)], None);
    let _ = ip(&["netns", "del", &namespace(subnet)], None);
    let empty = std::fs::read_dir(RUN_NETNS_PATH).is_ok_and(|mut d| d.next().is_none());
    if *run_netns == Some(false) && empty {
        let path = CString::new(RUN_NETNS_PATH).expect("no NUL");
        // SAFETY: umount2(2) on a NUL-terminated path; without MNT_DETACH it refuses (EBUSY)
        // while anything is mounted below, so no other namespace file is taken away.
        unsafe {
            libc::umount2(path.as_ptr(), 0);
        }
        let _ = std::fs::remove_dir(RUN_NETNS_PATH);
    }
}

impl Network {
    /// Creates the namespace and the veth pair for subnet `S` with `nodes` node addresses,
    /// first removing what a killed earlier stand-in of the same subnet left (the caller holds
    /// the subnet, see `harness::claim_subnet`).
    pub(crate) fn create(subnet: u8, nodes: usize) -> io::Result<Network> {
        let mut run_netns = RUN_NETNS.lock().unwrap_or_else(|e| e.into_inner());
        run_netns.get_or_insert_with(|| std::path::Path::new(RUN_NETNS_PATH).exists());
        remove(subnet, &run_netns);
        match make(subnet, nodes) {
            Ok(()) => Ok(Network { subnet }),
            Err(e) => {
                // Nothing half made is left.
                remove(subnet, &run_netns);
                Err(e)
            }
        }
    }
}

fn make(subnet: u8, nodes: usize) -> io::Result<()> {
    let (ns, host, inner) = (namespace(subnet), host_end(subnet), ns_end(subnet));
    ip(&["netns", "add", &ns], None)?;
    ip(
        &[
            "link", "add", &host, "type", "veth", "peer", "name", &inner, "netns", &ns,
        ],
        None,
    )?;
    // The host's address first (the /24 that routes the subnet into the veth, so the
    // default source), then the nodes' and the Services'.
    let mut host_batch = format!("addr add {}/24 dev {host}\n", address(subnet, HOST));
    for k in 1..=nodes.clamp(1, MAX_NODES) as u8 {
        host_batch.push_str(&format!("addr add {}/32 dev {host}\n", address(subnet, k)));
    }
    for k in SERVICES {
        host_batch.push_str(&format!("addr add {}/32 dev {host}\n", address(subnet, k)));
    }
    host_batch.push_str(&format!("link set {host} up\n"));
    ip(&["-batch", "-"], Some(&host_batch))?;
    // The switch: the veth's namespace end and every pod's port on one bridge.
    let ns_batch = format!(
        "link set lo up\nlink add {BRIDGE} type bridge\nlink set {inner} master {BRIDGE}\nlink set {BRIDGE} up\nlink set {inner} up\n"
    );
    ip(&["-n", &ns, "-batch", "-"], Some(&ns_batch))
}

impl Drop for Network {
    fn drop(&mut self) {
        let run_netns = RUN_NETNS.lock().unwrap_or_else(|e| e.into_inner());
        remove(self.subnet, &run_netns);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(args: &[&str]) -> String {
        let out = Command::new("ip").args(args).output().expect("run ip");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn a_stale_network_is_replaced_and_nothing_is_left_after_drop() {
        let subnet = crate::harness::claim_subnet().expect("a free 198.18.S subnet");
        let s = subnet.octet;
        // A stand-in killed before its drop leaves its namespace and veth behind.
        std::mem::forget(Network::create(s, 3).expect("network"));
        let network = Network::create(s, 3).expect("network over a stale one");
        assert!(output(&["netns", "list"]).contains(&namespace(s)));
        let host = output(&["-br", "addr", "show", "dev", &host_end(s)]);
        for a in [".9/24", ".1/32", ".3/32", ".200/32", ".254/32"] {
            assert!(host.contains(&format!("198.18.{s}{a}")), "{a} in {host}");
        }
        let bridge = output(&["-n", &namespace(s), "-br", "link", "show", "master", BRIDGE]);
        assert!(bridge.contains(&ns_end(s)), "{bridge}");
        // A pod's own namespace: its address on eth0, a port on the bridge.
        add_pod(s, 10).expect("pod namespace");
        let eth0 = output(&[
            "-n",
            &pod_namespace(s, 10),
            "-br",
            "addr",
            "show",
            "dev",
            "eth0",
        ]);
        assert!(eth0.contains(&format!("198.18.{s}.10/24")), "{eth0}");
        let bridge = output(&["-n", &namespace(s), "-br", "link", "show", "master", BRIDGE]);
        assert!(bridge.contains("p10"), "{bridge}");
        assert!(!host.contains(&format!("198.18.{s}.10/")), "{host}");
        // A stand-in killed with a pod running leaves the pod's namespace too.
        std::mem::forget(network);
        let network = Network::create(s, 3).expect("network over a stale one with a pod");
        assert!(!output(&["netns", "list"]).contains(&pod_namespace(s, 10)));
        add_pod(s, 11).expect("pod namespace");
        drop(network);
        let namespaces = output(&["netns", "list"]);
        assert!(!namespaces.contains(&namespace(s)), "{namespaces}");
        assert!(!output(&["-br", "link"]).contains(&host_end(s)));
    }
}
