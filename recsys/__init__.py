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
    RecsysError,
)
from .model import FittedFM
from .params import FMParams, KNNParams

__version__ = "0.1.0"

logging.getLogger("recsys").addHandler(logging.NullHandler())

__all__ = [
    "BackendError",
    "ConfigError",
    "DataError",
    "FMParams",
    "FittedFM",
    "KNNParams",
    "MissingDependencyError",
    "ModelFitError",
    "ModelFormatError",
    "NotFittedError",
    "RecsysError",
    "__version__",
]
