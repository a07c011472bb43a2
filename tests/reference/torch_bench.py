#!/usr/bin/env python3
"""Benchmark PyTorch + Hugging Face transformers on one model folder, the way mlxlm_bench.py
measures mlx-lm: load time, prefill and decode speed, peak memory, greedy token ids.

Usage:
    python tests/reference/torch_bench.py MODEL_DIR [--prompt-tokens N] [--gen-tokens M]
        [--trials K] [--threads T] [--gen-batches 1,8,32 [--gen-batch-len L]] [--json]

MODEL_DIR   a Hugging Face-layout folder with float weights (gguf_to_hf.py's f32 output).
The prompt ids are mlxlm_bench.py's (PROMPT_TEXT encoded, repeated, truncated to N), so all
three tools run the same ids; `prompt_ids_sha256` lets bench/run.sh check that.

Timing: a plain greedy loop over the model's forward with its KV cache (transformers'
DynamicCache), in float32, under torch.inference_mode():
  prefill_s   from the call until the first generated token is known (forward over the N prompt
              tokens plus the argmax); prefill_tps = N / prefill_s.
  decode_s    from the first generated token until the M-th; decode_tps = (M - 1) / decode_s.
  load_s      AutoModelForCausalLM.from_pretrained (weights in memory) + the tokenizer.
One untimed warm-up run (16 prompt tokens, 2 generated) first. Memory: max_rss_bytes (getrusage);
PyTorch's CPU allocator has no peak counter, so peak_memory_bytes is the max RSS too.
Threads: torch.get_num_threads() by default (one per core); --threads sets it.
--gen-batches: also batched greedy generation of M tokens for B rows of L prompt tokens (row r
starts r tokens into the prompt text's ids, as `mlxi bench --gen-batches` builds them; no
padding, end-of-sequence ignored): median wall time over the trials, prefill included, after
one warm-up, and total new tokens/s, in "gen_batches".
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mlxlm_bench import PROMPT_TEXT  # noqa: E402


def run_once(torch, model, prompt_ids, gen_tokens):
    from transformers import DynamicCache

    x = torch.tensor([prompt_ids], dtype=torch.long)
    cache = DynamicCache()
    out = []
    with torch.inference_mode():
        t0 = time.perf_counter()
        logits = model(input_ids=x, past_key_values=cache, use_cache=True).logits
        tok = int(torch.argmax(logits[0, -1]))
        t_first = time.perf_counter()
        out.append(tok)
        for _ in range(gen_tokens - 1):
            x = torch.tensor([[tok]], dtype=torch.long)
            logits = model(input_ids=x, past_key_values=cache, use_cache=True).logits
            tok = int(torch.argmax(logits[0, -1]))
            out.append(tok)
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


def batch_once(torch, model, rows, gen_tokens):
    from transformers import DynamicCache

    x = torch.tensor(rows, dtype=torch.long)
    cache = DynamicCache()
    with torch.inference_mode():
        t0 = time.perf_counter()
        logits = model(input_ids=x, past_key_values=cache, use_cache=True).logits
        tok = torch.argmax(logits[:, -1], dim=-1)
        first = [int(tok[0])]
        for _ in range(gen_tokens - 1):
            logits = model(input_ids=tok[:, None], past_key_values=cache, use_cache=True).logits
            tok = torch.argmax(logits[:, -1], dim=-1)
            first.append(int(tok[0]))
        return time.perf_counter() - t0, first


def gen_batches(torch, model, base, sizes, length, gen_tokens, trials):
    out = []
    for b in sizes:
        rows = [[base[(r + i) % len(base)] for i in range(length)] for r in range(b)]
        batch_once(torch, model, rows, gen_tokens)
        runs = [batch_once(torch, model, rows, gen_tokens) for _ in range(trials)]
        secs = statistics.median(r[0] for r in runs)
        out.append({"batch": b, "len": length, "gen_tokens": gen_tokens, "seconds": secs,
                    "new_tps": b * gen_tokens / secs, "row0_ids": runs[-1][1]})
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--gen-tokens", type=int, default=64)
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--gen-batches", default="")
    ap.add_argument("--gen-batch-len", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.prompt_tokens < 1 or args.gen_tokens < 2 or args.trials < 1:
        ap.error("need --prompt-tokens >= 1, --gen-tokens >= 2, --trials >= 1")

    real_stdout = sys.stdout
    sys.stdout = sys.stderr

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    load_s = time.perf_counter() - t0

    base = list(tokenizer.encode(PROMPT_TEXT, add_special_tokens=False))
    prompt_ids = [base[i % len(base)] for i in range(args.prompt_tokens)]
    run_once(torch, model, prompt_ids[: min(len(prompt_ids), 16)], 2)
    runs = [run_once(torch, model, prompt_ids, args.gen_tokens) for _ in range(args.trials)]

    def med(key):
        return statistics.median(r[key] for r in runs)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    result = {
        "tool": "torch",
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "threads": torch.get_num_threads(),
        "platform": f"{platform.system()} {platform.machine()}",
        "cpu_count": os.cpu_count(),
        "model_dir": os.path.abspath(args.model_dir),
        "prompt_tokens": args.prompt_tokens,
        "gen_tokens": args.gen_tokens,
        "trials": args.trials,
        "prompt_ids_sha256": hashlib.sha256(",".join(map(str, prompt_ids)).encode()).hexdigest(),
        "load_s": load_s,
        "prefill_s": med("prefill_s"),
        "prefill_tps": med("prefill_tps"),
        "decode_s": med("decode_s"),
        "decode_tps": med("decode_tps"),
        "peak_memory_bytes": rss,
        "max_rss_bytes": rss,
        "generated_ids": runs[0]["generated_ids"],
    }
    sizes = [int(b) for b in args.gen_batches.split(",") if b]
    if sizes:
        result["gen_batches"] = gen_batches(torch, model, base, sizes, args.gen_batch_len,
                                            args.gen_tokens, args.trials)
    sys.stdout = real_stdout
    if args.json:
        print(json.dumps(result))
    else:
        print(f"torch {result['torch_version']}, transformers {result['transformers_version']}, "
              f"{result['threads']} threads")
        print(f"load {load_s:.2f} s, prefill {result['prefill_tps']:.1f} tok/s, "
              f"decode {result['decode_tps']:.1f} tok/s, max RSS {rss / 1e6:.0f} MB")


if __name__ == "__main__":
    main()
