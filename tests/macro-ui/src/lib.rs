//! Compile-pass and compile-fail tests of the `dag!` macro live in `tests/` and `ui/`.
