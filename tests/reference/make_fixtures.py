#!/usr/bin/env python3
"""Write tiny random-weight reference checkpoints and golden logits for mlxi.

Every case is a Hugging Face-layout folder under tests/fixtures/models/<case>/ that
mlx-lm's `load()` accepts, plus `golden.safetensors` holding `input_ids` (int32
[2, 16]) and `logits` (float32 [2, 16, vocab]) computed by mlx-lm itself after
loading that folder (so mlx-lm's loading path and `sanitize` are exercised).

Deterministic: weights come from numpy's PCG64 with fixed seeds, the tokenizer is
trained on a fixed corpus. Run (about 15 s on 2 CPU cores):

    ~/.cache/mlxi/refvenv/bin/python tests/reference/make_fixtures.py

Options: `--out DIR` (default tests/fixtures/models next to this repo),
`--only case1,case2`, `--check-only` (re-run the checks on existing folders).
See tests/reference/FIXTURES.md for what each case covers.
"""

import argparse
import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import mlx.core as mx  # noqa: E402
import mlx_lm  # noqa: E402
from mlx_lm import load  # noqa: E402
from mlx_lm.convert import convert  # noqa: E402
from mlx_lm.models.base import create_attention_mask, create_causal_mask  # noqa: E402
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402


def _patch_quantized_switch_linear():
    """mlx-lm 0.32.2 passes `global_scale=` to mx.gather_qmm, which mlx 0.32.2's
    gather_qmm does not accept, so every quantized MoE forward raises TypeError.
    Call it without that argument when there is no global scale (affine modes);
    the computation is otherwise mlx-lm's own."""
    from mlx_lm.models import switch_layers

    if "global_scale" in (mx.gather_qmm.__doc__ or ""):
        return

    def __call__(self, x, indices, sorted_indices=False):
        assert self.global_scale is None
        x = mx.gather_qmm(
            x,
            self["weight"],
            self["scales"],
            self.get("biases"),
            rhs_indices=indices,
            transpose=True,
            group_size=self.group_size,
            bits=self.bits,
            mode=self.mode,
            sorted_indices=sorted_indices,
        )
        if "bias" in self:
            x = x + mx.expand_dims(self["bias"][indices], -2)
        return x

    switch_layers.QuantizedSwitchLinear.__call__ = __call__


_patch_quantized_switch_linear()

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "tests" / "fixtures" / "models"

# Shared tiny dimensions.
H = 64  # hidden_size
NQ = 4  # num_attention_heads
NKV = 2  # num_key_value_heads (GQA, 2 query heads per KV head)
HD = 16  # head_dim
FF = 128  # intermediate_size
BATCH, SEQ = 2, 16

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TOKENIZER_TARGET_VOCAB = 320

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CORPUS = [
    "The capital of France is Paris.",
    "The capital of Italy is Rome, and the capital of Spain is Madrid.",
    "Hello, world! How are you today?",
    "I am fine, thank you. And you?",
    "Interpretability means looking inside the model while it runs.",
    "Attention heads move information between token positions.",
    "The residual stream carries features from layer to layer.",
    "Numbers like 1, 2, 3 and 2024 are split into digits.",
    "Apple's MLX runs arrays on the CPU and on the GPU.",
    "A tiny model with random weights still has well defined logits.",
]

SAMPLE_TEXT = "The capital of France is Paris."


# --------------------------------------------------------------------------- #
# Tokenizer
# --------------------------------------------------------------------------- #


def build_tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TOKENIZER_TARGET_VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    # Re-serialize through json so the file is stable and pretty.
    data = json.loads(tok.to_str())
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    vocab = tok.get_vocab_size()
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    return text, vocab, ids


def tokenizer_config(ids):
    decoder = {
        str(ids[s]): {
            "content": s,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for s in SPECIALS
    }
    return {
        "add_bos_token": False,
        "add_eos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": "<|endoftext|>",
        "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "model_max_length": 2048,
        "pad_token": "<|endoftext|>",
        "tokenizer_class": "PreTrainedTokenizerFast",
        "unk_token": None,
    }


# --------------------------------------------------------------------------- #
# Weights
# --------------------------------------------------------------------------- #


class W:
    """Seeded weight factory producing float32 numpy arrays (HF [out, in] layout)."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)

    def normal(self, shape, std):
        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    def linear(self, out_dim, in_dim, std=0.05):
        return self.normal((out_dim, in_dim), std)

    def norm(self, dim, offset=False):
        # Plain RMSNorm weights scatter around 1; Gemma stores w with scale (1 + w),
        # so its stored values scatter around 0 (effective scale again around 1).
        base = 0.0 if offset else 1.0
        return (base + self.rng.standard_normal(dim) * 0.1).astype(np.float32)


ATTN_STD = 0.12  # q/k/v/o projections: large enough that attention is not uniform
MLP_STD = 0.06
EMB_STD = 0.1
HEAD_STD = 0.1


def llama_like_weights(
    w,
    n_layers,
    vocab,
    tied,
    head_dim=HD,
    qkv_bias=False,
    qk_norm=False,
    gemma_norms=False,
    fused=False,
    moe=None,
):
    t = {}
    t["model.embed_tokens.weight"] = w.normal((vocab, H), EMB_STD)
    for i in range(n_layers):
        p = f"model.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = w.norm(H, gemma_norms)
        t[f"{p}.post_attention_layernorm.weight"] = w.norm(H, gemma_norms)
        if gemma_norms:
            t[f"{p}.pre_feedforward_layernorm.weight"] = w.norm(H, True)
            t[f"{p}.post_feedforward_layernorm.weight"] = w.norm(H, True)
        q = w.linear(NQ * head_dim, H, ATTN_STD)
        k = w.linear(NKV * head_dim, H, ATTN_STD)
        v = w.linear(NKV * head_dim, H, ATTN_STD)
        if fused:
            t[f"{p}.self_attn.qkv_proj.weight"] = np.concatenate([q, k, v], axis=0)
        else:
            t[f"{p}.self_attn.q_proj.weight"] = q
            t[f"{p}.self_attn.k_proj.weight"] = k
            t[f"{p}.self_attn.v_proj.weight"] = v
        t[f"{p}.self_attn.o_proj.weight"] = w.linear(H, NQ * head_dim, ATTN_STD)
        if qkv_bias:
            t[f"{p}.self_attn.q_proj.bias"] = w.normal((NQ * head_dim,), 0.1)
            t[f"{p}.self_attn.k_proj.bias"] = w.normal((NKV * head_dim,), 0.1)
            t[f"{p}.self_attn.v_proj.bias"] = w.normal((NKV * head_dim,), 0.1)
        if qk_norm:
            t[f"{p}.self_attn.q_norm.weight"] = w.norm(head_dim, gemma_norms)
            t[f"{p}.self_attn.k_norm.weight"] = w.norm(head_dim, gemma_norms)
        if moe is not None:
            n_exp, ff = moe
            t[f"{p}.mlp.gate.weight"] = w.linear(n_exp, H, 0.3)
            for e in range(n_exp):
                t[f"{p}.mlp.experts.{e}.gate_proj.weight"] = w.linear(ff, H, MLP_STD * 2)
                t[f"{p}.mlp.experts.{e}.up_proj.weight"] = w.linear(ff, H, MLP_STD * 2)
                t[f"{p}.mlp.experts.{e}.down_proj.weight"] = w.linear(H, ff, MLP_STD * 2)
        elif fused:
            gate = w.linear(FF, H, MLP_STD)
            up = w.linear(FF, H, MLP_STD)
            t[f"{p}.mlp.gate_up_proj.weight"] = np.concatenate([gate, up], axis=0)
            t[f"{p}.mlp.down_proj.weight"] = w.linear(H, FF, MLP_STD)
        else:
            t[f"{p}.mlp.gate_proj.weight"] = w.linear(FF, H, MLP_STD)
            t[f"{p}.mlp.up_proj.weight"] = w.linear(FF, H, MLP_STD)
            t[f"{p}.mlp.down_proj.weight"] = w.linear(H, FF, MLP_STD)
    t["model.norm.weight"] = w.norm(H, gemma_norms)
    if not tied:
        t["lm_head.weight"] = w.linear(vocab, H, HEAD_STD)
    return t


def base_config(arch, model_type, vocab, ids, n_layers, tied, **extra):
    cfg = {
        "architectures": [arch],
        "model_type": model_type,
        "hidden_size": H,
        "intermediate_size": FF,
        "num_hidden_layers": n_layers,
        "num_attention_heads": NQ,
        "num_key_value_heads": NKV,
        "head_dim": HD,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "tie_word_embeddings": tied,
        "vocab_size": vocab,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "initializer_range": 0.02,
        "attention_dropout": 0.0,
        "use_cache": True,
        "torch_dtype": "float32",
        "transformers_version": "4.51.3",
    }
    cfg.update(extra)
    return cfg


# Each builder returns (config, weights, meta). meta["reference"] names the
# mlx-lm model file; meta may carry a "golden_hook" for HF semantics that mlx-lm
# does not implement.


def case_llama(vocab, ids):
    cfg = base_config(
        "LlamaForCausalLM", "llama", vocab, ids, 2, True,
        attention_bias=False, mlp_bias=False, pretraining_tp=1, rope_scaling=None,
    )
    del cfg["head_dim"]  # like SmolLM2: head_dim = hidden_size / num_attention_heads
    return cfg, llama_like_weights(W(101), 2, vocab, tied=True), {"reference": "llama.py"}


def case_llama3_scaled(vocab, ids):
    cfg = base_config(
        "LlamaForCausalLM", "llama", vocab, ids, 2, False,
        attention_bias=False, mlp_bias=False, pretraining_tp=1,
        rope_theta=500000.0,
        max_position_embeddings=512,
        # original_max_position_embeddings is small so that, with head_dim 16,
        # the three llama3 bands (kept, smoothed, divided by factor) all occur.
        rope_scaling={
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
            "rope_type": "llama3",
        },
    )
    return cfg, llama_like_weights(W(102), 2, vocab, tied=False), {"reference": "llama.py + rope_utils.py (Llama3RoPE)"}


def case_mistral(vocab, ids):
    cfg = base_config(
        "MistralForCausalLM", "mistral", vocab, ids, 2, False,
        rope_theta=1000000.0, sliding_window=None, max_position_embeddings=32768,
    )
    return cfg, llama_like_weights(W(103), 2, vocab, tied=False), {"reference": "llama.py (mlx-lm maps model_type mistral -> llama)"}


def case_qwen2(vocab, ids):
    cfg = base_config(
        "Qwen2ForCausalLM", "qwen2", vocab, ids, 2, True,
        rms_norm_eps=1e-06, rope_theta=1000000.0, max_position_embeddings=32768,
        use_sliding_window=False, sliding_window=32768, max_window_layers=2,
        rope_scaling=None,
    )
    del cfg["head_dim"]  # real Qwen2/2.5 configs have no head_dim
    return cfg, llama_like_weights(W(104), 2, vocab, tied=True, qkv_bias=True), {"reference": "qwen2.py"}


QWEN3_HD = 32  # explicit head_dim != hidden_size / num_attention_heads (as in real Qwen3)


def case_qwen3(vocab, ids):
    cfg = base_config(
        "Qwen3ForCausalLM", "qwen3", vocab, ids, 2, True,
        head_dim=QWEN3_HD, rms_norm_eps=1e-06, rope_theta=1000000.0,
        max_position_embeddings=40960, attention_bias=False,
        use_sliding_window=False, sliding_window=None, max_window_layers=2,
        rope_scaling=None,
    )
    w = llama_like_weights(W(105), 2, vocab, tied=True, head_dim=QWEN3_HD, qk_norm=True)
    return cfg, w, {"reference": "qwen3.py"}


def case_qwen3_moe(vocab, ids):
    cfg = base_config(
        "Qwen3MoeForCausalLM", "qwen3_moe", vocab, ids, 2, False,
        rms_norm_eps=1e-06, rope_theta=1000000.0, max_position_embeddings=40960,
        attention_bias=False, use_sliding_window=False, sliding_window=None,
        max_window_layers=2, rope_scaling=None,
        num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
        decoder_sparse_step=1, mlp_only_layers=[], norm_topk_prob=True,
        output_router_logits=False, router_aux_loss_coef=0.001,
    )
    w = llama_like_weights(W(109), 2, vocab, tied=False, qk_norm=True, moe=(4, 32))
    return cfg, w, {"reference": "qwen3_moe.py + switch_layers.py (SwitchGLU)"}


def case_gemma2(vocab, ids):
    cfg = base_config(
        "Gemma2ForCausalLM", "gemma2", vocab, ids, 2, True,
        hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-06, max_position_embeddings=8192,
        query_pre_attn_scalar=32,  # != head_dim: scale is 32**-0.5, not 16**-0.5
        sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        # Small caps so that soft-capping visibly changes the numbers.
        attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0,
        attention_bias=False, cache_implementation="hybrid",
        pad_token_id=ids["<|endoftext|>"],
    )
    w = llama_like_weights(W(106), 2, vocab, tied=True, gemma_norms=True)
    return cfg, w, {"reference": "gemma2.py (+ sliding window per layer_types, see FIXTURES.md)"}


def case_gemma3_text(vocab, ids):
    cfg = base_config(
        "Gemma3ForCausalLM", "gemma3_text", vocab, ids, 3, True,
        hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-06, max_position_embeddings=32768,
        query_pre_attn_scalar=24,
        sliding_window=4,
        sliding_window_pattern=2,
        layer_types=["sliding_attention", "full_attention", "sliding_attention"],
        rope_theta=1000000.0,
        rope_local_base_freq=10000.0,
        rope_scaling={"factor": 8.0, "rope_type": "linear"},
        attn_logit_softcapping=None, final_logit_softcapping=None,
        attention_bias=False, cache_implementation="hybrid",
        pad_token_id=ids["<|endoftext|>"],
    )
    w = llama_like_weights(W(107), 3, vocab, tied=True, gemma_norms=True, qk_norm=True)
    return cfg, w, {"reference": "gemma3_text.py"}


def case_phi3(vocab, ids):
    cfg = base_config(
        "Phi3ForCausalLM", "phi3", vocab, ids, 2, False,
        max_position_embeddings=4096, original_max_position_embeddings=4096,
        rope_scaling=None, sliding_window=None, attention_bias=False,
        embd_pdrop=0.0, resid_pdrop=0.0, pad_token_id=ids["<|endoftext|>"],
    )
    del cfg["head_dim"]  # phi3 derives head_dim = hidden_size / num_attention_heads
    w = llama_like_weights(W(108), 2, vocab, tied=False, fused=True)
    return cfg, w, {"reference": "phi3.py"}


GPT_OSS_EXPERTS, GPT_OSS_FF = 4, 32  # experts per layer, expert width (a multiple of 32 for MXFP4)


def gpt_oss_weights(w, vocab):
    """gpt_oss parameters under mlx-lm's own names (what `sanitize` produces and what
    `mlx_lm.convert` saves): experts stacked `[experts, out, in]` with biases, q/k/v/o biases,
    per-head attention `sinks`, a router with a bias, untied `lm_head`.

    Expert gate/up pre-activations get large biases (std 3) so that SwiGLU-OAI's clamping at
    ±7 is reached by some units; the sinks are large enough to take visible attention mass."""
    t = {"model.embed_tokens.weight": w.normal((vocab, H), EMB_STD)}
    e, ff = GPT_OSS_EXPERTS, GPT_OSS_FF
    for i in range(2):
        p = f"model.layers.{i}"
        t[f"{p}.input_layernorm.weight"] = w.norm(H)
        t[f"{p}.post_attention_layernorm.weight"] = w.norm(H)
        for name, out in [("q", NQ * HD), ("k", NKV * HD), ("v", NKV * HD)]:
            t[f"{p}.self_attn.{name}_proj.weight"] = w.linear(out, H, ATTN_STD)
            t[f"{p}.self_attn.{name}_proj.bias"] = w.normal((out,), 0.1)
        t[f"{p}.self_attn.o_proj.weight"] = w.linear(H, NQ * HD, ATTN_STD)
        t[f"{p}.self_attn.o_proj.bias"] = w.normal((H,), 0.1)
        t[f"{p}.self_attn.sinks"] = w.normal((NQ,), 1.0) + 1.0
        t[f"{p}.mlp.router.weight"] = w.linear(e, H, 0.3)
        t[f"{p}.mlp.router.bias"] = w.normal((e,), 0.1)
        x = f"{p}.mlp.experts"
        t[f"{x}.gate_proj.weight"] = w.normal((e, ff, H), 0.3)
        t[f"{x}.gate_proj.bias"] = w.normal((e, ff), 3.0)
        t[f"{x}.up_proj.weight"] = w.normal((e, ff, H), 0.3)
        t[f"{x}.up_proj.bias"] = w.normal((e, ff), 3.0)
        t[f"{x}.down_proj.weight"] = w.normal((e, H, ff), 0.03)
        t[f"{x}.down_proj.bias"] = w.normal((e, H), 0.1)
    t["model.norm.weight"] = w.norm(H)
    t["lm_head.weight"] = w.linear(vocab, H, HEAD_STD)
    return t


def case_gpt_oss(vocab, ids):
    cfg = base_config(
        "GptOssForCausalLM", "gpt_oss", vocab, ids, 2, False,
        intermediate_size=GPT_OSS_FF, num_local_experts=GPT_OSS_EXPERTS,
        num_experts_per_tok=2, experts_per_token=2,
        rope_theta=150000.0, max_position_embeddings=131072, initial_context_length=4096,
        # YaRN as gpt-oss ships it (factor 32, original context 4096, beta 32 / 1).
        rope_scaling={
            "beta_fast": 32.0, "beta_slow": 1.0, "factor": 32.0,
            "original_max_position_embeddings": 4096, "rope_type": "yarn", "truncate": False,
        },
        sliding_window=4, layer_types=["sliding_attention", "full_attention"],
        attention_bias=True, attention_dropout=0.0, swiglu_limit=7.0,
        router_aux_loss_coef=0.9, output_router_logits=False,
        pad_token_id=ids["<|endoftext|>"],
    )
    return cfg, gpt_oss_weights(W(110), vocab), {"reference": "gpt_oss.py + switch_layers.py + rope_utils.py (YarnRoPE)"}


def mxfp4_blocks(weight):
    """MLX's mxfp4 quantization of `weight` `[..., out, in]`, in the layout OpenAI's checkpoints
    store: `blocks` uint8 `[..., out, in/32, 16]` (two e2m1 values a byte, the byte order of MLX's
    packed uint32 words, which mlx-lm's sanitize views back as uint32) and `scales` uint8 e8m0
    `[..., out, in/32]`."""
    q, scales = mx.quantize(mx.array(weight), group_size=32, bits=4, mode="mxfp4")
    q8 = np.array(q.view(mx.uint8))
    return q8.reshape(*q8.shape[:-1], -1, 16), np.array(scales)


def gpt_oss_openai_layout(weights):
    """The float gpt_oss weights rewritten the way openai/gpt-oss-* ship on Hugging Face:
    experts MXFP4 (`*_blocks`, `*_scales`), gate and up fused in `gate_up_proj` with their rows
    interleaved (gate j at row 2j, up j at 2j+1), biases `*_proj_bias`; everything else as is."""
    out = {}
    for k, v in weights.items():
        if ".mlp.experts." not in k:
            out[k] = v
    for i in range(2):
        x = f"model.layers.{i}.mlp.experts"
        g, u = weights[f"{x}.gate_proj.weight"], weights[f"{x}.up_proj.weight"]
        fused = np.stack([g, u], axis=2).reshape(g.shape[0], 2 * g.shape[1], g.shape[2])
        out[f"{x}.gate_up_proj_blocks"], out[f"{x}.gate_up_proj_scales"] = mxfp4_blocks(fused)
        gb, ub = weights[f"{x}.gate_proj.bias"], weights[f"{x}.up_proj.bias"]
        out[f"{x}.gate_up_proj_bias"] = np.stack([gb, ub], axis=2).reshape(gb.shape[0], -1)
        out[f"{x}.down_proj_blocks"], out[f"{x}.down_proj_scales"] = mxfp4_blocks(
            weights[f"{x}.down_proj.weight"]
        )
        out[f"{x}.down_proj_bias"] = weights[f"{x}.down_proj.bias"]
    return out


def case_gpt_oss_openai(vocab, ids):
    cfg, w, _ = case_gpt_oss(vocab, ids)
    cfg["quantization_config"] = {
        "modules_to_not_convert": [
            "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head",
        ],
        "quant_method": "mxfp4",
    }
    return cfg, gpt_oss_openai_layout(w), {"reference": "gpt_oss.py sanitize + mxfp4 QuantizedSwitchLinear"}


FLOAT_CASES = {
    "llama": case_llama,
    "llama3-scaled": case_llama3_scaled,
    "mistral": case_mistral,
    "qwen2": case_qwen2,
    "qwen3": case_qwen3,
    "gemma2": case_gemma2,
    "gemma3_text": case_gemma3_text,
    "phi3": case_phi3,
    "qwen3_moe": case_qwen3_moe,
    "gpt_oss": case_gpt_oss,
    # OpenAI's own layout: MXFP4 experts as `*_blocks`/`*_scales`, fused gate_up.
    "gpt_oss-openai": case_gpt_oss_openai,
}


def mixed_predicate(path, module):
    """Per-layer overrides in the style of mlx-lm's mixed_* recipes.

    Default (top level of "quantization"): 4 bits, group 64. Overrides:
    v_proj of every layer and lm_head/embeddings stay at the default, the down_proj
    of layer 1 goes to 8 bits, layer 0's q_proj uses group 32, and layer 1's
    k_proj is left unquantized (the predicate returns False; mlx-lm then records
    nothing for it and the loader sees no `.scales`).
    """
    if path == "model.layers.1.mlp.down_proj":
        return {"group_size": 64, "bits": 8, "mode": "affine"}
    if path == "model.layers.0.self_attn.q_proj":
        return {"group_size": 32, "bits": 4, "mode": "affine"}
    if path.endswith("v_proj"):
        return {"group_size": 64, "bits": 4, "mode": "affine"}
    if path == "model.layers.1.self_attn.k_proj":
        return False
    return True


QUANT_CASES = {
    # name: (source float case, bits, group_size, predicate, dtype)
    "llama-q4": ("llama", 4, 32, None, "float32"),
    "qwen3-q8": ("qwen3", 8, 64, None, "float32"),
    "qwen2-mixed": ("qwen2", 4, 64, mixed_predicate, "bfloat16"),
    # MoE as mlx-community ships it: experts stacked under mlx-lm's internal
    # `switch_mlp` names, and the router (`mlp.gate`) at 8 bits through
    # qwen3_moe.Model.quant_predicate. Group 32 because moe_intermediate_size is 32.
    "qwen3_moe-q4": ("qwen3_moe", 4, 32, None, "float32"),
    # gpt_oss as mlx-community ships it (gpt-oss-*-MXFP4-Q8): convert of OpenAI's layout keeps
    # the MXFP4 experts (split into gate/up, stored under mlx-lm's names) and quantizes the
    # rest at 8 bits/group 64 affine (the router through gpt_oss's own quant_predicate).
    "gpt_oss-mxfp4": ("gpt_oss-openai", 8, 64, None, "float32"),
}

# Cases whose golden logits need Hugging Face semantics that mlx-lm lacks.
GOLDEN_HOOKS = {"gemma2": "gemma2_window"}

ALL_CASES = list(FLOAT_CASES) + list(QUANT_CASES) + ["llama-sharded"]


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #


_ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.int32): "I32", np.dtype(np.uint8): "U8"}


def save_safetensors(path, tensors, metadata):
    """Byte-deterministic safetensors writer (sorted header keys).

    safetensors' own writer orders `__metadata__` entries by a hash map, so the
    bytes change from run to run; this writer does not.
    """
    header, offset, blobs = {}, 0, []
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        b = a.tobytes()
        header[name] = {"dtype": _ST_DTYPES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        offset += len(b)
        blobs.append(b)
    header["__metadata__"] = dict(sorted(metadata.items()))
    h = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(len(h).to_bytes(8, "little"))
        f.write(h)
        for b in blobs:
            f.write(b)


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def write_tokenizer(folder, tok_text, tok_cfg):
    """Every fixture shares one tokenizer: written once in models/../tokenizer/, linked from
    each model folder (relative symlinks, as in a Hugging Face cache snapshot)."""
    shared = folder.parent.parent / "tokenizer"
    shared.mkdir(exist_ok=True)
    (shared / "tokenizer.json").write_text(tok_text)
    write_json(shared / "tokenizer_config.json", tok_cfg)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        link = folder / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(Path("..") / ".." / "tokenizer" / name)


def write_float_case(folder, cfg, weights, tok_text, tok_cfg):
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    write_json(folder / "config.json", cfg)
    save_safetensors(folder / "model.safetensors", weights, {"format": "pt"})
    write_tokenizer(folder, tok_text, tok_cfg)


def write_sharded(folder, src_weights, cfg, tok_text, tok_cfg):
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    cfg = dict(cfg)
    cfg["torch_dtype"] = "bfloat16"
    write_json(folder / "config.json", cfg)
    names = sorted(src_weights)
    shard1 = [n for n in names if n.startswith("model.embed_tokens") or n.startswith("model.layers.0.")]
    shard2 = [n for n in names if n not in shard1]
    files = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    weight_map, total = {}, 0
    for fname, keys in zip(files, [shard1, shard2]):
        arrs = {k: mx.array(src_weights[k]).astype(mx.bfloat16) for k in keys}
        mx.save_safetensors(str(folder / fname), arrs, metadata={"format": "pt"})
        for k in keys:
            weight_map[k] = fname
            total += arrs[k].nbytes
    write_json(
        folder / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
    )
    write_tokenizer(folder, tok_text, tok_cfg)


def write_quant_case(folder, src_folder, bits, group, predicate, dtype, tok_text, tok_cfg):
    if folder.exists():
        shutil.rmtree(folder)
    convert(
        hf_path=str(src_folder),
        mlx_path=str(folder),
        quantize=True,
        q_bits=bits,
        q_group_size=group,
        quant_predicate=predicate,
        dtype=dtype,
    )
    # convert() also writes a model card and re-saves the tokenizer through
    # transformers; keep the fixture minimal and identical across cases.
    for extra in ["README.md", "chat_template.jinja", "special_tokens_map.json"]:
        (folder / extra).unlink(missing_ok=True)
    write_tokenizer(folder, tok_text, tok_cfg)
    # convert() records the dtype it converted to as given; make it explicit.
    cfg = json.loads((folder / "config.json").read_text())
    cfg["torch_dtype"] = dtype
    write_json(folder / "config.json", cfg)


# --------------------------------------------------------------------------- #
# Golden logits
# --------------------------------------------------------------------------- #


def golden_input_ids(vocab):
    rng = np.random.default_rng(20240601)
    return rng.integers(0, vocab, size=(BATCH, SEQ)).astype(np.int32)


def gemma2_forward_windowed(model, inputs, layer_types, window):
    """mlx-lm's gemma2 forward with Hugging Face's per-layer sliding window.

    mlx-lm's gemma2.py ignores `sliding_window` (it only matters beyond 4096
    tokens on real checkpoints). Hugging Face applies it on the layers that
    `layer_types` marks "sliding_attention" (even layers by default): position i
    sees keys j with i - window < j <= i. Everything else is mlx-lm's own code.
    """
    m = model.model
    h = m.embed_tokens(inputs) * (m.args.hidden_size**0.5)
    n = h.shape[1]
    full = create_attention_mask(h, None, return_array=True)
    swa = create_causal_mask(n, window_size=window)
    for layer, lt in zip(m.layers, layer_types):
        h = layer(h, swa if lt == "sliding_attention" else full, None)
    out = m.embed_tokens.as_linear(m.norm(h))
    cap = model.final_logit_softcapping
    return mx.tanh(out / cap) * cap


def gpt_oss_attention_goldens(model, ids):
    """Layer by layer, mlx-lm's own queries and keys (projected, roped by its YarnRoPE:
    `attn_rot_q_l{i}`, `attn_rot_k_l{i}` `[batch, pos, heads, head_dim]`) and its attention output (MLX's fused kernel with the sinks, the layer's mask): `attn_z_l{i}`
    `[batch, pos, heads, head_dim]`, and the attention pattern computed here in NumPy (float64)
    from the same queries and keys, each head's sink logit joining the softmax as one more
    column that is then dropped: `attn_pattern_l{i}` `[batch, heads, pos, pos]`. The pattern
    times the values must give mlx-lm's output (checked here), so both describe one attention."""
    m = model.model
    h = m.embed_tokens(ids)
    out = {}
    for i, (layer, lt) in enumerate(zip(m.layers, m.layer_types)):
        attn = layer.self_attn
        x = layer.input_layernorm(h)
        B, L, _ = x.shape
        D = attn.head_dim
        q = attn.rope(attn.q_proj(x).reshape(B, L, -1, D).swapaxes(1, 2))
        k = attn.rope(attn.k_proj(x).reshape(B, L, -1, D).swapaxes(1, 2))
        v = attn.v_proj(x).reshape(B, L, -1, D).swapaxes(1, 2)
        window = m.window_size if lt == "sliding_attention" else None
        mask = create_causal_mask(L, window_size=window)
        z = mx.fast.scaled_dot_product_attention(q, k, v, scale=attn.sm_scale, mask=mask, sinks=attn.sinks)
        qn, kn, vn = (np.array(a, dtype=np.float64) for a in (q, k, v))
        groups = qn.shape[1] // kn.shape[1]
        kn, vn = np.repeat(kn, groups, axis=1), np.repeat(vn, groups, axis=1)
        scores = np.einsum("bhqd,bhkd->bhqk", qn * attn.sm_scale, kn)
        scores = np.where(np.array(mask)[None, None], scores, -np.inf)
        sinks = np.broadcast_to(np.array(attn.sinks, dtype=np.float64)[None, :, None, None], (B, qn.shape[1], L, 1))
        full = np.concatenate([sinks, scores], axis=-1)
        full = np.exp(full - full.max(axis=-1, keepdims=True))
        pattern = (full / full.sum(axis=-1, keepdims=True))[..., 1:]
        zn = np.einsum("bhqk,bhkd->bhqd", pattern, vn)
        assert np.max(np.abs(zn - np.array(z))) < 1e-5, "NumPy sink attention differs from MLX's"
        out[f"attn_pattern_l{i}"] = pattern.astype(np.float32)
        out[f"attn_z_l{i}"] = np.array(z.swapaxes(1, 2))
        out[f"attn_rot_q_l{i}"] = np.array(q.swapaxes(1, 2))
        out[f"attn_rot_k_l{i}"] = np.array(k.swapaxes(1, 2))
        h = layer(h, mask, None)
    return out


def run_logits(folder, model_config=None, hook=None, upcast=False):
    model, tok, cfg = load(str(folder), model_config=model_config, return_config=True)
    if upcast:
        model.set_dtype(mx.float32)
    ids = mx.array(golden_input_ids(cfg["vocab_size"]))
    if hook == "gemma2_window":
        out = gemma2_forward_windowed(model, ids, cfg["layer_types"], cfg["sliding_window"])
    else:
        out = model(ids)
    mx.eval(out)
    return out, model, tok, cfg


def write_golden(folder, case, hook=None):
    out, model, tok, cfg = run_logits(folder, hook=hook)
    dtype = str(out.dtype).replace("mlx.core.", "")
    tensors = {
        "input_ids": golden_input_ids(cfg["vocab_size"]),
        "logits": np.array(out.astype(mx.float32)),
    }
    if out.dtype != mx.float32:
        # Same weights, every floating parameter cast to float32 first: lets the
        # Rust side separate loading bugs from bf16 rounding.
        out32, *_ = run_logits(folder, hook=hook, upcast=True)
        tensors["logits_f32"] = np.array(out32)
    if hook == "gemma2_window":
        plain, *_ = run_logits(folder)
        tensors["logits_mlx_lm_no_window"] = np.array(plain)
    if case == "gpt_oss":
        tensors.update(gpt_oss_attention_goldens(model, mx.array(tensors["input_ids"])))
    sample_ids = tok.encode(SAMPLE_TEXT)
    chat_ids = tok.apply_chat_template(
        [{"role": "user", "content": "Hi"}], add_generation_prompt=True, tokenize=True
    )
    if isinstance(chat_ids, dict):
        chat_ids = chat_ids["input_ids"]
    meta = {
        "case": case,
        "compute_dtype": dtype,
        "mlx_version": mx.__version__,
        "mlx_lm_version": mlx_lm.__version__,
        "sample_text": SAMPLE_TEXT,
        "sample_ids": json.dumps(list(sample_ids)),
        "chat_user_hi_ids": json.dumps(list(chat_ids)),
    }
    save_safetensors(folder / "golden.safetensors", tensors, meta)
    return tensors


# --------------------------------------------------------------------------- #
# Checks
# --------------------------------------------------------------------------- #


def max_diff(a, b):
    return float(np.max(np.abs(np.array(a, dtype=np.float32) - np.array(b, dtype=np.float32))))


# Ablations: (description, model_config override) that must change the logits.
ABLATIONS = {
    "llama3-scaled": [("rope_scaling removed", {"rope_scaling": None})],
    "gemma2": [
        ("attn softcap off", {"attn_logit_softcapping": 1e9}),
        ("final softcap off", {"final_logit_softcapping": 1e9}),
        ("query_pre_attn_scalar = head_dim", {"query_pre_attn_scalar": HD}),
    ],
    "gemma3_text": [
        ("no sliding window", {"sliding_window": 100000}),
        ("rope_local_base_freq = rope_theta", {"rope_local_base_freq": 1000000.0}),
        ("no linear rope scaling", {"rope_scaling": None}),
        ("query_pre_attn_scalar = head_dim", {"query_pre_attn_scalar": HD}),
    ],
    "gpt_oss": [
        ("no sliding window", {"sliding_window": 100000}),
        ("rope_scaling removed", {"rope_scaling": None}),
    ],
}


def gpt_oss_feature_checks(folder, logits, ids):
    """gpt_oss features that config.json cannot switch off: attention sinks (set to -inf: no
    sink) and SwiGLU-OAI's clamping at 7 (limit raised to 1e9). Each must move the logits."""
    notes, ok = [], True
    model, _ = load(str(folder))
    for layer in model.model.layers:
        layer.self_attn.sinks = mx.full(layer.self_attn.sinks.shape, -mx.inf)
    d = max_diff(model(mx.array(ids)), logits)
    notes.append(f"sinks off: max|d|={d:.3f}")
    ok &= d > 1e-2
    model, _ = load(str(folder))
    for layer in model.model.layers:
        layer.mlp.experts.activation._limit = 1e9
    d = max_diff(model(mx.array(ids)), logits)
    notes.append(f"clamp off: max|d|={d:.3f}")
    ok &= d > 1e-2
    return notes, ok


def check_case(folder, case):
    from safetensors.numpy import load_file

    g = load_file(str(folder / "golden.safetensors"))
    logits = g["logits"]
    ok = True
    notes = []
    if not np.all(np.isfinite(logits)):
        ok = False
        notes.append("NON-FINITE logits")
    spread = float(logits.std())
    if spread < 1e-3:
        ok = False
        notes.append("degenerate logits")
    # Rows must differ and each row must vary along positions.
    if max_diff(logits[0], logits[1]) < 1e-3:
        ok = False
        notes.append("rows equal")
    # Reproducibility: load again and compare.
    hook = GOLDEN_HOOKS.get(case)
    out, model, tok, cfg = run_logits(folder, hook=hook)
    rep = max_diff(out.astype(mx.float32), logits)
    if rep > 1e-5:
        ok = False
        notes.append(f"reload differs {rep:.2e}")
    if "logits_mlx_lm_no_window" in g:
        d = max_diff(g["logits_mlx_lm_no_window"], logits)
        notes.append(f"window vs no window: max|d|={d:.3f}")
        if d < 1e-2:
            ok = False
    if "logits_f32" in g:
        notes.append(f"bf16 vs f32 compute: max|d|={max_diff(g['logits_f32'], logits):.3f}")
    for desc, override in ABLATIONS.get(case, []):
        alt, *_ = run_logits(folder, model_config=override, hook=hook)
        d = max_diff(alt, logits)
        notes.append(f"{desc}: max|d|={d:.3f}")
        if d < 1e-2:
            ok = False
    if case == "gpt_oss":
        more, good = gpt_oss_feature_checks(folder, logits, g["input_ids"])
        notes += more
        ok &= good
    if case == "qwen3_moe":
        # Make sure routing is not degenerate: several distinct top-2 sets.
        layer = model.model.layers[0]
        h = model.model.embed_tokens(mx.array(g["input_ids"]))
        gates = mx.softmax(layer.mlp.gate(layer.post_attention_layernorm(h)), axis=-1)
        top = np.argsort(-np.array(gates), axis=-1)[..., :2]
        sets = {tuple(sorted(t)) for t in top.reshape(-1, 2).tolist()}
        notes.append(f"layer0 distinct top-2 expert sets (pre-attn proxy): {len(sets)}")
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(
        f"{'OK ' if ok else 'BAD'} {case:14s} {size/1024:7.1f} KiB  vocab={logits.shape[-1]} "
        f"std={spread:.3f} dtype={cfg.get('torch_dtype')}  " + "; ".join(notes)
    )
    return ok


# --------------------------------------------------------------------------- #


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(DEFAULT_OUT))
    ap.add_argument("--only", default="")
    ap.add_argument("--check-only", action="store_true")
    args = ap.parse_args()
    out = Path(args.out)
    only = [c for c in args.only.split(",") if c] or ALL_CASES

    tok_text, vocab, ids = build_tokenizer()
    tok_cfg = tokenizer_config(ids)
    print(f"tokenizer: vocab {vocab}, specials {ids}, sha256 {hashlib.sha256(tok_text.encode()).hexdigest()[:16]}")

    if not args.check_only:
        out.mkdir(parents=True, exist_ok=True)
        built = {}
        for case, fn in FLOAT_CASES.items():
            needed = case in only or any(
                src == case for q, (src, *_r) in QUANT_CASES.items() if q in only
            ) or (case == "llama" and "llama-sharded" in only)
            if not needed:
                continue
            cfg, weights, meta = fn(vocab, ids)
            built[case] = (cfg, weights, meta)
            if case in only:
                write_float_case(out / case, cfg, weights, tok_text, tok_cfg)
                write_golden(out / case, case, hook=GOLDEN_HOOKS.get(case))
        for case, (src, bits, group, pred, dtype) in QUANT_CASES.items():
            if case not in only:
                continue
            cfg, weights, _ = built[src]
            tmp = out / f".src-{src}"
            write_float_case(tmp, cfg, weights, tok_text, tok_cfg)
            try:
                write_quant_case(out / case, tmp, bits, group, pred, dtype, tok_text, tok_cfg)
            finally:
                shutil.rmtree(tmp)
            write_golden(out / case, case)
        if "llama-sharded" in only:
            cfg, weights, _ = built["llama"]
            write_sharded(out / "llama-sharded", weights, cfg, tok_text, tok_cfg)
            write_golden(out / "llama-sharded", "llama-sharded")

    all_ok = True
    for case in only:
        all_ok &= check_case(out / case, case)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"total {total/1024/1024:.2f} MiB under {out}")
    sys.exit(0 if all_ok else 1)


if __name__ == "__main__":
    main()
