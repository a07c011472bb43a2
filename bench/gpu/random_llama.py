#!/usr/bin/env python3
"""Write a random-weight llama checkpoint of a SmolLM2 shape, for speed runs on a GPU.

Usage: random_llama.py {135m,1.7b} OUT_DIR TOKENIZER_DIR [--seed N]

OUT_DIR gets config.json (the shape of HuggingFaceTB/SmolLM2-135M or -1.7B: hidden, layers,
heads, KV heads, FFN, vocab 49152, rope theta, tied embeddings), model.safetensors with every
weight drawn from N(0, 0.02^2) in bfloat16 (norm weights 1), and the tokenizer files copied from
TOKENIZER_DIR (the default model's tokenizer as tests/reference/gguf_to_hf.py writes it).
Needs torch and safetensors (both on the lent GPU machine); weights are drawn on the GPU when
there is one, so the 1.7B shape takes seconds.
"""
import argparse
import json
import shutil
from pathlib import Path

SHAPES = {
    "135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                 num_key_value_heads=3, intermediate_size=1536, rope_theta=100000.0),
    "1.7b": dict(hidden_size=2048, num_hidden_layers=24, num_attention_heads=32,
                 num_key_value_heads=32, intermediate_size=8192, rope_theta=130000.0),
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("shape", choices=sorted(SHAPES))
    ap.add_argument("out")
    ap.add_argument("tokenizer_dir")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import torch
    from safetensors.torch import save_file

    s = SHAPES[args.shape]
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": 49152,
        "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": True,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "bfloat16",
        **s,
    }
    h, f, v = s["hidden_size"], s["intermediate_size"], cfg["vocab_size"]
    d = h // s["num_attention_heads"]
    kv = s["num_key_value_heads"] * d
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    g = torch.Generator(device=dev).manual_seed(args.seed)

    def rand(*shape):
        return (torch.randn(*shape, generator=g, device=dev, dtype=torch.float32) * 0.02).to(torch.bfloat16).cpu()

    w = {"model.embed_tokens.weight": rand(v, h), "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)}
    for i in range(s["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = rand(h, h)
        w[p + "self_attn.k_proj.weight"] = rand(kv, h)
        w[p + "self_attn.v_proj.weight"] = rand(kv, h)
        w[p + "self_attn.o_proj.weight"] = rand(h, h)
        w[p + "mlp.gate_proj.weight"] = rand(f, h)
        w[p + "mlp.up_proj.weight"] = rand(f, h)
        w[p + "mlp.down_proj.weight"] = rand(h, f)
        w[p + "input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        w[p + "post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(w, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        src = Path(args.tokenizer_dir) / name
        if src.exists():
            shutil.copy(src, out / name)
    n = sum(t.numel() for t in w.values())
    print(f"{args.shape}: {n / 1e6:.1f}M parameters -> {out}")


if __name__ == "__main__":
    main()
