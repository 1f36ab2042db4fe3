"""Ranking evaluation shared by every backend.

Protocol (leave-last-out): for each test row (customer u, held-out video t), rank t among *all*
videos u has not rated in training, by the model's score. Ties are broken by item index (lower
first), the same order the recommendation lists use, so a degenerate model that scores
everything equally gets no credit. From the 1-based rank r:

* HR@K   = mean(r <= K)
* NDCG@K = mean(1 / log2(r + 1) if r <= K else 0)   (one relevant item per row)
* MRR    = mean(1 / r)

List-level measures of the top-K lists recommended: coverage (share of videos in some list),
mean popularity of listed videos, and mean pairwise overlap |A & B| / min(|A|, |B|). Everything
is reported next to the popularity baseline computed the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import scipy.sparse as sp

from .errors import DataError

__all__ = ["ranks_from_scores", "popularity_ranks", "rank_metrics", "list_metrics", "evaluate_ranking", "metrics_by_history", "DEFAULT_CUTOFFS", "HISTORY_BUCKETS"]

DEFAULT_CUTOFFS = (10, 100)
_DIVERGED = "the model produced NaN scores; it has diverged (retrain with lower learning rates)"


def ranks_from_scores(
    score_fn: Any,
    users: np.ndarray,
    targets: np.ndarray,
    n_items: int,
    seen: sp.csr_matrix | None = None,
    *,
    batch_rows: int | None = None,
) -> np.ndarray:
    """1-based rank of ``targets[r]`` among the items not in ``seen[users[r]]`` by
    ``score_fn(user_batch) -> (len(batch), n_items)``, ``batch_rows`` rows at a time. float32
    scores are counted by the native kernel when it is built (the same ranks, in one pass)."""
    users = np.asarray(users, dtype=np.int64)
    targets = np.asarray(targets, dtype=np.int64)
    if users.shape != targets.shape:
        raise DataError("users and targets must have the same length")
    if targets.size and (targets.min() < 0 or targets.max() >= n_items):
        raise DataError(f"target items must be in [0, {n_items})")
    native = _native_counter(seen)
    if batch_rows is None:  # the native counter reads each block once: cache-sized blocks
        batch_rows = max(1, (1 << (21 if native else 24)) // max(n_items, 1))
    ranks = np.empty(len(users), dtype=np.int64)
    for start in range(0, len(users), batch_rows):
        u = users[start : start + batch_rows]
        t = targets[start : start + batch_rows]
        s = np.asarray(score_fn(u))  # float32 scores stay float32: the same comparisons, half the memory
        if native is not None and s.dtype == np.float32 and s.shape == (len(u), n_items):
            ranks[start : start + len(u)] = native(np.ascontiguousarray(s), u, t)
            continue
        if not np.issubdtype(s.dtype, np.floating):
            s = s.astype(np.float64)
        if s.shape != (len(u), n_items):
            raise DataError(f"score_fn returned shape {s.shape}, expected {(len(u), n_items)}")
        if np.isnan(s).any():
            raise DataError(_DIVERGED)
        rows = np.arange(len(u))
        st = s[rows, t][:, None]
        # ahead of the target: an unseen item with a higher score, or the same one at a lower index
        ahead = (s > st) | ((s == st) & (np.arange(n_items) < t[:, None]))
        if seen is not None:
            sub = seen[u]
            ahead[np.repeat(rows, np.diff(sub.indptr)), sub.indices] = False
        ranks[start : start + len(u)] = 1 + np.count_nonzero(ahead, axis=1)
    return ranks


def _native_counter(seen: sp.csr_matrix | None) -> Callable[..., np.ndarray] | None:
    """The native kernel's ``rank_targets``: the rule of :func:`ranks_from_scores` in one pass
    over float32 scores, without the masked copy; None without the kernel."""
    from backends.local import _kernel

    lib = _kernel.load()
    if lib is None:
        return None
    if seen is None:  # every row looks up row 0 of an empty matrix
        indptr, indices = np.zeros(2, np.int64), np.zeros(0, np.int64)
    else:
        if not seen.has_canonical_format:  # a video listed twice would be subtracted twice
            seen = sp.csr_matrix(seen, copy=True)
            seen.sum_duplicates()
        indptr, indices = seen.indptr.astype(np.int64), seen.indices.astype(np.int64)

    def count(s: np.ndarray, users: np.ndarray, targets: np.ndarray) -> np.ndarray:
        users = np.zeros(len(users), np.int64) if seen is None else np.ascontiguousarray(users, dtype=np.int64)
        targets = np.ascontiguousarray(targets, dtype=np.int64)
        ranks = np.empty(len(targets), dtype=np.int64)
        if lib.rank_targets(s.ctypes.data, len(targets), s.shape[1], targets.ctypes.data, users.ctypes.data,
                            indptr.ctypes.data, indices.ctypes.data, ranks.ctypes.data):  # fmt: skip
            raise DataError(_DIVERGED)
        return ranks

    return count


def popularity_ranks(
    item_popularity: np.ndarray, users: np.ndarray, targets: np.ndarray, seen: sp.csr_matrix | None = None
) -> np.ndarray:
    """What :func:`ranks_from_scores` gives for the popularity scores, in O(rated videos):
    a target's place in the catalogue ordered by popularity (ties: lower index first), less the
    seen videos ahead of it."""
    pop = np.asarray(item_popularity, dtype=np.float64)
    order = np.lexsort((np.arange(len(pop)), -pop))
    place = np.empty(len(pop), dtype=np.int64)
    place[order] = np.arange(len(pop))
    targets = np.asarray(targets, dtype=np.int64)
    ranks = place[targets] + 1
    if seen is not None:
        sub = seen[np.asarray(users, dtype=np.int64)]
        rows = np.repeat(np.arange(len(targets)), np.diff(sub.indptr))
        ahead = place[sub.indices] < place[targets][rows]  # (the target is never ahead of itself)
        ranks -= np.bincount(rows[ahead], minlength=len(targets))
    return ranks


def rank_metrics(ranks: np.ndarray, cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS) -> dict[str, float]:
    """HR@K, NDCG@K for each cutoff and MRR from 1-based ranks."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise DataError("no test rows to evaluate")
    out: dict[str, float] = {}
    for k in cutoffs:
        hit = ranks <= k
        out[f"hr@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
    out["mrr"] = float((1.0 / ranks).mean())
    return out


def list_metrics(
    lists: np.ndarray, n_items: int, item_popularity: np.ndarray, *, pairs: int = 20000, seed: int = 0
) -> dict[str, float]:
    """Coverage, mean popularity and mean pairwise overlap (over every pair, or ``pairs``
    random ones when there are more) of top-K ``lists`` (item indices, -1 = empty slot)."""
    lists = np.asarray(lists)
    if lists.ndim != 2 or lists.shape[0] == 0 or not np.issubdtype(lists.dtype, np.integer):
        raise DataError("lists must be a non-empty 2-D array of item indices")
    # how often each item is listed, 65,536 rows at a time (2 M lists are 200 M slots)
    counts = np.zeros(n_items, dtype=np.int64)
    for start in range(0, lists.shape[0], 65536):
        block = lists[start : start + 65536]
        block = block[block >= 0]
        if block.size and block.max() >= n_items:
            raise DataError(f"lists hold item {int(block.max())}; items must be in [0, {n_items})")
        counts += np.bincount(block, minlength=n_items)
    coverage = float(np.count_nonzero(counts) / n_items) if n_items else 0.0
    listed = int(counts.sum())
    mean_pop = float(counts @ np.asarray(item_popularity, dtype=np.float64) / listed) if listed else 0.0
    n, k = lists.shape
    overlap = float("nan")
    if n >= 2:
        if n * (n - 1) // 2 <= pairs:
            a, b = np.triu_indices(n, k=1)
        else:
            rng = np.random.default_rng(seed)
            a = rng.integers(0, n, size=pairs)
            b = (a + rng.integers(1, n, size=pairs)) % n  # b != a
        # |A & B| per pair: sort the two lists together and count equal neighbours (items are
        # unique within a list; empty slots get distinct negative sentinels)
        sentinel = -1 - np.arange(2 * k)
        la, lb = lists[a].astype(np.int64), lists[b].astype(np.int64)
        both = np.sort(np.concatenate([np.where(la >= 0, la, sentinel[:k]), np.where(lb >= 0, lb, sentinel[k:])], axis=1), axis=1)
        common = (both[:, 1:] == both[:, :-1]).sum(axis=1)
        denom = np.maximum(np.minimum((la >= 0).sum(1), (lb >= 0).sum(1)), 1)
        overlap = float((common / denom).mean())
    return {"coverage": coverage, "mean_popularity": mean_pop, "mean_overlap": overlap}


def evaluate_ranking(
    score_fn: Any,
    lists: np.ndarray,
    test_users: np.ndarray,
    test_items: np.ndarray,
    n_items: int,
    seen: sp.csr_matrix,
    item_popularity: np.ndarray,
    popular_lists: np.ndarray,
    *,
    cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS,
    test_ratings: np.ndarray | None = None,
    liked_threshold: float | None = None,
    ranks: np.ndarray | None = None,
) -> dict[str, Any]:
    """The model's ranking metrics and the popularity baseline's, side by side. ``lists`` and
    ``popular_lists``: both top-K lists for the same customers. With ``liked_threshold`` only
    test rows rated at least that count. ``ranks``: the model's ranks of every test row, when
    already computed."""
    users = np.asarray(test_users, dtype=np.int64)
    items = np.asarray(test_items, dtype=np.int64)
    keep = np.ones(len(users), dtype=bool)
    if liked_threshold is not None:
        if test_ratings is None:
            raise DataError("liked_threshold needs test_ratings")
        keep = np.asarray(test_ratings, dtype=np.float64) >= liked_threshold
        users, items = users[keep], items[keep]
    if users.size == 0:
        raise DataError("no test rows to evaluate (after the liked-only filter)" if liked_threshold else "no test rows")
    ranks = ranks_from_scores(score_fn, users, items, n_items, seen) if ranks is None else np.asarray(ranks)[keep]
    pop = np.asarray(item_popularity, dtype=np.float64)
    out = {"test_rows": int(users.size), **rank_metrics(ranks, cutoffs), **list_metrics(lists, n_items, pop)}
    base = {**rank_metrics(popularity_ranks(pop, users, items, seen), cutoffs), **list_metrics(popular_lists, n_items, pop)}
    return {**out, **{f"popularity_{k}": v for k, v in base.items()}}


#: History-length buckets of :func:`metrics_by_history` (ratings before the held-out one).
HISTORY_BUCKETS = {"1": (1, 1), "2-4": (2, 4), "5-17": (5, 17), ">=18": (18, None)}


def metrics_by_history(
    ranks: np.ndarray, baseline_ranks: np.ndarray, history_lengths: np.ndarray, cutoffs: tuple[int, ...] = DEFAULT_CUTOFFS
) -> dict[str, Any]:
    """:func:`rank_metrics` of the model and the baseline (``popularity_`` keys) for every row
    and per :data:`HISTORY_BUCKETS` of ``history_lengths``; empty buckets report 0 rows."""

    def part(mask: np.ndarray) -> dict[str, Any]:
        out: dict[str, Any] = {"test_rows": int(mask.sum())}
        if mask.any():
            out.update(rank_metrics(ranks[mask], cutoffs))
            out.update({f"popularity_{k}": v for k, v in rank_metrics(baseline_ranks[mask], cutoffs).items()})
        return out

    lengths = np.asarray(history_lengths)
    buckets = {name: part((lengths >= lo) & (lengths <= (hi or np.iinfo(np.int64).max))) for name, (lo, hi) in HISTORY_BUCKETS.items()}
    return {"all": part(np.ones(len(lengths), dtype=bool)), "by_history_length": buckets}
