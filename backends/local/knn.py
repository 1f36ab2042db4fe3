"""FAISS k-NN for the local backend, mirroring SageMaker's built-in k-NN: ``faiss.Flat``
(exact) or ``faiss.IVFFlat`` (``faiss_index_ivf_nlists`` cells, ``"auto"`` = sqrt(n) as in
SageMaker); ``COSINE`` is the inner product of L2-normalised vectors. Queries are searched
``query_batch_size`` at a time (:class:`backends.base.KNNIndex`).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from backends.base import KNNIndex, as_vectors
from recsys._io import atomic_dir
from recsys.errors import ConfigError, DataError, ModelFormatError
from recsys.params import KNNParams

__all__ = ["FaissIndex", "KNN_FORMAT", "KNN_FORMAT_VERSION"]

KNN_FORMAT = "recsys.knn.faiss"
KNN_FORMAT_VERSION = 1


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
        self.batch_size = params.query_batch_size

    @classmethod
    def build(cls, vectors: Any, params: KNNParams | None = None) -> FaissIndex:
        params = (params or KNNParams()).validate()
        x = as_vectors("vectors", vectors)
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
            nlist = min(max(1, int(math.sqrt(n))) if nlist == "auto" else int(nlist), n)
            index = faiss.IndexIVFFlat(faiss.IndexFlat(d, metric), d, nlist, metric)
            sample = x
            if params.sample_size is not None and params.sample_size < n:
                sample = x[np.sort(np.random.default_rng(0).choice(n, size=params.sample_size, replace=False))]
            index.train(sample)
            index.nprobe = min(params.nprobe, nlist)
        index.add(x)
        return cls(index, params)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.metric == "COSINE":
            queries = _normalize(queries)
        scores, ids = self.index.search(queries, k)
        return ids, scores

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``path/`` with ``index.faiss`` (``faiss.write_index``) and ``config.json``."""
        path = Path(path)
        with atomic_dir(path, kind=KNN_FORMAT) as tmp:
            with open(tmp / "index.faiss", "wb") as fh:  # Python's writes report a full disk as OSError
                fh.write(memoryview(faiss.serialize_index(self.index)))
            meta = {"format": KNN_FORMAT, "format_version": KNN_FORMAT_VERSION, "params": self.params.to_dict()}
            (tmp / "config.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> FaissIndex:
        path = Path(path)
        try:
            meta = json.loads((path / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFormatError(f"{path} is not a saved recsys k-NN index ({type(exc).__name__})") from exc
        if not isinstance(meta, dict) or meta.get("format") != KNN_FORMAT or meta.get("format_version") != KNN_FORMAT_VERSION:
            found = f"{meta.get('format')!r} v{meta.get('format_version')!r}" if isinstance(meta, dict) else "no format stamp"
            raise ModelFormatError(f"{path}: expected format {KNN_FORMAT} v{KNN_FORMAT_VERSION}, found {found}")
        try:
            params = KNNParams(**meta["params"]).validate()
            index = faiss.read_index(str(path / "index.faiss"))
        except (TypeError, KeyError, ConfigError) as exc:
            raise ModelFormatError(f"{path / 'config.json'} holds invalid k-NN parameters; rebuild the index") from exc
        except RuntimeError as exc:  # FAISS reports unreadable files as RuntimeError
            raise ModelFormatError(f"{path / 'index.faiss'} is not a readable FAISS index; rebuild it") from exc
        if index.d == 0 or (params.index_type == "faiss.Flat") != isinstance(index, faiss.IndexFlat):
            raise ModelFormatError(f"{path / 'index.faiss'} does not match its config.json; rebuild it")
        return cls(index, params)

    def __repr__(self) -> str:
        return f"FaissIndex({self.params.index_type}, {self.metric}, ntotal={self.ntotal}, dim={self.dim})"
