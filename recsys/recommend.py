"""Top-K recommendations from a fitted FM through a k-NN index (the lab's last stage).

:class:`Recommender` turns the FM into user/item vectors (:mod:`recsys.vectors`), asks a k-NN
index (FAISS locally, SageMaker's k-NN remotely) for each customer's nearest videos by inner
product, drops videos the customer already rated (on by default; the lab did not), and falls
back to the most popular videos for customers it does not know (flagged ``fallback``, with no
score). The k-NN index comes from the backend; searching with the rated videos skipped is the
index's (:meth:`backends.base.KNNIndex.search`).

Scores are FM scores: the inner product plus the customer's constant ``w0 + w_u``, i.e.
exactly ``FittedFM.decision_pairs(user, item)`` (the logit for a classifier).

Index level (implicit's convention): ``recommend(userid, k)`` with a scalar user index returns
1-D ``(ids, scores)``, with an array of indices 2-D arrays padded with id -1 / score -inf;
``similar_items(itemid, k)``. Id level: ``recommendations(customer_ids, k)`` and
``similar(product_id, k)`` return DataFrames.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from backends.base import Backend, KNNIndex, check_k

from ._io import atomic_path
from .data.prepare import Mappings
from .data.schema import CUSTOMER, PRODUCT, TITLE
from .errors import ConfigError, DataError
from .features import FeatureLayout
from .model import FittedFM
from .params import KNNParams
from .vectors import fm_vectors, user_offsets

__all__ = ["Recommender", "popularity", "write_recommendations", "RECOMMENDATION_COLUMNS"]

log = logging.getLogger("recsys")

RECOMMENDATION_COLUMNS = (CUSTOMER, "rank", PRODUCT, TITLE, "score", "fallback")


def popularity(items: Any, n_items: int) -> np.ndarray:
    """Number of training ratings per item (float64), the popularity baseline's score."""
    return np.bincount(np.asarray(items, dtype=np.int64), minlength=n_items).astype(np.float64)


class Recommender:
    """Recommendations for customers from a fitted FM.

    Parameters
    ----------
    fm : FittedFM
        Trained on the users-then-items one-hot layout of ``mappings`` (or a layout recorded
        in its metadata, with ``user_features``).
    mappings : Mappings
        Ids <-> indices and titles.
    seen : csr_matrix (n_users, n_items), optional
        Training interactions; excluded from recommendations unless ``exclude_seen=False``.
    item_popularity : ndarray (n_items,), optional
        Orders the popularity fallback (default: number of ratings in ``seen``).
    index : KNNIndex, optional
        A k-NN index over the item vectors; built with ``backend`` on first use when omitted.
    backend : Backend or str
        Builds the index (default ``"torch"``: FAISS).
    knn_params : KNNParams, optional
        ``k`` (the list length), ``index_type``, ``index_metric``, ... (default: exact inner
        product, k = 100).
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
        index: KNNIndex | None = None,
        backend: Backend | str = "torch",
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
        kw: dict[str, Any] = {"user_features": user_features}
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
        self._index: KNNIndex | None = None
        if index is not None:
            self.index = index
        self.popular_order = np.lexsort((np.arange(n_items), -self.item_popularity))

    # ---- index-level API ---------------------------------------------------------------------
    @property
    def index(self) -> KNNIndex:
        """The k-NN index over the item vectors, built with the backend on first use, deep
        enough for ``knn_params.k`` plus the most videos any customer rated (plus one, to see
        ties); a backend may cap that (:attr:`KNNIndex.max_k`)."""
        if self._index is None:
            from backends import get_backend

            be = get_backend(self._backend) if isinstance(self._backend, str) else self._backend
            most_seen = int(np.diff(self.seen.indptr).max(initial=0)) if self.seen is not None else 0
            depth = min(self.n_items, self.knn_params.k + most_seen + 1)
            self.index = be.build_knn(self.item_vectors, dataclasses.replace(self.knn_params, k=depth))
        return self._index  # type: ignore[return-value]

    @index.setter
    def index(self, index: KNNIndex) -> None:
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

    def recommend(self, userid: Any, k: int = 10, *, exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` item indices and FM scores for user index/indices ``userid``.

        A scalar gives 1-D arrays (only real recommendations); an array gives 2-D arrays of
        shape (len(userid), k) padded with -1 / -inf. Ties: lower item index first.
        """
        scalar = np.ndim(userid) == 0
        users = np.atleast_1d(np.asarray(userid, dtype=np.int64))
        if users.size and (users.min() < 0 or users.max() >= self.n_users):
            raise DataError(f"user indices must be in [0, {self.n_users}), got {users.min()}..{users.max()}")
        k = check_k(k)
        exclude = self.seen[users] if exclude_seen and self.seen is not None else None
        ids, raw = self.index.search(self.user_vectors[users], k, exclude=exclude)
        scores = np.where(ids >= 0, self._to_score(users, raw), -np.inf)
        if ids.shape[1] < k:  # a catalogue smaller than k
            pad = k - ids.shape[1]
            ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        if scalar:
            keep = ids[0] >= 0
            return ids[0][keep], scores[0][keep]
        return ids, scores

    def popular(self, k: int, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most popular items (ties: lower index first) and their rating counts,
        optionally skipping some."""
        order = self.popular_order
        if exclude is not None and len(exclude):
            order = order[~np.isin(order, exclude)]
        top = order[:k]
        return top, self.item_popularity[top]

    def similar_items(self, itemid: int, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Items most similar to ``itemid`` by cosine of the item vectors (itself excluded),
        exact, ties by lower index."""
        if not 0 <= int(itemid) < self.n_items:
            raise DataError(f"item index must be in [0, {self.n_items}), got {itemid}")
        k = check_k(k)
        if self._unit_items is None:
            v = self.item_vectors.astype(np.float64)
            norms = np.linalg.norm(v, axis=1, keepdims=True)
            self._unit_items = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)
        cos = self._unit_items @ self._unit_items[int(itemid)]
        cos[int(itemid)] = -np.inf
        order = np.lexsort((np.arange(self.n_items), -cos))[: min(k, self.n_items - 1)]
        return order, cos[order]

    _unit_items: np.ndarray | None = None

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

        ``customer_ids`` None means every known customer. Unknown ids get the most popular
        videos, flagged ``fallback=True``, with ``score`` NaN (a rating count is not a score).
        """
        k = check_k(self.knn_params.k if k is None else k)
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
            ids = np.full((len(idx), k), -1, dtype=np.int64)
            scores = np.full((len(idx), k), np.nan)
            if known.any():
                ids[known], scores[known] = self.recommend(idx[known], k, exclude_seen=exclude_seen)
            if (~known).any():
                top, _ = self.popular(k)
                ids[~known, : len(top)] = top
            yield self._frame(cust, ids, scores, ~known)

    def recommendations(self, customer_ids: Any = None, k: int | None = None, *, exclude_seen: bool = True) -> pd.DataFrame:
        """All recommendations as one DataFrame (see :meth:`iter_recommendations`)."""
        frames = list(self.iter_recommendations(customer_ids, k, exclude_seen=exclude_seen))
        if not frames:
            return pd.DataFrame({c: [] for c in RECOMMENDATION_COLUMNS})
        return pd.concat(frames, ignore_index=True)

    def similar(self, product_id: Any, k: int = 10) -> pd.DataFrame:
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
