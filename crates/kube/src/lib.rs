//! Kubernetes objects for a `Database`.
