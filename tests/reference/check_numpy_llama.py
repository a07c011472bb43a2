#!/usr/bin/env python3
"""Independent check of the converted golden logits: a float64 numpy llama forward pass that reads
the GGUF directly, keeps llama.cpp's Q/K row order and uses llama.cpp's interleaved
("traditional", GPT-J style) RoPE. If gguf_to_hf.py undid the permutation correctly, mlx-lm's
rotate-half RoPE on the converted weights computes the same function, so the logits agree up to
f32 rounding.

Usage:
    python tests/reference/check_numpy_llama.py \\
        [--gguf ~/.cache/mlxi/models/SmolLM2-135M-Instruct.Q4_1.gguf] \\
        [--golden tests/fixtures/golden/smollm2]

Compares against `prompt0_all` (every position of prompt 0) and the last-position logits of every
prompt in golden.json; prints max |diff| and exits non-zero above --tol (default 2e-3).
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

REPO_ROOT = Path(__file__).resolve().parents[2]


def load_gguf(path):
    r = GGUFReader(path)

    def m(k):
        return r.fields[k].contents()

    arch = m("general.architecture")
    hp = {
        "n_layers": int(m(f"{arch}.block_count")),
        "n_heads": int(m(f"{arch}.attention.head_count")),
        "n_kv": int(m(f"{arch}.attention.head_count_kv")),
        "eps": float(m(f"{arch}.attention.layer_norm_rms_epsilon")),
        "theta": float(m(f"{arch}.rope.freq_base")),
    }
    w = {}
    for t in r.tensors:
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        w[t.name] = np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float64).reshape(shape)
    return hp, w


def rms_norm(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def rope_interleaved(x, theta):
    # x: [L, H, D]; rotate pairs (2i, 2i+1) by pos * theta^(-2i/D)  (llama.cpp LLAMA_ROPE_TYPE_NORM)
    L, _, D = x.shape
    inv = theta ** (-np.arange(0, D, 2, dtype=np.float64) / D)
    ang = np.arange(L, dtype=np.float64)[:, None] * inv[None, :]  # [L, D/2]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = x0 * cos - x1 * sin
    out[..., 1::2] = x0 * sin + x1 * cos
    return out


def forward(hp, w, ids):
    H, KV, eps = hp["n_heads"], hp["n_kv"], hp["eps"]
    x = w["token_embd.weight"][ids]
    L, E = x.shape
    D = E // H
    mask = np.triu(np.full((L, L), -np.inf), k=1)
    for i in range(hp["n_layers"]):
        p = f"blk.{i}."
        h = rms_norm(x, w[p + "attn_norm.weight"], eps)
        q = (h @ w[p + "attn_q.weight"].T).reshape(L, H, D)
        k = (h @ w[p + "attn_k.weight"].T).reshape(L, KV, D)
        v = (h @ w[p + "attn_v.weight"].T).reshape(L, KV, D)
        q, k = rope_interleaved(q, hp["theta"]), rope_interleaved(k, hp["theta"])
        rep = H // KV
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(D) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", s, v).reshape(L, E)
        x = x + o @ w[p + "attn_output.weight"].T
        h = rms_norm(x, w[p + "ffn_norm.weight"], eps)
        g = h @ w[p + "ffn_gate.weight"].T
        u = h @ w[p + "ffn_up.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ w[p + "ffn_down.weight"].T
    x = rms_norm(x, w["output_norm.weight"], eps)
    out_w = w.get("output.weight", w["token_embd.weight"])
    return x @ out_w.T


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", default=str(Path.home() / ".cache/mlxi/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--golden", default=str(REPO_ROOT / "tests/fixtures/golden/smollm2"))
    ap.add_argument("--tol", type=float, default=2e-3)
    args = ap.parse_args(argv)

    from safetensors.numpy import load_file

    hp, w = load_gguf(args.gguf)
    golden = json.loads((Path(args.golden) / "golden.json").read_text())
    ref = load_file(str(Path(args.golden) / "logits.safetensors"))
    worst = 0.0
    for p in golden["prompts"]:
        logits = forward(hp, w, p["input_ids"])
        if p["index"] == 0:
            d = np.abs(logits - ref["prompt0_all"]).max()
            print(f"prompt0_all: max |numpy - mlx-lm| = {d:.2e}")
            worst = max(worst, d)
        d = np.abs(logits[-1] - ref[p["logits_key"]]).max()
        same_top = [t["id"] for t in p["top10"]] == list(np.argsort(-logits[-1], kind="stable")[:10])
        print(f"{p['logits_key']} ({p['name']}, {p['num_tokens']} tok): max |diff| = {d:.2e}, "
              f"same top-10 order: {same_top}")
        worst = max(worst, d)
    print(f"worst {worst:.2e} (tol {args.tol:g})")
    sys.exit(0 if worst <= args.tol else 1)


if __name__ == "__main__":
    main()
