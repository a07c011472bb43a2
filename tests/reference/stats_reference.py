"""Reference values for tests/stats.rs, computed with scipy.

Run:  ~/.cache/mlxi/refvenv/bin/python tests/reference/stats_reference.py
(the venv: python3 -m venv ~/.cache/mlxi/refvenv && ~/.cache/mlxi/refvenv/bin/pip install scipy numpy)

Prints each value with the call that produced it; tests/stats.rs holds them as constants.
"""

import numpy as np
import scipy
from scipy import stats

print(f"# scipy {scipy.__version__}, numpy {np.__version__}")

XS = [0.61, 0.58, 0.66, 0.63, 0.59, 0.71, 0.55, 0.64]
print(f"np.mean(XS) = {float(np.mean(XS))!r}")
print(f"np.std(XS, ddof=1) = {float(np.std(XS, ddof=1))!r}")

for k, n, p in [(62, 100, 0.5), (3, 20, 0.3), (7, 10, 0.2), (0, 10, 0.1), (50, 100, 0.5),
                (13, 40, 0.6), (1, 1000, 0.01), (30, 1000, 0.01), (9, 12, 0.25)]:
    r = stats.binomtest(k, n, p, alternative="two-sided").pvalue
    print(f"binomtest({k}, {n}, {p}).pvalue = {float(r)!r}")


def mean_diff(a, b, axis):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def perm(a, b, n_resamples):
    return stats.permutation_test((a, b), mean_diff, permutation_type="independent",
                                  alternative="two-sided", n_resamples=n_resamples,
                                  vectorized=True).pvalue


A = [5.1, 4.9, 5.6, 5.8]
B = [4.2, 4.4, 4.0, 5.0, 4.7]
print(f"permutation_test(A, B) exact (126 splits) = {float(perm(A, B, 10000))!r}")
C = [1.0, 2.0, 3.0]
D = [1.0, 2.0, 3.0, 4.0]
print(f"permutation_test(C, D) exact (35 splits, ties) = {float(perm(C, D, 10000))!r}")
E = [0.2, 1.1, 0.7, 1.9, 1.4, 0.9, 1.6, 1.2]
F = [0.1, 0.5, 0.3, 1.0, 0.8, 0.2, 0.9, 0.4]
print(f"permutation_test(E, F) exact (12870 splits) = {float(perm(E, F, 20000))!r}")

res = stats.bootstrap((XS,), np.mean, method="percentile", confidence_level=0.95,
                      n_resamples=100000, random_state=0)
print(f"bootstrap(XS, mean, percentile, 0.95, 100000 resamples) = "
      f"({float(res.confidence_interval.low)!r}, {float(res.confidence_interval.high)!r})")
