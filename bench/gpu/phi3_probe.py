#!/usr/bin/env python3
"""Is phi3 wrong on MLX's CUDA backend, or only in mlxi? mlx-lm on the committed random-weight
fixtures (tests/fixtures/models/CASE), on the default device and on the CPU: the full forward
against the golden logits, and cached decoding (6 prompt tokens, then one at a time) against the
full forward. With --contiguous, phi3's fused q/k/v and gate/up splits are made contiguous first.

Usage: MLX_ENABLE_TF32=0 phi3_probe.py [--contiguous] CASE...
"""
import sys

import mlx.core as mx
import numpy as np
from mlx_lm import load
from mlx_lm.models.cache import make_prompt_cache
from safetensors.numpy import load_file

args = sys.argv[1:]
contiguous = "--contiguous" in args
cases = [a for a in args if not a.startswith("--")]
if contiguous:
    import mlx_lm.models.phi3 as phi3

    real_split = phi3.mx.split

    class Shim:
        def __getattr__(self, name):
            return getattr(mx, name)

        @staticmethod
        def split(*a, **k):
            return [mx.contiguous(p) for p in real_split(*a, **k)]

    phi3.mx = Shim()


def run(case, device):
    mx.set_default_device(device)
    model, _ = load(f"tests/fixtures/models/{case}")
    g = load_file(f"tests/fixtures/models/{case}/golden.safetensors")
    ids = mx.array(g["input_ids"])
    full = model(ids).astype(mx.float32)
    d_gold = float(np.abs(np.array(full) - g["logits"]).max())
    cache = make_prompt_cache(model)
    parts = [model(ids[:, :6], cache=cache)]
    for p in range(6, ids.shape[1]):
        parts.append(model(ids[:, p : p + 1], cache=cache))
    cached = mx.concatenate(parts, axis=1).astype(mx.float32)
    d_cache = float(mx.abs(cached - full).max())
    print(f"{case:12} {str(device):16} contiguous={contiguous}: full vs golden {d_gold:.2e}, cached vs full {d_cache:.2e}", flush=True)


for case in cases:
    for dev in (mx.gpu, mx.cpu):
        try:
            run(case, dev)
        except Exception as e:  # noqa: BLE001
            print(f"{case:12} {dev}: {type(e).__name__}: {str(e)[:200]}", flush=True)
