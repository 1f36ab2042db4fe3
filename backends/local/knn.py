"""FAISS k-NN for the local backend, mirroring SageMaker's built-in k-NN.

``index_type`` ``faiss.Flat`` (exact, the default) or ``faiss.IVFFlat`` (inverted lists with
``faiss_index_ivf_nlists`` cells, ``"auto"`` = sqrt(n) as in SageMaker, searched with
``nprobe``); ``index_metric`` ``INNER_PRODUCT``, ``L2`` or ``COSINE`` (inner product of
L2-normalised vectors). Queries are searched in batches of ``query_batch_size`` so memory stays
bounded for millions of users; FAISS uses all threads unless ``threads`` is set.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from backends.base import KNNIndex
from recsys._io import atomic_dir
from recsys.errors import DataError, ModelFormatError
from recsys.params import KNNParams

__all__ = ["FaissIndex", "KNN_FORMAT", "KNN_FORMAT_VERSION"]

KNN_FORMAT = "recsys.knn.faiss"
KNN_FORMAT_VERSION = 1


def _as_float32(name: str, x: Any, dim: int | None = None) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2:
        raise DataError(f"{name} must be 2-D (n, dim), got shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise DataError(f"{name} have dimension {x.shape[1]} but the index has dimension {dim}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{name} contain NaN or infinite values")
    return x


def _normalize(x: np.ndarray) -> np.ndarray:
    x = x.copy()
    faiss.normalize_L2(x)
    return x


class FaissIndex(KNNIndex):
    """A FAISS index over row vectors; see the module docstring."""

    def __init__(self, index: faiss.Index, params: KNNParams):
        self.index = index
        self.params = params
        self.metric = params.index_metric
        self.ntotal = int(index.ntotal)
        self.dim = int(index.d)

    @classmethod
    def build(cls, vectors: Any, params: KNNParams | None = None) -> FaissIndex:
        params = (params or KNNParams()).validate()
        x = _as_float32("vectors", vectors)
        if x.shape[0] == 0:
            raise DataError("cannot build a k-NN index over zero vectors")
        if x.shape[1] == 0:
            raise DataError("cannot build a k-NN index over zero-dimensional vectors")
        if params.threads:
            faiss.omp_set_num_threads(int(params.threads))
        if params.index_metric == "COSINE":
            x = _normalize(x)
        metric = faiss.METRIC_L2 if params.index_metric == "L2" else faiss.METRIC_INNER_PRODUCT
        n, d = x.shape
        if params.index_type == "faiss.Flat":
            index = faiss.IndexFlat(d, metric)
        else:
            nlist = params.faiss_index_ivf_nlists
            nlist = max(1, int(math.sqrt(n))) if nlist == "auto" else int(nlist)
            nlist = min(nlist, n)
            quantizer = faiss.IndexFlat(d, metric)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
            sample = x
            if params.sample_size is not None and params.sample_size < n:
                rng = np.random.default_rng(0)
                sample = x[np.sort(rng.choice(n, size=params.sample_size, replace=False))]
            index.train(sample)
            index.nprobe = min(params.nprobe, nlist)
        index.add(x)
        return cls(index, params)

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise DataError(f"k must be a positive integer, got {k!r}")
        q = _as_float32("queries", queries, self.dim)
        if self.metric == "COSINE":
            q = _normalize(q)
        k_eff = min(int(k), self.ntotal)
        n = q.shape[0]
        scores = np.empty((n, k_eff), dtype=np.float32)
        ids = np.empty((n, k_eff), dtype=np.int64)
        bs = self.params.query_batch_size
        for start in range(0, n, bs):
            d, i = self.index.search(q[start : start + bs], k_eff)
            scores[start : start + bs] = d
            ids[start : start + bs] = i
        return scores, ids

    # ---- persistence ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/`` with ``index.faiss`` (``faiss.write_index``) and ``config.json``."""
        path = Path(path)
        with atomic_dir(path) as tmp:
            faiss.write_index(self.index, str(tmp / "index.faiss"))
            meta = {"format": KNN_FORMAT, "format_version": KNN_FORMAT_VERSION, "params": self.params.to_dict()}
            (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FaissIndex:
        path = Path(path)
        try:
            meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ModelFormatError(f"{path} is not a saved recsys k-NN index: {exc}") from exc
        if meta.get("format") != KNN_FORMAT or meta.get("format_version") != KNN_FORMAT_VERSION:
            raise ModelFormatError(
                f"{path}: expected format {KNN_FORMAT} v{KNN_FORMAT_VERSION}, found "
                f"{meta.get('format')!r} v{meta.get('format_version')!r}"
            )
        index = faiss.read_index(str(path / "index.faiss"))
        return cls(index, KNNParams(**meta["params"]))

    def __repr__(self) -> str:
        return f"FaissIndex({self.params.index_type}, {self.metric}, ntotal={self.ntotal}, dim={self.dim})"
