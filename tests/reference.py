"""Brute-force references shared by the tests: written the slow, obvious way, independent of the
code they check."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["fm_brute_force"]


def fm_brute_force(w0: float, w, V, X) -> np.ndarray:
    """y(x) = w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j for every row of ``X``: the
    O(n d^2 k) double loop over feature pairs, in float64."""
    Xd = X.toarray() if sp.issparse(X) else np.asarray(X)
    Xd = np.atleast_2d(Xd).astype(np.float64)
    w = np.asarray(w, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    n, d = Xd.shape
    out = np.empty(n)
    for r in range(n):
        x = Xd[r]
        total = float(w0)
        for i in range(d):
            if x[i] == 0.0:
                continue
            total += w[i] * x[i]
            for j in range(i + 1, d):
                if x[j] != 0.0:
                    total += float(V[i] @ V[j]) * x[i] * x[j]
        out[r] = total
    return out
