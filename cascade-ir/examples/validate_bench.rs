//! Times `serde_json` parsing plus validation of large generated DAGs.
//!
//! ```text
//! cargo run --release -p cascade-ir --example validate_bench [N ...]
//! ```
//!
//! Each task `i` depends on up to two earlier tasks (`i - 1` and `i / 2`), a
//! mix of a long chain and fan-in.
#![allow(clippy::print_stdout)]

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use cascade_ir::{DagIr, ValidDag, validate};

fn generate(n: usize) -> String {
    let mut json = String::with_capacity(n * 80);
    json.push_str(r#"{"ir_version":1,"name":"bench","defaults":{"retries":1},"tasks":["#);
    for i in 0..n {
        if i > 0 {
            json.push(',');
        }
        let _ = write!(json, r#"{{"id":"t{i}","handler":"work","depends_on":["#);
        if i > 0 {
            let _ = write!(json, r#""t{}""#, i - 1);
            if i / 2 < i - 1 {
                let _ = write!(json, r#","t{}""#, i / 2);
            }
        }
        json.push_str("]}");
    }
    json.push_str("]}");
    json
}

fn best_of<T>(runs: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..runs {
        let start = Instant::now();
        let value = f();
        best = best.min(start.elapsed());
        last = Some(value);
    }
    (best, last.expect("at least one run"))
}

fn main() {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let sizes = if sizes.is_empty() {
        vec![10_000, 100_000]
    } else {
        sizes
    };
    for n in sizes {
        let json = generate(n);
        let (parse, ir) = best_of(5, || {
            serde_json::from_str::<DagIr>(&json).expect("generated IR parses")
        });
        let (check, dag) = best_of(5, || validate(ir.clone()).expect("generated IR is valid"));
        let (total, _) = best_of(5, || ValidDag::from_json(&json).expect("generated IR is valid"));
        println!(
            "{n:>7} tasks, {:>5} edges, {:>6.1} MiB JSON: parse {:>8.2?}  validate {:>8.2?}  from_json (parse + validate) {:>8.2?}  ({:.0} ns/task)",
            dag.tasks().iter().map(|t| t.dependencies.len()).sum::<usize>(),
            json.len() as f64 / (1024.0 * 1024.0),
            parse,
            check,
            total,
            total.as_nanos() as f64 / n as f64,
        );
    }
}
