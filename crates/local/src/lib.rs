//! stator-local (skeleton; see DESIGN.md).
