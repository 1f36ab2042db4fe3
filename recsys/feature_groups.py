"""Feature groups: design-matrix blocks besides the user and item one-hots.

Four groups, built from the *training* ratings only (what is known when a prediction is made),
each with its own id so a Bayesian FM (``backends.local.mcmc``) gives it its own prior:

``time``
    a one-hot time bucket of the rating's date (``time_buckets`` buckets at the quantiles of
    the training dates; a date outside them falls in the first or last bucket, a missing one in
    the first);
``recent_mean``
    the customer's current rating level: the mean of their last ``recent_mean`` ratings *before*
    this one, minus the mean training rating (0 without earlier ratings) -- one numeric column, a
    time-varying user bias (as in timeSVD++). The Bayesian FM gives it a linear weight only
    (``LINEAR_GROUPS``: its factors stay 0);
``recent``
    the customer's last ``recent`` videos rated *before* this rating (weights ``1/N`` over the
    N found), as the ranking objective's history block (:mod:`recsys.features`); a relation
    block with a table row per design row;
``implicit``
    the customer's whole set of rated training videos ``N(u)`` with weights
    ``1 / sqrt(|N(u)|)`` (SVD++'s implicit feedback): a *relation block* with a table row per
    customer, so the sampler never materialises the ``sum_u |N(u)|^2`` entries of plain columns
    (42 M on ``ml-latest-small``); :meth:`GroupedDesign.to_csr` does, for other solvers.

A row being predicted (not a training row) sees the customer's last training ratings (for
``recent_mean`` and ``recent``). Columns, in order (the relation block last)::

    [ user | item | time | recent_mean | recent | implicit ]
      n_users, n_items, time_buckets, 1 (if recent_mean), n_items (if recent), n_items (if implicit)

k-NN vectors stay exact: every group but the item is on the customer's side of a row, so
:meth:`FeatureGroups.user_part` (one row per customer at serving time, in the *latest* time
bucket) folds into the user vector as the ranking history does
(``recsys.vectors.fm_vectors(fm, user_features=part)``, ``recsys.vectors.user_offsets``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .data.prepare import date_order_key
from .data.schema import ITEM, RATING, USER
from .errors import ConfigError, DataError
from .features import FeatureLayout, _timeline, pair_user_features, user_features

__all__ = ["RelationBlock", "GroupedDesign", "FeatureGroupsConfig", "FeatureGroups", "GROUP_NAMES", "LINEAR_GROUPS"]

GROUP_NAMES = ("user", "item", "time", "recent_mean", "recent", "implicit")
#: groups the Bayesian FM fits with a linear weight only (no factors)
LINEAR_GROUPS = ("recent_mean",)


@dataclass(frozen=True, eq=False)
class RelationBlock:
    """Columns shared by many rows: design row ``n`` holds row ``index[n]`` of ``table``."""

    index: np.ndarray
    table: sp.csr_matrix

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", np.ascontiguousarray(self.index, dtype=np.int64).reshape(-1))
        object.__setattr__(self, "table", sp.csr_matrix(self.table, dtype=np.float32))
        if self.index.size and (self.index.min() < 0 or self.index.max() >= self.table.shape[0]):
            raise DataError(f"relation index must be in [0, {self.table.shape[0]}), "
                            f"got [{self.index.min()}, {self.index.max()}]")  # fmt: skip


@dataclass(frozen=True, eq=False)
class GroupedDesign:
    """An FM design matrix with column groups: per-row columns ``X``, then the columns of each
    relation block; ``groups`` gives each column's group id (None: one group), ``group_names``
    names the ids."""

    X: sp.csr_matrix
    relations: tuple[RelationBlock, ...] = ()
    groups: np.ndarray | None = None
    group_names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        object.__setattr__(self, "X", sp.csr_matrix(self.X, dtype=np.float32))
        object.__setattr__(self, "relations", tuple(self.relations))
        for block in self.relations:
            if block.index.shape[0] != self.X.shape[0]:
                raise DataError(f"a relation block indexes {block.index.shape[0]} rows, X has {self.X.shape[0]}")
        if self.groups is not None:
            groups = np.asarray(self.groups, dtype=np.int64)
            if groups.shape != (self.feature_dim,):
                raise DataError(f"groups must have one id per column ({self.feature_dim}), got shape {groups.shape}")
            object.__setattr__(self, "groups", groups)

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    @property
    def feature_dim(self) -> int:
        return int(self.X.shape[1]) + sum(int(b.table.shape[1]) for b in self.relations)

    def to_csr(self) -> sp.csr_matrix:
        """The plain (n_rows, feature_dim) matrix, relation blocks expanded (can be large)."""
        parts = [self.X] + [b.table[b.index] for b in self.relations]
        out = sp.hstack(parts, format="csr", dtype=np.float32)
        out.sort_indices()
        return out

    def take(self, rows: Any) -> GroupedDesign:
        """The design restricted to ``rows`` (indices or a boolean mask)."""
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows, dtype=np.int64)
        blocks = tuple(RelationBlock(b.index[rows], b.table) for b in self.relations)
        return GroupedDesign(self.X[rows], blocks, self.groups, self.group_names)


@dataclass(frozen=True)
class FeatureGroupsConfig:
    """Which groups to add (``[features]`` of a run config, once wired)."""

    implicit: bool = False
    recent: int = 0
    time_buckets: int = 0
    recent_mean: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.implicit, bool):
            raise ConfigError(f"implicit must be true or false, got {self.implicit!r}")
        for name in ("recent", "time_buckets", "recent_mean"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if self.time_buckets == 1:
            raise ConfigError("time_buckets = 1 adds a constant column; use 0 (off) or at least 2")

    @property
    def any(self) -> bool:
        """Whether any group besides the user and item one-hots is on."""
        return bool(self.implicit or self.recent or self.time_buckets or self.recent_mean)


def _one_hot(cols: np.ndarray, width: int) -> sp.csr_matrix:
    n = len(cols)
    return sp.csr_matrix((np.ones(n, dtype=np.float32), (np.arange(n), cols)), shape=(n, width))


class FeatureGroups:
    """The groups of :class:`FeatureGroupsConfig`, fitted on the training ratings (their
    customers' histories and date range); :meth:`design` encodes rows, :meth:`user_part` gives
    the per-customer side for k-NN vectors."""

    def __init__(self, config: FeatureGroupsConfig, train: pd.DataFrame, n_users: int, n_items: int):
        if len(train) == 0:
            raise DataError("feature groups need training ratings; the training frame is empty")
        self.config, self._train, self.n_users, self.n_items = config, train, int(n_users), int(n_items)
        self._history = FeatureLayout(self.n_users, self.n_items, history_length=config.recent)
        self._last: sp.csr_matrix | None = None
        # time: bucket edges at the quantiles of the training dates (dates known at training)
        self._edges = np.zeros(0, dtype=np.int64)
        if config.time_buckets:
            dates = date_order_key(train)
            known = dates[dates != np.iinfo(np.int64).min]
            if len(known):
                qs = np.linspace(0, 1, config.time_buckets + 1)[1:-1]
                self._edges = np.asarray(np.quantile(known, qs, method="lower"), dtype=np.int64)
        # implicit: N(u) with weights 1/sqrt(|N(u)|)
        self._implicit = None
        if config.implicit:
            pairs = (train[USER].to_numpy(np.int64), train[ITEM].to_numpy(np.int64))
            seen = sp.csr_matrix((np.ones(len(train)), pairs), shape=(self.n_users, self.n_items))
            seen.data[:] = 1.0  # a re-rated video counts once
            norm = 1.0 / np.sqrt(np.maximum(seen.getnnz(axis=1), 1))
            self._implicit = sp.csr_matrix(sp.diags(norm) @ seen, dtype=np.float32)
        # recent_mean: each customer's level after their training ratings (the mean of the last
        # recent_mean, centred on the mean training rating): what a row to predict sees
        self._level = np.zeros(self.n_users)
        self._mean = float(train[RATING].mean()) if config.recent_mean else 0.0
        if config.recent_mean:
            _, users_sorted, means = self._window_means(train, through=1)
            last = np.flatnonzero(np.r_[users_sorted[1:] != users_sorted[:-1], True])
            self._level[users_sorted[last]] = means[last]
        c = config
        widths = [("user", self.n_users), ("item", self.n_items), ("time", c.time_buckets), ("recent_mean", int(c.recent_mean > 0)),
                  ("recent", self.n_items if c.recent else 0), ("implicit", self.n_items if c.implicit else 0)]  # fmt: skip
        widths = [(name, width) for name, width in widths if width]
        self.group_names = tuple(name for name, _ in widths)
        self.groups = np.repeat(np.arange(len(widths)), [w for _, w in widths]).astype(np.int64)

    @property
    def feature_dim(self) -> int:
        return len(self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {"n_users": self.n_users, "n_items": self.n_items, "groups": list(self.group_names), **asdict(self.config)}

    # -- encoding --------------------------------------------------------------------------
    def _window_means(self, frame: pd.DataFrame, through: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``frame``'s rows in each customer's timeline order (order, their users) and, per row,
        the mean centred rating of the customer's (up to) ``recent_mean`` ratings before it
        (``through = 0``; 0 for their first) or up to and including it (``through = 1``)."""
        order, users_sorted, _, pos = _timeline(frame)
        csum = np.r_[0.0, np.cumsum(frame[RATING].to_numpy(np.float64)[order] - self._mean)]
        end, count = np.arange(len(order)) + through, np.minimum(pos + through, self.config.recent_mean)
        return order, users_sorted, np.divide(csum[end] - csum[end - count], count, out=np.zeros(len(order)), where=count > 0)

    def _last_videos(self) -> sp.csr_matrix:
        """(n_users, n_items): every customer's last ``recent`` training videos (weights)."""
        if self._last is None:
            self._last = sp.csr_matrix(user_features(self._history, self._train)[:, self._history.history_offset :])
        return self._last

    def _assemble(self, users: np.ndarray, items: sp.csr_matrix, time: np.ndarray | None, level: np.ndarray | None,
                  recent: sp.csr_matrix | None) -> GroupedDesign:  # fmt: skip
        """The design of rows of ``users`` from the parts of the groups that are on."""
        parts = [_one_hot(users, self.n_users), items]
        if self.config.time_buckets:
            parts.append(_one_hot(time, self.config.time_buckets))
        if self.config.recent_mean:
            parts.append(sp.csr_matrix(level.reshape(-1, 1)))
        X = sp.hstack(parts, format="csr", dtype=np.float32)
        X.sort_indices()
        blocks = [] if recent is None else [RelationBlock(np.arange(recent.shape[0]), recent)]
        if self._implicit is not None:
            blocks.append(RelationBlock(users, self._implicit))
        return GroupedDesign(X, tuple(blocks), self.groups, self.group_names)

    def design(self, frame: pd.DataFrame, *, training: bool) -> GroupedDesign:
        """The grouped design of ``frame``'s rows (columns ``user``, ``item``, date). Training
        rows see the ratings before each row in this frame (``recent``, ``recent_mean``); rows to
        predict see the customer's last training ratings (never the row's own rating)."""
        users, items = frame[USER].to_numpy(np.int64), frame[ITEM].to_numpy(np.int64)
        for name, idx, n in (("user", users, self.n_users), ("item", items, self.n_items)):
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise DataError(f"{name} indices must be in [0, {n}), got [{idx.min()}, {idx.max()}]")
        c = self.config
        time = np.searchsorted(self._edges, date_order_key(frame), side="right") if c.time_buckets else None
        level = self._level[users]  # the rows to predict see the customers' last training ratings
        if c.recent_mean and training:
            order, _, means = self._window_means(frame, through=0)
            level = np.empty(len(order))
            level[order] = means
        recent = self._last_videos()[users] if c.recent and not training else None
        if c.recent and training:
            recent = sp.csr_matrix(pair_user_features(self._history, frame)[:, self._history.history_offset :])
        return self._assemble(users, _one_hot(items, self.n_items), time, level, recent)

    def user_part(self) -> sp.csr_matrix:
        """(n_users, feature_dim): each customer's side of a row at serving time (item columns
        empty), the ``user_features`` of ``recsys.vectors.fm_vectors`` / ``user_offsets``."""
        c, users = self.config, np.arange(self.n_users)
        no_items = sp.csr_matrix((self.n_users, self.n_items), dtype=np.float32)
        recent = self._last_videos() if c.recent else None
        return self._assemble(users, no_items, np.full(self.n_users, c.time_buckets - 1), self._level, recent).to_csr()
