"""Vectors for customers the model was not trained on ("fold-in"), from the catalogue videos
they watched (item indices, oldest first), every model parameter fixed, for the same exact k-NN.
With a recent-history block (:mod:`recsys.features`) the customer's side of a row is their last
``history_length`` videos without a user one-hot: the model's own score. For one-hot models
(the lab's classifier) ``[w_u, V_u]`` is the ridge solution against the fixed item parameters
(as implicit's ``recalculate_user`` for ALS), every watched video a positive with target logit
:data:`POSITIVE_LOGIT`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._io import atomic_path
from .data.prepare import Mappings, PreparedData, date_order_key, split_leave_last_out
from .data.schema import CUSTOMER, ITEM, PRODUCT, USER
from .errors import DataError, ModelFormatError
from .features import FeatureLayout
from .model import FittedFM
from .ranking import metrics_by_history, popularity_ranks, ranks_from_scores

__all__ = ["Histories", "histories_matrix", "fold_in_vectors", "unique_rows", "evaluate_everyone", "POSITIVE_LOGIT", "RIDGE"]

#: Target logit of a watched video for one-hot models (P = 0.88).
POSITIVE_LOGIT = 2.0
#: Ridge penalty of the one-hot solve.
RIDGE = 1.0


def histories_matrix(histories: Sequence[Any], n_items: int) -> sp.csr_matrix:
    """Histories (item index sequences, oldest first) as a CSR of each watched video's 1-based
    recency rank (1 = the most recent, which a video watched twice keeps)."""
    lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
    parts = [a for a in (np.asarray(h).ravel() for h in histories) if a.size]
    items = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    if not np.issubdtype(items.dtype, np.integer):
        raise DataError(f"history item indices must be integers, got {items.dtype}")
    items = items.astype(np.int64)
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise DataError(f"history item indices must be in [0, {n_items})")
    return _recency_ranks(np.repeat(np.arange(len(histories)), lengths), items, len(histories), n_items)


def _recency_ranks(rows: np.ndarray, items: np.ndarray, n_rows: int, n_items: int) -> sp.csr_matrix:
    """``rows`` sorted, each row's items oldest first -> CSR of recency ranks (1 = latest)."""
    counts = np.bincount(rows, minlength=n_rows)
    lag = np.repeat(np.cumsum(counts), counts) - np.arange(len(rows))
    key = rows * n_items + items
    first = np.lexsort((lag, key))  # per (customer, video): the most recent first
    first = first[np.diff(key[first], prepend=-1) != 0]
    return sp.csr_matrix((lag[first].astype(np.float64), (rows[first], items[first])), shape=(n_rows, n_items))


def unique_rows(m: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """``(first, inverse)`` with ``m[first][inverse] == m`` for canonical CSR ``m``, by a 64-bit
    hash of each row checked entry by entry. Many customers outside the model watched the same
    one or two videos: each distinct history is folded in and searched once."""
    n = m.shape[0]
    nnz = np.diff(m.indptr)
    rows = np.repeat(np.arange(n), nnz)
    pos = np.arange(m.nnz) - np.repeat(m.indptr[:-1], nnz)
    with np.errstate(over="ignore"):
        h = (m.indices.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        h ^= (m.data.astype(np.int64).astype(np.uint64) + pos.astype(np.uint64)) * np.uint64(0xC2B2AE3D27D4EB4F)
        h ^= h >> np.uint64(29)
        row_hash = np.zeros(n, dtype=np.uint64)
        if m.nnz:
            row_hash[nnz > 0] = np.add.reduceat(h, m.indptr[:-1][nnz > 0])
        row_hash ^= nnz.astype(np.uint64) * np.uint64(0x165667B19E3779F9)
    _, first, inverse = np.unique(row_hash, return_index=True, return_inverse=True)
    rep = first[inverse]
    # entry-by-entry check against the representative; a (rare) hash collision stays its own row
    same = nnz == nnz[rep]
    ok = same[rows]
    entry = np.where(ok, m.indptr[rep[rows]] + pos, 0)
    same[rows[ok & ((m.indices[entry] != m.indices) | (m.data[entry] != m.data))]] = False
    if not same.all():
        alone = np.flatnonzero(~same)
        first = np.r_[first, alone]
        inverse = inverse.copy()
        inverse[alone] = len(first) - len(alone) + np.arange(len(alone))
    return first, inverse.ravel()


def _history_part(layout: FeatureLayout, ranks: sp.csr_matrix) -> sp.csr_matrix:
    """The customer side of a row without a user one-hot: the last ``history_length`` videos,
    weighted as in training, summing to 1."""
    ranks = ranks.tocoo()
    keep = ranks.data <= layout.history_length
    rows, cols, lag = ranks.row[keep], ranks.col[keep], ranks.data[keep]
    w = layout._weights(lag)
    w = w / np.bincount(rows, weights=w, minlength=ranks.shape[0])[rows]
    return sp.csr_matrix(
        (w.astype(np.float32), (rows, cols + layout.history_offset)), shape=(ranks.shape[0], layout.feature_dim)
    )


def _ridge(A: np.ndarray, r: np.ndarray, watched: sp.csr_matrix) -> np.ndarray:
    """Per customer, ``argmin_x |A_H x - r_H|^2 + RIDGE |x|^2`` over their watched rows H of
    ``A``, batched by |H|; in the dual form ``x = A_H^T (A_H A_H^T + RIDGE I)^-1 r_H`` when
    |H| <= dim (most fold-in customers watched a few videos)."""
    n, d = watched.shape[0], A.shape[1]
    out = np.zeros((n, d))
    counts = np.diff(watched.indptr)
    for m in np.unique(counts[counts > 0]):
        users = np.flatnonzero(counts == m)
        batch = max(1, (1 << 22) // (int(m) * d))
        for start in range(0, len(users), batch):
            u = users[start : start + batch]
            cols = watched.indices[watched.indptr[u][:, None] + np.arange(m)]  # (b, m)
            Ah, rh = A[cols], r[cols]  # (b, m, d), (b, m)
            if m <= d:
                K = Ah @ Ah.transpose(0, 2, 1) + RIDGE * np.eye(m)
                out[u] = (Ah.transpose(0, 2, 1) @ np.linalg.solve(K, rh[:, :, None]))[:, :, 0]
            else:
                G = Ah.transpose(0, 2, 1) @ Ah + RIDGE * np.eye(d)
                out[u] = np.linalg.solve(G, (Ah.transpose(0, 2, 1) @ rh[:, :, None]))[:, :, 0]
    return out


def fold_in_vectors(
    fm: FittedFM, layout: FeatureLayout, ranks: sp.csr_matrix
) -> tuple[np.ndarray, np.ndarray]:
    """``(user_vectors float32 (n, k+1), offsets float64 (n,))`` of customers with the recency
    ranks ``ranks``, scoring like :func:`recsys.vectors.fm_vectors`; an empty history gets zero
    factors (every score is then the video's own term)."""
    if layout.history_length:
        part = _history_part(layout, ranks)
        factors, offsets = np.asarray(part @ fm.V), fm.decision_function(part)
    else:
        lo, hi = layout.item_offset, layout.item_offset + layout.n_items
        A = np.hstack([np.ones((layout.n_items, 1)), fm.V[lo:hi].astype(np.float64)])  # [1, V_i]
        x = _ridge(A, POSITIVE_LOGIT - fm.w0 - fm.w[lo:hi].astype(np.float64), ranks)  # [w_u, V_u]
        factors, offsets = x[:, 1:], fm.w0 + x[:, 0]
    return np.hstack([factors, np.ones((len(factors), 1))]).astype(np.float32), offsets


@dataclass
class Histories:
    """What customers outside the model watched: ids and a CSR of recency ranks (a row is empty
    when they rated only videos outside the catalogue)."""

    customer_ids: pd.Index
    ranks: sp.csr_matrix

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, mappings: Mappings) -> Histories:
        """From cleaned ratings (in file order) of customers not in ``mappings``; videos
        outside the catalogue are dropped, their customers kept."""
        ids = _sorted_ids(frame[CUSTOMER])
        rows = ids.get_indexer(frame[CUSTOMER]).astype(np.int64)
        items = mappings.item_index(frame[PRODUCT].to_numpy())
        keep = items >= 0
        order = np.lexsort((np.arange(len(frame))[keep], date_order_key(frame)[keep], rows[keep]))
        ranks = _recency_ranks(rows[keep][order], items[keep][order], len(ids), mappings.n_items)
        return cls(ids, ranks)

    def __len__(self) -> int:
        return len(self.customer_ids)

    def index(self, customer_ids: Any) -> np.ndarray:
        """Row of each id (-1 if absent); ids given as text match as in :class:`Mappings`."""
        return Mappings._lookup(self.customer_ids, customer_ids)

    def save(self, directory: str | os.PathLike) -> None:
        directory = Path(directory)
        with atomic_path(directory / "histories_ids.parquet") as tmp:
            pd.DataFrame({CUSTOMER: self.customer_ids}).to_parquet(tmp, index=False)
        with atomic_path(directory / "histories.npz") as tmp, open(tmp, "wb") as fh:
            sp.save_npz(fh, self.ranks, compressed=True)

    @classmethod
    def load(cls, directory: str | os.PathLike, n_items: int) -> Histories:
        directory = Path(directory)
        try:
            ids = pd.Index(pd.read_parquet(directory / "histories_ids.parquet")[CUSTOMER])
            ranks = sp.load_npz(directory / "histories.npz").tocsr()  # allow_pickle=False inside
        except (OSError, ValueError, KeyError) as exc:
            raise ModelFormatError(f"{directory}: unreadable fold-in histories ({type(exc).__name__}); re-run") from exc
        if ranks.shape != (len(ids), n_items):
            raise ModelFormatError(f"{directory}: fold-in histories have shape {ranks.shape}, expected ({len(ids)}, {n_items})")
        return cls(ids, ranks)


def _sorted_ids(series: pd.Series) -> pd.Index:
    values = pd.unique(series.dropna())
    try:
        return pd.Index(np.sort(values))
    except TypeError:  # mixed types: sort by text
        return pd.Index(sorted(values, key=str))


def evaluate_everyone(
    prepared: PreparedData,
    score_fn: Callable[[np.ndarray], np.ndarray],
    fold_in: Callable[[sp.csr_matrix], Callable[[np.ndarray], np.ndarray]],
    item_popularity: np.ndarray,
    *,
    seen: sp.csr_matrix | None = None,
    exclude_seen: bool = True,
    test_ranks: np.ndarray | None = None,
) -> dict[str, Any]:
    """:func:`recsys.ranking.metrics_by_history` of every customer's latest rating, ranked
    among the catalogue: the model's test rows by ``score_fn(user indices)``; customers outside
    it with >= 2 ratings by ``fold_in(recency ranks of the rest)`` (a held-out video outside the
    catalogue is a miss; without a catalogue video they get popularity, as served).
    ``test_ranks``: the model's ranks of its test rows, when already computed.
    """
    n_items = prepared.n_items
    pop = np.asarray(item_popularity, dtype=np.float64)

    def ranks(fn: Callable, targets: np.ndarray, seen_rows: sp.csr_matrix | None, known: Any = None) -> tuple[np.ndarray, np.ndarray]:
        rows = np.arange(len(targets))
        model = ranks_from_scores(fn, rows, targets, n_items, seen_rows) if known is None else np.asarray(known)
        return model.astype(np.float64), popularity_ranks(pop, rows, targets, seen_rows).astype(np.float64)

    test = prepared.test
    users = test[USER].to_numpy()
    m, b = ranks(lambda r: score_fn(users[r]), test[ITEM].to_numpy(), seen[users] if exclude_seen and seen is not None else None,
                 test_ranks)  # fmt: skip
    parts = [(m, b, np.bincount(prepared.train[USER].to_numpy(), minlength=prepared.n_users)[users])]
    others = prepared.others()
    outside = 0
    if len(others):
        codes = pd.factorize(others[CUSTOMER])[0]
        history, held, _ = split_leave_last_out(others.assign(**{USER: codes}))
        if len(held):
            hist = Histories.from_frame(history, prepared.mappings)
            ranks_h = hist.ranks[hist.index(held[CUSTOMER].to_numpy())]
            targets = prepared.mappings.item_index(held[PRODUCT].to_numpy())
            inside = targets >= 0
            outside = int((~inside).sum())
            fn = fold_in(ranks_h[inside])
            m, b = np.full(len(held), np.inf), np.full(len(held), np.inf)
            m[inside], b[inside] = ranks(fn, targets[inside], (ranks_h[inside] > 0).tocsr() if exclude_seen else None)
            empty = np.diff(ranks_h.indptr) == 0  # served the popularity list
            m[empty] = b[empty]
            lengths = np.bincount(history[USER].to_numpy(), minlength=int(codes.max()) + 1)[held[USER].to_numpy()]
            parts.append((m, b, lengths))
    model, base, lengths = (np.concatenate(x) for x in zip(*parts, strict=True))
    out = metrics_by_history(model, base, lengths)
    out["held_out_outside_catalogue"] = outside
    return out
