//! stator-instance (skeleton; see DESIGN.md).
