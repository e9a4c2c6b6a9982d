//! The dag! macro.
use proc_macro as _;
