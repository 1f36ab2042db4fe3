"""recsys: what to watch next, from rating histories.

Factorization machines + inner-product k-NN over Amazon-reviews-style rating data, locally
(PyTorch + FAISS) or on Amazon SageMaker, with one set of loaders and one evaluation.
"""

from __future__ import annotations

import logging

from .errors import (
    BackendError,
    ConfigError,
    DataError,
    MissingDependencyError,
    ModelFitError,
    ModelFormatError,
    NotFittedError,
    OutputError,
    RecsysError,
)
from .model import FittedFM
from .params import FMParams, KNNParams

__version__ = "0.1.0"

logging.getLogger("recsys").addHandler(logging.NullHandler())

#: Public names imported on first use (keeps ``import recsys`` light).
_LAZY = {
    "run": ("recsys.pipeline", "run"),
    "eda": ("recsys.pipeline", "eda"),
    "RunResult": ("recsys.pipeline", "RunResult"),
    "RunConfig": ("recsys.config", "RunConfig"),
    "load_config": ("recsys.config", "load_config"),
    "load_ratings": ("recsys.data.loaders", "load_ratings"),
    "load_amazon_reviews": ("recsys.data.loaders", "load_amazon_reviews"),
    "generate_reviews": ("recsys.data.synthetic", "generate_reviews"),
    "explore": ("recsys.data.explore", "explore"),
    "prepare": ("recsys.data.prepare", "prepare"),
    "FMRegressor": ("recsys.estimators", "FMRegressor"),
    "FMClassifier": ("recsys.estimators", "FMClassifier"),
    "Recommender": ("recsys.recommend", "Recommender"),
    "SavedRun": ("recsys.saved_run", "SavedRun"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")

__all__ = [*_LAZY, "BackendError", "ConfigError", "DataError", "FMParams", "FittedFM", "KNNParams",
           "MissingDependencyError", "ModelFitError", "ModelFormatError", "NotFittedError",
           "OutputError", "RecsysError", "__version__"]  # fmt: skip
