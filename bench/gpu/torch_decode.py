#!/usr/bin/env python3
"""PyTorch + transformers on the same random-weight checkpoint, for the GPU table: greedy
`generate` of 128 tokens after the benchmark's 512-token prompt, bf16 on cuda; decode tok/s from
the time of 128 new tokens minus the time of 1 (prefill), median of 3 after a warm-up.

Usage: torch_decode.py MODEL_DIR OUT_JSON
"""
import json
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0] + "/tests/reference")
from mlxlm_bench import PROMPT_TEXT  # noqa: E402

model_dir, out = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to("cuda").eval()
base = tok.encode(PROMPT_TEXT)
ids = torch.tensor([[base[i % len(base)] for i in range(512)]], device="cuda")


def timed(n):
    torch.cuda.synchronize()
    t = time.perf_counter()
    with torch.no_grad():
        model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    torch.cuda.synchronize()
    return time.perf_counter() - t


timed(2)
first = statistics.median(timed(1) for _ in range(3))
full = statistics.median(timed(128) for _ in range(3))
res = {"tool": "torch", "torch": torch.__version__, "prefill_s": first,
       "prefill_tps": 512 / first, "decode_tps": 127 / (full - first)}
json.dump(res, open(out, "w"))
print(res)
