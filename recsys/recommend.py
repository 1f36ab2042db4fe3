"""Top-K recommendations from a fitted FM through a k-NN index (the lab's last stage).

:class:`Recommender` asks the backend's k-NN index for each customer's nearest videos by inner
product of the FM's vectors (:mod:`recsys.vectors`), skipping videos already rated (by default;
the lab did not), folds in customers outside the model (:mod:`recsys.fold_in`) and gives unknown
ones the most popular videos (no score). Scores are FM scores (a classifier's logit).

Index level (implicit's convention): ``recommend(userid, k)`` (scalar: 1-D arrays; array: 2-D,
padded with id -1 / score -inf) and ``similar_items``; id level: DataFrames from
``recommendations(customer_ids, k)`` and ``similar(product_id, k)``.
"""

from __future__ import annotations

import contextlib
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
from .fold_in import Histories, fold_in_vectors, histories_matrix, unique_rows
from .model import FittedFM
from .params import KNNParams
from .vectors import fm_vectors, model_layout, user_offsets

__all__ = ["Recommender", "popularity", "write_recommendations", "RECOMMENDATION_COLUMNS"]

log = logging.getLogger("recsys")

RECOMMENDATION_COLUMNS = (CUSTOMER, "rank", PRODUCT, TITLE, "score", "source")
#: Where a list comes from (the ``source`` column).
SOURCES = ("model", "fold_in", "popularity")
MODEL, FOLD_IN, POPULARITY = range(3)


def popularity(items: Any, n_items: int) -> np.ndarray:
    """Number of training ratings per item (float64), the popularity baseline's score."""
    return np.bincount(np.asarray(items, dtype=np.int64), minlength=n_items).astype(np.float64)


class Recommender:
    """Recommendations for customers from a fitted FM.

    ``fm`` is trained on the one-hot layout of ``mappings`` (or the layout in its metadata,
    with ``user_features``: the customer side of each row). ``seen`` (n_users, n_items) are
    the training interactions, skipped unless ``exclude_seen=False``; ``item_popularity``
    orders the popularity fallback (default: ratings in ``seen``). ``index`` is built with
    ``backend`` on first use when omitted; ``knn_params.k`` is the list length. ``histories``:
    what customers outside the model watched, folded in by the id-level API.
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
        histories: Histories | None = None,
    ):
        self.fm = fm
        self.mappings = mappings
        n_users, n_items = mappings.n_users, mappings.n_items
        if fm.feature_dim < n_users + n_items:
            raise DataError(f"the model has feature_dim {fm.feature_dim} but the mappings need {n_users} users + {n_items} items = {n_users + n_items}")
        if seen is not None:
            seen = sp.csr_matrix(seen, dtype=bool)
            if seen.shape != (n_users, n_items):
                raise DataError(f"seen must have shape ({n_users}, {n_items}), got {seen.shape}")
            seen.sort_indices()
        self.seen = seen
        sizes = {} if "layout" in fm.metadata else {"n_users": n_users, "n_items": n_items}
        self.layout = layout = model_layout(fm, **sizes)
        if (layout.n_users, layout.n_items) != (n_users, n_items):
            raise DataError(f"the model was trained for {layout.n_users} users x {layout.n_items} items but the mappings have {n_users} x {n_items}")
        if histories is not None and histories.ranks.shape[1] != n_items:
            raise DataError(f"histories cover {histories.ranks.shape[1]} videos but there are {n_items}")
        self.histories = histories
        self.user_vectors, self.item_vectors = fm_vectors(fm, **sizes, user_features=user_features)
        self.offsets = user_offsets(fm, **sizes, user_features=user_features)
        if item_popularity is None:
            item_popularity = np.asarray(seen.sum(axis=0)).ravel() if seen is not None else np.zeros(n_items)
        self.item_popularity = np.asarray(item_popularity, dtype=np.float64)
        self.knn_params = (knn_params or KNNParams()).validate()
        self._backend = backend
        self._index: KNNIndex | None = None
        if index is not None:
            self.index = index
        self.popular_order = np.lexsort((np.arange(n_items), -self.item_popularity))

    @property
    def index(self) -> KNNIndex:
        """The k-NN index over the item vectors, built on first use deep enough for
        ``knn_params.k`` + the most videos any customer rated + 1 (to see ties)."""
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

    n_users = property(lambda self: self.mappings.n_users, doc="Customers the model was trained on.")
    n_items = property(lambda self: self.mappings.n_items, doc="Videos in the catalogue.")

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
        ids, scores = self._search(self.user_vectors[users], self.offsets[users], k, exclude)
        return (ids[0][ids[0] >= 0], scores[0][ids[0] >= 0]) if scalar else (ids, scores)

    def top_lists(self, users: np.ndarray, k: int, *, exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`recommend` as int32 ids / float32 scores, 65,536 users at a time (all at once
        for a remote index): millions of customers take 800 MB per 100 videos, not several GB."""
        users = np.asarray(users, dtype=np.int64)
        k = check_k(k)
        ids = np.empty((len(users), k), dtype=np.int32)
        scores = np.empty((len(users), k), dtype=np.float32)
        step = 65536 if self.index.batch_size else max(len(users), 1)
        for start in range(0, len(users), step):
            i, sc = self.recommend(users[start : start + step], k, exclude_seen=exclude_seen)
            ids[start : start + step], scores[start : start + step] = i, sc
        return ids, scores

    def recommend_history(self, histories: Any, k: int = 10, *, exclude_seen: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """2-D :meth:`recommend` for customers outside the model, folded in from ``histories``
        (item index sequences, oldest first, or a CSR of recency ranks)."""
        k = check_k(k)
        ranks = sp.csr_matrix(histories) if sp.issparse(histories) else histories_matrix(histories, self.n_items)
        ranks.sort_indices()
        first, inverse = unique_rows(ranks)  # each distinct history once
        vectors, offsets = self.fold_in(ranks[first])
        ids, scores = self._search(vectors, offsets, k, ranks[first] if exclude_seen else None)
        return ids[inverse], scores[inverse]

    def fold_in(self, ranks: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        """User vectors and offsets of customers outside the model (CSR of recency ranks)."""
        return fold_in_vectors(self.fm, self.layout, ranks)

    def _search(
        self, vectors: np.ndarray, offsets: np.ndarray, k: int, exclude: sp.spmatrix | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The index's top ``k`` with FM scores (higher is better), padded to ``k`` columns."""
        ids, raw = self.index.search(vectors, k, exclude=exclude)
        raw = raw.astype(np.float64)
        if self.index.metric == "INNER_PRODUCT":
            raw += offsets[:, None]
        elif self.index.metric == "L2":
            raw = -raw
        pad = ((0, 0), (0, k - ids.shape[1]))  # a catalogue smaller than k
        scores = np.where(ids >= 0, raw, -np.inf)
        return np.pad(ids, pad, constant_values=-1), np.pad(scores, pad, constant_values=-np.inf)

    def popular(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most popular items (ties: lower index first) and their popularity."""
        top = self.popular_order[:k]
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

    def _lists(self, idx: np.ndarray, k: int, exclude_seen: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(ids, scores, source)`` for user indices ``idx`` (>= 0), rows of :attr:`histories`
        (``-2 - row``) or unknown customers (-1)."""
        ids = np.full((len(idx), k), -1, dtype=np.int64)
        scores = np.full((len(idx), k), np.nan)
        source = np.full(len(idx), POPULARITY, dtype=np.int8)
        model = idx >= 0
        if model.any():
            ids[model], scores[model] = self.recommend(idx[model], k, exclude_seen=exclude_seen)
            source[model] = MODEL
        others = np.flatnonzero(idx <= -2)
        if len(others):
            ranks = self.histories.ranks[-2 - idx[others]]  # type: ignore[union-attr]
            has = np.diff(ranks.indptr) > 0  # watched something in the catalogue
            if has.any():
                folded = others[has]
                ids[folded], scores[folded] = self.recommend_history(ranks[has], k, exclude_seen=exclude_seen)
                source[folded] = FOLD_IN
        rest = source == POPULARITY
        if rest.any():
            top, _ = self.popular(k)
            ids[rest, : len(top)] = top
        return ids, scores, source

    def _locate(self, customer_ids: Any) -> np.ndarray:
        idx = self.mappings.user_index(customer_ids)
        if self.histories is not None and (idx < 0).any():
            rows = self.histories.index(np.asarray(customer_ids, dtype=object)[idx < 0])
            idx[idx < 0] = np.where(rows >= 0, -2 - rows, -1)
        return idx

    def iter_recommendations(
        self,
        customer_ids: Any = None,
        k: int | None = None,
        *,
        exclude_seen: bool = True,
        chunk_size: int | None = None,
        arrow: bool = False,
        model_lists: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Iterator[Any]:
        """Yield recommendation frames (columns :data:`RECOMMENDATION_COLUMNS`; ``arrow=True``:
        dictionary-encoded pyarrow Tables) chunk by chunk, for ``customer_ids`` or (None) every
        customer known: the model's, then those of :attr:`histories`. ``model_lists``: the
        model's customers' ``recommend(arange(n_users), k)`` when already computed (a remote
        index is not searched twice). ``source``: ``model``, ``fold_in`` or ``popularity``
        (nothing known: ``score`` NaN -- a rating count is not a score).
        """
        k = check_k(self.knn_params.k if k is None else k)
        build = self._table if arrow else self.frame
        if customer_ids is None:
            customers = self.mappings.customer_ids.to_numpy()
            ids_all, idx_all = customers[:0], np.zeros(0, dtype=np.int64)
            if self.histories is not None and len(self.histories):
                ids_all = self.histories.customer_ids.to_numpy()
                idx_all = -2 - np.arange(len(self.histories), dtype=np.int64)
            if model_lists is not None:
                for start in range(0, self.n_users, 65536):  # written as computed: 65,536 a block
                    part = slice(start, start + 65536)
                    yield build(customers[part], model_lists[0][part], model_lists[1][part], MODEL)
            else:
                ids_all = np.concatenate([customers, ids_all])
                idx_all = np.r_[np.arange(self.n_users, dtype=np.int64), idx_all]
        else:
            ids_all = np.atleast_1d(np.asarray(customer_ids, dtype=object))
            idx_all = self._locate(ids_all)
            n_unknown = int((idx_all == -1).sum())
            if n_unknown:
                log.info("%d of %d customers are unknown: using the most popular videos", n_unknown, len(idx_all))
        # an index searched by remote jobs (no batch size) gets everyone at once
        chunk = chunk_size or (65536 if self.index.batch_size else max(len(idx_all), 1))
        for start in range(0, len(idx_all), chunk):
            ids, scores, source = self._lists(idx_all[start : start + chunk], k, exclude_seen)
            yield build(ids_all[start : start + chunk], ids, scores, source)

    def frame(self, customer_ids: Any, ids: np.ndarray, scores: np.ndarray, source: Any = MODEL) -> pd.DataFrame:
        """Lists as a DataFrame (columns :data:`RECOMMENDATION_COLUMNS`): one customer id and
        one source code (index into :data:`SOURCES`) per row of ``ids`` / ``scores``."""
        customer_ids = np.asarray(customer_ids)
        source = np.broadcast_to(np.asarray(source, dtype=np.int8), (len(ids),))
        valid = ids >= 0
        n_valid = valid.sum(axis=1)
        return pd.DataFrame({
            CUSTOMER: np.repeat(customer_ids, n_valid),
            "rank": np.tile(np.arange(1, ids.shape[1] + 1, dtype=np.int32), len(ids))[valid.ravel()],
            **self._videos(ids[valid]),
            "score": scores[valid],
            "source": pd.array(np.asarray(SOURCES, dtype=object)[np.repeat(source, n_valid)], dtype="string"),
        })  # fmt: skip

    def _videos(self, items: np.ndarray) -> dict[str, Any]:
        """The product id and title columns of item indices ``items``."""
        return {PRODUCT: self.mappings.product_ids.to_numpy()[items],
                TITLE: pd.array(self.mappings.product_titles[items], dtype="string")}  # fmt: skip

    def _table(self, customer_ids: np.ndarray, ids: np.ndarray, scores: np.ndarray, source: np.ndarray) -> Any:
        import pyarrow as pa

        source = np.broadcast_to(np.asarray(source, dtype=np.int8), (len(ids),))
        valid = ids >= 0
        n_valid = valid.sum(axis=1)
        items = ids[valid].astype(np.int32)
        if self._arrow_dicts is None:  # (a missing title: a null index, not a null in the dictionary)
            titled = np.array([isinstance(t, str) for t in self.mappings.product_titles], dtype=bool)
            titles = [t if ok else "" for t, ok in zip(self.mappings.product_titles, titled, strict=True)]
            self._arrow_dicts = (pa.array(self.mappings.product_ids.to_numpy()), pa.array(titles, pa.string()),
                                 pa.array(SOURCES), titled)  # fmt: skip
        products, titles, sources, titled = self._arrow_dicts
        try:
            customers = pa.array(np.repeat(customer_ids, n_valid))
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed id types: as text
            customers = pa.array(np.repeat([str(c) for c in customer_ids], n_valid))
        return pa.table({
            CUSTOMER: customers,
            "rank": pa.array(np.tile(np.arange(1, ids.shape[1] + 1, dtype=np.int16), len(ids))[valid.ravel()]),
            PRODUCT: pa.DictionaryArray.from_arrays(pa.array(items), products),
            TITLE: pa.DictionaryArray.from_arrays(pa.array(items, mask=~titled[items]), titles),
            "score": pa.array(scores[valid].astype(np.float32)),
            "source": pa.DictionaryArray.from_arrays(pa.array(np.repeat(source, n_valid)), sources),
        })  # fmt: skip

    _arrow_dicts: tuple[Any, Any, Any, np.ndarray] | None = None

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
        return pd.DataFrame({"rank": np.arange(1, len(ids) + 1, dtype=np.int32), **self._videos(ids), "score": scores})

    def customer_scores(self, customer_id: Any) -> pd.DataFrame:
        """One customer's FM prediction (P(5 stars) for a classifier) for every video, best first
        (the lab's ``prepare_predictions``)."""
        u = int(self.mappings.user_index([customer_id])[0])
        if u < 0:
            raise DataError(f"unknown customer_id {customer_id!r}")
        raw = self.offsets[u] + self.item_vectors.astype(np.float64) @ self.user_vectors[u].astype(np.float64)
        score = 1.0 / (1.0 + np.exp(-raw)) if self.fm.is_classifier else raw
        seen = np.zeros(self.n_items, dtype=bool)
        if self.seen is not None:
            seen[self.seen[u].indices] = True
        order = np.lexsort((np.arange(self.n_items), -raw))
        return pd.DataFrame({**self._videos(order), "score": score[order], "seen": seen[order]})

    def score_correlation(self, customer_a: Any, customer_b: Any) -> tuple[float, np.ndarray, np.ndarray]:
        """Pearson correlation of two customers' scores over the catalogue and the two score
        vectors in product order (the lab's 200 vs 201 scatter)."""
        a, b = (self.customer_scores(c).sort_values(PRODUCT)["score"].to_numpy() for c in (customer_a, customer_b))
        corr = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else float("nan")
        return corr, a, b

    @staticmethod
    def list_overlap(recommendations: pd.DataFrame, customer_ids: Any) -> pd.DataFrame:
        """Square DataFrame: videos shared by each pair of customers' lists (the lab's 200/201/900
        check, for every pair)."""
        lists = {c: set(recommendations.loc[recommendations[CUSTOMER] == c, PRODUCT]) for c in customer_ids}
        ids = list(customer_ids)
        data = [[len(lists[a] & lists[b]) for b in ids] for a in ids]
        return pd.DataFrame(data, index=ids, columns=ids)


def write_recommendations(frames: Any, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Write recommendations (a DataFrame or pyarrow Table, or an iterable of them) atomically
    to Parquet or CSV (``fmt``, else the suffix), streaming one chunk (row group) at a time."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    fmt = (fmt or path.suffix.lstrip(".")).lower()
    if fmt not in ("parquet", "csv"):
        raise ConfigError(f"recommendations format must be parquet or csv, got {fmt!r}")
    if isinstance(frames, (pd.DataFrame, pa.Table)):
        frames = [frames]
    with atomic_path(path) as tmp, contextlib.ExitStack() as opened:  # the writer closes first
        writer: Any = None
        for frame in frames:
            table = frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
            if fmt == "csv":  # plain values: CSV has no dictionaries
                table = pa.table({n: c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c
                                  for n, c in zip(table.column_names, table.columns, strict=True)})  # fmt: skip
            if writer is None:
                schema = table.schema
                if fmt == "csv":
                    writer = pacsv.CSVWriter(tmp, schema)
                else:  # no dictionary attempt on scores, no min/max of strings: 3x faster
                    writer = pq.ParquetWriter(tmp, schema, use_dictionary=[c for c in schema.names if c != "score"],
                                              write_statistics=[c for c in ("customer_id", "rank", "score") if c in schema.names])  # fmt: skip
                opened.enter_context(writer)
            writer.write_table(table.cast(schema))
        if writer is None:
            empty = pa.table({c: pa.array([], pa.string()) for c in RECOMMENDATION_COLUMNS})
            (pacsv.write_csv if fmt == "csv" else pq.write_table)(empty, tmp)
    return path
