#!/usr/bin/env bash
# The README's main job: run the demo experiment (SmolLM2-135M 8k -> 16k: none / PI / NTK / YaRN / LongRoPE
# perplexity 2k..16k, passkey inside and beyond 8k, a small LongRoPE search) with the release binary.
# Finished cells are cached in runs/demo/cells: running it again continues an interrupted run.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$ROOT/target/release/longrope"
OUT="${OUT:-$ROOT/runs/demo}"
cd "$ROOT"
"$BIN" env
start=$(date +%s)
"$BIN" run configs/experiments/demo.toml --out "$OUT"
echo "== demo finished in $(( $(date +%s) - start )) s =="
echo "report: $OUT/report.md (plots in $OUT/plots/, numbers in $OUT/results.json and $OUT/results.csv)"
# DEMO_PUBLISH=1 copies the report and its plots to docs/results/ (docs/results/demo.md, docs/results/plots/),
# which is how the committed demo report is made.
if [ "${DEMO_PUBLISH:-0}" = "1" ]; then
    mkdir -p "$ROOT/docs/results/plots"
    cp "$OUT/report.md" "$ROOT/docs/results/demo.md"
    cp "$OUT"/plots/*.png "$OUT"/plots/*.svg "$ROOT/docs/results/plots/"
    echo "published: docs/results/demo.md, docs/results/plots/"
fi
