//! Lint rules over database manifests.
