//! Cascade IR.
