"""The contract every backend implements: train FMs (float32 CSR + labels in, a
:class:`recsys.model.FittedFM` out) and build k-NN indexes (float32 vectors in, a
:class:`KNNIndex` out). Everything else lives once in ``recsys``. Callers read the capabilities
declared here (:class:`Backend` class attributes, :attr:`KNNIndex.max_k` / ``batch_size``)
instead of comparing names; the exclusion search is implemented once, in :class:`KNNIndex`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import scipy.sparse as sp

from recsys.errors import BackendError, ConfigError, DataError
from recsys.features import RankingData
from recsys.model import FittedFM
from recsys.params import FMParams, KNNParams

__all__ = ["Backend", "KNNIndex", "EpochInfo", "Callback", "TrainOptions", "RankingData", "HIGHER_IS_BETTER"]

#: Metrics whose score is a similarity (higher is better); for ``L2`` lower is better.
HIGHER_IS_BETTER = ("INNER_PRODUCT", "COSINE")
#: Queries searched together at least when the exclusion search groups them by depth.
_MIN_GROUP = 4096


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


@dataclass
class TrainOptions:
    """``callbacks`` run after every epoch (local backend only); ``metadata`` is merged into
    the fitted model's."""

    callbacks: Sequence[Callback] = ()
    show_progress: bool = False
    metadata: dict[str, Any] = field(default_factory=dict)


def as_vectors(name: str, x: Any, dim: int | None = None) -> np.ndarray:
    """``x`` as a C-contiguous float32 (n, dim) array of finite values (1-D = one row)."""
    x = np.asarray(x)
    if x.ndim == 1:
        x = x.reshape(1, -1)
    if x.ndim != 2 or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise DataError(f"{name} must be a 2-D numeric array (n, dim), got shape {x.shape} of {x.dtype}")
    if dim is not None and x.shape[1] != dim:
        raise DataError(f"{name} have dimension {x.shape[1]} but the index holds {dim}-d vectors")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise DataError(f"{name} contain NaN or infinite values")
    return x


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise DataError(f"k must be a positive integer, got {k!r}")
    return int(k)


def order_rows(ids: np.ndarray, scores: np.ndarray, higher_is_better: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each row best score first, ties by lower id, -1 last. Only rows out of order are sorted."""
    key = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    s = scores if higher_is_better else -scores
    s0, s1, k0, k1 = s[:, :-1], s[:, 1:], key[:, :-1], key[:, 1:]
    bad = np.flatnonzero(((s1 > s0) | ((s1 == s0) & (k1 < k0))).any(axis=1))
    if len(bad) == 0:
        return ids, scores
    ids, scores = ids.copy(), scores.copy()
    order = np.lexsort((key[bad], -s[bad]), axis=-1)
    ids[bad] = np.take_along_axis(ids[bad], order, axis=1)
    scores[bad] = np.take_along_axis(scores[bad], order, axis=1)
    return ids, scores


def drop_excluded(
    ids: np.ndarray, scores: np.ndarray, exclude: sp.csr_matrix | None, k: int, pad: float
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` entries of each row whose id is not in that row of ``exclude`` (nor -1),
    in order; rows with fewer are padded with id -1 and score ``pad``."""
    valid = ids >= 0
    if exclude is not None and exclude.nnz:
        # membership of (row, id) in exclude, by a sorted search of row * ntotal + id keys
        ntotal = exclude.shape[1]
        rows = np.repeat(np.arange(exclude.shape[0], dtype=np.int64), np.diff(exclude.indptr))
        keys = np.sort(rows * ntotal + exclude.indices)
        cand = np.arange(ids.shape[0], dtype=np.int64)[:, None] * ntotal + np.where(valid, ids, 0)
        pos = np.minimum(np.searchsorted(keys, cand), len(keys) - 1)
        valid &= keys[pos] != cand
    place = np.cumsum(valid, axis=1) - 1  # the j-th surviving entry of a row goes to column j
    keep = valid & (place < k)
    r, c = np.nonzero(keep)
    out_ids = np.full((ids.shape[0], k), -1, dtype=np.int64)
    out_scores = np.full((ids.shape[0], k), pad, dtype=np.float32)
    out_ids[r, place[r, c]] = ids[r, c]
    out_scores[r, place[r, c]] = scores[r, c]
    return out_ids, out_scores


class KNNIndex(abc.ABC):
    """A nearest-neighbour index over ``ntotal`` row vectors of width ``dim`` (one per item).
    Subclasses implement :meth:`_search`; :meth:`search` validates, batches and skips excluded
    ids once for every index."""

    metric: str  # INNER_PRODUCT, COSINE or L2
    ntotal: int
    dim: int
    #: The deepest search the index can answer (SageMaker's k-NN: the k set at training); None: ntotal.
    max_k: int | None = None
    #: Queries per :meth:`_search` call; None: all at once (one remote job).
    batch_size: int | None = None

    @abc.abstractmethod
    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """``(ids int64, scores float32)``, each (len(queries), k), best first, for validated
        float32 ``queries`` and ``1 <= k <= min(ntotal, max_k)``; -1 marks an empty slot."""

    @property
    def higher_is_better(self) -> bool:
        return self.metric in HIGHER_IS_BETTER

    @property
    def worst_score(self) -> float:
        """The score of an empty slot: ``-inf`` for similarities, ``+inf`` for distances."""
        return -np.inf if self.higher_is_better else np.inf

    def search(
        self, queries: Any, k: int, *, exclude: sp.spmatrix | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` neighbours of each query row (1-D: one query), skipping the ids in that
        row of ``exclude`` (sparse (n, ntotal), e.g. the videos a customer rated).

        Returns ``(ids int64, scores float32)``, each (n, min(k, ntotal)), best first, ties by
        lower id, padded with id -1 and :attr:`worst_score`. Scores are similarities for
        ``INNER_PRODUCT`` / ``COSINE``, squared distances for ``L2``.
        """
        k = min(check_k(k), self.ntotal)
        q = as_vectors("queries", queries, self.dim)
        if exclude is not None:
            exclude = sp.csr_matrix(exclude)
            if exclude.shape != (q.shape[0], self.ntotal):
                raise DataError(f"exclude must have shape ({q.shape[0]}, {self.ntotal}), got {exclude.shape}")
            exclude.sort_indices()
            if exclude.nnz and (exclude.indices.min() < 0 or exclude.indices.max() >= self.ntotal):
                raise DataError(f"exclude holds an id outside [0, {self.ntotal})")
        out_ids = np.full((q.shape[0], k), -1, dtype=np.int64)
        out_scores = np.full((q.shape[0], k), self.worst_score, dtype=np.float32)
        cap = self.ntotal if self.max_k is None else min(self.ntotal, self.max_k)
        for pending, depth in self._groups(q.shape[0], exclude, k):
            # searched deeper (twice, then again) while a row is undecided, so the order is
            # always score then id, whatever the depth or the batch
            depth = min(depth, cap)
            while len(pending):
                ex = None if exclude is None else exclude[pending]
                ids, scores = self._batched(q[pending], depth)
                top_ids, top_scores = drop_excluded(ids, scores, ex, k, self.worst_score)
                out_ids[pending], out_scores[pending] = top_ids, top_scores
                # undecided: the k-th kept score ties with the last candidate returned, or fewer
                # than k kept while the index had more to give
                kth, last = top_scores[:, k - 1], scores[:, -1]
                short = (top_ids[:, k - 1] < 0) & (ids[:, -1] >= 0)
                undecided = short | (np.isfinite(kth) & (kth == last))
                if depth >= self.ntotal or not undecided.any():
                    break
                if depth < cap:
                    pending, depth = pending[undecided], min(cap, 2 * depth)
                    continue
                rows, ex = pending[undecided], None if ex is None else ex[undecided]
                done = self._complete(q[rows], k, ex)
                if done is not None:
                    out_ids[rows], out_scores[rows] = done
                elif short.any():
                    raise BackendError(
                        f"{int(short.sum())} queries need more than the {cap} neighbours this "
                        f"index can return; rebuild it with a larger k (at most {self.ntotal})"
                    )
                break
        return out_ids, out_scores

    def _groups(self, n: int, exclude: sp.csr_matrix | None, k: int) -> list[tuple[np.ndarray, int]]:
        """Queries grouped by search depth: ``k`` + the ids they exclude + 1 (to see a tie at
        the k-th place). Grouped by excluded count rounded up to a power of two, small groups
        merged upwards while the depth at most doubles, so a few heavy raters do not make every
        query deep (a flat search of fewer than ~4,096 queries ran at half speed per query);
        an index with a fixed depth (``max_k``) is searched in one go."""
        n_ex = np.diff(exclude.indptr) if exclude is not None else np.zeros(n, dtype=np.int64)
        if self.max_k is not None or not n_ex.any():
            return [(np.arange(n), min(self.ntotal, k + int(n_ex.max(initial=0)) + 1))]
        group = np.where(n_ex > 0, 2 ** np.ceil(np.log2(np.maximum(n_ex, 1))), 0).astype(np.int64)
        merged: list[list[np.ndarray]] = []  # closed groups, then the open one
        first = size = 0
        for margin in np.unique(group):
            if not merged or size >= _MIN_GROUP or k + margin > 2 * (k + first):
                merged.append([])
                first, size = int(margin), 0
            merged[-1].append(np.flatnonzero(group == margin))
            size += len(merged[-1][-1])
        groups = [np.concatenate(g) for g in merged]
        return [(rows, min(self.ntotal, k + int(n_ex[rows].max()) + 1)) for rows in groups]

    def _batched(self, q: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        bs = self.batch_size or max(len(q), 1)
        parts = [self._search(q[s : s + bs], depth) for s in range(0, len(q), bs)]
        ids = np.concatenate([p[0] for p in parts])
        scores = np.concatenate([p[1] for p in parts]).astype(np.float32, copy=False)
        return order_rows(ids, scores, self.higher_is_better)

    def _complete(
        self, queries: np.ndarray, k: int, exclude: sp.csr_matrix | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Exact ``(ids, scores)`` for queries whose answer lies deeper than :attr:`max_k`
        (too many ids excluded, or a tie at the k-th place), or None when this index cannot
        (the default: short rows are then an error, tied ones keep the candidates returned).
        SageMaker's index completes them from the local vectors."""
        return None

    def save(self, path: Any) -> None:
        """Write the index to the directory ``path`` (indexes that live remotely cannot)."""
        raise BackendError(f"a {type(self).__name__} cannot be saved locally")


class Backend(abc.ABC):
    """Trains factorization machines and builds k-NN indexes; its capabilities are class
    attributes."""

    name: ClassVar[str]
    #: FM solvers :meth:`fit_fm` runs (``FMParams.solver``).
    solvers: ClassVar[tuple[str, ...]] = ("sgd",)
    #: Ranking losses :meth:`fit_fm_ranking` trains, best first ("auto": the first);
    #: "classifier" (sampled negatives through :meth:`fit_fm`) works everywhere.
    ranking_losses: ClassVar[tuple[str, ...]] = ("classifier",)
    #: Training and search are paid remote jobs (searches only for comparison are done locally).
    remote: ClassVar[bool] = False
    #: ``dry_run=True`` records every request without sending it.
    supports_dry_run: ClassVar[bool] = False
    #: The run configuration's section holding this backend's options (``[sagemaker]``), if any.
    options_section: ClassVar[str | None] = None

    @classmethod
    def from_config(cls, cfg: Any, *, dry_run: bool = False) -> Backend:
        """The backend a run configuration (:class:`recsys.config.RunConfig`) asks for."""
        if dry_run and not cls.supports_dry_run:
            raise ConfigError(f"--dry-run is not available for the {cls.name} backend (it calls no remote service)")
        options = dict(getattr(cfg, cls.options_section)) if cls.options_section else {}
        if dry_run:
            options["dry_run"] = True
        return cls(**options)

    @classmethod  # noqa: B027 - an optional hook
    def check_options(cls, options: dict[str, Any]) -> None:
        """Validate this backend's configuration section (no-op without one)."""

    @abc.abstractmethod
    def fit_fm(
        self,
        X: sp.csr_matrix,
        y: np.ndarray,
        params: FMParams,
        *,
        eval_set: tuple[sp.csr_matrix, np.ndarray] | None = None,
        options: TrainOptions | None = None,
    ) -> FittedFM:
        """Train an FM (``params.predictor_type`` regressor or binary_classifier) on ``X, y``;
        ``eval_set = (X_eval, y_eval)`` is scored after each epoch where the backend can."""

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
        """Train an FM with a ranking loss (one of :attr:`ranking_losses` other than
        ``"classifier"``) on the observed pairs of ``data``; ``eval_set`` holds held-out pairs
        scored by NDCG@10 after each epoch."""
        raise ConfigError(
            f"the {self.name} backend cannot train the {loss!r} ranking loss; it trains "
            f"{', '.join(map(repr, self.ranking_losses))} (set [ranking] loss)"
        )

    @abc.abstractmethod
    def build_knn(self, vectors: np.ndarray, params: KNNParams) -> KNNIndex:
        """Index ``vectors`` (n, d) for ``params.index_metric`` search. ``params.k`` is the
        deepest search the caller will ask for (an index may answer at most :attr:`KNNIndex.max_k`)."""

    def report(self) -> dict[str, Any]:
        """What ``metrics.json[backend.name]`` records about this backend's work (jobs, cost)."""
        return {}

    def format_plan(self) -> str:
        """A dry run's plan as text for the CLI (backends with :attr:`supports_dry_run`)."""
        return ""

    def plan_requests(self) -> list[dict[str, Any]]:
        """Every request a run sends (or would send), in order, as ``{"api", "request", ...}``
        dicts (a dry run's ``plan.json``)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for local backends
        """Release remote resources (endpoints, sessions). Safe to call twice."""

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
