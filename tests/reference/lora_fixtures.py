"""Write small random LoRA adapters and their golden logits for mlxi's adapter tests.

Two layouts, each with its own reference:

- mlx-lm adapters (`adapters.safetensors` + `adapter_config.json`, as `mlx_lm.lora` writes them)
  on the tiny fixture checkpoints, float and quantized (QLoRA); golden logits from mlx-lm itself:
  `mlx_lm.load(base, adapter_path=adapter)`.
- PEFT adapters (`adapter_model.safetensors` + `adapter_config.json`, written by PEFT's
  `save_pretrained`) on the tiny float checkpoints; golden logits from transformers + PEFT
  (`PeftModel.from_pretrained(base, adapter)`), the adapter read back from disk.

With `--default`, also a PEFT adapter (rank 4 on q_proj and v_proj of all 30 blocks) on the default
model's f32 folder (`gguf_to_hf.py ... smollm2-f32 --dtype f32`), with transformers + PEFT
logits at the last position of two prompts (the Rust test runs the default GGUF, whose
dequantized weights are that folder's).

Every adapter has seeded random, non-zero A and B (B is zero after a real LoRA init), so the
update is large enough that a wrong scale, transposition or layer shows in the logits. The
output is reproducible (numpy PCG64 seeds; torch only runs the forward).

Run from the repository root:
    ~/.cache/mlxi/refvenv/bin/python tests/reference/lora_fixtures.py [--default]
"""

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import mlx.core as mx
import mlx_lm
import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, str(Path(__file__).parent))
from make_fixtures import gemma2_forward_windowed, save_safetensors, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "tests/fixtures/models"
OUT = ROOT / "tests/fixtures/adapters"

LINEARS = [
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
]

# mlx-lm cases: (adapter name, base fixture, num_layers, rank, scale, keys or None, seed).
MLX_CASES = [
    ("llama-mlx", "llama", 1, 4, 2.0, None, 1),
    ("qwen3-mlx", "qwen3", -1, 8, 0.5, ["self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj"], 2),
    ("llama-q4-mlx", "llama-q4", 2, 4, 2.0, None, 3),
    ("qwen3-q8-mlx", "qwen3-q8", 1, 4, 1.5, ["self_attn.q_proj", "mlp.up_proj"], 4),
    ("gemma2-mlx", "gemma2", -1, 4, 2.0, None, 5),
    ("gemma3_text-mlx", "gemma3_text", 1, 4, 2.0, ["self_attn.k_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.down_proj"], 6),
]


def dims(cfg, module):
    d = cfg["hidden_size"]
    hd = cfg.get("head_dim") or d // cfg["num_attention_heads"]
    q = cfg["num_attention_heads"] * hd
    kv = cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * hd
    m = cfg["intermediate_size"]
    return {
        "self_attn.q_proj": (d, q),
        "self_attn.k_proj": (d, kv),
        "self_attn.v_proj": (d, kv),
        "self_attn.o_proj": (q, d),
        "mlp.gate_proj": (d, m),
        "mlp.up_proj": (d, m),
        "mlp.down_proj": (m, d),
    }[module]


def meta():
    import peft
    import torch
    import transformers

    return {
        "mlx_version": mx.__version__,
        "mlx_lm_version": mlx_lm.__version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "peft_version": peft.__version__,
    }


def mlx_case(name, base, num_layers, rank, scale, keys, seed):
    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    cfg = json.loads((MODELS / base / "config.json").read_text())
    n = cfg["num_hidden_layers"]
    rng = np.random.default_rng(seed)
    first = 0 if num_layers <= 0 else n - min(num_layers, n)
    tensors = {}
    for layer in range(first, n):
        for module in keys or LINEARS:
            i, o = dims(cfg, module)
            p = f"model.layers.{layer}.{module}"
            tensors[f"{p}.lora_a"] = (rng.standard_normal((i, rank)) * 0.2).astype(np.float32)
            tensors[f"{p}.lora_b"] = (rng.standard_normal((rank, o)) * 0.2).astype(np.float32)
    params = {"rank": rank, "scale": scale, "dropout": 0.0}
    if keys is not None:
        params["keys"] = keys
    write_json(folder / "adapter_config.json", {
        "fine_tune_type": "lora",
        "num_layers": num_layers,
        "lora_parameters": params,
    })
    save_safetensors(folder / "adapters.safetensors", tensors, {"format": "mlx"})
    ids = load_file(str(MODELS / base / "golden.safetensors"))["input_ids"]
    model, _ = mlx_lm.load(str(MODELS / base), adapter_path=str(folder))
    if cfg["model_type"] == "gemma2":
        # As the gemma2 fixture's own golden: mlx-lm's modules with Hugging Face's per-layer
        # sliding window, which mlx-lm's gemma2.py leaves out (see FIXTURES.md).
        logits = gemma2_forward_windowed(model, mx.array(ids), cfg["layer_types"], cfg["sliding_window"])
    else:
        logits = model(mx.array(ids))
    mx.eval(logits)
    golden = {"input_ids": ids, "logits": np.array(logits.astype(mx.float32))}
    save_safetensors(folder / "golden.safetensors", golden, {
        "base": base,
        "reference": "mlx_lm.load(base, adapter_path=adapter)",
        "mlx_version": mx.__version__,
        "mlx_lm_version": mlx_lm.__version__,
    })
    base_logits = load_file(str(MODELS / base / "golden.safetensors"))["logits"]
    change = float(np.abs(golden["logits"] - base_logits).max())
    print(f"{name}: {len(tensors)} tensors, max |adapted - base| logit {change:.3f}")


def peft_adapter(model, config, folder, seed, half=False, std=0.2):
    """Wrap `model` with `config`, give every LoRA matrix seeded random values, save."""
    import torch
    from peft import get_peft_model

    pm = get_peft_model(model, config)
    rng = np.random.default_rng(seed)
    names = sorted(n for n, _ in pm.named_parameters() if ".lora_A." in n or ".lora_B." in n)
    params = dict(pm.named_parameters())
    with torch.no_grad():
        for n in names:
            p = params[n]
            v = rng.standard_normal(tuple(p.shape)) * std
            # `half`: values exactly representable in float16, saved as float16 (a smaller file).
            v = v.astype(np.float16).astype(np.float32) if half else v.astype(np.float32)
            p.copy_(torch.from_numpy(v))
    pm.save_pretrained(str(folder))
    (folder / "README.md").unlink(missing_ok=True)
    # The base's name, not this machine's path to it.
    cfg_path = folder / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = Path(cfg["base_model_name_or_path"]).name
    # PEFT stores target_modules from a set: sorted, the file is the same on every run.
    if isinstance(cfg.get("target_modules"), list):
        cfg["target_modules"] = sorted(cfg["target_modules"])
    write_json(cfg_path, cfg)
    if half:
        path = folder / "adapter_model.safetensors"
        t = load_file(str(path))
        from safetensors.numpy import save_file

        save_file({k: v.astype(np.float16) for k, v in t.items()}, str(path))
    return len(names)


def peft_logits(base_dir, adapter_dir, ids):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    base.eval()
    with torch.no_grad():
        plain = base(torch.from_numpy(ids.astype(np.int64))).logits.float().numpy()
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    with torch.no_grad():
        adapted = model(torch.from_numpy(ids.astype(np.int64))).logits.float().numpy()
    return plain, adapted


def peft_case(name, base, config_kwargs, seed):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(MODELS / base), dtype=torch.float32)
    n = peft_adapter(model, LoraConfig(lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", **config_kwargs), folder, seed)
    ids = load_file(str(MODELS / base / "golden.safetensors"))["input_ids"]
    plain, adapted = peft_logits(MODELS / base, folder, ids)
    save_safetensors(folder / "golden.safetensors", {"input_ids": ids, "logits": adapted, "logits_base": plain}, {
        "base": base,
        "reference": "transformers + peft: PeftModel.from_pretrained(base, adapter)",
        **meta(),
    })
    print(f"{name}: {n} matrices, max |adapted - base| logit {np.abs(adapted - plain).max():.3f}")


def peft_on_quantized_case(name, adapter, base):
    """The PEFT adapter `adapter` (already made) on the quantized fixture `base`: the reference is
    transformers + PEFT on the base's weights dequantized by mlx (`mlx_lm.utils.dequantize_model`,
    exactly the values mlxi's quantized matmul multiplies), so only the adapter's golden is new:
    the folder holds a copy of the adapter's files and `golden.safetensors`."""
    import tempfile

    from mlx.utils import tree_flatten
    from mlx_lm.utils import dequantize_model

    folder = OUT / name
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(OUT / adapter, folder)
    (folder / "golden.safetensors").unlink()
    model, _ = mlx_lm.load(str(MODELS / base))
    model = dequantize_model(model)
    cfg = json.loads((MODELS / base / "config.json").read_text())
    cfg.pop("quantization", None)
    cfg.pop("quantization_config", None)
    ids = load_file(str(MODELS / base / "golden.safetensors"))["input_ids"]
    with tempfile.TemporaryDirectory() as tmp:
        weights = {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(model.parameters())}
        from safetensors.numpy import save_file

        save_file(weights, str(Path(tmp) / "model.safetensors"), {"format": "pt"})
        write_json(Path(tmp) / "config.json", cfg)
        plain, adapted = peft_logits(Path(tmp), folder, ids)
    save_safetensors(folder / "golden.safetensors", {"input_ids": ids, "logits": adapted, "logits_base": plain}, {
        "base": base,
        "reference": "transformers + peft on the base dequantized by mlx_lm.utils.dequantize_model",
        **meta(),
    })
    quantized = np.array(model(mx.array(ids)).astype(mx.float32))
    print(f"{name}: max |adapted - base| logit {np.abs(adapted - plain).max():.3f}, "
          f"|transformers base - mlx-lm dequantized base| {np.abs(plain - quantized).max():.2e}")


def default_case(f32_dir):
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = OUT / "smollm2-peft"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    model = AutoModelForCausalLM.from_pretrained(str(f32_dir), dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                        bias="none", task_type="CAUSAL_LM")
    n = peft_adapter(model, config, folder, seed=30, half=True, std=0.1)
    tok = AutoTokenizer.from_pretrained(str(f32_dir))
    prompts = ["The capital of France is", "Fine-tuning changes what a model says about"]
    rows = [tok(p)["input_ids"] for p in prompts]
    width = max(len(r) for r in rows)
    last_plain, last_adapted = [], []
    for r in rows:
        ids = np.array([r], dtype=np.int32)
        plain, adapted = peft_logits(f32_dir, folder, ids)
        last_plain.append(plain[0, -1])
        last_adapted.append(adapted[0, -1])
    ids = np.array([r + [-1] * (width - len(r)) for r in rows], dtype=np.int32)
    # The base logits are not stored (the file stays small; the default model's own golden
    # covers them): the change is printed.
    golden = {"input_ids": ids, "logits_last": np.stack(last_adapted)}
    save_safetensors(folder / "golden.safetensors", golden, {
        "base": "SmolLM2-135M-Instruct.Q4_1.gguf via gguf_to_hf.py --dtype f32",
        "reference": "transformers + peft: PeftModel.from_pretrained(base, adapter); input_ids rows padded with -1",
        **meta(),
    })
    change = np.abs(golden["logits_last"] - np.stack(last_plain)).max()
    print(f"smollm2-peft: {n} matrices, max |adapted - base| last logit {change:.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--default", action="store_true", help="also the default model's adapter")
    ap.add_argument("--f32-dir", default=os.path.expanduser("~/.cache/mlxi/reference/smollm2-f32"))
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    for case in MLX_CASES:
        mlx_case(*case)
    peft_case("llama-peft", "llama", {
        "r": 4,
        "lora_alpha": 8,
        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        "rank_pattern": {"down_proj": 2},
        "alpha_pattern": {"layers.1.self_attn.v_proj": 3},
    }, seed=11)
    peft_case("qwen3-peft", "qwen3", {
        "r": 8,
        "lora_alpha": 4,
        "use_rslora": True,
        "target_modules": r".*\.(q_proj|v_proj|up_proj)",
    }, seed=12)
    peft_case("gemma3_text-peft", "gemma3_text", {
        "r": 4,
        "lora_alpha": 16,
        "target_modules": ["q_proj", "v_proj", "o_proj", "up_proj"],
    }, seed=13)
    peft_on_quantized_case("llama-q4-peft", "llama-peft", "llama-q4")
    if args.default:
        default_case(Path(args.f32_dir))


if __name__ == "__main__":
    main()
