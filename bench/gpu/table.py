#!/usr/bin/env python3
"""Prints the GPU side-by-side table from the JSON files bench/gpu/run.sh wrote to OUT."""
import json
import os
import sys

out = sys.argv[1]


def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except (OSError, ValueError):
        return None


print(f"{'model':10} {'metric':22} {'mlx-lm':>10} {'mlxi':>10} {'mlxi/mlx-lm':>12}")
for shape in ("135m", "1.7b"):
    r, m = load(f"mlxlm-{shape}.json"), load(f"mlxi-{shape}.json")
    if not r or not m:
        print(f"{shape:10} (missing: mlx-lm {r is not None}, mlxi {m is not None})")
        continue
    rows = [
        ("decode tok/s", r["decode_tps"], m["decode_tps"], True),
        ("prefill 512 ms", r["prefill_s"] * 1e3, m["prefill_s"] * 1e3, False),
    ]
    if r.get("batch") and m.get("batch"):
        rows.append(("forward 32x64 ms", r["batch"]["forward_s"] * 1e3, m["batch"]["forward_s"] * 1e3, False))
    for label, a, b, higher in rows:
        ratio = b / a if higher else a / b
        print(f"{shape:10} {label:22} {a:>10.2f} {b:>10.2f} {ratio:>11.2f}x")
    if m.get("batch"):
        b = m["batch"]
        print(f"{shape:10} {'capture all resid ms':22} {'':>10} {b['capture_s'] * 1e3:>10.2f} "
              f"{b['capture_ratio']:>10.2f}x of mlxi's forward")
    print(f"{shape:10} {'peak memory MB':22} {r['peak_memory_bytes'] / 1e6:>10.0f} {m['peak_memory_bytes'] / 1e6:>10.0f}")
    print(f"{shape:10} {'same greedy tokens':22} {str(r['generated_ids'] == m['generated_ids']):>21}")
print("(ratios: above 1.0x means mlxi is faster)")
t = load("torch-135m.json")
if t:
    print(f"PyTorch {t['torch']} + transformers generate, 135m bf16: decode {t['decode_tps']:.1f} tok/s, "
          f"prefill 512 {t['prefill_s'] * 1e3:.1f} ms")
d = load("mlxi-default.json")
if d:
    print(f"mlxi default model ({d['quantization']}, {d['dtype']}): decode {d['decode_tps']:.1f} tok/s, "
          f"prefill 512 {d['prefill_s'] * 1e3:.1f} ms")
