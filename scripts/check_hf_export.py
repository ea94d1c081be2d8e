#!/usr/bin/env python3
"""Check that an exported fine-tune (`longrope finetune` -> OUT/model) loads in HF transformers unchanged and
gives the same NLL as longrope's own evaluator on the same tokens.

    .venv/bin/python scripts/check_hf_export.py OUT/model TEXT_FILE --lengths 4096,16384 \
        [--longrope target/release/longrope] [--tolerance 1e-4] [--dtype f32]

For each length N: the first N tokens of TEXT_FILE (the export's own tokenizer.json, no special tokens) are
scored by HF (`AutoModelForCausalLM.from_pretrained(OUT/model)`, its config's `rope_scaling` applied by HF,
mean next-token cross-entropy over the N - 1 targets) and by
`longrope ppl --model OUT/model --scaling OUT/model/longrope_scaling.toml --truncate --add-bos false`
(one window of the same N tokens); the two mean NLLs must agree to `--tolerance` (relative). Lengths above the
original context exercise HF's switch to the long factors. Prints one line per length and exits 1 on a
mismatch. Needs `make reference` (transformers in the venv).
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import torch


def hf_nll(model, ids):
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model(input_ids=x, labels=x)
    return float(out.loss)


def ours_nll(binary, export, text, n, dtype):
    with tempfile.TemporaryDirectory() as out:
        cmd = [binary, "ppl", "--model", export, "--scaling", os.path.join(export, "longrope_scaling.toml"),
               "--data", text, "--lengths", str(n), "--truncate", "--add-bos", "false", "--samples", "1",
               "--dtype", dtype, "--json", "--out", out]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode != 0:
            sys.exit(f"longrope ppl failed: {res.stderr.strip()}")
        doc = json.loads(res.stdout)
        return math.log(doc["results"][0]["ppl"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("export")
    ap.add_argument("text")
    ap.add_argument("--lengths", default="512")
    ap.add_argument("--longrope", default="target/release/longrope")
    ap.add_argument("--tolerance", type=float, default=1e-4)
    ap.add_argument("--dtype", default="f32")
    a = ap.parse_args()

    from tokenizers import Tokenizer
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    tok = Tokenizer.from_file(os.path.join(a.export, "tokenizer.json"))
    with open(a.text, encoding="utf-8") as f:
        ids_all = tok.encode(f.read(), add_special_tokens=False).ids
    model = AutoModelForCausalLM.from_pretrained(a.export, dtype=torch.float32)
    model.eval()
    cfg = model.config
    rope = getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None)
    kind = (rope or {}).get("rope_type", "default") if isinstance(rope, dict) else "default"
    print(f"{a.export}: HF {type(model).__name__}, rope {kind}, max_position_embeddings {cfg.max_position_embeddings}")
    ok = True
    for n in [int(x) for x in a.lengths.split(",")]:
        if n > len(ids_all):
            sys.exit(f"{a.text} has {len(ids_all)} tokens, fewer than {n}")
        t0 = time.time()
        h = hf_nll(model, ids_all[:n])
        t1 = time.time()
        o = ours_nll(a.longrope, a.export, a.text, n, a.dtype)
        t2 = time.time()
        rel = abs(h - o) / abs(h)
        good = rel <= a.tolerance
        ok &= good
        print(f"  {n:>6} tokens: HF mean NLL {h:.6f} ({t1 - t0:.0f} s), longrope {o:.6f} ({t2 - t1:.0f} s), "
              f"relative difference {rel:.2e} {'ok' if good else 'MISMATCH'} (tolerance {a.tolerance:g})")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
