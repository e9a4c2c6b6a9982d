//! Cascade persistence.
