#!/usr/bin/env python3
"""Generate the GGUF reader's test fixtures (tests/fixtures/gguf/) with the `gguf` package.

1. quants.gguf: one [4, 512] tensor per GGML type mlxi reads (F32, F16, BF16, Q4_0, Q4_1, Q5_0,
   Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K) plus one it does not (IQ2_XXS), from seeded random
   data. Types that `gguf.quants.quantize` supports are quantized from normal samples; the
   K-quants (which it can only dequantize) are random block bytes with small, finite f16 `d` and
   `dmin`. quants_expected.safetensors holds `gguf.quants.dequantize` of every tensor (f32).
2. tiny_llama_kquant.gguf: a random 2-layer llama (hidden 256, 4 heads of 64, 2 KV heads, FFN
   512, vocabulary 320 with the byte-level BPE tokenizer of tests/fixtures/models/llama), its
   matrices in K-quants and a few legacy types, Q/K rows stored in llama.cpp's permuted order.
   tiny_llama_expected.safetensors holds the logits of check_numpy_llama.py's float64 numpy
   forward (llama.cpp RoPE convention, on `gguf.quants.dequantize`d weights) for two prompts.

Usage: python tests/reference/gguf_fixtures.py [--out tests/fixtures/gguf]
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize
from safetensors.numpy import save_file

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
import check_numpy_llama  # noqa: E402

QUANTIZABLE = {T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}
# Byte offsets of the f16 scale fields in each K-quant block (d, and dmin where present).
K_SCALE_FIELDS = {
    T.Q2_K: [(80, "d"), (82, "dmin")],
    T.Q3_K: [(108, "d")],
    T.Q4_K: [(0, "d"), (2, "dmin")],
    T.Q5_K: [(0, "d"), (2, "dmin")],
    T.Q6_K: [(208, "d")],
    T.IQ2_XXS: [(0, "d")],
}


def raw_tensor(rng, qtype, rows, cols, std=1.0):
    """(bytes as uint8 [rows, row_bytes], or a float array for F32/F16) of a random tensor."""
    if qtype in QUANTIZABLE:
        x = (rng.standard_normal((rows, cols)) * std).astype(np.float32)
        if qtype == T.F32:
            return x
        if qtype == T.F16:
            return x.astype(np.float16)
        return quantize(x, qtype)
    block, size = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block
    b = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off, kind in K_SCALE_FIELDS[qtype]:
        # d sets the spread of the weights; dmin about the mean so they centre near zero.
        mag = std * rng.uniform(0.5, 1.5, n_blocks)
        if qtype in (T.Q4_K, T.Q5_K):
            mag = mag / (31 * (7.5 if qtype == T.Q4_K else 15.5)) if kind == "d" else mag / 31
        elif qtype == T.Q2_K:
            mag = mag / (7.5 * 1.5) if kind == "d" else mag / 7.5
        elif qtype == T.Q3_K:
            mag = mag / (32 * 4)
        elif qtype == T.Q6_K:
            mag = mag / (64 * 32)
        b[:, off:off + 2] = mag.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return b.reshape(rows, n_blocks // rows * size)


def add(writer, name, qtype, data):
    if qtype in (T.F32, T.F16):
        writer.add_tensor(name, data)
    else:
        writer.add_tensor(name, data, raw_dtype=qtype)


def expected(qtype, data):
    return np.ascontiguousarray(dequantize(data, qtype).astype(np.float32))


def quants_fixture(out):
    rng = np.random.default_rng(20261201)
    w = GGUFWriter(str(out / "quants.gguf"), arch="quants")
    exp = {}
    types = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0,
             T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
    for qt in types:
        data = raw_tensor(rng, qt, 4, 512)
        add(w, qt.name.lower(), qt, data)
        exp[qt.name.lower()] = expected(qt, data).reshape(4, 512)
    add(w, "iq2_xxs", T.IQ2_XXS, raw_tensor(rng, T.IQ2_XXS, 4, 512))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    save_file(exp, str(out / "quants_expected.safetensors"))


def permute(w, n_heads):
    """llama.cpp's converter order for Q/K rows (the inverse of gguf_to_hf.py's un-permute)."""
    rows = w.shape[0]
    return w.reshape(n_heads, 2, rows // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# Matrix types per layer: mostly K-quants (Q4_K_M-like), a few legacy types in layer 1.
LAYER_TYPES = [
    {"attn_q": T.Q4_K, "attn_k": T.Q4_K, "attn_v": T.Q6_K, "attn_output": T.Q5_K,
     "ffn_gate": T.Q4_K, "ffn_up": T.Q3_K, "ffn_down": T.Q6_K},
    {"attn_q": T.Q2_K, "attn_k": T.Q5_0, "attn_v": T.Q8_0, "attn_output": T.Q4_1,
     "ffn_gate": T.Q5_1, "ffn_up": T.Q4_0, "ffn_down": T.Q4_K},
]


def tiny_llama(out):
    rng = np.random.default_rng(7)
    E, H, KV, D, F, V = 256, 4, 2, 64, 512, 320
    path = out / "tiny_llama_kquant.gguf"
    w = GGUFWriter(str(path), arch="llama")
    w.add_name("tiny-llama-kquant")
    w.add_block_count(len(LAYER_TYPES))
    w.add_context_length(256)
    w.add_embedding_length(E)
    w.add_feed_forward_length(F)
    w.add_head_count(H)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_rope_dimension_count(D)
    w.add_file_type(15)  # MOSTLY_Q4_K_M

    tok = json.loads((REPO / "tests/fixtures/models/llama/tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    special = {a["id"] for a in tok["added_tokens"] if a.get("special")}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types([3 if i in special else 1 for i in range(len(tokens))])
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(2)
    w.add_add_bos_token(False)

    def mat(qt, rows, cols, heads=None):
        data = raw_tensor(rng, qt, rows, cols, std=0.05)
        if heads is not None:
            # The converter permutes float rows before quantizing; permuting whole quantized
            # rows is the same thing, since rows are quantized independently.
            data = permute(data, heads)
        return data

    add(w, "token_embd.weight", T.Q4_K, mat(T.Q4_K, V, E))
    for i, types in enumerate(LAYER_TYPES):
        p = f"blk.{i}."
        norm = (1.0 + 0.1 * rng.standard_normal(E)).astype(np.float32)
        add(w, p + "attn_norm.weight", T.F32, norm)
        add(w, p + "attn_q.weight", types["attn_q"], mat(types["attn_q"], H * D, E, H))
        add(w, p + "attn_k.weight", types["attn_k"], mat(types["attn_k"], KV * D, E, KV))
        add(w, p + "attn_v.weight", types["attn_v"], mat(types["attn_v"], KV * D, E))
        add(w, p + "attn_output.weight", types["attn_output"], mat(types["attn_output"], E, H * D))
        norm = (1.0 + 0.1 * rng.standard_normal(E)).astype(np.float32)
        add(w, p + "ffn_norm.weight", T.F32, norm)
        add(w, p + "ffn_gate.weight", types["ffn_gate"], mat(types["ffn_gate"], F, E))
        add(w, p + "ffn_up.weight", types["ffn_up"], mat(types["ffn_up"], F, E))
        add(w, p + "ffn_down.weight", types["ffn_down"], mat(types["ffn_down"], E, F))
    add(w, "output_norm.weight", T.F16, (1.0 + 0.1 * rng.standard_normal(E)).astype(np.float16))
    add(w, "output.weight", T.Q6_K, mat(T.Q6_K, V, E))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    hp, weights = check_numpy_llama.load_gguf(str(path))
    prompts = {"prompt0": [5, 17, 42, 99, 300, 7, 7, 128], "prompt1": [3, 250, 11]}
    exp = {k: check_numpy_llama.forward(hp, weights, ids).astype(np.float32) for k, ids in prompts.items()}
    for k, ids in prompts.items():
        exp[k + "_ids"] = np.array(ids, dtype=np.int32)
    save_file(exp, str(out / "tiny_llama_expected.safetensors"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(REPO / "tests/fixtures/gguf"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    quants_fixture(out)
    tiny_llama(out)
    for f in sorted(out.iterdir()):
        print(f"{f.name}: {f.stat().st_size} bytes")


if __name__ == "__main__":
    main()
