//! Image references of database pods.

use crate::finding::{Finding, Rule, Severity};
use crate::object::{Manifests, image_tag};

pub const MUTABLE_IMAGE_TAG: Rule = Rule {
    id: "STATOR-IMG-001",
    name: "mutable-image-tag",
    severity: Severity::Error,
    summary: "A container image has no tag or the tag `latest`: a restart can pull a new major version the data directory cannot be opened with.",
    rationale: "Guide checklist (upgrades): engine upgrades need a compatibility and roll-back plan, which an unpinned image skips.",
    fix: "pin the image to a major version at least (postgres:15, mysql:8.0), or to a digest",
};

pub const RULES: &[&Rule] = &[&MUTABLE_IMAGE_TAG];

pub fn check(manifests: &Manifests, out: &mut Vec<Finding>) {
    for workload in manifests.databases() {
        for container in workload.containers() {
            let Some(image) = container.image() else {
                continue;
            };
            if image.contains('@') {
                continue;
            }
            let problem = match image_tag(image) {
                None => "has no tag (means latest)",
                Some("latest") => "is tagged latest",
                Some(_) => continue,
            };
            out.push(MUTABLE_IMAGE_TAG.at(
                workload.object,
                container.line_of("image"),
                format!("{}: image \"{image}\" {problem}", container.describe()),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::test_support::{GOOD_DATABASE, lines_of, lint};

    #[test]
    fn latest_and_untagged_images_are_errors() {
        for image in ["postgres", "postgres:latest", "registry:5000/postgres"] {
            let yaml = GOOD_DATABASE.replace("image: postgres:15", &format!("image: {image}"));
            assert_eq!(
                lines_of(&lint(&yaml), MUTABLE_IMAGE_TAG.id),
                vec![28],
                "{image}"
            );
        }
        let digest = GOOD_DATABASE.replace("image: postgres:15", "image: postgres@sha256:0123");
        assert_eq!(lint(&digest), vec![]);
    }
}
