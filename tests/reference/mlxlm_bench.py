#!/usr/bin/env python3
"""Benchmark mlx-lm on one model folder: load time, prefill and decode speed, peak memory.

Usage:
    [LD_PRELOAD=/lib/x86_64-linux-gnu/libopenblas.so.0] \\
    python tests/reference/mlxlm_bench.py MODEL_DIR [--prompt-tokens N] [--gen-tokens M]
        [--trials K] [--no-warmup] [--include-prompt-ids] [--json]

MODEL_DIR   a Hugging Face-layout or mlx-community-layout folder (e.g. the output of
            gguf_to_hf.py, or its 4-bit copy from quantize_dir.sh).
--prompt-tokens N  prompt length in tokens (default 128).
--gen-tokens M     tokens to generate (default 64; must be >= 2). Greedy (argmax), no chat
                   template, no stopping at EOS: exactly M tokens.
--trials K         timed runs (default 1); the reported numbers are the medians.
--no-warmup        skip the untimed warm-up run (default: one short run with
                   min(N, 16) prompt tokens and 2 generated tokens).
--include-prompt-ids  add the prompt token ids to the output.
--forward-batch B  also time one forward pass over B rows of --forward-len T tokens (row r is
                   the benchmark prompt's ids from position r on, cyclically, as mlxi's
                   `bench --batch B --batch-len T` builds them), logits evaluated; median of
                   --trials after one warm-up (reported as forward_s).
--json             print exactly one JSON object on stdout (nothing else goes to stdout);
                   without it, print a human-readable summary.

The prompt: PROMPT_TEXT below is encoded with the model's tokenizer (tokenizer.encode, which adds
no BOS for SmolLM2), repeated cyclically and truncated to N tokens, so every tool that uses the
same tokenizer and this rule gets the same ids (`prompt_ids_sha256` hashes them as
comma-separated decimal ids).

Timing (mlx_lm.generate.generate_step, the loop mlx-lm's own generate uses):
  prefill_s   from the call until the first generated token is available (the forward pass over
              all N prompt tokens plus the first sampling); prefill_tps = N / prefill_s.
  decode_s    from the first generated token until the M-th one; decode_tps = (M - 1) / decode_s.
  load_s      mlx_lm.load(MODEL_DIR) with weights evaluated (model + tokenizer).
Memory: peak_memory_bytes = mx.get_peak_memory() over the whole process (weights included);
active_memory_after_load_bytes = mx.get_active_memory() right after loading;
max_rss_bytes = the process's maximum resident set size (getrusage).
"""

import argparse
import hashlib
import json
import os
import platform
import resource
import statistics
import sys
import time

PROMPT_TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based ink, and a wooden screw press adapted from wine making. "
    "Within a few decades, printing shops had spread across Europe, books became cheaper, and ideas "
    "travelled faster than ever before. Scholars could compare identical copies of a text, errors "
    "could be corrected in later editions, and vernacular languages gained a standard written form. "
)


def make_prompt_ids(tokenizer, n):
    base = list(tokenizer.encode(PROMPT_TEXT))
    return [base[i % len(base)] for i in range(n)]


def run_once(model, prompt_ids, gen_tokens):
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    prompt = mx.array(prompt_ids)
    greedy = lambda logprobs: mx.argmax(logprobs, axis=-1)  # noqa: E731
    out = []
    t0 = time.perf_counter()
    t_first = None
    for tok, _ in generate_step(prompt, model, sampler=greedy, max_tokens=gen_tokens):
        out.append(int(tok))
        if t_first is None:
            t_first = time.perf_counter()
    t_end = time.perf_counter()
    prefill_s = t_first - t0
    decode_s = t_end - t_first
    return {
        "prefill_s": prefill_s,
        "prefill_tps": len(prompt_ids) / prefill_s,
        "decode_s": decode_s,
        "decode_tps": (gen_tokens - 1) / decode_s if decode_s > 0 else None,
        "generated_ids": out,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--no-warmup", action="store_true")
    ap.add_argument("--include-prompt-ids", action="store_true")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--forward-batch", type=int, default=0)
    ap.add_argument("--forward-len", type=int, default=64)
    args = ap.parse_args(argv)
    if args.prompt_tokens < 1 or args.gen_tokens < 2 or args.trials < 1:
        ap.error("need --prompt-tokens >= 1, --gen-tokens >= 2, --trials >= 1")

    # Keep stdout clean for --json: library chatter goes to stderr.
    real_stdout = sys.stdout
    sys.stdout = sys.stderr

    import mlx.core as mx
    import mlx_lm
    from mlx_lm import load

    t0 = time.perf_counter()
    model, tokenizer = load(args.model_dir)
    load_s = time.perf_counter() - t0
    active_after_load = mx.get_active_memory()

    prompt_ids = make_prompt_ids(tokenizer, args.prompt_tokens)
    if not args.no_warmup:
        run_once(model, prompt_ids[: min(len(prompt_ids), 16)], 2)

    runs = [run_once(model, prompt_ids, args.gen_tokens) for _ in range(args.trials)]
    if any(r["generated_ids"] != runs[0]["generated_ids"] for r in runs):
        print("warning: greedy outputs differ between trials", file=sys.stderr)

    def med(key):
        return statistics.median(r[key] for r in runs)

    forward = None
    if args.forward_batch > 0:
        base = list(tokenizer.encode(PROMPT_TEXT))
        rows = [[base[(r + i) % len(base)] for i in range(args.forward_len)]
                for r in range(args.forward_batch)]
        x = mx.array(rows)

        def timed_forward():
            t = time.perf_counter()
            mx.eval(model(x))
            return time.perf_counter() - t

        timed_forward()
        forward = {
            "batch": args.forward_batch,
            "len": args.forward_len,
            "forward_s": statistics.median(timed_forward() for _ in range(args.trials)),
        }

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_bytes = rss if sys.platform == "darwin" else rss * 1024
    ld_preload = os.environ.get("LD_PRELOAD", "")
    quant = None
    try:
        cfg = json.load(open(os.path.join(args.model_dir, "config.json")))
        quant = cfg.get("quantization")
    except OSError:
        pass
    result = {
        "tool": "mlx-lm",
        "mlx_version": mx.__version__,
        "mlx_lm_version": mlx_lm.__version__,
        "device": str(mx.default_device()),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_count": os.cpu_count(),
        "openblas_preloaded": "openblas" in ld_preload,
        "model_dir": os.path.abspath(args.model_dir),
        "quantization": quant,
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "trials": args.trials,
        "warmup": not args.no_warmup,
        "prompt_ids_sha256": hashlib.sha256(",".join(map(str, prompt_ids)).encode()).hexdigest(),
        "load_s": load_s,
        "prefill_s": med("prefill_s"),
        "prefill_tps": med("prefill_tps"),
        "decode_s": med("decode_s"),
        "decode_tps": med("decode_tps"),
        "prefill_tps_all": [r["prefill_tps"] for r in runs],
        "decode_tps_all": [r["decode_tps"] for r in runs],
        "peak_memory_bytes": mx.get_peak_memory(),
        "active_memory_after_load_bytes": active_after_load,
        "max_rss_bytes": rss_bytes,
        "generated_ids": runs[0]["generated_ids"],
    }
    if forward is not None:
        result["batch"] = forward
    if args.include_prompt_ids:
        result["prompt_ids"] = prompt_ids

    sys.stdout = real_stdout
    if args.json:
        print(json.dumps(result))
    else:
        print(f"mlx-lm {result['mlx_lm_version']} (mlx {result['mlx_version']}, {result['device']}, "
              f"openblas preloaded: {result['openblas_preloaded']})")
        print(f"model: {result['model_dir']}  quantization: {quant}")
        print(f"load: {load_s:.3f} s")
        print(f"prefill: {args.prompt_tokens} tokens in {result['prefill_s']:.3f} s "
              f"= {result['prefill_tps']:.2f} tok/s")
        print(f"decode: {args.gen_tokens} tokens, {result['decode_tps']:.2f} tok/s")
        print(f"peak MLX memory: {result['peak_memory_bytes'] / 1e9:.3f} GB, "
              f"max RSS: {rss_bytes / 1e9:.3f} GB")
        print("text:", repr(tokenizer.decode(result["generated_ids"])))


if __name__ == "__main__":
    main()
