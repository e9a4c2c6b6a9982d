//! Times validation of one task depending on every other: a fan-in of
//! `N - 1` edges into one task (default N = 1,000,000).
//!
//! ```text
//! cargo run --release -p cascade-ir --example validate_fan_in [N]
//! ```
#![allow(clippy::print_stdout)]

use std::time::Instant;

use cascade_ir::{DagIr, ValidDag, validate};

fn generate(n: usize) -> String {
    let mut json = String::with_capacity(n * 48);
    json.push_str(r#"{"ir_version":1,"name":"fan_in","tasks":["#);
    for i in 0..n - 1 {
        json.push_str(&format!(r#"{{"id":"t{i}","handler":"work"}},"#));
    }
    json.push_str(r#"{"id":"sink","handler":"work","depends_on":["#);
    for i in 0..n - 1 {
        if i > 0 {
            json.push(',');
        }
        json.push_str(&format!(r#""t{i}""#));
    }
    json.push_str("]}]}");
    json
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|arg| arg.parse().ok())
        .unwrap_or(1_000_000)
        .max(2);
    let json = generate(n);
    let start = Instant::now();
    let ir: DagIr = serde_json::from_str(&json).expect("generated IR parses");
    let parse = start.elapsed();
    let start = Instant::now();
    let dag = validate(ir).expect("generated IR is valid");
    let check = start.elapsed();
    let start = Instant::now();
    let again = ValidDag::from_json(&json).expect("generated IR is valid");
    let total = start.elapsed();
    assert_eq!(dag.hash(), again.hash());
    println!(
        "{n} tasks, sink with {} dependencies, {:.1} MiB JSON: parse {parse:.2?}, validate {check:.2?}, \
         from_json (parse + validate) {total:.2?}",
        dag.tasks()[n - 1].dependencies.len(),
        json.len() as f64 / (1024.0 * 1024.0),
    );
}
