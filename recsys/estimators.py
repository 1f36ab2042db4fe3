"""scikit-learn style factorization-machine estimators, on any backend.

>>> from recsys.estimators import FMRegressor
>>> model = FMRegressor(num_factors=64, epochs=25).fit(X_train, y_train)   # doctest: +SKIP
>>> model.predict(X_test)                                                 # doctest: +SKIP

``X`` is either a design matrix (scipy sparse or dense float array, one column per feature) or
the (user, item) pairs of the one-hot layout: an integer array of shape (n, 2) or a DataFrame
with ``user`` and ``item`` columns. Pairs are one-hot encoded users-then-items with
``n_users`` / ``n_items`` (given to ``fit`` or taken as max index + 1).

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

from .data.prepare import one_hot
from .data.schema import ITEM, USER
from .errors import DataError, ModelFormatError, NotFittedError
from .model import FittedFM
from .params import FMParams

__all__ = ["FMRegressor", "FMClassifier", "as_design_matrix"]


def as_design_matrix(X: Any, layout: tuple[int, int] | None = None) -> tuple[sp.csr_matrix, tuple[int, int] | None]:
    """Turn ``X`` (a design matrix or (user, item) pairs) into a float32 CSR matrix.

    Returns the matrix and the one-hot layout used (``None`` for a design matrix).
    """
    pairs = None
    if isinstance(X, pd.DataFrame):
        if {USER, ITEM} <= set(X.columns):
            pairs = X[USER].to_numpy(), X[ITEM].to_numpy()
        else:
            X = X.to_numpy()
    elif not sp.issparse(X):
        arr = np.asarray(X)
        if arr.ndim == 2 and arr.shape[1] == 2 and np.issubdtype(arr.dtype, np.integer):
            pairs = arr[:, 0], arr[:, 1]
        else:
            X = arr
    if pairs is None:
        if sp.issparse(X):
            return sp.csr_matrix(X, dtype=np.float32), None
        arr = np.asarray(X)
        if arr.ndim != 2:
            raise DataError(f"X must be 2-D (n_samples, n_features) or (user, item) pairs, got shape {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number):
            raise DataError(f"X must be numeric, got dtype {arr.dtype}")
        return sp.csr_matrix(arr.astype(np.float32)), None
    users, items = (np.asarray(a) for a in pairs)
    if users.size and (users.min() < 0 or items.min() < 0):
        raise DataError("user and item indices must be >= 0")
    if layout is None:
        layout = (int(users.max()) + 1 if users.size else 0, int(items.max()) + 1 if items.size else 0)
    return one_hot(users, items, *layout), layout


_FM_FIELDS = [f for f in dataclasses.fields(FMParams) if f.name not in ("predictor_type", "feature_dim")]


class _FMEstimator(BaseEstimator):
    _predictor_type = "regressor"

    def __init__(
        self,
        num_factors: int = 64,
        epochs: int = 1,
        mini_batch_size: int = 1000,
        clip_gradient: float | None = None,
        eps: float | None = None,
        rescale_grad: float | None = None,
        bias_lr: float = 0.1,
        linear_lr: float = 0.001,
        factors_lr: float = 0.0001,
        bias_wd: float = 0.01,
        linear_wd: float = 0.001,
        factors_wd: float = 0.00001,
        bias_init_method: str = "normal",
        bias_init_scale: float | None = None,
        bias_init_sigma: float = 0.01,
        bias_init_value: float | None = None,
        linear_init_method: str = "normal",
        linear_init_scale: float | None = None,
        linear_init_sigma: float = 0.01,
        linear_init_value: float | None = None,
        factors_init_method: str = "normal",
        factors_init_scale: float | None = None,
        factors_init_sigma: float = 0.001,
        factors_init_value: float | None = None,
        optimizer: str = "adam",
        seed: int = 0,
        threads: int | None = None,
        early_stopping_patience: int | None = None,
        solver: str = "sgd",
        mcmc_burn_in: int = 10,
        mcmc_samples: int = 60,
        mcmc_saved_samples: int = 0,
        mcmc_init_sigma: float = 0.3,
        backend: Any = "torch",
        show_progress: bool = False,
        callbacks: Sequence[Any] | None = None,
    ):
        self.num_factors = num_factors
        self.epochs = epochs
        self.mini_batch_size = mini_batch_size
        self.clip_gradient = clip_gradient
        self.eps = eps
        self.rescale_grad = rescale_grad
        self.bias_lr = bias_lr
        self.linear_lr = linear_lr
        self.factors_lr = factors_lr
        self.bias_wd = bias_wd
        self.linear_wd = linear_wd
        self.factors_wd = factors_wd
        self.bias_init_method = bias_init_method
        self.bias_init_scale = bias_init_scale
        self.bias_init_sigma = bias_init_sigma
        self.bias_init_value = bias_init_value
        self.linear_init_method = linear_init_method
        self.linear_init_scale = linear_init_scale
        self.linear_init_sigma = linear_init_sigma
        self.linear_init_value = linear_init_value
        self.factors_init_method = factors_init_method
        self.factors_init_scale = factors_init_scale
        self.factors_init_sigma = factors_init_sigma
        self.factors_init_value = factors_init_value
        self.optimizer = optimizer
        self.seed = seed
        self.threads = threads
        self.early_stopping_patience = early_stopping_patience
        self.solver = solver
        self.mcmc_burn_in = mcmc_burn_in
        self.mcmc_samples = mcmc_samples
        self.mcmc_saved_samples = mcmc_saved_samples
        self.mcmc_init_sigma = mcmc_init_sigma
        self.backend = backend
        self.show_progress = show_progress
        self.callbacks = callbacks

    # ---- helpers -------------------------------------------------------------------------
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
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call fit(X, y) before using it"
            )
        return model

    def _transform(self, X: Any) -> sp.csr_matrix:
        model = self._check_fitted()
        Xc, _ = as_design_matrix(X, self.layout_)
        if Xc.shape[1] != model.feature_dim:
            raise DataError(f"X has {Xc.shape[1]} features but the model was fitted with {model.feature_dim}")
        return Xc

    # ---- fit -----------------------------------------------------------------------------
    def fit(
        self,
        X: Any,
        y: Any,
        *,
        n_users: int | None = None,
        n_items: int | None = None,
        eval_set: tuple[Any, Any] | None = None,
    ):
        """Train on ``X, y``; ``eval_set=(X_eval, y_eval)`` is scored after every epoch (and used
        for early stopping when ``early_stopping_patience`` is set). Returns ``self``."""
        params = self.fm_params()
        layout = (n_users, n_items) if n_users is not None and n_items is not None else None
        Xc, layout = as_design_matrix(X, layout)
        y = self._encode_labels(y)
        X_eval = y_eval = None
        if eval_set is not None:
            X_eval, _ = as_design_matrix(eval_set[0], layout)
            y_eval = self._encode_labels(eval_set[1])
        metadata = {"n_users": layout[0], "n_items": layout[1]} if layout else {}
        model = self._backend().fit_fm(
            Xc, y, params, X_eval=X_eval, y_eval=y_eval, callbacks=list(self.callbacks or ()),
            show_progress=self.show_progress, metadata=metadata,
        )  # fmt: skip
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

    # ---- predict -------------------------------------------------------------------------
    def decision_function(self, X: Any) -> np.ndarray:
        """The raw FM output (the logit for a classifier)."""
        return self._check_fitted().decision_function(self._transform(X))

    # ---- persistence ---------------------------------------------------------------------
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
        est = cls(**{k: v for k, v in model.config.items() if k in names})
        layout = (model.metadata.get("estimator") or {}).get("layout")
        if layout is None and "n_users" in model.metadata and "n_items" in model.metadata:
            layout = [model.metadata["n_users"], model.metadata["n_items"]]
        est._set_model(model, tuple(layout) if layout else None)
        return est


class FMRegressor(RegressorMixin, _FMEstimator):
    """Factorization-machine regressor (squared loss). ``score`` is R^2."""

    _predictor_type = "regressor"

    def predict(self, X: Any) -> np.ndarray:
        """The prediction (averaged over the posterior samples of an MCMC model)."""
        return self._check_fitted().predict(self._transform(X))


class FMClassifier(ClassifierMixin, _FMEstimator):
    """Factorization-machine binary classifier (logistic loss on logits).

    Labels must be 0/1 (or booleans). ``predict`` gives 1 where P(y=1) >= 0.5; ``score`` is
    accuracy.
    """

    _predictor_type = "binary_classifier"

    def _encode_labels(self, y: Any) -> np.ndarray:
        y = np.asarray(y).reshape(-1)
        if y.dtype == bool:
            y = y.astype(np.float32)
        y = np.asarray(y, dtype=np.float64)
        if not np.isin(y, (0.0, 1.0)).all():
            raise DataError(f"FMClassifier labels must be 0 or 1; found {np.unique(y)[:5].tolist()}")
        return y.astype(np.float32)

    def _set_model(self, model: FittedFM, layout: tuple[int, int] | None) -> None:
        super()._set_model(model, layout)
        self.classes_ = np.array([0, 1])

    def predict_proba(self, X: Any) -> np.ndarray:
        """Shape (n_samples, 2): P(y=0), P(y=1)."""
        return self._check_fitted().predict_proba(self._transform(X))

    def predict(self, X: Any) -> np.ndarray:
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(np.int64)
