#!/usr/bin/env python3
"""Writes a crate with one N-task `dag!` (chain + fan-in), to time its compilation.

    python3 tests/macro-ui/scripts/gen_big_dag.py /tmp/dag200 200
    cd /tmp/dag200 && cargo build && touch src/main.rs && time cargo build
"""
import os
import sys

out, n = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 200
workspace = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
os.makedirs(os.path.join(out, "src"), exist_ok=True)
lines = [
    "use cascade_core::{TaskContext, TaskResult, dag};",
    "",
    "async fn work(_ctx: TaskContext) -> TaskResult {",
    "    Ok(serde_json::Value::Null)",
    "}",
]
for i in range(0, n, 10):
    lines.append(f"async fn h{i}(_ctx: TaskContext) -> TaskResult {{ Ok(serde_json::Value::Null) }}")
lines.append("dag! {\n    name: big,\n    tasks: {")
for i in range(n):
    deps = [f"t{i - 1}"] if i > 0 else []
    if i > 1 and i // 2 < i - 1:
        deps.append(f"t{i // 2}")
    run = f"h{i}" if i % 10 == 0 else "work"
    lines.append(f"        t{i}: {{ run: {run}, depends_on: [{', '.join(deps)}], retries: 2, timeout: 60 }},")
lines.append(f"    }}\n}}\n\nfn main() {{\n    assert_eq!(big().plan().tasks().len(), {n});\n}}")
with open(os.path.join(out, "src", "main.rs"), "w") as f:
    f.write("\n".join(lines) + "\n")
with open(os.path.join(out, "Cargo.toml"), "w") as f:
    f.write(
        f'[package]\nname = "dag{n}"\nversion = "0.1.0"\nedition = "2024"\npublish = false\n\n'
        f'[dependencies]\ncascade-core = {{ path = "{workspace}/cascade-core" }}\nserde_json = "1"\n\n[workspace]\n'
    )
