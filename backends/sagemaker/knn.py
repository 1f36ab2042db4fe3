"""SageMaker's built-in k-NN behind :class:`backends.base.KNNIndex`.

:func:`build_knn` trains ``knn`` on the item vectors (labels = row numbers, so a label *is* an
id). SageMaker returns a fixed ``k``, set at training and at most 1024. With N training instances
each samples ``sample_size / N`` points of its shard, so ``sample_size`` is N times the largest
shard and every item is indexed once.

:class:`SageMakerKNNIndex` searches with batch transform jobs and relies on no convention it
cannot see: returned labels are **re-scored with the local vectors** (ties by lower id),
whichever way SageMaker's ``distances`` run (:meth:`~SageMakerKNNIndex.report` records which);
answers deeper than ``k``, tied at the cut or returned short are **completed exactly from the
local vectors**; a deeper pass over the same queries reuses the last transform job's result.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

from backends.base import KNNIndex, as_vectors, drop_excluded, order_rows
from recsys.errors import BackendError, DataError
from recsys.params import KNNParams

from .artifacts import parse_knn_jsonlines
from .aws import AWS
from .fm import sdk_hyperparameters, shard_uploads, write_shards
from .plan import Channel, model_entry, training_job_entry, transform_job_entry

logger = logging.getLogger("recsys")

#: The deepest search SageMaker's k-NN accepts (its hyperparameter schema caps ``k`` at 1024).
KNN_MAX_K = 1024
#: float64 elements per block when scoring locally (bounded memory).
_BLOCK = 2_000_000


def knn_hyperparameters(params: KNNParams, n: int, dim: int, instances: int) -> dict[str, str]:
    """The ``knn`` hyperparameters for ``n`` vectors of width ``dim`` on ``instances`` instances."""
    from sagemaker import KNN

    shard = -(-n // instances)  # the largest of the N shards
    values = {
        "feature_dim": dim, "k": min(params.k, n, KNN_MAX_K), "predictor_type": params.predictor_type,
        "sample_size": params.sample_size or shard * instances, "index_type": params.index_type,
        "index_metric": params.index_metric, "mini_batch_size": params.mini_batch_size,
        "faiss_index_ivf_nlists": params.faiss_index_ivf_nlists if params.index_type == "faiss.IVFFlat" else None,
    }  # fmt: skip
    return sdk_hyperparameters(KNN, values)


def build_knn(aws: AWS, vectors: Any, params: KNNParams) -> SageMakerKNNIndex:
    """Train SageMaker's ``knn`` on ``vectors`` (see :meth:`SageMakerBackend.build_knn`)."""
    params.validate()
    V = np.asarray(vectors)
    if V.ndim != 2 or V.shape[0] == 0 or V.shape[1] == 0:
        raise DataError(f"vectors must be a non-empty 2-D numeric array (n, d), got shape {V.shape}")
    V = as_vectors("vectors", V)
    n, d = V.shape
    if n > np.iinfo(np.int32).max:
        raise DataError(f"{n} vectors is more than SageMaker's int32 labels can number")
    instances = aws.config.train_instance_count
    if n < instances:
        raise DataError(f"{n} vectors cannot be sharded over train_instance_count = {instances}; lower it")
    hyperparameters = knn_hyperparameters(params, n, d, instances)
    if int(hyperparameters["sample_size"]) < n:
        logger.warning("k-NN sample_size=%s < %d vectors: SageMaker indexes only a sample, so its neighbours are "
                       "approximate (rows it returns short are completed locally)", hyperparameters["sample_size"], n)  # fmt: skip
    job = aws.new_name("knn")
    folder = aws.uri("data", job, "train") + "/"
    uploads = shard_uploads(aws, folder, n, instances, purpose="k-NN train channel",
                            details={"columns": d, "format": "dense float32, labels = row numbers (int32)"})  # fmt: skip
    channel = Channel("train", folder, instances)
    train = aws.record(training_job_entry(
        job, purpose=f"k-NN index ({params.index_type}, {params.index_metric})", image_uri=aws.image_uri("knn"),
        role=aws.role, cfg=aws.config, hyperparameters=hyperparameters, channels=[channel], output_path=aws.uri("models"),
    ))  # fmt: skip
    model_uri = train.details["model_artifact"]
    if not aws.dry_run:
        write_shards(aws, uploads, V, np.arange(n, dtype=np.dtype(int)), shuffle=instances > 1)
        desc = aws.run_job(train, "training")
        model_uri = (desc.get("ModelArtifacts") or {}).get("S3ModelArtifacts") or model_uri
    return SageMakerKNNIndex(aws, job_name=job, model_s3_uri=model_uri, params=params, vectors=V,
                             k=int(hyperparameters["k"]), sample_size=int(hyperparameters["sample_size"]))  # fmt: skip


class SageMakerKNNIndex(KNNIndex):
    """A trained SageMaker ``knn`` model plus the vectors it was built from. ``k`` (= ``max_k``)
    is how many neighbours SageMaker returns per query; ``completed_rows`` counts the queries
    answered (in part) from the local vectors."""

    def __init__(self, aws: AWS, *, job_name: str, model_s3_uri: str, params: KNNParams, vectors: np.ndarray,
                 k: int, sample_size: int) -> None:  # fmt: skip
        self._aws = aws
        self.job_name, self.model_s3_uri, self.params = job_name, model_s3_uri, params
        self.metric = params.index_metric
        self.ntotal, self.dim = vectors.shape
        self.k = self.max_k = k
        self.sample_size = sample_size
        self.dry_run = aws.dry_run
        self.model_name: str | None = None  # the SageMaker model, created at the first search
        self.transform_jobs: list[str] = []
        self.queries = self.completed_rows = 0
        self._vectors = vectors
        self._norms = np.linalg.norm(vectors.astype(np.float64), axis=1)
        self._cache: tuple[dict[bytes, int], np.ndarray, np.ndarray] | None = None
        self._order = {"ascending": 0, "descending": 0, "unsorted": 0, "flat": 0}
        self._match: dict[str, int] = {}
        self._max_difference = 0.0

    # ---- searching -------------------------------------------------------------------------
    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k <= max_k`` of each query: SageMaker's neighbours, re-scored locally."""
        found = self._lookup(queries)
        if found is None:
            result = run_transform(self._aws, self, queries)
            if result is None:  # dry run: the job is recorded, no neighbours come back
                return np.full((len(queries), k), -1, np.int64), np.full((len(queries), k), self.worst_score, np.float32)
            labels, distances = result
            self.queries += len(queries)
            bad = labels >= self.ntotal
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise BackendError(
                    f"k-NN returned label {labels[r, c]} for query {r}, but only {self.ntotal} vectors were indexed "
                    "(labels must be the 0-based row numbers written by build_knn); was this model trained by another tool?"
                )
            local = self._pair_scores(queries, np.maximum(labels, 0))
            self._check_distances(labels, distances, local)
            ids, scores = self._rescore(labels, local)
            short = (ids >= 0).sum(axis=1) < self.k  # fewer than asked: a sample, or repeated labels
            if short.any():
                ids[short], scores[short] = self._complete(queries[short], self.k, None)
            self._cache = ({q.tobytes(): i for i, q in enumerate(queries)}, ids, scores)
        else:
            ids, scores = found
        return ids[:, :k], scores[:, :k]

    def _lookup(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """The cached answer when every query was searched by the last transform job."""
        if self._cache is None:
            return None
        rows, ids, scores = self._cache
        where = [rows.get(q.tobytes()) for q in queries]
        if any(w is None for w in where):
            return None
        return ids[where], scores[where]

    def _rescore(self, labels: np.ndarray, local: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SageMaker's labels with their ``local`` scores, best first (ties by lower id);
        repeated labels count once, missing ones pad with id -1."""
        ids = labels.copy()
        ordered = np.sort(ids, axis=1)
        for r in np.flatnonzero(((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] >= 0)).any(axis=1)):
            first = np.zeros(ids.shape[1], bool)
            first[np.unique(ids[r], return_index=True)[1]] = True
            ids[r, ~first] = -1
        return order_rows(ids, np.where(ids >= 0, local, self.worst_score).astype(np.float32), self.higher_is_better)

    def _complete(self, queries: np.ndarray, k: int, exclude: sp.csr_matrix | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` of ``queries`` skipping ``exclude``, from the local vectors."""
        self.completed_rows += len(queries)
        parts, step = [], max(1, _BLOCK // self.ntotal)
        for a in range(0, len(queries), step):
            q = queries[a : a + step]
            all_ids = np.ascontiguousarray(np.broadcast_to(np.arange(self.ntotal), (len(q), self.ntotal)))
            ids, scores = order_rows(all_ids, self._pair_scores(q, all_ids), self.higher_is_better)
            parts.append(drop_excluded(ids, scores, None if exclude is None else exclude[a : a + step], k, self.worst_score))
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _pair_scores(self, queries: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """float32 scores (inner product, cosine or squared L2, computed in float64) of each
        query with the vectors ``labels`` of its row."""
        out = np.empty(labels.shape, np.float32)
        step = max(1, _BLOCK // max(1, labels.shape[1] * self.dim))
        for a in range(0, len(queries), step):
            q = queries[a : a + step].astype(np.float64)[:, None, :]
            v = self._vectors[labels[a : a + step]].astype(np.float64)
            if self.metric == "L2":
                out[a : a + step] = ((v - q) ** 2).sum(-1)
                continue
            dots = (v * q).sum(-1)
            if self.metric == "COSINE":
                norms = self._norms[labels[a : a + step]] * np.linalg.norm(q[:, 0], axis=1)[:, None]
                dots = dots / np.where(norms > 0, norms, 1.0)
            out[a : a + step] = dots
        return out

    # ---- what SageMaker's distances look like ---------------------------------------------
    def _check_distances(self, labels: np.ndarray, distances: np.ndarray, local_scores: np.ndarray) -> None:
        """Record which way the returned distances ran along each line and whether they equal
        the local scores (or their negation, or for L2 their square root) to float32 tolerance."""
        valid = (labels >= 0) & np.isfinite(distances)
        with np.errstate(invalid="ignore"):  # inf - inf in an overflowing line
            steps = np.diff(distances, axis=1)
        both = valid[:, 1:] & valid[:, :-1]
        up, down = (both & (steps > 0)).any(axis=1), (both & (steps < 0)).any(axis=1)
        informative = both.any(axis=1)
        self._order["ascending"] += int((up & ~down).sum())
        self._order["descending"] += int((down & ~up).sum())
        self._order["unsorted"] += int((up & down).sum())
        self._order["flat"] += int((informative & ~up & ~down).sum())
        if not valid.any():
            return
        local = local_scores.astype(np.float64)[valid]
        remote = distances.astype(np.float64)[valid]
        tolerance = 1e-4 * np.maximum(1.0, np.abs(local))
        candidates = {"equal": local, "negated": -local}
        if self.metric == "L2":
            candidates["square root"] = np.sqrt(np.maximum(local, 0.0))
        verdict = next((name for name, want in candidates.items() if np.all(np.abs(remote - want) <= tolerance)), "no")
        self._match[verdict] = self._match.get(verdict, 0) + int(valid.sum())
        self._max_difference = max(self._max_difference, float(np.max(np.abs(remote - local))))
        if verdict == "no":
            logger.warning(
                "SageMaker's k-NN distances do not match the local %s scores of the same vectors (largest difference "
                "%.3g); the neighbours are re-scored locally, but check the index", self.metric, self._max_difference,
            )  # fmt: skip

    def report(self) -> dict[str, Any]:
        """What ``metrics.json["sagemaker"]["knn"]`` records about this index."""
        o = self._order
        order = ("unsorted" if o["unsorted"] else "mixed" if o["ascending"] and o["descending"]
                 else "ascending" if o["ascending"] else "descending" if o["descending"] else "undetermined")  # fmt: skip
        match = "/".join(sorted(self._match)) if self._match else None
        return {
            "training_job": self.job_name, "metric": self.metric, "ntotal": self.ntotal, "dim": self.dim,
            "k_requested": int(self.params.k), "k_sent": self.k, "sample_size": self.sample_size,
            "transform_jobs": list(self.transform_jobs), "queries": self.queries, "completed_rows": self.completed_rows,
            "distance_order": order, "distance_order_rows": dict(o), "distances_match_local": match,
            "max_distance_difference": self._max_difference if self._match else None,
        }  # fmt: skip

    def close(self) -> None:
        """Delete the SageMaker model used for searching (the training artifact stays on S3)."""
        if self.model_name is not None:
            name, self.model_name = self.model_name, None
            self._aws.delete("model", name, purpose="k-NN model: cleanup")
        self._cache = None

    def __repr__(self) -> str:
        return (f"SageMakerKNNIndex(metric={self.metric!r}, ntotal={self.ntotal}, dim={self.dim}, k={self.k}, "
                f"job={self.job_name!r}{', dry run' if self.dry_run else ''})")  # fmt: skip


def run_transform(aws: AWS, index: SageMakerKNNIndex, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """One batch transform of ``queries`` against ``index`` (its model created on first use),
    split into ``transform_instance_count`` input objects; ``(labels, distances)`` as returned,
    or None in a dry run."""
    image = aws.image_uri("knn")
    if index.model_name is None:
        entry = aws.record(model_entry(index.job_name, purpose="k-NN model for batch transform", image_uri=image,
                                       model_data_url=index.model_s3_uri, role=aws.role, cfg=aws.config))  # fmt: skip
        if not aws.dry_run:
            aws.send(entry)
        index.model_name = index.job_name
    job = aws.new_name("knn-tf")
    folder, output = aws.uri("data", job, "queries") + "/", aws.uri("transform", job)
    objects = min(aws.config.transform_instance_count, len(queries))
    uploads = shard_uploads(aws, folder, len(queries), objects, purpose="k-NN queries",
                            details={"columns": queries.shape[1], "format": "dense float32, no labels"})  # fmt: skip
    transform = aws.record(transform_job_entry(
        job, purpose=f"k-NN search, top {index.k}", model_name=index.model_name, image_uri=image, input_uri=folder,
        objects=objects, output_path=output, cfg=aws.config, details={"results": f"{output}/<input object>.out"},
    ))  # fmt: skip
    index.transform_jobs.append(job)
    if aws.dry_run:
        return None
    write_shards(aws, uploads, queries, None, shuffle=False)
    aws.run_job(transform, "transform")
    parts = [parse_knn_jsonlines(aws.read(f"{output}/{u.request['Key'].rsplit('/', 1)[-1]}.out"), k=index.k)
             for u in uploads]  # fmt: skip
    labels, distances = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if labels.shape[0] != queries.shape[0]:
        raise BackendError(f"transform job {job} returned {labels.shape[0]} result lines for {queries.shape[0]} queries")
    return labels, distances
