"""From a fitted FM to k-NN vectors (the lab's step "take the FM's factors").

For the users-then-items one-hot layout, the FM score of (user u, item i) is

    y(u, i) = w0 + w_u + w_i + <V_u, V_i>
            = <[V_u, 1], [V_i, w_i]>  +  (w0 + w_u)

so with item vectors ``[V_i, w_i]`` and user vectors ``[V_u, 1]`` the inner product ranks a
user's items exactly as the FM does: the remaining term ``w0 + w_u`` is the same for all of
that user's items. :func:`user_offsets` returns it, so ``U @ I.T + offsets[:, None]`` is the
FM's score matrix.

When the customer's side of a row has more features than the user one-hot (the recent-history
block of :mod:`recsys.features`), the user vector is ``[sum_f x_f V_f, 1]`` over those
features and the constant is the FM output of the user part alone -- the same identity.
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
    if n_users is not None and n_items is not None:
        layout = FeatureLayout(int(n_users), int(n_items))
    else:
        layout = FeatureLayout.from_metadata(fm.metadata)
    if layout.feature_dim > fm.feature_dim:
        raise DataError(
            f"the layout needs {layout.feature_dim} features but the model has feature_dim {fm.feature_dim}"
        )
    return layout


def _check_user_features(fm: FittedFM, layout: FeatureLayout, user_features: sp.spmatrix | None) -> sp.csr_matrix | None:
    if user_features is None:
        if layout.history_length:
            raise DataError(
                "this model uses recent-history features: pass user_features "
                "(recsys.features.user_features(layout, train))"
            )
        return None
    Xu = sp.csr_matrix(user_features, dtype=np.float32)
    if Xu.shape != (layout.n_users, fm.feature_dim):
        raise DataError(f"user_features must have shape ({layout.n_users}, {fm.feature_dim}), got {Xu.shape}")
    return Xu


def fm_vectors(
    fm: FittedFM,
    n_users: int | None = None,
    n_items: int | None = None,
    *,
    user_features: sp.spmatrix | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(user_vectors (n_users, k+1), item_vectors (n_items, k+1))``, float32.

    ``n_users`` / ``n_items`` default to the layout recorded in the model's metadata;
    ``user_features`` (n_users, feature_dim) is the customer side of each row when it is more
    than the user one-hot.
    """
    layout = model_layout(fm, n_users, n_items)
    Xu = _check_user_features(fm, layout, user_features)
    k = fm.num_factors
    users = np.empty((layout.n_users, k + 1), dtype=np.float32)
    users[:, :k] = fm.V[: layout.n_users] if Xu is None else np.asarray(Xu @ fm.V)
    users[:, k] = 1.0
    lo, hi = layout.item_offset, layout.item_offset + layout.n_items
    items = np.empty((layout.n_items, k + 1), dtype=np.float32)
    items[:, :k] = fm.V[lo:hi]
    items[:, k] = fm.w[lo:hi]
    return users, items


def user_offsets(
    fm: FittedFM, n_users: int | None = None, n_items: int | None = None, *, user_features: sp.spmatrix | None = None
) -> np.ndarray:
    """The per-user constant (float64) that turns an inner product into the FM score:
    ``w0 + w_u`` for the one-hot layout, the FM output of the user part in general."""
    layout = model_layout(fm, n_users, n_items)
    Xu = _check_user_features(fm, layout, user_features)
    if Xu is None:
        return fm.w0 + fm.w[: layout.n_users].astype(np.float64)
    return fm.decision_function(Xu)
