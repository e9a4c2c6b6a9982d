//! Runnable examples for Cascade; see `examples/`.
