#!/usr/bin/env python3
"""Convert a llama-architecture GGUF file into a Hugging Face-layout folder that mlx-lm loads.

Usage:
    gguf_to_hf.py GGUF OUTDIR [--dtype f32|f16|bf16] [--force]

What it does (reference side of mlxi's parity tests; see tests/reference/README.md):
  * dequantizes every tensor with gguf.quants.dequantize (Q4_1, Q8_0, ... -> f32), then casts to
    --dtype (default f32, i.e. the exact dequantized values);
  * undoes llama.cpp's Q/K row permutation for llama-arch models (llama.cpp stores q_proj/k_proj rows
    interleaved for its "traditional" RoPE; HF/mlx-lm use rotate-half RoPE): rows are viewed as
    (n_heads, head_dim/2, 2, in), axes 1 and 2 swapped, reshaped back (K uses the KV head count);
  * maps GGUF tensor names to HF names and writes model.safetensors (numpy order already is the
    reversed GGUF dimension order, i.e. HF's [out, in]);
  * writes config.json (LlamaForCausalLM, hyperparameters from the GGUF metadata,
    tie_word_embeddings when the GGUF has no `output` tensor), generation_config.json;
  * rebuilds the byte-level BPE tokenizer from tokenizer.ggml.{tokens,merges,token_type} and
    tokenizer.ggml.pre into tokenizer.json, and writes tokenizer_config.json (chat template,
    bos/eos/pad/unk tokens, add_bos_token from the GGUF).

Only the llama architecture (with gpt2-style BPE vocabularies) is supported.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

SUPPORTED_ARCHS = ("llama",)


def meta(reader, key, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    return field.contents()


def f32_to_float(x):
    """Shortest decimal that round-trips the f32 value (GGUF stores 1e-5 as 9.99999974e-06)."""
    return float(str(np.float32(x)))


def unpermute_rows(w, n_heads):
    """Inverse of llama.cpp convert_hf_to_gguf's `permute` for Q/K projection weights."""
    out_dim = w.shape[0]
    head_dim = out_dim // n_heads
    assert n_heads * head_dim == out_dim and head_dim % 2 == 0, (w.shape, n_heads)
    return (
        w.reshape(n_heads, head_dim // 2, 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def hf_name(gguf_name):
    """Map a GGUF tensor name to its Hugging Face llama name."""
    top = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    if gguf_name in top:
        return top[gguf_name]
    parts = gguf_name.split(".")
    if parts[0] != "blk" or len(parts) != 4:
        raise ValueError(f"unexpected tensor name {gguf_name}")
    layer, kind, suffix = parts[1], parts[2], parts[3]
    sub = {
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
        "attn_norm": "input_layernorm",
        "ffn_norm": "post_attention_layernorm",
    }
    if kind not in sub:
        raise ValueError(f"unexpected tensor name {gguf_name}")
    return f"model.layers.{layer}.{sub[kind]}.{suffix}"


def convert_tensors(reader, arch, n_heads, n_kv_heads):
    tensors = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type)
        w = np.asarray(w, dtype=np.float32)
        # numpy shape is the GGUF shape reversed (GGUF lists the innermost dimension first).
        expected = tuple(int(d) for d in reversed(t.shape.tolist()))
        w = w.reshape(expected)
        if arch == "llama" and t.name.endswith("attn_q.weight"):
            w = unpermute_rows(w, n_heads)
        elif arch == "llama" and t.name.endswith("attn_k.weight"):
            w = unpermute_rows(w, n_kv_heads)
        tensors[hf_name(t.name)] = np.ascontiguousarray(w)
    return tensors


def build_tokenizer(reader):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers import AddedToken

    model_type = meta(reader, "tokenizer.ggml.model")
    if model_type != "gpt2":
        raise ValueError(f"only gpt2-style BPE tokenizers are supported, got {model_type!r}")
    tokens = list(meta(reader, "tokenizer.ggml.tokens"))
    merges = list(meta(reader, "tokenizer.ggml.merges"))
    token_types = list(meta(reader, "tokenizer.ggml.token_type"))
    pre = meta(reader, "tokenizer.ggml.pre", "default")

    vocab = {}
    for i, tok in enumerate(tokens):
        if tok in vocab:
            raise ValueError(f"duplicate token string {tok!r} at ids {vocab[tok]} and {i}")
        vocab[tok] = i
    merge_pairs = []
    for m in merges:
        a, b = m.split(" ")
        merge_pairs.append((a, b))

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merge_pairs, fuse_unk=False, byte_fallback=False))

    if pre in ("smollm", "starcoder", "refact"):
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Digits(individual_digits=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
            ]
        )
    elif pre in ("gpt-2", "default"):
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    else:
        raise ValueError(f"unsupported tokenizer.ggml.pre {pre!r}")
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)

    # token_type: 1 normal, 2 unknown, 3 control (special), 4 user-defined (added, not special),
    # 5 unused (stays in the vocabulary), 6 byte.
    added = []
    for i, tt in enumerate(token_types):
        if tt == 3:
            added.append(AddedToken(tokens[i], special=True, normalized=False))
        elif tt == 4:
            added.append(AddedToken(tokens[i], special=False, normalized=False))
    # Added tokens already exist in the vocabulary, so they keep their ids.
    tok.add_tokens(added)
    for i, tt in enumerate(token_types):
        if tt in (3, 4):
            assert tok.token_to_id(tokens[i]) == i, (i, tokens[i])
    return tok, tokens, token_types


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("gguf", help="input .gguf file (llama architecture)")
    ap.add_argument("outdir", help="output folder (Hugging Face layout)")
    ap.add_argument("--dtype", choices=["f32", "f16", "bf16"], default="f32",
                    help="dtype of the written weights (default f32 = exact dequantized values)")
    ap.add_argument("--force", action="store_true", help="overwrite OUTDIR if it exists")
    args = ap.parse_args(argv)

    out = Path(args.outdir)
    if out.exists():
        if not args.force:
            sys.exit(f"{out} exists; pass --force to overwrite")
        shutil.rmtree(out)
    out.mkdir(parents=True)

    reader = GGUFReader(args.gguf)
    arch = meta(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHS:
        sys.exit(f"unsupported architecture {arch!r}")

    def hp(key, default=None):
        return meta(reader, f"{arch}.{key}", default)

    n_layers = int(hp("block_count"))
    hidden = int(hp("embedding_length"))
    ffn = int(hp("feed_forward_length"))
    n_heads = int(hp("attention.head_count"))
    n_kv_heads = int(hp("attention.head_count_kv", n_heads))
    ctx = int(hp("context_length"))
    rope_theta = f32_to_float(hp("rope.freq_base", 10000.0))
    eps = f32_to_float(hp("attention.layer_norm_rms_epsilon"))
    head_dim = int(hp("attention.key_length", hidden // n_heads))
    rope_dim = int(hp("rope.dimension_count", head_dim))
    if rope_dim != head_dim:
        sys.exit(f"partial rotary (rope dim {rope_dim} != head_dim {head_dim}) not supported")
    if hp("rope.scaling.type") not in (None, "none"):
        sys.exit("rope scaling not supported by this converter")

    tensors = convert_tensors(reader, arch, n_heads, n_kv_heads)
    vocab_size = tensors["model.embed_tokens.weight"].shape[0]
    tied = "lm_head.weight" not in tensors

    # Weights.
    st_meta = {"format": "pt"}
    if args.dtype == "bf16":
        import mlx.core as mx

        mx.save_safetensors(
            str(out / "model.safetensors"),
            {k: mx.array(v).astype(mx.bfloat16) for k, v in tensors.items()},
            metadata=st_meta,
        )
    else:
        from safetensors.numpy import save_file

        np_dtype = np.float32 if args.dtype == "f32" else np.float16
        save_file({k: v.astype(np_dtype) for k, v in tensors.items()},
                  str(out / "model.safetensors"), metadata=st_meta)
    torch_dtype = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}[args.dtype]

    # Tokenizer.
    tok, tokens, token_types = build_tokenizer(reader)
    tok.save(str(out / "tokenizer.json"))
    bos_id = meta(reader, "tokenizer.ggml.bos_token_id")
    eos_id = meta(reader, "tokenizer.ggml.eos_token_id")
    pad_id = meta(reader, "tokenizer.ggml.padding_token_id")
    unk_id = meta(reader, "tokenizer.ggml.unknown_token_id")
    add_bos = bool(meta(reader, "tokenizer.ggml.add_bos_token", False))
    add_eos = bool(meta(reader, "tokenizer.ggml.add_eos_token", False))
    if add_bos or add_eos:
        sys.exit("add_bos_token/add_eos_token = true is not supported by this converter")
    chat_template = meta(reader, "tokenizer.chat_template")

    def tok_str(i):
        return None if i is None else tokens[int(i)]

    added_decoder = {}
    for i, tt in enumerate(token_types):
        if tt in (3, 4):
            added_decoder[str(i)] = {
                "content": tokens[i], "lstrip": False, "normalized": False,
                "rstrip": False, "single_word": False, "special": tt == 3,
            }
    tok_cfg = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": ctx,
        "bos_token": tok_str(bos_id),
        "eos_token": tok_str(eos_id),
        "pad_token": tok_str(pad_id),
        "unk_token": tok_str(unk_id),
        "added_tokens_decoder": added_decoder,
        "additional_special_tokens": [tokens[i] for i, tt in enumerate(token_types)
                                      if tt == 3 and i not in (bos_id, eos_id, pad_id, unk_id)],
    }
    if chat_template is not None:
        tok_cfg["chat_template"] = chat_template
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2, ensure_ascii=False) + "\n")
    special_map = {k: tok_cfg[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                   if tok_cfg[k] is not None}
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2, ensure_ascii=False) + "\n")

    # Model config.
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": ffn,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": n_kv_heads,
        "head_dim": head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": eps,
        "rope_theta": rope_theta,
        "rope_scaling": None,
        "max_position_embeddings": ctx,
        "vocab_size": vocab_size,
        "tie_word_embeddings": tied,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": pad_id,
        "torch_dtype": torch_dtype,
        "use_cache": True,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen_cfg = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    (out / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")

    n_params = sum(int(v.size) for v in tensors.values())
    print(f"wrote {out}: {len(tensors)} tensors, {n_params:,} params, dtype {args.dtype}, "
          f"tied={tied}, vocab {vocab_size}", file=sys.stderr)


if __name__ == "__main__":
    main()
