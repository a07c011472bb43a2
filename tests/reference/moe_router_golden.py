#!/usr/bin/env python3
"""Router goldens for mlxi's mixture-of-experts hooks and routing interventions.

For the qwen3_moe, qwen3_moe-q4, gpt_oss and gpt_oss-mxfp4 fixtures (tests/fixtures/models/),
runs mlx-lm's own
model (after `mlx_lm.load(folder)`) on the fixture's `input_ids` and writes
`router_golden.safetensors` next to `golden.safetensors` with:

- per sparse layer L: `layer{L}.router_logits` [2, 16, n_experts] (the router's output,
  `mlp.gate(x)`), `layer{L}.expert_ids` [2, 16, k] int32 and `layer{L}.expert_weights`
  [2, 16, k] (mlx-lm's argpartition choice and scores, put in order of decreasing weight),
  `layer{L}.expert_out` [2, 16, k, d] (mlx-lm's `switch_mlp(x, inds)`, in the same order);
- logits [2, 16, vocab] of forwards with a routing intervention, each computed by mlx-lm's
  modules with the intervention written out in the block's call (see `moe_call`):
  `ban.logits` (expert `ban_expert` has router logit -inf at every layer and position),
  `ban_window.logits` (the same at layer 1, positions 4..9 only), `force.logits` (expert
  `force_expert` is chosen at every position of layer 0: it first, then the best other
  expert by score; weights are the router's probabilities of the chosen pair, renormalized),
  `force_window.logits` (the same at layer 1, positions 2, 5, 11), `scale0.logits` (expert
  `scale_expert`'s output times 0 at layer 0, wherever chosen), `scale2.logits` (times 2.5 at
  layer 1), `steer.logits` (`steer.vector` times 3 added to layer 0's output, i.e.
  `blocks.0.hook_resid_post`);
- the routes the other weightings give on `layer0.router_logits` (mlx-lm's code):
  `gptoss.expert_ids`/`expert_weights` (gpt-oss: top-2 logits, softmax over them),
  `gptoss_ban.*` (the same with `ban_expert` at -inf), `no_renorm.*` (Qwen3-MoE with
  `norm_topk_prob` false).

The experts named in the metadata are chosen from the plain run: `ban_expert` and
`scale_expert` are the most used experts of layer 0 over both rows, `force_expert` the least
used. The script first checks that its own block call without interventions reproduces
mlx-lm's logits exactly (it is mlx-lm's `Qwen3MoeSparseMoeBlock.__call__`, or gpt-oss's
`MLPBlock.__call__`, plus hooks). On gpt-oss a ban leaves the softmax over the chosen experts'
(unbanned) logits and a force takes the softmax over the forced pair's logits: gpt-oss's own
weighting of whatever experts are chosen.

It also writes `tests/fixtures/models/qwen3_moe/experts_golden.json`, what the `experts`
recipe (stdlib/experts.rhai) must report in quick mode on that fixture (its first 6 texts,
copied below as EXPERTS_TEXTS): per MoE layer the number of tokens each expert is chosen for,
the most used expert, the mean next-token loss (nats per token, every token after the first of
each text, one text at a time) plain, with the layer's most used expert banned (router logit
-inf), and with the control expert banned (drawn as the recipe draws it: MINSTD from seed 0).

Run from the repository root (about 5 s):

    ~/.cache/mlxi/refvenv/bin/python tests/reference/moe_router_golden.py

Versions: those of tests/reference/FIXTURES.md (mlx 0.32.2, mlx-lm 0.32.2, numpy 2.4.6).
"""

import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

# Importing make_fixtures applies its fix for mlx-lm 0.32.2's quantized MoE call.
import make_fixtures  # noqa: E402,F401
import mlx.core as mx  # noqa: E402
import mlx_lm  # noqa: E402
from mlx_lm.models import gpt_oss, qwen3_moe  # noqa: E402

CASES = ["qwen3_moe", "qwen3_moe-q4", "gpt_oss", "gpt_oss-mxfp4"]

# The first 6 texts of `experts::dataset()` (stdlib/experts.rhai), which quick mode uses.
EXPERTS_TEXTS = [
    "The old lighthouse keeper climbed the stairs every evening to light the lamp.",
    "Rain fell on the quiet village while the children slept.",
    "She opened the letter slowly, afraid of what it might say.",
    "The river had carved the valley over millions of years.",
    "def add(a, b):\n    return a + b",
    "for (int i = 0; i < n; i++) { sum += x[i]; }",
]

# What the patched calls do: filled per run by `run()`.
STATE = {"record": None, "moe": {}, "steer": {}}


def moe_call(self, x):
    """mlx-lm's Qwen3MoeSparseMoeBlock.__call__ (0.32.2) with the interventions in STATE."""
    cfg = STATE["moe"].get(self._ref_idx, {})
    gates = self.gate(x)
    T = x.shape[1]
    window = cfg.get("window")
    win = mx.array([True] * T if window is None else [t in window for t in range(T)])
    if "ban" in cfg:
        banned = mx.array([e == cfg["ban"] for e in range(self.num_experts)])
        gates = mx.where(win[:, None] & banned, mx.array(-np.inf, gates.dtype), gates)
    logits = gates
    gates = mx.softmax(gates, axis=-1, precise=True)
    k = self.top_k
    inds = mx.argpartition(gates, kth=-k, axis=-1)[..., -k:]
    if "force" in cfg:
        f = cfg["force"]
        key = mx.where(mx.arange(self.num_experts) == f, mx.array(np.inf), gates)
        forced = mx.argpartition(key, kth=-k, axis=-1)[..., -k:]
        inds = mx.where(win[:, None], forced, inds)
    scores = mx.take_along_axis(gates, inds, axis=-1)
    if self.norm_topk_prob:
        scores /= mx.sum(scores, axis=-1, keepdims=True)
    y = self.switch_mlp(x, inds)
    if STATE["record"] is not None:
        STATE["record"][self._ref_idx] = (logits, inds, scores, y)
    if "scale" in cfg:
        e, factor = cfg["scale"]
        hit = (inds == e)[..., None] & win[:, None, None]
        y = mx.where(hit, y * factor, y)
    y = (y * scores[..., None]).sum(axis=-2).astype(y.dtype)
    return y


def gptoss_moe_call(self, x):
    """mlx-lm's gpt_oss.MLPBlock.__call__ (0.32.2) with the interventions in STATE: the
    chosen experts' weights are the softmax of their logits (after a ban, over the banned
    logits; after a force, over the forced choice's logits)."""
    cfg = STATE["moe"].get(self._ref_idx, {})
    g = self.router(x)
    T = x.shape[1]
    window = cfg.get("window")
    win = mx.array([True] * T if window is None else [t in window for t in range(T)])
    if "ban" in cfg:
        banned = mx.array([e == cfg["ban"] for e in range(self.num_local_experts)])
        g = mx.where(win[:, None] & banned, mx.array(-np.inf, g.dtype), g)
    k = self.num_experts_per_tok
    chosen, inds = gpt_oss.mlx_topk(g, k=k, axis=-1)
    if "force" in cfg:
        f = cfg["force"]
        key = mx.where(mx.arange(self.num_local_experts) == f, mx.array(np.inf), g)
        forced = mx.argpartition(key, kth=-k, axis=-1)[..., -k:]
        inds = mx.where(win[:, None], forced, inds)
        chosen = mx.take_along_axis(g, inds, axis=-1)
    weights = mx.softmax(chosen, axis=-1, precise=True)
    y = self.experts(x, inds)
    if STATE["record"] is not None:
        STATE["record"][self._ref_idx] = (g, inds, weights, y)
    if "scale" in cfg:
        e, factor = cfg["scale"]
        hit = (inds == e)[..., None] & win[:, None, None]
        y = mx.where(hit, y * factor, y)
    return (y * mx.expand_dims(weights, axis=-1)).sum(axis=-2)


LAYER_CLASSES = {"qwen3_moe": qwen3_moe.Qwen3MoeDecoderLayer, "gpt_oss": gpt_oss.TransformerBlock}
MOE_CLASSES = {"qwen3_moe": (qwen3_moe.Qwen3MoeSparseMoeBlock, moe_call),
               "gpt_oss": (gpt_oss.MLPBlock, gptoss_moe_call)}
ORIGINAL_LAYER_CALLS = {name: c.__call__ for name, c in LAYER_CLASSES.items()}


def steered(original):
    """A decoder layer call that adds STATE's steering vector to the layer's output."""
    def layer_call(self, x, mask=None, cache=None):
        out = original(self, x, mask, cache)
        delta = STATE["steer"].get(self._ref_idx)
        return out if delta is None else out + delta
    return layer_call


def run(model, ids, moe=None, steer=None, record=False):
    STATE["moe"] = moe or {}
    STATE["steer"] = steer or {}
    STATE["record"] = {} if record else None
    logits = model(ids)
    mx.eval(logits)
    rec = STATE["record"]
    STATE["moe"], STATE["steer"], STATE["record"] = {}, {}, None
    return logits, rec


def by_weight(inds, scores, y):
    """mlx-lm's chosen experts put in order of decreasing weight (argpartition has none)."""
    order = np.argsort(-np.array(scores), axis=-1, kind="stable")
    ids = np.take_along_axis(np.array(inds), order, -1).astype(np.int32)
    w = np.take_along_axis(np.array(scores), order, -1).astype(np.float32)
    out = np.take_along_axis(np.array(y), order[..., None], -2).astype(np.float32)
    return ids, w, out


def experts_golden(model, tokenizer, folder):
    """What the experts recipe reports in quick mode (see the module docstring)."""
    rows = [tokenizer.encode(t) for t in EXPERTS_TEXTS]
    n_layers = len(model.model.layers)
    n_experts = model.model.layers[0].mlp.num_experts
    counts = np.zeros((n_layers, n_experts), dtype=np.int64)
    n_tokens = 0
    for r in rows:
        _, rec = run(model, mx.array([r]), record=True)
        n_tokens += len(r)
        for i, (_, inds, _, _) in rec.items():
            counts[i] += np.bincount(np.array(inds).ravel(), minlength=n_experts)

    def loss(moe=None):
        total, n = 0.0, 0
        for r in rows:
            logits, _ = run(model, mx.array([r]), moe=moe)
            z = logits[0].astype(mx.float32)
            lp = np.array(z - mx.logsumexp(z, axis=-1, keepdims=True))
            total -= sum(float(lp[j - 1, r[j]]) for j in range(1, len(r)))
            n += len(r) - 1
        return total / n

    base = loss()
    x = 0 % 2147483646 + 1  # MINSTD state from seed 0, as the recipe
    layers = []
    for i in range(n_layers):
        most = int(np.argmax(counts[i]))
        x = (x * 48271) % 2147483647
        ctrl = (most + 1 + x % (n_experts - 1)) % n_experts
        layers.append({
            "layer": i, "counts": counts[i].tolist(), "most_used": most, "control_expert": ctrl,
            "loss": loss({i: {"ban": most}}), "control_loss": loss({i: {"ban": ctrl}}),
        })
    out = {"texts": EXPERTS_TEXTS, "ids": rows, "n_tokens": n_tokens, "base_loss": base,
           "layers": layers, "mlx_version": mx.__version__, "mlx_lm_version": mlx_lm.__version__}
    (folder / "experts_golden.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"experts golden: counts {counts.tolist()}, base loss {base:.4f}")


def main():
    for case in CASES:
        folder = REPO / "tests" / "fixtures" / "models" / case
        arch = json.loads((folder / "config.json").read_text())["model_type"]
        model, tokenizer = mlx_lm.load(str(folder))
        golden = mx.load(str(folder / "golden.safetensors"))
        ids = golden["input_ids"]
        plain = model(ids)
        mx.eval(plain)
        moe_class, patched_moe_call = MOE_CLASSES[arch]
        original_moe_call = moe_class.__call__
        moe_class.__call__ = patched_moe_call
        LAYER_CLASSES[arch].__call__ = steered(ORIGINAL_LAYER_CALLS[arch])
        layers = model.model.layers
        for i, layer in enumerate(layers):
            layer._ref_idx = i
            layer.mlp._ref_idx = i
        base, rec = run(model, ids, record=True)
        assert mx.array_equal(base, plain).item(), f"{case}: the patched call is not mlx-lm's"
        out = {"input_ids": ids}
        for layer_idx, (logits, inds, scores, y) in sorted(rec.items()):
            e_ids, w, eo = by_weight(inds, scores, y)
            out[f"layer{layer_idx}.router_logits"] = logits.astype(mx.float32)
            out[f"layer{layer_idx}.expert_ids"] = mx.array(e_ids)
            out[f"layer{layer_idx}.expert_weights"] = mx.array(w)
            out[f"layer{layer_idx}.expert_out"] = mx.array(eo)
        n_experts = len(out["layer0.router_logits"][0, 0])
        counts = np.bincount(np.array(out["layer0.expert_ids"]).ravel(), minlength=n_experts)
        most, least = int(np.argmax(counts)), int(np.argmin(counts))
        every = {i: {"ban": most} for i in range(len(layers))}
        rng = np.random.default_rng(7)
        vector = mx.array(rng.standard_normal(64).astype(np.float32))
        runs = {
            "ban": dict(moe=every),
            "ban_window": dict(moe={1: {"ban": most, "window": [4, 5, 6, 7, 8, 9]}}),
            "force": dict(moe={0: {"force": least}}),
            "force_window": dict(moe={1: {"force": least, "window": [2, 5, 11]}}),
            "scale0": dict(moe={0: {"scale": (most, 0.0)}}),
            "scale2": dict(moe={1: {"scale": (most, 2.5)}}),
            "steer": dict(steer={0: vector * 3.0}),
        }
        changes = {}
        for name, kw in runs.items():
            logits, _ = run(model, ids, **kw)
            out[f"{name}.logits"] = logits.astype(mx.float32)
            changes[name] = float(mx.abs(logits - plain).max().item())
        out["steer.vector"] = vector
        # The other weightings of src/model/moe.rs on layer 0's router logits, by mlx-lm's own
        # code: gpt-oss (`mlx_topk`, then the softmax of the chosen logits; also with expert
        # `ban_expert` at -inf) and Qwen3-MoE without `norm_topk_prob`.
        gl = out["layer0.router_logits"]
        for name, g in [("gptoss", gl),
                        ("gptoss_ban", mx.where(mx.arange(n_experts) == most, -np.inf, gl))]:
            vals, inds = gpt_oss.mlx_topk(g, k=2, axis=-1)
            w = mx.softmax(vals, axis=-1, precise=True)
            e_ids, e_w, _ = by_weight(inds, w, mx.zeros(inds.shape + (1,)))
            out[f"{name}.expert_ids"], out[f"{name}.expert_weights"] = mx.array(e_ids), mx.array(e_w)
        probs = mx.softmax(gl, axis=-1, precise=True)
        inds = mx.argpartition(probs, kth=-2, axis=-1)[..., -2:]
        e_ids, e_w, _ = by_weight(inds, mx.take_along_axis(probs, inds, axis=-1),
                                  mx.zeros(inds.shape + (1,)))
        out["no_renorm.expert_ids"], out["no_renorm.expert_weights"] = mx.array(e_ids), mx.array(e_w)
        meta = {
            "case": case,
            "ban_expert": str(most),
            "force_expert": str(least),
            "scale_expert": str(most),
            "layer0_counts": str(counts.tolist()),
            "mlx_version": mx.__version__,
            "mlx_lm_version": mlx_lm.__version__,
        }
        mx.save_safetensors(str(folder / "router_golden.safetensors"), out, metadata=meta)
        if case == "qwen3_moe":
            experts_golden(model, tokenizer, folder)
        moe_class.__call__ = original_moe_call
        LAYER_CLASSES[arch].__call__ = ORIGINAL_LAYER_CALLS[arch]
        small = [n for n, c in changes.items() if c < 1e-2]
        status = "BAD" if small else "OK"
        print(f"{status} {case}: layer 0 counts {counts.tolist()}, ban/scale {most}, "
              f"force {least}; max|logit change| {changes}")
        if small:
            sys.exit(f"{case}: interventions that change nothing: {small}")


if __name__ == "__main__":
    main()
