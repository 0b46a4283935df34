//! Volumes as a kubelet sets them up, on the host under the stand-in's root:
//!
//! - a PVC gets a `local` PV (pinned to the pod's node) whose directory is `pv/<PVC UID>`, so no
//!   data ever crosses from one claim to another; the PV is created pre-bound (`claimRef` with
//!   the claim's UID) and the real PV controller binds the claim;
//! - `emptyDir`: a directory owned by root, mode 0777, then the fsGroup ownership pass;
//!   `medium: Memory` is a tmpfs mounted there (unmounted when the pod is torn down);
//! - Secret and ConfigMap: files with `defaultMode` / `items[].mode`, mounted read-only;
//! - the fsGroup pass is the kubelet's `SetVolumeOwnership`: group fsGroup, `g+rw` (`g+r` for
//!   read-only volumes), directories setgid and `g+x`; it applies to emptyDir, Secret,
//!   ConfigMap and local PVs, on every pod start unless `fsGroupChangePolicy: OnRootMismatch`
//!   finds the volume's root already right (a PostgreSQL data directory below it keeps 0700).
//!
//! Departures: Secret and ConfigMap files are plain files, not the kubelet's `..data` symlink
//! tree, and are not refreshed when the object changes; projected volumes (the service-account
//! token among them) and downwardAPI volumes are not mounted at all (no pod gets an API token);
//! hostPath and other volume types are not supported (the pod stays ContainerCreating).

use std::collections::BTreeMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{
    ConfigMap, KeyToPath, PersistentVolume, PersistentVolumeClaim, Pod, Secret, Volume,
};
use kube::Api;
use kube::api::PostParams;
use serde_json::json;

use crate::Error;

/// The claim names a pod's volumes refer to.
pub(crate) fn claim_names(pod: &Pod) -> Vec<String> {
    pod.spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .filter_map(|v| {
            v.persistent_volume_claim
                .as_ref()
                .map(|c| c.claim_name.clone())
        })
        .collect()
}

/// The PV name the stand-in gives a claim.
pub(crate) fn pv_name(pvc_uid: &str) -> String {
    format!("standin-{pvc_uid}")
}

/// The directory of the PV of the claim with `pvc_uid`.
pub(crate) fn pv_dir(root: &Path, pvc_uid: &str) -> PathBuf {
    root.join("pv").join(pvc_uid)
}

/// Creates the local PV for `pvc` on `node`, pre-bound to the claim (by UID).
pub(crate) async fn create_pv(
    client: &kube::Client,
    root: &Path,
    pvc: &PersistentVolumeClaim,
    node: &str,
) -> Result<(), Error> {
    let uid = pvc.metadata.uid.clone().unwrap_or_default();
    let dir = pv_dir(root, &uid);
    std::fs::create_dir_all(&dir).map_err(|e| Error::Io(dir.clone(), e))?;
    let spec = pvc.spec.clone().unwrap_or_default();
    let size = spec
        .resources
        .as_ref()
        .and_then(|r| r.requests.as_ref())
        .and_then(|r| r.get("storage").cloned())
        .map(|q| q.0)
        .unwrap_or_else(|| "1Gi".into());
    let pv = json!({
        "apiVersion": "v1",
        "kind": "PersistentVolume",
        "metadata": {"name": pv_name(&uid), "labels": {"stator.dev/kubelet-standin": "true"}},
        "spec": {
            "capacity": {"storage": size},
            "accessModes": spec.access_modes.clone().unwrap_or_else(|| vec!["ReadWriteOnce".into()]),
            "persistentVolumeReclaimPolicy": "Retain",
            "storageClassName": spec.storage_class_name.clone().unwrap_or_default(),
            "volumeMode": "Filesystem",
            "local": {"path": dir.to_string_lossy()},
            "claimRef": {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "namespace": pvc.metadata.namespace, "name": pvc.metadata.name, "uid": uid,
            },
            "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
            ]}]}},
        },
    });
    let pv: PersistentVolume = serde_json::from_value(pv).map_err(Error::Json)?;
    let pvs: Api<PersistentVolume> = Api::all(client.clone());
    match pvs.create(&PostParams::default(), &pv).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(Error::Kube("create PersistentVolume", e)),
    }
}

/// The node a bound stand-in PV pins its claim to.
pub(crate) fn pv_node(pv: &PersistentVolume) -> Option<String> {
    let terms = &pv
        .spec
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required
        .as_ref()?
        .node_selector_terms;
    terms
        .iter()
        .flat_map(|t| t.match_expressions.iter().flatten())
        .find(|e| e.key == "kubernetes.io/hostname")
        .and_then(|e| e.values.as_ref()?.first().cloned())
}

/// A volume ready to be bind-mounted: its host directory and whether it is read-only.
#[derive(Clone, Debug)]
pub(crate) struct Prepared {
    pub host: PathBuf,
    pub read_only: bool,
}

/// What went wrong preparing a volume: the pod waits (ContainerCreating) and retries.
pub(crate) type NotReady = String;

fn chown(path: &Path, uid: Option<u32>, gid: Option<u32>) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, uid, gid)
}

/// The kubelet's `SetVolumeOwnership`: group fsGroup and group permissions on every file.
pub(crate) fn set_volume_ownership(
    dir: &Path,
    fs_group: u32,
    read_only: bool,
) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    chown(dir, None, Some(fs_group))?;
    if !meta.file_type().is_symlink() {
        let mut mask = if read_only { 0o440 } else { 0o660 };
        if meta.is_dir() {
            mask |= 0o2000 | 0o110;
        }
        let mode = meta.permissions().mode() & 0o7777;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode | mask))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir)? {
            set_volume_ownership(&entry?.path(), fs_group, read_only)?;
        }
    }
    Ok(())
}

fn write_file(dir: &Path, rel: &str, data: &[u8], mode: u32) -> Result<(), NotReady> {
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
    }
    std::fs::write(&path, data).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn write_keys(
    dir: &Path,
    data: &BTreeMap<String, Vec<u8>>,
    items: &Option<Vec<KeyToPath>>,
    default_mode: Option<i32>,
    what: &str,
) -> Result<(), NotReady> {
    let default_mode = default_mode.unwrap_or(0o644) as u32;
    match items {
        Some(items) => {
            for item in items {
                let value = data
                    .get(&item.key)
                    .ok_or_else(|| format!("{what}: no key {:?}", item.key))?;
                let mode = item.mode.map(|m| m as u32).unwrap_or(default_mode);
                write_file(dir, &item.path, value, mode)?;
            }
        }
        None => {
            for (key, value) in data {
                write_file(dir, key, value, default_mode)?;
            }
        }
    }
    Ok(())
}

fn mount_tmpfs(dir: &Path) -> std::io::Result<()> {
    let target = CString::new(dir.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    let fstype = CString::new("tmpfs").map_err(std::io::Error::other)?;
    let options = CString::new("mode=0777").map_err(std::io::Error::other)?;
    // SAFETY: pointers to NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            options.as_ptr().cast(),
        )
    };
    if rc == -1 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Unmounts a tmpfs the stand-in mounted (lazily, so a late reader cannot keep it).
pub(crate) fn unmount(dir: &Path) {
    if let Ok(target) = CString::new(dir.as_os_str().as_bytes()) {
        // SAFETY: a NUL-terminated path that outlives the call.
        unsafe {
            libc::umount2(target.as_ptr(), libc::MNT_DETACH);
        }
    }
}

/// Prepares every volume of `pod` under `pod_dir/volumes`; `tmpfs` collects mounted tmpfs
/// directories. Volumes that are deliberately not mounted (projected, downwardAPI) are absent
/// from the result.
pub(crate) async fn prepare(
    client: &kube::Client,
    root: &Path,
    pod: &Pod,
    pod_dir: &Path,
    pvc_uids: &BTreeMap<String, String>,
    tmpfs: &mut Vec<PathBuf>,
) -> Result<BTreeMap<String, Prepared>, NotReady> {
    let ns = pod
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let spec = pod.spec.clone().unwrap_or_default();
    let fs_group = spec
        .security_context
        .as_ref()
        .and_then(|s| s.fs_group)
        .map(|g| g as u32);
    let mut out = BTreeMap::new();
    for volume in spec.volumes.iter().flatten() {
        let Volume { name, .. } = volume;
        let dir = pod_dir.join("volumes").join(name);
        let (host, read_only) = if let Some(empty) = &volume.empty_dir {
            if !dir.exists() {
                std::fs::create_dir_all(&dir).map_err(|e| format!("emptyDir {name}: {e}"))?;
                if empty.medium.as_deref() == Some("Memory") {
                    mount_tmpfs(&dir).map_err(|e| format!("emptyDir {name}: tmpfs: {e}"))?;
                    tmpfs.push(dir.clone());
                }
                chown(&dir, Some(0), Some(0)).map_err(|e| format!("emptyDir {name}: {e}"))?;
                std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
                    .map_err(|e| format!("emptyDir {name}: {e}"))?;
            }
            (dir, false)
        } else if let Some(source) = &volume.secret {
            let secret_name = source.secret_name.clone().unwrap_or_default();
            let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
            let data = match secrets.get_opt(&secret_name).await {
                Ok(Some(s)) => s
                    .data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, ByteString(v))| (k, v))
                    .collect(),
                Ok(None) if source.optional == Some(true) => BTreeMap::new(),
                Ok(None) => return Err(format!("secret {secret_name:?} not found")),
                Err(e) => return Err(format!("secret {secret_name:?}: {e}")),
            };
            std::fs::create_dir_all(&dir).map_err(|e| format!("secret {name}: {e}"))?;
            write_keys(&dir, &data, &source.items, source.default_mode, "secret")?;
            (dir, true)
        } else if let Some(source) = &volume.config_map {
            let cm_name = source.name.clone();
            let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
            let data = match cms.get_opt(&cm_name).await {
                Ok(Some(cm)) => {
                    let mut data: BTreeMap<String, Vec<u8>> = cm
                        .data
                        .unwrap_or_default()
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect();
                    for (k, ByteString(v)) in cm.binary_data.unwrap_or_default() {
                        data.insert(k, v);
                    }
                    data
                }
                Ok(None) if source.optional == Some(true) => BTreeMap::new(),
                Ok(None) => return Err(format!("configmap {cm_name:?} not found")),
                Err(e) => return Err(format!("configmap {cm_name:?}: {e}")),
            };
            std::fs::create_dir_all(&dir).map_err(|e| format!("configmap {name}: {e}"))?;
            write_keys(&dir, &data, &source.items, source.default_mode, "configmap")?;
            (dir, true)
        } else if let Some(claim) = &volume.persistent_volume_claim {
            let uid = pvc_uids
                .get(&claim.claim_name)
                .ok_or_else(|| format!("claim {:?} not bound", claim.claim_name))?;
            (pv_dir(root, uid), claim.read_only == Some(true))
        } else if volume.projected.is_some() || volume.downward_api.is_some() {
            continue;
        } else {
            return Err(format!(
                "volume {name:?}: type not supported by the stand-in"
            ));
        };
        let on_root_mismatch = spec
            .security_context
            .as_ref()
            .and_then(|s| s.fs_group_change_policy.as_deref())
            == Some("OnRootMismatch");
        if let Some(group) = fs_group
            && !(on_root_mismatch && root_matches(&host, group, read_only))
        {
            set_volume_ownership(&host, group, read_only)
                .map_err(|e| format!("volume {name:?}: fsGroup ownership: {e}"))?;
        }
        out.insert(name.clone(), Prepared { host, read_only });
    }
    Ok(out)
}

/// The kubelet's `fsGroupChangePolicy: OnRootMismatch` test: the volume's root already has
/// group fsGroup, setgid and the group permissions, so the recursive pass is skipped.
pub(crate) fn root_matches(dir: &Path, fs_group: u32, read_only: bool) -> bool {
    let Ok(meta) = std::fs::metadata(dir) else {
        return false;
    };
    let wanted = if read_only { 0o440 } else { 0o660 } | 0o2000 | 0o110;
    meta.gid() == fs_group && meta.mode() & wanted == wanted
}

/// The owner uid of a path, for tests and messages.
pub fn owner(path: &Path) -> std::io::Result<(u32, u32, u32)> {
    let m = std::fs::metadata(path)?;
    Ok((m.uid(), m.gid(), m.mode() & 0o7777))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fs_group_pass_opens_group_access_and_on_root_mismatch_then_skips_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("pgdata");
        std::fs::create_dir(&data).expect("mkdir");
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        set_volume_ownership(dir.path(), 2000, false).expect("ownership");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").mode() & 0o7777;
        // A kubelet's pass turns a 0700 directory into 2770 (PostgreSQL then refuses it).
        assert_eq!(mode(&data), 0o2770);
        assert!(root_matches(dir.path(), 2000, false));
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        assert!(!root_matches(&data, 2000, false));
    }
}
