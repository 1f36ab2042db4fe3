"""The local backend: PyTorch FM training and FAISS k-NN behind :class:`backends.base.Backend`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from backends.base import Backend, Callback, KNNIndex
from recsys.model import FittedFM
from recsys.params import FMParams, KNNParams

__all__ = ["TorchBackend"]


class TorchBackend(Backend):
    """Trains on this machine: :func:`backends.local.fm.train_fm` and FAISS indexes."""

    name = "torch"

    def fit_fm(
        self,
        X: sp.csr_matrix,
        y: np.ndarray,
        params: FMParams,
        *,
        X_eval: sp.csr_matrix | None = None,
        y_eval: np.ndarray | None = None,
        callbacks: Sequence[Callback] = (),
        show_progress: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> FittedFM:
        from .fm import train_fm
        from .mcmc import train_fm_mcmc

        return (train_fm_mcmc if params.solver == "mcmc" else train_fm)(
            X, y, params, X_eval=X_eval, y_eval=y_eval, callbacks=callbacks,
            show_progress=show_progress, metadata=metadata,
        )  # fmt: skip

    def fit_fm_ranking(
        self,
        users: np.ndarray,
        items: np.ndarray,
        layout: Any,
        params: FMParams,
        *,
        user_part: sp.csr_matrix | None = None,
        loss: str = "softmax",
        negatives: int = 512,
        eval_set: tuple[Any, Any, Any] | None = None,
        callbacks: Sequence[Callback] = (),
        show_progress: bool = False,
        metadata: dict[str, Any] | None = None,
    ) -> FittedFM:
        from .ranking import train_fm_ranking

        return train_fm_ranking(
            users, items, layout, params, user_part=user_part, loss=loss, negatives=negatives,
            eval_set=eval_set, callbacks=callbacks, show_progress=show_progress, metadata=metadata,
        )  # fmt: skip

    def build_knn(self, vectors: np.ndarray, params: KNNParams) -> KNNIndex:
        from .knn import FaissIndex

        return FaissIndex.build(vectors, params)

    def __repr__(self) -> str:
        return "TorchBackend()"
