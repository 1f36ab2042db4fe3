"""Independent references the tests compare against, written once.

* :func:`fm_brute_force` -- the FM by its O(n^2 k) definition, pair by pair, in float64.
* :func:`fm_forward_torch` -- the FM's O(n k) identity on a sparse batch in PyTorch,
  differentiable with autograd (the reference for the trainers' hand-written gradients).
* :func:`knn_scores` / :func:`knn_brute_force` -- every query against every vector in float64,
  then a full sort (ties: lower id first), optionally skipping excluded ids.
* :class:`BruteIndex` -- a numpy inner-product :class:`~backends.base.KNNIndex` (the contract's
  base class does the rest), to test what is built on the contract.
* :func:`assert_top_k` -- a result is *a* correct top-k of a float64 reference, allowing the
  float32 rounding of real indexes to reorder ids whose scores are closer than a tolerance.
"""

from __future__ import annotations

import itertools

import numpy as np
import scipy.sparse as sp
import torch

from backends.base import KNNIndex

__all__ = ["fm_brute_force", "fm_forward_torch", "knn_scores", "knn_brute_force", "assert_top_k", "BruteIndex"]


def fm_brute_force(w0: float, w: np.ndarray, V: np.ndarray, X) -> np.ndarray:
    """y(x) = w0 + sum_i w_i x_i + sum_{i<j} <v_i, v_j> x_i x_j for every row of ``X``."""
    X = sp.csr_matrix(X, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    V = np.asarray(V, dtype=np.float64)
    out = np.empty(X.shape[0])
    for r in range(X.shape[0]):
        lo, hi = X.indptr[r], X.indptr[r + 1]
        cols, vals = X.indices[lo:hi], X.data[lo:hi]
        y = float(w0) + sum(float(w[i]) * x for i, x in zip(cols, vals, strict=True))
        for (i, xi), (j, xj) in itertools.combinations(zip(cols, vals, strict=True), 2):
            y += float(V[i] @ V[j]) * xi * xj
        out[r] = y
    return out


def fm_forward_torch(w0: torch.Tensor, w: torch.Tensor, V: torch.Tensor, batch) -> torch.Tensor:
    """y(x) for a :class:`backends.local.fm.SparseBatch` (rows ``row``, columns ``idx``, values
    ``val``): ``w0 + sum x w + 1/2 (|sum x V|^2 - sum |x V|^2)``."""
    xv = V[batch.idx] * batch.val[:, None]
    s = torch.zeros(batch.n_rows, V.shape[1], dtype=V.dtype).index_add(0, batch.row, xv)
    lin = torch.zeros(batch.n_rows, dtype=w.dtype).index_add(0, batch.row, w[batch.idx] * batch.val)
    sq = torch.zeros(batch.n_rows, dtype=V.dtype).index_add(0, batch.row, (xv * xv).sum(1))
    return w0 + lin + 0.5 * ((s * s).sum(1) - sq)


def knn_scores(vectors: np.ndarray, queries: np.ndarray, metric: str = "INNER_PRODUCT") -> np.ndarray:
    """(n_queries, n_vectors) in float64: inner product, cosine, or squared L2 distance (by
    explicit differences)."""
    x = np.atleast_2d(np.asarray(vectors, dtype=np.float64))
    q = np.atleast_2d(np.asarray(queries, dtype=np.float64))
    if metric == "L2":
        return ((q[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    if metric == "COSINE":
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return q @ x.T


def knn_brute_force(
    vectors: np.ndarray, queries: np.ndarray, k: int, metric: str = "INNER_PRODUCT", exclude=None
) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, scores)`` of width ``min(k, n_vectors)``, best first, ties by lower id; ids in
    ``exclude`` (a sparse or dense (n_queries, n_vectors) mask) skipped; rows with fewer
    candidates padded with id -1 and score -inf (+inf for L2)."""
    s = knn_scores(vectors, queries, metric)
    n_q, n = s.shape
    width = min(k, n)
    mask = np.zeros((n_q, n), dtype=bool) if exclude is None else (
        np.asarray(exclude.toarray() if sp.issparse(exclude) else exclude) != 0
    )
    worst = np.inf if metric == "L2" else -np.inf
    ids = np.full((n_q, width), -1, dtype=np.int64)
    scores = np.full((n_q, width), worst)
    for r in range(n_q):
        cand = [i for i in range(n) if not mask[r, i]]
        cand.sort(key=lambda i: (s[r, i] if metric == "L2" else -s[r, i], i))
        top = cand[:width]
        ids[r, : len(top)] = top
        scores[r, : len(top)] = s[r, top]
    return ids, scores


def assert_top_k(
    ref: np.ndarray, got_ids: np.ndarray, got_scores: np.ndarray, k: int, metric: str = "INNER_PRODUCT",
    exclude=None, tol: float = 1e-4,
) -> None:  # fmt: skip
    """``(got_ids, got_scores)`` is a top-``k`` of the reference score matrix ``ref`` (best
    first, excluded ids skipped): scores equal the reference's to ``tol``, each id carries its
    own score, ids are distinct, and ids equal the reference's wherever no other candidate's
    score is within ``tol``."""
    n_q, n = ref.shape
    mask = np.zeros((n_q, n), dtype=bool) if exclude is None else (
        np.asarray(exclude.toarray() if sp.issparse(exclude) else exclude) != 0
    )
    key = np.where(mask, np.inf, ref if metric == "L2" else -ref)  # ascending = best first
    width = min(k, n)
    assert got_ids.shape == got_scores.shape == (n_q, width), (got_ids.shape, (n_q, width))
    order = np.argsort(key, axis=1, kind="stable")[:, :width]
    for r in range(n_q):
        n_cand = int((~mask[r]).sum())
        m = min(width, n_cand)
        assert (got_ids[r, m:] == -1).all(), f"row {r}: expected {m} neighbours"
        got = got_ids[r, :m]
        assert len(set(got.tolist())) == m and not mask[r, got].any(), f"row {r}: duplicate or excluded id"
        expected = ref[r, order[r, :m]]
        np.testing.assert_allclose(got_scores[r, :m], expected, atol=tol, rtol=tol)
        np.testing.assert_allclose(ref[r, got], got_scores[r, :m], atol=tol, rtol=tol)
        for j in range(m):
            near = np.abs(key[r] - key[r, order[r, j]]) <= 10 * tol
            if near.sum() == 1:
                assert got[j] == order[r, j], (r, j)


class BruteIndex(KNNIndex):
    """A numpy inner-product index: float64 scores, candidates among equal scores in reversed-id
    order (the contract must put ties in order itself), an optional depth limit and batch size;
    it records its ``_search`` calls as (queries, depth)."""

    metric = "INNER_PRODUCT"

    def __init__(self, vectors, max_k=None, batch_size=None):
        self.x = np.asarray(vectors, dtype=np.float64)
        self.ntotal, self.dim = self.x.shape
        self.max_k, self.batch_size = max_k, batch_size
        self.calls: list[tuple[int, int]] = []

    def _search(self, queries, k):
        assert k <= (self.max_k or self.ntotal)
        self.calls.append((len(queries), k))
        s = queries.astype(np.float64) @ self.x.T
        order = np.lexsort((-np.arange(self.ntotal)[None, :].repeat(len(s), 0), -s), axis=1)[:, :k]
        return order, np.take_along_axis(s, order, 1)
