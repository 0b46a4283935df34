//! Kubernetes objects as rules see them: kind, name, namespace, the pod template of workloads,
//! their containers, label selectors, and which workloads are databases.

use std::path::{Path, PathBuf};

use crate::node::{Node, Value};

/// One Kubernetes object from one YAML document.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub file: PathBuf,
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    /// The line of `metadata.name` (or of the document): where whole-object findings point.
    pub line: usize,
    pub node: Node,
}

impl Object {
    /// Adds `doc` to `out` when it is a Kubernetes object (a mapping with a `kind`), unpacking
    /// `kind: List`.
    pub fn collect(file: &Path, doc: Node, out: &mut Vec<Object>) {
        let Some(kind) = doc.get("kind").and_then(Node::as_str).map(str::to_string) else {
            return;
        };
        if kind == "List" {
            if let Some(Node {
                value: Value::Seq(items),
                ..
            }) = doc.get("items")
            {
                for item in items.clone() {
                    Object::collect(file, item, out);
                }
            }
            return;
        }
        let metadata = doc.get("metadata");
        let name = metadata
            .and_then(|m| m.get("name"))
            .and_then(Node::text)
            .unwrap_or_else(|| "(unnamed)".to_string());
        let namespace = metadata
            .and_then(|m| m.get("namespace"))
            .and_then(Node::text);
        let line = metadata.map_or(doc.line, |m| m.line_of("name"));
        out.push(Object {
            file: file.to_path_buf(),
            kind,
            name,
            namespace,
            line,
            node: doc,
        });
    }

    /// `Kind/name`, as kubectl names objects.
    pub fn display(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }

    pub fn spec(&self) -> Option<&Node> {
        self.node.get("spec")
    }

    /// Whether two objects can refer to each other: same namespace, or one of them leaves
    /// it to `kubectl apply -n`.
    pub fn shares_namespace_with(&self, other: &Object) -> bool {
        match (&self.namespace, &other.namespace) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        }
    }
}

/// All objects of one lint run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Manifests {
    pub objects: Vec<Object>,
}

impl Manifests {
    pub fn of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a Object> + 'a {
        self.objects.iter().filter(move |o| o.kind == kind)
    }

    /// Every object that runs pods, with its pod template.
    pub fn workloads(&self) -> Vec<Workload<'_>> {
        self.objects.iter().filter_map(Workload::of).collect()
    }

    /// Workloads that run a database (see [`Workload::is_database`]).
    pub fn databases(&self) -> Vec<Workload<'_>> {
        self.workloads()
            .into_iter()
            .filter(Workload::is_database)
            .collect()
    }
}

/// An object that runs pods, seen through its pod template.
#[derive(Debug, Clone, Copy)]
pub struct Workload<'a> {
    pub object: &'a Object,
    /// The pod template's `metadata` (or the Pod's own).
    pub pod_metadata: Option<&'a Node>,
    /// The pod spec.
    pub pod: &'a Node,
    /// The line of the pod spec's `spec:` key: where findings about a missing pod field point.
    pub pod_line: usize,
}

impl<'a> Workload<'a> {
    pub fn of(object: &'a Object) -> Option<Workload<'a>> {
        let node = &object.node;
        let template = match object.kind.as_str() {
            "Pod" => {
                return Some(Workload {
                    object,
                    pod_metadata: node.get("metadata"),
                    pod: node.get("spec")?,
                    pod_line: node.line_of("spec"),
                });
            }
            "Deployment"
            | "StatefulSet"
            | "DaemonSet"
            | "ReplicaSet"
            | "ReplicationController"
            | "Job" => node.path(&["spec", "template"])?,
            "CronJob" => node.path(&["spec", "jobTemplate", "spec", "template"])?,
            _ => return None,
        };
        Some(Workload {
            object,
            pod_metadata: template.get("metadata"),
            pod: template.get("spec")?,
            pod_line: template.line_of("spec"),
        })
    }

    /// Batch workloads (Jobs) run to completion: no probes, disruption budgets or replicas.
    pub fn is_long_running(&self) -> bool {
        !matches!(self.object.kind.as_str(), "Job" | "CronJob")
    }

    /// A long-running workload is a database when one of its containers runs a database
    /// image (PostgreSQL, MySQL, MariaDB, Percona, …) or when it is a StatefulSet with
    /// `volumeClaimTemplates`.
    pub fn is_database(&self) -> bool {
        if !self.is_long_running() {
            return false;
        }
        let stateful = self.object.kind == "StatefulSet"
            && self
                .object
                .node
                .path(&["spec", "volumeClaimTemplates"])
                .is_some_and(|v| !v.items().is_empty());
        stateful
            || self
                .containers()
                .iter()
                .any(|c| c.image().is_some_and(is_database_image))
    }

    /// The replica count (1 when absent, as Kubernetes defaults it; 1 for a Pod).
    pub fn replicas(&self) -> i64 {
        self.object
            .node
            .path(&["spec", "replicas"])
            .and_then(Node::as_i64)
            .unwrap_or(1)
    }

    /// The pod's labels.
    pub fn labels(&self) -> Vec<(String, String)> {
        labels_of(self.pod_metadata.and_then(|m| m.get("labels")))
    }

    /// Regular containers first, then init containers.
    pub fn containers(&self) -> Vec<Container<'a>> {
        let regular = self.pod.get("containers").map(Node::items).unwrap_or(&[]);
        let init = self
            .pod
            .get("initContainers")
            .map(Node::items)
            .unwrap_or(&[]);
        regular
            .iter()
            .map(|node| Container { node, init: false })
            .chain(init.iter().map(|node| Container { node, init: true }))
            .collect()
    }

    /// The containers that run the database: those with a database image, or every regular
    /// container when none has one (a StatefulSet with volume claims running a custom image).
    pub fn database_containers(&self) -> Vec<Container<'a>> {
        let regular: Vec<_> = self.containers().into_iter().filter(|c| !c.init).collect();
        let by_image: Vec<_> = regular
            .iter()
            .copied()
            .filter(|c| c.image().is_some_and(is_database_image))
            .collect();
        if by_image.is_empty() {
            regular
        } else {
            by_image
        }
    }

    /// The line of the pod spec key `key`, or of the pod spec's `spec:` key.
    pub fn pod_line_of(&self, key: &str) -> usize {
        self.pod.entry(key).map_or(self.pod_line, |e| e.key_line)
    }
}

/// One container of a pod spec.
#[derive(Debug, Clone, Copy)]
pub struct Container<'a> {
    pub node: &'a Node,
    pub init: bool,
}

impl<'a> Container<'a> {
    pub fn name(&self) -> String {
        self.node
            .get("name")
            .and_then(Node::text)
            .unwrap_or_else(|| "(unnamed)".into())
    }

    /// `container "mysql"` or `init container "copy"`, for messages.
    pub fn describe(&self) -> String {
        let what = if self.init {
            "init container"
        } else {
            "container"
        };
        format!("{what} \"{}\"", self.name())
    }

    pub fn image(&self) -> Option<&'a str> {
        self.node.get("image").and_then(Node::as_str)
    }

    /// The line the container starts on (its first key, usually `- name:`).
    pub fn line(&self) -> usize {
        self.node.line
    }

    pub fn line_of(&self, key: &str) -> usize {
        self.node.line_of(key)
    }
}

/// Whether an image reference names a database server image. Exporters and other sidecars
/// named after a database (`postgres-exporter`, `mysqld-exporter`) are not databases.
pub fn is_database_image(image: &str) -> bool {
    let repository = image_repository(image);
    let base = repository.rsplit('/').next().unwrap_or(repository);
    if base.contains("exporter") || base.contains("operator") || base.contains("proxy") {
        return false;
    }
    const PREFIXES: [&str; 8] = [
        "postgres",
        "postgis",
        "timescaledb",
        "pgvector",
        "mysql",
        "mariadb",
        "percona",
        "mysql-server",
    ];
    PREFIXES.iter().any(|p| base.starts_with(p))
}

/// The image reference without tag or digest (`registry:5000/a/b:tag@sha256:…` → `registry:5000/a/b`).
pub fn image_repository(image: &str) -> &str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    match without_digest[slash..].find(':') {
        Some(colon) => &without_digest[..slash + colon],
        None => without_digest,
    }
}

/// The tag of an image reference, if any (a registry port is not a tag).
pub fn image_tag(image: &str) -> Option<&str> {
    let without_digest = image.split('@').next().unwrap_or(image);
    let slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    without_digest[slash..]
        .find(':')
        .map(|colon| &without_digest[slash + colon + 1..])
}

pub fn labels_of(node: Option<&Node>) -> Vec<(String, String)> {
    node.map(Node::entries)
        .unwrap_or(&[])
        .iter()
        .map(|e| (e.key.clone(), e.value.text().unwrap_or_default()))
        .collect()
}

/// A Kubernetes label selector (`matchLabels` and `matchExpressions`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    match_labels: Vec<(String, String)>,
    expressions: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    operator: String,
    values: Vec<String>,
}

impl Selector {
    /// Reads a `LabelSelector`. An empty selector (`{}`) selects everything.
    pub fn of(node: &Node) -> Selector {
        let expressions = node
            .get("matchExpressions")
            .map(Node::items)
            .unwrap_or(&[])
            .iter()
            .map(|e| Requirement {
                key: e.get("key").and_then(Node::text).unwrap_or_default(),
                operator: e.get("operator").and_then(Node::text).unwrap_or_default(),
                values: e
                    .get("values")
                    .map(Node::items)
                    .unwrap_or(&[])
                    .iter()
                    .filter_map(Node::text)
                    .collect(),
            })
            .collect();
        Selector {
            match_labels: labels_of(node.get("matchLabels")),
            expressions,
        }
    }

    /// A plain label map used as a selector (a Service's `spec.selector`).
    pub fn of_map(node: &Node) -> Selector {
        Selector {
            match_labels: labels_of(Some(node)),
            expressions: Vec::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.expressions.is_empty()
    }

    pub fn matches(&self, labels: &[(String, String)]) -> bool {
        let value = |key: &str| labels.iter().find(|(k, _)| k == key).map(|(_, v)| v);
        self.match_labels.iter().all(|(k, v)| value(k) == Some(v))
            && self.expressions.iter().all(|r| {
                let v = value(&r.key);
                match r.operator.as_str() {
                    "In" => v.is_some_and(|v| r.values.contains(v)),
                    "NotIn" => v.is_none_or(|v| !r.values.contains(v)),
                    "Exists" => v.is_some(),
                    "DoesNotExist" => v.is_none(),
                    _ => false,
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn database_images_are_recognised_and_sidecars_are_not() {
        for image in [
            "postgres:15",
            "docker.io/library/postgres:15.4@sha256:abc",
            "bitnami/postgresql:16",
            "mysql:8.0",
            "mariadb:11",
            "percona/percona-server:8.0",
            "registry:5000/team/mariadb",
        ] {
            assert!(is_database_image(image), "{image}");
        }
        for image in [
            "prometheuscommunity/postgres-exporter:v0.15",
            "busybox:1.36",
            "stator:0.1",
        ] {
            assert!(!is_database_image(image), "{image}");
        }
    }

    #[test]
    fn image_tags_ignore_registry_ports_and_digests() {
        assert_eq!(image_tag("postgres:15"), Some("15"));
        assert_eq!(image_tag("registry:5000/postgres"), None);
        assert_eq!(image_tag("registry:5000/postgres:16@sha256:ab"), Some("16"));
        assert_eq!(
            image_repository("registry:5000/postgres:16"),
            "registry:5000/postgres"
        );
    }

    #[test]
    fn selectors_follow_kubernetes_semantics() {
        let node = crate::node::parse_documents(
            "matchLabels: {app: db}\nmatchExpressions:\n- {key: tier, operator: In, values: [a, b]}\n- {key: x, operator: DoesNotExist}\n",
        )
        .unwrap()
        .remove(0);
        let selector = Selector::of(&node);
        assert!(selector.matches(&labels(&[("app", "db"), ("tier", "a")])));
        assert!(!selector.matches(&labels(&[("app", "db"), ("tier", "c")])));
        assert!(!selector.matches(&labels(&[("app", "db"), ("tier", "a"), ("x", "1")])));
        assert!(Selector::of_map(&crate::node::parse_documents("{}").unwrap()[0]).matches(&[]));
    }
}
