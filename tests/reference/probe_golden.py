"""Golden values for mlxi's probes (tests/probes.rs), from scikit-learn.

Writes tests/fixtures/probe/golden.json: three small datasets (binary, three-class,
regression, plus a wide regression with more features than examples), a fixed fold
assignment for each, and what scikit-learn computes on them:

- StandardScaler fitted on the training rows only, then LogisticRegression(C=c, lbfgs,
  tol=1e-10, max_iter=10000) (multinomial for three classes) or Ridge(alpha=1/c), per fold:
  the test-fold accuracy (R^2 for ridge);
- the same fitted on all rows: coefficients mapped back to input units (coef / scale),
  intercept in standardised space, and predicted probabilities of the first rows.

Run with the reference venv (tests/reference/README.md) plus scikit-learn:
    ~/.cache/mlxi/refvenv/bin/pip install scikit-learn==1.9.1
    ~/.cache/mlxi/refvenv/bin/python tests/reference/probe_golden.py
"""

import json
import pathlib

import numpy as np
import sklearn
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

rng = np.random.default_rng(20261122)


def folds_for(y, k, classes):
    """Stratified round-robin assignment (as mlxi deals them), from numpy's shuffle."""
    fold = np.zeros(len(y), dtype=int)
    nxt = 0
    for c in range(classes):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        for i in idx:
            fold[i] = nxt % k
            nxt += 1
    return fold


def fit(kind, x, y, c):
    sc = StandardScaler().fit(x)
    z = sc.transform(x)
    if kind == "ridge":
        m = Ridge(alpha=1.0 / c).fit(z, y)
    else:
        m = LogisticRegression(C=c, tol=1e-10, max_iter=10000).fit(z, y)
    return sc, m


def case(kind, x, y, c, k, classes=0):
    fold = folds_for(y, k, classes) if classes else rng.permutation(len(y)) % k
    scores = []
    for f in range(k):
        tr, te = fold != f, fold == f
        sc, m = fit(kind, x[tr], y[tr], c)
        scores.append(float(m.score(sc.transform(x[te]), y[te])))
    sc, m = fit(kind, x, y, c)
    coef = np.atleast_2d(m.coef_) / sc.scale_
    out = {
        "kind": kind,
        "c": c,
        "x": x.tolist(),
        "y": y.tolist(),
        "folds": fold.tolist(),
        "fold_scores": scores,
        # rows: one per class for multinomial, one for binary (positive class) and ridge
        "coef_input_units": coef.tolist(),
        "intercept": np.atleast_1d(m.intercept_).tolist(),
    }
    z = sc.transform(x[:5])
    out["predict_first5"] = (m.predict(z) if kind == "ridge" else m.predict_proba(z)).tolist()
    return out


d = 12
# Binary: two overlapping Gaussians whose means differ along a few features.
n = 60
y_bin = np.array([0] * 28 + [1] * 32)
x_bin = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d) + rng.normal(size=d)
x_bin[:, :3] += np.outer(y_bin, [2.0, -1.5, 1.0])
# Three classes.
y_multi = np.repeat([0, 1, 2], [20, 22, 18])
x_multi = rng.normal(size=(60, d)) * 1.5
x_multi[:, 0] += y_multi * 2.0
x_multi[:, 1] -= (y_multi == 1) * 2.5
# Regression: linear target plus noise; and a wide version (fewer rows than features).
x_reg = rng.normal(size=(40, d)) * rng.uniform(0.5, 2.0, size=d)
w_true = rng.normal(size=d)
y_reg = x_reg @ w_true + 0.5 * rng.normal(size=40) + 3.0
x_wide = rng.normal(size=(15, 30))
y_wide = x_wide[:, :4] @ np.array([1.0, -2.0, 0.5, 1.5]) + 0.3 * rng.normal(size=15)

golden = {
    "produced_by": f"tests/reference/probe_golden.py, scikit-learn {sklearn.__version__}, numpy {np.__version__}",
    "binary": case("logistic", x_bin, y_bin, 0.5, 5, classes=2),
    "multinomial": case("multinomial", x_multi, y_multi, 1.0, 4, classes=3),
    "ridge": case("ridge", x_reg, y_reg, 0.1, 5),
    "ridge_wide": case("ridge", x_wide, y_wide, 2.0, 3),
}
path = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "probe" / "golden.json"
path.write_text(json.dumps(golden, indent=1) + "\n")
print(f"wrote {path}")
