"""From a fitted FM to k-NN vectors (the lab's step "take the FM's factors").

As the FM score splits (:mod:`recsys.features`), user vector ``[sum_f x_f V_f, 1]`` (``[V_u, 1]``
for the one-hot layout) times item vector ``[V_i, w_i]`` ranks a customer's items exactly as
the FM does; :func:`user_offsets` is the constant left, the FM output of the user part alone
(``w0 + w_u`` for the one-hot layout), so ``U @ I.T + offsets[:, None]`` is the FM's scores.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .errors import DataError
from .features import FeatureLayout
from .model import FittedFM

__all__ = ["fm_vectors", "user_offsets", "model_layout"]


def model_layout(fm: FittedFM, n_users: int | None = None, n_items: int | None = None) -> FeatureLayout:
    """The model's feature layout: from ``n_users``/``n_items`` when given, else its metadata."""
    known = n_users is not None and n_items is not None
    layout = FeatureLayout(int(n_users), int(n_items)) if known else FeatureLayout.from_metadata(fm.metadata)  # type: ignore[arg-type]
    if layout.feature_dim > fm.feature_dim:
        raise DataError(f"the layout needs {layout.feature_dim} features but the model has feature_dim {fm.feature_dim}")
    return layout


def _user_features(fm: FittedFM, n_users: int | None, n_items: int | None, user_features: sp.spmatrix | None) -> tuple[FeatureLayout, sp.csr_matrix | None]:
    """The model's layout and its customers' side of each row (None: the user one-hot)."""
    layout = model_layout(fm, n_users, n_items)
    if user_features is None:
        if layout.history_length:
            raise DataError("this model uses recent-history features: pass user_features (recsys.features.user_features(layout, train))")
        return layout, None
    Xu = sp.csr_matrix(user_features, dtype=np.float32)
    if Xu.shape != (layout.n_users, fm.feature_dim):
        raise DataError(f"user_features must have shape ({layout.n_users}, {fm.feature_dim}), got {Xu.shape}")
    return layout, Xu


def fm_vectors(
    fm: FittedFM, n_users: int | None = None, n_items: int | None = None, *, user_features: sp.spmatrix | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(user_vectors (n_users, k+1), item_vectors (n_items, k+1))``, float32, for the layout
    ``n_users`` / ``n_items`` (default: the model's metadata); ``user_features`` (n_users,
    feature_dim) is the customer side of each row when it is more than the user one-hot."""
    layout, Xu = _user_features(fm, n_users, n_items, user_features)
    lo, hi = layout.item_offset, layout.item_offset + layout.n_items
    users = np.hstack([fm.V[: layout.n_users] if Xu is None else np.asarray(Xu @ fm.V), np.ones((layout.n_users, 1), np.float32)])
    return users.astype(np.float32, copy=False), np.hstack([fm.V[lo:hi], fm.w[lo:hi, None]])  # (V and w are float32)


def user_offsets(
    fm: FittedFM, n_users: int | None = None, n_items: int | None = None, *, user_features: sp.spmatrix | None = None
) -> np.ndarray:
    """The per-user constant (float64) that turns an inner product into the FM score:
    ``w0 + w_u`` for the one-hot layout, the FM output of the user part in general."""
    layout, Xu = _user_features(fm, n_users, n_items, user_features)
    return fm.w0 + fm.w[: layout.n_users].astype(np.float64) if Xu is None else fm.decision_function(Xu)
