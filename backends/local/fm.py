"""The local factorization machine, with SageMaker's hyperparameter semantics.

The model, for any sparse feature row x::

    y(x) = w0 + sum_i w_i x_i + 1/2 sum_f [(sum_i v_if x_i)^2 - sum_i v_if^2 x_i^2]

is computed in O(nnz * num_factors) per batch. Gradients are in closed form (tested against
autograd) and applied *lazily*, as MXNet's sparse optimizers do: only the rows of ``w`` and
``V`` whose features occur in a batch are updated (and weight-decayed), so an epoch costs
O(nnz * k), not O(feature_dim * k) per batch.

Optimizer semantics follow MXNet (which runs SageMaker's FM): per batch the summed loss gradient
is multiplied by ``rescale_grad`` (default ``1 / batch size``), clipped to ``[-clip_gradient,
clip_gradient]``, weight decay ``wd * weight`` is added, then the optimizer steps with the
per-part learning rate (``bias_lr``, ``linear_lr``, ``factors_lr``). SageMaker's ``eps`` implies
an adaptive optimizer; the local default is Adam (``"sgd"`` and ``"adagrad"`` are available).

:meth:`FMTrainer.torch_step` is the step in PyTorch (~40 small ATen calls per batch); the
optional C extension ``_fmkernel.c``, when built, runs a whole epoch in one call (5-6x faster on
MovieLens-sized data; the lab regressor on ``full``: 19.1 s -> 4.4 s), equal to float32
rounding (tested). ``RECSYS_NATIVE=off`` or float64 parameters use the PyTorch step.
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from backends.base import TrainOptions
from backends.local import _kernel
from recsys.errors import ConfigError, DataError
from recsys.model import FittedFM, check_design, target_range
from recsys.params import FMParams

from .training import run_epochs

__all__ = ["FMTrainer", "train_fm", "SparseBatch", "csr_batches", "model_bytes"]

_ADAM_BETA1, _ADAM_BETA2 = 0.9, 0.999
#: optimizer state tensors per parameter
_N_STATE = {"adam": 2, "adagrad": 1, "sgd": 0}


# -- data ------------------------------------------------------------------------------------
@dataclass
class SparseBatch:
    """A batch of sparse rows in coordinate form: entry j is ``x[row[j], idx[j]] = val[j]``."""

    idx: torch.Tensor  # int64 (nnz,)
    val: torch.Tensor  # float32 (nnz,)
    row: torch.Tensor  # int64 (nnz,), local row ids in [0, n_rows)
    n_rows: int
    #: every row has ``width`` entries, stored row by row: sums are reshapes, not scatters
    width: int | None = None


class _CSRTensors:
    """A CSR matrix held as torch tensors, cut into :class:`SparseBatch` es."""

    def __init__(self, X: sp.csr_matrix):
        X = sp.csr_matrix(X)
        if not X.has_canonical_format:
            X = X.copy()  # never modify the caller's matrix
            X.sum_duplicates()
        self.n_rows, self._X = X.shape[0], X
        self.indptr = torch.from_numpy(X.indptr.astype(np.int64))
        self.indices = torch.from_numpy(X.indices.astype(np.int64))
        self.data = torch.from_numpy(X.data.astype(np.float32))
        lengths = np.diff(X.indptr)  # all equal (e.g. a one-hot design): batches are reshapes
        self.width = int(lengths[0]) if X.shape[0] and lengths[0] > 0 and np.all(lengths == lengths[0]) else None
        if self.width:
            self.idx2d = self.indices.view(self.n_rows, self.width)
            self.val2d = self.data.view(self.n_rows, self.width)
        self._row_ids: dict[int, torch.Tensor] = {}

    def _fixed(self, idx: torch.Tensor, val: torch.Tensor) -> SparseBatch:
        """A batch of fixed-width rows from their (b, width) indices and values."""
        b = int(idx.shape[0])
        if b not in self._row_ids:
            self._row_ids[b] = torch.arange(b).repeat_interleave(self.width)
        return SparseBatch(idx.reshape(-1), val.reshape(-1), self._row_ids[b], b, self.width)

    def batch(self, rows: torch.Tensor) -> SparseBatch:
        """The rows ``rows`` (int64 tensor) as a batch."""
        if self.width:
            return self._fixed(self.idx2d[rows], self.val2d[rows])
        local, pos = csr_take(self.indptr, rows)
        return SparseBatch(self.indices[pos], self.data[pos], local, int(rows.numel()))

    def permuted(self, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The rows ``order`` as CSR arrays ``(indptr, indices, values)`` (for the kernels):
        a reshape for fixed-width rows, else scipy's row gather (3-4x faster than
        :func:`csr_take` here)."""
        if self.width:
            indptr = torch.arange(len(order) + 1) * self.width
            return indptr, self.idx2d[order].reshape(-1), self.val2d[order].reshape(-1)
        X = self._X[order.numpy()]
        indptr, indices = (torch.from_numpy(a.astype(np.int64)) for a in (X.indptr, X.indices))
        return indptr, indices, torch.from_numpy(X.data.astype(np.float32))

    def epoch(self, order: torch.Tensor, batch_size: int) -> Iterator[tuple[slice, SparseBatch]]:
        """Yield ``(slice into order, batch)`` over the rows ``order`` (fixed-width rows are
        permuted once: a batch is then a slice)."""
        if self.width:
            idx, val = self.idx2d[order], self.val2d[order]
        for start in range(0, len(order), batch_size):
            sl = slice(start, start + batch_size)
            yield sl, (self._fixed(idx[sl], val[sl]) if self.width else self.batch(order[sl]))


def csr_take(indptr: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The entries of the CSR rows ``rows`` of a matrix with row pointers ``indptr``: per entry
    its row's place in ``rows`` and its position in the matrix's entry arrays."""
    starts = indptr[rows]
    lengths = indptr[rows + 1] - starts
    ptr = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(lengths, 0)])
    local = torch.repeat_interleave(torch.arange(len(rows)), lengths)
    return local, starts[local] + (torch.arange(int(ptr[-1])) - ptr[local])


def csr_batches(X: sp.csr_matrix, batch_size: int, order: np.ndarray | None = None) -> Iterator[tuple[np.ndarray, SparseBatch]]:
    """Yield ``(row_ids, batch)`` over ``X`` in ``order`` (default: row order)."""
    order = np.arange(X.shape[0]) if order is None else order
    rows = torch.from_numpy(np.ascontiguousarray(order, dtype=np.int64))
    for sl, batch in _CSRTensors(X).epoch(rows, batch_size):
        yield order[sl], batch


# -- the model -------------------------------------------------------------------------------
def _init(shape: tuple[int, ...], method: str, sigma: float | None, scale: float | None, value: float | None, gen: torch.Generator) -> torch.Tensor:
    if method == "normal":
        return torch.randn(shape, generator=gen) * float(sigma)
    if method == "uniform":
        return (torch.rand(shape, generator=gen) * 2.0 - 1.0) * float(scale)
    return torch.full(shape, float(value))


LossFn = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def squared_loss(y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row squared error (y - t)^2 and d(1/2 (y - t)^2)/dy = y - t (MXNet's regression output)."""
    d = y - t
    return d * d, d


def logistic_loss(y: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row log loss on logits and its gradient sigmoid(y) - t."""
    return torch.nn.functional.binary_cross_entropy_with_logits(y, t, reduction="none"), torch.sigmoid(y) - t


#: Losses the native epoch implements (its ``loss`` argument) and its optimizer codes.
_KERNEL_LOSSES: dict[Any, int] = {squared_loss: 0, logistic_loss: 1}
_OPTIMIZERS = {"sgd": 0, "adagrad": 1, "adam": 2}


class FMTrainer:
    """Parameters, optimizer state and the closed-form training step of an FM. ``w`` and ``V``
    live in one (feature_dim, num_factors + 1) table ``P = [V | w]`` (one gather and one
    scatter a batch) with per-column learning rates and weight decays."""

    def __init__(self, feature_dim: int, params: FMParams):
        self.params = p = params
        self.feature_dim = feature_dim
        k = self.k = p.num_factors
        gen = torch.Generator().manual_seed(p.seed)
        available = _available_memory()
        if available is not None and model_bytes(feature_dim, p) > available:
            raise _too_big(feature_dim, p, available)
        n_state = _N_STATE[p.optimizer]
        try:
            self.w0 = _init((1,), p.bias_init_method, p.bias_init_sigma, p.bias_init_scale, p.bias_init_value, gen)
            w = _init((feature_dim,), p.linear_init_method, p.linear_init_sigma, p.linear_init_scale, p.linear_init_value, gen)
            V = _init((feature_dim, k), p.factors_init_method, p.factors_init_sigma, p.factors_init_scale, p.factors_init_value, gen)
            self.P = torch.cat([V, w[:, None]], dim=1).contiguous()
            del w, V
            self.state_P = [torch.zeros_like(self.P) for _ in range(n_state)]
        except (RuntimeError, MemoryError) as exc:  # e.g. under a ulimit below MemAvailable
            raise _too_big(feature_dim, p, None) from exc
        self.state_w0 = [torch.zeros_like(self.w0) for _ in range(n_state)]
        self.lr = torch.tensor([p.factors_lr] * k + [p.linear_lr])
        self.wd = torch.tensor([p.factors_wd] * k + [p.linear_wd])
        self.step_count = 0
        self.eps = float(p.eps) if p.eps is not None else (1e-8 if p.optimizer == "adam" else 1e-7)
        self.clip = math.inf if p.clip_gradient is None else p.clip_gradient  # the kernels' argument
        # None: the PyTorch step (the kernels write float32 parameters and state in place)
        kernel = _kernel.load()
        self._kernel = kernel if self.P.dtype == torch.float32 else None

    @property
    def V(self) -> torch.Tensor:
        return self.P[:, : self.k]

    @property
    def w(self) -> torch.Tensor:
        return self.P[:, self.k]

    # -- forward / backward ----------------------------------------------------------------
    def forward(self, batch: SparseBatch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``y`` (n_rows,), the per-row factor sums ``s`` and the per-entry ``x_j v_j``."""
        k = self.k
        e = self.P.index_select(0, batch.idx).mul_(batch.val[:, None])
        xv = e[:, :k]
        if batch.width:  # fixed-width rows: per-row sums are reshapes, no scatter
            s = e.view(batch.n_rows, batch.width, k + 1).sum(1)
            sq = (xv * xv).view(batch.n_rows, -1).sum(1)
        else:
            s = torch.zeros(batch.n_rows, k + 1).index_add_(0, batch.row, e)
            sq = torch.zeros(batch.n_rows).index_add_(0, batch.row, (xv * xv).sum(1))
        sv = s[:, :k]
        y = (sv * sv).sum(1).sub_(sq).mul_(0.5).add_(s[:, k]).add_(self.w0)
        return y, sv, xv

    def gradients(self, batch: SparseBatch, g: torch.Tensor, s: torch.Tensor, xv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Closed-form gradients given ``g = dLoss/dy`` per row: ``(g_w0, rows, g_P[rows])``,
        ``rows`` the batch's distinct features, ``g_P = [g_V | g_w]``; dy/dw0 = 1, dy/dw_i = x_i,
        dy/dv_if = x_i (s_f - v_if x_i)."""
        k = self.k
        g_e = torch.empty(batch.idx.numel(), k + 1)
        if batch.width:
            gx = (g[:, None] * batch.val.view(-1, batch.width)).view(-1)
            diff = (s[:, None, :] - xv.view(-1, batch.width, k)).view(-1, k)
        else:
            gx = g[batch.row] * batch.val
            diff = s.index_select(0, batch.row) - xv
        torch.mul(diff, gx[:, None], out=g_e[:, :k])
        g_e[:, k] = gx
        rows, inverse = torch.unique(batch.idx, return_inverse=True)
        return g.sum().reshape(1), rows, torch.zeros(rows.numel(), k + 1).index_add_(0, inverse, g_e)

    # -- update ----------------------------------------------------------------------------
    def _step(self, weight: torch.Tensor, grad: torch.Tensor, state: list[torch.Tensor], lr: Any, wd: Any) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """One optimizer update of ``weight`` (rows already gathered): new weight and state."""
        p = self.params
        if p.clip_gradient is not None:
            grad = grad.clamp(-p.clip_gradient, p.clip_gradient)
        grad = grad + wd * weight
        if p.optimizer == "sgd":
            return weight - lr * grad, []
        if p.optimizer == "adagrad":
            h = state[0] + grad * grad
            return weight - lr * grad / (h.sqrt() + self.eps), [h]
        t = self.step_count
        m = state[0].mul_(_ADAM_BETA1).add_(grad, alpha=1 - _ADAM_BETA1)
        v = state[1].mul_(_ADAM_BETA2).addcmul_(grad, grad, value=1 - _ADAM_BETA2)
        correction = math.sqrt(1 - _ADAM_BETA2**t) / (1 - _ADAM_BETA1**t)
        return weight.sub_(m.div(v.sqrt().add_(self.eps)).mul_(lr * correction)), [m, v]

    def torch_step(self, batch: SparseBatch, target: torch.Tensor, loss_fn: LossFn) -> float:
        """Forward, loss, closed-form backward and a lazy optimizer step; the summed loss."""
        y, s, xv = self.forward(batch)
        loss, dy = loss_fn(y, target)
        scale = self.params.rescale_grad if self.params.rescale_grad is not None else 1.0 / batch.n_rows
        g_w0, rows, g_rows = self.gradients(batch, dy * scale, s, xv)
        self.apply_row_gradients(rows, g_rows, g_w0)
        return float(loss.sum())

    def train_epoch(self, data: _CSRTensors, order: torch.Tensor, target: torch.Tensor, batch_size: int, loss_fn: LossFn) -> float:
        """:meth:`torch_step` over the rows ``order`` of ``data`` in batches (``target`` in that
        order), or the native kernel's one call; the summed loss, NaN once it is not finite."""
        if self._kernel is None or loss_fn not in _KERNEL_LOSSES:
            total = 0.0
            for sl, batch in data.epoch(order, batch_size):
                total += self.torch_step(batch, target[sl], loss_fn)
                if not math.isfinite(total):
                    return math.nan
            return total
        n = int(order.numel())
        indptr, idx, val = data.permuted(order)
        starts = torch.arange(0, n, batch_size)
        max_nnz = int((indptr[torch.clamp(starts + batch_size, max=n)] - indptr[starts]).max()) if n else 0
        b = min(batch_size, n)  # the kernel's scratch, for the largest batch
        fwork = torch.empty((b + max_nnz) * (self.k + 1) + b)
        iwork = torch.empty(2 * max_nnz, dtype=torch.int64)
        slot = torch.full((self.feature_dim,), -1, dtype=torch.int32)
        p, ptr, step = self.params, _kernel.ptr, ctypes.c_int64(self.step_count)
        st, st0 = [*self.state_P, None, None][:2], [*self.state_w0, None, None][:2]
        total = self._kernel.fm_train_epoch(
            ptr(self.P), ptr(st[0]), ptr(st[1]), self.feature_dim, self.k + 1,
            ptr(self.w0), ptr(st0[0]), ptr(st0[1]),
            ptr(indptr), ptr(idx), ptr(val), n,
            ptr(target.to(torch.float32).contiguous()), batch_size, _KERNEL_LOSSES[loss_fn],
            -1.0 if p.rescale_grad is None else p.rescale_grad,
            ptr(self.lr), ptr(self.wd), p.bias_lr, p.bias_wd,
            self.clip, _OPTIMIZERS[p.optimizer], ctypes.byref(step), self.eps,
            ptr(slot), ptr(fwork), ptr(iwork),
        )  # fmt: skip
        self.step_count = step.value
        if total == -1.0:
            raise DataError(f"a feature index is outside [0, {self.feature_dim}): the data must have {self.feature_dim} columns")
        return total

    def apply_row_gradients(self, rows: torch.Tensor, g_rows: torch.Tensor, g_w0: torch.Tensor | None = None) -> None:
        """One lazy optimizer step with gradient ``g_rows[j]`` (``[dV | dw]``, summed over repeats)
        of table row ``rows[j]``; ``g_w0`` None leaves the global bias alone."""
        if rows.numel() and not bool((rows[1:] > rows[:-1]).all()):
            rows, inverse = torch.unique(rows, return_inverse=True)
            g_rows = torch.zeros(rows.numel(), self.k + 1).index_add_(0, inverse, g_rows)
        p = self.params
        self.step_count += 1
        if g_w0 is not None:
            new, state = self._step(self.w0, g_w0, self.state_w0, p.bias_lr, p.bias_wd)
            self.w0.copy_(new)
            for old, upd in zip(self.state_w0, state, strict=True):
                old.copy_(upd)
        weight = self.P.index_select(0, rows)
        state_rows = [st.index_select(0, rows) for st in self.state_P]
        new, state = self._step(weight, g_rows, state_rows, self.lr, self.wd)
        self.P.index_copy_(0, rows, new)
        for st, upd in zip(self.state_P, state, strict=True):
            st.index_copy_(0, rows, upd)

    # -- helpers ---------------------------------------------------------------------------
    def predict_raw(self, X: sp.csr_matrix, batch_size: int = 65536) -> np.ndarray:
        out = np.empty(X.shape[0], dtype=np.float32)
        with torch.no_grad():
            for rows, batch in csr_batches(X, batch_size):
                out[rows] = self.forward(batch)[0].numpy()
        return out

    def finite(self) -> bool:
        return bool(torch.isfinite(self.w0).all() and torch.isfinite(self.P).all())

    def snapshot(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.w0.clone(), self.P.clone()

    def restore(self, snap: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.w0, self.P = (t.clone() for t in snap)

    def to_artifact(self, metadata: dict[str, Any] | None = None) -> FittedFM:
        return FittedFM(
            w0=float(self.w0[0]), w=self.w.numpy().copy(), V=self.V.contiguous().numpy().copy(),
            predictor_type=self.params.predictor_type, config=self.params.to_dict(),
            metadata={"backend": "torch", **(metadata or {})},
        )  # fmt: skip


def _available_memory() -> int | None:
    """Bytes of memory this process can still get (Linux ``MemAvailable``), or None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, ValueError, IndexError, StopIteration):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def model_bytes(feature_dim: int, params: FMParams) -> int:
    """Memory the trainer allocates: the float32 table, its optimizer state, the copy made while
    initialising (and for the artifact) and, with early stopping, the best epoch's snapshot."""
    copies = 2 + _N_STATE.get(params.optimizer, 0) + (1 if params.early_stopping_patience else 0)
    return copies * feature_dim * (params.num_factors + 1) * 4


def _too_big(feature_dim: int, params: FMParams, available: int | None) -> ConfigError:
    have = f"only {available / 2**30:,.1f} GiB are available" if available is not None else "it could not be allocated"
    return ConfigError(
        f"the FM needs about {model_bytes(feature_dim, params) / 2**30:,.1f} GiB for {feature_dim:,} features x "
        f"{params.num_factors + 1} values in float32 with its {params.optimizer} state, but {have}; "
        "lower num_factors, or use fewer features (e.g. raise --min-customer-ratings / "
        "--min-product-ratings), or use optimizer='sgd'"
    )


def train_fm(X: sp.csr_matrix, y: np.ndarray, params: FMParams, *, eval_set: tuple[sp.csr_matrix, np.ndarray] | None = None,
             options: TrainOptions | None = None) -> FittedFM:  # fmt: skip
    """Train a factorization machine on ``X, y`` and return the fitted artifact."""
    options = options or TrainOptions()
    params.validate()
    classifier = params.predictor_type == "binary_classifier"
    X, y = check_design(X, y, "training data", feature_dim=params.feature_dim, classifier=classifier)
    if eval_set is not None:
        X_eval, y_eval = check_design(*eval_set, "evaluation data", feature_dim=X.shape[1], classifier=classifier)
    elif params.early_stopping_patience:
        raise DataError("early_stopping_patience needs an evaluation set (X_eval, y_eval)")
    loss_fn, metric = (logistic_loss, "logloss") if classifier else (squared_loss, "mse")
    rng, n = np.random.default_rng(params.seed), X.shape[0]
    trainer, data, targets = FMTrainer(X.shape[1], params), _CSRTensors(X), torch.from_numpy(y)
    bounds = None if classifier else target_range(y)  # a regressor's predictions stay within them

    def epoch_fn() -> float:
        order = torch.from_numpy(rng.permutation(n))
        return trainer.train_epoch(data, order, targets[order], params.mini_batch_size, loss_fn) / n

    def eval_fn() -> tuple[str, float, bool]:
        raw = trainer.predict_raw(X_eval)
        raw = torch.from_numpy(raw if classifier else np.clip(raw, *bounds))  # as predict_score
        return metric, float(loss_fn(raw, torch.from_numpy(y_eval))[0].mean()), False

    meta = run_epochs(trainer, params, epoch_fn, loss_name=metric, eval_fn=None if eval_set is None else eval_fn,
                      options=options, desc=f"FM {params.predictor_type}")  # fmt: skip
    meta["train_rows"] = n
    if not classifier:
        meta["target_range"] = bounds
    meta.update(options.metadata or {})
    return trainer.to_artifact(meta)
