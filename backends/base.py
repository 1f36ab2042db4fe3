"""The contract every backend implements.

A backend trains factorization machines and builds/queries k-NN indexes. What goes in and out
is backend-neutral: a float32 CSR design matrix and labels in, a :class:`recsys.model.FittedFM`
out; float32 vectors in, a :class:`KNNIndex` out whose ``search`` returns scores and row ids.
Everything else (loading, preparation, vectors, evaluation, reports) lives once in ``recsys``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from recsys.model import FittedFM
from recsys.params import FMParams, KNNParams

__all__ = ["Backend", "KNNIndex", "EpochInfo", "Callback"]


@dataclass
class EpochInfo:
    """What a training callback receives after each epoch."""

    epoch: int
    train_loss: float
    eval_loss: float | None = None
    eval_metric: dict[str, float] | None = None
    seconds: float = 0.0


#: A callback gets the epoch summary; returning ``True`` stops training early.
Callback = Callable[[EpochInfo], "bool | None"]


class KNNIndex(abc.ABC):
    """A nearest-neighbour index over row vectors (for recsys: one row per item)."""

    metric: str
    ntotal: int
    dim: int

    @abc.abstractmethod
    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` neighbours of each query row.

        Returns ``(scores, ids)``, each (n_queries, min(k, ntotal)); rows sorted best first.
        For ``INNER_PRODUCT`` and ``COSINE`` a score is the similarity (higher is better), for
        ``L2`` it is the squared distance (lower is better). Ids are row numbers of the indexed
        vectors; -1 marks an empty slot (only possible with approximate indexes).
        """

    def search_excluding(self, queries: np.ndarray, k: int, exclude: Any) -> tuple[np.ndarray, np.ndarray] | None:
        """Optional: top-``k`` with the ids in row ``r`` of the CSR matrix ``exclude`` skipped
        for query ``r``, rows padded with id -1; None when the index cannot (the caller then
        searches deeper with :meth:`search` and drops the excluded ids itself)."""
        return None

    def save(self, path: Any) -> None:  # pragma: no cover - optional capability
        raise NotImplementedError(f"{type(self).__name__} cannot be saved")


class Backend(abc.ABC):
    """Trains factorization machines and builds k-NN indexes."""

    name: ClassVar[str]

    @abc.abstractmethod
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
        """Train an FM (``params.predictor_type`` regressor or binary_classifier) on ``X, y``."""

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
        """Train an FM with a ranking loss (``"softmax"`` / ``"bpr"``) on observed pairs.

        Optional: backends whose FM has only regression/classification losses (SageMaker)
        train rankers with the sampled-negatives classifier instead (see
        :func:`recsys.objectives.train_ranking_model`).
        """
        from recsys.errors import ConfigError

        raise ConfigError(
            f"the {self.name} backend cannot train the {loss!r} ranking loss; "
            "set [ranking] loss = 'classifier' (observed vs sampled unobserved pairs)"
        )

    @abc.abstractmethod
    def build_knn(self, vectors: np.ndarray, params: KNNParams) -> KNNIndex:
        """Index ``vectors`` (n, d) for ``params.index_metric`` search."""

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for local backends
        """Release remote resources (endpoints, sessions). Safe to call twice."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
