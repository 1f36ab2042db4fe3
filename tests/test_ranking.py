"""Tests of the ranking metrics (recsys/ranking.py) against hand-computed values and
brute-force Python loops."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.sparse as sp

from recsys.errors import DataError
from recsys.ranking import (
    evaluate_ranking,
    list_metrics,
    popularity_ranks,
    rank_metrics,
    ranks_from_scores,
)

# ---------------------------------------------------------------------------------------------
# brute-force references


def brute_rank(s: np.ndarray, t: int, seen_items: set[int]) -> int:
    """rank = 1 + #{unseen j != t: s_j > s_t} + #{unseen j < t: s_j == s_t}."""
    r = 1
    for j in range(len(s)):
        if j == t or j in seen_items:
            continue
        if s[j] > s[t] or (s[j] == s[t] and j < t):
            r += 1
    return r


def sorted_rank(s: np.ndarray, t: int, seen_items: set[int]) -> int:
    """The same rank by a different route: position of t in the sorted candidate list."""
    cands = [j for j in range(len(s)) if j == t or j not in seen_items]
    cands.sort(key=lambda j: (-s[j], j))
    return cands.index(t) + 1


def seen_sets(seen: sp.csr_matrix) -> list[set[int]]:
    return [set(seen[u].indices.tolist()) for u in range(seen.shape[0])]


def random_case(seed: int, n_users: int = 9, n_items: int = 13, n_rows: int = 40):
    rng = np.random.default_rng(seed)
    S = rng.integers(0, 4, size=(n_users, n_items)).astype(np.float64)  # many ties
    seen = sp.csr_matrix(rng.random((n_users, n_items)) < 0.35)
    users = rng.integers(0, n_users, size=n_rows)
    targets = rng.integers(0, n_items, size=n_rows)  # some targets are "seen" on purpose
    return S, seen, users, targets


# ---------------------------------------------------------------------------------------------
# rank_metrics


def test_rank_metrics_hand_computed():
    ranks = np.array([1, 3, 12, 2])
    got = rank_metrics(ranks, cutoffs=(2, 10))
    assert set(got) == {"hr@2", "ndcg@2", "hr@10", "ndcg@10", "mrr"}
    # hr@2: ranks 1 and 2 hit -> 2/4
    assert got["hr@2"] == pytest.approx(0.5)
    # ndcg@2: (1/log2(2) + 1/log2(3)) / 4 = (1 + 0.6309297535714575) / 4
    assert got["ndcg@2"] == pytest.approx(0.40773243839286437, rel=1e-12)
    # hr@10: 1, 3, 2 hit -> 3/4
    assert got["hr@10"] == pytest.approx(0.75)
    # ndcg@10: (1 + 1/log2(4) + 1/log2(3)) / 4 = (1 + 0.5 + 0.6309297535714575) / 4
    assert got["ndcg@10"] == pytest.approx(0.5327324383928644, rel=1e-12)
    # mrr: (1 + 1/3 + 1/12 + 1/2) / 4 = 23/48
    assert got["mrr"] == pytest.approx(23 / 48, rel=1e-12)


def test_rank_metrics_default_cutoffs_and_perfect():
    got = rank_metrics(np.ones(5, dtype=int))
    assert got == {"hr@10": 1.0, "ndcg@10": 1.0, "hr@100": 1.0, "ndcg@100": 1.0, "mrr": 1.0}
    got = rank_metrics(np.array([101, 500]))
    assert got["hr@100"] == 0.0 and got["ndcg@100"] == 0.0
    assert got["mrr"] == pytest.approx((1 / 101 + 1 / 500) / 2)


def test_rank_metrics_empty():
    with pytest.raises(DataError, match="no test rows"):
        rank_metrics(np.array([], dtype=int))


# ---------------------------------------------------------------------------------------------
# ranks_from_scores


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch_rows", [None, 1, 3, 7, 1000])
def test_ranks_from_scores_bruteforce(seed, batch_rows):
    S, seen, users, targets = random_case(seed)
    calls = []

    def score_fn(u):
        calls.append(len(u))
        return S[u]

    got = ranks_from_scores(score_fn, users, targets, S.shape[1], seen, batch_rows=batch_rows)
    sets = seen_sets(seen)
    expected = [brute_rank(S[u], t, sets[u]) for u, t in zip(users, targets, strict=True)]
    assert got.tolist() == expected
    assert expected == [sorted_rank(S[u], t, sets[u]) for u, t in zip(users, targets, strict=True)]
    if batch_rows is not None:
        assert max(calls) <= batch_rows
    assert sum(calls) == len(users)
    # S itself must not have been modified by the seen-masking
    np.testing.assert_array_equal(S, random_case(seed)[0])


@pytest.mark.parametrize("native", ["auto", "off"])
@pytest.mark.parametrize("with_seen", [True, False])
def test_float32_ranks_native_and_numpy_agree_with_brute_force(monkeypatch, native, with_seen):
    """float32 scores with many ties (the native counter's input) and a seen matrix that lists
    a video twice: both paths give the brute-force ranks."""
    monkeypatch.setenv("RECSYS_NATIVE", native)
    rng = np.random.default_rng(7)
    S = rng.integers(0, 6, size=(40, 25)).astype(np.float32)
    rows = [sorted(set(rng.choice(25, size=rng.integers(0, 8), replace=False).tolist())) + [3, 3] for _ in range(40)]
    seen = sp.csr_matrix((np.ones(sum(map(len, rows))), np.concatenate(rows), np.cumsum([0] + [len(r) for r in rows])),
                         shape=(40, 25))  # fmt: skip
    assert not seen.has_canonical_format  # video 3 listed twice in every row
    users, targets = rng.integers(0, 40, size=60), rng.integers(0, 25, size=60)
    got = ranks_from_scores(lambda u: S[u], users, targets, 25, seen if with_seen else None, batch_rows=7)
    sets = seen_sets(seen) if with_seen else [set()] * 40
    assert got.tolist() == [brute_rank(S[u].astype(np.float64), t, sets[u]) for u, t in zip(users, targets, strict=True)]


def test_ranks_without_seen():
    S, _, users, targets = random_case(5)
    got = ranks_from_scores(lambda u: S[u], users, targets, S.shape[1], None, batch_rows=4)
    assert got.tolist() == [brute_rank(S[u], t, set()) for u, t in zip(users, targets, strict=True)]


def test_ranks_hand_computed():
    # one user, 5 items, scores 3 1 3 2 3; item 0 is seen
    S = np.array([[3.0, 1.0, 3.0, 2.0, 3.0]])
    seen = sp.csr_matrix(np.array([[1, 0, 0, 0, 0]], dtype=bool))
    targets = np.array([2, 4, 1, 3, 0])
    got = ranks_from_scores(lambda u: S[u], np.zeros(5, dtype=int), targets, 5, seen)
    # t=2: item 0 seen, nothing higher -> 1; t=4: item 2 tied & lower -> 2;
    # t=1: items 2, 4, 3 higher -> 4; t=3: items 2, 4 higher -> 3;
    # t=0 (seen, but the target is always a candidate): nothing higher, nothing tied before -> 1
    assert got.tolist() == [1, 2, 4, 3, 1]


def test_degenerate_constant_scorer():
    """Every item scores the same: rank = 1 + number of unseen items with a lower index."""
    _, seen, users, targets = random_case(3)
    n_items = seen.shape[1]
    got = ranks_from_scores(
        lambda u: np.zeros((len(u), n_items)), users, targets, n_items, seen, batch_rows=5
    )
    sets = seen_sets(seen)
    expected = [
        1 + sum(1 for j in range(t) if j not in sets[u])
        for u, t in zip(users, targets, strict=True)
    ]
    assert got.tolist() == expected


def test_target_scored_minus_inf_ignores_seen_items():
    S = np.array([[0.0, 0.0, -np.inf, 1.0]])
    seen = sp.csr_matrix(np.array([[1, 1, 0, 0]], dtype=bool))
    got = ranks_from_scores(lambda u: S[u], np.array([0]), np.array([2]), 4, seen)
    # candidates are items 2 and 3 only; item 3 scores higher -> rank 2 (got 4)
    assert got.tolist() == [brute_rank(S[0], 2, {0, 1})] == [2]


def test_ranks_bad_input():
    S = np.zeros((2, 4))
    with pytest.raises(DataError, match="same length"):
        ranks_from_scores(lambda u: S[u], np.array([0, 1]), np.array([0]), 4)
    with pytest.raises(DataError, match=r"target items must be in \[0, 4\)"):
        ranks_from_scores(lambda u: S[u], np.array([0]), np.array([4]), 4)
    with pytest.raises(DataError, match=r"score_fn returned shape \(1, 3\), expected \(1, 4\)"):
        ranks_from_scores(lambda u: S[u][:, :3], np.array([0]), np.array([1]), 4)


# ---------------------------------------------------------------------------------------------
# list_metrics


def brute_overlap(a: list[int], b: list[int]) -> float:
    sa, sb = {x for x in a if x >= 0}, {x for x in b if x >= 0}
    return len(sa & sb) / max(min(len(sa), len(sb)), 1)


def test_list_metrics_coverage_popularity_bruteforce():
    rng = np.random.default_rng(7)
    n_items = 30
    pop = rng.integers(0, 50, size=n_items).astype(np.float64)
    lists = np.stack([rng.permutation(n_items)[:6] for _ in range(12)])
    lists[3, 4:] = -1
    lists[8, 1:] = -1
    got = list_metrics(lists, n_items, pop)
    recommended = [x for row in lists.tolist() for x in row if x >= 0]
    assert got["coverage"] == pytest.approx(len(set(recommended)) / n_items)
    assert got["mean_popularity"] == pytest.approx(
        sum(pop[x] for x in recommended) / len(recommended)
    )


def test_list_metrics_of_many_int32_lists_equal_a_flat_count():
    """More rows than one block (65,536), int32 as the pipeline keeps them, empty slots."""
    rng = np.random.default_rng(3)
    n_items = 500
    lists = rng.integers(-1, n_items, size=(70_000, 5)).astype(np.int32)
    lists[lists < 0] = -1
    first = lists[:65_536]
    first[first == n_items - 1] = 0
    lists[65_536:, 0] = n_items - 1  # an item only the second block lists
    pop = rng.random(n_items)
    got = list_metrics(lists, n_items, pop)
    flat = lists[lists >= 0].astype(np.int64)
    assert got["coverage"] == pytest.approx(np.unique(flat).size / n_items)
    assert got["mean_popularity"] == pytest.approx(pop[flat].mean(), rel=1e-12)
    with pytest.raises(DataError, match=r"items must be in \[0, 400\)"):
        list_metrics(lists, 400, pop[:400])


def test_list_metrics_hand_computed():
    pop = np.array([10.0, 0.0, 4.0, 2.0, 1.0, 0.0])
    lists = np.array([[0, 2, 3], [2, 4, -1]])
    got = list_metrics(lists, 6, pop)
    # 4 distinct items {0, 2, 3, 4} of 6
    assert got["coverage"] == pytest.approx(4 / 6)
    # (10 + 4 + 2 + 4 + 1) / 5
    assert got["mean_popularity"] == pytest.approx(21 / 5)
    # |{2}| / min(3, 2)
    assert got["mean_overlap"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "a,b",
    [
        ([0, 1, 2, 3], [3, 2, 1, 0]),  # identical sets -> 1
        ([0, 1, 2, 3], [4, 5, 6, 7]),  # disjoint -> 0
        ([0, 1, 2, 3], [1, 3, 8, 9]),  # 2 / 4
        ([5, -1, -1, -1], [5, 6, 7, -1]),  # 1 / min(1, 3)
        ([-1, -1, -1, -1], [1, 2, -1, -1]),  # empty list: 0 / max(0, 1)
        ([-1, -1, -1, -1], [-1, -1, -1, -1]),  # both empty: 0
        ([0, 1, -1, -1], [2, 3, -1, -1]),  # padding in the same slots must not count as shared
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_list_metrics_overlap_two_lists_exact(a, b, seed):
    """With two lists every sampled pair is (0, 1) or (1, 0), so the sampled mean is exact."""
    got = list_metrics(np.array([a, b]), 10, np.ones(10), seed=seed)
    assert got["mean_overlap"] == pytest.approx(brute_overlap(a, b))


def test_list_metrics_overlap_equal_pairs_exact():
    """Three lists whose every pair shares 2 of 4 -> any sample of pairs averages 0.5."""
    lists = np.array([[0, 1, 2, 3], [0, 1, 4, 5], [0, 1, 6, 7]])
    for pairs in (1, 2, 3, 100):
        assert list_metrics(lists, 8, np.ones(8), pairs=pairs)["mean_overlap"] == pytest.approx(0.5)


def test_list_metrics_overlap_statistical():
    """Many lists: the sampled mean is within a few standard errors of the all-pairs mean."""
    rng = np.random.default_rng(11)
    n, k, n_items = 200, 10, 40
    lists = np.stack([rng.choice(n_items, size=k, replace=False) for _ in range(n)])
    lists[::7, 6:] = -1
    exact = [brute_overlap(a, b) for a, b in itertools.combinations(lists.tolist(), 2)]
    m = min(20000, n * (n - 1) // 2)
    se = np.std(exact) / math.sqrt(m)
    got = list_metrics(lists, n_items, np.ones(n_items), pairs=20000, seed=3)["mean_overlap"]
    assert abs(got - np.mean(exact)) < 5 * se
    # the seed makes it reproducible
    assert list_metrics(lists, n_items, np.ones(n_items), seed=3)["mean_overlap"] == got


def test_list_metrics_single_list_and_errors():
    got = list_metrics(np.array([[1, 2, -1]]), 4, np.array([0.0, 3.0, 5.0, 0.0]))
    assert math.isnan(got["mean_overlap"])
    assert got["coverage"] == pytest.approx(0.5)
    assert got["mean_popularity"] == pytest.approx(4.0)
    empty = list_metrics(np.full((2, 3), -1), 4, np.ones(4))
    assert (
        empty["coverage"] == 0.0
        and empty["mean_popularity"] == 0.0
        and empty["mean_overlap"] == 0.0
    )
    with pytest.raises(DataError, match="non-empty 2-D"):
        list_metrics(np.zeros((0, 3), dtype=int), 4, np.ones(4))
    with pytest.raises(DataError, match="non-empty 2-D"):
        list_metrics(np.array([1, 2]), 4, np.ones(4))


# ---------------------------------------------------------------------------------------------
# evaluate_ranking


@pytest.fixture
def eval_case():
    rng = np.random.default_rng(21)
    n_users, n_items = 8, 12
    S = rng.normal(size=(n_users, n_items))
    seen = sp.csr_matrix(rng.random((n_users, n_items)) < 0.3)
    pop = rng.integers(0, 5, size=n_items).astype(np.float64)  # ties in popularity
    sets = seen_sets(seen)
    test_users = np.repeat(np.arange(n_users), 2)
    test_items = np.array(
        [rng.choice([j for j in range(n_items) if j not in sets[u]]) for u in test_users]
    )
    ratings = rng.integers(1, 6, size=len(test_users)).astype(np.float64)
    ratings[:3] = [5, 4, 3]
    K = 4

    def top(scores_of_user, u):
        cands = [j for j in range(n_items) if j not in sets[u]]
        cands.sort(key=lambda j: (-scores_of_user[j], j))
        row = cands[:K]
        return row + [-1] * (K - len(row))

    lists = np.array([top(S[u], u) for u in range(n_users)])
    popular_lists = np.array([top(pop, u) for u in range(n_users)])
    return dict(S=S, seen=seen, pop=pop, sets=sets, test_users=test_users, test_items=test_items,
                ratings=ratings, lists=lists, popular_lists=popular_lists, n_items=n_items)  # fmt: skip


def brute_popularity_rank(pop: np.ndarray, t: int, seen_items: set[int]) -> int:
    cands = [j for j in range(len(pop)) if j == t or j not in seen_items]
    cands.sort(key=lambda j: (-pop[j], j))  # most popular first, ties by lower index
    return cands.index(t) + 1


def test_evaluate_ranking_bruteforce(eval_case):
    c = eval_case
    out = evaluate_ranking(
        lambda u: c["S"][u], c["lists"], c["test_users"], c["test_items"], c["n_items"], c["seen"],
        c["pop"], c["popular_lists"], cutoffs=(1, 3),
    )  # fmt: skip
    ranks = [
        sorted_rank(c["S"][u], t, c["sets"][u])
        for u, t in zip(c["test_users"], c["test_items"], strict=True)
    ]
    pop_ranks = [
        brute_popularity_rank(c["pop"], t, c["sets"][u])
        for u, t in zip(c["test_users"], c["test_items"], strict=True)
    ]
    assert out["test_rows"] == len(c["test_users"])
    for name, rs in (("", ranks), ("popularity_", pop_ranks)):
        rs = np.array(rs, dtype=float)
        for k in (1, 3):
            assert out[f"{name}hr@{k}"] == pytest.approx(np.mean(rs <= k))
            assert out[f"{name}ndcg@{k}"] == pytest.approx(
                np.mean([1 / math.log2(r + 1) if r <= k else 0 for r in rs])
            )
        assert out[f"{name}mrr"] == pytest.approx(np.mean(1 / rs))
    for name, lists in (("", c["lists"]), ("popularity_", c["popular_lists"])):
        rec = [x for row in lists.tolist() for x in row if x >= 0]
        assert out[f"{name}coverage"] == pytest.approx(len(set(rec)) / c["n_items"])
        assert out[f"{name}mean_popularity"] == pytest.approx(np.mean(c["pop"][rec]))
        assert 0.0 <= out[f"{name}mean_overlap"] <= 1.0


def test_evaluate_ranking_liked_threshold(eval_case):
    c = eval_case
    args = (lambda u: c["S"][u], c["lists"], c["test_users"], c["test_items"], c["n_items"], c["seen"],
            c["pop"], c["popular_lists"])  # fmt: skip
    out = evaluate_ranking(*args, cutoffs=(3,), test_ratings=c["ratings"], liked_threshold=4)
    keep = [r >= 4 for r in c["ratings"]]
    users = [u for u, k in zip(c["test_users"], keep, strict=True) if k]
    items = [t for t, k in zip(c["test_items"], keep, strict=True) if k]
    assert 0 < len(users) < len(c["test_users"])
    assert out["test_rows"] == len(users)
    ranks = np.array(
        [sorted_rank(c["S"][u], t, c["sets"][u]) for u, t in zip(users, items, strict=True)],
        dtype=float,
    )
    pop_ranks = np.array(
        [
            brute_popularity_rank(c["pop"], t, c["sets"][u])
            for u, t in zip(users, items, strict=True)
        ],
        dtype=float,
    )
    assert out["hr@3"] == pytest.approx(np.mean(ranks <= 3))
    assert out["mrr"] == pytest.approx(np.mean(1 / ranks))
    assert out["popularity_mrr"] == pytest.approx(np.mean(1 / pop_ranks))
    # the same as evaluating the filtered rows directly
    direct = evaluate_ranking(*args[:2], np.array(users), np.array(items), *args[4:], cutoffs=(3,))
    assert out == direct


def test_evaluate_ranking_errors(eval_case):
    c = eval_case
    args = (lambda u: c["S"][u], c["lists"], c["test_users"], c["test_items"], c["n_items"], c["seen"],
            c["pop"], c["popular_lists"])  # fmt: skip
    with pytest.raises(DataError, match="liked_threshold needs test_ratings"):
        evaluate_ranking(*args, liked_threshold=4)
    with pytest.raises(DataError, match="after the liked-only filter"):
        evaluate_ranking(*args, test_ratings=c["ratings"], liked_threshold=6)
    with pytest.raises(DataError, match="no test rows"):
        evaluate_ranking(
            args[0], args[1], np.array([], dtype=int), np.array([], dtype=int), *args[4:]
        )


def test_nan_scores_are_an_error_not_a_perfect_rank():
    # a diverged model (NaN scores) must not get rank 1 for free
    with pytest.raises(DataError, match="NaN"):
        ranks_from_scores(lambda u: np.full((len(u), 3), np.nan), np.array([0]), np.array([1]), 3)


@pytest.mark.parametrize("seed", [0, 1])
def test_popularity_ranks_equal_the_brute_force_sort(seed):
    rng = np.random.default_rng(seed)
    n_users, n_items = 30, 25
    pop = rng.integers(0, 6, size=n_items).astype(float)  # many ties
    seen = sp.csr_matrix(rng.random((n_users, n_items)) < 0.3)
    users = rng.integers(0, n_users, size=80)
    targets = rng.integers(0, n_items, size=80)
    got = popularity_ranks(pop, users, targets, seen)
    seen_sets = [set(seen[u].indices.tolist()) for u in range(n_users)]
    want = [brute_popularity_rank(pop, int(t), seen_sets[u]) for u, t in zip(users, targets, strict=True)]
    assert got.tolist() == want
    assert popularity_ranks(pop, users, targets).tolist() == [brute_popularity_rank(pop, int(t), set()) for t in targets]
