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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import scipy.sparse as sp

from backends.base import KNNIndex
from backends.local import _kernel
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
        self._items_t: np.ndarray | None = None  # for search_excluding, on first use

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

    #: Catalogues up to this size are searched by :meth:`search_excluding` (larger ones by FAISS,
    #: whose blocked BLAS product is faster when the product dominates).
    EXCLUDING_MAX_ITEMS = 1 << 17

    def search_excluding(self, queries: Any, k: int, exclude: sp.csr_matrix | None) -> tuple[np.ndarray, np.ndarray] | None:
        """Exact top-``k`` by inner product with the ids in ``exclude[r]`` skipped for query
        ``r`` (``exclude``: one CSR row per query, or None), or None when this index cannot.

        What :meth:`search` would return for an exact inner-product index if the excluded
        vectors were absent, ties ordered by lower id, rows padded with id -1 and score -inf.
        The native kernel scores the queries against every vector, four queries by sixteen
        vectors at a time, each score summed in the same fixed order
        (so a customer's scores and list do not depend on which other customers are searched
        with it) and selects the best ``k`` while skipping excluded ids, so the search never goes
        deeper than ``k`` however many ids a query excludes; queries are split over threads.
        Available for ``faiss.Flat`` with ``INNER_PRODUCT`` over at most
        :attr:`EXCLUDING_MAX_ITEMS` vectors, when the native kernels are built.
        """
        lib = _kernel.load()
        if (
            lib is None
            or self.params.index_type != "faiss.Flat"
            or self.metric != "INNER_PRODUCT"
            or self.ntotal > self.EXCLUDING_MAX_ITEMS
        ):
            return None
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise DataError(f"k must be a positive integer, got {k!r}")
        q = _as_float32("queries", queries, self.dim)
        n, k = q.shape[0], int(k)
        indptr = indices = None
        if exclude is not None:
            exclude = sp.csr_matrix(exclude)
            if exclude.shape != (n, self.ntotal):
                raise DataError(f"exclude must have shape ({n}, {self.ntotal}), got {exclude.shape}")
            indptr = np.ascontiguousarray(exclude.indptr, dtype=np.int64)
            indices = np.ascontiguousarray(exclude.indices, dtype=np.int64)
        if self._items_t is None:  # transposed, zero-padded to a multiple of 16 columns
            n_pad = -(-self.ntotal // 16) * 16
            items_t = np.zeros((self.dim, n_pad), dtype=np.float32)
            items_t[:, : self.ntotal] = self.index.reconstruct_n(0, self.ntotal).T
            self._items_t = items_t
        items_t = self._items_t
        n_pad = items_t.shape[1]
        ids = np.empty((n, k), dtype=np.int64)
        scores = np.empty((n, k), dtype=np.float32)
        threads = int(self.params.threads or faiss.omp_get_max_threads())
        parts = max(1, min(threads, n // 256))  # a thread per part; ctypes releases the GIL
        bounds = np.linspace(0, n, parts + 1).astype(np.int64)

        def run(a: int, b: int) -> int:
            mark = np.zeros(self.ntotal, dtype=np.uint8)
            rows = np.empty((4, n_pad), dtype=np.float32)  # QB rows in _fmkernel.c
            return lib.topk_ip_excluding(
                q[a:b].ctypes.data, b - a, items_t.ctypes.data, self.ntotal, n_pad, self.dim,
                None if indptr is None else indptr[a:].ctypes.data,
                None if indices is None else indices.ctypes.data,
                k, ids[a:b].ctypes.data, scores[a:b].ctypes.data, mark.ctypes.data, rows.ctypes.data,
            )  # fmt: skip

        if parts == 1:
            codes = [run(0, n)]
        else:
            with ThreadPoolExecutor(parts) as pool:
                codes = list(pool.map(run, bounds[:-1].tolist(), bounds[1:].tolist()))
        if any(codes):
            raise DataError(f"exclude holds an id outside [0, {self.ntotal}) (or memory ran out)")
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
