#!/usr/bin/env python3
"""Sparse-autoencoder fixtures and goldens for tests/sae.rs.

Writes random SAEs on the `llama` fixture's `blocks.0.hook_resid_post` (d_in 64, d_sae 128)
into tests/fixtures/sae/, one per activation kind, in SAELens's format (`cfg.json` +
`sae_weights.safetensors` with `W_enc` [d_in, d_sae], `b_enc`, `W_dec` [d_sae, d_in], `b_dec`,
and `threshold` for JumpReLU):

- `standard/` (ReLU), `jumprelu/`, `topk/` (k = 8), `standard_cnr/` (ReLU with
  `normalize_activations: "constant_norm_rescale"`), and `gemmascope/layer_0/width_128/params.npz`
  (Gemma Scope's layout: a NumPy archive of W_enc, W_dec, b_enc, b_dec, threshold; JumpReLU
  without subtracting b_dec from the input);

and `golden.safetensors` holding, for each kind K:

- `K.encode` [2, 16, 128] and `K.reconstruct` [2, 16, 64]: the SAE on the fixture's
  `blocks.0.hook_resid_post` activations (`acts`, from mlx-lm's own layers), computed here in
  NumPy float64 with SAELens's formulas (sae_lens 6.54: standard_sae.py, jumprelu_sae.py,
  topk_sae.py, sae.py's `constant_norm_rescale`), stored float32;
- `K.spliced_logits` [2, 16, 320]: the fixture model's logits with layer 0's output replaced
  by that reconstruction at every position except each row's first (mlxi's `sae_eval` window;
  the test attaches `sae_splice` with the same window), computed with mlx-lm's modules;
- for `topk` also `topk.ablate_logits` (features `ABLATE` removed, error term kept:
  `x - (decode(f) - decode(f without ABLATE))` at every position) and `topk.steer_logits`
  (`x + 2.5 * W_dec[STEER]` at positions 3..15 of each row).

Run from the repository root (a few seconds):

    ~/.cache/mlxi/refvenv/bin/python tests/reference/sae_golden.py

Versions: those of tests/reference/FIXTURES.md (mlx 0.32.2, mlx-lm 0.32.2, numpy 2.4.6).
"""

import json
import zipfile
import io
from pathlib import Path

import numpy as np
import mlx.core as mx
import mlx_lm
from mlx_lm.models.base import create_attention_mask
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "tests" / "fixtures" / "models" / "llama"
OUT = REPO / "tests" / "fixtures" / "sae"
HOOK = "blocks.0.hook_resid_post"
D_IN, D_SAE, K = 64, 128, 8
ABLATE = [3, 17, 40]
STEER = 5


def run(model, ids, edit=None):
    """mlx-lm's llama forward, with `edit(h)` applied to layer 0's output."""
    inner = model.model
    h = inner.embed_tokens(ids)
    mask = create_attention_mask(h, None)
    for i, layer in enumerate(inner.layers):
        h = layer(h, mask, None)
        if i == 0 and edit is not None:
            h = mx.array(edit(np.array(h, dtype=np.float64)).astype(np.float32))
    h = inner.norm(h)
    return inner.embed_tokens.as_linear(h)


def weights(rng, kind):
    x_scale = 1.0
    w_dec = rng.normal(0, 1, (D_SAE, D_IN)) / np.sqrt(D_IN)
    w_enc = rng.normal(0, 1, (D_IN, D_SAE)) * 3.0
    b_enc = rng.normal(0, 0.2, D_SAE)
    b_dec = rng.normal(0, 0.05, D_IN) * x_scale
    w = {"W_enc": w_enc, "b_enc": b_enc, "W_dec": w_dec, "b_dec": b_dec}
    if kind in ("jumprelu", "gemmascope"):
        w["threshold"] = rng.uniform(0.0, 0.6, D_SAE)
    return w


def encode(w, kind, x):
    """SAELens's encode (float64), with its normalisation state."""
    state = None
    if kind == "standard_cnr":
        coeff = np.sqrt(D_IN) / np.linalg.norm(x, axis=-1, keepdims=True)
        x = x * coeff
        state = coeff
    sae_in = x if kind == "gemmascope" else x - w["b_dec"]
    pre = sae_in @ w["W_enc"] + w["b_enc"]
    relu = np.maximum(pre, 0)
    if kind in ("jumprelu", "gemmascope"):
        f = relu * (pre > w["threshold"])
    elif kind == "topk":
        idx = np.argpartition(-pre, K - 1, axis=-1)[..., :K]
        f = np.zeros_like(pre)
        np.put_along_axis(f, idx, np.maximum(np.take_along_axis(pre, idx, -1), 0), -1)
    else:
        f = relu
    return f, state


def decode(w, f, state):
    y = f @ w["W_dec"] + w["b_dec"]
    return y if state is None else y / state


def save_saelens(folder, w, kind):
    folder.mkdir(parents=True, exist_ok=True)
    arch = {"standard": "standard", "standard_cnr": "standard", "jumprelu": "jumprelu",
            "topk": "topk"}[kind]
    cfg = {"architecture": arch, "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
           "device": "cpu", "apply_b_dec_to_input": True,
           "normalize_activations": "constant_norm_rescale" if kind == "standard_cnr" else "none",
           "reshape_activations": "none",
           "metadata": {"hook_name": HOOK, "model_name": "llama-fixture"}}
    if kind == "topk":
        cfg["k"] = K
    # An older SAELens layout for one of them: hook_name at the top, activation_fn_kwargs.
    if kind == "jumprelu":
        del cfg["metadata"]
        cfg["hook_name"] = HOOK
        cfg["hook_layer"] = 0
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_file({k: v.astype(np.float32) for k, v in w.items()},
              str(folder / "sae_weights.safetensors"))


def save_npz(path, w):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: v.astype(np.float32) for k, v in w.items()})


def main():
    model, _ = mlx_lm.load(str(MODEL))
    golden = mx.load(str(MODEL / "golden.safetensors"))
    ids = golden["input_ids"]
    plain = run(model, ids)
    assert mx.allclose(plain, golden["logits"], atol=1e-4).item(), "run() is not the fixture's forward"
    acts = {}

    def grab(h):
        acts["x"] = h.copy()
        return h

    run(model, ids, grab)
    x = acts["x"]
    out = {"acts": x.astype(np.float32)}
    rng = np.random.default_rng(20261202)
    for kind in ["standard", "jumprelu", "topk", "standard_cnr", "gemmascope"]:
        w = weights(rng, kind)
        # The file holds float32: compute from exactly those values.
        w = {k: v.astype(np.float32).astype(np.float64) for k, v in w.items()}
        if kind == "gemmascope":
            save_npz(OUT / "gemmascope" / "layer_0" / "width_128" / "params.npz", w)
        else:
            save_saelens(OUT / kind, w, kind)
        f, st = encode(w, kind, x)
        rec = decode(w, f, st)
        out[f"{kind}.encode"] = f.astype(np.float32)
        out[f"{kind}.reconstruct"] = rec.astype(np.float32)
        l0 = (f > 0).sum(-1).mean()
        ev = 1 - ((x - rec) ** 2).sum() / ((x - x.mean(axis=(0, 1))) ** 2).sum()
        print(f"{kind}: L0 {l0:.1f}, explained variance {ev:.3f}")

        def splice(h, w=w, kind=kind):
            f, st = encode(w, kind, h)
            r = decode(w, f, st)
            r[:, 0] = h[:, 0]
            return r

        out[f"{kind}.spliced_logits"] = np.array(run(model, ids, splice), dtype=np.float32)
        if kind == "topk":
            def ablate(h, w=w):
                f, st = encode(w, kind, h)
                g = f.copy()
                g[..., ABLATE] = 0
                return h + decode(w, g, st) - decode(w, f, st)

            def steer(h, w=w):
                h = h.copy()
                h[:, 3:] += 2.5 * w["W_dec"][STEER]
                return h

            out["topk.ablate_logits"] = np.array(run(model, ids, ablate), dtype=np.float32)
            out["topk.steer_logits"] = np.array(run(model, ids, steer), dtype=np.float32)
    save_file(out, str(OUT / "golden.safetensors"),
              metadata={"ablate": json.dumps(ABLATE), "steer": str(STEER), "hook": HOOK})


if __name__ == "__main__":
    main()
