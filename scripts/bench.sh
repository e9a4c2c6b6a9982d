#!/usr/bin/env bash
# Runs Cascade's benchmark table (see BENCHMARKS.md) and writes the raw JSON
# lines to target/bench-results.jsonl, or to the path given as $1.
#
#   scripts/bench.sh [OUT.jsonl]
#
# Environment:
#   DATABASE_URL      PostgreSQL server to create scratch databases on
#                     (default postgres://root@127.0.0.1:5432/test)
#   REPEAT            runs per row, each in its own process (default 3)
#   BACKENDS          "sqlite postgres" (default) or one of them
#   PGBENCH_SECONDS   length of the pgbench -N ceiling run (default 20; 0 skips it)
#   CARGO_TARGET_DIR  where to build (default ./target)
#   BENCH_COMMIT      commit to record (default: git rev-parse HEAD)
#   DIST_WORKERS      worker-process counts for the distributed rows
#                     (default "1 2 4"; empty skips them; PostgreSQL only)
#   DIST_SIZE         fan-out width of the distributed rows (default 10000)
#   DIST_REPEAT       runs per distributed row (default 1: they are slow)
#
# Every engine run uses a fresh database (a temporary SQLite file, or a
# PostgreSQL database created and dropped by the bench binary). The file gets
# one line per run, plus a "machine" line and, for PostgreSQL, a "pgbench"
# line each for this machine's simple-update tps with 8 clients (-c 8 -j 2)
# and with 1, measured in the same session.
#
# Distributed rows: `bench --distributed-workers K` runs the engine as
# Role::Scheduler and starts K worker processes (copies of itself with the
# default capacity), stopped with SIGTERM after each run; their lines add the
# CPU time of the scheduler, each worker, PostgreSQL and the whole machine, and
# the database's commits (see BENCHMARKS.md).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT=${1:-target/bench-results.jsonl}
REPEAT=${REPEAT:-3}
BACKENDS=${BACKENDS:-"sqlite postgres"}
PGBENCH_SECONDS=${PGBENCH_SECONDS:-20}
DIST_WORKERS=${DIST_WORKERS-"1 2 4"}
DIST_SIZE=${DIST_SIZE:-10000}
DIST_REPEAT=${DIST_REPEAT:-1}
export DATABASE_URL=${DATABASE_URL:-postgres://root@127.0.0.1:5432/test}
TARGET=${CARGO_TARGET_DIR:-target}

echo "bench: building (release)…" >&2
cargo build --release -p cascade-examples --example bench >&2
BENCH="$TARGET/release/examples/bench"
mkdir -p "$(dirname "$OUT")"
: >"$OUT"

json_str() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$1"; }

# --- the machine ---------------------------------------------------------------
model=$(lscpu | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
mem_kb=$(sed -n 's/^MemTotal:[[:space:]]*\([0-9]*\) kB/\1/p' /proc/meminfo)
pg_version=null pg_fsync=null pg_sync=null
if [[ $BACKENDS == *postgres* ]]; then
    pg() { psql "$DATABASE_URL" -X -A -t -q -c "$1"; }
    pg_version=$(json_str "$(pg 'SHOW server_version')")
    pg_fsync=$(json_str "$(pg 'SHOW fsync')")
    pg_sync=$(json_str "$(pg 'SHOW synchronous_commit')")
fi
printf '{"scenario":"machine","cores":%s,"cpu":%s,"mem_gb":%s,"postgres_version":%s,"fsync":%s,"synchronous_commit":%s,"commit":%s,"loadavg":%s}\n' \
    "$(nproc)" "$(json_str "$model")" "$((mem_kb / 1024 / 1024))" "$pg_version" "$pg_fsync" "$pg_sync" \
    "$(json_str "${BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}")" \
    "$(json_str "$(cut -d' ' -f1-3 /proc/loadavg)")" | tee -a "$OUT"

# --- the PostgreSQL ceiling: pgbench -N ------------------------------------------
if [[ $BACKENDS == *postgres* && $PGBENCH_SECONDS -gt 0 ]]; then
    scratch="bench_pgbench_$$"
    base=${DATABASE_URL%%\?*}
    scratch_url="${base%/*}/$scratch"
    psql "$DATABASE_URL" -X -q -c "DROP DATABASE IF EXISTS $scratch" >/dev/null
    psql "$DATABASE_URL" -X -q -c "CREATE DATABASE $scratch" >/dev/null
    trap 'psql "$DATABASE_URL" -X -q -c "DROP DATABASE IF EXISTS $scratch WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
    echo "bench: pgbench -i -s 10; pgbench -N -c 8 -j 2 and -c 1, $PGBENCH_SECONDS s each…" >&2
    pgbench -i -s 10 -q "$scratch_url" >/dev/null 2>&1
    # -c 8: the server's write ceiling. -c 1: one sequential writer, which is
    # what a single committing scheduler is.
    for clients in 8 1; do
        report=$(pgbench -N -c "$clients" -j "$((clients < 2 ? 1 : 2))" -T "$PGBENCH_SECONDS" "$scratch_url" 2>/dev/null)
        tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$report" | head -1)
        latency=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$report" | head -1)
        printf '{"scenario":"pgbench","backend":"postgres","mode":"-N -c %s -T %s","clients":%s,"scale":10,"tps":%s,"latency_ms":%s}\n' \
            "$clients" "$PGBENCH_SECONDS" "$clients" "${tps:-null}" "${latency:-null}" | tee -a "$OUT"
    done
    psql "$DATABASE_URL" -X -q -c "DROP DATABASE IF EXISTS $scratch WITH (FORCE)" >/dev/null
    trap - EXIT
fi

# --- the table -----------------------------------------------------------------
run() {
    local backend=$1
    shift
    for ((i = 0; i < REPEAT; i++)); do
        echo "bench: $backend $*" >&2
        "$BENCH" --backend "$backend" "$@" | tee -a "$OUT"
    done
}

for backend in $BACKENDS; do
    run "$backend" --scenario chain --size 100
    run "$backend" --scenario chain --size 1000
    run "$backend" --scenario chain --size 40 --task-ms 10
    for n in 100 1000 10000; do
        run "$backend" --scenario fanout --size "$n"
        run "$backend" --scenario fanout --size "$n" --workers 64
    done
    run "$backend" --scenario etl --jobs 1
    run "$backend" --scenario etl --jobs 100
done
REPEAT=1 run sqlite --scenario validate --size 10000
REPEAT=1 run sqlite --scenario validate --size 100000
if [[ $BACKENDS == *postgres* ]]; then
    for k in $DIST_WORKERS; do
        REPEAT=$DIST_REPEAT run postgres --scenario fanout --size "$DIST_SIZE" --distributed-workers "$k"
    done
fi

# --- medians -------------------------------------------------------------------
python3 - "$OUT" >&2 <<'EOF' || true
import json, statistics, sys
rows, order = {}, []
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r["scenario"] in ("machine", "pgbench"):
        continue
    key = (r["backend"] or "-", r["scenario"], r["size"], r["jobs"], r["task_ms"], r["workers"],
           r.get("distributed_workers"))
    if key not in rows:
        order.append(key)
    rows.setdefault(key, []).append(r)
def med(rs, field):
    xs = [r[field] for r in rs if r.get(field) is not None]
    return statistics.median(xs) if xs else None
print(f"{'backend':8} {'scenario':8} {'size':>6} {'jobs':>4} {'ms/t':>4} {'wrk':>3} {'K':>2} {'n':>2} "
      f"{'wall_ms':>9} {'tasks/s':>9} {'p50_us':>9} {'p99_us':>9} {'rss_mb':>7} {'B/task':>7}")
for key in order:
    rs = rows[key]
    def f(field, fmt="{:.1f}"):
        v = med(rs, field)
        return "-" if v is None else fmt.format(v)
    b, s, n, j, m, w, k = key
    print(f"{b:8} {s:8} {n:>6} {j:>4} {m:>4} {str(w):>3} {str(k or '-'):>2} {len(rs):>2} {f('wall_ms'):>9} "
          f"{f('tasks_per_sec', '{:.0f}'):>9} {f('dispatch_p50_us'):>9} {f('dispatch_p99_us'):>9} "
          f"{f('peak_rss_mb'):>7} {f('bytes_per_task', '{:.0f}'):>7}")
dist = [key for key in order if key[6]]
if dist:
    print("\ndistributed (CPU ms during the run; machine = busy of all cores / cores × wall):")
    print(f"{'K':>2} {'n':>2} {'tasks/s':>8} {'wall_ms':>9} {'sched':>7} {'workers (each)':>22} "
          f"{'postgres':>9} {'machine':>12} {'commits/s':>9} {'commits/task':>12}")
    for key in dist:
        rs = sorted(rows[key], key=lambda r: r["wall_ms"])
        r = rs[len(rs) // 2]
        busy, total = r.get("cpu_system_busy_ms"), r.get("cpu_system_total_ms")
        machine = f"{100 * busy / total:.0f}%" if busy and total else "-"
        workers = "/".join(f"{w:.0f}" for w in r.get("cpu_workers_ms", []))
        commits = r.get("commits")
        per_task = f"{commits / r['tasks']:.1f}" if commits else "-"
        print(f"{key[6]:>2} {len(rs):>2} {r['tasks_per_sec']:>8.0f} {r['wall_ms']:>9.1f} "
              f"{r.get('cpu_scheduler_ms', 0):>7.0f} {workers:>22} {r.get('cpu_postgres_ms', 0):>9.0f} "
              f"{machine:>12} {r.get('commits_per_sec') or 0:>9.0f} {per_task:>12}")
EOF
echo "bench: wrote $OUT" >&2
