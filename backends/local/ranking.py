"""Training the FM for ranking (the local backend).

Rows are ``[user part | candidate video]`` (:mod:`recsys.features`): the user part is the user
one-hot, optionally plus the customer's recent videos. For such rows the FM score is
``y(user part) + w_i + <U, V_i>`` with ``U = sum_f x_f V_f`` over the user part, and only
``s(U, i) = w_i + <U, V_i>`` matters for ranking a customer's videos. Two losses over observed
(customer, video) pairs against sampled unobserved videos j:

* ``"softmax"`` -- sampled softmax: cross-entropy of the observed video against ``negatives``
  distinct uniformly sampled videos shared by the batch, with the log-Q correction;
* ``"bpr"`` -- Bayesian personalised ranking: ``-log sigmoid(s(U, i) - s(U, j))`` for
  ``negatives`` uniformly sampled j per observed pair.

Sampled videos the customer did rate are masked out. Gradients are closed-form (checked
against autograd in the tests) and applied with the FM's lazy optimizer (per-part learning
rates and weight decays). With an evaluation set and ``early_stopping_patience``, NDCG@10 on
it is measured after every epoch and the best epoch's parameters are kept. The result is an
ordinary :class:`recsys.model.FittedFM` that goes through the same vectors -> k-NN path.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from tqdm.auto import tqdm

from backends.base import EpochInfo, TrainOptions
from recsys.data.prepare import seen_matrix
from recsys.errors import DataError
from recsys.features import RankingData
from recsys.model import FittedFM
from recsys.params import FMParams

from .fm import FMTrainer, SparseBatch, _CSRTensors, _diverged, torch_threads

__all__ = ["train_fm_ranking", "RANKING_LOSSES"]

log = logging.getLogger("recsys")

RANKING_LOSSES = ("softmax", "bpr")
_EVAL_CUTOFF = 10


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
        starts = self.indptr[u]
        lengths = self.indptr[u + 1] - starts
        rows = torch.repeat_interleave(torch.arange(len(u)), lengths)
        offsets = torch.cumsum(lengths, 0) - lengths
        pos = starts[rows] + (torch.arange(int(lengths.sum())) - offsets[rows])
        return rows, self.indices[pos]

    def shared_mask(self, u: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
        """(len(u), len(neg)) True where customer u[r] rated video neg[c]; neg must be distinct."""
        where = torch.full((self.n_items,), -1, dtype=torch.int64)
        where[neg] = torch.arange(len(neg))
        rows, cols = self.entries(u)
        col = where[cols]
        hit = col >= 0
        mask = torch.zeros(len(u), len(neg), dtype=torch.bool)
        mask[rows[hit], col[hit]] = True
        return mask

    def pair_mask(self, u: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """True where customer u[r] rated video j[r, c]."""
        q = u[:, None] * self.n_items + j
        pos = torch.searchsorted(self.keys, q).clamp_(max=max(len(self.keys) - 1, 0))
        return self.keys[pos] == q


def _user_vectors(tr: FMTrainer, b: SparseBatch) -> torch.Tensor:
    """U = sum_f x_f V_f over each row's user part, (n_rows, k)."""
    e = tr.P.index_select(0, b.idx)[:, : tr.k] * b.val[:, None]
    return torch.zeros(b.n_rows, tr.k).index_add_(0, b.row, e)


def _user_part_grads(tr: FMTrainer, b: SparseBatch, g_user: torch.Tensor) -> torch.Tensor:
    """Spread dLoss/dU onto the user-part features: dV_f = x_f * dU (their linear weights get
    no gradient: user-side terms cancel in every ranking loss)."""
    g = torch.zeros(b.idx.numel(), tr.k + 1)
    g[:, : tr.k] = g_user.index_select(0, b.row) * b.val[:, None]
    return g


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
    g_i = torch.empty_like(Pi)
    g_i[:, :k] = U * gsum[:, None]
    g_i[:, k] = gsum
    g_j = torch.empty_like(Pj)
    g_j[:, :, :k] = -g[:, :, None] * U[:, None, :]
    g_j[:, :, k] = -g
    rows = torch.cat([b.idx, i + item_offset, j.reshape(-1) + item_offset])
    tr.apply_row_gradients(rows, torch.cat([_user_part_grads(tr, b, g_u), g_i, g_j.reshape(-1, k + 1)]))
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
    g_i = torch.empty_like(Pi)
    g_i[:, :k] = U * g_pos[:, None]
    g_i[:, k] = g_pos
    g_n = torch.empty_like(Pn)
    g_n[:, :k] = g_neg.T @ U
    g_n[:, k] = g_neg.sum(0)
    rows = torch.cat([b.idx, i + item_offset, neg + item_offset])
    tr.apply_row_gradients(rows, torch.cat([_user_part_grads(tr, b, g_u), g_i, g_n]))
    return loss


def _ndcg_at(tr: FMTrainer, data: _CSRTensors, users: torch.Tensor, items: torch.Tensor, seen: _Seen, item_offset: int, n_items: int, cutoff: int = _EVAL_CUTOFF) -> float:
    """NDCG@cutoff of held-out (customer, video) rows, ranking every video the customer has not
    rated in training (ties: lower index first)."""
    k = tr.k
    item_table = tr.P[item_offset : item_offset + n_items]
    total = 0.0
    for start in range(0, len(users), 1024):
        r = torch.arange(start, min(start + 1024, len(users)))
        U = _user_vectors(tr, data.batch(r))
        s = torch.addmm(item_table[:, k][None, :], U, item_table[:, :k].T)
        rows, cols = seen.entries(users[r])
        s[rows, cols] = -math.inf
        t = items[r]
        st = s[torch.arange(len(r)), t]
        rank = (s > st[:, None]).sum(1) + ((s == st[:, None]) & (torch.arange(n_items)[None, :] < t[:, None])).sum(1) + 1
        total += float(torch.where(rank <= cutoff, 1.0 / torch.log2(rank.double() + 1.0), torch.zeros(())).sum())
    return total / max(len(users), 1)


def train_fm_ranking(
    data: RankingData,
    params: FMParams,
    *,
    loss: str = "softmax",
    negatives: int = 512,
    eval_set: RankingData | None = None,
    options: TrainOptions | None = None,
) -> FittedFM:
    """Train an FM for ranking on observed (user, item) index pairs; see the module docstring.

    Parameters
    ----------
    data : RankingData
        Observed training pairs, their layout (the model's ``feature_dim``) and the customer
        side of each row (:func:`recsys.features.pair_user_features` adds recent history).
    params : FMParams
        FM hyperparameters (``early_stopping_patience`` uses ``eval_set``).
    loss : {"softmax", "bpr"}
    negatives : int
        Shared negatives per batch (softmax) or per observed pair (bpr).
    eval_set : RankingData, optional
        Held-out pairs scored by NDCG@10 after every epoch.
    options : TrainOptions, optional

    Returns
    -------
    FittedFM
        ``predictor_type="binary_classifier"`` (a logistic preference score), with
        ``metadata["objective"] = "ranking"`` and the layout in ``metadata["layout"]``.
    """
    options = options or TrainOptions()
    callbacks, show_progress, metadata = options.callbacks, options.show_progress, options.metadata
    params.validate()
    if loss not in RANKING_LOSSES:
        raise DataError(f"ranking loss must be one of {', '.join(RANKING_LOSSES)}, got {loss!r}")
    if not isinstance(negatives, int) or isinstance(negatives, bool) or negatives < 1:
        raise DataError(f"negatives must be a positive integer, got {negatives!r}")
    layout = data.layout
    n_users, n_items = layout.n_users, layout.n_items
    if n_items < 2:
        raise DataError("ranking needs at least two items")
    if len(data) == 0:
        raise DataError("no training pairs for the ranking model")
    users, items, user_part = data.users, data.items, data.user_part
    eval_data = None
    if eval_set is not None and len(eval_set):
        if eval_set.layout != layout:
            raise DataError("eval_set must have the training data's layout")
        eval_data = (_CSRTensors(eval_set.user_part), torch.from_numpy(eval_set.users), torch.from_numpy(eval_set.items))
    elif params.early_stopping_patience:
        raise DataError("early_stopping_patience needs a non-empty eval_set")
    negatives = min(negatives, n_items - 1)
    rng = np.random.default_rng(params.seed)
    gen = torch.Generator().manual_seed(params.seed)
    tr = FMTrainer(layout.feature_dim, params)
    data = _CSRTensors(sp.csr_matrix(user_part, dtype=np.float32))
    seen = _Seen(users, items, n_users, n_items)
    users_t, items_t = torch.from_numpy(users), torch.from_numpy(items)
    n, bs = users.size, params.mini_batch_size
    history: list[dict[str, float]] = []
    best: tuple[float, int, Any] | None = None
    t_start = time.perf_counter()
    with torch_threads(params.threads), torch.no_grad():
        bar = tqdm(range(params.epochs), desc=f"FM ranking ({loss})", unit="epoch", disable=None if show_progress else True, leave=False)
        for epoch in bar:
            t0 = time.perf_counter()
            order = torch.from_numpy(rng.permutation(n))
            total = 0.0
            for start in range(0, n, bs):
                r = order[start : start + bs]
                b = data.batch(r)
                u, i = users_t[r], items_t[r]
                scale = params.rescale_grad if params.rescale_grad is not None else 1.0 / len(r)
                if loss == "bpr":
                    j = torch.randint(0, n_items, (len(r), negatives), generator=gen)
                    total += _bpr_step(tr, b, i, j, ~seen.pair_mask(u, j), layout.item_offset, scale)
                else:
                    neg = torch.unique(torch.randint(0, n_items, (negatives,), generator=gen))
                    total += _softmax_step(tr, b, i, neg, seen.shared_mask(u, neg), layout.item_offset, n_items, scale)
                if not math.isfinite(total):
                    raise _diverged(f"the ranking loss in epoch {epoch + 1}", params)
            if not tr.finite():
                raise _diverged(f"a model parameter after epoch {epoch + 1}", params)
            info = EpochInfo(epoch=epoch + 1, train_loss=total / n, seconds=time.perf_counter() - t0)
            row = {"epoch": epoch + 1, f"train_{loss}": info.train_loss}
            postfix = {loss: f"{info.train_loss:.4f}"}
            if eval_data is not None:
                ndcg = _ndcg_at(tr, *eval_data, seen, layout.item_offset, n_items)
                info.eval_metric = {"ndcg@10": ndcg}
                row["eval_ndcg@10"] = postfix["eval_ndcg@10"] = ndcg
                if best is None or ndcg > best[0]:
                    best = (ndcg, epoch + 1, tr.snapshot())
            bar.set_postfix(postfix)
            history.append(row)
            log.debug("ranking epoch %d: %s", epoch + 1, row)
            stop = any(bool(cb(info)) for cb in callbacks)
            if params.early_stopping_patience and best is not None and epoch + 1 - best[1] >= params.early_stopping_patience:
                log.info("ranking FM: early stop after epoch %d (best NDCG@10 %.4f at epoch %d)", epoch + 1, best[0], best[1])
                stop = True
            if stop:
                break
        bar.close()
    if best is not None:
        tr.restore(best[2])
    tr.params = FMParams(**{**params.to_dict(), "predictor_type": "binary_classifier"})
    meta: dict[str, Any] = {
        "objective": "ranking",
        "ranking_loss": loss,
        "negatives": negatives,
        "n_users": n_users,
        "n_items": n_items,
        "layout": layout.to_dict(),
        "history": history,
        "train_seconds": time.perf_counter() - t_start,
        "train_rows": n,
    }
    if best is not None:
        meta["best_epoch"], meta["best_eval_ndcg@10"] = best[1], best[0]
    meta.update(metadata or {})
    return tr.to_artifact(meta)
