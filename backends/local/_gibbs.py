"""Gibbs coordinate updates of a Bayesian factorization machine, in numpy, and their native twin.

A coordinate ``theta`` (a linear weight ``w_j`` or a factor ``V_jf``) enters the FM output
linearly, ``y(x) = g(x) + theta h(x)``, so given everything else it is Gaussian (Rendle 2012,
"Factorization Machines with libFM")::

    precision = lambda + alpha sum_n h_n^2
    mean      = (alpha sum_n (e_n + theta h_n) h_n + lambda mu) / precision

with ``e_n = target_n - y(x_n)`` the cached residual of row ``n``. For ``w_j``, ``h = x_j``; for
``V_jf``, ``h = x_j (q_f(x) - x_j V_jf)`` with ``q_f(x) = sum_i x_i V_if`` the row's factor sum.
After a coordinate moves by ``d``, ``e -= d h``. ``q`` is not cached per row (``n * k`` values
read and written at random every sweep cost more than they save), but summed (:class:`Rows`).

* **Per-row columns** (a CSR design ``X``): feature by feature (``w_j``, then ``V_j0 ..
  V_j,k-1``); the features of a *one-hot* group (the user, the video, the time bucket) touch
  disjoint rows, so :func:`update_columns` updates them all at once with segment sums.
* **Relation blocks** (Rendle 2013, "Scaling factorization machines to relational data"): row
  ``n`` carries row ``index[n]`` of a table ``T`` (e.g. a customer's rated videos, shared by all
  of their rows); sums over rows are kept per table row, so a column costs O(its table entries).

:func:`kernel` returns the C build of the same updates (``_mcmc.c``), or ``None``; both take the
standard normals from the caller (per feature ``k + 1``: ``[:, 0]`` for ``w``, ``[:, 1 + f]``
for ``V[:, f]``), so both paths give the same chain.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from backends.local._kernel import open_library, switched

__all__ = ["Hyper", "Rows", "ColumnGroup", "Relation", "update_columns", "update_relation", "kernel", "NativeUpdates"]

#: must equal MCMC_KERNEL_ABI in _mcmc.c
MCMC_KERNEL_ABI = 3


@dataclass
class Hyper:
    """Per-group prior means and precisions: ``mu_w, lam_w`` (G,), ``mu_v, lam_v`` (G, k)."""

    mu_w: np.ndarray
    lam_w: np.ndarray
    mu_v: np.ndarray
    lam_v: np.ndarray


def _draw(lam: Any, mu: Any, alpha: float, s2: Any, se: Any, theta: Any, z: Any) -> Any:
    """A coordinate's conditional draw (precision and mean as in the module docstring)."""
    prec = lam + alpha * s2
    return (alpha * (se + theta * s2) + lam * mu) / prec + z / np.sqrt(prec)


# -- per-row columns -------------------------------------------------------------------------
class Rows:
    """The training rows: per-row columns ``X`` (CSR and CSC, float64) and each relation
    block's ``index``; :meth:`q` sums a row's factors from ``V`` and the blocks' ``Q``."""

    def __init__(self, X: sp.spmatrix, indexes: list[np.ndarray]):
        self.X = X = sp.csr_matrix(X, dtype=np.float64)
        X.sum_duplicates()
        X.sort_indices()
        self.Xc = X.tocsc()
        self.Xc.sort_indices()
        self.indexes = [np.ascontiguousarray(i, dtype=np.int64) for i in indexes]

    def q(self, rows: np.ndarray, V: np.ndarray, Q: list[np.ndarray]) -> np.ndarray:
        out = np.asarray(self.X[rows] @ V[: self.X.shape[1]])
        for index, Qb in zip(self.indexes, Q, strict=True):
            out = out + Qb[index[rows]]
        return out


class ColumnGroup:
    """The per-row columns ``feats`` of one group and, per entry in CSC order, its ``rows``,
    position ``t`` in ``feats`` and value ``x`` (``ptr``: where each feature's entries start)."""

    def __init__(self, Xc: sp.csc_matrix, feats: np.ndarray, group: int):
        self.feats, self.group = np.ascontiguousarray(feats, dtype=np.int64), int(group)
        sub = Xc[:, self.feats]
        self.ptr, self.rows = sub.indptr.astype(np.int64), sub.indices.astype(np.int64)
        self.t = np.repeat(np.arange(len(self.feats), dtype=np.int64), np.diff(self.ptr))
        self.x = sub.data.astype(np.float64)
        self.one_hot = bool(np.bincount(self.rows, minlength=1).max(initial=0) <= 1)

    def entries(self, t0: int) -> slice:
        """Where the entries of the feature at position ``t0`` are."""
        return slice(self.ptr[t0], self.ptr[t0 + 1])


def _update_disjoint(feats: np.ndarray, rows: np.ndarray, t: np.ndarray, x: np.ndarray, g: int, data: Rows, state: dict,
                     alpha: float, hyper: Hyper, noise: np.ndarray) -> None:  # fmt: skip
    """Features that share no row: all of them at once (segment sums over their rows)."""
    e, w, V = state["e"], state["w"], state["V"]
    nf, k = len(feats), V.shape[1]
    el = e[rows]
    s2, se = np.bincount(t, x * x, minlength=nf), np.bincount(t, el * x, minlength=nf)
    wj = w[feats]
    wn = _draw(hyper.lam_w[g], hyper.mu_w[g], alpha, s2, se, wj, noise[:, 0])
    w[feats] = wn
    el -= (wn - wj)[t] * x
    Vj = V[feats]
    H = x[:, None] * (data.q(rows, V, state["Q"]) - x[:, None] * Vj[t])
    dV = np.zeros((nf, k))
    for f in range(k):
        h = H[:, f]
        s2, se = np.bincount(t, h * h, minlength=nf), np.bincount(t, el * h, minlength=nf)
        vn = _draw(hyper.lam_v[g, f], hyper.mu_v[g, f], alpha, s2, se, Vj[:, f], noise[:, 1 + f])
        dV[:, f] = vn - Vj[:, f]
        el -= dV[t, f] * h
    V[feats] = Vj + dV
    e[rows] = el


def update_columns(group: ColumnGroup, data: Rows, state: dict, alpha: float, hyper: Hyper, noise: np.ndarray) -> None:
    """Update the per-row columns of ``group`` in place (``state``: e, w, V, Q)."""
    if group.one_hot:
        _update_disjoint(group.feats, group.rows, group.t, group.x, group.group, data, state, alpha, hyper, noise)
        return
    for t0 in range(len(group.feats)):
        sel = group.entries(t0)
        t = np.zeros(sel.stop - sel.start, dtype=np.int64)
        _update_disjoint(group.feats[t0 : t0 + 1], group.rows[sel], t, group.x[sel], group.group, data, state, alpha,
                         hyper, noise[t0 : t0 + 1])  # fmt: skip


def update_linear(group: ColumnGroup, state: dict, alpha: float, hyper: Hyper, noise: np.ndarray) -> None:
    """Update the weights of a linear-only group (its factors stay 0), one column at a time."""
    e, w, g = state["e"], state["w"], group.group
    for t0, j in enumerate(group.feats):
        rows, x = group.rows[group.entries(t0)], group.x[group.entries(t0)]
        s2, se = float(x @ x), float(e[rows] @ x)
        wn = float(_draw(hyper.lam_w[g], hyper.mu_w[g], alpha, s2, se, w[j], noise[t0]))
        e[rows] -= (wn - w[j]) * x
        w[j] = wn


# -- relation blocks -------------------------------------------------------------------------
class Relation:
    """A relation block ready for the updates: position ``pos`` among the blocks, table in CSC
    form, design rows per table row ``cnt``, first design column ``offset``, ``col_group``."""

    def __init__(self, pos: int, index: np.ndarray, table: sp.spmatrix, offset: int, col_group: np.ndarray):
        self.pos, self.offset = int(pos), int(offset)
        T = sp.csc_matrix(table, dtype=np.float64)
        T.sum_duplicates()
        T.sort_indices()
        self.n_ent, self.width = T.shape
        self.ptr, self.ent, self.val = T.indptr.astype(np.int64), T.indices.astype(np.int64), T.data.astype(np.float64)
        self.T = T.tocsr()  # entity x column, for whole-table products
        self.cnt = np.bincount(index, minlength=self.n_ent).astype(np.float64)
        self.col_group = np.ascontiguousarray(col_group, dtype=np.int64)

    def factor_sums(self, V: np.ndarray) -> np.ndarray:
        """Per entity: ``Q_m = T_m V`` (n_ent, k) for this block's columns."""
        return np.ascontiguousarray(self.T @ V[self.offset : self.offset + self.width])


def update_relation(rel: Relation, data: Rows, state: dict, alpha: float, hyper: Hyper, noise: np.ndarray) -> None:
    """Update a relation block's columns (all ``w_j``, then for each ``f`` all ``V_jf``) and
    ``state["Q"][rel.pos]`` in place."""
    e, Q = state["e"], state["Q"][rel.pos]
    w = state["w"][rel.offset : rel.offset + rel.width]  # views: updated in place
    V = state["V"][rel.offset : rel.offset + rel.width]
    k, idx, cnt, ne = V.shape[1], data.indexes[rel.pos], rel.cnt, rel.n_ent
    cols = [(rel.ent[rel.ptr[j] : rel.ptr[j + 1]], rel.val[rel.ptr[j] : rel.ptr[j + 1]]) for j in range(rel.width)]
    # linear weights: E_m = residual sum of entity m's rows, L_m = T_m . w
    E, L = np.bincount(idx, e, minlength=ne), rel.T @ w
    L_old = L.copy()
    for j, (m, x) in enumerate(cols):
        g = rel.col_group[j]
        s2, se = float(np.sum(x * x * cnt[m])), float(np.sum(x * E[m]))
        wn = _draw(hyper.lam_w[g], hyper.mu_w[g], alpha, s2, se, w[j], noise[j, 0])
        d = wn - w[j]
        w[j] = wn
        E[m] -= d * x * cnt[m]
        L[m] += d * x
    e -= (L - L_old)[idx]
    # factors: the block's part of y for factor f is 1/2 (Q_m^2 - D_m) + Q_m r_n
    T2 = rel.T.multiply(rel.T).tocsr()
    Vx = state["V"][: data.X.shape[1]]
    for f in range(k):
        Q[:, f] = rel.T @ V[:, f]
        D = T2 @ (V[:, f] ** 2)
        r = data.X @ Vx[:, f]
        for b, (index, Qb) in enumerate(zip(data.indexes, state["Q"], strict=True)):
            if b != rel.pos:
                r = r + Qb[index, f]
        S1, S2 = np.bincount(idx, r, minlength=ne), np.bincount(idx, r * r, minlength=ne)
        E, G = np.bincount(idx, e, minlength=ne), np.bincount(idx, e * r, minlength=ne)
        Q_old, D_old = Q[:, f].copy(), D.copy()
        for j, (m, x) in enumerate(cols):
            g, v = rel.col_group[j], V[j, f]
            c = Q[m, f] - x * v
            s2 = float(np.sum(x * x * (cnt[m] * c * c + 2.0 * c * S1[m] + S2[m])))
            se = float(np.sum(x * (c * E[m] + G[m])))
            vn = _draw(hyper.lam_v[g, f], hyper.mu_v[g, f], alpha, s2, se, v, noise[j, 1 + f])
            d = vn - v
            V[j, f] = vn
            E[m] -= d * x * (cnt[m] * c + S1[m])
            G[m] -= d * x * (c * S1[m] + S2[m])
            Q[m, f] += d * x
            D[m] += x * x * (vn * vn - v * v)
        qn = Q[:, f]
        dq = (qn - Q_old)[idx]
        da = (0.5 * (qn * qn - D) - 0.5 * (Q_old * Q_old - D_old))[idx]
        e -= da + dq * r


# -- the native kernel -----------------------------------------------------------------------
_P, _I64, _F64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
_ROWS = [_P, _P, _P, _I64, _P, _P]  # row_ptr, row_col, row_val, n_rel, rel_index, rel_Q
_HYPER = [_F64, _P, _P, _P, _P]  # alpha, mu_w, lam_w, mu_v, lam_v
_SIGNATURES = {
    "mcmc_kernel_abi": (_I64, []),
    "mcmc_update_columns": (None, [
        _I64, _P, _P, _P, *_ROWS,  # k, e, w, V
        _P, _P, _P, _P, _I64, _I64,  # ent_ptr, ent_row, ent_val, feats, n_feats, group
        *_HYPER, _P, _P, _P, _P, _P,  # noise, el, H, s2v, qr
    ]),
    "mcmc_update_relation": (None, [
        _I64, _I64, _P, _P, *_ROWS, _I64,  # n, k, e, Vall, self
        _I64, _P, _I64, _P, _P, _P,  # n_ent, cnt, width, tcol_ptr, tcol_ent, tcol_val
        _P, _P, _P, *_HYPER, _P,  # w, V, col_group, noise
        _P, _P, _P, _P,  # rec, Qold, Dold, r
    ]),
}  # fmt: skip


def kernel() -> ctypes.CDLL | None:
    """The native Gibbs kernel, or None (not built, or ``RECSYS_NATIVE=off``)."""
    return switched(_library, "the native Gibbs kernel (backends/local/_mcmc.c) is")


@functools.cache
def _library() -> ctypes.CDLL | None:
    return open_library("_fmkernel", MCMC_KERNEL_ABI, _SIGNATURES)


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


def _pointers(arrays: list[np.ndarray]) -> ctypes.Array:
    return (ctypes.c_void_p * max(len(arrays), 1))(*[a.ctypes.data for a in arrays])


class _RowsLayout:
    """The rows' design in C form: CSR arrays, the blocks' indexes and the caller's Q arrays."""

    def __init__(self, X: sp.csr_matrix, indexes: list[np.ndarray], Q: list[np.ndarray]):
        self.keep = [X.indptr.astype(np.int64), X.indices.astype(np.int64), np.ascontiguousarray(X.data), *indexes]
        self.args = (*(_ptr(a) for a in self.keep[:3]), len(indexes), _pointers(self.keep[3:]), _pointers(Q))


def _others(X: sp.csr_matrix, group: ColumnGroup) -> sp.csr_matrix:
    """Row p: the entries of design row ``group.rows[p]`` other than the group's entry p."""
    rows = X[group.rows]
    counts = np.diff(rows.indptr)
    keep = rows.indices != np.repeat(group.feats[group.t], counts)
    kept = np.bincount(np.repeat(np.arange(rows.shape[0]), counts), weights=keep, minlength=rows.shape[0])
    ptr = np.r_[0, np.cumsum(kept.astype(np.int64))]
    return sp.csr_matrix((rows.data[keep], rows.indices[keep], ptr), shape=rows.shape)


class NativeUpdates:
    """Calls into ``_mcmc.c`` with scratch sized once for a design; each column group gets a
    copy of its rows in entry order (read sequentially)."""

    def __init__(self, lib: ctypes.CDLL, data: Rows, k: int, groups: list[ColumnGroup], relations: list[Relation],
                 Q: list[np.ndarray], zero_factors: np.ndarray | None = None):  # fmt: skip
        self.lib, self.k, X = lib, k, data.X
        if zero_factors is not None and zero_factors.any():  # columns whose factors stay 0 add nothing to q
            X = sp.csr_matrix(X @ sp.diags((~zero_factors[: X.shape[1]]).astype(np.float64)))
            X.eliminate_zeros()
        self.all_rows = _RowsLayout(X, data.indexes, Q)
        self.group_rows = {id(g): _RowsLayout(_others(X, g), [i[g.rows] for i in data.indexes], Q) for g in groups}
        longest = max([int(np.diff(g.ptr).max(initial=0)) for g in groups], default=0)
        self.el, self.H = np.empty(max(longest, 1)), np.empty(max(longest * k, 1))
        self.small = [np.empty(max(k, 1)) for _ in range(2)]  # s2v, qr
        n_ent = max([r.n_ent for r in relations], default=0)
        self.rel_scratch = [np.empty(max(n_ent * 8, 1)), np.empty(max(n_ent, 1)), np.empty(max(n_ent, 1))]
        self.r = np.empty(max(data.X.shape[0], 1))

    def columns(self, group: ColumnGroup, data: Rows, state: dict, alpha: float, hyper: Hyper, noise: np.ndarray) -> None:
        noise = np.ascontiguousarray(noise, dtype=np.float64)
        self.lib.mcmc_update_columns(
            self.k, _ptr(state["e"]), _ptr(state["w"]), _ptr(state["V"]), *self.group_rows[id(group)].args,
            _ptr(group.ptr), _ptr(group.rows), _ptr(group.x), _ptr(group.feats), len(group.feats), group.group,
            float(alpha), _ptr(hyper.mu_w), _ptr(hyper.lam_w), _ptr(hyper.mu_v), _ptr(hyper.lam_v),
            _ptr(noise), _ptr(self.el), _ptr(self.H), *(_ptr(a) for a in self.small),
        )  # fmt: skip

    def relation(self, rel: Relation, data: Rows, state: dict, alpha: float, hyper: Hyper, noise: np.ndarray) -> None:
        noise = np.ascontiguousarray(noise, dtype=np.float64)
        self.lib.mcmc_update_relation(
            len(state["e"]), self.k, _ptr(state["e"]), _ptr(state["V"]), *self.all_rows.args, rel.pos,
            rel.n_ent, _ptr(rel.cnt), rel.width, _ptr(rel.ptr), _ptr(rel.ent), _ptr(rel.val),
            _ptr(state["w"][rel.offset :]), _ptr(state["V"][rel.offset :]), _ptr(rel.col_group),
            float(alpha), _ptr(hyper.mu_w), _ptr(hyper.lam_w), _ptr(hyper.mu_v), _ptr(hyper.lam_v),
            _ptr(noise), *(_ptr(a) for a in self.rel_scratch), _ptr(self.r),
        )  # fmt: skip
