#!/usr/bin/env python3
"""HF transformers' side of `longrope bench forward`: tokens/s and peak RSS of the scoring forward.

Usage (from the repository root):
    .venv/bin/python scripts/bench_hf.py [--model PATH.gguf] [--lengths 1024,4096] [--dtypes f32,bf16]

For each dtype the GGUF is loaded with `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` (dequantised
by HF), then for each length the loss forward `model(ids, labels=ids)` runs once under `inference_mode`.
Peak RSS is VmHWM of /proc/self/status, reset before each run by writing 5 to /proc/self/clear_refs, exactly as
`longrope bench forward` does, so the two are comparable when run on the same machine in the same session.
The token ids are the same deterministic pseudo-random sequence as ours (throughput does not depend on text).
"""
import argparse
import json
import os
import time

import torch
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join(ROOT, ".cache", "assets", "models", "SmolLM2-135M-Instruct.Q4_1.gguf")


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def token_ids(n, vocab):
    x = 0x9E3779B97F4A7C15
    out = []
    mask = (1 << 64) - 1
    for _ in range(n):
        x = (x * 6364136223846793005 + 1442695040888963407) & mask
        out.append((x >> 33) % vocab)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--lengths", default="1024,4096")
    ap.add_argument("--dtypes", default="f32")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    kinds = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}
    runs = []
    for name in args.dtypes.split(","):
        model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(args.model), gguf_file=os.path.basename(args.model), dtype=kinds[name]
        )
        model.eval()
        ids = torch.tensor([token_ids(max(lengths), model.config.vocab_size)])
        for n in lengths:
            reset_peak_rss()
            x = ids[:, :n]
            t0 = time.perf_counter()
            with torch.inference_mode():
                loss = model(x, labels=x).loss
            secs = time.perf_counter() - t0
            run = {"impl": "hf", "dtype": name, "tokens": n, "seconds": secs, "tokens_per_s": n / secs,
                   "peak_rss_mib": peak_rss_mib(), "mean_nll": float(loss)}
            runs.append(run)
            if not args.json:
                print(f"hf {name:>5} {n:>7} tokens  {secs:8.2f} s  {n / secs:8.1f} tok/s  peak RSS {run['peak_rss_mib']:8.0f} MiB",
                      flush=True)
    if args.json:
        print(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
