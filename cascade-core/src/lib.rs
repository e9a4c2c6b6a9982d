//! Cascade core.
