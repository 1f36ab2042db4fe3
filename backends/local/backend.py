"""The local backend: PyTorch FM training and FAISS k-NN behind :class:`backends.base.Backend`."""

from __future__ import annotations

from typing import Any

import numpy as np

from backends.base import Backend, KNNIndex
from recsys.model import FittedFM
from recsys.params import KNNParams

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    """Trains on this machine: :func:`backends.local.fm.train_fm` and FAISS indexes."""

    name = "torch"
    solvers = ("sgd", "mcmc")
    ranking_losses = ("softmax", "bpr", "classifier")

    def fit_fm(self, X, y, params, *, eval_set=None, options=None) -> FittedFM:  # the contract: Backend.fit_fm
        from .fm import train_fm
        from .mcmc import train_fm_mcmc

        return (train_fm_mcmc if params.solver == "mcmc" else train_fm)(X, y, params, eval_set=eval_set, options=options)

    def fit_fm_ranking(self, data, params, **kwargs: Any) -> FittedFM:  # the contract: Backend.fit_fm_ranking
        from .ranking import train_fm_ranking

        return train_fm_ranking(data, params, **kwargs)

    def build_knn(self, vectors: np.ndarray, params: KNNParams) -> KNNIndex:
        from .knn import FaissIndex

        return FaissIndex.build(vectors, params)

    def __repr__(self) -> str:
        return "TorchBackend()"
