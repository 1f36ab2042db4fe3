"""Top-K recommendations from a fitted FM through a k-NN index (the lab's last stage).

:class:`Recommender` turns the FM into user/item vectors (:mod:`recsys.vectors`), asks a k-NN
index (FAISS locally, SageMaker's k-NN remotely) for each customer's nearest videos by inner
product, drops videos the customer already rated (on by default; the lab did not), and falls
back to the most popular videos for customers it does not know (flagged ``fallback``).

Scores are FM scores: the inner product plus the customer's constant ``w0 + w_u``, i.e.
exactly ``FittedFM.decision_pairs(user, item)`` (the logit for a classifier).

Index-level API (implicit's convention): ``recommend(userid, N)`` with a scalar id returns 1-D
``(ids, scores)``, with an array of ids 2-D arrays padded with id -1 / score -inf.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._io import atomic_path
from .data.prepare import Mappings
from .data.schema import CUSTOMER, PRODUCT, TITLE
from .errors import BackendError, ConfigError, DataError
from .features import FeatureLayout
from .model import FittedFM
from .params import KNNParams
from .vectors import fm_vectors, user_offsets

__all__ = ["Recommender", "popularity", "top_k_excluding", "write_recommendations", "RECOMMENDATION_COLUMNS"]

log = logging.getLogger("recsys")

RECOMMENDATION_COLUMNS = (CUSTOMER, "rank", PRODUCT, TITLE, "score", "fallback")
_EMPTY = -1
#: Customers searched together at least (see ``Recommender._search``).
_MIN_BATCH = 4096


def popularity(items: Any, n_items: int) -> np.ndarray:
    """Number of training ratings per item (float64), the popularity baseline's score."""
    return np.bincount(np.asarray(items, dtype=np.int64), minlength=n_items).astype(np.float64)


def _seen_mask(seen: sp.csr_matrix | None, users: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """True where ``ids[r, j]`` is an item ``users[r]`` has already rated."""
    out = np.zeros(ids.shape, dtype=bool)
    if seen is None or seen.nnz == 0 or ids.size == 0:
        return out
    n_items = seen.shape[1]
    # A dense (rows x n_items) scratch block: set the block's seen cells, gather, clear them
    # again: O(nnz + rows * depth) per block, whatever the catalogue size.
    block = max(1, (1 << 24) // max(n_items, 1))
    scratch = np.zeros((min(block, len(users)), n_items), dtype=bool)
    safe = np.where(ids >= 0, ids, 0)
    for start in range(0, len(users), block):
        sub = seen[users[start : start + block]]
        r = np.repeat(np.arange(sub.shape[0]), np.diff(sub.indptr))
        scratch[r, sub.indices] = True
        rows = np.arange(sub.shape[0])[:, None]
        out[start : start + block] = scratch[rows, safe[start : start + block]]
        scratch[r, sub.indices] = False
    out &= ids >= 0
    return out


def top_k_excluding(
    ids: np.ndarray, scores: np.ndarray, exclude: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the first ``k`` entries of each row that are not excluded (and not -1), in order.

    Rows with fewer survivors are padded with id -1 and score -inf.
    """
    valid = (~exclude) & (ids >= 0)
    # the j-th surviving entry of a row goes to column j: a running count, no sort
    pos = np.cumsum(valid, axis=1) - 1
    keep = valid & (pos < k)
    rows, cols = np.nonzero(keep)
    out_ids = np.full((ids.shape[0], k), _EMPTY, dtype=np.int64)
    out_scores = np.full((ids.shape[0], k), -np.inf, dtype=np.float64)
    dest = pos[rows, cols]
    out_ids[rows, dest] = ids[rows, cols]
    out_scores[rows, dest] = scores[rows, cols]
    return out_ids, out_scores


def _order_by_score(ids: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row sorted by score descending, then item index ascending (-1 last).

    Indexes return rows sorted by score already, so only the rows that are out of that order
    (ties in another order, or an index that does not sort) are sorted.
    """
    key = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    s0, s1, k0, k1 = scores[:, :-1], scores[:, 1:], key[:, :-1], key[:, 1:]
    bad = np.flatnonzero(((s1 > s0) | ((s1 == s0) & (k1 < k0))).any(axis=1))
    if len(bad) == 0:
        return ids, scores
    ids, scores = ids.copy(), scores.copy()
    order = np.lexsort((key[bad], -scores[bad]), axis=-1)
    ids[bad] = np.take_along_axis(ids[bad], order, axis=1)
    scores[bad] = np.take_along_axis(scores[bad], order, axis=1)
    return ids, scores


class Recommender:
    """Recommendations for customers from a fitted FM.

    Parameters
    ----------
    fm : FittedFM
        Trained on the users-then-items one-hot layout of ``mappings``.
    mappings : Mappings
        Ids <-> indices and titles.
    seen : csr_matrix (n_users, n_items), optional
        Training interactions; excluded from recommendations unless ``exclude_seen=False``.
    item_popularity : ndarray (n_items,), optional
        Score of the popularity fallback (default: number of ratings in ``seen``).
    index : KNNIndex, optional
        A k-NN index over the item vectors; built with ``backend`` when omitted.
    backend : Backend or str, optional
        Used to build the index (default ``"torch"``: FAISS).
    knn_params : KNNParams, optional
        ``index_type`` / ``index_metric`` etc. (default: exact inner product).
    user_features : csr_matrix (n_users, feature_dim), optional
        The customer side of each row when the model uses more than the user one-hot (the
        recent-history features of :mod:`recsys.features`).
    """

    def __init__(
        self,
        fm: FittedFM,
        mappings: Mappings,
        seen: sp.csr_matrix | None = None,
        *,
        item_popularity: np.ndarray | None = None,
        index: Any = None,
        backend: Any = "torch",
        knn_params: KNNParams | None = None,
        user_features: sp.spmatrix | None = None,
    ):
        self.fm = fm
        self.mappings = mappings
        n_users, n_items = mappings.n_users, mappings.n_items
        if fm.feature_dim < n_users + n_items:
            raise DataError(
                f"the model has feature_dim {fm.feature_dim} but the mappings need {n_users} users + "
                f"{n_items} items = {n_users + n_items}"
            )
        if seen is not None:
            seen = sp.csr_matrix(seen, dtype=bool)
            if seen.shape != (n_users, n_items):
                raise DataError(f"seen must have shape ({n_users}, {n_items}), got {seen.shape}")
            seen.sort_indices()
        self.seen = seen
        layout = FeatureLayout.from_metadata(fm.metadata) if "layout" in fm.metadata else None
        if layout is not None and (layout.n_users, layout.n_items) != (n_users, n_items):
            raise DataError(
                f"the model was trained for {layout.n_users} users x {layout.n_items} items but the "
                f"mappings have {n_users} x {n_items}"
            )
        kw = {"user_features": user_features}
        if layout is None:
            kw.update(n_users=n_users, n_items=n_items)
        self.user_vectors, self.item_vectors = fm_vectors(fm, **kw)
        self.offsets = user_offsets(fm, **kw)
        if item_popularity is None:
            item_popularity = (
                np.asarray(seen.sum(axis=0)).ravel().astype(np.float64) if seen is not None else np.zeros(n_items)
            )
        self.item_popularity = np.asarray(item_popularity, dtype=np.float64)
        self.knn_params = (knn_params or KNNParams()).validate()
        self._backend = backend
        self._index = None
        if index is not None:
            self.index = index
        self._popular_order = np.lexsort((np.arange(n_items), -self.item_popularity))
        self._similar_index = None

    # ---- index-level API ---------------------------------------------------------------------
    @property
    def index(self) -> Any:
        """The k-NN index over the item vectors (built with the backend on first use)."""
        if self._index is None:
            from backends import get_backend
            from backends.base import Backend

            be = self._backend if isinstance(self._backend, Backend) else get_backend(self._backend)
            self.index = be.build_knn(self.item_vectors, self.knn_params)
        return self._index

    @index.setter
    def index(self, index: Any) -> None:
        if int(index.ntotal) != self.n_items:
            raise DataError(f"the k-NN index holds {index.ntotal} vectors but there are {self.n_items} items")
        self._index = index

    @property
    def n_users(self) -> int:
        return self.mappings.n_users

    @property
    def n_items(self) -> int:
        return self.mappings.n_items

    def _to_score(self, users: np.ndarray, raw: np.ndarray) -> np.ndarray:
        """Index output -> FM score (higher is better)."""
        if self.index.metric == "INNER_PRODUCT":
            return raw.astype(np.float64) + self.offsets[users][:, None]
        if self.index.metric == "L2":
            return -raw.astype(np.float64)
        return raw.astype(np.float64)

    def recommend(
        self, userid: Any, N: int = 10, *, filter_already_liked_items: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``N`` item indices and scores for user index/indices ``userid``.

        A scalar gives 1-D arrays (only real recommendations); an array gives 2-D arrays of
        shape (len(userid), N) padded with -1 / -inf.
        """
        scalar = np.ndim(userid) == 0
        users = np.atleast_1d(np.asarray(userid, dtype=np.int64))
        if users.size and (users.min() < 0 or users.max() >= self.n_users):
            raise DataError(f"user indices must be in [0, {self.n_users}), got {users.min()}..{users.max()}")
        if not isinstance(N, (int, np.integer)) or N < 1:
            raise DataError(f"N must be a positive integer, got {N!r}")
        ids, scores = self._search(users, int(N), filter_already_liked_items)
        if scalar:
            keep = ids[0] >= 0
            return ids[0][keep], scores[0][keep]
        return ids, scores

    def _search(self, users: np.ndarray, k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray]:
        seen = self.seen if exclude_seen else None
        found = self._search_excluding(users, k, seen)
        if found is not None:
            return found
        chunk = getattr(self.index, "query_chunk", None) or max(len(users), 1)
        out_ids = np.full((len(users), k), _EMPTY, dtype=np.int64)
        out_scores = np.full((len(users), k), -np.inf, dtype=np.float64)
        # A customer who rated m videos needs k + m candidates, plus one more so that the k-th
        # kept score can be compared with a candidate that is not kept (a tie there is the only
        # reason to search deeper). Customers are grouped by m rounded up to a power of two and
        # each group is searched only as deep as it needs, so a few heavy raters no longer make
        # every query deep. Small groups are merged upwards while the depth at most doubles:
        # a flat search of fewer than ~4,096 queries ran at half the per-query speed here.
        n_seen = np.diff(seen.indptr)[users] if seen is not None else np.zeros(len(users), np.int64)
        max_k = getattr(self.index, "max_k", None)
        if max_k is not None:
            # an index with a fixed depth (SageMaker's k-NN: each search is a batch transform
            # job) is searched in one go
            batches = [np.arange(len(users))]
        else:
            group = np.where(n_seen > 0, 2 ** np.ceil(np.log2(np.maximum(n_seen, 1))), 0).astype(np.int64)
            batches, current, first = [], [], None
            for margin in np.unique(group):
                rows = np.flatnonzero(group == margin)
                if current and k + margin > 2 * (k + first):
                    batches.append(np.concatenate(current))
                    current = []
                if not current:
                    first = int(margin)
                current.append(rows)
                if sum(len(r) for r in current) >= _MIN_BATCH:
                    batches.append(np.concatenate(current))
                    current = []
            if current:
                batches.append(np.concatenate(current))
        for rows in batches:
            need = min(self.n_items, k + int(n_seen[rows].max(initial=0)))
            depth = min(self.n_items, need + 1)
            if max_k is not None:
                if need > max_k:
                    raise BackendError(
                        f"the k-NN index was built for k={max_k} neighbours but {need} are needed "
                        f"({k} plus up to {need - k} already-rated videos to skip); rebuild it with k >= {need}"
                    )
                depth = min(depth, max_k)
            for start in range(0, len(rows), chunk):
                r = rows[start : start + chunk]
                i, s = self._search_chunk(users[r], k, depth, need - k, seen)
                out_ids[r] = i
                out_scores[r] = s
        return out_ids, out_scores

    def _search_excluding(
        self, users: np.ndarray, k: int, seen: sp.csr_matrix | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The index's own exclusion search (exact flat inner product, native kernel), when it
        has one: no deeper search and no re-search of ties. None: use the general path."""
        search = getattr(self.index, "search_excluding", None)
        if search is None:
            return None
        out_ids = np.full((len(users), k), _EMPTY, dtype=np.int64)
        out_scores = np.full((len(users), k), -np.inf, dtype=np.float64)
        for start in range(0, len(users), 65536):
            u = users[start : start + 65536]
            found = search(self.user_vectors[u], k, seen[u] if seen is not None else None)
            if found is None:
                return None
            raw, ids = found
            out_ids[start : start + len(u)] = ids
            out_scores[start : start + len(u)] = np.where(ids >= 0, self._to_score(u, raw), -np.inf)
        return out_ids, out_scores

    def _search_chunk(
        self, u: np.ndarray, k: int, k_search: int, margin: int, seen: sp.csr_matrix | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` of users ``u``, searching ``k_search`` deep; deeper while a tie group of
        scores runs past the end of what the index returned (so the order is always score
        descending, then item index ascending, whatever the depth or the batch)."""
        max_k = getattr(self.index, "max_k", None)
        out_ids = np.full((len(u), k), _EMPTY, dtype=np.int64)
        out_scores = np.full((len(u), k), -np.inf, dtype=np.float64)
        pending = np.arange(len(u))
        while True:
            if max_k is not None and k_search > max_k:
                raise BackendError(
                    f"the k-NN index was built for k={max_k} neighbours but {k_search} are needed "
                    f"({k} plus up to {margin} already-rated videos to skip); rebuild it with k >= {k_search}"
                )
            q = u[pending]
            raw, ids = self.index.search(self.user_vectors[q], k_search)
            ids, scores = _order_by_score(ids, self._to_score(q, raw))
            top_ids, top_scores = top_k_excluding(ids, scores, _seen_mask(seen, q, ids), k)
            out_ids[pending], out_scores[pending] = top_ids, top_scores
            if k_search >= self.n_items or (max_k is not None and k_search >= max_k):
                return out_ids, out_scores
            # a row is undecided if its k-th kept score ties with the last candidate returned:
            # only those rows are searched again, twice as deep
            kth = top_scores[:, k - 1]
            undecided = np.isfinite(kth) & (kth == scores[:, -1])
            if not undecided.any():
                return out_ids, out_scores
            pending = pending[undecided]
            k_search = min(self.n_items, 2 * k_search) if max_k is None else min(self.n_items, max_k, 2 * k_search)

    def popular(self, N: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``N`` most popular items (ties: lower index first), optionally skipping some."""
        order = self._popular_order
        if exclude is not None and len(exclude):
            order = order[~np.isin(order, exclude)]
        top = order[:N]
        return top, self.item_popularity[top]

    def similar_items(self, itemid: int, N: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Items most similar to ``itemid`` by cosine of the item vectors (itself excluded)."""
        if not 0 <= int(itemid) < self.n_items:
            raise DataError(f"item index must be in [0, {self.n_items}), got {itemid}")
        if self._similar_index is None:
            from backends.local.knn import FaissIndex

            self._similar_index = FaissIndex.build(self.item_vectors, KNNParams(index_metric="COSINE"))
        k = min(self.n_items, int(N) + 1)
        scores, ids = self._similar_index.search(self.item_vectors[int(itemid)], k)
        keep = (ids[0] != int(itemid)) & (ids[0] >= 0)
        return ids[0][keep][:N], scores[0][keep][:N].astype(np.float64)

    # ---- id-level API --------------------------------------------------------------------
    def _frame(self, customer_ids: np.ndarray, ids: np.ndarray, scores: np.ndarray, fallback: np.ndarray) -> pd.DataFrame:
        k = ids.shape[1]
        valid = ids >= 0
        n_valid = valid.sum(axis=1)
        safe = np.where(valid, ids, 0)
        titles = self.mappings.product_titles
        frame = pd.DataFrame(
            {
                CUSTOMER: np.repeat(customer_ids, n_valid),
                "rank": np.tile(np.arange(1, k + 1, dtype=np.int32), len(ids))[valid.ravel()],
                PRODUCT: self.mappings.product_ids.to_numpy()[safe[valid]],
                TITLE: pd.array(titles[safe[valid]], dtype="string"),
                "score": scores[valid],
                "fallback": np.repeat(fallback, n_valid),
            }
        )
        return frame

    def iter_recommendations(
        self,
        customer_ids: Any = None,
        k: int | None = None,
        *,
        exclude_seen: bool = True,
        chunk_size: int = 65536,
    ) -> Iterator[pd.DataFrame]:
        """Yield recommendation frames (columns :data:`RECOMMENDATION_COLUMNS`) chunk by chunk.

        ``customer_ids`` None means every known customer. Unknown ids get the popularity
        fallback (``fallback=True``).
        """
        k = self.knn_params.k if k is None else k
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k must be a positive integer, got {k!r}")
        if customer_ids is None:
            ids_all = self.mappings.customer_ids.to_numpy()
            idx_all = np.arange(self.n_users, dtype=np.int64)
        else:
            ids_all = np.atleast_1d(np.asarray(customer_ids, dtype=object))
            idx_all = self.mappings.user_index(ids_all)
            n_unknown = int((idx_all < 0).sum())
            if n_unknown:
                log.info("%d of %d customers are unknown: using the popularity fallback", n_unknown, len(idx_all))
        chunk = max(1, int(chunk_size))
        for start in range(0, len(idx_all), chunk):
            idx = idx_all[start : start + chunk]
            cust = ids_all[start : start + chunk]
            known = idx >= 0
            ids = np.full((len(idx), k), _EMPTY, dtype=np.int64)
            scores = np.full((len(idx), k), -np.inf)
            if known.any():
                ids[known], scores[known] = self._search(idx[known], k, exclude_seen)
            if (~known).any():
                top, pop = self.popular(k)
                ids[~known, : len(top)] = top
                scores[~known, : len(top)] = pop
            yield self._frame(cust, ids, scores, ~known)

    def recommend_customers(self, customer_ids: Any = None, k: int | None = None, *, exclude_seen: bool = True) -> pd.DataFrame:
        """All recommendations as one DataFrame (see :meth:`iter_recommendations`)."""
        frames = list(self.iter_recommendations(customer_ids, k, exclude_seen=exclude_seen))
        if not frames:
            return pd.DataFrame({c: [] for c in RECOMMENDATION_COLUMNS})
        return pd.concat(frames, ignore_index=True)

    def similar_products(self, product_id: Any, k: int = 10) -> pd.DataFrame:
        """Videos similar to ``product_id`` (columns product_id, product_title, score, rank)."""
        idx = self.mappings.item_index([product_id])[0]
        if idx < 0:
            raise DataError(f"unknown product_id {product_id!r}")
        ids, scores = self.similar_items(int(idx), k)
        return pd.DataFrame(
            {
                "rank": np.arange(1, len(ids) + 1, dtype=np.int32),
                PRODUCT: self.mappings.product_ids.to_numpy()[ids],
                TITLE: pd.array(self.mappings.product_titles[ids], dtype="string"),
                "score": scores,
            }
        )

    # ---- the lab's per-customer views ----------------------------------------------------
    def customer_scores(self, customer_id: Any) -> pd.DataFrame:
        """Score one customer against the whole catalogue (the lab's ``prepare_predictions``),
        best first. ``score`` is the FM prediction (P(5 stars) for a classifier)."""
        u = self._known_user(customer_id)
        raw = self.offsets[u] + self.item_vectors.astype(np.float64) @ self.user_vectors[u].astype(np.float64)
        score = 1.0 / (1.0 + np.exp(-raw)) if self.fm.is_classifier else raw
        seen = np.zeros(self.n_items, dtype=bool)
        if self.seen is not None:
            seen[self.seen[u].indices] = True
        order = np.lexsort((np.arange(self.n_items), -raw))
        return pd.DataFrame(
            {
                PRODUCT: self.mappings.product_ids.to_numpy()[order],
                TITLE: pd.array(self.mappings.product_titles[order], dtype="string"),
                "score": score[order],
                "seen": seen[order],
            }
        )

    def _known_user(self, customer_id: Any) -> int:
        u = int(self.mappings.user_index([customer_id])[0])
        if u < 0:
            raise DataError(f"unknown customer_id {customer_id!r}")
        return u

    def score_correlation(self, customer_a: Any, customer_b: Any) -> tuple[float, np.ndarray, np.ndarray]:
        """Pearson correlation of two customers' scores over the catalogue (the lab's 200 vs 201
        scatter), plus the two score vectors in item order."""
        a, b = (self.customer_scores(c).sort_values(PRODUCT)["score"].to_numpy() for c in (customer_a, customer_b))
        corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
        return corr, a, b

    @staticmethod
    def list_overlap(recommendations: pd.DataFrame, customer_ids: Any) -> pd.DataFrame:
        """How many videos each pair of customers' lists share (the lab's 200/201/900 check,
        done for every pair, without the lab's copy-paste slip). Square DataFrame."""
        lists = {c: set(recommendations.loc[recommendations[CUSTOMER] == c, PRODUCT]) for c in customer_ids}
        ids = list(customer_ids)
        data = [[len(lists[a] & lists[b]) for b in ids] for a in ids]
        return pd.DataFrame(data, index=ids, columns=ids)


def write_recommendations(frames: pd.DataFrame | Any, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write recommendations (a DataFrame or an iterable of them) to Parquet or CSV, atomically.

    The format comes from ``fmt`` or the suffix (``.parquet`` / ``.csv``). Chunks are streamed,
    so millions of customers never sit in memory at once. Returns the path.
    """
    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in ("parquet", "csv"):
        raise ConfigError(f"recommendations format must be parquet or csv, got {fmt!r}")
    if isinstance(frames, pd.DataFrame):
        frames = [frames]
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        if fmt == "csv":
            header = True
            with open(tmp, "w", encoding="utf-8", newline="") as fh:
                for frame in frames:
                    frame.to_csv(fh, index=False, header=header)
                    header = False
        else:
            writer = None
            try:
                for frame in frames:
                    table = pa.Table.from_pandas(frame, preserve_index=False)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table.cast(writer.schema))
            finally:
                if writer is not None:
                    writer.close()
            if writer is None:
                pq.write_table(pa.table({c: [] for c in RECOMMENDATION_COLUMNS}), tmp)
    return path
