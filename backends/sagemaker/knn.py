"""SageMaker's built-in k-NN behind :class:`backends.base.KNNIndex`.

The index is a trained ``knn`` model on S3; :meth:`SageMakerKNNIndex.search` runs a batch
transform over the query vectors (RecordIO-protobuf in, ``application/jsonlines; verbose=true``
out) and turns each line's ``labels`` and ``distances`` into the contract's ``(ids, scores)``.

The labels are the 0-based row numbers of the indexed vectors (that is what
:meth:`~backends.sagemaker.SageMakerBackend.build_knn` trains with), so they *are* the ids.
The order of the neighbours in a line is not trusted: they are sorted here by score, best
first (higher is better for ``INNER_PRODUCT`` and ``COSINE``, lower for ``L2``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from backends.base import HIGHER_IS_BETTER, KNNIndex
from recsys.errors import BackendError
from recsys.params import KNNParams

if TYPE_CHECKING:  # pragma: no cover
    from .backend import SageMakerBackend

__all__ = ["SageMakerKNNIndex", "rank_neighbours", "HIGHER_IS_BETTER"]

logger = logging.getLogger("recsys")



def rank_neighbours(
    labels: np.ndarray, distances: np.ndarray, k: int, metric: str, ntotal: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row's neighbours by score and return the contract's ``(ids, scores)``.

    Parameters
    ----------
    labels : int array (n, m)
        Neighbour labels as returned (row ids of the indexed vectors); -1 marks no neighbour.
    distances : float array (n, m)
        The matching ``distances`` values (similarities for ``INNER_PRODUCT`` / ``COSINE``);
        NaN marks no neighbour.
    k : int
        Width of the result; rows with fewer neighbours are padded with id -1 and score
        ``-inf`` (``+inf`` for ``L2``).
    metric : {"INNER_PRODUCT", "COSINE", "L2"}
    ntotal : int
        Number of indexed vectors; labels must lie in ``[0, ntotal)``.

    Returns
    -------
    ids : int64 (n, k)
    scores : float32 (n, k)
        Best first; ties keep the smaller id first.
    """
    labels = np.asarray(labels, dtype=np.int64)
    dist = np.asarray(distances, dtype=np.float32)
    n, m = labels.shape
    missing = (labels < 0) | ~np.isfinite(dist)
    bad = ~missing & (labels >= ntotal)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise BackendError(
            f"k-NN returned label {labels[r, c]} for query {r}, but only {ntotal} vectors were "
            "indexed (labels must be the 0-based row numbers written by build_knn); was this "
            "model trained by another tool, e.g. with 1-based labels?"
        )
    higher = metric in HIGHER_IS_BETTER
    key = np.where(missing, np.inf, -dist.astype(np.float64) if higher else dist.astype(np.float64))
    tie = np.where(missing, np.iinfo(np.int64).max, labels)
    by_id = np.argsort(tie, axis=1, kind="stable")
    order = np.take_along_axis(
        by_id, np.argsort(np.take_along_axis(key, by_id, 1), axis=1, kind="stable"), 1
    )
    width = min(k, m)
    pad_score = -np.inf if higher else np.inf
    scores = np.full((n, k), pad_score, dtype=np.float32)
    ids = np.full((n, k), -1, dtype=np.int64)
    top = order[:, :width]
    top_missing = np.take_along_axis(missing, top, 1)
    scores[:, :width] = np.where(top_missing, pad_score, np.take_along_axis(dist, top, 1))
    ids[:, :width] = np.where(top_missing, -1, np.take_along_axis(labels, top, 1))
    return ids, scores


class SageMakerKNNIndex(KNNIndex):
    """A trained SageMaker ``knn`` model; searched with batch transform jobs.

    Attributes
    ----------
    metric : str
        ``params.index_metric``.
    ntotal, dim : int
        Number and width of the indexed vectors.
    k, max_k : int
        Neighbours per query the model returns (``min(params.k, ntotal)``); fixed at training,
        so the contract's exclusion search asks for at most this many.
    job_name, model_s3_uri : str
        The training job and its model artifact.
    dry_run : bool
        A dry-run index: :meth:`search` records the transform job it would run and returns
        no neighbours (ids -1).
    """

    def __init__(
        self,
        backend: SageMakerBackend,
        *,
        job_name: str,
        model_s3_uri: str,
        params: KNNParams,
        ntotal: int,
        dim: int,
        dry_run: bool,
    ) -> None:
        self._backend = backend
        self.job_name = job_name
        self.model_s3_uri = model_s3_uri
        self.params = params
        self.metric = params.index_metric
        self.ntotal = int(ntotal)
        self.dim = int(dim)
        self.k = min(int(params.k), self.ntotal)
        self.max_k = self.k
        self.dry_run = dry_run
        self.model_name: str | None = None  # the SageMaker model, created at the first search
        self.transform_jobs: list[str] = []

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (``k <= max_k``) indexed vectors of each query row, by one batch transform
        job; in a dry run the job is recorded and no neighbours (ids -1) come back."""
        result = self._backend._knn_transform(self, queries)
        if result is None:  # dry run
            return np.full((len(queries), k), -1, np.int64), np.full((len(queries), k), self.worst_score, np.float32)
        labels, distances = result
        return rank_neighbours(labels, distances, k, self.metric, self.ntotal)

    def close(self) -> None:
        """Delete the SageMaker model used for searching (the training artifact stays on S3)."""
        self._backend._delete_knn_model(self)

    def __repr__(self) -> str:
        return (
            f"SageMakerKNNIndex(metric={self.metric!r}, ntotal={self.ntotal}, dim={self.dim}, "
            f"k={self.k}, job={self.job_name!r}{', dry run' if self.dry_run else ''})"
        )

    def describe(self) -> dict[str, Any]:
        return {
            "backend": "sagemaker", "job_name": self.job_name, "model_s3_uri": self.model_s3_uri,
            "metric": self.metric, "ntotal": self.ntotal, "dim": self.dim, "k": self.k,
            "transform_jobs": list(self.transform_jobs),
        }  # fmt: skip
