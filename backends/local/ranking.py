"""Training the FM for ranking (the local backend).

Rows are ``[user part | candidate video]`` (:mod:`recsys.features`); only
``s(U, i) = w_i + <U, V_i>``, with ``U = sum_f x_f V_f`` over the user part, matters for ranking
a customer's videos. Losses over observed pairs against sampled unobserved videos j (those the
customer did rate are masked out):

* ``"softmax"`` -- sampled softmax against ``negatives`` distinct uniform videos shared by the
  batch, with the log-Q correction;
* ``"bpr"`` -- ``-log sigmoid(s(U, i) - s(U, j))`` for ``negatives`` uniform j per pair.

Gradients are closed-form (tested against autograd), applied with the FM's lazy optimizer. With
an evaluation set, NDCG@10 on at most :data:`EVAL_ROWS` of its rows is measured after every
epoch (for early stopping). :class:`_NativeSoftmax` is :func:`_softmax_step` with all but the
three matrix products in ``_fmkernel.c``, several times faster, equal to float32 rounding.
"""

from __future__ import annotations

import ctypes
import logging
import math

import numpy as np
import scipy.sparse as sp
import torch

from backends.base import TrainOptions
from backends.local import _kernel
from recsys.data.prepare import seen_matrix
from recsys.errors import DataError
from recsys.features import RankingData
from recsys.model import FittedFM
from recsys.params import FMParams
from recsys.ranking import rank_metrics, ranks_from_scores

from .fm import _OPTIMIZERS, FMTrainer, SparseBatch, _CSRTensors, csr_take
from .training import run_epochs

__all__ = ["train_fm_ranking", "RANKING_LOSSES", "EVAL_ROWS"]

log = logging.getLogger("recsys")

RANKING_LOSSES = ("softmax", "bpr")
_EVAL_CUTOFF = 10
#: Held-out rows scored after every epoch (a fixed sample of larger sets: ranking every video
#: for 500,000 customers each epoch would cost more than the training).
EVAL_ROWS = 20_000


class _Seen:
    """Which videos each customer rated in training, for masking sampled negatives."""

    def __init__(self, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int):
        m = seen_matrix(users, items, n_users, n_items)
        self.n_items = n_items
        self.matrix = m
        self.indptr = torch.from_numpy(m.indptr.astype(np.int64))
        self.indices = torch.from_numpy(m.indices.astype(np.int64))
        self.keys = torch.from_numpy(np.repeat(np.arange(n_users, dtype=np.int64), np.diff(m.indptr)) * n_items + m.indices)

    def entries(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(row in ``u``, video) for every video rated by the customers ``u``."""
        rows, pos = csr_take(self.indptr, u)
        return rows, self.indices[pos]

    def shared_mask(self, u: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """(len(u), len(neg)) True where customer u[r] rated video neg[c] (distinct); each
        distinct customer is looked up once (a batch repeats heavy raters)."""
        where = torch.full((self.n_items,), -1, dtype=torch.int64)
        where[neg] = torch.arange(len(neg))
        distinct, inverse = torch.unique(u, return_inverse=True)
        rows, cols = self.entries(distinct)
        col = where[cols]
        hit = col >= 0
        mask = torch.zeros(len(distinct), len(neg), dtype=torch.bool)
        mask[rows[hit], col[hit]] = True
        return mask[inverse]

    def pair_mask(self, u: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """True where customer u[r] rated video j[r, c]."""
        q = u[:, None] * self.n_items + j
        pos = torch.searchsorted(self.keys, q).clamp_(max=max(len(self.keys) - 1, 0))
        return self.keys[pos] == q


def _user_vectors(tr: FMTrainer, b: SparseBatch) -> torch.Tensor:
    """U = sum_f x_f V_f over each row's user part, (n_rows, k)."""
    e = tr.P.index_select(0, b.idx)[:, : tr.k] * b.val[:, None]
    return torch.zeros(b.n_rows, tr.k).index_add_(0, b.row, e)


def _apply(
    tr: FMTrainer, b: SparseBatch, g_user: torch.Tensor, rows: torch.Tensor, g_rows: torch.Tensor
) -> None:
    """The lazy step: dV_f = x_f * dU over the user part (their linear weights get no gradient:
    user-side terms cancel in every ranking loss), ``g_rows`` for the table rows ``rows``."""
    g_part = torch.cat([g_user[b.row] * b.val[:, None], torch.zeros(b.idx.numel(), 1)], 1)
    tr.apply_row_gradients(torch.cat([b.idx, rows]), torch.cat([g_part, g_rows]))


def _bpr_step(tr: FMTrainer, b: SparseBatch, i: torch.Tensor, j: torch.Tensor, valid: torch.Tensor, item_offset: int, scale: float) -> float:
    k = tr.k
    U = _user_vectors(tr, b)
    Pi = tr.P.index_select(0, i + item_offset)
    Pj = tr.P.index_select(0, j.reshape(-1) + item_offset).reshape(j.shape[0], j.shape[1], k + 1)
    Vi, wi = Pi[:, :k], Pi[:, k]
    Vj, wj = Pj[:, :, :k], Pj[:, :, k]
    x = ((U * Vi).sum(1) + wi)[:, None] - (torch.einsum("bk,bnk->bn", U, Vj) + wj)
    vf = valid.to(x.dtype)
    loss = float((torch.nn.functional.softplus(-x) * vf).sum())
    g = -torch.sigmoid(-x) * vf * scale  # dLoss/dx
    gsum = g.sum(1)
    g_u = Vi * gsum[:, None] - torch.einsum("bn,bnk->bk", g, Vj)
    g_i = torch.cat([U * gsum[:, None], gsum[:, None]], 1)
    g_j = torch.cat([-g[:, :, None] * U[:, None, :], -g[:, :, None]], 2).reshape(-1, k + 1)
    _apply(tr, b, g_u, torch.cat([i, j.reshape(-1)]) + item_offset, torch.cat([g_i, g_j]))
    return loss


def _softmax_step(tr: FMTrainer, b: SparseBatch, i: torch.Tensor, neg: torch.Tensor, hit: torch.Tensor, item_offset: int, n_items: int, scale: float) -> float:
    k = tr.k
    U = _user_vectors(tr, b)
    Pi = tr.P.index_select(0, i + item_offset)
    Pn = tr.P.index_select(0, neg + item_offset)
    Vi, wi = Pi[:, :k], Pi[:, k]
    Vn, wn = Pn[:, :k], Pn[:, k]
    s_pos = (U * Vi).sum(1) + wi
    # log-Q correction for uniformly sampled negatives: q_j = S / n_items
    s_neg = torch.addmm(wn[None, :] - math.log(neg.numel() / n_items), U, Vn.T).masked_fill_(hit, -math.inf)
    logp = torch.log_softmax(torch.cat([s_pos[:, None], s_neg], dim=1), dim=1)
    loss = float(-logp[:, 0].sum())
    g = logp.exp_().mul_(scale)
    g[:, 0] -= scale
    g_pos, g_neg = g[:, 0], g[:, 1:]
    g_u = torch.addmm(Vi * g_pos[:, None], g_neg, Vn)
    g_i = torch.cat([U * g_pos[:, None], g_pos[:, None]], 1)
    g_n = torch.cat([g_neg.T @ U, g_neg.sum(0)[:, None]], 1)
    _apply(tr, b, g_u, torch.cat([i, neg]) + item_offset, torch.cat([g_i, g_n]))
    return loss


class _NativeSoftmax:
    """:func:`_softmax_step` as three PyTorch matrix products and three kernel calls, over the
    rows of :meth:`epoch` (a batch is a slice), with buffers for the largest batch."""

    def __init__(self, kernel: ctypes.CDLL, tr: FMTrainer, part: _CSRTensors, users: torch.Tensor, items: torch.Tensor,
                 seen: _Seen, n_items: int, item_offset: int, batch_size: int, negatives: int):  # fmt: skip
        self.kernel, self.tr, self.part, self.seen = kernel, tr, part, seen
        self.all_users, self.all_items, self.n_items, self.item_offset = users, items, n_items, item_offset
        k, k1 = tr.k, tr.k + 1
        B, S = min(batch_size, len(users)), negatives
        widest = int(torch.diff(part.indptr).max()) if len(users) else 0
        self.U, self.Pi, self.Pn, self.Uext = (torch.empty(n, k1) for n in (B, B, S, B))  # U: [U | 1]
        self.g_pos, self.inv = torch.empty(B), torch.empty(B)
        self.Sc, self.gU, self.gN = torch.empty(B * S), torch.empty(B * k), torch.empty(S * k1)
        self.col_of = torch.full((n_items,), -1, dtype=torch.int32)
        self.slot = torch.full((tr.feature_dim,), -1, dtype=torch.int32)
        touched = B * widest + B + S
        self.grows, self.uniq, self.gu = torch.empty(touched * k1), torch.empty(touched, dtype=torch.int64), torch.empty(k)

    def epoch(self, order: torch.Tensor) -> None:
        """The training rows in the order ``order``: customers, videos and the user-part CSR."""
        self.users, self.items = self.all_users[order], self.all_items[order]
        self.indptr, self.idx, self.val = self.part.permuted(order)

    def step(self, start: int, stop: int, neg: torch.Tensor, scale: float) -> float:
        """One batch: rows ``start:stop`` of the epoch, ``neg`` the distinct sorted negatives."""
        kern, tr = self.kernel, self.tr
        k, k1, B, S = tr.k, tr.k + 1, stop - start, len(neg)
        # addresses: the batch's rows are a slice of the epoch's arrays (8-byte entries)
        up = (self.indptr.data_ptr() + 8 * start, self.idx.data_ptr(), self.val.data_ptr())
        items, users = self.items.data_ptr() + 8 * start, self.users.data_ptr() + 8 * start
        P, neg_p, ptr = tr.P.data_ptr(), neg.data_ptr(), _kernel.ptr
        U, Pn, Uext = self.U[:B], self.Pn[:S], self.Uext[:B]
        if kern.rank_gather(P, tr.feature_dim, k1, *up, items, self.item_offset, B, neg_p, S, math.log(S / self.n_items),
                            ptr(U), ptr(self.Pi), ptr(Pn)):  # fmt: skip
            raise DataError(f"a feature index is outside [0, {tr.feature_dim}) (the data does not match the layout)")
        Sc = self.Sc[: B * S].view(B, S)
        torch.mm(U, Pn.T, out=Sc)  # [U | 1] @ [V_neg | w_neg - log_q]^T
        loss = kern.rank_softmax(ptr(Sc), ptr(U), ptr(self.Pi), k1, users, B, neg_p, S, ptr(self.seen.indptr),
                                 ptr(self.seen.indices), ptr(self.col_of), scale, ptr(self.g_pos), ptr(self.inv),
                                 ptr(Uext))  # fmt: skip
        gU, gN = self.gU[: B * k].view(B, k), self.gN[: S * k1].view(S, k1)
        torch.mm(Sc, Pn[:, :k], out=gU)
        torch.mm(Sc.T, Uext, out=gN)
        step = ctypes.c_int64(tr.step_count)
        s0, s1 = (*(ptr(t) for t in tr.state_P), None, None)[:2]
        kern.rank_update(P, s0, s1, k1, *up, items, self.item_offset, B, neg_p, S, ptr(U), ptr(self.Pi), ptr(gU),
                         ptr(self.g_pos), ptr(self.inv), ptr(gN), ptr(tr.lr), ptr(tr.wd),
                         tr.clip, _OPTIMIZERS[tr.params.optimizer],
                         ctypes.byref(step), tr.eps, ptr(self.slot), ptr(self.grows), ptr(self.uniq), ptr(self.gu))  # fmt: skip
        tr.step_count = step.value
        return loss


def _ndcg_at(tr: FMTrainer, eval_set: RankingData, seen: _Seen) -> float:
    """NDCG@10 of held-out rows by :func:`recsys.ranking.ranks_from_scores` (as ``recsys run``)."""
    layout, k = eval_set.layout, tr.k
    rows = _CSRTensors(eval_set.user_part)
    table = tr.P[layout.item_offset : layout.item_offset + layout.n_items]

    def scores(r: np.ndarray) -> np.ndarray:
        U = _user_vectors(tr, rows.batch(torch.from_numpy(np.asarray(r, dtype=np.int64))))
        return torch.addmm(table[:, k][None, :], U, table[:, :k].T).numpy()

    ranks = ranks_from_scores(scores, np.arange(len(eval_set)), eval_set.items, layout.n_items, seen.matrix[eval_set.users])
    return rank_metrics(ranks, cutoffs=(_EVAL_CUTOFF,))[f"ndcg@{_EVAL_CUTOFF}"]


def train_fm_ranking(data: RankingData, params: FMParams, *, loss: str = "softmax", negatives: int = 512,
                     eval_set: RankingData | None = None, options: TrainOptions | None = None) -> FittedFM:  # fmt: skip
    """Train an FM for ranking on the observed pairs of ``data`` (see the module docstring):
    ``negatives`` per batch (softmax) or per pair (bpr). The result is a binary classifier (a
    logistic preference score) with ``metadata["objective"] = "ranking"`` and its layout."""
    options = options or TrainOptions()
    params.validate()
    if loss not in RANKING_LOSSES:
        raise DataError(f"ranking loss must be one of {', '.join(RANKING_LOSSES)}, got {loss!r}")
    if not isinstance(negatives, int) or isinstance(negatives, bool) or negatives < 1:
        raise DataError(f"negatives must be a positive integer, got {negatives!r}")
    layout = data.layout
    n_users, n_items, off = layout.n_users, layout.n_items, layout.item_offset
    if n_items < 2:
        raise DataError("ranking needs at least two items")
    if len(data) == 0:
        raise DataError("no training pairs for the ranking model")
    if eval_set is not None and len(eval_set):
        if eval_set.layout != layout:
            raise DataError("eval_set must have the training data's layout")
        if len(eval_set) > EVAL_ROWS:
            log.info("ranking FM: NDCG@10 after each epoch on %s of the %s held-out rows", f"{EVAL_ROWS:,}", f"{len(eval_set):,}")
            keep = np.sort(np.random.default_rng(params.seed).choice(len(eval_set), EVAL_ROWS, replace=False))
            eval_set = eval_set.subset(keep)
    elif params.early_stopping_patience:
        raise DataError("early_stopping_patience needs a non-empty eval_set")
    else:
        eval_set = None
    negatives = min(negatives, n_items - 1)
    rng = np.random.default_rng(params.seed)
    gen = torch.Generator().manual_seed(params.seed)
    tr = FMTrainer(layout.feature_dim, params)
    rows_data = _CSRTensors(sp.csr_matrix(data.user_part, dtype=np.float32))
    seen = _Seen(data.users, data.items, n_users, n_items)
    users, items = torch.from_numpy(data.users), torch.from_numpy(data.items)
    n, bs = len(data), params.mini_batch_size
    native = None
    if tr._kernel is not None and loss == "softmax":
        native = _NativeSoftmax(tr._kernel, tr, rows_data, users, items, seen, n_items, off, bs, negatives)

    def epoch_fn() -> float:
        order = torch.from_numpy(rng.permutation(n))
        if native is not None:
            native.epoch(order)
        total = 0.0
        for start in range(0, n, bs):
            r = order[start : start + bs]
            scale = params.rescale_grad if params.rescale_grad is not None else 1.0 / len(r)
            if loss == "bpr":
                j = torch.randint(0, n_items, (len(r), negatives), generator=gen)
                total += _bpr_step(tr, rows_data.batch(r), items[r], j, ~seen.pair_mask(users[r], j), off, scale)
            else:
                neg = torch.unique(torch.randint(0, n_items, (negatives,), generator=gen))
                if native is not None:
                    total += native.step(start, start + len(r), neg, scale)
                else:
                    hit = seen.shared_mask(users[r], neg)
                    total += _softmax_step(tr, rows_data.batch(r), items[r], neg, hit, off, n_items, scale)
            if not math.isfinite(total):
                return math.nan
        return total / n

    eval_fn = None if eval_set is None else lambda: (f"ndcg@{_EVAL_CUTOFF}", _ndcg_at(tr, eval_set, seen), True)

    meta = run_epochs(tr, params, epoch_fn, loss_name=loss, eval_fn=eval_fn, options=options, desc=f"FM ranking ({loss})")
    tr.params = FMParams(**{**params.to_dict(), "predictor_type": "binary_classifier"})
    meta.update({
        "objective": "ranking", "ranking_loss": loss, "negatives": negatives, "n_users": n_users,
        "n_items": n_items, "layout": layout.to_dict(), "train_rows": n,
    })  # fmt: skip
    meta.update(options.metadata or {})
    return tr.to_artifact(meta)
