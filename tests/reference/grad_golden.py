#!/usr/bin/env python3
"""Gradients of a metric with respect to activations, by PyTorch autograd, for tests/grad.rs.

Usage (from the repository root; needs torch, transformers, safetensors in the venv):
    ~/.cache/mlxi/refvenv/bin/python tests/reference/grad_golden.py \\
        [--model-dir ~/.cache/mlxi/reference/smollm2-f32] \\
        [--out tests/fixtures/golden/smollm2/grad.safetensors]

MODEL_DIR is the f32 Hugging Face folder gguf_to_hf.py writes from the default model's GGUF
(the same weights mlxi loads with `dequantize: true`). The model runs in float32 with eager
attention. The metric is mlxi's `logit_diff(" Paris", " Rome")`: logit(" Paris") - logit(" Rome")
at the last position of "The Eiffel Tower is in". A zero "delta" tensor that requires grad is
added at each hook point below (TransformerLens names, mlxi's points):

    blocks.{i}.hook_resid_pre   the input of decoder layer i   (forward pre-hook on the layer)
    blocks.{i}.hook_attn_out    self_attn.o_proj's output      (forward hook)
    blocks.{i}.hook_mlp_out     the MLP's output               (forward hook)

and the metric's gradient with respect to each delta is d metric / d activation there.

Writes one safetensors file: `ids` (int32 [pos]), `metric` (f32 [1]), and per point its
gradient, f32 [1, pos, d_model], keyed by the point's name. CI never runs this script.
"""

import argparse
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = Path.home() / ".cache/mlxi/reference/smollm2-f32"
DEFAULT_OUT = REPO_ROOT / "tests/fixtures/golden/smollm2/grad.safetensors"

PROMPT = "The Eiffel Tower is in"
ANSWER, WRONG = " Paris", " Rome"
POINTS = [
    "blocks.0.hook_resid_pre",
    "blocks.13.hook_resid_pre",
    "blocks.29.hook_resid_pre",
    "blocks.6.hook_attn_out",
    "blocks.20.hook_mlp_out",
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args()

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        args.model_dir, dtype=torch.float32, attn_implementation="eager"
    )
    model.eval()
    ids = tok.encode(PROMPT, add_special_tokens=False)
    (a,) = tok.encode(ANSWER, add_special_tokens=False)
    (b,) = tok.encode(WRONG, add_special_tokens=False)
    t, d = len(ids), model.config.hidden_size
    deltas = {p: torch.zeros(1, t, d, requires_grad=True) for p in POINTS}

    layers = model.model.layers
    handles = []
    for p in POINTS:
        i = int(p.split(".")[1])
        kind = p.split(".")[2]
        delta = deltas[p]
        if kind == "hook_resid_pre":

            def pre(_mod, args_, kwargs, delta=delta):
                if args_:
                    return (args_[0] + delta,) + tuple(args_[1:]), kwargs
                kwargs = dict(kwargs)
                kwargs["hidden_states"] = kwargs["hidden_states"] + delta
                return args_, kwargs

            handles.append(layers[i].register_forward_pre_hook(pre, with_kwargs=True))
        else:
            module = layers[i].self_attn.o_proj if kind == "hook_attn_out" else layers[i].mlp

            def post(_mod, _inp, out, delta=delta):
                return out + delta

            handles.append(module.register_forward_hook(post))

    logits = model(torch.tensor([ids])).logits
    metric = logits[0, -1, a] - logits[0, -1, b]
    metric.backward()
    for h in handles:
        h.remove()

    out = {
        "ids": torch.tensor(ids, dtype=torch.int32),
        "metric": metric.detach().reshape(1).float(),
    }
    for p in POINTS:
        out[p] = deltas[p].grad.detach().float().contiguous()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        out,
        str(args.out),
        metadata={
            "prompt": PROMPT,
            "metric": f"logit_diff({ANSWER!r}, {WRONG!r})",
            "torch": torch.__version__,
            "transformers": __import__("transformers").__version__,
        },
    )
    print(f"ids {ids}, metric {metric.item():.6f}, wrote {args.out}")
    for p in POINTS:
        g = deltas[p].grad[0]
        print(f"{p}: |grad| by position {[round(x, 5) for x in g.norm(dim=-1).tolist()]}")


if __name__ == "__main__":
    main()
