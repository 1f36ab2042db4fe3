"""Preparation: reduce, de-duplicate, drop the long tail, index, split and encode.

Each stage is a plain function over DataFrames/arrays that returns new values;
:func:`prepare` wires them together in the lab's order:

1. :func:`reduce_columns` -- keep customer, product, title, rating (+ date for ordering).
2. :func:`drop_duplicates` -- exact duplicate rows, then re-reviews of the same video by the
   same customer (the latest review is kept).
3. :func:`filter_long_tail` -- drop customers and videos with too few ratings (the lab's 18 / 95).
4. :func:`build_mappings` / :func:`index_ratings` -- sequential 0-based ``user`` / ``item``.
5. :func:`split_leave_last_out` (default), :func:`split_random` or :func:`split_explicit`.
6. :func:`one_hot` -- the users-then-items one-hot design matrix, float32 CSR.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._io import atomic_path
from ..errors import ConfigError, DataError
from .schema import (
    CUSTOMER,
    DATE,
    ITEM,
    PRODUCT,
    RATING,
    RATINGS_COLUMNS,
    REQUIRED_COLUMNS,
    TITLE,
    USER,
)

__all__ = [
    "PrepareConfig", "PrepareReport", "PreparedData", "Mappings", "reduce_columns", "drop_duplicates",
    "count_duplicates", "filter_long_tail", "build_mappings", "index_ratings", "split_leave_last_out",
    "split_random", "split_explicit", "one_hot", "seen_matrix", "labels", "prepare",
]  # fmt: skip

log = logging.getLogger("recsys")

SPLITS = ("leave_last_out", "random")


@dataclass
class PrepareConfig:
    """Options of the preparation stage (section ``[prepare]`` of a run config)."""

    min_customer_ratings: int = 18
    min_product_ratings: int = 95
    repeat_until_stable: bool = False
    split: str = "leave_last_out"
    test_fraction: float = 0.2
    positive_threshold: float = 5.0
    seed: int = 0

    def validate(self) -> PrepareConfig:
        for name in ("min_customer_ratings", "min_product_ratings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.repeat_until_stable, bool):
            raise ConfigError(f"repeat_until_stable must be true or false, got {self.repeat_until_stable!r}")
        if self.split not in SPLITS:
            raise ConfigError(f"split must be one of {', '.join(SPLITS)}; got {self.split!r}")
        if not isinstance(self.test_fraction, (int, float)) or not 0 < self.test_fraction < 1:
            raise ConfigError(f"test_fraction must be between 0 and 1 (exclusive), got {self.test_fraction!r}")
        if not isinstance(self.positive_threshold, (int, float)) or isinstance(self.positive_threshold, bool):
            raise ConfigError(f"positive_threshold must be a number, got {self.positive_threshold!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        return self


@dataclass
class PrepareReport:
    """Counts from every preparation stage (all plain ints / dicts, JSON-serialisable)."""

    rows_in: int = 0
    exact_duplicates_removed: int = 0
    rereviews_removed: int = 0
    rows_after_dedupe: int = 0
    customers_before_filter: int = 0
    products_before_filter: int = 0
    customers: int = 0
    products: int = 0
    rows_after_filter: int = 0
    filter_passes: int = 0
    min_customer_ratings: int = 0
    min_product_ratings: int = 0
    rating_distribution_before: dict[str, int] = field(default_factory=dict)
    rating_distribution_after: dict[str, int] = field(default_factory=dict)
    split: str = ""
    train_rows: int = 0
    test_rows: int = 0
    test_customers_single_rating: int = 0
    test_date_ties: int = 0
    test_items_unseen_in_train: int = 0
    explicit_test_rows_dropped: int = 0  # --test-data rows whose customer or video is not in training
    explicit_test_overlap_removed: int = 0  # training rows of (customer, video) pairs in the test set

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary_lines(self) -> list[str]:
        return [
            f"{self.rows_in:,} ratings in; removed {self.exact_duplicates_removed:,} exact duplicate rows "
            f"and {self.rereviews_removed:,} re-reviews (kept each customer's latest review of a video)",
            f"long-tail filter (customers >= {self.min_customer_ratings}, videos >= {self.min_product_ratings}"
            f"{', repeated until stable' if self.filter_passes > 1 else ''}): "
            f"{self.customers_before_filter:,} -> {self.customers:,} customers, "
            f"{self.products_before_filter:,} -> {self.products:,} videos, "
            f"{self.rows_after_dedupe:,} -> {self.rows_after_filter:,} ratings",
            f"split ({self.split}): {self.train_rows:,} train / {self.test_rows:,} test ratings"
            + (
                f"; {self.explicit_test_rows_dropped:,} test ratings dropped (customer or video not in "
                f"the prepared training data), {self.explicit_test_overlap_removed:,} training ratings "
                "removed (also in the test set)"
                if self.split == "explicit"
                else ""
            ),
        ]


def _rating_distribution(ratings: pd.Series) -> dict[str, int]:
    counts = ratings.value_counts().sort_index()
    return {f"{float(k):g}": int(v) for k, v in counts.items()}


def reduce_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Keep the ratings columns (customer, product, title, rating, date), adding missing optional
    ones as NaN/NaT. A missing required column raises :class:`DataError` naming it."""
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"the ratings are missing required column(s) {', '.join(missing)}; "
            f"found columns: {', '.join(map(str, frame.columns))}"
        )
    out = frame.reindex(columns=list(RATINGS_COLUMNS)).reset_index(drop=True)
    if TITLE not in frame.columns:
        out[TITLE] = out[TITLE].astype("category")
    if DATE not in frame.columns:
        out[DATE] = out[DATE].astype("datetime64[ns]")
    out[RATING] = out[RATING].astype(np.float32)
    if not pd.api.types.is_datetime64_any_dtype(out[DATE]):
        out[DATE] = pd.to_datetime(out[DATE], errors="coerce")
    return out


def date_order_key(frame: pd.DataFrame) -> np.ndarray:
    """Dates as int64 for ordering; NaT (the smallest int64) sorts first (oldest)."""
    return frame[DATE].to_numpy(dtype="datetime64[ns]").view(np.int64)


def _codes(series: pd.Series) -> np.ndarray:
    """Integer codes with equal values -> equal codes (NaN gets its own code)."""
    if isinstance(series.dtype, pd.CategoricalDtype):
        return series.cat.codes.to_numpy().astype(np.int64)
    return pd.factorize(series, use_na_sentinel=False)[0].astype(np.int64)


def _dedupe(frame: pd.DataFrame) -> tuple[np.ndarray, int]:
    """The rows :func:`drop_duplicates` keeps (sorted) and how many exact duplicate rows it drops.

    One stable sort by (customer, video, date) does both: exact duplicates can only sit in a
    run of equal (customer, video, date), and the last row of each (customer, video) run is
    the latest review. ``product_title`` and ``review_date`` may be absent (all missing).
    """
    n = len(frame)
    if n == 0:
        return np.empty(0, dtype=np.int64), 0
    cust, prod = _codes(frame[CUSTOMER]) + 1, _codes(frame[PRODUCT]) + 1  # categorical NaN: -1 -> 0
    pair = cust * (int(prod.max()) + 1) + prod
    date_key = date_order_key(frame) if DATE in frame.columns else np.zeros(n, dtype=np.int64)
    date = np.unique(date_key, return_inverse=True)[1].reshape(-1)
    n_dates = int(date.max()) + 1
    if (int(pair.max()) + 1) * n_dates < 2**62:
        order = np.argsort(pair * n_dates + date, kind="stable")  # stable: file order on ties
    else:  # pragma: no cover - astronomically many (pair, date) combinations
        order = np.lexsort((date, pair))
    p_s, d_s = pair[order], date[order]
    same_prev = np.zeros(n, dtype=bool)
    same_prev[1:] = (p_s[1:] == p_s[:-1]) & (d_s[1:] == d_s[:-1])
    # rows in a run of equal (pair, date): compare title and rating there only (rare)
    in_run = same_prev.copy()
    in_run[:-1] |= same_prev[1:]
    exact = np.zeros(n, dtype=bool)
    if in_run.any():
        rows = order[in_run]
        title = _codes(frame[TITLE])[rows] if TITLE in frame.columns else 0
        key = pd.DataFrame({
            "k": pair[rows] * n_dates + date[rows],
            "t": title,
            "r": frame[RATING].to_numpy(dtype=np.float64)[rows],
        })  # fmt: skip
        exact[rows] = key.duplicated(keep="first").to_numpy()
    kept = order[~exact[order]]
    p_k = pair[kept]
    last = np.ones(len(kept), dtype=bool)
    last[:-1] = p_k[1:] != p_k[:-1]
    return np.sort(kept[last]), int(exact.sum())


def drop_duplicates(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop exact duplicate rows, then re-reviews (same customer and video): keep the latest.

    The two notions used everywhere (loader, exploration, preparation, report):

    * an **exact duplicate row** is identical to an earlier row in all five ratings columns
      (customer, video, title, rating, date; missing equals missing);
    * a **re-review** is any further row of a (customer, video) pair once exact duplicates are
      gone; the latest review is kept -- by ``review_date``, the later line on equal dates.

    Returns the de-duplicated frame (file order preserved) and the counts
    ``exact_duplicates_removed`` and ``rereviews_removed``.
    """
    final, n_exact = _dedupe(frame)
    out = frame.iloc[final].reset_index(drop=True)
    return out, {"exact_duplicates_removed": n_exact, "rereviews_removed": len(frame) - n_exact - len(final)}


def count_duplicates(frame: pd.DataFrame) -> tuple[int, int]:
    """``(exact duplicate rows, re-reviews)`` in a ratings frame: what :func:`drop_duplicates`
    removes, without building the de-duplicated frame."""
    final, n_exact = _dedupe(frame)
    return n_exact, len(frame) - n_exact - len(final)


def filter_long_tail(
    frame: pd.DataFrame, min_customer_ratings: int = 18, min_product_ratings: int = 95, *, repeat_until_stable: bool = False
) -> tuple[pd.DataFrame, int]:
    """Keep customers with >= ``min_customer_ratings`` and videos with >= ``min_product_ratings``.

    Both counts are computed on the input and applied together (the lab's rule). With
    ``repeat_until_stable`` the filter is repeated until nothing changes (a k-core). Returns the
    filtered frame and the number of passes. If nothing is left, raises :class:`DataError` naming
    the thresholds and how many customers / videos met each.
    """
    if len(frame) == 0:
        raise DataError("no ratings to filter: the input is empty")
    current = frame
    for passes in itertools.count(1):
        cust, prod = _codes(current[CUSTOMER]), _codes(current[PRODUCT])
        c_counts, p_counts = np.bincount(cust), np.bincount(prod)
        c_ok, p_ok = c_counts >= min_customer_ratings, p_counts >= min_product_ratings
        mask = c_ok[cust] & p_ok[prod]
        if not mask.any():
            n_c, n_p = int((c_counts > 0).sum()), int((p_counts > 0).sum())
            raise DataError(
                "nothing left after the long-tail filter"
                f"{f' (pass {passes})' if passes > 1 else ''}: "
                f"{int(c_ok.sum()):,} of {n_c:,} customers have >= {min_customer_ratings} ratings "
                f"(most active: {int(c_counts.max()):,}), {int(p_ok.sum()):,} of {n_p:,} videos have "
                f">= {min_product_ratings} ratings (most rated: {int(p_counts.max()):,}), and no rating "
                "passes both. Lower --min-customer-ratings / --min-product-ratings."
            )
        current = current.iloc[np.flatnonzero(mask)]
        if mask.all() or not repeat_until_stable:
            return current.reset_index(drop=True), passes


def _sorted_uniques(series: pd.Series) -> pd.Index:
    values = series.dropna()
    if isinstance(values.dtype, pd.CategoricalDtype):
        uniques = pd.Index(values.cat.remove_unused_categories().cat.categories)
    else:
        uniques = pd.Index(pd.unique(values.to_numpy()))
    try:
        return uniques.sort_values()
    except TypeError:  # mixed types: order by their text
        return uniques[np.argsort(uniques.astype(str).to_numpy(), kind="stable")]


@dataclass
class Mappings:
    """Both-way mappings between ids and 0-based indices (plus video titles).

    ``customer_ids[u]`` is the id of user ``u``; ``product_ids[i]`` the id of item ``i`` and
    ``product_titles[i]`` its title (``None`` when unknown). Indices follow the sorted ids.
    """

    customer_ids: pd.Index
    product_ids: pd.Index
    product_titles: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.customer_ids)

    @property
    def n_items(self) -> int:
        return len(self.product_ids)

    @staticmethod
    def _lookup(index: pd.Index, ids: Any) -> np.ndarray:
        arr = np.atleast_1d(np.asarray(ids, dtype=object))
        if pd.api.types.is_integer_dtype(index.dtype):
            # ids may arrive as text (a URL, the command line): "123" finds customer 123
            num = pd.to_numeric(pd.Series(arr), errors="coerce").to_numpy(dtype=np.float64)
            ok = np.isfinite(num) & (num == np.round(num))
            out = np.full(len(arr), -1, dtype=np.int64)
            out[ok] = index.get_indexer(num[ok].astype(np.int64))
            return out
        return index.get_indexer(pd.Index([str(x) for x in arr], dtype=index.dtype))

    def user_index(self, customer_ids: Any) -> np.ndarray:
        """0-based user indices for ids (-1 where unknown). Accepts ids as given or as strings."""
        return self._lookup(self.customer_ids, customer_ids)

    def item_index(self, product_ids: Any) -> np.ndarray:
        """0-based item indices for ids (-1 where unknown)."""
        return self._lookup(self.product_ids, product_ids)

    def save(self, directory: str | os.PathLike) -> None:
        """Write ``customers.parquet`` and ``products.parquet`` (atomically) into ``directory``."""
        directory = Path(directory)
        customers = pd.DataFrame({USER: np.arange(self.n_users, dtype=np.int64), CUSTOMER: self.customer_ids})
        titles = pd.array(self.product_titles, dtype="string")
        products = pd.DataFrame({ITEM: np.arange(self.n_items, dtype=np.int64), PRODUCT: self.product_ids, TITLE: titles})
        for name, table in (("customers.parquet", customers), ("products.parquet", products)):
            with atomic_path(directory / name) as tmp:
                table.to_parquet(tmp, index=False)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Mappings:
        directory = Path(directory)
        try:
            customers = pd.read_parquet(directory / "customers.parquet")
            products = pd.read_parquet(directory / "products.parquet")
        except (OSError, ValueError) as exc:
            raise DataError(f"cannot read the id mappings in {directory}: {exc}") from exc
        titles = products[TITLE].astype(object).where(products[TITLE].notna(), None).to_numpy()
        return cls(pd.Index(customers[CUSTOMER]), pd.Index(products[PRODUCT]), titles)


def build_mappings(frame: pd.DataFrame) -> Mappings:
    """Sequential indices for the customers and videos in ``frame`` (sorted ids) and a title
    per video (its most recent non-missing title)."""
    customers = _sorted_uniques(frame[CUSTOMER])
    products = _sorted_uniques(frame[PRODUCT])
    titles = np.full(len(products), None, dtype=object)
    last = frame[[PRODUCT, TITLE]].dropna(subset=[TITLE]).drop_duplicates(PRODUCT, keep="last")
    titles[products.get_indexer(last[PRODUCT])] = last[TITLE].astype(str).to_numpy()
    return Mappings(customers, products, titles)


def index_ratings(frame: pd.DataFrame, mappings: Mappings) -> pd.DataFrame:
    """Add ``user`` and ``item`` columns (int32 indices; -1 for ids the mappings lack)."""
    out = frame.copy()
    out[USER] = mappings.customer_ids.get_indexer(frame[CUSTOMER]).astype(np.int32)
    out[ITEM] = mappings.product_ids.get_indexer(frame[PRODUCT]).astype(np.int32)
    return out


def split_leave_last_out(indexed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Each customer's latest rating (by date, then file order; no date counts as the oldest) is
    the test row -- deterministic for a given file. (The lab's ``groupby("customer_id").last()``
    took the last row in file order, not the latest review.)

    Customers with a single rating keep it in training. Returns ``(train, test, stats)`` with
    stats ``test_customers_single_rating`` and ``test_date_ties`` (customers whose latest date
    was shared by several ratings, where file order decided).
    """
    users = indexed[USER].to_numpy()
    date = date_order_key(indexed)
    order = np.lexsort((date, users))  # stable: the later line wins a tie on the date
    last = np.ones(len(order), dtype=bool)
    last[:-1] = users[order][1:] != users[order][:-1]
    test_rows = order[last]
    single = np.bincount(users)[users[test_rows]] == 1
    # a tie: the user's previous rating in date order (theirs unless single) has the same date
    tie = date[order[np.maximum(np.flatnonzero(last) - 1, 0)]] == date[test_rows]
    is_test = np.zeros(len(indexed), dtype=bool)
    is_test[test_rows[~single]] = True
    stats = {"test_customers_single_rating": int(single.sum()), "test_date_ties": int((tie & ~single).sum())}
    return *_split(indexed, is_test), stats


def split_random(
    indexed: pd.DataFrame, test_fraction: float = 0.2, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """A seeded random split of the rows (``test_fraction`` of them to test)."""
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(indexed), dtype=bool)
    is_test[rng.choice(len(indexed), size=int(round(len(indexed) * test_fraction)), replace=False)] = True
    return *_split(indexed, is_test), {}


def _split(indexed: pd.DataFrame, is_test: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, test) rows, each in file order."""
    return tuple(indexed.iloc[np.flatnonzero(m)].reset_index(drop=True) for m in (~is_test, is_test))


def split_explicit(
    indexed: pd.DataFrame, test_frame: pd.DataFrame, mappings: Mappings
) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, int]]:
    """Use a given test set (e.g. a published split). Test rows whose customer or video is not in
    the prepared training data are dropped (counted); (customer, video) pairs present in both are
    removed from training so the test never leaks into it."""
    test = index_ratings(reduce_columns(test_frame), mappings)
    known = (test[USER] >= 0) & (test[ITEM] >= 0)
    dropped = int((~known).sum())
    test = test.loc[known].reset_index(drop=True)
    if len(test) == 0:
        raise DataError(
            f"none of the {dropped:,} test ratings has a customer and a video that are in the prepared "
            "training data; check that --test-data matches --data (same ids) and the long-tail thresholds"
        )
    n_items = mappings.n_items
    train_keys = indexed[USER].to_numpy(np.int64) * n_items + indexed[ITEM].to_numpy(np.int64)
    test_keys = test[USER].to_numpy(np.int64) * n_items + test[ITEM].to_numpy(np.int64)
    overlap = np.isin(train_keys, test_keys)
    train = indexed[~overlap].reset_index(drop=True)
    return train, test, {"explicit_test_rows_dropped": dropped, "explicit_test_overlap_removed": int(overlap.sum())}


def one_hot(users: Any, items: Any, n_users: int, n_items: int) -> sp.csr_matrix:
    """The one-hot design matrix: row r has a 1 in column ``users[r]`` and in column
    ``n_users + items[r]``; float32 CSR with ``n_users + n_items`` columns. Vectorised."""
    users = np.asarray(users, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    if users.shape != items.shape or users.ndim != 1:
        raise DataError(f"users and items must be 1-D of equal length, got {users.shape} and {items.shape}")
    if users.size:
        if users.min() < 0 or users.max() >= n_users:
            raise DataError(f"user indices must be in [0, {n_users}), got [{users.min()}, {users.max()}]")
        if items.min() < 0 or items.max() >= n_items:
            raise DataError(f"item indices must be in [0, {n_items}), got [{items.min()}, {items.max()}]")
    n = users.size
    dim = n_users + n_items
    index_dtype = np.int32 if 2 * n < 2**31 and dim < 2**31 else np.int64
    indices = np.empty(2 * n, dtype=index_dtype)
    indices[0::2] = users
    indices[1::2] = items + n_users
    indptr = np.arange(0, 2 * n + 1, 2, dtype=index_dtype)
    data = np.ones(2 * n, dtype=np.float32)
    return sp.csr_matrix((data, indices, indptr), shape=(n, dim))


def seen_matrix(users: Any, items: Any, n_users: int, n_items: int) -> sp.csr_matrix:
    """(n_users, n_items) boolean CSR with True where a user rated an item (sorted indices)."""
    users = np.asarray(users, dtype=np.int64)
    m = sp.csr_matrix((np.ones(len(users), dtype=bool), (users, np.asarray(items, dtype=np.int64))), shape=(n_users, n_items))
    m.sum_duplicates()
    m.sort_indices()
    return m


def labels(ratings: Any, kind: str = "regression", threshold: float = 5.0) -> np.ndarray:
    """float32 labels: the rating (``"regression"``) or ``rating >= threshold`` as 0/1
    (``"classification"``, the lab's "is it 5 stars")."""
    ratings = np.asarray(ratings, dtype=np.float32)
    if kind == "regression":
        return ratings.copy()
    if kind == "classification":
        return (ratings >= threshold).astype(np.float32)
    raise ConfigError(f"label kind must be 'regression' or 'classification', got {kind!r}")


@dataclass
class PreparedData:
    """The output of :func:`prepare`.

    ``ratings`` is the cleaned, filtered, indexed frame; ``train`` / ``test`` are its split
    (columns as ``ratings``). Use :meth:`design_matrix` and :meth:`labels` to encode a part.
    ``cleaned`` is the de-duplicated frame before the long-tail filter (customers the filter
    drops are recommended by fold-in, :mod:`recsys.fold_in`).
    """

    ratings: pd.DataFrame
    train: pd.DataFrame
    test: pd.DataFrame
    mappings: Mappings
    report: PrepareReport
    config: PrepareConfig
    cleaned: pd.DataFrame | None = None

    def others(self) -> pd.DataFrame:
        """The cleaned ratings of customers outside the model (all their videos)."""
        if self.cleaned is None:
            return self.ratings.iloc[:0]
        return self.cleaned[~self.cleaned[CUSTOMER].isin(self.mappings.customer_ids).to_numpy()]

    @property
    def n_users(self) -> int:
        return self.mappings.n_users

    @property
    def n_items(self) -> int:
        return self.mappings.n_items

    @property
    def feature_dim(self) -> int:
        return self.n_users + self.n_items

    def _part(self, part: str | pd.DataFrame) -> pd.DataFrame:
        if isinstance(part, pd.DataFrame):
            return part
        if part not in ("train", "test", "ratings"):
            raise ConfigError(f"part must be 'train', 'test' or 'ratings', got {part!r}")
        return getattr(self, part)

    def design_matrix(self, part: str | pd.DataFrame = "train") -> sp.csr_matrix:
        frame = self._part(part)
        return one_hot(frame[USER].to_numpy(), frame[ITEM].to_numpy(), self.n_users, self.n_items)

    def labels(self, part: str | pd.DataFrame = "train", kind: str = "regression") -> np.ndarray:
        return labels(self._part(part)[RATING].to_numpy(), kind, self.config.positive_threshold)

    def seen_items(self) -> sp.csr_matrix:
        """(n_users, n_items) boolean CSR of the training interactions."""
        return seen_matrix(self.train[USER].to_numpy(), self.train[ITEM].to_numpy(), self.n_users, self.n_items)

    def save_split(self, directory: str | os.PathLike) -> None:
        """Write train/test (user, item, rating, date) as Parquet and the mappings, atomically."""
        directory = Path(directory)
        for name in ("train", "test"):
            with atomic_path(directory / f"{name}.parquet") as tmp:
                getattr(self, name)[[USER, ITEM, RATING, DATE]].to_parquet(tmp, index=False)
        self.mappings.save(directory)
        with atomic_path(directory / "prepare.json") as tmp:
            tmp.write_text(json.dumps({"config": dataclasses.asdict(self.config)}, indent=2), encoding="utf-8")


def prepare(
    frame: pd.DataFrame, config: PrepareConfig | None = None, *, test_frame: pd.DataFrame | None = None
) -> PreparedData:
    """Run every preparation stage on a ratings frame (see the module docstring)."""
    config = (config or PrepareConfig()).validate()
    reduced = reduce_columns(frame)
    if len(reduced) == 0:
        raise DataError("no ratings to prepare: the input is empty")
    deduped, dup_stats = drop_duplicates(reduced)
    filtered, passes = filter_long_tail(
        deduped, config.min_customer_ratings, config.min_product_ratings, repeat_until_stable=config.repeat_until_stable
    )
    mappings = build_mappings(filtered)
    indexed = index_ratings(filtered, mappings)
    if test_frame is not None:
        split, (train, test, stats) = "explicit", split_explicit(indexed, test_frame, mappings)
    elif config.split == "random":
        split, (train, test, stats) = "random", split_random(indexed, config.test_fraction, config.seed)
    else:
        split, (train, test, stats) = "leave_last_out", split_leave_last_out(indexed)
    report = PrepareReport(
        rows_in=len(reduced), **dup_stats, rows_after_dedupe=len(deduped),
        customers_before_filter=int(deduped[CUSTOMER].nunique()), products_before_filter=int(deduped[PRODUCT].nunique()),
        customers=mappings.n_users, products=mappings.n_items, rows_after_filter=len(filtered), filter_passes=passes,
        min_customer_ratings=config.min_customer_ratings, min_product_ratings=config.min_product_ratings,
        rating_distribution_before=_rating_distribution(reduced[RATING]),
        rating_distribution_after=_rating_distribution(filtered[RATING]),
        split=split, train_rows=len(train), test_rows=len(test), **stats,
        test_items_unseen_in_train=int(np.isin(test[ITEM].to_numpy(), train[ITEM].to_numpy(), invert=True).sum()),
    )  # fmt: skip
    if report.explicit_test_rows_dropped:
        log.warning(
            "dropped %s of %s test ratings: their customer or video is not in the prepared training data "
            "(unknown id, or removed by the long-tail filter)",
            f"{report.explicit_test_rows_dropped:,}", f"{report.explicit_test_rows_dropped + len(test):,}",
        )  # fmt: skip
    if report.test_rows == 0:
        raise DataError(
            "the split left no test ratings (every customer has a single rating); "
            "lower the thresholds less aggressively or use split = 'random'"
        )
    for line in report.summary_lines():
        log.info(line)
    return PreparedData(indexed, train, test, mappings, report, config, cleaned=deduped)
