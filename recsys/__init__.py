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

#: Public names imported on first use from their module (keeps ``import recsys`` light).
_LAZY = {
    "run": "recsys.pipeline",
    "eda": "recsys.pipeline",
    "RunResult": "recsys.pipeline",
    "RunConfig": "recsys.config",
    "load_config": "recsys.config",
    "load_ratings": "recsys.data.loaders",
    "load_amazon_reviews": "recsys.data.loaders",
    "generate_reviews": "recsys.data.synthetic",
    "explore": "recsys.data.explore",
    "prepare": "recsys.data.prepare",
    "FMRegressor": "recsys.estimators",
    "FMClassifier": "recsys.estimators",
    "Recommender": "recsys.recommend",
    "SavedRun": "recsys.saved_run",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'recsys' has no attribute {name!r}")

__all__ = [*_LAZY, "BackendError", "ConfigError", "DataError", "FMParams", "FittedFM", "KNNParams",
           "MissingDependencyError", "ModelFitError", "ModelFormatError", "NotFittedError",
           "OutputError", "RecsysError", "__version__"]  # fmt: skip
