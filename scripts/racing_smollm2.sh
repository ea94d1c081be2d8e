#!/usr/bin/env bash
# Racing over documents, measured (docs/results/racing-smollm2.md): the search of
# configs/search/racing-smollm2-1k.toml run once per racing mode (off, exact, observed, paired), one after the
# other, same seed. Prints evaluations per hour, documents read and the best of each run.
# Usage: [MODES="off paired"] scripts/racing_smollm2.sh [OUT_DIR]
#   (default runs/racing; needs `make assets` and a release build; the table covers every mode found in OUT_DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/racing}
bin=${LONGROPE_BIN:-target/release/longrope}
mkdir -p "$out" runs/racing
model=.cache/assets/models/SmolLM2-135M-Instruct.Q4_1.gguf
# The same weights declaring a 256-token trained context: `llama.context_length` (a u32 after its key) = 256.
python3 - "$model" runs/racing/SmolLM2-135M-L256.gguf <<'PY'
import struct, sys
b = bytearray(open(sys.argv[1], 'rb').read())
key = b'llama.context_length'
i = b.find(key)
assert i > 0 and struct.unpack_from('<I', b, i + len(key))[0] == 4, 'llama.context_length is not a u32'
struct.pack_into('<I', b, i + len(key) + 4, 256)
open(sys.argv[2], 'wb').write(b)
PY
for mode in ${MODES:-off exact observed paired}; do
  cfg="$out/racing-$mode.toml"
  sed "s/^racing = .*/racing = \"$mode\"/; s#\.\./\.\./#$(pwd)/#" configs/search/racing-smollm2-1k.toml > "$cfg"
  rm -rf "$out/$mode"
  echo "== racing = $mode: $(date -u +%FT%TZ), load $(cut -d' ' -f1-3 /proc/loadavg)"
  /usr/bin/time -f "wall %e s, max RSS %M KiB" "$bin" search --config "$cfg" --out "$out/$mode" --no-progress
done
python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
rows = {}
for mode in ['off', 'exact', 'observed', 'paired']:
    d = os.path.join(out, mode)
    if not os.path.exists(os.path.join(d, 'cost.json')):
        continue
    h = [json.loads(l) for l in open(os.path.join(d, 'history.jsonl'))]
    cost = json.load(open(os.path.join(d, 'cost.json')))
    best = json.load(open(os.path.join(d, 'best.json')))
    docs = sum(r['raced']['scored'] if r.get('raced') else 5 for r in h)
    wall = cost['wall_seconds']
    rows[mode] = dict(evals=len(h), raced=cost.get('raced', 0), docs=docs, wall=wall, per_hour=len(h) / wall * 3600,
                      best=best['fitness'], factors=open(os.path.join(d, 'best_factors.csv')).read())
base = rows['off']
print('| racing | evaluations | stopped early | documents read | wall s | evaluations / hour | ratio | documents ratio | best fitness | best factors = off |')
print('|---|---:|---:|---:|---:|---:|---:|---:|---:|---|')
for mode, r in rows.items():
    print(f"| {mode} | {r['evals']} | {r['raced']} | {r['docs']} | {r['wall']:.0f} | {r['per_hour']:.1f} | "
          f"{r['per_hour'] / base['per_hour']:.2f}x | {base['docs'] / r['docs']:.2f}x | {r['best']:.6f} | {r['factors'] == base['factors']} |")
PY
