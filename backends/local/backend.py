"""The local backend: PyTorch FM training and FAISS k-NN behind :class:`backends.base.Backend`."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from backends.base import Backend, KNNIndex, RankingData, TrainOptions
from recsys.model import FittedFM
from recsys.params import FMParams, KNNParams

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    """Trains on this machine: :func:`backends.local.fm.train_fm` and FAISS indexes."""

    name = "torch"
    solvers = ("sgd", "mcmc")
    ranking_losses = ("softmax", "bpr", "classifier")

    def fit_fm(
        self,
        X: sp.csr_matrix,
        y: np.ndarray,
        params: FMParams,
        *,
        eval_set: tuple[sp.csr_matrix, np.ndarray] | None = None,
        options: TrainOptions | None = None,
    ) -> FittedFM:
        from .fm import train_fm
        from .mcmc import train_fm_mcmc

        return (train_fm_mcmc if params.solver == "mcmc" else train_fm)(X, y, params, eval_set=eval_set, options=options)

    def fit_fm_ranking(
        self,
        data: RankingData,
        params: FMParams,
        *,
        loss: str = "softmax",
        negatives: int = 512,
        eval_set: RankingData | None = None,
        options: TrainOptions | None = None,
    ) -> FittedFM:
        from .ranking import train_fm_ranking

        return train_fm_ranking(data, params, loss=loss, negatives=negatives, eval_set=eval_set, options=options)

    def build_knn(self, vectors: np.ndarray, params: KNNParams) -> KNNIndex:
        from .knn import FaissIndex

        return FaissIndex.build(vectors, params)

    def __repr__(self) -> str:
        return "TorchBackend()"
