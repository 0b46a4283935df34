//! `stator bench local` (below).
