"""Feature layouts of the FM design matrix.

The lab's design is one-hot: ``n_users`` user columns, then ``n_items`` item columns. The
ranking objective can add the customer's *recent history* -- a second block of ``n_items``
columns holding the videos the customer rated just before (the last ``history_length`` of
them, weights summing to 1) -- so the model can learn "people who just watched X watch Y next"
(a factorized personalised Markov chain, Rendle et al. 2010, written as an FM)::

    [ user one-hot | candidate item one-hot | recent items (weights) ]
      0 .. n_users   n_users .. +n_items      n_users+n_items .. +n_items

Everything on the customer's side of a row (user one-hot + history) is the *user part*; the
candidate video is a single one-hot column, so the FM score splits into
``y(user part) + w_i + <sum_f x_f V_f, V_i>``, which makes k-NN exact (:mod:`recsys.vectors`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .data.prepare import date_order_key
from .data.schema import ITEM, USER
from .errors import ConfigError, DataError

__all__ = ["FeatureLayout", "RankingData", "user_features", "pair_user_features", "design_rows"]

HISTORY_WEIGHTINGS = ("uniform", "decay")


@dataclass(frozen=True)
class FeatureLayout:
    """Where each block of features lives in the design matrix."""

    n_users: int
    n_items: int
    history_length: int = 0
    history_weighting: str = "uniform"

    def __post_init__(self) -> None:
        for name in ("n_users", "n_items", "history_length"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 0:
                raise ConfigError(f"{name} must be a non-negative integer, got {value!r}")
        if self.history_weighting not in HISTORY_WEIGHTINGS:
            raise ConfigError(f"history_weighting must be one of {', '.join(HISTORY_WEIGHTINGS)}, got {self.history_weighting!r}")

    @property
    def item_offset(self) -> int:
        return self.n_users

    @property
    def history_offset(self) -> int:
        return self.n_users + self.n_items

    @property
    def feature_dim(self) -> int:
        return self.n_users + self.n_items * (2 if self.history_length else 1)

    to_dict = asdict

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> FeatureLayout:
        """The layout a model records in its metadata (``layout``, or ``n_users``/``n_items``)."""
        if metadata.get("layout"):
            return cls(**metadata["layout"])
        if "n_users" in metadata and "n_items" in metadata:
            return cls(int(metadata["n_users"]), int(metadata["n_items"]))
        raise DataError("the model does not record its feature layout (metadata 'layout' or n_users/n_items)")

    def _weights(self, lags: np.ndarray) -> np.ndarray:
        if self.history_weighting == "decay":  # halves every history_length / 2 steps back
            return 0.5 ** ((lags - 1) / max(self.history_length / 2.0, 1.0))
        return np.ones(len(lags))


@dataclass
class RankingData:
    """Observed (user, item) pairs for training or validating a ranking FM.

    ``user_part`` is the customer side of each row, (len(users), layout.feature_dim); it
    defaults to the user one-hot (:func:`pair_user_features` adds recent history).
    """

    layout: FeatureLayout
    users: np.ndarray
    items: np.ndarray
    user_part: sp.csr_matrix = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        layout = self.layout
        self.users = np.asarray(self.users, dtype=np.int64)
        self.items = np.asarray(self.items, dtype=np.int64)
        if self.users.ndim != 1 or self.users.shape != self.items.shape:
            raise DataError(f"users and items must be 1-D arrays of equal length, got shapes {self.users.shape} and {self.items.shape}")
        if self.users.size and (min(self.users.min(), self.items.min()) < 0 or self.users.max() >= layout.n_users
                                or self.items.max() >= layout.n_items):  # fmt: skip
            raise DataError(f"user indices must be in [0, {layout.n_users}) and item indices in [0, {layout.n_items})")
        if self.user_part is None:
            if layout.history_length:
                raise DataError("a layout with history needs user_part (recsys.features.pair_user_features)")
            self.user_part = _user_part(layout, self.users, None)
        self.user_part = sp.csr_matrix(self.user_part, dtype=np.float32)
        if self.user_part.shape != (len(self.users), layout.feature_dim):
            raise DataError(f"user_part must have shape ({len(self.users)}, {layout.feature_dim}), got {self.user_part.shape}")

    def __len__(self) -> int:
        return int(self.users.size)

    def subset(self, rows: np.ndarray) -> RankingData:
        return RankingData(self.layout, self.users[rows], self.items[rows], self.user_part[rows])


def _timeline(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Rows of ``frame`` ordered by (user, date, file order); returns order, users, items and
    each row's 0-based position in its user's timeline (in that order)."""
    users = frame[USER].to_numpy(np.int64)
    order = np.lexsort((np.arange(len(frame)), date_order_key(frame), users))
    u_sorted = users[order]
    pos = np.arange(len(order)) - np.searchsorted(u_sorted, u_sorted)  # minus the user's first row
    return order, u_sorted, frame[ITEM].to_numpy(np.int64)[order], pos


def _plus_onehot(layout: FeatureLayout, m: sp.csr_matrix, cols: np.ndarray) -> sp.csr_matrix:
    """``m`` (len(cols), feature_dim) plus a one in column ``cols[r]`` of each row r."""
    n = len(cols)
    onehot = sp.csr_matrix((np.ones(n, dtype=np.float32), (np.arange(n), cols)), shape=(n, layout.feature_dim))
    out = (sp.csr_matrix(m, dtype=np.float32) + onehot).tocsr()
    out.sort_indices()
    return out


def _user_part(layout: FeatureLayout, users: np.ndarray, history: sp.csr_matrix | None) -> sp.csr_matrix:
    """One-hot ``users`` plus, in the history block, ``history`` (n, n_items) with each row
    scaled to sum to 1."""
    n = len(users)
    if history is None:
        return sp.csr_matrix((np.ones(n, dtype=np.float32), (np.arange(n), users)), shape=(n, layout.feature_dim))
    history.sum_duplicates()
    sums = np.asarray(history.sum(axis=1)).ravel()
    scale = np.divide(1.0, sums, out=np.zeros_like(sums, dtype=np.float64), where=sums > 0)
    hist = sp.csr_matrix(sp.diags(scale) @ history, dtype=np.float32)
    shifted = (hist.data, hist.indices + layout.history_offset, hist.indptr)
    return _plus_onehot(layout, sp.csr_matrix(shifted, shape=(n, layout.feature_dim)), users)


def user_features(layout: FeatureLayout, train: pd.DataFrame) -> sp.csr_matrix:
    """The user part of every customer, (n_users, feature_dim): one-hot user plus, with history,
    their last ``history_length`` training ratings (most recent by date, then file order)."""
    users = np.arange(layout.n_users)
    if not layout.history_length:
        return _user_part(layout, users, None)
    order, u_sorted, i_sorted, pos = _timeline(train)
    lag = np.bincount(u_sorted, minlength=layout.n_users)[u_sorted] - pos  # 1 = most recent
    keep = lag <= layout.history_length
    hist = sp.csr_matrix(
        (layout._weights(lag[keep]), (u_sorted[keep], i_sorted[keep])), shape=(layout.n_users, layout.n_items)
    )
    return _user_part(layout, users, hist)


def pair_user_features(layout: FeatureLayout, train: pd.DataFrame) -> sp.csr_matrix:
    """The user part of every training row, (len(train), feature_dim), in ``train``'s row order:
    one-hot user plus the ``history_length`` ratings that customer made *before* this one
    (never the rating itself, so training sees what serving will see)."""
    users = train[USER].to_numpy(np.int64)
    if not layout.history_length:
        return _user_part(layout, users, None)
    order, _, i_sorted, pos = _timeline(train)
    rows, cols, lags = [], [], []
    for lag in range(1, layout.history_length + 1):
        ok = np.flatnonzero(pos >= lag)
        rows.append(order[ok])
        cols.append(i_sorted[ok - lag])
        lags.append(np.full(len(ok), lag, dtype=np.float64))
    r, c, g = (np.concatenate(x) for x in (rows, cols, lags))
    hist = sp.csr_matrix((layout._weights(g), (r, c)), shape=(len(train), layout.n_items))
    return _user_part(layout, users, hist)


def design_rows(layout: FeatureLayout, user_part: sp.csr_matrix, items: Any) -> sp.csr_matrix:
    """Full FM rows: each user-part row plus a one-hot candidate item column."""
    items = np.asarray(items, dtype=np.int64)
    if user_part.shape[0] != len(items):
        raise DataError(f"user_part has {user_part.shape[0]} rows but {len(items)} items were given")
    return _plus_onehot(layout, user_part, items + layout.item_offset)
