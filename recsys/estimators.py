"""scikit-learn style factorization-machine estimators, on any backend.

>>> from recsys.estimators import FMRegressor
>>> model = FMRegressor(num_factors=64, epochs=25).fit(X_train, y_train)   # doctest: +SKIP
>>> model = FMRegressor(n_users=6698, n_items=1186).fit(pairs=pairs, y=ratings)  # doctest: +SKIP

The input is either a design matrix ``X`` (scipy sparse or a dense float array, one column
per feature) or, as ``pairs=``, the (user, item) index pairs of the one-hot layout: an integer
array of shape (n, 2) or a DataFrame with ``user`` and ``item`` columns, one-hot encoded
users-then-items with the estimator's ``n_users`` / ``n_items`` (default: max index + 1 of the
training pairs). A two-column integer array passed as ``X`` is a design matrix, never pairs.

Hyperparameters are SageMaker's (see :class:`recsys.params.FMParams`); ``__init__`` only stores
them and ``fit`` validates them, so :func:`sklearn.base.clone` and grid search work.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin

from backends.base import TrainOptions

from .data.prepare import one_hot
from .data.schema import ITEM, USER
from .errors import DataError, ModelFormatError, NotFittedError
from .model import FittedFM
from .params import FMParams

__all__ = ["FMRegressor", "FMClassifier", "design_matrix", "pairs_matrix"]


def design_matrix(X: Any) -> sp.csr_matrix:
    """``X`` (sparse, dense or a DataFrame of numbers) as a float32 CSR design matrix."""
    if isinstance(X, pd.DataFrame):
        X = X.to_numpy()
    if sp.issparse(X):
        return sp.csr_matrix(X, dtype=np.float32)
    arr = np.asarray(X)
    if arr.ndim != 2:
        raise DataError(f"X must be a 2-D design matrix (n_samples, n_features), got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise DataError(f"X must be numeric, got dtype {arr.dtype}")
    return sp.csr_matrix(arr.astype(np.float32))


def _pair_arrays(pairs: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(pairs, pd.DataFrame):
        if not {USER, ITEM} <= set(pairs.columns):
            raise DataError(f"a pairs DataFrame needs {USER!r} and {ITEM!r} columns, got {list(pairs.columns)}")
        users, items = pairs[USER].to_numpy(), pairs[ITEM].to_numpy()
    else:
        arr = np.asarray(pairs)
        if arr.ndim != 2 or arr.shape[1] != 2:
            raise DataError(f"pairs must have shape (n, 2), got {arr.shape}")
        users, items = arr[:, 0], arr[:, 1]
    if not (np.issubdtype(users.dtype, np.integer) and np.issubdtype(items.dtype, np.integer)):
        raise DataError(f"pair indices must be integers, got {users.dtype} and {items.dtype}")
    if users.size and (users.min() < 0 or items.min() < 0):
        raise DataError("user and item indices must be >= 0")
    return users, items


def pairs_matrix(pairs: Any, n_users: int, n_items: int) -> sp.csr_matrix:
    """(user, item) index pairs -- an (n, 2) integer array or a DataFrame with ``user`` and
    ``item`` columns -- one-hot encoded users-then-items."""
    users, items = _pair_arrays(pairs)
    if users.size and (users.max() >= n_users or items.max() >= n_items):
        raise DataError(
            f"pairs hold user indices up to {users.max()} and item indices up to {items.max()}, but the "
            f"estimator has n_users={n_users}, n_items={n_items}; set them in the constructor"
        )
    return one_hot(users, items, n_users, n_items)


_FM_FIELDS = [f for f in dataclasses.fields(FMParams) if f.name not in ("predictor_type", "feature_dim")]


class _FMEstimator(BaseEstimator):
    _predictor_type = "regressor"

    def __init__(
        self, num_factors: int = 64, epochs: int = 1, mini_batch_size: int = 1000,
        clip_gradient: float | None = None, eps: float | None = None, rescale_grad: float | None = None,
        bias_lr: float = 0.1, linear_lr: float = 0.001, factors_lr: float = 0.0001,
        bias_wd: float = 0.01, linear_wd: float = 0.001, factors_wd: float = 0.00001,
        bias_init_method: str = "normal", bias_init_scale: float | None = None,
        bias_init_sigma: float = 0.01, bias_init_value: float | None = None,
        linear_init_method: str = "normal", linear_init_scale: float | None = None,
        linear_init_sigma: float = 0.01, linear_init_value: float | None = None,
        factors_init_method: str = "normal", factors_init_scale: float | None = None,
        factors_init_sigma: float = 0.001, factors_init_value: float | None = None,
        optimizer: str = "adam", seed: int = 0, threads: int | None = None,
        early_stopping_patience: int | None = None, solver: str = "sgd",
        mcmc_burn_in: int = 10, mcmc_samples: int = 60, mcmc_saved_samples: int = 0, mcmc_init_sigma: float = 0.3,
        n_users: int | None = None, n_items: int | None = None, backend: Any = "torch",
        show_progress: bool = False, callbacks: Sequence[Any] | None = None,
    ):  # fmt: skip
        # as sklearn requires: every argument stored unchanged under its own name (fit validates)
        vars(self).update({name: value for name, value in locals().items() if name != "self"})

    def fm_params(self) -> FMParams:
        """The hyperparameters as a validated :class:`FMParams`."""
        values = {f.name: getattr(self, f.name) for f in _FM_FIELDS}
        return FMParams(predictor_type=self._predictor_type, **values).validate()

    def _backend(self):
        from backends import get_backend
        from backends.base import Backend

        return self.backend if isinstance(self.backend, Backend) else get_backend(self.backend)

    def _check_fitted(self) -> FittedFM:
        model = getattr(self, "model_", None)
        if model is None:
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet; call fit(X, y) before using it")
        return model

    def _transform(self, X: Any, pairs: Any) -> sp.csr_matrix:
        model = self._check_fitted()
        Xc = self._encode(X, pairs, self.layout_)
        if Xc.shape[1] != model.feature_dim:
            raise DataError(f"X has {Xc.shape[1]} features but the model was fitted with {model.feature_dim}")
        return Xc

    @staticmethod
    def _encode(X: Any, pairs: Any, layout: tuple[int, int] | None) -> sp.csr_matrix:
        if (X is None) == (pairs is None):
            raise DataError("pass either a design matrix X or (user, item) index pairs as pairs=, not both or neither")
        if X is not None:
            return design_matrix(X)
        if layout is None:
            raise DataError("this model was fitted on a design matrix X, not on pairs; pass X")
        return pairs_matrix(pairs, *layout)

    def _layout(self, pairs: Any) -> tuple[int, int]:
        """(n_users, n_items): the constructor's, else max index + 1 of the training pairs."""
        if self.n_users is not None and self.n_items is not None:
            for name in ("n_users", "n_items"):
                v = getattr(self, name)
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                    raise DataError(f"{name} must be a positive integer, got {v!r}")
            return int(self.n_users), int(self.n_items)
        users, items = _pair_arrays(pairs)
        return int(users.max(initial=0)) + 1, int(items.max(initial=0)) + 1

    def fit(self, X: Any = None, y: Any = None, *, pairs: Any = None, eval_set: tuple[Any, Any] | None = None):
        """Train on ``X, y`` (or ``pairs=..., y=...``); ``eval_set=(X_eval, y_eval)`` -- the same
        kind of input as the training data -- is scored after every epoch (and used for early
        stopping when ``early_stopping_patience`` is set). Returns ``self``."""
        params = self.fm_params()
        if y is None:
            raise DataError("fit needs the labels y")
        layout = self._layout(pairs) if pairs is not None else None
        Xc = self._encode(X, pairs, layout)
        y = self._encode_labels(y)
        eval_pair = None
        if eval_set is not None:
            first, y_eval = eval_set
            X_eval = self._encode(None, first, layout) if pairs is not None else self._encode(first, None, layout)
            eval_pair = (X_eval, self._encode_labels(y_eval))
        metadata = {"n_users": layout[0], "n_items": layout[1]} if layout else {}
        options = TrainOptions(callbacks=list(self.callbacks or ()), show_progress=self.show_progress, metadata=metadata)
        model = self._backend().fit_fm(Xc, y, params, eval_set=eval_pair, options=options)
        self._set_model(model, layout)
        return self

    def _set_model(self, model: FittedFM, layout: tuple[int, int] | None) -> None:
        self.model_ = model
        self.layout_ = layout
        self.w0_ = model.w0
        self.w_ = model.w
        self.V_ = model.V
        self.n_features_in_ = model.feature_dim
        self.history_ = model.metadata.get("history", [])

    def _encode_labels(self, y: Any) -> np.ndarray:
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        if not np.isfinite(y).all():
            raise DataError("y contains NaN or infinite values")
        return y.astype(np.float32)

    def decision_function(self, X: Any = None, *, pairs: Any = None) -> np.ndarray:
        """The raw FM output (the logit for a classifier)."""
        return self._check_fitted().decision_function(self._transform(X, pairs))

    def save(self, path: str | os.PathLike) -> None:
        """Save the fitted model (no pickle): a directory with ``config.json`` + ``params.npz``."""
        model = self._check_fitted()
        meta = dict(model.metadata)
        meta["estimator"] = {"class": type(self).__name__, "layout": list(self.layout_) if self.layout_ else None}
        dataclasses.replace(model, metadata=meta).save(path)

    @classmethod
    def load(cls, path: str | os.PathLike):
        """Load an estimator saved with :meth:`save` (or any saved :class:`FittedFM`)."""
        model = FittedFM.load(path)
        if model.predictor_type != cls._predictor_type:
            raise ModelFormatError(
                f"{path} holds a {model.predictor_type} model; load it with "
                f"{'FMClassifier' if model.is_classifier else 'FMRegressor'}"
            )
        names = {f.name for f in _FM_FIELDS}
        layout = (model.metadata.get("estimator") or {}).get("layout")
        if layout is None and "n_users" in model.metadata and "n_items" in model.metadata:
            layout = [model.metadata["n_users"], model.metadata["n_items"]]
        shape = {"n_users": int(layout[0]), "n_items": int(layout[1])} if layout else {}
        est = cls(**{k: v for k, v in model.config.items() if k in names}, **shape)
        est._set_model(model, tuple(layout) if layout else None)
        return est


class FMRegressor(RegressorMixin, _FMEstimator):
    """Factorization-machine regressor (squared loss). ``score`` is R^2."""

    _predictor_type = "regressor"

    def predict(self, X: Any = None, *, pairs: Any = None) -> np.ndarray:
        """The prediction (averaged over the posterior samples of an MCMC model)."""
        return self._check_fitted().predict(self._transform(X, pairs))


class FMClassifier(ClassifierMixin, _FMEstimator):
    """Factorization-machine binary classifier (logistic loss on logits).

    Labels must be 0/1 (or booleans). ``predict`` gives 1 where P(y=1) >= 0.5; ``score`` is
    accuracy.
    """

    _predictor_type = "binary_classifier"

    def _encode_labels(self, y: Any) -> np.ndarray:
        y = np.asarray(y).reshape(-1).astype(np.float64)
        if not np.isin(y, (0.0, 1.0)).all():
            raise DataError(f"FMClassifier labels must be 0 or 1; found {np.unique(y)[:5].tolist()}")
        return y.astype(np.float32)

    def _set_model(self, model: FittedFM, layout: tuple[int, int] | None) -> None:
        super()._set_model(model, layout)
        self.classes_ = np.array([0, 1])

    def predict_proba(self, X: Any = None, *, pairs: Any = None) -> np.ndarray:
        """Shape (n_samples, 2): P(y=0), P(y=1)."""
        return self._check_fitted().predict_proba(self._transform(X, pairs))

    def predict(self, X: Any = None, *, pairs: Any = None) -> np.ndarray:
        return (self.predict_proba(X, pairs=pairs)[:, 1] >= 0.5).astype(np.int64)
