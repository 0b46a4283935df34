//! Storage: access modes, whether the data is persistent at all, and the policies of
//! StorageClasses and VolumeSnapshotClasses that are part of the input.

use crate::finding::{Finding, Rule, Severity};
use crate::node::Node;
use crate::object::{Manifests, Object, Workload};

pub const SHARED_ACCESS_MODE: Rule = Rule {
    id: "STATOR-STO-001",
    name: "shared-access-mode",
    severity: Severity::Error,
    summary: "A database volume asks for an access mode other than ReadWriteOnce (or ReadWriteOncePod): two servers writing one data directory corrupt it.",
    rationale: "Guide (storage design): databases use RWO; sharing data files over RWX is not recommended. Failure table: PVC Pending ← access mode mismatch.",
    fix: "use accessModes: [ReadWriteOnce] and replicate at the database level",
};

pub const NO_VOLUME_EXPANSION: Rule = Rule {
    id: "STATOR-STO-002",
    name: "no-volume-expansion",
    severity: Severity::Warning,
    summary: "A StorageClass does not set `allowVolumeExpansion: true`: a full database disk cannot be grown in place.",
    rationale: "Guide failure table: disk full ← PVC too small; enable allowVolumeExpansion and expand the PVC.",
    fix: "set allowVolumeExpansion: true (if the CSI driver supports it)",
};

pub const RECLAIM_POLICY_DELETE: Rule = Rule {
    id: "STATOR-STO-003",
    name: "reclaim-policy-delete",
    severity: Severity::Warning,
    summary: "A StorageClass (or PersistentVolume) deletes the volume when its claim is deleted (reclaimPolicy Delete, the StorageClass default).",
    rationale: "Guide (storage design): production data prefers Retain (destroyed by hand); Delete is for tests.",
    fix: "set reclaimPolicy: Retain for production data",
};

pub const IMMEDIATE_BINDING: Rule = Rule {
    id: "STATOR-STO-004",
    name: "immediate-volume-binding",
    severity: Severity::Info,
    summary: "A StorageClass binds volumes immediately, before the pod is scheduled: in a multi-zone cluster the volume may land in a zone the pod cannot run in.",
    rationale: "Guide (storage design, checklist): use volumeBindingMode: WaitForFirstConsumer for multi-zone topologies.",
    fix: "set volumeBindingMode: WaitForFirstConsumer",
};

pub const EPHEMERAL_DATA: Rule = Rule {
    id: "STATOR-STO-005",
    name: "ephemeral-data",
    severity: Severity::Error,
    summary: "A database container mounts no persistent volume: its data lives in the container or an emptyDir and is lost with the pod.",
    rationale: "Guide: a database needs persistent storage that survives rescheduling (StatefulSet + PVC).",
    fix: "add a volumeClaimTemplate and mount it at the data directory",
};

pub const SNAPSHOT_DELETION_POLICY: Rule = Rule {
    id: "STATOR-STO-006",
    name: "snapshot-deletion-policy-delete",
    severity: Severity::Warning,
    summary: "A VolumeSnapshotClass has `deletionPolicy: Delete`: deleting the VolumeSnapshot object (or its namespace) destroys the backup.",
    rationale: "Guide (backup: storage snapshots; storage design): backups and production data are retained, not deleted with an object.",
    fix: "set deletionPolicy: Retain and expire snapshots by policy",
};

pub const HOST_PATH_VOLUME: Rule = Rule {
    id: "STATOR-STO-007",
    name: "host-path-volume",
    severity: Severity::Warning,
    summary: "A database pod mounts a hostPath volume: the data is tied to one node, outside any PersistentVolume, snapshot or reclaim policy.",
    rationale: "Guide (storage design): StorageClass + dynamic provisioning; PVCs keep data across rescheduling.",
    fix: "use a PersistentVolumeClaim (a local PersistentVolume if the disk must be node-local)",
};

pub const RULES: &[&Rule] = &[
    &SHARED_ACCESS_MODE,
    &NO_VOLUME_EXPANSION,
    &RECLAIM_POLICY_DELETE,
    &IMMEDIATE_BINDING,
    &EPHEMERAL_DATA,
    &SNAPSHOT_DELETION_POLICY,
    &HOST_PATH_VOLUME,
];

pub fn check(manifests: &Manifests, out: &mut Vec<Finding>) {
    for workload in manifests.databases() {
        check_access_modes(manifests, &workload, out);
        check_persistence(&workload, out);
        for volume in workload.pod.get("volumes").map(Node::items).unwrap_or(&[]) {
            if volume.get("hostPath").is_some() {
                let name = volume.get("name").and_then(Node::text).unwrap_or_default();
                out.push(HOST_PATH_VOLUME.at(
                    workload.object,
                    volume.line_of("hostPath"),
                    format!("volume \"{name}\" is a hostPath"),
                ));
            }
        }
    }
    for class in manifests.of_kind("StorageClass") {
        check_storage_class(class, out);
    }
    for volume in manifests.of_kind("PersistentVolume") {
        if let Some(policy) = volume.node.path(&["spec", "persistentVolumeReclaimPolicy"])
            && policy.as_str() == Some("Delete")
        {
            let line = volume
                .node
                .get("spec")
                .map_or(volume.line, |s| s.line_of("persistentVolumeReclaimPolicy"));
            out.push(RECLAIM_POLICY_DELETE.at(
                volume,
                line,
                "the volume is deleted with its claim".into(),
            ));
        }
    }
    for class in manifests.of_kind("VolumeSnapshotClass") {
        if class.node.get("deletionPolicy").and_then(Node::as_str) == Some("Delete") {
            out.push(SNAPSHOT_DELETION_POLICY.at(
                class,
                class.node.line_of("deletionPolicy"),
                "snapshots of this class are deleted with their VolumeSnapshot objects".into(),
            ));
        }
    }
}

/// Findings for a claim spec whose access modes are not single-writer.
fn check_claim_spec(object: &Object, spec: &Node, what: &str, out: &mut Vec<Finding>) {
    let Some(modes) = spec.get("accessModes") else {
        return;
    };
    for mode in modes.items() {
        let mode = mode.text().unwrap_or_default();
        if !matches!(mode.as_str(), "ReadWriteOnce" | "ReadWriteOncePod") {
            out.push(SHARED_ACCESS_MODE.at(
                object,
                spec.line_of("accessModes"),
                format!("{what} asks for {mode}"),
            ));
        }
    }
}

fn check_access_modes(manifests: &Manifests, workload: &Workload<'_>, out: &mut Vec<Finding>) {
    let templates = workload.object.node.path(&["spec", "volumeClaimTemplates"]);
    for template in templates.map(Node::items).unwrap_or(&[]) {
        let name = template
            .path(&["metadata", "name"])
            .and_then(Node::text)
            .unwrap_or_default();
        if let Some(spec) = template.get("spec") {
            check_claim_spec(
                workload.object,
                spec,
                &format!("volume claim template \"{name}\""),
                out,
            );
        }
    }
    for volume in workload.pod.get("volumes").map(Node::items).unwrap_or(&[]) {
        let Some(claim) = volume
            .path(&["persistentVolumeClaim", "claimName"])
            .and_then(Node::text)
        else {
            continue;
        };
        for pvc in manifests.of_kind("PersistentVolumeClaim") {
            if pvc.name == claim
                && pvc.shares_namespace_with(workload.object)
                && let Some(spec) = pvc.spec()
            {
                check_claim_spec(
                    pvc,
                    spec,
                    &format!("the claim mounted by {}", workload.object.display()),
                    out,
                );
            }
        }
    }
}

fn check_persistence(workload: &Workload<'_>, out: &mut Vec<Finding>) {
    let mut persistent: Vec<String> = workload
        .object
        .node
        .path(&["spec", "volumeClaimTemplates"])
        .map(Node::items)
        .unwrap_or(&[])
        .iter()
        .filter_map(|t| t.path(&["metadata", "name"]).and_then(Node::text))
        .collect();
    for volume in workload.pod.get("volumes").map(Node::items).unwrap_or(&[]) {
        if volume.get("persistentVolumeClaim").is_some()
            && let Some(name) = volume.get("name").and_then(Node::text)
        {
            persistent.push(name);
        }
    }
    for container in workload.database_containers() {
        let mounts_persistent = container
            .node
            .get("volumeMounts")
            .map(Node::items)
            .unwrap_or(&[])
            .iter()
            .filter_map(|m| m.get("name").and_then(Node::text))
            .any(|name| persistent.contains(&name));
        if !mounts_persistent {
            out.push(EPHEMERAL_DATA.at(
                workload.object,
                container.line_of("volumeMounts"),
                format!("{} mounts no persistent volume", container.describe()),
            ));
        }
    }
}

fn check_storage_class(class: &Object, out: &mut Vec<Finding>) {
    let node = &class.node;
    if node.get("allowVolumeExpansion").and_then(Node::as_bool) != Some(true) {
        out.push(
            NO_VOLUME_EXPANSION.at(
                class,
                node.entry("allowVolumeExpansion")
                    .map_or(class.line, |e| e.key_line),
                "volumes of this class cannot be expanded when the database disk fills".into(),
            ),
        );
    }
    let policy = node
        .get("reclaimPolicy")
        .and_then(Node::as_str)
        .unwrap_or("Delete");
    if policy == "Delete" {
        out.push(
            RECLAIM_POLICY_DELETE.at(
                class,
                node.entry("reclaimPolicy")
                    .map_or(class.line, |e| e.key_line),
                "volumes of this class are deleted with their claims (reclaimPolicy Delete)".into(),
            ),
        );
    }
    let binding = node
        .get("volumeBindingMode")
        .and_then(Node::as_str)
        .unwrap_or("Immediate");
    if binding != "WaitForFirstConsumer" {
        out.push(
            IMMEDIATE_BINDING.at(
                class,
                node.entry("volumeBindingMode")
                    .map_or(class.line, |e| e.key_line),
                format!("volumeBindingMode is {binding}"),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_support::{GOOD_DATABASE, lines_of, lint};

    #[test]
    fn shared_access_modes_are_errors_on_templates_and_mounted_claims() {
        let yaml = GOOD_DATABASE.replace(
            "accessModes: [ReadWriteOnce]",
            "accessModes: [ReadWriteMany]",
        );
        assert_eq!(lines_of(&lint(&yaml), SHARED_ACCESS_MODE.id), vec![51]);
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: db}\nspec:\n  template:\n    spec:\n      containers:\n      - name: db\n        image: mariadb:11\n        volumeMounts: [{name: data, mountPath: /var/lib/mysql}]\n      volumes:\n      - {name: data, persistentVolumeClaim: {claimName: db-data}}\n---\nkind: PersistentVolumeClaim\napiVersion: v1\nmetadata: {name: db-data}\nspec:\n  accessModes: [ReadWriteOnce, ReadWriteMany]\n";
        let findings = lint(deployment);
        assert_eq!(lines_of(&findings, SHARED_ACCESS_MODE.id), vec![18]);
        assert_eq!(lines_of(&findings, EPHEMERAL_DATA.id), Vec::<usize>::new());
    }

    #[test]
    fn a_database_without_persistent_volume_loses_its_data() {
        let yaml = GOOD_DATABASE.replace("{name: data, mountPath", "{name: scratch, mountPath");
        assert_eq!(lines_of(&lint(&yaml), EPHEMERAL_DATA.id), vec![46]);
    }

    #[test]
    fn host_path_volumes_are_reported() {
        let yaml = GOOD_DATABASE.replace(
            "      containers:\n",
            "      volumes:\n      - name: logs\n        hostPath: {path: /var/log/db}\n      containers:\n",
        );
        assert_eq!(lines_of(&lint(&yaml), HOST_PATH_VOLUME.id), vec![28]);
    }

    #[test]
    fn storage_class_policies_are_checked() {
        let weak = "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata:\n  name: fast\nprovisioner: ebs.csi.aws.com\n";
        let findings = lint(weak);
        assert_eq!(lines_of(&findings, NO_VOLUME_EXPANSION.id), vec![4]);
        assert_eq!(lines_of(&findings, RECLAIM_POLICY_DELETE.id), vec![4]);
        assert_eq!(lines_of(&findings, IMMEDIATE_BINDING.id), vec![4]);
        let good = format!(
            "{weak}allowVolumeExpansion: true\nreclaimPolicy: Retain\nvolumeBindingMode: WaitForFirstConsumer\n"
        );
        assert_eq!(lint(&good), vec![]);
        let explicit = format!("{weak}allowVolumeExpansion: false\n");
        assert_eq!(lines_of(&lint(&explicit), NO_VOLUME_EXPANSION.id), vec![6]);
    }

    #[test]
    fn snapshot_classes_should_retain() {
        let yaml = "apiVersion: snapshot.storage.k8s.io/v1\nkind: VolumeSnapshotClass\nmetadata: { name: c }\ndriver: d\ndeletionPolicy: Delete\n";
        assert_eq!(lines_of(&lint(yaml), SNAPSHOT_DELETION_POLICY.id), vec![5]);
        assert_eq!(lint(&yaml.replace("Delete", "Retain")), vec![]);
    }
}
