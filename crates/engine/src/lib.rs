//! stator-engine (skeleton; see DESIGN.md).
