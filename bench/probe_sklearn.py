"""Probe training with scikit-learn on the activations mlxi captured (bench/probe.sh).

Same activations, same folds (mlxi's fold_of), same model: StandardScaler fitted on each
training fold, LogisticRegression(C=1) with scikit-learn's defaults (lbfgs), then a final fit
on all examples, per layer. Prints the time next to mlxi's and the largest difference in
per-layer accuracy.
"""

import json
import sys
import time

import numpy as np
from safetensors.numpy import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

out = sys.argv[1]
acts = load_file(f"{out}/activations.safetensors")
probe = json.load(open(f"{out}/probe.json"))
timing = json.load(open(f"{out}/timing.json"))
y = np.array(timing["labels"])
folds = np.array(probe["fold_of"])
k = probe["folds"]

t0 = time.perf_counter()
scores = []
for layer in probe["layers"]:
    x = acts[f"blocks.{layer}.hook_resid_post"].astype(np.float64)
    acc = []
    for f in range(k):
        tr, te = folds != f, folds == f
        sc = StandardScaler().fit(x[tr])
        m = LogisticRegression(C=1.0).fit(sc.transform(x[tr]), y[tr])
        acc.append(m.score(sc.transform(x[te]), y[te]))
    sc = StandardScaler().fit(x)
    LogisticRegression(C=1.0).fit(sc.transform(x), y)
    scores.append(float(np.mean(acc)))
sk_s = time.perf_counter() - t0

diff = max(abs(a - b) for a, b in zip(scores, probe["score"]))
n, layers = timing["n"], timing["layers"]
print()
print(f"probe training: {layers} layers x {k} folds + final fits, {n} examples, d = {probe['d']}")
print(f"{'':24}{'mlxi':>10}{'scikit-learn':>14}")
print(f"{'training (s)':24}{timing['train_seconds']:>10.3f}{sk_s:>14.3f}")
print(f"{'best layer':24}{probe['best_layer']:>10}{probe['layers'][int(np.argmax(scores))]:>14}")
print(f"{'best accuracy':24}{probe['best_score']:>10.3f}{max(scores):>14.3f}")
print(f"max |accuracy difference| over layers: {diff:.4f}")
print(f"mlxi capture (forward passes, all layers): {timing['capture_seconds']:.3f} s")
