"""Tests of the ranking FM's training (backends.local.ranking and the ranking half of the native
kernel).

References: each loss written row by row and differentiated by autograd, NDCG@10 from a sorted
list, a planted two-group preference structure, and the PyTorch step for the native one (the two
must agree to float32 rounding; ``RECSYS_NATIVE`` selects the path).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from backends.local import _kernel
from backends.local.fm import FMTrainer, _CSRTensors
from backends.local.ranking import (
    _bpr_step,
    _NativeSoftmax,
    _ndcg_at,
    _Seen,
    _softmax_step,
    train_fm_ranking,
)
from recsys.errors import DataError
from recsys.features import FeatureLayout, RankingData
from recsys.params import FMParams
from tests.test_fm import KERNEL, THREADS, make_trainer, needs_kernel


# ---------------------------------------------------------------------------------------------
# one step of each loss against autograd
# ---------------------------------------------------------------------------------------------
def _ranking_case(rng: np.random.Generator):
    layout = FeatureLayout(n_users=4, n_items=6, history_length=3)
    # user part: one-hot user + several weighted history items (weights as the library makes them)
    users = np.array([0, 1, 2, 3, 1, 0, 2])
    hist = [
        [(2, 0.5), (4, 0.3), (5, 0.2)],
        [(0, 1.0)],
        [],
        [(1, 0.6), (3, 0.4)],
        [(2, 0.7), (0, 0.3)],
        [(5, 1.0)],
        [(4, 0.25), (1, 0.75)],
    ]
    rows, cols, vals = [], [], []
    for r, (u, h) in enumerate(zip(users, hist, strict=True)):
        rows.append(r), cols.append(u), vals.append(1.0)
        for item, weight in h:
            rows.append(r), cols.append(layout.history_offset + item), vals.append(weight)
    user_part = sp.csr_matrix(
        (np.array(vals, np.float32), (rows, cols)), shape=(len(users), layout.feature_dim)
    )
    # positives repeat across rows (item 3 twice) and coincide with other rows' negatives
    pos = np.array([3, 0, 5, 3, 2, 1, 4])
    return layout, users, user_part, pos


def _sgd_ranking_trainer(dim: int, rng: np.random.Generator) -> FMTrainer:
    rates = {f"{part}_{what}": value for part in ("bias", "linear", "factors") for what, value in (("lr", 1.0), ("wd", 0.0))}
    return make_trainer(dim, 3, rng, scale=0.6, optimizer="sgd", **rates)


def _user_vectors_ref(P: torch.Tensor, user_part: sp.csr_matrix, k: int) -> list[torch.Tensor]:
    up = user_part.tocsr()
    out = []
    for r in range(up.shape[0]):
        acc = torch.zeros(k, dtype=P.dtype)
        for p in range(up.indptr[r], up.indptr[r + 1]):
            acc = acc + float(np.float32(up.data[p])) * P[up.indices[p], :k]
        out.append(acc)
    return out


def test_bpr_step_applies_the_autograd_gradient(float64):
    rng = np.random.default_rng(21)
    layout, users, user_part, pos = _ranking_case(rng)
    tr = _sgd_ranking_trainer(layout.feature_dim, rng)
    k, off = tr.k, layout.item_offset
    j = torch.tensor([[1, 3, 0], [3, 3, 2], [0, 5, 1], [4, 2, 3], [1, 5, 0], [2, 2, 4], [3, 0, 5]])
    valid = torch.ones_like(j, dtype=torch.bool)
    # masked negatives, among them j == i (row 1)
    valid[0, 1] = valid[1, 0] = valid[1, 1] = valid[3, 2] = valid[5, 0] = False
    scale = 0.45
    b = _CSRTensors(user_part).batch(torch.arange(len(users)))
    P0, w00 = tr.P.clone(), tr.w0.clone()

    with torch.no_grad():
        loss = _bpr_step(tr, b, torch.from_numpy(pos), j, valid, off, scale)
    applied = P0 - tr.P  # sgd, lr 1, wd 0: exactly the gradient

    P = P0.clone().requires_grad_(True)
    vu = _user_vectors_ref(P, user_part, k)

    def score(r: int, item: int) -> torch.Tensor:
        return P[off + item, k] + vu[r] @ P[off + item, :k]

    terms = []
    for r in range(len(users)):
        for c in range(j.shape[1]):
            if valid[r, c]:
                terms.append(
                    torch.nn.functional.softplus(-(score(r, int(pos[r])) - score(r, int(j[r, c]))))
                )
    L = torch.stack(terms).sum()
    (scale * L).backward()
    assert loss == pytest.approx(L.detach().item(), rel=1e-12)
    np.testing.assert_allclose(applied.numpy(), P.grad.numpy(), rtol=1e-10, atol=1e-13)
    assert torch.equal(tr.w0, w00)  # the bias cancels in every ranking loss: never stepped
    assert P.grad[: layout.n_users, k].abs().max() == 0  # user linear terms cancel too
    # the history features did receive factor gradients
    hist_rows = np.unique(user_part.indices[user_part.indices >= layout.history_offset])
    assert (applied[hist_rows, :k].abs().sum(1) > 0).all()


def test_softmax_step_applies_the_autograd_gradient(float64):
    rng = np.random.default_rng(22)
    layout, users, user_part, pos = _ranking_case(rng)
    tr = _sgd_ranking_trainer(layout.feature_dim, rng)
    k, off, n_items = tr.k, layout.item_offset, layout.n_items
    neg = torch.tensor([1, 3, 3, 5, 0])  # shared negatives, one sampled twice
    hit = torch.zeros(len(users), len(neg), dtype=torch.bool)
    for r in range(len(users)):
        for c in range(len(neg)):
            hit[r, c] = int(neg[c]) == int(pos[r])  # the positive itself is masked
    hit[2, :] = True  # a row whose negatives are all masked: zero loss, zero gradient
    hit[4, 3] = True
    scale = 0.6
    b = _CSRTensors(user_part).batch(torch.arange(len(users)))
    P0, w00 = tr.P.clone(), tr.w0.clone()

    with torch.no_grad():
        loss = _softmax_step(tr, b, torch.from_numpy(pos), neg, hit, off, n_items, scale)
    applied = P0 - tr.P

    P = P0.clone().requires_grad_(True)
    vu = _user_vectors_ref(P, user_part, k)
    log_q = math.log(len(neg) / n_items)  # logQ correction of uniform sampling
    terms = []
    for r in range(len(users)):
        z_pos = P[off + int(pos[r]), k] + vu[r] @ P[off + int(pos[r]), :k]
        zs = [z_pos]
        for c in range(len(neg)):
            if not hit[r, c]:
                item = int(neg[c])
                zs.append(P[off + item, k] + vu[r] @ P[off + item, :k] - log_q)
        terms.append(torch.logsumexp(torch.stack(zs), 0) - z_pos)
    L = torch.stack(terms).sum()
    (scale * L).backward()
    assert loss == pytest.approx(L.detach().item(), rel=1e-12)
    np.testing.assert_allclose(applied.numpy(), P.grad.numpy(), rtol=1e-10, atol=1e-13)
    assert torch.equal(tr.w0, w00)


def test_seen_masks_match_a_set():
    rng = np.random.default_rng(23)
    n_users, n_items = 9, 13
    users = rng.integers(0, n_users, 40)
    items = rng.integers(0, n_items, 40)  # with repeated pairs
    seen = _Seen(users, items, n_users, n_items)
    pairs = set(zip(users.tolist(), items.tolist(), strict=True))
    u = torch.from_numpy(rng.integers(0, n_users, 25))
    j = torch.from_numpy(rng.integers(0, n_items, (25, 6)))
    expected = np.array(
        [[(int(a), int(b)) in pairs for b in row] for a, row in zip(u, j, strict=True)]
    )
    np.testing.assert_array_equal(seen.pair_mask(u, j).numpy(), expected)
    neg = torch.from_numpy(rng.choice(n_items, 5, replace=False))
    expected = np.array([[(int(a), int(b)) in pairs for b in neg] for a in u])
    np.testing.assert_array_equal(seen.shared_mask(u, neg).numpy(), expected)
    rows, cols = seen.entries(u)
    got = sorted(zip(rows.tolist(), cols.tolist(), strict=True))
    want = sorted(
        (r, i) for r, a in enumerate(u.tolist()) for i in range(n_items) if (a, i) in pairs
    )
    assert got == want


@pytest.mark.parametrize("native", [False, True], ids=["pytorch", "native"])
def test_ndcg_at_10_equals_a_sorted_list(monkeypatch, native):
    """NDCG@10 of held-out rows: rank each target among the videos the customer did not rate
    in training (the target itself always counts; ties broken by lower index), 1 / log2(rank + 1)
    inside the top 10."""
    if native and KERNEL is None:
        pytest.skip("the native kernels are not built or switched off")
    monkeypatch.setenv("RECSYS_NATIVE", "auto" if native else "off")
    rng = np.random.default_rng(25)
    n_users, n_items, k = 6, 30, 3
    layout = FeatureLayout(n_users, n_items)
    tr = make_trainer(layout.feature_dim, k, rng)
    tr.P[layout.item_offset + 7] = tr.P[layout.item_offset + 3]  # a tie
    train_u = rng.integers(0, n_users, 40)
    train_i = rng.integers(0, n_items, 40)
    seen = _Seen(train_u, train_i, n_users, n_items)
    rated = set(zip(train_u.tolist(), train_i.tolist(), strict=True))
    eval_u = np.r_[np.arange(n_users), np.arange(n_users), train_u[:3]]
    # random targets, the tied video, and videos the customer rated in training
    eval_i = np.r_[rng.integers(0, n_items, n_users), np.full(n_users, 7), train_i[:3]]
    got = _ndcg_at(tr, RankingData(layout, eval_u, eval_i), seen)
    P = tr.P.numpy().astype(np.float64)
    total = 0.0
    for u, t in zip(eval_u.tolist(), eval_i.tolist(), strict=True):
        scores = {
            i: P[n_users + i, k] + P[u, :k] @ P[n_users + i, :k]
            for i in range(n_items)
            if (u, i) not in rated or i == t
        }
        ranking = sorted(scores, key=lambda i: (-scores[i], i))
        rank = ranking.index(t) + 1
        total += 1.0 / math.log2(rank + 1) if rank <= 10 else 0.0
    assert 0 < got < 1
    assert got == pytest.approx(total / len(eval_u), rel=1e-9)


@pytest.mark.parametrize("loss", ["bpr", "softmax"])
def test_train_fm_ranking_learns_planted_preferences(loss):
    """Two taste groups, each rating half the catalogue: every user should rank its group's
    items above the other group's (AUC over all (liked, other) pairs close to 1)."""
    rng = np.random.default_rng(24)
    n_users, n_items = 40, 20
    group = np.arange(n_users) % 2
    users, items = [], []
    for u in range(n_users):
        liked = np.arange(n_items)[np.arange(n_items) % 2 == group[u]]
        chosen = rng.choice(liked, size=7, replace=False)
        users += [u] * len(chosen)
        items += chosen.tolist()
    layout = FeatureLayout(n_users, n_items)
    params = FMParams(num_factors=4, epochs=30, mini_batch_size=32, factors_lr=0.05, linear_lr=0.05,
                      factors_init_sigma=0.1, seed=0, threads=THREADS)  # fmt: skip
    fm = train_fm_ranking(RankingData(layout, users, items), params, loss=loss, negatives=6)
    assert (
        fm.is_classifier
        and fm.metadata["objective"] == "ranking"
        and fm.metadata["ranking_loss"] == loss
    )
    assert len(fm.metadata["history"]) == 30
    aucs = []
    for u in range(n_users):
        s = fm.decision_pairs(np.full(n_items, u), np.arange(n_items))
        good, bad = s[np.arange(n_items) % 2 == group[u]], s[np.arange(n_items) % 2 != group[u]]
        aucs.append((good[:, None] > bad[None, :]).mean())
    assert np.mean(aucs) > 0.9


def test_train_fm_ranking_rejects_bad_arguments():
    layout = FeatureLayout(3, 4)
    p = FMParams(num_factors=2)
    with pytest.raises(DataError, match="loss"):
        train_fm_ranking(RankingData(layout, [0], [1]), p, loss="hinge")
    with pytest.raises(DataError, match="negatives"):
        train_fm_ranking(RankingData(layout, [0], [1]), p, negatives=0)
    with pytest.raises(DataError, match="user indices must be in"):
        RankingData(layout, [3], [1])
    with pytest.raises(DataError, match="user_part"):
        RankingData(FeatureLayout(3, 4, history_length=2), [0], [1])



# ---------------------------------------------------------------------------------------------
# the native softmax step against the PyTorch one
# ---------------------------------------------------------------------------------------------
def _softmax_data(seed: int, n: int = 300, n_users: int = 30, n_items: int = 40) -> RankingData:
    """Rows with a user one-hot and 0-3 recent videos (weights summing to 1); customers rate
    ~10 videos each, so sampled negatives are often masked."""
    rng = np.random.default_rng(seed)
    layout = FeatureLayout(n_users, n_items, history_length=3)
    users, items = rng.integers(0, n_users, n), rng.integers(0, n_items, n)
    rows, cols, vals = [], [], []
    for r in range(n):
        hist = rng.choice(n_items, int(rng.integers(0, 4)), replace=False)
        rows += [r] * (1 + len(hist))
        cols += [int(users[r])] + [layout.history_offset + int(i) for i in hist]
        vals += [1.0] + [1.0 / max(len(hist), 1)] * len(hist)
    part = sp.csr_matrix((np.array(vals, np.float32), (rows, cols)), shape=(n, layout.feature_dim))
    return RankingData(layout, users, items, part)


@needs_kernel
@pytest.mark.parametrize(
    "opt,clip,rescale", [("sgd", None, None), ("adagrad", 0.05, None), ("adam", None, None), ("adam", 0.05, 0.01)]
)
def test_native_softmax_steps_track_the_pytorch_steps(opt, clip, rescale):
    """Two trainers from the same parameters, 40 batches with the same rows and negatives, one
    through _softmax_step, one through the native kernel: losses, parameters and optimizer state
    stay equal to float32 rounding."""
    data = _softmax_data(0)
    layout, n = data.layout, len(data)
    n_items, off = layout.n_items, layout.item_offset
    params = FMParams(num_factors=6, optimizer=opt, clip_gradient=clip, rescale_grad=rescale, linear_lr=0.05,
                      factors_lr=0.05, linear_wd=0.01, factors_wd=0.02, threads=THREADS)  # fmt: skip
    ref, nat = FMTrainer(layout.feature_dim, params), FMTrainer(layout.feature_dim, params)
    init = torch.from_numpy(np.random.default_rng(1).normal(0, 0.5, tuple(ref.P.shape))).float()
    for tr in (ref, nat):  # O(1) parameters, so every term of the update matters
        tr.P.copy_(init)
    rows = _CSRTensors(data.user_part)
    users, items = torch.from_numpy(data.users), torch.from_numpy(data.items)
    seen = _Seen(data.users, data.items, layout.n_users, n_items)
    native = _NativeSoftmax(KERNEL, nat, rows, users, items, seen, n_items, off, 32, 12)
    rng = np.random.default_rng(2)
    masked = 0
    with torch.no_grad():
        for _ in range(4):  # 4 epochs of 10 batches of 32 rows (the last one of 12)
            order = torch.from_numpy(rng.permutation(n))
            native.epoch(order)
            for start in range(0, n, 32):
                r = order[start : start + 32]
                neg = torch.unique(torch.from_numpy(rng.integers(0, n_items, 12)))
                scale = rescale if rescale is not None else 1.0 / len(r)
                hit = seen.shared_mask(users[r], neg)
                masked += int(hit.sum())
                a = _softmax_step(ref, rows.batch(r), items[r], neg, hit, off, n_items, scale)
                b = native.step(start, start + len(r), neg, scale)
                assert b == pytest.approx(a, rel=1e-5)
    assert masked > 100  # the masking of rated videos is exercised
    assert ref.step_count == nat.step_count == 40
    assert not torch.equal(nat.P, init)  # it trained
    torch.testing.assert_close(nat.P, ref.P, rtol=1e-4, atol=1e-5)
    for x, y in zip(nat.state_P, ref.state_P, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-7)
    assert torch.equal(nat.w0, ref.w0)  # the global bias cancels in the loss: never stepped


@needs_kernel
def test_train_fm_ranking_gives_the_same_model_on_both_paths(monkeypatch):
    """The whole training (sampling, epochs, evaluation, early stopping) through the public
    switch: RECSYS_NATIVE=off and the native kernel give the same history and parameters to
    float32 rounding."""
    data = _softmax_data(3, n=400)
    held = _softmax_data(4, n=60)
    params = FMParams(num_factors=8, epochs=5, mini_batch_size=64, factors_lr=0.05, linear_lr=0.05,
                      factors_init_sigma=0.1, early_stopping_patience=2, threads=THREADS)  # fmt: skip
    runs = []
    for switch in ("auto", "off"):
        monkeypatch.setenv(_kernel.KERNEL_ENV, switch)
        runs.append(train_fm_ranking(data, params, negatives=16, eval_set=held))
    native, plain = runs
    assert len(native.metadata["history"]) == len(plain.metadata["history"])
    for a, b in zip(native.metadata["history"], plain.metadata["history"], strict=True):
        assert a["train_softmax"] == pytest.approx(b["train_softmax"], rel=1e-4)
        assert a["eval_ndcg@10"] == pytest.approx(b["eval_ndcg@10"], abs=1e-6)
    np.testing.assert_allclose(native.V, plain.V, rtol=1e-3, atol=1e-5)
    np.testing.assert_allclose(native.w, plain.w, rtol=1e-3, atol=1e-5)


@needs_kernel
def test_native_ranking_is_bit_for_bit_the_same_with_and_without_avx2():
    if KERNEL.fm_kernel_isa(1) != 1:
        pytest.skip("this CPU has no AVX2")
    data, held = _softmax_data(5, n=300), _softmax_data(6, n=50)
    params = FMParams(num_factors=13, epochs=3, mini_batch_size=50, factors_lr=0.05, threads=THREADS)
    runs = []
    try:
        for isa in (1, 0):
            assert KERNEL.fm_kernel_isa(isa) == isa
            runs.append(train_fm_ranking(data, params, negatives=20, eval_set=held))
    finally:
        KERNEL.fm_kernel_isa(1)
    a, b = runs
    assert np.array_equal(a.V, b.V) and np.array_equal(a.w, b.w)
    assert [h["train_softmax"] for h in a.metadata["history"]] == [h["train_softmax"] for h in b.metadata["history"]]
    assert [h["eval_ndcg@10"] for h in a.metadata["history"]] == [h["eval_ndcg@10"] for h in b.metadata["history"]]
