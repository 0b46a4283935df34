//! Kubernetes for a `Database`: the objects that run it (render), the CRD that defines it, and
//! the install of the operator.
//!
//! This crate turns a validated [`stator_api::Database`] into typed `k8s-openapi` objects and
//! YAML. Rendering is a pure function: no cluster, no files, no clock; the only randomness is in
//! [`render::Credentials::generate`], which the caller invokes and passes in, so the same spec
//! and credentials always give the same bytes. Writing files and talking to a cluster belong to
//! the shells (`crates/cli`, later the operator). It never enables a `k8s-openapi` version
//! feature: the binary chooses the Kubernetes version.
//!
//! # Layout
//! - [`render`]: `Database` → ServiceAccount, Secret, ConfigMap, StatefulSet, Services,
//!   PodDisruptionBudget and NetworkPolicy, and their YAML (one file per kind, or one stream).
//! - [`crd`]: the `CustomResourceDefinition` of `Database`, as YAML.
//! - [`install`]: what `stator install` applies for the operator: the CRD, its Namespace,
//!   ServiceAccount, least-privilege RBAC and a hardened Deployment.
//! - `container`: the hardened-container pieces (security context, probes, resources) that
//!   render and install share.

mod container;
pub mod crd;
pub mod install;
pub mod render;

pub use render::{Credentials, Manifests, RenderError, RenderOptions, render};
