#!/usr/bin/env bash
# The measurement of docs/results/distributed-smollm2.md: the 8-evaluation SmolLM2 search at 16k
# (configs/search/smollm2-16k-8.toml) run by one process with files, then by two `longrope worker`s sharing an
# SQLite study; wall times side by side, and whether the histories and best factors are identical.
# Needs `cargo build --release -p longrope` and the assets (`make assets`). Writes runs/dist/.
set -euo pipefail
cd "$(dirname "$0")/.."
B=target/release/longrope
CFG=configs/search/smollm2-16k-8.toml
R=runs/dist
rm -rf "$R"
mkdir -p "$R"
now() { date +%s.%N; }

echo "== one process (files), OMP threads: default" | tee "$R/times.txt"
t0=$(now)
"$B" search --config "$CFG" --out "$R/one" --no-progress > "$R/one.log" 2>&1
t1=$(now)
echo "one_process_seconds $(echo "$t1 - $t0" | bc)" | tee -a "$R/times.txt"

echo "== two workers (SQLite study), OMP_NUM_THREADS=1 each" | tee -a "$R/times.txt"
t0=$(now)
"$B" search --config "$CFG" --storage "sqlite:$R/s.db" --study smol --detach --workers 0 --out "$R/created" --no-progress \
  > "$R/created.log" 2>&1
t_created=$(now)
OMP_NUM_THREADS=1 "$B" worker --storage "sqlite:$R/s.db" --study smol --idle-timeout 60 > "$R/w1.log" 2>&1 &
p1=$!
OMP_NUM_THREADS=1 "$B" worker --storage "sqlite:$R/s.db" --study smol --idle-timeout 60 > "$R/w2.log" 2>&1 &
p2=$!
wait $p1
wait $p2
t_workers=$(now)
"$B" study export --storage "sqlite:$R/s.db" --study smol --out "$R/two" > "$R/export.log" 2>&1
t1=$(now)
echo "two_workers_seconds $(echo "$t1 - $t0" | bc) (create+propose $(echo "$t_created - $t0" | bc), workers $(echo "$t_workers - $t_created" | bc), export $(echo "$t1 - $t_workers" | bc))" | tee -a "$R/times.txt"
"$B" study status --storage "sqlite:$R/s.db" --study smol > "$R/status.txt"

python3 - "$R" <<'PY' | tee -a "$R/times.txt"
import json, sys
r = sys.argv[1]
def hist(d):
    out = []
    for line in open(f"{r}/{d}/history.jsonl"):
        v = json.loads(line)
        out.append((v["index"], v["generation"], json.dumps(v["candidate"], sort_keys=True), v["fitness"]))
    return out
a, b = hist("one"), hist("two")
print("evaluations", len(a), len(b))
print("histories identical (index, generation, candidate, fitness):", a == b)
fa, fb = open(f"{r}/one/best_factors.csv").read(), open(f"{r}/two/best_factors.csv").read()
print("best_factors.csv identical:", fa == fb)
print("best fitness", min(x[3] for x in a), min(x[3] for x in b))
PY
grep -h "^trial " "$R"/w1.log | sed 's/^/w1: /' | tee -a "$R/times.txt"
grep -h "^trial " "$R"/w2.log | sed 's/^/w2: /' | tee -a "$R/times.txt"
