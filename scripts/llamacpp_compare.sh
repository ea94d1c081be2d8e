#!/usr/bin/env bash
# Exported GGUF files in llama.cpp vs our evaluator, on the same chunks (docs/results/llamacpp-gguf.md).
#
#   scripts/llamacpp_compare.sh [SEARCHED.toml] [OUT_DIR]
#
# For SmolLM2 Q4_1 (L = 8192) on Emma, one chunk of C tokens (llama-perplexity -c C --chunks 1; ours
# `longrope ppl --windows chunks --max-sliding-count 1 --add-bos false`):
#   1. unscaled at 4k and 8k: the tolerance between llama.cpp's Q4_1 kernels and our f32 computation;
#   2. PI (s = 2) at 16k: the export in llama.cpp vs llama.cpp's own `--rope-scaling linear --rope-scale 2` on
#      the original file (must be equal), and vs ours;
#   3. YaRN (s = 2) at 16k: the export vs llama.cpp's own `--rope-scaling yarn`, and vs ours;
#   4. searched LongRoPE factors (SEARCHED.toml, default: the 16k search of configs/experiments/finetune-smollm2.toml)
#      at 16k: the export in llama.cpp vs ours.
# Needs `make assets`, `scripts/setup.sh llamacpp` and `cargo build --release -p longrope`. Prints one Markdown
# table; every run's output is kept in OUT_DIR (default runs/llamacpp-compare).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
SEARCHED="${1:-$(ls -d runs/finetune-smollm2/searches/longrope-16k-*/best_scaling.toml 2>/dev/null | head -1)}"
OUT="${2:-runs/llamacpp-compare}"
LONGROPE="${LONGROPE:-target/release/longrope}"
LLAMA="${LLAMA_PERPLEXITY:-.cache/llamacpp/bin/llama-perplexity}"
MODEL=.cache/assets/models/SmolLM2-135M-Instruct.Q4_1.gguf
TEXT=.cache/assets/corpus/austen-emma.txt
THREADS="${THREADS:-$(nproc)}"
for f in "$LONGROPE" "$LLAMA" "$MODEL" "$TEXT"; do [ -e "$f" ] || { echo "missing: $f" >&2; exit 1; }; done
[ -n "$SEARCHED" ] && [ -f "$SEARCHED" ] || { echo "missing searched factors (SEARCHED.toml): '$SEARCHED'" >&2; exit 1; }
mkdir -p "$OUT"

llama() { # name, -c, model, extra options...
    local name=$1 c=$2 m=$3; shift 3
    "$LLAMA" -m "$m" -f "$TEXT" -c "$c" --chunks 1 -t "$THREADS" "$@" > "$OUT/llama-$name.log" 2>&1
    grep -o 'Final estimate: PPL = [0-9.]*' "$OUT/llama-$name.log" | awk '{print $5}'
}
ours() { # name, length, model, extra options...
    local name=$1 c=$2 m=$3; shift 3
    "$LONGROPE" ppl --model "$m" --data "$TEXT" --lengths "$c" --windows chunks --max-sliding-count 1 --samples 1 \
        --add-bos false --json --out "$OUT/ours-$name" "$@" 2> "$OUT/ours-$name.log" \
        | python3 -c 'import json, sys; print(json.load(sys.stdin)["results"][0]["ppl"])'
}
row() { # label, ours, llama.cpp, llama.cpp's own option run (or -)
    python3 -c 'import sys
label, o, l, own = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
print(f"| {label} | {o:.4f} | {l:.4f} | {100 * (o - l) / l:+.2f} % | {own} |")' "$1" "$2" "$3" "$4"
}

"$LONGROPE" export gguf --model "$MODEL" --scaling pi --target 16384 --out "$OUT/pi.gguf" > "$OUT/export-pi.txt"
"$LONGROPE" export gguf --model "$MODEL" --scaling yarn --target 16384 --out "$OUT/yarn.gguf" > "$OUT/export-yarn.txt"
"$LONGROPE" export gguf --model "$MODEL" --scaling "$SEARCHED" --target 16384 --out "$OUT/longrope.gguf" > "$OUT/export-longrope.txt"

echo "| run | ours | llama.cpp | ours vs llama.cpp | llama.cpp's own option on the original file |"
echo "|---|---:|---:|---:|---|"
for c in 4096 8192; do
    row "unscaled, $c" "$(ours none-$c $c "$MODEL")" "$(llama none-$c $c "$MODEL")" "-"
done
own=$(llama linear-16384 16384 "$MODEL" --rope-scaling linear --rope-scale 2)
row "PI export, 16384" "$(ours pi-16384 16384 "$OUT/pi.gguf")" "$(llama pi-16384 16384 "$OUT/pi.gguf")" "linear 2: $own"
own=$(llama yarn-own-16384 16384 "$MODEL" --rope-scaling yarn --rope-scale 2 --yarn-orig-ctx 8192)
row "YaRN export, 16384" "$(ours yarn-16384 16384 "$OUT/yarn.gguf")" "$(llama yarn-16384 16384 "$OUT/yarn.gguf")" "yarn 2: $own"
row "LongRoPE export ($(basename "$(dirname "$SEARCHED")")), 16384" \
    "$(ours longrope-16384 16384 "$OUT/longrope.gguf")" "$(llama longrope-16384 16384 "$OUT/longrope.gguf")" "-"
